//! Real Kubernetes control planes for tests: etcd, kube-apiserver,
//! kube-controller-manager and kube-scheduler of Kubernetes v1.37.2, built from
//! Kubernetes' own Go modules (`crates/testbed/k8s`; `cargo xtask ci` builds
//! them into `target/k8s/bin`, or `KUBEMARK_K8S_BIN` names another directory).
//!
//! Each [`ControlPlane`] has its own PKI (a CA, the API server's serving
//! certificate for the address given, a service-account key, client
//! certificates for the admin, the controller-manager, the scheduler and any
//! user a test asks for), serves on that address with
//! `--authorization-mode=Node,RBAC` and admission including PodSecurity,
//! NodeRestriction, ResourceQuota and LimitRanger, keeps each component's log,
//! prints the logs' tails when a test panics, and stops everything when dropped.

use std::io;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};

use crate::{Guard, free_port};

/// The components this module runs, by file name.
pub const COMPONENTS: [&str; 5] = [
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kubemark",
];

/// Where the built components are.
#[derive(Debug, Clone)]
pub struct Binaries {
    pub dir: PathBuf,
}

impl Binaries {
    /// `KUBEMARK_K8S_BIN`, else `target/k8s/bin` of this workspace; `None` when
    /// a component is missing there (`cargo xtask ci` builds them).
    pub fn find() -> Option<Self> {
        let dir = std::env::var_os("KUBEMARK_K8S_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/k8s/bin"));
        COMPONENTS
            .iter()
            .all(|c| dir.join(c).is_file())
            .then_some(Self { dir })
    }

    /// For a test: the components, or `None` and a printed `SKIPPED` line when
    /// nobody built them. Under `KUBEMARK_REQUIRE_REAL` (set by `cargo xtask
    /// ci`, which builds them) a missing component fails the test instead.
    pub fn for_tests() -> Option<Self> {
        let found = Self::find();
        if found.is_none() {
            assert!(
                std::env::var_os("KUBEMARK_REQUIRE_REAL").is_none(),
                "the real tier is required (KUBEMARK_REQUIRE_REAL) but target/k8s/bin lacks a component: `cargo xtask ci --provision-only` builds them"
            );
            eprintln!(
                "SKIPPED: no Kubernetes components in target/k8s/bin (`cargo xtask ci --provision-only` builds them)"
            );
        }
        found
    }

    pub fn path(&self, component: &str) -> PathBuf {
        self.dir.join(component)
    }
}

/// A certificate and its key, PEM.
#[derive(Debug, Clone)]
pub struct Pem {
    pub cert: String,
    pub key: String,
}

/// The control plane's certificate authority; it signs every certificate here
/// and, through the controller-manager, approved CSRs.
pub struct Authority {
    issuer: CertifiedIssuer<'static, KeyPair>,
    pub pem: Pem,
}

impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Authority")
    }
}

fn tls(e: rcgen::Error) -> io::Error {
    io::Error::other(e.to_string())
}

impl Authority {
    pub fn new(name: &str) -> io::Result<Self> {
        let key = KeyPair::generate().map_err(tls)?;
        let key_pem = key.serialize_pem();
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(tls)?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, format!("{name}-ca"));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let issuer = CertifiedIssuer::self_signed(params, key).map_err(tls)?;
        let cert = issuer.pem();
        Ok(Self {
            issuer,
            pem: Pem { cert, key: key_pem },
        })
    }

    /// A client certificate for `user` in `group` (Kubernetes reads CN and O).
    pub fn client(&self, user: &str, group: Option<&str>) -> io::Result<Pem> {
        let key = KeyPair::generate().map_err(tls)?;
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(tls)?;
        params.distinguished_name.push(DnType::CommonName, user);
        if let Some(group) = group {
            params
                .distinguished_name
                .push(DnType::OrganizationName, group);
        }
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let cert = params.signed_by(&key, &self.issuer).map_err(tls)?;
        Ok(Pem {
            cert: cert.pem(),
            key: key.serialize_pem(),
        })
    }

    /// A serving certificate for these names and addresses.
    pub fn server(&self, names: &[&str], addresses: &[IpAddr]) -> io::Result<Pem> {
        let key = KeyPair::generate().map_err(tls)?;
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(tls)?;
        params
            .distinguished_name
            .push(DnType::CommonName, "kube-apiserver");
        for n in names {
            params
                .subject_alt_names
                .push(SanType::DnsName((*n).try_into().map_err(tls)?));
        }
        for a in addresses {
            params.subject_alt_names.push(SanType::IpAddress(*a));
        }
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        let cert = params.signed_by(&key, &self.issuer).map_err(tls)?;
        Ok(Pem {
            cert: cert.pem(),
            key: key.serialize_pem(),
        })
    }
}

