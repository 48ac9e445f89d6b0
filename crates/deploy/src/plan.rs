//! What to apply, as pure data: the namespace, the configmap the template
//! mounts, the kubeconfig secret and the rendered ReplicationController, built
//! and checked without a cluster. `render` prints it; `deploy` applies it.

use std::collections::BTreeMap;
use std::time::Duration;

use base64::Engine as _;
use k8s_openapi::api::core::v1::{PodSpec, ReplicationController};
use serde_json::{Value, json};

use crate::capacity::{Requests, pod_requests};
use crate::error::{Error, Result};
use crate::identity::{BootstrapToken, NodeIdentity};
use crate::kubeconfig::{PodKubeconfig, Source};
use crate::template::{Choice, Template};
pub use kubemark_contract::ImageRef;

/// The label every hollow node we register carries; its value is the namespace.
pub const NODE_LABEL: &str = "kubemark.dev/hollow-node";
/// The label on a namespace deploy created (for people and selectors).
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "kubemark-deploy");
/// The annotation deploy writes in the request that creates a namespace, and
/// never on one that existed: a namespace is deploy's (and destroy may delete
/// it) only when it carries this. The label above alone proves nothing (earlier
/// versions put it on namespaces they found).
pub const CREATED_BY: (&str, &str) = ("kubemark.dev/created-by", "kubemark-deploy");
/// Namespaces the cluster itself uses: never a target.
pub const RESERVED_NAMESPACES: [&str; 4] =
    ["kube-system", "kube-public", "kube-node-lease", "default"];

/// A namespace deploy may work in: a DNS label, and not one the cluster uses.
pub fn check_namespace(namespace: &str) -> Result<()> {
    let dns_label = !namespace.is_empty()
        && namespace.len() <= 63
        && namespace
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !namespace.starts_with('-')
        && !namespace.ends_with('-');
    if !dns_label {
        return Err(Error::Usage(format!(
            "`{namespace}` is not a valid namespace name: lowercase letters, digits and '-', at most 63 characters, starting and ending with a letter or digit"
        )));
    }
    if RESERVED_NAMESPACES.contains(&namespace) {
        return Err(Error::Usage(format!(
            "`{namespace}` is one of the cluster's own namespaces ({}): hollow nodes go into a namespace of their own, which destroy can delete",
            RESERVED_NAMESPACES.join(", ")
        )));
    }
    Ok(())
}
/// The keys upstream fills with the master's kubeconfig.
pub const SECRET_KEYS: [&str; 6] = [
    "kubelet.kubeconfig",
    "kubeproxy.kubeconfig",
    "npd.kubeconfig",
    "heapster.kubeconfig",
    "cluster_autoscaler.kubeconfig",
    "dns.kubeconfig",
];
/// A node-problem-detector configuration that watches nothing.
pub const KERNEL_MONITOR: &str = r#"{"plugin": "kmsg", "logPath": "/dev/kmsg", "lookback": "10m", "bufferSize": 10, "source": "kernel-monitor", "conditions": [], "rules": []}"#;

/// Per-container requests; `None` takes upstream's defaults.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Resources {
    pub kubelet_millicpu: Option<u64>,
    pub kubelet_mem_ki: Option<u64>,
    pub proxy_millicpu: Option<u64>,
    pub proxy_mem_ki: Option<u64>,
    pub npd_millicpu: Option<u64>,
    pub npd_mem_ki: Option<u64>,
}

/// Everything the user asked for.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Spec {
    pub external: Source,
    pub master: Source,
    pub namespace: String,
    pub replicas: u32,
    /// `registry/kubemark:tag` (possibly `@sha256:`), checked by the one grammar.
    pub image: ImageRef,
    pub template: Choice,
    /// `--set key=value`, applied last.
    pub sets: BTreeMap<String, String>,
    pub resources: Resources,
    pub node_labels: Vec<(String, String)>,
    pub register_with_taints: Option<String>,
    pub max_pods: Option<u32>,
    pub extended_resources: Option<String>,
    /// `None`: grows with the node count.
    pub timeout: Option<Duration>,
    pub wait: bool,
    pub allow_loopback_master: bool,
    pub skip_capacity_check: bool,
    /// Take over objects with the plan's names that deploy did not make.
    pub adopt: bool,
    /// Which credential the hollow kubelets use.
    pub node_identity: NodeIdentity,
}

