//! The image and push stages, once per builder: the engine (bollard builds;
//! its images are read from its export into the layout, compressed on every
//! core, and pushed through the registry API, several platforms joined by a
//! manifest list) and the OCI builder (this process; one image per platform in
//! the layout, an OCI index over them). Both push with `oci::build::push`.

use std::sync::Arc;

use super::Spec;
use crate::context::Context;
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::event::{CancellationToken, Event, Events, Stage};
use crate::oci::{self, Layout, Platform};
use crate::record::PlatformImage;
use crate::reference::ImageRef;
use crate::registry::Registry;

/// One platform's binary, its context and (for the OCI builder) its base.
#[derive(Debug)]
pub(super) struct Target {
    pub platform: Platform,
    /// As given to make and the engine (`None`: make's default).
    pub make_platform: Option<String>,
    pub context: Arc<Context>,
    pub base: Option<oci::base::Base>,
}

/// What the image and push stages made.
#[derive(Debug)]
pub(super) struct Produced {
    /// The first platform's image ID (config digest).
    pub image_id: String,
    /// The tag's digest in the registry, when pushed.
    pub digest: Option<String>,
    pub platforms: Vec<PlatformImage>,
}

/// Where the OCI builder keeps its images.
pub(super) fn layout_dir(spec: &Spec) -> std::path::PathBuf {
    spec.state_dir.join("oci")
}

/// Where an image is pushed, and the credentials the engine's own push sends.
#[derive(Debug, Clone, Copy)]
pub(super) struct Push<'a> {
    pub registry: &'a Registry,
    pub credentials: Option<&'a crate::auth::Credentials>,
}

pub(super) async fn with_engine(
    spec: &Spec,
    engine: &Engine,
    push: Option<Push<'_>>,
    targets: &[Target],
    events: &Events,
    cancel: &CancellationToken,
) -> Result<Produced> {
    let several = targets.len() > 1;
    if several && let Some(t) = targets.iter().find(|t| t.context.base != "scratch") {
        return Err(Error::Usage(format!(
            "--platforms with --builder engine needs a scratch base, and the Dockerfile's is {} (the engine keeps one local image per base name); use --builder oci, which reads the base's image per platform",
            t.context.base
        )));
    }
    // Every platform is built before any is pushed: a build that fails pushes nothing.
    let mut built = Vec::new();
    for target in targets {
        // Several platforms: each under its own tag (the engine's; pushed only by
        // the engine's own push).
        let image = if several {
            per_platform_tag(&spec.image, &target.platform)?
        } else {
            spec.image.clone()
        };
        events.emit(Event::Stage {
            stage: Stage::Image,
            what: format!("building {image} from {}", target.context.dir.display()),
        });
        let started = std::time::Instant::now();
        let id = engine
            .build(
                &image,
                Arc::clone(&target.context),
                target.make_platform.as_deref(),
                events,
                cancel,
            )
            .await?
            .id;
        events.emit(Event::StageDone {
            stage: Stage::Image,
            what: format!("{id} in {:.1}s", started.elapsed().as_secs_f64()),
        });
        built.push((image, id, target));
    }
    let mut platforms: Vec<PlatformImage> = built
        .iter()
        .map(|(_, id, target)| PlatformImage {
            platform: target.platform.to_string(),
            digest: None,
            image_id: id.clone(),
            binary_sha256: target.context.binary_sha256.clone(),
        })
        .collect();
    let digest = match push {
        Some(push) if spec.engine_push || engine.containerd_store => {
            for (p, (image, _, _)) in platforms.iter_mut().zip(&built) {
                let digest = super::engine_push::push_one(
                    engine,
                    push.registry,
                    image,
                    push.credentials,
                    events,
                    cancel,
                )
                .await?;
                p.digest = Some(digest);
            }
            if several {
                Some(
                    super::engine_push::manifest_list(push.registry, &spec.image, &platforms)
                        .await?,
                )
            } else {
                platforms[0].digest.clone()
            }
        }
        Some(push) => {
            let layout = Layout::create(&layout_dir(spec))?;
            let pushed =
                push_engine_images(spec, engine, push.registry, &layout, &built, events, cancel)
                    .await;
            // Pushed, the registry holds the blobs; failed, the next run exports again.
            if let Err(e) = layout.prune_unnamed() {
                events.emit(Event::Warning(format!(
                    "{} keeps blobs of this push: {e}",
                    layout.dir.display()
                )));
            }
            let (digest, images) = pushed?;
            for (p, image) in platforms.iter_mut().zip(&images) {
                p.digest = Some(image.manifest.digest.clone());
            }
            Some(digest)
        }
        None => None,
    };
    Ok(Produced {
        image_id: platforms[0].image_id.clone(),
        digest,
        platforms,
    })
}

