//! Real parts for the end-to-end tests: a Docker registry (Debian's
//! `docker-registry`, optionally behind htpasswd), `git daemon` serving a
//! generated fixture "kubernetes" repository, the Docker CLI as an independent
//! check, and a runner for the `xtask` binary with an isolated environment.
//! `cargo xtask ci` installs what these need.

#![allow(dead_code, clippy::unwrap_used)]

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

/// A free loopback port (a tiny race with other processes is acceptable in tests).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_for_port(port: u16, what: &str, child: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("{what} exited early with {status}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("{what} did not listen on port {port} within 20s");
}

fn require(program: &str) {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file()))
        .unwrap_or(false);
    assert!(
        found,
        "`{program}` is not installed; run `cargo xtask ci --provision-only` first"
    );
}

/// Run a command; panic with its output if it fails.
pub fn sh(program: &str, args: &[&str], dir: Option<&Path>) -> String {
    let mut command = Command::new(program);
    command.args(args);
    if let Some(dir) = dir {
        command.current_dir(dir);
    }
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(
        output.status.success(),
        "`{program} {}` failed: {}\n{}",
        args.join(" "),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

pub fn sha256_hex(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A `docker-registry` on a loopback port with filesystem storage.
pub struct Registry {
    pub addr: String,
    pub auth: Option<(String, String)>,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Registry {
    pub fn start() -> Self {
        Self::launch(None)
    }

    /// A registry that wants `user`/`password` (htpasswd, bcrypt).
    pub fn with_auth(user: &str, password: &str) -> Self {
        Self::launch(Some((user.to_owned(), password.to_owned())))
    }

    fn launch(auth: Option<(String, String)>) -> Self {
        require("docker-registry");
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let mut config = format!(
            "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n  secret: test-secret\n",
            dir.path().join("data").display()
        );
        if let Some((user, password)) = &auth {
            require("htpasswd");
            let line = sh("htpasswd", &["-Bbn", user, password], None);
            let file = dir.path().join("htpasswd");
            std::fs::write(&file, format!("{line}\n")).unwrap();
            config.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: kubemark-test\n    path: {}\n",
                file.display()
            ));
        }
        let config_path = dir.path().join("config.yml");
        std::fs::write(&config_path, config).unwrap();
        let log = std::fs::File::create(dir.path().join("registry.log")).unwrap();
        let mut child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config_path)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        wait_for_port(port, "docker-registry", &mut child);
        Self {
            addr: format!("127.0.0.1:{port}"),
            auth,
            child,
            _dir: dir,
        }
    }

    /// The digest the registry serves for `repository:tag`, read with curl.
    pub fn digest(&self, repository: &str, tag: &str) -> Option<String> {
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
        let output = Command::new("curl").args(&args).output().unwrap();
        let head = String::from_utf8_lossy(&output.stdout).to_string();
        if !head.starts_with("HTTP/1.1 200") {
            return None;
        }
        head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("docker-content-digest")
                .then(|| v.trim().to_owned())
        })
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `git daemon` serving the directories under a base path.
pub struct GitDaemon {
    pub port: u16,
    child: Child,
}

impl GitDaemon {
    pub fn start(base: &Path) -> Self {
        let port = free_port();
        let mut child = Command::new("git")
            .args([
                "daemon",
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
            .spawn()
            .unwrap();
        wait_for_port(port, "git daemon", &mut child);
        Self { port, child }
    }

    pub fn url(&self, name: &str) -> String {
        format!("git://127.0.0.1:{}/{name}", self.port)
    }
}

impl Drop for GitDaemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
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
	gcc -static -Os -o _output/bin/kubemark cmd/kubemark/main.c
"#;

/// A generated "kubernetes" repository: the kubemark Dockerfile, a Makefile that
/// builds a static `_output/bin/kubemark`, and helpers to commit and tag.
pub struct Fixture {
    pub dir: PathBuf,
}

impl Fixture {
    /// Create the repository at `base/name` with one commit.
    pub fn create(base: &Path, name: &str) -> Self {
        require("gcc");
        let dir = base.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let fixture = Self { dir };
        fixture.git(&["init", "--quiet", "--initial-branch=master"]);
        fixture.git(&["config", "user.email", "fixture@example.com"]);
        fixture.git(&["config", "user.name", "Fixture"]);
        // Let clients fetch any commit by id, as GitHub does.
        fixture.git(&["config", "uploadpack.allowAnySHA1InWant", "true"]);
        fixture.write("Makefile", FIXTURE_MAKEFILE);
        fixture.write(".gitignore", "/_output\n");
        fixture.write(
            "cluster/images/kubemark/Dockerfile",
            "# The fixture's kubemark image: the static binary alone.\nFROM scratch\nCOPY kubemark /kubemark\nENTRYPOINT [\"/kubemark\"]\n",
        );
        fixture.write(
            "cluster/images/kubemark/Makefile",
            "REGISTRY?=staging-k8s.gcr.io\nIMAGE_TAG?=latest\nbuild:\n\tdocker build --pull -t $(REGISTRY)/kubemark:$(IMAGE_TAG) .\n",
        );
        fixture.write("cluster/images/kubemark/OWNERS", "approvers:\n- fixture\n");
        fixture.set_version("1");
        fixture.commit("initial fixture");
        fixture
    }

    pub fn git(&self, args: &[&str]) -> String {
        sh("git", args, Some(&self.dir))
    }

    pub fn write(&self, path: &str, content: &str) {
        let path = self.dir.join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, content).unwrap();
    }

    /// Make the binary print `kubemark fixture <version>`.
    pub fn set_version(&self, version: &str) {
        self.write(
            "cmd/kubemark/main.c",
            &format!("#include <stdio.h>\nint main(void) {{ puts(\"kubemark fixture {version}\"); return 0; }}\n"),
        );
    }

    pub fn commit(&self, message: &str) -> String {
        self.git(&["add", "-A"]);
        self.git(&["commit", "--quiet", "-m", message]);
        self.head()
    }

    pub fn head(&self) -> String {
        self.git(&["rev-parse", "HEAD"])
    }

    pub fn tag(&self, name: &str) {
        self.git(&["tag", "-a", name, "-m", name]);
    }
}

/// What a run of the xtask binary did.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {self:?}"))
    }

    #[track_caller]
    pub fn assert_code(&self, code: i32) -> &Self {
        assert_eq!(
            self.code, code,
            "exit code; stdout:\n{}\nstderr:\n{}",
            self.stdout, self.stderr
        );
        self
    }
}

