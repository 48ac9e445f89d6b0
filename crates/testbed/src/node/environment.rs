//! The containers' environment and the downward API fields.

use std::collections::{BTreeMap, HashMap};

use anyhow::{Context as _, Result, bail};
use k8s_openapi::api::core::v1::{ConfigMap, Container, EnvVarSource, ObjectFieldSelector, Secret};
use kube::ResourceExt;
use kube::api::Api;

use super::sync::PodWorker;

impl PodWorker {
    /// The container's environment in Kubernetes' order: `envFrom`, then `env`
    /// (each value expanded against what precedes it), after the service variables.
    pub(super) async fn environment(&self, spec: &Container) -> Result<Vec<(String, String)>> {
        let namespace = self.pod.namespace().unwrap_or_default();
        let mut env: Vec<(String, String)> = vec![
            (
                "KUBERNETES_SERVICE_HOST".into(),
                self.shared.api_host.clone(),
            ),
            (
                "KUBERNETES_SERVICE_PORT".into(),
                self.shared.api_port.clone(),
            ),
            (
                "KUBERNETES_SERVICE_PORT_HTTPS".into(),
                self.shared.api_port.clone(),
            ),
        ];
        let set = |env: &mut Vec<(String, String)>, k: String, v: String| {
            env.retain(|(key, _)| *key != k);
            env.push((k, v));
        };
        for from in spec.env_from.iter().flatten() {
            let prefix = from.prefix.clone().unwrap_or_default();
            if let Some(r) = &from.config_map_ref
                && let Some(cm) = self.config_map(&namespace, &r.name, r.optional).await?
            {
                for (k, v) in cm.data.unwrap_or_default() {
                    set(&mut env, format!("{prefix}{k}"), v);
                }
            }
            if let Some(r) = &from.secret_ref
                && let Some(s) = self.secret(&namespace, &r.name, r.optional).await?
            {
                for (k, v) in s.data.unwrap_or_default() {
                    set(
                        &mut env,
                        format!("{prefix}{k}"),
                        String::from_utf8_lossy(&v.0).into_owned(),
                    );
                }
            }
        }
        for var in spec.env.iter().flatten() {
            let value = match (&var.value, &var.value_from) {
                (_, Some(source)) => match self.env_source(&namespace, source).await? {
                    Some(v) => v,
                    None => continue,
                },
                (Some(v), None) => {
                    let lookup: HashMap<&str, &str> =
                        env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
                    expand(v, &lookup)
                }
                (None, None) => String::new(),
            };
            set(&mut env, var.name.clone(), value);
        }
        Ok(env)
    }

    /// A `valueFrom`'s value; `None` for an optional key that is missing.
    pub(super) async fn env_source(
        &self,
        namespace: &str,
        source: &EnvVarSource,
    ) -> Result<Option<String>> {
        if let Some(f) = &source.field_ref {
            return self.field(f).map(Some);
        }
        if let Some(r) = &source.secret_key_ref {
            let Some(secret) = self.secret(namespace, &r.name, r.optional).await? else {
                return Ok(None);
            };
            return match secret.data.unwrap_or_default().remove(&r.key) {
                Some(v) => Ok(Some(String::from_utf8_lossy(&v.0).into_owned())),
                None if r.optional == Some(true) => Ok(None),
                None => bail!("secret {} has no key {}", r.name, r.key),
            };
        }
        if let Some(r) = &source.config_map_key_ref {
            let Some(cm) = self.config_map(namespace, &r.name, r.optional).await? else {
                return Ok(None);
            };
            return match cm.data.unwrap_or_default().remove(&r.key) {
                Some(v) => Ok(Some(v)),
                None if r.optional == Some(true) => Ok(None),
                None => bail!("config map {} has no key {}", r.name, r.key),
            };
        }
        bail!("resourceFieldRef and fileKeyRef are not supported by the node agent")
    }

