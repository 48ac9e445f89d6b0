//! The pod status: phase, conditions and container statuses, patched when they change.

use anyhow::{Context as _, Result};
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};
use serde_json::{Value, json};

use super::runtime::now;
use super::sync::{Ctr, PodWorker};

impl PodWorker {
    pub(super) fn terminal(&self) -> bool {
        matches!(self.phase(), "Succeeded" | "Failed")
    }

    pub(super) fn phase(&self) -> &'static str {
        let init_failed = self
            .ctrs
            .iter()
            .any(|c| c.init && c.done && c.exit_code != Some(0));
        if init_failed {
            return "Failed";
        }
        let main: Vec<&Ctr> = self.ctrs.iter().filter(|c| !c.init).collect();
        if !main.is_empty() && main.iter().all(|c| c.done) {
            return if main.iter().all(|c| c.exit_code == Some(0)) {
                "Succeeded"
            } else {
                "Failed"
            };
        }
        let initialized = self.ctrs.iter().filter(|c| c.init).all(|c| c.done);
        if initialized
            && main
                .iter()
                .all(|c| c.id.is_some() || c.restarts > 0 || c.done)
        {
            "Running"
        } else {
            "Pending"
        }
    }

    /// Patch the pod's status when it changed.
    pub(super) async fn report(&mut self) -> Result<()> {
        let phase = self.phase();
        let initialized = self.ctrs.iter().filter(|c| c.init).all(|c| c.done);
        let main: Vec<&Ctr> = self.ctrs.iter().filter(|c| !c.init).collect();
        let ready = phase == "Running" && main.iter().all(|c| c.ready);
        let mut conditions = Vec::new();
        for (kind, status) in [
            ("PodReadyToStartContainers", self.sandbox.is_some()),
            ("Initialized", initialized),
            ("ContainersReady", ready),
            ("Ready", ready),
            ("PodScheduled", true),
        ] {
            let entry = self
                .transitions
                .entry(kind)
                .or_insert_with(|| (status, now()));
            if entry.0 != status {
                *entry = (status, now());
            }
            let mut condition = json!({
                "type": kind,
                "status": if status { "True" } else { "False" },
                "lastProbeTime": null,
                "lastTransitionTime": entry.1,
            });
            if !status && kind != "PodReadyToStartContainers" {
                let reason = match kind {
                    "Initialized" => "ContainersNotInitialized",
                    _ => "ContainersNotReady",
                };
                condition["reason"] = json!(reason);
            }
            conditions.push(condition);
        }
        let statuses = |init: bool| -> Vec<Value> {
            self.ctrs
                .iter()
                .filter(|c| c.init == init)
                .map(|c| {
                    let mut s = json!({
                        "name": c.spec.name,
                        "image": c.spec.image.clone().unwrap_or_default(),
                        "imageID": c.image_id,
                        "ready": c.ready,
                        "started": c.state.get("running").is_some(),
                        "restartCount": c.restarts,
                        "state": c.state,
                        "lastState": c.last,
                    });
                    if let Some(id) = &c.id {
                        s["containerID"] = json!(format!("docker://{id}"));
                    } else if let Some(id) = c.state.pointer("/terminated/containerID") {
                        s["containerID"] = id.clone();
                    }
                    if init {
                        // A running init container is not "started" in the sense of a startup probe.
                        s["started"] = json!(c.state.get("running").is_some());
                    }
                    s
                })
                .collect()
        };
        let host_ip = self.shared.config.address.to_string();
        let mut status = json!({
            "phase": phase,
            "conditions": conditions,
            "hostIP": host_ip,
            "hostIPs": [{"ip": host_ip}],
            "startTime": self.start_time,
            "containerStatuses": statuses(false),
        });
        let init = statuses(true);
        if !init.is_empty() {
            status["initContainerStatuses"] = json!(init);
        }
        if let Some((_, ip)) = self.sandbox.as_ref().filter(|(_, ip)| !ip.is_empty()) {
            status["podIP"] = json!(ip);
            status["podIPs"] = json!([{ "ip": ip }]);
        }
        if let Some(error) = &self.volume_error {
            status["message"] = json!(error);
        }
        if self.reported.as_ref() == Some(&status) {
            return Ok(());
        }
        let api: Api<Pod> = Api::namespaced(
            self.client.clone(),
            &self.pod.namespace().unwrap_or_default(),
        );
        api.patch_status(
            &self.pod.name_any(),
            &PatchParams::default(),
            &Patch::Merge(json!({ "status": status })),
        )
        .await
        .context("reporting the pod's status")?;
        self.reported = Some(status);
        Ok(())
    }
}
