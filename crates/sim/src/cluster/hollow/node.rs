//! The hollow kubelet: the Node it registers (labels, taints, max pods,
//! extended resources from its flags), then registration, its Lease renewed
//! and its status reported until the server rejects it.

use std::sync::Arc;

use serde_json::{Value, json};

use super::client::{CallError, client_for};
use super::{flag, klog};
use crate::Shared;
use crate::kubeconfig::Credentials;
use crate::meta;

/// What a hollow kubelet needs to run.
pub struct HollowKubelet {
    pub(super) node: String,
    pub(super) creds: Credentials,
    pub(super) node_obj: Value,
    pub(super) log: Box<dyn Fn(String) + Send + Sync>,
}

pub(super) fn node_object(pod: &Value, args: &[String], node: &str, version: &str) -> Value {
    let mut labels = json!({
        "kubernetes.io/hostname": node,
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": "amd64",
        "beta.kubernetes.io/os": "linux",
        "beta.kubernetes.io/arch": "amd64",
    });
    for pair in flag(args, "node-labels")
        .unwrap_or_default()
        .split(',')
        .filter(|p| !p.is_empty())
    {
        if let Some((k, v)) = pair.split_once('=') {
            labels[k] = json!(v);
        }
    }
    let taints: Vec<Value> = flag(args, "register-with-taints")
        .unwrap_or_default()
        .split(',')
        .filter(|t| !t.is_empty())
        .filter_map(|t| {
            let (kv, effect) = t.rsplit_once(':')?;
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            Some(json!({"key": k, "value": v, "effect": effect}))
        })
        .collect();
    let max_pods = flag(args, "max-pods").unwrap_or("110");
    let mut capacity =
        json!({"cpu": "1", "memory": "3840Mi", "pods": max_pods, "ephemeral-storage": "20Gi"});
    for pair in flag(args, "extended-resources")
        .unwrap_or_default()
        .split(',')
        .filter(|p| !p.is_empty())
    {
        if let Some((k, v)) = pair.split_once('=') {
            capacity[k] = json!(v);
        }
    }
    let ip = pod
        .pointer("/status/podIP")
        .and_then(Value::as_str)
        .unwrap_or("10.64.0.1");
    let now = meta::now_rfc3339();
    let mut spec = json!({});
    if !taints.is_empty() {
        spec["taints"] = json!(taints);
    }
    json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": node, "labels": labels, "annotations": {"node.alpha.kubernetes.io/ttl": "0"}},
        "spec": spec,
        "status": {
            "capacity": capacity,
            "allocatable": capacity,
            "conditions": super::super::node_conditions("True", &now),
            "addresses": [{"type": "InternalIP", "address": ip}, {"type": "Hostname", "address": node}],
            "nodeInfo": super::super::node_info(version),
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
        },
    })
}

/// The kubelet version a kubemark image reports: its tag when that is a version.
pub(super) fn image_version(container: &Value, fallback: &str) -> String {
    let image = container["image"].as_str().unwrap_or_default();
    match image.rsplit_once(':') {
        Some((_, tag))
            if tag.starts_with('v') && tag[1..].starts_with(|c: char| c.is_ascii_digit()) =>
        {
            tag.to_owned()
        }
        _ => fallback.to_owned(),
    }
}

