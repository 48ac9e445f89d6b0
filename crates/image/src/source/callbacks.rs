//! The callbacks libgit2 calls while it talks to the remote: credentials (the
//! ssh agent, `~/.ssh` keys, git's credential helpers), transfer and server
//! progress as events, and cancellation.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use git2::{CredentialType, RemoteCallbacks};

use crate::event::{CancellationToken, Event, Events};

/// An error of the credentials callback that says it is about credentials.
fn auth_error(message: &str) -> git2::Error {
    git2::Error::new(git2::ErrorCode::Auth, git2::ErrorClass::Callback, message)
}

pub(super) fn callbacks<'a>(
    events: &'a Events,
    cancel: &'a CancellationToken,
) -> RemoteCallbacks<'a> {
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
