//! A Kubernetes API simulator that a client cannot tell from a small real
//! cluster for everything the kubemark workflow touches: real HTTP/1.1 over
//! TLS (or plain HTTP), bearer tokens, discovery and OpenAPI, the verbs with
//! selectors, pagination, watches and server-side apply, and controllers that
//! schedule pods, run them (hollow nodes included) and collect garbage.
//!
//! One process can serve two roles at once: the **external cluster** (runs
//! hollow-node pods on simulated worker nodes) and the **kubemark master**
//! (where hollow nodes register). Test and demo infrastructure: the product's
//! libraries never depend on it. What it does not model: `README.md`.

// Libraries never print: what the simulator has to say goes through `tracing`
// or back to the caller.
#![deny(clippy::print_stdout, clippy::print_stderr)]

pub mod cluster;
mod discovery;
pub mod faults;
mod http;
pub mod kubeconfig;
pub mod meta;
pub mod patch;
mod proto;
pub mod select;
pub mod store;
pub mod table;
mod tls;
mod validate;

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

pub use faults::{ErrorRule, Faults};
pub use store::Store;

/// Which images the simulated kubelets can pull. By default every image pulls.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Images {
    /// Images on this registry (e.g. `http://127.0.0.1:5000`) pull if its `/v2/`
    /// API has the manifest.
    pub registry: Option<String>,
    /// Other images pull only if listed here (compared without `docker.io/library/`);
    /// `None` lets every other image pull.
    pub known: Option<Vec<String>>,
}

/// How the simulated kubelets and hollow nodes behave.
#[derive(Debug, Clone)]
pub struct Timing {
    /// From a pod's binding to its containers running.
    pub kubelet_delay: Duration,
    /// First crash-loop back-off; doubles up to `backoff_max`.
    pub backoff: Duration,
    pub backoff_max: Duration,
    /// How often a hollow node renews its Lease.
    pub lease_renew: Duration,
    /// How often a hollow node posts its status even when nothing changed.
    pub status_report: Duration,
    /// A node whose heartbeat is older than this turns `Ready=Unknown`.
    pub node_grace: Duration,
    /// How often the kubelet retries what failed (image pulls, mounts).
    pub retry: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Self {
            kubelet_delay: Duration::from_millis(300),
            backoff: Duration::from_secs(10),
            backoff_max: Duration::from_secs(300),
            lease_renew: Duration::from_secs(10),
            status_report: Duration::from_secs(300),
            node_grace: Duration::from_secs(40),
            retry: Duration::from_secs(2),
        }
    }
}

/// Everything about one simulated cluster.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Names the kubeconfig's cluster, user and context (`sim-<name>`).
    pub name: String,
    /// HTTPS with a CA generated for this instance; plain HTTP when false.
    pub tls: bool,
    /// Address to listen on.
    pub listen: IpAddr,
    /// 0 picks a free port.
    pub port: u16,
    /// Host name or address written into the kubeconfig (and the certificate).
    pub advertise: Option<String>,
    /// The bearer token; generated when `None`.
    pub token: Option<String>,
    /// Simulated worker nodes and what each offers.
    pub workers: usize,
    pub worker_cpu: String,
    pub worker_memory: String,
    pub worker_pods: u32,
    pub images: Images,
    pub timing: Timing,
    pub faults: Faults,
    /// Changes kept per resource for watch resumption; older versions get 410.
    pub history: usize,
    pub bookmark_interval: Duration,
    /// `/version`'s gitVersion.
    pub version: String,
    /// (verb, resource) pairs SelfSubjectAccessReviews deny (`*` matches any).
    pub deny: Vec<(String, String)>,
    /// `host:port` addresses this cluster's pods cannot reach (a firewall between
    /// the external cluster and a master): hollow nodes time out connecting.
    pub unreachable: Vec<String>,
    /// Directory for the kubeconfig file; a private temporary one when `None`.
    pub kubeconfig_dir: Option<PathBuf>,
    pub seed: u64,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            name: "sim".into(),
            tls: true,
            listen: IpAddr::V4(Ipv4Addr::LOCALHOST),
            port: 0,
            advertise: None,
            token: None,
            workers: 3,
            worker_cpu: "4".into(),
            worker_memory: "16Gi".into(),
            worker_pods: 110,
            images: Images::default(),
            timing: Timing::default(),
            faults: Faults::default(),
            history: 2_000,
            bookmark_interval: Duration::from_secs(5),
            version: "v1.33.0".into(),
            deny: Vec::new(),
            unreachable: Vec::new(),
            kubeconfig_dir: None,
            seed: 1,
        }
    }
}

