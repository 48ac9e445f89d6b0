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

fn requests(pod: &Value) -> Amounts {
    let sum = |pointer: &str| -> (i128, i128) {
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
            .fold((0, 0), |(a, b), (c, d)| (a + c, b + d))
    };
    let (cpu, memory) = sum("/spec/containers");
    let init_max = pod
        .pointer("/spec/initContainers")
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

/// Why a node cannot take the pod, in the scheduler's words.
fn misfit(pod: &Value, node: &Value, want: Amounts, used: Amounts) -> Option<String> {
    if node.pointer("/spec/unschedulable").and_then(Value::as_bool) == Some(true) {
        return Some("node(s) were unschedulable".into());
    }
    for taint in node
        .pointer("/spec/taints")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let effect = taint["effect"].as_str().unwrap_or_default();
        if (effect == "NoSchedule" || effect == "NoExecute") && !tolerates(pod, taint) {
            return Some(format!(
                "node(s) had untolerated taint {{{}: {}}}",
                taint["key"].as_str().unwrap_or_default(),
                taint["value"].as_str().unwrap_or_default()
            ));
        }
    }
    let cap = allocatable(node);
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

fn pass(shared: &Shared) {
    let nodes: Vec<Obj> = shared.store.list(idx::NODES, None).0;
    if nodes.is_empty() && shared.store.count(idx::PODS) == 0 {
        return;
    }
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
    waiting.sort_by_key(|p| p.rv);
    for pod in waiting {
        let want = requests(&pod.value);
        let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
        // Spread: the node with the fewest pods that fits.
        let mut best: Option<(&Obj, i128)> = None;
        for node in &nodes {
            let name = meta::name(&node.value);
            let u = used.get(name).copied().unwrap_or_default();
            match misfit(&pod.value, &node.value, want, u) {
                Some(why) => *reasons.entry(why).or_default() += 1,
                None => {
                    if best.is_none_or(|(_, pods)| u.pods < pods) {
                        best = Some((node, u.pods));
                    }
                }
            }
        }
        let (ns, name) = (
            meta::namespace(&pod.value).to_owned(),
            meta::name(&pod.value).to_owned(),
        );
        match best {
            Some((node, _)) => {
                let node_name = meta::name(&node.value).to_owned();
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
                pass(&shared);
                dirty = false;
            }
        }
    }
}
