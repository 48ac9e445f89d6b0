//! `cargo xtask deploy` (and `deploy status|destroy|render`): flags,
//! environment and the `[deploy]` table of `kubemark.toml` into a
//! [`kubemark_deploy::Spec`], then the cluster pipeline, drawn as it runs.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use clap::ArgMatches;
use kubemark_contract::{ImageRef, Quantity};
use kubemark_deploy::error::Cause;
use kubemark_deploy::{CancellationToken, Choice, Error, Resources, Source, Spec};

use crate::Global;
use crate::config::{DeploySettings, origin, switch};
use crate::image::Output;
use crate::progress::Renderer;
use crate::report::{self, Failure};

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
    #[arg(long, value_enum, env = "KUBEMARK_OUTPUT")]
    output: Option<Output>,
}

/// Deploy hollow nodes and wait until they are Ready.
#[derive(Debug, Clone, clap::Args)]
pub struct DeployArgs {
    #[command(flatten)]
    cluster: ClusterArgs,
    /// How many hollow nodes (0 to 2147483647). Required.
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
    #[arg(long, env = "KUBEMARK_NO_WAIT")]
    no_wait: bool,
    /// Accept a master kubeconfig whose server is a loopback address (pods on the host network).
    #[arg(long, env = "KUBEMARK_ALLOW_LOOPBACK_MASTER")]
    allow_loopback_master: bool,
    /// Deploy even if the external cluster seems too small.
    #[arg(long, env = "KUBEMARK_SKIP_CAPACITY_CHECK")]
    skip_capacity_check: bool,
    /// Take over existing objects with the names deploy writes (a Secret `kubeconfig`, ...)
    /// that deploy did not make: deploy overwrites them and destroy deletes them.
    #[arg(long, env = "KUBEMARK_ADOPT")]
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
    /// Print the manifests as YAML; touch nothing.
    Render {
        #[command(flatten)]
        args: Box<DeployArgs>,
        /// Print the secret's data instead of redacting it.
        #[arg(long)]
        show_secrets: bool,
    },
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

fn output(cluster: &ClusterArgs, file: &DeploySettings) -> Result<bool, Failure> {
    match (cluster.output, file.output.as_deref()) {
        (Some(o), _) => Ok(o == Output::Json),
        (None, Some("json")) => Ok(true),
        (None, Some("text") | None) => Ok(false),
        (None, Some(other)) => Err(Failure::usage(
            format!("output = \"{other}\" in the settings file is not a format"),
            "use \"text\" or \"json\"",
        )),
    }
}

struct Clusters {
    external: Source,
    master: Source,
    namespace: String,
}

fn clusters(
    c: &ClusterArgs,
    matches: Option<&ArgMatches>,
    global: &Global,
) -> Result<Clusters, Failure> {
    let file = &global.settings.deploy;
    let master = c.master_kubeconfig.clone().or(file.master_kubeconfig.clone()).ok_or_else(|| {
        Failure::usage(
            "no kubeconfig for the kubemark master",
            "pass --master-kubeconfig FILE (or set KUBEMARK_MASTER_KUBECONFIG, or master-kubeconfig under [deploy] in kubemark.toml)",
        )
    })?;
    let namespace = c
        .namespace
        .clone()
        .or(file.namespace.clone())
        .unwrap_or_else(|| "kubemark".into());
    kubemark_deploy::plan::check_namespace(&namespace).map_err(|e| {
        Failure::usage(
            format!(
                "{}: {e}",
                origin(
                    matches,
                    "namespace",
                    "KUBEMARK_NAMESPACE",
                    &global.settings,
                    "deploy"
                )
            ),
            "e.g. --namespace kubemark (the default)",
        )
    })?;
    Ok(Clusters {
        external: Source {
            path: c
                .external_kubeconfig
                .clone()
                .or(file.external_kubeconfig.clone()),
            context: c.external_context.clone().or(file.external_context.clone()),
        },
        master: Source {
            path: Some(master),
            context: c.master_context.clone().or(file.master_context.clone()),
        },
        namespace,
    })
}

/// `40m` → 40, `0.5` → 500, `1` → 1000.
fn millicpu(flag: &str, q: &str) -> Result<u64, Failure> {
    match Quantity::parse(q) {
        Ok(cores) if !cores.is_negative() && !Quantity::is_binary_text(q) => {
            Ok(u64::try_from(cores.milli()).unwrap_or(u64::MAX))
        }
        _ => Err(Failure::usage(
            format!("{flag} `{q}` is not a CPU quantity"),
            "e.g. 40m, 0.5 or 1",
        )),
    }
}

/// `100Mi` → 102400, `50M` → 48829 (Ki, rounded up).
fn mem_ki(flag: &str, q: &str) -> Result<u64, Failure> {
    match Quantity::parse(q) {
        Ok(bytes) if !bytes.is_negative() && !q.trim_end().ends_with('m') => {
            Ok(u64::try_from(bytes.value())
                .unwrap_or(u64::MAX)
                .div_ceil(1024))
        }
        _ => Err(Failure::usage(
            format!("{flag} `{q}` is not a memory quantity"),
            "e.g. 100Mi, 50M or 1Gi",
        )),
    }
}

/// `600`, `90s`, `10m`, `1h`; more than zero. `origin` names the input
/// (`--timeout`, `KUBEMARK_TIMEOUT`, the file).
pub fn duration(origin: &str, text: &str) -> Result<Duration, Failure> {
    let bad = || {
        Failure::usage(
            format!("{origin} `{text}` is not a duration"),
            "e.g. 600, 90s, 10m or 1h",
        )
    };
    let (num, unit) = text.split_at(
        text.find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len()),
    );
    let n: u64 = num.parse().map_err(|_| bad())?;
    let secs = match unit {
        "" | "s" => n,
        "m" => n.saturating_mul(60),
        "h" => n.saturating_mul(3600),
        _ => return Err(bad()),
    };
    if secs == 0 {
        return Err(Failure::usage(
            format!("{origin} {text}: a timeout of zero would fail before anything could happen"),
            "give a time to wait, e.g. 90s or 10m",
        ));
    }
    // A week is longer than any bring-up; beyond it is a typo (and would overflow a clock).
    const WEEK: u64 = 7 * 24 * 3600;
    if secs > WEEK {
        return Err(Failure::usage(
            format!("{origin} {text}: longer than a week"),
            "give at most 168h; deploy can be run again to wait more",
        ));
    }
    Ok(Duration::from_secs(secs))
}

