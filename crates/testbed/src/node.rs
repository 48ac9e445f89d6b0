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

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io;
use std::net::IpAddr;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, bail};
use bollard::Docker;
use bollard::models::{ContainerCreateBody, HostConfig, NetworkCreateRequest};
use bollard::query_parameters::{
    CreateContainerOptions, CreateImageOptions, ListContainersOptions, RemoveContainerOptions,
    StopContainerOptions,
};
use futures_util::{StreamExt, TryStreamExt};
use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, EnvVarSource, KeyToPath, Node, ObjectFieldSelector, Pod, Secret,
    ServiceAccount, Volume,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, OwnerReference};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use tokio::sync::watch;

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
        let dir = std::env::temp_dir().join(format!("kubemark-node-agent-{id}"));
        std::fs::create_dir_all(&dir)?;
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
        let text = std::fs::read_to_string(self.dir.join("agent.log")).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for NodeAgent {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- node agent {} log:\n{}", self.id, self.log_tail(60));
        }
        let _ = self.shutdown.send(true);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn host_path(dir: &Path, node: &str, path: &str) -> PathBuf {
    let mut out = dir.join("hostpath").join(node);
    for part in Path::new(path).components() {
        if let Component::Normal(p) = part {
            out.push(p);
        }
    }
    out
}

/// A log file the agent appends to, one timestamped line per event.
#[derive(Debug, Clone)]
struct Log(Arc<Mutex<std::fs::File>>);

impl Log {
    fn create(path: &Path) -> io::Result<Self> {
        Ok(Self(Arc::new(Mutex::new(std::fs::File::create(path)?))))
    }

    fn line(&self, text: impl AsRef<str>) {
        if let Ok(mut f) = self.0.lock() {
            let _ = io::Write::write_all(
                &mut *f,
                format!("{} {}\n", Timestamp::now(), text.as_ref()).as_bytes(),
            );
        }
    }
}

/// What the agent's thread needs.
struct Setup {
    id: String,
    dir: PathBuf,
    network: String,
    config: Config,
    kubeconfigs: Vec<(String, PathBuf)>,
    api_host: String,
    api_port: String,
    log: Log,
}

/// What every task shares.
struct Shared {
    id: String,
    dir: PathBuf,
    network: String,
    config: Config,
    docker: Docker,
    docker_version: String,
    api_host: String,
    api_port: String,
    log: Log,
}

