//! A hollow kubelet's API client: one per set of credentials (one connection
//! pool, at most 64 requests in flight), errors described as the kubelet
//! would, transient ones retried as client-go does; and the image registry's
//! client.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::Semaphore;

use super::super::lock;
use crate::Shared;
use crate::kubeconfig::Credentials;

/// An API client for one set of credentials.
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
    limit: Arc<Semaphore>,
}

/// A client for the image registry checks.
pub fn registry_client() -> &'static reqwest::Client {
    static CLIENT: OnceLock<reqwest::Client> = OnceLock::new();
    CLIENT.get_or_init(|| {
        reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap_or_default()
    })
}

pub(super) fn client_for(shared: &Shared, creds: &Credentials) -> Result<Client, String> {
    if let Some(c) = lock(&shared.runtime.clients).get(creds) {
        return Ok(c.clone());
    }
    let mut builder = reqwest::Client::builder()
        .timeout(Duration::from_secs(15))
        .connect_timeout(Duration::from_secs(5))
        .pool_max_idle_per_host(64);
    if let Some(ca) = &creds.ca_pem {
        let cert = reqwest::Certificate::from_pem(ca)
            .map_err(|e| format!("unable to load root certificates: {e}"))?;
        builder = builder.add_root_certificate(cert);
    }
    if creds.insecure {
        builder = builder.danger_accept_invalid_certs(true);
    }
    if let (Some(cert), Some(key)) = (&creds.client_cert_pem, &creds.client_key_pem) {
        let identity = reqwest::Identity::from_pkcs8_pem(cert, key)
            .map_err(|e| format!("invalid client certificate: {e}"))?;
        builder = builder.identity(identity);
    }
    let http = builder.build().map_err(|e| e.to_string())?;
    let client = Client {
        http,
        base: creds.server.trim_end_matches('/').to_owned(),
        token: creds.token.clone(),
        limit: Arc::new(Semaphore::new(64)),
    };
    lock(&shared.runtime.clients).insert(creds.clone(), client.clone());
    Ok(client)
}

/// A failed API call, as the kubelet would describe it.
pub(super) enum CallError {
    /// Retrying can help (5xx, 429, a timeout).
    Transient(String),
    /// It cannot (refused connection, bad certificate, 401, 403).
    Fatal(String),
}

impl CallError {
    pub(super) fn text(&self) -> &str {
        match self {
            CallError::Transient(s) | CallError::Fatal(s) => s,
        }
    }
}

fn describe(method: &str, url: &str, e: &reqwest::Error) -> CallError {
    let mut chain = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        chain.push_str(": ");
        chain.push_str(&s.to_string());
        source = s.source();
    }
    let host = url
        .split("://")
        .nth(1)
        .and_then(|r| r.split('/').next())
        .unwrap_or(url);
    let text = if chain.contains("Connection refused") {
        format!("{method} \"{url}\": dial tcp {host}: connect: connection refused")
    } else if chain.contains("certificate") {
        format!(
            "{method} \"{url}\": tls: failed to verify certificate: x509: certificate signed by unknown authority"
        )
    } else if e.is_timeout() {
        return CallError::Transient(format!("{method} \"{url}\": context deadline exceeded"));
    } else {
        format!("{method} \"{url}\": {chain}")
    };
    CallError::Fatal(text)
}

impl Client {
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        content_type: &str,
        body: Option<&Value>,
    ) -> Result<(u16, Value), CallError> {
        let _permit = self.limit.acquire().await;
        let url = format!("{}{path}", self.base);
        let mut request = self
            .http
            .request(method.clone(), &url)
            .header("user-agent", "kubemark/v1.33.0 (linux/amd64)");
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request
                .header("content-type", content_type)
                .body(serde_json::to_vec(body).unwrap_or_default());
        }
        let response = request
            .send()
            .await
            .map_err(|e| describe(method.as_str(), &url, &e))?;
        let code = response.status().as_u16();
        let value: Value = response.json().await.unwrap_or(Value::Null);
        match code {
            200..=299 | 409 => Ok((code, value)),
            401 => Err(CallError::Fatal("Unauthorized".into())),
            403 => Err(CallError::Fatal(format!(
                "forbidden: {}",
                value["message"]
                    .as_str()
                    .unwrap_or("the credentials may not do this")
            ))),
            429 | 500..=599 => Err(CallError::Transient(format!(
                "the server returned {code}: {}",
                value["message"].as_str().unwrap_or_default()
            ))),
            _ => Err(CallError::Fatal(format!(
                "the server rejected the request ({code}): {}",
                value["message"].as_str().unwrap_or_default()
            ))),
        }
    }

    /// `call`, retried on transient errors a few times (as client-go does).
    pub(super) async fn call_retrying(
        &self,
        method: reqwest::Method,
        path: &str,
        content_type: &str,
        body: Option<&Value>,
    ) -> Result<(u16, Value), CallError> {
        let mut delay = Duration::from_millis(200);
        let mut last = None;
        for _ in 0..8 {
            match self.call(method.clone(), path, content_type, body).await {
                Err(CallError::Transient(why)) => {
                    last = Some(why);
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(3));
                }
                other => return other,
            }
        }
        Err(CallError::Transient(last.unwrap_or_default()))
    }
}