fn b64(text: &str) -> String {
    const TABLE: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(TABLE[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// A kubeconfig with the CA and a client certificate inline.
pub fn kubeconfig(name: &str, server: &str, ca_pem: &str, client: &Pem) -> String {
    format!(
        "apiVersion: v1\nkind: Config\ncurrent-context: {name}\nclusters:\n- name: {name}\n  cluster:\n    server: {server}\n    certificate-authority-data: {}\nusers:\n- name: {name}\n  user:\n    client-certificate-data: {}\n    client-key-data: {}\ncontexts:\n- name: {name}\n  context:\n    cluster: {name}\n    user: {name}\n",
        b64(ca_pem),
        b64(&client.cert),
        b64(&client.key),
    )
}

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
    _tempdir: Option<TempDir>,
}

/// A directory removed when dropped (std only; the testbed has no tempfile).
#[derive(Debug)]
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn write(path: &Path, text: &str) -> io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    io::Write::write_all(&mut f, text.as_bytes())
}

impl ControlPlane {
    /// Start one; returns when the API server is ready (`/readyz`) and, with
    /// controllers, when the default service account exists.
    pub fn start(binaries: &Binaries, config: Config) -> io::Result<Self> {
        let dir = std::env::temp_dir().join(format!(
            "kubemark-k8s-{}-{}-{}",
            config.name,
            std::process::id(),
            free_port()?
        ));
        std::fs::create_dir_all(&dir)?;
        let tempdir = TempDir(dir.clone());
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
            _tempdir: Some(tempdir),
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

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

impl Drop for ControlPlane {
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

/// The Makefile of a fixture checkout whose `make all WHAT=cmd/kubemark`
/// builds the real kubemark (Kubernetes v1.37.2's `cmd/kubemark/app`) with Go,
/// static, from the module in the checkout (a copy of `crates/testbed/k8s`).
const REAL_KUBEMARK_MAKEFILE: &str = r#"# A stand-in for kubernetes' build that builds the real kubemark with Go.
.PHONY: all
all:
ifneq ($(WHAT),cmd/kubemark)
	$(error this fixture builds only WHAT=cmd/kubemark, not "$(WHAT)")
endif
	@echo "+++ [fixture] Building go targets for linux/amd64: cmd/kubemark (Kubernetes v1.37.2)"
	@mkdir -p _output/bin
	CGO_ENABLED=0 GOFLAGS=-mod=readonly GOCACHE=$(KUBEMARK_GOCACHE) GOMODCACHE=$(KUBEMARK_GOMODCACHE) $(KUBEMARK_GO) build -trimpath -ldflags "-s -w -X k8s.io/component-base/version.gitVersion=v1.37.2 -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=37" -o _output/bin/kubemark ./cmd/kubemark
"#;

/// A fixture "kubernetes" checkout at `base/name` whose `make all
/// WHAT=cmd/kubemark` builds the real kubemark binary (Go and the module cache
/// that `cargo xtask ci` filled; about 20 s with a warm Go build cache), and
/// whose image is that binary `FROM scratch` with what upstream's distroless
/// base (go-runner) gives it and the real hollow kubelet needs: a `/tmp` (it
/// exits with "Can't make a temp rootdir" otherwise) and an `/etc/passwd` (its
/// user-namespace manager reads it: "open /etc/passwd: no such file").
pub fn real_kubemark_checkout(base: &Path, name: &str) -> io::Result<crate::Fixture> {
    let fixture = crate::Fixture::create(base, name)?;
    let module = Path::new(env!("CARGO_MANIFEST_DIR")).join("k8s");
    for file in ["go.mod", "go.sum", "cmd/kubemark/main.go"] {
        let text = std::fs::read_to_string(module.join(file))?;
        fixture.write(file, &text)?;
    }
    // The Go caches of whoever builds the test (a test's HOME is a fresh
    // directory: with it, every run would download and compile all of Kubernetes).
    // `go` on PATH, else where Go's installer puts it (make runs with the
    // environment of whoever runs `cargo xtask image`).
    let on_path = std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join("go").is_file()));
    let go = if on_path {
        "go"
    } else {
        "/usr/local/go/bin/go"
    };
    let go_env = crate::run(go, &["env", "GOCACHE", "GOMODCACHE"], None)?;
    let mut caches = go_env.lines();
    let (cache, modcache) = (
        caches.next().unwrap_or_default(),
        caches.next().unwrap_or_default(),
    );
    fixture.write(
        "Makefile",
        &format!(
            "KUBEMARK_GO ?= {go}\nKUBEMARK_GOCACHE ?= {cache}\nKUBEMARK_GOMODCACHE ?= {modcache}\n{REAL_KUBEMARK_MAKEFILE}"
        ),
    )?;
    let image = "cluster/images/kubemark";
    fixture.write(&format!("{image}/tmp/.keep"), "")?;
    fixture.write(
        &format!("{image}/etc/passwd"),
        "root:x:0:0:root:/root:/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\n",
    )?;
    fixture.write(
        &format!("{image}/etc/group"),
        "root:x:0:\nnogroup:x:65534:\n",
    )?;
    fixture.write(
        &format!("{image}/Dockerfile"),
        "# The real kubemark with the little of a distroless base it needs.\nFROM scratch\nCOPY tmp /tmp\nCOPY etc /etc\nCOPY kubemark /kubemark\nENTRYPOINT [\"/kubemark\"]\n",
    )?;
    fixture.commit("build the real kubemark of Kubernetes v1.37.2")?;
    Ok(fixture)
}
