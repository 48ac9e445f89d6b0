//! Server-side apply of the plan under one field manager, in order:
//! namespace, configmaps, secrets, ReplicationController. An identical plan
//! changes nothing (no new resourceVersion). The namespace is created, never
//! applied: one that existed is used as it is and never marked as deploy's.

use k8s_openapi::api::core::v1::{ConfigMap, Namespace, ReplicationController, Secret};
use k8s_openapi::api::rbac::v1::ClusterRoleBinding;
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::core::NamespaceResourceScope;
use kube::{Client, Resource};
use serde::de::DeserializeOwned;

use crate::error::{Error, Result, Side};
use crate::event::{Event, Events, Say};
use crate::plan::{CREATED_BY, Manifest, Plan};

/// The field manager of everything deploy applies.
pub const FIELD_MANAGER: &str = "kubemark-deploy";

async fn apply<K>(api: Api<K>, m: &Manifest, adopt: bool, events: &Events) -> Result<()>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    apply_on(Side::External, api, m, adopt, events).await
}

async fn apply_on<K>(
    side: Side,
    api: Api<K>,
    m: &Manifest,
    adopt: bool,
    events: &Events,
) -> Result<()>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    let existing = crate::retry::call(|| api.get_opt(&m.name))
        .await
        .map_err(Error::api(side, format!("reading {} {}", m.kind, m.name)))?;
    // The preflight checked this; somebody may have made it since.
    if let Some(o) = existing.as_ref().filter(|o| !adopt && !managed_by_us(*o)) {
        return Err(Error::Refused {
            what: format!(
                "{} {} appeared after the preflight and is not deploy's ({})",
                m.kind,
                m.name,
                managers(o)
            ),
            details: Vec::new(),
            hint: "nothing of it was changed: move it away, or pass --adopt to take it over".into(),
        });
    }
    let before = existing.and_then(|o| o.meta().resource_version.clone());
    // Force: deploy's plan wins over fields another manager (`kubectl scale`) set since.
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let patch = Patch::Apply(&m.value);
    let after = crate::retry::call(|| api.patch(&m.name, &params, &patch))
        .await
        .map_err(Error::api(side, format!("applying {} {}", m.kind, m.name)))?;
    events.emit(Event::Applied {
        kind: m.kind.to_owned(),
        name: m.name.clone(),
        changed: after.meta().resource_version != before,
    });
    Ok(())
}

fn namespaced<K>(client: &Client, ns: &str) -> Api<K>
where
    K: Resource<Scope = NamespaceResourceScope>,
    K::DynamicType: Default,
{
    Api::namespaced(client.clone(), ns)
}

/// Whether deploy wrote `obj`: its field manager is among the object's managers.
pub fn managed_by_us<K: Resource>(obj: &K) -> bool {
    obj.meta()
        .managed_fields
        .iter()
        .flatten()
        .any(|m| m.manager.as_deref() == Some(FIELD_MANAGER))
}

/// Who wrote `obj`: its field managers, or a phrase when none is recorded.
pub fn managers<K: Resource>(obj: &K) -> String {
    let names: std::collections::BTreeSet<&str> = obj
        .meta()
        .managed_fields
        .iter()
        .flatten()
        .filter_map(|m| m.manager.as_deref())
        .collect();
    if names.is_empty() {
        "no field manager recorded".into()
    } else {
        format!(
            "managed by {}",
            names.into_iter().collect::<Vec<_>>().join(", ")
        )
    }
}

/// Whether deploy created `ns`: it carries the annotation deploy writes only
/// in the request that creates a namespace.
pub fn created_by_us(ns: &Namespace) -> bool {
    ns.annotations().get(CREATED_BY.0).map(String::as_str) == Some(CREATED_BY.1)
}

/// Create the namespace if it does not exist, marked as deploy's; leave one
/// that exists as it is (deploy's from an earlier run, or somebody else's).
async fn ensure_namespace(client: &Client, m: &Manifest, events: &Events) -> Result<()> {
    let api: Api<Namespace> = Api::all(client.clone());
    let read = || async {
        crate::retry::call(|| api.get_opt(&m.name))
            .await
            .map_err(Error::api(
                Side::External,
                format!("reading namespace {}", m.name),
            ))
    };
    let existing = match read().await? {
        Some(ns) => ns,
        None => {
            let ns: Namespace = serde_json::from_value(m.value.clone())
                .map_err(|e| Error::Usage(format!("the namespace manifest: {e}")))?;
            let params = PostParams {
                field_manager: Some(FIELD_MANAGER.into()),
                ..PostParams::default()
            };
            match crate::retry::call(|| api.create(&params, &ns)).await {
                Ok(_) => {
                    events.emit(Event::Applied {
                        kind: "Namespace".into(),
                        name: m.name.clone(),
                        changed: true,
                    });
                    events.note(format!(
                        "created namespace {}: deploy's own, destroy deletes it",
                        m.name
                    ));
                    return Ok(());
                }
                // Somebody created it since we looked: theirs.
                Err(kube::Error::Api(s)) if s.code == 409 => {
                    read().await?.ok_or_else(|| Error::Api {
                        side: Side::External,
                        doing: format!("creating namespace {}", m.name),
                        reason: "it was created and deleted by somebody else meanwhile".into(),
                    })?
                }
                Err(e) => {
                    return Err(Error::api(
                        Side::External,
                        format!("creating namespace {}", m.name),
                    )(e));
                }
            }
        }
    };
    events.emit(Event::Applied {
        kind: "Namespace".into(),
        name: m.name.clone(),
        changed: false,
    });
    if !created_by_us(&existing) {
        events.note(format!(
            "namespace {} existed before deploy: used as it is, not taken over (destroy deletes only what deploy makes in it, never the namespace)",
            m.name
        ));
    }
    Ok(())
}

/// Apply what the plan puts on the master (per-node identity's bootstrap
/// token in `kube-system` and its ClusterRoleBindings), before the pods that
/// need them exist.
async fn master(client: &Client, plan: &Plan, adopt: bool, events: &Events) -> Result<()> {
    for m in &plan.master {
        match m.kind {
            "Secret" => {
                let api: Api<Secret> = Api::namespaced(client.clone(), "kube-system");
                apply_on(Side::Master, api, m, adopt, events).await?;
            }
            _ => {
                let api: Api<ClusterRoleBinding> = Api::all(client.clone());
                apply_on(Side::Master, api, m, adopt, events).await?;
            }
        }
    }
    Ok(())
}

/// Apply every manifest of the plan: on the external cluster the namespace,
/// configmaps and secrets, then what goes on the master (per-node identity's,
/// as late as can be: a failure before it leaves no credential there), then
/// the ReplicationController whose pods need it.
pub async fn run(
    client: &Client,
    master_client: &Client,
    namespace: &str,
    plan: &Plan,
    adopt: bool,
    events: &Events,
) -> Result<()> {
    ensure_namespace(client, &plan.namespace, events).await?;
    for m in &plan.configmaps {
        apply::<ConfigMap>(namespaced(client, namespace), m, adopt, events).await?;
    }
    for m in &plan.secrets {
        apply::<Secret>(namespaced(client, namespace), m, adopt, events).await?;
    }
    master(master_client, plan, adopt, events).await?;
    apply::<ReplicationController>(namespaced(client, namespace), &plan.rc, adopt, events).await
}
