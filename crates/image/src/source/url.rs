//! The repository URL: a local path told apart from a network URL, a local
//! repository checked before anything else, credentials kept out of logs.

use std::path::Path;

use git2::Repository;

use crate::error::{Error, Result};

/// Refuse a local repository (a path or `file://` URL) that cannot be one: a
/// path that does not exist, a file, or a directory that is not a git
/// repository (a clone or a bare one). Network URLs are left to [`resolve`](super::resolve).
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
pub(super) fn is_local(url: &str) -> bool {
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
    // A local path as an absolute one: `./kubernetes` in a label says nothing later.
    if is_local(url)
        && !url.starts_with("file://")
        && let Ok(path) = std::fs::canonicalize(url)
    {
        return path.to_string_lossy().into_owned();
    }
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

    /// `target` relative to `from` (`../../tmp/x`).
    fn pathdiff(target: &Path, from: &Path) -> String {
        let up = from.components().count() - 1;
        format!(
            "{}{}",
            "../".repeat(up),
            target.to_string_lossy().trim_start_matches('/')
        )
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
        assert_eq!(redact_url("/nonexistent/k"), "/nonexistent/k");
        let dir = tempfile::tempdir().unwrap();
        let here = std::env::current_dir().unwrap();
        let relative = pathdiff(dir.path(), &here);
        assert_eq!(
            redact_url(&relative),
            std::fs::canonicalize(dir.path()).unwrap().to_string_lossy()
        );
        assert_eq!(redact_url("https://tok@h"), "https://h");
    }
}