/// `repo:tag-linux-arm64`: the engine's local name for one platform of several.
fn per_platform_tag(image: &ImageRef, platform: &Platform) -> Result<ImageRef> {
    let suffix = platform.to_string().replace('/', "-");
    ImageRef::kubemark(&image.registry, &format!("{}-{suffix}", image.tag))
        .map(|r| ImageRef {
            repository: image.repository.clone(),
            ..r
        })
        .map_err(Error::from)
}

/// The engine's images, read from its export into `layout` and pushed through the
/// registry API (the engine's own push gzips on one core: several times slower).
/// Returns the tag's digest and the images.
async fn push_engine_images(
    spec: &Spec,
    engine: &Engine,
    registry: &Registry,
    layout: &Layout,
    built: &[(ImageRef, String, &Target)],
    events: &Events,
    cancel: &CancellationToken,
) -> Result<(String, Vec<oci::Image>)> {
    let options = oci::Options {
        compression: spec.compression,
        threads: std::thread::available_parallelism().map_or(2, |n| n.get()),
    };
    let mut images = Vec::new();
    for (_, id, target) in built {
        events.emit(Event::Stage {
            stage: Stage::Image,
            what: format!(
                "reading {} from the engine, layers {} on {} threads",
                crate::registry::short(id),
                options.compression.describe(),
                options.threads
            ),
        });
        let started = std::time::Instant::now();
        let base = lender(spec, engine, registry, target, events, cancel).await;
        let image = oci::import::from_engine(
            layout,
            engine,
            id,
            &target.platform,
            base.as_ref(),
            options,
            cancel,
        )
        .await?;
        events.emit(Event::StageDone {
            stage: Stage::Image,
            what: format!(
                "manifest {} in {:.1}s",
                crate::registry::short(&image.manifest.digest),
                started.elapsed().as_secs_f64()
            ),
        });
        images.push(image);
    }
    let digest = push_and_check(spec, registry, layout, &images, events, cancel).await?;
    Ok((digest, images))
}

/// The base image, when it lies on the registry pushed to: its layers are then
/// mounted there, not uploaded. Any other base's layers are uploaded from the
/// export (a copy from a foreign registry would move the same bytes), and a
/// base that cannot be read is said and uploaded too.
async fn lender(
    spec: &Spec,
    engine: &Engine,
    registry: &Registry,
    target: &Target,
    events: &Events,
    cancel: &CancellationToken,
) -> Option<oci::base::Base> {
    let name = &target.context.base;
    let base = ImageRef::parse(name).ok()?;
    if name == "scratch" || base.registry != spec.image.registry {
        return None;
    }
    let insecure = engine.is_insecure_registry(&base);
    let read = tokio::select! {
        read = oci::base::resolve(name, &target.platform, insecure) => read,
        // The export that follows sees the cancel and says so.
        () = cancel.cancelled() => return None,
    };
    match read {
        Ok(base) => Some(base),
        Err(e) => {
            events.emit(Event::Note(format!(
                "the base {name} could not be read from {} ({e}); its layers are uploaded",
                registry.base_url()
            )));
            None
        }
    }
}

