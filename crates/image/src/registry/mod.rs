//! The registry's `/v2/` API: does it answer, does it accept our credentials
//! (Basic or token auth), which digest does a tag point at; and (in `blobs`)
//! the blob and manifest calls both builders push with (the engine's images
//! through `oci::import`) and the OCI builder reads base images with.

mod blobs;

pub(crate) use blobs::short;
pub use blobs::{Manifest, media};

use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::{ACCEPT, WWW_AUTHENTICATE};

use crate::auth::Credentials;
use crate::error::{Error, Result};
use crate::reference::ImageRef;

pub(crate) const MANIFEST_TYPES: &str = "application/vnd.docker.distribution.manifest.v2+json, \
application/vnd.docker.distribution.manifest.list.v2+json, \
application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json";

#[derive(Clone)]
enum Auth {
    Anonymous,
    Basic(String, String),
    Bearer(std::sync::Arc<Token>),
}

/// A bearer token and what fetches the next one: tokens live minutes (Docker
/// Hub's five), and a push after a long make outlives the preflight's.
struct Token {
    current: std::sync::RwLock<String>,
    realm: String,
    service: Option<String>,
    /// `repository:<name>:<actions>`, one per repository the token must cover.
    scopes: std::sync::RwLock<Vec<String>>,
    credentials: Credentials,
}

/// What a connection is for: the token asked for (token auth) is scoped to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Push to the image's repository (and read it).
    Push,
    /// Read the image's repository (a base image).
    Pull,
}

/// A registry that answered `/v2/` and accepted our credentials.
#[derive(Clone)]
pub struct Registry {
    host: String,
    base: String,
    client: reqwest::Client,
    auth: Auth,
    /// How we authenticated, for messages.
    pub auth_description: String,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("base", &self.base)
            .field("auth", &self.auth_description)
            .finish()
    }
}

impl Registry {
    /// Reach the image's registry and check the credentials for `access` to its repository.
    /// `insecure` is what the engine means by it: HTTPS without verifying the
    /// certificate, then plain HTTP if HTTPS fails.
    pub async fn connect(
        image: &ImageRef,
        creds: Option<&Credentials>,
        insecure: bool,
        access: Access,
    ) -> Result<Self> {
        let host = image.api_host().to_owned();
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(30))
            .user_agent(concat!("kubemark-xtask/", env!("CARGO_PKG_VERSION")))
            .tls_danger_accept_invalid_certs(insecure)
            .build()
            .map_err(|e| Error::RegistryUnreachable {
                registry: host.clone(),
                reason: e.to_string(),
            })?;
        let unreachable = |e: reqwest::Error| Error::RegistryUnreachable {
            registry: host.clone(),
            reason: error_chain(&e),
        };
        let mut base = format!("https://{host}");
        let ping = match client.get(format!("{base}/v2/")).send().await {
            Ok(response) => response,
            Err(e) if insecure && (e.is_connect() || e.is_request()) => {
                base = format!("http://{host}");
                client
                    .get(format!("{base}/v2/"))
                    .send()
                    .await
                    .map_err(unreachable)?
            }
            Err(e) => return Err(unreachable(e)),
        };
        let mut registry = Self {
            host: host.clone(),
            base,
            client,
            auth: Auth::Anonymous,
            auth_description: "anonymously".into(),
        };
        match ping.status() {
            s if s.is_success() => return Ok(registry),
            StatusCode::UNAUTHORIZED => {}
            s => {
                return Err(Error::Registry {
                    registry: host,
                    doing: "answering GET /v2/".into(),
                    reason: format!("HTTP {s}; is this a Docker registry (API v2)?"),
                });
            }
        }
        let Some(creds) = creds else {
            return Err(Error::RegistryAuthRequired { registry: host });
        };
        let challenge = ping
            .headers()
            .get(WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let rejected = |reason: String| Error::RegistryAuth {
            registry: host.clone(),
            credentials: creds.describe(),
            reason,
        };
        let (scheme, params) = parse_challenge(&challenge);
        if scheme.eq_ignore_ascii_case("basic") {
            let (user, password) = creds.basic().ok_or_else(|| {
                rejected(
                    "the registry wants a user name and password, not an identity token".into(),
                )
            })?;
            let response = registry
                .client
                .get(format!("{}/v2/", registry.base))
                .basic_auth(user, Some(password))
                .send()
                .await
                .map_err(unreachable)?;
            if !response.status().is_success() {
                return Err(rejected(format!("HTTP {}", response.status())));
            }
            registry.auth = Auth::Basic(user.to_owned(), password.to_owned());
        } else if scheme.eq_ignore_ascii_case("bearer") {
            let realm = params
                .iter()
                .find(|(k, _)| k == "realm")
                .map(|(_, v)| v.clone())
                .ok_or_else(|| {
                    rejected(format!("its challenge `{challenge}` names no token realm"))
                })?;
            let service = params
                .iter()
                .find(|(k, _)| k == "service")
                .map(|(_, v)| v.clone());
            let scope = match access {
                Access::Push => format!("repository:{}:pull,push", image.repository),
                Access::Pull => format!("repository:{}:pull", image.repository),
            };
            let scopes = vec![scope];
            let token = registry
                .token(&realm, service.as_deref(), &scopes, creds)
                .await
                .map_err(&rejected)?;
            registry.auth = Auth::Bearer(std::sync::Arc::new(Token {
                current: std::sync::RwLock::new(token),
                realm,
                service,
                scopes: std::sync::RwLock::new(scopes),
                credentials: creds.clone(),
            }));
        } else {
            return Err(rejected(format!(
                "unsupported authentication challenge `{challenge}`"
            )));
        }
        registry.auth_description = format!("with the credentials {}", creds.describe());
        Ok(registry)
    }

