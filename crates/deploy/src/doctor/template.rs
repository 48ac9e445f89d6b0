//! The doctor's checks of the hollow-node pod against the clusters:
//! DaemonSets that would land on hollow nodes, the image service against the
//! external nodes' runtime, the namespace's PodSecurity level.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{
    Namespace, Node, NodeSelectorRequirement, PodSpec, Taint, Toleration,
};
use kube::ResourceExt;
use kube::api::{Api, ListParams};

use super::{Finding, Found, Severity, list_all};
use crate::error::{Error, Result, Side};
use crate::kubeconfig::Cluster;
use crate::plan::NODE_LABEL;

/// The labels and taints a hollow node of this pod has (or, when one has
/// registered, has in fact).
#[derive(Debug, Clone, Default)]
pub(super) struct HollowNode {
    labels: BTreeMap<String, String>,
    taints: Vec<Taint>,
}

impl HollowNode {
    pub(super) fn of(pod: &PodSpec, registered: Option<&Node>, namespace: &str) -> Self {
        if let Some(node) = registered {
            return Self {
                labels: node.labels().clone(),
                taints: node
                    .spec
                    .as_ref()
                    .and_then(|s| s.taints.clone())
                    .unwrap_or_default(),
            };
        }
        let args = kubelet_args(pod);
        let flag = |name: &str| {
            args.iter()
                .find_map(|a| a.strip_prefix(&format!("--{name}=")).map(str::to_owned))
        };
        let mut labels: BTreeMap<String, String> = [
            ("kubernetes.io/os", "linux"),
            ("kubernetes.io/arch", "amd64"),
            ("kubernetes.io/hostname", "hollow-node"),
            (NODE_LABEL, namespace),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        for pair in flag("node-labels").unwrap_or_default().split(',') {
            if let Some((k, v)) = pair.split_once('=') {
                labels.insert(k.to_owned(), v.to_owned());
            }
        }
        let taints = flag("register-with-taints")
            .unwrap_or_default()
            .split(',')
            .filter_map(|t| {
                let (kv, effect) = t.rsplit_once(':')?;
                let (key, value) = kv.split_once('=').unwrap_or((kv, ""));
                Some(Taint {
                    key: key.to_owned(),
                    value: (!value.is_empty()).then(|| value.to_owned()),
                    effect: effect.to_owned(),
                    ..Taint::default()
                })
            })
            .collect();
        Self { labels, taints }
    }
}

/// The hollow kubelet's arguments (`--morph=kubelet`'s container).
fn kubelet_args(pod: &PodSpec) -> Vec<String> {
    pod.containers
        .iter()
        .map(|c| {
            c.command
                .iter()
                .flatten()
                .chain(c.args.iter().flatten())
                .cloned()
                .collect::<Vec<_>>()
        })
        .find(|args| args.iter().any(|a| a == "--morph=kubelet"))
        .unwrap_or_default()
}

fn requirement_holds(r: &NodeSelectorRequirement, labels: &BTreeMap<String, String>) -> bool {
    let value = labels.get(&r.key);
    let values = r.values.clone().unwrap_or_default();
    match r.operator.as_str() {
        "In" => value.is_some_and(|v| values.contains(v)),
        "NotIn" => value.is_none_or(|v| !values.contains(v)),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        "Gt" | "Lt" => {
            let (Some(v), Some(bound)) = (
                value.and_then(|v| v.parse::<i64>().ok()),
                values.first().and_then(|b| b.parse::<i64>().ok()),
            ) else {
                return false;
            };
            if r.operator == "Gt" {
                v > bound
            } else {
                v < bound
            }
        }
        _ => false,
    }
}

/// Whether the scheduler would place this DaemonSet's pod on `node`.
fn lands_on(ds: &DaemonSet, node: &HollowNode) -> bool {
    let Some(pod) = ds.spec.as_ref().and_then(|s| s.template.spec.as_ref()) else {
        return false;
    };
    let selector_ok = pod
        .node_selector
        .iter()
        .flatten()
        .all(|(k, v)| node.labels.get(k) == Some(v));
    let affinity_ok = pod
        .affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|a| {
            a.required_during_scheduling_ignored_during_execution
                .as_ref()
        })
        .is_none_or(|required| {
            required.node_selector_terms.iter().any(|term| {
                term.match_expressions
                    .iter()
                    .flatten()
                    .all(|r| requirement_holds(r, &node.labels))
            })
        });
    let tolerations: Vec<Toleration> = pod.tolerations.clone().unwrap_or_default();
    let tolerated = node
        .taints
        .iter()
        .filter(|t| matches!(t.effect.as_str(), "NoSchedule" | "NoExecute"))
        .all(|t| crate::capacity::tolerated(t, &tolerations));
    selector_ok && affinity_ok && tolerated
}

