//! `deploy doctor`: what makes hollow nodes fail or tests lie, found and
//! explained with the fix, before deploy (preflight runs it on the plan's pod)
//! and after (on the deployed ReplicationController's pod). Reads only, except
//! `--repair`, which deletes hollow-node pods stuck on a NotReady Node (their
//! ReplicationController replaces them) and those Nodes, and nothing else.
//!
//! Checks:
//! - `daemonsets`: DaemonSets on the master that would place a pod on every
//!   hollow node, where it stays Pending or Init (kubernetes#94454);
//! - `image-service`: the external nodes' container runtime against what the
//!   template mounts, so `--use-host-image-service` can work (kubernetes#115203);
//! - `pod-security`: the namespace's PodSecurity level against the template;
//! - `master-nodes`: Nodes with hollow-node names that are not this deploy's,
//!   and master nodes already NotReady;
//! - `stuck`: hollow-node pods Running whose Node has been NotReady longer
//!   than a grace period (kubernetes#60035).

mod nodes;
mod template;

use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, PodSpec};
use kube::ResourceExt;
use kube::api::{Api, ListParams};
use kubemark_contract::CancellationToken;

use crate::error::{Error, Result, Side};
use crate::kubeconfig::Cluster;
use crate::plan::NODE_LABEL;

/// How long a hollow node's Node may be NotReady while its pod runs before
/// the doctor calls it stuck: the node lifecycle controller's grace period
/// (40 s) and the time a restarting hollow kubelet needs, with room to spare.
pub const GRACE: Duration = Duration::from_secs(300);

/// How bad a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Hollow nodes fail, or a test measures something else than it says.
    Problem,
    /// Worth a look; may be intended.
    Warning,
}

/// One thing found, with what to do about it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Finding {
    pub check: &'static str,
    pub severity: Severity,
    pub what: String,
    pub fix: String,
}

/// What the doctor found, which checks found nothing, and what it repaired.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Report {
    pub namespace: String,
    pub findings: Vec<Finding>,
    /// Checks that found nothing.
    pub passed: Vec<&'static str>,
    /// Checks that could not run, and why (a permission, a resource not served).
    pub skipped: Vec<String>,
    /// What `--repair` deleted: `Pod NAME`, `Node NAME`.
    pub repaired: Vec<String>,
}

impl Report {
    pub fn problems(&self) -> usize {
        self.findings
            .iter()
            .filter(|f| f.severity == Severity::Problem)
            .count()
    }
}

/// What the doctor looks at.
#[derive(Debug, Clone)]
pub struct Patient<'a> {
    pub external: &'a Cluster,
    pub master: &'a Cluster,
    pub namespace: &'a str,
    /// The hollow-node pod: the plan's before deploy; `None` to read the
    /// deployed ReplicationController's.
    pub pod: Option<&'a PodSpec>,
    /// Pods of ours whose Node has been NotReady longer than this are stuck.
    pub grace: Duration,
    /// Delete stuck pods and their Nodes.
    pub repair: bool,
    /// Stops `--repair` between deletions.
    pub cancel: CancellationToken,
}

/// What one check found, or why it could not run.
pub(crate) type Found = std::result::Result<Vec<Finding>, String>;

/// Run every check.
pub async fn examine(p: &Patient<'_>) -> Result<Report> {
    let mut report = Report {
        namespace: p.namespace.to_owned(),
        ..Report::default()
    };
    let deployed = crate::status::hollow_rcs(p.external, p.namespace).await?;
    let pod: Option<PodSpec> = match p.pod {
        Some(pod) => Some(pod.clone()),
        None => deployed
            .iter()
            .find_map(|rc| rc.spec.as_ref()?.template.as_ref()?.spec.clone()),
    };
    let master_nodes = list_all::<Node>(p.master, Side::Master, "nodes").await?;
    let ours: Vec<&Node> = master_nodes
        .iter()
        .flatten()
        .filter(|n| n.labels().get(NODE_LABEL).map(String::as_str) == Some(p.namespace))
        .collect();

    match &pod {
        Some(pod) => {
            let hollow = template::HollowNode::of(pod, ours.first().copied(), p.namespace);
            let found = template::daemonsets(p.master, &hollow).await?;
            report.record("daemonsets", found);
            let found = template::image_service(p.external, pod).await?;
            report.record("image-service", found);
            let found = template::pod_security(p.external, p.namespace, pod).await?;
            report.record("pod-security", found);
        }
        None => report.skipped.push(format!(
            "daemonsets, image-service, pod-security: no hollow-node ReplicationController in namespace {} to read the pod from (deploy runs them on its plan)",
            p.namespace
        )),
    }
    let Some(master_nodes) = &master_nodes else {
        let why = "the master's Nodes cannot be listed with these credentials".to_owned();
        report.record("master-nodes", Err(why.clone()));
        report.record("stuck", Err(why));
        return Ok(report);
    };
    let rc_names: Vec<String> = deployed.iter().map(ResourceExt::name_any).collect();
    report.record(
        "master-nodes",
        Ok(nodes::master_node_findings(
            master_nodes,
            p.namespace,
            &rc_names,
        )),
    );
    // Only deploy's ReplicationControllers: `--repair` deletes their pods, and
    // never those of a hollow-node RC somebody else made in the namespace.
    let ours_rcs: Vec<_> = deployed
        .iter()
        .filter(|rc| crate::apply::managed_by_us(*rc))
        .collect();
    let found = nodes::stuck(p, &ours, &ours_rcs, &mut report.repaired).await?;
    report.record("stuck", found);
    Ok(report)
}

impl Report {
    fn record(&mut self, check: &'static str, found: Found) {
        match found {
            Ok(f) if f.is_empty() => self.passed.push(check),
            Ok(f) => self.findings.extend(f),
            Err(why) => self.skipped.push(format!("{check}: {why}")),
        }
    }
}

/// A list the credentials may not read, or the server may not serve:
/// `Ok(None)`, so that the check is skipped with the reason.
async fn list_all<K>(c: &Cluster, side: Side, what: &str) -> Result<Option<Vec<K>>>
where
    K: kube::Resource<Scope = k8s_openapi::ClusterResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
    K::DynamicType: Default,
{
    let api: Api<K> = Api::all(c.client.clone());
    let all = ListParams::default();
    match crate::retry::call(|| api.list(&all)).await {
        Ok(list) => Ok(Some(list.items)),
        Err(kube::Error::Api(s)) if matches!(s.code, 403 | 404) => Ok(None),
        Err(e) => Err(Error::api(side, format!("listing {what}"))(e)),
    }
}