impl Spec {
    /// `replicas` hollow nodes of `image` in the namespace `kubemark`, with the
    /// simplified template and every other choice at its default.
    pub fn new(external: Source, master: Source, replicas: u32, image: ImageRef) -> Self {
        Self {
            external,
            master,
            namespace: "kubemark".into(),
            replicas,
            image,
            template: Choice::Simplified,
            sets: BTreeMap::new(),
            resources: Resources::default(),
            node_labels: Vec::new(),
            register_with_taints: None,
            max_pods: None,
            extended_resources: None,
            timeout: None,
            wait: true,
            allow_loopback_master: false,
            skip_capacity_check: false,
            adopt: false,
            node_identity: NodeIdentity::Auto,
        }
    }

    /// Whether the hollow nodes register with a NoSchedule/NoExecute taint
    /// (`--register-with-taints`): no pod without a toleration lands on them.
    pub fn registers_tainted(&self) -> bool {
        self.register_with_taints.as_deref().is_some_and(|t| {
            t.split(',')
                .any(|t| t.ends_with(":NoSchedule") || t.ends_with(":NoExecute"))
        })
    }

    /// The wait's limit: the given one, or 2 minutes plus 0.1 s per node.
    pub fn timeout(&self) -> Duration {
        self.timeout.unwrap_or_else(|| {
            Duration::from_secs(120) + Duration::from_millis(100) * self.replicas
        })
    }
}

/// One object to apply.
#[derive(Clone, PartialEq)]
pub struct Manifest {
    pub kind: &'static str,
    pub name: String,
    pub value: Value,
}

/// Kind and name only: a Secret's value holds credentials.
impl std::fmt::Debug for Manifest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Manifest")
            .field("kind", &self.kind)
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// The rendered, checked objects.
#[derive(Debug, Clone)]
pub struct Plan {
    pub namespace: Manifest,
    pub configmaps: Vec<Manifest>,
    pub secrets: Vec<Manifest>,
    pub rc: Manifest,
    /// The RC's selector, as a label selector string.
    pub selector: String,
    /// The hollow-node pod, typed (for the capacity check).
    pub pod: PodSpec,
    /// One hollow-node pod's requests.
    pub pod_requests: Requests,
    pub template_name: String,
    /// Configmaps the template mounts that deploy does not create.
    pub foreign_configmaps: Vec<String>,
    /// What deploy applies on the master (per-node identity: the bootstrap
    /// token and two ClusterRoleBindings); empty for shared identity.
    pub master: Vec<Manifest>,
}

impl Plan {
    /// Every manifest, in apply order (what goes on the master just before
    /// the ReplicationController).
    pub fn manifests(&self) -> Vec<&Manifest> {
        let mut all = vec![&self.namespace];
        all.extend(&self.configmaps);
        all.extend(&self.secrets);
        all.extend(&self.master);
        all.push(&self.rc);
        all
    }

