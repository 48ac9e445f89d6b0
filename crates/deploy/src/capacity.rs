//! Whether the external cluster has room for the hollow-node pods: the
//! schedulable nodes' allocatable less what their pods request, and the
//! namespace's ResourceQuotas. Read-only; part of the preflight.

use std::collections::{BTreeMap, HashMap};

use k8s_openapi::api::core::v1::{Node, Pod, PodSpec, ResourceQuota, Taint, Toleration};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity as K8sQuantity;
use kube::ResourceExt;
use kube::api::{Api, ListParams};
use kubemark_contract::Quantity;

use crate::error::{Error, Result, Side};
use crate::kubeconfig::{Cluster, PodKubeconfig};
use crate::plan::{MAX_REPLICAS, Plan, Spec};

/// One pod's requests as the scheduler counts them: containers summed, each
/// init container by the max rule.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Requests {
    pub millicpu: u64,
    pub bytes: u64,
}

/// A quantity the server or the template wrote; one that cannot be read counts as none.
fn amount(q: Option<&K8sQuantity>) -> Quantity {
    q.and_then(|q| Quantity::parse(&q.0).ok())
        .filter(|q| !q.is_negative())
        .unwrap_or_default()
}

fn clamp(n: i128) -> u64 {
    u64::try_from(n.max(0)).unwrap_or(u64::MAX)
}

/// What a pod requests.
pub fn pod_requests(pod: &PodSpec) -> Requests {
    let of = |c: &k8s_openapi::api::core::v1::Container| {
        let requests = c.resources.as_ref().and_then(|r| r.requests.as_ref());
        let get = |k: &str| amount(requests.and_then(|r| r.get(k)));
        (clamp(get("cpu").milli()), clamp(get("memory").value()))
    };
    let (mut cpu, mut mem) = (0u64, 0u64);
    for c in &pod.containers {
        let (c, m) = of(c);
        cpu = cpu.saturating_add(c);
        mem = mem.saturating_add(m);
    }
    for c in pod.init_containers.iter().flatten() {
        let (c, m) = of(c);
        cpu = cpu.max(c);
        mem = mem.max(m);
    }
    Requests {
        millicpu: cpu,
        bytes: mem,
    }
}

/// Whether `tolerations` let a pod onto a node with `taint` (the scheduler's rule).
pub(crate) fn tolerated(taint: &Taint, tolerations: &[Toleration]) -> bool {
    tolerations.iter().any(|t| {
        let exists = t.operator.as_deref() == Some("Exists");
        let key = t.key.as_deref().unwrap_or_default();
        let key_ok = (key.is_empty() && exists) || key == taint.key;
        let value_ok = exists
            || t.value.as_deref().unwrap_or_default() == taint.value.as_deref().unwrap_or_default();
        let effect = t.effect.as_deref().unwrap_or_default();
        let effect_ok = effect.is_empty() || effect == taint.effect;
        key_ok && value_ok && effect_ok
    })
}

/// What the scheduler sees free on a node.
#[derive(Debug, Default, Clone, Copy)]
struct Used {
    millicpu: u64,
    bytes: u64,
    pods: u64,
}

/// Whether the scheduler places a pod with `tolerations` on `node`: Ready,
/// not cordoned, no NoSchedule/NoExecute taint it does not tolerate.
pub(crate) fn schedulable(node: &Node, tolerations: &[Toleration]) -> bool {
    let ready = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
    let spec = node.spec.as_ref();
    let unschedulable = spec.and_then(|s| s.unschedulable) == Some(true);
    let tainted = spec
        .and_then(|s| s.taints.as_ref())
        .into_iter()
        .flatten()
        .any(|t| {
            matches!(t.effect.as_str(), "NoSchedule" | "NoExecute") && !tolerated(t, tolerations)
        });
    ready && !unschedulable && !tainted
}

/// How many more hollow-node pods the external cluster's schedulable nodes
/// take; what it found, for the message; and how many of ours are bound already.
pub async fn capacity(
    external: &Cluster,
    spec: &Spec,
    plan: &Plan,
) -> Result<(u64, Vec<String>, u64)> {
    let (nodes, pods) = list(external).await?;
    Ok(room(&nodes, &pods, spec, plan))
}

/// The external cluster's nodes and the pods that hold room on them.
async fn list(external: &Cluster) -> Result<(Vec<Node>, Vec<Pod>)> {
    let nodes: Api<Node> = Api::all(external.client.clone());
    let pods: Api<Pod> = Api::all(external.client.clone());
    let all = ListParams::default();
    let node_list = crate::retry::call(|| nodes.list(&all))
        .await
        .map_err(Error::api(Side::External, "listing nodes"))?;
    let running = ListParams::default().fields("status.phase!=Succeeded,status.phase!=Failed");
    let pod_list = crate::retry::call(|| pods.list(&running))
        .await
        .map_err(Error::api(Side::External, "listing pods"))?;
    Ok((node_list.items, pod_list.items))
}

