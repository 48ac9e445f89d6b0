//! Why hollow nodes are not Ready, grouped with counts, in the cluster's own
//! words: the scheduler's message, the image that does not pull, the last log
//! lines of a crash-looping container, the mount or config error, nodes
//! registered but NotReady.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{Event, Node, Pod};
use kube::api::{Api, ListParams, LogParams};

use crate::kubeconfig::Cluster;

/// Whether a pod is Running with every container ready.
pub fn pod_running(pod: &Pod) -> bool {
    let Some(status) = &pod.status else {
        return false;
    };
    status.phase.as_deref() == Some("Running")
        && status
            .container_statuses
            .as_ref()
            .is_some_and(|cs| !cs.is_empty() && cs.iter().all(|c| c.ready))
}

/// Whether a node's Ready condition is True.
pub fn node_ready(node: &Node) -> bool {
    node_condition(node, "Ready").is_some_and(|(status, _)| status == "True")
}

/// A node's Ready condition: (status, message).
pub fn ready_condition(node: &Node) -> Option<(String, String)> {
    node_condition(node, "Ready")
}

fn node_condition(node: &Node, kind: &str) -> Option<(String, String)> {
    node.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == kind)
        .map(|c| (c.status.clone(), c.message.clone().unwrap_or_default()))
}

pub fn deleting(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_some()
}

/// What is wrong with one pod, if anything.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Problem {
    Unschedulable(String),
    ImagePull(String),
    CrashLoop(String),
    ConfigError(String),
    Creating,
    Waiting(String),
    Pending,
}

/// What is wrong with one pod whose hollow node is not Ready, if anything.
fn problem(pod: &Pod) -> Option<Problem> {
    let status = pod.status.as_ref();
    // A container that keeps exiting shows Running between its crashes: look at restarts first.
    let crashing = status
        .and_then(|s| s.container_statuses.as_ref())
        .into_iter()
        .flatten()
        .find(|c| {
            let waiting = c
                .state
                .as_ref()
                .and_then(|s| s.waiting.as_ref())
                .and_then(|w| w.reason.as_deref());
            let failed_before = c
                .last_state
                .as_ref()
                .and_then(|s| s.terminated.as_ref())
                .is_some_and(|t| t.exit_code != 0);
            waiting == Some("CrashLoopBackOff") || (c.restart_count > 0 && failed_before)
        });
    if let Some(c) = crashing {
        return Some(Problem::CrashLoop(c.name.clone()));
    }
    if pod_running(pod) {
        return None;
    }
    if let Some(c) = status.and_then(|s| s.conditions.as_ref()).and_then(|c| {
        c.iter()
            .find(|c| c.type_ == "PodScheduled" && c.status == "False")
    }) {
        return Some(Problem::Unschedulable(
            c.message.clone().unwrap_or_else(|| "unschedulable".into()),
        ));
    }
    let statuses: Vec<_> = status
        .map(|s| {
            s.init_container_statuses
                .iter()
                .flatten()
                .chain(s.container_statuses.iter().flatten())
                .cloned()
                .collect()
        })
        .unwrap_or_default();
    for c in &statuses {
        let Some(waiting) = c.state.as_ref().and_then(|s| s.waiting.as_ref()) else {
            continue;
        };
        match waiting.reason.as_deref() {
            Some("ImagePullBackOff" | "ErrImagePull" | "InvalidImageName") => {
                return Some(Problem::ImagePull(c.image.clone()));
            }
            Some("CreateContainerConfigError") => {
                return Some(Problem::ConfigError(
                    waiting.message.clone().unwrap_or_default(),
                ));
            }
            _ => {}
        }
    }
    if statuses.iter().any(|c| {
        c.state
            .as_ref()
            .and_then(|s| s.waiting.as_ref())
            .is_some_and(|w| w.reason.as_deref() == Some("ContainerCreating"))
    }) {
        return Some(Problem::Creating);
    }
    if let Some(reason) = statuses.iter().find_map(|c| {
        c.state
            .as_ref()
            .and_then(|s| s.waiting.as_ref())
            .and_then(|w| w.reason.clone())
    }) {
        return Some(Problem::Waiting(reason));
    }
    Some(Problem::Pending)
}

