//! The kubelets of every node: after a delay, a bound pod's volumes are
//! mounted (a missing secret or configmap leaves it `ContainerCreating` with
//! `FailedMount` events), its images pulled (else `ErrImagePull` then
//! `ImagePullBackOff`), its config references resolved (else
//! `CreateContainerConfigError`), init containers complete, and containers run.
//! A container whose process exits (a hollow node that cannot reach its
//! master) restarts with back-off: `CrashLoopBackOff`, with its log kept.
//!
//! Here: which pods have a kubelet task (bound, not deleting). A pod's life
//! is in `pod`, the status it publishes in `status`, its checks in `volumes`,
//! `env` and `images`.

mod env;
mod images;
mod pod;
mod status;
mod volumes;

use std::sync::Arc;

use serde_json::Value;

use super::{Feed, is_deleting, lock, next};
use crate::Shared;
use crate::meta::{self, idx};

pub(crate) use volumes::read_mounted;

fn bound(pod: &Value) -> bool {
    pod.pointer("/spec/nodeName")
        .and_then(Value::as_str)
        .is_some_and(|n| !n.is_empty())
        && !is_deleting(pod)
}

fn ensure_task(shared: &Arc<Shared>, pod: &Value) {
    let key = (meta::namespace(pod).to_owned(), meta::name(pod).to_owned());
    let mut pods = lock(&shared.runtime.pods);
    if pods.contains_key(&key) {
        return;
    }
    let uid = meta::meta_str(pod, "uid").unwrap_or_default().to_owned();
    let task = tokio::spawn(pod::run_pod(
        Arc::clone(shared),
        key.0.clone(),
        key.1.clone(),
        uid,
    ));
    pods.insert(key, task.abort_handle());
}

fn stop_task(shared: &Shared, ns: &str, name: &str) {
    if let Some(task) = lock(&shared.runtime.pods).remove(&(ns.to_owned(), name.to_owned())) {
        task.abort();
    }
    shared.logs.forget_pod(ns, name);
}

pub async fn run(shared: Arc<Shared>) {
    let mut rx = shared.store.subscribe();
    let resync = |shared: &Arc<Shared>| {
        let pods = shared.store.list(idx::PODS, None).0;
        let live: std::collections::HashSet<(String, String)> = pods
            .iter()
            .map(|p| {
                (
                    meta::namespace(&p.value).to_owned(),
                    meta::name(&p.value).to_owned(),
                )
            })
            .collect();
        let gone: Vec<(String, String)> = lock(&shared.runtime.pods)
            .keys()
            .filter(|k| !live.contains(*k))
            .cloned()
            .collect();
        for (ns, name) in gone {
            stop_task(shared, &ns, &name);
        }
        for p in pods.iter().filter(|p| bound(&p.value)) {
            ensure_task(shared, &p.value);
        }
    };
    resync(&shared);
    loop {
        match next(&mut rx, None).await {
            Some(Feed::Change(c)) if c.res == idx::PODS => {
                let v = &c.obj.value;
                if c.kind == crate::store::ChangeType::Deleted {
                    stop_task(&shared, meta::namespace(v), meta::name(v));
                } else if bound(v) {
                    ensure_task(&shared, v);
                }
            }
            Some(Feed::Change(_)) => {}
            Some(Feed::Resync) => resync(&shared),
            Some(Feed::Closed) | None => return,
        }
    }
}
