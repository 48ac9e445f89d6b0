//! A fresh clone, made beside the target and moved into place when complete.

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
