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
use serde_json::json;
use tokio_util::io::{StreamReader, SyncIoBridge};

use super::base::{Base, Source};
use super::build::{Blob, Image, Options};
use super::compress::Compression;
use super::layer::{self, Layer};
use super::layout::{Descriptor, Layout, Platform, digest_of};
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::event::CancellationToken;
use crate::registry::media;

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
    let failed = |doing: String| {
        move |e: io::Error| Error::Engine {
            endpoint: engine.endpoint.to_string(),
            doing,
            reason: e.to_string(),
        }
    };
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
        Err(Fault::Io(e)) => return Err(failed(format!("exporting {id}"))(e)),
        Err(Fault::Other(e)) => return Err(e),
    };
    let source = base.and_then(|b| b.source.clone());
    let docker = layers
        .iter()
        .all(|(d, _)| docker_type(&d.media_type).is_some());
    let mut blobs: Vec<Blob> = layers
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
    let (manifest_type, config_type) = if docker {
        (media::DOCKER_MANIFEST, media::DOCKER_CONFIG)
    } else {
        (media::OCI_MANIFEST, media::OCI_CONFIG)
    };
    let config = layout.write_blob(config_type, &config)?;
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
mod tests {
    use super::*;

    /// An export of one image with a small and a large (> IN_MEMORY) layer, in
    /// Docker 20.10's layout or (`oci`) Docker 25's, whose legacy paths are links.
    /// Returns the tar, the image ID and the layers' contents.
    fn export(oci: bool, claimed_diff: Option<&str>) -> (Vec<u8>, String, Vec<Vec<u8>>) {
        let layers = vec![
            b"small layer".to_vec(),
            vec![7u8; (IN_MEMORY as usize) * 3 / 2],
        ];
        let mut diff_ids: Vec<String> = layers.iter().map(|l| digest_of(l)).collect();
        if let Some(claimed) = claimed_diff {
            diff_ids[1] = claimed.to_owned();
        }
        let config = serde_json::to_vec(&json!({
            "architecture": "amd64", "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        }))
        .unwrap();
        let id = digest_of(&config);
        let hex = |d: &str| d.trim_start_matches("sha256:").to_owned();
        let mut tar = tar::Builder::new(Vec::new());
        let file = |tar: &mut tar::Builder<Vec<u8>>, path: &str, bytes: &[u8]| {
            let mut header = tar::Header::new_gnu();
            header.set_size(bytes.len() as u64);
            header.set_mode(0o644);
            tar.append_data(&mut header, path, bytes).unwrap();
        };
        let mut paths = Vec::new();
        for (n, layer) in layers.iter().enumerate() {
            let legacy = format!("l{n}/layer.tar");
            if oci {
                let blob = format!("blobs/sha256/{}", hex(&digest_of(layer)));
                file(&mut tar, &blob, layer);
                let mut header = tar::Header::new_gnu();
                header.set_entry_type(tar::EntryType::Symlink);
                header.set_size(0);
                tar.append_link(&mut header, &legacy, format!("../{blob}"))
                    .unwrap();
            } else {
                file(&mut tar, &legacy, layer);
            }
            paths.push(legacy);
        }
        let config_path = if oci {
            format!("blobs/sha256/{}", hex(&id))
        } else {
            format!("{}.json", hex(&id))
        };
        file(&mut tar, &config_path, &config);
        let manifest = json!([{"Config": config_path, "RepoTags": [], "Layers": paths}]);
        file(&mut tar, "manifest.json", manifest.to_string().as_bytes());
        (tar.into_inner().unwrap(), id, layers)
    }

    fn options() -> Options {
        Options {
            compression: Compression::Gzip,
            threads: 2,
        }
    }

    fn take(tar: &[u8], id: &str, layout: &Layout) -> Result<Assembled, Fault> {
        take_over(tar, id, layout, &HashMap::new())
    }

    fn take_over(
        tar: &[u8],
        id: &str,
        layout: &Layout,
        shared: &HashMap<String, Descriptor>,
    ) -> Result<Assembled, Fault> {
        let cancel = CancellationToken::new();
        let export = read_export(tar, layout, options(), shared, &cancel)?;
        let exporting = Exporting {
            endpoint: "unix:///test.sock".into(),
            id: id.into(),
        };
        assemble(export, &exporting, layout, options(), shared, &cancel)
    }

    #[test]
    fn a_layer_the_base_lends_is_taken_from_the_base_and_not_compressed_when_named() {
        let (tar, id, layers) = export(true, None);
        let lent = Descriptor {
            media_type: Compression::Gzip.media_type().into(),
            digest: format!("sha256:{}", "b".repeat(64)),
            size: 5,
            platform: None,
            annotations: Default::default(),
        };
        let shared = HashMap::from([(digest_of(&layers[1]), lent.clone())]);
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::create(dir.path()).unwrap();
        let taken =
            take_over(&tar, &id, &layout, &shared).unwrap_or_else(|f| panic!("{}", message(f)));
        assert_eq!(taken.layers[1], (lent, true));
        assert!(!taken.layers[0].1);
        // Only the small layer was compressed into the layout.
        let blobs = std::fs::read_dir(dir.path().join("blobs/sha256"))
            .unwrap()
            .count();
        assert_eq!(blobs, 1);
    }

    fn message(fault: Fault) -> String {
        match fault {
            Fault::Io(e) => format!("io: {e}"),
            Fault::Other(e) => e.to_string(),
        }
    }

    #[test]
    fn both_export_formats_give_the_config_as_is_and_each_layer_compressed() {
        for oci in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let layout = Layout::create(dir.path()).unwrap();
            let (tar, id, layers) = export(oci, None);
            let taken = take(&tar, &id, &layout).unwrap_or_else(|f| panic!("{}", message(f)));
            assert_eq!(digest_of(&taken.config), id);
            assert_eq!(taken.layers.len(), 2);
            for ((descriptor, from_base), content) in taken.layers.iter().zip(&layers) {
                assert!(!from_base);
                assert_eq!(descriptor.media_type, Compression::Gzip.media_type());
                let blob = std::fs::read(layout.blob_path(&descriptor.digest)).unwrap();
                assert_eq!(digest_of(&blob), descriptor.digest, "oci: {oci}");
                let mut plain = Vec::new();
                flate2::read::GzDecoder::new(blob.as_slice())
                    .read_to_end(&mut plain)
                    .unwrap();
                assert_eq!(&plain, content, "oci: {oci}");
            }
        }
    }

    #[test]
    fn an_export_that_does_not_match_its_config_or_breaks_off_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::create(dir.path()).unwrap();
        let other = format!("sha256:{}", "0".repeat(64));
        let (tar, id, _) = export(false, Some(&other));
        let e = message(take(&tar, &id, &layout).err().unwrap());
        assert!(e.contains("not the config's"), "{e}");
        let (tar, _, _) = export(false, None);
        let e = message(take(&tar, &other, &layout).err().unwrap());
        assert!(e.contains("holds a config whose digest"), "{e}");
        // Cut inside the large layer: the stream's error, not the layout's disk.
        let (tar, id, _) = export(false, None);
        let e = message(take(&tar[..tar.len() / 2], &id, &layout).err().unwrap());
        assert!(e.starts_with("io: "), "{e}");
        // The engine's stream fails inside the large layer, read by the compressor's
        // writer: named as the stream's error, not the layout's.
        struct Failing<'a>(&'a [u8]);
        impl Read for Failing<'_> {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                if self.0.len() < (IN_MEMORY as usize) {
                    return Err(io::Error::other("the engine went away"));
                }
                self.0.read(buf)
            }
        }
        let cancel = CancellationToken::new();
        let fault = read_export(Failing(&tar), &layout, options(), &HashMap::new(), &cancel)
            .err()
            .unwrap();
        assert_eq!(message(fault), "io: the engine went away");
        let mut empty = tar::Builder::new(Vec::new());
        empty.finish().unwrap();
        let e = message(
            take(&empty.into_inner().unwrap(), &id, &layout)
                .err()
                .unwrap(),
        );
        assert!(e.contains("has no manifest.json"), "{e}");
    }

    #[test]
    fn paths_of_the_export_are_normalized_and_links_followed() {
        assert_eq!(normalize("./a//b/../c"), "a/c");
        assert_eq!(normalize("../../x"), "x");
        let mut export = Export::default();
        export
            .links
            .insert("abc/layer.tar".into(), "blobs/sha256/ff".into());
        export.links.insert("loop".into(), "loop".into());
        assert_eq!(export.resolve("./abc/layer.tar"), "blobs/sha256/ff");
        assert_eq!(export.resolve("loop"), "loop");
    }

    #[test]
    fn docker_types_exist_for_gzip_layers_only() {
        assert_eq!(
            docker_type("application/vnd.oci.image.layer.v1.tar+gzip"),
            Some("application/vnd.docker.image.rootfs.diff.tar.gzip")
        );
        assert_eq!(
            docker_type("application/vnd.docker.image.rootfs.diff.tar.gzip"),
            Some("application/vnd.docker.image.rootfs.diff.tar.gzip")
        );
        assert_eq!(
            docker_type("application/vnd.oci.image.layer.v1.tar+zstd"),
            None
        );
    }
}
