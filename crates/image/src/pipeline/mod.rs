//! The image pipeline as stages with typed values between them:
//! [`Spec`] → [`preflight`] (read-only checks, a printable [`Plan`]) →
//! [`execute`] (source, make, image, push) → [`Outcome`] and a [`Record`].

mod build;
mod engine_push;
mod execute;
mod inputs;
mod lock;
mod preflight;

use std::path::PathBuf;

use crate::auth::Credentials;
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::event::{CancellationToken, Events};
use crate::oci::{Compression, Platform};
use crate::record::Record;
use crate::reference::ImageRef;
use crate::registry::Registry;
use crate::source::{Local, Resolved, SourceSpec};

pub use execute::execute;
pub use preflight::preflight;

/// Label that marks an image built from a checkout with local changes.
pub const DIRTY_LABEL: &str = "dev.kubemark.dirty";
/// Label holding the fingerprint of the image's inputs.
pub const INPUTS_LABEL: &str = "dev.kubemark.inputs";

/// Everything the user asked for.
#[derive(Debug, Clone)]
pub struct Spec {
    pub image: ImageRef,
    pub source: SourceSpec,
    /// Replace the Dockerfile's final `FROM` with this image.
    pub base_image: Option<String>,
    pub push: bool,
    /// Build and push even when nothing changed.
    pub force: bool,
    /// Credentials given explicitly; otherwise the Docker config is asked.
    pub credentials: Option<Credentials>,
    /// Where records, logs and the lock live (`target/kubemark`).
    pub state_dir: PathBuf,
    /// Who builds and pushes the image.
    pub builder: Builder,
    /// How the OCI builder compresses layers.
    pub compression: Compression,
    /// Platforms to build, one image each under one index; empty: one image, for the
    /// platform `KUBE_BUILD_PLATFORMS` names or else the host's.
    pub platforms: Vec<Platform>,
    /// Let the OCI builder talk plain HTTP to a registry that is not on this machine.
    pub insecure_registry: bool,
    /// The engine pushes its image itself (else this process does, through the registry API).
    pub engine_push: bool,
}

/// Who builds and pushes the image.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Builder {
    /// The Docker engine (bollard): build from the Dockerfile, push through the engine.
    #[default]
    Engine,
    /// This process: layers, config and manifest written here, pushed through the registry API.
    Oci,
}

impl Builder {
    pub fn as_str(self) -> &'static str {
        match self {
            Builder::Engine => "engine",
            Builder::Oci => "oci",
        }
    }
}

/// What a run will do, decided by the read-only preflight.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Plan {
    pub image: String,
    pub builder: Builder,
    /// The engine, or `none` for the OCI builder.
    pub engine: String,
    pub source: PlanSource,
    pub build: PlanBuild,
    pub push: Option<PlanPush>,
    pub record: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PlanSource {
    pub action: SourceAction,
    pub dir: PathBuf,
    pub repository: String,
    #[serde(rename = "ref")]
    pub git_ref: Option<Resolved>,
    pub depth: u32,
    /// Local changes found (only with `--allow-dirty`).
    pub changes: Vec<String>,
}

/// What the source stage will do with the checkout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SourceAction {
    /// No checkout yet: clone the ref.
    Clone,
    /// A clean checkout: fetch the ref and check it out.
    Update,
    /// Build what is checked out (`--no-update`, or local changes with `--allow-dirty`).
    AsIs,
}

impl SourceAction {
    /// `clone`, `update` or `as-is`, as the plan prints it (text and JSON alike).
    pub fn as_str(self) -> &'static str {
        match self {
            SourceAction::Clone => "clone",
            SourceAction::Update => "update",
            SourceAction::AsIs => "as-is",
        }
    }
}

impl std::fmt::Display for SourceAction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PlanBuild {
    pub command: String,
    pub log: PathBuf,
    pub dockerfile: PathBuf,
    pub base_image: Option<String>,
    /// The one platform `KUBE_BUILD_PLATFORMS` names, if it does.
    pub platform: Option<String>,
    /// `--platforms`: one image each, under one index.
    pub platforms: Vec<String>,
    /// Layer compression of what is pushed (either builder).
    pub compression: Compression,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PlanPush {
    pub registry: String,
    pub auth: String,
}

/// The preflight's findings, carried into [`execute`].
#[derive(Debug)]
pub struct Prepared {
    pub plan: Plan,
    engine: Option<Engine>,
    registry: Option<Registry>,
    /// For the engine's own push.
    credentials: Option<Credentials>,
    local: Local,
    resolved: Option<Resolved>,
    _lock: std::fs::File,
    _checkout_lock: std::fs::File,
}

/// What a run did.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Status {
    /// Built and pushed.
    Pushed,
    /// Built, not pushed (`--no-push`).
    Built,
    /// Nothing changed since the recorded run; nothing was built or pushed.
    UpToDate,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Outcome {
    pub status: Status,
    #[serde(flatten)]
    pub record: Record,
    /// Where the record was written.
    pub record_path: PathBuf,
}

/// Preflight, then execute.
pub async fn run(spec: &Spec, events: &Events, cancel: &CancellationToken) -> Result<Outcome> {
    let prepared = preflight(spec, events).await?;
    execute(spec, prepared, events, cancel).await
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f).await.unwrap_or_else(|e| {
        Err(Error::Usage(format!(
            "internal: a worker thread failed: {e}"
        )))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_actions_print_and_serialise_as_before() {
        for (action, text) in [
            (SourceAction::Clone, "clone"),
            (SourceAction::Update, "update"),
            (SourceAction::AsIs, "as-is"),
        ] {
            assert_eq!(action.to_string(), text);
            assert_eq!(serde_json::to_value(action).unwrap(), text);
        }
    }
}
