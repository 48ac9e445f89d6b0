//! A running control plane: etcd, kube-apiserver and, with controllers,
//! kube-controller-manager and kube-scheduler.

use std::io;
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rcgen::KeyPair;
use tempfile::TempDir;

use super::Binaries;
use super::pki::{Authority, kubeconfig, tls, write};
use crate::free_port;
use crate::process::{Guard, tail};

/// What kind of control plane.
#[derive(Debug, Clone)]
pub struct Config {
    /// `external` or `master`: names files, certificates and log lines.
    pub name: String,
    /// Where the API server listens and what its certificate names: an address
    /// of this host that the pods (and the tests) reach.
    pub address: IpAddr,
    /// Run kube-controller-manager and kube-scheduler too.
    pub controllers: bool,
}

/// One running component.
#[derive(Debug)]
struct Component {
    name: &'static str,
    log: PathBuf,
    guard: Option<Guard>,
}

/// etcd, kube-apiserver and (with `controllers`) kube-controller-manager and
/// kube-scheduler, on this host's ports, stopped when dropped.
#[derive(Debug)]
pub struct ControlPlane {
    pub config: Config,
    /// `https://ADDRESS:PORT`.
    pub server: String,
    pub dir: PathBuf,
    pub ca: Authority,
    /// A kubeconfig of a `system:masters` user.
    pub admin_kubeconfig: PathBuf,
    binaries: Binaries,
    components: Vec<Component>,
    apiserver_args: Vec<String>,
    /// `dir`, removed when dropped: the last field, so after the components
    /// have stopped.
    _tempdir: TempDir,
}

