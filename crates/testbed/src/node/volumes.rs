//! The pod's volumes, materialised in its directory: secret, configMap,
//! downwardAPI, projected (with the service account token), emptyDir and hostPath.

use std::collections::{BTreeMap, HashMap};
use std::path::{Component, Path, PathBuf};

use anyhow::{Context as _, Result, anyhow, bail};
use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{ConfigMap, KeyToPath, Secret, ServiceAccount, Volume};
use kube::ResourceExt;
use kube::api::{Api, PostParams};

use super::sync::PodWorker;

impl PodWorker {
    /// The files of a downward API volume (or projected source) under `dir`.
    pub(super) fn write_downward<'i>(
        &self,
        dir: &Path,
        items: impl Iterator<Item = &'i k8s_openapi::api::core::v1::DownwardAPIVolumeFile>,
        default_mode: Option<i32>,
    ) -> Result<()> {
        for item in items {
            let f = item.field_ref.as_ref().ok_or_else(|| {
                anyhow!("downwardAPI item {}: only fieldRef is supported", item.path)
            })?;
            write_file(
                dir,
                &item.path,
                self.field(f)?.as_bytes(),
                item.mode.or(default_mode),
            )?;
        }
        Ok(())
    }

    /// Materialise every volume of the pod; name → (directory, read-only).
    pub(super) async fn prepare_volumes(&self) -> Result<HashMap<String, (PathBuf, bool)>> {
        let mut out = HashMap::new();
        let volumes = self
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.volumes.clone())
            .unwrap_or_default();
        for volume in volumes {
            let entry = self
                .prepare_volume(&volume)
                .await
                .with_context(|| format!("volume {}", volume.name))?;
            out.insert(volume.name.clone(), entry);
        }
        Ok(out)
    }

    pub(super) async fn prepare_volume(&self, volume: &Volume) -> Result<(PathBuf, bool)> {
        let namespace = self.pod.namespace().unwrap_or_default();
        let dir = self.dir.join("volumes").join(&volume.name);
        if let Some(host) = &volume.host_path {
            let path = host_path(&self.shared.dir, &self.node, &host.path);
            match host.type_.as_deref().unwrap_or("") {
                "File" | "FileOrCreate" => {
                    if let Some(parent) = path.parent() {
                        std::fs::create_dir_all(parent)?;
                    }
                    if !path.exists() {
                        std::fs::write(&path, "")?;
                    }
                }
                "" | "Directory" | "DirectoryOrCreate" => {
                    std::fs::create_dir_all(&path)
                        .with_context(|| format!("creating {}", path.display()))?;
                    permissive(&path)?;
                }
                other => bail!("hostPath type {other} is not supported by the node agent"),
            }
            return Ok((path, false));
        }
        fresh_dir(&dir)?;
        if volume.empty_dir.is_some() {
            permissive(&dir)?;
            return Ok((dir, false));
        }
        if let Some(s) = &volume.secret {
            let name = s.secret_name.clone().unwrap_or_default();
            if let Some(secret) = self.secret(&namespace, &name, s.optional).await? {
                write_keys(&dir, &secret_files(secret), &s.items, s.default_mode)?;
            }
            return Ok((dir, true));
        }
        if let Some(c) = &volume.config_map {
            if let Some(cm) = self.config_map(&namespace, &c.name, c.optional).await? {
                write_keys(&dir, &config_map_files(cm), &c.items, c.default_mode)?;
            }
            return Ok((dir, true));
        }
        if let Some(d) = &volume.downward_api {
            self.write_downward(&dir, d.items.iter().flatten(), d.default_mode)?;
            return Ok((dir, true));
        }
        if let Some(p) = &volume.projected {
            for source in p.sources.iter().flatten() {
                if let Some(s) = &source.secret
                    && let Some(secret) = self.secret(&namespace, &s.name, s.optional).await?
                {
                    write_keys(&dir, &secret_files(secret), &s.items, p.default_mode)?;
                }
                if let Some(c) = &source.config_map
                    && let Some(cm) = self.config_map(&namespace, &c.name, c.optional).await?
                {
                    write_keys(&dir, &config_map_files(cm), &c.items, p.default_mode)?;
                }
                if let Some(d) = &source.downward_api {
                    self.write_downward(&dir, d.items.iter().flatten(), p.default_mode)?;
                }
                if let Some(t) = &source.service_account_token {
                    let token = self
                        .token(&namespace, t.audience.clone(), t.expiration_seconds)
                        .await?;
                    write_file(&dir, &t.path, token.as_bytes(), p.default_mode)?;
                }
            }
            return Ok((dir, true));
        }
        bail!(
            "this volume type is not supported by the node agent (secret, configMap, downwardAPI, projected, emptyDir, hostPath are)"
        )
    }

    /// A service account token bound to the pod, as the kubelet requests one.
    pub(super) async fn token(
        &self,
        namespace: &str,
        audience: Option<String>,
        seconds: Option<i64>,
    ) -> Result<String> {
        let account = self
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_else(|| "default".into());
        let request = TokenRequest {
            spec: TokenRequestSpec {
                audiences: audience.into_iter().collect(),
                expiration_seconds: Some(seconds.unwrap_or(3607)),
                bound_object_ref: Some(BoundObjectReference {
                    api_version: Some("v1".into()),
                    kind: Some("Pod".into()),
                    name: Some(self.pod.name_any()),
                    uid: Some(self.uid.clone()),
                }),
            },
            ..Default::default()
        };
        let response = Api::<ServiceAccount>::namespaced(self.client.clone(), namespace)
            .create_token_request(&account, &PostParams::default(), &request)
            .await
            .with_context(|| {
                format!("requesting a token of service account {namespace}/{account}")
            })?;
        response
            .status
            .map(|s| s.token)
            .ok_or_else(|| anyhow!("the token request of {account} returned no token"))
    }
}

