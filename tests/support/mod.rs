//! Helpers for the end-to-end tests: the testbed's registry, git daemon and
//! fixture repository (panicking on failure), the Docker CLI as an independent
//! check, and a runner for the `xtask` binary with an isolated environment.

#![allow(dead_code, clippy::unwrap_used)]

use std::collections::HashMap;
use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc::Receiver;
use std::thread::JoinHandle;

use sha2::{Digest, Sha256};

#[allow(unused_imports)]
pub use kubemark_testbed::{Fixture, GitDaemon, GitHttps, GitSsh, SshAgent};

/// One fixture "kubernetes" repository served by git daemon.
pub struct Upstream {
    pub fixture: Fixture,
    pub daemon: GitDaemon,
    _dir: tempfile::TempDir,
}

impl Upstream {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let fixture = Fixture::create(dir.path(), "kubernetes").unwrap();
        let daemon = GitDaemon::start(dir.path()).unwrap();
        Self {
            fixture,
            daemon,
            _dir: dir,
        }
    }

    pub fn url(&self) -> String {
        self.daemon.url("kubernetes")
    }
}

impl Default for Upstream {
    fn default() -> Self {
        Self::new()
    }
}

/// A free loopback port.
pub fn free_port() -> u16 {
    kubemark_testbed::free_port().unwrap()
}

/// Run a command; panic with its output if it fails.
pub fn sh(program: &str, args: &[&str], dir: Option<&Path>) -> String {
    kubemark_testbed::run(program, args, dir).unwrap()
}

pub fn sha256_hex(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A registry in its own temporary directory.
pub struct Registry {
    inner: kubemark_testbed::Registry,
    pub addr: String,
    _dir: tempfile::TempDir,
}

impl Registry {
    pub fn start() -> Self {
        Self::launch(None)
    }

    /// A registry that wants `user`/`password`.
    pub fn with_auth(user: &str, password: &str) -> Self {
        Self::launch(Some((user, password)))
    }

    /// A registry on 127.0.0.1 that speaks only HTTPS, its certificate signed by a
    /// throw-away CA nothing trusts.
    pub fn with_untrusted_tls() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ca = kubemark_testbed::k8s::Authority::new("untrusted-test-ca").unwrap();
        let pem = ca
            .server(&["localhost"], &["127.0.0.1".parse().unwrap()])
            .unwrap();
        let inner = kubemark_testbed::Registry::start_tls(dir.path(), &pem).unwrap();
        Self {
            addr: inner.addr.clone(),
            inner,
            _dir: dir,
        }
    }

    fn launch(auth: Option<(&str, &str)>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let inner = kubemark_testbed::Registry::start(dir.path(), auth).unwrap();
        Self {
            addr: inner.addr.clone(),
            inner,
            _dir: dir,
        }
    }

    /// The digest the registry serves for `repository:tag`.
    pub fn digest(&self, repository: &str, tag: &str) -> Option<String> {
        self.inner.digest(repository, tag).unwrap()
    }

    /// The repositories it holds; panics when it does not answer.
    pub fn repositories(&self) -> Vec<String> {
        self.inner.repositories().unwrap()
    }

    /// The server's process id (to stop it with SIGSTOP: a registry that no longer answers).
    pub fn pid(&self) -> u32 {
        self.inner.pid()
    }

    pub fn manifest(&self, repository: &str, reference: &str) -> Option<serde_json::Value> {
        self.inner.manifest(repository, reference).unwrap()
    }
}

