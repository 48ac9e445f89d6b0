//! The kubernetes checkout, through git2: inspect it, resolve the ref asked for
//! on the remote, then clone (when absent) or fetch that one ref shallowly and
//! check it out detached. Local changes are never overwritten.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use git2::{
    AutotagOption, CredentialType, FetchOptions, Oid, RemoteCallbacks, Repository, Status,
    StatusOptions, build::CheckoutBuilder,
};

use crate::error::{Error, RemoteCause, Result};
use crate::event::{CancellationToken, Event, Events, Say};

/// The ref kept on the checked-out commit, so the next fetch can tell the server
/// what we already have (libgit2 only negotiates from refs, not a detached HEAD).
const CHECKOUT_REF: &str = "refs/kubemark/checkout";

/// What the user asked of the source.
#[derive(Debug, Clone)]
pub struct SourceSpec {
    /// Remote URL or local path of the kubernetes repository.
    pub url: String,
    /// Branch, tag or full commit id; `None` means the remote's HEAD.
    pub git_ref: Option<String>,
    /// Where the checkout lives.
    pub dir: PathBuf,
    /// History depth to fetch; 0 fetches everything.
    pub depth: u32,
    /// Fetch and check out `git_ref`; when false, build what is checked out.
    pub update: bool,
    /// Build a checkout that has local changes (as is, without updating it).
    pub allow_dirty: bool,
}

/// The state of the checkout directory, read without changing anything.
#[derive(Debug, Clone, PartialEq)]
pub enum Local {
    Absent,
    Checkout {
        head: Option<Oid>,
        /// `git status --short` lines of modified and untracked files (ignored ones aside).
        changes: Vec<String>,
    },
}

/// A ref as the remote advertises it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Resolved {
    /// What the user asked for, or `HEAD`.
    pub asked: String,
    /// The full ref name (`refs/heads/master`, `refs/tags/v1.32.0`); `None` for a commit id.
    pub refname: Option<String>,
    /// The commit, when the remote advertised it (always for branches and tags).
    pub commit: Option<String>,
}

/// The outcome of the source stage.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Checkout {
    pub dir: PathBuf,
    pub commit: String,
    /// `git describe --tags` of the commit, or its short id when no tag is reachable.
    pub version: String,
    pub dirty: bool,
    pub changes: Vec<String>,
}

/// Read the checkout's state without touching it.
pub fn inspect(dir: &Path) -> Result<Local> {
    if !dir.exists() {
        return Ok(Local::Absent);
    }
    let is_empty_dir = dir
        .read_dir()
        .map(|mut entries| entries.next().is_none())
        .unwrap_or(false);
    if is_empty_dir {
        return Ok(Local::Absent);
    }
    let repo = match Repository::open(dir) {
        Ok(repo) if repo.workdir().is_some_and(|w| same_dir(w, dir)) => repo,
        _ => {
            return Err(Error::NotACheckout {
                dir: dir.to_owned(),
            });
        }
    };
    let head = repo.head().ok().and_then(|h| h.target());
    Ok(Local::Checkout {
        head,
        changes: local_changes(&repo)?,
    })
}

