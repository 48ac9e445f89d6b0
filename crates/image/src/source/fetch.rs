//! Fetching the one resolved ref, shallowly unless the remote is a local path.

use git2::{AutotagOption, FetchOptions, Oid, Repository};

use super::callbacks::callbacks;
use super::url::is_local;
use super::{Resolved, SourceSpec};
use crate::error::{Error, RemoteCause, Result};
use crate::event::{CancellationToken, Events, Say};

/// Fetch the one ref asked for, at the asked depth; return its commit.
pub(super) fn fetch(
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
