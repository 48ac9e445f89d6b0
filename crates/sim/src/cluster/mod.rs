//! The simulated cluster's controllers, each a task fed by the store's change
//! broadcast: namespace termination, garbage collection by owner references,
//! the ReplicationController controller, the scheduler, the kubelets (with
//! hollow nodes), and the node lifecycle controller.

mod events;
mod gc;
mod hollow;
mod kubelet;
mod lifecycle;
mod namespace;
mod rc;
mod scheduler;

use std::collections::HashMap;
use std::sync::atomic::AtomicU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::broadcast::error::RecvError;
use tokio::task::JoinHandle;

use crate::Shared;
use crate::meta::{self, idx};
use crate::store::Change;

pub use events::record as record_event;

/// The label that marks the simulator's own worker nodes.
pub const WORKER_LABEL: &str = "sim.kubemark.io/worker";

type EventKey = (String, String, String);

/// Controller state that outlives a single change: running pods, event
/// de-duplication, hollow-node API clients.
#[derive(Debug, Default)]
pub struct Runtime {
    pods: Mutex<HashMap<(String, String), tokio::task::AbortHandle>>,
    /// (involved uid, reason, message) → the event's (namespace, name).
    events: Mutex<HashMap<EventKey, (String, String)>>,
    clients: Mutex<HashMap<crate::kubeconfig::Credentials, hollow::Client>>,
    next_ip: AtomicU32,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Create the cluster's fixed objects and start every controller.
pub fn start(shared: Arc<Shared>) -> Vec<JoinHandle<()>> {
    bootstrap(&shared);
    vec![
        tokio::spawn(namespace::run(Arc::clone(&shared))),
        tokio::spawn(gc::run(Arc::clone(&shared))),
        tokio::spawn(rc::run(Arc::clone(&shared))),
        tokio::spawn(scheduler::run(Arc::clone(&shared))),
        tokio::spawn(kubelet::run(Arc::clone(&shared))),
        tokio::spawn(lifecycle::run(Arc::clone(&shared))),
        tokio::spawn(stats(shared)),
    ]
}

/// Record when nodes turn Ready (for benchmarks' detection delays).
async fn stats(shared: Arc<Shared>) {
    let ready = |v: &Value| {
        v.pointer("/status/conditions")
            .and_then(Value::as_array)
            .is_some_and(|c| {
                c.iter()
                    .any(|c| c["type"] == "Ready" && c["status"] == "True")
            })
    };
    let mut rx = shared.store.subscribe();
    loop {
        match next(&mut rx, None).await {
            Some(Feed::Change(c))
                if c.res == idx::NODES
                    && c.kind != crate::store::ChangeType::Deleted
                    && ready(&c.obj.value)
                    && !c.old.as_ref().is_some_and(|o| ready(&o.value)) =>
            {
                let ms = u64::try_from(jiff::Timestamp::now().as_millisecond()).unwrap_or(0);
                shared
                    .stats
                    .last_node_ready_ms
                    .store(ms, std::sync::atomic::Ordering::Relaxed);
            }
            Some(Feed::Closed) | None => return,
            _ => {}
        }
    }
}

/// Stop every pod task (and the hollow nodes in them).
pub fn stop(shared: &Shared) {
    for (_, task) in lock(&shared.runtime.pods).drain() {
        task.abort();
    }
}

fn bootstrap(shared: &Shared) {
    let store = &shared.store;
    for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
        let mut obj = json!({"metadata": {"name": ns}});
        let _ = crate::validate::defaults_and_checks(idx::NAMESPACES, &mut obj, None);
        let _ = store.create(idx::NAMESPACES, obj);
    }
    let cfg = &shared.cfg;
    for i in 1..=cfg.workers {
        let name = format!("worker-{i}");
        let resources = json!({
            "cpu": cfg.worker_cpu,
            "memory": cfg.worker_memory,
            "pods": cfg.worker_pods.to_string(),
            "ephemeral-storage": "100Gi",
        });
        let now = meta::now_rfc3339();
        let node = json!({
            "metadata": {
                "name": name,
                "labels": {
                    "kubernetes.io/hostname": name,
                    "kubernetes.io/os": "linux",
                    "kubernetes.io/arch": "amd64",
                    WORKER_LABEL: "true",
                },
            },
            "spec": {},
            "status": {
                "capacity": resources,
                "allocatable": resources,
                "conditions": node_conditions("True", &now),
                "addresses": [
                    {"type": "InternalIP", "address": format!("10.0.{}.{}", i / 250, i % 250 + 1)},
                    {"type": "Hostname", "address": name},
                ],
                "nodeInfo": node_info(&cfg.version),
            },
        });
        let _ = store.create(idx::NODES, node);
    }
}

pub(crate) fn node_conditions(ready: &str, now: &str) -> Value {
    let pressure = |t: &str, reason: &str, message: &str| {
        json!({"type": t, "status": "False", "reason": reason, "message": message,
               "lastHeartbeatTime": now, "lastTransitionTime": now})
    };
    json!([
        pressure("MemoryPressure", "KubeletHasSufficientMemory", "kubelet has sufficient memory available"),
        pressure("DiskPressure", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
        pressure("PIDPressure", "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
        {"type": "Ready", "status": ready, "reason": "KubeletReady", "message": "kubelet is posting ready status",
         "lastHeartbeatTime": now, "lastTransitionTime": now},
    ])
}

pub(crate) fn node_info(version: &str) -> Value {
    json!({
        "kubeletVersion": version,
        "kubeProxyVersion": version,
        "osImage": "Debian GNU/Linux 12 (bookworm)",
        "kernelVersion": "6.1.0-sim",
        "containerRuntimeVersion": "containerd://1.7.24",
        "operatingSystem": "linux",
        "architecture": "amd64",
        "machineID": "",
        "systemUUID": "",
        "bootID": "",
    })
}

/// What a controller does with the change feed.
pub(crate) enum Feed {
    Change(Arc<Change>),
    /// Changes were missed: look at everything again.
    Resync,
    Closed,
}

/// The next change, or after `timeout`, `None`.
pub(crate) async fn next(
    rx: &mut tokio::sync::broadcast::Receiver<Arc<Change>>,
    timeout: Option<Duration>,
) -> Option<Feed> {
    let recv = async {
        match rx.recv().await {
            Ok(c) => Feed::Change(c),
            Err(RecvError::Lagged(_)) => Feed::Resync,
            Err(RecvError::Closed) => Feed::Closed,
        }
    };
    match timeout {
        Some(t) => tokio::time::timeout(t, recv).await.ok(),
        None => Some(recv.await),
    }
}

/// `ownerReferences` of an object as (uid, kind, name, controller).
pub(crate) fn owners(obj: &Value) -> Vec<(String, String, String, bool)> {
    obj.pointer("/metadata/ownerReferences")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|r| {
            (
                r["uid"].as_str().unwrap_or_default().to_owned(),
                r["kind"].as_str().unwrap_or_default().to_owned(),
                r["name"].as_str().unwrap_or_default().to_owned(),
                r["controller"].as_bool().unwrap_or(false),
            )
        })
        .collect()
}

pub(crate) fn is_deleting(obj: &Value) -> bool {
    obj.pointer("/metadata/deletionTimestamp").is_some()
}