fn pairs(flag: &str, text: &str) -> Result<Vec<(String, String)>, Failure> {
    text.split(',')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').ok_or_else(|| {
                Failure::usage(
                    format!("{flag}: `{p}` is not key=value"),
                    "e.g. zone=a,tier=hollow".to_owned(),
                )
            })?;
            let ok = |s: &str| {
                s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'))
            };
            if k.is_empty() || !ok(k) || !ok(v) {
                return Err(Failure::usage(
                    format!("{flag}: `{p}` is not a valid label"),
                    "keys and values are letters, digits, '-', '_', '.' (and '/' in keys)",
                ));
            }
            Ok((k.to_owned(), v.to_owned()))
        })
        .collect()
}

/// The last image `cargo xtask image` recorded (`None`: there is no record).
pub fn recorded_image(state_dir: &std::path::Path) -> Option<Result<ImageRef, Failure>> {
    match kubemark_contract::Record::latest_image(state_dir) {
        Ok(image) => image.map(Ok),
        Err(e) => Some(Err(Failure::usage(
            e.to_string(),
            "pass --image REF, or run `cargo xtask image` again to rewrite it",
        ))),
    }
}

/// A whole number from a flag, variable or file, named as the user gave it.
fn count(text: &str, origin: &str, what: &str, max: u64) -> Result<u64, Failure> {
    let hint = format!("give a whole number from 0 to {max}");
    match text.trim().parse::<i128>() {
        Ok(n) if n < 0 => Err(Failure::usage(
            format!("{origin} {text}: {what} cannot be negative"),
            hint,
        )),
        Ok(n) if n > i128::from(max) => Err(Failure::usage(
            format!(
                "{origin} {text}: more {what} than a ReplicationController can hold (at most {max})"
            ),
            hint,
        )),
        Ok(n) => Ok(n as u64),
        Err(_) => Err(Failure::usage(
            format!("{origin} `{text}` is not a number of {what}"),
            hint,
        )),
    }
}

