//! The image pipeline as stages with typed values between them:
//! [`Spec`] → [`preflight`] (read-only checks, a printable [`Plan`]) →
//! [`execute`] (source, make, image, push) → [`Outcome`] and a [`Record`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use sha2::{Digest, Sha256};

use crate::auth::Credentials;
use crate::context::{self, Context};
use crate::engine::{Endpoint, Engine};
use crate::error::{Error, Result};
use crate::event::{CancellationToken, Event, Events, Say, Stage};
use crate::make;
use crate::record::{Record, Records};
use crate::reference::ImageRef;
use crate::registry::Registry;
use crate::source::{self, Local, Resolved, SourceSpec};

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
}

/// What a run will do, decided by the read-only preflight.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Plan {
    pub image: String,
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
    pub platform: Option<String>,
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
    engine: Engine,
    registry: Option<Registry>,
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

/// One run at a time per state directory: `image.lock` in it.
fn lock_state(state_dir: &Path) -> Result<std::fs::File> {
    std::fs::create_dir_all(state_dir).map_err(Error::io("creating", state_dir))?;
    let path = state_dir.join("image.lock");
    try_lock(&path)?.map_err(|pid| Error::Locked { path, pid })
}

/// One run at a time per checkout, whatever the state directory: the lock file
/// `.<name>.kubemark.lock` beside it (not in it: that would be a local change),
/// found through the checkout's real path so that every spelling of it meets.
fn lock_checkout(dir: &Path) -> Result<std::fs::File> {
    let lock = checkout_lock_path(dir)?;
    try_lock(&lock)?.map_err(|pid| Error::CheckoutLocked {
        dir: dir.to_owned(),
        lock,
        pid,
    })
}

fn checkout_lock_path(dir: &Path) -> Result<PathBuf> {
    let real = match dir.canonicalize() {
        Ok(real) => real,
        Err(_) => {
            // Not there yet: its parent is made (as the clone would make it) and resolved.
            let parent = match dir.parent() {
                Some(p) if !p.as_os_str().is_empty() => p,
                _ => Path::new("."),
            };
            std::fs::create_dir_all(parent).map_err(Error::io("creating", parent))?;
            let parent = parent
                .canonicalize()
                .map_err(Error::io("resolving", parent))?;
            match dir.file_name() {
                Some(name) => parent.join(name),
                None => parent,
            }
        }
    };
    match (real.parent(), real.file_name()) {
        (Some(parent), Some(name)) => {
            Ok(parent.join(format!(".{}.kubemark.lock", name.to_string_lossy())))
        }
        _ => Err(Error::Usage(format!(
            "the source directory {} has no parent directory to hold its lock; pass --source-dir with a \
             directory below /",
            dir.display()
        ))),
    }
}

/// Take the lock on `path` without waiting and write this process's id in it;
/// when another process holds it, `Err` with the id that process wrote, if any.
fn try_lock(path: &Path) -> Result<std::result::Result<std::fs::File, Option<u32>>> {
    use std::io::{Read, Seek, Write};
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(path)
        .map_err(Error::io("opening", path))?;
    match file.try_lock() {
        Ok(()) => {
            let pid = format!("{}\n", std::process::id());
            file.set_len(0)
                .and_then(|()| file.rewind())
                .and_then(|()| file.write_all(pid.as_bytes()))
                .map_err(Error::io("writing", path))?;
            Ok(Ok(file))
        }
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut text = String::new();
            let _ = file.read_to_string(&mut text);
            Ok(Err(text.trim().parse().ok()))
        }
        Err(std::fs::TryLockError::Error(e)) => Err(Error::io("locking", path)(e)),
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f).await.unwrap_or_else(|e| {
        Err(Error::Usage(format!(
            "internal: a worker thread failed: {e}"
        )))
    })
}

