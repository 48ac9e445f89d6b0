//! An image the Docker engine built, taken into the layout so that the registry
//! API pushes it: the engine's export (`GET /images/{id}/get`, what `docker save`
//! writes, in its legacy format or Docker 25's OCI one) is read as it streams,
//! each layer compressed on every core on the way (the engine's own push gzips
//! on one), the config kept byte for byte (its digest stays the engine's image
//! ID) and a manifest written over them: Docker's schema 2, as `docker push`
//! writes, when every layer has a Docker media type.
//!
//! A layer whose diff ID is one of the base image's, when the base lies on the
//! registry pushed to, is mounted from the base's repository rather than
//! uploaded (its compressed bytes there differ from ours; its content does not).

use std::collections::HashMap;
use std::io::{self, Read};

use futures_util::StreamExt;
use tokio_util::io::{StreamReader, SyncIoBridge};

use super::base::{Base, Source};
use super::build::{Blob, Image, Manifest, Options, write_image};
use super::compress::Compression;
use super::layer::{self, Layer};
use super::layout::{Descriptor, Layout, Platform, digest_of};
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::event::CancellationToken;

/// Files of the export up to this size are read into memory (configs, the
/// export's manifest, small layers); larger ones are compressed as they stream.
const IN_MEMORY: u64 = 1 << 20;

/// Follow at most this many symlinks from a path the export's manifest names
/// (Docker 25 links `<id>/layer.tar` to `blobs/sha256/<hex>`).
const MAX_LINKS: usize = 8;

/// The engine's image `id` for `platform`, read from its export into `layout`.
pub async fn from_engine(
    layout: &Layout,
    engine: &Engine,
    id: &str,
    platform: &Platform,
    base: Option<&Base>,
    options: Options,
    cancel: &CancellationToken,
) -> Result<Image> {
    let stream = Box::pin(
        engine
            .docker()
            .export_image(id)
            .map(|chunk| chunk.map_err(|e| io::Error::other(crate::registry::error_chain(&e))))
            .take_until(cancel.clone().cancelled_owned()),
    );
    let reader =
        io::BufReader::with_capacity(1 << 20, SyncIoBridge::new(StreamReader::new(stream)));
    let shared = base.map(base_layers).unwrap_or_default();
    let (job_layout, job_cancel) = (layout.clone(), cancel.clone());
    let exporting = Exporting {
        endpoint: engine.endpoint.to_string(),
        id: id.to_owned(),
    };
    let read = tokio::task::spawn_blocking(move || {
        let export = read_export(reader, &job_layout, options, &shared, &job_cancel)?;
        assemble(
            export,
            &exporting,
            &job_layout,
            options,
            &shared,
            &job_cancel,
        )
    })
    .await
    .map_err(|e| Error::Usage(format!("internal: reading the engine's export failed: {e}")))?;
    let Assembled { config, layers } = match read {
        Ok(read) => read,
        Err(_) if cancel.is_cancelled() => return Err(Error::Cancelled),
        Err(Fault::Io(e)) => {
            return Err(Error::Engine {
                endpoint: engine.endpoint.to_string(),
                doing: format!("exporting {id}"),
                reason: e.to_string(),
            });
        }
        Err(Fault::Other(e)) => return Err(e),
    };
    let source = base.and_then(|b| b.source.clone());
    let docker = layers
        .iter()
        .all(|(d, _)| docker_type(&d.media_type).is_some());
    let blobs: Vec<Blob> = layers
        .into_iter()
        .map(|(mut descriptor, from_base)| {
            if docker {
                descriptor.media_type = docker_type(&descriptor.media_type)
                    .unwrap_or_default()
                    .to_owned();
            }
            Blob {
                descriptor,
                from: if from_base { source.clone() } else { None },
            }
        })
        .collect();
    let kind = if docker {
        Manifest::Docker
    } else {
        Manifest::Oci
    };
    write_image(layout, platform, kind, &config, blobs)
}

/// What went wrong reading the export: the stream (the engine's), or the rest.
enum Fault {
    Io(io::Error),
    Other(Error),
}

impl From<io::Error> for Fault {
    fn from(e: io::Error) -> Self {
        Fault::Io(e)
    }
}

