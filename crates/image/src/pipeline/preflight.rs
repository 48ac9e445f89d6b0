//! The read-only preflight: every check that can be made without changing
//! anything, and the [`Plan`] it prints.

use std::path::PathBuf;

use super::lock::{lock_checkout, lock_state};
use super::{
    Builder, Plan, PlanBuild, PlanPush, PlanSource, Prepared, SourceAction, Spec, blocking,
};
use crate::auth::Credentials;
use crate::context;
use crate::engine::{Endpoint, Engine};
use crate::error::{Error, Result};
use crate::event::{CancellationToken, Event, Events, Say, Stage};
use crate::make;
use crate::oci::Platform;
use crate::record::Records;
use crate::reference::ImageRef;
use crate::registry::{Access, Registry};
use crate::source::{self, Local};

/// Check everything that can be checked without changing anything: the image
/// reference, the tools, the engine, the registry and its credentials, the
/// checkout's state and the remote ref. Takes the state directory's lock.
pub async fn preflight(spec: &Spec, events: &Events) -> Result<Prepared> {
    events.emit(Event::Stage {
        stage: Stage::Preflight,
        what: match spec.builder {
            Builder::Engine => "checking the engine, the registry and the source".into(),
            Builder::Oci => "checking the registry and the source".into(),
        },
    });
    check_builder_options(spec)?;
    if spec.push
        && spec.builder == Builder::Engine
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
        // The user's own clone as both the repository and the checkout: the update
        // would detach its HEAD from the branch they work on.
        let repository = spec
            .source
            .url
            .strip_prefix("file://")
            .unwrap_or(&spec.source.url);
        if let (Ok(a), Ok(b)) = (
            std::fs::canonicalize(repository),
            std::fs::canonicalize(&spec.source.dir),
        ) && a == b
        {
            return Err(Error::LocalRepository {
                url: spec.source.url.clone(),
                problem: format!(
                    "it is also the checkout to build (--source-dir {}), which the update would move off its branch; pass --no-update to build it as it is, or another --source-dir",
                    spec.source.dir.display()
                ),
            });
        }
    }
    let platform = if spec.platforms.is_empty() {
        make::requested_platform()?
    } else {
        None
    };
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

    let engine = match spec.builder {
        Builder::Engine => {
            if spec.platforms.len() > 1
                && let Some(base) = spec.base_image.as_deref().filter(|b| *b != "scratch")
            {
                return Err(engine_platforms_need_scratch(base));
            }
            if spec.push {
                // The engine's images are pushed from the layout.
                crate::oci::Layout::check_ours(&super::build::layout_dir(spec))?;
            }
            let engine = Engine::connect(Endpoint::from_env()?).await?;
            events.note(format!(
                "Docker engine {} (API {}) at {}",
                engine.version, engine.api_version, engine.endpoint
            ));
            if spec.push && engine.containerd_store && !spec.engine_push {
                events.note(
                    "the engine keeps images in containerd's image store, whose export this tool does not read: the engine pushes (as with --engine-push)",
                );
            }
            if spec.push
                && (spec.engine_push || engine.containerd_store)
                && spec.compression != crate::oci::Compression::Gzip
            {
                return Err(Error::Usage(format!(
                    "--compression {} needs this process to push, and {}: the engine pushes gzip layers",
                    spec.compression,
                    if spec.engine_push {
                        "--engine-push is given"
                    } else {
                        "the engine keeps images in containerd's image store"
                    }
                )));
            }
            Some(engine)
        }
        Builder::Oci => {
            crate::oci::Layout::check_ours(&super::build::layout_dir(spec))?;
            events.note(format!(
                "building in this process (--builder oci), layers {}",
                spec.compression.describe()
            ));
            None
        }
    };

    let (registry, credentials) = if spec.push {
        let credentials = match &spec.credentials {
            Some(c) => Some(c.clone()),
            None => Credentials::from_docker_config(&spec.image)?,
        };
        let insecure = match &engine {
            Some(engine) => engine.is_insecure_registry(&spec.image),
            None => spec.insecure_registry || spec.image.is_loopback_registry(),
        };
        let registry =
            Registry::connect(&spec.image, credentials.as_ref(), insecure, Access::Push).await?;
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

    dockerfile_check(spec, platform.as_deref(), &local, action, resolved.as_ref()).await?;

    let plan = Plan {
        image: spec.image.to_string(),
        builder: spec.builder,
        engine: match &engine {
            Some(engine) => format!("{} ({})", engine.endpoint, engine.version),
            None => "none (--builder oci)".into(),
        },
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
            platforms: spec.platforms.iter().map(ToString::to_string).collect(),
            compression: spec.compression,
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

fn engine_platforms_need_scratch(base: &str) -> Error {
    Error::Usage(format!(
        "--platforms with --builder engine needs a scratch base, and the Dockerfile's is {base} (the engine keeps one local image per base name); use --builder oci, which reads the base's image per platform"
    ))
}

/// What the Dockerfile that will be built says, refused now (before a clone,
/// an update or make) when it is already on disk: the checkout is built as it is,
/// or it is already at the commit the remote names.
async fn dockerfile_check(
    spec: &Spec,
    platform: Option<&str>,
    local: &Local,
    action: SourceAction,
    resolved: Option<&crate::source::Resolved>,
) -> Result<()> {
    let head = match local {
        Local::Checkout { head, .. } => head.map(|h| h.to_string()),
        Local::Absent => None,
    };
    let current = action == SourceAction::AsIs
        || (action == SourceAction::Update
            && head.is_some()
            && resolved.and_then(|r| r.commit.clone()) == head);
    let dockerfile = spec
        .source
        .dir
        .join(context::CONTEXT_DIR)
        .join("Dockerfile");
    let platforms = match (&spec.platforms[..], platform) {
        ([], Some(one)) => vec![Platform::parse(one).map_err(Error::Usage)?],
        ([], None) => vec![Platform::host()],
        (many, _) => many.to_vec(),
    };
    let text = match std::fs::read_to_string(&dockerfile) {
        Ok(text) if current => text.trim_start_matches('\u{feff}').to_owned(),
        // The Dockerfile comes later; a base given by flag can be read now.
        _ => {
            if spec.builder == Builder::Oci
                && let Some(base) = spec.base_image.as_deref()
            {
                for platform in &platforms {
                    crate::oci::base::resolve_to_build_on(base, platform, spec.insecure_registry)
                        .await?;
                }
            }
            return Ok(());
        }
    };
    let text = match &spec.base_image {
        Some(base) => context::rewrite_from(&text, base)?.0,
        None => text,
    };
    match spec.builder {
        Builder::Engine => {
            if spec.platforms.len() > 1
                && let Some(base) = context::final_from(&text).filter(|b| b != "scratch")
            {
                return Err(engine_platforms_need_scratch(&base));
            }
        }
        Builder::Oci => {
            // Each platform's recipe, and its base read from where it lies: a base
            // that is missing, of another platform or unreadable is named now.
            for platform in &platforms {
                let scope = crate::oci::dockerfile::Scope {
                    platform,
                    base_env: &[],
                };
                let recipe = crate::oci::dockerfile::parse(&text, scope)?;
                crate::oci::base::resolve_to_build_on(
                    &recipe.base,
                    platform,
                    spec.insecure_registry,
                )
                .await?;
            }
        }
    }
    Ok(())
}

/// The choices that only one builder can carry out, refused for the other.
fn check_builder_options(spec: &Spec) -> Result<()> {
    let base = spec.base_image.as_deref();
    match base {
        Some("scratch") | None => {}
        Some(oci) if oci.starts_with("oci:") => {
            if spec.builder == Builder::Engine {
                return Err(Error::BaseImage {
                    reason: format!(
                        "`{oci}` is a local OCI layout, which only --builder oci reads; pass --builder oci, or name an image the engine has or can pull"
                    ),
                });
            }
            let path = &oci[4..];
            // It travels in the Dockerfile's FROM line, whose words the builder expands.
            if path.is_empty() {
                return Err(Error::BaseImage {
                    reason: "`oci:` names no layout: give oci:PATH".into(),
                });
            }
            if path.contains(|c: char| c.is_whitespace() || "$\"'\\`".contains(c)) {
                return Err(Error::BaseImage {
                    reason: format!(
                        "`{oci}`: give the layout's path without spaces, quotes, `$` or backslashes"
                    ),
                });
            }
            crate::oci::Layout::existing(std::path::Path::new(path))?;
            let ours = super::build::layout_dir(spec);
            if let (Ok(a), Ok(b)) = (std::fs::canonicalize(path), std::fs::canonicalize(&ours))
                && a == b
            {
                return Err(Error::BaseImage {
                    reason: format!(
                        "`{oci}` is this tool's own layout, which each run prunes; copy the image elsewhere first (e.g. `cp -r {} /tmp/base-layout`)",
                        ours.display()
                    ),
                });
            }
        }
        Some(image) => {
            ImageRef::parse(image).map_err(|e| Error::BaseImage {
                reason: e.to_string(),
            })?;
        }
    }
    if spec.builder == Builder::Oci && spec.engine_push {
        return Err(Error::Usage(
            "--engine-push is for --builder engine; --builder oci pushes through the registry API"
                .into(),
        ));
    }
    if spec.builder == Builder::Engine && spec.insecure_registry {
        return Err(Error::Usage(
            "--insecure-registry is for --builder oci; the engine follows its own insecure-registries setting"
                .into(),
        ));
    }
    Ok(())
}

fn make_log(spec: &Spec) -> PathBuf {
    spec.state_dir.join("make.log")
}
