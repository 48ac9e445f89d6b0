//! `cargo xtask bench image`: measures the image pipeline against its
//! baselines, side by side in one run, and prints figures and ratios:
//! a no-op run vs a full run; git2's shallow clone vs `git clone --depth 1
//! --single-branch` of a large repository; and (in `builders`) build + push and
//! the whole pipeline with either builder against the docker CLI.
//! Runs alternate between the sides; medians are reported.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use kubemark_image::source::{self, Local, SourceSpec};
use kubemark_image::{CancellationToken, Events};
use kubemark_testbed::{Fixture, GitDaemon, Registry};

use super::{failed, median, verdict};
use crate::Global;
use crate::report::Failure;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Part {
    Noop,
    Clone,
    /// Build + push alone: oci, engine, the docker CLI.
    Push,
    /// The whole pipeline over git://: oci, engine, the guide's CLI steps.
    Pipeline,
}

#[derive(Debug, clap::Args)]
pub struct ImageBench {
    /// Runs of each side of each measurement; medians are reported.
    #[arg(long, default_value_t = 3)]
    pub(super) runs: usize,
    /// Only these measurements (repeatable) [default: all].
    #[arg(long, value_enum)]
    pub(super) only: Vec<Part>,
    /// Files in the large repository for the clone measurement.
    #[arg(long, default_value_t = 20_000)]
    pub(super) files: usize,
    /// Bytes per file (incompressible) in the large repository.
    #[arg(long, default_value_t = 5_500)]
    pub(super) file_bytes: usize,
    /// Size of the binary built and pushed, in MiB.
    #[arg(long, default_value_t = 100)]
    pub(super) binary_mib: usize,
    /// Working directory (the large repository is kept there between runs).
    #[arg(long, value_name = "DIR")]
    pub(super) work_dir: Option<PathBuf>,
}

pub fn run(bench: ImageBench, global: &Global) -> Result<(), Failure> {
    let work = bench
        .work_dir
        .clone()
        .unwrap_or_else(|| global.state_dir.join("bench"));
    std::fs::create_dir_all(&work)?;
    let all = bench.only.is_empty();
    let wants = |p: Part| all || bench.only.contains(&p);
    let _ = std::fs::remove_dir_all(work.join("registry"));
    let registry = Registry::start(&work.join("registry"), None)
        .map_err(failed("starting docker-registry"))?;
    let mut lines = vec![format!(
        "image pipeline benchmark: {} run(s) per side, medians, {}",
        bench.runs,
        work.display()
    )];
    if wants(Part::Noop) {
        lines.push(noop_vs_full(&bench, &work.join("noop"), &registry)?);
    }
    if wants(Part::Clone) {
        lines.push(clone(&bench, &work.join("clone"))?);
    }
    if wants(Part::Push) {
        lines.extend(super::builders::build_push(
            &bench,
            &work.join("push"),
            &registry,
        )?);
    }
    if wants(Part::Pipeline) {
        lines.extend(super::builders::pipeline(
            &bench,
            &work.join("clone"),
            &registry,
        )?);
    }
    println!("{}", lines.join("\n"));
    Ok(())
}

/// Run the xtask binary itself; return wall seconds, peak RSS in KiB (GNU time), stderr.
pub(super) fn xtask(args: &[&str], env: &[(&str, &str)]) -> Result<(f64, u64, String), Failure> {
    let exe = std::env::current_exe()?;
    let mut command = Command::new("/usr/bin/time");
    command
        .arg("-f")
        .arg("KUBEMARK_BENCH_RSS_KIB=%M")
        .arg(exe)
        .args(args);
    for (k, v) in env {
        command.env(k, v);
    }
    let started = Instant::now();
    let output = command
        .stdin(Stdio::null())
        .output()
        .map_err(failed("/usr/bin/time (Debian package `time`)"))?;
    let wall = started.elapsed().as_secs_f64();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    if !output.status.success() {
        return Err(Failure::failed(format!(
            "xtask {} failed:\n{stderr}",
            args.join(" ")
        )));
    }
    let rss = stderr
        .lines()
        .find_map(|l| l.strip_prefix("KUBEMARK_BENCH_RSS_KIB="))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    Ok((wall, rss, stderr))
}

