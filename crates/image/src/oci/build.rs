//! The OCI builder's two steps: build (the Dockerfile's steps over its base into
//! the local layout: one layer per `COPY`, config and manifest written by this
//! process, labels as config) and push (blobs the registry lacks, mounted across
//! repositories or uploaded in chunks, then the manifest; an index for several
//! platforms).

use std::sync::Arc;

use serde_json::{Value, json};

use super::base::{Base, Source};
use super::compress::Compression;
use super::dockerfile::{Recipe, Step};
use super::layer;
use super::layout::{Descriptor, Index, Layout, Platform};
use crate::context::Context;
use crate::error::{Error, Result};
use crate::event::{CancellationToken, Event, Events};
use crate::reference::ImageRef;
use crate::registry::{Registry, media};

/// Every timestamp in the image: an unchanged input gives an unchanged digest.
pub const CREATED: &str = "1970-01-01T00:00:00Z";
/// What docker sets for an image built from scratch.
const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// How layers are made.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    pub compression: Compression,
    pub threads: usize,
}

/// One blob of a built image and where the push reads it from.
#[derive(Debug, Clone)]
pub(super) struct Blob {
    pub(super) descriptor: Descriptor,
    /// `None`: the builder's own layout.
    pub(super) from: Option<Source>,
}

/// An image built into the layout, ready to push.
#[derive(Debug, Clone)]
pub struct Image {
    pub platform: Platform,
    /// The manifest, its platform set.
    pub manifest: Descriptor,
    /// The config's digest: the engine's image ID of the same image.
    pub config_digest: String,
    pub(super) blobs: Vec<Blob>,
}

/// What one platform's image is built from.
#[derive(Debug, Clone, Copy)]
pub struct Input<'a> {
    pub context: &'a Arc<Context>,
    pub recipe: &'a Recipe,
    pub base: &'a Base,
    pub platform: &'a Platform,
}

/// Build the input's recipe over its base for its platform into `layout`.
pub async fn build(
    layout: &Layout,
    input: Input<'_>,
    options: Options,
    events: &Events,
    cancel: &CancellationToken,
) -> Result<Image> {
    let Input {
        context,
        recipe,
        base,
        platform,
    } = input;
    let mut config = match &base.config {
        Some(config) => {
            let mut config = config.clone();
            if let Some(object) = config.as_object_mut() {
                // What described the base's own build.
                for stale in [
                    "container",
                    "container_config",
                    "docker_version",
                    "id",
                    "parent",
                ] {
                    object.remove(stale);
                }
            }
            config
        }
        None => {
            let mut config = json!({
                "architecture": platform.architecture,
                "os": platform.os,
                "config": {},
                "rootfs": {"type": "layers", "diff_ids": []},
                "history": [],
            });
            if let Some(variant) = &platform.variant {
                config["variant"] = json!(variant);
            }
            config
        }
    };
    config["created"] = json!(CREATED);
    // As the engine does: a base without PATH gets the default one.
    let env = array(&mut config, "/config/Env");
    if !env
        .iter()
        .any(|e| e.as_str().is_some_and(|e| e.starts_with("PATH=")))
    {
        env.push(json!(DEFAULT_PATH));
    }
    let mut blobs: Vec<Blob> = base
        .layers
        .iter()
        .map(|d| Blob {
            descriptor: d.clone(),
            from: base.source.clone(),
        })
        .collect();
    let items = context.items();
    let mut cmd_set = false;
    let total = recipe.steps.len();
    for (n, step) in recipe.steps.iter().enumerate() {
        let (created_by, empty) = match step {
            Step::Copy {
                sources,
                dest,
                chmod,
                text,
            } => {
                events.emit(Event::BuildStep {
                    step: n + 1,
                    total,
                    instruction: text.clone(),
                });
                let nodes = layer::select(&items, sources, dest, *chmod).map_err(|e| match e {
                    Error::BuildFailed { message, .. } => Error::BuildFailed {
                        message,
                        step: Some(text.clone()),
                    },
                    other => other,
                })?;
                let (layout, cancel) = (layout.clone(), cancel.clone());
                let written = tokio::task::spawn_blocking(move || {
                    layer::write(
                        &layout,
                        &nodes,
                        options.compression,
                        options.threads,
                        &cancel,
                    )
                })
                .await
                .map_err(|e| Error::Usage(format!("internal: a layer writer failed: {e}")))??;
                array(&mut config, "/rootfs/diff_ids").push(json!(written.diff_id));
                blobs.push(Blob {
                    descriptor: written.descriptor,
                    from: None,
                });
                (text.clone(), false)
            }
            Step::Label(pairs) => {
                let labels = object(&mut config, "Labels");
                for (k, v) in pairs {
                    labels.insert(k.clone(), json!(v));
                }
                (format!("LABEL {}", keys(pairs)), true)
            }
            Step::Env(pairs) => {
                let env = array(&mut config, "/config/Env");
                for (k, v) in pairs {
                    let prefix = format!("{k}=");
                    env.retain(|e| !e.as_str().is_some_and(|e| e.starts_with(&prefix)));
                    env.push(json!(format!("{k}={v}")));
                }
                (format!("ENV {}", keys(pairs)), true)
            }
            Step::Entrypoint(words) => {
                config["config"]["Entrypoint"] = json!(words);
                // As the engine does: a new entrypoint drops the base's CMD.
                if !cmd_set {
                    config["config"]["Cmd"] = Value::Null;
                }
                (format!("ENTRYPOINT {}", json!(words)), true)
            }
            Step::Cmd(words) => {
                cmd_set = true;
                config["config"]["Cmd"] = json!(words);
                (format!("CMD {}", json!(words)), true)
            }
            Step::User(user) => {
                config["config"]["User"] = json!(user);
                (format!("USER {user}"), true)
            }
        };
        let mut entry = json!({"created": CREATED, "created_by": created_by});
        if empty {
            entry["empty_layer"] = json!(true);
        }
        array(&mut config, "/history").push(entry);
    }
    let config_bytes = serde_json::to_vec(&config).unwrap_or_default();
    write_image(layout, platform, Manifest::Oci, &config_bytes, blobs)
}

