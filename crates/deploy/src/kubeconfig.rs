//! Kubeconfigs: clients for the tool itself (any kubeconfig kube-rs reads,
//! plugins included), and the master kubeconfig prepared for hollow-node pods:
//! one context, every referenced file inlined, and what a pod cannot use
//! refused with the reason.

use std::path::{Path, PathBuf};

use base64::Engine as _;
use kube::config::{
    Context as KubeContext, KubeConfigOptions, Kubeconfig, NamedAuthInfo, NamedCluster,
    NamedContext, Preferences,
};
use serde_json::Value;

use crate::error::{Error, Result, Side};

/// Where a cluster's kubeconfig comes from.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Source {
    /// `None`: `KUBECONFIG`, then `~/.kube/config`.
    pub path: Option<PathBuf>,
    /// `None`: the kubeconfig's current context.
    pub context: Option<String>,
}

/// A connected cluster.
#[derive(Clone)]
pub struct Cluster {
    pub side: Side,
    pub client: kube::Client,
    pub server: String,
    pub context: String,
    /// The kubeconfig file it was read from.
    pub kubeconfig: PathBuf,
    /// The kubeconfig turns TLS verification off.
    pub insecure: bool,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("side", &self.side)
            .field("server", &self.server)
            .field("context", &self.context)
            .finish_non_exhaustive()
    }
}

fn default_path() -> Option<PathBuf> {
    match std::env::var_os("KUBECONFIG") {
        Some(v) if !v.is_empty() => std::env::split_paths(&v).next(),
        _ => std::env::var_os("HOME").map(|h| Path::new(&h).join(".kube/config")),
    }
}

impl Source {
    /// The file this source reads.
    pub fn file(&self) -> Option<PathBuf> {
        self.path.clone().or_else(default_path)
    }
}

/// A kubeconfig file that cannot be used as written: bad input (exit 2), as
/// opposed to a credential plugin that fails or a server that does not answer.
fn bad_file(side: Side, path: &Path, reason: &str) -> Error {
    Error::Usage(format!(
        "the {side}'s kubeconfig {} cannot be used: {reason}",
        path.display()
    ))
}

/// The lists a kubeconfig holds must be lists of named entries: `clusters: 42`
/// is said as such, not as a missing context further on.
fn check_shape(text: &str) -> std::result::Result<(), String> {
    let doc: Value = serde_yaml::from_str(text).map_err(|e| format!("it is not YAML: {e}"))?;
    if !doc.is_object() {
        return Err(
            "it is not a kubeconfig (a YAML mapping with clusters, users and contexts)".into(),
        );
    }
    // Say where and what type, never the value: a users entry holds a token.
    let kind = |v: &Value| match v {
        Value::Null => "empty",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    };
    for (list, entry) in [
        ("clusters", "cluster"),
        ("users", "user"),
        ("contexts", "context"),
    ] {
        match doc.get(list) {
            None | Some(Value::Null) => {}
            Some(Value::Array(items)) => {
                if let Some(i) = items
                    .iter()
                    .position(|i| i.get("name").and_then(Value::as_str).is_none())
                {
                    return Err(format!(
                        "entry {} of `{list}` has no name; each is `- name: NAME` with `{entry}:` under it",
                        i + 1
                    ));
                }
            }
            Some(other) => {
                return Err(format!(
                    "`{list}` is {}, not a list; it holds entries `- name: NAME` with `{entry}:` under each",
                    kind(other)
                ));
            }
        }
    }
    Ok(())
}

