//! `status` and `destroy`, which need only the two kubeconfigs and the
//! namespace: what deploy made is found by what marks it (the field manager,
//! the namespace label, the hollow-node label), so nothing else is touched.

use std::collections::BTreeSet;
use std::time::Duration;

use futures_util::TryStreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Node, Pod, ReplicationController, Secret};
use kube::api::{Api, DeleteParams, ListParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Resource, ResourceExt};

use crate::apply::FIELD_MANAGER;
use crate::diagnose::{self, deleting, node_ready, pod_running};
use crate::error::{Error, Result, Side};
use crate::event::{Cancel, Event, Events, Say};
use crate::kubeconfig::Cluster;
use crate::plan::{MANAGED_BY, NODE_LABEL};

/// One hollow node: its pod on the external cluster and the external node it runs on.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Row {
    pub hollow_node: String,
    pub pod: Option<String>,
    pub external_node: Option<String>,
    pub pod_running: bool,
    /// `None` when the node has not registered on the master.
    pub node_ready: Option<bool>,
}

/// What `status` reports.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Status {
    pub namespace: String,
    /// `spec.replicas` of the hollow-node ReplicationControllers.
    pub wanted: Option<i32>,
    pub pods: usize,
    pub running: usize,
    pub ready: usize,
    pub diagnosis: Vec<String>,
    pub rows: Vec<Row>,
}

fn managed_by_us<K: Resource>(obj: &K) -> bool {
    obj.meta()
        .managed_fields
        .iter()
        .flatten()
        .any(|m| m.manager.as_deref() == Some(FIELD_MANAGER))
}

/// Delete the objects of `api` that carry our field manager; how many were ours.
/// A list that fails is an error, not an empty list: destroy never reports done
/// for what it could not see.
async fn delete_ours<K>(api: &Api<K>, kind: &str) -> Result<usize>
where
    K: Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned,
{
    let all = ListParams::default();
    let listed = match crate::retry::call(|| api.list(&all)).await {
        Ok(list) => list.items,
        // No namespace, nothing in it.
        Err(kube::Error::Api(s)) if s.code == 404 => return Ok(0),
        Err(e) => return Err(Error::api(Side::External, format!("listing {kind}s"))(e)),
    };
    let background = DeleteParams::background();
    let mut ours = 0;
    for obj in listed.iter().filter(|o| managed_by_us(*o)) {
        let name = obj.name_any();
        match crate::retry::call(|| api.delete(&name, &background)).await {
            // Already gone (another destroy): ours all the same.
            Ok(_) => ours += 1,
            Err(kube::Error::Api(s)) if s.code == 404 => ours += 1,
            Err(e) => {
                return Err(Error::api(
                    Side::External,
                    format!("deleting {kind} {name}"),
                )(e));
            }
        }
    }
    Ok(ours)
}

/// Hollow-node ReplicationControllers: their pods run `--morph=kubelet`.
fn is_hollow(rc: &ReplicationController) -> bool {
    let containers = rc
        .spec
        .as_ref()
        .and_then(|s| s.template.as_ref())
        .and_then(|t| t.spec.as_ref())
        .map(|s| s.containers.clone())
        .unwrap_or_default();
    containers.iter().any(|c| {
        c.command
            .iter()
            .flatten()
            .chain(c.args.iter().flatten())
            .any(|a| a == "--morph=kubelet")
    })
}

