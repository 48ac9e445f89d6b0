//! `meta.k8s.io/v1` Tables for `kubectl get`: the columns a real API server
//! prints for each kind, with kubectl's pod status logic.

use serde_json::{Value, json};

use crate::meta::{self, idx};

fn col(name: &str, kind: &str, format: &str, priority: u8) -> Value {
    json!({"name": name, "type": kind, "format": format, "description": "", "priority": priority})
}

fn columns(res: usize) -> Vec<Value> {
    let name = col("Name", "string", "name", 0);
    let age = col("Age", "string", "", 0);
    match res {
        idx::NODES => vec![
            name,
            col("Status", "string", "", 0),
            col("Roles", "string", "", 0),
            age,
            col("Version", "string", "", 0),
            col("Internal-IP", "string", "", 1),
            col("External-IP", "string", "", 1),
            col("OS-Image", "string", "", 1),
            col("Kernel-Version", "string", "", 1),
            col("Container-Runtime", "string", "", 1),
        ],
        idx::PODS => vec![
            name,
            col("Ready", "string", "", 0),
            col("Status", "string", "", 0),
            col("Restarts", "string", "", 0),
            age,
            col("IP", "string", "", 1),
            col("Node", "string", "", 1),
            col("Nominated Node", "string", "", 1),
            col("Readiness Gates", "string", "", 1),
        ],
        idx::NAMESPACES => vec![name, col("Status", "string", "", 0), age],
        idx::SECRETS => vec![
            name,
            col("Type", "string", "", 0),
            col("Data", "string", "", 0),
            age,
        ],
        idx::CONFIGMAPS => vec![name, col("Data", "string", "", 0), age],
        idx::RCS => vec![
            name,
            col("Desired", "integer", "", 0),
            col("Current", "integer", "", 0),
            col("Ready", "integer", "", 0),
            age,
            col("Containers", "string", "", 1),
            col("Images", "string", "", 1),
            col("Selector", "string", "", 1),
        ],
        idx::EVENTS => vec![
            col("Last Seen", "string", "", 0),
            col("Type", "string", "", 0),
            col("Reason", "string", "", 0),
            col("Object", "string", "", 0),
            col("Message", "string", "", 0),
        ],
        _ => vec![name, age],
    }
}

fn age(obj: &Value, now: i64) -> String {
    match meta::meta_str(obj, "creationTimestamp").and_then(meta::parse_rfc3339) {
        Some(t) => meta::human_duration(now - t),
        None => "<unknown>".into(),
    }
}

fn s<'a>(v: &'a Value, pointer: &str) -> &'a str {
    v.pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_default()
}

fn count(v: &Value, pointer: &str) -> usize {
    v.pointer(pointer)
        .and_then(Value::as_object)
        .map_or(0, serde_json::Map::len)
}

