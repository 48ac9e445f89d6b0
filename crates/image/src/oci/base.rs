//! The base image the Dockerfile's `FROM` names, for the OCI builder: `scratch`,
//! an image in a registry (its manifest and config read through the registry
//! API, a multi-platform index narrowed to the platform built), or a local OCI
//! layout (`oci:PATH`). Layers are not downloaded here: the push mounts or
//! copies them registry to registry, or uploads them from the layout.

use super::compress::Compression;
use super::layout::{Descriptor, Index, Layout, Platform};
use crate::auth::Credentials;
use crate::error::{Error, Result};
use crate::reference::ImageRef;
use crate::registry::{Access, Manifest, Registry, media};

/// Where the base's layers are read from.
#[derive(Debug, Clone)]
// One per base image: the size of a variant does not matter.
#[allow(clippy::large_enum_variant)]
pub enum Source {
    Registry { registry: Registry, image: ImageRef },
    Layout(Layout),
}

/// A resolved base image.
#[derive(Debug, Clone)]
pub struct Base {
    /// As the Dockerfile names it.
    pub name: String,
    /// What the image's `org.opencontainers.image.base.name` label says: the name,
    /// or for a local layout the image's ref name in it (never the local path,
    /// which would make the image depend on where the layout lies).
    pub label: String,
    /// Its config (`None` for scratch).
    pub config: Option<serde_json::Value>,
    /// Digest of the config: the engine's image ID of the same image.
    pub config_digest: Option<String>,
    pub layers: Vec<Descriptor>,
    pub source: Option<Source>,
}

#[derive(serde::Deserialize)]
struct ManifestDoc {
    config: Descriptor,
    #[serde(default)]
    layers: Vec<Descriptor>,
}

