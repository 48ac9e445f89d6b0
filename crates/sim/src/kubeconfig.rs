//! Kubeconfig files: the ones the simulator writes for its clients, and the
//! reading hollow nodes do of the kubeconfig mounted from their secret.

use base64::Engine as _;
use serde_json::Value;

/// A kubeconfig with one cluster, user and context, all named `name`.
pub fn render(name: &str, server: &str, ca_pem: Option<&str>, token: &str) -> String {
    let engine = base64::engine::general_purpose::STANDARD;
    let ca = ca_pem
        .map(|pem| format!("    certificate-authority-data: {}\n", engine.encode(pem)))
        .unwrap_or_default();
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: {name}\n  cluster:\n    server: {server}\n{ca}users:\n- name: {name}-admin\n  user:\n    token: {token}\ncontexts:\n- name: {name}\n  context:\n    cluster: {name}\n    user: {name}-admin\ncurrent-context: {name}\npreferences: {{}}\n"
    )
}

/// What a client needs from a kubeconfig's current context.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Credentials {
    pub server: String,
    pub ca_pem: Option<Vec<u8>>,
    pub insecure: bool,
    pub token: Option<String>,
    pub client_cert_pem: Option<Vec<u8>>,
    pub client_key_pem: Option<Vec<u8>>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("server", &self.server)
            .finish_non_exhaustive()
    }
}

/// Read a kubeconfig's current context the way a kubelet does; the error
/// text is what the hollow node logs before it exits.
pub fn parse(text: &[u8]) -> Result<Credentials, String> {
    let doc: Value =
        serde_yaml::from_slice(text).map_err(|e| format!("invalid configuration: {e}"))?;
    let current = doc
        .get("current-context")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let named = |list: &str, name: &str| -> Option<Value> {
        doc.get(list)?
            .as_array()?
            .iter()
            .find(|e| e.get("name").and_then(Value::as_str) == Some(name))
            .cloned()
    };
    let context = named("contexts", current)
        .and_then(|c| c.get("context").cloned())
        .ok_or_else(|| format!("invalid configuration: context \"{current}\" does not exist"))?;
    let cluster_name = context
        .get("cluster")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let user_name = context
        .get("user")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let cluster = named("clusters", cluster_name)
        .and_then(|c| c.get("cluster").cloned())
        .ok_or_else(|| format!("invalid configuration: cluster \"{cluster_name}\" not found"))?;
    let user = named("users", user_name)
        .and_then(|u| u.get("user").cloned())
        .unwrap_or_default();
    let engine = base64::engine::general_purpose::STANDARD;
    let data = |v: &Value, key: &str| -> Result<Option<Vec<u8>>, String> {
        match v.get(key).and_then(Value::as_str) {
            Some(d) => engine
                .decode(d)
                .map(Some)
                .map_err(|e| format!("invalid {key}: {e}")),
            None => Ok(None),
        }
    };
    for (v, key, what) in [
        (&cluster, "certificate-authority", "a CA file"),
        (&user, "client-certificate", "a client certificate file"),
        (&user, "client-key", "a client key file"),
        (&user, "tokenFile", "a token file"),
    ] {
        if let Some(path) = v.get(key).and_then(Value::as_str) {
            return Err(format!(
                "open {path}: no such file or directory ({what} referenced by the kubeconfig)"
            ));
        }
    }
    if user.get("exec").is_some() || user.get("auth-provider").is_some() {
        return Err("the kubeconfig's user runs a credential plugin, which is not available in this container".into());
    }
    let server = cluster
        .get("server")
        .and_then(Value::as_str)
        .ok_or("invalid configuration: no server found for cluster")?
        .to_owned();
    Ok(Credentials {
        server,
        ca_pem: data(&cluster, "certificate-authority-data")?,
        insecure: cluster
            .get("insecure-skip-tls-verify")
            .and_then(Value::as_bool)
            == Some(true),
        token: user.get("token").and_then(Value::as_str).map(str::to_owned),
        client_cert_pem: data(&user, "client-certificate-data")?,
        client_key_pem: data(&user, "client-key-data")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rendered_kubeconfigs_parse() {
        let text = render(
            "sim-master",
            "https://127.0.0.1:6443",
            Some("-----BEGIN CERTIFICATE-----\n"),
            "tok",
        );
        let c = parse(text.as_bytes()).unwrap();
        assert_eq!(c.server, "https://127.0.0.1:6443");
        assert_eq!(c.token.as_deref(), Some("tok"));
        assert!(c.ca_pem.is_some());
        assert!(!format!("{c:?}").contains("tok\""));
    }

    #[test]
    fn what_a_pod_cannot_use_is_an_error() {
        let files = "apiVersion: v1\nclusters:\n- name: c\n  cluster:\n    server: https://h\n    certificate-authority: /home/me/ca.crt\ncontexts:\n- name: c\n  context: {cluster: c, user: u}\ncurrent-context: c\nusers:\n- name: u\n  user: {token: t}\n";
        assert!(
            parse(files.as_bytes())
                .unwrap_err()
                .contains("/home/me/ca.crt")
        );
        let exec = "apiVersion: v1\nclusters:\n- name: c\n  cluster: {server: https://h}\ncontexts:\n- name: c\n  context: {cluster: c, user: u}\ncurrent-context: c\nusers:\n- name: u\n  user:\n    exec: {command: gke-gcloud-auth-plugin}\n";
        assert!(parse(exec.as_bytes()).unwrap_err().contains("plugin"));
        assert!(parse(b"not: [yaml").is_err());
    }
}
