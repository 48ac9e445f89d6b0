//! `cargo xtask deploy` (and `deploy status|destroy|render`): the flags
//! (their defaults from the `[deploy]` table of `kubemark.toml`), then the
//! cluster pipeline, drawn as it runs.
//!
//! - `spec.rs`: the flags into a [`kubemark_deploy::Spec`], each value checked
//!   and named as the user gave it;
//! - `output.rs`: results on stdout, as text or JSON;
//! - `hints.rs`: the library's errors, with what to do about them.

mod hints;
mod output;
mod spec;

use std::path::PathBuf;

use kubemark_deploy::Error;

use clap::builder::BoolishValueParser;

use crate::Global;
use crate::progress::Renderer;
use crate::report::Failure;
use crate::run::{Output, Threads, with_interrupt};

pub use hints::failure;
use output::print_dry_run;
pub use output::{print_destroyed, print_doctor, print_outcome, print_status};
pub use spec::recorded_image;
use spec::{clusters, duration, spec};

/// Which clusters, which namespace; every deploy command takes these.
#[derive(Debug, Clone, clap::Args)]
pub struct ClusterArgs {
    /// Kubeconfig of the external cluster (runs the hollow-node pods) [default: KUBECONFIG, then ~/.kube/config].
    #[arg(long, env = "KUBEMARK_EXTERNAL_KUBECONFIG", value_name = "FILE")]
    external_kubeconfig: Option<PathBuf>,
    /// Context of the external cluster's kubeconfig [default: its current context].
    #[arg(long, env = "KUBEMARK_EXTERNAL_CONTEXT", value_name = "NAME")]
    external_context: Option<String>,
    /// Kubeconfig of the kubemark master (where hollow nodes register). Required.
    #[arg(long, env = "KUBEMARK_MASTER_KUBECONFIG", value_name = "FILE")]
    master_kubeconfig: Option<PathBuf>,
    /// Context of the master's kubeconfig [default: its current context].
    #[arg(long, env = "KUBEMARK_MASTER_CONTEXT", value_name = "NAME")]
    master_context: Option<String>,
    /// Namespace of the hollow-node pods on the external cluster [default: kubemark].
    #[arg(long, env = "KUBEMARK_NAMESPACE")]
    namespace: Option<String>,
    /// Result format on stdout.
    #[arg(long, value_enum, env = "KUBEMARK_OUTPUT", default_value_t)]
    output: Output,
}

