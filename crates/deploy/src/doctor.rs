//! `deploy doctor`: what makes hollow nodes fail or tests lie, found and
//! explained with the fix, before deploy (preflight runs it on the plan's pod)
//! and after (on the deployed ReplicationController's pod). Reads only, except
//! `--repair`, which deletes hollow-node pods stuck on a NotReady Node (their
//! ReplicationController replaces them) and those Nodes, and nothing else.
//!
//! Checks:
//! - `daemonsets`: DaemonSets on the master that would place a pod on every
//!   hollow node, where it stays Pending or Init (kubernetes#94454);
//! - `image-service`: the external nodes' container runtime against what the
//!   template mounts, so `--use-host-image-service` can work (kubernetes#115203);
//! - `pod-security`: the namespace's PodSecurity level against the template;
//! - `master-nodes`: Nodes with hollow-node names that are not this deploy's,
//!   and master nodes already NotReady;
//! - `stuck`: hollow-node pods Running whose Node has been NotReady longer
//!   than a grace period (kubernetes#60035).

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{
    Namespace, Node, NodeSelectorRequirement, Pod, PodSpec, Taint, Toleration,
};
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams, Preconditions};

use crate::diagnose::node_ready;
use crate::error::{Error, Result, Side};
use crate::kubeconfig::Cluster;
use crate::plan::NODE_LABEL;

/// How long a hollow node's Node may be NotReady while its pod runs before
/// the doctor calls it stuck: the node lifecycle controller's grace period
/// (40 s) and the time a restarting hollow kubelet needs, with room to spare.
pub const GRACE: Duration = Duration::from_secs(300);

/// How bad a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Hollow nodes fail, or a test measures something else than it says.
    Problem,
    /// Worth a look; may be intended.
    Warning,
}

/// One thing found, with what to do about it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Finding {
    pub check: &'static str,
    pub severity: Severity,
    pub what: String,
    pub fix: String,
}

/// What the doctor found, which checks found nothing, and what it repaired.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Report {
    pub namespace: String,
    pub findings: Vec<Finding>,
    /// Checks that found nothing.
    pub passed: Vec<&'static str>,
    /// Checks that could not run, and why (a permission, a resource not served).
    pub skipped: Vec<String>,
    /// What `--repair` deleted: `Pod NAME`, `Node NAME`.
    pub repaired: Vec<String>,
}

impl Report {
    pub fn problems(&self) -> usize {
        self.findings
            .iter()
            .filter(|f| f.severity == Severity::Problem)
            .count()
    }
}

/// What the doctor looks at.
#[derive(Debug, Clone)]
pub struct Patient<'a> {
    pub external: &'a Cluster,
    pub master: &'a Cluster,
    pub namespace: &'a str,
    /// The hollow-node pod: the plan's before deploy; `None` to read the
    /// deployed ReplicationController's.
    pub pod: Option<&'a PodSpec>,
    /// Pods of ours whose Node has been NotReady longer than this are stuck.
    pub grace: Duration,
    /// Delete stuck pods and their Nodes.
    pub repair: bool,
}

/// Run every check.
pub async fn examine(p: &Patient<'_>) -> Result<Report> {
    let mut report = Report {
        namespace: p.namespace.to_owned(),
        ..Report::default()
    };
    let deployed = crate::status::hollow_rcs(p.external, p.namespace).await?;
    let pod: Option<PodSpec> = match p.pod {
        Some(pod) => Some(pod.clone()),
        None => deployed
            .iter()
            .find_map(|rc| rc.spec.as_ref()?.template.as_ref()?.spec.clone()),
    };
    let master_nodes = list_all::<Node>(p.master, Side::Master, "nodes").await?;
    let master_nodes = master_nodes.unwrap_or_default();
    let ours: Vec<&Node> = master_nodes
        .iter()
        .filter(|n| n.labels().get(NODE_LABEL).map(String::as_str) == Some(p.namespace))
        .collect();

    match &pod {
        Some(pod) => {
            let hollow = HollowNode::of(pod, ours.first().copied(), p.namespace);
            let found = daemonsets(p.master, &hollow).await?;
            report.record("daemonsets", found);
            let found = image_service(p.external, pod).await?;
            report.record("image-service", found);
            let found = pod_security(p.external, p.namespace, pod).await?;
            report.record("pod-security", found);
        }
        None => report.skipped.push(format!(
            "daemonsets, image-service, pod-security: no hollow-node ReplicationController in namespace {} to read the pod from (deploy runs them on its plan)",
            p.namespace
        )),
    }
    let rc_names: Vec<String> = deployed.iter().map(ResourceExt::name_any).collect();
    report.record(
        "master-nodes",
        Ok(master_node_findings(&master_nodes, p.namespace, &rc_names)),
    );
    // Only deploy's ReplicationControllers: `--repair` deletes their pods, and
    // never those of a hollow-node RC somebody else made in the namespace.
    let selectors: Vec<String> = deployed
        .iter()
        .filter(|rc| crate::apply::managed_by_us(*rc))
        .map(crate::status::selector_of)
        .collect();
    let found = stuck(p, &ours, &selectors, &mut report.repaired).await?;
    report.record("stuck", found);
    Ok(report)
}

