//! Wait, with watches and never a polling loop, until the hollow-node pods run
//! on the external cluster and their Nodes are Ready on the master. Stalls are
//! explained as they happen; stale Nodes of pods that went away (a scale-down)
//! are deleted; the summary gives the times and registration latencies.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant, SystemTime};

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, DeleteParams};

use crate::diagnose;
use crate::error::{Error, Result, Side};
use crate::event::{CancellationToken, Event, Events};
use crate::kubeconfig::Cluster;
use crate::plan::NODE_LABEL;
use crate::tables::{self, Cells, Update};

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
    /// CPU seconds this process spent in the wait (Linux), for comparisons.
    pub wait_cpu_s: Option<f64>,
}

/// CPU seconds this process has used (user + system), from /proc (ticks of 1/100 s).
fn process_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let after_name = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line; 12 and 13 after the name.
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

/// The counts, kept up to date one event at a time (not recounted per event:
/// at 5,000 nodes that would be 25 million checks).
#[derive(Default)]
struct Tally {
    /// Pod name → (live, running).
    pods: HashMap<String, (bool, bool)>,
    /// Node name → ready.
    nodes: HashMap<String, bool>,
    live: usize,
    running: usize,
    /// Ready nodes whose pod is live.
    ready: usize,
}

impl Tally {
    /// (live, running) from a pod's row: STATUS and READY as `kubectl get pods` prints them.
    fn pod_state(cells: &Cells) -> (bool, bool) {
        let status = cells.get("Status");
        let live = status != "Terminating";
        let ready = cells
            .get("Ready")
            .split_once('/')
            .is_some_and(|(a, b)| a == b && b != "0");
        (live, live && status == "Running" && ready)
    }

    /// A node's row says Ready (`Ready`, `Ready,SchedulingDisabled`), not `NotReady`.
    fn node_ready(cells: &Cells) -> bool {
        cells.get("Status").split(',').any(|s| s == "Ready")
    }

    /// Apply an update of the pod watch; return the names it touched.
    fn pods_update(&mut self, update: Update) -> Vec<String> {
        match update {
            Update::Upsert(name, cells) => {
                self.set_pod(&name, Some(Self::pod_state(&cells)));
                vec![name]
            }
            Update::Delete(name) => {
                self.set_pod(&name, None);
                vec![name]
            }
            Update::Reset(rows) => {
                let fresh: HashMap<String, (bool, bool)> = rows
                    .iter()
                    .map(|(n, c)| (n.clone(), Self::pod_state(c)))
                    .collect();
                let names: Vec<String> = self.pods.keys().chain(fresh.keys()).cloned().collect();
                for name in &names {
                    self.set_pod(name, fresh.get(name).copied());
                }
                names
            }
        }
    }

    /// Apply an update of the node watch; return the names it touched.
    fn nodes_update(&mut self, update: Update) -> Vec<String> {
        match update {
            Update::Upsert(name, cells) => {
                self.set_node(&name, Some(Self::node_ready(&cells)));
                vec![name]
            }
            Update::Delete(name) => {
                self.set_node(&name, None);
                vec![name]
            }
            Update::Reset(rows) => {
                let fresh: HashMap<String, bool> = rows
                    .iter()
                    .map(|(n, c)| (n.clone(), Self::node_ready(c)))
                    .collect();
                let names: Vec<String> = self.nodes.keys().chain(fresh.keys()).cloned().collect();
                for name in &names {
                    self.set_node(name, fresh.get(name).copied());
                }
                names
            }
        }
    }

    fn set_pod(&mut self, name: &str, new: Option<(bool, bool)>) {
        let old = self.pods.get(name).copied();
        if old == new {
            return;
        }
        let node_ready = self.nodes.get(name).copied().unwrap_or(false);
        if let Some((live, running)) = old {
            self.live -= usize::from(live);
            self.running -= usize::from(running);
            self.ready -= usize::from(live && node_ready);
        }
        match new {
            Some((live, running)) => {
                self.live += usize::from(live);
                self.running += usize::from(running);
                self.ready += usize::from(live && node_ready);
                self.pods.insert(name.to_owned(), (live, running));
            }
            None => {
                self.pods.remove(name);
            }
        }
    }

    fn set_node(&mut self, name: &str, new: Option<bool>) {
        let old = self.nodes.get(name).copied();
        if old == new {
            return;
        }
        let live = self.pods.get(name).is_some_and(|(l, _)| *l);
        self.ready -= usize::from(old == Some(true) && live);
        self.ready += usize::from(new == Some(true) && live);
        match new {
            Some(r) => {
                self.nodes.insert(name.to_owned(), r);
            }
            None => {
                self.nodes.remove(name);
            }
        }
    }