/// Deploy hollow nodes and wait until they are Ready.
#[derive(Debug, Clone, clap::Args)]
pub struct DeployArgs {
    #[command(flatten)]
    cluster: ClusterArgs,
    /// How many hollow nodes (0 to 2147483647), or `max`: as many as the external cluster holds. Required.
    #[arg(
        long,
        env = "KUBEMARK_REPLICAS",
        allow_hyphen_values = true,
        value_name = "N"
    )]
    replicas: Option<String>,
    /// The kubemark image [default: --registry/kubemark:--tag, else the last `cargo xtask image`].
    #[arg(long, env = "KUBEMARK_IMAGE", value_name = "REF")]
    image: Option<String>,
    /// Registry of the image REGISTRY/kubemark:TAG (with --tag).
    #[arg(long, env = "KUBEMARK_REGISTRY")]
    registry: Option<String>,
    /// Tag of the image REGISTRY/kubemark:TAG (with --registry).
    #[arg(long, env = "KUBEMARK_TAG")]
    tag: Option<String>,
    /// `simplified` (the project's own), `upstream` (from the kubernetes checkout) or a file [default: simplified].
    #[arg(long, env = "KUBEMARK_TEMPLATE")]
    template: Option<String>,
    /// The kubernetes checkout holding the upstream template [default: the image side's].
    #[arg(long, env = "KUBEMARK_SOURCE_DIR", value_name = "DIR")]
    source_dir: Option<PathBuf>,
    /// Set a template placeholder (repeatable), e.g. --set init_image=my.registry/busybox:1.32.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    sets: Vec<String>,
    /// CPU request of the hollow kubelet [default: 40m].
    #[arg(long)]
    kubelet_cpu: Option<String>,
    /// Memory request of the hollow kubelet [default: 100Mi].
    #[arg(long)]
    kubelet_memory: Option<String>,
    /// CPU request of the hollow proxy [default: 20m; 50m above 1,000 nodes].
    #[arg(long)]
    proxy_cpu: Option<String>,
    /// Memory request of the hollow proxy [default: 100Mi + 50Ki per node].
    #[arg(long)]
    proxy_memory: Option<String>,
    /// CPU request of node-problem-detector (upstream template) [default: 20m].
    #[arg(long)]
    npd_cpu: Option<String>,
    /// Memory request of node-problem-detector (upstream template) [default: 20Mi].
    #[arg(long)]
    npd_memory: Option<String>,
    /// Labels of the hollow nodes: key=value,key=value.
    #[arg(long, env = "KUBEMARK_NODE_LABELS")]
    node_labels: Option<String>,
    /// Taints the hollow nodes register with: key=value:Effect,...
    #[arg(long, env = "KUBEMARK_REGISTER_WITH_TAINTS")]
    register_with_taints: Option<String>,
    /// Pods each hollow node takes [default: 110].
    #[arg(
        long,
        env = "KUBEMARK_MAX_PODS",
        allow_hyphen_values = true,
        value_name = "N"
    )]
    max_pods: Option<String>,
    /// Extended resources of each hollow node: name=quantity,...
    #[arg(long, env = "KUBEMARK_EXTENDED_RESOURCES")]
    extended_resources: Option<String>,
    /// How long to wait: 600, 90s, 10m, 1h [default: 2 minutes plus 0.1 s per node].
    #[arg(long, env = "KUBEMARK_TIMEOUT")]
    timeout: Option<String>,
    /// Apply and return; do not wait for the nodes.
    #[arg(long, env = "KUBEMARK_NO_WAIT", value_parser = BoolishValueParser::new())]
    no_wait: bool,
    /// Accept a master kubeconfig whose server is a loopback address (pods on the host network).
    #[arg(long, env = "KUBEMARK_ALLOW_LOOPBACK_MASTER", value_parser = BoolishValueParser::new())]
    allow_loopback_master: bool,
    /// Deploy even if the external cluster seems too small.
    #[arg(long, env = "KUBEMARK_SKIP_CAPACITY_CHECK", value_parser = BoolishValueParser::new())]
    skip_capacity_check: bool,
    /// Which credential the hollow kubelets use: `per-node` (each its own
    /// system:node certificate by TLS bootstrap), `shared` (the master
    /// kubeconfig's), `auto` (per-node when the template and the master are known
    /// to allow it, else shared).
    #[arg(long, value_enum, env = "KUBEMARK_NODE_IDENTITY", default_value_t)]
    node_identity: NodeIdentityArg,
    /// Take over existing objects with the names deploy writes (a Secret `kubeconfig`, ...)
    /// that deploy did not make: deploy overwrites them and destroy deletes them.
    #[arg(long, env = "KUBEMARK_ADOPT", value_parser = BoolishValueParser::new())]
    adopt: bool,
    /// Check both clusters and print the plan; write nothing.
    #[arg(long)]
    dry_run: bool,
}

#[derive(Debug, clap::Subcommand)]
pub enum Action {
    /// Counts, the diagnosis, and which hollow node runs in which pod on which external node.
    Status(ClusterArgs),
    /// Delete what deploy made on both clusters, and only that, and wait until it is gone.
    Destroy {
        #[command(flatten)]
        cluster: ClusterArgs,
        /// How long to wait for the deletions: 600, 90s, 10m [default: 10m].
        #[arg(long)]
        timeout: Option<String>,
    },
    /// Find what makes hollow nodes fail or tests lie, with the fix; reads only, unless --repair.
    Doctor {
        #[command(flatten)]
        cluster: ClusterArgs,
        /// Delete hollow-node pods that run while their Node is NotReady (their
        /// ReplicationController replaces them), and those Nodes.
        #[arg(long)]
        repair: bool,
        /// How long a Node may be NotReady under a Running pod before it counts as stuck: 90s, 5m [default: 5m].
        #[arg(long)]
        grace: Option<String>,
    },
    /// Print the manifests as YAML; touch nothing.
    Render {
        #[command(flatten)]
        args: Box<DeployArgs>,
        /// Print the secret's data instead of redacting it.
        #[arg(long)]
        show_secrets: bool,
    },
}