    /// The plan as multi-document YAML; secret data redacted unless `show_secrets`.
    pub fn to_yaml(&self, show_secrets: bool) -> String {
        let mut out = String::new();
        for m in self.manifests() {
            let mut value = m.value.clone();
            if m.kind == "Secret" && !show_secrets {
                for (field, encoded) in [("data", true), ("stringData", false)] {
                    let Some(Value::Object(data)) = value.get_mut(field) else {
                        continue;
                    };
                    for (_, v) in data.iter_mut() {
                        let len = v.as_str().map_or(0, |s| {
                            if encoded {
                                base64::engine::general_purpose::STANDARD
                                    .decode(s)
                                    .map_or(0, |b| b.len())
                            } else {
                                s.len()
                            }
                        });
                        *v = json!(format!("<redacted: {len} bytes; --show-secrets prints it>"));
                    }
                }
            }
            out.push_str("---\n");
            if self.master.iter().any(|o| std::ptr::eq(o, m)) {
                out.push_str("# on the kubemark master (per-node identity: render makes a new token each time; deploy reuses the one it made there)\n");
            }
            out.push_str(&serde_yaml::to_string(&value).unwrap_or_default());
        }
        out
    }
}

/// The template's `kubemark_image_registry` and `kubemark_image_tag` for
/// `registry/path/kubemark:tag[@digest]`: (`registry/path`, `tag[@digest]`).
/// A reference pinned by digest alone has the tag `latest` here, and
/// [`build`] writes the reference back as given wherever that composes.
pub fn split_image(image: &ImageRef) -> Result<(String, String)> {
    let prefix = match image.repository.rsplit_once('/') {
        Some((path, "kubemark")) => format!("{}/{path}", image.registry),
        None if image.repository == "kubemark" => image.registry.clone(),
        _ => {
            return Err(Error::Usage(format!(
                "the image `{image}` is in the repository `{}`, not `kubemark`: the templates name the image REGISTRY/kubemark:TAG",
                image.repository
            )));
        }
    };
    let tag = match (&image.digest, image.tag_given) {
        (Some(d), true) => format!("{}@{d}", image.tag),
        _ => image.tag.clone(),
    };
    Ok((prefix, tag))
}

fn quote_arg(arg: &str) -> Result<String> {
    if arg.contains(['"', '\\', '\n']) {
        return Err(Error::Usage(format!(
            "`{arg}` may not contain quotes, backslashes or newlines"
        )));
    }
    Ok(format!("\"{arg}\","))
}

