//! Wait, with watches and never a polling loop, until the hollow-node pods run
//! on the external cluster and their Nodes are Ready on the master. Stalls are
//! explained as they happen; stale Nodes of pods that went away (a scale-down)
//! are deleted; the summary gives the times and registration latencies.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant, SystemTime};

use futures_util::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, DeleteParams};
use kube::runtime::{WatchStreamExt, watcher};

use crate::diagnose::{self, deleting, node_ready, pod_running};
use crate::error::{Error, Result, Side};
use crate::event::{Cancel, Event, Events};
use crate::kubeconfig::Cluster;
use crate::plan::NODE_LABEL;

/// How a finished wait went.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Summary {
    pub wanted: usize,
    /// Seconds from the start of the wait until every pod ran.
    pub all_running_s: f64,
    /// Seconds from the start of the wait until every node was Ready.
    pub all_ready_s: f64,
    /// Pod first seen → its node first seen Ready, for the nodes that became Ready
    /// during the wait (pods from before the wait count from its start).
    pub registration_p50_s: Option<f64>,
    pub registration_p99_s: Option<f64>,
    /// Stale Nodes (of pods that went away) deleted from the master.
    pub stale_nodes_deleted: usize,
}

/// A name-keyed view of a watched collection, rebuilt on every (re)list.
struct View<K> {
    items: HashMap<String, K>,
    relisting: Option<HashMap<String, K>>,
}

impl<K: kube::Resource> View<K> {
    fn new() -> Self {
        Self {
            items: HashMap::new(),
            relisting: None,
        }
    }

    fn apply(&mut self, event: watcher::Event<K>) {
        let name = |k: &K| k.meta().name.clone().unwrap_or_default();
        match event {
            watcher::Event::Init => self.relisting = Some(HashMap::new()),
            watcher::Event::InitApply(k) => {
                if let Some(r) = self.relisting.as_mut() {
                    r.insert(name(&k), k);
                }
            }
            watcher::Event::InitDone => {
                if let Some(r) = self.relisting.take() {
                    self.items = r;
                }
            }
            watcher::Event::Apply(k) => {
                self.items.insert(name(&k), k);
            }
            watcher::Event::Delete(k) => {
                self.items.remove(&name(&k));
            }
        }
    }
}

fn quantile(mut xs: Vec<f64>, q: f64) -> Option<f64> {
    if xs.is_empty() {
        return None;
    }
    xs.sort_by(f64::total_cmp);
    Some(xs[((xs.len() - 1) as f64 * q).round() as usize])
}