/// A client for one side, as the tool's own client (plugins allowed).
pub async fn connect(side: Side, source: &Source) -> Result<Cluster> {
    let path = source.file().ok_or_else(|| {
        Error::Usage(format!(
            "no kubeconfig for the {side}: HOME and KUBECONFIG are unset"
        ))
    })?;
    let fail = |reason: String| Error::Kubeconfig {
        side,
        path: path.clone(),
        reason,
    };
    let text = std::fs::read_to_string(&path).map_err(|e| fail(e.to_string()))?;
    check_shape(&text).map_err(|e| bad_file(side, &path, &e))?;
    let kubeconfig = Kubeconfig::read_from(&path).map_err(|e| fail(e.to_string()))?;
    let context = match &source.context {
        Some(c) => c.clone(),
        None => kubeconfig
            .current_context
            .clone()
            .ok_or_else(|| fail("it has no current-context; pass the context to use".into()))?,
    };
    if !kubeconfig.contexts.iter().any(|c| c.name == context) {
        let known: Vec<&str> = kubeconfig
            .contexts
            .iter()
            .map(|c| c.name.as_str())
            .collect();
        return Err(fail(format!(
            "it has no context `{context}` (it has: {})",
            known.join(", ")
        )));
    }
    let options = KubeConfigOptions {
        context: Some(context.clone()),
        ..KubeConfigOptions::default()
    };
    let mut config = kube::Config::from_custom_kubeconfig(kubeconfig, &options)
        .await
        .map_err(|e| fail(e.to_string()))?;
    config.headers.push((
        http::header::USER_AGENT,
        http::HeaderValue::from_static(concat!("kubemark-deploy/", env!("CARGO_PKG_VERSION"))),
    ));
    let server = config
        .cluster_url
        .to_string()
        .trim_end_matches('/')
        .to_owned();
    let insecure = config.accept_invalid_certs;
    let client = kube::Client::try_from(config).map_err(|e| fail(crate::error::describe(&e)))?;
    Ok(Cluster {
        side,
        client,
        server,
        context,
        kubeconfig: path,
        insecure,
    })
}

/// The master kubeconfig as a pod can use it.
#[derive(Clone, PartialEq, Eq)]
pub struct PodKubeconfig {
    /// The YAML that goes into the secret.
    pub yaml: String,
    pub server: String,
    /// The server's host (for the upstream template's `master_ip`).
    pub host: String,
    pub insecure: bool,
    pub loopback: bool,
}

impl std::fmt::Debug for PodKubeconfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PodKubeconfig")
            .field("server", &self.server)
            .field("yaml", &"<redacted>")
            .finish()
    }
}

/// The host of a server URL (`https://10.0.0.1:6443` → `10.0.0.1`).
pub fn host_of(server: &str) -> String {
    let rest = server.split("://").nth(1).unwrap_or(server);
    let authority = rest.split('/').next().unwrap_or(rest);
    let authority = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    if let Some(v6) = authority.strip_prefix('[') {
        return v6.split(']').next().unwrap_or(v6).to_owned();
    }
    authority.split(':').next().unwrap_or(authority).to_owned()
}