fn same_dir(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

/// Modified, deleted, renamed and untracked files, like `git status --short`; ignored files aside.
fn local_changes(repo: &Repository) -> Result<Vec<String>> {
    let mut options = StatusOptions::new();
    options
        .include_untracked(true)
        .recurse_untracked_dirs(true)
        .include_ignored(false)
        .exclude_submodules(true);
    let statuses = repo
        .statuses(Some(&mut options))
        .map_err(Error::git("reading the checkout's status"))?;
    let mut changes = Vec::new();
    for entry in statuses.iter() {
        let s = entry.status();
        if s.is_empty() || s.contains(Status::IGNORED) {
            continue;
        }
        let index = if s.contains(Status::INDEX_NEW) {
            'A'
        } else if s.contains(Status::INDEX_MODIFIED) {
            'M'
        } else if s.contains(Status::INDEX_DELETED) {
            'D'
        } else if s.contains(Status::INDEX_RENAMED) {
            'R'
        } else if s.contains(Status::INDEX_TYPECHANGE) {
            'T'
        } else {
            ' '
        };
        let worktree = if s.contains(Status::WT_NEW) {
            '?'
        } else if s.contains(Status::WT_MODIFIED) {
            'M'
        } else if s.contains(Status::WT_DELETED) {
            'D'
        } else if s.contains(Status::WT_RENAMED) {
            'R'
        } else if s.contains(Status::WT_TYPECHANGE) {
            'T'
        } else if s.contains(Status::CONFLICTED) {
            'U'
        } else {
            ' '
        };
        let code = if worktree == '?' && index == ' ' {
            "??".to_owned()
        } else {
            format!("{index}{worktree}")
        };
        let path = String::from_utf8_lossy(entry.path_bytes()).into_owned();
        changes.push(format!("{code} {path}"));
    }
    Ok(changes)
}

/// An error of the credentials callback that says it is about credentials.
fn auth_error(message: &str) -> git2::Error {
    git2::Error::new(git2::ErrorCode::Auth, git2::ErrorClass::Callback, message)
}

fn callbacks<'a>(events: &'a Events, cancel: &'a CancellationToken) -> RemoteCallbacks<'a> {
    let mut cb = RemoteCallbacks::new();
    let mut attempts = 0u32;
    cb.credentials(move |url, username, allowed| {
        attempts += 1;
        if attempts > 4 {
            return Err(auth_error(
                "authentication failed (tried the ssh agent, ~/.ssh keys and git's credential helpers)",
            ));
        }
        let user = username.unwrap_or("git");
        if allowed.contains(CredentialType::SSH_KEY) {
            if attempts == 1
                && let Ok(cred) = git2::Cred::ssh_key_from_agent(user)
            {
                return Ok(cred);
            }
            let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_default();
            for key in ["id_ed25519", "id_ecdsa", "id_rsa"] {
                let private = home.join(".ssh").join(key);
                if private.exists() {
                    return git2::Cred::ssh_key(user, None, &private, None);
                }
            }
        }
        if allowed.contains(CredentialType::USER_PASS_PLAINTEXT)
            && let Ok(config) = git2::Config::open_default()
            && let Ok(cred) = git2::Cred::credential_helper(&config, url, username)
        {
            return Ok(cred);
        }
        if allowed.contains(CredentialType::DEFAULT) {
            return git2::Cred::default();
        }
        Err(auth_error(
            "the server asks for credentials and there are none to offer (no ssh agent, no ~/.ssh/id_ed25519, \
             id_ecdsa or id_rsa, no git credential helper)",
        ))
    });
    let mut last = Instant::now() - Duration::from_secs(1);
    cb.transfer_progress(move |p| {
        let complete =
            p.received_objects() == p.total_objects() && p.indexed_deltas() == p.total_deltas();
        if complete || last.elapsed() >= Duration::from_millis(100) {
            last = Instant::now();
            events.emit(Event::Transfer {
                received_objects: p.received_objects(),
                total_objects: p.total_objects(),
                indexed_deltas: p.indexed_deltas(),
                total_deltas: p.total_deltas(),
                received_bytes: p.received_bytes(),
            });
        }
        !cancel.is_cancelled()
    });
    cb.sideband_progress(move |text| {
        let text = String::from_utf8_lossy(text);
        if let Some(line) = text
            .split(['\r', '\n'])
            .map(str::trim)
            .rfind(|l| !l.is_empty())
        {
            events.emit(Event::Remote(line.to_owned()));
        }
        !cancel.is_cancelled()
    });
    cb
}

fn is_full_commit_id(s: &str) -> bool {
    s.len() == 40 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Ask the remote which commit `git_ref` names (`git ls-remote`), reading nothing else.
pub fn resolve(
    url: &str,
    git_ref: Option<&str>,
    events: &Events,
    cancel: &CancellationToken,
) -> Result<Resolved> {
    if let Some(id) = git_ref.filter(|r| is_full_commit_id(r)) {
        return Ok(Resolved {
            asked: id.to_owned(),
            refname: None,
            commit: Some(id.to_ascii_lowercase()),
        });
    }
    let unreachable = |e: git2::Error| Error::RemoteUnreachable {
        url: url.to_owned(),
        reason: e.message().to_owned(),
        cause: RemoteCause::of(&e),
    };
    let mut remote = git2::Remote::create_detached(url).map_err(unreachable)?;
    let connection = remote
        .connect_auth(
            git2::Direction::Fetch,
            Some(callbacks(events, cancel)),
            None,
        )
        .map_err(unreachable)?;
    let heads: Vec<(String, String)> = connection
        .list()
        .map_err(unreachable)?
        .iter()
        .map(|h| (h.name().to_owned(), h.oid().to_string()))
        .collect();
    let default_branch = connection
        .default_branch()
        .ok()
        .and_then(|b| b.as_str().ok().map(str::to_owned));
    drop(connection);
    pick(url, git_ref, &heads, default_branch.as_deref())
}

/// Match the asked ref against the advertised heads, as `git rev-parse` orders them.
fn pick(
    url: &str,
    git_ref: Option<&str>,
    heads: &[(String, String)],
    default_branch: Option<&str>,
) -> Result<Resolved> {
    let find = |name: &str| -> Option<String> {
        // An annotated tag is advertised twice; the `^{}` entry is the commit.
        let peeled = format!("{name}^{{}}");
        heads
            .iter()
            .find(|(n, _)| *n == peeled)
            .or_else(|| heads.iter().find(|(n, _)| n == name))
            .map(|(_, oid)| oid.clone())
    };
    let Some(asked) = git_ref else {
        let refname = default_branch.map(str::to_owned).or_else(|| {
            let head = find("HEAD")?;
            heads
                .iter()
                .find(|(n, oid)| n.starts_with("refs/heads/") && *oid == head)
                .map(|(n, _)| n.clone())
        });
        let Some(refname) = refname else {
            return Err(Error::RefNotFound {
                name: "HEAD".into(),
                url: url.to_owned(),
                similar: Vec::new(),
            });
        };
        let commit = find(&refname);
        return Ok(Resolved {
            asked: "HEAD".into(),
            refname: Some(refname),
            commit,
        });
    };
    let candidates = if asked.starts_with("refs/") {
        vec![asked.to_owned()]
    } else {
        vec![format!("refs/tags/{asked}"), format!("refs/heads/{asked}")]
    };
    for refname in candidates {
        if let Some(commit) = find(&refname) {
            return Ok(Resolved {
                asked: asked.to_owned(),
                refname: Some(refname),
                commit: Some(commit),
            });
        }
    }
    let short = |n: &str| {
        n.trim_end_matches("^{}")
            .trim_start_matches("refs/heads/")
            .trim_start_matches("refs/tags/")
            .to_owned()
    };
    let needle = asked.to_ascii_lowercase();
    let mut similar: Vec<String> = heads
        .iter()
        .map(|(n, _)| n.as_str())
        .filter(|n| n.starts_with("refs/heads/") || n.starts_with("refs/tags/"))
        .map(short)
        .filter(|n| {
            let n = n.to_ascii_lowercase();
            n.contains(&needle) || needle.contains(&n) || common_prefix(&n, &needle) >= 3
        })
        .collect();
    similar.sort();
    similar.dedup();
    similar.truncate(8);
    Err(Error::RefNotFound {
        name: asked.to_owned(),
        url: url.to_owned(),
        similar,
    })
}

fn common_prefix(a: &str, b: &str) -> usize {
    a.bytes().zip(b.bytes()).take_while(|(x, y)| x == y).count()
}

/// Bring the checkout to the resolved commit: clone when absent, fetch and check out when
/// present and clean. A dirty checkout is refused unless `allow_dirty`, and then built as is.
pub fn sync(
    spec: &SourceSpec,
    local: &Local,
    resolved: Option<&Resolved>,
    events: &Events,
    cancel: &CancellationToken,
) -> Result<Checkout> {
    // libgit2 re-hashes every object it reads unless told not to; the pack was
    // already verified while indexing, so checkout need not pay for it again.
    git2::opts::strict_hash_verification(false);
    match local {
        Local::Absent => {
            if !spec.update {
                return Err(Error::NoCheckout {
                    dir: spec.dir.clone(),
                });
            }
            let resolved = resolved
                .ok_or_else(|| Error::Usage("internal: clone without a resolved ref".into()))?;
            clone(spec, resolved, events, cancel)
        }
        Local::Checkout { changes, .. } if !changes.is_empty() => {
            if !spec.allow_dirty {
                return Err(Error::Dirty {
                    dir: spec.dir.clone(),
                    changes: changes.clone(),
                });
            }
            events.warn(format!(
                "building the checkout as it is, with {} local change(s); the image is marked dirty and the checkout was not updated",
                changes.len()
            ));
            let repo = Repository::open(&spec.dir).map_err(Error::git("opening the checkout"))?;
            describe_checkout(&repo, &spec.dir, changes.clone())
        }
        Local::Checkout { .. } => {
            let repo = Repository::open(&spec.dir).map_err(Error::git("opening the checkout"))?;
            if let Some(resolved) = resolved.filter(|_| spec.update) {
                let commit = fetch(&repo, spec, resolved, events, cancel)?;
                check_out(&repo, commit, events, cancel)?;
            }
            describe_checkout(&repo, &spec.dir, local_changes(&repo)?)
        }
    }
}

fn clone(
    spec: &SourceSpec,
    resolved: &Resolved,
    events: &Events,
    cancel: &CancellationToken,
) -> Result<Checkout> {
    let parent = match spec.dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent).map_err(Error::io("creating", &parent))?;
    let name = spec
        .dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    // Clone beside the target and rename at the end, so an interrupted clone leaves no half checkout.
    let partial = tempfile_dir(&parent, &name)?;
    let result = (|| -> Result<()> {
        let repo =
            Repository::init(partial.path()).map_err(Error::git("creating the repository"))?;
        repo.remote("origin", &spec.url)
            .map_err(Error::git("adding the remote"))?;
        let commit = fetch(&repo, spec, resolved, events, cancel)?;
        check_out(&repo, commit, events, cancel)?;
        Ok(())
    })();
    result?;
    if spec.dir.exists() {
        // `inspect` found it empty; remove it so the rename can take its place.
        std::fs::remove_dir(&spec.dir)
            .map_err(Error::io("replacing the empty directory", &spec.dir))?;
    }
    let path = partial.keep();
    std::fs::rename(&path, &spec.dir).map_err(Error::io("moving the new clone to", &spec.dir))?;
    let repo = Repository::open(&spec.dir).map_err(Error::git("opening the new clone"))?;
    describe_checkout(&repo, &spec.dir, Vec::new())
}

/// A directory removed on drop unless kept.
struct PartialDir(Option<PathBuf>);

impl PartialDir {
    fn path(&self) -> &Path {
        self.0.as_deref().unwrap_or(Path::new(""))
    }

    fn keep(mut self) -> PathBuf {
        self.0.take().unwrap_or_default()
    }
}

impl Drop for PartialDir {
    fn drop(&mut self) {
        if let Some(path) = self.0.take() {
            let _ = std::fs::remove_dir_all(path);
        }
    }
}

fn tempfile_dir(parent: &Path, name: &str) -> Result<PartialDir> {
    for n in 0..100 {
        let path = parent.join(format!(".{name}.partial-{}-{n}", std::process::id()));
        match std::fs::create_dir(&path) {
            Ok(()) => return Ok(PartialDir(Some(path))),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(Error::io("creating", path)(e)),
        }
    }
    Err(Error::Usage(format!(
        "cannot create a temporary directory in {}",
        parent.display()
    )))
}

/// Fetch the one ref asked for, at the asked depth; return its commit.
fn fetch(
    repo: &Repository,
    spec: &SourceSpec,
    resolved: &Resolved,
    events: &Events,
    cancel: &CancellationToken,
) -> Result<Oid> {
    let (refspec, local_ref) = match &resolved.refname {
        Some(name) if name.starts_with("refs/tags/") => (format!("+{name}:{name}"), name.clone()),
        Some(name) => {
            let local = match name.strip_prefix("refs/heads/") {
                Some(branch) => format!("refs/remotes/origin/{branch}"),
                None => format!("refs/kubemark/fetched/{}", name.trim_start_matches("refs/")),
            };
            (format!("+{name}:{local}"), local)
        }
        None => {
            let id = resolved.commit.clone().unwrap_or_default();
            let oid = Oid::from_str(&id).map_err(Error::git("reading the commit id"))?;
            if repo.find_commit(oid).is_ok() {
                return Ok(oid);
            }
            (
                format!("+{id}:refs/kubemark/fetched/commit"),
                "refs/kubemark/fetched/commit".to_owned(),
            )
        }
    };
    let mut options = FetchOptions::new();
    options
        .remote_callbacks(callbacks(events, cancel))
        .download_tags(AutotagOption::None)
        .update_fetchhead(false);
    if spec.depth > 0 && !is_local(&spec.url) {
        options.depth(i32::try_from(spec.depth).unwrap_or(i32::MAX));
    } else if spec.depth > 0 {
        events.note("the repository is a local path: fetching its history whole (git's local transport cannot fetch shallowly)");
    }
    let mut remote = repo
        .remote_anonymous(&spec.url)
        .map_err(Error::git("setting up the fetch"))?;
    if let Err(e) = remote.fetch(&[refspec.as_str()], Some(&mut options), None) {
        if cancel.is_cancelled() {
            return Err(Error::Cancelled);
        }
        let reason = e.message().to_owned();
        if resolved.refname.is_none()
            && (reason.contains("not our ref")
                || reason.contains("not found")
                || reason.contains("want"))
        {
            return Err(Error::RefNotFound {
                name: resolved.asked.clone(),
                url: spec.url.clone(),
                similar: Vec::new(),
            });
        }
        return Err(Error::RemoteUnreachable {
            url: spec.url.clone(),
            reason,
            cause: RemoteCause::of(&e),
        });
    }
    let commit = repo
        .find_reference(&local_ref)
        .and_then(|r| r.peel_to_commit())
        .map_err(Error::git(format!(
            "reading the fetched {}",
            resolved.asked
        )))?;
    Ok(commit.id())
}

/// Check out `commit` detached; refuses (by libgit2's safe mode) to overwrite local edits.
fn check_out(
    repo: &Repository,
    commit: Oid,
    events: &Events,
    cancel: &CancellationToken,
) -> Result<()> {
    if cancel.is_cancelled() {
        return Err(Error::Cancelled);
    }
    let object = repo
        .find_object(commit, None)
        .map_err(Error::git("reading the commit"))?;
    let tree = object
        .peel_to_tree()
        .map_err(Error::git("reading the commit's tree"))?;
    let mut last = Instant::now() - Duration::from_secs(1);
    let mut checkout = CheckoutBuilder::new();
    // Attribute lookups cost a failed readlink per file (a checkout ~1.25x slower);
    // skip them when no attribute or setting could change what is written.
    checkout
        .safe()
        .disable_filters(!filters_matter(repo, &tree))
        .progress(|_, done, total| {
            if done == total || last.elapsed() >= Duration::from_millis(100) {
                last = Instant::now();
                events.emit(Event::Checkout { done, total });
            }
        });
    repo.checkout_tree(&object, Some(&mut checkout))
        .map_err(Error::git("checking out"))?;
    repo.set_head_detached(commit)
        .map_err(Error::git("moving HEAD"))?;
    repo.reference(CHECKOUT_REF, commit, true, "kubemark: checked out")
        .map_err(Error::git("recording the checked-out commit"))?;
    Ok(())
}

/// Attribute names that change file contents on checkout.
const CONTENT_ATTRIBUTES: &[&str] = &[
    "filter",
    "eol",
    "text",
    "crlf",
    "ident",
    "working-tree-encoding",
];

/// Whether checkout filters could change any file: a `.gitattributes` in the
/// tree naming a content attribute, or a user setting that converts or filters.
fn filters_matter(repo: &Repository, tree: &git2::Tree<'_>) -> bool {
    if let Ok(config) = repo.config() {
        let converts = config.get_bool("core.autocrlf").unwrap_or(false)
            || config
                .get_string("core.autocrlf")
                .is_ok_and(|v| v == "input")
            || config.get_string("core.attributesfile").is_ok()
            || config.get_string("core.eol").is_ok();
        if converts {
            return true;
        }
    }
    let mut matters = false;
    let _ = tree.walk(git2::TreeWalkMode::PreOrder, |_, entry| {
        if entry.name_bytes() == b".gitattributes" {
            let names_content_attribute = repo
                .find_blob(entry.id())
                .map(|blob| attributes_change_content(&String::from_utf8_lossy(blob.content())))
                .unwrap_or(true);
            if names_content_attribute {
                matters = true;
                return git2::TreeWalkResult::Abort;
            }
        }
        git2::TreeWalkResult::Ok
    });
    matters
}

fn attributes_change_content(text: &str) -> bool {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .flat_map(|l| l.split_whitespace().skip(1))
        .any(|attr| {
            let name = attr.trim_start_matches(['-', '!']);
            let name = name.split('=').next().unwrap_or(name);
            CONTENT_ATTRIBUTES.contains(&name) || name.starts_with("[attr]")
        })
}

fn describe_checkout(repo: &Repository, dir: &Path, changes: Vec<String>) -> Result<Checkout> {
    let head = repo
        .head()
        .and_then(|h| h.peel_to_commit())
        .map_err(Error::git("reading HEAD"))?;
    let commit = head.id().to_string();
    let described = head
        .as_object()
        .describe(git2::DescribeOptions::new().describe_tags().pattern("v*"))
        .and_then(|d| {
            d.format(Some(
                git2::DescribeFormatOptions::new().abbreviated_size(14),
            ))
        })
        .ok();
    let dirty = !changes.is_empty();
    let mut version = described.unwrap_or_else(|| commit[..12].to_owned());
    if dirty {
        version.push_str("-dirty");
    }
    Ok(Checkout {
        dir: dir.to_owned(),
        commit,
        version,
        dirty,
        changes,
    })
}

/// Refuse a local repository (a path or `file://` URL) that cannot be one: a
/// path that does not exist, a file, or a directory that is not a git
/// repository (a clone or a bare one). Network URLs are left to [`resolve`].
pub fn check_local_repository(url: &str) -> Result<()> {
    if !is_local(url) {
        return Ok(());
    }
    let path = Path::new(url.strip_prefix("file://").unwrap_or(url));
    let problem = match std::fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => "no such directory".to_owned(),
        Err(e) => format!("cannot read it: {e}"),
        Ok(meta) if !meta.is_dir() => "a file, not a directory".to_owned(),
        // As libgit2's local transport opens it: the directory itself, no search upwards.
        Ok(_) => match Repository::open(path) {
            Ok(_) => return Ok(()),
            Err(_) => "not a git repository (neither a clone nor a bare repository)".to_owned(),
        },
    };
    Err(Error::LocalRepository {
        url: url.to_owned(),
        problem,
    })
}

