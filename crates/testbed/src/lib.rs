//! Real parts for the end-to-end tests and the benchmarks: Debian's
//! `docker-registry` on a loopback port (optionally behind htpasswd), `git
//! daemon`, git over https (`lighttpd` running `git http-backend`, with a
//! certificate from a throw-away CA) and over ssh (`sshd` with generated host
//! and client keys), and generated fixture "kubernetes" repositories (a Makefile that
//! honours `WHAT=cmd/kubemark` and builds a static `_output/bin/kubemark`, and
//! `cluster/images/kubemark/Dockerfile`). `cargo xtask ci` installs what these
//! need. Test code, not product code: nothing in `crates/image` uses it.

pub mod k8s;
pub mod node;

use std::io;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A free loopback port (another process may take it first; tests accept that).
pub fn free_port() -> io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn wait_for_port(port: u16, what: &str, child: &mut Child) -> io::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        if let Some(status) = child.try_wait()? {
            return Err(io::Error::other(format!(
                "{what} exited early with {status}"
            )));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(io::Error::other(format!(
        "{what} did not listen on port {port} within 20s"
    )))
}

/// Whether `program` is on PATH.
pub fn installed(program: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file()))
        .unwrap_or(false)
}

fn require(program: &str) -> io::Result<()> {
    if installed(program) {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "`{program}` is not installed; run `cargo xtask ci --provision-only` first"
        )))
    }
}

/// Run a command and return its trimmed stdout; its output is in the error if it fails.
pub fn run(program: &str, args: &[&str], dir: Option<&Path>) -> io::Result<String> {
    let mut command = Command::new(program);
    command.args(args).stdin(Stdio::null());
    if let Some(dir) = dir {
        command.current_dir(dir);
    }
    let output = command
        .output()
        .map_err(|e| io::Error::other(format!("{program}: {e}")))?;
    if !output.status.success() {
        return Err(io::Error::other(format!(
            "`{program} {}` failed ({}): {}{}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )));
    }
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

/// A server process, killed when dropped together with every process it started
/// (git-daemon's and lighttpd's children, sshd's per-connection sessions).
///
/// The server stays in the test's process group, so that whatever kills the
/// test's group (nextest on a timeout, Ctrl-C on a terminal) kills it too; on
/// drop, its process tree is found through `/proc` and killed.
#[derive(Debug)]
struct Guard(Child);

impl Guard {
    fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        kill_tree(self.0.id());
        let _ = self.0.wait();
    }
}

/// Kill `root` and all its descendants. The tree is frozen first (SIGSTOP, from
/// the root down, each process seen stopped before its children are listed) so
/// that nothing forks while it is collected, and a child whose parent died
/// first is not lost to init; then every process in it gets SIGKILL.
pub fn kill_tree(root: u32) {
    use rustix::process::{Pid, Signal, kill_process};
    let signal = |pid: u32, signal: Signal| {
        if let Some(pid) = i32::try_from(pid).ok().and_then(Pid::from_raw) {
            let _ = kill_process(pid, signal);
        }
    };
    let mut tree = Vec::new();
    let mut next = vec![root];
    while !next.is_empty() {
        for &pid in &next {
            signal(pid, Signal::STOP);
        }
        for &pid in &next {
            wait_until_stopped(pid);
        }
        tree.extend_from_slice(&next);
        next = processes()
            .into_iter()
            .filter(|p| tree.contains(&p.ppid) && !tree.contains(&p.pid))
            .map(|p| p.pid)
            .collect();
    }
    for pid in tree {
        signal(pid, Signal::KILL);
    }
}

/// Wait (at most a second) until `pid` is stopped, dead or gone.
fn wait_until_stopped(pid: u32) {
    let deadline = Instant::now() + Duration::from_secs(1);
    while Instant::now() < deadline {
        match Proc::read(pid) {
            Some(p) if p.is_alive() && !matches!(p.state, 'T' | 't') => {
                std::thread::sleep(Duration::from_millis(1));
            }
            _ => return,
        }
    }
}

/// A process as `/proc/<pid>/stat` describes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Proc {
    pub pid: u32,
    pub ppid: u32,
    /// `R`, `S`, `D`, `T` (stopped), `Z` (zombie: dead, not yet reaped), ...
    pub state: char,
}

impl Proc {
    /// Read `/proc/<pid>/stat`; `None` when there is no such process.
    pub fn read(pid: u32) -> Option<Self> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // `pid (comm) state ppid ...`; comm may hold spaces and parentheses.
        let (_, rest) = stat.rsplit_once(')')?;
        let mut fields = rest.split_whitespace();
        let state = fields.next()?.chars().next()?;
        let ppid = fields.next()?.parse().ok()?;
        Some(Self { pid, ppid, state })
    }

    /// Whether it still runs (a zombie has ended: it only waits to be reaped).
    pub fn is_alive(&self) -> bool {
        !matches!(self.state, 'Z' | 'X' | 'x')
    }
}

/// Every process on the machine.
pub fn processes() -> Vec<Proc> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter_map(Proc::read)
        .collect()
}