    async fn token(
        &self,
        realm: &str,
        service: Option<&str>,
        scopes: &[String],
        creds: &Credentials,
    ) -> Result<String, String> {
        let mut query: Vec<(&str, String)> = scopes.iter().map(|s| ("scope", s.clone())).collect();
        if let Some(service) = service {
            query.push(("service", service.to_owned()));
        }
        let request = match (creds.basic(), creds.identity_token()) {
            (Some((user, password)), _) => self
                .client
                .get(realm)
                .query(&query)
                .basic_auth(user, Some(password)),
            (None, Some(refresh)) => {
                query.push(("grant_type", "refresh_token".into()));
                query.push(("refresh_token", refresh.to_owned()));
                query.push(("client_id", "kubemark-xtask".into()));
                self.client.post(realm).form(&query)
            }
            (None, None) => return Err("no usable secret".into()),
        };
        let response = request
            .send()
            .await
            .map_err(|e| format!("token request to {realm} failed: {}", error_chain(&e)))?;
        if !response.status().is_success() {
            return Err(format!(
                "the token service {realm} answered HTTP {}",
                response.status()
            ));
        }
        #[derive(serde::Deserialize)]
        struct Token {
            token: Option<String>,
            access_token: Option<String>,
        }
        let body: Token = response
            .json()
            .await
            .map_err(|e| format!("the token service {realm} sent no token: {e}"))?;
        body.token
            .or(body.access_token)
            .ok_or_else(|| format!("the token service {realm} sent no token"))
    }

    fn authorize(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.auth {
            Auth::Anonymous => request,
            Auth::Basic(u, p) => request.basic_auth(u, Some(p)),
            Auth::Bearer(t) => {
                let token = t.current.read().map(|t| t.clone()).unwrap_or_default();
                request.bearer_auth(token)
            }
        }
    }

    /// Send what `make` builds, with our credentials; when a bearer token was
    /// refused (expired), fetch a new one and send once more.
    pub(crate) async fn send(
        &self,
        make: impl Fn() -> reqwest::RequestBuilder,
    ) -> reqwest::Result<reqwest::Response> {
        // Errors without their URL: an upload's carries its session token.
        let response = self
            .authorize(make())
            .send()
            .await
            .map_err(reqwest::Error::without_url)?;
        if response.status() != StatusCode::UNAUTHORIZED {
            return Ok(response);
        }
        let Auth::Bearer(t) = &self.auth else {
            return Ok(response);
        };
        let scopes = t.scopes.read().map(|s| s.clone()).unwrap_or_default();
        match self
            .token(&t.realm, t.service.as_deref(), &scopes, &t.credentials)
            .await
        {
            Ok(fresh) => {
                if let Ok(mut current) = t.current.write() {
                    *current = fresh;
                }
                self.authorize(make())
                    .send()
                    .await
                    .map_err(reqwest::Error::without_url)
            }
            Err(_) => Ok(response),
        }
    }