/// Container logs, kept by the simulated kubelets.
#[derive(Debug, Default)]
pub struct Logs {
    inner: Mutex<HashMap<(String, String, String), VecDeque<String>>>,
}

impl Logs {
    const KEEP: usize = 1000;

    pub fn append(&self, ns: &str, pod: &str, container: &str, line: impl Into<String>) {
        let mut inner = self
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let lines = inner
            .entry((ns.to_owned(), pod.to_owned(), container.to_owned()))
            .or_default();
        lines.push_back(line.into());
        while lines.len() > Self::KEEP {
            lines.pop_front();
        }
    }

    pub fn lines(&self, ns: &str, pod: &str, container: &str) -> Vec<String> {
        let inner = self
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        inner
            .get(&(ns.to_owned(), pod.to_owned(), container.to_owned()))
            .map(|l| l.iter().cloned().collect())
            .unwrap_or_default()
    }

    pub fn forget_pod(&self, ns: &str, pod: &str) {
        let mut inner = self
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        inner.retain(|(n, p, _), _| !(n == ns && p == pod));
    }
}

/// What the server sent, by client (the User-Agent's product name), and when
/// the last node turned Ready: what benchmarks read at `/debug/sim/stats`.
#[derive(Debug, Default)]
pub struct Stats {
    agents: Mutex<HashMap<String, Arc<AgentStats>>>,
    /// Unix milliseconds of the last node turning Ready.
    pub last_node_ready_ms: std::sync::atomic::AtomicU64,
}

/// Requests and response bytes of one client.
#[derive(Debug, Default)]
pub struct AgentStats {
    pub requests: std::sync::atomic::AtomicU64,
    pub bytes: std::sync::atomic::AtomicU64,
}

impl Stats {
    /// The counters of the client whose User-Agent is `user_agent`.
    pub fn agent(&self, user_agent: &str) -> Arc<AgentStats> {
        let name = user_agent
            .split('/')
            .next()
            .filter(|s| !s.is_empty())
            .unwrap_or("unknown");
        let mut agents = self
            .agents
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        Arc::clone(agents.entry(name.to_owned()).or_default())
    }

    pub fn to_json(&self) -> serde_json::Value {
        use std::sync::atomic::Ordering::Relaxed;
        let agents = self
            .agents
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        serde_json::json!({
            "agents": agents.iter().map(|(k, v)| (k.clone(), serde_json::json!({
                "requests": v.requests.load(Relaxed), "bytes": v.bytes.load(Relaxed)}))).collect::<serde_json::Map<_, _>>(),
            "last_node_ready_ms": self.last_node_ready_ms.load(Relaxed),
        })
    }
}

/// State shared by the HTTP server and the controllers.
#[derive(Debug)]
pub struct Shared {
    pub cfg: SimConfig,
    pub store: Arc<Store>,
    pub injector: faults::Injector,
    pub tokens: Vec<String>,
    pub logs: Logs,
    /// `host:port` clients use.
    pub host: String,
    pub runtime: cluster::Runtime,
    pub stats: Stats,
}

/// Why the simulator could not start.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot generate the TLS certificates: {0}")]
    Tls(String),
    #[error("cannot write the kubeconfig {path}: {source}")]
    Kubeconfig {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A running simulated cluster.
#[derive(Debug)]
pub struct Sim {
    /// `https://127.0.0.1:PORT`.
    pub url: String,
    /// PEM of the CA that signed the serving certificate (TLS only).
    pub ca_pem: Option<String>,
    pub token: String,
    /// The kubeconfig file this instance wrote (0600).
    pub kubeconfig: PathBuf,
    shared: Arc<Shared>,
    tasks: Vec<JoinHandle<()>>,
    /// The private directory of the kubeconfig when none was given, removed on drop.
    _tempdir: Option<tempfile::TempDir>,
}

fn random_token() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut out = String::new();
    for _ in 0..2 {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos()),
        );
        out.push_str(&format!("{:016x}", h.finish()));
    }
    out
}