/// Wait for `wanted` Running pods (selected by `selector` in `namespace`) and as
/// many Ready nodes of the same names on the master.
#[allow(clippy::too_many_arguments)]
pub async fn run(
    external: &Cluster,
    master: &Cluster,
    namespace: &str,
    selector: &str,
    wanted: usize,
    timeout: Duration,
    events: &Events,
    cancel: &Cancel,
) -> Result<Summary> {
    let started = Instant::now();
    let deadline = started + timeout;
    let pod_api: Api<Pod> = Api::namespaced(external.client.clone(), namespace);
    let node_api: Api<Node> = Api::all(master.client.clone());
    let node_selector = format!("{NODE_LABEL}={namespace}");
    // Transient errors (5xx, 429, cut watches) are retried by the watchers with back-off.
    let mut pods = watcher(pod_api, watcher::Config::default().labels(selector))
        .default_backoff()
        .boxed();
    let mut nodes = watcher(
        node_api.clone(),
        watcher::Config::default().labels(&node_selector),
    )
    .default_backoff()
    .boxed();
    let mut pod_view: View<Pod> = View::new();
    let mut node_view: View<Node> = View::new();
    let mut ready_seen: HashMap<String, SystemTime> = HashMap::new();
    let mut pod_seen: HashMap<String, SystemTime> = HashMap::new();
    let mut latencies: Vec<f64> = Vec::new();
    let (mut all_running, mut all_ready) = (None, None);
    let mut last = (usize::MAX, usize::MAX);
    let mut last_change = Instant::now();
    let stall_after = Duration::from_secs(15)
        .min(timeout / 4)
        .max(Duration::from_secs(2));
    let mut next_report = last_change + stall_after;
    let mut stale_deleted = 0;
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    let (cancelled_tx, mut cancelled_rx) = tokio::sync::watch::channel(false);
    let _guard = cancel.on_cancel(move || {
        let _ = cancelled_tx.send(true);
    });
    loop {
        tokio::select! {
            event = pods.try_next() => match event {
                Ok(Some(e)) => pod_view.apply(e),
                Ok(None) => return Err(Error::Api { side: Side::External, doing: "watching pods".into(), reason: "the watch ended".into() }),
                Err(e) => tracing::debug!("pod watch: {e}"),
            },
            event = nodes.try_next() => match event {
                Ok(Some(e)) => node_view.apply(e),
                Ok(None) => return Err(Error::Api { side: Side::Master, doing: "watching nodes".into(), reason: "the watch ended".into() }),
                Err(e) => tracing::debug!("node watch: {e}"),
            },
            _ = tick.tick() => {}
            _ = cancelled_rx.changed() => return Err(Error::Cancelled),
        }
        if cancel.is_cancelled() {
            return Err(Error::Cancelled);
        }
        let live: Vec<&Pod> = pod_view.items.values().filter(|p| !deleting(p)).collect();
        let names: BTreeSet<&str> = live
            .iter()
            .filter_map(|p| p.metadata.name.as_deref())
            .collect();
        let running = live.iter().filter(|p| pod_running(p)).count();
        let now = SystemTime::now();
        for name in &names {
            pod_seen.entry((*name).to_owned()).or_insert(now);
        }
        let mut ready = 0;
        for n in node_view.items.values() {
            let name = n.metadata.name.clone().unwrap_or_default();
            if names.contains(name.as_str()) && node_ready(n) {
                ready += 1;
                if !ready_seen.contains_key(&name) {
                    ready_seen.insert(name.clone(), now);
                    if let Some(seen) = pod_seen.get(&name)
                        && let Ok(latency) = now.duration_since(*seen)
                    {
                        latencies.push(latency.as_secs_f64());
                    }
                }
            }
        }
        if (running, ready) != last {
            last = (running, ready);
            last_change = Instant::now();
            next_report = last_change + stall_after;
            events.emit(Event::Progress {
                running,
                ready,
                wanted,
            });
        }
        if running >= wanted && all_running.is_none() && live.len() == wanted {
            all_running = Some(started.elapsed().as_secs_f64());
        }
        if ready >= wanted && all_ready.is_none() && live.len() == wanted {
            all_ready = Some(started.elapsed().as_secs_f64());
        }
        let settled = live.len() == wanted && pod_view.items.len() == wanted;
        if settled && running == wanted && ready == wanted {
            // A scale-down (or replaced pods) leaves Nodes whose pods are gone: ours to delete.
            let stale: Vec<String> = node_view
                .items
                .keys()
                .filter(|n| !names.contains(n.as_str()))
                .cloned()
                .collect();
            let params = DeleteParams::default();
            for name in &stale {
                match crate::retry::call(|| node_api.delete(name, &params)).await {
                    Ok(_) => stale_deleted += 1,
                    Err(kube::Error::Api(s)) if s.code == 404 => {}
                    Err(e) => {
                        return Err(Error::api(
                            Side::Master,
                            format!("deleting the stale node {name}"),
                        )(e));
                    }
                }
            }
            if !stale.is_empty() {
                events.emit(Event::Deleted {
                    kind: "stale hollow Node".into(),
                    count: stale.len(),
                });
            }
            return Ok(Summary {
                wanted,
                all_running_s: all_running.unwrap_or_else(|| started.elapsed().as_secs_f64()),
                all_ready_s: all_ready.unwrap_or_else(|| started.elapsed().as_secs_f64()),
                registration_p50_s: quantile(latencies.clone(), 0.5),
                registration_p99_s: quantile(latencies, 0.99),
                stale_nodes_deleted: stale_deleted,
            });
        }
        let now = Instant::now();
        if now >= deadline {
            let pods: Vec<Pod> = pod_view.items.values().cloned().collect();
            let nodes: Vec<Node> = node_view.items.values().cloned().collect();
            return Err(Error::Timeout {
                ready,
                wanted,
                seconds: timeout.as_secs(),
                diagnosis: diagnose::diagnose(external, namespace, &pods, &nodes).await,
            });
        }
        if now >= next_report {
            next_report = now + stall_after * 2;
            let pods: Vec<Pod> = pod_view.items.values().cloned().collect();
            let nodes: Vec<Node> = node_view.items.values().cloned().collect();
            let mut diagnosis = diagnose::diagnose(external, namespace, &pods, &nodes).await;
            if live.len() != wanted {
                diagnosis.push(format!(
                    "{} pods exist, {wanted} wanted (the ReplicationController is still adjusting)",
                    live.len()
                ));
            }
            events.emit(Event::Stalled {
                seconds: last_change.elapsed().as_secs(),
                diagnosis,
            });
        }
    }
}

/// Read the current pods and nodes once (for `status`).
pub async fn snapshot(
    external: &Cluster,
    master: &Cluster,
    namespace: &str,
    selector: &str,
) -> Result<(Vec<Pod>, Vec<Node>)> {
    let pod_api: Api<Pod> = Api::namespaced(external.client.clone(), namespace);
    let node_api: Api<Node> = Api::all(master.client.clone());
    let pod_params = kube::api::ListParams::default().labels(selector);
    let pods = crate::retry::call(|| pod_api.list(&pod_params))
        .await
        .map_err(Error::api(Side::External, "listing hollow-node pods"))?;
    let node_params = kube::api::ListParams::default().labels(&format!("{NODE_LABEL}={namespace}"));
    let nodes = crate::retry::call(|| node_api.list(&node_params))
        .await
        .map_err(Error::api(Side::Master, "listing hollow nodes"))?;
    Ok((pods.items, nodes.items))
}
