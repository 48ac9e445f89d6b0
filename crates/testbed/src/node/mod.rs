//! A node agent for real control planes: a small kubelet stand-in that
//! registers worker Nodes and runs the pods bound to them as Docker containers.
//!
//! [`NodeAgent::start`] registers each named Node with its own credential
//! (`system:node:<name>` in `system:nodes`, so the Node authorizer and the
//! NodeRestriction admission plugin judge it as they judge a kubelet), reports
//! capacity/allocatable, the Ready condition and `nodeInfo` (kubelet v1.37.2,
//! `docker://<engine version>`), and keeps the node's Lease in
//! `kube-node-lease` and its Ready heartbeat renewed every 10 s, so the real
//! node lifecycle controller keeps the node Ready and untainted.
//!
//! For each node it watches the pods bound to it (`spec.nodeName`) and runs
//! each pod with the engine (through bollard):
//!
//! - a *sandbox* first: a container of a 129-byte static program that only
//!   sleeps (`kubemark-testbed/pause:1`, imported by the agent; x86-64 only),
//!   on the agent's own bridge network, with the pod's hostname. Every
//!   container of the pod joins its network namespace, so they share
//!   `localhost` and one IP: the pod IP. The network's gateway is this host,
//!   so pods reach the API servers at this host's non-loopback address;
//!   `KUBERNETES_SERVICE_HOST`/`_PORT` point there (not at a Service IP).
//! - the images as the pod names them, pulled through the engine
//!   (`imagePullPolicy` honoured; no `imagePullSecrets`);
//! - init containers in order, each to completion, then the containers;
//!   `command` becomes the entrypoint, `args` the cmd, both with `$(VAR)`
//!   expanded as Kubernetes does; `env` (literal values, `fieldRef`,
//!   `secretKeyRef`, `configMapKeyRef`) and `envFrom`; `workingDir`;
//!   `runAsUser`/`runAsGroup`; `terminationMessagePath` (the file's content
//!   becomes the terminated state's message);
//! - volumes materialised in a per-pod directory and bind-mounted: `secret`,
//!   `configMap`, `downwardAPI` and `projected` (including the service
//!   account token, from the TokenRequest API, bound to the pod) as files,
//!   read-only, with `items` and modes; `emptyDir` as an empty directory;
//!   `hostPath` mapped to [`NodeAgent::host_path`], a directory of the agent's
//!   per *node* (pods on one node share it, as they share a real host's
//!   directory) — never the real host path;
//! - restart policies (`Always`, `OnFailure`, `Never`) with kubelet's
//!   back-off (10 s doubling to 5 min by default, [`Config::backoff`]);
//! - the pod status: phase, conditions (PodScheduled,
//!   PodReadyToStartContainers, Initialized, ContainersReady, Ready), hostIP,
//!   podIP, startTime, container statuses with waiting (ContainerCreating,
//!   PodInitializing, ErrImagePull, ImagePullBackOff, CrashLoopBackOff,
//!   CreateContainerConfigError), running and terminated states, lastState,
//!   restartCount;
//! - deletion as a kubelet finalises it: once `deletionTimestamp` is set the
//!   containers are stopped (the pod's grace period as the stop timeout) and
//!   removed, then the pod is deleted with grace period 0.
//!
//! Dropping the agent stops its tasks, force-removes every container carrying
//! its label ([`LABEL`]`=<agent id>`), removes its network and its directory.
//! The Nodes stay registered (a kubelet that stops does not delete its Node);
//! they turn NotReady once their leases expire.
//!
//! What it does not do: `privileged` is not honoured (the containers run
//! unprivileged: this host cannot start privileged containers), nor are
//! capabilities, seccomp or AppArmor; no real hostPath; no probes (a running
//! container is ready); no resource limits or requests enforced (capacity is
//! only reported); no pod-to-pod networking beyond the shared bridge, no
//! Services, no cluster DNS; no sidecar (restartable) init containers; no
//! ephemeral containers, no persistent volumes or other volume types; secrets
//! and config maps are written once, not refreshed, and the service account
//! token is not rotated; no `kubectl logs`, `exec`, `port-forward` or
//! metrics (no kubelet API server: the Node's `daemonEndpoints` port is 0).

mod containers;
mod engine;
mod environment;
mod pause;
mod registration;
mod runtime;
mod status;
mod sync;
mod volumes;

use std::io;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use tempfile::TempDir;
use tokio::sync::watch;

pub use self::environment::expand;
use self::runtime::{Log, Setup, run};
use self::volumes::host_path;
use crate::k8s::ControlPlane;

/// The label on every container the agent starts; its value is the agent's id.
pub const LABEL: &str = "kubemark.testbed.node-agent";
/// The label naming the pod (its uid) a container belongs to.
pub const POD_UID_LABEL: &str = "kubemark.testbed.node-agent.pod-uid";
/// The sandbox image the agent imports (a static x86-64 program that sleeps).
pub const PAUSE_IMAGE: &str = "kubemark-testbed/pause:1";

