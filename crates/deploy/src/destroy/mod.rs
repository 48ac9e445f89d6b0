//! `destroy`: delete what deploy made, on both clusters, and nothing else.
//!
//! What it deletes, each only with proof that deploy made it:
//! - ReplicationControllers, Secrets and ConfigMaps in the namespace that carry
//!   deploy's field manager (and, through the RCs, their pods);
//! - the namespace itself, only when deploy created it (the `created-by`
//!   annotation written in the creating request, checked again by UID at the
//!   delete) and nothing deploy did not make is left in it;
//! - the master's Nodes labelled `kubemark.dev/hollow-node=<namespace>`.
//!
//! Before deleting anything, both clusters must answer and the credentials must
//! allow every delete: a destroy that would stop halfway does not start.
//! Then it waits with watches until everything is gone; a watch that fails is
//! retried, and what is still there when time runs out is named, with its side.

mod inventory;

use std::collections::BTreeSet;
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Node, Pod, ReplicationController, Secret};
use kube::api::{Api, DeleteParams, ListParams, Preconditions};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Resource, ResourceExt};

use crate::apply::{created_by_us, managed_by_us};
use crate::error::{Error, Result, Side};
use crate::event::{CancellationToken, Event, Events, Say};
use crate::kubeconfig::Cluster;
use crate::plan::NODE_LABEL;

/// What `destroy` removed, and what it left on purpose.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Destroyed {
    pub replication_controllers: usize,
    /// Pods of those ReplicationControllers, deleted with them.
    pub pods: usize,
    pub secrets: usize,
    pub configmaps: usize,
    /// Whether the namespace was deleted (only one deploy created).
    pub namespace: bool,
    pub nodes: usize,
    /// Per-node identity's objects on the master: the bootstrap token, the
    /// ClusterRoleBindings, the CSRs made with the token (`Kind name` each).
    pub identity: Vec<String>,
    /// What was left, and why: the namespace when it is not deploy's, the
    /// objects in it that deploy did not make.
    pub left: Vec<String>,
}

impl Destroyed {
    /// Whether anything was deleted.
    pub fn deleted_anything(&self) -> bool {
        self.replication_controllers + self.pods + self.secrets + self.configmaps + self.nodes > 0
            || self.namespace
            || !self.identity.is_empty()
    }
}

/// The most objects `left` names one by one.
const LEFT_SHOWN: usize = 20;

