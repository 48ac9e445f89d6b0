//! `--engine-push` (and an engine on containerd's image store): the engine
//! pushes each image itself, several platforms under per-platform tags
//! (`TAG-os-arch`, overwritten by the next such push of the tag) joined by a
//! Docker manifest list that the registry API writes. Slower than the registry
//! push of `build` (the engine gzips on one core), but it is the engine's
//! network path: its proxies, its `certs.d`.

use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::event::{CancellationToken, Event, Events, Stage};
use crate::oci::{self, Platform};
use crate::record::PlatformImage;
use crate::reference::ImageRef;
use crate::registry::{Registry, media};

/// Push `image` through the engine and check the registry serves what it reported.
pub(super) async fn push_one(
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
    let digest = tokio::select! {
        pushed = engine.push(image, credentials, events, cancel) => pushed?,
        () = cancel.cancelled() => return Err(Error::Cancelled),
    };
    super::build::check_served(registry, image, &digest, "the engine reported").await?;
    events.emit(Event::StageDone {
        stage: Stage::Push,
        what: format!("{digest} in {:.1}s", started.elapsed().as_secs_f64()),
    });
    Ok(digest)
}

/// A Docker manifest list over the platforms' pushed manifests, stored under the tag.
pub(super) async fn manifest_list(
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