pub(super) async fn daemonsets(master: &Cluster, hollow: &HollowNode) -> Result<Found> {
    let api: Api<DaemonSet> = Api::all(master.client.clone());
    let all = ListParams::default();
    let list = match crate::retry::call(|| api.list(&all)).await {
        Ok(list) => list.items,
        Err(kube::Error::Api(s)) if matches!(s.code, 403 | 404) => {
            return Ok(Err(format!(
                "the master's DaemonSets cannot be listed ({})",
                s.message
            )));
        }
        Err(e) => return Err(Error::api(Side::Master, "listing DaemonSets")(e)),
    };
    Ok(Ok(list
        .iter()
        .filter(|ds| lands_on(ds, hollow))
        .map(|ds| Finding {
            check: "daemonsets",
            severity: Severity::Warning,
            what: format!(
                "DaemonSet {}/{} on the master places a pod on every hollow node, where it stays Pending or Init (kubernetes#94454) and counts against every test",
                ds.namespace().unwrap_or_default(),
                ds.name_any()
            ),
            fix: format!(
                "keep it off them: add to its pod template's nodeAffinity a requiredDuringSchedulingIgnoredDuringExecution term with {{key: {NODE_LABEL}, operator: DoesNotExist}}; or register the hollow nodes with a taint it does not tolerate (--register-with-taints kubemark.dev/hollow=true:NoSchedule), though clusterloader2 then counts none of them as schedulable"
            ),
        })
        .collect()))
}

/// Sockets of container runtimes' image services, by runtime.
const SOCKETS: [(&str, &str); 3] = [
    ("containerd", "containerd.sock"),
    ("cri-o", "crio.sock"),
    ("docker", "cri-dockerd.sock"),
];

pub(super) async fn image_service(external: &Cluster, pod: &PodSpec) -> Result<Found> {
    let args = kubelet_args(pod);
    let host_image_service = !args.iter().any(|a| a == "--use-host-image-service=false");
    if !host_image_service {
        return Ok(Ok(Vec::new()));
    }
    let mounted: Vec<&str> = pod
        .volumes
        .iter()
        .flatten()
        .filter_map(|v| Some(v.host_path.as_ref()?.path.as_str()))
        .collect();
    let socket_of = |runtime: &str| {
        SOCKETS
            .iter()
            .find(|(r, _)| runtime.starts_with(r))
            .map(|(_, s)| *s)
    };
    let fix = "pass --use-host-image-service=false to the hollow kubelet (the project's template does; with the upstream template: --set hollow_kubelet_params='\"--use-host-image-service=false\",'), or mount the nodes' runtime socket into the pod".to_owned();
    let Some(nodes) = list_all::<Node>(external, Side::External, "nodes").await? else {
        return Ok(Err("the external cluster's nodes cannot be listed".into()));
    };
    let mut by_runtime: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for n in &nodes {
        let runtime = n
            .status
            .as_ref()
            .and_then(|s| s.node_info.as_ref())
            .map(|i| i.container_runtime_version.clone())
            .unwrap_or_default();
        let name = runtime.split("://").next().unwrap_or_default().to_owned();
        by_runtime.entry(name).or_default().push(n.name_any());
    }
    let mut found = Vec::new();
    for (runtime, nodes) in &by_runtime {
        let socket = socket_of(runtime);
        let has = socket.is_some_and(|s| {
            mounted.iter().any(|m| {
                m.ends_with(s) || s.starts_with("containerd") && m.ends_with("/run/containerd")
            })
        });
        if !has {
            found.push(Finding {
                check: "image-service",
                severity: Severity::Problem,
                what: format!(
                    "the hollow kubelet asks the host's image service (--use-host-image-service is on), but the template mounts no {} socket for the {} external node(s) running {} ({}): every pod on a hollow node fails with ImageInspectError (kubernetes#115203)",
                    socket.unwrap_or("runtime"),
                    nodes.len(),
                    if runtime.is_empty() { "an unknown runtime" } else { runtime },
                    nodes.iter().take(3).cloned().collect::<Vec<_>>().join(", ")
                ),
                fix: fix.clone(),
            });
        }
    }
    Ok(Ok(found))
}

/// What a pod does that the `baseline` level forbids.
fn beyond_baseline(pod: &PodSpec) -> Vec<String> {
    let mut out = Vec::new();
    for c in pod.init_containers.iter().flatten().chain(&pod.containers) {
        if c.security_context.as_ref().and_then(|s| s.privileged) == Some(true) {
            out.push(format!("container {} is privileged", c.name));
        }
    }
    for v in pod.volumes.iter().flatten() {
        if v.host_path.is_some() {
            out.push(format!("volume {} is a hostPath", v.name));
        }
    }
    if pod.host_network == Some(true) {
        out.push("it uses the host's network".into());
    }
    out
}