/// What a run of the xtask binary did.
#[derive(Debug)]
pub struct Run {
    /// The arguments it was given, named when a check fails.
    pub args: Vec<String>,
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
            self.code,
            code,
            "exit code of `xtask {}`{}",
            self.args.join(" "),
            self.output()
        );
        self
    }

    /// Panics unless stdout holds each of `texts`.
    #[track_caller]
    pub fn stdout_has(&self, texts: &[&str]) -> &Self {
        self.check("stdout", &self.stdout, texts, true)
    }

    /// Panics unless stderr holds each of `texts`.
    #[track_caller]
    pub fn stderr_has(&self, texts: &[&str]) -> &Self {
        self.check("stderr", &self.stderr, texts, true)
    }

    /// Panics if stdout holds any of `texts`.
    #[track_caller]
    pub fn stdout_lacks(&self, texts: &[&str]) -> &Self {
        self.check("stdout", &self.stdout, texts, false)
    }

    /// Panics if stderr holds any of `texts`.
    #[track_caller]
    pub fn stderr_lacks(&self, texts: &[&str]) -> &Self {
        self.check("stderr", &self.stderr, texts, false)
    }

    /// Panics if stdout or stderr holds any of `texts` (a secret, say).
    #[track_caller]
    pub fn never_prints(&self, texts: &[&str]) -> &Self {
        self.stdout_lacks(texts).stderr_lacks(texts)
    }

    #[track_caller]
    fn check(&self, stream: &str, text: &str, texts: &[&str], wanted: bool) -> &Self {
        for t in texts {
            if text.contains(t) != wanted {
                panic!(
                    "the {stream} of `xtask {}` {} {t:?}{}",
                    self.args.join(" "),
                    if wanted { "lacks" } else { "holds" },
                    self.output()
                );
            }
        }
        self
    }

    /// Both streams, for a failure message.
    fn output(&self) -> String {
        format!(
            "\n--- stdout:\n{}\n--- stderr:\n{}",
            self.stdout, self.stderr
        )
    }
}

/// `wanted`, `running` and `ready` of `deploy status --output json`.
pub fn status_counts(status: &serde_json::Value) -> [Option<i64>; 3] {
    ["wanted", "running", "ready"].map(|key| status[key].as_i64())
}

/// The command line of one xtask run, built up flag by flag.
#[derive(Clone, Debug)]
pub struct Args(pub Vec<String>);

impl Args {
    pub fn new(words: &[&str]) -> Self {
        Self(words.iter().map(|w| w.to_string()).collect())
    }

    /// `image --registry <registry> --tag <tag> --kubernetes-repo <repo> --source-dir <src>`.
    pub fn image(registry: &str, tag: &str, repo: impl AsRef<OsStr>, src: &Path) -> Self {
        Self::new(&["image"])
            .opt("--registry", registry)
            .opt("--tag", tag)
            .opt("--kubernetes-repo", repo)
            .opt("--source-dir", src)
    }

    /// A flag and its value (a path, say).
    pub fn opt(mut self, flag: &str, value: impl AsRef<OsStr>) -> Self {
        let value = value.as_ref().to_str().unwrap().to_owned();
        self.0.extend([flag.to_owned(), value]);
        self
    }

    /// Words added at the end, as they are.
    pub fn flags(mut self, words: &[&str]) -> Self {
        self.0.extend(words.iter().map(|w| w.to_string()));
        self
    }

    /// A copy with `words` added at the end.
    pub fn with(&self, words: &[&str]) -> Self {
        self.clone().flags(words)
    }
}

impl std::ops::Deref for Args {
    type Target = [String];