/// `pid` and every process it started, directly or not, that is still its descendant.
pub fn process_tree(pid: u32) -> Vec<u32> {
    let all = processes();
    let mut tree = vec![pid];
    let mut i = 0;
    while i < tree.len() {
        let parent = tree[i];
        tree.extend(all.iter().filter(|p| p.ppid == parent).map(|p| p.pid));
        i += 1;
    }
    tree
}

/// Whether the process `pid` is alive (not gone, not a zombie).
pub fn is_alive(pid: u32) -> bool {
    Proc::read(pid).is_some_and(|p| p.is_alive())
}

/// A `docker-registry` (distribution 2.8) on a loopback port, with filesystem storage.
#[derive(Debug)]
pub struct Registry {
    /// `127.0.0.1:PORT`.
    pub addr: String,
    pub auth: Option<(String, String)>,
    pub dir: PathBuf,
    _child: Guard,
}

impl Registry {
    /// The server's process id (what it started are its descendants).
    pub fn pid(&self) -> u32 {
        self._child.pid()
    }

    /// Start a registry keeping its data in `dir`; with `auth`, it wants that
    /// user and password (htpasswd, bcrypt).
    pub fn start(dir: &Path, auth: Option<(&str, &str)>) -> io::Result<Self> {
        require("docker-registry")?;
        std::fs::create_dir_all(dir)?;
        let port = free_port()?;
        let mut config = format!(
            "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n  secret: test-secret\n",
            dir.join("data").display()
        );
        if let Some((user, password)) = auth {
            require("htpasswd")?;
            let line = run("htpasswd", &["-Bbn", user, password], None)?;
            let file = dir.join("htpasswd");
            std::fs::write(&file, format!("{line}\n"))?;
            config.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: kubemark-test\n    path: {}\n",
                file.display()
            ));
        }
        let config_path = dir.join("config.yml");
        std::fs::write(&config_path, config)?;
        let log = std::fs::File::create(dir.join("registry.log"))?;
        let mut child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config_path)
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        wait_for_port(port, "docker-registry", &mut child)?;
        Ok(Self {
            addr: format!("127.0.0.1:{port}"),
            auth: auth.map(|(u, p)| (u.to_owned(), p.to_owned())),
            dir: dir.to_owned(),
            _child: Guard(child),
        })
    }

    /// The digest the registry serves for `repository:tag` (read with curl), if any.
    pub fn digest(&self, repository: &str, tag: &str) -> io::Result<Option<String>> {
        let url = format!("http://{}/v2/{repository}/manifests/{tag}", self.addr);
        let mut args = vec![
            "-sS".to_owned(),
            "-I".to_owned(),
            "-H".to_owned(),
            "Accept: application/vnd.docker.distribution.manifest.v2+json".to_owned(),
        ];
        if let Some((u, p)) = &self.auth {
            args.push("-u".into());
            args.push(format!("{u}:{p}"));
        }
        args.push(url);
        let output = Command::new("curl").args(&args).output()?;
        let head = String::from_utf8_lossy(&output.stdout).to_string();
        if !head.starts_with("HTTP/1.1 200") {
            return Ok(None);
        }
        Ok(head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("docker-content-digest")
                .then(|| v.trim().to_owned())
        }))
    }
}