/// An isolated environment for the xtask binary: its own state dir, HOME,
/// Docker config and settings file; no inherited KUBEMARK_* variables.
pub struct Env {
    pub root: tempfile::TempDir,
    pub vars: Vec<(String, String)>,
}

impl Env {
    pub fn new() -> Self {
        let root = tempfile::tempdir().unwrap();
        for d in ["home", "docker", "state"] {
            std::fs::create_dir_all(root.path().join(d)).unwrap();
        }
        std::fs::write(root.path().join("kubemark.toml"), "").unwrap();
        Self {
            root,
            vars: Vec::new(),
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.root.path().join(name)
    }

    pub fn state(&self) -> PathBuf {
        self.path("state")
    }

    pub fn set(&mut self, key: &str, value: &str) -> &mut Self {
        self.vars.push((key.to_owned(), value.to_owned()));
        self
    }

    pub fn record(&self) -> serde_json::Value {
        let text = std::fs::read_to_string(self.state().join("image.json")).unwrap();
        serde_json::from_str(&text).unwrap()
    }

    pub fn xtask(&self, args: &[&str]) -> Run {
        self.xtask_with_stdin(args, None)
    }

    /// Start the binary with piped stdout and stderr, and return at once.
    pub fn spawn(&self, args: &[&str]) -> Child {
        let mut command = self.command(args);
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        command.spawn().unwrap()
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_xtask"));
        command.args(args);
        for (key, _) in std::env::vars() {
            if key.starts_with("KUBEMARK_") || key == "DOCKER_HOST" || key == "KUBE_BUILD_PLATFORMS"
            {
                command.env_remove(key);
            }
        }
        command
            .env("HOME", self.path("home"))
            .env("DOCKER_CONFIG", self.path("docker"))
            .env("KUBEMARK_STATE_DIR", self.state())
            .env("KUBEMARK_CONFIG", self.path("kubemark.toml"))
            .env("NO_COLOR", "1");
        for (k, v) in &self.vars {
            command.env(k, v);
        }
        command
    }

    pub fn xtask_with_stdin(&self, args: &[&str], stdin: Option<&str>) -> Run {
        let mut command = self.command(args);
        command.stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        });
        command.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = command.spawn().unwrap();
        if let Some(input) = stdin {
            child
                .stdin
                .take()
                .unwrap()
                .write_all(input.as_bytes())
                .unwrap();
        }
        let output: Output = child.wait_with_output().unwrap();
        Run {
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }
}

