//! The local checkout, read without changing it: whether it is there, its
//! local changes (as `git status --short` lists them), and what it holds.

use std::path::Path;

use git2::{Repository, Status, StatusOptions};

use super::{Checkout, Local};
use crate::error::{Error, Result};

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
pub(super) fn local_changes(repo: &Repository) -> Result<Vec<String>> {
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
        let code = status_code(s);
        let path = String::from_utf8_lossy(entry.path_bytes()).into_owned();
        changes.push(format!("{code} {path}"));
    }
    Ok(changes)
}

/// The two letters `git status --short` shows for a file: the index's, then the work tree's.
fn status_code(s: Status) -> String {
    let index = first_letter(
        s,
        &[
            (Status::INDEX_NEW, 'A'),
            (Status::INDEX_MODIFIED, 'M'),
            (Status::INDEX_DELETED, 'D'),
            (Status::INDEX_RENAMED, 'R'),
            (Status::INDEX_TYPECHANGE, 'T'),
        ],
    );
    let worktree = first_letter(
        s,
        &[
            (Status::WT_NEW, '?'),
            (Status::WT_MODIFIED, 'M'),
            (Status::WT_DELETED, 'D'),
            (Status::WT_RENAMED, 'R'),
            (Status::WT_TYPECHANGE, 'T'),
            (Status::CONFLICTED, 'U'),
        ],
    );
    if worktree == '?' && index == ' ' {
        "??".to_owned()
    } else {
        format!("{index}{worktree}")
    }
}

/// The letter of the first flag in `table` that `s` has, in the table's order; else a space.
fn first_letter(s: Status, table: &[(Status, char)]) -> char {
    table
        .iter()
        .find(|(flag, _)| s.contains(*flag))
        .map_or(' ', |(_, letter)| *letter)
}

pub(super) fn describe_checkout(
    repo: &Repository,
    dir: &Path,
    changes: Vec<String>,
) -> Result<Checkout> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_letters_are_git_status_short() {
        for (status, code) in [
            (Status::WT_NEW, "??"),
            (Status::WT_NEW | Status::WT_MODIFIED, "??"),
            (Status::INDEX_NEW, "A "),
            (Status::INDEX_NEW | Status::INDEX_MODIFIED, "A "),
            (Status::INDEX_NEW | Status::WT_NEW, "A?"),
            (Status::INDEX_MODIFIED | Status::WT_MODIFIED, "MM"),
            (Status::INDEX_DELETED, "D "),
            (Status::WT_DELETED, " D"),
            (Status::INDEX_RENAMED | Status::WT_TYPECHANGE, "RT"),
            (Status::INDEX_TYPECHANGE | Status::WT_RENAMED, "TR"),
            (Status::CONFLICTED, " U"),
            (Status::WT_MODIFIED | Status::CONFLICTED, " M"),
        ] {
            assert_eq!(status_code(status), code, "{status:?}");
        }
    }
}
