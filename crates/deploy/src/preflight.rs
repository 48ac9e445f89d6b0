//! Checks before any write: both clusters answer (their versions, and the
//! skew against the kubemark image), the credentials may do what deploy does
//! (SelfSubjectAccessReview), and the external cluster has room for the pods.

use k8s_openapi::api::authorization::v1::SelfSubjectAccessReview;
use k8s_openapi::api::core::v1::{
    ConfigMap, LimitRange, Namespace, Pod, ReplicationController, Secret,
};
use kube::api::{Api, ListParams, PostParams};
use kube::{Resource, ResourceExt};
use serde_json::json;

use crate::apply::{created_by_us, managed_by_us, managers};
use crate::error::{Error, Result, Side};
use crate::event::{Events, Say};
use crate::kubeconfig::Cluster;
use crate::plan::{Manifest, Plan, Spec};

/// What the preflight learned.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Findings {
    pub external_version: String,
    pub master_version: String,
    /// Hollow-node pods of ours already bound to nodes.
    pub existing_pods: u64,
}

/// `v1.33.2` → (1, 33).
pub fn minor_version(v: &str) -> Option<(u32, u32)> {
    let v = v.strip_prefix('v')?;
    let mut parts = v.split(['.', '-', '+']);
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

/// The first request to a cluster: what answers, or why nothing does. A
/// closed port, a certificate from another CA or refused credentials will not
/// mend by retrying: they fail at once; what might (5xx, 429, a reset) is retried.
pub async fn version(cluster: &Cluster) -> Result<String> {
    let unreachable = |e: kube::Error| Error::Unreachable {
        side: cluster.side,
        server: cluster.server.clone(),
        reason: crate::error::describe(&e),
        cause: crate::error::Cause::of(&e),
    };
    let info = match cluster.client.apiserver_version().await {
        Ok(info) => info,
        Err(e) if crate::error::Cause::of(&e) != crate::error::Cause::Other => {
            return Err(unreachable(e));
        }
        Err(_) => crate::retry::call(|| cluster.client.apiserver_version())
            .await
            .map_err(unreachable)?,
    };
    Ok(info.git_version)
}

/// Warn when the kubemark image's version and the master's do not go together.
fn skew(tag: &str, master: &str, events: &Events) {
    let (Some(kubelet), Some(api)) = (minor_version(tag), minor_version(master)) else {
        return;
    };
    if kubelet > api {
        events.warn(format!(
            "the kubemark image is {tag}, newer than the master's {master}: kubelets must not be newer than their API server"
        ));
    } else if kubelet.0 == api.0 && api.1 > kubelet.1 + 3 {
        events.warn(format!(
            "the kubemark image is {tag}, more than three minor versions behind the master's {master}"
        ));
    }
}

pub(crate) async fn may(
    cluster: &Cluster,
    verb: &str,
    group: &str,
    resource: &str,
    sub: &str,
    ns: Option<&str>,
) -> Result<Option<bool>> {
    let api: Api<SelfSubjectAccessReview> = Api::all(cluster.client.clone());
    let review: SelfSubjectAccessReview = serde_json::from_value(json!({
        "apiVersion": "authorization.k8s.io/v1",
        "kind": "SelfSubjectAccessReview",
        "spec": {"resourceAttributes": {"verb": verb, "group": group, "resource": resource, "subresource": sub, "namespace": ns.unwrap_or_default()}},
    }))
    .map_err(|e| Error::Usage(e.to_string()))?;
    let post = PostParams::default();
    match crate::retry::call(|| api.create(&post, &review)).await {
        Ok(r) => Ok(Some(r.status.is_some_and(|s| s.allowed))),
        // A server without the review API cannot tell: carry on.
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(None),
        Err(e) => Err(Error::api(
            cluster.side,
            "asking what the credentials may do",
        )(e)),
    }
}

pub(crate) async fn permissions(
    cluster: &Cluster,
    checks: &[(&str, &str, &str, &str, Option<&str>)],
    events: &Events,
) -> Result<()> {
    let mut denied = Vec::new();
    for (verb, group, resource, sub, ns) in checks {
        match may(cluster, verb, group, resource, sub, *ns).await? {
            Some(false) => {
                let what = if sub.is_empty() {
                    (*resource).to_owned()
                } else {
                    format!("{resource}/{sub}")
                };
                denied.push(match ns {
                    Some(ns) => format!("{verb} {what} in {ns}"),
                    None => format!("{verb} {what}"),
                });
            }
            Some(true) => {}
            None => {
                events.warn(format!(
                    "the {} cannot review access; permissions were not checked",
                    cluster.side
                ));
                return Ok(());
            }
        }
    }
    if denied.is_empty() {
        Ok(())
    } else {
        Err(Error::Forbidden {
            side: cluster.side,
            denied,
        })
    }
}

/// The object of `m`'s kind and name, if one exists that deploy did not write:
/// `Kind namespace/name (managed by ...)`.
async fn not_ours<K>(api: Api<K>, m: &Manifest) -> Result<Option<String>>
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let found = crate::retry::call(|| api.get_opt(&m.name))
        .await
        .map_err(Error::api(
            Side::External,
            format!("reading {} {}", m.kind, m.name),
        ))?;
    Ok(found.filter(|o| !managed_by_us(o)).map(|o| {
        format!(
            "{} {}/{} ({})",
            m.kind,
            o.namespace().unwrap_or_default(),
            o.name_any(),
            managers(&o)
        )
    }))
}

