//! Subresources served by reading: a replication controller's `scale` (also
//! what scale updates and patches answer) and a pod's `log`.

use hyper::Response;
use serde_json::{Value, json};

use super::request::Req;
use super::{Body, respond};
use crate::Shared;
use crate::meta::idx;
use crate::select;
use crate::store::ApiError;

pub(super) fn scale_of(rc: &Value) -> Value {
    let m = rc.get("metadata").cloned().unwrap_or_default();
    json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {
            "name": m.get("name"),
            "namespace": m.get("namespace"),
            "uid": m.get("uid"),
            "resourceVersion": m.get("resourceVersion"),
            "creationTimestamp": m.get("creationTimestamp"),
        },
        "spec": {"replicas": rc.pointer("/spec/replicas").cloned().unwrap_or(json!(1))},
        "status": {
            "replicas": rc.pointer("/status/replicas").cloned().unwrap_or(json!(0)),
            "selector": select::rc_selector_text(rc),
        },
    })
}

pub(super) fn logs(
    shared: &Shared,
    r: &Req,
    ns: &str,
    name: &str,
) -> Result<Response<Body>, ApiError> {
    let pod = shared
        .store
        .get(idx::PODS, ns, name)
        .ok_or_else(|| ApiError::not_found(idx::PODS, name))?;
    let containers: Vec<String> = pod
        .value
        .pointer("/spec/containers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|c| c["name"].as_str().map(str::to_owned))
        .collect();
    let container = match r.q("container") {
        Some(c) => c.to_owned(),
        None if containers.len() == 1 => containers[0].clone(),
        None => {
            return Err(ApiError::bad_request(format!(
                "a container name must be specified for pod {name}, choose one of: [{}]",
                containers.join(" ")
            )));
        }
    };
    if !containers.contains(&container) {
        return Err(ApiError::bad_request(format!(
            "container {container} is not valid for pod {name}"
        )));
    }
    let lines = shared.logs.lines(ns, name, &container);
    let tail = r
        .q("tailLines")
        .and_then(|t| t.parse::<usize>().ok())
        .unwrap_or(usize::MAX);
    let start = lines.len().saturating_sub(tail);
    let mut text = lines[start..].join("\n");
    if !text.is_empty() {
        text.push('\n');
    }
    Ok(respond(200, "text/plain", text))
}
