//! The image and push stages, once per builder: the engine (bollard; several
//! platforms pushed under per-platform tags and joined by a manifest list the
//! registry API writes) and the OCI builder (this process; one image per
//! platform in the layout, an OCI index over them).

use std::sync::Arc;

use super::Spec;
use crate::context::Context;
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::event::{CancellationToken, Event, Events, Stage};
use crate::oci::{self, Layout, Platform};
use crate::record::PlatformImage;
use crate::reference::ImageRef;
use crate::registry::{Registry, media};

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

pub(super) async fn with_engine(
    spec: &Spec,
    engine: &Engine,
    registry: Option<&Registry>,
    credentials: Option<&crate::auth::Credentials>,
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
        // Several platforms: each under its own tag, joined by the list below.
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
    let mut platforms = Vec::new();
    for (image, id, target) in built {
        let digest = match registry {
            Some(registry) => {
                Some(engine_push(engine, registry, &image, credentials, events, cancel).await?)
            }
            None => None,
        };
        platforms.push(PlatformImage {
            platform: target.platform.to_string(),
            digest,
            image_id: id,
            binary_sha256: target.context.binary_sha256.clone(),
        });
    }
    let digest = match (registry, several) {
        (Some(registry), true) => Some(manifest_list(registry, &spec.image, &platforms).await?),
        (Some(_), false) => platforms[0].digest.clone(),
        (None, _) => None,
    };
    Ok(Produced {
        image_id: platforms[0].image_id.clone(),
        digest,
        platforms,
    })
}

/// `repo:tag-linux-arm64`: where the engine path pushes one platform of several.
fn per_platform_tag(image: &ImageRef, platform: &Platform) -> Result<ImageRef> {
    let suffix = platform.to_string().replace('/', "-");
    ImageRef::kubemark(&image.registry, &format!("{}-{suffix}", image.tag))
        .map(|r| ImageRef {
            repository: image.repository.clone(),
            ..r
        })
        .map_err(Error::from)
}

async fn engine_push(
    engine: &Engine,
    registry: &Registry,
    image: &ImageRef,
    credentials: Option<&crate::auth::Credentials>,
    events: &Events,
    cancel: &CancellationToken,
) -> Result<String> {
    events.emit(Event::Stage {
        stage: Stage::Push,
        what: format!("pushing {image} to {}", registry.base_url()),
    });
    let started = std::time::Instant::now();
    let digest = engine.push(image, credentials, events, cancel).await?;
    match registry.manifest_digest(image).await? {
        Some(served) if served == digest => {}
        served => {
            return Err(Error::PushFailed {
                image: image.to_string(),
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
    Ok(digest)
}

/// A Docker manifest list over the platforms' pushed manifests, stored under the tag.
async fn manifest_list(
    registry: &Registry,
    image: &ImageRef,
    platforms: &[PlatformImage],
) -> Result<String> {
    let mut manifests = Vec::new();
    for p in platforms {
        let digest = p.digest.as_deref().unwrap_or_default();
        let manifest = registry
            .get_manifest(&image.repository, digest)
            .await?
            .ok_or_else(|| Error::PushFailed {
                image: image.to_string(),
                message: format!("the registry lost {digest} just pushed"),
            })?;
        let platform = Platform::parse(&p.platform).map_err(Error::Usage)?;
        manifests.push(oci::layout::Descriptor {
            media_type: manifest.media_type,
            digest: manifest.digest,
            size: manifest.bytes.len() as u64,
            platform: Some(platform),
            annotations: Default::default(),
        });
    }
    let list = oci::layout::Index {
        schema_version: 2,
        media_type: Some(media::DOCKER_LIST.into()),
        manifests,
    };
    let bytes = serde_json::to_vec(&list).unwrap_or_default();
    registry
        .put_manifest(&image.repository, &image.tag, media::DOCKER_LIST, bytes)
        .await
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
            events.emit(Event::Stage {
                stage: Stage::Push,
                what: format!("pushing {} to {}", spec.image, registry.base_url()),
            });
            let started = std::time::Instant::now();
            let digest =
                oci::build::push(registry, &spec.image, &layout, &images, events, cancel).await?;
            match registry.manifest_digest(&spec.image).await? {
                Some(served) if served == digest => {}
                served => {
                    return Err(Error::PushFailed {
                        image: spec.image.to_string(),
                        message: format!(
                            "pushed {digest} but the registry serves {}",
                            served.as_deref().unwrap_or("nothing")
                        ),
                    });
                }
            }
            for (p, image) in platforms.iter_mut().zip(&images) {
                p.digest = Some(image.manifest.digest.clone());
            }
            // Pushed: the registry holds it now, and the layout would grow by one
            // binary per tag. Images built with --no-push stay.
            layout.remove_ref(&reference)?;
            events.emit(Event::StageDone {
                stage: Stage::Push,
                what: format!("{digest} in {:.1}s", started.elapsed().as_secs_f64()),
            });
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
