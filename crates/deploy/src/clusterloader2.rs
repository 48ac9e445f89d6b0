//! What clusterloader2 needs to run against this kubemark cluster: the master
//! and external kubeconfigs, the number of Ready hollow nodes, the master's
//! address, as its flags; and how many schedulable, untainted nodes it will
//! see on the master, hollow or not (it counts them itself and waits for
//! `--nodes` of them).

use std::path::{Path, PathBuf};

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Node, NodeCondition, NodeSpec, NodeStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::ResourceExt;

use crate::error::{Error, Result, Side};
use crate::kubeconfig::{Cluster, host_of};
use crate::plan::NODE_LABEL;

/// The flags and what they stand for.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Clusterloader2 {
    /// `--kubeconfig`: the kubemark master's.
    pub kubeconfig: PathBuf,
    /// `--provider-configs=ROOT_KUBECONFIG=`: the external cluster's.
    pub root_kubeconfig: PathBuf,
    /// `--nodes`: the Ready hollow nodes of this deploy.
    pub nodes: usize,
    /// `--masterip`: the master's host as the tool reaches it.
    pub master_ip: String,
    /// Nodes on the master clusterloader2 counts as schedulable (Ready, not
    /// cordoned, no NoSchedule/NoExecute taint), hollow or not.
    pub schedulable_nodes: usize,
    /// Of those, nodes that are not this deploy's hollow nodes.
    pub other_schedulable_nodes: Vec<String>,
    /// The whole command line's flags.
    pub args: Vec<String>,
    /// Kubeconfigs whose current-context is not the context deploy used:
    /// clusterloader2 has no flag for a context and reads the current one.
    pub other_contexts: Vec<String>,
}

/// A line when `cluster` was reached through a context that is not its
/// kubeconfig's current-context.
fn context_note(cluster: &Cluster, flag: &str) -> Option<String> {
    let current = kube::config::Kubeconfig::read_from(&cluster.kubeconfig)
        .ok()?
        .current_context?;
    (current != cluster.context).then(|| {
        format!(
            "{flag} {}: clusterloader2 reads its current-context `{current}`, not `{}` that deploy used: give it a kubeconfig whose current-context is `{}`",
            cluster.kubeconfig.display(),
            cluster.context,
            cluster.context
        )
    })
}

/// A path as clusterloader2 reads it from anywhere: absolute.
fn absolute(path: &Path) -> PathBuf {
    path.canonicalize().unwrap_or_else(|_| {
        std::env::current_dir()
            .map(|d| d.join(path))
            .unwrap_or_else(|_| path.to_owned())
    })
}

/// Whether clusterloader2 (and the scheduler) would place test pods on `node`.
pub fn schedulable(node: &Node) -> bool {
    crate::capacity::schedulable(node, &[])
}

/// A Node as the schedulable check reads it: name, labels, spec and the
/// conditions. The rest (managed fields, images, addresses: most of a Node's
/// bytes) is skipped unparsed, so reading every node of a 5,000-node master
/// costs little CPU.
#[derive(serde::Deserialize)]
struct Slim {
    metadata: SlimMeta,
    #[serde(default)]
    spec: Option<NodeSpec>,
    #[serde(default)]
    status: Option<SlimStatus>,
}

#[derive(serde::Deserialize)]
struct SlimMeta {
    name: String,
    #[serde(default)]
    labels: Option<BTreeMap<String, String>>,
}

#[derive(serde::Deserialize)]
struct SlimStatus {
    #[serde(default)]
    conditions: Option<Vec<NodeCondition>>,
}

#[derive(serde::Deserialize)]
struct SlimList {
    items: Vec<Slim>,
    #[serde(default)]
    metadata: SlimListMeta,
}

#[derive(serde::Deserialize, Default)]
struct SlimListMeta {
    #[serde(rename = "continue", default)]
    next: Option<String>,
}

impl From<Slim> for Node {
    fn from(slim: Slim) -> Self {
        Node {
            metadata: ObjectMeta {
                name: Some(slim.metadata.name),
                labels: slim.metadata.labels,
                ..ObjectMeta::default()
            },
            spec: slim.spec,
            status: slim.status.map(|s| NodeStatus {
                conditions: s.conditions,
                ..NodeStatus::default()
            }),
        }
    }
}

