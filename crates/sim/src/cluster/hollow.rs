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

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::Semaphore;

use super::kubelet::read_mounted;
use super::lock;
use crate::Shared;
use crate::kubeconfig::{self, Credentials};
use crate::meta;

/// An API client for one set of credentials.
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
    limit: Arc<Semaphore>,
}

/// A client for the image registry checks.
pub fn registry_client() -> &'static reqwest::Client {
    static CLIENT: OnceLock<reqwest::Client> = OnceLock::new();
    CLIENT.get_or_init(|| {
        reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap_or_default()
    })
}

fn client_for(shared: &Shared, creds: &Credentials) -> Result<Client, String> {
    if let Some(c) = lock(&shared.runtime.clients).get(creds) {
        return Ok(c.clone());
    }
    let mut builder = reqwest::Client::builder()
        .timeout(Duration::from_secs(15))
        .connect_timeout(Duration::from_secs(5))
        .pool_max_idle_per_host(64);
    if let Some(ca) = &creds.ca_pem {
        let cert = reqwest::Certificate::from_pem(ca)
            .map_err(|e| format!("unable to load root certificates: {e}"))?;
        builder = builder.add_root_certificate(cert);
    }
    if creds.insecure {
        builder = builder.danger_accept_invalid_certs(true);
    }
    if let (Some(cert), Some(key)) = (&creds.client_cert_pem, &creds.client_key_pem) {
        let identity = reqwest::Identity::from_pkcs8_pem(cert, key)
            .map_err(|e| format!("invalid client certificate: {e}"))?;
        builder = builder.identity(identity);
    }
    let http = builder.build().map_err(|e| e.to_string())?;
    let client = Client {
        http,
        base: creds.server.trim_end_matches('/').to_owned(),
        token: creds.token.clone(),
        limit: Arc::new(Semaphore::new(64)),
    };
    lock(&shared.runtime.clients).insert(creds.clone(), client.clone());
    Ok(client)
}

/// A failed API call, as the kubelet would describe it.
enum CallError {
    /// Retrying can help (5xx, 429, a timeout).
    Transient(String),
    /// It cannot (refused connection, bad certificate, 401, 403).
    Fatal(String),
}

impl CallError {
    fn text(&self) -> &str {
        match self {
            CallError::Transient(s) | CallError::Fatal(s) => s,
        }
    }
}

fn describe(method: &str, url: &str, e: &reqwest::Error) -> CallError {
    let mut chain = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        chain.push_str(": ");
        chain.push_str(&s.to_string());
        source = s.source();
    }
    let host = url
        .split("://")
        .nth(1)
        .and_then(|r| r.split('/').next())
        .unwrap_or(url);
    let text = if chain.contains("Connection refused") {
        format!("{method} \"{url}\": dial tcp {host}: connect: connection refused")
    } else if chain.contains("certificate") {
        format!(
            "{method} \"{url}\": tls: failed to verify certificate: x509: certificate signed by unknown authority"
        )
    } else if e.is_timeout() {
        return CallError::Transient(format!("{method} \"{url}\": context deadline exceeded"));
    } else {
        format!("{method} \"{url}\": {chain}")
    };
    CallError::Fatal(text)
}

impl Client {
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        content_type: &str,
        body: Option<&Value>,
    ) -> Result<(u16, Value), CallError> {
        let _permit = self.limit.acquire().await;
        let url = format!("{}{path}", self.base);
        let mut request = self
            .http
            .request(method.clone(), &url)
            .header("user-agent", "kubemark/v1.33.0 (linux/amd64)");
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request
                .header("content-type", content_type)
                .body(serde_json::to_vec(body).unwrap_or_default());
        }
        let response = request
            .send()
            .await
            .map_err(|e| describe(method.as_str(), &url, &e))?;
        let code = response.status().as_u16();
        let value: Value = response.json().await.unwrap_or(Value::Null);
        match code {
            200..=299 | 409 => Ok((code, value)),
            401 => Err(CallError::Fatal("Unauthorized".into())),
            403 => Err(CallError::Fatal(format!(
                "forbidden: {}",
                value["message"]
                    .as_str()
                    .unwrap_or("the credentials may not do this")
            ))),
            429 | 500..=599 => Err(CallError::Transient(format!(
                "the server returned {code}: {}",
                value["message"].as_str().unwrap_or_default()
            ))),
            _ => Err(CallError::Fatal(format!(
                "the server rejected the request ({code}): {}",
                value["message"].as_str().unwrap_or_default()
            ))),
        }
    }

    /// `call`, retried on transient errors a few times (as client-go does).
    async fn call_retrying(
        &self,
        method: reqwest::Method,
        path: &str,
        content_type: &str,
        body: Option<&Value>,
    ) -> Result<(u16, Value), CallError> {
        let mut delay = Duration::from_millis(200);
        let mut last = None;
        for _ in 0..8 {
            match self.call(method.clone(), path, content_type, body).await {
                Err(CallError::Transient(why)) => {
                    last = Some(why);
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(3));
                }
                other => return other,
            }
        }
        Err(CallError::Transient(last.unwrap_or_default()))
    }
}

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

/// What a hollow kubelet needs to run.
pub struct HollowKubelet {
    node: String,
    creds: Credentials,
    node_obj: Value,
    log: Box<dyn Fn(String) + Send + Sync>,
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

fn node_object(pod: &Value, args: &[String], node: &str, version: &str) -> Value {
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
            "conditions": super::node_conditions("True", &now),
            "addresses": [{"type": "InternalIP", "address": ip}, {"type": "Hostname", "address": node}],
            "nodeInfo": super::node_info(version),
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
        },
    })
}

/// The kubelet version a kubemark image reports: its tag when that is a version.
fn image_version(container: &Value, fallback: &str) -> String {
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
    async fn run(self, shared: &Arc<Shared>) -> String {
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
                    let patch = json!({"status": {"conditions": super::node_conditions("True", &now)}});
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
    use super::*;

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
