//! What runs in a container. A kubemark container (`--morph=kubelet`) behaves
//! like a hollow node: it reads `--kubeconfig` from the pod's mounted volume,
//! connects to that kubeconfig's server with its credentials as a real HTTPS
//! client, registers a Node named `--name` (labels, taints, max pods, extended
//! resources from its flags), renews its Lease and reports status. When it
//! cannot (unreadable kubeconfig, unreachable server, rejected credentials) it
//! exits with a log line saying why. `--morph=proxy` checks its kubeconfig and
//! runs. Anything else runs until the pod goes.
//!
//! Hollow nodes with identical credentials share one HTTP client (one
//! connection pool, at most 64 requests in flight): a modelling shortcut.
//!
//! Here: a container's arguments and what its process does; the API client
//! is in `client`, the hollow kubelet (its Node, registration, Lease and
//! status loop) in `node`.

mod client;
mod node;

use std::sync::Arc;

use serde_json::Value;

use super::kubelet::read_mounted;
use crate::Shared;
use crate::kubeconfig;
use crate::meta;

pub use client::{Client, registry_client};
pub use node::HollowKubelet;
use node::{image_version, node_object};

/// klog's line prefix: `E1125 22:37:36.000000       1 file.go:1] `.
fn klog(level: char, file: &str, message: &str) -> String {
    let stamp = jiff::Timestamp::now().strftime("%m%d %H:%M:%S%.6f");
    format!("{level}{stamp}       1 {file}] {message}")
}

/// The container's arguments (command then args) with `$(VAR)` expanded from its env.
fn arguments(pod: &Value, container: &Value) -> Vec<String> {
    let mut env = std::collections::HashMap::new();
    for e in container["env"].as_array().into_iter().flatten() {
        let name = e["name"].as_str().unwrap_or_default().to_owned();
        let value = if let Some(v) = e["value"].as_str() {
            v.to_owned()
        } else if let Some(path) = e
            .pointer("/valueFrom/fieldRef/fieldPath")
            .and_then(Value::as_str)
        {
            pod.pointer(&format!("/{}", path.replace('.', "/")))
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned()
        } else {
            continue;
        };
        env.insert(name, value);
    }
    container["command"]
        .as_array()
        .into_iter()
        .flatten()
        .chain(container["args"].as_array().into_iter().flatten())
        .filter_map(Value::as_str)
        .map(|a| {
            let mut out = a.to_owned();
            for (k, v) in &env {
                out = out.replace(&format!("$({k})"), v);
            }
            out
        })
        .collect()
}

fn flag<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    let prefix = format!("--{name}=");
    args.iter().rev().find_map(|a| a.strip_prefix(&prefix))
}

/// A container's process, prepared from the pod and container specs so that
/// running it holds none of them (10,000 pending processes would otherwise
/// keep 10,000 copies of their pods alive).
pub enum Process {
    /// Runs until the pod goes.
    Forever,
    /// Exits at once with this log line.
    Exit(String),
    /// A hollow kubelet: registers and heartbeats.
    Kubelet(Box<HollowKubelet>),
}

/// Absolute paths in a container's arguments (`--flag=/path`, `auth=/path`)
/// that fall under one of its secret or configmap volume mounts.
fn mounted_paths(pod: &Value, container: &Value, args: &[String]) -> Vec<String> {
    let volumes = pod
        .pointer("/spec/volumes")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mounts: Vec<String> = container["volumeMounts"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|m| {
            volumes.iter().any(|v| {
                v["name"] == m["name"]
                    && (v.get("secret").is_some() || v.get("configMap").is_some())
            })
        })
        .filter_map(|m| {
            m["mountPath"]
                .as_str()
                .map(|p| p.trim_end_matches('/').to_owned())
        })
        .collect();
    let mut out = Vec::new();
    for arg in args {
        for token in
            arg.split(|c: char| c.is_whitespace() || matches!(c, '=' | '&' | '"' | '\'' | '?'))
        {
            if token.starts_with('/')
                && mounts.iter().any(|m| token.starts_with(&format!("{m}/")))
                && !out.iter().any(|p| p == token)
            {
                out.push(token.to_owned());
            }
        }
    }
    out
}