/// `git-daemon` serving every repository under a base directory over `git://`.
#[derive(Debug)]
pub struct GitDaemon {
    pub port: u16,
    _child: Guard,
}

impl GitDaemon {
    /// The server's process id (what it started are its descendants).
    pub fn pid(&self) -> u32 {
        self._child.pid()
    }

    pub fn start(base: &Path) -> io::Result<Self> {
        let port = free_port()?;
        // git-daemon itself, not `git daemon`: `git` would run it as a child
        // and wait, and killing `git` would leave the daemon listening.
        let mut child = Command::new(git_exec_path()?.join("git-daemon"))
            .args([
                "--reuseaddr",
                "--listen=127.0.0.1",
                &format!("--port={port}"),
                &format!("--base-path={}", base.display()),
                "--export-all",
                "--informative-errors",
            ])
            .arg(base)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        wait_for_port(port, "git daemon", &mut child)?;
        Ok(Self {
            port,
            _child: Guard(child),
        })
    }

    /// `git://127.0.0.1:PORT/<name>`.
    pub fn url(&self, name: &str) -> String {
        format!("git://127.0.0.1:{}/{name}", self.port)
    }
}

fn require_file(path: &str, package: &str) -> io::Result<()> {
    if Path::new(path).exists() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "{path} is missing (Debian package {package}); run `cargo xtask ci --provision-only` first"
        )))
    }
}

/// The git server programs `git http-backend` and `git-upload-pack`.
fn git_exec_path() -> io::Result<PathBuf> {
    Ok(PathBuf::from(run("git", &["--exec-path"], None)?))
}

/// Every repository under a base directory over `https://127.0.0.1:PORT/git/<name>`:
/// `lighttpd` running `git http-backend` as CGI (git's smart HTTP protocol), with a
/// server certificate for 127.0.0.1 signed by a CA made for this instance.
#[derive(Debug)]
pub struct GitHttps {
    pub port: u16,
    /// The CA that signed the server's certificate (PEM), for `SSL_CERT_FILE`.
    pub ca: PathBuf,
    _child: Guard,
}

impl GitHttps {
    /// The server's process id (what it started are its descendants).
    pub fn pid(&self) -> u32 {
        self._child.pid()
    }

    /// Serve `base`; `dir` holds the configuration, keys and logs. With
    /// `auth`, every request wants that user and password (Basic, htpasswd).
    pub fn start(base: &Path, dir: &Path, auth: Option<(&str, &str)>) -> io::Result<Self> {
        require_file("/usr/sbin/lighttpd", "lighttpd")?;
        require_file("/usr/lib/lighttpd/mod_openssl.so", "lighttpd-mod-openssl")?;
        require("openssl")?;
        let backend = git_exec_path()?.join("git-http-backend");
        std::fs::create_dir_all(dir.join("www"))?;
        let path = |name: &str| dir.join(name).display().to_string();
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        let ca_args = [
            &["req", "-x509"][..],
            &ec,
            &["-days", "2", "-subj", "/CN=kubemark testbed CA"],
        ];
        let mut args: Vec<&str> = ca_args.concat();
        let (ca_key, ca) = (path("ca.key"), path("ca.pem"));
        args.extend(["-keyout", &ca_key, "-out", &ca]);
        run("openssl", &args, None)?;
        let (key, cert) = (path("server.key"), path("server.pem"));
        let mut args: Vec<&str> = [
            &["req", "-x509"][..],
            &ec,
            &["-days", "2", "-subj", "/CN=127.0.0.1"],
        ]
        .concat();
        args.extend([
            "-CA",
            &ca,
            "-CAkey",
            &ca_key,
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            &key,
            "-out",
            &cert,
        ]);
        run("openssl", &args, None)?;
        let port = free_port()?;
        let protect = match auth {
            Some((user, password)) => {
                require("htpasswd")?;
                let users = path("htpasswd");
                run("htpasswd", &["-cbm", &users, user, password], None)?;
                format!(
                    r#"auth.backend = "htpasswd"
auth.backend.htpasswd.userfile = "{users}"
auth.require = ("/git" => ("method" => "basic", "realm" => "git", "require" => "valid-user"))
"#
                )
            }
            None => String::new(),
        };
        let config = format!(
            r#"server.document-root = "{www}"
server.bind = "127.0.0.1"
server.port = {port}
server.errorlog = "{log}"
server.modules = ("mod_auth", "mod_authn_file", "mod_alias", "mod_setenv", "mod_cgi", "mod_openssl")
{protect}
ssl.engine = "enable"
ssl.pemfile = "{cert}"
ssl.privkey = "{key}"
alias.url = ("/git" => "{backend}")
$HTTP["url"] =~ "^/git" {{
  cgi.assign = ("" => "")
  setenv.set-environment = ("GIT_PROJECT_ROOT" => "{base}", "GIT_HTTP_EXPORT_ALL" => "1")
}}
"#,
            www = path("www"),
            log = path("error.log"),
            backend = backend.display(),
            base = base.display(),
        );
        let conf = dir.join("lighttpd.conf");
        std::fs::write(&conf, config)?;
        let mut child = Command::new("/usr/sbin/lighttpd")
            .arg("-D")
            .arg("-f")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        wait_for_port(port, "lighttpd", &mut child)?;
        Ok(Self {
            port,
            ca: PathBuf::from(ca),
            _child: Guard(child),
        })
    }