/// Run the stages the plan describes.
pub async fn execute(
    spec: &Spec,
    prepared: Prepared,
    events: &Events,
    cancel: &CancellationToken,
) -> Result<Outcome> {
    let Prepared {
        plan,
        engine,
        registry,
        credentials,
        local,
        resolved,
        _lock,
        _checkout_lock,
    } = prepared;

    // Source.
    events.emit(Event::Stage {
        stage: Stage::Source,
        what: match plan.source.action {
            SourceAction::Clone => format!(
                "cloning {} into {}",
                plan.source.repository,
                spec.source.dir.display()
            ),
            SourceAction::Update => format!("updating {}", spec.source.dir.display()),
            SourceAction::AsIs => format!("using {} as it is", spec.source.dir.display()),
        },
    });
    let checkout = {
        let (source_spec, events, cancel) = (spec.source.clone(), events.clone(), cancel.clone());
        blocking(move || source::sync(&source_spec, &local, resolved.as_ref(), &events, &cancel))
            .await?
    };
    events.emit(Event::StageDone {
        stage: Stage::Source,
        what: format!(
            "{} at {}{}",
            checkout.version,
            checkout.commit,
            if checkout.dirty { " (dirty)" } else { "" }
        ),
    });

    // Make.
    make::check_tools(&checkout.dir)?;
    events.emit(Event::Stage {
        stage: Stage::Make,
        what: format!(
            "make all WHAT=cmd/kubemark (log: {})",
            plan.build.log.display()
        ),
    });
    let started = std::time::Instant::now();
    let binary = {
        let (dir, log, events, cancel) = (
            checkout.dir.clone(),
            plan.build.log.clone(),
            events.clone(),
            cancel.clone(),
        );
        blocking(move || make::run(&dir, &log, &events, &cancel)).await?
    };
    let mut context = {
        let (dir, bin, base) = (
            checkout.dir.clone(),
            binary.path.clone(),
            spec.base_image.clone(),
        );
        blocking(move || Context::prepare(&dir, &bin, base.as_deref())).await?
    };
    events.emit(Event::StageDone {
        stage: Stage::Make,
        what: format!(
            "{} ({} bytes, sha256 {}) in {:.1}s",
            binary.path.display(),
            context.binary_size,
            &context.binary_sha256[..12],
            started.elapsed().as_secs_f64()
        ),
    });

    // Up to date?
    let base_id = if context.base == "scratch" {
        "scratch".to_owned()
    } else {
        engine
            .image_id(&context.base)
            .await?
            .unwrap_or_else(|| format!("not-local:{}", context.base))
    };
    let mut labels = BTreeMap::new();
    labels.insert(
        "org.opencontainers.image.title".to_owned(),
        "kubemark".to_owned(),
    );
    labels.insert(
        "org.opencontainers.image.source".to_owned(),
        source::redact_url(&spec.source.url),
    );
    labels.insert(
        "org.opencontainers.image.revision".to_owned(),
        checkout.commit.clone(),
    );
    labels.insert(
        "org.opencontainers.image.version".to_owned(),
        checkout.version.clone(),
    );
    labels.insert(
        "org.opencontainers.image.base.name".to_owned(),
        context.base.clone(),
    );
    labels.insert(DIRTY_LABEL.to_owned(), checkout.dirty.to_string());
    labels.insert(
        "dev.kubemark.binary.sha256".to_owned(),
        context.binary_sha256.clone(),
    );
    let inputs = fingerprint(
        &spec.image,
        &context,
        &base_id,
        &labels,
        binary.platform.as_deref(),
    );
    labels.insert(INPUTS_LABEL.to_owned(), inputs.clone());
    context.set_labels(&labels);
    let context = Arc::new(context);
    // The Dockerfile exactly as the engine gets it, for whoever wonders what was built.
    let sent = spec.state_dir.join("Dockerfile.sent");
    std::fs::write(&sent, context.dockerfile_sent()).map_err(Error::io("writing", &sent))?;

    let records = Records::new(&spec.state_dir);
    let previous = records
        .load(&spec.image.to_string())
        .filter(|r| r.inputs == inputs);
    if let Some(previous) = previous.filter(|_| !spec.force) {
        let current = match &registry {
            Some(registry) => registry
                .manifest_digest(&spec.image)
                .await?
                .filter(|d| Some(d) == previous.digest.as_ref()),
            None => engine
                .image_id(&spec.image.to_string())
                .await?
                .filter(|id| *id == previous.image_id && previous.digest.is_none()),
        };
        if current.is_some() {
            let record_path = records.save(&previous)?;
            return Ok(Outcome {
                status: Status::UpToDate,
                record: previous,
                record_path,
            });
        }
    }

    // Image.
    events.emit(Event::Stage {
        stage: Stage::Image,
        what: format!("building {} from {}", spec.image, context.dir.display()),
    });
    let started = std::time::Instant::now();
    let built = engine
        .build(
            &spec.image,
            Arc::clone(&context),
            binary.platform.as_deref(),
            events,
            cancel,
        )
        .await?;
    events.emit(Event::StageDone {
        stage: Stage::Image,
        what: format!("{} in {:.1}s", built.id, started.elapsed().as_secs_f64()),
    });

    // Push.
    let digest = match &registry {
        Some(registry) => {
            events.emit(Event::Stage {
                stage: Stage::Push,
                what: format!("pushing {} to {}", spec.image, registry.base_url()),
            });
            let started = std::time::Instant::now();
            let digest = engine
                .push(&spec.image, credentials.as_ref(), events, cancel)
                .await?;
            match registry.manifest_digest(&spec.image).await? {
                Some(served) if served == digest => {}
                served => {
                    return Err(Error::PushFailed {
                        image: spec.image.to_string(),
                        message: format!(
                            "the engine reported {digest} but the registry serves {}",
                            served.as_deref().unwrap_or("nothing")
                        ),
                    });
                }
            }
            events.emit(Event::StageDone {
                stage: Stage::Push,
                what: format!("{digest} in {:.1}s", started.elapsed().as_secs_f64()),
            });
            Some(digest)
        }
        None => None,
    };

    let record = Record {
        reference: spec.image.to_string(),
        image: match &digest {
            Some(d) => spec.image.with_digest(d).to_string(),
            None => spec.image.to_string(),
        },
        digest,
        image_id: built.id,
        commit: checkout.commit,
        version: checkout.version,
        dirty: checkout.dirty,
        binary_sha256: context.binary_sha256.clone(),
        inputs,
        source: source::redact_url(&spec.source.url),
    };
    let record_path = records.save(&record)?;
    Ok(Outcome {
        status: if registry.is_some() {
            Status::Pushed
        } else {
            Status::Built
        },
        record,
        record_path,
    })
}

/// Preflight, then execute.
pub async fn run(spec: &Spec, events: &Events, cancel: &CancellationToken) -> Result<Outcome> {
    let prepared = preflight(spec, events).await?;
    execute(spec, prepared, events, cancel).await
}

/// A digest of everything that goes into the image: same fingerprint, same image.
fn fingerprint(
    image: &ImageRef,
    context: &Context,
    base_id: &str,
    labels: &BTreeMap<String, String>,
    platform: Option<&str>,
) -> String {
    let mut h = Sha256::new();
    h.update(b"kubemark-image-inputs v1\n");
    h.update(format!(
        "ref {image}\ncontext {}\nbase {base_id}\nplatform {}\n",
        context.digest,
        platform.unwrap_or("")
    ));
    for (k, v) in labels {
        h.update(format!("label {k}={v}\n"));
    }
    format!("sha256:{}", context::hex(&h.finalize()))
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