pub(super) async fn pod_security(
    external: &Cluster,
    namespace: &str,
    pod: &PodSpec,
) -> Result<Found> {
    let api: Api<Namespace> = Api::all(external.client.clone());
    let ns = match crate::retry::call(|| api.get_opt(namespace)).await {
        Ok(Some(ns)) => ns,
        Ok(None) => return Ok(Ok(Vec::new())),
        Err(kube::Error::Api(s)) if s.code == 403 => {
            return Ok(Err(format!("namespace {namespace} cannot be read")));
        }
        Err(e) => {
            return Err(Error::api(
                Side::External,
                format!("reading namespace {namespace}"),
            )(e));
        }
    };
    let level = ns
        .labels()
        .get("pod-security.kubernetes.io/enforce")
        .cloned()
        .unwrap_or_default();
    if !matches!(level.as_str(), "baseline" | "restricted") {
        return Ok(Ok(Vec::new()));
    }
    let beyond = beyond_baseline(pod);
    if beyond.is_empty() {
        return Ok(Ok(Vec::new()));
    }
    Ok(Ok(vec![Finding {
        check: "pod-security",
        severity: Severity::Problem,
        what: format!(
            "namespace {namespace} enforces the PodSecurity level `{level}`, which rejects the hollow-node pod: {}",
            beyond.join("; ")
        ),
        fix: format!(
            "label the namespace for privileged pods (`kubectl label namespace {namespace} pod-security.kubernetes.io/enforce=privileged --overwrite`), or deploy into another --namespace"
        ),
    }]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ds(spec: serde_json::Value) -> DaemonSet {
        serde_json::from_value(json!({
            "metadata": {"name": "d", "namespace": "kube-system"},
            "spec": {"selector": {}, "template": {"spec": spec}}
        }))
        .unwrap()
    }

    fn hollow(taints: &[(&str, &str)]) -> HollowNode {
        HollowNode {
            labels: [("kubernetes.io/os", "linux"), (NODE_LABEL, "kubemark")]
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
            taints: taints
                .iter()
                .map(|(k, e)| Taint {
                    key: (*k).to_owned(),
                    effect: (*e).to_owned(),
                    ..Taint::default()
                })
                .collect(),
        }
    }

    #[test]
    fn which_daemonsets_land_on_hollow_nodes() {
        let containers = json!([{"name": "c"}]);
        let table = [
            (json!({"containers": containers}), &[][..], true),
            (
                json!({"containers": containers, "nodeSelector": {"kubernetes.io/os": "linux"}}),
                &[][..],
                true,
            ),
            (
                json!({"containers": containers, "nodeSelector": {"kubernetes.io/os": "windows"}}),
                &[][..],
                false,
            ),
            (
                json!({"containers": containers}),
                &[("kubemark.dev/hollow", "NoSchedule")][..],
                false,
            ),
            (
                json!({"containers": containers, "tolerations": [{"operator": "Exists"}]}),
                &[("kubemark.dev/hollow", "NoSchedule")][..],
                true,
            ),
            (
                json!({"containers": containers, "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [{"matchExpressions": [{"key": NODE_LABEL, "operator": "DoesNotExist"}]}]}}}}),
                &[][..],
                false,
            ),
            (
                json!({"containers": containers, "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [{"matchExpressions": [{"key": "kubernetes.io/os", "operator": "In", "values": ["linux"]}]}]}}}}),
                &[][..],
                true,
            ),
        ];
        for (i, (spec, taints, expect)) in table.into_iter().enumerate() {
            assert_eq!(lands_on(&ds(spec), &hollow(taints)), expect, "row {i}");
        }
    }

    #[test]
    fn the_hollow_node_is_read_from_the_kubelet_flags() {
        let pod: PodSpec = serde_json::from_value(json!({"containers": [{
            "name": "hollow-kubelet",
            "command": ["/kubemark"],
            "args": ["--morph=kubelet", "--node-labels=kubemark.dev/hollow-node=ns,tier=hollow", "--register-with-taints=kubemark=true:NoSchedule"]
        }]}))
        .unwrap();
        let h = HollowNode::of(&pod, None, "ns");
        assert_eq!(h.labels.get("tier").map(String::as_str), Some("hollow"));
        assert_eq!(h.labels.get(NODE_LABEL).map(String::as_str), Some("ns"));
        assert_eq!(h.taints.len(), 1);
        assert_eq!(
            (
                h.taints[0].key.as_str(),
                h.taints[0].value.as_deref(),
                h.taints[0].effect.as_str()
            ),
            ("kubemark", Some("true"), "NoSchedule")
        );
        assert_eq!(
            beyond_baseline(
                &serde_json::from_value(json!({
                    "containers": [{"name": "a", "securityContext": {"privileged": true}}],
                    "volumes": [{"name": "logs", "hostPath": {"path": "/var/log"}}]
                }))
                .unwrap()
            ),
            vec!["container a is privileged", "volume logs is a hostPath"]
        );
    }
}
