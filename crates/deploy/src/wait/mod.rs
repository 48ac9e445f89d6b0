//! Wait, with watches and never a polling loop, until the hollow-node pods run
//! on the external cluster and their Nodes are Ready on the master. The state
//! is a pure fold of the watches' row updates (`tally.rs`); this loop feeds
//! it, reports progress and explains stalls as they happen. Stale Nodes of
//! pods that went away (a scale-down) are named by the fold and deleted after
//! the wait, as a step of their own (`stale.rs`).

mod stale;
pub mod tally;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::Api;

pub use stale::delete_stale;
use tally::{Input, Tally};

use crate::diagnose;
use crate::error::{Error, Result, Side};
use crate::event::{CancellationToken, Event, Events};
use crate::kubeconfig::Cluster;
use crate::plan::NODE_LABEL;
use crate::tables;

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

/// The wait's end: its summary, and the Nodes that no pod of ours runs and
/// that are ours to delete.
#[derive(Debug, Clone, PartialEq)]
pub struct Waited {
    pub summary: Summary,
    pub stale: Vec<String>,
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
) -> Result<Waited> {
    let started = Instant::now();
    let deadline = started + timeout;
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
        format!("{NODE_LABEL}={namespace}"),
        &["Status"],
    );
    let mut tally = Tally::new(wanted);
    let stall_after = Duration::from_secs(15)
        .min(timeout / 4)
        .max(Duration::from_secs(2));
    let mut last_change = Instant::now();
    let mut next_report = last_change + stall_after;
    let mut reported_once = false;
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        let input = tokio::select! {
            update = pods.updates.recv() => match update {
                Some(u) => Some(Input::Pods(u)),
                None => return Err(Error::Api { side: Side::External, doing: "watching pods".into(), reason: "the watch ended".into() }),
            },
            update = nodes.updates.recv() => match update {
                Some(u) => Some(Input::Nodes(u)),
                None => return Err(Error::Api { side: Side::Master, doing: "watching nodes".into(), reason: "the watch ended".into() }),
            },
            _ = tick.tick() => None,
            () = cancel.cancelled() => return Err(Error::Cancelled),
        };
        if cancel.is_cancelled() {
            return Err(Error::Cancelled);
        }
        let changed = input.is_some_and(|input| tally.fold(input, started.elapsed()));
        let counts = tally.counts();
        if changed || !reported_once {
            reported_once = true;
            last_change = Instant::now();
            next_report = last_change + stall_after;
            events.emit(Event::Progress {
                running: counts.running,
                ready: counts.ready,
                wanted,
            });
        }
        if tally.done() {
            let timings = tally.timings(started.elapsed());
            return Ok(Waited {
                summary: Summary {
                    wanted,
                    all_running_s: timings.all_running.as_secs_f64(),
                    all_ready_s: timings.all_ready.as_secs_f64(),
                    registration_p50_s: timings.registration_p50,
                    registration_p99_s: timings.registration_p99,
                    stale_nodes_deleted: 0,
                },
                stale: tally.stale_nodes(pods_before),
            });
        }
        let now = Instant::now();
        if now >= deadline {
            let (pods, nodes) = snapshot(external, master, namespace, selector).await?;
            return Err(Error::Timeout {
                ready: counts.ready,
                wanted,
                seconds: timeout.as_secs(),
                diagnosis: diagnose::diagnose(external, namespace, &pods, &nodes).await,
            });
        }
        if now >= next_report {
            next_report = now + stall_after * 2;
            let mut diagnosis = stall_diagnosis(external, master, namespace, &tally).await;
            if !tally.settled() {
                diagnosis.push(format!(
                    "{} pods exist ({} not terminating), {wanted} wanted (the ReplicationController is still adjusting)",
                    counts.pods, counts.live
                ));
            }
            events.emit(Event::Stalled {
                seconds: last_change.elapsed().as_secs(),
                diagnosis,
            });
        }
    }
}

/// How many of the pods (and Nodes) that hold the wait up a stall report
/// reads: the watches already know which they are; a few say why.
const SAMPLE: usize = 20;

/// Why the wait is stalled, from what the row watches hold and a sample of
/// the objects they name: a stalled bring-up of thousands of nodes costs a
/// few reads, not a list of every pod.
async fn stall_diagnosis(
    external: &Cluster,
    master: &Cluster,
    namespace: &str,
    tally: &Tally,
) -> Vec<String> {
    let laggards = tally.laggards();
    let pod_api: Api<Pod> = Api::namespaced(external.client.clone(), namespace);
    let node_api: Api<Node> = Api::all(master.client.clone());
    let mut pods = Vec::new();
    for name in laggards.waiting.iter().take(SAMPLE) {
        if let Ok(Some(p)) = crate::retry::call(|| pod_api.get_opt(name)).await {
            pods.push(p);
        }
    }
    let mut lines = diagnose::diagnose(external, namespace, &pods, &[]).await;
    if laggards.waiting.len() > pods.len() && !pods.is_empty() {
        lines.insert(
            0,
            format!(
                "{} pods not Running yet; what a sample of {} of them says:",
                laggards.waiting.len(),
                pods.len()
            ),
        );
    }
    if let Some(name) = laggards.not_ready.first() {
        let why = match crate::retry::call(|| node_api.get_opt(name)).await {
            Ok(Some(n)) => diagnose::ready_condition(&n)
                .map(|(s, m)| format!("Ready={s}: {m}"))
                .unwrap_or_else(|| "no Ready condition".into()),
            _ => "gone since".into(),
        };
        lines.push(format!(
            "{} registered but NotReady (e.g. {name}: {why})",
            diagnose::plural(laggards.not_ready.len(), "node", "nodes")
        ));
    }
    if laggards.unregistered > 0 {
        lines.push(format!(
            "{} Running, their nodes not registered on the master yet",
            diagnose::plural(laggards.unregistered, "pod", "pods")
        ));
    }
    lines
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