impl Base {
    /// The base's environment (`config.Env`); empty for scratch.
    pub fn env(&self) -> Vec<String> {
        self.config
            .as_ref()
            .and_then(|c| c.pointer("/config/Env"))
            .and_then(|e| e.as_array())
            .map(|e| {
                e.iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// Resolve `name` for `platform` as the base the OCI builder builds on: as
/// [`resolve`], and a base with `ONBUILD` triggers is refused (this builder would
/// skip them; the engine's legacy builder runs them).
pub async fn resolve_to_build_on(name: &str, platform: &Platform, insecure: bool) -> Result<Base> {
    let base = resolve(name, platform, insecure).await?;
    if base
        .config
        .as_ref()
        .and_then(|c| c.pointer("/config/OnBuild"))
        .and_then(|o| o.as_array())
        .is_some_and(|o| !o.is_empty())
    {
        return Err(Error::BaseImage {
            reason: format!(
                "{name}: it has ONBUILD triggers, which --builder oci does not run; use --builder engine"
            ),
        });
    }
    Ok(base)
}

/// Resolve `name` for `platform`. `insecure` allows plain HTTP to a registry.
pub async fn resolve(name: &str, platform: &Platform, insecure: bool) -> Result<Base> {
    let fail = |reason: String| Error::BaseImage {
        reason: format!("{name}: {reason}"),
    };
    if name == "scratch" {
        return Ok(Base {
            name: name.into(),
            label: name.into(),
            config: None,
            config_digest: None,
            layers: Vec::new(),
            source: None,
        });
    }
    if let Some(path) = name.strip_prefix("oci:") {
        let layout = Layout::existing(std::path::Path::new(path))?;
        let index = layout.index()?;
        let manifest = pick_in_layout(&layout, index, platform).map_err(&fail)?;
        let label = match manifest.annotations.get(super::layout::REF_NAME) {
            Some(r) => format!("oci-layout:{r}"),
            None => format!("oci-layout@{}", manifest.digest),
        };
        let doc: ManifestDoc = serde_json::from_slice(&layout.read_blob(&manifest.digest)?)
            .map_err(|e| fail(format!("its manifest cannot be read: {e}")))?;
        let config = layout.read_blob(&doc.config.digest)?;
        let mut base = finish(name, doc, &config, platform, Source::Layout(layout))?;
        base.label = label;
        return Ok(base);
    }
    let image = ImageRef::parse(name).map_err(|e| fail(e.to_string()))?;
    let credentials = Credentials::from_docker_config(&image)?;
    let insecure = insecure || image.is_loopback_registry();
    let registry = Registry::connect(&image, credentials.as_ref(), insecure, Access::Pull).await?;
    let reference = image.digest.clone().unwrap_or_else(|| image.tag.clone());
    let mut manifest = registry
        .get_manifest(&image.repository, &reference)
        .await?
        .ok_or_else(|| fail(format!("{} does not serve it", registry.base_url())))?;
    if media::is_index(&manifest.media_type) {
        let index: Index = serde_json::from_slice(&manifest.bytes)
            .map_err(|e| fail(format!("its index cannot be read: {e}")))?;
        let entry = pick(&index, platform).map_err(&fail)?;
        manifest = registry
            .get_manifest(&image.repository, &entry.digest)
            .await?
            .ok_or_else(|| fail(format!("its index names {} which is missing", entry.digest)))?;
    }
    let Manifest { bytes, .. } = manifest;
    let doc: ManifestDoc = serde_json::from_slice(&bytes)
        .map_err(|e| fail(format!("its manifest cannot be read (schema 1?): {e}")))?;
    let config = registry
        .get_blob(&image.repository, &doc.config.digest)
        .await?;
    finish(
        name,
        doc,
        &config,
        platform,
        Source::Registry { registry, image },
    )
}

fn finish(
    name: &str,
    doc: ManifestDoc,
    config: &[u8],
    platform: &Platform,
    source: Source,
) -> Result<Base> {
    let fail = |reason: String| Error::BaseImage {
        reason: format!("{name}: {reason}"),
    };
    let config: serde_json::Value =
        serde_json::from_slice(config).map_err(|e| fail(format!("its config is not JSON: {e}")))?;
    let text = |key: &str| config.get(key).and_then(|v| v.as_str()).unwrap_or_default();
    if text("os") != platform.os || text("architecture") != platform.architecture {
        return Err(fail(format!(
            "it is a {}/{} image, and the image built is {platform}",
            text("os"),
            text("architecture")
        )));
    }
    if let Some(wanted) = &platform.variant
        && text("variant") != wanted.as_str()
    {
        return Err(fail(format!(
            "it is a {}/{} image of variant `{}`, and the image built is {platform}",
            text("os"),
            text("architecture"),
            text("variant")
        )));
    }
    let diff_ids = config
        .pointer("/rootfs/diff_ids")
        .and_then(|d| d.as_array())
        .map_or(0, Vec::len);
    if diff_ids != doc.layers.len() {
        return Err(fail(format!(
            "its manifest has {} layers and its config {diff_ids}",
            doc.layers.len()
        )));
    }
    if let Some(bad) = std::iter::once(&doc.config)
        .chain(&doc.layers)
        .find(|d| !super::layout::valid_digest(&d.digest))
    {
        return Err(fail(format!(
            "its manifest names a blob `{}`, which is not a sha256 digest",
            bad.digest
        )));
    }
    let layers = doc
        .layers
        .into_iter()
        .map(|mut layer| {
            layer.media_type = oci_layer_type(&layer.media_type).map_err(&fail)?;
            Ok(layer)
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Base {
        name: name.into(),
        label: name.into(),
        config: Some(config),
        config_digest: Some(doc.config.digest),
        layers,
        source: Some(source),
    })
}

/// A base layer's media type in an OCI manifest (Docker's names the same bytes).
fn oci_layer_type(media_type: &str) -> std::result::Result<String, String> {
    if let Some(c) = Compression::ALL
        .into_iter()
        .find(|c| c.docker_media_type() == Some(media_type))
    {
        return Ok(c.media_type().into());
    }
    Ok(match media_type {
        "application/vnd.docker.image.rootfs.diff.tar" => Compression::None.media_type().into(),
        t if t.starts_with(Compression::None.media_type()) => t.into(),
        other => return Err(format!("its layers of type {other} cannot be carried over")),
    })
}

/// The entry of `index` for `platform`.
fn pick<'a>(index: &'a Index, platform: &Platform) -> std::result::Result<&'a Descriptor, String> {
    index
        .manifests
        .iter()
        .find(|d| d.platform.as_ref().is_some_and(|p| p.serves(platform)))
        .ok_or_else(|| {
            let offered: Vec<String> = index
                .manifests
                .iter()
                .filter_map(|d| d.platform.as_ref().map(ToString::to_string))
                .collect();
            format!(
                "it has no {platform} image (it offers {})",
                if offered.is_empty() {
                    "none".to_owned()
                } else {
                    offered.join(", ")
                }
            )
        })
}

/// The manifest of a layout for `platform`: its only image, or the one for the platform
/// (following a nested index).
fn pick_in_layout(
    layout: &Layout,
    index: Index,
    platform: &Platform,
) -> std::result::Result<Descriptor, String> {
    let mut index = index;
    for _ in 0..4 {
        let entry = if index.manifests.len() == 1 && index.manifests[0].platform.is_none() {
            index.manifests[0].clone()
        } else if index.manifests.is_empty() {
            return Err("the layout holds no image".into());
        } else {
            let matching: Vec<&Descriptor> = index
                .manifests
                .iter()
                .filter(|d| d.platform.as_ref().is_none_or(|p| p.serves(platform)))
                .collect();
            if matching.len() > 1 {
                let names: Vec<&str> = matching
                    .iter()
                    .map(|d| {
                        d.annotations
                            .get(super::layout::REF_NAME)
                            .map_or(d.digest.as_str(), String::as_str)
                    })
                    .collect();
                return Err(format!(
                    "the layout holds {} images for {platform} ({}): which one is the base is not clear; give a layout that holds one",
                    matching.len(),
                    names.join(", ")
                ));
            }
            match matching.first() {
                Some(one) => (*one).clone(),
                None => pick(&index, platform)?.clone(),
            }
        };
        if !media::is_index(&entry.media_type) {
            return Ok(entry);
        }
        let bytes = layout.read_blob(&entry.digest).map_err(|e| e.to_string())?;
        index = serde_json::from_slice(&bytes).map_err(|e| format!("a nested index: {e}"))?;
    }
    Err("its indexes nest too deep".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_base_with_onbuild_triggers_is_refused_to_build_on_but_lends_its_layers() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::create(dir.path()).unwrap();
        let host = Platform::host();
        let config = serde_json::json!({
            "architecture": host.architecture, "os": host.os,
            "config": {"OnBuild": ["RUN make"]},
            "rootfs": {"type": "layers", "diff_ids": []},
        });
        let config = layout
            .write_blob(media::OCI_CONFIG, config.to_string().as_bytes())
            .unwrap();
        let manifest = serde_json::json!({
            "schemaVersion": 2, "mediaType": media::OCI_MANIFEST,
            "config": config, "layers": [],
        });
        let manifest = layout
            .write_blob(media::OCI_MANIFEST, manifest.to_string().as_bytes())
            .unwrap();
        layout.set_ref("base", manifest).unwrap();
        let name = format!("oci:{}", dir.path().display());
        let e = resolve_to_build_on(&name, &host, false).await.unwrap_err();
        assert!(e.to_string().contains("ONBUILD triggers"), "{e}");
        // What the engine built on it is pushed with the base read as it is.
        let base = resolve(&name, &host, false).await.unwrap();
        assert_eq!(base.config_digest.as_deref(), Some(config.digest.as_str()));
    }

    #[test]
    fn docker_layer_types_carry_over_and_others_are_refused() {
        assert_eq!(
            oci_layer_type("application/vnd.docker.image.rootfs.diff.tar.gzip").unwrap(),
            "application/vnd.oci.image.layer.v1.tar+gzip"
        );
        assert!(
            oci_layer_type("application/vnd.docker.image.rootfs.foreign.diff.tar.gzip").is_err()
        );
    }

    #[tokio::test]
    async fn a_layout_base_is_read_for_its_platform() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::create(dir.path()).unwrap();
        let config = serde_json::json!({"os": "linux", "architecture": "arm64", "config": {"Env": ["A=1"]}, "rootfs": {"type": "layers", "diff_ids": ["sha256:00"]}});
        let config = layout
            .write_blob(media::OCI_CONFIG, config.to_string().as_bytes())
            .unwrap();
        let layer = layout
            .write_blob("application/vnd.oci.image.layer.v1.tar+gzip", b"gz")
            .unwrap();
        let manifest = serde_json::json!({"schemaVersion": 2, "mediaType": media::OCI_MANIFEST, "config": config, "layers": [layer]});
        let mut manifest = layout
            .write_blob(media::OCI_MANIFEST, manifest.to_string().as_bytes())
            .unwrap();
        manifest.platform = Some(Platform::parse("linux/arm64").unwrap());
        layout.set_ref("base", manifest).unwrap();
        let name = format!("oci:{}", dir.path().display());

        let base = resolve(&name, &Platform::parse("linux/arm64").unwrap(), false)
            .await
            .unwrap();
        assert_eq!(base.config_digest.as_deref(), Some(config.digest.as_str()));
        assert_eq!(base.layers, [layer]);
        let e = resolve(&name, &Platform::parse("linux/amd64").unwrap(), false)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("no linux/amd64 image (it offers linux/arm64)"),
            "{e}"
        );
        let e = resolve("oci:/nonexistent", &Platform::host(), false)
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("is not an OCI image layout"), "{e}");
    }
}
