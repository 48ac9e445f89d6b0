//! Checking a fetched commit out, detached, without overwriting local edits.

use std::time::{Duration, Instant};

use git2::{Oid, Repository, build::CheckoutBuilder};

use crate::error::{Error, Result};
use crate::event::{CancellationToken, Event, Events};

/// The ref kept on the checked-out commit, so the next fetch can tell the server
/// what we already have (libgit2 only negotiates from refs, not a detached HEAD).
const CHECKOUT_REF: &str = "refs/kubemark/checkout";

/// Check out `commit` detached; refuses (by libgit2's safe mode) to overwrite local edits.
pub(super) fn check_out(
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