/// The namespace: not on its way out; and no object with the plan's names
/// that deploy did not make, unless `--adopt` says to take it over.
async fn ownership(spec: &Spec, plan: &Plan, external: &Cluster, events: &Events) -> Result<bool> {
    let ns_api: Api<Namespace> = Api::all(external.client.clone());
    let ns = crate::retry::call(|| ns_api.get_opt(&spec.namespace))
        .await
        .map_err(Error::api(Side::External, "reading the namespace"))?;
    match &ns {
        Some(ns) if ns.meta().deletion_timestamp.is_some() => {
            return Err(Error::Refused {
                what: format!("namespace {} is being deleted", spec.namespace),
                details: Vec::new(),
                hint: format!(
                    "wait until it is gone (`kubectl get namespace {}`), then deploy again; or choose another --namespace",
                    spec.namespace
                ),
            });
        }
        Some(ns) if !created_by_us(ns) => events.note(format!(
            "namespace {} exists and deploy did not create it: deploy works in it but does not take it over, and destroy will not delete it",
            spec.namespace
        )),
        _ => {}
    }
    if ns.is_none() {
        return Ok(false);
    }
    let (client, ns) = (&external.client, spec.namespace.as_str());
    let mut foreign = Vec::new();
    for m in &plan.configmaps {
        foreign.extend(not_ours(Api::<ConfigMap>::namespaced(client.clone(), ns), m).await?);
    }
    for m in &plan.secrets {
        foreign.extend(not_ours(Api::<Secret>::namespaced(client.clone(), ns), m).await?);
    }
    let rcs = Api::<ReplicationController>::namespaced(client.clone(), ns);
    foreign.extend(not_ours(rcs, &plan.rc).await?);
    if foreign.is_empty() {
        return Ok(true);
    }
    if spec.adopt {
        for f in &foreign {
            events.warn(format!(
                "taking over {f} (--adopt): deploy overwrites it, and destroy will delete it"
            ));
        }
        return Ok(true);
    }
    Err(Error::Refused {
        what: format!(
            "{} object(s) deploy would write already exist in namespace {} and are not deploy's",
            foreign.len(),
            spec.namespace
        ),
        details: foreign,
        hint: "nothing was changed. Deploy into another --namespace, or move those objects away, or pass --adopt to take them over (deploy then overwrites them and destroy deletes them)".into(),
    })
}