/// The master's Nodes that `selector` picks, slim, in pages of 500.
async fn slim_nodes(master: &Cluster, selector: &str) -> Result<Vec<Node>> {
    let mut nodes = Vec::new();
    let mut next: Option<String> = None;
    loop {
        let mut query = format!(
            "/api/v1/nodes?limit=500&labelSelector={}",
            crate::tables::encode(selector)
        );
        if let Some(token) = &next {
            query.push_str("&continue=");
            query.push_str(&crate::tables::encode(token));
        }
        let request = http::Request::get(&query)
            .body(Vec::new())
            .map_err(|e| Error::api(Side::Master, "listing nodes")(kube::Error::HttpError(e)))?;
        let page: SlimList =
            crate::retry::call(|| master.client.request::<SlimList>(request.clone()))
                .await
                .map_err(Error::api(Side::Master, "listing nodes"))?;
        nodes.extend(page.items.into_iter().map(Node::from));
        next = page.metadata.next.filter(|t| !t.is_empty());
        if next.is_none() {
            return Ok(nodes);
        }
    }
}

/// The master's schedulable nodes that are not this deploy's hollow nodes
/// (other deploys' hollow nodes included): their names, sorted.
pub async fn other_schedulable(master: &Cluster, namespace: &str) -> Result<Vec<String>> {
    let nodes = slim_nodes(master, &format!("{NODE_LABEL}!={namespace}")).await?;
    let mut names: Vec<String> = nodes
        .iter()
        .filter(|n| schedulable(n))
        .map(ResourceExt::name_any)
        .collect();
    names.sort();
    Ok(names)
}

/// How this deploy's own hollow nodes are counted as schedulable.
#[derive(Debug, Clone, Copy)]
pub enum Ours<'a> {
    /// From its Nodes, already read whole (`status`).
    Read(&'a [Node]),
    /// Right after deploy's wait: from their rows (Ready and not cordoned: the
    /// Status column), none when the template registers them with a
    /// NoSchedule/NoExecute taint. A taint something else adds later is not
    /// seen: reading whole Nodes for it cost a 2,000-node deploy 5 MB and a third
    /// of its CPU.
    Rows { registered_tainted: bool },
}

/// How many of this deploy's hollow nodes clusterloader2 counts as schedulable.
async fn ours_schedulable(master: &Cluster, namespace: &str, ours: Ours<'_>) -> Result<usize> {
    match ours {
        Ours::Read(nodes) => Ok(nodes.iter().filter(|n| schedulable(n)).count()),
        Ours::Rows {
            registered_tainted: true,
        } => Ok(0),
        Ours::Rows {
            registered_tainted: false,
        } => {
            let rows = crate::tables::rows(
                &master.client,
                "/api/v1/nodes",
                &format!("{NODE_LABEL}={namespace}"),
                &["Status"],
            )
            .await
            .map_err(Error::api(Side::Master, "listing hollow nodes"))?;
            Ok(rows
                .iter()
                .filter(|(_, cells)| {
                    let status = cells.get("Status");
                    status.split(',').any(|s| s == "Ready")
                        && !status.contains("SchedulingDisabled")
                })
                .count())
        }
    }
}

/// The flags for `ready` hollow nodes of `namespace`.
pub async fn flags(
    external: &Cluster,
    master: &Cluster,
    namespace: &str,
    ready: usize,
    ours: Ours<'_>,
) -> Result<Clusterloader2> {
    let others = other_schedulable(master, namespace).await?;
    let hollow = ours_schedulable(master, namespace, ours).await?;
    let kubeconfig = absolute(&master.kubeconfig);
    let root_kubeconfig = absolute(&external.kubeconfig);
    let master_ip = host_of(&master.server);
    let args = vec![
        "--provider=kubemark".to_owned(),
        format!("--kubeconfig={}", kubeconfig.display()),
        format!(
            "--provider-configs=ROOT_KUBECONFIG={}",
            root_kubeconfig.display()
        ),
        format!("--nodes={ready}"),
        format!("--masterip={master_ip}"),
    ];
    Ok(Clusterloader2 {
        kubeconfig,
        root_kubeconfig,
        nodes: ready,
        master_ip,
        schedulable_nodes: hollow + others.len(),
        other_schedulable_nodes: others,
        args,
        other_contexts: [
            context_note(master, "--kubeconfig"),
            context_note(external, "ROOT_KUBECONFIG"),
        ]
        .into_iter()
        .flatten()
        .collect(),
    })
}

