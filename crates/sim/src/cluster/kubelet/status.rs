//! The pod status a kubelet publishes: each container's state, readiness and
//! restarts, the pod's phase, IPs and conditions, and its events.

use std::sync::Arc;

use serde_json::{Value, json};

use super::super::scheduler::set_condition;
use super::super::{is_deleting, record_event};
use crate::Shared;
use crate::meta::{self, idx};

/// What a container is doing, as the pod status shows it.
#[derive(Debug, Clone)]
pub(super) struct Container {
    pub(super) name: String,
    pub(super) image: String,
    pub(super) restarts: u32,
    pub(super) state: Value,
    pub(super) last_state: Value,
    pub(super) ready: bool,
    pub(super) started_at: Option<String>,
}

pub(super) fn waiting(reason: &str, message: Option<&str>) -> Value {
    match message {
        Some(m) => json!({"waiting": {"reason": reason, "message": m}}),
        None => json!({"waiting": {"reason": reason}}),
    }
}

pub(super) fn containers_of(pod: &Value, field: &str) -> Vec<Value> {
    pod.pointer(&format!("/spec/{field}"))
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
}

pub(super) struct PodRun {
    pub(super) shared: Arc<Shared>,
    pub(super) ns: String,
    pub(super) name: String,
    pub(super) uid: String,
    pub(super) node: String,
    pub(super) ip: String,
    pub(super) host_ip: String,
    pub(super) started: String,
    pub(super) init: Vec<Container>,
    pub(super) containers: Vec<Container>,
    pub(super) initialized: bool,
}

impl PodRun {
    pub(super) fn current(&self) -> Option<Value> {
        let pod = self.shared.store.get(idx::PODS, &self.ns, &self.name)?;
        (meta::meta_str(&pod.value, "uid") == Some(self.uid.as_str()) && !is_deleting(&pod.value))
            .then(|| pod.value.clone())
    }

    pub(super) fn event(&self, pod: &Value, kind: &str, reason: &str, message: &str) {
        record_event(
            &self.shared,
            pod,
            kind,
            reason,
            message,
            "kubelet",
            Some(&self.node),
        );
    }

    fn container_status(c: &Container) -> Value {
        let mut s = json!({
            "name": c.name,
            "image": c.image,
            "imageID": format!("{}@sha256:{:064x}", c.image.split(':').next().unwrap_or_default(), 0),
            "ready": c.ready,
            "restartCount": c.restarts,
            "started": c.state.get("running").is_some(),
            "state": c.state,
        });
        if c.state.get("running").is_some() || c.state.get("terminated").is_some() {
            s["containerID"] = json!(format!(
                "containerd://{:064x}",
                c.name.len() as u64 + u64::from(c.restarts)
            ));
        }
        if !c.last_state.is_null() {
            s["lastState"] = c.last_state.clone();
        } else {
            s["lastState"] = json!({});
        }
        s
    }

    /// Write the pod's status from the containers' states.
    pub(super) fn publish(&self) {
        let all_ready = !self.containers.is_empty() && self.containers.iter().all(|c| c.ready);
        let running = self
            .containers
            .iter()
            .any(|c| c.state.get("running").is_some() || c.restarts > 0);
        let phase = if running { "Running" } else { "Pending" };
        let now = meta::now_rfc3339();
        let tf = |b: bool| if b { "True" } else { "False" };
        let mut status = json!({
            "phase": phase,
            "hostIP": self.host_ip,
            "hostIPs": [{"ip": self.host_ip}],
            "startTime": self.started,
            "qosClass": "Burstable",
            "containerStatuses": self.containers.iter().map(Self::container_status).collect::<Vec<_>>(),
        });
        if self.initialized
            || self
                .containers
                .iter()
                .any(|c| c.state.get("running").is_some())
        {
            status["podIP"] = json!(self.ip);
            status["podIPs"] = json!([{"ip": self.ip}]);
        }
        if !self.init.is_empty() {
            status["initContainerStatuses"] = json!(
                self.init
                    .iter()
                    .map(Self::container_status)
                    .collect::<Vec<_>>()
            );
        }
        let not_ready_reason =
            |names: Vec<&str>| format!("containers with unready status: [{}]", names.join(" "));
        let unready: Vec<&str> = self
            .containers
            .iter()
            .filter(|c| !c.ready)
            .map(|c| c.name.as_str())
            .collect();
        let conditions = [
            json!({"type": "PodReadyToStartContainers", "status": tf(self.initialized), "lastProbeTime": null, "lastTransitionTime": now}),
            json!({"type": "Initialized", "status": tf(self.initialized), "lastProbeTime": null, "lastTransitionTime": now}),
            if all_ready {
                json!({"type": "Ready", "status": "True", "lastProbeTime": null, "lastTransitionTime": now})
            } else {
                json!({"type": "Ready", "status": "False", "reason": "ContainersNotReady", "message": not_ready_reason(unready.clone()), "lastProbeTime": null, "lastTransitionTime": now})
            },
            if all_ready {
                json!({"type": "ContainersReady", "status": "True", "lastProbeTime": null, "lastTransitionTime": now})
            } else {
                json!({"type": "ContainersReady", "status": "False", "reason": "ContainersNotReady", "message": not_ready_reason(unready), "lastProbeTime": null, "lastTransitionTime": now})
            },
        ];
        let _ = self
            .shared
            .store
            .modify(idx::PODS, &self.ns, &self.name, None, |pod| {
                if meta::meta_str(pod, "uid") != Some(self.uid.as_str()) {
                    return Err(crate::store::ApiError::conflict(
                        idx::PODS,
                        &self.name,
                        "uid changed",
                    ));
                }
                let scheduled = pod
                    .pointer("/status/conditions")
                    .and_then(Value::as_array)
                    .and_then(|c| c.iter().find(|c| c["type"] == "PodScheduled"))
                    .cloned();
                let old_conditions = pod.pointer("/status/conditions").cloned();
                let mut next = json!({"status": status});
                if let Some(old) = old_conditions {
                    next["status"]["conditions"] = old;
                }
                for c in conditions {
                    set_condition(&mut next, c);
                }
                if let Some(s) = scheduled {
                    set_condition(&mut next, s);
                }
                pod["status"] = next["status"].take();
                Ok(())
            });
    }

    pub(super) fn all_waiting(&mut self, reason: &str, message: Option<&str>) {
        for c in self.init.iter_mut().chain(self.containers.iter_mut()) {
            c.state = waiting(reason, message);
            c.ready = false;
        }
    }
}