impl From<Error> for Fault {
    fn from(e: Error) -> Self {
        Fault::Other(e)
    }
}

/// The export's files, by path in it.
#[derive(Default)]
struct Export {
    small: HashMap<String, Vec<u8>>,
    /// Larger files, compressed into the layout.
    stored: HashMap<String, Layer>,
    /// Symlinks, to where they point (relative to the export's root).
    links: HashMap<String, String>,
}

impl Export {
    /// The path a link chain from `path` ends at.
    fn resolve(&self, path: &str) -> String {
        let mut path = normalize(path);
        for _ in 0..MAX_LINKS {
            match self.links.get(&path) {
                Some(target) => path = target.clone(),
                None => break,
            }
        }
        path
    }
}

/// A reader that remembers its first error: a layer's bytes are read inside
/// the compressor's writer, whose errors would otherwise blame the layout's disk
/// for an engine that broke off its export.
struct Watched<R> {
    inner: R,
    failed: std::rc::Rc<std::cell::RefCell<Option<io::Error>>>,
}

impl<R: Read> Read for Watched<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.read(buf).inspect_err(|e| {
            self.failed
                .borrow_mut()
                .get_or_insert_with(|| io::Error::new(e.kind(), e.to_string()));
        })
    }
}

/// Read the export's files; a layer the base lends (`shared`), when its name
/// says its diff ID (Docker 25's `blobs/sha256/<hex>`), is skipped unread.
fn read_export(
    reader: impl Read,
    layout: &Layout,
    options: Options,
    shared: &HashMap<String, Descriptor>,
    cancel: &CancellationToken,
) -> Result<Export, Fault> {
    let failed = std::rc::Rc::default();
    let watched = Watched {
        inner: reader,
        failed: std::rc::Rc::clone(&failed),
    };
    read_entries(watched, layout, options, shared, cancel).map_err(|fault| {
        match (fault, failed.borrow_mut().take()) {
            (Fault::Other(Error::Io { .. }), Some(e)) => Fault::Io(e),
            (fault, _) => fault,
        }
    })
}

fn read_entries(
    reader: impl Read,
    layout: &Layout,
    options: Options,
    shared: &HashMap<String, Descriptor>,
    cancel: &CancellationToken,
) -> Result<Export, Fault> {
    let mut export = Export::default();
    let mut archive = tar::Archive::new(reader);
    for entry in archive.entries()? {
        if cancel.is_cancelled() {
            return Err(Error::Cancelled.into());
        }
        let mut entry = entry?;
        let path = normalize(&entry.path()?.to_string_lossy());
        match entry.header().entry_type() {
            tar::EntryType::Regular => {}
            tar::EntryType::Symlink => {
                if let Some(target) = entry.link_name()? {
                    let target = target.to_string_lossy();
                    let dir = path.rsplit_once('/').map_or("", |(dir, _)| dir);
                    let target = normalize(&format!("{dir}/{target}"));
                    export.links.insert(path, target);
                }
                continue;
            }
            _ => continue,
        }
        if let Some(hex) = path.strip_prefix("blobs/sha256/")
            && shared.contains_key(&format!("sha256:{hex}"))
        {
            continue;
        }
        if entry.size() <= IN_MEMORY {
            let mut bytes = Vec::with_capacity(entry.size() as usize);
            entry.read_to_end(&mut bytes)?;
            export.small.insert(path, bytes);
        } else {
            let stored = layer::store(
                layout,
                options.compression,
                options.threads,
                cancel,
                |mut out| {
                    io::copy(&mut entry, &mut out)?;
                    Ok(out)
                },
            )?;
            export.stored.insert(path, stored);
        }
    }
    Ok(export)
}

/// `docker save`'s `manifest.json`: one entry per image exported.
#[derive(serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
struct SaveEntry {
    config: String,
    #[serde(default)]
    layers: Vec<String>,
}

/// Which engine export is read, for its errors.
struct Exporting {
    endpoint: String,
    id: String,
}

/// The config's bytes and each layer's descriptor, and whether it is the base's.
struct Assembled {
    config: Vec<u8>,
    layers: Vec<(Descriptor, bool)>,
}