/// The kubelet version the Nodes report.
const KUBELET_VERSION: &str = "v1.37.2";
/// How often the Lease and the Ready heartbeat are renewed.
const HEARTBEAT: Duration = Duration::from_secs(10);
/// The Lease's duration, as the kubelet sets it.
const LEASE_SECONDS: i32 = 40;
/// How often a pod's containers are inspected.
const TICK: Duration = Duration::from_millis(500);

/// What the agent registers and how it runs pods.
#[derive(Debug, Clone)]
pub struct Config {
    /// The Nodes to register (and whose pods to run).
    pub nodes: Vec<String>,
    /// The nodes' InternalIP and the pods' hostIP: an address of this host
    /// that the containers reach (not loopback).
    pub address: IpAddr,
    /// Each node's capacity (and allocatable): CPU, memory, pods.
    pub cpu: String,
    pub memory: String,
    pub pods: String,
    /// The first restart (and image pull) back-off; it doubles up to `max_backoff`.
    pub backoff: Duration,
    pub max_backoff: Duration,
}

impl Config {
    /// `nodes` at `address`, with 4 CPUs, 16 GiB, 110 pods and kubelet's back-off.
    pub fn new(nodes: &[&str], address: IpAddr) -> Self {
        Self {
            nodes: nodes.iter().map(|n| (*n).to_owned()).collect(),
            address,
            cpu: "4".into(),
            memory: "16Gi".into(),
            pods: "110".into(),
            backoff: Duration::from_secs(10),
            max_backoff: Duration::from_secs(300),
        }
    }
}

/// A running node agent; everything it started is stopped when dropped.
#[derive(Debug)]
pub struct NodeAgent {
    id: String,
    dir: PathBuf,
    /// `dir`, removed when dropped: after `Drop::drop` has stopped the thread.
    _tempdir: TempDir,
    network: String,
    shutdown: watch::Sender<bool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl NodeAgent {
    /// Register `config.nodes` on `plane` (one `system:node:<name>` client
    /// certificate each) and start running their pods; returns once every Node
    /// and Lease exists with its status reported.
    pub fn start(plane: &ControlPlane, config: Config) -> io::Result<Self> {
        let id = format!("{}-{}", std::process::id(), crate::free_port()?);
        let tempdir = tempfile::Builder::new()
            .prefix(&format!("kubemark-node-agent-{id}-"))
            .tempdir()?;
        let dir = tempdir.path().to_owned();
        let mut kubeconfigs = Vec::new();
        for node in &config.nodes {
            let file =
                plane.kubeconfig_for(&format!("system:node:{node}"), Some("system:nodes"))?;
            kubeconfigs.push((node.clone(), file));
        }
        let (port, host) = match plane.server.rsplit_once(':') {
            Some((host, port)) => (
                port.to_owned(),
                host.trim_start_matches("https://")
                    .trim_matches(['[', ']'])
                    .to_owned(),
            ),
            None => return Err(io::Error::other(format!("no port in {}", plane.server))),
        };
        let network = format!("kubemark-node-agent-{id}");
        let log = Log::create(&dir.join("agent.log"))?;
        let (shutdown, shutdown_rx) = watch::channel(false);
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let setup = Setup {
            id: id.clone(),
            dir: dir.clone(),
            network: network.clone(),
            config,
            kubeconfigs,
            api_host: host,
            api_port: port,
            log,
        };
        let thread = std::thread::Builder::new()
            .name(format!("node-agent-{id}"))
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime,
                    Err(e) => {
                        let _ = ready_tx.send(Err(format!("tokio runtime: {e}")));
                        return;
                    }
                };
                runtime.block_on(run(setup, shutdown_rx, ready_tx));
            })?;
        let agent = Self {
            id,
            dir,
            _tempdir: tempdir,
            network,
            shutdown,
            thread: Some(thread),
        };
        match ready_rx.recv_timeout(Duration::from_secs(120)) {
            Ok(Ok(())) => Ok(agent),
            Ok(Err(e)) => Err(io::Error::other(format!(
                "node agent: {e}\n{}",
                agent.log_tail(30)
            ))),
            Err(_) => Err(io::Error::other(format!(
                "node agent did not register its nodes within 120 s\n{}",
                agent.log_tail(30)
            ))),
        }
    }

    /// The agent's id: the value of [`LABEL`] on its containers.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The Docker network its pods are on.
    pub fn network(&self) -> &str {
        &self.network
    }

    /// Where a pod's `hostPath` volume `path` lives for pods on `node`.
    pub fn host_path(&self, node: &str, path: &str) -> PathBuf {
        host_path(&self.dir, node, path)
    }

    /// The last `lines` of the agent's log (what it did, and every error).
    pub fn log_tail(&self, lines: usize) -> String {
        crate::process::tail(&self.dir.join("agent.log"), lines)
    }
}

impl Drop for NodeAgent {
    #[allow(
        clippy::print_stderr,
        reason = "a failing test shows the agent's log: what it did and every error"
    )]
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- node agent {} log:\n{}", self.id, self.log_tail(60));
        }
        let _ = self.shutdown.send(true);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
