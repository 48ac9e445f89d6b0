//! OCI image layouts on disk: the one the builder writes its images into
//! (`target/kubemark/oci`, one entry per image reference, unreferenced blobs
//! pruned), and a user's layout read as a base image (`--base-image oci:PATH`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::registry::media;

/// A content descriptor (OCI image spec).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    pub media_type: String,
    pub digest: String,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// `os/architecture[/variant]`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

impl Platform {
    /// `linux/arm64`, `linux/arm/v7`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let parts: Vec<&str> = text.split('/').collect();
        let ok =
            |s: &&str| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        match parts.as_slice() {
            [os, arch] if ok(os) && ok(arch) => Ok(Self {
                os: (*os).to_owned(),
                architecture: (*arch).to_owned(),
                variant: None,
            }),
            [os, arch, variant] if ok(os) && ok(arch) && ok(variant) => Ok(Self {
                os: (*os).to_owned(),
                architecture: (*arch).to_owned(),
                variant: Some((*variant).to_owned()),
            }),
            _ => Err(format!(
                "`{text}` is not a platform; write os/architecture, e.g. linux/amd64 or linux/arm64"
            )),
        }
    }

    /// The platform this machine runs, in Go's names.
    pub fn host() -> Self {
        let architecture = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            "x86" => "386",
            "powerpc64" => "ppc64le",
            other => other,
        };
        Self {
            os: "linux".into(),
            architecture: architecture.into(),
            variant: None,
        }
    }

    /// Whether an index entry's platform serves this one (an unset variant matches any).
    pub fn serves(&self, wanted: &Platform) -> bool {
        self.os == wanted.os
            && self.architecture == wanted.architecture
            && (wanted.variant.is_none() || self.variant == wanted.variant)
    }
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// An image index (`index.json` of a layout, or a multi-platform image).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Index {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    pub manifests: Vec<Descriptor>,
}

/// The file that marks a layout as this tool's own (and its blobs as its to prune).
pub const OWNER_MARK: &str = "kubemark-layout";

/// Whether `digest` is `sha256:` and 64 lowercase hex digits (a path component
/// that cannot leave the blob folder).
pub fn valid_digest(digest: &str) -> bool {
    digest.strip_prefix("sha256:").is_some_and(|hex| {
        hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    })
}

/// The annotation naming an image in a layout's `index.json`.
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// An OCI layout directory.
#[derive(Debug, Clone)]
pub struct Layout {
    pub dir: PathBuf,
}

pub(crate) fn digest_of(bytes: &[u8]) -> String {
    format!("sha256:{}", crate::context::hex(&Sha256::digest(bytes)))
}

impl Layout {
    /// A user's layout, which must exist.
    pub fn existing(dir: &Path) -> Result<Self> {
        let layout = Self {
            dir: dir.to_owned(),
        };
        if !dir.join("oci-layout").is_file() || !dir.join("index.json").is_file() {
            return Err(Error::BaseImage {
                reason: format!(
                    "{} is not an OCI image layout (it needs `oci-layout` and `index.json`)",
                    dir.display()
                ),
            });
        }
        Ok(layout)
    }

    /// Whether `dir` can be the builder's own layout: absent, empty, or marked as made
    /// by this tool (checked by the preflight; [`Layout::create`] checks again).
    pub fn check_ours(dir: &Path) -> Result<()> {
        // Something there that is no folder (a file, a dangling link) would fail
        // the run after make and the build.
        if std::fs::symlink_metadata(dir).is_ok() && !dir.is_dir() {
            return Err(Error::Usage(format!(
                "{} exists and is not a folder: the OCI layout goes there; move it away or pass another --state-dir",
                dir.display()
            )));
        }
        let occupied = std::fs::read_dir(dir).is_ok_and(|mut d| d.next().is_some());
        if occupied && !dir.join(OWNER_MARK).is_file() {
            return Err(Error::Usage(format!(
                "{} exists and this tool did not make it (no {OWNER_MARK} in it): its OCI layout there would delete what it does not know; move that folder away or pass another --state-dir",
                dir.display()
            )));
        }
        Ok(())
    }

    /// The builder's own layout, created if missing. A folder that exists with
    /// something in it and without this tool's marker is refused: the layout's
    /// prune deletes blobs, and only in a layout this tool made.
    pub fn create(dir: &Path) -> Result<Self> {
        let owned = dir.join(OWNER_MARK);
        Self::check_ours(dir)?;
        std::fs::create_dir_all(dir.join("blobs/sha256")).map_err(Error::io("creating", dir))?;
        if !owned.is_file() {
            std::fs::write(
                &owned,
                "made by cargo xtask image --builder oci; its blobs are pruned\n",
            )
            .map_err(Error::io("writing", &owned))?;
        }
        let marker = dir.join("oci-layout");
        if !marker.is_file() {
            std::fs::write(&marker, "{\"imageLayoutVersion\":\"1.0.0\"}\n")
                .map_err(Error::io("writing", &marker))?;
        }
        Ok(Self {
            dir: dir.to_owned(),
        })
    }

