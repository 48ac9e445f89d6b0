//! Per-node identity: each hollow kubelet gets its own `system:node:<name>`
//! client certificate through the standard TLS bootstrap, so that the master's
//! Node authorizer and NodeRestriction see real node identities (upstream
//! gives every hollow node one shared credential, kubernetes#79883).
//!
//! On the master deploy writes, under its field manager and labelled for the
//! namespace: a bootstrap token (a Secret `bootstrap-token-<id>` in
//! `kube-system`, with an expiry) whose group is
//! `system:bootstrappers:kubemark-deploy:<namespace>`, and two
//! ClusterRoleBindings that let that group create node CSRs and have the
//! master's approver approve them. The pod secret gets `bootstrap.kubeconfig`
//! (the master's address and CA, the token), and the template passes
//! `--bootstrap-kubeconfig` and `--cert-dir` to the hollow kubelet. destroy
//! removes the token, the bindings and the CSRs made with the token.

mod master;

use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::config::{AuthInfo, Kubeconfig, NamedAuthInfo};

use master::missing_apis;
pub use master::{Removed, existing_token, master_signs, present, remove};
use serde_json::json;

use crate::error::{Error, Result};
use crate::event::{Events, Say};
use crate::kubeconfig::{Cluster, PodKubeconfig};
use crate::plan::{MANAGED_BY, Manifest, NODE_LABEL};

/// What per-node identity needs the master's credentials to do: read and
/// write the token in kube-system, write the ClusterRoleBindings and bind
/// their roles (without holding every right in them).
pub const MASTER_RIGHTS: [(&str, &str, &str, &str, Option<&str>); 7] = [
    ("list", "", "secrets", "", Some("kube-system")),
    ("create", "", "secrets", "", Some("kube-system")),
    ("patch", "", "secrets", "", Some("kube-system")),
    (
        "create",
        "rbac.authorization.k8s.io",
        "clusterrolebindings",
        "",
        None,
    ),
    (
        "patch",
        "rbac.authorization.k8s.io",
        "clusterrolebindings",
        "",
        None,
    ),
    (
        "bind",
        "rbac.authorization.k8s.io",
        "clusterroles",
        "",
        None,
    ),
    (
        "list",
        "certificates.k8s.io",
        "certificatesigningrequests",
        "",
        None,
    ),
];

/// What destroy needs the master's credentials to do to remove them.
pub const REMOVE_RIGHTS: [(&str, &str, &str, &str, Option<&str>); 4] = [
    ("delete", "", "secrets", "", Some("kube-system")),
    (
        "delete",
        "rbac.authorization.k8s.io",
        "clusterrolebindings",
        "",
        None,
    ),
    (
        "list",
        "certificates.k8s.io",
        "certificatesigningrequests",
        "",
        None,
    ),
    (
        "delete",
        "certificates.k8s.io",
        "certificatesigningrequests",
        "",
        None,
    ),
];

/// Which credential the hollow kubelets use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum NodeIdentity {
    /// Per-node when the template supports it and the master is known to sign
    /// node client certificates; shared otherwise (said as a note).
    #[default]
    Auto,
    /// The master kubeconfig's credential, the same for every hollow node.
    Shared,
    /// Each hollow node its own certificate, by TLS bootstrap.
    PerNode,
}

/// How long a bootstrap token lives; every deploy renews it. Long enough for
/// a scalability run of days, in which hollow-node pods that are recreated
/// bootstrap again.
pub const TOKEN_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

/// The key of the pod secret that holds the bootstrap kubeconfig.
pub const BOOTSTRAP_KEY: &str = "bootstrap.kubeconfig";

/// A bootstrap token, `<id>.<secret>`.
#[derive(Clone, PartialEq, Eq)]
pub struct BootstrapToken {
    pub id: String,
    pub secret: String,
}

impl std::fmt::Debug for BootstrapToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BootstrapToken")
            .field("id", &self.id)
            .field("secret", &"<redacted>")
            .finish()
    }
}