async fn run(
    setup: Setup,
    shutdown: watch::Receiver<bool>,
    ready: std::sync::mpsc::Sender<std::result::Result<(), String>>,
) {
    let log = setup.log.clone();
    let id = setup.id.clone();
    let network = setup.network.clone();
    let mut docker_for_cleanup = None;
    let mut tasks = tokio::task::JoinSet::new();
    match start(setup, &shutdown, &mut tasks).await {
        Ok(docker) => {
            docker_for_cleanup = Some(docker);
            let _ = ready.send(Ok(()));
            let mut shutdown = shutdown.clone();
            let _ = shutdown.wait_for(|stop| *stop).await;
        }
        Err(e) => {
            log.line(format!("start failed: {e:#}"));
            let _ = ready.send(Err(format!("{e:#}")));
        }
    }
    // Tasks watch `shutdown` (the sender has sent or is gone); give them a
    // moment to finish what they are doing, then abort the rest.
    let deadline = tokio::time::sleep(Duration::from_secs(15));
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            next = tasks.join_next() => if next.is_none() { break },
            () = &mut deadline => { tasks.abort_all(); break }
        }
    }
    let docker = match docker_for_cleanup {
        Some(d) => d,
        None => match Docker::connect_with_local_defaults() {
            Ok(d) => d,
            Err(_) => return,
        },
    };
    // Twice: a request in flight when a task was aborted may still land.
    for _ in 0..2 {
        if let Err(e) = remove_labelled(&docker, &id).await {
            log.line(format!("cleanup: {e:#}"));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    if let Err(e) = docker.remove_network(&network).await
        && !is_docker_not_found(&e)
    {
        log.line(format!("cleanup: removing network {network}: {e}"));
    }
    log.line("stopped");
}

/// Connect, prepare the network and the sandbox image, register the nodes and
/// start their tasks.
async fn start(
    setup: Setup,
    shutdown: &watch::Receiver<bool>,
    tasks: &mut tokio::task::JoinSet<()>,
) -> Result<Docker> {
    let docker = Docker::connect_with_local_defaults()
        .context("connecting to the Docker engine")?
        .negotiate_version()
        .await
        .context("negotiating the Docker API version")?;
    let version = docker
        .version()
        .await
        .context("reading the Docker engine's version")?;
    let shared = Arc::new(Shared {
        id: setup.id.clone(),
        dir: setup.dir,
        network: setup.network.clone(),
        config: setup.config,
        docker: docker.clone(),
        docker_version: version.version.unwrap_or_else(|| "unknown".into()),
        api_host: setup.api_host,
        api_port: setup.api_port,
        log: setup.log,
    });
    docker
        .create_network(NetworkCreateRequest {
            name: setup.network.clone(),
            driver: Some("bridge".into()),
            labels: Some(HashMap::from([(LABEL.to_owned(), setup.id.clone())])),
            ..Default::default()
        })
        .await
        .with_context(|| format!("creating the Docker network {}", setup.network))?;
    ensure_pause_image(&docker).await?;
    for (node, kubeconfig) in setup.kubeconfigs {
        let client = client(&kubeconfig).await?;
        let uid = register(&shared, &client, &node)
            .await
            .with_context(|| format!("registering node {node}"))?;
        shared.log.line(format!("registered node {node}"));
        tasks.spawn(heartbeat(
            shared.clone(),
            client.clone(),
            node.clone(),
            uid,
            shutdown.clone(),
        ));
        tasks.spawn(watch_pods(shared.clone(), client, node, shutdown.clone()));
    }
    Ok(docker)
}

async fn client(kubeconfig: &Path) -> Result<Client> {
    let file = kube::config::Kubeconfig::read_from(kubeconfig)
        .with_context(|| format!("reading {}", kubeconfig.display()))?;
    let config = kube::Config::from_custom_kubeconfig(file, &Default::default())
        .await
        .with_context(|| format!("loading {}", kubeconfig.display()))?;
    Client::try_from(config).context("building a Kubernetes client")
}

async fn remove_labelled(docker: &Docker, id: &str) -> Result<()> {
    remove_by_label(docker, &format!("{LABEL}={id}"), "the agent's containers").await
}

/// Remove every container carrying `label` (`key=value`).
async fn remove_by_label(docker: &Docker, label: &str, what: &str) -> Result<()> {
    let containers = docker
        .list_containers(Some(ListContainersOptions {
            all: true,
            filters: Some(HashMap::from([(
                "label".to_owned(),
                vec![label.to_owned()],
            )])),
            ..Default::default()
        }))
        .await
        .with_context(|| format!("listing {what}"))?;
    for c in containers {
        if let Some(cid) = c.id {
            remove_container(docker, &cid).await?;
        }
    }
    Ok(())
}

async fn remove_container(docker: &Docker, id: &str) -> Result<()> {
    match docker
        .remove_container(
            id,
            Some(RemoveContainerOptions {
                force: true,
                v: true,
                ..Default::default()
            }),
        )
        .await
    {
        Ok(()) => Ok(()),
        Err(e) if is_docker_not_found(&e) => Ok(()),
        Err(e) => Err(e).with_context(|| format!("removing container {id}")),
    }
}

fn is_docker_not_found(e: &bollard::errors::Error) -> bool {
    matches!(
        e,
        bollard::errors::Error::DockerResponseServerError {
            status_code: 404,
            ..
        }
    )
}

/// Resolves once the agent is told to stop (or its handle is gone).
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

fn is_api(e: &kube::Error, code: u16) -> bool {
    matches!(e, kube::Error::Api(status) if status.code == code)
}

// ---------------------------------------------------------------- sandbox image

/// A static x86-64 ELF executable: `loop { pause() }`. 129 bytes: the ELF
/// header, one PT_LOAD program header mapping the file at 0x400000, and
/// `mov eax, 34; syscall; jmp -9`.
fn pause_program() -> Vec<u8> {
    const BASE: u64 = 0x40_0000;
    const CODE: [u8; 9] = [0xb8, 0x22, 0, 0, 0, 0x0f, 0x05, 0xeb, 0xf7];
    let size = (64 + 56 + CODE.len()) as u64;
    let mut elf = Vec::with_capacity(size as usize);
    elf.extend_from_slice(&[0x7f, b'E', b'L', b'F', 2, 1, 1, 0]);
    elf.extend_from_slice(&[0; 8]);
    elf.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    elf.extend_from_slice(&0x3eu16.to_le_bytes()); // x86-64
    elf.extend_from_slice(&1u32.to_le_bytes());
    elf.extend_from_slice(&(BASE + 64 + 56).to_le_bytes()); // entry
    elf.extend_from_slice(&64u64.to_le_bytes()); // program headers
    elf.extend_from_slice(&0u64.to_le_bytes()); // no sections
    elf.extend_from_slice(&0u32.to_le_bytes());
    for half in [64u16, 56, 1, 0, 0, 0] {
        elf.extend_from_slice(&half.to_le_bytes());
    }
    elf.extend_from_slice(&1u32.to_le_bytes()); // PT_LOAD
    elf.extend_from_slice(&5u32.to_le_bytes()); // R+X
    elf.extend_from_slice(&0u64.to_le_bytes());
    elf.extend_from_slice(&BASE.to_le_bytes());
    elf.extend_from_slice(&BASE.to_le_bytes());
    elf.extend_from_slice(&size.to_le_bytes());
    elf.extend_from_slice(&size.to_le_bytes());
    elf.extend_from_slice(&0x1000u64.to_le_bytes());
    elf.extend_from_slice(&CODE);
    elf
}

async fn ensure_pause_image(docker: &Docker) -> Result<()> {
    if docker.inspect_image(PAUSE_IMAGE).await.is_ok() {
        return Ok(());
    }
    if !cfg!(target_arch = "x86_64") {
        bail!("the node agent's sandbox program is x86-64 only");
    }
    let program = pause_program();
    let mut tar = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_size(program.len() as u64);
    header.set_mode(0o755);
    header.set_entry_type(tar::EntryType::Regular);
    tar.append_data(&mut header, "pause", program.as_slice())
        .context("building the sandbox image's layer")?;
    let layer = tar
        .into_inner()
        .context("building the sandbox image's layer")?;
    let (repo, tag) = PAUSE_IMAGE
        .split_once(':')
        .unwrap_or((PAUSE_IMAGE, "latest"));
    docker
        .create_image(
            Some(CreateImageOptions {
                from_src: Some("-".into()),
                repo: Some(repo.into()),
                tag: Some(tag.into()),
                ..Default::default()
            }),
            Some(bollard::body_full(layer.into())),
            None,
        )
        .try_collect::<Vec<_>>()
        .await
        .with_context(|| format!("importing the sandbox image {PAUSE_IMAGE}"))?;
    Ok(())
}

// ---------------------------------------------------------------- nodes

fn now() -> String {
    Timestamp::now().to_string()
}

fn node_status(shared: &Shared, heartbeat: &str, since: &str) -> Value {
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
async fn register(shared: &Shared, client: &Client, name: &str) -> Result<String> {
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

async fn renew_lease(client: &Client, name: &str, node_uid: &str) -> Result<()> {
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
async fn heartbeat(
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

// ---------------------------------------------------------------- pods

/// Watch the pods bound to `node`; one worker per pod.
async fn watch_pods(
    shared: Arc<Shared>,
    client: Client,
    node: String,
    mut shutdown: watch::Receiver<bool>,
) {
    let pods: Api<Pod> = Api::all(client.clone());
    let config = watcher::Config::default().fields(&format!("spec.nodeName={node}"));
    let mut events = watcher::watcher(pods, config).default_backoff().boxed();
    let mut workers: HashMap<String, watch::Sender<Pod>> = HashMap::new();
    let mut running = tokio::task::JoinSet::new();
    let mut listed: Option<HashSet<String>> = None;
    loop {
        let event = tokio::select! {
            () = stopped(&mut shutdown) => break,
            Some(_) = running.join_next(), if !running.is_empty() => continue,
            event = events.next() => event,
        };
        let apply = |pod: Pod,
                     workers: &mut HashMap<String, watch::Sender<Pod>>,
                     running: &mut tokio::task::JoinSet<()>| {
            let Some(uid) = pod.uid() else { return };
            if let Some(tx) = workers.get(&uid) {
                let _ = tx.send(pod);
                return;
            }
            let (tx, rx) = watch::channel(pod);
            workers.insert(uid.clone(), tx);
            running.spawn(pod_worker(
                shared.clone(),
                client.clone(),
                node.clone(),
                uid,
                rx,
                shutdown.clone(),
            ));
        };
        match event {
            None => break,
            Some(Err(e)) => shared.log.line(format!("node {node}: watching pods: {e}")),
            Some(Ok(Event::Apply(pod))) => apply(pod, &mut workers, &mut running),
            Some(Ok(Event::Delete(pod))) => {
                if let Some(uid) = pod.uid() {
                    workers.remove(&uid);
                }
            }
            Some(Ok(Event::Init)) => listed = Some(HashSet::new()),
            Some(Ok(Event::InitApply(pod))) => {
                if let (Some(seen), Some(uid)) = (listed.as_mut(), pod.uid()) {
                    seen.insert(uid);
                }
                apply(pod, &mut workers, &mut running);
            }
            Some(Ok(Event::InitDone)) => {
                if let Some(seen) = listed.take() {
                    workers.retain(|uid, _| seen.contains(uid));
                }
            }
        }
    }
    // Workers see the shutdown too; wait for them before the agent sweeps.
    while running.join_next().await.is_some() {}
}

/// The back-off of one container's restarts or image pulls.
#[derive(Debug, Clone, Copy)]
struct Backoff {
    delay: Option<Duration>,
    until: Option<Instant>,
}

impl Backoff {
    fn new() -> Self {
        Self {
            delay: None,
            until: None,
        }
    }

    fn waiting(&self) -> bool {
        self.until.is_some_and(|u| Instant::now() < u)
    }

    /// Start (or lengthen) the back-off.
    fn fail(&mut self, first: Duration, max: Duration) {
        let delay = self.delay.map_or(first, |d| (d * 2).min(max));
        self.delay = Some(delay);
        self.until = Some(Instant::now() + delay);
    }
}

/// One container of the pod as the worker tracks it.
#[derive(Debug)]
struct Ctr {
    spec: Container,
    init: bool,
    /// The engine's container of the current attempt.
    id: Option<String>,
    image_id: String,
    restarts: i32,
    /// The pod status `state` and `lastState`.
    state: Value,
    last: Value,
    ready: bool,
    /// Terminated and not to be restarted (or an init container that completed).
    done: bool,
    exit_code: Option<i64>,
    backoff: Backoff,
    pulled: bool,
}

/// Run one pod until it is deleted or the agent stops.
async fn pod_worker(
    shared: Arc<Shared>,
    client: Client,
    node: String,
    uid: String,
    mut updates: watch::Receiver<Pod>,
    mut shutdown: watch::Receiver<bool>,
) {
    let pod = updates.borrow_and_update().clone();
    let mut worker = PodWorker::new(shared.clone(), client, node, uid, pod);
    let label = worker.label();
    shared.log.line(format!("pod {label}: started"));
    loop {
        if worker.pod.metadata.deletion_timestamp.is_some() {
            worker.finalise(true).await;
            return;
        }
        if let Err(e) = worker.step().await {
            shared.log.line(format!("pod {label}: {e:#}"));
        }
        if let Err(e) = worker.report().await {
            shared.log.line(format!("pod {label}: {e:#}"));
        }
        tokio::select! {
            biased;
            () = stopped(&mut shutdown) => return,
            changed = updates.changed() => match changed {
                Ok(()) => worker.pod = updates.borrow_and_update().clone(),
                // The pod is gone from the API (deleted with grace period 0 elsewhere).
                Err(_) => {
                    worker.finalise(false).await;
                    return;
                }
            },
            () = tokio::time::sleep(TICK) => {}
        }
    }
}

struct PodWorker {
    shared: Arc<Shared>,
    client: Client,
    node: String,
    uid: String,
    pod: Pod,
    dir: PathBuf,
    volumes: Option<HashMap<String, (PathBuf, bool)>>,
    volume_error: Option<String>,
    volume_backoff: Backoff,
    sandbox: Option<(String, String)>,
    ctrs: Vec<Ctr>,
    start_time: String,
    transitions: HashMap<&'static str, (bool, String)>,
    reported: Option<Value>,
}

impl PodWorker {
    fn new(shared: Arc<Shared>, client: Client, node: String, uid: String, pod: Pod) -> Self {
        let spec = pod.spec.clone().unwrap_or_default();
        let ctrs = spec
            .init_containers
            .unwrap_or_default()
            .into_iter()
            .map(|c| (c, true))
            .chain(spec.containers.into_iter().map(|c| (c, false)))
            .map(|(spec, init)| Ctr {
                spec,
                init,
                id: None,
                image_id: String::new(),
                restarts: 0,
                state: json!({"waiting": {"reason": if init { "PodInitializing" } else { "ContainerCreating" }}}),
                last: json!({}),
                ready: false,
                done: false,
                exit_code: None,
                backoff: Backoff::new(),
                pulled: false,
            })
            .collect::<Vec<_>>();
        let dir = shared.dir.join("pods").join(&uid);
        let start_time = pod
            .status
            .as_ref()
            .and_then(|s| s.start_time.as_ref())
            .map_or_else(now, |t| t.0.to_string());
        Self {
            shared,
            client,
            node,
            uid,
            pod,
            dir,
            volumes: None,
            volume_error: None,
            volume_backoff: Backoff::new(),
            sandbox: None,
            ctrs,
            start_time,
            transitions: HashMap::new(),
            reported: None,
        }
    }

    fn label(&self) -> String {
        format!(
            "{}/{}",
            self.pod.namespace().unwrap_or_default(),
            self.pod.name_any()
        )
    }

    fn restart_policy(&self) -> String {
        self.pod
            .spec
            .as_ref()
            .and_then(|s| s.restart_policy.clone())
            .unwrap_or_else(|| "Always".into())
    }

    fn terminal(&self) -> bool {
        matches!(self.phase(), "Succeeded" | "Failed")
    }

    fn phase(&self) -> &'static str {
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

    /// One pass: volumes, sandbox, the next init container or every container.
    async fn step(&mut self) -> Result<()> {
        if self.terminal() {
            return Ok(());
        }
        if self.volumes.is_none() {
            if self.volume_backoff.waiting() {
                return Ok(());
            }
            match self.prepare_volumes().await {
                Ok(volumes) => {
                    self.volumes = Some(volumes);
                    self.volume_error = None;
                }
                Err(e) => {
                    let backoff = self.shared.config.backoff.min(Duration::from_secs(2));
                    self.volume_backoff
                        .fail(backoff, self.shared.config.max_backoff);
                    self.volume_error = Some(format!("{e:#}"));
                    return Err(e.context("preparing volumes"));
                }
            }
        }
        if self.sandbox.is_none() {
            self.sandbox = Some(self.start_sandbox().await.context("starting the sandbox")?);
        }
        let policy = self.restart_policy();
        if let Some(i) = self.ctrs.iter().position(|c| c.init && !c.done) {
            return self.drive(i, &policy).await;
        }
        for i in 0..self.ctrs.len() {
            if !self.ctrs[i].init
                && let Err(e) = self.drive(i, &policy).await
            {
                self.shared.log.line(format!("pod {}: {e:#}", self.label()));
            }
        }
        Ok(())
    }

    /// Advance container `i`: start it when due, observe its exit, restart it.
    async fn drive(&mut self, i: usize, policy: &str) -> Result<()> {
        let (first, max) = (self.shared.config.backoff, self.shared.config.max_backoff);
        let docker = self.shared.docker.clone();
        let Some(id) = self.ctrs[i].id.clone() else {
            if self.ctrs[i].done || self.ctrs[i].backoff.waiting() {
                let c = &mut self.ctrs[i];
                if c.state["waiting"]["reason"] == "ErrImagePull" {
                    c.state["waiting"]["reason"] = json!("ImagePullBackOff");
                }
                return Ok(());
            }
            return self.start_container(i).await;
        };
        let inspect = match docker.inspect_container(&id, None).await {
            Ok(i) => i,
            Err(e) if is_docker_not_found(&e) => {
                // Removed behind our back: count it as a failure and start anew.
                let c = &mut self.ctrs[i];
                c.id = None;
                c.exit_code = Some(137);
                c.backoff.fail(first, max);
                return Ok(());
            }
            Err(e) => return Err(e).context("inspecting a container"),
        };
        let state = inspect.state.unwrap_or_default();
        if state.running == Some(true) {
            let c = &mut self.ctrs[i];
            c.state = json!({"running": {"startedAt": state.started_at.unwrap_or_else(now)}});
            c.ready = !c.init;
            return Ok(());
        }
        let code = state.exit_code.unwrap_or(-1);
        let message = self.termination_message(i);
        let c = &mut self.ctrs[i];
        let reason = if state.oom_killed == Some(true) {
            "OOMKilled"
        } else if code == 0 {
            "Completed"
        } else {
            "Error"
        };
        let mut terminated = json!({
            "exitCode": code,
            "reason": reason,
            "startedAt": state.started_at.clone().unwrap_or_else(now),
            "finishedAt": state.finished_at.clone().unwrap_or_else(now),
            "containerID": format!("docker://{id}"),
        });
        if !message.is_empty() {
            terminated["message"] = json!(message);
        }
        c.ready = false;
        c.exit_code = Some(code);
        let restart = match policy {
            "Never" => false,
            "OnFailure" => code != 0,
            _ => !c.init || code != 0,
        };
        if c.init && code == 0 {
            c.done = true;
            c.state = json!({ "terminated": terminated });
            return Ok(());
        }
        if !restart {
            c.done = true;
            c.state = json!({ "terminated": terminated });
            return Ok(());
        }
        // Kubelet resets the back-off of a container that ran for 10 minutes.
        let ran_long = state
            .started_at
            .as_deref()
            .and_then(|s| s.parse::<Timestamp>().ok())
            .is_some_and(|t| Timestamp::now().duration_since(t).as_secs() > 600);
        if ran_long {
            c.backoff = Backoff::new();
        }
        c.backoff.fail(first, max);
        c.last = json!({ "terminated": terminated });
        c.state = json!({"waiting": {
            "reason": "CrashLoopBackOff",
            "message": format!("back-off restarting failed container {} in pod {}", c.spec.name, self.pod.name_any()),
        }});
        c.id = None;
        remove_container(&docker, &id).await?;
        c.restarts += 1;
        Ok(())
    }

    /// What the current attempt of container `i` wrote to its termination message file.
    fn termination_message(&self, i: usize) -> String {
        let c = &self.ctrs[i];
        let file = self
            .dir
            .join("termination")
            .join(format!("{}-{}", c.spec.name, c.restarts));
        let mut text = std::fs::read_to_string(file).unwrap_or_default();
        if text.len() > 4096 {
            let mut end = 4096;
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            text.truncate(end);
        }
        text
    }

    async fn start_container(&mut self, i: usize) -> Result<()> {
        let (first, max) = (self.shared.config.backoff, self.shared.config.max_backoff);
        let docker = self.shared.docker.clone();
        let spec = self.ctrs[i].spec.clone();
        let image = spec.image.clone().unwrap_or_default();
        if !self.ctrs[i].pulled {
            if let Err(e) = self.ensure_image(&spec).await {
                let c = &mut self.ctrs[i];
                c.backoff.fail(first, max);
                let reason = if spec.image_pull_policy.as_deref() == Some("Never") {
                    "ErrImageNeverPull"
                } else {
                    "ErrImagePull"
                };
                c.state = json!({"waiting": {"reason": reason, "message": format!("{e:#}")}});
                return Err(e.context(format!("image {image} of container {}", spec.name)));
            }
            self.ctrs[i].pulled = true;
        }
        let body = match self.container_body(i).await {
            Ok(body) => body,
            Err(e) => {
                let c = &mut self.ctrs[i];
                c.backoff.fail(first.min(Duration::from_secs(2)), max);
                c.state = json!({"waiting": {"reason": "CreateContainerConfigError", "message": format!("{e:#}")}});
                return Err(e.context(format!("configuring container {}", spec.name)));
            }
        };
        let name = format!(
            "k8s_{}_{}_{}_{}_{}_{}",
            spec.name,
            self.pod.name_any(),
            self.pod.namespace().unwrap_or_default(),
            self.uid,
            self.ctrs[i].restarts,
            self.shared.id
        );
        let created = docker
            .create_container(
                Some(CreateContainerOptions {
                    name: Some(name.clone()),
                    ..Default::default()
                }),
                body,
            )
            .await;
        let id = match created {
            Ok(r) => r.id,
            Err(e) => {
                // A leftover of an attempt whose removal failed: remove it, retry next tick.
                let _ = remove_container(&docker, &name).await;
                let c = &mut self.ctrs[i];
                c.backoff.fail(first.min(Duration::from_secs(2)), max);
                c.state = json!({"waiting": {"reason": "CreateContainerError", "message": e.to_string()}});
                return Err(e).with_context(|| format!("creating container {}", spec.name));
            }
        };
        if let Ok(inspect) = docker.inspect_container(&id, None).await {
            self.ctrs[i].image_id = inspect
                .image
                .map(|i| format!("docker://{i}"))
                .unwrap_or_default();
        }
        self.ctrs[i].id = Some(id.clone());
        if let Err(e) = docker.start_container(&id, None).await {
            // Observed as a failed attempt on the next inspect (exit code 128 and the message).
            let c = &mut self.ctrs[i];
            c.state = json!({"waiting": {"reason": "RunContainerError", "message": e.to_string()}});
            return Err(e).with_context(|| format!("starting container {}", spec.name));
        }
        self.shared.log.line(format!(
            "pod {}: started container {} ({})",
            self.label(),
            spec.name,
            &id[..12.min(id.len())]
        ));
        Ok(())
    }

    async fn ensure_image(&self, spec: &Container) -> Result<()> {
        let image = spec
            .image
            .clone()
            .ok_or_else(|| anyhow!("the container has no image"))?;
        let docker = &self.shared.docker;
        let policy = spec.image_pull_policy.as_deref().unwrap_or("IfNotPresent");
        let present = docker.inspect_image(&image).await.is_ok();
        match policy {
            "Never" if present => return Ok(()),
            "Never" => bail!("image {image} is not present and the pull policy is Never"),
            "IfNotPresent" if present => return Ok(()),
            _ => {}
        }
        let last = image.rsplit('/').next().unwrap_or(&image);
        let reference = if image.contains('@') || last.contains(':') {
            image.clone()
        } else {
            format!("{image}:latest")
        };
        self.shared.log.line(format!("pulling {reference}"));
        docker
            .create_image(
                Some(CreateImageOptions {
                    from_image: Some(reference.clone()),
                    ..Default::default()
                }),
                None,
                None,
            )
            .try_collect::<Vec<_>>()
            .await
            .with_context(|| format!("pulling {reference}"))?;
        Ok(())
    }

    async fn start_sandbox(&mut self) -> Result<(String, String)> {
        let docker = &self.shared.docker;
        let spec = self.pod.spec.clone().unwrap_or_default();
        let mut hostname = spec.hostname.unwrap_or_else(|| self.pod.name_any());
        hostname.truncate(63);
        let name = format!(
            "k8s_POD_{}_{}_{}_{}",
            self.pod.name_any(),
            self.pod.namespace().unwrap_or_default(),
            self.uid,
            self.shared.id
        );
        let _ = remove_container(docker, &name).await;
        let created = docker
            .create_container(
                Some(CreateContainerOptions {
                    name: Some(name),
                    ..Default::default()
                }),
                ContainerCreateBody {
                    image: Some(PAUSE_IMAGE.into()),
                    entrypoint: Some(vec!["/pause".into()]),
                    hostname: Some(hostname),
                    labels: Some(self.labels("POD")),
                    host_config: Some(HostConfig {
                        network_mode: Some(self.shared.network.clone()),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
            )
            .await
            .context("creating the sandbox container")?;
        docker
            .start_container(&created.id, None)
            .await
            .context("starting the sandbox container")?;
        let inspect = docker
            .inspect_container(&created.id, None)
            .await
            .context("inspecting the sandbox container")?;
        let ip = inspect
            .network_settings
            .and_then(|n| n.networks)
            .and_then(|n| n.get(&self.shared.network).cloned())
            .and_then(|e| e.ip_address)
            .unwrap_or_default();
        self.shared
            .log
            .line(format!("pod {}: sandbox up, IP {ip}", self.label()));
        Ok((created.id, ip))
    }

    fn labels(&self, container: &str) -> HashMap<String, String> {
        HashMap::from([
            (LABEL.to_owned(), self.shared.id.clone()),
            (POD_UID_LABEL.to_owned(), self.uid.clone()),
            ("io.kubernetes.pod.name".to_owned(), self.pod.name_any()),
            (
                "io.kubernetes.pod.namespace".to_owned(),
                self.pod.namespace().unwrap_or_default(),
            ),
            (
                "io.kubernetes.container.name".to_owned(),
                container.to_owned(),
            ),
        ])
    }

    /// The engine's configuration of container `i`.
    async fn container_body(&self, i: usize) -> Result<ContainerCreateBody> {
        let spec = &self.ctrs[i].spec;
        let env = self.environment(spec).await?;
        let lookup: HashMap<&str, &str> =
            env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let expand_all = |list: &Option<Vec<String>>| {
            list.as_ref()
                .map(|l| l.iter().map(|s| expand(s, &lookup)).collect())
        };
        let volumes = self
            .volumes
            .as_ref()
            .ok_or_else(|| anyhow!("volumes are not ready"))?;
        let mut binds = Vec::new();
        for mount in spec.volume_mounts.iter().flatten() {
            let (dir, read_only) = volumes
                .get(&mount.name)
                .ok_or_else(|| anyhow!("volume mount {} names no volume of the pod", mount.name))?;
            let mut source = dir.clone();
            if let Some(sub) = mount.sub_path.as_deref().filter(|s| !s.is_empty()) {
                source = source.join(relative(sub)?);
                if !source.exists() {
                    std::fs::create_dir_all(&source)
                        .with_context(|| format!("creating subPath {}", source.display()))?;
                }
            }
            let ro = *read_only || mount.read_only == Some(true);
            binds.push(format!(
                "{}:{}:{}",
                source.display(),
                mount.mount_path,
                if ro { "ro" } else { "rw" }
            ));
        }
        let message_path = spec
            .termination_message_path
            .clone()
            .unwrap_or_else(|| "/dev/termination-log".into());
        let termination = self.dir.join("termination");
        std::fs::create_dir_all(&termination).context("creating the termination message dir")?;
        // One file per attempt, read when the attempt ends.
        let message_file = termination.join(format!("{}-{}", spec.name, self.ctrs[i].restarts));
        std::fs::write(&message_file, "").context("creating the termination message file")?;
        if !message_path.is_empty() {
            binds.push(format!("{}:{message_path}:rw", message_file.display()));
        }
        let security = spec.security_context.clone().unwrap_or_default();
        let pod_security = self
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.security_context.clone())
            .unwrap_or_default();
        let user = security.run_as_user.or(pod_security.run_as_user);
        let group = security.run_as_group.or(pod_security.run_as_group);
        let user = match (user, group) {
            (Some(u), Some(g)) => Some(format!("{u}:{g}")),
            (Some(u), None) => Some(u.to_string()),
            (None, Some(g)) => Some(format!("0:{g}")),
            (None, None) => None,
        };
        let (sandbox, _) = self
            .sandbox
            .as_ref()
            .ok_or_else(|| anyhow!("the sandbox is not running"))?;
        Ok(ContainerCreateBody {
            image: spec.image.clone(),
            entrypoint: expand_all(&spec.command),
            cmd: expand_all(&spec.args),
            env: Some(env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
            working_dir: spec.working_dir.clone(),
            user,
            tty: spec.tty,
            open_stdin: spec.stdin,
            labels: Some(self.labels(&spec.name)),
            host_config: Some(HostConfig {
                binds: Some(binds),
                network_mode: Some(format!("container:{sandbox}")),
                privileged: Some(false),
                ..Default::default()
            }),
            ..Default::default()
        })
    }

    /// The container's environment in Kubernetes' order: `envFrom`, then `env`
    /// (each value expanded against what precedes it), after the service variables.
    async fn environment(&self, spec: &Container) -> Result<Vec<(String, String)>> {
        let namespace = self.pod.namespace().unwrap_or_default();
        let mut env: Vec<(String, String)> = vec![
            (
                "KUBERNETES_SERVICE_HOST".into(),
                self.shared.api_host.clone(),
            ),
            (
                "KUBERNETES_SERVICE_PORT".into(),
                self.shared.api_port.clone(),
            ),
            (
                "KUBERNETES_SERVICE_PORT_HTTPS".into(),
                self.shared.api_port.clone(),
            ),
        ];
        let set = |env: &mut Vec<(String, String)>, k: String, v: String| {
            env.retain(|(key, _)| *key != k);
            env.push((k, v));
        };
        for from in spec.env_from.iter().flatten() {
            let prefix = from.prefix.clone().unwrap_or_default();
            if let Some(r) = &from.config_map_ref {
                match self.config_map(&namespace, &r.name).await {
                    Ok(cm) => {
                        for (k, v) in cm.data.unwrap_or_default() {
                            set(&mut env, format!("{prefix}{k}"), v);
                        }
                    }
                    Err(_) if r.optional == Some(true) => {}
                    Err(e) => return Err(e),
                }
            }
            if let Some(r) = &from.secret_ref {
                match self.secret(&namespace, &r.name).await {
                    Ok(s) => {
                        for (k, v) in s.data.unwrap_or_default() {
                            set(
                                &mut env,
                                format!("{prefix}{k}"),
                                String::from_utf8_lossy(&v.0).into_owned(),
                            );
                        }
                    }
                    Err(_) if r.optional == Some(true) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        for var in spec.env.iter().flatten() {
            let value = match (&var.value, &var.value_from) {
                (_, Some(source)) => match self.env_source(&namespace, source).await? {
                    Some(v) => v,
                    None => continue,
                },
                (Some(v), None) => {
                    let lookup: HashMap<&str, &str> =
                        env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
                    expand(v, &lookup)
                }
                (None, None) => String::new(),
            };
            set(&mut env, var.name.clone(), value);
        }
        Ok(env)
    }

    /// A `valueFrom`'s value; `None` for an optional key that is missing.
    async fn env_source(&self, namespace: &str, source: &EnvVarSource) -> Result<Option<String>> {
        if let Some(f) = &source.field_ref {
            return self.field(f).map(Some);
        }
        if let Some(r) = &source.secret_key_ref {
            let secret = match self.secret(namespace, &r.name).await {
                Ok(s) => s,
                Err(_) if r.optional == Some(true) => return Ok(None),
                Err(e) => return Err(e),
            };
            return match secret.data.unwrap_or_default().remove(&r.key) {
                Some(v) => Ok(Some(String::from_utf8_lossy(&v.0).into_owned())),
                None if r.optional == Some(true) => Ok(None),
                None => bail!("secret {} has no key {}", r.name, r.key),
            };
        }
        if let Some(r) = &source.config_map_key_ref {
            let cm = match self.config_map(namespace, &r.name).await {
                Ok(c) => c,
                Err(_) if r.optional == Some(true) => return Ok(None),
                Err(e) => return Err(e),
            };
            return match cm.data.unwrap_or_default().remove(&r.key) {
                Some(v) => Ok(Some(v)),
                None if r.optional == Some(true) => Ok(None),
                None => bail!("config map {} has no key {}", r.name, r.key),
            };
        }
        bail!("resourceFieldRef and fileKeyRef are not supported by the node agent")
    }

    /// The files of a downward API volume (or projected source) under `dir`.
    fn write_downward<'i>(
        &self,
        dir: &Path,
        items: impl Iterator<Item = &'i k8s_openapi::api::core::v1::DownwardAPIVolumeFile>,
        default_mode: Option<i32>,
    ) -> Result<()> {
        for item in items {
            let f = item.field_ref.as_ref().ok_or_else(|| {
                anyhow!("downwardAPI item {}: only fieldRef is supported", item.path)
            })?;
            write_file(
                dir,
                &item.path,
                self.field(f)?.as_bytes(),
                item.mode.or(default_mode),
            )?;
        }
        Ok(())
    }

    /// A downward API field.
    fn field(&self, f: &ObjectFieldSelector) -> Result<String> {
        let meta = &self.pod.metadata;
        let path = f.field_path.as_str();
        let keyed = |prefix: &str, map: &Option<BTreeMap<String, String>>| {
            path.strip_prefix(prefix)
                .and_then(|rest| rest.strip_suffix("']"))
                .map(|key| {
                    map.as_ref()
                        .and_then(|m| m.get(key).cloned())
                        .unwrap_or_default()
                })
        };
        if let Some(v) = keyed("metadata.labels['", &meta.labels) {
            return Ok(v);
        }
        if let Some(v) = keyed("metadata.annotations['", &meta.annotations) {
            return Ok(v);
        }
        let pod_ip = self
            .sandbox
            .as_ref()
            .map(|(_, ip)| ip.clone())
            .unwrap_or_default();
        Ok(match path {
            "metadata.name" => self.pod.name_any(),
            "metadata.namespace" => self.pod.namespace().unwrap_or_default(),
            "metadata.uid" => self.uid.clone(),
            "spec.nodeName" => self.node.clone(),
            "spec.serviceAccountName" => self
                .pod
                .spec
                .as_ref()
                .and_then(|s| s.service_account_name.clone())
                .unwrap_or_default(),
            "status.hostIP" | "status.hostIPs" => self.shared.config.address.to_string(),
            "status.podIP" | "status.podIPs" => pod_ip,
            other => bail!("field {other} is not supported by the node agent"),
        })
    }

    async fn secret(&self, namespace: &str, name: &str) -> Result<Secret> {
        Api::<Secret>::namespaced(self.client.clone(), namespace)
            .get(name)
            .await
            .with_context(|| format!("reading secret {namespace}/{name}"))
    }

    async fn config_map(&self, namespace: &str, name: &str) -> Result<ConfigMap> {
        Api::<ConfigMap>::namespaced(self.client.clone(), namespace)
            .get(name)
            .await
            .with_context(|| format!("reading config map {namespace}/{name}"))
    }

    /// Materialise every volume of the pod; name → (directory, read-only).
    async fn prepare_volumes(&self) -> Result<HashMap<String, (PathBuf, bool)>> {
        let mut out = HashMap::new();
        let volumes = self
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.volumes.clone())
            .unwrap_or_default();
        for volume in volumes {
            let entry = self
                .prepare_volume(&volume)
                .await
                .with_context(|| format!("volume {}", volume.name))?;
            out.insert(volume.name.clone(), entry);
        }
        Ok(out)
    }

    async fn prepare_volume(&self, volume: &Volume) -> Result<(PathBuf, bool)> {
        let namespace = self.pod.namespace().unwrap_or_default();
        let dir = self.dir.join("volumes").join(&volume.name);
        if let Some(host) = &volume.host_path {
            let path = host_path(&self.shared.dir, &self.node, &host.path);
            match host.type_.as_deref().unwrap_or("") {
                "File" | "FileOrCreate" => {
                    if let Some(parent) = path.parent() {
                        std::fs::create_dir_all(parent)?;
                    }
                    if !path.exists() {
                        std::fs::write(&path, "")?;
                    }
                }
                "" | "Directory" | "DirectoryOrCreate" => {
                    std::fs::create_dir_all(&path)
                        .with_context(|| format!("creating {}", path.display()))?;
                    permissive(&path)?;
                }
                other => bail!("hostPath type {other} is not supported by the node agent"),
            }
            return Ok((path, false));
        }
        fresh_dir(&dir)?;
        if volume.empty_dir.is_some() {
            permissive(&dir)?;
            return Ok((dir, false));
        }
        if let Some(s) = &volume.secret {
            let name = s.secret_name.clone().unwrap_or_default();
            match self.secret(&namespace, &name).await {
                Ok(secret) => write_keys(&dir, &secret_files(secret), &s.items, s.default_mode)?,
                Err(_) if s.optional == Some(true) => {}
                Err(e) => return Err(e),
            }
            return Ok((dir, true));
        }
        if let Some(c) = &volume.config_map {
            match self.config_map(&namespace, &c.name).await {
                Ok(cm) => write_keys(&dir, &config_map_files(cm), &c.items, c.default_mode)?,
                Err(_) if c.optional == Some(true) => {}
                Err(e) => return Err(e),
            }
            return Ok((dir, true));
        }
        if let Some(d) = &volume.downward_api {
            self.write_downward(&dir, d.items.iter().flatten(), d.default_mode)?;
            return Ok((dir, true));
        }
        if let Some(p) = &volume.projected {
            for source in p.sources.iter().flatten() {
                if let Some(s) = &source.secret {
                    match self.secret(&namespace, &s.name).await {
                        Ok(secret) => {
                            write_keys(&dir, &secret_files(secret), &s.items, p.default_mode)?
                        }
                        Err(_) if s.optional == Some(true) => {}
                        Err(e) => return Err(e),
                    }
                }
                if let Some(c) = &source.config_map {
                    match self.config_map(&namespace, &c.name).await {
                        Ok(cm) => {
                            write_keys(&dir, &config_map_files(cm), &c.items, p.default_mode)?
                        }
                        Err(_) if c.optional == Some(true) => {}
                        Err(e) => return Err(e),
                    }
                }
                if let Some(d) = &source.downward_api {
                    self.write_downward(&dir, d.items.iter().flatten(), p.default_mode)?;
                }
                if let Some(t) = &source.service_account_token {
                    let token = self
                        .token(&namespace, t.audience.clone(), t.expiration_seconds)
                        .await?;
                    write_file(&dir, &t.path, token.as_bytes(), p.default_mode)?;
                }
            }
            return Ok((dir, true));
        }
        bail!(
            "this volume type is not supported by the node agent (secret, configMap, downwardAPI, projected, emptyDir, hostPath are)"
        )
    }

    /// A service account token bound to the pod, as the kubelet requests one.
    async fn token(
        &self,
        namespace: &str,
        audience: Option<String>,
        seconds: Option<i64>,
    ) -> Result<String> {
        let account = self
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_else(|| "default".into());
        let request = TokenRequest {
            spec: TokenRequestSpec {
                audiences: audience.into_iter().collect(),
                expiration_seconds: Some(seconds.unwrap_or(3607)),
                bound_object_ref: Some(BoundObjectReference {
                    api_version: Some("v1".into()),
                    kind: Some("Pod".into()),
                    name: Some(self.pod.name_any()),
                    uid: Some(self.uid.clone()),
                }),
            },
            ..Default::default()
        };
        let response = Api::<ServiceAccount>::namespaced(self.client.clone(), namespace)
            .create_token_request(&account, &PostParams::default(), &request)
            .await
            .with_context(|| {
                format!("requesting a token of service account {namespace}/{account}")
            })?;
        response
            .status
            .map(|s| s.token)
            .ok_or_else(|| anyhow!("the token request of {account} returned no token"))
    }

    /// Patch the pod's status when it changed.
    async fn report(&mut self) -> Result<()> {
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

    /// Stop and remove the pod's containers and directory; with `delete`, then
    /// delete the pod with grace period 0 (it is being deleted gracefully).
    async fn finalise(&mut self, delete: bool) {
        let grace = self
            .pod
            .metadata
            .deletion_grace_period_seconds
            .unwrap_or(0)
            .clamp(0, 300);
        let docker = self.shared.docker.clone();
        let ids: Vec<String> = self.ctrs.iter().filter_map(|c| c.id.clone()).collect();
        let stops = ids.iter().map(|id| {
            docker.stop_container(
                id,
                Some(StopContainerOptions {
                    t: Some(i32::try_from(grace).unwrap_or(30)),
                    ..Default::default()
                }),
            )
        });
        let _ = futures_util::future::join_all(stops).await;
        if let Err(e) = remove_pod_containers(&docker, &self.uid).await {
            self.shared.log.line(format!("pod {}: {e:#}", self.label()));
        }
        let _ = std::fs::remove_dir_all(&self.dir);
        self.shared
            .log
            .line(format!("pod {}: containers removed", self.label()));
        if !delete {
            return;
        }
        let api: Api<Pod> = Api::namespaced(
            self.client.clone(),
            &self.pod.namespace().unwrap_or_default(),
        );
        let mut params = DeleteParams::default().grace_period(0);
        params.preconditions = Some(Preconditions {
            uid: Some(self.uid.clone()),
            resource_version: None,
        });
        // A few attempts: nothing else would delete the pod once this worker is gone.
        for attempt in 1..=5 {
            match api.delete(&self.pod.name_any(), &params).await {
                Ok(_) => {
                    self.shared
                        .log
                        .line(format!("pod {}: deleted", self.label()));
                    return;
                }
                // Gone already, or another pod of that name (the precondition failed).
                Err(e) if is_api(&e, 404) || is_api(&e, 409) => return,
                Err(e) => {
                    self.shared.log.line(format!(
                        "pod {}: deleting it (attempt {attempt}): {e}",
                        self.label()
                    ));
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }
}

async fn remove_pod_containers(docker: &Docker, uid: &str) -> Result<()> {
    remove_by_label(
        docker,
        &format!("{POD_UID_LABEL}={uid}"),
        "the pod's containers",
    )
    .await
}

// ---------------------------------------------------------------- files

fn secret_files(secret: Secret) -> BTreeMap<String, Vec<u8>> {
    let mut files: BTreeMap<String, Vec<u8>> = secret
        .data
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v.0))
        .collect();
    for (k, v) in secret.string_data.unwrap_or_default() {
        files.insert(k, v.into_bytes());
    }
    files
}

fn config_map_files(cm: ConfigMap) -> BTreeMap<String, Vec<u8>> {
    let mut files: BTreeMap<String, Vec<u8>> = cm
        .data
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v.into_bytes()))
        .collect();
    for (k, v) in cm.binary_data.unwrap_or_default() {
        files.insert(k, v.0);
    }
    files
}

/// Write `files` into `dir`: every key, or only `items` (key → path, mode).
fn write_keys(
    dir: &Path,
    files: &BTreeMap<String, Vec<u8>>,
    items: &Option<Vec<KeyToPath>>,
    default_mode: Option<i32>,
) -> Result<()> {
    match items {
        Some(items) => {
            for item in items {
                let data = files
                    .get(&item.key)
                    .ok_or_else(|| anyhow!("no key {} to project", item.key))?;
                write_file(dir, &item.path, data, item.mode.or(default_mode))?;
            }
        }
        None => {
            for (key, data) in files {
                write_file(dir, key, data, default_mode)?;
            }
        }
    }
    Ok(())
}

/// A relative path with no `..`: what a volume's item paths may be.
fn relative(path: &str) -> Result<PathBuf> {
    let mut out = PathBuf::new();
    for part in Path::new(path).components() {
        match part {
            Component::Normal(p) => out.push(p),
            Component::CurDir => {}
            _ => bail!("path {path} must be relative and must not contain '..'"),
        }
    }
    if out.as_os_str().is_empty() {
        bail!("empty path");
    }
    Ok(out)
}

fn write_file(dir: &Path, path: &str, data: &[u8], mode: Option<i32>) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let file = dir.join(relative(path)?);
    if let Some(parent) = file.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    std::fs::write(&file, data).with_context(|| format!("writing {}", file.display()))?;
    let mode = u32::try_from(mode.unwrap_or(0o644)).unwrap_or(0o644) & 0o777;
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("setting the mode of {}", file.display()))?;
    Ok(())
}

fn fresh_dir(dir: &Path) -> Result<()> {
    if dir.exists() {
        std::fs::remove_dir_all(dir).with_context(|| format!("emptying {}", dir.display()))?;
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))
}

/// World-writable, as an emptyDir is, so that non-root containers write to it.
fn permissive(dir: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o777))
        .with_context(|| format!("setting the mode of {}", dir.display()))
}

/// Kubernetes' `$(VAR)` expansion: a defined variable is replaced, an
/// undefined one is left as written, `$$` is a `$`, anything else is literal.
pub fn expand(input: &str, vars: &HashMap<&str, &str>) -> String {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(tail) = after.strip_prefix('(') {
            match tail.find(')') {
                Some(end) => {
                    let name = &tail[..end];
                    match vars.get(name) {
                        Some(value) if !name.is_empty() => out.push_str(value),
                        _ => {
                            out.push_str("$(");
                            out.push_str(name);
                            out.push(')');
                        }
                    }
                    rest = &tail[end + 1..];
                }
                None => {
                    out.push_str("$(");
                    rest = tail;
                }
            }
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expansion_follows_kubernetes() {
        let vars = HashMap::from([("NODE", "a"), ("EMPTY", "")]);
        assert_eq!(expand("$(NODE)-x", &vars), "a-x");
        assert_eq!(expand("$(MISSING)", &vars), "$(MISSING)");
        assert_eq!(expand("$$(NODE)", &vars), "$(NODE)");
        assert_eq!(expand("$(EMPTY)|", &vars), "|");
        assert_eq!(expand("a$b $(", &vars), "a$b $(");
        assert_eq!(expand("$()", &vars), "$()");
        assert_eq!(expand("$$$$", &vars), "$$");
    }

    #[test]
    fn item_paths_stay_inside() {
        assert!(relative("a/b").is_ok());
        assert!(relative("../x").is_err());
        assert!(relative("/etc/x").is_err());
    }

    #[test]
    fn the_pause_program_is_a_129_byte_elf() {
        let p = pause_program();
        assert_eq!(p.len(), 129);
        assert_eq!(&p[..4], b"\x7fELF");
    }

    #[test]
    fn host_paths_stay_under_the_node_dir() {
        let p = host_path(Path::new("/t"), "n1", "/var/../log/x");
        assert_eq!(p, Path::new("/t/hostpath/n1/var/log/x"));
    }
}