fn cells(res: usize, obj: &Value, now: i64) -> Vec<Value> {
    let name = json!(meta::name(obj));
    match res {
        idx::NODES => {
            let ready = obj
                .pointer("/status/conditions")
                .and_then(Value::as_array)
                .and_then(|c| c.iter().find(|c| c["type"] == "Ready"))
                .map(|c| c["status"].as_str().unwrap_or_default().to_owned());
            let mut status = match ready.as_deref() {
                Some("True") => "Ready".to_owned(),
                _ => "NotReady".to_owned(),
            };
            if obj.pointer("/spec/unschedulable").and_then(Value::as_bool) == Some(true) {
                status.push_str(",SchedulingDisabled");
            }
            let roles: Vec<&str> = meta::labels(obj)
                .filter_map(|(k, _)| k.strip_prefix("node-role.kubernetes.io/"))
                .collect();
            let address = |kind: &str| {
                obj.pointer("/status/addresses")
                    .and_then(Value::as_array)
                    .and_then(|a| a.iter().find(|x| x["type"] == kind))
                    .and_then(|x| x["address"].as_str())
                    .unwrap_or("<none>")
                    .to_owned()
            };
            vec![
                name,
                json!(status),
                json!(if roles.is_empty() {
                    "<none>".to_owned()
                } else {
                    roles.join(",")
                }),
                json!(age(obj, now)),
                json!(s(obj, "/status/nodeInfo/kubeletVersion")),
                json!(address("InternalIP")),
                json!(address("ExternalIP")),
                json!(s(obj, "/status/nodeInfo/osImage")),
                json!(s(obj, "/status/nodeInfo/kernelVersion")),
                json!(s(obj, "/status/nodeInfo/containerRuntimeVersion")),
            ]
        }
        idx::PODS => {
            let (ready, status, restarts) = pod_status(obj, now);
            let node = s(obj, "/spec/nodeName");
            let ip = s(obj, "/status/podIP");
            vec![
                name,
                json!(ready),
                json!(status),
                json!(restarts),
                json!(age(obj, now)),
                json!(if ip.is_empty() { "<none>" } else { ip }),
                json!(if node.is_empty() { "<none>" } else { node }),
                json!("<none>"),
                json!("<none>"),
            ]
        }
        idx::NAMESPACES => vec![name, json!(s(obj, "/status/phase")), json!(age(obj, now))],
        idx::SECRETS => vec![
            name,
            json!(s(obj, "/type")),
            json!(count(obj, "/data")),
            json!(age(obj, now)),
        ],
        idx::CONFIGMAPS => vec![
            name,
            json!(count(obj, "/data") + count(obj, "/binaryData")),
            json!(age(obj, now)),
        ],
        idx::RCS => {
            let containers = obj
                .pointer("/spec/template/spec/containers")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            let join = |field: &str| {
                containers
                    .iter()
                    .filter_map(|c| c[field].as_str())
                    .collect::<Vec<_>>()
                    .join(",")
            };
            vec![
                name,
                json!(
                    obj.pointer("/spec/replicas")
                        .and_then(Value::as_i64)
                        .unwrap_or(1)
                ),
                json!(
                    obj.pointer("/status/replicas")
                        .and_then(Value::as_i64)
                        .unwrap_or(0)
                ),
                json!(
                    obj.pointer("/status/readyReplicas")
                        .and_then(Value::as_i64)
                        .unwrap_or(0)
                ),
                json!(age(obj, now)),
                json!(join("name")),
                json!(join("image")),
                json!(crate::select::rc_selector_text(obj)),
            ]
        }
        idx::EVENTS => {
            let last = s(obj, "/lastTimestamp");
            let last = meta::parse_rfc3339(last)
                .map(|t| meta::human_duration(now - t))
                .unwrap_or_else(|| "<unknown>".into());
            vec![
                json!(last),
                json!(s(obj, "/type")),
                json!(s(obj, "/reason")),
                json!(format!(
                    "{}/{}",
                    s(obj, "/involvedObject/kind").to_ascii_lowercase(),
                    s(obj, "/involvedObject/name")
                )),
                json!(s(obj, "/message")),
            ]
        }
        _ => vec![name, json!(age(obj, now))],
    }
}

/// kubectl's `printPod`: READY, STATUS and RESTARTS of a pod.
pub fn pod_status(pod: &Value, now: i64) -> (String, String, String) {
    let containers = pod
        .pointer("/spec/containers")
        .and_then(Value::as_array)
        .map_or(0, Vec::len);
    let mut reason = pod
        .pointer("/status/reason")
        .and_then(Value::as_str)
        .or_else(|| pod.pointer("/status/phase").and_then(Value::as_str))
        .unwrap_or("Pending")
        .to_owned();
    let mut restarts = 0i64;
    let mut last_restart: Option<i64> = None;
    let mut ready = 0;
    let statuses = pod
        .pointer("/status/containerStatuses")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mut initializing = false;
    for (i, c) in pod
        .pointer("/status/initContainerStatuses")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        restarts += c["restartCount"].as_i64().unwrap_or(0);
        if c.pointer("/state/terminated/exitCode")
            .and_then(Value::as_i64)
            == Some(0)
        {
            continue;
        }
        let total = pod
            .pointer("/spec/initContainers")
            .and_then(Value::as_array)
            .map_or(0, Vec::len);
        reason = match c.pointer("/state/waiting/reason").and_then(Value::as_str) {
            Some(r) if r != "PodInitializing" => format!("Init:{r}"),
            _ => format!("Init:{i}/{total}"),
        };
        initializing = true;
        break;
    }
    if !initializing {
        let mut has_running = false;
        for c in statuses.iter().rev() {
            restarts += c["restartCount"].as_i64().unwrap_or(0);
            if let Some(t) = c
                .pointer("/lastState/terminated/finishedAt")
                .and_then(Value::as_str)
                .and_then(meta::parse_rfc3339)
            {
                last_restart = Some(last_restart.map_or(t, |l| l.max(t)));
            }
            if let Some(r) = c.pointer("/state/waiting/reason").and_then(Value::as_str) {
                reason = r.to_owned();
            } else if let Some(t) = c.pointer("/state/terminated") {
                reason = t["reason"]
                    .as_str()
                    .map(str::to_owned)
                    .unwrap_or_else(|| format!("ExitCode:{}", t["exitCode"]));
            } else if c.pointer("/state/running").is_some() {
                has_running = true;
                if c["ready"].as_bool() == Some(true) {
                    ready += 1;
                }
            }
        }
        if reason == "Completed" && has_running {
            reason = "Running".into();
        }
    }
    if pod.pointer("/metadata/deletionTimestamp").is_some() {
        reason = "Terminating".into();
    }
    let restarts = match last_restart {
        Some(t) if restarts > 0 => format!("{restarts} ({} ago)", meta::human_duration(now - t)),
        _ => restarts.to_string(),
    };
    (format!("{ready}/{containers}"), reason, restarts)
}