    /// A downward API field.
    pub(super) fn field(&self, f: &ObjectFieldSelector) -> Result<String> {
        let meta = &self.pod.metadata;
        let path = f.field_path.as_str();
        let keyed = |prefix: &str, map: &Option<BTreeMap<String, String>>| {
            path.strip_prefix(prefix)
                .and_then(|rest| rest.strip_suffix("']"))
                .map(|key| {
                    map.as_ref()
                        .and_then(|m| m.get(key).cloned())
                        .unwrap_or_default()
                })
        };
        if let Some(v) = keyed("metadata.labels['", &meta.labels) {
            return Ok(v);
        }
        if let Some(v) = keyed("metadata.annotations['", &meta.annotations) {
            return Ok(v);
        }
        let pod_ip = self
            .sandbox
            .as_ref()
            .map(|(_, ip)| ip.clone())
            .unwrap_or_default();
        Ok(match path {
            "metadata.name" => self.pod.name_any(),
            "metadata.namespace" => self.pod.namespace().unwrap_or_default(),
            "metadata.uid" => self.uid.clone(),
            "spec.nodeName" => self.node.clone(),
            "spec.serviceAccountName" => self
                .pod
                .spec
                .as_ref()
                .and_then(|s| s.service_account_name.clone())
                .unwrap_or_default(),
            "status.hostIP" | "status.hostIPs" => self.shared.config.address.to_string(),
            "status.podIP" | "status.podIPs" => pod_ip,
            other => bail!("field {other} is not supported by the node agent"),
        })
    }

    /// Secret `namespace/name`; `None` when it cannot be read and `optional` allows that.
    pub(super) async fn secret(
        &self,
        namespace: &str,
        name: &str,
        optional: Option<bool>,
    ) -> Result<Option<Secret>> {
        let got = Api::<Secret>::namespaced(self.client.clone(), namespace)
            .get(name)
            .await
            .with_context(|| format!("reading secret {namespace}/{name}"));
        unless_optional(got, optional)
    }

    /// Config map `namespace/name`; `None` when it cannot be read and `optional` allows that.
    pub(super) async fn config_map(
        &self,
        namespace: &str,
        name: &str,
        optional: Option<bool>,
    ) -> Result<Option<ConfigMap>> {
        let got = Api::<ConfigMap>::namespaced(self.client.clone(), namespace)
            .get(name)
            .await
            .with_context(|| format!("reading config map {namespace}/{name}"));
        unless_optional(got, optional)
    }
}

/// A reference's object, or `None` for a failure that `optional: true` makes no error.
fn unless_optional<T>(got: Result<T>, optional: Option<bool>) -> Result<Option<T>> {
    match got {
        Ok(object) => Ok(Some(object)),
        Err(_) if optional == Some(true) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Kubernetes' `$(VAR)` expansion: a defined variable is replaced, an
/// undefined one is left as written, `$$` is a `$`, anything else is literal.
pub fn expand(input: &str, vars: &HashMap<&str, &str>) -> String {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(tail) = after.strip_prefix('(') {
            match tail.find(')') {
                Some(end) => {
                    let name = &tail[..end];
                    match vars.get(name) {
                        Some(value) if !name.is_empty() => out.push_str(value),
                        _ => {
                            out.push_str("$(");
                            out.push_str(name);
                            out.push(')');
                        }
                    }
                    rest = &tail[end + 1..];
                }
                None => {
                    out.push_str("$(");
                    rest = tail;
                }
            }
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expansion_follows_kubernetes() {
        let vars = HashMap::from([("NODE", "a"), ("EMPTY", "")]);
        assert_eq!(expand("$(NODE)-x", &vars), "a-x");
        assert_eq!(expand("$(MISSING)", &vars), "$(MISSING)");
        assert_eq!(expand("$$(NODE)", &vars), "$(NODE)");
        assert_eq!(expand("$(EMPTY)|", &vars), "|");
        assert_eq!(expand("a$b $(", &vars), "a$b $(");
        assert_eq!(expand("$()", &vars), "$()");
        assert_eq!(expand("$$$$", &vars), "$$");
    }
}