/// Push `images` under the tag and check the registry serves what was pushed.
async fn push_and_check(
    spec: &Spec,
    registry: &Registry,
    layout: &Layout,
    images: &[oci::Image],
    events: &Events,
    cancel: &CancellationToken,
) -> Result<String> {
    events.emit(Event::Stage {
        stage: Stage::Push,
        what: format!("pushing {} to {}", spec.image, registry.base_url()),
    });
    let started = std::time::Instant::now();
    // A registry that stopped answering holds a request for up to its timeout:
    // Ctrl-C drops the push (and the request under way) at once.
    let digest = tokio::select! {
        pushed = oci::build::push(registry, &spec.image, layout, images, events, cancel) => pushed?,
        () = cancel.cancelled() => return Err(Error::Cancelled),
    };
    check_served(registry, &spec.image, &digest, "pushed").await?;
    events.emit(Event::StageDone {
        stage: Stage::Push,
        what: format!("{digest} in {:.1}s", started.elapsed().as_secs_f64()),
    });
    Ok(digest)
}

/// The registry serves `digest` under `image`'s tag, as whoever pushed (`pushed`,
/// `the engine reported`) said.
pub(super) async fn check_served(
    registry: &Registry,
    image: &ImageRef,
    digest: &str,
    said: &str,
) -> Result<()> {
    match registry.manifest_digest(image).await? {
        Some(served) if served == digest => Ok(()),
        served => Err(Error::PushFailed {
            image: image.to_string(),
            message: format!(
                "{said} {digest} but the registry serves {}",
                served.as_deref().unwrap_or("nothing")
            ),
        }),
    }
}

pub(super) async fn with_oci(
    spec: &Spec,
    registry: Option<&Registry>,
    targets: &[Target],
    events: &Events,
    cancel: &CancellationToken,
) -> Result<Produced> {
    let layout = Layout::create(&layout_dir(spec))?;
    let options = oci::Options {
        compression: spec.compression,
        threads: std::thread::available_parallelism().map_or(2, |n| n.get()),
    };
    let mut images = Vec::new();
    for target in targets {
        events.emit(Event::Stage {
            stage: Stage::Image,
            what: format!(
                "building {} for {} in this process",
                spec.image, target.platform
            ),
        });
        let started = std::time::Instant::now();
        let Some(base) = &target.base else {
            return Err(Error::Usage(
                "internal: the base image was not resolved".into(),
            ));
        };
        let scope = oci::dockerfile::Scope {
            platform: &target.platform,
            base_env: &base.env(),
        };
        let recipe = oci::dockerfile::parse(&target.context.dockerfile_sent(), scope)?;
        let input = oci::build::Input {
            context: &target.context,
            recipe: &recipe,
            base,
            platform: &target.platform,
        };
        let image = oci::build::build(&layout, input, options, events, cancel).await?;
        events.emit(Event::StageDone {
            stage: Stage::Image,
            what: format!(
                "{} in {:.1}s",
                image.config_digest,
                started.elapsed().as_secs_f64()
            ),
        });
        images.push(image);
    }
    let reference = spec.image.to_string();
    let named = oci::build::record_in_layout(&layout, &reference, &images)?;
    if registry.is_none() {
        events.emit(Event::Note(format!(
            "image {} stored in the OCI layout {} as {reference}",
            named.digest,
            layout.dir.display()
        )));
    }
    let mut platforms: Vec<PlatformImage> = images
        .iter()
        .zip(targets)
        .map(|(image, target)| PlatformImage {
            platform: image.platform.to_string(),
            digest: None,
            image_id: image.config_digest.clone(),
            binary_sha256: target.context.binary_sha256.clone(),
        })
        .collect();
    let digest = match registry {
        Some(registry) => {
            let digest = push_and_check(spec, registry, &layout, &images, events, cancel).await?;
            for (p, image) in platforms.iter_mut().zip(&images) {
                p.digest = Some(image.manifest.digest.clone());
            }
            // Pushed: the registry holds it now, and the layout would grow by one
            // binary per tag. Images built with --no-push stay.
            layout.remove_ref(&reference)?;
            Some(digest)
        }
        None => None,
    };
    Ok(Produced {
        image_id: images[0].config_digest.clone(),
        digest,
        platforms,
    })
}
