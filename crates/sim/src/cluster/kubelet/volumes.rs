//! Secret and configmap volumes: whether a pod's volumes can mount, and what
//! a mounted file holds.

use base64::Engine as _;
use serde_json::Value;

use crate::Shared;
use crate::meta::{self, idx};

/// A mounted file's bytes: the volume mount whose path holds `path`, then the
/// secret or configmap key behind it.
pub(crate) fn read_mounted(
    shared: &Shared,
    pod: &Value,
    container: &Value,
    path: &str,
) -> Result<Vec<u8>, String> {
    let missing = || format!("open {path}: no such file or directory");
    let mounts = container["volumeMounts"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let mount = mounts
        .iter()
        .filter_map(|m| {
            let mp = m["mountPath"].as_str()?.trim_end_matches('/');
            let rest = path.strip_prefix(mp)?.strip_prefix('/')?;
            Some((m, rest.to_owned(), mp.len()))
        })
        .max_by_key(|(_, _, len)| *len)
        .ok_or_else(missing)?;
    let (m, rest, _) = mount;
    let rest = match m["subPath"].as_str() {
        Some(sub) if !sub.is_empty() => format!("{sub}/{rest}"),
        _ => rest,
    };
    let volume = pod
        .pointer("/spec/volumes")
        .and_then(Value::as_array)
        .and_then(|v| v.iter().find(|v| v["name"] == m["name"]))
        .ok_or_else(missing)?;
    let ns = meta::namespace(pod);
    let engine = base64::engine::general_purpose::STANDARD;
    let lookup = |source: &Value, res: usize, name_field: &str| -> Result<Vec<u8>, String> {
        let name = source[name_field].as_str().unwrap_or_default();
        let obj = shared.store.get(res, ns, name).ok_or_else(missing)?;
        let key = match source["items"].as_array() {
            Some(items) => items
                .iter()
                .find(|i| i["path"].as_str() == Some(rest.as_str()))
                .and_then(|i| i["key"].as_str())
                .ok_or_else(missing)?
                .to_owned(),
            None => rest.clone(),
        };
        if let Some(v) = obj.value.pointer(&format!(
            "/data/{}",
            key.replace('~', "~0").replace('/', "~1")
        )) {
            let s = v.as_str().unwrap_or_default();
            return if res == idx::SECRETS {
                engine.decode(s).map_err(|_| missing())
            } else {
                Ok(s.as_bytes().to_vec())
            };
        }
        Err(missing())
    };
    if volume.get("secret").is_some() {
        lookup(&volume["secret"], idx::SECRETS, "secretName")
    } else if volume.get("configMap").is_some() {
        lookup(&volume["configMap"], idx::CONFIGMAPS, "name")
    } else {
        Err(missing())
    }
}

/// Every secret and configmap volume must exist (unless optional), with the keys its items name.
pub(super) fn check_volumes(shared: &Shared, pod: &Value) -> Result<(), String> {
    let ns = meta::namespace(pod);
    for v in pod
        .pointer("/spec/volumes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let vname = v["name"].as_str().unwrap_or_default();
        let (source, res, field, what) = if let Some(s) = v.get("secret") {
            (s, idx::SECRETS, "secretName", "secret")
        } else if let Some(c) = v.get("configMap") {
            (c, idx::CONFIGMAPS, "name", "configmap")
        } else {
            continue;
        };
        let optional = source["optional"].as_bool() == Some(true);
        let name = source[field].as_str().unwrap_or_default();
        let Some(obj) = shared.store.get(res, ns, name) else {
            if optional {
                continue;
            }
            return Err(format!(
                "MountVolume.SetUp failed for volume \"{vname}\" : {what} \"{name}\" not found"
            ));
        };
        for item in source["items"].as_array().into_iter().flatten() {
            let key = item["key"].as_str().unwrap_or_default();
            let present = obj
                .value
                .pointer("/data")
                .and_then(|d| d.get(key))
                .is_some()
                || obj
                    .value
                    .pointer("/binaryData")
                    .and_then(|d| d.get(key))
                    .is_some();
            if !present && !optional {
                let kind = if res == idx::SECRETS {
                    "secret"
                } else {
                    "configmap"
                };
                let key_kind = if res == idx::SECRETS {
                    "secret key"
                } else {
                    "config key"
                };
                return Err(format!(
                    "MountVolume.SetUp failed for volume \"{vname}\" : {kind} references non-existent {key_kind}: {key}"
                ));
            }
        }
    }
    Ok(())
}
