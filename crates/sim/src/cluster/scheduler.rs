//! The scheduler: binds a pending pod to a node whose allocatable CPU, memory
//! and pods fit its requests (and whose taints it tolerates), else marks it
//! `PodScheduled=False`, reason `Unschedulable`, with an event giving the reason.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};

use super::{Feed, is_deleting, next, record_event};
use crate::Shared;
use crate::meta::{self, idx, quantity_milli};
use crate::store::Obj;

#[derive(Debug, Default, Clone, Copy)]
struct Amounts {
    cpu: i128,
    memory: i128,
    pods: i128,
}

/// The (cpu, memory) requests of each container under `pointer`.
fn container_requests<'a>(
    pod: &'a Value,
    pointer: &str,
) -> impl Iterator<Item = (i128, i128)> + 'a {
    pod.pointer(pointer)
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|c| {
            let r = c.pointer("/resources/requests");
            let q = |k: &str| {
                r.and_then(|r| r.get(k))
                    .and_then(Value::as_str)
                    .and_then(quantity_milli)
                    .unwrap_or(0)
            };
            (q("cpu"), q("memory"))
        })
}

fn requests(pod: &Value) -> Amounts {
    // Containers run together (their requests add up); init containers one at a time.
    let (cpu, memory) =
        container_requests(pod, "/spec/containers").fold((0, 0), |(a, b), (c, d)| (a + c, b + d));
    let init_max = container_requests(pod, "/spec/initContainers")
        .fold((0, 0), |(a, b), (c, d)| (a.max(c), b.max(d)));
    Amounts {
        cpu: cpu.max(init_max.0),
        memory: memory.max(init_max.1),
        pods: 1000,
    }
}

fn allocatable(node: &Value) -> Amounts {
    let q = |k: &str| {
        node.pointer("/status/allocatable")
            .and_then(|a| a.get(k))
            .and_then(Value::as_str)
            .and_then(quantity_milli)
            .unwrap_or(0)
    };
    Amounts {
        cpu: q("cpu"),
        memory: q("memory"),
        pods: q("pods"),
    }
}

fn tolerates(pod: &Value, taint: &Value) -> bool {
    pod.pointer("/spec/tolerations")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .any(|t| {
            let key_ok = t["key"].as_str().is_none_or(str::is_empty) && t["operator"] == "Exists"
                || t["key"] == taint["key"];
            let value_ok = t["operator"] == "Exists"
                || t["value"].as_str().unwrap_or_default()
                    == taint["value"].as_str().unwrap_or_default();
            let effect_ok =
                t["effect"].as_str().is_none_or(str::is_empty) || t["effect"] == taint["effect"];
            key_ok && value_ok && effect_ok
        })
}

fn bound_node(pod: &Value) -> Option<&str> {
    pod.pointer("/spec/nodeName")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
}

fn pending(pod: &Value) -> bool {
    bound_node(pod).is_none()
        && !is_deleting(pod)
        && pod
            .pointer("/spec/schedulerName")
            .and_then(Value::as_str)
            .unwrap_or("default-scheduler")
            == "default-scheduler"
}

/// What the scheduler needs of a node, read once per pass.
struct NodeInfo<'a> {
    name: &'a str,
    capacity: Amounts,
    unschedulable: bool,
    taints: Vec<&'a Value>,
}

impl<'a> NodeInfo<'a> {
    fn new(obj: &'a Obj) -> Self {
        let v = &obj.value;
        Self {
            name: meta::name(v),
            capacity: allocatable(v),
            unschedulable: v.pointer("/spec/unschedulable").and_then(Value::as_bool) == Some(true),
            taints: v
                .pointer("/spec/taints")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter(|t| matches!(t["effect"].as_str(), Some("NoSchedule" | "NoExecute")))
                .collect(),
        }
    }

    /// Why the node cannot take the pod, in the scheduler's words.
    fn misfit(&self, pod: &Value, want: Amounts, used: Amounts) -> Option<String> {
        if self.unschedulable {
            return Some("node(s) were unschedulable".into());
        }
        for taint in &self.taints {
            if !tolerates(pod, taint) {
                return Some(format!(
                    "node(s) had untolerated taint {{{}: {}}}",
                    taint["key"].as_str().unwrap_or_default(),
                    taint["value"].as_str().unwrap_or_default()
                ));
            }
        }
        let cap = self.capacity;
        if used.pods + want.pods > cap.pods {
            return Some("Too many pods".into());
        }
        if used.cpu + want.cpu > cap.cpu {
            return Some("Insufficient cpu".into());
        }
        if used.memory + want.memory > cap.memory {
            return Some("Insufficient memory".into());
        }
        None
    }
}

/// How many feasible nodes to compare before choosing (as kube-scheduler
/// scores only a sample of the nodes of a large cluster).
const FEASIBLE_SAMPLE: usize = 50;

