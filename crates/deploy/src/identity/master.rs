//! Per-node identity's reads and deletes on the master: deploy's token and
//! bindings there, whether the master signs kubelet certificates, the APIs it
//! serves, and their removal by destroy.

use k8s_openapi::api::certificates::v1::CertificateSigningRequest;
use k8s_openapi::api::core::v1::{Pod, Secret};
use k8s_openapi::api::rbac::v1::ClusterRoleBinding;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams};

use super::{BootstrapToken, selector};
use crate::error::{Error, Result, Side};
use crate::event::{Events, Say};
use crate::kubeconfig::Cluster;

/// Whether per-node identity left deploy's objects on the master for
/// `namespace` (its bootstrap token, its ClusterRoleBindings); `None` when the
/// credentials may not look.
pub async fn present(master: &Cluster, namespace: &str) -> Option<bool> {
    let params = ListParams::default().labels(&selector(namespace));
    let secrets: Api<Secret> = Api::namespaced(master.client.clone(), "kube-system");
    let crbs: Api<ClusterRoleBinding> = Api::all(master.client.clone());
    let found = |r: std::result::Result<usize, kube::Error>| match r {
        Ok(n) => Some(n > 0),
        Err(kube::Error::Api(s)) if s.code == 404 => Some(false),
        Err(_) => None,
    };
    let tokens = found(
        crate::retry::call(|| secrets.list_metadata(&params))
            .await
            .map(|l| l.items.len()),
    );
    let bindings = found(
        crate::retry::call(|| crbs.list_metadata(&params))
            .await
            .map(|l| l.items.len()),
    );
    Some(tokens? || bindings?)
}

/// The token deploy made for `namespace` earlier, if the master still has it.
pub async fn existing_token(master: &Cluster, namespace: &str) -> Result<Option<BootstrapToken>> {
    let api: Api<Secret> = Api::namespaced(master.client.clone(), "kube-system");
    let params = ListParams::default().labels(&selector(namespace));
    let list = crate::retry::call(|| api.list(&params))
        .await
        .map_err(Error::api(
            Side::Master,
            "listing deploy's bootstrap tokens in kube-system",
        ))?;
    Ok(list
        .items
        .iter()
        .filter(|s| crate::apply::managed_by_us(*s))
        .find_map(BootstrapToken::from_secret))
}

/// Whether the master is known to sign kubelet client certificates and to
/// accept bootstrap tokens: `Some(true)` seen, `Some(false)` seen not to,
/// `None` cannot tell (a control plane whose components are not pods).
pub async fn master_signs(master: &Cluster) -> Result<(Option<bool>, String)> {
    let all = ListParams::default();
    // A kubelet client certificate the master issued before.
    let csrs: Api<CertificateSigningRequest> = Api::all(master.client.clone());
    if let Ok(list) = crate::retry::call(|| csrs.list(&all)).await {
        let issued = list.items.iter().any(|c| {
            c.spec.signer_name == "kubernetes.io/kube-apiserver-client-kubelet"
                && c.status.as_ref().is_some_and(|s| s.certificate.is_some())
        });
        if issued {
            return Ok((
                Some(true),
                "it has issued kubelet client certificates before".into(),
            ));
        }
    }
    // The control plane's static pods (kubeadm and the like): their flags.
    let pods: Api<Pod> = Api::namespaced(master.client.clone(), "kube-system");
    let Ok(list) = crate::retry::call(|| pods.list(&all)).await else {
        return Ok((None, "kube-system's pods cannot be read".into()));
    };
    let args_of = |prefix: &str| -> Option<Vec<String>> {
        list.items
            .iter()
            .find(|p| p.name_any().starts_with(prefix))
            .and_then(|p| p.spec.as_ref())
            .map(|s| {
                s.containers
                    .iter()
                    .flat_map(|c| c.command.iter().flatten().chain(c.args.iter().flatten()))
                    .cloned()
                    .collect()
            })
    };
    if let Some(args) = args_of("kube-apiserver")
        && !args.iter().any(|a| {
            a == "--enable-bootstrap-token-auth=true" || a == "--enable-bootstrap-token-auth"
        })
    {
        return Ok((
            Some(false),
            "its kube-apiserver runs without --enable-bootstrap-token-auth=true".into(),
        ));
    }
    match args_of("kube-controller-manager") {
        Some(args)
            if args.iter().any(|a| {
                a.starts_with("--cluster-signing-cert-file=")
                    || a.starts_with("--cluster-signing-kube-apiserver-client-kubelet-cert-file=")
            }) =>
        {
            Ok((Some(true), "its controller-manager has a signing certificate".into()))
        }
        Some(_) => Ok((
            Some(false),
            "its controller-manager runs without --cluster-signing-cert-file (or --cluster-signing-kube-apiserver-client-kubelet-cert-file)".into(),
        )),
        None => Ok((
            None,
            "its controller-manager is not a pod in kube-system, so its flags cannot be read".into(),
        )),
    }
}

