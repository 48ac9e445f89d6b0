//! Environment references to configmaps and secrets (`env[].valueFrom`,
//! `envFrom`), which must resolve before a container is created.

use serde_json::Value;

use super::status::containers_of;
use crate::Shared;
use crate::meta::{self, idx};

/// Environment references to configmaps and secrets: the container and the error.
pub(super) fn check_config_refs(shared: &Shared, pod: &Value) -> Result<(), (String, String)> {
    let ns = meta::namespace(pod);
    for c in containers_of(pod, "containers")
        .iter()
        .chain(containers_of(pod, "initContainers").iter())
    {
        let cname = c["name"].as_str().unwrap_or_default().to_owned();
        for e in c["env"].as_array().into_iter().flatten() {
            for (field, res, what, kind) in [
                ("configMapKeyRef", idx::CONFIGMAPS, "configmap", "ConfigMap"),
                ("secretKeyRef", idx::SECRETS, "secret", "Secret"),
            ] {
                let Some(r) = e.pointer(&format!("/valueFrom/{field}")) else {
                    continue;
                };
                if r["optional"].as_bool() == Some(true) {
                    continue;
                }
                let name = r["name"].as_str().unwrap_or_default();
                let key = r["key"].as_str().unwrap_or_default();
                match shared.store.get(res, ns, name) {
                    None => return Err((cname, format!("{what} \"{name}\" not found"))),
                    Some(obj)
                        if obj
                            .value
                            .pointer("/data")
                            .and_then(|d| d.get(key))
                            .is_none() =>
                    {
                        return Err((
                            cname,
                            format!("couldn't find key {key} in {kind} {ns}/{name}"),
                        ));
                    }
                    Some(_) => {}
                }
            }
        }
        for e in c["envFrom"].as_array().into_iter().flatten() {
            for (field, res, what) in [
                ("configMapRef", idx::CONFIGMAPS, "configmap"),
                ("secretRef", idx::SECRETS, "secret"),
            ] {
                let Some(r) = e.get(field) else { continue };
                let name = r["name"].as_str().unwrap_or_default();
                if r["optional"].as_bool() != Some(true)
                    && shared.store.get(res, ns, name).is_none()
                {
                    return Err((cname, format!("{what} \"{name}\" not found")));
                }
            }
        }
    }
    Ok(())
}