/// Which manifest an image gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Manifest {
    Oci,
    /// Docker's schema 2, as `docker push` writes (only when every layer has a Docker type).
    Docker,
}

/// The image for `platform`: `config` and a manifest over `layers` written into
/// `layout`; its blobs are the layers, then the config.
pub(super) fn write_image(
    layout: &Layout,
    platform: &Platform,
    kind: Manifest,
    config: &[u8],
    mut blobs: Vec<Blob>,
) -> Result<Image> {
    let (manifest_type, config_type) = match kind {
        Manifest::Oci => (media::OCI_MANIFEST, media::OCI_CONFIG),
        Manifest::Docker => (media::DOCKER_MANIFEST, media::DOCKER_CONFIG),
    };
    let config = layout.write_blob(config_type, config)?;
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": manifest_type,
        "config": config,
        "layers": blobs.iter().map(|b| &b.descriptor).collect::<Vec<_>>(),
    });
    let mut manifest = layout.write_blob(
        manifest_type,
        &serde_json::to_vec(&manifest).unwrap_or_default(),
    )?;
    manifest.platform = Some(platform.clone());
    blobs.push(Blob {
        descriptor: config.clone(),
        from: None,
    });
    Ok(Image {
        platform: platform.clone(),
        manifest,
        config_digest: config.digest,
        blobs,
    })
}

fn keys(pairs: &[(String, String)]) -> String {
    pairs
        .iter()
        .map(|(k, _)| k.as_str())
        .collect::<Vec<_>>()
        .join(" ")
}

/// The array at `pointer`, created (and anything in the way replaced) if missing.
fn array<'a>(config: &'a mut Value, pointer: &str) -> &'a mut Vec<Value> {
    let mut at = config;
    for key in pointer.trim_start_matches('/').split('/') {
        if !at.is_object() {
            *at = json!({});
        }
        at = &mut at[key];
    }
    if !at.is_array() {
        *at = json!([]);
    }
    match at {
        Value::Array(a) => a,
        _ => unreachable!("set to an array above"),
    }
}

/// `config.<key>` as an object, created if missing.
fn object<'a>(config: &'a mut Value, key: &str) -> &'a mut serde_json::Map<String, Value> {
    if !config["config"][key].is_object() {
        config["config"][key] = json!({});
    }
    match &mut config["config"][key] {
        Value::Object(o) => o,
        _ => unreachable!("set to an object above"),
    }
}