impl BootstrapToken {
    /// A new random token: 6 and 16 characters of `[a-z0-9]`.
    pub fn generate() -> Result<Self> {
        let mut bytes = [0u8; 22];
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes))
            .map_err(|source| Error::Io {
                doing: "reading",
                path: "/dev/urandom".into(),
                source,
            })?;
        const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
        let chars: String = bytes
            .iter()
            .map(|b| ALPHABET[usize::from(*b) % ALPHABET.len()] as char)
            .collect();
        Ok(Self {
            id: chars[..6].to_owned(),
            secret: chars[6..].to_owned(),
        })
    }

    /// The user the API server sees for this token.
    pub fn username(&self) -> String {
        format!("system:bootstrap:{}", self.id)
    }

    fn from_secret(s: &Secret) -> Option<Self> {
        let data = s.data.as_ref()?;
        let text = |k: &str| Some(String::from_utf8_lossy(&data.get(k)?.0).into_owned());
        Some(Self {
            id: text("token-id")?,
            secret: text("token-secret")?,
        })
    }
}

/// The group the token's user is in, one per namespace.
pub fn group(namespace: &str) -> String {
    format!("system:bootstrappers:kubemark-deploy:{namespace}")
}

/// The ClusterRoleBindings deploy makes: (name, the ClusterRole it binds).
pub fn bindings(namespace: &str) -> [(String, &'static str); 2] {
    [
        (
            format!("kubemark-deploy:{namespace}:node-bootstrapper"),
            "system:node-bootstrapper",
        ),
        (
            format!("kubemark-deploy:{namespace}:node-autoapprove"),
            "system:certificates.k8s.io:certificatesigningrequests:nodeclient",
        ),
    ]
}

/// The labels that mark deploy's objects on the master for `namespace`.
fn labels(namespace: &str) -> serde_json::Value {
    json!({MANAGED_BY.0: MANAGED_BY.1, NODE_LABEL: namespace})
}

fn selector(namespace: &str) -> String {
    format!("{}={},{NODE_LABEL}={namespace}", MANAGED_BY.0, MANAGED_BY.1)
}

/// What deploy applies on the master for per-node identity.
pub fn master_manifests(namespace: &str, token: &BootstrapToken) -> Vec<Manifest> {
    let expires = jiff::Timestamp::now()
        + jiff::SignedDuration::try_from(TOKEN_TTL).unwrap_or(jiff::SignedDuration::ZERO);
    let mut out = vec![Manifest {
        kind: "Secret",
        name: format!("bootstrap-token-{}", token.id),
        value: json!({
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {
                "name": format!("bootstrap-token-{}", token.id),
                "namespace": "kube-system",
                "labels": labels(namespace),
            },
            "type": "bootstrap.kubernetes.io/token",
            "stringData": {
                "description": format!("kubemark-deploy: hollow nodes of namespace {namespace}"),
                "token-id": token.id,
                "token-secret": token.secret,
                // Rounded to the hour, so that deploys within it change nothing.
                "expiration": expires.round(jiff::Unit::Hour).unwrap_or(expires).to_string(),
                "usage-bootstrap-authentication": "true",
                "auth-extra-groups": group(namespace),
            },
        }),
    }];
    for (name, role) in bindings(namespace) {
        out.push(Manifest {
            kind: "ClusterRoleBinding",
            name: name.clone(),
            value: json!({
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "ClusterRoleBinding",
                "metadata": {"name": name, "labels": labels(namespace)},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
                "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": group(namespace)}],
            }),
        });
    }
    out
}

/// The kubeconfig the hollow kubelets bootstrap with: the master's address
/// and CA from the pod kubeconfig, the token as the only credential.
pub fn bootstrap_kubeconfig(master: &PodKubeconfig, token: &BootstrapToken) -> Result<String> {
    let mut doc = Kubeconfig::from_yaml(&master.yaml)
        .map_err(|e| Error::Usage(format!("the master kubeconfig for pods: {e}")))?;
    doc.auth_infos = vec![NamedAuthInfo {
        name: doc
            .auth_infos
            .first()
            .map_or_else(|| "kubelet-bootstrap".to_owned(), |a| a.name.clone()),
        auth_info: Some(AuthInfo {
            token: Some(format!("{}.{}", token.id, token.secret).into()),
            ..AuthInfo::default()
        }),
        ..NamedAuthInfo::default()
    }];
    serde_yaml::to_string(&doc).map_err(|e| Error::Usage(format!("the bootstrap kubeconfig: {e}")))
}