fn pass(shared: &Shared, next_start: &mut usize) {
    let node_objs: Vec<Obj> = shared.store.list(idx::NODES, None).0;
    let nodes: Vec<NodeInfo<'_>> = node_objs.iter().map(NodeInfo::new).collect();
    let pods = shared.store.list(idx::PODS, None).0;
    let mut used: HashMap<String, Amounts> = HashMap::new();
    let mut waiting: Vec<&Obj> = Vec::new();
    for p in &pods {
        match bound_node(&p.value) {
            Some(node) => {
                let r = requests(&p.value);
                let u = used.entry(node.to_owned()).or_default();
                u.cpu += r.cpu;
                u.memory += r.memory;
                u.pods += r.pods;
            }
            None if pending(&p.value) => waiting.push(p),
            None => {}
        }
    }
    if waiting.is_empty() {
        return;
    }
    waiting.sort_by_key(|p| p.rv);
    for pod in waiting {
        let want = requests(&pod.value);
        // Spread: among a sample of feasible nodes (from a rotating start), the one with the fewest pods.
        let mut best: Option<(usize, i128)> = None;
        let mut feasible = 0;
        for k in 0..nodes.len() {
            let i = (*next_start + k) % nodes.len();
            let u = used.get(nodes[i].name).copied().unwrap_or_default();
            if nodes[i].misfit(&pod.value, want, u).is_none() {
                feasible += 1;
                if best.is_none_or(|(_, pods)| u.pods < pods) {
                    best = Some((i, u.pods));
                }
                if feasible >= FEASIBLE_SAMPLE {
                    break;
                }
            }
        }
        let (ns, name) = (
            meta::namespace(&pod.value).to_owned(),
            meta::name(&pod.value).to_owned(),
        );
        match best {
            Some((i, _)) => {
                *next_start = (i + 1) % nodes.len().max(1);
                let node_name = nodes[i].name.to_owned();
                let now = meta::now_rfc3339();
                let bound = shared.store.modify(idx::PODS, &ns, &name, Some(pod.rv), |v| {
                    v["spec"]["nodeName"] = json!(node_name);
                    set_condition(v, json!({"type": "PodScheduled", "status": "True", "lastProbeTime": null, "lastTransitionTime": now}));
                    Ok(())
                });
                if let Ok(bound) = bound {
                    let u = used.entry(node_name.clone()).or_default();
                    u.cpu += want.cpu;
                    u.memory += want.memory;
                    u.pods += want.pods;
                    record_event(
                        shared,
                        &bound.value,
                        "Normal",
                        "Scheduled",
                        &format!("Successfully assigned {ns}/{name} to {node_name}"),
                        "default-scheduler",
                        None,
                    );
                }
            }
            None => {
                let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
                for n in &nodes {
                    let u = used.get(n.name).copied().unwrap_or_default();
                    if let Some(why) = n.misfit(&pod.value, want, u) {
                        *reasons.entry(why).or_default() += 1;
                    }
                }
                let total = nodes.len();
                let detail: Vec<String> = reasons
                    .iter()
                    .map(|(why, n)| format!("{n} {why}"))
                    .collect();
                let message = if total == 0 {
                    "no nodes available to schedule pods".to_owned()
                } else {
                    format!(
                        "0/{total} nodes are available: {}. preemption: 0/{total} nodes are available: {total} No preemption victims found for incoming pod.",
                        detail.join(", ")
                    )
                };
                let current = pod
                    .value
                    .pointer("/status/conditions")
                    .and_then(Value::as_array)
                    .and_then(|c| c.iter().find(|c| c["type"] == "PodScheduled"))
                    .and_then(|c| c["message"].as_str());
                if current != Some(message.as_str()) {
                    let now = meta::now_rfc3339();
                    let msg = message.clone();
                    let updated = shared.store.modify(idx::PODS, &ns, &name, Some(pod.rv), |v| {
                        set_condition(
                            v,
                            json!({"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                                   "message": msg, "lastProbeTime": null, "lastTransitionTime": now}),
                        );
                        Ok(())
                    });
                    if let Ok(updated) = updated {
                        record_event(
                            shared,
                            &updated.value,
                            "Warning",
                            "FailedScheduling",
                            &message,
                            "default-scheduler",
                            None,
                        );
                    }
                }
            }
        }
    }
}

pub(crate) fn set_condition(pod: &mut Value, condition: Value) {
    if !pod.get("status").is_some_and(Value::is_object) {
        pod["status"] = json!({});
    }
    let list = pod["status"]
        .as_object_mut()
        .map(|s| s.entry("conditions").or_insert_with(|| json!([])));
    if let Some(Value::Array(list)) = list {
        match list.iter_mut().find(|c| c["type"] == condition["type"]) {
            Some(existing) => {
                // Keep the transition time when the status did not change.
                let same = existing["status"] == condition["status"];
                let since = existing["lastTransitionTime"].clone();
                *existing = condition;
                if same && !since.is_null() {
                    existing["lastTransitionTime"] = since;
                }
            }
            None => list.push(condition),
        }
    }
}

pub async fn run(shared: Arc<Shared>) {
    let mut rx = shared.store.subscribe();
    let mut dirty = true;
    let mut next_start = 0;
    loop {
        let wait = if dirty {
            Some(Duration::from_millis(20))
        } else {
            None
        };
        match next(&mut rx, wait).await {
            Some(Feed::Closed) => return,
            Some(Feed::Resync) => dirty = true,
            Some(Feed::Change(c)) => {
                // New pods, freed capacity, node changes: worth a pass. Our own bindings too,
                // but those settle after one pass.
                if c.res == idx::NODES
                    || (c.res == idx::PODS
                        && (pending(&c.obj.value) || c.kind == crate::store::ChangeType::Deleted))
                {
                    dirty = true;
                }
            }
            None => {
                pass(&shared, &mut next_start);
                dirty = false;
            }
        }
    }
}