/// Name `image` (one platform) or an index of `images` `reference` in the layout.
pub fn record_in_layout(layout: &Layout, reference: &str, images: &[Image]) -> Result<Descriptor> {
    let descriptor = match images {
        [one] => one.manifest.clone(),
        many => {
            let index = index_of(many);
            layout.write_blob(
                media::OCI_INDEX,
                &serde_json::to_vec(&index).unwrap_or_default(),
            )?
        }
    };
    layout.set_ref(reference, descriptor.clone())?;
    Ok(descriptor)
}

/// An index over `images`: Docker's manifest list when they are all Docker
/// manifests (the engine's images), else an OCI index.
fn index_of(images: &[Image]) -> Index {
    let docker = images
        .iter()
        .all(|i| i.manifest.media_type == media::DOCKER_MANIFEST);
    Index {
        schema_version: 2,
        media_type: Some(
            if docker {
                media::DOCKER_LIST
            } else {
                media::OCI_INDEX
            }
            .into(),
        ),
        manifests: images.iter().map(|i| i.manifest.clone()).collect(),
    }
}

/// Push `images` to `target`: each platform's blobs and manifest, then under the tag
/// the manifest (one platform) or an index of them. Returns the tag's digest.
pub async fn push(
    registry: &Registry,
    target: &ImageRef,
    layout: &Layout,
    images: &[Image],
    events: &Events,
    cancel: &CancellationToken,
) -> Result<String> {
    let repository = &target.repository;
    // A base on the same registry is mounted: the token must be able to read it.
    for image in images {
        for blob in &image.blobs {
            if let Some(Source::Registry {
                registry: from,
                image: base,
            }) = &blob.from
                && from.base_url() == registry.base_url()
            {
                registry.also_read(&base.repository).await;
            }
        }
    }
    for image in images {
        for blob in &image.blobs {
            push_blob(registry, repository, layout, blob, events, cancel).await?;
        }
        if images.len() > 1 {
            let bytes = layout.read_blob(&image.manifest.digest)?;
            registry
                .put_manifest(
                    repository,
                    &image.manifest.digest,
                    &image.manifest.media_type,
                    bytes,
                )
                .await?;
        }
    }
    let (media_type, bytes) = match images {
        [one] => (
            one.manifest.media_type.clone(),
            layout.read_blob(&one.manifest.digest)?,
        ),
        many => {
            let index = index_of(many);
            (
                index.media_type.clone().unwrap_or_default(),
                serde_json::to_vec(&index).unwrap_or_default(),
            )
        }
    };
    registry
        .put_manifest(repository, &target.tag, &media_type, bytes)
        .await
}

async fn push_blob(
    registry: &Registry,
    repository: &str,
    layout: &Layout,
    blob: &Blob,
    events: &Events,
    cancel: &CancellationToken,
) -> Result<()> {
    let digest = &blob.descriptor.digest;
    let say = |status: &str| {
        events.emit(Event::PushLayer {
            layer: crate::registry::short(digest),
            status: status.into(),
            current: blob.descriptor.size,
            total: blob.descriptor.size,
        })
    };
    if registry.blob_exists(repository, digest).await? {
        say("Layer already exists");
        return Ok(());
    }
    match &blob.from {
        None => {
            registry
                .upload_file(
                    repository,
                    digest,
                    &layout.blob_path(digest),
                    events,
                    cancel,
                )
                .await?;
            say("Pushed");
        }
        Some(Source::Layout(base)) => {
            registry
                .upload_file(repository, digest, &base.blob_path(digest), events, cancel)
                .await?;
            say("Pushed");
        }
        Some(Source::Registry {
            registry: from,
            image,
        }) => {
            if from.base_url() == registry.base_url()
                && registry
                    .mount_blob(repository, digest, &image.repository)
                    .await?
            {
                say(&format!("Mounted from {}", image.repository));
            } else {
                registry
                    .copy_blob(repository, digest, from, &image.repository, events, cancel)
                    .await?;
                say(&format!("Copied from {}", image.name()));
            }
        }
    }
    Ok(())
}
