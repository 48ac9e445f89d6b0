//! `target/kubemark/image.json`: what the last run built and pushed, for the
//! deploy side, for CI, and for the next run's "up to date" check. One record
//! per image reference is kept under `images/`; `image.json` is the latest.
//! The record's fields are defined in `kubemark_contract::record`, where the
//! deploy side reads them.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

pub use kubemark_contract::record::{PlatformImage, Record};

/// Where records live.
#[derive(Debug, Clone)]
pub struct Records {
    dir: PathBuf,
}

impl Records {
    pub fn new(state_dir: &Path) -> Self {
        Self {
            dir: state_dir.to_owned(),
        }
    }

    /// `image.json`: the latest record.
    pub fn latest_path(&self) -> PathBuf {
        kubemark_contract::record::latest_path(&self.dir)
    }

    fn path_for(&self, reference: &str) -> PathBuf {
        let name: String = reference
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        self.dir.join("images").join(format!("{name}.json"))
    }

    /// The record of the last run for `reference`, if any (an unreadable one counts as none).
    pub fn load(&self, reference: &str) -> Option<Record> {
        let text = std::fs::read_to_string(self.path_for(reference)).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// Store `record` for its reference and as the latest.
    pub fn save(&self, record: &Record) -> Result<PathBuf> {
        let json = serde_json::to_string_pretty(record).unwrap_or_default() + "\n";
        write_atomically(&self.path_for(&record.reference), json.as_bytes())?;
        let latest = self.latest_path();
        write_atomically(&latest, json.as_bytes())?;
        Ok(latest)
    }
}

fn write_atomically(path: &Path, data: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(Error::io("creating", dir))?;
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    std::fs::write(&tmp, data).map_err(Error::io("writing", &tmp))?;
    std::fs::rename(&tmp, path).map_err(Error::io("writing", path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_per_reference() {
        let dir = tempfile::tempdir().unwrap();
        let records = Records::new(dir.path());
        let record = Record {
            reference: "127.0.0.1:5000/kubemark:v1".into(),
            digest: Some("sha256:00".into()),
            image: "127.0.0.1:5000/kubemark:v1@sha256:00".into(),
            image_id: "sha256:11".into(),
            commit: "c".into(),
            version: "v".into(),
            dirty: false,
            binary_sha256: "b".into(),
            inputs: "sha256:22".into(),
            source: "git://x/k".into(),
            ..Record::default()
        };
        let latest = records.save(&record).unwrap();
        assert_eq!(latest, dir.path().join("image.json"));
        assert_eq!(records.load(&record.reference), Some(record.clone()));
        assert_eq!(records.load("127.0.0.1:5000/kubemark:v2"), None);
        let on_disk: Record =
            serde_json::from_str(&std::fs::read_to_string(latest).unwrap()).unwrap();
        assert_eq!(on_disk, record);
    }
}