/// One hollow-node pod as the RC would create it, sent with `dryRun=All`: the
/// external cluster's admission (PodSecurity, LimitRanger, ResourceQuota,
/// webhooks) judges it, and nothing is stored. Only for a namespace that exists
/// (a new one has no policy of its own) and a user who may create pods.
async fn admission(spec: &Spec, plan: &Plan, external: &Cluster, events: &Events) -> Result<()> {
    match may(external, "create", "", "pods", "", Some(&spec.namespace)).await? {
        Some(true) => {}
        _ => {
            events.note(format!(
                "the external cluster's admission was not asked about the hollow-node pods (this user may not create pods in {}): a policy that rejects them shows as FailedCreate while waiting",
                spec.namespace
            ));
            return Ok(());
        }
    }
    let template = plan
        .rc
        .value
        .pointer("/spec/template")
        .cloned()
        .unwrap_or_default();
    let mut pod = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": template.get("metadata").cloned().unwrap_or_else(|| json!({})),
        "spec": template.get("spec").cloned().unwrap_or_default(),
    });
    pod["metadata"]["name"] = json!(format!("{}-preflight", plan.rc.name));
    pod["metadata"]["namespace"] = json!(spec.namespace);
    // The RC fills $(NODE_NAME) from the pod's name; nothing else differs.
    let pod: Pod =
        serde_json::from_value(pod).map_err(|e| Error::Usage(format!("the pod template: {e}")))?;
    let api: Api<Pod> = Api::namespaced(external.client.clone(), &spec.namespace);
    let params = PostParams {
        dry_run: true,
        field_manager: Some(crate::apply::FIELD_MANAGER.into()),
    };
    match crate::retry::call(|| api.create(&params, &pod)).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if matches!(s.code, 400 | 403 | 422) => {
            let message = s.message.clone();
            let hint = if message.contains("PodSecurity") {
                format!(
                    "the hollow-node template is privileged (its init container raises the inotify limits; the hollow kubelet mounts host paths): deploy into a namespace whose Pod Security level allows it, e.g. `kubectl label namespace {ns} pod-security.kubernetes.io/enforce=privileged --overwrite`, or leave --namespace to one deploy creates",
                    ns = spec.namespace
                )
            } else if message.contains("quota") {
                "raise the namespace's ResourceQuota, or lower the requests (--kubelet-cpu, --kubelet-memory, --proxy-cpu, --proxy-memory)".to_owned()
            } else if message.contains("LimitRange")
                || message.contains("maximum")
                || message.contains("minimum")
                || message.contains(" limit")
            {
                // A LimitRange's max also becomes the default limit, which the
                // requests then exceed: name the ranges, they are the cause.
                let ranges: Api<LimitRange> =
                    Api::namespaced(external.client.clone(), &spec.namespace);
                let all = ListParams::default();
                let names: Vec<String> = crate::retry::call(|| ranges.list(&all))
                    .await
                    .map(|l| l.items.iter().map(|r| r.name_any()).collect())
                    .unwrap_or_default();
                format!(
                    "the namespace's LimitRange{} {} set limits the hollow-node pod's requests do not fit: change the requests (--kubelet-cpu, --proxy-cpu, --kubelet-memory, ...) to fit, or deploy into another --namespace",
                    if names.len() == 1 { "" } else { "s" },
                    if names.is_empty() {
                        "(if any)".to_owned()
                    } else {
                        names.join(", ")
                    }
                )
            } else {
                "the external cluster's admission refuses the pod: change the template or the namespace's policies".to_owned()
            };
            Err(Error::Refused {
                what: format!(
                    "the external cluster would reject the hollow-node pods in namespace {}",
                    spec.namespace
                ),
                details: vec![format!("{message} ({})", s.code)],
                hint,
            })
        }
        Err(e) => Err(Error::api(
            Side::External,
            "asking admission about a hollow-node pod (dry run)",
        )(e)),
    }
}

/// What deploy would write on the master (per-node identity's ClusterRoleBindings)
/// must not be somebody else's, unless `--adopt`.
pub(crate) async fn master_ownership(
    spec: &Spec,
    manifests: &[Manifest],
    master: &Cluster,
) -> Result<()> {
    let crbs: Api<k8s_openapi::api::rbac::v1::ClusterRoleBinding> = Api::all(master.client.clone());
    let mut foreign = Vec::new();
    for m in manifests.iter().filter(|m| m.kind == "ClusterRoleBinding") {
        let existing = crate::retry::call(|| crbs.get_opt(&m.name))
            .await
            .map_err(Error::api(
                Side::Master,
                format!("reading ClusterRoleBinding {}", m.name),
            ))?;
        if let Some(o) = existing.filter(|o| !managed_by_us(o)) {
            foreign.push(format!("ClusterRoleBinding {} ({})", m.name, managers(&o)));
        }
    }
    if foreign.is_empty() || spec.adopt {
        return Ok(());
    }
    Err(Error::Refused {
        what: format!(
            "{} object(s) deploy would write on the master already exist and are not deploy's",
            foreign.len()
        ),
        details: foreign,
        hint: "nothing was changed: delete or rename them, or pass --adopt to take them over"
            .into(),
    })
}

/// How many schedulable, untainted nodes clusterloader2 will see on the
/// master once the hollow nodes are Ready, hollow or not: said as a note, and
/// a warning when it is not the hollow nodes alone.
async fn clusterloader2_view(spec: &Spec, master: &Cluster, events: &Events) {
    let others = match crate::clusterloader2::other_schedulable(master, &spec.namespace).await {
        Ok(found) => found,
        Err(e) => {
            events.note(format!(
                "clusterloader2's view of the master not checked: {e}"
            ));
            return;
        }
    };
    let tainted = spec.registers_tainted();
    let hollow = if tainted { 0 } else { spec.replicas as usize };
    events.note(format!(
        "clusterloader2 will see {} schedulable node(s) on the master: {hollow} hollow, {} other",
        hollow + others.len(),
        others.len()
    ));
    if tainted && spec.replicas > 0 {
        events.warn("the hollow nodes register with a NoSchedule/NoExecute taint (--register-with-taints): clusterloader2 counts none of them as schedulable, and its test pods need a toleration".to_owned());
    }
    if !others.is_empty() {
        let names: Vec<&str> = others.iter().take(5).map(String::as_str).collect();
        events.warn(format!(
            "the master already has {} schedulable node(s) that are not hollow ({}{}): clusterloader2 counts them and may place test pods there",
            others.len(),
            names.join(", "),
            if others.len() > 5 { ", ..." } else { "" }
        ));
    }
}