    /// With token auth, ask for a token that may also read `repository` (a base
    /// image's, for a cross-repository mount). When the token service will not
    /// grant it, nothing changes: the mount is refused and the blob copied.
    pub(crate) async fn also_read(&self, repository: &str) {
        let Auth::Bearer(t) = &self.auth else {
            return;
        };
        let scope = format!("repository:{repository}:pull");
        let mut scopes = t.scopes.read().map(|s| s.clone()).unwrap_or_default();
        if scopes.contains(&scope) {
            return;
        }
        scopes.push(scope);
        if let Ok(fresh) = self
            .token(&t.realm, t.service.as_deref(), &scopes, &t.credentials)
            .await
        {
            if let Ok(mut current) = t.current.write() {
                *current = fresh;
            }
            if let Ok(mut kept) = t.scopes.write() {
                *kept = scopes;
            }
        }
    }

    /// The digest the registry serves for the image's tag; `None` if the tag does not exist.
    pub async fn manifest_digest(&self, image: &ImageRef) -> Result<Option<String>> {
        let url = format!(
            "{}/v2/{}/manifests/{}",
            self.base, image.repository, image.tag
        );
        let fail = |reason: String| Error::Registry {
            registry: self.host.clone(),
            doing: format!("looking up {image}"),
            reason,
        };
        let response = self
            .send(|| self.client.head(&url).header(ACCEPT, MANIFEST_TYPES))
            .await
            .map_err(|e| fail(error_chain(&e)))?;
        match response.status() {
            StatusCode::NOT_FOUND => Ok(None),
            s if s.is_success() => Ok(response
                .headers()
                .get("docker-content-digest")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)),
            s => Err(fail(format!("HTTP {s}"))),
        }
    }

    /// The URL scheme and host the registry answered on.
    pub fn base_url(&self) -> &str {
        &self.base
    }
}

/// `Bearer realm="x",service="y"` → ("Bearer", [("realm","x"), ("service","y")]).
fn parse_challenge(header: &str) -> (String, Vec<(String, String)>) {
    let header = header.trim();
    let (scheme, rest) = header.split_once(' ').unwrap_or((header, ""));
    let mut params = Vec::new();
    let mut rest = rest.trim();
    while !rest.is_empty() {
        let Some((key, after)) = rest.split_once('=') else {
            break;
        };
        let key = key
            .trim()
            .trim_start_matches(',')
            .trim()
            .to_ascii_lowercase();
        let after = after.trim_start();
        let (value, remainder) = if let Some(quoted) = after.strip_prefix('"') {
            let end = quoted.find('"').unwrap_or(quoted.len());
            (&quoted[..end], quoted.get(end + 1..).unwrap_or(""))
        } else {
            let end = after.find(',').unwrap_or(after.len());
            (&after[..end], &after[end..])
        };
        params.push((key, value.to_owned()));
        rest = remainder.trim_start().trim_start_matches(',').trim_start();
    }
    (scheme.to_owned(), params)
}

