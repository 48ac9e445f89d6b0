//! One run at a time: per state directory, and per checkout whatever the state
//! directory. Each lock is a file holding its owner's process id.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::source;

/// One run at a time per state directory: `image.lock` in it.
pub(super) fn lock_state(state_dir: &Path) -> Result<std::fs::File> {
    std::fs::create_dir_all(state_dir).map_err(Error::io("creating", state_dir))?;
    let path = state_dir.join("image.lock");
    try_lock(&path)?.map_err(|pid| Error::Locked { path, pid })
}

/// One run at a time per checkout, whatever the state directory: the lock file
/// `.<name>.kubemark.lock` beside it (not in it: that would be a local change),
/// found through the checkout's real path so that every spelling of it meets.
pub(super) fn lock_checkout(dir: &Path) -> Result<std::fs::File> {
    let lock = checkout_lock_path(dir)?;
    try_lock(&lock)?.map_err(|pid| Error::CheckoutLocked {
        dir: dir.to_owned(),
        lock,
        pid,
    })
}

fn checkout_lock_path(dir: &Path) -> Result<PathBuf> {
    let real = match dir.canonicalize() {
        Ok(real) => real,
        Err(_) => {
            // Not there yet: its parent is made (as the clone would make it) and resolved.
            let parent = source::make_parent(dir)?;
            let parent = parent
                .canonicalize()
                .map_err(Error::io("resolving", &parent))?;
            match dir.file_name() {
                Some(name) => parent.join(name),
                None => parent,
            }
        }
    };
    match (real.parent(), real.file_name()) {
        (Some(parent), Some(name)) => {
            Ok(parent.join(format!(".{}.kubemark.lock", name.to_string_lossy())))
        }
        _ => Err(Error::Usage(format!(
            "the source directory {} has no parent directory to hold its lock; pass --source-dir with a \
             directory below /",
            dir.display()
        ))),
    }
}

/// Take the lock on `path` without waiting and write this process's id in it;
/// when another process holds it, `Err` with the id that process wrote, if any.
fn try_lock(path: &Path) -> Result<std::result::Result<std::fs::File, Option<u32>>> {
    use std::io::{Read, Seek, Write};
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(path)
        .map_err(Error::io("opening", path))?;
    match file.try_lock() {
        Ok(()) => {
            let pid = format!("{}\n", std::process::id());
            file.set_len(0)
                .and_then(|()| file.rewind())
                .and_then(|()| file.write_all(pid.as_bytes()))
                .map_err(Error::io("writing", path))?;
            Ok(Ok(file))
        }
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut text = String::new();
            let _ = file.read_to_string(&mut text);
            Ok(Err(text.trim().parse().ok()))
        }
        Err(std::fs::TryLockError::Error(e)) => Err(Error::io("locking", path)(e)),
    }
}