pub fn plural(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// The diagnosis, a line per cause (with indented detail lines), largest first.
pub async fn diagnose(
    external: &Cluster,
    namespace: &str,
    pods: &[Pod],
    nodes: &[Node],
) -> Vec<String> {
    let live: Vec<&Pod> = pods.iter().filter(|p| !deleting(p)).collect();
    let mut groups: BTreeMap<Problem, Vec<String>> = BTreeMap::new();
    let ready_nodes: BTreeSet<&str> = nodes
        .iter()
        .filter(|n| node_ready(n))
        .filter_map(|n| n.metadata.name.as_deref())
        .collect();
    for p in &live {
        if ready_nodes.contains(p.metadata.name.as_deref().unwrap_or_default()) {
            continue;
        }
        if let Some(problem) = problem(p) {
            groups
                .entry(problem)
                .or_default()
                .push(p.metadata.name.clone().unwrap_or_default());
        }
    }
    let mut lines: Vec<(usize, Vec<String>)> = Vec::new();
    // Mount errors only show in events.
    let creating: BTreeSet<String> = groups
        .get(&Problem::Creating)
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .collect();
    if !creating.is_empty() {
        groups.remove(&Problem::Creating);
        let events: Api<Event> = Api::namespaced(external.client.clone(), namespace);
        let mut by_message: BTreeMap<String, usize> = BTreeMap::new();
        let mut explained = BTreeSet::new();
        let failed_mounts = ListParams::default().fields("reason=FailedMount");
        if let Ok(list) = crate::retry::call(|| events.list(&failed_mounts)).await {
            for e in list.items {
                let name = e.involved_object.name.clone().unwrap_or_default();
                if creating.contains(&name) && explained.insert(name) {
                    *by_message.entry(e.message.unwrap_or_default()).or_default() += 1;
                }
            }
        }
        for (message, n) in by_message {
            lines.push((
                n,
                vec![format!(
                    "{} FailedMount: {message}",
                    plural(n, "pod", "pods")
                )],
            ));
        }
        let rest = creating.len() - explained.len();
        if rest > 0 {
            lines.push((
                rest,
                vec![format!("{} ContainerCreating", plural(rest, "pod", "pods"))],
            ));
        }
    }
    for (problem, names) in &groups {
        let n = names.len();
        let pods_word = plural(n, "pod", "pods");
        let entry = match problem {
            Problem::Unschedulable(message) => {
                vec![format!("{pods_word} Unschedulable: {message}")]
            }
            Problem::ImagePull(image) => vec![format!(
                "{pods_word} ImagePullBackOff: image {image} cannot be pulled"
            )],
            Problem::ConfigError(message) => {
                vec![format!("{pods_word} CreateContainerConfigError: {message}")]
            }
            Problem::Waiting(reason) => vec![format!("{pods_word} waiting: {reason}")],
            Problem::Pending => vec![format!("{pods_word} Pending")],
            Problem::Creating => vec![format!("{pods_word} ContainerCreating")],
            Problem::CrashLoop(container) => {
                let sample = &names[0];
                let api: Api<Pod> = Api::namespaced(external.client.clone(), namespace);
                let params = |previous: bool| LogParams {
                    container: Some(container.clone()),
                    tail_lines: Some(5),
                    previous,
                    ..LogParams::default()
                };
                let (previous, current) = (params(true), params(false));
                let logs = match crate::retry::call(|| api.logs(sample, &previous)).await {
                    Ok(l) if !l.trim().is_empty() => l,
                    _ => crate::retry::call(|| api.logs(sample, &current))
                        .await
                        .unwrap_or_default(),
                };
                let mut entry = vec![format!(
                    "{pods_word} CrashLoopBackOff (container {container} keeps exiting); the last lines of {sample}:"
                )];
                entry.extend(
                    logs.lines()
                        .filter(|l| !l.trim().is_empty())
                        .map(|l| format!("    {l}")),
                );
                entry
            }
        };
        lines.push((n, entry));
    }
    let pod_names: BTreeSet<&str> = live
        .iter()
        .filter_map(|p| p.metadata.name.as_deref())
        .collect();
    let not_ready: Vec<&Node> = nodes
        .iter()
        .filter(|n| {
            pod_names.contains(n.metadata.name.as_deref().unwrap_or_default()) && !node_ready(n)
        })
        .collect();
    if !not_ready.is_empty() {
        let sample = not_ready[0];
        let why = node_condition(sample, "Ready")
            .map(|(s, m)| format!("Ready={s}: {m}"))
            .unwrap_or_else(|| "no Ready condition".into());
        lines.push((
            not_ready.len(),
            vec![format!(
                "{} registered but NotReady (e.g. {}: {why})",
                plural(not_ready.len(), "node", "nodes"),
                sample.metadata.name.clone().unwrap_or_default()
            )],
        ));
    }
    let registered: BTreeSet<&str> = nodes
        .iter()
        .filter_map(|n| n.metadata.name.as_deref())
        .collect();
    let unregistered = live
        .iter()
        .filter(|p| {
            pod_running(p)
                && problem(p).is_none()
                && !registered.contains(p.metadata.name.as_deref().unwrap_or_default())
        })
        .count();
    if unregistered > 0 {
        lines.push((
            unregistered,
            vec![format!(
                "{} Running, their nodes not registered on the master yet",
                plural(unregistered, "pod", "pods")
            )],
        ));
    }
    lines.sort_by_key(|l| std::cmp::Reverse(l.0));
    lines.into_iter().flat_map(|(_, l)| l).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(v: serde_json::Value) -> Pod {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn a_container_that_keeps_restarting_is_a_crash_loop_even_while_running() {
        let restarting = pod(
            serde_json::json!({"metadata": {"name": "d"}, "status": {"phase": "Running", "containerStatuses": [
            {"name": "hollow-kubelet", "image": "i", "imageID": "", "ready": true, "restartCount": 3, "state": {"running": {}},
             "lastState": {"terminated": {"exitCode": 255, "reason": "Error"}}}]}}),
        );
        assert_eq!(
            problem(&restarting),
            Some(Problem::CrashLoop("hollow-kubelet".into()))
        );
    }

    #[test]
    fn problems_are_classified() {
        let unschedulable = pod(
            serde_json::json!({"metadata": {"name": "a"}, "status": {"phase": "Pending", "conditions": [
            {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": "0/3 nodes are available: 3 Insufficient cpu."}]}}),
        );
        assert_eq!(
            problem(&unschedulable),
            Some(Problem::Unschedulable(
                "0/3 nodes are available: 3 Insufficient cpu.".into()
            ))
        );
        let pull = pod(
            serde_json::json!({"metadata": {"name": "b"}, "status": {"phase": "Pending", "containerStatuses": [
            {"name": "k", "image": "r/kubemark:x", "imageID": "", "ready": false, "restartCount": 0, "state": {"waiting": {"reason": "ImagePullBackOff"}}}]}}),
        );
        assert_eq!(
            problem(&pull),
            Some(Problem::ImagePull("r/kubemark:x".into()))
        );
        let running = pod(
            serde_json::json!({"metadata": {"name": "c"}, "status": {"phase": "Running", "containerStatuses": [
            {"name": "k", "image": "i", "imageID": "", "ready": true, "restartCount": 0, "state": {"running": {}}}]}}),
        );
        assert!(pod_running(&running));
        assert_eq!(problem(&running), None);
    }
}