impl Sim {
    /// Start serving: bind, generate certificates and a token, write the
    /// kubeconfig, start the controllers.
    pub async fn start(cfg: SimConfig) -> Result<Sim, SimError> {
        let addr = SocketAddr::new(cfg.listen, cfg.port);
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| SimError::Listen { addr, source })?;
        let local = listener
            .local_addr()
            .map_err(|source| SimError::Listen { addr, source })?;
        let host_name = cfg.advertise.clone().unwrap_or_else(|| match cfg.listen {
            IpAddr::V4(v4) if v4.is_unspecified() => "127.0.0.1".to_owned(),
            ip => ip.to_string(),
        });
        let host = format!("{host_name}:{}", local.port());
        let token = cfg.token.clone().unwrap_or_else(random_token);
        let (acceptor, ca_pem) = if cfg.tls {
            let (acceptor, ca) = tls::acceptor(&host_name).map_err(SimError::Tls)?;
            (Some(acceptor), Some(ca))
        } else {
            (None, None)
        };
        let scheme = if cfg.tls { "https" } else { "http" };
        let url = format!("{scheme}://{host}");
        let (dir, tempdir) = match &cfg.kubeconfig_dir {
            Some(d) => (d.clone(), None),
            None => {
                let t = tempfile::Builder::new()
                    .prefix("kubemark-sim-")
                    .tempdir()
                    .map_err(|source| SimError::Kubeconfig {
                        path: std::env::temp_dir(),
                        source,
                    })?;
                (t.path().to_owned(), Some(t))
            }
        };
        let kubeconfig = dir.join(format!("{}.kubeconfig", cfg.name));
        let text = kubeconfig::render(
            &format!("sim-{}", cfg.name),
            &url,
            ca_pem.as_deref(),
            &token,
        );
        write_private(&kubeconfig, &text).map_err(|source| SimError::Kubeconfig {
            path: kubeconfig.clone(),
            source,
        })?;

        let store = Arc::new(Store::new(cfg.history, cfg.seed));
        let shared = Arc::new(Shared {
            injector: faults::Injector::new(cfg.faults.clone()),
            tokens: vec![token.clone()],
            logs: Logs::default(),
            runtime: cluster::Runtime::default(),
            stats: Stats::default(),
            host,
            store,
            cfg,
        });
        let mut tasks = cluster::start(Arc::clone(&shared));
        let server_shared = Arc::clone(&shared);
        tasks.push(tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let shared = Arc::clone(&server_shared);
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        http::handle(Arc::clone(&shared), req)
                    });
                    let builder = hyper::server::conn::http1::Builder::new();
                    match acceptor {
                        Some(acceptor) => {
                            if let Ok(tls) = acceptor.accept(stream).await {
                                let _ = builder.serve_connection(TokioIo::new(tls), service).await;
                            }
                        }
                        None => {
                            let _ = builder
                                .serve_connection(TokioIo::new(stream), service)
                                .await;
                        }
                    }
                });
            }
        }));
        Ok(Sim {
            url,
            ca_pem,
            token,
            kubeconfig,
            shared,
            tasks,
            _tempdir: tempdir,
        })
    }

    pub fn store(&self) -> &Store {
        &self.shared.store
    }

    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// The kubeconfig's text.
    pub fn kubeconfig_yaml(&self) -> String {
        kubeconfig::render(
            &format!("sim-{}", self.shared.cfg.name),
            &self.url,
            self.ca_pem.as_deref(),
            &self.token,
        )
    }

    /// Stop serving and stop every controller.
    pub fn shutdown(&mut self) {
        for task in self.tasks.drain(..) {
            task.abort();
        }
        cluster::stop(&self.shared);
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Write a file readable by its owner only (it holds a credential).
pub fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(text.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_private_kubeconfig_directory_goes_with_the_sim() {
        let sim = Sim::start(SimConfig {
            workers: 0,
            tls: false,
            ..SimConfig::default()
        })
        .await
        .unwrap();
        let dir = sim.kubeconfig.parent().unwrap().to_owned();
        assert!(sim.kubeconfig.is_file());
        drop(sim);
        assert!(!dir.exists(), "{}", dir.display());
    }
}
