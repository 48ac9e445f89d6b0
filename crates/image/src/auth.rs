//! Registry credentials: from `--registry-username` with the password on
//! stdin, or from the Docker config (`auths`, `credsStore`, `credHelpers`).
//! The secret never leaves this module except to the engine and the registry:
//! `Debug` and `describe` redact it.

use std::fmt;

use crate::error::{Error, Result};
use crate::reference::ImageRef;

#[derive(Clone)]
enum Secret {
    Password(String),
    IdentityToken(String),
}

/// Credentials for one registry.
#[derive(Clone)]
pub struct Credentials {
    pub username: Option<String>,
    secret: Secret,
    /// Where they came from, for messages: `--registry-username`, the Docker config.
    pub source: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("secret", &"<redacted>")
            .field("source", &self.source)
            .finish()
    }
}

impl Credentials {
    /// A user name and password given on the command line and stdin.
    pub fn password(username: &str, password: &str) -> Self {
        Self {
            username: Some(username.to_owned()),
            secret: Secret::Password(password.to_owned()),
            source: "--registry-username".into(),
        }
    }

    /// Credentials stored by `docker login` for the image's registry, if any.
    pub fn from_docker_config(image: &ImageRef) -> Result<Option<Self>> {
        let dir = std::env::var_os("DOCKER_CONFIG")
            .map(std::path::PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| std::path::Path::new(&h).join(".docker")));
        let Some(path) = dir.map(|d| d.join("config.json")) else {
            return Ok(None);
        };
        if !path.exists() {
            return Ok(None);
        }
        Self::from_config_file(&path, image)
    }

    /// Credentials for the image's registry in the Docker config file at `path`.
    pub fn from_config_file(path: &std::path::Path, image: &ImageRef) -> Result<Option<Self>> {
        let source = format!("the Docker config {}", path.display());
        let key = image.credential_key();
        use docker_credential::{CredentialRetrievalError as E, DockerCredential};
        let file = std::fs::File::open(path).map_err(|e| Error::Credentials {
            registry: key.to_owned(),
            reason: format!("cannot read {}: {e}", path.display()),
        })?;
        match docker_credential::get_credential_from_reader(std::io::BufReader::new(file), key) {
            Ok(DockerCredential::UsernamePassword(user, password)) => Ok(Some(Self {
                username: Some(user),
                secret: Secret::Password(password),
                source,
            })),
            Ok(DockerCredential::IdentityToken(token)) => Ok(Some(Self {
                username: None,
                secret: Secret::IdentityToken(token),
                source,
            })),
            Err(E::NoCredentialConfigured | E::ConfigNotFound) => Ok(None),
            Err(E::HelperFailure { helper, .. }) => Err(Error::Credentials {
                registry: key.to_owned(),
                reason: format!(
                    "the credential helper `{helper}` failed (its output is not shown, it may hold secrets)"
                ),
            }),
            Err(e) => Err(Error::Credentials {
                registry: key.to_owned(),
                reason: format!("{e} in {}", path.display()),
            }),
        }
    }

    /// `user `x` from <source>`, never the secret.
    pub fn describe(&self) -> String {
        match &self.username {
            Some(user) => format!("of user `{user}` from {}", self.source),
            None => format!("(an identity token) from {}", self.source),
        }
    }

    pub(crate) fn basic(&self) -> Option<(&str, &str)> {
        match (&self.username, &self.secret) {
            (Some(u), Secret::Password(p)) => Some((u, p)),
            _ => None,
        }
    }

    pub(crate) fn identity_token(&self) -> Option<&str> {
        match &self.secret {
            Secret::IdentityToken(t) => Some(t),
            Secret::Password(_) => None,
        }
    }

    /// The `X-Registry-Auth` header the engine expects (base64url of a JSON AuthConfig).
    pub(crate) fn engine_header(creds: Option<&Self>, server: &str) -> String {
        use base64::Engine as _;
        let json = match creds {
            Some(c) => match &c.secret {
                Secret::Password(p) => serde_json::json!({
                    "username": c.username,
                    "password": p,
                    "serveraddress": server,
                }),
                Secret::IdentityToken(t) => serde_json::json!({
                    "identitytoken": t,
                    "serveraddress": server,
                }),
            },
            None => serde_json::json!({}),
        };
        base64::engine::general_purpose::URL_SAFE.encode(json.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_describe_never_show_the_secret() {
        let c = Credentials::password("alice", "hunter2-secret");
        assert!(!format!("{c:?}").contains("hunter2"));
        assert!(!c.describe().contains("hunter2"));
        assert!(c.describe().contains("alice"));
    }

    #[test]
    fn docker_config_is_read() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("config.json"),
            r#"{"auths":{"127.0.0.1:5999":{"auth":"Ym9iOnMzY3JldA=="}}}"#,
        )
        .unwrap();
        let image = ImageRef::kubemark("127.0.0.1:5999", "v1").unwrap();
        let other = ImageRef::kubemark("127.0.0.1:6000", "v1").unwrap();
        let path = dir.path().join("config.json");
        let found = Credentials::from_config_file(&path, &image)
            .unwrap()
            .unwrap();
        assert_eq!(found.basic(), Some(("bob", "s3cret")));
        assert!(found.describe().contains("config.json"));
        assert!(
            Credentials::from_config_file(&path, &other)
                .unwrap()
                .is_none()
        );
    }
}
