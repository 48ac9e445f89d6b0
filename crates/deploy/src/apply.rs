//! Server-side apply of the plan under one field manager, in order:
//! namespace, configmaps, secrets, ReplicationController. An identical plan
//! changes nothing (no new resourceVersion).

use k8s_openapi::api::core::v1::{ConfigMap, Namespace, ReplicationController, Secret};
use kube::api::{Api, Patch, PatchParams};
use kube::core::NamespaceResourceScope;
use kube::{Client, Resource};
use serde::de::DeserializeOwned;

use crate::error::{Error, Result, Side};
use crate::event::{Event, Events};
use crate::plan::{Manifest, Plan};

/// The field manager of everything deploy applies.
pub const FIELD_MANAGER: &str = "kubemark-deploy";

async fn apply<K>(api: Api<K>, m: &Manifest, events: &Events) -> Result<()>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    let before = crate::retry::call(|| api.get_opt(&m.name))
        .await
        .map_err(Error::api(
            Side::External,
            format!("reading {} {}", m.kind, m.name),
        ))?
        .and_then(|o| o.meta().resource_version.clone());
    // Force: deploy's plan wins over fields another manager (`kubectl scale`) set since.
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let patch = Patch::Apply(&m.value);
    let after = crate::retry::call(|| api.patch(&m.name, &params, &patch))
        .await
        .map_err(Error::api(
            Side::External,
            format!("applying {} {}", m.kind, m.name),
        ))?;
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

/// Apply every manifest of the plan.
pub async fn run(client: &Client, namespace: &str, plan: &Plan, events: &Events) -> Result<()> {
    apply::<Namespace>(Api::all(client.clone()), &plan.namespace, events).await?;
    for m in &plan.configmaps {
        apply::<ConfigMap>(namespaced(client, namespace), m, events).await?;
    }
    for m in &plan.secrets {
        apply::<Secret>(namespaced(client, namespace), m, events).await?;
    }
    apply::<ReplicationController>(namespaced(client, namespace), &plan.rc, events).await
}