pub(super) fn timed(program: &str, args: &[&str], dir: Option<&Path>) -> Result<f64, Failure> {
    let mut command = Command::new(program);
    command
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    if let Some(dir) = dir {
        command.current_dir(dir);
    }
    let started = Instant::now();
    let output = command.output().map_err(failed(program))?;
    let wall = started.elapsed().as_secs_f64();
    if !output.status.success() {
        return Err(Failure::failed(format!(
            "{program} {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr)
        )));
    }
    Ok(wall)
}

fn noop_vs_full(bench: &ImageBench, work: &Path, registry: &Registry) -> Result<String, Failure> {
    eprintln!("==> bench: no-op run vs full run");
    let _ = std::fs::remove_dir_all(work);
    std::fs::create_dir_all(work)?;
    let fixture = Fixture::create(work, "kubernetes").map_err(failed("creating the fixture"))?;
    let daemon = GitDaemon::start(work).map_err(failed("starting git daemon"))?;
    let url = daemon.url("kubernetes");
    let (mut full, mut noop) = (Vec::new(), Vec::new());
    for i in 0..bench.runs {
        let src = work.join(format!("src-{i}"));
        let state = work.join(format!("state-{i}"));
        let tag = format!("noop-{i}");
        let args = [
            "image",
            "--tag",
            &tag,
            "--registry",
            &registry.addr,
            "--kubernetes-repo",
            &url,
            "--source-dir",
            src.to_str().unwrap_or_default(),
            "--state-dir",
            state.to_str().unwrap_or_default(),
        ];
        full.push(xtask(&args, &[])?.0);
        let (wall, _, stderr) = xtask(&args, &[])?;
        if stderr.contains("==> image") {
            return Err(Failure::failed(format!(
                "the second run was not a no-op:\n{stderr}"
            )));
        }
        noop.push(wall);
    }
    drop(fixture);
    let (full, noop) = (median(full), median(noop));
    Ok(format!(
        "  no-op run vs full run (fixture, clone+make+build+push): no-op {noop:.2} s, full {full:.2} s, ratio {:.2}",
        noop / full
    ))
}

/// The large fixture repository (generated once, kept in `work/repos`) served by
/// git daemon, and its URL; waits for the disk to settle after a previous removal.
pub(super) fn large_repo(bench: &ImageBench, work: &Path) -> Result<(GitDaemon, String), Failure> {
    let repos = work.join("repos");
    let marker = repos.join(format!(
        "kubernetes-{}x{}.ready",
        bench.files, bench.file_bytes
    ));
    let name = format!("kubernetes-{}x{}", bench.files, bench.file_bytes);
    if !marker.exists() {
        let _ = std::fs::remove_dir_all(repos.join(&name));
        std::fs::create_dir_all(&repos)?;
        eprintln!(
            "    generating {} files of {} bytes (kept in {} for later runs)",
            bench.files,
            bench.file_bytes,
            repos.display()
        );
        let fixture =
            Fixture::create(&repos, &name).map_err(failed("creating the large fixture"))?;
        fixture
            .add_bulk(bench.files, bench.file_bytes, 0x6b75_6265)
            .map_err(failed("filling the large fixture"))?;
        std::fs::write(&marker, "")?;
    }
    let daemon = GitDaemon::start(&repos).map_err(failed("starting git daemon"))?;
    let url = daemon.url(&name);
    settle_disk(work)?;
    Ok((daemon, url))
}