impl ControlPlane {
    /// Start one; returns when the API server is ready (`/readyz`) and, with
    /// controllers, when the default service account exists.
    pub fn start(binaries: &Binaries, config: Config) -> io::Result<Self> {
        let tempdir = tempfile::Builder::new()
            .prefix(&format!("kubemark-k8s-{}-", config.name))
            .tempdir()?;
        let dir = tempdir.path().to_owned();
        let ca = Authority::new(&config.name)?;
        let f = |name: &str| dir.join(name);
        write(&f("ca.crt"), &ca.pem.cert)?;
        write(&f("ca.key"), &ca.pem.key)?;
        let serving = ca.server(
            &[
                "localhost",
                "kubernetes",
                "kubernetes.default",
                "kubernetes.default.svc",
                "kubernetes.default.svc.cluster.local",
            ],
            &[
                config.address,
                IpAddr::from([127, 0, 0, 1]),
                IpAddr::from([10, 96, 0, 1]),
            ],
        )?;
        write(&f("apiserver.crt"), &serving.cert)?;
        write(&f("apiserver.key"), &serving.key)?;
        // The service-account signing key, and its public half for verifying.
        let sa = KeyPair::generate().map_err(tls)?;
        write(&f("sa.key"), &sa.serialize_pem())?;
        write(&f("sa.pub"), &sa.public_key_pem())?;

        let etcd_port = free_port()?;
        let peer_port = free_port()?;
        let api_port = free_port()?;
        let server = match config.address {
            IpAddr::V6(a) => format!("https://[{a}]:{api_port}"),
            IpAddr::V4(a) => format!("https://{a}:{api_port}"),
        };
        let admin = ca.client("kubemark-admin", Some("system:masters"))?;
        let admin_kubeconfig = f("admin.kubeconfig");
        write(
            &admin_kubeconfig,
            &kubeconfig(&config.name, &server, &ca.pem.cert, &admin),
        )?;
        write(&f("admin.crt"), &admin.cert)?;
        write(&f("admin.key"), &admin.key)?;

        let apiserver_args: Vec<String> = vec![
            format!("--etcd-servers=http://127.0.0.1:{etcd_port}"),
            format!("--bind-address={}", config.address),
            format!("--advertise-address={}", config.address),
            format!("--secure-port={api_port}"),
            format!("--tls-cert-file={}", f("apiserver.crt").display()),
            format!("--tls-private-key-file={}", f("apiserver.key").display()),
            format!("--client-ca-file={}", f("ca.crt").display()),
            format!("--service-account-key-file={}", f("sa.pub").display()),
            format!("--service-account-signing-key-file={}", f("sa.key").display()),
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local".into(),
            "--service-cluster-ip-range=10.96.0.0/16".into(),
            "--authorization-mode=Node,RBAC".into(),
            "--enable-admission-plugins=NamespaceLifecycle,ServiceAccount,NodeRestriction,PodSecurity,LimitRanger,ResourceQuota".into(),
            "--allow-privileged=true".into(),
            // Hollow kubelets with per-node identity bootstrap with a token.
            "--enable-bootstrap-token-auth=true".into(),
            "--profiling=false".into(),
            // No kubernetes Service endpoints: the address may be loopback, and
            // nothing in these tests reaches the API through the Service.
            "--endpoint-reconciler-type=none".into(),
            format!("--cert-dir={}", f("certs").display()),
        ];
        let mut plane = Self {
            server,
            dir: dir.clone(),
            ca,
            admin_kubeconfig,
            binaries: binaries.clone(),
            components: Vec::new(),
            apiserver_args,
            config,
            _tempdir: tempdir,
        };
        plane.spawn(
            "etcd",
            &[
                "--name=default".into(),
                format!("--data-dir={}", f("etcd").display()),
                format!("--listen-client-urls=http://127.0.0.1:{etcd_port}"),
                format!("--advertise-client-urls=http://127.0.0.1:{etcd_port}"),
                format!("--listen-peer-urls=http://127.0.0.1:{peer_port}"),
                format!("--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}"),
                format!("--initial-cluster=default=http://127.0.0.1:{peer_port}"),
                "--unsafe-no-fsync=true".into(),
                "--log-level=warn".into(),
            ],
        )?;
        plane.start_apiserver()?;
        if plane.config.controllers {
            for (component, user) in [
                ("kube-controller-manager", "system:kube-controller-manager"),
                ("kube-scheduler", "system:kube-scheduler"),
            ] {
                let client = plane.ca.client(user, None)?;
                let file = f(&format!("{component}.kubeconfig"));
                write(
                    &file,
                    &kubeconfig(
                        &plane.config.name,
                        &plane.server,
                        &plane.ca.pem.cert,
                        &client,
                    ),
                )?;
                let kubeconfig = file.display().to_string();
                let mut args = vec![
                    format!("--kubeconfig={kubeconfig}"),
                    format!("--authentication-kubeconfig={kubeconfig}"),
                    format!("--authorization-kubeconfig={kubeconfig}"),
                    "--leader-elect=false".into(),
                    "--bind-address=127.0.0.1".into(),
                    format!("--secure-port={}", free_port()?),
                ];
                if component == "kube-controller-manager" {
                    args.extend([
                        format!(
                            "--service-account-private-key-file={}",
                            f("sa.key").display()
                        ),
                        format!("--root-ca-file={}", f("ca.crt").display()),
                        format!("--cluster-signing-cert-file={}", f("ca.crt").display()),
                        format!("--cluster-signing-key-file={}", f("ca.key").display()),
                        "--use-service-account-credentials=true".into(),
                        "--controllers=*".into(),
                        "--concurrent-rc-syncs=5".into(),
                    ]);
                }
                let name = if component == "kube-controller-manager" {
                    "kube-controller-manager"
                } else {
                    "kube-scheduler"
                };
                plane.spawn(name, &args)?;
            }
            plane.wait_for(
                "the default service account",
                Duration::from_secs(90),
                |p| {
                    p.kubectl(&["-n", "default", "get", "serviceaccount", "default"])
                        .is_ok()
                },
            )?;
        }
        Ok(plane)
    }

    fn spawn(&mut self, name: &'static str, args: &[String]) -> io::Result<()> {
        let log = self.dir.join(format!("{name}.log"));
        let file = std::fs::File::create(&log)?;
        let child = Command::new(self.binaries.path(name))
            .args(args)
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .spawn()
            .map_err(|e| {
                io::Error::other(format!(
                    "starting {}: {e}",
                    self.binaries.path(name).display()
                ))
            })?;
        self.components.push(Component {
            name,
            log,
            guard: Some(Guard(child)),
        });
        Ok(())
    }