/// A local path or `file://` URL (as opposed to a network URL or scp-like `host:path`).
fn is_local(url: &str) -> bool {
    if url.starts_with("file://") {
        return true;
    }
    if url.contains("://") {
        return false;
    }
    // scp-like syntax is `[user@]host:path` with the colon before any slash.
    match (url.find(':'), url.find('/')) {
        (Some(colon), Some(slash)) => slash < colon,
        (Some(_), None) => false,
        (None, _) => true,
    }
}

/// Strip credentials from a URL before it goes into a label or a log.
pub fn redact_url(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => {
            let (authority, path) = rest.split_once('/').map_or((rest, ""), |(a, p)| (a, p));
            let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
            if path.is_empty() && !rest.contains('/') {
                format!("{scheme}://{host}")
            } else {
                format!("{scheme}://{host}/{path}")
            }
        }
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn heads() -> Vec<(String, String)> {
        [
            ("HEAD", "1111111111111111111111111111111111111111"),
            (
                "refs/heads/master",
                "1111111111111111111111111111111111111111",
            ),
            (
                "refs/heads/release-1.32",
                "2222222222222222222222222222222222222222",
            ),
            (
                "refs/tags/v1.32.0",
                "3333333333333333333333333333333333333333",
            ),
            (
                "refs/tags/v1.32.0^{}",
                "4444444444444444444444444444444444444444",
            ),
            ("refs/tags/same", "5555555555555555555555555555555555555555"),
            (
                "refs/heads/same",
                "6666666666666666666666666666666666666666",
            ),
        ]
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
    }

    #[test]
    fn picks_like_rev_parse() {
        let h = heads();
        let r = pick("u", None, &h, Some("refs/heads/master")).unwrap();
        assert_eq!(r.refname.as_deref(), Some("refs/heads/master"));
        let r = pick("u", None, &h, None).unwrap();
        assert_eq!(r.refname.as_deref(), Some("refs/heads/master"));
        let r = pick("u", Some("v1.32.0"), &h, None).unwrap();
        assert_eq!(
            r.commit.as_deref(),
            Some("4444444444444444444444444444444444444444"),
            "annotated tag peels"
        );
        let r = pick("u", Some("same"), &h, None).unwrap();
        assert_eq!(
            r.refname.as_deref(),
            Some("refs/tags/same"),
            "tags before branches"
        );
        let r = pick("u", Some("refs/heads/same"), &h, None).unwrap();
        assert_eq!(
            r.commit.as_deref(),
            Some("6666666666666666666666666666666666666666")
        );
    }

    #[test]
    fn unknown_ref_lists_similar_names() {
        let e = pick("u", Some("release-1.3"), &heads(), None).unwrap_err();
        match e {
            Error::RefNotFound { similar, .. } => {
                assert_eq!(similar, vec!["release-1.32".to_owned()])
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn content_attributes_are_recognised() {
        let kubernetes = "hack/verify-flags/known-flags.txt merge=union\n**/zz_generated.*.go linguist-generated=true\n# text\n";
        assert!(!attributes_change_content(kubernetes));
        assert!(attributes_change_content("* text=auto\n"));
        assert!(attributes_change_content("*.sh eol=lf\n"));
        assert!(attributes_change_content(
            "*.bin filter=lfs diff=lfs merge=lfs -text\n"
        ));
        assert!(attributes_change_content("*.c ident\n"));
        assert!(!attributes_change_content("*.png binary\n"));
    }

    #[test]
    fn local_paths_are_told_apart() {
        assert!(is_local("/srv/kubernetes"));
        assert!(is_local("../kubernetes"));
        assert!(is_local("file:///srv/kubernetes"));
        assert!(!is_local("git@github.com:kubernetes/kubernetes.git"));
        assert!(!is_local("https://github.com/kubernetes/kubernetes"));
        assert!(!is_local("git://127.0.0.1:9418/kubernetes"));
    }

    #[test]
    fn urls_lose_their_passwords() {
        assert_eq!(
            redact_url("https://user:secret@github.com/kubernetes/kubernetes"),
            "https://github.com/kubernetes/kubernetes"
        );
        assert_eq!(
            redact_url("git://127.0.0.1:9418/k"),
            "git://127.0.0.1:9418/k"
        );
        assert_eq!(redact_url("/srv/k"), "/srv/k");
        assert_eq!(redact_url("https://tok@h"), "https://h");
    }
}