/// Delete what deploy made, on both sides, and wait until it is gone. Twice is fine.
pub async fn destroy(
    external: &Cluster,
    master: &Cluster,
    namespace: &str,
    timeout: Duration,
    events: &Events,
    cancel: &CancellationToken,
) -> Result<Destroyed> {
    crate::plan::check_namespace(namespace)?;
    let deadline = tokio::time::Instant::now() + timeout;
    events.stage(
        "destroy",
        format!("what deploy made for namespace {namespace}, on both clusters"),
    );
    let identity = preflight(external, master, namespace, events).await?;
    if cancel.is_cancelled() {
        return Err(Error::Cancelled);
    }

    let mut done = Destroyed::default();
    let ext = |doing: String| Error::api(Side::External, doing);
    let rc_api: Api<ReplicationController> = Api::namespaced(external.client.clone(), namespace);
    let all_rcs = list_or_none(&rc_api, "ReplicationControllers").await?;
    let existing_rcs: BTreeSet<String> = all_rcs.iter().filter_map(|r| r.uid()).collect();
    let rcs: Vec<ReplicationController> = all_rcs.into_iter().filter(managed_by_us).collect();
    let rc_uids: BTreeSet<String> = rcs.iter().filter_map(|r| r.uid()).collect();
    let pod_api: Api<Pod> = Api::namespaced(external.client.clone(), namespace);
    let pods: Vec<Pod> = list_or_none(&pod_api, "pods")
        .await?
        .into_iter()
        .filter(|p| owned_by(p, &rc_uids))
        .collect();
    let pod_names: BTreeSet<String> = pods.iter().map(|p| p.name_any()).collect();
    for rc in &rcs {
        let name = rc.name_any();
        delete(&rc_api, &name, &DeleteParams::background())
            .await
            .map_err(ext(format!("deleting ReplicationController {name}")))?;
        done.replication_controllers += 1;
    }
    done.pods = pods.len();
    done.secrets = delete_ours::<Secret>(external, namespace, "secrets").await?;
    done.configmaps = delete_ours::<ConfigMap>(external, namespace, "configmaps").await?;

    let ns_api: Api<Namespace> = Api::all(external.client.clone());
    let ns = crate::retry::call(|| ns_api.get_opt(namespace))
        .await
        .map_err(ext("reading the namespace".into()))?;
    let foreign = match &ns {
        Some(_) => inventory::foreign_objects(external, namespace, &rc_uids, &existing_rcs).await,
        None => Ok(Vec::new()),
    };
    match (&ns, &foreign) {
        (None, _) => {}
        (Some(ns), Ok(foreign)) if created_by_us(ns) && foreign.is_empty() => {
            let params = DeleteParams {
                preconditions: Some(Preconditions {
                    uid: ns.uid(),
                    resource_version: None,
                }),
                ..DeleteParams::background()
            };
            delete(&ns_api, namespace, &params)
                .await
                .map_err(ext(format!("deleting namespace {namespace}")))?;
            done.namespace = true;
        }
        (Some(ns), foreign) => {
            let why = if created_by_us(ns) {
                "deploy created it, but it holds what deploy did not make"
            } else {
                "deploy did not create it"
            };
            done.left
                .push(format!("namespace {namespace}: kept, {why}"));
            match foreign {
                Ok(foreign) => {
                    for f in foreign.iter().take(LEFT_SHOWN) {
                        done.left.push(format!("{f}: not deploy's"));
                    }
                    if foreign.len() > LEFT_SHOWN {
                        done.left.push(format!(
                            "... and {} more object(s) deploy did not make",
                            foreign.len() - LEFT_SHOWN
                        ));
                    }
                }
                Err(why) => done.left.push(format!(
                    "could not see everything in namespace {namespace} ({why}), so it is kept"
                )),
            }
        }
    }

    let labelled = crate::wait::hollow_nodes(master, namespace).await?;
    // A hollow node is ours when one of our pods runs it (its name is the pod's);
    // one no pod of ours runs is ours to delete only when it is dead (NotReady):
    // a Ready one is somebody's live hollow node, e.g. another external
    // cluster's deploy into a namespace of the same name on this master.
    let (nodes, live_others): (Vec<Node>, Vec<Node>) = labelled
        .into_iter()
        .partition(|n| pod_names.contains(&n.name_any()) || !crate::diagnose::node_ready(n));
    for n in live_others.iter().take(LEFT_SHOWN) {
        done.left.push(format!(
            "Node {} on the master: labelled for namespace {namespace} and Ready, but no pod of this deploy runs it (another external cluster's?)",
            n.name_any()
        ));
    }
    if live_others.len() > LEFT_SHOWN {
        done.left.push(format!(
            "... and {} more such Node(s)",
            live_others.len() - LEFT_SHOWN
        ));
    }
    let node_api: Api<Node> = Api::all(master.client.clone());
    for n in &nodes {
        let name = n.name_any();
        delete(&node_api, &name, &DeleteParams::background())
            .await
            .map_err(Error::api(Side::Master, format!("deleting node {name}")))?;
        done.nodes += 1;
    }

    match identity {
        Some(true) => {
            let removed = crate::identity::remove(master, namespace, events).await?;
            done.identity = removed.gone;
            done.left.extend(
                removed
                    .failed
                    .into_iter()
                    .map(|f| format!("{f} (per-node identity's, on the master: run destroy again)")),
            );
        }
        Some(false) => {}
        None => done.left.push(
            "per-node identity's bootstrap token and bindings in the master's kube-system, if any: these credentials may not list them".into(),
        ),
    }

    // Wait until everything is gone.
    if done.namespace {
        until_gone(
            ns_api,
            watcher::Config::default().fields(&format!("metadata.name={namespace}")),
            |_: &Namespace| true,
            Side::External,
            &format!("namespace {namespace}"),
            deadline,
            cancel,
        )
        .await?;
    } else if !rcs.is_empty() {
        // Only the pods of the deleted RCs: others in the namespace are not ours.
        until_gone(
            pod_api,
            watcher::Config::default(),
            move |p: &Pod| owned_by(p, &rc_uids),
            Side::External,
            &format!("the hollow-node pods in namespace {namespace}"),
            deadline,
            cancel,
        )
        .await?;
    }
    let deleted_nodes: BTreeSet<String> = nodes.iter().map(|n| n.name_any()).collect();
    until_gone(
        node_api,
        watcher::Config::default().labels(&format!("{NODE_LABEL}={namespace}")),
        move |n: &Node| deleted_nodes.contains(&n.name_any()),
        Side::Master,
        &format!("the hollow nodes of namespace {namespace}"),
        deadline,
        cancel,
    )
    .await?;
    for (kind, count) in [
        ("ReplicationController", done.replication_controllers),
        ("Pod", done.pods),
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

/// Both clusters answer, and the credentials may do every delete destroy does
/// (deleting the namespace only when destroy would: a namespace admin who may
/// not delete namespaces can still destroy in a namespace deploy did not create;
/// per-node identity's objects only when there are some). Returns whether
/// per-node identity's objects are there (`None`: they cannot be seen).
async fn preflight(
    external: &Cluster,
    master: &Cluster,
    namespace: &str,
    events: &Events,
) -> Result<Option<bool>> {
    crate::preflight::version(external).await?;
    crate::preflight::version(master).await?;
    let ns_api: Api<Namespace> = Api::all(external.client.clone());
    let deletes_namespace = crate::retry::call(|| ns_api.get_opt(namespace))
        .await
        .map_err(Error::api(Side::External, "reading the namespace"))?
        .is_some_and(|n| created_by_us(&n));
    let ns = Some(namespace);
    let mut checks = vec![
        ("list", "", "replicationcontrollers", "", ns),
        ("delete", "", "replicationcontrollers", "", ns),
        ("list", "", "secrets", "", ns),
        ("delete", "", "secrets", "", ns),
        ("list", "", "configmaps", "", ns),
        ("delete", "", "configmaps", "", ns),
        ("list", "", "pods", "", ns),
        ("watch", "", "pods", "", ns),
    ];
    if deletes_namespace {
        checks.extend([
            ("delete", "", "namespaces", "", None),
            ("watch", "", "namespaces", "", None),
        ]);
    }
    crate::preflight::permissions(external, &checks, events).await?;
    let identity = crate::identity::present(master, namespace).await;
    let mut master_checks = vec![
        ("list", "", "nodes", "", None),
        ("watch", "", "nodes", "", None),
        ("delete", "", "nodes", "", None),
    ];
    if identity == Some(true) {
        master_checks.extend(crate::identity::REMOVE_RIGHTS);
    }
    crate::preflight::permissions(master, &master_checks, events).await?;
    Ok(identity)
}

/// A delete; already gone counts as done (another destroy, a cascade).
async fn delete<K>(api: &Api<K>, name: &str, params: &DeleteParams) -> Result<(), kube::Error>
where
    K: Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned,
{
    match crate::retry::call(|| api.delete(name, params)).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(e),
    }
}

/// Every object of `api`; none when the namespace does not exist. A list that
/// fails is an error, not an empty list: destroy never reports done for what
/// it could not see.
async fn list_or_none<K>(api: &Api<K>, kind: &str) -> Result<Vec<K>>
where
    K: Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned,
{
    let all = ListParams::default();
    match crate::retry::call(|| api.list(&all)).await {
        Ok(list) => Ok(list.items),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(Vec::new()),
        Err(e) => Err(Error::api(Side::External, format!("listing {kind}"))(e)),
    }
}

/// Delete the objects of one kind in the namespace that carry deploy's field
/// manager; how many were deploy's.
async fn delete_ours<K>(external: &Cluster, namespace: &str, kind: &str) -> Result<usize>
where
    K: Resource<Scope = kube::core::NamespaceResourceScope>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned,
    K::DynamicType: Default,
{
    let api: Api<K> = Api::namespaced(external.client.clone(), namespace);
    let mut ours = 0;
    for obj in list_or_none(&api, kind)
        .await?
        .iter()
        .filter(|o| managed_by_us(*o))
    {
        let name = obj.name_any();
        delete(&api, &name, &DeleteParams::background())
            .await
            .map_err(Error::api(
                Side::External,
                format!("deleting {kind} {name}"),
            ))?;
        ours += 1;
    }
    Ok(ours)
}

fn owned_by<K: Resource>(obj: &K, uids: &BTreeSet<String>) -> bool {
    obj.meta()
        .owner_references
        .iter()
        .flatten()
        .any(|o| uids.contains(&o.uid))
}

/// A watch error that retrying will not mend: the credentials, the resource.
fn permanent(e: &watcher::Error) -> bool {
    match e {
        watcher::Error::InitialListFailed(e)
        | watcher::Error::WatchStartFailed(e)
        | watcher::Error::WatchFailed(e) => {
            matches!(e, kube::Error::Api(s) if matches!(s.code, 401 | 403 | 404))
        }
        watcher::Error::WatchError(s) => matches!(s.code, 401 | 403),
        watcher::Error::NoResourceVersion => true,
    }
}

fn describe_watch(e: &watcher::Error) -> String {
    match e {
        watcher::Error::InitialListFailed(e)
        | watcher::Error::WatchStartFailed(e)
        | watcher::Error::WatchFailed(e) => crate::error::describe(e),
        other => other.to_string(),
    }
}

/// Wait, with a watch, until nothing matches `config` and `counts` in `api`. Watch errors
/// are retried with back-off; one that retrying cannot mend ends the wait at
/// once, and at the deadline the error names the side, what is still there and
/// the last watch error.
async fn until_gone<K>(
    api: Api<K>,
    config: watcher::Config,
    counts: impl Fn(&K) -> bool,
    side: Side,
    what: &str,
    deadline: tokio::time::Instant,
    cancel: &CancellationToken,
) -> Result<()>
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    let mut stream = watcher(api, config).default_backoff().boxed();
    let mut live: BTreeSet<String> = BTreeSet::new();
    let mut listing: Option<BTreeSet<String>> = None;
    let mut synced = false;
    let mut last_error: Option<String> = None;
    let failed =
        |live: &BTreeSet<String>, synced: bool, last_error: &Option<String>, reason: &str| {
            let still = if synced {
                let names: Vec<&str> = live.iter().map(String::as_str).take(10).collect();
                format!(
                    "{} still there ({}{})",
                    live.len(),
                    names.join(", "),
                    if live.len() > 10 { ", ..." } else { "" }
                )
            } else {
                "could not be listed".to_owned()
            };
            Error::Api {
                side,
                doing: format!("waiting for {what} to go"),
                reason: format!(
                    "{reason}: {still}{}",
                    last_error
                        .as_ref()
                        .map(|e| format!("; the last watch error: {e}"))
                        .unwrap_or_default()
                ),
            }
        };
    loop {
        let next = tokio::select! {
            next = stream.next() => next,
            () = tokio::time::sleep_until(deadline) => {
                return Err(failed(&live, synced, &last_error, "time is up"));
            }
            () = cancel.cancelled() => return Err(Error::Cancelled),
        };
        match next {
            Some(Ok(event)) => match event {
                watcher::Event::Init => listing = Some(BTreeSet::new()),
                watcher::Event::InitApply(o) => {
                    if let Some(l) = listing.as_mut().filter(|_| counts(&o)) {
                        l.insert(o.name_any());
                    }
                }
                watcher::Event::InitDone => {
                    live = listing.take().unwrap_or_default();
                    synced = true;
                }
                watcher::Event::Apply(o) if counts(&o) => {
                    live.insert(o.name_any());
                }
                watcher::Event::Apply(_) => {}
                watcher::Event::Delete(o) => {
                    live.remove(&o.name_any());
                }
            },
            Some(Err(e)) if permanent(&e) => {
                return Err(failed(
                    &live,
                    synced,
                    &Some(describe_watch(&e)),
                    "the watch was refused",
                ));
            }
            Some(Err(e)) => {
                tracing::debug!("watch of {what} failed, retrying: {e}");
                last_error = Some(describe_watch(&e));
            }
            None => return Err(failed(&live, synced, &last_error, "the watch ended")),
        }
        if synced && listing.is_none() && live.is_empty() {
            return Ok(());
        }
    }
}