    pub fn blob_path(&self, digest: &str) -> PathBuf {
        let (algorithm, hex) = digest.split_once(':').unwrap_or(("sha256", digest));
        self.dir.join("blobs").join(algorithm).join(hex)
    }

    /// Store `bytes` (a config or manifest) and describe it.
    pub fn write_blob(&self, media_type: &str, bytes: &[u8]) -> Result<Descriptor> {
        let digest = digest_of(bytes);
        let path = self.blob_path(&digest);
        // A file there that does not hold these bytes (damaged) is replaced.
        let held = std::fs::read(&path).is_ok_and(|held| held == bytes);
        if !held {
            write_atomically(&path, bytes)?;
        }
        Ok(Descriptor {
            media_type: media_type.to_owned(),
            digest,
            size: bytes.len() as u64,
            platform: None,
            annotations: BTreeMap::new(),
        })
    }

    /// A blob read whole (configs, manifests), its digest checked.
    pub fn read_blob(&self, digest: &str) -> Result<Vec<u8>> {
        if !valid_digest(digest) {
            return Err(Error::BaseImage {
                reason: format!(
                    "{} names a blob `{digest}`, which is not a sha256 digest",
                    self.dir.display()
                ),
            });
        }
        let path = self.blob_path(digest);
        let bytes = std::fs::read(&path).map_err(Error::io("reading", &path))?;
        let got = digest_of(&bytes);
        if got != digest {
            return Err(Error::BaseImage {
                reason: format!(
                    "{} holds content with digest {got}, not {digest}",
                    path.display()
                ),
            });
        }
        Ok(bytes)
    }

    pub fn index(&self) -> Result<Index> {
        let path = self.dir.join("index.json");
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| Error::BaseImage {
                reason: format!("{} is not an OCI index: {e}", path.display()),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Index {
                schema_version: 2,
                media_type: Some(media::OCI_INDEX.into()),
                manifests: Vec::new(),
            }),
            Err(e) => Err(Error::io("reading", &path)(e)),
        }
    }

    /// Name `descriptor` `reference` in `index.json` (replacing what had that name),
    /// then delete the blobs no named image reaches.
    pub fn set_ref(&self, reference: &str, mut descriptor: Descriptor) -> Result<()> {
        let mut index = self.index()?;
        index
            .manifests
            .retain(|d| d.annotations.get(REF_NAME).map(String::as_str) != Some(reference));
        descriptor
            .annotations
            .insert(REF_NAME.to_owned(), reference.to_owned());
        index.manifests.push(descriptor);
        index.manifests.sort_by(|a, b| {
            a.annotations
                .get(REF_NAME)
                .cmp(&b.annotations.get(REF_NAME))
        });
        let json = serde_json::to_vec_pretty(&index).unwrap_or_default();
        write_atomically(&self.dir.join("index.json"), &json)?;
        self.prune(&index)
    }

    /// Forget the image named `reference` and delete the blobs nothing else reaches.
    pub fn remove_ref(&self, reference: &str) -> Result<()> {
        let mut index = self.index()?;
        index
            .manifests
            .retain(|d| d.annotations.get(REF_NAME).map(String::as_str) != Some(reference));
        let json = serde_json::to_vec_pretty(&index).unwrap_or_default();
        write_atomically(&self.dir.join("index.json"), &json)?;
        self.prune(&index)
    }

    /// Delete the blobs no named image reaches (what a push of the engine's
    /// image left: the registry holds them now).
    pub fn prune_unnamed(&self) -> Result<()> {
        self.prune(&self.index()?)
    }

    /// The descriptor named `reference`, if any.
    pub fn named(&self, reference: &str) -> Result<Option<Descriptor>> {
        Ok(self
            .index()?
            .manifests
            .into_iter()
            .find(|d| d.annotations.get(REF_NAME).map(String::as_str) == Some(reference)))
    }

    fn prune(&self, index: &Index) -> Result<()> {
        let mut keep = BTreeSet::new();
        let mut queue: Vec<Descriptor> = index.manifests.clone();
        while let Some(d) = queue.pop() {
            if !keep.insert(d.digest.clone()) {
                continue;
            }
            if d.media_type == media::OCI_MANIFEST
                || media::is_index(&d.media_type)
                || d.media_type == media::DOCKER_MANIFEST
            {
                let Ok(bytes) = std::fs::read(self.blob_path(&d.digest)) else {
                    continue;
                };
                let Ok(doc) = serde_json::from_slice::<serde_json::Value>(&bytes) else {
                    continue;
                };
                for key in ["config"] {
                    if let Some(c) = doc
                        .get(key)
                        .and_then(|c| serde_json::from_value(c.clone()).ok())
                    {
                        queue.push(c);
                    }
                }
                for key in ["layers", "manifests"] {
                    if let Some(list) = doc
                        .get(key)
                        .and_then(|l| serde_json::from_value::<Vec<Descriptor>>(l.clone()).ok())
                    {
                        queue.extend(list);
                    }
                }
            }
        }
        let dir = self.dir.join("blobs/sha256");
        let entries = std::fs::read_dir(&dir).map_err(Error::io("reading", &dir))?;
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            // What an interrupted run left (`.layer-*`, `.tmp-*`): the state
            // directory's lock, held by this run, means no other run writes here.
            if name.starts_with(".layer-") || name.starts_with(".tmp-") {
                let _ = std::fs::remove_file(entry.path());
                continue;
            }
            if name.starts_with('.') {
                continue;
            }
            if !keep.contains(&format!("sha256:{name}")) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        Ok(())
    }
}

