//! The agent's thread: its setup, start, shared state, log and cleanup.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context as _, Result};
use bollard::Docker;
use bollard::models::NetworkCreateRequest;
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use tokio::sync::watch;

use super::engine::{is_docker_not_found, remove_labelled};
use super::pause::ensure_pause_image;
use super::registration::{heartbeat, register};
use super::sync::watch_pods;
use super::{Config, LABEL};

/// A log file the agent appends to, one timestamped line per event.
#[derive(Debug, Clone)]
pub(super) struct Log(Arc<Mutex<std::fs::File>>);

impl Log {
    pub(super) fn create(path: &Path) -> io::Result<Self> {
        Ok(Self(Arc::new(Mutex::new(std::fs::File::create(path)?))))
    }

    pub(super) fn line(&self, text: impl AsRef<str>) {
        if let Ok(mut f) = self.0.lock() {
            let _ = io::Write::write_all(
                &mut *f,
                format!("{} {}\n", Timestamp::now(), text.as_ref()).as_bytes(),
            );
        }
    }
}

/// What the agent's thread needs.
pub(super) struct Setup {
    pub(super) id: String,
    pub(super) dir: PathBuf,
    pub(super) network: String,
    pub(super) config: Config,
    pub(super) kubeconfigs: Vec<(String, PathBuf)>,
    pub(super) api_host: String,
    pub(super) api_port: String,
    pub(super) log: Log,
}

/// What every task shares.
pub(super) struct Shared {
    pub(super) id: String,
    pub(super) dir: PathBuf,
    pub(super) network: String,
    pub(super) config: Config,
    pub(super) docker: Docker,
    pub(super) docker_version: String,
    pub(super) api_host: String,
    pub(super) api_port: String,
    pub(super) log: Log,
}

pub(super) async fn run(
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
pub(super) async fn start(
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

pub(super) async fn client(kubeconfig: &Path) -> Result<Client> {
    let file = kube::config::Kubeconfig::read_from(kubeconfig)
        .with_context(|| format!("reading {}", kubeconfig.display()))?;
    let config = kube::Config::from_custom_kubeconfig(file, &Default::default())
        .await
        .with_context(|| format!("loading {}", kubeconfig.display()))?;
    Client::try_from(config).context("building a Kubernetes client")
}

/// Resolves once the agent is told to stop (or its handle is gone).
pub(super) async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

pub(super) fn is_api(e: &kube::Error, code: u16) -> bool {
    matches!(e, kube::Error::Api(status) if status.code == code)
}

pub(super) fn now() -> String {
    Timestamp::now().to_string()
}
