//! The kubemark cluster pipeline: with two kubeconfigs (the *external* cluster
//! that runs hollow-node pods, the *kubemark master* they register with),
//! render the hollow-node manifests, check everything, apply them with
//! server-side apply, and wait with watches until the hollow nodes are Ready.
//!
//! Stages with typed values between them: [`Spec`] → [`plan::build`] (pure,
//! printable: `render`) → [`preflight::run`] (with [`capacity`]) →
//! [`apply::run`] → [`wait::run`] (a fold of watch updates) →
//! [`wait::delete_stale`]. The library never prints (the compiler holds it to
//! that); it emits [`Event`]s. It never depends on bollard or git2: what it
//! shares with the image side is `kubemark_contract` (the image reference,
//! quantities, the loopback rule, events and cancellation).

#![deny(clippy::print_stdout, clippy::print_stderr)]

pub mod apply;
pub mod capacity;
pub mod clusterloader2;
pub mod destroy;
pub mod diagnose;
pub mod doctor;
pub mod error;
pub mod event;
pub mod identity;
pub mod kubeconfig;
pub mod plan;
pub mod preflight;
mod retry;
pub mod status;
pub mod tables;
pub mod template;
pub mod wait;

pub use error::{Error, Result, Side};
pub use event::{CancellationToken, Event, Events};
pub use kubeconfig::{Cluster, Source};
pub use plan::{Plan, Resources, Spec};
pub use template::Choice;

use event::Say;

/// What a deploy did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Outcome {
    pub namespace: String,
    pub replicas: u32,
    pub image: String,
    pub template: String,
    pub findings: preflight::Findings,
    /// `None` with `--no-wait`.
    pub summary: Option<wait::Summary>,
    /// What clusterloader2 needs to run against the cluster (after a wait).
    pub clusterloader2: Option<clusterloader2::Clusterloader2>,
    /// `per-node` or `shared`.
    pub node_identity: &'static str,
}

/// The plan, with the master kubeconfig prepared for pods; touches no cluster.
/// With `--node-identity per-node` the bootstrap token in it is a new one
/// (deploy reuses the master's, if deploy made one there before).
pub fn render(spec: &Spec) -> Result<(Plan, kubeconfig::PodKubeconfig)> {
    let pod_kubeconfig = kubeconfig::for_pods(&spec.master, spec.allow_loopback_master)?;
    let token = match spec.node_identity {
        identity::NodeIdentity::PerNode => Some(identity::BootstrapToken::generate()?),
        _ => None,
    };
    let plan = plan::build(spec, &pod_kubeconfig, token.as_ref())?;
    Ok((plan, pod_kubeconfig))
}

/// `--replicas max`: how many hollow nodes fit on the external cluster now,
/// from its allocatable and the pod's requests (said as a note). None fitting
/// is the capacity error, with the numbers.
pub async fn most_that_fit(spec: &Spec, events: &Events) -> Result<u32> {
    let pod_kubeconfig = kubeconfig::for_pods(&spec.master, spec.allow_loopback_master)?;
    let external = kubeconfig::connect(Side::External, &spec.external).await?;
    let (n, details) = capacity::most(&external, spec, &pod_kubeconfig).await?;
    if n == 0 {
        return Err(Error::Capacity {
            needed: 1,
            fits: 0,
            details,
        });
    }
    events.note(format!(
        "{n} hollow nodes fit on the external cluster (--replicas max): deploying {n}"
    ));
    for line in details {
        events.note(format!("  {line}"));
    }
    Ok(n)
}

/// Both clusters' clients.
pub async fn connect(spec_external: &Source, spec_master: &Source) -> Result<(Cluster, Cluster)> {
    let external = kubeconfig::connect(Side::External, spec_external).await?;
    let master = kubeconfig::connect(Side::Master, spec_master).await?;
    Ok((external, master))
}