/// The APIs per-node identity needs that the master does not serve.
pub(super) async fn missing_apis(master: &Cluster) -> Result<Vec<&'static str>> {
    let one = ListParams::default().limit(1);
    let mut missing = Vec::new();
    let crbs: Api<ClusterRoleBinding> = Api::all(master.client.clone());
    if let Err(kube::Error::Api(s)) = crate::retry::call(|| crbs.list_metadata(&one)).await
        && s.code == 404
    {
        missing.push("rbac.authorization.k8s.io/v1 ClusterRoleBindings");
    }
    let csrs: Api<CertificateSigningRequest> = Api::all(master.client.clone());
    if let Err(kube::Error::Api(s)) = crate::retry::call(|| csrs.list_metadata(&one)).await
        && s.code == 404
    {
        missing.push("certificates.k8s.io/v1 CertificateSigningRequests");
    }
    Ok(missing)
}

/// What `remove` deleted, and what it could not (a line each).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Removed {
    pub gone: Vec<String>,
    pub failed: Vec<String>,
}

/// Delete what per-node identity made on the master for `namespace`: only
/// objects with deploy's field manager and the namespace's label, and the
/// CSRs made with its token. The token goes first (no new CSR can be made
/// with it after), then the bindings, then the CSRs; a delete that fails is
/// said and the rest still go.
pub async fn remove(master: &Cluster, namespace: &str, events: &Events) -> Result<Removed> {
    let mut done = Removed::default();
    let (all, delete) = (ListParams::default(), DeleteParams::default());
    let params = ListParams::default().labels(&selector(namespace));
    let secrets: Api<Secret> = Api::namespaced(master.client.clone(), "kube-system");
    let tokens: Vec<Secret> = crate::retry::call(|| secrets.list(&params))
        .await
        .map_err(Error::api(Side::Master, "listing bootstrap tokens"))?
        .items
        .into_iter()
        .filter(crate::apply::managed_by_us)
        .collect();
    let usernames: Vec<String> = tokens
        .iter()
        .filter_map(BootstrapToken::from_secret)
        .map(|t| t.username())
        .collect();
    let mut outcome = |what: String, r: std::result::Result<(), kube::Error>| match r {
        Ok(()) => done.gone.push(what),
        Err(kube::Error::Api(s)) if s.code == 404 => {}
        Err(e) => done
            .failed
            .push(format!("{what}: {}", crate::error::describe(&e))),
    };
    for s in &tokens {
        let name = s.name_any();
        let r = crate::retry::call(|| secrets.delete(&name, &delete)).await;
        outcome(format!("Secret kube-system/{name}"), r.map(drop));
    }
    let crbs: Api<ClusterRoleBinding> = Api::all(master.client.clone());
    let bindings = match crate::retry::call(|| crbs.list(&params)).await {
        Ok(list) => list.items,
        Err(kube::Error::Api(s)) if s.code == 404 => Vec::new(),
        Err(e) => return Err(Error::api(Side::Master, "listing ClusterRoleBindings")(e)),
    };
    for crb in bindings.iter().filter(|c| crate::apply::managed_by_us(*c)) {
        let name = crb.name_any();
        let r = crate::retry::call(|| crbs.delete(&name, &delete)).await;
        outcome(format!("ClusterRoleBinding {name}"), r.map(drop));
    }
    if !usernames.is_empty() {
        let csrs: Api<CertificateSigningRequest> = Api::all(master.client.clone());
        let list = match crate::retry::call(|| csrs.list(&all)).await {
            Ok(list) => list.items,
            Err(kube::Error::Api(s)) if s.code == 404 => Vec::new(),
            Err(e) => {
                return Err(Error::api(
                    Side::Master,
                    "listing CertificateSigningRequests",
                )(e));
            }
        };
        for csr in list.iter().filter(|c| {
            c.spec
                .username
                .as_ref()
                .is_some_and(|u| usernames.contains(u))
        }) {
            let name = csr.name_any();
            let r = crate::retry::call(|| csrs.delete(&name, &delete)).await;
            outcome(format!("CertificateSigningRequest {name}"), r.map(drop));
        }
    }
    if !done.gone.is_empty() {
        events.note(format!(
            "per-node identity: deleted {} on the master",
            done.gone.join(", ")
        ));
    }
    Ok(done)
}