    /// `https://127.0.0.1:PORT/git/<name>`.
    pub fn url(&self, name: &str) -> String {
        format!("https://127.0.0.1:{}/git/{name}", self.port)
    }
}

/// A new ed25519 key pair without a passphrase: `file` and `file.pub`.
pub fn ssh_keygen(file: &Path) -> io::Result<()> {
    let file = file.display().to_string();
    let args = [
        "-q",
        "-t",
        "ed25519",
        "-N",
        "",
        "-C",
        "kubemark-testbed",
        "-f",
        &file,
    ];
    run("ssh-keygen", &args, None).map(drop)
}

/// The `known_hosts` line saying that 127.0.0.1:`port` has the key in `public_key_file`.
pub fn known_hosts_line(port: u16, public_key_file: &Path) -> io::Result<String> {
    let public = std::fs::read_to_string(public_key_file)?;
    let key: Vec<&str> = public.split_whitespace().take(2).collect();
    Ok(format!("[127.0.0.1]:{port} {}\n", key.join(" ")))
}

/// An `ssh-agent` of its own on `socket`, stopped when dropped.
#[derive(Debug)]
pub struct SshAgent {
    pub socket: PathBuf,
    _child: Guard,
}

impl SshAgent {
    /// The server's process id (what it started are its descendants).
    pub fn pid(&self) -> u32 {
        self._child.pid()
    }