/// The plan, checked against both clusters; nothing written yet.
#[derive(Debug)]
pub struct Checked {
    pub plan: Plan,
    pub findings: preflight::Findings,
    pub external: Cluster,
    pub master: Cluster,
}

/// Render and run every preflight check against both clusters; write nothing.
/// `deploy --dry-run` stops here.
pub async fn check(spec: &Spec, events: &Events) -> Result<Checked> {
    events.stage(
        "preflight",
        "rendering the manifests and checking both clusters",
    );
    // Shared first: a template that does not render fails before any connection.
    let pod_kubeconfig = kubeconfig::for_pods(&spec.master, spec.allow_loopback_master)?;
    let shared = plan::build(spec, &pod_kubeconfig, None)?;
    if pod_kubeconfig.insecure {
        events.warn("the master kubeconfig turns TLS verification off (insecure-skip-tls-verify): the hollow nodes will not verify the master");
    }
    if pod_kubeconfig.loopback {
        events.warn(format!(
            "the master is at a loopback address ({}): this works only for pods on the host's network (--allow-loopback-master)",
            pod_kubeconfig.server
        ));
    }
    let (external, master) = connect(&spec.external, &spec.master).await?;
    // Whether each answers first: the node identity's reads would otherwise
    // be the first requests, retried, and say less.
    let versions = (
        preflight::version(&external).await?,
        preflight::version(&master).await?,
    );
    let plan = match identity::decide(spec, &master, events).await? {
        Some(token) => plan::build(spec, &pod_kubeconfig, Some(&token))?,
        None => shared,
    };
    let findings = preflight::run(spec, &plan, &external, &master, versions, events).await?;
    Ok(Checked {
        plan,
        findings,
        external,
        master,
    })
}

/// Render, check, apply, and (unless `spec.wait` is false) wait.
pub async fn deploy(spec: &Spec, events: &Events, cancel: &CancellationToken) -> Result<Outcome> {
    let Checked {
        plan,
        findings,
        external,
        master,
    } = check(spec, events).await?;
    if cancel.is_cancelled() {
        return Err(Error::Cancelled);
    }
    events.stage(
        "apply",
        format!(
            "{} hollow nodes from {} into namespace {}",
            spec.replicas, plan.template_name, spec.namespace
        ),
    );
    let pods_before = wait::pod_names(&external, &spec.namespace, &plan.selector).await?;
    let per_node = !plan.master.is_empty();
    apply::run(
        &external.client,
        &master.client,
        &spec.namespace,
        &plan,
        spec.adopt,
        events,
    )
    .await?;
    let summary = if spec.wait {
        events.stage(
            "wait",
            format!(
                "for {} pods Running and {} nodes Ready (timeout {}s)",
                spec.replicas,
                spec.replicas,
                spec.timeout().as_secs()
            ),
        );
        let waited = wait::run(
            &external,
            &master,
            &spec.namespace,
            &plan.selector,
            spec.replicas as usize,
            &pods_before,
            spec.timeout(),
            events,
            cancel,
        )
        .await?;
        let mut summary = waited.summary;
        summary.stale_nodes_deleted = wait::delete_stale(&master, &waited.stale, events).await?;
        Some(summary)
    } else {
        None
    };
    let clusterloader2 = match &summary {
        Some(s) => {
            let ours = clusterloader2::Ours::Rows {
                registered_tainted: spec.registers_tainted(),
            };
            let cl2 =
                clusterloader2::flags(&external, &master, &spec.namespace, s.wanted, ours).await?;
            for warning in cl2.warnings() {
                events.warn(warning);
            }
            Some(cl2)
        }
        None => None,
    };
    Ok(Outcome {
        namespace: spec.namespace.clone(),
        replicas: spec.replicas,
        image: spec.image.to_string(),
        template: plan.template_name,
        findings,
        node_identity: if per_node { "per-node" } else { "shared" },
        summary,
        clusterloader2,
    })
}
