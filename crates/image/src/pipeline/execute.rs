//! The stages the plan describes: source, make, image, push; skipped after make
//! when the recorded image was built from the same inputs.

use std::sync::Arc;

use super::build::{self, Target};
use super::inputs::{combine, fingerprint, labels};
use super::{Builder, INPUTS_LABEL, Outcome, Prepared, SourceAction, Spec, Status, blocking};
use crate::context::Context;
use crate::error::{Error, Result};
use crate::event::{CancellationToken, Event, Events, Stage};
use crate::make;
use crate::oci::{self, Platform};
use crate::record::{Record, Records};
use crate::source;

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

    // Make, once per platform.
    let make_platforms: Vec<Option<String>> = if spec.platforms.is_empty() {
        vec![plan.build.platform.clone()]
    } else {
        spec.platforms.iter().map(|p| Some(p.to_string())).collect()
    };
    let mut targets = Vec::new();
    for make_platform in make_platforms {
        make::check_tools(&checkout.dir)?;
        let log = match (&make_platform, spec.platforms.len() > 1) {
            (Some(p), true) => plan
                .build
                .log
                .with_file_name(format!("make-{}.log", p.replace('/', "-"))),
            _ => plan.build.log.clone(),
        };
        events.emit(Event::Stage {
            stage: Stage::Make,
            what: format!(
                "make all WHAT=cmd/kubemark{} (log: {})",
                make_platform
                    .as_ref()
                    .map(|p| format!(" KUBE_BUILD_PLATFORMS={p}"))
                    .unwrap_or_default(),
                log.display()
            ),
        });
        let started = std::time::Instant::now();
        let binary = {
            let (dir, log, platform, events, cancel) = (
                checkout.dir.clone(),
                log.clone(),
                make_platform.clone(),
                events.clone(),
                cancel.clone(),
            );
            blocking(move || make::run(&dir, &log, platform.as_deref(), &events, &cancel)).await?
        };
        let context = {
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
        let platform = match &make_platform {
            Some(p) => Platform::parse(p).map_err(Error::Usage)?,
            None => Platform::host(),
        };
        targets.push((platform, make_platform, context));
    }

    // The base, labels and fingerprint of each platform's image.
    let mut built_targets = Vec::new();
    let mut fingerprints = Vec::new();
    for (platform, make_platform, mut context) in targets {
        let (base_id, base) = match (&engine, spec.builder) {
            // A base named through a build argument (`FROM ${BASE}`) is the engine's
            // to resolve; its text stands for it in the fingerprint.
            (Some(_), Builder::Engine) if context.base.contains('$') => {
                (format!("unresolved:{}", context.base), None)
            }
            (Some(engine), Builder::Engine) if context.base != "scratch" => (
                engine
                    .image_id(&context.base)
                    .await?
                    .unwrap_or_else(|| format!("not-local:{}", context.base)),
                None,
            ),
            (_, Builder::Engine) => ("scratch".to_owned(), None),
            (_, Builder::Oci) => {
                // The base's name (its environment is not needed for that).
                let scope = oci::dockerfile::Scope {
                    platform: &platform,
                    base_env: &[],
                };
                let recipe = oci::dockerfile::parse(&context.dockerfile, scope)?;
                let base = tokio::select! {
                    base = oci::base::resolve_to_build_on(
                        &recipe.base,
                        &platform,
                        spec.insecure_registry,
                    ) => base?,
                    () = cancel.cancelled() => return Err(Error::Cancelled),
                };
                let id = base
                    .config_digest
                    .clone()
                    .unwrap_or_else(|| "scratch".to_owned());
                (id, Some(base))
            }
        };
        let mut labels = labels(&spec.source.url, &checkout, &context);
        if let Some(base) = &base {
            labels.insert(
                "org.opencontainers.image.base.name".to_owned(),
                base.label.clone(),
            );
        }
        let inputs = fingerprint(&context, &base_id, &labels, make_platform.as_deref());
        labels.insert(INPUTS_LABEL.to_owned(), inputs.clone());
        context.set_labels(&labels);
        fingerprints.push(inputs);
        built_targets.push(Target {
            platform,
            make_platform,
            context: Arc::new(context),
            base,
        });
    }
    let targets = built_targets;
    let inputs = combine(&fingerprints, spec.builder, spec.compression);
    // The Dockerfile exactly as the builder gets it, for whoever wonders what was built.
    let sent = spec.state_dir.join("Dockerfile.sent");
    std::fs::write(&sent, targets[0].context.dockerfile_sent())
        .map_err(Error::io("writing", &sent))?;

    let records = Records::new(&spec.state_dir);
    let previous = records
        .load(&spec.image.to_string())
        .filter(|r| r.inputs == inputs);
    if let Some(previous) = previous.filter(|_| !spec.force) {
        let current = match (&registry, &engine) {
            (Some(registry), _) => registry
                .manifest_digest(&spec.image)
                .await?
                .filter(|d| Some(d) == previous.digest.as_ref()),
            (None, Some(engine)) => engine
                .image_id(&spec.image.to_string())
                .await?
                .filter(|id| *id == previous.image_id && previous.digest.is_none()),
            // Built into the layout and not pushed: building again costs little.
            (None, None) => None,
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

    // Image and push.
    let produced = match (&engine, spec.builder) {
        (Some(engine), Builder::Engine) => {
            let push = registry.as_ref().map(|r| build::Push {
                registry: r,
                credentials: credentials.as_ref(),
            });
            build::with_engine(spec, engine, push, &targets, events, cancel).await?
        }
        _ => build::with_oci(spec, registry.as_ref(), &targets, events, cancel).await?,
    };
    let digest = produced.digest.clone();
    let context = &targets[0].context;

    let record = Record {
        reference: spec.image.to_string(),
        image: match &digest {
            Some(d) => spec.image.with_digest(d).to_string(),
            None => spec.image.to_string(),
        },
        digest,
        image_id: produced.image_id,
        commit: checkout.commit,
        version: checkout.version,
        dirty: checkout.dirty,
        binary_sha256: context.binary_sha256.clone(),
        inputs,
        source: source::redact_url(&spec.source.url),
        builder: Some(spec.builder.as_str().to_owned()),
        platforms: produced.platforms,
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
