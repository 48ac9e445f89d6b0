//! The read-only preflight: every check that can be made without changing
//! anything, and the [`Plan`] it prints.

use std::path::PathBuf;

use super::lock::{lock_checkout, lock_state};
use super::{Plan, PlanBuild, PlanPush, PlanSource, Prepared, SourceAction, Spec, blocking};
use crate::auth::Credentials;
use crate::context;
use crate::engine::{Endpoint, Engine};
use crate::error::{Error, Result};
use crate::event::{CancellationToken, Event, Events, Say, Stage};
use crate::make;
use crate::record::Records;
use crate::reference::ImageRef;
use crate::registry::Registry;
use crate::source::{self, Local};

/// Check everything that can be checked without changing anything: the image
/// reference, the tools, the engine, the registry and its credentials, the
/// checkout's state and the remote ref. Takes the state directory's lock.
pub async fn preflight(spec: &Spec, events: &Events) -> Result<Prepared> {
    events.emit(Event::Stage {
        stage: Stage::Preflight,
        what: "checking the engine, the registry and the source".into(),
    });
    if let Some(base) = &spec.base_image
        && base != "scratch"
    {
        ImageRef::parse(base).map_err(|e| Error::BaseImage {
            reason: e.to_string(),
        })?;
    }
    if spec.push
        && let Some(address) = crate::engine::unreadable_address(&spec.image.registry)
    {
        return Err(Error::AddressForm {
            registry: spec.image.registry.clone(),
            host: crate::reference::host_without_port(&spec.image.registry).to_owned(),
            address,
        });
    }
    if spec.source.update {
        source::check_local_repository(&spec.source.url)?;
    }
    let platform = make::requested_platform()?;
    if spec.image.tag == "latest" {
        events.warn("the tag `latest` is shared by every job that pushes it; jobs overwrite each other's image (kubernetes#59567): prefer a unique tag");
    }
    let lock = lock_state(&spec.state_dir)?;
    // Held from before the clone or update until the push is done: another run on
    // the same checkout (from another state directory) would move it mid-build.
    let checkout_lock = lock_checkout(&spec.source.dir)?;

    let local = source::inspect(&spec.source.dir)?;
    let changes = match &local {
        Local::Absent if !spec.source.update => {
            return Err(Error::NoCheckout {
                dir: spec.source.dir.clone(),
            });
        }
        Local::Checkout { changes, .. } if !changes.is_empty() && !spec.source.allow_dirty => {
            return Err(Error::Dirty {
                dir: spec.source.dir.clone(),
                changes: changes.clone(),
            });
        }
        Local::Checkout { changes, .. } => changes.clone(),
        Local::Absent => Vec::new(),
    };
    // `go` is checked too when the checkout exists (and again after a clone).
    make::check_tools(&spec.source.dir)?;

    let engine = Engine::connect(Endpoint::from_env()?).await?;
    events.note(format!(
        "Docker engine {} (API {}) at {}",
        engine.version, engine.api_version, engine.endpoint
    ));

    let (registry, credentials) = if spec.push {
        let credentials = match &spec.credentials {
            Some(c) => Some(c.clone()),
            None => Credentials::from_docker_config(&spec.image)?,
        };
        let insecure = engine.is_insecure_registry(&spec.image);
        let registry = Registry::connect(&spec.image, credentials.as_ref(), insecure).await?;
        events.note(format!(
            "registry {} answers, {}",
            registry.base_url(),
            registry.auth_description
        ));
        (Some(registry), credentials)
    } else {
        (None, None)
    };

    let action = match &local {
        Local::Absent => SourceAction::Clone,
        Local::Checkout { .. } if !spec.source.update || !changes.is_empty() => SourceAction::AsIs,
        Local::Checkout { .. } => SourceAction::Update,
    };
    let resolved = if action == SourceAction::AsIs {
        None
    } else {
        let (url, git_ref) = (spec.source.url.clone(), spec.source.git_ref.clone());
        let remote_events = events.clone();
        let resolved = blocking(move || {
            source::resolve(
                &url,
                git_ref.as_deref(),
                &remote_events,
                &CancellationToken::new(),
            )
        })
        .await?;
        let target = resolved.refname.as_deref().unwrap_or("commit");
        let commit = resolved.commit.as_deref().unwrap_or("?");
        events.note(format!(
            "{} has {target} at {commit}",
            source::redact_url(&spec.source.url)
        ));
        Some(resolved)
    };

    let plan = Plan {
        image: spec.image.to_string(),
        engine: format!("{} ({})", engine.endpoint, engine.version),
        source: PlanSource {
            action,
            dir: spec.source.dir.clone(),
            repository: source::redact_url(&spec.source.url),
            git_ref: resolved.clone(),
            depth: spec.source.depth,
            changes,
        },
        build: PlanBuild {
            command: "make all WHAT=cmd/kubemark".into(),
            log: make_log(spec),
            dockerfile: spec
                .source
                .dir
                .join(context::CONTEXT_DIR)
                .join("Dockerfile"),
            base_image: spec.base_image.clone(),
            platform,
        },
        push: registry.as_ref().map(|r| PlanPush {
            registry: r.base_url().to_owned(),
            auth: r.auth_description.clone(),
        }),
        record: Records::new(&spec.state_dir).latest_path(),
    };
    events.emit(Event::StageDone {
        stage: Stage::Preflight,
        what: "all checks passed".into(),
    });
    Ok(Prepared {
        plan,
        engine,
        registry,
        credentials,
        local,
        resolved,
        _lock: lock,
        _checkout_lock: checkout_lock,
    })
}

fn make_log(spec: &Spec) -> PathBuf {
    spec.state_dir.join("make.log")
}