/// Placeholders deploy fills from flags: `--set` may not change them.
const FROM_FLAGS: [(&str, &str); 6] = [
    ("namespace", "--namespace"),
    ("numreplicas", "--replicas"),
    ("kubemark_image", "--image"),
    ("kubemark_image_registry", "--image (or --registry)"),
    ("kubemark_image_tag", "--image (or --tag)"),
    (
        "hollow_node_labels",
        "--node-labels (deploy's own label on the hollow nodes is how status and destroy find them)",
    ),
];

fn spec(a: &DeployArgs, matches: Option<&ArgMatches>, global: &Global) -> Result<Spec, Failure> {
    let file = &global.settings.deploy;
    let from = |id: &str, env: &str| origin(matches, id, env, &global.settings, "deploy");
    let c = clusters(&a.cluster, matches, global)?;
    let replicas = match (&a.replicas, file.replicas) {
        (Some(text), _) => count(
            text,
            &from("replicas", "KUBEMARK_REPLICAS"),
            "hollow nodes",
            u64::from(kubemark_deploy::plan::MAX_REPLICAS),
        )?,
        (None, Some(n)) => count(
            &n.to_string(),
            &from("replicas", "KUBEMARK_REPLICAS"),
            "hollow nodes",
            u64::from(kubemark_deploy::plan::MAX_REPLICAS),
        )?,
        (None, None) => {
            return Err(Failure::usage(
                "how many hollow nodes? no --replicas given",
                "pass --replicas N (or set KUBEMARK_REPLICAS, or replicas under [deploy] in kubemark.toml)",
            ));
        }
    } as u32;
    let max_pods = match (&a.max_pods, file.max_pods) {
        (Some(text), _) => Some(count(
            text,
            &from("max_pods", "KUBEMARK_MAX_PODS"),
            "pods",
            1_000_000,
        )?),
        (None, n) => n.map(u64::from),
    }
    .map(|n| n as u32);
    let image = match (a.image.clone().or(file.image.clone()), &a.registry, &a.tag) {
        (Some(image), _, _) => ImageRef::parse(&image).map_err(|e| {
            Failure::usage(
                format!("{}: {e}", from("image", "KUBEMARK_IMAGE")),
                "give REGISTRY/kubemark:TAG (or @sha256:DIGEST), e.g. 127.0.0.1:5000/kubemark:v1",
            )
        })?,
        (None, Some(registry), Some(tag)) => ImageRef::kubemark(registry, tag).map_err(|e| {
            Failure::usage(
                format!("--registry {registry} --tag {tag}: {e}"),
                "give --registry HOST[:PORT][/PATH] and a tag, e.g. --registry 127.0.0.1:5000 --tag v1",
            )
        })?,
        (None, Some(_), None) | (None, None, Some(_)) => {
            return Err(Failure::usage("--registry and --tag go together", "pass both, or --image REF"));
        }
        (None, None, None) => recorded_image(&global.state_dir).unwrap_or_else(|| {
            Err(Failure::usage(
                "no kubemark image given",
                format!(
                    "pass --image REF (or --registry and --tag), or build one with `cargo xtask image` (it records {})",
                    global.state_dir.join("image.json").display()
                ),
            ))
        })?,
    };
    let template = match a.template.clone().or(file.template.clone()).as_deref() {
        None | Some("simplified") => Choice::Simplified,
        Some("upstream") => Choice::Upstream(
            a.source_dir
                .clone()
                .or(global.settings.image.source_dir.clone())
                .unwrap_or_else(crate::image::default_source_dir),
        ),
        Some(path) => Choice::File(PathBuf::from(path)),
    };
    let mut sets: BTreeMap<String, String> = file.set.clone().unwrap_or_default();
    for s in &a.sets {
        let (k, v) = s.split_once('=').ok_or_else(|| {
            Failure::usage(
                format!("--set `{s}` is not key=value"),
                "e.g. --set init_image=busybox:1.36",
            )
        })?;
        sets.insert(k.to_owned(), v.to_owned());
    }
    for k in sets.keys() {
        let identifier = k.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
            && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !identifier {
            return Err(Failure::usage(
                format!("--set: `{k}` is not a placeholder name"),
                "placeholder names are letters, digits and _",
            ));
        }
        if let Some((_, flag)) = FROM_FLAGS.iter().find(|(name, _)| name == k) {
            return Err(Failure::usage(
                format!(
                    "--set {k}=...: deploy fills `{k}` itself, so setting it would be ignored or break status and destroy"
                ),
                format!("use {flag}"),
            ));
        }
    }
    // These have no variable: a flag, or the file.
    let q = |id: &str,
             v: &Option<String>,
             f: &Option<String>,
             conv: fn(&str, &str) -> Result<u64, Failure>| {
        v.clone()
            .or(f.clone())
            .map(|q| conv(&from(id, ""), &q))
            .transpose()
    };
    let resources = Resources {
        kubelet_millicpu: q("kubelet_cpu", &a.kubelet_cpu, &file.kubelet_cpu, millicpu)?,
        kubelet_mem_ki: q(
            "kubelet_memory",
            &a.kubelet_memory,
            &file.kubelet_memory,
            mem_ki,
        )?,
        proxy_millicpu: q("proxy_cpu", &a.proxy_cpu, &file.proxy_cpu, millicpu)?,
        proxy_mem_ki: q("proxy_memory", &a.proxy_memory, &file.proxy_memory, mem_ki)?,
        npd_millicpu: q("npd_cpu", &a.npd_cpu, &file.npd_cpu, millicpu)?,
        npd_mem_ki: q("npd_memory", &a.npd_memory, &file.npd_memory, mem_ki)?,
    };
    let node_labels = pairs(
        &from("node_labels", "KUBEMARK_NODE_LABELS"),
        &a.node_labels
            .clone()
            .or(file.node_labels.clone())
            .unwrap_or_default(),
    )?;
    if let Some((k, _)) = node_labels
        .iter()
        .find(|(k, _)| k.starts_with("kubemark.dev/"))
    {
        return Err(Failure::usage(
            format!(
                "{}: `{k}` is deploy's own label (it is how status and destroy find the hollow nodes)",
                from("node_labels", "KUBEMARK_NODE_LABELS")
            ),
            "choose a key outside kubemark.dev/, e.g. --node-labels tier=hollow",
        ));
    }
    let taints = a
        .register_with_taints
        .clone()
        .or(file.register_with_taints.clone());
    if let Some(t) = &taints {
        for taint in t.split(',') {
            let effect = taint.rsplit_once(':').map(|(_, e)| e);
            if !matches!(
                effect,
                Some("NoSchedule" | "PreferNoSchedule" | "NoExecute")
            ) {
                return Err(Failure::usage(
                    format!(
                        "{}: `{taint}` is not key=value:Effect",
                        from("register_with_taints", "KUBEMARK_REGISTER_WITH_TAINTS")
                    ),
                    "Effect is NoSchedule, PreferNoSchedule or NoExecute, e.g. kubemark=true:NoSchedule",
                ));
            }
        }
    }
    let extended = a
        .extended_resources
        .clone()
        .or(file.extended_resources.clone());
    if let Some(e) = &extended {
        pairs(
            &from("extended_resources", "KUBEMARK_EXTENDED_RESOURCES"),
            e,
        )?;
    }
    let timeout = a
        .timeout
        .clone()
        .or(file.timeout.clone())
        .map(|t| duration(&from("timeout", "KUBEMARK_TIMEOUT"), &t))
        .transpose()?;
    let flag = |id: &str, value: bool, file_value: Option<bool>| match matches {
        Some(m) => switch(m, id, value, file_value),
        None => value || file_value.unwrap_or(false),
    };
    Ok(Spec {
        external: c.external,
        master: c.master,
        namespace: c.namespace,
        replicas,
        image,
        template,
        sets,
        resources,
        node_labels,
        register_with_taints: taints,
        max_pods,
        extended_resources: extended,
        timeout,
        wait: !flag("no_wait", a.no_wait, file.no_wait),
        allow_loopback_master: flag(
            "allow_loopback_master",
            a.allow_loopback_master,
            file.allow_loopback_master,
        ),
        skip_capacity_check: flag(
            "skip_capacity_check",
            a.skip_capacity_check,
            file.skip_capacity_check,
        ),
        adopt: {
            let adopt = flag("adopt", a.adopt, file.adopt);
            let origin = from("adopt", "KUBEMARK_ADOPT");
            if adopt && !origin.starts_with("--") {
                // Taking over other people's objects should be a decision of this run.
                eprintln!(
                    "warning: --adopt is on through {origin}: every deploy with these settings takes over objects with deploy's names, and destroy then deletes them"
                );
            }
            adopt
        },
    })
}