fn selector_of(rc: &ReplicationController) -> String {
    rc.spec
        .as_ref()
        .and_then(|s| s.selector.clone())
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

async fn hollow_rcs(external: &Cluster, namespace: &str) -> Result<Vec<ReplicationController>> {
    let api: Api<ReplicationController> = Api::namespaced(external.client.clone(), namespace);
    let all = ListParams::default();
    match crate::retry::call(|| api.list(&all)).await {
        Ok(list) => Ok(list.items.into_iter().filter(is_hollow).collect()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(Vec::new()),
        Err(e) => Err(Error::api(Side::External, "listing ReplicationControllers")(e)),
    }
}

/// Counts, diagnosis, and the map hollow node ↔ pod ↔ external node.
pub async fn status(external: &Cluster, master: &Cluster, namespace: &str) -> Result<Status> {
    let rcs = hollow_rcs(external, namespace).await?;
    let wanted =
        (!rcs.is_empty()).then(|| rcs.iter().filter_map(|r| r.spec.as_ref()?.replicas).sum());
    let mut pods: Vec<Pod> = Vec::new();
    for rc in &rcs {
        let (p, _) = crate::wait::snapshot(external, master, namespace, &selector_of(rc)).await?;
        pods.extend(p);
    }
    let node_api: Api<Node> = Api::all(master.client.clone());
    let hollow = ListParams::default().labels(&format!("{NODE_LABEL}={namespace}"));
    let nodes = crate::retry::call(|| node_api.list(&hollow))
        .await
        .map_err(Error::api(Side::Master, "listing hollow nodes"))?
        .items;
    let live: Vec<&Pod> = pods.iter().filter(|p| !deleting(p)).collect();
    let names: BTreeSet<String> = live.iter().map(|p| p.name_any()).collect();
    let mut rows: Vec<Row> = live
        .iter()
        .map(|p| {
            let name = p.name_any();
            let node = nodes.iter().find(|n| n.name_any() == name);
            Row {
                hollow_node: name.clone(),
                pod: Some(name),
                external_node: p.spec.as_ref().and_then(|s| s.node_name.clone()),
                pod_running: pod_running(p),
                node_ready: node.map(node_ready),
            }
        })
        .collect();
    for n in nodes.iter().filter(|n| !names.contains(&n.name_any())) {
        rows.push(Row {
            hollow_node: n.name_any(),
            pod: None,
            external_node: None,
            pod_running: false,
            node_ready: Some(node_ready(n)),
        });
    }
    rows.sort_by(|a, b| a.hollow_node.cmp(&b.hollow_node));
    let running = live.iter().filter(|p| pod_running(p)).count();
    let ready = rows
        .iter()
        .filter(|r| r.pod.is_some() && r.node_ready == Some(true))
        .count();
    let mut diagnosis = diagnose::diagnose(external, namespace, &pods, &nodes).await;
    let orphans = rows.iter().filter(|r| r.pod.is_none()).count();
    if orphans > 0 {
        diagnosis.push(format!("{orphans} hollow node(s) on the master have no pod (left from earlier runs; destroy removes them)"));
    }
    Ok(Status {
        namespace: namespace.to_owned(),
        wanted,
        pods: live.len(),
        running,
        ready,
        diagnosis,
        rows,
    })
}

/// What `destroy` removed.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Destroyed {
    pub replication_controllers: usize,
    pub secrets: usize,
    pub configmaps: usize,
    pub namespace: bool,
    pub nodes: usize,
}

/// Wait, with a watch, until no object matches `labels` (or `fields`) in `api`.
async fn until_empty<K>(
    api: Api<K>,
    config: watcher::Config,
    timeout: Duration,
    cancel: &Cancel,
) -> Result<()>
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    let mut stream = Box::pin(watcher(api, config).default_backoff());
    let mut live: BTreeSet<String> = BTreeSet::new();
    let mut listing: Option<BTreeSet<String>> = None;
    let work = async {
        while let Some(event) = stream.try_next().await.ok().flatten() {
            match event {
                watcher::Event::Init => listing = Some(BTreeSet::new()),
                watcher::Event::InitApply(o) => {
                    if let Some(l) = listing.as_mut() {
                        l.insert(o.meta().name.clone().unwrap_or_default());
                    }
                }
                watcher::Event::InitDone => live = listing.take().unwrap_or_default(),
                watcher::Event::Apply(o) => {
                    live.insert(o.meta().name.clone().unwrap_or_default());
                }
                watcher::Event::Delete(o) => {
                    live.remove(&o.meta().name.clone().unwrap_or_default());
                }
            }
            if live.is_empty() && listing.is_none() {
                return Ok(());
            }
            if cancel.is_cancelled() {
                return Err(Error::Cancelled);
            }
        }
        Ok(())
    };
    tokio::time::timeout(timeout, work)
        .await
        .unwrap_or_else(|_| {
            Err(Error::Api {
                side: Side::External,
                doing: "waiting for deletions".into(),
                reason: format!("not done after {}s", timeout.as_secs()),
            })
        })
}

