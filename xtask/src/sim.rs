//! `cargo xtask sim`: serve a simulated external cluster and kubemark master
//! until Ctrl-C, writing `DIR/external.kubeconfig` and `DIR/master.kubeconfig`
//! for `kubectl` and `cargo xtask deploy`.

use std::path::PathBuf;
use std::time::Duration;

use kubemark_sim::{Faults, Images, Sim, SimConfig};

use crate::Global;
use crate::report::Failure;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Where to write external.kubeconfig and master.kubeconfig.
    #[arg(long, value_name = "DIR")]
    kubeconfig_dir: PathBuf,
    /// Worker nodes of the external cluster.
    #[arg(long, default_value_t = 3)]
    workers: usize,
    /// Allocatable CPU of each worker.
    #[arg(long, default_value = "4")]
    worker_cpu: String,
    /// Allocatable memory of each worker.
    #[arg(long, default_value = "16Gi")]
    worker_memory: String,
    /// Pods each worker takes.
    #[arg(long, default_value_t = 110)]
    worker_pods: u32,
    /// Ask this registry (e.g. http://127.0.0.1:5000) whether its images exist; others pull.
    #[arg(long, value_name = "URL")]
    image_registry: Option<String>,
    /// Serve plain HTTP instead of HTTPS.
    #[arg(long)]
    plain_http: bool,
    /// Inject errors: verb:resource:code:probability,... (e.g. *:*:500:0.05,*:*:429:0.05).
    #[arg(long, value_name = "RULES")]
    faults: Option<String>,
    /// End every watch after this many seconds (a fault).
    #[arg(long, value_name = "SECONDS")]
    watch_cut: Option<u64>,
    /// Seed of the injected faults.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// From binding to running, in milliseconds.
    #[arg(long, default_value_t = 300)]
    kubelet_delay_ms: u64,
    /// Address to serve on (and to write into the kubeconfigs).
    #[arg(long, default_value = "127.0.0.1")]
    listen: std::net::IpAddr,
}

pub fn run(args: Args, _global: &Global) -> Result<(), Failure> {
    let errors = match &args.faults {
        Some(text) => Faults::parse_errors(text).map_err(|e| {
            Failure::usage(
                format!("--faults: {e}"),
                "e.g. --faults '*:*:500:0.05,*:*:429:0.05'",
            )
        })?,
        None => Vec::new(),
    };
    let faults = Faults {
        errors,
        watch_max_duration: args.watch_cut.map(Duration::from_secs),
        seed: args.seed,
        ..Faults::default()
    };
    let base = SimConfig {
        listen: args.listen,
        tls: !args.plain_http,
        kubeconfig_dir: Some(args.kubeconfig_dir.clone()),
        images: Images {
            registry: args.image_registry.clone(),
            known: None,
        },
        faults,
        seed: args.seed,
        ..SimConfig::default()
    };
    let mut timing = base.timing.clone();
    timing.kubelet_delay = Duration::from_millis(args.kubelet_delay_ms);
    let external = SimConfig {
        name: "external".into(),
        workers: args.workers,
        worker_cpu: args.worker_cpu.clone(),
        worker_memory: args.worker_memory.clone(),
        worker_pods: args.worker_pods,
        timing: timing.clone(),
        ..base.clone()
    };
    let master = SimConfig {
        name: "master".into(),
        workers: 0,
        timing,
        ..base
    };
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let mut external = Sim::start(external)
            .await
            .map_err(|e| Failure::failed(format!("starting the external cluster: {e}")))?;
        let mut master = Sim::start(master)
            .await
            .map_err(|e| Failure::failed(format!("starting the kubemark master: {e}")))?;
        println!(
            "external cluster: {} (kubeconfig {})",
            external.url,
            external.kubeconfig.display()
        );
        println!(
            "kubemark master:  {} (kubeconfig {})",
            master.url,
            master.kubeconfig.display()
        );
        println!("serving until Ctrl-C");
        let _ = tokio::signal::ctrl_c().await;
        external.shutdown();
        master.shutdown();
        Ok(())
    })
}