/// Where the work runs. The cluster commands are I/O-bound client code: one
/// thread is enough, and spares the cross-thread wake-ups (a quarter of the
/// wait's CPU at 5,000 nodes, `cargo xtask bench deploy`). The demo also
/// serves two simulators in the same process, so it gets every core.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Threads {
    One,
    All,
}

fn runtime(threads: Threads) -> Result<tokio::runtime::Runtime, Failure> {
    let mut builder = match threads {
        Threads::One => tokio::runtime::Builder::new_current_thread(),
        Threads::All => tokio::runtime::Builder::new_multi_thread(),
    };
    Ok(builder.enable_all().build()?)
}

/// Run `work`; the first Ctrl-C cancels it (exit 130), a second quits at once.
pub fn with_interrupt<'a, T>(
    renderer: &Renderer,
    threads: Threads,
    work: impl FnOnce(CancellationToken) -> std::pin::Pin<Box<dyn std::future::Future<Output = T> + 'a>>,
) -> Result<T, Failure> {
    let cancel = CancellationToken::new();
    let rt = runtime(threads)?;
    let result = rt.block_on(async {
        let watcher = {
            let (cancel, renderer) = (cancel.clone(), renderer.clone());
            tokio::spawn(async move {
                if tokio::signal::ctrl_c().await.is_ok() {
                    cancel.cancel();
                    renderer.line(
                        "interrupted: stopping at the next safe point (Ctrl-C again to quit now)",
                    );
                    if tokio::signal::ctrl_c().await.is_ok() {
                        std::process::exit(i32::from(report::INTERRUPTED));
                    }
                }
            })
        };
        let out = work(cancel.clone()).await;
        watcher.abort();
        out
    });
    renderer.finish();
    Ok(result)
}