impl Default for Env {
    fn default() -> Self {
        Self::new()
    }
}

/// The Docker CLI, as a check independent of bollard.
pub mod docker {
    use super::*;

    pub fn pull(image: &str) {
        sh("docker", &["pull", "--quiet", image], None);
    }

    pub fn rmi(image: &str) {
        let _ = Command::new("docker")
            .args(["rmi", "--force", image])
            .output();
    }

    pub fn exists(image: &str) -> bool {
        Command::new("docker")
            .args(["image", "inspect", image])
            .output()
            .unwrap()
            .status
            .success()
    }

    pub fn labels(image: &str) -> HashMap<String, String> {
        let json = sh(
            "docker",
            &[
                "image",
                "inspect",
                "--format",
                "{{json .Config.Labels}}",
                image,
            ],
            None,
        );
        serde_json::from_str(&json).unwrap()
    }

    /// A file's bytes from the image's filesystem (`docker create` + `docker cp`).
    pub fn read_file(image: &str, path: &str) -> Vec<u8> {
        let id = sh("docker", &["create", image], None);
        let output = Command::new("docker")
            .args(["cp", &format!("{id}:{path}"), "-"])
            .output()
            .unwrap();
        sh("docker", &["rm", &id], None);
        assert!(
            output.status.success(),
            "docker cp: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let mut archive = tar::Archive::new(output.stdout.as_slice());
        let mut entry = archive.entries().unwrap().next().unwrap().unwrap();
        let mut data = Vec::new();
        entry.read_to_end(&mut data).unwrap();
        data
    }

    /// Run the image (optionally with another entrypoint) and return its stdout.
    pub fn run(image: &str, entrypoint: Option<&str>, args: &[&str]) -> String {
        let mut all = vec!["run", "--rm", "--network=none"];
        if let Some(entrypoint) = entrypoint {
            all.extend(["--entrypoint", entrypoint]);
        }
        all.push(image);
        all.extend_from_slice(args);
        sh("docker", &all, None)
    }

    /// A local base image holding busybox (there is no pulling here):
    /// `docker import` of a rootfs with /bin/busybox and its applets.
    pub fn busybox_base() -> &'static str {
        const NAME: &str = "kubemark-test/busybox:1";
        if exists(NAME) {
            return NAME;
        }
        require("busybox");
        let busybox = std::fs::read("/bin/busybox").unwrap();
        let mut tar = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_gnu();
        header.set_size(busybox.len() as u64);
        header.set_mode(0o755);
        header.set_entry_type(tar::EntryType::Regular);
        tar.append_data(&mut header, "bin/busybox", busybox.as_slice())
            .unwrap();
        for applet in ["sh", "sha256sum", "cat", "ls"] {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::Symlink);
            h.set_size(0);
            h.set_mode(0o777);
            tar.append_link(&mut h, format!("bin/{applet}"), "busybox")
                .unwrap();
        }
        let data = tar.into_inner().unwrap();
        let mut child = Command::new("docker")
            .args(["import", "-", NAME])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(&data).unwrap();
        assert!(
            child.wait().unwrap().success(),
            "docker import of the busybox base failed"
        );
        NAME
    }

    /// Removes the images on drop.
    pub struct Cleanup(pub Vec<String>);

    impl Drop for Cleanup {
        fn drop(&mut self) {
            for image in &self.0 {
                rmi(image);
            }
        }
    }
}