/// Delete what deploy made, on both sides, and wait until it is gone. Twice is fine.
pub async fn destroy(
    external: &Cluster,
    master: &Cluster,
    namespace: &str,
    timeout: Duration,
    events: &Events,
    cancel: &Cancel,
) -> Result<Destroyed> {
    let mut done = Destroyed::default();
    let background = DeleteParams::background();
    let ignore_missing =
        |r: std::result::Result<(), kube::Error>, doing: String, side: Side| match r {
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
            Err(e) => Err(Error::api(side, doing)(e)),
            Ok(()) => Ok(()),
        };
    events.stage("destroy", format!("hollow nodes of namespace {namespace}"));
    let rcs = hollow_rcs(external, namespace).await?;
    let rc_api: Api<ReplicationController> = Api::namespaced(external.client.clone(), namespace);
    let mut selectors = Vec::new();
    for rc in rcs.iter().filter(|r| managed_by_us(*r)) {
        let name = rc.name_any();
        ignore_missing(
            crate::retry::call(|| rc_api.delete(&name, &background))
                .await
                .map(drop),
            format!("deleting ReplicationController {name}"),
            Side::External,
        )?;
        selectors.push(selector_of(rc));
        done.replication_controllers += 1;
    }
    let secrets: Api<Secret> = Api::namespaced(external.client.clone(), namespace);
    done.secrets += delete_ours(&secrets, "secret").await?;
    let configmaps: Api<ConfigMap> = Api::namespaced(external.client.clone(), namespace);
    done.configmaps += delete_ours(&configmaps, "configmap").await?;
    let ns_api: Api<Namespace> = Api::all(external.client.clone());
    let ours = match crate::retry::call(|| ns_api.get_opt(namespace))
        .await
        .map_err(Error::api(Side::External, "reading the namespace"))?
    {
        Some(ns) => ns.labels().get(MANAGED_BY.0).map(String::as_str) == Some(MANAGED_BY.1),
        None => false,
    };
    if ours {
        ignore_missing(
            crate::retry::call(|| ns_api.delete(namespace, &background))
                .await
                .map(drop),
            format!("deleting namespace {namespace}"),
            Side::External,
        )?;
        done.namespace = true;
    } else if crate::retry::call(|| ns_api.get_opt(namespace))
        .await
        .ok()
        .flatten()
        .is_some()
    {
        events.note(format!(
            "namespace {namespace} was not created by deploy: it stays"
        ));
    }
    let node_api: Api<Node> = Api::all(master.client.clone());
    let hollow = ListParams::default().labels(&format!("{NODE_LABEL}={namespace}"));
    let nodes = crate::retry::call(|| node_api.list(&hollow))
        .await
        .map_err(Error::api(Side::Master, "listing hollow nodes"))?
        .items;
    for n in &nodes {
        let name = n.name_any();
        ignore_missing(
            crate::retry::call(|| node_api.delete(&name, &background))
                .await
                .map(drop),
            format!("deleting node {}", n.name_any()),
            Side::Master,
        )?;
        done.nodes += 1;
    }
    // Wait until everything is gone.
    if done.namespace {
        until_empty(
            ns_api,
            watcher::Config::default().fields(&format!("metadata.name={namespace}")),
            timeout,
            cancel,
        )
        .await?;
    } else {
        for selector in &selectors {
            let pods: Api<Pod> = Api::namespaced(external.client.clone(), namespace);
            until_empty(
                pods,
                watcher::Config::default().labels(selector),
                timeout,
                cancel,
            )
            .await?;
        }
    }
    until_empty(
        node_api,
        watcher::Config::default().labels(&format!("{NODE_LABEL}={namespace}")),
        timeout,
        cancel,
    )
    .await?;
    for (kind, count) in [
        ("ReplicationController", done.replication_controllers),
        ("Secret", done.secrets),
        ("ConfigMap", done.configmaps),
        ("Namespace", usize::from(done.namespace)),
        ("hollow Node", done.nodes),
    ] {
        if count > 0 {
            events.emit(Event::Deleted {
                kind: kind.into(),
                count,
            });
        }
    }
    Ok(done)
}
