//! Resolving the asked ref on the remote (`git ls-remote`), without fetching.

use super::Resolved;
use super::callbacks::callbacks;
use crate::error::{Error, RemoteCause, Result};
use crate::event::{CancellationToken, Events};

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
}