/// What each row carries besides its cells (`includeObject`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Include {
    /// Nothing: cells only.
    None,
    /// The object's metadata (the default, what kubectl asks).
    Metadata,
    /// The whole object.
    Object,
}

impl Include {
    pub fn parse(value: Option<&str>) -> Self {
        match value {
            Some("None") => Include::None,
            Some("Object") => Include::Object,
            _ => Include::Metadata,
        }
    }
}

/// A Table of `objects`.
pub fn table(
    res: usize,
    objects: &[&Value],
    rv: u64,
    continue_token: Option<&str>,
    include: Include,
) -> Value {
    let now = meta::now_secs();
    let rows: Vec<Value> = objects
        .iter()
        .map(|obj| {
            let mut row = json!({"cells": cells(res, obj, now)});
            match include {
                Include::None => {}
                Include::Metadata => {
                    row["object"] = json!({
                        "kind": "PartialObjectMetadata",
                        "apiVersion": "meta.k8s.io/v1",
                        "metadata": obj.get("metadata").cloned().unwrap_or_default(),
                    });
                }
                Include::Object => row["object"] = (*obj).clone(),
            }
            row
        })
        .collect();
    let mut metadata = json!({"resourceVersion": rv.to_string()});
    if let Some(token) = continue_token {
        metadata["continue"] = json!(token);
    }
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": metadata,
        "columnDefinitions": columns(res),
        "rows": rows,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_status_like_kubectl() {
        let running = json!({
            "spec": {"containers": [{"name": "a"}, {"name": "b"}]},
            "status": {"phase": "Running", "containerStatuses": [
                {"name": "a", "ready": true, "restartCount": 0, "state": {"running": {}}},
                {"name": "b", "ready": true, "restartCount": 0, "state": {"running": {}}}
            ]}
        });
        assert_eq!(
            pod_status(&running, 0),
            ("2/2".into(), "Running".into(), "0".into())
        );
        let crash = json!({
            "spec": {"containers": [{"name": "a"}]},
            "status": {"phase": "Running", "containerStatuses": [
                {"name": "a", "ready": false, "restartCount": 3, "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                 "lastState": {"terminated": {"exitCode": 1, "finishedAt": "1970-01-01T00:01:40Z"}}}
            ]}
        });
        assert_eq!(
            pod_status(&crash, 160),
            (
                "0/1".into(),
                "CrashLoopBackOff".into(),
                "3 (60s ago)".into()
            )
        );
        let init = json!({
            "spec": {"initContainers": [{"name": "i"}], "containers": [{"name": "a"}]},
            "status": {"phase": "Pending", "initContainerStatuses": [{"name": "i", "restartCount": 0, "state": {"waiting": {"reason": "PodInitializing"}}}]}
        });
        assert_eq!(pod_status(&init, 0).1, "Init:0/1");
        let pending =
            json!({"spec": {"containers": [{"name": "a"}]}, "status": {"phase": "Pending"}});
        assert_eq!(pod_status(&pending, 0).1, "Pending");
    }
}