impl Clusterloader2 {
    /// What is worth a warning: clusterloader2 will count nodes that are not
    /// this deploy's, or fewer than the Ready hollow nodes (they are tainted).
    pub fn warnings(&self) -> Vec<String> {
        let mut out = self.other_contexts.clone();
        if !self.other_schedulable_nodes.is_empty() {
            let names: Vec<&str> = self
                .other_schedulable_nodes
                .iter()
                .take(5)
                .map(String::as_str)
                .collect();
            out.push(format!(
                "clusterloader2 will also count {} schedulable node(s) on the master that are not this deploy's hollow nodes ({}{}): its test pods may land there; taint or cordon them, or give --nodes accordingly",
                self.other_schedulable_nodes.len(),
                names.join(", "),
                if self.other_schedulable_nodes.len() > 5 { ", ..." } else { "" }
            ));
        }
        let hollow = self.schedulable_nodes - self.other_schedulable_nodes.len();
        if hollow < self.nodes {
            out.push(format!(
                "only {hollow} of the {} Ready hollow nodes are schedulable for clusterloader2 (tainted NoSchedule/NoExecute, or cordoned): its test pods need tolerations, or register the hollow nodes without those taints",
                self.nodes
            ));
        }
        out
    }

    /// The flags as one shell command line: each quoted when it must be
    /// (a path with a space stays one argument).
    pub fn command_line(&self) -> String {
        self.args
            .iter()
            .map(|a| shell_word(a))
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// `target/kubemark/clusterloader2.env`: shell assignments, single-quoted;
    /// `CL2_ARGS` is a command line (`eval clusterloader2 "$CL2_ARGS" ...`).
    pub fn env_file(&self, namespace: &str) -> String {
        let quote = |s: &str| format!("'{}'", s.replace('\'', r"'\''"));
        let mut out = format!(
            "# clusterloader2 against the kubemark cluster of namespace {namespace} (written by cargo xtask deploy)\n\
             # source this file, then: eval clusterloader2 \"$CL2_ARGS\" --testconfig=... --report-dir=...\n"
        );
        for (key, value) in [
            ("CL2_PROVIDER", "kubemark".to_owned()),
            ("CL2_KUBECONFIG", self.kubeconfig.display().to_string()),
            (
                "CL2_ROOT_KUBECONFIG",
                self.root_kubeconfig.display().to_string(),
            ),
            ("CL2_NODES", self.nodes.to_string()),
            ("CL2_MASTER_IP", self.master_ip.clone()),
            ("CL2_ARGS", self.command_line()),
        ] {
            out.push_str(&format!("{key}={}\n", quote(&value)));
        }
        out
    }
}

/// `word` as the shell reads it back: as it is when it holds only characters
/// the shell leaves alone, else single-quoted.
fn shell_word(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,@+%".contains(c));
    if plain {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_env_file_quotes_for_the_shell() {
        let c = Clusterloader2 {
            kubeconfig: "/k/it's master".into(),
            root_kubeconfig: "/k/external".into(),
            nodes: 5,
            master_ip: "10.0.0.1".into(),
            schedulable_nodes: 6,
            other_schedulable_nodes: vec!["control-plane".into()],
            args: vec!["--nodes=5".into(), "--kubeconfig=/k/it's master".into()],
            other_contexts: Vec::new(),
        };
        let env = c.env_file("kubemark");
        assert!(
            env.contains("CL2_KUBECONFIG='/k/it'\\''s master'\n"),
            "{env}"
        );
        assert!(env.contains("CL2_NODES='5'\n"), "{env}");
        let w = c.warnings();
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].contains("1 schedulable node(s)") && w[0].contains("control-plane"));
        // The shell reads it back as written: a path with a space and a
        // quote stays one argument.
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!(
                "{env}\neval set -- \"$CL2_ARGS\"; printf '%s|' \"$CL2_KUBECONFIG\" \"$#\" \"$@\""
            ))
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "/k/it's master|2|--nodes=5|--kubeconfig=/k/it's master|"
        );
    }
}