impl Report {
    fn record(&mut self, check: &'static str, found: std::result::Result<Vec<Finding>, String>) {
        match found {
            Ok(f) if f.is_empty() => self.passed.push(check),
            Ok(f) => self.findings.extend(f),
            Err(why) => self.skipped.push(format!("{check}: {why}")),
        }
    }
}

/// A list the credentials may not read, or the server may not serve:
/// `Ok(None)`, so that the check is skipped with the reason.
async fn list_all<K>(c: &Cluster, side: Side, what: &str) -> Result<Option<Vec<K>>>
where
    K: kube::Resource<Scope = k8s_openapi::ClusterResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
    K::DynamicType: Default,
{
    let api: Api<K> = Api::all(c.client.clone());
    let all = ListParams::default();
    match crate::retry::call(|| api.list(&all)).await {
        Ok(list) => Ok(Some(list.items)),
        Err(kube::Error::Api(s)) if matches!(s.code, 403 | 404) => Ok(None),
        Err(e) => Err(Error::api(side, format!("listing {what}"))(e)),
    }
}

/// The labels and taints a hollow node of this pod has (or, when one has
/// registered, has in fact).
#[derive(Debug, Clone, Default)]
struct HollowNode {
    labels: BTreeMap<String, String>,
    taints: Vec<Taint>,
}

