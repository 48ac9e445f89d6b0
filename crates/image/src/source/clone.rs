//! A fresh clone, made beside the target and moved into place when complete.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use git2::Repository;

use super::check_out::check_out;
use super::fetch::fetch;
use super::inspect::describe_checkout;
use super::{Checkout, Resolved, SourceSpec};
use crate::error::{Error, Result};
use crate::event::{CancellationToken, Events};

pub(super) fn clone(
    spec: &SourceSpec,
    resolved: &Resolved,
    events: &Events,
    cancel: &CancellationToken,
) -> Result<Checkout> {
    let parent = make_parent(&spec.dir)?;
    let name = spec
        .dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    // Clone beside the target and rename at the end, so an interrupted clone leaves no half checkout.
    // Its mode as `create_dir` makes it (0o777 less the umask), since it becomes the checkout;
    // removed on drop (an error, a cancel) unless kept.
    let partial = tempfile::Builder::new()
        .prefix(&format!(".{name}.partial-"))
        .permissions(std::fs::Permissions::from_mode(0o777))
        .tempdir_in(&parent)
        .map_err(Error::io("creating a directory in", &parent))?;
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

/// Make the directory that holds `dir` (`.` for a bare name), as the clone needs it.
pub(crate) fn make_parent(dir: &Path) -> Result<PathBuf> {
    let parent = match dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent).map_err(Error::io("creating", &parent))?;
    Ok(parent)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(url: &Path, dir: &Path) -> SourceSpec {
        SourceSpec {
            url: url.to_string_lossy().into_owned(),
            git_ref: None,
            dir: dir.to_owned(),
            depth: 1,
            update: true,
            allow_dirty: false,
        }
    }

    fn master() -> Resolved {
        Resolved {
            asked: "HEAD".into(),
            refname: Some("refs/heads/master".into()),
            commit: None,
        }
    }

    fn entries(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn a_failed_clone_leaves_nothing_behind() {
        let tmp = tempfile::tempdir().unwrap();
        let parent = tmp.path().join("src");
        let e = clone(
            &spec(&tmp.path().join("nowhere"), &parent.join("k")),
            &master(),
            &Events::discard(),
            &CancellationToken::new(),
        )
        .unwrap_err();
        assert!(matches!(e, Error::RemoteUnreachable { .. }), "{e:?}");
        assert_eq!(entries(&parent), Vec::<String>::new());
    }

    #[test]
    fn a_clone_is_moved_into_place_with_the_mode_of_a_made_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let upstream = tmp.path().join("upstream");
        let repo = Repository::init(&upstream).unwrap();
        std::fs::write(upstream.join("README"), "kubernetes\n").unwrap();
        let mut index = repo.index().unwrap();
        index.add_path(Path::new("README")).unwrap();
        let tree = repo.find_tree(index.write_tree().unwrap()).unwrap();
        let who = git2::Signature::now("t", "t@example.com").unwrap();
        let commit = repo.commit(None, &who, &who, "one", &tree, &[]).unwrap();
        repo.reference("refs/heads/master", commit, true, "test")
            .unwrap();

        let parent = tmp.path().join("src");
        let dir = parent.join("k");
        let checkout = clone(
            &spec(&upstream, &dir),
            &master(),
            &Events::discard(),
            &CancellationToken::new(),
        )
        .unwrap();
        assert_eq!(checkout.commit, commit.to_string());
        assert_eq!(
            std::fs::read_to_string(dir.join("README")).unwrap(),
            "kubernetes\n"
        );
        assert_eq!(entries(&parent), ["k"]);
        let made = tmp.path().join("made");
        std::fs::create_dir(&made).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode(&dir), mode(&made));
    }
}