/// `--replicas max`: the most hollow nodes the external cluster holds (those
/// of ours already placed included), and the numbers behind it. A pod's
/// requests grow with the node count (the proxy's memory, its CPU above
/// 1,000 nodes), so the count is the largest N whose N pods fit, found by
/// bisection over one reading of the cluster.
pub async fn most(
    external: &Cluster,
    spec: &Spec,
    master: &PodKubeconfig,
) -> Result<(u32, Vec<String>)> {
    let (nodes, pods) = list(external).await?;
    let at = |n: u32| -> Result<(u64, Vec<String>, u64)> {
        let spec = Spec {
            replicas: n,
            ..spec.clone()
        };
        let plan = crate::plan::build(&spec, master, None)?;
        Ok(room(&nodes, &pods, &spec, &plan))
    };
    // Requests are smallest for one node: no more than this many fit.
    let (fits, _, ours) = at(1)?;
    let mut hi = u32::try_from(ours.saturating_add(fits))
        .unwrap_or(MAX_REPLICAS)
        .min(MAX_REPLICAS);
    let mut lo = 0u32;
    // ours + fits(n) - n decreases with n: the last n where it is >= 0.
    while lo < hi {
        let mid = lo + (hi - lo).div_ceil(2);
        let (fits, _, ours) = at(mid)?;
        if ours.saturating_add(fits) >= u64::from(mid) {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    let (_, details, _) = at(lo.max(1))?;
    Ok((lo, details))
}

/// [`capacity`] on lists already read.
fn room(nodes: &[Node], pods: &[Pod], spec: &Spec, plan: &Plan) -> (u64, Vec<String>, u64) {
    let tolerations = plan.pod.tolerations.clone().unwrap_or_default();
    let want = plan.pod_requests;
    let selector: BTreeMap<&str, &str> = plan
        .selector
        .split(',')
        .map(|kv| kv.split_once('=').unwrap_or((kv, "")))
        .collect();
    let mut used: HashMap<&str, Used> = HashMap::new();
    let mut ours_bound = 0u64;
    for p in pods {
        let Some(pod) = &p.spec else { continue };
        let Some(node) = pod.node_name.as_deref().filter(|n| !n.is_empty()) else {
            continue;
        };
        let labels = p.labels();
        let ours = p.metadata.namespace.as_deref() == Some(spec.namespace.as_str())
            && selector
                .iter()
                .all(|(k, v)| labels.get(*k).map(String::as_str) == Some(*v));
        if ours {
            ours_bound += 1;
        }
        let r = pod_requests(pod);
        let u = used.entry(node).or_default();
        u.millicpu = u.millicpu.saturating_add(r.millicpu);
        u.bytes = u.bytes.saturating_add(r.bytes);
        u.pods += 1;
    }
    let (mut fits, mut schedulable_nodes) = (0u64, 0usize);
    let mut free = Used::default();
    for n in nodes.iter().filter(|n| schedulable(n, &tolerations)) {
        schedulable_nodes += 1;
        let allocatable = n.status.as_ref().and_then(|s| s.allocatable.as_ref());
        let alloc = |k: &str| amount(allocatable.and_then(|a| a.get(k)));
        let u = used.get(n.name_any().as_str()).copied().unwrap_or_default();
        let node_free = Used {
            millicpu: clamp(alloc("cpu").milli()).saturating_sub(u.millicpu),
            bytes: clamp(alloc("memory").value()).saturating_sub(u.bytes),
            pods: clamp(alloc("pods").value()).saturating_sub(u.pods),
        };
        free.millicpu = free.millicpu.saturating_add(node_free.millicpu);
        free.bytes = free.bytes.saturating_add(node_free.bytes);
        free.pods = free.pods.saturating_add(node_free.pods);
        let by = |have: u64, each: u64| have.checked_div(each).unwrap_or(u64::MAX);
        fits += by(node_free.millicpu, want.millicpu)
            .min(by(node_free.bytes, want.bytes))
            .min(node_free.pods);
    }
    let details = vec![
        format!(
            "each hollow-node pod requests {}m CPU and {:.0}Mi memory; {} are wanted, {} already placed",
            want.millicpu,
            want.bytes as f64 / 1048576.0,
            spec.replicas,
            ours_bound
        ),
        format!(
            "{schedulable_nodes} schedulable node(s) of {} have {:.2} CPU, {:.0}Mi memory and {} pod slots free",
            nodes.len(),
            free.millicpu as f64 / 1000.0,
            free.bytes as f64 / 1048576.0,
            free.pods
        ),
    ];
    (fits, details, ours_bound)
}

/// The namespace's ResourceQuotas against N pods: each quota's room (hard
/// minus used, as the quota controller counts) for `pods`, `requests.cpu` and
/// `requests.memory`, less what our pods already hold.
pub async fn quotas(spec: &Spec, plan: &Plan, external: &Cluster, existing: u64) -> Result<()> {
    let api: Api<ResourceQuota> = Api::namespaced(external.client.clone(), &spec.namespace);
    let all = ListParams::default();
    let list = match crate::retry::call(|| api.list(&all)).await {
        Ok(list) => list.items,
        Err(kube::Error::Api(s)) if matches!(s.code, 403 | 404) => return Ok(()),
        Err(e) => return Err(Error::api(Side::External, "listing ResourceQuotas")(e)),
    };
    let short = quota_shortfalls(
        &list,
        plan,
        u64::from(spec.replicas).saturating_sub(existing),
    );
    if short.is_empty() {
        return Ok(());
    }
    Err(Error::Refused {
        what: format!(
            "the ResourceQuota of namespace {} is too small for {} hollow-node pods",
            spec.namespace, spec.replicas
        ),
        details: short,
        hint: "raise the quota, lower --replicas or the requests (--kubelet-cpu, ...), or deploy into another --namespace".into(),
    })
}

/// One line per quota and resource too small for `needed` more pods.
fn quota_shortfalls(quotas: &[ResourceQuota], plan: &Plan, needed: u64) -> Vec<String> {
    let want = plan.pod_requests;
    let mut short = Vec::new();
    for q in quotas {
        // Before the quota controller has counted, status is empty: the spec's
        // limits hold, with nothing used yet.
        let status = q.status.clone().unwrap_or_default();
        let hard = status
            .hard
            .filter(|h| !h.is_empty())
            .or_else(|| q.spec.as_ref().and_then(|s| s.hard.clone()))
            .unwrap_or_default();
        let used = status.used.unwrap_or_default();
        // Resource, how a pod counts against it (in milli-units), and how the quantity reads.
        let per_pod_milli = |key: &str| -> u64 {
            match key {
                "pods" | "count/pods" => 1_000,
                "requests.cpu" | "cpu" => want.millicpu,
                _ => want.bytes.saturating_mul(1_000),
            }
        };
        for key in [
            "pods",
            "count/pods",
            "requests.cpu",
            "cpu",
            "requests.memory",
            "memory",
        ] {
            let Some(h) = hard.get(key) else { continue };
            let per_pod = per_pod_milli(key);
            if per_pod == 0 {
                continue;
            }
            let room = clamp(amount(Some(h)).milli() - amount(used.get(key)).milli());
            if room < needed.saturating_mul(per_pod) {
                short.push(format!(
                    "ResourceQuota {}: {key} has room for {} more hollow-node pod(s) ({} of {} used), {} needed",
                    q.name_any(),
                    room / per_pod,
                    used.get(key).map_or("0", |u| u.0.as_str()),
                    h.0,
                    needed
                ));
            }
        }
    }
    short
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod_spec(v: serde_json::Value) -> PodSpec {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn requests_follow_the_max_rule() {
        let spec = pod_spec(json!({
            "initContainers": [{"name": "i", "resources": {"requests": {"cpu": "500m", "memory": "1Mi"}}}],
            "containers": [{"name": "a", "resources": {"requests": {"cpu": "40m", "memory": "102400Ki"}}},
                           {"name": "b", "resources": {"requests": {"cpu": "20m", "memory": "50M"}}}]
        }));
        assert_eq!(
            pod_requests(&spec),
            Requests {
                millicpu: 500,
                bytes: 102_400 * 1024 + 50_000_000
            }
        );
        // What cannot be read (or is negative) counts as nothing.
        let odd = pod_spec(json!({"containers": [
            {"name": "a", "resources": {"requests": {"cpu": "-1", "memory": "lots"}}}
        ]}));
        assert_eq!(pod_requests(&odd), Requests::default());
    }

    #[test]
    fn taints_the_scheduler_would_tolerate() {
        let t: Vec<Toleration> = serde_json::from_value(json!([
            {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute"},
            {"key": "dedicated", "value": "kubemark", "effect": "NoSchedule"},
            {"operator": "Exists", "effect": "PreferNoSchedule"}
        ]))
        .unwrap();
        let taint = |v: serde_json::Value| -> Taint { serde_json::from_value(v).unwrap() };
        for (taint_json, expect) in [
            (
                json!({"key": "node.kubernetes.io/unreachable", "effect": "NoExecute"}),
                true,
            ),
            (
                json!({"key": "node.kubernetes.io/unreachable", "effect": "NoSchedule"}),
                false,
            ),
            (
                json!({"key": "dedicated", "value": "kubemark", "effect": "NoSchedule"}),
                true,
            ),
            (
                json!({"key": "dedicated", "value": "x", "effect": "NoSchedule"}),
                false,
            ),
            (
                json!({"key": "anything", "effect": "PreferNoSchedule"}),
                true,
            ),
        ] {
            assert_eq!(
                tolerated(&taint(taint_json.clone()), &t),
                expect,
                "{taint_json}"
            );
        }
    }
}