/// `--node-identity`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum NodeIdentityArg {
    #[default]
    Auto,
    Shared,
    PerNode,
}

/// `cargo xtask deploy [status|destroy|render]`.
#[derive(Debug, clap::Args)]
#[command(
    args_conflicts_with_subcommands = true,
    after_help = "Every flag can also be set as KUBEMARK_<FLAG> or in the [deploy] table of kubemark.toml; flags win over the environment, which wins over the file."
)]
pub struct Args {
    #[command(subcommand)]
    action: Option<Action>,
    #[command(flatten)]
    args: Box<DeployArgs>,
}

pub fn run(args: Args, global: &Global) -> Result<(), Failure> {
    match args.action {
        None => deploy(&args.args, global),
        Some(Action::Render { args, show_secrets }) => render(&args, show_secrets, global),
        Some(Action::Status(c)) => status(&c, global),
        Some(Action::Destroy { cluster, timeout }) => destroy(&cluster, timeout.as_deref(), global),
        Some(Action::Doctor {
            cluster,
            repair,
            grace,
        }) => doctor(&cluster, repair, grace.as_deref(), global),
    }
}

fn doctor(
    c: &ClusterArgs,
    repair: bool,
    grace: Option<&str>,
    global: &Global,
) -> Result<(), Failure> {
    let json = c.output.json();
    let cl = clusters(c, global).map_err(|f| f.json(json))?;
    let grace = grace
        .map(|g| duration("--grace", g))
        .transpose()
        .map_err(|f| f.json(json))?
        .unwrap_or(kubemark_deploy::doctor::GRACE);
    let renderer = Renderer::new(global.verbose);
    let result = with_interrupt(&renderer, Threads::One, |cancel| {
        Box::pin(async move {
            let (external, master) = kubemark_deploy::connect(&cl.external, &cl.master).await?;
            kubemark_deploy::doctor::examine(&kubemark_deploy::doctor::Patient {
                cancel,
                external: &external,
                master: &master,
                namespace: &cl.namespace,
                pod: None,
                grace,
                repair,
            })
            .await
        })
    })?;
    let report = result.map_err(|e| failure(e).json(json))?;
    print_doctor(&report, json);
    match report.problems() {
        0 => Ok(()),
        n => Err(Failure {
            message: format!(
                "the doctor found {n} problem(s) in namespace {}",
                report.namespace
            ),
            details: Vec::new(),
            hint: Some("each is listed above with its fix".into()),
            code: crate::report::FAILED,
            json: false,
        }),
    }
}

fn deploy(a: &DeployArgs, global: &Global) -> Result<(), Failure> {
    let json = a.cluster.output.json();
    let (mut spec, max) = spec(a, global).map_err(|f| f.json(json))?;
    let renderer = Renderer::new(global.verbose);
    let events = renderer.deploy_events();
    if a.dry_run {
        let result = with_interrupt(&renderer, Threads::One, |_| {
            Box::pin(async move {
                if max {
                    spec.replicas = kubemark_deploy::most_that_fit(&spec, &events).await?;
                }
                kubemark_deploy::check(&spec, &events).await
            })
        })?;
        let checked = result.map_err(|e| failure(e).json(json))?;
        print_dry_run(&checked, json);
        return Ok(());
    }
    let result = with_interrupt(&renderer, Threads::One, |cancel| {
        Box::pin(async move {
            if max {
                spec.replicas = kubemark_deploy::most_that_fit(&spec, &events).await?;
            }
            kubemark_deploy::deploy(&spec, &events, &cancel).await
        })
    })?;
    let outcome = result.map_err(|e| failure(e).json(json))?;
    let env = match &outcome.clusterloader2 {
        Some(cl2) => Some(write_clusterloader2_env(cl2, &outcome.namespace, global)?),
        None => None,
    };
    print_outcome(&outcome, json);
    if let Some(env) = env.filter(|_| !json) {
        println!("  (as shell variables in {})", env.display());
    }
    Ok(())
}

