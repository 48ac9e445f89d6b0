//! `image.json`: what the image side built and pushed, as the deploy side and
//! the demo read it. The image pipeline writes it (with one record per
//! reference beside it); this is the one definition of its fields.

use std::path::{Path, PathBuf};

use crate::reference::{ImageRef, RefError};

/// The file name of the latest record in the state directory.
pub const LATEST: &str = "image.json";

/// What an image run produced.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Record {
    /// `registry/kubemark:tag`.
    #[serde(rename = "ref")]
    pub reference: String,
    /// The registry's digest of the pushed manifest; `None` when not pushed.
    pub digest: Option<String>,
    /// `registry/kubemark:tag@digest` when pushed, else the tag reference.
    pub image: String,
    pub image_id: String,
    pub commit: String,
    pub version: String,
    pub dirty: bool,
    pub binary_sha256: String,
    /// Fingerprint of every input of the image.
    pub inputs: String,
    /// The kubernetes repository, without credentials.
    pub source: String,
    /// `engine` or `oci` (absent in records written before there was a choice).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub builder: Option<String>,
    /// One entry per platform built; with several, `digest` is their index's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub platforms: Vec<PlatformImage>,
}

/// The image built for one platform.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PlatformImage {
    /// `os/arch[/variant]`.
    pub platform: String,
    /// The platform's manifest digest in the registry, when pushed.
    pub digest: Option<String>,
    /// The image's config digest (the engine's image ID).
    pub image_id: String,
    pub binary_sha256: String,
}

/// Why `image.json` could not be used.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("the image record {} cannot be read: {source}", path.display())]
    Unreadable {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the image record {} is not an image record: {source}", path.display())]
    Malformed {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("the image record {} names an invalid image: {source}", path.display())]
    BadImage { path: PathBuf, source: RefError },
}

/// Where the latest record of `state_dir` lives.
pub fn latest_path(state_dir: &Path) -> PathBuf {
    state_dir.join(LATEST)
}

impl Record {
    /// The image to deploy: the pushed `…@digest` reference when there is one.
    pub fn image_ref(&self) -> Result<ImageRef, RefError> {
        ImageRef::parse(&self.image)
    }

    /// The latest record in `state_dir`, `None` when no image run wrote one.
    pub fn latest(state_dir: &Path) -> Result<Option<Self>, RecordError> {
        let path = latest_path(state_dir);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(RecordError::Unreadable { path, source }),
        };
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|source| RecordError::Malformed { path, source })
    }

    /// The image of the latest record in `state_dir`, checked.
    pub fn latest_image(state_dir: &Path) -> Result<Option<ImageRef>, RecordError> {
        let Some(record) = Self::latest(state_dir)? else {
            return Ok(None);
        };
        record
            .image_ref()
            .map(Some)
            .map_err(|source| RecordError::BadImage {
                path: latest_path(state_dir),
                source,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(image: &str) -> Record {
        Record {
            reference: "127.0.0.1:5000/kubemark:v1".into(),
            digest: Some("sha256:00".into()),
            image: image.into(),
            image_id: "sha256:11".into(),
            commit: "c".into(),
            version: "v".into(),
            dirty: false,
            binary_sha256: "b".into(),
            inputs: "sha256:22".into(),
            source: "git://x/k".into(),
            ..Record::default()
        }
    }

    #[test]
    fn the_latest_image_read_typed() {
        let dir = tempfile::tempdir().unwrap();
        assert!(Record::latest_image(dir.path()).unwrap().is_none());
        let digest = format!("sha256:{}", "a".repeat(64));
        let r = record(&format!("127.0.0.1:5000/kubemark:v1@{digest}"));
        std::fs::write(latest_path(dir.path()), serde_json::to_string(&r).unwrap()).unwrap();
        assert_eq!(Record::latest(dir.path()).unwrap(), Some(r));
        let image = Record::latest_image(dir.path()).unwrap().unwrap();
        assert_eq!(
            image.to_string(),
            format!("127.0.0.1:5000/kubemark:v1@{digest}")
        );

        std::fs::write(latest_path(dir.path()), "{}").unwrap();
        let e = Record::latest_image(dir.path()).unwrap_err();
        assert!(e.to_string().contains("is not an image record"), "{e}");
        let r = record("Upper/Case:v1");
        std::fs::write(latest_path(dir.path()), serde_json::to_string(&r).unwrap()).unwrap();
        let e = Record::latest_image(dir.path()).unwrap_err();
        assert!(e.to_string().contains("names an invalid image"), "{e}");
    }
}