pub(crate) fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(Error::io("creating", dir))?;
    let tmp = dir.join(format!(
        ".tmp-{}-{}",
        std::process::id(),
        path.file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default()
    ));
    std::fs::write(&tmp, bytes).map_err(Error::io("writing", &tmp))?;
    std::fs::rename(&tmp, path).map_err(Error::io("writing", path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn platforms_parse_and_match() {
        let arm = Platform::parse("linux/arm64").unwrap();
        assert_eq!(arm.to_string(), "linux/arm64");
        let v7 = Platform::parse("linux/arm/v7").unwrap();
        assert!(v7.serves(&Platform::parse("linux/arm").unwrap()));
        assert!(!Platform::parse("linux/arm/v6").unwrap().serves(&v7));
        for bad in ["linux", "linux/", "a/b/c/d", "linux/am d64"] {
            assert!(Platform::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_folder_this_tool_did_not_make_is_not_taken_as_its_layout() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("precious"), b"x").unwrap();
        let e = Layout::create(dir.path()).unwrap_err().to_string();
        assert!(e.contains("this tool did not make it"), "{e}");
        assert!(dir.path().join("precious").is_file());
        let empty = tempfile::tempdir().unwrap();
        Layout::create(empty.path()).unwrap();
        Layout::create(empty.path()).unwrap();
        assert!(!valid_digest("sha256:../../etc/passwd"));
        assert!(valid_digest(&format!("sha256:{}", "0a".repeat(32))));
        // A file, or a link to nowhere, where the layout goes: refused, left as it is.
        let file = dir.path().join("oci");
        std::fs::write(&file, b"mine").unwrap();
        let e = Layout::check_ours(&file).unwrap_err().to_string();
        assert!(e.contains("is not a folder"), "{e}");
        let link = dir.path().join("dangling");
        std::os::unix::fs::symlink(dir.path().join("nowhere"), &link).unwrap();
        assert!(Layout::check_ours(&link).is_err());
        assert_eq!(std::fs::read(&file).unwrap(), b"mine");
    }

    #[test]
    fn named_images_survive_a_prune_and_the_rest_goes() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::create(dir.path()).unwrap();
        let layer = layout
            .write_blob("application/octet-stream", b"layer")
            .unwrap();
        let orphan = layout
            .write_blob("application/octet-stream", b"orphan")
            .unwrap();
        let manifest = serde_json::json!({"schemaVersion": 2, "layers": [layer], "config": layer});
        let manifest = layout
            .write_blob(media::OCI_MANIFEST, manifest.to_string().as_bytes())
            .unwrap();
        layout.set_ref("r:1", manifest.clone()).unwrap();
        assert!(layout.blob_path(&layer.digest).is_file());
        assert!(!layout.blob_path(&orphan.digest).exists());
        assert_eq!(
            layout.named("r:1").unwrap().unwrap().digest,
            manifest.digest
        );
        assert_eq!(layout.read_blob(&layer.digest).unwrap(), b"layer");
        std::fs::write(layout.blob_path(&layer.digest), b"changed").unwrap();
        assert!(layout.read_blob(&layer.digest).is_err());
        // Written again, a damaged blob is replaced.
        layout
            .write_blob("application/octet-stream", b"layer")
            .unwrap();
        assert_eq!(layout.read_blob(&layer.digest).unwrap(), b"layer");
        layout.remove_ref("r:1").unwrap();
        assert!(layout.named("r:1").unwrap().is_none());
        assert!(!layout.blob_path(&layer.digest).exists());
        assert!(!layout.blob_path(&manifest.digest).exists());
    }
}