fn clone(bench: &ImageBench, work: &Path) -> Result<String, Failure> {
    eprintln!("==> bench: git2 shallow clone vs git clone --depth 1 --single-branch");
    let (_daemon, url) = large_repo(bench, work)?;
    let out = work.join(format!("out-{}", std::process::id()));
    std::fs::create_dir_all(&out)?;
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    let mut pack_bytes = 0;
    for i in 0..bench.runs {
        let git2_first = i % 2 == 0;
        for side in 0..2 {
            if (side == 0) == git2_first {
                let dir = out.join(format!("git2-{i}"));
                let spec = SourceSpec {
                    url: url.clone(),
                    git_ref: None,
                    dir: dir.clone(),
                    depth: 1,
                    update: true,
                    allow_dirty: false,
                };
                let bytes = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
                let seen = std::sync::Arc::clone(&bytes);
                let events = Events::new(move |e| {
                    if let kubemark_image::Event::Transfer { received_bytes, .. } = e {
                        seen.store(received_bytes, std::sync::atomic::Ordering::Relaxed);
                    }
                });
                let started = Instant::now();
                let resolved = source::resolve(&url, None, &events, &CancellationToken::new())
                    .map_err(|e| Failure::failed(e.to_string()))?;
                source::sync(
                    &spec,
                    &Local::Absent,
                    Some(&resolved),
                    &events,
                    &CancellationToken::new(),
                )
                .map_err(|e| Failure::failed(e.to_string()))?;
                ours.push(started.elapsed().as_secs_f64());
                pack_bytes = bytes.load(std::sync::atomic::Ordering::Relaxed);
            } else {
                let dir = out.join(format!("cli-{i}"));
                theirs.push(timed(
                    "git",
                    &[
                        "clone",
                        "--quiet",
                        "--depth",
                        "1",
                        "--single-branch",
                        &url,
                        dir.to_str().unwrap_or_default(),
                    ],
                    None,
                )?);
            }
        }
    }
    let files = count_files(&out.join("git2-0"));
    let cli_files = count_files(&out.join("cli-0"));
    // Removing large trees slows file creation on this disk for a while: only after measuring.
    let _ = std::fs::remove_dir_all(&out);
    std::fs::write(work.join("removed-at"), unix_now().to_string())?;
    if files != cli_files {
        return Err(Failure::failed(format!(
            "the clones differ: git2 wrote {files} files, git {cli_files}"
        )));
    }
    let (ours, theirs) = (median(ours), median(theirs));
    let ratio = ours / theirs;
    Ok(format!(
        "  shallow clone ({files} files, {:.0} MiB pack, git://): git2 {ours:.2} s, git CLI {theirs:.2} s, ratio {ratio:.2} (target <= 1.5: {})",
        pack_bytes as f64 / 1048576.0,
        verdict(ratio <= 1.5)
    ))
}

/// After a large `rm -rf`, this kind of disk creates files slowly for ~35 s:
/// wait until the last removal is 45 s old before cloning.
fn settle_disk(work: &Path) -> Result<(), Failure> {
    let removed_at: u64 = std::fs::read_to_string(work.join("removed-at"))
        .ok()
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or(0);
    let quiet_from = removed_at + 45;
    let now = unix_now();
    if now < quiet_from {
        eprintln!(
            "    waiting {} s for the disk to settle after the last run's cleanup",
            quiet_from - now
        );
        std::thread::sleep(std::time::Duration::from_secs(quiet_from - now));
    }
    Ok(())
}

pub(super) fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn count_files(dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .filter(|e| e.file_name() != ".git")
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => count_files(&e.path()),
            _ => 1,
        })
        .sum()
}

/// `image done: ... in 1.2s` → 1.2; the sum of every such line (a stage done per platform, or in steps).
pub(super) fn stage_seconds(stderr: &str, stage: &str) -> f64 {
    stderr
        .lines()
        .filter(|l| l.trim_start().starts_with(&format!("{stage} done:")))
        .filter_map(|l| {
            l.rsplit(" in ")
                .next()?
                .trim()
                .strip_suffix('s')?
                .parse::<f64>()
                .ok()
        })
        .fold(None, |sum: Option<f64>, s| Some(sum.unwrap_or(0.0) + s))
        .unwrap_or(f64::NAN)
}
