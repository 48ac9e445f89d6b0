//! The Nodes: registration, status, Lease and heartbeat.

use std::collections::BTreeMap;
use std::sync::Arc;

use anyhow::{Context as _, Result, anyhow};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, OwnerReference};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use tokio::sync::watch;

use super::runtime::{Shared, is_api, now, stopped};
use super::{HEARTBEAT, KUBELET_VERSION, LABEL, LEASE_SECONDS};

pub(super) fn node_status(shared: &Shared, heartbeat: &str, since: &str) -> Value {
    let c = &shared.config;
    let condition = |kind: &str, status: &str, reason: &str, message: &str| {
        json!({
            "type": kind, "status": status, "reason": reason, "message": message,
            "lastHeartbeatTime": heartbeat, "lastTransitionTime": since,
        })
    };
    let resources =
        json!({"cpu": c.cpu, "memory": c.memory, "pods": c.pods, "ephemeral-storage": "100Gi"});
    json!({"status": {
        "capacity": resources,
        "allocatable": resources,
        "conditions": [
            condition("MemoryPressure", "False", "KubeletHasSufficientMemory", "kubelet has sufficient memory available"),
            condition("DiskPressure", "False", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
            condition("PIDPressure", "False", "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
            condition("Ready", "True", "KubeletReady", "kubelet is posting ready status (kubemark-testbed node agent)"),
        ],
        "addresses": [
            {"type": "InternalIP", "address": c.address.to_string()},
        ],
        "daemonEndpoints": {"kubeletEndpoint": {"Port": 0}},
        "nodeInfo": {
            "machineID": shared.id, "systemUUID": shared.id, "bootID": shared.id,
            "kernelVersion": "", "osImage": "kubemark-testbed node agent",
            "containerRuntimeVersion": format!("docker://{}", shared.docker_version),
            "kubeletVersion": KUBELET_VERSION, "kubeProxyVersion": "",
            "operatingSystem": "linux", "architecture": std::env::consts::ARCH.replace("x86_64", "amd64").replace("aarch64", "arm64"),
        },
    }})
}

/// Create (or adopt) the Node, report its status and create its Lease; the Node's uid.
pub(super) async fn register(shared: &Shared, client: &Client, name: &str) -> Result<String> {
    let nodes: Api<Node> = Api::all(client.clone());
    let arch = std::env::consts::ARCH
        .replace("x86_64", "amd64")
        .replace("aarch64", "arm64");
    let node = Node {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            labels: Some(BTreeMap::from([
                ("kubernetes.io/hostname".to_owned(), name.to_owned()),
                ("kubernetes.io/os".to_owned(), "linux".to_owned()),
                ("kubernetes.io/arch".to_owned(), arch),
                (LABEL.to_owned(), shared.id.clone()),
            ])),
            ..Default::default()
        },
        ..Default::default()
    };
    let node = match nodes.create(&PostParams::default(), &node).await {
        Ok(node) => node,
        Err(e) if is_api(&e, 409) => nodes.get(name).await.context("reading the Node")?,
        Err(e) => return Err(e).context("creating the Node"),
    };
    let uid = node.uid().ok_or_else(|| anyhow!("the Node has no uid"))?;
    let t = now();
    nodes
        .patch_status(
            name,
            &PatchParams::default(),
            &Patch::Merge(node_status(shared, &t, &t)),
        )
        .await
        .context("reporting the Node's status")?;
    renew_lease(client, name, &uid).await?;
    Ok(uid)
}

pub(super) async fn renew_lease(client: &Client, name: &str, node_uid: &str) -> Result<()> {
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    let spec = LeaseSpec {
        holder_identity: Some(name.to_owned()),
        lease_duration_seconds: Some(LEASE_SECONDS),
        renew_time: Some(MicroTime(Timestamp::now())),
        ..Default::default()
    };
    match leases.get_opt(name).await.context("reading the Lease")? {
        Some(mut lease) => {
            lease.spec = Some(spec);
            leases
                .replace(name, &PostParams::default(), &lease)
                .await
                .context("renewing the Lease")?;
        }
        None => {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(name.to_owned()),
                    namespace: Some("kube-node-lease".into()),
                    owner_references: Some(vec![OwnerReference {
                        api_version: "v1".into(),
                        kind: "Node".into(),
                        name: name.to_owned(),
                        uid: node_uid.to_owned(),
                        ..Default::default()
                    }]),
                    ..Default::default()
                },
                spec: Some(spec),
            };
            leases
                .create(&PostParams::default(), &lease)
                .await
                .context("creating the Lease")?;
        }
    }
    Ok(())
}

/// Renew the Lease and the Ready heartbeat every [`HEARTBEAT`] until shutdown.
pub(super) async fn heartbeat(
    shared: Arc<Shared>,
    client: Client,
    name: String,
    uid: String,
    mut shutdown: watch::Receiver<bool>,
) {
    let nodes: Api<Node> = Api::all(client.clone());
    let since = now();
    loop {
        tokio::select! {
            () = stopped(&mut shutdown) => return,
            () = tokio::time::sleep(HEARTBEAT) => {}
        }
        if let Err(e) = renew_lease(&client, &name, &uid).await {
            shared.log.line(format!("node {name}: {e:#}"));
        }
        let status = node_status(&shared, &now(), &since);
        if let Err(e) = nodes
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(status))
            .await
        {
            shared
                .log
                .line(format!("node {name}: reporting its status: {e}"));
        }
    }
}