    fn start_apiserver(&mut self) -> io::Result<()> {
        let args = self.apiserver_args.clone();
        self.spawn("kube-apiserver", &args)?;
        self.wait_for("kube-apiserver /readyz", Duration::from_secs(90), |p| {
            p.curl("/readyz").is_ok_and(|body| body.trim() == "ok")
        })
    }

    /// Stop kube-apiserver and start it again on the same port and etcd, as an
    /// upgrade or a crash would: clients see their connections cut and watches end.
    pub fn restart_apiserver(&mut self) -> io::Result<()> {
        self.stop("kube-apiserver");
        self.start_apiserver()
    }

    /// Stop one component (its process tree); its log stays.
    pub fn stop(&mut self, name: &str) {
        for c in self.components.iter_mut().filter(|c| c.name == name) {
            c.guard = None;
        }
    }

    fn wait_for(
        &self,
        what: &str,
        limit: Duration,
        ready: impl Fn(&Self) -> bool,
    ) -> io::Result<()> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if ready(self) {
                return Ok(());
            }
            if let Some(dead) = self
                .components
                .iter()
                .find(|c| c.guard.as_ref().is_some_and(|g| !crate::is_alive(g.pid())))
            {
                return Err(io::Error::other(format!(
                    "{} of {} exited while waiting for {what}:\n{}",
                    dead.name,
                    self.config.name,
                    tail(&dead.log, 40)
                )));
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        Err(io::Error::other(format!(
            "{what} of {} not ready after {limit:?}:\n{}",
            self.config.name,
            self.logs(20)
        )))
    }

    /// GET `path` on the API server as the admin.
    pub fn curl(&self, path: &str) -> io::Result<String> {
        let d = &self.dir;
        crate::run(
            "curl",
            &[
                "-sS",
                "--fail",
                "--max-time",
                "5",
                "--cacert",
                &d.join("ca.crt").display().to_string(),
                "--cert",
                &d.join("admin.crt").display().to_string(),
                "--key",
                &d.join("admin.key").display().to_string(),
                &format!("{}{path}", self.server),
            ],
            None,
        )
    }

    /// `kubectl` as the admin; stdout.
    pub fn kubectl(&self, args: &[&str]) -> io::Result<String> {
        let mut all = vec![
            "--kubeconfig".to_owned(),
            self.admin_kubeconfig.display().to_string(),
            "--cache-dir".to_owned(),
            self.dir.join("kubectl-cache").display().to_string(),
        ];
        all.extend(args.iter().map(|s| (*s).to_owned()));
        let refs: Vec<&str> = all.iter().map(String::as_str).collect();
        crate::run("kubectl", &refs, None)
    }

    /// `kubectl apply -f -` of `yaml` as the admin.
    pub fn apply(&self, yaml: &str) -> io::Result<String> {
        let file = self.dir.join(format!("apply-{}.yaml", free_port()?));
        write(&file, yaml)?;
        self.kubectl(&["apply", "-f", &file.display().to_string()])
    }

    /// A kubeconfig of `user` (in `group`), whom RBAC grants nothing until a
    /// test binds a role to them.
    pub fn kubeconfig_for(&self, user: &str, group: Option<&str>) -> io::Result<PathBuf> {
        let client = self.ca.client(user, group)?;
        let file = self
            .dir
            .join(format!("{}.kubeconfig", user.replace(':', "-")));
        write(
            &file,
            &kubeconfig(&self.config.name, &self.server, &self.ca.pem.cert, &client),
        )?;
        Ok(file)
    }

    /// The last `lines` of every component's log.
    pub fn logs(&self, lines: usize) -> String {
        self.components
            .iter()
            .map(|c| {
                format!(
                    "--- {} {} ({}):\n{}",
                    self.config.name,
                    c.name,
                    c.log.display(),
                    tail(&c.log, lines)
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for ControlPlane {
    #[allow(
        clippy::print_stderr,
        reason = "a failing test shows the tails of the components' logs"
    )]
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.logs(30));
        }
        // Controllers first, etcd last.
        while let Some(c) = self.components.pop() {
            drop(c);
        }
    }
}
