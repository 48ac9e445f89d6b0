//! The image pipeline's one error type. Each variant says what was being done;
//! the CLI adds what to do about it.

use std::path::PathBuf;

use crate::reference::RefError;

/// Everything the image pipeline can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The image reference (registry, tag or base image) breaks the grammar.
    #[error(transparent)]
    Reference(#[from] RefError),

    /// A combination of options that cannot work.
    #[error("{0}")]
    Usage(String),

    #[error("cannot reach the Docker engine at {endpoint}: {reason}")]
    EngineUnreachable { endpoint: String, reason: String },

    #[error("the Docker engine at {endpoint} failed while {doing}: {reason}")]
    Engine {
        endpoint: String,
        doing: String,
        reason: String,
    },

    #[error("cannot reach the registry {registry}: {reason}")]
    RegistryUnreachable { registry: String, reason: String },

    #[error("the registry {registry} requires credentials and none were found for it")]
    RegistryAuthRequired { registry: String },

    #[error("the registry {registry} rejected the credentials {credentials}: {reason}")]
    RegistryAuth {
        registry: String,
        /// Where the credentials came from and whose they are, never the secret.
        credentials: String,
        reason: String,
    },

    #[error("the registry {registry} failed while {doing}: {reason}")]
    Registry {
        registry: String,
        doing: String,
        reason: String,
    },

    #[error("cannot read registry credentials for {registry}: {reason}")]
    Credentials { registry: String, reason: String },

    #[error("cannot reach the kubernetes repository {url}: {reason}")]
    RemoteUnreachable {
        url: String,
        reason: String,
        cause: RemoteCause,
    },

    /// A local path given as the repository that cannot be one.
    #[error("the kubernetes repository {url}: {problem}")]
    LocalRepository { url: String, problem: String },

    /// An IPv4 registry address in a form the engine cannot read.
    #[error(
        "the registry host `{host}` is {address} to C programs, but the Docker engine reads only \
         a.b.c.d addresses: it looks `{host}` up as a host name, and finds none"
    )]
    AddressForm {
        registry: String,
        host: String,
        address: std::net::Ipv4Addr,
    },

    #[error("`{name}` is not a branch, tag or commit of {url}")]
    RefNotFound {
        name: String,
        url: String,
        /// Branches and tags with a similar name.
        similar: Vec<String>,
    },

    #[error("{dir} exists but is not a git checkout")]
    NotACheckout { dir: PathBuf },

    #[error("there is no kubernetes checkout at {dir}, and --no-update forbids cloning one")]
    NoCheckout { dir: PathBuf },

    #[error("the kubernetes checkout at {dir} has {} local change(s); nothing was touched", changes.len())]
    Dirty { dir: PathBuf, changes: Vec<String> },

    #[error("git failed while {doing}: {reason}")]
    Git { doing: String, reason: String },

    #[error("`{program}` is not on PATH; it is needed to {needed_for}")]
    MissingTool { program: String, needed_for: String },

    #[error("`make all WHAT=cmd/kubemark` failed ({status})")]
    MakeFailed {
        status: String,
        log: PathBuf,
        /// The last lines of the log.
        tail: Vec<String>,
    },

    #[error("`make all WHAT=cmd/kubemark` succeeded but did not produce {binary}")]
    NoBinary { binary: PathBuf, log: PathBuf },

    #[error("the build context {dir} has no Dockerfile")]
    NoDockerfile { dir: PathBuf },

    #[error("cannot use --base-image: {reason}")]
    BaseImage { reason: String },

    #[error("the image build failed{}: {message}", step.as_ref().map(|s| format!(" at `{s}`")).unwrap_or_default())]
    BuildFailed {
        message: String,
        step: Option<String>,
    },

    #[error("the push of {image} failed: {message}")]
    PushFailed { image: String, message: String },

    #[error("{doing} {}: {source}", path.display())]
    Io {
        doing: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("another run{} holds the lock {}; wait for it to finish", by(*pid), path.display())]
    Locked { path: PathBuf, pid: Option<u32> },

    /// Another run builds from the same checkout (whatever its state directory).
    #[error(
        "another run{} is using the kubernetes checkout {} (lock {}); wait for it to finish",
        by(*pid), dir.display(), lock.display()
    )]
    CheckoutLocked {
        dir: PathBuf,
        lock: PathBuf,
        /// The holder's process id, when it could be read from the lock file.
        pid: Option<u32>,
    },

    #[error("cancelled")]
    Cancelled,
}

impl Error {
    /// Whether the error is the user's input, not the world: the CLI exits 2 for these.
    pub fn is_usage(&self) -> bool {
        matches!(
            self,
            Error::Reference(_)
                | Error::Usage(_)
                | Error::BaseImage { .. }
                | Error::RefNotFound { .. }
                | Error::LocalRepository { .. }
                | Error::AddressForm { .. }
        )
    }

    pub(crate) fn io(
        doing: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io {
            doing,
            path,
            source,
        }
    }

    pub(crate) fn git(doing: impl Into<String>) -> impl FnOnce(git2::Error) -> Error {
        let doing = doing.into();
        move |e| Error::Git {
            doing,
            reason: e.message().to_owned(),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// ` (pid N)` when the lock holder is known.
fn by(pid: Option<u32>) -> String {
    pid.map(|pid| format!(" (pid {pid})")).unwrap_or_default()
}

/// Why a repository could not be reached, for the hint that fixes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RemoteCause {
    /// The https server's certificate does not verify against the trusted CAs.
    UntrustedCertificate,
    /// The ssh server's host key is not in (or does not match) `~/.ssh/known_hosts`.
    UnknownHostKey,
    /// No credentials were accepted.
    Authentication,
    /// Anything else: name resolution, connection, protocol.
    Other,
}

impl RemoteCause {
    pub fn of(e: &git2::Error) -> Self {
        match (e.class(), e.code()) {
            (git2::ErrorClass::Ssh, git2::ErrorCode::Certificate) => Self::UnknownHostKey,
            (git2::ErrorClass::Ssh, _) if e.message().contains("hostkey") => Self::UnknownHostKey,
            (_, git2::ErrorCode::Certificate) => Self::UntrustedCertificate,
            (_, git2::ErrorCode::Auth) => Self::Authentication,
            _ => Self::Other,
        }
    }
}
