//! The stages the plan describes: source, make, image, push; skipped after make
//! when the recorded image was built from the same inputs.

use std::sync::Arc;

use super::inputs::{fingerprint, labels};
use super::{INPUTS_LABEL, Outcome, Prepared, SourceAction, Spec, Status, blocking};
use crate::context::Context;
use crate::error::{Error, Result};
use crate::event::{CancellationToken, Event, Events, Stage};
use crate::make;
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
    let mut labels = labels(&spec.source.url, &checkout, &context);
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
