//! `cargo xtask bench deploy`: deploy's wait against upstream's, side by side
//! on the same simulator (its own process, zero start-up delay): detection
//! delay (the simulator's last node Ready → done), client CPU seconds, peak
//! RSS, and bytes read from the master. Upstream's method is `kubectl get
//! node` every second, counting lines without "NotReady".

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::verdict;
use crate::Global;
use crate::report::Failure;

#[derive(Debug, clap::Args)]
pub struct DeployBench {
    /// Hollow-node counts to measure.
    #[arg(long, value_delimiter = ',', default_value = "1000,5000")]
    sizes: Vec<usize>,
    /// Bring-up times to measure, in seconds: each simulated kubelet takes this
    /// long from binding to running (0: at once). With two or more, deploy's
    /// CPU and RSS at the slowest are compared with those at the fastest.
    #[arg(long, value_delimiter = ',', default_value = "0")]
    bring_up: Vec<u64>,
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The simulator in its own process, so that the tool's CPU and memory are its own.
struct SimProcess {
    child: std::process::Child,
    dir: tempfile::TempDir,
    url: String,
    token: String,
}

impl Drop for SimProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn routable_ip() -> String {
    std::net::UdpSocket::bind("0.0.0.0:0")
        .and_then(|s| {
            s.connect("10.255.255.255:1")?;
            s.local_addr()
        })
        .map(|a| a.ip())
        .ok()
        .filter(|ip| !ip.is_loopback() && !ip.is_unspecified())
        .map_or_else(|| "127.0.0.1".to_owned(), |ip| ip.to_string())
}

impl SimProcess {
    fn start(nodes: usize, bring_up_s: u64) -> Result<Self, Failure> {
        let dir = tempfile::tempdir()?;
        let workers = nodes.div_ceil(1000).max(2).to_string();
        let child = Command::new(std::env::current_exe()?)
            .args(["sim", "--kubeconfig-dir"])
            .arg(dir.path())
            .args([
                "--workers",
                &workers,
                "--worker-cpu",
                "128",
                "--worker-memory",
                "1Ti",
                "--worker-pods",
                "1100",
            ])
            .args(["--kubelet-delay-ms", &(bring_up_s * 1000).to_string()])
            .args(["--listen", &routable_ip()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let master = dir.path().join("master.kubeconfig");
        let deadline = Instant::now() + Duration::from_secs(30);
        while !master.exists()
            || std::fs::read_to_string(&master).map_or(true, |t| !t.contains("current-context"))
        {
            if Instant::now() > deadline {
                return Err(Failure::failed("the simulator did not start within 30 s"));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let text = std::fs::read_to_string(&master)?;
        let field = |key: &str| {
            text.lines()
                .find_map(|l| l.trim().strip_prefix(key))
                .map(|v| v.trim().to_owned())
                .unwrap_or_default()
        };
        Ok(Self {
            url: field("server:"),
            token: field("token:"),
            child,
            dir,
        })
    }

    fn kubeconfig(&self, name: &str) -> String {
        self.dir
            .path()
            .join(format!("{name}.kubeconfig"))
            .display()
            .to_string()
    }

    /// The master's counters: (bytes sent to `agent`, last node Ready in unix ms).
    fn stats(&self, agent: &str) -> Result<(u64, u64), Failure> {
        let out = Command::new("curl")
            .args([
                "-sSk",
                "-H",
                &format!("Authorization: Bearer {}", self.token),
            ])
            .arg(format!("{}/debug/sim/stats", self.url))
            .output()?;
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)
            .map_err(|e| Failure::failed(format!("the simulator's stats: {e}")))?;
        Ok((
            v.pointer(&format!("/agents/{agent}/bytes"))
                .and_then(serde_json::Value::as_u64)
                .unwrap_or(0),
            v["last_node_ready_ms"].as_u64().unwrap_or(0),
        ))
    }
}

struct Measured {
    delay_s: f64,
    cpu_s: f64,
    /// The CPU of the wait alone: for the tool, its whole run less a
    /// `--no-wait` run of the same deploy on a fresh simulator (the loop's
    /// setup, measured in the same bench); the loop is all wait.
    wait_cpu_s: f64,
    rss_mib: Option<f64>,
    master_mb: f64,
}

/// GNU time's `%U %S %M` of a command; returns (cpu seconds, max RSS KiB, stdout).
fn timed(program: &str, args: &[String], global: &Global) -> Result<(f64, f64, String), Failure> {
    let output = Command::new("/usr/bin/time")
        .arg("-f")
        .arg("KUBEMARK_BENCH %U %S %M")
        .arg(program)
        .args(args)
        .env("KUBEMARK_STATE_DIR", &global.state_dir)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| Failure::failed(format!("/usr/bin/time (Debian package `time`): {e}")))?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() {
        return Err(Failure::failed(format!(
            "{program} {} failed:\n{stderr}",
            args.join(" ")
        )));
    }
    let fields: Vec<f64> = stderr
        .lines()
        .find_map(|l| l.strip_prefix("KUBEMARK_BENCH "))
        .map(|l| {
            l.split_whitespace()
                .filter_map(|x| x.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    let cpu = fields.first().copied().unwrap_or(0.0) + fields.get(1).copied().unwrap_or(0.0);
    let rss = fields.get(2).copied().unwrap_or(0.0);
    Ok((
        cpu,
        rss,
        String::from_utf8_lossy(&output.stdout).into_owned(),
    ))
}

fn deploy_args(sim: &SimProcess, nodes: usize, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = vec![
        "deploy".into(),
        "--external-kubeconfig".into(),
        sim.kubeconfig("external"),
        "--master-kubeconfig".into(),
        sim.kubeconfig("master"),
        "--replicas".into(),
        nodes.to_string(),
        "--image".into(),
        "127.0.0.1:5000/kubemark:v1.33.0".into(),
        "--allow-loopback-master".into(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

fn ours(sim: &SimProcess, nodes: usize, global: &Global) -> Result<Measured, Failure> {
    let (before, _) = sim.stats("kubemark-deploy")?;
    let exe = std::env::current_exe()?;
    let (cpu, rss, stdout) = timed(
        &exe.to_string_lossy(),
        &deploy_args(sim, nodes, &["--output", "json"]),
        global,
    )?;
    let done = unix_ms();
    let outcome: serde_json::Value = serde_json::from_str(&stdout).unwrap_or_default();
    if outcome.pointer("/summary/wanted").is_none() {
        return Err(Failure::failed(format!(
            "deploy did not report a finished wait:\n{stdout}"
        )));
    }
    let (after, last_ready) = sim.stats("kubemark-deploy")?;
    Ok(Measured {
        delay_s: (done as f64 - last_ready as f64) / 1000.0,
        cpu_s: cpu,
        // Set by `run`, once the `--no-wait` run beside it is measured.
        wait_cpu_s: cpu,
        rss_mib: Some(rss / 1024.0),
        master_mb: (after - before) as f64 / 1e6,
    })
}

/// Upstream's wait, and the CPU of the `--no-wait` deploy that set it up
/// (deploy's run without its wait).
fn upstream(sim: &SimProcess, nodes: usize, global: &Global) -> Result<(Measured, f64), Failure> {
    let exe = std::env::current_exe()?;
    // Apply with deploy, then wait as upstream's scripts do.
    let (no_wait_cpu, _, _) = timed(
        &exe.to_string_lossy(),
        &deploy_args(sim, nodes, &["--no-wait"]),
        global,
    )?;
    let cache = tempfile::tempdir()?;
    let (before, _) = sim.stats("kubectl")?;
    let mut cpu = 0.0;
    let deadline = Instant::now() + Duration::from_secs(1800);
    let done = loop {
        let tick = Instant::now();
        let args = vec![
            "--kubeconfig".to_owned(),
            sim.kubeconfig("master"),
            "--cache-dir".to_owned(),
            cache.path().display().to_string(),
            "get".to_owned(),
            "node".to_owned(),
        ];
        let (c, _, out) = timed("kubectl", &args, global)?;
        cpu += c;
        let ready = out
            .lines()
            .skip(1)
            .filter(|l| !l.contains("NotReady"))
            .count();
        if ready >= nodes {
            break unix_ms();
        }
        if Instant::now() > deadline {
            return Err(Failure::failed(
                "the kubectl loop did not see every node Ready in 30 minutes",
            ));
        }
        std::thread::sleep(Duration::from_secs(1).saturating_sub(tick.elapsed()));
    };
    let (after, last_ready) = sim.stats("kubectl")?;
    Ok((
        Measured {
            delay_s: (done as f64 - last_ready as f64) / 1000.0,
            cpu_s: cpu,
            wait_cpu_s: cpu,
            rss_mib: None,
            master_mb: (after - before) as f64 / 1e6,
        },
        no_wait_cpu,
    ))
}

fn destroy(sim: &SimProcess, global: &Global) -> Result<(), Failure> {
    let exe = std::env::current_exe()?;
    let args = vec![
        "deploy".to_owned(),
        "destroy".to_owned(),
        "--external-kubeconfig".to_owned(),
        sim.kubeconfig("external"),
        "--master-kubeconfig".to_owned(),
        sim.kubeconfig("master"),
    ];
    timed(&exe.to_string_lossy(), &args, global).map(drop)
}

pub fn run(bench: DeployBench, global: &Global) -> Result<(), Failure> {
    let mut lines = vec![
        "deploy benchmark: the tool's wait vs upstream's `kubectl get node` loop, same simulator"
            .to_owned(),
    ];
    for &n in &bench.sizes {
        let mut ours_by_bring_up: Vec<(u64, f64, f64)> = Vec::new();
        for &bring_up in &bench.bring_up {
            eprintln!("==> bench deploy: {n} hollow nodes, {bring_up} s bring-up");
            let sim = SimProcess::start(n, bring_up)?;
            let mut tool = ours(&sim, n, global)?;
            destroy(&sim, global)?;
            let (base, no_wait_cpu) = upstream(&sim, n, global)?;
            drop(sim);
            tool.wait_cpu_s = (tool.cpu_s - no_wait_cpu).max(0.0);
            ours_by_bring_up.push((bring_up, tool.cpu_s, tool.rss_mib.unwrap_or(0.0)));
            let bytes_ratio = base.master_mb / tool.master_mb.max(1e-9);
            let cpu_ratio = base.cpu_s / tool.wait_cpu_s.max(1e-9);
            let whole_ratio = base.cpu_s / tool.cpu_s.max(1e-9);
            let at = format!("{n} nodes, {bring_up} s bring-up");
            lines.push(format!(
                "  {at}: deploy: detection {:.2} s ({}), CPU {:.2} s in the wait ({:.2} s for the whole run), peak RSS {:.0} MiB{}, {:.2} MB from the master",
                tool.delay_s,
                verdict(tool.delay_s < 0.5),
                tool.wait_cpu_s,
                tool.cpu_s,
                tool.rss_mib.unwrap_or(0.0),
                if n >= 5000 { format!(" ({})", verdict(tool.rss_mib.unwrap_or(0.0) < 150.0)) } else { String::new() },
                tool.master_mb
            ));
            lines.push(format!(
                "  {at}: kubectl loop: detection {:.2} s, CPU {:.2} s, {:.2} MB from the master",
                base.delay_s, base.cpu_s, base.master_mb
            ));
            let targets = if n >= 5000 {
                format!(
                    " (target >= 10x: bytes {}, CPU {})",
                    verdict(bytes_ratio >= 10.0),
                    verdict(cpu_ratio >= 10.0)
                )
            } else if bring_up >= 30 {
                format!(" (target >= 20x CPU: {})", verdict(whole_ratio >= 20.0))
            } else {
                String::new()
            };
            lines.push(format!(
                "  {at}: the loop reads {bytes_ratio:.1}x the bytes and uses {cpu_ratio:.1}x the CPU of deploy's wait ({whole_ratio:.1}x its whole run){targets}"
            ));
        }
        if let (Some(fast), Some(slow)) = (
            ours_by_bring_up.iter().min_by_key(|m| m.0),
            ours_by_bring_up.iter().max_by_key(|m| m.0),
        ) && slow.0 > fast.0
        {
            let cpu = slow.1 / fast.1.max(1e-9);
            let rss = slow.2 / fast.2.max(1e-9);
            lines.push(format!(
                "  {n} nodes: deploy at a {} s bring-up against {} s: CPU {:.2}x ({:.2} s vs {:.2} s), peak RSS {:.2}x ({:.0} vs {:.0} MiB) (target within 10%: {})",
                slow.0,
                fast.0,
                cpu,
                slow.1,
                fast.1,
                rss,
                slow.2,
                fast.2,
                verdict(cpu <= 1.1 && rss <= 1.1)
            ));
        }
    }
    println!("{}", lines.join("\n"));
    Ok(())
}
