//! `status`, which needs only the two kubeconfigs and the namespace: what
//! deploy made is found by what marks it (the hollow-node ReplicationController,
//! the hollow-node label on the master's nodes). It reads; it changes nothing.

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::{Pod, ReplicationController};
use kube::ResourceExt;
use kube::api::{Api, ListParams};

use crate::diagnose::{self, deleting, node_ready, pod_running};
use crate::error::{Error, Result, Side};
use crate::kubeconfig::Cluster;

/// One hollow node: its pod on the external cluster and the external node it runs on.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Row {
    pub hollow_node: String,
    pub pod: Option<String>,
    pub external_node: Option<String>,
    pub pod_running: bool,
    /// `None` when the node has not registered on the master.
    pub node_ready: Option<bool>,
}

/// What `status` reports.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Status {
    pub namespace: String,
    /// `spec.replicas` of the hollow-node ReplicationControllers.
    pub wanted: Option<i32>,
    pub pods: usize,
    pub running: usize,
    pub ready: usize,
    pub diagnosis: Vec<String>,
    pub rows: Vec<Row>,
    /// What clusterloader2 needs to run against the cluster as it is now.
    pub clusterloader2: crate::clusterloader2::Clusterloader2,
}

/// Hollow-node ReplicationControllers: their pods run `--morph=kubelet`.
fn is_hollow(rc: &ReplicationController) -> bool {
    let containers = rc
        .spec
        .as_ref()
        .and_then(|s| s.template.as_ref())
        .and_then(|t| t.spec.as_ref())
        .map(|s| s.containers.clone())
        .unwrap_or_default();
    containers.iter().any(|c| {
        c.command
            .iter()
            .flatten()
            .chain(c.args.iter().flatten())
            .any(|a| a == "--morph=kubelet")
    })
}

pub(crate) fn selector_of(rc: &ReplicationController) -> String {
    rc.spec
        .as_ref()
        .and_then(|s| s.selector.clone())
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

pub(crate) async fn hollow_rcs(
    external: &Cluster,
    namespace: &str,
) -> Result<Vec<ReplicationController>> {
    let api: Api<ReplicationController> = Api::namespaced(external.client.clone(), namespace);
    let all = ListParams::default();
    match crate::retry::call(|| api.list(&all)).await {
        Ok(list) => Ok(list.items.into_iter().filter(is_hollow).collect()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(Vec::new()),
        Err(e) => Err(Error::api(Side::External, "listing ReplicationControllers")(e)),
    }
}

/// Counts, diagnosis, and the map hollow node ↔ pod ↔ external node.
pub async fn status(external: &Cluster, master: &Cluster, namespace: &str) -> Result<Status> {
    let rcs = hollow_rcs(external, namespace).await?;
    let wanted =
        (!rcs.is_empty()).then(|| rcs.iter().filter_map(|r| r.spec.as_ref()?.replicas).sum());
    let mut pods: Vec<Pod> = Vec::new();
    for rc in &rcs {
        let (p, _) = crate::wait::snapshot(external, master, namespace, &selector_of(rc)).await?;
        pods.extend(p);
    }
    let nodes = crate::wait::hollow_nodes(master, namespace).await?;
    let live: Vec<&Pod> = pods.iter().filter(|p| !deleting(p)).collect();
    let names: BTreeSet<String> = live.iter().map(|p| p.name_any()).collect();
    let mut rows: Vec<Row> = live
        .iter()
        .map(|p| {
            let name = p.name_any();
            let node = nodes.iter().find(|n| n.name_any() == name);
            Row {
                hollow_node: name.clone(),
                pod: Some(name),
                external_node: p.spec.as_ref().and_then(|s| s.node_name.clone()),
                pod_running: pod_running(p),
                node_ready: node.map(node_ready),
            }
        })
        .collect();
    for n in nodes.iter().filter(|n| !names.contains(&n.name_any())) {
        rows.push(Row {
            hollow_node: n.name_any(),
            pod: None,
            external_node: None,
            pod_running: false,
            node_ready: Some(node_ready(n)),
        });
    }
    rows.sort_by(|a, b| a.hollow_node.cmp(&b.hollow_node));
    let running = live.iter().filter(|p| pod_running(p)).count();
    let ready = rows
        .iter()
        .filter(|r| r.pod.is_some() && r.node_ready == Some(true))
        .count();
    let mut diagnosis = diagnose::diagnose(external, namespace, &pods, &nodes).await;
    let orphans = rows.iter().filter(|r| r.pod.is_none()).count();
    if orphans > 0 {
        diagnosis.push(format!("{orphans} hollow node(s) on the master have no pod (left from earlier runs; destroy removes them)"));
    }
    let clusterloader2 = crate::clusterloader2::flags(
        external,
        master,
        namespace,
        ready,
        crate::clusterloader2::Ours::Read(&nodes),
    )
    .await?;
    diagnosis.extend(clusterloader2.warnings());
    Ok(Status {
        namespace: namespace.to_owned(),
        wanted,
        pods: live.len(),
        running,
        ready,
        diagnosis,
        rows,
        clusterloader2,
    })
}