    fn deref(&self) -> &[String] {
        &self.0
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

    /// Whether a run recorded an image (`image.json` in the state directory).
    pub fn has_record(&self) -> bool {
        self.state().join("image.json").exists()
    }

    pub fn xtask<S: AsRef<str>>(&self, args: &[S]) -> Run {
        self.xtask_with_stdin(args, None)
    }

    /// Start the binary with piped stdout and stderr, and return at once.
    pub fn spawn<S: AsRef<str>>(&self, args: &[S]) -> Child {
        let mut command = self.command(args);
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        command.spawn().unwrap()
    }

    fn command<S: AsRef<str>>(&self, args: &[S]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_xtask"));
        command.args(args.iter().map(AsRef::as_ref));
        for (key, _) in std::env::vars() {
            // `cargo xtask ci`'s mark stays: what the binary leaves running is found by it.
            let settings = key.starts_with("KUBEMARK_") && key != "KUBEMARK_CI_RUN";
            if settings || key == "DOCKER_HOST" || key == "KUBE_BUILD_PLATFORMS" {
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

    pub fn xtask_with_stdin<S: AsRef<str>>(&self, args: &[S], stdin: Option<&str>) -> Run {
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
            args: args.iter().map(|a| a.as_ref().to_owned()).collect(),
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

/// Reads `child`'s stderr on a thread to its end: the receiver hears when a
/// line starts with `prefix`, and the thread returns every line.
pub fn watch_stderr(child: &mut Child, prefix: &'static str) -> (Receiver<()>, JoinHandle<String>) {
    let (tx, rx) = std::sync::mpsc::channel();
    let stderr = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut seen = String::new();
        for line in BufReader::new(stderr).lines() {
            let line = line.unwrap();
            if line.starts_with(prefix) {
                let _ = tx.send(());
            }
            seen.push_str(&line);
            seen.push('\n');
        }
        seen
    });
    (rx, reader)
}

/// SIGINT, as Ctrl-C sends it.
pub fn interrupt(child: &Child) {
    sh("kill", &["-INT", &child.id().to_string()], None);
}

/// The Docker CLI, as a check independent of bollard.
pub mod docker {
    use super::*;

    pub fn pull(image: &str) {
        sh("docker", &["pull", "--quiet", image], None);
    }

    /// Remove `image` only. `--no-prune` keeps its untagged parents: they are the
    /// legacy builder's step cache, which other tests' builds share (same binary,
    /// same COPY step) and may be building on at that moment (moby#29011: a build
    /// then fails with "No such image").
    pub fn rmi(image: &str) {
        let _ = Command::new("docker")
            .args(["rmi", "--force", "--no-prune", image])
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

    /// Every path of the image's filesystem (`docker create` + `docker export`) with its
    /// type, mode, owner, size and content digest; what docker adds to any container
    /// (`/etc/hosts`, `/dev`, ...) left out.
    pub fn filesystem(image: &str) -> Vec<String> {
        let id = sh("docker", &["create", image], None);
        let output = Command::new("docker")
            .args(["export", &id])
            .output()
            .unwrap();
        sh("docker", &["rm", &id], None);
        assert!(
            output.status.success(),
            "docker export: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let mut archive = tar::Archive::new(output.stdout.as_slice());
        let mut out = Vec::new();
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            let path = entry.path().unwrap().to_string_lossy().into_owned();
            let bare = path.trim_end_matches('/');
            let added = [
                ".dockerenv",
                "etc",
                "etc/hostname",
                "etc/hosts",
                "etc/mtab",
                "etc/resolv.conf",
            ];
            if added.contains(&bare)
                || ["dev", "proc", "sys"]
                    .iter()
                    .any(|d| bare == *d || bare.starts_with(&format!("{d}/")))
            {
                continue;
            }
            let header = entry.header().clone();
            let mut data = Vec::new();
            entry.read_to_end(&mut data).unwrap();
            out.push(format!(
                "{path} {:?} {:o} {}:{} {} {}",
                header.entry_type(),
                header.mode().unwrap(),
                header.uid().unwrap(),
                header.gid().unwrap(),
                data.len(),
                &sha256_hex(&data)[..16]
            ));
        }
        out.sort();
        out
    }

    /// `docker image inspect --format {{json <field>}}`.
    pub fn inspect(image: &str, field: &str) -> serde_json::Value {
        let json = sh(
            "docker",
            &[
                "image",
                "inspect",
                "--format",
                &format!("{{{{json {field}}}}}"),
                image,
            ],
            None,
        );
        serde_json::from_str(&json).unwrap()
    }

    /// Tag `local` as `target` and push it (`docker tag`, `docker push`).
    pub fn push_as(local: &str, target: &str) {
        sh("docker", &["tag", local, target], None);
        sh("docker", &["push", "--quiet", target], None);
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
        assert!(
            kubemark_testbed::installed("busybox"),
            "busybox is not installed; run `cargo xtask ci --provision-only`"
        );
        kubemark_testbed::import_busybox(NAME, &["sh", "sha256sum", "cat", "ls"]).unwrap();
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