/// Node labels a kubelet may not set on its own Node under NodeRestriction:
/// keys in the `kubernetes.io` or `k8s.io` namespaces, except the few the
/// kubelet sets itself and the `kubelet.` and `node.kubernetes.io/` prefixes.
pub fn restricted_labels(labels: &[(String, String)]) -> Vec<String> {
    const ALLOWED: [&str; 11] = [
        "kubernetes.io/hostname",
        "kubernetes.io/arch",
        "kubernetes.io/os",
        "beta.kubernetes.io/arch",
        "beta.kubernetes.io/os",
        "beta.kubernetes.io/instance-type",
        "node.kubernetes.io/instance-type",
        "failure-domain.beta.kubernetes.io/region",
        "failure-domain.beta.kubernetes.io/zone",
        "topology.kubernetes.io/region",
        "topology.kubernetes.io/zone",
    ];
    labels
        .iter()
        .map(|(k, _)| k)
        .filter(|k| {
            let Some((domain, _)) = k.split_once('/') else {
                return false;
            };
            let kubernetes = ["kubernetes.io", "k8s.io"]
                .iter()
                .any(|d| domain == *d || domain.ends_with(&format!(".{d}")));
            let open = domain == "kubelet.kubernetes.io"
                || domain.ends_with(".kubelet.kubernetes.io")
                || domain == "node.kubernetes.io"
                || domain.ends_with(".node.kubernetes.io");
            kubernetes && !open && !ALLOWED.contains(&k.as_str())
                || domain == "node-restriction.kubernetes.io"
                || domain.ends_with(".node-restriction.kubernetes.io")
        })
        .cloned()
        .collect()
}