pub fn run(args: Args, matches: &ArgMatches, global: &Global) -> Result<(), Failure> {
    let sub = matches.subcommand().map(|(_, m)| m);
    match args.action {
        None => deploy(&args.args, Some(matches), global),
        Some(Action::Render { args, show_secrets }) => render(&args, sub, show_secrets, global),
        Some(Action::Status(c)) => status(&c, sub, global),
        Some(Action::Destroy { cluster, timeout }) => {
            destroy(&cluster, timeout.as_deref(), sub, global)
        }
    }
}

fn deploy(a: &DeployArgs, matches: Option<&ArgMatches>, global: &Global) -> Result<(), Failure> {
    let json = output(&a.cluster, &global.settings.deploy)?;
    let spec = spec(a, matches, global).map_err(|f| f.json(json))?;
    let renderer = Renderer::new(global.verbose);
    let events = renderer.deploy_events();
    if a.dry_run {
        let result = with_interrupt(&renderer, Threads::One, |_| {
            Box::pin(async move { kubemark_deploy::check(&spec, &events).await })
        })?;
        let checked = result.map_err(|e| failure(e).json(json))?;
        print_dry_run(&checked, json);
        return Ok(());
    }
    let result = with_interrupt(&renderer, Threads::One, |cancel| {
        Box::pin(async move { kubemark_deploy::deploy(&spec, &events, &cancel).await })
    })?;
    match result {
        Ok(outcome) => {
            print_outcome(&outcome, json);
            Ok(())
        }
        Err(e) => Err(failure(e).json(json)),
    }
}

