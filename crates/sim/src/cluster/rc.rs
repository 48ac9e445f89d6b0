//! The ReplicationController controller: keeps `spec.replicas` pods named
//! `<rc>-<5 random chars>` with owner references, deletes extras on scale-down
//! (unscheduled, then not ready, then newest first), and reports status.
//!
//! As kube-controller-manager's does, one sync creates at most [`BURST`] pods,
//! in batches that double from one (`slowStartBatch`) and stop at the first
//! failure; the pods it made bring the controller back for the next burst. So
//! a huge `spec.replicas` grows the pods step by step while the API keeps
//! serving (and a delete of the RC stops it), instead of one endless loop.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};

use super::{Feed, is_deleting, next, owners, record_event};
use crate::Shared;
use crate::meta::{self, idx};
use crate::store::Obj;

fn pod_ready(pod: &Value) -> bool {
    pod.pointer("/status/conditions")
        .and_then(Value::as_array)
        .is_some_and(|c| {
            c.iter()
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
        })
}

/// Create one pod from the RC's template; false (and a FailedCreate event) when it fails.
fn create_pod(
    shared: &Shared,
    rc: &Value,
    ns: &str,
    name: &str,
    uid: &str,
    template: &Value,
    pods: &mut Vec<Obj>,
) -> bool {
    let mut pod = json!({
        "metadata": template.get("metadata").cloned().unwrap_or_else(|| json!({})),
        "spec": template.get("spec").cloned().unwrap_or_default(),
    });
    let m = meta::metadata_mut(&mut pod);
    m.remove("name");
    m.insert("generateName".into(), json!(format!("{name}-")));
    m.insert("namespace".into(), json!(ns));
    m.insert(
        "ownerReferences".into(),
        json!([{"apiVersion": "v1", "kind": "ReplicationController", "name": name, "uid": uid,
                "controller": true, "blockOwnerDeletion": true}]),
    );
    if crate::validate::defaults_and_checks(idx::PODS, &mut pod, None).is_err() {
        record_event(
            shared,
            rc,
            "Warning",
            "FailedCreate",
            "Error creating: the pod template is invalid",
            "replication-controller",
            None,
        );
        return false;
    }
    match shared.store.create(idx::PODS, pod) {
        Ok(p) => {
            record_event(
                shared,
                rc,
                "Normal",
                "SuccessfulCreate",
                &format!("Created pod: {}", meta::name(&p.value)),
                "replication-controller",
                None,
            );
            pods.push(p);
            true
        }
        Err(e) => {
            record_event(
                shared,
                rc,
                "Warning",
                "FailedCreate",
                &format!("Error creating: {}", e.message),
                "replication-controller",
                None,
            );
            false
        }
    }
}

/// The most pods one sync creates (kube-controller-manager's `burstReplicas`).
pub const BURST: usize = 500;

fn sync(shared: &Shared, ns: &str, name: &str) {
    let Some(rc) = shared.store.get(idx::RCS, ns, name) else {
        return;
    };
    if is_deleting(&rc.value) {
        return;
    }
    let uid = meta::meta_str(&rc.value, "uid")
        .unwrap_or_default()
        .to_owned();
    let mut pods: Vec<Obj> = shared
        .store
        .list(idx::PODS, Some(ns))
        .0
        .into_iter()
        .filter(|p| !is_deleting(&p.value))
        .filter(|p| owners(&p.value).iter().any(|(u, _, _, c)| *u == uid && *c))
        .collect();
    let desired = rc
        .value
        .pointer("/spec/replicas")
        .and_then(Value::as_i64)
        .unwrap_or(1)
        .max(0) as usize;
    if pods.len() < desired {
        let template = rc
            .value
            .pointer("/spec/template")
            .cloned()
            .unwrap_or_default();
        let want = (desired - pods.len()).min(BURST);
        let mut batch = 1;
        let mut made = 0;
        'batches: while made < want {
            let size = batch.min(want - made);
            for _ in 0..size {
                if !create_pod(shared, &rc.value, ns, name, &uid, &template, &mut pods) {
                    break 'batches;
                }
            }
            made += size;
            batch *= 2;
        }
    } else if pods.len() > desired {
        // Delete the least useful first: unscheduled, then not ready, then the newest.
        pods.sort_by_key(|p| {
            let scheduled = p
                .value
                .pointer("/spec/nodeName")
                .is_some_and(|n| n.as_str().is_some_and(|s| !s.is_empty()));
            (scheduled, pod_ready(&p.value), std::cmp::Reverse(p.rv))
        });
        let extra: Vec<Obj> = pods.drain(..pods.len() - desired).collect();
        for p in extra {
            let pod_name = meta::name(&p.value).to_owned();
            if shared.store.delete(idx::PODS, ns, &pod_name, None).is_ok() {
                record_event(
                    shared,
                    &rc.value,
                    "Normal",
                    "SuccessfulDelete",
                    &format!("Deleted pod: {pod_name}"),
                    "replication-controller",
                    None,
                );
            }
        }
    }
    let ready = pods.iter().filter(|p| pod_ready(&p.value)).count();
    let generation = rc
        .value
        .pointer("/metadata/generation")
        .cloned()
        .unwrap_or(json!(1));
    let status = json!({
        "replicas": pods.len(),
        "fullyLabeledReplicas": pods.len(),
        "readyReplicas": ready,
        "availableReplicas": ready,
        "observedGeneration": generation,
    });
    if rc.value.get("status") != Some(&status) {
        let _ = shared.store.modify(idx::RCS, ns, name, None, |v| {
            v["status"] = status;
            Ok(())
        });
    }
}

pub async fn run(shared: Arc<Shared>) {
    let mut rx = shared.store.subscribe();
    let all = |shared: &Shared| -> BTreeSet<(String, String)> {
        shared
            .store
            .list(idx::RCS, None)
            .0
            .iter()
            .map(|r| {
                (
                    meta::namespace(&r.value).to_owned(),
                    meta::name(&r.value).to_owned(),
                )
            })
            .collect()
    };
    let mut queue = all(&shared);
    loop {
        // Gather changes for a moment, then sync each affected controller once.
        let wait = if queue.is_empty() {
            None
        } else {
            Some(Duration::from_millis(20))
        };
        match next(&mut rx, wait).await {
            Some(Feed::Closed) => return,
            Some(Feed::Resync) => queue.extend(all(&shared)),
            Some(Feed::Change(c)) => match c.res {
                idx::RCS => {
                    queue.insert((
                        meta::namespace(&c.obj.value).to_owned(),
                        meta::name(&c.obj.value).to_owned(),
                    ));
                }
                idx::PODS => {
                    for (_, kind, owner, _) in owners(&c.obj.value) {
                        if kind == "ReplicationController" {
                            queue.insert((meta::namespace(&c.obj.value).to_owned(), owner));
                        }
                    }
                }
                _ => {}
            },
            None => {
                for (ns, name) in std::mem::take(&mut queue) {
                    sync(&shared, &ns, &name);
                }
            }
        }
    }
}