/// The template's variables, from the spec; `--set` wins.
pub fn variables(spec: &Spec, master: &PodKubeconfig) -> Result<BTreeMap<String, String>> {
    let (registry, tag) = split_image(&spec.image)?;
    let n = u64::from(spec.replicas);
    let r = &spec.resources;
    let mut labels = vec![format!("{NODE_LABEL}={}", spec.namespace)];
    for (k, v) in &spec.node_labels {
        labels.push(format!("{k}={v}"));
    }
    let mut kubelet_params = String::new();
    if let Some(m) = spec.max_pods {
        kubelet_params.push_str(&quote_arg(&format!("--max-pods={m}"))?);
    }
    if let Some(t) = &spec.register_with_taints {
        kubelet_params.push_str(&quote_arg(&format!("--register-with-taints={t}"))?);
    }
    if let Some(e) = &spec.extended_resources {
        kubelet_params.push_str(&quote_arg(&format!("--extended-resources={e}"))?);
    }
    let mut vars: BTreeMap<String, String> = [
        ("numreplicas", spec.replicas.to_string()),
        ("namespace", spec.namespace.clone()),
        ("kubemark_image", spec.image.to_string()),
        ("kubemark_image_registry", registry),
        ("kubemark_image_tag", tag),
        ("init_image", "busybox:1.32".to_owned()),
        ("hollow_node_labels", labels.join(",")),
        ("hollow_kubelet_params", kubelet_params),
        ("hollow_proxy_params", String::new()),
        (
            "hollow_kubelet_millicpu",
            r.kubelet_millicpu.unwrap_or(40).to_string(),
        ),
        (
            "hollow_kubelet_mem_Ki",
            r.kubelet_mem_ki.unwrap_or(102_400).to_string(),
        ),
        (
            "hollow_proxy_millicpu",
            r.proxy_millicpu
                .unwrap_or(if n > 1000 { 50 } else { 20 })
                .to_string(),
        ),
        (
            "hollow_proxy_mem_Ki",
            r.proxy_mem_ki.unwrap_or(100 * 1024 + 50 * n).to_string(),
        ),
        ("npd_millicpu", r.npd_millicpu.unwrap_or(20).to_string()),
        ("npd_mem_Ki", r.npd_mem_ki.unwrap_or(20_480).to_string()),
        ("master_ip", master.host.clone()),
        ("kubemark_mig_config", String::new()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    for (k, v) in &spec.sets {
        vars.insert(k.clone(), v.clone());
    }
    Ok(vars)
}

/// The most a ReplicationController holds: `spec.replicas` is a 32-bit integer.
pub const MAX_REPLICAS: u32 = i32::MAX as u32;

/// Containers whose image the template composed as `REGISTRY/kubemark:TAG`
/// get the reference exactly as given (a digest-only reference has no tag).
fn keep_image_as_given(rc: &mut Value, image: &ImageRef, vars: &BTreeMap<String, String>) {
    let (Some(registry), Some(tag)) = (
        vars.get("kubemark_image_registry"),
        vars.get("kubemark_image_tag"),
    ) else {
        return;
    };
    let composed = format!("{registry}/kubemark:{tag}");
    let given = image.to_string();
    for list in ["containers", "initContainers"] {
        let Some(Value::Array(containers)) = rc.pointer_mut(&format!("/spec/template/spec/{list}"))
        else {
            continue;
        };
        for c in containers {
            if c.get("image").and_then(Value::as_str) == Some(composed.as_str()) {
                c["image"] = json!(given);
            }
        }
    }
}

/// Render the template and build every object; nothing touches a cluster.
/// The plan; `token` gives the hollow nodes per-node identity (the template
/// must support it: the `node_identity` placeholder).
pub fn build(spec: &Spec, master: &PodKubeconfig, token: Option<&BootstrapToken>) -> Result<Plan> {
    check_namespace(&spec.namespace)?;
    if spec.replicas > MAX_REPLICAS {
        return Err(Error::Usage(format!(
            "{} hollow nodes are more than a ReplicationController can hold (spec.replicas is a 32-bit integer, at most {MAX_REPLICAS})",
            spec.replicas
        )));
    }
    let template = Template::load(&spec.template)?;
    let mut vars = variables(spec, master)?;
    if token.is_some() && !template.supports_node_identity()? {
        return Err(Error::Usage(format!(
            "per-node identity: the template {} does not support it (it has no `node_identity` placeholder; the project's template does)",
            template.name
        )));
    }
    let identity = if token.is_some() {
        "per-node"
    } else {
        "shared"
    };
    vars.entry("node_identity".into())
        .or_insert_with(|| identity.to_owned());
    let rendered = template.render(&vars)?;
    let bad = |reason: String| Error::Manifest {
        name: template.name.clone(),
        kind: "ReplicationController".into(),
        reason,
    };
    let docs: Vec<Value> = serde_yaml::Deserializer::from_str(&rendered)
        .map(|doc| serde::Deserialize::deserialize(doc).map_err(|e| bad(format!("not YAML: {e}"))))
        .collect::<Result<Vec<Value>>>()?
        .into_iter()
        .filter(|d| !d.is_null())
        .collect();
    let [mut rc] = <[Value; 1]>::try_from(docs).map_err(|docs| {
        bad(format!(
            "it has {} documents, one ReplicationController is expected",
            docs.len()
        ))
    })?;
    if rc.get("kind").and_then(Value::as_str) != Some("ReplicationController") {
        return Err(bad(format!(
            "its kind is {}",
            rc.get("kind").unwrap_or(&Value::Null)
        )));
    }
    let name = rc
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    if name.is_empty() {
        return Err(bad("it has no metadata.name".into()));
    }
    rc["metadata"]["namespace"] = json!(spec.namespace);
    rc["spec"]["replicas"] = json!(spec.replicas);
    keep_image_as_given(&mut rc, &spec.image, &vars);
    let typed: ReplicationController =
        serde_json::from_value(rc.clone()).map_err(|e| bad(e.to_string()))?;
    let selector: Vec<String> = typed
        .spec
        .as_ref()
        .and_then(|s| s.selector.clone())
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    if selector.is_empty() {
        return Err(bad("it has no spec.selector".into()));
    }
    let pod = typed
        .spec
        .as_ref()
        .and_then(|s| s.template.as_ref())
        .and_then(|t| t.spec.clone())
        .unwrap_or_default();
    let pod_spec = rc
        .pointer("/spec/template/spec")
        .cloned()
        .unwrap_or_default();
    let volumes = pod_spec
        .get("volumes")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let secret_names: Vec<String> = volumes
        .iter()
        .filter_map(|v| {
            v.pointer("/secret/secretName")
                .and_then(Value::as_str)
                .map(str::to_owned)
        })
        .collect();
    let configmap_names: Vec<String> = volumes
        .iter()
        .filter_map(|v| {
            v.pointer("/configMap/name")
                .and_then(Value::as_str)
                .map(str::to_owned)
        })
        .collect();
    let encode = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let mut data: serde_json::Map<String, Value> = SECRET_KEYS
        .iter()
        .map(|k| (k.to_string(), json!(encode(&master.yaml))))
        .collect();
    if let Some(token) = token {
        data.insert(
            crate::identity::BOOTSTRAP_KEY.into(),
            json!(encode(&crate::identity::bootstrap_kubeconfig(
                master, token
            )?)),
        );
    }
    let secrets = secret_names
        .iter()
        .map(|name| Manifest {
            kind: "Secret",
            name: name.clone(),
            value: json!({
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": name, "namespace": spec.namespace},
                "type": "Opaque",
                "data": data,
            }),
        })
        .collect();
    let (known, foreign): (Vec<String>, Vec<String>) = configmap_names
        .into_iter()
        .partition(|n| n == "node-configmap");
    let configmaps = known
        .iter()
        .map(|name| Manifest {
            kind: "ConfigMap",
            name: name.clone(),
            value: json!({
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": name, "namespace": spec.namespace},
                "data": {"kernel.monitor": KERNEL_MONITOR},
            }),
        })
        .collect();
    let namespace = Manifest {
        kind: "Namespace",
        name: spec.namespace.clone(),
        value: json!({
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {
                "name": spec.namespace,
                "labels": {MANAGED_BY.0: MANAGED_BY.1},
                "annotations": {CREATED_BY.0: CREATED_BY.1},
            },
        }),
    };
    Ok(Plan {
        namespace,
        configmaps,
        secrets,
        rc: Manifest {
            kind: "ReplicationController",
            name,
            value: rc,
        },
        selector: selector.join(","),
        pod_requests: pod_requests(&pod),
        pod,
        template_name: template.name,
        foreign_configmaps: foreign,
        master: token
            .map(|t| crate::identity::master_manifests(&spec.namespace, t))
            .unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_split_into_registry_and_tag() {
        let split = |text: &str| split_image(&ImageRef::parse(text).unwrap());
        assert_eq!(
            split("127.0.0.1:5000/kubemark:v1").unwrap(),
            ("127.0.0.1:5000".into(), "v1".into())
        );
        let d = format!("sha256:{}", "a".repeat(64));
        assert_eq!(
            split(&format!("gcr.io/p/kubemark:v1@{d}")).unwrap(),
            ("gcr.io/p".into(), format!("v1@{d}"))
        );
        assert_eq!(split(&format!("r.io/kubemark@{d}")).unwrap().1, "latest");
        assert_eq!(split("r.io/kubemark").unwrap().1, "latest");
        assert_eq!(split("me/kubemark:v1").unwrap().0, "docker.io/me");
        assert!(split("r.io/other:v1").is_err());
        assert!(split("r.io/kubemark-x:v1").is_err());
    }
}