/// `--dry-run`: what deploy would apply (secrets redacted) and what it found.
fn print_dry_run(checked: &kubemark_deploy::Checked, json: bool) {
    let manifests: Vec<String> = checked
        .plan
        .manifests()
        .iter()
        .map(|m| format!("{} {}", m.kind, m.name))
        .collect();
    if json {
        let out = serde_json::json!({
            "dry_run": true,
            "would_apply": manifests,
            "findings": checked.findings,
        });
        println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
        return;
    }
    print!("{}", checked.plan.to_yaml(false));
    println!("---");
    println!(
        "# dry run: both clusters checked, nothing written; deploy would apply {}",
        manifests.join(", ")
    );
}

pub fn print_outcome(o: &kubemark_deploy::Outcome, json: bool) {
    if json {
        println!("{}", serde_json::to_string_pretty(o).unwrap_or_default());
        return;
    }
    match &o.summary {
        Some(s) => {
            println!(
                "{} hollow nodes Ready in namespace {}: all pods Running after {:.1}s, all nodes Ready after {:.1}s",
                s.wanted, o.namespace, s.all_running_s, s.all_ready_s
            );
            if let (Some(p50), Some(p99)) = (s.registration_p50_s, s.registration_p99_s) {
                println!(
                    "  registration latency (pod seen → its node Ready): p50 {p50:.1}s, p99 {p99:.1}s"
                );
            }
            if s.stale_nodes_deleted > 0 {
                println!(
                    "  deleted {} stale hollow node(s) of pods that went away",
                    s.stale_nodes_deleted
                );
            }
        }
        None => println!(
            "applied {} hollow nodes in namespace {} (not waiting: --no-wait)",
            o.replicas, o.namespace
        ),
    }
    println!("  image {}, template {}", o.image, o.template);
}