/// Every check; errors before anything was written.
/// `versions`: what [`version`] read from the external cluster and the master.
pub async fn run(
    spec: &Spec,
    plan: &Plan,
    external: &Cluster,
    master: &Cluster,
    versions: (String, String),
    events: &Events,
) -> Result<Findings> {
    let (external_version, master_version) = versions;
    events.note(format!(
        "external cluster {} ({external_version}), context {}",
        external.server, external.context
    ));
    events.note(format!(
        "kubemark master {} ({master_version}), context {}",
        master.server, master.context
    ));
    for c in [external, master] {
        if c.insecure {
            events.warn(format!(
                "the {}'s kubeconfig turns TLS verification off (insecure-skip-tls-verify)",
                c.side
            ));
        }
    }
    skew(&spec.image.tag, &master_version, events);
    // The namespace first: a user who may work in an existing namespace but not
    // create namespaces (a namespace admin) needs no cluster-wide right.
    let namespace_exists = ownership(spec, plan, external, events).await?;
    let ns = Some(spec.namespace.as_str());
    let create_namespace: &[(&str, &str, &str, &str, Option<&str>)] = if namespace_exists {
        &[]
    } else {
        &[("create", "", "namespaces", "", None)]
    };
    permissions(
        external,
        &[
            create_namespace,
            &[
                ("patch", "", "secrets", "", ns),
                ("patch", "", "configmaps", "", ns),
                ("patch", "", "replicationcontrollers", "", ns),
                ("watch", "", "pods", "", ns),
                ("get", "", "pods", "log", ns),
                ("list", "", "events", "", ns),
            ],
        ]
        .concat(),
        events,
    )
    .await?;
    let mut master_checks = vec![
        ("watch", "", "nodes", "", None),
        ("delete", "", "nodes", "", None),
    ];
    if !plan.master.is_empty() {
        master_checks.extend(crate::identity::MASTER_RIGHTS);
    }
    permissions(master, &master_checks, events).await?;
    master_ownership(spec, &plan.master, master).await?;
    clusterloader2_view(spec, master, events).await;
    let patient = crate::doctor::Patient {
        external,
        master,
        namespace: &spec.namespace,
        pod: Some(&plan.pod),
        grace: crate::doctor::GRACE,
        repair: false,
        cancel: crate::event::CancellationToken::new(),
    };
    match crate::doctor::examine(&patient).await {
        Ok(report) => {
            for f in &report.findings {
                events.warn(format!("doctor ({}): {} Fix: {}", f.check, f.what, f.fix));
            }
        }
        Err(e) => events.note(format!("the doctor's checks did not run: {e}")),
    }
    for name in &plan.foreign_configmaps {
        events.warn(format!(
            "the template mounts the configmap `{name}`, which deploy does not create"
        ));
    }
    // A namespace admin may not list the cluster's nodes: with
    // --skip-capacity-check that is a warning, not a stop.
    let measured = match crate::capacity::capacity(external, spec, plan).await {
        Ok(m) => Some(m),
        Err(e) if spec.skip_capacity_check => {
            events.warn(format!("capacity not checked (--skip-capacity-check): {e}"));
            None
        }
        Err(e) => return Err(e),
    };
    let existing = measured.as_ref().map_or(0, |m| m.2);
    if namespace_exists {
        admission(spec, plan, external, events).await?;
        crate::capacity::quotas(spec, plan, external, existing).await?;
    }
    if let Some((fits, details, _)) = measured {
        let needed = u64::from(spec.replicas).saturating_sub(existing);
        if fits < needed {
            if spec.skip_capacity_check {
                events.warn(format!(
                    "room for {fits} more hollow-node pods, {needed} needed (--skip-capacity-check)"
                ));
            } else {
                return Err(Error::Capacity {
                    needed,
                    fits,
                    details,
                });
            }
        } else {
            events.note(format!(
                "room for {fits} more hollow-node pods, {needed} needed"
            ));
        }
    }
    Ok(Findings {
        external_version,
        master_version,
        existing_pods: existing,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_and_skew() {
        assert_eq!(minor_version("v1.33.0"), Some((1, 33)));
        assert_eq!(minor_version("v1.32.4-dispatcher"), Some((1, 32)));
        assert_eq!(minor_version("latest"), None);
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let s = std::sync::Arc::clone(&seen);
        let events = Events::new(move |e| s.lock().unwrap().push(e));
        skew("v1.34.0", "v1.33.1", &events);
        skew("v1.33.0", "v1.33.1", &events);
        skew("v1.28.0", "v1.33.1", &events);
        assert_eq!(seen.lock().unwrap().len(), 2);
    }
}