    fn is_ready(&self, name: &str) -> bool {
        self.nodes.get(name) == Some(&true) && self.pods.get(name).is_some_and(|(l, _)| *l)
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
/// many Ready nodes of the same names on the master. `pods_before`: the names of
/// our pods before the apply (a scale-down may delete them before the wait sees them).
#[allow(clippy::too_many_arguments)]
pub async fn run(
    external: &Cluster,
    master: &Cluster,
    namespace: &str,
    selector: &str,
    wanted: usize,
    pods_before: &BTreeSet<String>,
    timeout: Duration,
    events: &Events,
    cancel: &CancellationToken,
) -> Result<Summary> {
    let started = Instant::now();
    let cpu_at_start = process_cpu_seconds();
    let deadline = started + timeout;
    let node_api: Api<Node> = Api::all(master.client.clone());
    let node_selector = format!("{NODE_LABEL}={namespace}");
    // Rows of cells, not objects: a hundred bytes per event, little to parse, little to keep.
    let mut pods = tables::watch(
        external.client.clone(),
        format!("/api/v1/namespaces/{namespace}/pods"),
        selector.to_owned(),
        &["Ready", "Status"],
    );
    let mut nodes = tables::watch(
        master.client.clone(),
        "/api/v1/nodes".to_owned(),
        node_selector,
        &["Status"],
    );
    let mut tally = Tally::default();
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
    loop {
        let mut touched: Vec<String> = Vec::new();
        tokio::select! {
            update = pods.updates.recv() => match update {
                Some(u) => touched = tally.pods_update(u),
                None => return Err(Error::Api { side: Side::External, doing: "watching pods".into(), reason: "the watch ended".into() }),
            },
            update = nodes.updates.recv() => match update {
                Some(u) => touched = tally.nodes_update(u),
                None => return Err(Error::Api { side: Side::Master, doing: "watching nodes".into(), reason: "the watch ended".into() }),
            },
            _ = tick.tick() => {}
            () = cancel.cancelled() => return Err(Error::Cancelled),
        }
        if cancel.is_cancelled() {
            return Err(Error::Cancelled);
        }
        let now = SystemTime::now();
        for name in touched {
            if tally.pods.contains_key(&name) {
                pod_seen.entry(name.clone()).or_insert(now);
            }
            if tally.is_ready(&name) && !ready_seen.contains_key(&name) {
                ready_seen.insert(name.clone(), now);
                if let Some(seen) = pod_seen.get(&name)
                    && let Ok(latency) = now.duration_since(*seen)
                {
                    latencies.push(latency.as_secs_f64());
                }
            }
        }
        let (live, running, ready) = (tally.live, tally.running, tally.ready);
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
        let settled = live == wanted && tally.pods.len() == wanted;
        if running >= wanted && all_running.is_none() && settled {
            all_running = Some(started.elapsed().as_secs_f64());
        }
        if ready >= wanted && all_ready.is_none() && settled {
            all_ready = Some(started.elapsed().as_secs_f64());
        }
        if settled && running == wanted && ready == wanted {
            // A scale-down (or replaced pods) leaves Nodes whose pods are gone:
            // ours to delete when one of our pods had that name (before the
            // apply, or during this wait), or when it is dead (NotReady). A
            // Ready one no pod of ours ever ran is somebody else's live hollow
            // node (another external cluster, same namespace name): left alone.
            let stale: Vec<String> = tally
                .nodes
                .keys()
                .filter(|n| !tally.pods.contains_key(n.as_str()))
                .filter(|n| {
                    pods_before.contains(n.as_str())
                        || pod_seen.contains_key(n.as_str())
                        || tally.nodes.get(n.as_str()) != Some(&true)
                })
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
                wait_cpu_s: process_cpu_seconds()
                    .zip(cpu_at_start)
                    .map(|(end, start)| end - start),
            });
        }
        let now = Instant::now();
        if now >= deadline {
            let (pods, nodes) = snapshot(external, master, namespace, selector).await?;
            return Err(Error::Timeout {
                ready,
                wanted,
                seconds: timeout.as_secs(),
                diagnosis: diagnose::diagnose(external, namespace, &pods, &nodes).await,
            });
        }
        if now >= next_report {
            next_report = now + stall_after * 2;
            let (pods, nodes) = snapshot(external, master, namespace, selector).await?;
            let mut diagnosis = diagnose::diagnose(external, namespace, &pods, &nodes).await;
            if live != wanted || tally.pods.len() != wanted {
                diagnosis.push(format!(
                    "{} pods exist ({live} not terminating), {wanted} wanted (the ReplicationController is still adjusting)",
                    tally.pods.len()
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
    let pod_params = kube::api::ListParams::default().labels(selector);
    let pods = crate::retry::call(|| pod_api.list(&pod_params))
        .await
        .map_err(Error::api(Side::External, "listing hollow-node pods"))?;
    Ok((pods.items, hollow_nodes(master, namespace).await?))
}

/// The names of the hollow-node pods `selector` picks in `namespace` (metadata only).
pub async fn pod_names(
    external: &Cluster,
    namespace: &str,
    selector: &str,
) -> Result<BTreeSet<String>> {
    let api: Api<Pod> = Api::namespaced(external.client.clone(), namespace);
    let params = kube::api::ListParams::default().labels(selector);
    match crate::retry::call(|| api.list_metadata(&params)).await {
        Ok(list) => Ok(list
            .items
            .into_iter()
            .filter_map(|p| p.metadata.name)
            .collect()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(BTreeSet::new()),
        Err(e) => Err(Error::api(Side::External, "listing hollow-node pods")(e)),
    }
}

/// The master's Nodes that hollow nodes of `namespace` registered: those with
/// deploy's label `kubemark.dev/hollow-node=<namespace>` (never another node).
pub async fn hollow_nodes(master: &Cluster, namespace: &str) -> Result<Vec<Node>> {
    let node_api: Api<Node> = Api::all(master.client.clone());
    let params = kube::api::ListParams::default().labels(&format!("{NODE_LABEL}={namespace}"));
    Ok(crate::retry::call(|| node_api.list(&params))
        .await
        .map_err(Error::api(Side::Master, "listing hollow nodes"))?
        .items)
}
