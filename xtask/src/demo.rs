//! `cargo xtask demo`: two simulated clusters in this process (an external
//! cluster and a kubemark master), N hollow nodes deployed with the same code
//! path as `deploy`, then `status`, then `destroy`. How a newcomer sees the
//! tool work on a machine with no cluster.

use std::time::Duration;

use kubemark_deploy::{Source, Spec};
use kubemark_sim::{Sim, SimConfig};

use crate::Global;
use crate::deploy::{failure, print_destroyed, print_outcome, print_status};
use crate::progress::Renderer;
use crate::report::Failure;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Hollow nodes to deploy.
    #[arg(long, default_value_t = 100)]
    replicas: u32,
    /// Keep everything and serve both clusters until Ctrl-C, instead of destroying.
    #[arg(long)]
    keep: bool,
}

pub fn run(args: Args, global: &Global) -> Result<(), Failure> {
    // The simulators' kubeconfigs hold tokens: a directory only this user
    // reads (tempfile makes it 0700), removed at the end.
    let private = tempfile::Builder::new()
        .prefix("kubemark-demo-")
        .tempdir()?;
    let image = match crate::deploy::recorded_image(&global.state_dir) {
        Some(recorded) => recorded?,
        None => kubemark_contract::ImageRef::parse(crate::image::DEFAULT_IMAGE)
            .map_err(|e| Failure::failed(e.to_string()))?,
    };
    let renderer = Renderer::new(global.verbose);
    let events = renderer.deploy_events();
    // Each worker takes 100 hollow-node pods (60m CPU and ~200Mi each).
    let workers = (args.replicas as usize).div_ceil(100).max(2);
    let replicas = args.replicas;
    let keep = args.keep;
    let kubeconfig_dir = private.path().to_owned();
    let shown = renderer.clone();
    let result = crate::run::with_interrupt(&renderer, crate::run::Threads::All, |cancel| {
        let renderer = shown;
        Box::pin(async move {
            let base = SimConfig {
                kubeconfig_dir: Some(kubeconfig_dir),
                ..SimConfig::default()
            };
            let external = Sim::start(SimConfig {
                name: "external".into(),
                workers,
                worker_cpu: "8".into(),
                worker_memory: "32Gi".into(),
                worker_pods: 110,
                ..base.clone()
            })
            .await
            .map_err(|e| {
                Failure::failed(format!("starting the simulated external cluster: {e}"))
            })?;
            let master = Sim::start(SimConfig {
                name: "master".into(),
                workers: 0,
                ..base
            })
            .await
            .map_err(|e| Failure::failed(format!("starting the simulated kubemark master: {e}")))?;
            renderer.line(&format!(
                "==> demo: external cluster {} ({workers} workers) and kubemark master {}, simulated in this process",
                external.url, master.url
            ));
            renderer.line(&format!(
                "    image {image} (the simulated kubelets pull any image)"
            ));
            let mut spec = Spec::new(
                Source {
                    path: Some(external.kubeconfig.clone()),
                    context: None,
                },
                Source {
                    path: Some(master.kubeconfig.clone()),
                    context: None,
                },
                replicas,
                image,
            );
            // The simulated pods share this host's network, so the master's 127.0.0.1 reaches it.
            spec.allow_loopback_master = true;
            let outcome = kubemark_deploy::deploy(&spec, &events, &cancel)
                .await
                .map_err(failure)?;
            renderer.finish();
            print_outcome(&outcome, false);
            let (ext, mas) = kubemark_deploy::connect(&spec.external, &spec.master)
                .await
                .map_err(failure)?;
            let status = kubemark_deploy::status::status(&ext, &mas, &spec.namespace)
                .await
                .map_err(failure)?;
            println!();
            print_status(&status, false, 10);
            if keep {
                println!();
                println!("serving until Ctrl-C:");
                println!(
                    "  KUBECONFIG={} kubectl get pods -n kubemark",
                    external.kubeconfig.display()
                );
                println!(
                    "  KUBECONFIG={} kubectl get nodes",
                    master.kubeconfig.display()
                );
                let _ = tokio::signal::ctrl_c().await;
                return Ok(());
            }
            println!();
            let destroyed = kubemark_deploy::destroy::destroy(
                &ext,
                &mas,
                &spec.namespace,
                Duration::from_secs(300),
                &events,
                &cancel,
            )
            .await
            .map_err(failure)?;
            renderer.finish();
            print_destroyed(&destroyed, false);
            Ok::<(), Failure>(())
        })
    })?;
    drop(private);
    result
}