/// Read a container's flags and files; decide what its process does.
pub fn prepare(shared: &Arc<Shared>, pod: &Value, container: &Value) -> Process {
    let args = arguments(pod, container);
    let (ns, pod_name) = (meta::namespace(pod).to_owned(), meta::name(pod).to_owned());
    let cname = container["name"].as_str().unwrap_or_default().to_owned();
    let logs = Arc::clone(shared);
    let log = move |line: String| logs.logs.append(&ns, &pod_name, &cname, line);
    match flag(&args, "morph") {
        Some("kubelet") => {
            let node = flag(&args, "name")
                .unwrap_or_else(|| meta::name(pod))
                .to_owned();
            let path = flag(&args, "kubeconfig").unwrap_or("/kubeconfig/kubelet.kubeconfig");
            log(klog(
                'I',
                "hollow-node.go:227",
                &format!("Starting hollow kubelet, node name {node}"),
            ));
            match read_mounted(shared, pod, container, path)
                .and_then(|bytes| kubeconfig::parse(&bytes))
            {
                Ok(creds) => {
                    let version = image_version(container, &shared.cfg.version);
                    Process::Kubelet(Box::new(HollowKubelet {
                        node_obj: node_object(pod, &args, &node, &version),
                        node,
                        creds,
                        log: Box::new(log),
                    }))
                }
                Err(why) => Process::Exit(klog(
                    'F',
                    "hollow-node.go:244",
                    &format!(
                        "Failed to create a ClientConfig: error while loading kubeconfig from file {path}: {why}. Exiting."
                    ),
                )),
            }
        }
        Some("proxy") => {
            let path = flag(&args, "kubeconfig").unwrap_or("/kubeconfig/kubeproxy.kubeconfig");
            match read_mounted(shared, pod, container, path)
                .and_then(|bytes| kubeconfig::parse(&bytes))
            {
                Err(why) => Process::Exit(klog(
                    'F',
                    "hollow-node.go:255",
                    &format!(
                        "Failed to create a ClientConfig: error while loading kubeconfig from file {path}: {why}. Exiting."
                    ),
                )),
                Ok(creds) => {
                    log(klog(
                        'I',
                        "hollow-node.go:298",
                        &format!("Starting hollow proxy against {}", creds.server),
                    ));
                    Process::Forever
                }
            }
        }
        _ => {
            // Other containers (node-problem-detector, anything): the files their
            // flags name on secret and configmap volumes must exist.
            for path in mounted_paths(pod, container, &args) {
                if let Err(why) = read_mounted(shared, pod, container, &path) {
                    return Process::Exit(klog(
                        'F',
                        "main.go:43",
                        &format!("failed to load {path}: {why}"),
                    ));
                }
            }
            Process::Forever
        }
    }
}

impl Process {
    /// Run until the process exits; the return is its last log line.
    pub async fn run(self, shared: &Arc<Shared>) -> String {
        match self {
            Process::Forever => std::future::pending().await,
            Process::Exit(line) => line,
            Process::Kubelet(k) => k.run(shared).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn files_named_in_arguments_are_found() {
        let pod = json!({"spec": {"volumes": [
            {"name": "kubeconfig-volume", "secret": {"secretName": "kubeconfig"}},
            {"name": "kernelmonitorconfig-volume", "configMap": {"name": "node-configmap"}},
            {"name": "logs-volume", "hostPath": {"path": "/var/log"}}]}});
        let container = json!({"volumeMounts": [
            {"name": "kubeconfig-volume", "mountPath": "/kubeconfig"},
            {"name": "kernelmonitorconfig-volume", "mountPath": "/config"},
            {"name": "logs-volume", "mountPath": "/var/log"}]});
        let npd = vec![
            "/bin/sh".to_owned(),
            "-c".to_owned(),
            "/node-problem-detector --system-log-monitors=/config/kernel.monitor --apiserver-override=\"https://10.0.0.1:443?inClusterConfig=false&auth=/kubeconfig/npd.kubeconfig\" --alsologtostderr 1>>/var/log/npd-$(NODE_NAME).log 2>&1".to_owned(),
        ];
        assert_eq!(
            mounted_paths(&pod, &container, &npd),
            ["/config/kernel.monitor", "/kubeconfig/npd.kubeconfig"]
        );
    }
}
