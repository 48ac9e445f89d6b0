//! The node lifecycle controller: a node whose Lease (or Ready heartbeat) is
//! older than the grace period turns `Ready=Unknown`, with the `unreachable`
//! taints, as a real cluster's controller does. The simulator's own workers
//! are exempt: they never stop.

use std::sync::Arc;

use serde_json::{Value, json};

use super::WORKER_LABEL;
use crate::Shared;
use crate::meta::{self, idx};

fn last_heartbeat(shared: &Shared, node: &Value) -> Option<i64> {
    let name = meta::name(node);
    let lease = shared
        .store
        .get(idx::LEASES, "kube-node-lease", name)
        .and_then(|l| {
            l.value
                .pointer("/spec/renewTime")
                .and_then(Value::as_str)
                .and_then(meta::parse_rfc3339)
        });
    let ready = node
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .and_then(|c| c.iter().find(|c| c["type"] == "Ready"))
        .and_then(|c| c["lastHeartbeatTime"].as_str())
        .and_then(meta::parse_rfc3339);
    lease.max(ready)
}

fn mark_unknown(shared: &Shared, name: &str) {
    let now = meta::now_rfc3339();
    let _ = shared.store.modify(idx::NODES, "", name, None, |v| {
        for c in v
            .pointer_mut("/status/conditions")
            .and_then(Value::as_array_mut)
            .into_iter()
            .flatten()
        {
            if c["status"] != "Unknown" {
                c["lastTransitionTime"] = json!(now);
            }
            c["status"] = json!("Unknown");
            c["reason"] = json!("NodeStatusUnknown");
            c["message"] = json!("Kubelet stopped posting node status.");
        }
        let taints = v["spec"]
            .as_object_mut()
            .map(|s| s.entry("taints").or_insert_with(|| json!([])));
        if let Some(Value::Array(t)) = taints {
            for effect in ["NoSchedule", "NoExecute"] {
                if !t
                    .iter()
                    .any(|x| x["key"] == "node.kubernetes.io/unreachable" && x["effect"] == effect)
                {
                    let mut taint =
                        json!({"key": "node.kubernetes.io/unreachable", "effect": effect});
                    if effect == "NoExecute" {
                        taint["timeAdded"] = json!(now);
                    }
                    t.push(taint);
                }
            }
        }
        Ok(())
    });
}

/// A node that heartbeats again is Ready again (its kubelet would post so).
fn clear_unknown(shared: &Shared, name: &str) {
    let now = meta::now_rfc3339();
    let _ = shared.store.modify(idx::NODES, "", name, None, |v| {
        v["status"]["conditions"] = super::node_conditions("True", &now);
        if let Some(Value::Array(t)) = v.pointer_mut("/spec/taints") {
            t.retain(|x| x["key"] != "node.kubernetes.io/unreachable");
        }
        Ok(())
    });
}

pub async fn run(shared: Arc<Shared>) {
    let grace = shared.cfg.timing.node_grace;
    let period = (grace / 4).clamp(
        std::time::Duration::from_millis(200),
        std::time::Duration::from_secs(5),
    );
    let mut tick = tokio::time::interval(period);
    loop {
        tick.tick().await;
        let now = meta::now_secs();
        for node in shared.store.list(idx::NODES, None).0 {
            let v = &node.value;
            if meta::label(v, WORKER_LABEL).is_some() {
                continue;
            }
            let ready = v
                .pointer("/status/conditions")
                .and_then(Value::as_array)
                .and_then(|c| c.iter().find(|c| c["type"] == "Ready"))
                .and_then(|c| c["status"].as_str())
                .unwrap_or("Unknown")
                .to_owned();
            let Some(last) = last_heartbeat(&shared, v) else {
                continue;
            };
            let stale = now - last > grace.as_secs() as i64;
            if stale && ready != "Unknown" {
                mark_unknown(&shared, meta::name(v));
            } else if !stale && ready == "Unknown" {
                clear_unknown(&shared, meta::name(v));
            }
        }
    }
}