impl HollowNode {
    fn of(pod: &PodSpec, registered: Option<&Node>, namespace: &str) -> Self {
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

async fn daemonsets(
    master: &Cluster,
    hollow: &HollowNode,
) -> Result<std::result::Result<Vec<Finding>, String>> {
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
                "register the hollow nodes with a taint it does not tolerate (--register-with-taints kubemark.dev/hollow=true:NoSchedule), or keep it off them: add to its pod template's nodeAffinity a requiredDuringSchedulingIgnoredDuringExecution term with {{key: {NODE_LABEL}, operator: DoesNotExist}}"
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

async fn image_service(
    external: &Cluster,
    pod: &PodSpec,
) -> Result<std::result::Result<Vec<Finding>, String>> {
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

async fn pod_security(
    external: &Cluster,
    namespace: &str,
    pod: &PodSpec,
) -> Result<std::result::Result<Vec<Finding>, String>> {
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

fn master_node_findings(nodes: &[Node], namespace: &str, rc_names: &[String]) -> Vec<Finding> {
    let mut found = Vec::new();
    let prefixes: Vec<String> = if rc_names.is_empty() {
        vec!["hollow-node-".to_owned()]
    } else {
        rc_names.iter().map(|n| format!("{n}-")).collect()
    };
    let label_of = |n: &Node| n.labels().get(NODE_LABEL).cloned();
    let mut foreign: Vec<String> = nodes
        .iter()
        .filter(|n| {
            prefixes
                .iter()
                .any(|p| n.name_any().starts_with(p.as_str()))
        })
        .filter(|n| label_of(n).as_deref() != Some(namespace))
        .map(|n| match label_of(n) {
            Some(other) => format!("{} (deploy's, namespace {other})", n.name_any()),
            None => format!("{} (not deploy's)", n.name_any()),
        })
        .collect();
    foreign.sort();
    if !foreign.is_empty() {
        found.push(Finding {
            check: "master-nodes",
            severity: Severity::Warning,
            what: format!(
                "{} Node(s) on the master have hollow-node names but are not this deploy's: {}{}",
                foreign.len(),
                foreign.iter().take(5).cloned().collect::<Vec<_>>().join(", "),
                if foreign.len() > 5 { ", ..." } else { "" }
            ),
            fix: "a hollow node of this deploy with one of these names would take over or fight that Node: if they are left from an old run, delete them (`kubectl delete node NAME`); deploy and destroy never touch them".into(),
        });
    }
    let mut not_ready: Vec<String> = nodes
        .iter()
        .filter(|n| !node_ready(n))
        .filter(|n| label_of(n).as_deref() != Some(namespace))
        .map(ResourceExt::name_any)
        .collect();
    not_ready.sort();
    if !not_ready.is_empty() {
        found.push(Finding {
            check: "master-nodes",
            severity: Severity::Warning,
            what: format!(
                "{} Node(s) on the master that are not this deploy's hollow nodes are NotReady: {}{}",
                not_ready.len(),
                not_ready.iter().take(5).cloned().collect::<Vec<_>>().join(", "),
                if not_ready.len() > 5 { ", ..." } else { "" }
            ),
            fix: "tests that count nodes or wait for all to be Ready will wait on them: delete the ones that are gone, or bring them back".into(),
        });
    }
    found
}

/// When the Node's Ready condition last changed, if it is not True.
fn not_ready_since(node: &Node) -> Option<Option<jiff::Timestamp>> {
    let ready = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "Ready"));
    match ready {
        Some(c) if c.status == "True" => None,
        Some(c) => Some(c.last_transition_time.as_ref().map(|t| t.0)),
        None => Some(None),
    }
}

async fn stuck(
    p: &Patient<'_>,
    ours: &[&Node],
    selectors: &[String],
    repaired: &mut Vec<String>,
) -> Result<std::result::Result<Vec<Finding>, String>> {
    let pods_api: Api<Pod> = Api::namespaced(p.external.client.clone(), p.namespace);
    let mut pods: Vec<Pod> = Vec::new();
    for selector in selectors {
        let params = ListParams::default().labels(selector);
        let list = crate::retry::call(|| pods_api.list(&params))
            .await
            .map_err(Error::api(Side::External, "listing hollow-node pods"))?;
        pods.extend(list.items);
    }
    let now = jiff::Timestamp::now();
    let grace = jiff::SignedDuration::try_from(p.grace).unwrap_or(jiff::SignedDuration::MAX);
    let mut found = Vec::new();
    let nodes_api: Api<Node> = Api::all(p.master.client.clone());
    for pod in pods.iter().filter(|pod| {
        pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
            && pod.metadata.deletion_timestamp.is_none()
    }) {
        let name = pod.name_any();
        let Some(node) = ours.iter().find(|n| n.name_any() == name) else {
            continue;
        };
        let Some(since) = not_ready_since(node) else {
            continue;
        };
        let age = since.map(|t| now.duration_since(t));
        if age.is_some_and(|a| a < grace) {
            continue;
        }
        let for_how_long = age.map_or_else(
            || "with no Ready condition".to_owned(),
            |a| format!("NotReady for {}s", a.as_secs()),
        );
        if p.repair {
            let uid = |uid: Option<String>| DeleteParams {
                preconditions: Some(Preconditions {
                    uid,
                    resource_version: None,
                }),
                ..DeleteParams::default()
            };
            let pod_params = uid(pod.uid());
            match crate::retry::call(|| pods_api.delete(&name, &pod_params)).await {
                Ok(_) => repaired.push(format!("Pod {name}")),
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => {
                    return Err(Error::api(
                        Side::External,
                        format!("deleting the stuck pod {name}"),
                    )(e));
                }
            }
            let node_params = uid(node.uid());
            match crate::retry::call(|| nodes_api.delete(&name, &node_params)).await {
                Ok(_) => repaired.push(format!("Node {name}")),
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => {
                    return Err(Error::api(
                        Side::Master,
                        format!("deleting the stuck node {name}"),
                    )(e));
                }
            }
            continue;
        }
        found.push(Finding {
            check: "stuck",
            severity: Severity::Problem,
            what: format!(
                "pod {name} is Running but its Node has been {for_how_long} (kubernetes#60035): the hollow kubelet is wedged, and the node counts as capacity that is not there"
            ),
            fix: "`cargo xtask deploy doctor --repair` deletes such pods (their ReplicationController replaces them) and their Nodes".into(),
        });
    }
    Ok(Ok(found))
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