/// Keep only the chosen context, inline every file, refuse plugins and (unless
/// allowed) a loopback server: what the hollow nodes will read from their secret.
pub fn for_pods(source: &Source, allow_loopback: bool) -> Result<PodKubeconfig> {
    let path = source
        .file()
        .ok_or_else(|| Error::Usage("no kubeconfig for the kubemark master".into()))?;
    let read_err = |reason: String| Error::Kubeconfig {
        side: Side::Master,
        path: path.clone(),
        reason,
    };
    let text = std::fs::read_to_string(&path).map_err(|e| read_err(e.to_string()))?;
    check_shape(&text).map_err(|e| bad_file(Side::Master, &path, &e))?;
    // kube-rs reads it as client-go does (file references made absolute).
    let doc = Kubeconfig::read_from(&path).map_err(|e| read_err(e.to_string()))?;
    let context_name = match &source.context {
        Some(c) => c.clone(),
        None => doc
            .current_context
            .clone()
            .ok_or_else(|| read_err("it has no current-context; pass --master-context".into()))?,
    };
    let context = doc
        .contexts
        .iter()
        .find(|c| c.name == context_name)
        .and_then(|c| c.context.clone())
        .ok_or_else(|| read_err(format!("it has no context `{context_name}`")))?;
    let cluster_name = context.cluster.clone();
    let user_name = context.user.clone().unwrap_or_default();
    let mut cluster = doc
        .clusters
        .iter()
        .find(|c| c.name == cluster_name)
        .and_then(|c| c.cluster.clone())
        .ok_or_else(|| {
            read_err(format!(
                "context `{context_name}` names cluster `{cluster_name}`, which it does not define"
            ))
        })?;
    let mut user = doc
        .auth_infos
        .iter()
        .find(|u| u.name == user_name)
        .and_then(|u| u.auth_info.clone())
        .unwrap_or_default();

    let refuse = |reason: String, hint: &str| Error::MasterKubeconfig {
        reason,
        hint: hint.to_owned(),
    };
    let plugin = |what: String| {
        refuse(
            format!(
                "user `{user_name}` gets its credentials from {what}, which does not exist inside the hollow-node pods"
            ),
            "use a kubeconfig with a token or client certificate for the master, e.g. a service account token from `kubectl create token`",
        )
    };
    if let Some(exec) = &user.exec {
        let command = exec.command.as_deref().unwrap_or("?");
        let command = Path::new(command)
            .file_name()
            .map_or(command.to_owned(), |n| n.to_string_lossy().into_owned());
        return Err(plugin(format!("the exec plugin `{command}`")));
    }
    if let Some(provider) = &user.auth_provider {
        return Err(plugin(format!("the auth-provider `{}`", provider.name)));
    }
    let server = cluster
        .server
        .clone()
        .ok_or_else(|| read_err(format!("cluster `{cluster_name}` has no server")))?;
    let host = host_of(&server);
    let local = kubemark_contract::local_address(&host);
    let loopback = local.is_some();
    if let Some(local) = local.filter(|_| !allow_loopback) {
        return Err(refuse(
            format!(
                "its server {server} is this machine: {local}, which inside each hollow-node pod is the pod itself"
            ),
            "give the master's address as the external cluster's pods reach it, or pass --allow-loopback-master when the pods share the host's network (as in the demo)",
        ));
    }
    // Every file the pod cannot see, read here and inlined.
    let read = |file: String, key: &str| -> Result<Vec<u8>> {
        std::fs::read(&file).map_err(|e| read_err(format!("cannot read {file} ({key}): {e}")))
    };
    let encode = |bytes: Vec<u8>| base64::engine::general_purpose::STANDARD.encode(bytes);
    if let Some(file) = cluster.certificate_authority.take() {
        cluster.certificate_authority_data = Some(encode(read(file, "certificate-authority")?));
    }
    if let Some(file) = user.client_certificate.take() {
        user.client_certificate_data = Some(encode(read(file, "client-certificate")?));
    }
    if let Some(file) = user.client_key.take() {
        user.client_key_data = Some(encode(read(file, "client-key")?).into());
    }
    if let Some(file) = user.token_file.take() {
        let token = String::from_utf8_lossy(&read(file, "tokenFile")?)
            .trim()
            .to_owned();
        user.token = Some(token.into());
    }
    let has_credentials =
        user.token.is_some() || user.client_certificate_data.is_some() || user.username.is_some();
    if !has_credentials {
        return Err(refuse(
            format!("user `{user_name}` has no token, client certificate or password"),
            "give the master kubeconfig credentials the hollow kubelets can present",
        ));
    }
    let insecure = cluster.insecure_skip_tls_verify == Some(true);
    let out = Kubeconfig {
        api_version: Some("v1".into()),
        kind: Some("Config".into()),
        preferences: Some(Preferences::default()),
        clusters: vec![NamedCluster {
            name: cluster_name.clone(),
            cluster: Some(cluster),
            ..NamedCluster::default()
        }],
        auth_infos: vec![NamedAuthInfo {
            name: user_name.clone(),
            auth_info: Some(user),
            ..NamedAuthInfo::default()
        }],
        contexts: vec![NamedContext {
            name: context_name.clone(),
            context: Some(KubeContext {
                cluster: cluster_name,
                user: Some(user_name),
                ..KubeContext::default()
            }),
            ..NamedContext::default()
        }],
        current_context: Some(context_name),
        ..Kubeconfig::default()
    };
    let yaml = serde_yaml::to_string(&out).map_err(|e| read_err(e.to_string()))?;
    Ok(PodKubeconfig {
        yaml,
        server,
        host,
        insecure,
        loopback,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    const BASE: &str = "apiVersion: v1\nkind: Config\ncurrent-context: m\ncontexts:\n- name: m\n  context: {cluster: c, user: u}\n- name: other\n  context: {cluster: c2, user: u2}\nclusters:\n- name: c\n  cluster:\n    server: https://10.1.2.3:6443\n    certificate-authority: ca.crt\n- name: c2\n  cluster: {server: https://127.0.0.1:6443}\nusers:\n- name: u\n  user:\n    client-certificate: client.crt\n    client-key: /KEYDIR/client.key\n- name: u2\n  user: {token: abc}\n";

    #[test]
    fn keeps_one_context_and_inlines_files() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "ca.crt", "CA");
        write(dir.path(), "client.crt", "CERT");
        write(dir.path(), "client.key", "KEY");
        let text = BASE.replace("/KEYDIR", dir.path().to_str().unwrap());
        let path = write(dir.path(), "config", &text);
        let k = for_pods(
            &Source {
                path: Some(path.clone()),
                context: None,
            },
            false,
        )
        .unwrap();
        assert_eq!(k.server, "https://10.1.2.3:6443");
        assert_eq!(k.host, "10.1.2.3");
        let doc: Value = serde_yaml::from_str(&k.yaml).unwrap();
        assert_eq!(doc["contexts"].as_array().unwrap().len(), 1);
        assert_eq!(
            doc["clusters"][0]["cluster"]["certificate-authority-data"],
            "Q0E="
        );
        assert_eq!(doc["users"][0]["user"]["client-key-data"], "S0VZ");
        assert!(doc["users"][0]["user"].get("client-key").is_none());
        assert!(!format!("{k:?}").contains("S0VZ"));

        // The other context is a loopback server: refused, unless allowed.
        let other = Source {
            path: Some(path),
            context: Some("other".into()),
        };
        let e = for_pods(&other, false).unwrap_err();
        assert!(e.to_string().contains("loopback"), "{e}");
        assert!(for_pods(&other, true).unwrap().loopback);
    }

    #[test]
    fn refuses_plugins_and_missing_files() {
        let dir = tempfile::tempdir().unwrap();
        let exec = "apiVersion: v1\ncurrent-context: m\ncontexts:\n- name: m\n  context: {cluster: c, user: u}\nclusters:\n- name: c\n  cluster: {server: https://m.example:443}\nusers:\n- name: u\n  user:\n    exec: {apiVersion: client.authentication.k8s.io/v1beta1, command: gke-gcloud-auth-plugin}\n";
        let e = for_pods(
            &Source {
                path: Some(write(dir.path(), "exec", exec)),
                context: None,
            },
            false,
        )
        .unwrap_err();
        assert!(
            e.to_string()
                .contains("exec plugin `gke-gcloud-auth-plugin`"),
            "{e}"
        );
        let missing = BASE.replace("/KEYDIR", "/nonexistent");
        let e = for_pods(
            &Source {
                path: Some(write(dir.path(), "missing", &missing)),
                context: None,
            },
            false,
        )
        .unwrap_err();
        assert!(e.to_string().contains("cannot read"), "{e}");
    }

    #[test]
    fn hosts() {
        assert_eq!(host_of("https://user@[::1]:6443/x"), "::1");
        assert_eq!(host_of("https://LOCALHOST.:6443"), "LOCALHOST.");
        assert_eq!(host_of("https://2130706433"), "2130706433");
    }
}