pub(super) fn host_path(dir: &Path, node: &str, path: &str) -> PathBuf {
    let mut out = dir.join("hostpath").join(node);
    for part in Path::new(path).components() {
        if let Component::Normal(p) = part {
            out.push(p);
        }
    }
    out
}

pub(super) fn secret_files(secret: Secret) -> BTreeMap<String, Vec<u8>> {
    let mut files: BTreeMap<String, Vec<u8>> = secret
        .data
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v.0))
        .collect();
    for (k, v) in secret.string_data.unwrap_or_default() {
        files.insert(k, v.into_bytes());
    }
    files
}

pub(super) fn config_map_files(cm: ConfigMap) -> BTreeMap<String, Vec<u8>> {
    let mut files: BTreeMap<String, Vec<u8>> = cm
        .data
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v.into_bytes()))
        .collect();
    for (k, v) in cm.binary_data.unwrap_or_default() {
        files.insert(k, v.0);
    }
    files
}

/// Write `files` into `dir`: every key, or only `items` (key → path, mode).
pub(super) fn write_keys(
    dir: &Path,
    files: &BTreeMap<String, Vec<u8>>,
    items: &Option<Vec<KeyToPath>>,
    default_mode: Option<i32>,
) -> Result<()> {
    match items {
        Some(items) => {
            for item in items {
                let data = files
                    .get(&item.key)
                    .ok_or_else(|| anyhow!("no key {} to project", item.key))?;
                write_file(dir, &item.path, data, item.mode.or(default_mode))?;
            }
        }
        None => {
            for (key, data) in files {
                write_file(dir, key, data, default_mode)?;
            }
        }
    }
    Ok(())
}

/// A relative path with no `..`: what a volume's item paths may be.
pub(super) fn relative(path: &str) -> Result<PathBuf> {
    let mut out = PathBuf::new();
    for part in Path::new(path).components() {
        match part {
            Component::Normal(p) => out.push(p),
            Component::CurDir => {}
            _ => bail!("path {path} must be relative and must not contain '..'"),
        }
    }
    if out.as_os_str().is_empty() {
        bail!("empty path");
    }
    Ok(out)
}

pub(super) fn write_file(dir: &Path, path: &str, data: &[u8], mode: Option<i32>) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let file = dir.join(relative(path)?);
    if let Some(parent) = file.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    std::fs::write(&file, data).with_context(|| format!("writing {}", file.display()))?;
    let mode = u32::try_from(mode.unwrap_or(0o644)).unwrap_or(0o644) & 0o777;
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("setting the mode of {}", file.display()))?;
    Ok(())
}

pub(super) fn fresh_dir(dir: &Path) -> Result<()> {
    if dir.exists() {
        std::fs::remove_dir_all(dir).with_context(|| format!("emptying {}", dir.display()))?;
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))
}

/// World-writable, as an emptyDir is, so that non-root containers write to it.
pub(super) fn permissive(dir: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o777))
        .with_context(|| format!("setting the mode of {}", dir.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn item_paths_stay_inside() {
        assert!(relative("a/b").is_ok());
        assert!(relative("../x").is_err());
        assert!(relative("/etc/x").is_err());
    }

    #[test]
    fn host_paths_stay_under_the_node_dir() {
        let p = host_path(Path::new("/t"), "n1", "/var/../log/x");
        assert_eq!(p, Path::new("/t/hostpath/n1/var/log/x"));
    }
}
