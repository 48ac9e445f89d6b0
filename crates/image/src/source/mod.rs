//! The kubernetes checkout, through git2: inspect it, resolve the ref asked for
//! on the remote, then clone (when absent) or fetch that one ref shallowly and
//! check it out detached. Local changes are never overwritten.

mod callbacks;
mod check_out;
mod clone;
mod fetch;
mod inspect;
mod resolve;
mod url;

use std::path::PathBuf;

use git2::{Oid, Repository};

use crate::error::{Error, Result};
use crate::event::{CancellationToken, Events, Say};

pub use inspect::inspect;
pub use resolve::resolve;
pub use url::{check_local_repository, redact_url};

use check_out::check_out;
use clone::clone;
pub(crate) use clone::make_parent;
use fetch::fetch;
use inspect::{describe_checkout, local_changes};

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

/// Bring the checkout to the resolved commit: clone when absent, fetch and check out when
/// present and clean. A dirty checkout is refused unless `allow_dirty`, and then built as is.
pub fn sync(
    spec: &SourceSpec,
    local: &Local,
    resolved: Option<&Resolved>,
    events: &Events,
    cancel: &CancellationToken,
) -> Result<Checkout> {
    // (Pack memory is bounded by the CLI's `main`: see `bound_pack_memory`.)
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

/// Bytes of a pack libgit2 maps at once (its 64-bit default is 1 GiB: the whole
/// pack of a clone, which checkout then reads through, page by page, into RSS).
const PACK_WINDOW: usize = 32 << 20;
/// Bytes of packs libgit2 keeps mapped in all (default 8 GiB); past it, the least
/// recently used windows are unmapped. With both at 32 MiB, the whole pipeline's
/// peak RSS over the bench's 106 MiB pack went from 147 MB to 69 MB.
const PACK_MAPPED_LIMIT: usize = 32 << 20;

/// Bound the memory libgit2 maps for pack files (see [`PACK_WINDOW`]).
///
/// # Safety
///
/// These are libgit2 globals written without a lock and read under libgit2's
/// own: call this before any other thread uses libgit2. The CLI's `main` calls
/// it first thing, before any thread exists.
#[allow(unsafe_code)]
pub unsafe fn bound_pack_memory() -> Result<(), git2::Error> {
    // SAFETY: the caller's promise above (no concurrent libgit2 use).
    unsafe {
        git2::opts::set_mwindow_size(PACK_WINDOW)?;
        git2::opts::set_mwindow_mapped_limit(PACK_MAPPED_LIMIT)?;
    }
    Ok(())
}
