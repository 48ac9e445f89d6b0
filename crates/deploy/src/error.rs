//! The cluster pipeline's one error type; each variant says what was being
//! done. The CLI adds what to do about it.

use std::path::PathBuf;

/// Which cluster an error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Side {
    External,
    Master,
}

impl std::fmt::Display for Side {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Side::External => "external cluster",
            Side::Master => "kubemark master",
        })
    }
}

/// Why a cluster did not answer the first request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Cause {
    /// Nothing listens there, or the name does not resolve.
    NoServer,
    /// The server's certificate is not one the kubeconfig's CA signed.
    Certificate,
    /// The server refused the credentials (401).
    Credentials,
    /// Anything else (timeouts, 5xx that did not pass).
    Other,
}

impl Cause {
    /// Read from a failed request.
    pub fn of(e: &kube::Error) -> Cause {
        if let kube::Error::Api(s) = e {
            return if s.code == 401 {
                Cause::Credentials
            } else {
                Cause::Other
            };
        }
        let text = describe(e).to_ascii_lowercase();
        if text.contains("certificate")
            || text.contains("unknownissuer")
            || text.contains("tls handshake")
        {
            Cause::Certificate
        } else if text.contains("connection refused")
            || text.contains("dns error")
            || text.contains("failed to lookup address")
            || text.contains("no route to host")
        {
            Cause::NoServer
        } else {
            Cause::Other
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Options that cannot work together, or a value that cannot be used.
    #[error("{0}")]
    Usage(String),

    #[error("cannot read the {side}'s kubeconfig {}: {reason}", path.display())]
    Kubeconfig {
        side: Side,
        path: PathBuf,
        reason: String,
    },

    #[error("the kubemark master's kubeconfig cannot be used inside hollow-node pods: {reason}")]
    MasterKubeconfig { reason: String, hint: String },

    #[error("the template {name} needs {} value(s) nobody set: {}", missing.len(), missing.join(", "))]
    Undefined { name: String, missing: Vec<String> },

    #[error("the template {name} does not render: {reason}")]
    Template { name: String, reason: String },

    #[error("the rendered template {name} is not a valid {kind}: {reason}")]
    Manifest {
        name: String,
        kind: String,
        reason: String,
    },

    #[error("cannot reach the {side} at {server}: {reason}")]
    Unreachable {
        side: Side,
        server: String,
        reason: String,
        /// What the first request ran into, for the hint.
        cause: Cause,
    },

    #[error("the {side} does not allow what deploy needs: {}", denied.join(", "))]
    Forbidden { side: Side, denied: Vec<String> },

    /// The world is not as deploy may touch it; `hint` says what to change.
    #[error("{what}")]
    Refused {
        what: String,
        /// One line per object or cause.
        details: Vec<String>,
        hint: String,
    },

    #[error("the external cluster has room for {fits} hollow-node pod(s), {needed} needed")]
    Capacity {
        needed: u64,
        fits: u64,
        /// The numbers behind it, a line each.
        details: Vec<String>,
    },

    #[error("the {side} failed while {doing}: {reason}")]
    Api {
        side: Side,
        doing: String,
        reason: String,
    },

    #[error("{ready}/{wanted} hollow nodes Ready after {seconds}s")]
    Timeout {
        ready: usize,
        wanted: usize,
        seconds: u64,
        /// Why, grouped with counts (the stall diagnosis).
        diagnosis: Vec<String>,
    },

    #[error("{doing} {}: {source}", path.display())]
    Io {
        doing: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("interrupted")]
    Cancelled,
}

impl Error {
    /// Bad input rather than a broken world: exit code 2.
    pub fn is_usage(&self) -> bool {
        matches!(
            self,
            Error::Usage(_)
                | Error::MasterKubeconfig { .. }
                | Error::Undefined { .. }
                | Error::Template { .. }
                | Error::Manifest { .. }
        )
    }

    pub(crate) fn api(side: Side, doing: impl Into<String>) -> impl FnOnce(kube::Error) -> Error {
        let doing = doing.into();
        move |e| Error::Api {
            side,
            doing,
            reason: describe(&e),
        }
    }
}

/// A kube error in a line: the API's message, or the transport's cause.
pub(crate) fn describe(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(status) => format!("{} ({})", status.message, status.code),
        other => {
            let mut text = other.to_string();
            let mut source = std::error::Error::source(other);
            while let Some(s) = source {
                let s_text = s.to_string();
                if !text.contains(&s_text) {
                    text.push_str(": ");
                    text.push_str(&s_text);
                }
                source = s.source();
            }
            text
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