fn assemble(
    export: Export,
    exporting: &Exporting,
    layout: &Layout,
    options: Options,
    shared: &HashMap<String, Descriptor>,
    cancel: &CancellationToken,
) -> Result<Assembled, Fault> {
    let id = exporting.id.as_str();
    // The engine built the image; what it exported does not hold together.
    let broken = |reason: String| Error::Engine {
        endpoint: exporting.endpoint.clone(),
        doing: format!("exporting {id}"),
        reason: format!("its export {reason}"),
    };
    let manifest = export
        .small
        .get("manifest.json")
        .ok_or_else(|| broken("has no manifest.json".into()))?;
    let entries: Vec<SaveEntry> = serde_json::from_slice(manifest)
        .map_err(|e| broken(format!("has a manifest.json that cannot be read: {e}")))?;
    let [entry] = entries.as_slice() else {
        return Err(broken(format!("holds {} images, not one", entries.len())).into());
    };
    let config_path = export.resolve(&entry.config);
    let config = match export.small.get(&config_path) {
        Some(config) => config.clone(),
        None if export.stored.contains_key(&config_path) => {
            return Err(broken(format!(
                "has a config over {} MiB, which this tool does not read",
                IN_MEMORY >> 20
            ))
            .into());
        }
        None => return Err(broken(format!("lacks its config {}", entry.config)).into()),
    };
    if digest_of(&config) != id {
        return Err(broken(format!(
            "holds a config whose digest is {}",
            digest_of(&config)
        ))
        .into());
    }
    let diff_ids: Vec<String> = serde_json::from_slice::<serde_json::Value>(&config)
        .ok()
        .and_then(|c| c.pointer("/rootfs/diff_ids").cloned())
        .and_then(|d| serde_json::from_value(d).ok())
        .ok_or_else(|| broken("has a config without rootfs.diff_ids".into()))?;
    if diff_ids.len() != entry.layers.len() {
        return Err(broken(format!(
            "lists {} layers for a config with {} diff IDs",
            entry.layers.len(),
            diff_ids.len()
        ))
        .into());
    }
    let mut layers = Vec::new();
    for (path, diff_id) in entry.layers.iter().zip(&diff_ids) {
        if let Some(descriptor) = shared.get(diff_id) {
            layers.push((descriptor.clone(), true));
            continue;
        }
        let resolved = export.resolve(path);
        let stored = match (export.stored.get(&resolved), export.small.get(&resolved)) {
            (Some(stored), _) => stored.clone(),
            (None, Some(bytes)) => layer::store(
                layout,
                options.compression,
                options.threads,
                cancel,
                |mut out| {
                    io::Write::write_all(&mut out, bytes)?;
                    Ok(out)
                },
            )?,
            (None, None) => return Err(broken(format!("lacks its layer {path}")).into()),
        };
        if &stored.diff_id != diff_id {
            return Err(broken(format!(
                "holds {path} with diff ID {}, not the config's {diff_id}",
                stored.diff_id
            ))
            .into());
        }
        layers.push((stored.descriptor, false));
    }
    Ok(Assembled { config, layers })
}

/// The base's layers by diff ID, when its registry can lend them.
fn base_layers(base: &Base) -> HashMap<String, Descriptor> {
    let diff_ids: Vec<String> = base
        .config
        .as_ref()
        .and_then(|c| c.pointer("/rootfs/diff_ids").cloned())
        .and_then(|d| serde_json::from_value(d).ok())
        .unwrap_or_default();
    if diff_ids.len() != base.layers.len() || !matches!(base.source, Some(Source::Registry { .. }))
    {
        return HashMap::new();
    }
    diff_ids
        .into_iter()
        .zip(base.layers.iter().cloned())
        .collect()
}

/// The Docker schema 2 media type of a layer of this type, if Docker has one.
fn docker_type(media_type: &str) -> Option<&'static str> {
    Compression::ALL
        .into_iter()
        .find(|c| c.media_type() == media_type || c.docker_media_type() == Some(media_type))
        .and_then(Compression::docker_media_type)
}

/// A path of the export without `./`, `//` or `..` beyond its root.
fn normalize(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            part => parts.push(part),
        }
    }
    parts.join("/")
}

#[cfg(test)]
mod tests;