fn render(a: &DeployArgs, show_secrets: bool, global: &Global) -> Result<(), Failure> {
    let (spec, max) = spec(a, global)?;
    if max {
        return Err(Failure::usage(
            "--replicas max: render touches no cluster, so it cannot know how many fit",
            "give a number, or see the count with `cargo xtask deploy --replicas max --dry-run`",
        ));
    }
    let (plan, pod_kubeconfig) = kubemark_deploy::render(&spec).map_err(failure)?;
    if pod_kubeconfig.loopback {
        eprintln!(
            "warning: the master is at a loopback address ({}): only pods on the host's network reach it",
            pod_kubeconfig.server
        );
    }
    print!("{}", plan.to_yaml(show_secrets));
    Ok(())
}

fn status(c: &ClusterArgs, global: &Global) -> Result<(), Failure> {
    let json = c.output.json();
    let cl = clusters(c, global).map_err(|f| f.json(json))?;
    let renderer = Renderer::new(global.verbose);
    let result = with_interrupt(&renderer, Threads::One, |_| {
        Box::pin(async move {
            let (external, master) = kubemark_deploy::connect(&cl.external, &cl.master).await?;
            kubemark_deploy::status::status(&external, &master, &cl.namespace).await
        })
    })?;
    let s = result.map_err(|e| failure(e).json(json))?;
    // Only for a namespace with hollow nodes: never overwrite the file with nothing.
    let env = match s.wanted {
        Some(_) => Some(write_clusterloader2_env(
            &s.clusterloader2,
            &s.namespace,
            global,
        )?),
        None => None,
    };
    print_status(&s, json, usize::MAX);
    if let Some(env) = env.filter(|_| !json) {
        println!("  (as shell variables in {})", env.display());
    }
    Ok(())
}

fn destroy(c: &ClusterArgs, timeout: Option<&str>, global: &Global) -> Result<(), Failure> {
    let json = c.output.json();
    let cl = clusters(c, global).map_err(|f| f.json(json))?;
    let timeout = timeout
        .map(|t| duration("--timeout", t))
        .transpose()
        .map_err(|f| f.json(json))?
        .unwrap_or(std::time::Duration::from_secs(600));
    let renderer = Renderer::new(global.verbose);
    let events = renderer.deploy_events();
    let result = with_interrupt(&renderer, Threads::One, |cancel| {
        Box::pin(async move {
            let (external, master) = kubemark_deploy::connect(&cl.external, &cl.master).await?;
            kubemark_deploy::destroy::destroy(
                &external,
                &master,
                &cl.namespace,
                timeout,
                &events,
                &cancel,
            )
            .await
        })
    })?;
    let d = result.map_err(|e| {
        let cancelled = matches!(e, Error::Cancelled);
        let mut f = failure(e);
        if cancelled {
            f.hint = Some("the deletions already sent go on in the clusters; run destroy again to finish (it deletes only what is still there and deploy's)".into());
        }
        f.json(json)
    })?;
    print_destroyed(&d, json);
    Ok(())
}

/// `target/kubemark/clusterloader2.env`: the flags clusterloader2 takes for
/// the cluster, as shell assignments (written after deploy and status).
pub fn write_clusterloader2_env(
    cl2: &kubemark_deploy::clusterloader2::Clusterloader2,
    namespace: &str,
    global: &Global,
) -> Result<PathBuf, Failure> {
    let path = global.state_dir.join("clusterloader2.env");
    std::fs::create_dir_all(&global.state_dir)
        .and_then(|()| std::fs::write(&path, cl2.env_file(namespace)))
        .map_err(|e| Failure::failed(format!("writing {}: {e}", path.display())))?;
    Ok(path)
}
