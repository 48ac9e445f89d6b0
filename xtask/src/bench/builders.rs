//! `cargo xtask bench image --only push|pipeline`: the two builders against the
//! docker CLI, side by side in one run (the order of the three sides rotates
//! from run to run), on a fresh incompressible binary each time so that no side
//! finds a layer cached:
//! - build + push alone: `--builder oci` and `--builder engine` (their image and
//!   push stages) against `docker build` + `docker push` of the same context;
//! - the whole pipeline over `git://` (clone of the large fixture, make, build,
//!   push) against the guide's steps by hand (`git clone --depth 1`, `make`,
//!   `cp` into the context, `docker build`, `docker push`).

use std::path::Path;
use std::time::Instant;

use kubemark_testbed::{Fixture, Registry, XorShift};

use super::image::{ImageBench, large_repo, stage_seconds, timed, unix_now, xtask};
use super::{failed, median, verdict};
use crate::report::Failure;

/// One side's samples.
#[derive(Default)]
struct Side {
    wall: Vec<f64>,
    /// Image + push stages (the xtask sides) or docker build + push (the CLI).
    build_push: Vec<f64>,
    rss_mib: Vec<f64>,
}

impl Side {
    fn wall(&self) -> f64 {
        median(self.wall.clone())
    }
    fn build_push(&self) -> f64 {
        median(self.build_push.clone())
    }
    fn peak_rss(&self) -> f64 {
        self.rss_mib.iter().copied().fold(0.0, f64::max)
    }

    /// One `xtask image --builder <builder>` run (with `extra` flags) of the binary
    /// `bin`, its wall time, image + push stages and peak RSS recorded.
    #[allow(clippy::too_many_arguments)]
    fn record_run(
        &mut self,
        extra: &[&str],
        builder: &str,
        tag: &str,
        registry: &Registry,
        src: &Path,
        state: &Path,
        bin: &Path,
    ) -> Result<(), Failure> {
        let mut args = vec!["image", "--builder", builder, "--tag", tag];
        args.extend(["--registry", &registry.addr]);
        args.extend(["--source-dir", src.to_str().unwrap_or_default()]);
        args.extend(["--state-dir", state.to_str().unwrap_or_default()]);
        args.extend_from_slice(extra);
        let (wall, kib, stderr) = xtask(
            &args,
            &[("KUBEMARK_FIXTURE_BINARY", bin.to_str().unwrap_or_default())],
        )?;
        self.wall.push(wall);
        self.build_push
            .push(stage_seconds(&stderr, "image") + stage_seconds(&stderr, "push"));
        self.rss_mib.push(kib as f64 / 1024.0);
        Ok(())
    }
}

const SIDES: [&str; 3] = ["oci", "engine", "cli"];

/// Build + push of the binary alone.
pub(super) fn build_push(
    bench: &ImageBench,
    work: &Path,
    registry: &Registry,
) -> Result<Vec<String>, Failure> {
    eprintln!(
        "==> bench: build + push of a {} MiB binary: --builder oci, --builder engine, docker build + docker push",
        bench.binary_mib
    );
    let _ = std::fs::remove_dir_all(work);
    std::fs::create_dir_all(work)?;
    let fixture = Fixture::create(work, "kubernetes").map_err(failed("creating the fixture"))?;
    let src = work.join("src");
    kubemark_testbed::run(
        "git",
        &[
            "clone",
            "--quiet",
            fixture.dir.to_str().unwrap_or_default(),
            src.to_str().unwrap_or_default(),
        ],
        None,
    )
    .map_err(failed("cloning the fixture"))?;
    let mut sides: [Side; 3] = Default::default();
    let mut images = Vec::new();
    let bin = work.join("bin");
    turns(bench, 0x7075_7368, &bin, |i, which| {
        {
            let side = &mut sides[which];
            let tag = format!("{}-{i}", SIDES[which]);
            let image = format!("{}/kubemark:{tag}", registry.addr);
            if SIDES[which] == "cli" {
                // The same context the engine gets: the Dockerfile as sent (its LABEL line too).
                let state = work.join("state-engine");
                let sent =
                    std::fs::read_to_string(state.join("Dockerfile.sent")).or_else(|_| {
                        std::fs::read_to_string(src.join("cluster/images/kubemark/Dockerfile"))
                    })?;
                let ctx = work.join(format!("ctx-{i}"));
                std::fs::create_dir_all(&ctx)?;
                std::fs::rename(&bin, ctx.join("kubemark"))?;
                std::fs::write(ctx.join("Dockerfile"), sent)?;
                let started = Instant::now();
                timed(
                    "docker",
                    &["build", "--quiet", "-t", &image, "."],
                    Some(&ctx),
                )?;
                timed("docker", &["push", "--quiet", &image], None)?;
                let total = started.elapsed().as_secs_f64();
                side.wall.push(total);
                side.build_push.push(total);
                let _ = std::fs::remove_dir_all(ctx);
            } else {
                let state = work.join(format!("state-{}", SIDES[which]));
                side.record_run(
                    &["--no-update"],
                    SIDES[which],
                    &tag,
                    registry,
                    &src,
                    &state,
                    &bin,
                )?;
            }
            images.push(image);
        }
        Ok(())
    })?;
    remove_images(&images);
    let [oci, engine, cli] = &sides;
    let ratio = oci.build_push() / cli.build_push();
    Ok(vec![
        format!(
            "  build + push, {} MiB binary: oci {:.2} s, engine {:.2} s, docker build + push {:.2} s (whole xtask runs: oci {:.2} s, engine {:.2} s)",
            bench.binary_mib,
            oci.build_push(),
            engine.build_push(),
            cli.build_push(),
            oci.wall(),
            engine.wall()
        ),
        format!(
            "    oci / CLI {ratio:.2} (target <= 0.3: {}); engine / CLI {:.2}",
            verdict(ratio <= 0.3),
            engine.build_push() / cli.build_push()
        ),
        format!(
            "    peak RSS: oci {:.1} MiB (target < 100 MiB: {}), engine {:.1} MiB",
            oci.peak_rss(),
            verdict(oci.peak_rss() < 100.0),
            engine.peak_rss()
        ),
    ])
}