/// An error with its causes, which is where reqwest keeps the useful part.
pub(crate) fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    /// A registry with token auth whose tokens the test can expire: `/token`
    /// issues `t1`, `t2`, ... (each one the only valid one).
    struct TokenRegistry {
        addr: std::net::SocketAddr,
        valid: std::sync::Arc<std::sync::Mutex<String>>,
        issued: std::sync::Arc<std::sync::atomic::AtomicUsize>,
        /// The scopes the last token was asked for.
        scopes: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    }

    fn form_scopes(query: &str) -> Vec<String> {
        query
            .split('&')
            .filter_map(|kv| kv.strip_prefix("scope="))
            .map(|v| {
                v.replace("%3A", ":")
                    .replace("%2F", "/")
                    .replace("%2C", ",")
            })
            .collect()
    }

    async fn token_registry() -> TokenRegistry {
        use hyper::body::Incoming;
        use hyper_util::rt::TokioIo;
        use std::sync::atomic::Ordering;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let valid = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let issued = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let scopes = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (v, n, sc) = (valid.clone(), issued.clone(), scopes.clone());
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (v, n, sc) = (v.clone(), n.clone(), sc.clone());
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(
                        move |req: hyper::Request<Incoming>| {
                            let (v, n, sc) = (v.clone(), n.clone(), sc.clone());
                            async move {
                                let bearer = req
                                    .headers()
                                    .get("authorization")
                                    .and_then(|h| h.to_str().ok())
                                    .and_then(|h| h.strip_prefix("Bearer "))
                                    .map(str::to_owned);
                                let ok = bearer.is_some_and(|b| *v.lock().unwrap() == b);
                                let response = if req.uri().path() == "/token" {
                                    *sc.lock().unwrap() =
                                        form_scopes(req.uri().query().unwrap_or_default());
                                    let token =
                                        format!("t{}", n.fetch_add(1, Ordering::SeqCst) + 1);
                                    *v.lock().unwrap() = token.clone();
                                    hyper::Response::new(format!("{{\"token\":\"{token}\"}}"))
                                } else if ok {
                                    hyper::Response::builder()
                                        .header("docker-content-digest", "sha256:aa")
                                        .body(String::new())
                                        .unwrap()
                                } else {
                                    hyper::Response::builder()
                                    .status(401)
                                    .header(
                                        "www-authenticate",
                                        format!("Bearer realm=\"http://{addr}/token\",service=\"test\""),
                                    )
                                    .body(String::new())
                                    .unwrap()
                                };
                                Ok::<_, std::convert::Infallible>(
                                    response.map(|b| http_body_util::Full::new(Bytes::from(b))),
                                )
                            }
                        },
                    );
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        TokenRegistry {
            addr,
            valid,
            issued,
            scopes,
        }
    }

    #[tokio::test]
    async fn an_expired_bearer_token_is_fetched_again_and_the_request_sent_again() {
        use std::sync::atomic::Ordering;
        let server = token_registry().await;
        let image = ImageRef::parse(&format!("{}/kubemark:v1", server.addr)).unwrap();
        let creds = Credentials::password("user", "secret");
        let registry = Registry::connect(&image, Some(&creds), true, Access::Push)
            .await
            .unwrap();
        assert_eq!(server.issued.load(Ordering::SeqCst), 1);
        assert_eq!(
            registry.manifest_digest(&image).await.unwrap().as_deref(),
            Some("sha256:aa")
        );
        // The token expires (as after a long make): one refusal, a new token, the same answer.
        *server.valid.lock().unwrap() = "expired".into();
        assert_eq!(
            registry.manifest_digest(&image).await.unwrap().as_deref(),
            Some("sha256:aa")
        );
        assert_eq!(server.issued.load(Ordering::SeqCst), 2);

        // A base in another repository: the next token may read it too (and the
        // refresh after it keeps asking for both).
        registry.also_read("base/busybox").await;
        let both = vec![
            "repository:kubemark:pull,push".to_owned(),
            "repository:base/busybox:pull".to_owned(),
        ];
        assert_eq!(*server.scopes.lock().unwrap(), both);
        *server.valid.lock().unwrap() = "expired".into();
        registry.manifest_digest(&image).await.unwrap();
        assert_eq!(*server.scopes.lock().unwrap(), both);
    }

    #[test]
    fn challenges_parse() {
        let (scheme, params) = parse_challenge(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:a/b:pull""#,
        );
        assert_eq!(scheme, "Bearer");
        assert_eq!(
            params,
            vec![
                (
                    "realm".to_owned(),
                    "https://auth.docker.io/token".to_owned()
                ),
                ("service".to_owned(), "registry.docker.io".to_owned()),
                ("scope".to_owned(), "repository:a/b:pull".to_owned()),
            ]
        );
        let (scheme, params) = parse_challenge(r#"Basic realm="Registry Realm""#);
        assert_eq!(scheme, "Basic");
        assert_eq!(
            params,
            vec![("realm".to_owned(), "Registry Realm".to_owned())]
        );
    }
}
