//! destroy's inventory of a namespace deploy created: everything in it that
//! deploy did not make, found by discovery of every namespaced type, so that
//! the namespace is deleted only when it holds nothing else.

use std::collections::BTreeSet;

use kube::api::{Api, DynamicObject, ListParams};
use kube::discovery::{Discovery, Scope, verbs};
use kube::{Resource, ResourceExt};

use super::owned_by;
use crate::apply::{managed_by_us, managers};
use crate::kubeconfig::Cluster;

/// What every namespace holds without anybody asking: the `default` service
/// account, the cluster CA configmap, a legacy token of the default account.
fn made_by_the_cluster(kind: &str, obj: &DynamicObject) -> bool {
    let name = obj.name_any();
    match kind {
        "ServiceAccount" => name == "default",
        "ConfigMap" => name == "kube-root-ca.crt",
        "Secret" => {
            obj.data.get("type").and_then(|t| t.as_str())
                == Some("kubernetes.io/service-account-token")
                && obj
                    .annotations()
                    .get("kubernetes.io/service-account.name")
                    .map(String::as_str)
                    == Some("default")
        }
        _ => false,
    }
}

/// Everything in the namespace that deploy did not make, as `Kind name`
/// (discovery of every namespaced, listable type in every served version;
/// events and metrics aside). Best effort: an object created after this list
/// and before the namespace's delete goes with the namespace.
pub(super) async fn foreign_objects(
    external: &Cluster,
    namespace: &str,
    rc_uids: &BTreeSet<String>,
    existing_rcs: &BTreeSet<String>,
) -> std::result::Result<Vec<String>, String> {
    let discovery = Discovery::new(external.client.clone())
        .exclude(&["events.k8s.io", "metrics.k8s.io"])
        .run()
        .await
        .map_err(|e| format!("discovery failed: {}", crate::error::describe(&e)))?;
    let mut foreign = Vec::new();
    // Every version the server serves, not only the preferred one: a type
    // served only in v1alpha1 of a group that prefers v1 holds objects too.
    // The same objects under another version of the same resource are listed once.
    let mut seen: BTreeSet<(String, String)> = BTreeSet::new();
    for group in discovery.groups() {
        for (resource, caps) in group.resources_by_stability() {
            if !seen.insert((resource.group.clone(), resource.plural.clone())) {
                continue;
            }
            if caps.scope != Scope::Namespaced
                || !caps.supports_operation(verbs::LIST)
                || (resource.group.is_empty() && resource.kind == "Event")
            {
                continue;
            }
            let api: Api<DynamicObject> =
                Api::namespaced_with(external.client.clone(), namespace, &resource);
            let mut params = ListParams::default().limit(500);
            loop {
                let page = crate::retry::call(|| api.list(&params))
                    .await
                    .map_err(|e| {
                        format!(
                            "listing {}: {}",
                            resource.plural,
                            crate::error::describe(&e)
                        )
                    })?;
                for obj in &page.items {
                    // A pod whose ReplicationController is gone (an earlier
                    // destroy deleted it) is the garbage collector's to delete.
                    let collected = resource.kind == "Pod"
                        && obj.owner_references().iter().any(|o| {
                            o.kind == "ReplicationController"
                                && o.controller == Some(true)
                                && !existing_rcs.contains(&o.uid)
                        });
                    let ours = managed_by_us(obj)
                        || owned_by(obj, rc_uids)
                        || collected
                        || made_by_the_cluster(&resource.kind, obj);
                    // Something on its way out (a pod of an RC an earlier destroy
                    // deleted, being collected) does not keep the namespace.
                    if !ours && obj.meta().deletion_timestamp.is_none() {
                        foreign.push(format!(
                            "{} {namespace}/{} ({})",
                            resource.kind,
                            obj.name_any(),
                            managers(obj)
                        ));
                    }
                }
                match page.metadata.continue_.filter(|c| !c.is_empty()) {
                    Some(token) => params = params.continue_token(&token),
                    None => break,
                }
            }
        }
    }
    foreign.sort();
    Ok(foreign)
}