/// The whole pipeline over `git://`, clone included.
pub(super) fn pipeline(
    bench: &ImageBench,
    work: &Path,
    registry: &Registry,
) -> Result<Vec<String>, Failure> {
    eprintln!(
        "==> bench: whole pipeline ({} files over git://, make, build, push of a {} MiB binary): oci, engine, the guide's CLI steps",
        bench.files, bench.binary_mib
    );
    let (_daemon, url) = large_repo(bench, work)?;
    let out = work.join(format!("pipeline-{}", std::process::id()));
    std::fs::create_dir_all(&out)?;
    let mut sides: [Side; 3] = Default::default();
    let mut images = Vec::new();
    let bin = out.join("bin");
    turns(bench, 0x7069_7065, &bin, |i, which| {
        {
            let src = out.join(format!("{}-{i}", SIDES[which]));
            let tag = format!("pipe-{}-{i}", SIDES[which]);
            let image = format!("{}/kubemark:{tag}", registry.addr);
            let side = &mut sides[which];
            if SIDES[which] == "cli" {
                let src_text = src.to_str().unwrap_or_default();
                let started = Instant::now();
                timed(
                    "git",
                    &[
                        "clone",
                        "--quiet",
                        "--depth",
                        "1",
                        "--single-branch",
                        &url,
                        src_text,
                    ],
                    None,
                )?;
                let make = std::process::Command::new("make")
                    .args(["all", "WHAT=cmd/kubemark"])
                    .current_dir(&src)
                    .env("KUBEMARK_FIXTURE_BINARY", &bin)
                    .output()
                    .map_err(failed("make"))?;
                if !make.status.success() {
                    return Err(Failure::failed(format!(
                        "make failed: {}",
                        String::from_utf8_lossy(&make.stderr)
                    )));
                }
                let context = src.join("cluster/images/kubemark");
                std::fs::copy(src.join("_output/bin/kubemark"), context.join("kubemark"))?;
                let built = Instant::now();
                timed(
                    "docker",
                    &["build", "--quiet", "-t", &image, "."],
                    Some(&context),
                )?;
                timed("docker", &["push", "--quiet", &image], None)?;
                side.build_push.push(built.elapsed().as_secs_f64());
                side.wall.push(started.elapsed().as_secs_f64());
            } else {
                let state = out.join(format!("state-{}-{i}", SIDES[which]));
                side.record_run(
                    &["--kubernetes-repo", &url],
                    SIDES[which],
                    &tag,
                    registry,
                    &src,
                    &state,
                    &bin,
                )?;
            }
            images.push(image);
        }
        Ok(())
    })?;
    remove_images(&images);
    let _ = std::fs::remove_dir_all(&out);
    std::fs::write(work.join("removed-at"), unix_now().to_string())?;
    let [oci, engine, cli] = &sides;
    let (oci_ratio, engine_ratio) = (oci.wall() / cli.wall(), engine.wall() / cli.wall());
    Ok(vec![
        format!(
            "  whole pipeline: oci {:.2} s, engine {:.2} s, CLI steps {:.2} s (of which build + push: {:.2} / {:.2} / {:.2} s)",
            oci.wall(),
            engine.wall(),
            cli.wall(),
            oci.build_push(),
            engine.build_push(),
            cli.build_push()
        ),
        format!(
            "    oci / CLI {oci_ratio:.2} (target <= 0.7: {}); engine / CLI {engine_ratio:.2} (target <= 1.0: {})",
            verdict(oci_ratio <= 0.7),
            verdict(engine_ratio <= 1.0),
        ),
        format!(
            "    peak RSS of the whole run: oci {:.1} MiB (target < 100 MiB: {}), engine {:.1} MiB",
            oci.peak_rss(),
            verdict(oci.peak_rss() < 100.0),
            engine.peak_rss()
        ),
    ])
}

/// `bench.runs` rounds of the three sides, their order turning each round; before
/// each turn a fresh incompressible binary at `bin`, so no side finds a layer cached.
fn turns(
    bench: &ImageBench,
    seed: u64,
    bin: &Path,
    mut turn: impl FnMut(usize, usize) -> Result<(), Failure>,
) -> Result<(), Failure> {
    let mut rng = XorShift(unix_now() ^ seed);
    let mut binary = vec![0u8; bench.binary_mib << 20];
    for i in 0..bench.runs {
        for k in 0..3 {
            rng.fill(&mut binary);
            std::fs::write(bin, &binary)?;
            turn(i, (i + k) % 3)?;
        }
    }
    Ok(())
}

fn remove_images(images: &[String]) {
    for image in images {
        let _ = std::process::Command::new("docker")
            .args(["rmi", "--force", image])
            .output();
    }
}