impl HollowKubelet {
    pub(super) async fn run(self, shared: &Arc<Shared>) -> String {
        let HollowKubelet {
            node,
            creds,
            node_obj,
            log,
        } = self;
        let authority = creds
            .server
            .split("://")
            .nth(1)
            .unwrap_or(&creds.server)
            .trim_end_matches('/')
            .to_owned();
        if shared.cfg.unreachable.contains(&authority) {
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            let err = format!(
                "Post \\\"{}/api/v1/nodes\\\": dial tcp {authority}: i/o timeout",
                creds.server
            );
            return klog(
                'F',
                "kubelet_node_status.go:96",
                &format!(
                    "\"Unable to register node with API server\" err=\"{err}\" node=\"{node}\""
                ),
            );
        }
        let client = match client_for(shared, &creds) {
            Ok(c) => c,
            Err(why) => {
                return klog(
                    'F',
                    "hollow-node.go:250",
                    &format!("Failed to create a ClientSet: {why}. Exiting."),
                );
            }
        };
        let fatal = |what: &str, e: &CallError| {
            klog(
                'F',
                "kubelet_node_status.go:96",
                &format!("\"Unable to {what}\" err=\"{}\" node=\"{node}\"", e.text()),
            )
        };

        // Register (or, after a restart, update the node that is already there).
        match client
            .call_retrying(
                reqwest::Method::POST,
                "/api/v1/nodes",
                "application/json",
                Some(&node_obj),
            )
            .await
        {
            Ok((409, _)) => {
                let patch = json!({"metadata": {"labels": node_obj["metadata"]["labels"]}, "spec": node_obj["spec"]});
                if let Err(e) = client
                    .call_retrying(
                        reqwest::Method::PATCH,
                        &format!("/api/v1/nodes/{node}"),
                        "application/merge-patch+json",
                        Some(&patch),
                    )
                    .await
                {
                    return fatal("update node", &e);
                }
            }
            Ok(_) => {}
            Err(e) => return fatal("register node with API server", &e),
        }
        let status = json!({"status": node_obj["status"]});
        if let Err(e) = client
            .call_retrying(
                reqwest::Method::PATCH,
                &format!("/api/v1/nodes/{node}/status"),
                "application/merge-patch+json",
                Some(&status),
            )
            .await
        {
            return fatal("update node status", &e);
        }
        log(klog(
            'I',
            "kubelet_node_status.go:75",
            &format!("\"Successfully registered node\" node=\"{node}\""),
        ));

        let node_uid = match client
            .call_retrying(
                reqwest::Method::GET,
                &format!("/api/v1/nodes/{node}"),
                "",
                None,
            )
            .await
        {
            Ok((_, v)) => v
                .pointer("/metadata/uid")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
            Err(e) => return fatal("read node", &e),
        };
        let lease_path =
            format!("/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{node}");
        let lease = json!({
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": node, "namespace": "kube-node-lease",
                         "ownerReferences": [{"apiVersion": "v1", "kind": "Node", "name": node, "uid": node_uid}]},
            "spec": {"holderIdentity": node, "leaseDurationSeconds": 40, "renewTime": meta::now_rfc3339_micros()},
        });
        if let Err(e) = client
            .call_retrying(
                reqwest::Method::POST,
                "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases",
                "application/json",
                Some(&lease),
            )
            .await
        {
            return fatal("create lease", &e);
        }
        let timing = shared.cfg.timing.clone();
        let mut renew = tokio::time::interval(timing.lease_renew);
        let mut report = tokio::time::interval(timing.status_report);
        renew.tick().await;
        report.tick().await;
        loop {
            tokio::select! {
                _ = renew.tick() => {
                    let patch = json!({"spec": {"holderIdentity": node, "renewTime": meta::now_rfc3339_micros()}});
                    match client.call_retrying(reqwest::Method::PATCH, &lease_path, "application/merge-patch+json", Some(&patch)).await {
                        Err(CallError::Fatal(why)) => {
                            return klog('F', "kubelet.go:1567", &format!("\"Failed to renew lease\" err=\"{why}\" node=\"{node}\""));
                        }
                        Err(CallError::Transient(why)) => log(klog('E', "controller.go:145", &format!("\"Failed to update lease\" err=\"{why}\""))),
                        Ok(_) => {}
                    }
                }
                _ = report.tick() => {
                    let now = meta::now_rfc3339();
                    let patch = json!({"status": {"conditions": super::super::node_conditions("True", &now)}});
                    if let Err(e) = client
                        .call_retrying(reqwest::Method::PATCH, &format!("/api/v1/nodes/{node}/status"), "application/merge-patch+json", Some(&patch))
                        .await
                    {
                        log(klog('E', "kubelet_node_status.go:535", &format!("\"Error updating node status, will retry\" err=\"{}\"", e.text())));
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::arguments;
    use super::*;

    #[test]
    fn arguments_expand_the_node_name() {
        let pod = json!({"metadata": {"name": "hollow-node-abcde"}});
        let container = json!({
            "command": ["/kubemark"],
            "args": ["--morph=kubelet", "--name=$(NODE_NAME)", "--node-labels=a=b,c=d", "--register-with-taints=k=v:NoSchedule", "--max-pods=30", "--extended-resources=example.com/gpu=2"],
            "env": [{"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}]
        });
        let args = arguments(&pod, &container);
        assert_eq!(flag(&args, "name"), Some("hollow-node-abcde"));
        let node = node_object(&pod, &args, "hollow-node-abcde", "v1.33.0");
        assert_eq!(node["metadata"]["labels"]["a"], "b");
        assert_eq!(
            node["spec"]["taints"],
            json!([{"key": "k", "value": "v", "effect": "NoSchedule"}])
        );
        assert_eq!(node["status"]["capacity"]["pods"], "30");
        assert_eq!(node["status"]["capacity"]["example.com/gpu"], "2");
        assert_eq!(
            image_version(&json!({"image": "r/kubemark:v1.32.1"}), "x"),
            "v1.32.1"
        );
        assert_eq!(image_version(&json!({"image": "r/kubemark:dev"}), "x"), "x");
    }
}
