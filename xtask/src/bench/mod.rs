//! `cargo xtask bench`: measurements against the baselines each issue names,
//! taken side by side in one run, printed as figures and ratios.

mod builders;
mod deploy;
mod image;
mod sim;

use crate::Global;
use crate::report::Failure;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    what: What,
}

#[derive(Debug, clap::Subcommand)]
enum What {
    /// The image pipeline: no-op vs full run, clone, build + push and the whole pipeline (oci, engine, CLI).
    Image(image::ImageBench),
    /// deploy's wait vs upstream's kubectl loop: detection delay, CPU, memory, bytes.
    Deploy(deploy::DeployBench),
    /// The API simulator at 10,000 nodes and 10,000 pods: memory, latencies, watch throughput.
    Sim(sim::SimBench),
}

pub fn run(args: Args, global: &Global) -> Result<(), Failure> {
    match args.what {
        What::Image(bench) => image::run(bench, global),
        What::Sim(bench) => sim::run(bench, global),
        What::Deploy(bench) => deploy::run(bench, global),
    }
}

fn failed(what: &str) -> impl FnOnce(std::io::Error) -> Failure + '_ {
    move |e| Failure::failed(format!("{what}: {e}"))
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    match xs.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => xs[n / 2],
        n => (xs[n / 2 - 1] + xs[n / 2]) / 2.0,
    }
}

/// The `q`-quantile (0..=1) of some samples.
fn quantile(mut xs: Vec<f64>, q: f64) -> f64 {
    if xs.is_empty() {
        return f64::NAN;
    }
    xs.sort_by(f64::total_cmp);
    let i = ((xs.len() - 1) as f64 * q).round() as usize;
    xs[i.min(xs.len() - 1)]
}

fn verdict(ok: bool) -> &'static str {
    if ok { "meets target" } else { "MISSES target" }
}

/// This process's resident memory now and at its peak, in MiB.
fn rss_mib() -> (f64, f64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|kb| kb.parse::<f64>().ok())
            .map_or(f64::NAN, |kb| kb / 1024.0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}