fn render(
    a: &DeployArgs,
    matches: Option<&ArgMatches>,
    show_secrets: bool,
    global: &Global,
) -> Result<(), Failure> {
    let spec = spec(a, matches, global)?;
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

fn status(c: &ClusterArgs, matches: Option<&ArgMatches>, global: &Global) -> Result<(), Failure> {
    let file = &global.settings.deploy;
    let json = output(c, file)?;
    let cl = clusters(c, matches, global).map_err(|f| f.json(json))?;
    let renderer = Renderer::new(global.verbose);
    let result = with_interrupt(&renderer, Threads::One, |_| {
        Box::pin(async move {
            let (external, master) = kubemark_deploy::connect(&cl.external, &cl.master).await?;
            kubemark_deploy::status::status(&external, &master, &cl.namespace).await
        })
    })?;
    let s = result.map_err(|e| failure(e).json(json))?;
    print_status(&s, json, usize::MAX);
    Ok(())
}

pub fn print_status(s: &kubemark_deploy::status::Status, json: bool, max_rows: usize) {
    if json {
        println!("{}", serde_json::to_string_pretty(s).unwrap_or_default());
        return;
    }
    match s.wanted {
        Some(w) => println!(
            "namespace {}: {w} hollow nodes wanted, {} pods ({} Running), {} nodes Ready",
            s.namespace, s.pods, s.running, s.ready
        ),
        None => println!(
            "namespace {}: no hollow-node ReplicationController",
            s.namespace
        ),
    }
    for line in &s.diagnosis {
        println!("  {line}");
    }
    if !s.rows.is_empty() {
        let width = s
            .rows
            .iter()
            .map(|r| r.hollow_node.len())
            .max()
            .unwrap_or(11)
            .max(11);
        println!(
            "  {:<width$}  {:<width$}  {:<16}  {:<11}  NODE READY",
            "HOLLOW NODE", "POD", "EXTERNAL NODE", "POD RUNNING"
        );
        for r in s.rows.iter().take(max_rows) {
            println!(
                "  {:<width$}  {:<width$}  {:<16}  {:<11}  {}",
                r.hollow_node,
                r.pod.as_deref().unwrap_or("-"),
                r.external_node.as_deref().unwrap_or("-"),
                if r.pod_running { "yes" } else { "no" },
                match r.node_ready {
                    Some(true) => "Ready",
                    Some(false) => "NotReady",
                    None => "not registered",
                }
            );
        }
        if s.rows.len() > max_rows {
            println!(
                "  ... and {} more (`cargo xtask deploy status` lists them all)",
                s.rows.len() - max_rows
            );
        }
    }
}

fn destroy(
    c: &ClusterArgs,
    timeout: Option<&str>,
    matches: Option<&ArgMatches>,
    global: &Global,
) -> Result<(), Failure> {
    let file = &global.settings.deploy;
    let json = output(c, file)?;
    let cl = clusters(c, matches, global).map_err(|f| f.json(json))?;
    let timeout = timeout
        .map(|t| duration("--timeout", t))
        .transpose()
        .map_err(|f| f.json(json))?
        .unwrap_or(Duration::from_secs(600));
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

pub fn print_destroyed(d: &kubemark_deploy::destroy::Destroyed, json: bool) {
    if json {
        println!("{}", serde_json::to_string_pretty(d).unwrap_or_default());
        return;
    }
    if d.deleted_anything() {
        println!(
            "destroyed: {} ReplicationController(s) with {} pod(s), {} secret(s), {} configmap(s), {} namespace, {} hollow node(s) on the master",
            d.replication_controllers,
            d.pods,
            d.secrets,
            d.configmaps,
            if d.namespace { "the" } else { "no" },
            d.nodes
        );
    } else {
        println!("nothing to destroy");
    }
    for line in &d.left {
        println!("  left: {line}");
    }
}

/// The library's error, with what to do about it.
pub fn failure(e: Error) -> Failure {
    let code = match &e {
        Error::Cancelled => report::INTERRUPTED,
        e if e.is_usage() => report::USAGE,
        _ => report::FAILED,
    };
    let mut details = Vec::new();
    let hint: Option<String> = match &e {
        Error::Usage(_) => None,
        Error::Kubeconfig { side, .. } => Some(format!(
            "check the {side}'s kubeconfig (--{}-kubeconfig, --{}-context)",
            if *side == kubemark_deploy::Side::External {
                "external"
            } else {
                "master"
            },
            if *side == kubemark_deploy::Side::External {
                "external"
            } else {
                "master"
            }
        )),
        Error::MasterKubeconfig { hint, .. } => Some(hint.clone()),
        Error::Undefined { missing, .. } => Some(format!(
            "set each with --set, e.g. {}",
            missing
                .iter()
                .map(|m| format!("--set {m}=..."))
                .collect::<Vec<_>>()
                .join(" ")
        )),
        Error::Template { .. } | Error::Manifest { .. } => {
            Some("fix the template (or choose another with --template)".into())
        }
        Error::Unreachable { side, cause, .. } => {
            let flag = if *side == kubemark_deploy::Side::External {
                "--external-kubeconfig"
            } else {
                "--master-kubeconfig"
            };
            Some(match cause {
                Cause::NoServer => format!(
                    "nothing answers there: is the {side} running, and is the server address in its kubeconfig ({flag}) right?"
                ),
                Cause::Certificate => format!(
                    "the {side}'s certificate is not signed by the certificate-authority in its kubeconfig ({flag}): give the kubeconfig the CA that signed the server's certificate (certificate-authority-data), or check that the address is the cluster you mean"
                ),
                Cause::Credentials => format!(
                    "the {side} refused the credentials (401): the token or client certificate in its kubeconfig ({flag}) is wrong or has expired; get a new one (e.g. `kubectl create token NAME`)"
                ),
                Cause::Other => format!(
                    "is the {side} running and healthy, and is its kubeconfig's server address right ({flag})?"
                ),
            })
        }
        Error::Forbidden { side, .. } => Some(format!(
            "grant these to the {side}'s user (RBAC), or use a kubeconfig that has them"
        )),
        Error::Capacity { details: d, .. } => {
            details.extend(d.iter().cloned());
            Some("add nodes to the external cluster, lower --replicas or the requests (--kubelet-cpu, ...), or pass --skip-capacity-check".into())
        }
        Error::Refused {
            details: d, hint, ..
        } => {
            details.extend(d.iter().cloned());
            Some(hint.clone())
        }
        Error::Api { side, reason, .. } if reason.ends_with("(401)") => Some(format!(
            "the {side} refused the credentials (401): the token or client certificate in its kubeconfig is wrong or has expired; get a new one (e.g. `kubectl create token NAME`)"
        )),
        Error::Api { .. } | Error::Io { .. } => None,
        Error::Timeout { diagnosis, .. } => {
            details.extend(diagnosis.iter().cloned());
            Some("everything stays as it is: fix the cause above and run deploy again (it picks up where it is), or `cargo xtask deploy status` to look again".into())
        }
        Error::Cancelled => {
            Some("everything stays as it is; run deploy again to pick up where it stopped".into())
        }
    };
    Failure {
        message: e.to_string(),
        details,
        hint,
        code,
        json: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_and_durations() {
        assert_eq!(millicpu("x", "40m").unwrap(), 40);
        assert_eq!(millicpu("x", "0.5").unwrap(), 500);
        assert!(millicpu("x", "lots").is_err());
        assert_eq!(mem_ki("x", "100Mi").unwrap(), 102_400);
        assert_eq!(mem_ki("x", "50M").unwrap(), 48_829);
        assert!(mem_ki("x", "5Qi").is_err());
        assert!(mem_ki("x", "500m").is_err());
        assert!(millicpu("x", "1Gi").is_err());
        assert!(millicpu("x", "-1").is_err());
        assert_eq!(duration("--t", "10m").unwrap(), Duration::from_secs(600));
        assert_eq!(duration("--t", "90").unwrap(), Duration::from_secs(90));
        assert!(duration("--t", "soon").is_err());
        assert!(
            duration("--t", "10000000000000000000h").is_err(),
            "no overflow"
        );
        assert!(duration("--t", "169h").is_err());
        assert!(duration("--t", "168h").is_ok());
        let zero = duration("KUBEMARK_TIMEOUT", "0s").unwrap_err();
        assert!(
            zero.message.contains("KUBEMARK_TIMEOUT 0s"),
            "{}",
            zero.message
        );
        for (text, expect) in [
            ("-1", "cannot be negative"),
            ("3000000000", "at most 2147483647"),
            ("many", "`many` is not a number"),
        ] {
            let e = count(text, "KUBEMARK_REPLICAS", "hollow nodes", 2_147_483_647).unwrap_err();
            assert!(e.message.contains(expect), "{text}: {}", e.message);
            assert!(e.message.starts_with("KUBEMARK_REPLICAS"), "{}", e.message);
        }
        assert_eq!(count("7", "--replicas", "hollow nodes", 10).unwrap(), 7);
        assert_eq!(
            pairs("l", "a=b,c/d=e").unwrap(),
            vec![("a".into(), "b".into()), ("c/d".into(), "e".into())]
        );
        assert!(pairs("l", "a").is_err());
        assert!(pairs("l", "a=\"b\"").is_err());
    }
}