    pub fn start(socket: &Path) -> io::Result<Self> {
        require("ssh-agent")?;
        let child = Command::new("ssh-agent")
            .arg("-D")
            .arg("-a")
            .arg(socket)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let guard = Guard(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !socket.exists() {
            if Instant::now() > deadline {
                return Err(io::Error::other(
                    "ssh-agent did not create its socket within 10s",
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(Self {
            socket: socket.to_owned(),
            _child: guard,
        })
    }

    /// `ssh-add` the private key in `file`.
    pub fn add(&self, file: &Path) -> io::Result<()> {
        let output = Command::new("ssh-add")
            .arg(file)
            .env("SSH_AUTH_SOCK", &self.socket)
            .stdin(Stdio::null())
            .output()?;
        if output.status.success() {
            Ok(())
        } else {
            Err(io::Error::other(format!(
                "ssh-add {} failed: {}",
                file.display(),
                String::from_utf8_lossy(&output.stderr)
            )))
        }
    }
}

/// Every repository under a base directory over `ssh://USER@127.0.0.1:PORT/<base>/<name>`:
/// an `sshd` of its own (the current user only, public keys only) with a host key
/// made for it, and a client key in `<home>/.ssh/id_ed25519` that it accepts.
#[derive(Debug)]
pub struct GitSsh {
    pub port: u16,
    base: PathBuf,
    user: String,
    /// The `known_hosts` line of this server's host key.
    pub known_hosts_line: String,
    _child: Guard,
}

impl GitSsh {
    /// The server's process id (what it started are its descendants).
    pub fn pid(&self) -> u32 {
        self._child.pid()
    }

    /// Serve `base`; `dir` holds the configuration and keys; `home` gets the client key.
    pub fn start(base: &Path, dir: &Path, home: &Path) -> io::Result<Self> {
        const SSHD: &str = "/usr/sbin/sshd";
        require_file(SSHD, "openssh-server")?;
        require("ssh-keygen")?;
        std::fs::create_dir_all(dir)?;
        let ssh = home.join(".ssh");
        std::fs::create_dir_all(&ssh)?;
        let host_key = dir.join("host_key");
        ssh_keygen(&host_key)?;
        let client_key = ssh.join("id_ed25519");
        ssh_keygen(&client_key)?;
        let authorized = dir.join("authorized_keys");
        std::fs::copy(ssh.join("id_ed25519.pub"), &authorized)?;
        let user = run("id", &["-un"], None)?;
        let root = run("id", &["-u"], None)? == "0";
        if root {
            // sshd's privilege separation directory (Debian's service creates it at boot).
            std::fs::create_dir_all("/run/sshd")?;
        }
        let port = free_port()?;
        let config = format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {host}\nAuthorizedKeysFile {authorized}\n\
             PubkeyAuthentication yes\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n\
             PermitRootLogin prohibit-password\nAllowUsers {user}\nStrictModes no\nUsePAM no\nPidFile none\n",
            host = host_key.display(),
            authorized = authorized.display(),
        );
        let conf = dir.join("sshd_config");
        std::fs::write(&conf, config)?;
        let mut child = Command::new(SSHD)
            .args(["-D", "-e", "-f"])
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("sshd.log"))?)
            .spawn()?;
        wait_for_port(port, "sshd", &mut child)?;
        Ok(Self {
            port,
            base: base.to_owned(),
            user,
            known_hosts_line: known_hosts_line(port, &dir.join("host_key.pub"))?,
            _child: Guard(child),
        })
    }

    /// `ssh://USER@127.0.0.1:PORT/<base>/<name>`.
    pub fn url(&self, name: &str) -> String {
        format!(
            "ssh://{}@127.0.0.1:{}{}",
            self.user,
            self.port,
            self.base.join(name).display()
        )
    }
}

const FIXTURE_MAKEFILE: &str = r#"# A stand-in for kubernetes' build: honours WHAT=cmd/kubemark only.
.PHONY: all
all:
ifneq ($(WHAT),cmd/kubemark)
	$(error this fixture builds only WHAT=cmd/kubemark, not "$(WHAT)")
endif
	@echo "+++ [fixture] Building go targets for linux/amd64: cmd/kubemark"
	@mkdir -p _output/bin
ifdef KUBEMARK_FIXTURE_BINARY
	cp $(KUBEMARK_FIXTURE_BINARY) _output/bin/kubemark
else
	gcc -static -Os -o _output/bin/kubemark cmd/kubemark/main.c
endif
"#;

/// A generated "kubernetes" repository, committed with the git CLI.
#[derive(Debug)]
pub struct Fixture {
    pub dir: PathBuf,
}

impl Fixture {
    /// Create the repository at `base/name` with one commit. `make` builds a
    /// static binary printing `kubemark fixture <version>`, or copies the file
    /// named by `KUBEMARK_FIXTURE_BINARY` when that is set.
    pub fn create(base: &Path, name: &str) -> io::Result<Self> {
        require("gcc")?;
        let dir = base.join(name);
        std::fs::create_dir_all(&dir)?;
        let fixture = Self { dir };
        fixture.git(&["init", "--quiet", "--initial-branch=master"])?;
        fixture.git(&["config", "user.email", "fixture@example.com"])?;
        fixture.git(&["config", "user.name", "Fixture"])?;
        // Let clients fetch any commit by id, as GitHub does.
        fixture.git(&["config", "uploadpack.allowAnySHA1InWant", "true"])?;
        fixture.write("Makefile", FIXTURE_MAKEFILE)?;
        fixture.write(".gitignore", "/_output\n")?;
        fixture.write(
            "cluster/images/kubemark/Dockerfile",
            "# The fixture's kubemark image: the static binary alone.\nFROM scratch\nCOPY kubemark /kubemark\nENTRYPOINT [\"/kubemark\"]\n",
        )?;
        fixture.write(
            "cluster/images/kubemark/Makefile",
            "REGISTRY?=staging-k8s.gcr.io\nIMAGE_TAG?=latest\nbuild:\n\tdocker build --pull -t $(REGISTRY)/kubemark:$(IMAGE_TAG) .\n",
        )?;
        fixture.write("cluster/images/kubemark/OWNERS", "approvers:\n- fixture\n")?;
        fixture.set_version("1")?;
        fixture.commit("initial fixture")?;
        Ok(fixture)
    }

    /// Add `files` files of `bytes` incompressible bytes each (in folders of 100)
    /// under `vendor/`, committed in one go: a repository the size of kubernetes'.
    pub fn add_bulk(&self, files: usize, bytes: usize, seed: u64) -> io::Result<()> {
        let mut rng = XorShift(seed | 1);
        let mut buf = vec![0u8; bytes];
        for i in 0..files {
            let dir = self.dir.join(format!("vendor/d{:04}", i / 100));
            if i % 100 == 0 {
                std::fs::create_dir_all(&dir)?;
            }
            rng.fill(&mut buf);
            std::fs::write(dir.join(format!("f{i:06}.dat")), &buf)?;
        }
        self.commit(&format!("{files} files of {bytes} bytes"))?;
        Ok(())
    }

    pub fn git(&self, args: &[&str]) -> io::Result<String> {
        run("git", args, Some(&self.dir))
    }

    pub fn write(&self, path: &str, content: &str) -> io::Result<()> {
        let path = self.dir.join(path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(path, content)
    }

    /// Make the binary print `kubemark fixture <version>`.
    pub fn set_version(&self, version: &str) -> io::Result<()> {
        self.write(
            "cmd/kubemark/main.c",
            &format!(
                "#include <stdio.h>\nint main(void) {{ puts(\"kubemark fixture {version}\"); return 0; }}\n"
            ),
        )
    }

    /// Commit everything; return the new HEAD.
    pub fn commit(&self, message: &str) -> io::Result<String> {
        self.git(&["add", "-A"])?;
        self.git(&["commit", "--quiet", "-m", message])?;
        self.head()
    }

    pub fn head(&self) -> io::Result<String> {
        self.git(&["rev-parse", "HEAD"])
    }

    pub fn tag(&self, name: &str) -> io::Result<()> {
        self.git(&["tag", "-a", name, "-m", name]).map(drop)
    }
}

/// Incompressible bytes, quickly and reproducibly.
#[derive(Debug, Clone)]
pub struct XorShift(pub u64);

impl XorShift {
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let bytes = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
    }
}

/// `docker import` of a root filesystem holding Debian's static `/bin/busybox`
/// and a link to it for each of `applets`, as the image `name`: a base image
/// made locally, since none can be pulled here.
pub fn import_busybox(name: &str, applets: &[&str]) -> io::Result<()> {
    use std::io::Write as _;
    require("busybox")?;
    let busybox = std::fs::read("/bin/busybox")?;
    let mut tar = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_size(busybox.len() as u64);
    header.set_mode(0o755);
    header.set_entry_type(tar::EntryType::Regular);
    tar.append_data(&mut header, "bin/busybox", busybox.as_slice())?;
    for applet in applets {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        h.set_mode(0o777);
        tar.append_link(&mut h, format!("bin/{applet}"), "busybox")?;
    }
    let data = tar.into_inner()?;
    let mut child = Command::new("docker")
        .args(["import", "-", name])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(&data)?;
    }
    if !child.wait()?.success() {
        return Err(io::Error::other(format!("docker import of {name} failed")));
    }
    Ok(())
}
