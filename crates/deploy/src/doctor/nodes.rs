//! The doctor's checks of the master's Nodes: hollow-node names that are not
//! this deploy's, NotReady Nodes, and hollow-node pods stuck under a NotReady
//! Node (`--repair` deletes those pods and Nodes, and nothing else).

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::{Node, Pod, ReplicationController};
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams, Preconditions};

use super::{Finding, Found, Patient, Severity};
use crate::diagnose::node_ready;
use crate::error::{Error, Result, Side};
use crate::plan::NODE_LABEL;

pub(super) fn master_node_findings(
    nodes: &[Node],
    namespace: &str,
    rc_names: &[String],
) -> Vec<Finding> {
    let mut found = Vec::new();
    let prefixes: Vec<String> = if rc_names.is_empty() {
        vec!["hollow-node-".to_owned()]
    } else {
        rc_names.iter().map(|n| format!("{n}-")).collect()
    };
    let label_of = |n: &Node| n.labels().get(NODE_LABEL).cloned();
    let mut foreign: Vec<String> = nodes
        .iter()
        .filter(|n| {
            prefixes
                .iter()
                .any(|p| n.name_any().starts_with(p.as_str()))
        })
        .filter(|n| label_of(n).as_deref() != Some(namespace))
        .map(|n| match label_of(n) {
            Some(other) => format!("{} (deploy's, namespace {other})", n.name_any()),
            None => format!("{} (not deploy's)", n.name_any()),
        })
        .collect();
    foreign.sort();
    if !foreign.is_empty() {
        found.push(Finding {
            check: "master-nodes",
            severity: Severity::Warning,
            what: format!(
                "{} Node(s) on the master have hollow-node names but are not this deploy's: {}{}",
                foreign.len(),
                foreign.iter().take(5).cloned().collect::<Vec<_>>().join(", "),
                if foreign.len() > 5 { ", ..." } else { "" }
            ),
            fix: "a hollow node of this deploy with one of these names would take over or fight that Node: if they are left from an old run, delete them (`kubectl delete node NAME`); deploy and destroy never touch them".into(),
        });
    }
    let mut not_ready: Vec<String> = nodes
        .iter()
        .filter(|n| !node_ready(n))
        .filter(|n| label_of(n).as_deref() != Some(namespace))
        .map(ResourceExt::name_any)
        .collect();
    not_ready.sort();
    if !not_ready.is_empty() {
        found.push(Finding {
            check: "master-nodes",
            severity: Severity::Warning,
            what: format!(
                "{} Node(s) on the master that are not this deploy's hollow nodes are NotReady: {}{}",
                not_ready.len(),
                not_ready.iter().take(5).cloned().collect::<Vec<_>>().join(", "),
                if not_ready.len() > 5 { ", ..." } else { "" }
            ),
            fix: "tests that count nodes or wait for all to be Ready will wait on them: delete the ones that are gone, or bring them back".into(),
        });
    }
    found
}

/// When the Node's Ready condition last changed, if it is not True.
fn not_ready_since(node: &Node) -> Option<Option<jiff::Timestamp>> {
    let ready = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "Ready"));
    match ready {
        Some(c) if c.status == "True" => None,
        Some(c) => Some(c.last_transition_time.as_ref().map(|t| t.0)),
        None => Some(None),
    }
}

pub(super) async fn stuck(
    p: &Patient<'_>,
    ours: &[&Node],
    rcs: &[&ReplicationController],
    repaired: &mut Vec<String>,
) -> Result<Found> {
    let pods_api: Api<Pod> = Api::namespaced(p.external.client.clone(), p.namespace);
    // Only pods a ReplicationController of deploy's controls (by UID): an RC
    // somebody else made from the same template selects the same labels.
    let uids: BTreeSet<String> = rcs.iter().filter_map(|rc| rc.uid()).collect();
    let mut pods: Vec<Pod> = Vec::new();
    for rc in rcs {
        let params = ListParams::default().labels(&crate::status::selector_of(rc));
        let list = crate::retry::call(|| pods_api.list(&params))
            .await
            .map_err(Error::api(Side::External, "listing hollow-node pods"))?;
        pods.extend(list.items.into_iter().filter(|p| {
            p.owner_references()
                .iter()
                .any(|o| o.controller == Some(true) && uids.contains(&o.uid))
        }));
    }
    pods.sort_by_key(ResourceExt::name_any);
    pods.dedup_by_key(|p| p.name_any());
    let now = jiff::Timestamp::now();
    let grace = jiff::SignedDuration::try_from(p.grace).unwrap_or(jiff::SignedDuration::MAX);
    let mut found = Vec::new();
    let nodes_api: Api<Node> = Api::all(p.master.client.clone());
    for pod in pods.iter().filter(|pod| {
        pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
            && pod.metadata.deletion_timestamp.is_none()
    }) {
        let name = pod.name_any();
        let Some(node) = ours.iter().find(|n| n.name_any() == name) else {
            continue;
        };
        let Some(since) = not_ready_since(node) else {
            continue;
        };
        let age = since.map(|t| now.duration_since(t));
        if age.is_some_and(|a| a < grace) {
            continue;
        }
        let for_how_long = age.map_or_else(
            || "with no Ready condition".to_owned(),
            |a| format!("NotReady for {}s", a.as_secs()),
        );
        if p.repair {
            if p.cancel.is_cancelled() {
                return Err(Error::Cancelled);
            }
            let uid = |uid: Option<String>| DeleteParams {
                preconditions: Some(Preconditions {
                    uid,
                    resource_version: None,
                }),
                ..DeleteParams::default()
            };
            let pod_params = uid(pod.uid());
            match crate::retry::call(|| pods_api.delete(&name, &pod_params)).await {
                Ok(_) => repaired.push(format!("Pod {name}")),
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => {
                    found.push(could_not(&name, "pod", &e));
                    continue;
                }
            }
            let node_params = uid(node.uid());
            match crate::retry::call(|| nodes_api.delete(&name, &node_params)).await {
                Ok(_) => repaired.push(format!("Node {name}")),
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => found.push(could_not(&name, "Node", &e)),
            }
            continue;
        }
        found.push(Finding {
            check: "stuck",
            severity: Severity::Problem,
            what: format!(
                "pod {name} is Running but its Node has been {for_how_long} (kubernetes#60035): the hollow kubelet is wedged, and the node counts as capacity that is not there"
            ),
            fix: "`cargo xtask deploy doctor --repair` deletes such pods (their ReplicationController replaces them) and their Nodes".into(),
        });
    }
    Ok(Ok(found))
}

/// A repair that did not happen: a problem, with why (409: it changed since
/// it was read, and was left).
fn could_not(name: &str, what: &str, e: &kube::Error) -> Finding {
    Finding {
        check: "stuck",
        severity: Severity::Problem,
        what: format!(
            "the {what} {name} was not deleted: {}",
            crate::error::describe(e)
        ),
        fix: "run `cargo xtask deploy doctor --repair` again: it looks afresh".into(),
    }
}