/// Whether this deploy gives its hollow nodes per-node identity, and with
/// which token (the one deploy made on the master before, or a new one).
/// `per-node` asked for and impossible is an error before any write; `auto`
/// falls back to shared and says why.
pub async fn decide(
    spec: &crate::plan::Spec,
    master: &Cluster,
    events: &Events,
) -> Result<Option<BootstrapToken>> {
    let explicit = match spec.node_identity {
        NodeIdentity::Shared => return Ok(None),
        NodeIdentity::PerNode => true,
        NodeIdentity::Auto => false,
    };
    let shared = |why: String| {
        events.note(format!(
            "node identity: shared, one credential for every hollow node ({why}; --node-identity per-node asks for per-node anyway)"
        ));
        Ok(None)
    };
    let refuse = |why: String, hint: &str| {
        Err(Error::Refused {
            what: format!("--node-identity per-node: {why}"),
            details: Vec::new(),
            hint: hint.to_owned(),
        })
    };
    let template = crate::template::Template::load(&spec.template)?;
    if !template.supports_node_identity()? {
        let why = format!(
            "the template {} has no per-node support (no `node_identity` placeholder)",
            template.name
        );
        if explicit {
            return refuse(
                why,
                "use the project's template (--template simplified), or give yours the node_identity blocks it has",
            );
        }
        return shared(why);
    }
    let restricted = restricted_labels(&spec.node_labels);
    if !restricted.is_empty() {
        let why = format!(
            "NodeRestriction lets a kubelet that is its own node set no label in the kubernetes.io and k8s.io namespaces but a few, and --node-labels has {}",
            restricted.join(", ")
        );
        if explicit {
            return refuse(
                why,
                "choose keys outside kubernetes.io and k8s.io (e.g. tier=hollow), or deploy with --node-identity shared",
            );
        }
        return shared(why);
    }
    let missing = missing_apis(master).await?;
    if !missing.is_empty() {
        let why = format!("the master does not serve {}", missing.join(" or "));
        if explicit {
            return refuse(
                why,
                "per-node identity needs TLS bootstrap on the master; deploy with --node-identity shared",
            );
        }
        return shared(why);
    }
    // The rights and names per-node identity needs: `auto` falls back to
    // shared without them; `per-node` is refused by the preflight, listing them.
    if !explicit {
        let mut denied = Vec::new();
        for (verb, group, resource, sub, ns) in MASTER_RIGHTS {
            if crate::preflight::may(master, verb, group, resource, sub, ns).await? == Some(false) {
                denied.push(format!("{verb} {resource}"));
            }
        }
        if !denied.is_empty() {
            return shared(format!(
                "the master's credentials may not {}",
                denied.join(", ")
            ));
        }
    }
    let existing = match existing_token(master, &spec.namespace).await {
        Ok(t) => t,
        Err(e) if !explicit => {
            return shared(format!("deploy's bootstrap tokens cannot be read: {e}"));
        }
        Err(e) => return Err(e),
    };
    // A token deploy made here before: per-node worked (or was asked for)
    // then, and stays, so that a later run does not switch under running pods.
    if existing.is_none() {
        let (signs, why) = master_signs(master).await?;
        match (signs, explicit) {
            (Some(true), _) => {}
            (Some(false), true) => {
                return refuse(
                    format!("the master will not sign the hollow kubelets' certificates: {why}"),
                    "start kube-apiserver with --enable-bootstrap-token-auth=true and kube-controller-manager with --cluster-signing-cert-file and --cluster-signing-key-file (the CA the API server trusts for client certificates); or deploy with --node-identity shared",
                );
            }
            (None, true) => events.warn(format!(
                "per-node identity: cannot tell whether the master signs kubelet client certificates ({why}); if the hollow nodes do not register, look at `kubectl get csr` on the master"
            )),
            (_, false) => {
                return shared(format!(
                    "cannot tell that the master signs kubelet client certificates: {why}"
                ));
            }
        }
    }
    let (token, which) = match existing {
        Some(token) => (token, "the one deploy made before"),
        None => (BootstrapToken::generate()?, "a new one"),
    };
    if !explicit {
        let manifests = master_manifests(&spec.namespace, &token);
        if let Err(e) = crate::preflight::master_ownership(spec, &manifests, master).await {
            return shared(e.to_string());
        }
    }
    events.note(format!(
        "node identity: per-node: each hollow kubelet bootstraps its own system:node certificate with the bootstrap token {} ({which})",
        token.id
    ));
    Ok(Some(token))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_node_restriction_refuses_a_kubelet() {
        let l = |keys: &[&str]| -> Vec<(String, String)> {
            keys.iter()
                .map(|k| ((*k).to_owned(), "x".to_owned()))
                .collect()
        };
        assert_eq!(
            restricted_labels(&l(&[
                "tier",
                "example.com/team",
                "kubernetes.io/hostname",
                "topology.kubernetes.io/zone",
                "node.kubernetes.io/pool",
                "kubelet.kubernetes.io/x",
                "node-role.kubernetes.io/worker",
                "k8s.io/thing",
                "node-restriction.kubernetes.io/pool",
            ])),
            [
                "node-role.kubernetes.io/worker",
                "k8s.io/thing",
                "node-restriction.kubernetes.io/pool"
            ]
        );
    }

    #[test]
    fn tokens_have_the_bootstrap_shape_and_never_print_their_secret() {
        let t = BootstrapToken::generate().unwrap();
        assert_eq!((t.id.len(), t.secret.len()), (6, 16));
        assert!(
            format!("{}{}", t.id, t.secret)
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        );
        assert_ne!(t, BootstrapToken::generate().unwrap());
        assert!(!format!("{t:?}").contains(&t.secret));
        let m = master_manifests("ns", &t);
        assert_eq!(m[0].name, format!("bootstrap-token-{}", t.id));
        assert_eq!(m[0].value["type"], "bootstrap.kubernetes.io/token");
        assert_eq!(
            m[0].value["stringData"]["auth-extra-groups"],
            "system:bootstrappers:kubemark-deploy:ns"
        );
        assert_eq!(m[1].value["subjects"][0]["name"], group("ns"));
        assert_eq!(
            m[2].value["roleRef"]["name"],
            "system:certificates.k8s.io:certificatesigningrequests:nodeclient"
        );
    }
}
