//! The Docker engine: connect (as `DOCKER_HOST` says), negotiate the API
//! version, build from a streamed context, inspect, and push (`--engine-push`,
//! or an engine on containerd's image store; otherwise its images are read
//! from its export and pushed through the registry API: `oci::import`).
//!
//! Pushing reads the engine's JSON stream itself: bollard's `PushImageInfo`
//! drops the `id` and `aux` fields, and without them there are no per-layer
//! bytes and no digest.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use bollard::Docker;
use bollard::query_parameters::BuildImageOptions;
use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::{BodyExt, Full};

use crate::auth::Credentials;
use crate::context::Context;
use crate::error::{Error, Result};
use crate::event::{CancellationToken, Event, Events};
use crate::reference::ImageRef;

/// Seconds a single engine request may take; builds and pushes of a large
/// binary over a slow link take minutes.
const REQUEST_TIMEOUT_SECS: u64 = 3600;

/// Where the engine listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    Unix(PathBuf),
    /// `host:port`, plain HTTP.
    Tcp(String),
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Unix(path) => write!(f, "unix://{}", path.display()),
            Endpoint::Tcp(addr) => write!(f, "tcp://{addr}"),
        }
    }
}

impl Endpoint {
    /// The endpoint `DOCKER_HOST` names, else the default socket.
    pub fn from_env() -> Result<Self> {
        match std::env::var("DOCKER_HOST") {
            Ok(host) if !host.is_empty() => Self::parse(&host),
            _ => Ok(Endpoint::Unix(PathBuf::from("/var/run/docker.sock"))),
        }
    }

    pub fn parse(host: &str) -> Result<Self> {
        if let Some(path) = host.strip_prefix("unix://") {
            return Ok(Endpoint::Unix(PathBuf::from(path)));
        }
        if let Some(addr) = host
            .strip_prefix("tcp://")
            .or_else(|| host.strip_prefix("http://"))
        {
            if std::env::var_os("DOCKER_TLS_VERIFY").is_some_and(|v| !v.is_empty()) {
                return Err(Error::Usage(format!(
                    "DOCKER_HOST={host} with DOCKER_TLS_VERIFY: TLS to the engine is not supported; \
                     forward the engine's socket (e.g. `ssh -L /tmp/docker.sock:/var/run/docker.sock host`) \
                     and set DOCKER_HOST=unix:///tmp/docker.sock"
                )));
            }
            return Ok(Endpoint::Tcp(addr.trim_end_matches('/').to_owned()));
        }
        Err(Error::Usage(format!(
            "DOCKER_HOST={host} is not supported; use unix:///path/to/docker.sock or tcp://host:port"
        )))
    }
}

/// The address in full when a registry host is an IPv4 address written in a form
/// only the C resolver reads (`127.1`, `2130706433`, `0x7f.1`, `0177.0.0.1`):
/// the engine's resolver (Go's) takes only `a.b.c.d` and looks anything else up
/// as a host name, so a push to it fails after the build.
pub fn unreadable_address(registry: &str) -> Option<std::net::Ipv4Addr> {
    let host = crate::reference::host_without_port(registry);
    if host.starts_with('[') || host.parse::<std::net::Ipv4Addr>().is_ok() {
        return None;
    }
    match kubemark_contract::address::literal(host) {
        Some(std::net::IpAddr::V4(address)) => Some(address),
        _ => None,
    }
}

/// A connected engine whose API version has been negotiated.
#[derive(Debug, Clone)]
pub struct Engine {
    pub endpoint: Endpoint,
    docker: Docker,
    /// e.g. `20.10.24+dfsg1`.
    pub version: String,
    /// e.g. `1.41`.
    pub api_version: String,
    insecure_cidrs: Vec<String>,
    insecure_registries: Vec<String>,
    /// Whether it keeps images in containerd's image store (Docker 29's default):
    /// there an image ID is a manifest's digest and the export holds compressed
    /// layers, which `oci::import` does not read.
    pub containerd_store: bool,
}

/// What the engine built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Built {
    pub id: String,
}

impl Engine {
    /// Connect and negotiate; an engine that does not answer is a clear error.
    pub async fn connect(endpoint: Endpoint) -> Result<Self> {
        let unreachable = |reason: String| Error::EngineUnreachable {
            endpoint: endpoint.to_string(),
            reason,
        };
        let docker = match &endpoint {
            Endpoint::Unix(path) => {
                if !path.exists() {
                    return Err(unreachable(format!(
                        "the socket {} does not exist",
                        path.display()
                    )));
                }
                Docker::connect_with_unix(
                    &path.to_string_lossy(),
                    REQUEST_TIMEOUT_SECS,
                    bollard::API_DEFAULT_VERSION,
                )
            }
            Endpoint::Tcp(addr) => {
                Docker::connect_with_http(addr, REQUEST_TIMEOUT_SECS, bollard::API_DEFAULT_VERSION)
            }
        }
        .map_err(|e| unreachable(e.to_string()))?;
        let docker = docker
            .negotiate_version()
            .await
            .map_err(|e| unreachable(crate::registry::error_chain(&e)))?;
        let version = docker
            .version()
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        let info = docker
            .info()
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        let containerd_store = uses_containerd_store(info.driver_status.as_deref());
        let registry_config = info.registry_config.unwrap_or_default();
        let insecure_registries = registry_config
            .index_configs
            .unwrap_or_default()
            .into_iter()
            .filter(|(_, index)| index.secure == Some(false))
            .map(|(name, _)| name)
            .collect();
        let v = docker.client_version();
        Ok(Self {
            endpoint,
            docker,
            version: version.version.unwrap_or_else(|| "unknown".into()),
            api_version: format!("{}.{}", v.major_version, v.minor_version),
            insecure_cidrs: registry_config.insecure_registry_cidrs.unwrap_or_default(),
            insecure_registries,
            containerd_store,
        })
    }

    /// Whether the engine talks plain HTTP to this registry (`insecure-registries`, 127.0.0.0/8).
    pub fn is_insecure_registry(&self, image: &ImageRef) -> bool {
        if self.insecure_registries.contains(&image.registry) {
            return true;
        }
        // As the engine does: the host's address (a name resolved, `127.1` and
        // `LOCALHOST` read as the resolver reads them) against the CIDRs.
        let host = crate::reference::host_without_port(&image.registry);
        let ip = match kubemark_contract::local_address(host) {
            Some(local) => Some(local.address),
            None => kubemark_contract::address::literal(host),
        };
        let Some(std::net::IpAddr::V4(ip)) = ip else {
            return false;
        };
        self.insecure_cidrs
            .iter()
            .any(|cidr| ipv4_in_cidr(ip, cidr))
    }

    /// The local image's ID, or `None` if the engine has no such image.
    pub async fn image_id(&self, name: &str) -> Result<Option<String>> {
        match self.docker.inspect_image(name).await {
            Ok(image) => Ok(image.id),
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(None),
            Err(e) => Err(self.failed(format!("inspecting {name}"), e)),
        }
    }

    /// The labels of a local image.
    pub async fn image_labels(&self, name: &str) -> Result<HashMap<String, String>> {
        let image = self
            .docker
            .inspect_image(name)
            .await
            .map_err(|e| self.failed(format!("inspecting {name}"), e))?;
        Ok(image.config.and_then(|c| c.labels).unwrap_or_default())
    }

    fn failed(&self, doing: String, e: bollard::errors::Error) -> Error {
        Error::Engine {
            endpoint: self.endpoint.to_string(),
            doing,
            reason: e.to_string(),
        }
    }

    /// Build `image` from the streamed context (its labels are in its Dockerfile).
    pub async fn build(
        &self,
        image: &ImageRef,
        context: Arc<Context>,
        platform: Option<&str>,
        events: &Events,
        cancel: &CancellationToken,
    ) -> Result<Built> {
        let options = BuildImageOptions {
            dockerfile: "Dockerfile".into(),
            t: Some(image.to_string()),
            rm: true,
            forcerm: true,
            platform: platform.unwrap_or_default().to_owned(),
            ..Default::default()
        };
        let body = bollard::body_try_stream(context.stream(events.clone(), cancel.clone()));
        let mut stream = self.docker.build_image(options, None, Some(body));
        let mut step: Option<String> = None;
        let mut id = None;
        while let Some(item) = stream.next().await {
            if cancel.is_cancelled() {
                return Err(Error::Cancelled);
            }
            let info = match item {
                Ok(info) => info,
                Err(bollard::errors::Error::DockerStreamError { error }) => {
                    return Err(Error::BuildFailed {
                        message: error.trim().to_owned(),
                        step,
                    });
                }
                Err(e) => {
                    return Err(Error::BuildFailed {
                        message: crate::registry::error_chain(&e),
                        step,
                    });
                }
            };
            if let Some(aux) = info.aux.and_then(|a| a.id) {
                id = Some(aux);
            }
            for line in info.stream.as_deref().unwrap_or_default().lines() {
                let line = line.trim_end();
                if line.is_empty() {
                    continue;
                }
                if let Some((n, total, instruction)) = parse_step(line) {
                    step = Some(instruction.clone());
                    events.emit(Event::BuildStep {
                        step: n,
                        total,
                        instruction,
                    });
                } else {
                    events.emit(Event::BuildOutput(line.to_owned()));
                }
            }
        }
        let id = match id {
            Some(id) => id,
            None => self
                .image_id(&image.to_string())
                .await?
                .ok_or_else(|| Error::BuildFailed {
                    message: "the engine finished without producing the image".into(),
                    step: step.clone(),
                })?,
        };
        Ok(Built { id })
    }

    /// Push `image` with `creds`; return the digest the registry stored.
    pub async fn push(
        &self,
        image: &ImageRef,
        creds: Option<&Credentials>,
        events: &Events,
        cancel: &CancellationToken,
    ) -> Result<String> {
        let failed = |message: String| Error::PushFailed {
            image: image.to_string(),
            message,
        };
        let path = format!(
            "/v{}/images/{}/push?tag={}",
            self.api_version,
            image.name(),
            image.tag
        );
        let request = |uri: hyper::Uri| {
            hyper::Request::post(uri)
                .header(
                    "X-Registry-Auth",
                    Credentials::engine_header(creds, &image.registry),
                )
                .header("Content-Type", "application/json")
                .body(Full::new(Bytes::new()))
                .map_err(|e| failed(e.to_string()))
        };
        let executor = hyper_util::rt::TokioExecutor::new();
        let response = match &self.endpoint {
            Endpoint::Unix(socket) => {
                let client = hyper_util::client::legacy::Client::builder(executor)
                    .build(hyperlocal::UnixConnector);
                client
                    .request(request(hyperlocal::Uri::new(socket, &path).into())?)
                    .await
            }
            Endpoint::Tcp(addr) => {
                let client = hyper_util::client::legacy::Client::builder(executor).build_http();
                let uri = format!("http://{addr}{path}")
                    .parse()
                    .map_err(|e: hyper::http::uri::InvalidUri| failed(e.to_string()))?;
                client.request(request(uri)?).await
            }
        }
        .map_err(|e| Error::EngineUnreachable {
            endpoint: self.endpoint.to_string(),
            reason: crate::registry::error_chain(&e),
        })?;
        let status = response.status();
        let mut body = response.into_body();
        let mut buffer = Vec::new();
        let mut digest = None;
        let mut lines = Vec::new();
        while let Some(frame) = body.frame().await {
            if cancel.is_cancelled() {
                return Err(Error::Cancelled);
            }
            let frame = frame.map_err(|e| failed(format!("the engine's stream broke: {e}")))?;
            let Some(data) = frame.data_ref() else {
                continue;
            };
            buffer.extend_from_slice(data);
            while let Some(end) = buffer.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = buffer.drain(..=end).collect();
                lines.push(line);
            }
            for line in lines.drain(..) {
                handle_push_line(&line, status, events, &mut digest).map_err(&failed)?;
            }
        }
        if !buffer.is_empty() {
            handle_push_line(&buffer, status, events, &mut digest).map_err(&failed)?;
        }
        if !status.is_success() {
            return Err(failed(format!("HTTP {status}")));
        }
        digest.ok_or_else(|| failed("the engine reported no digest".into()))
    }

    /// The underlying bollard handle, for callers that need more (tests, benchmarks).
    pub fn docker(&self) -> &Docker {
        &self.docker
    }
}

#[derive(serde::Deserialize)]
struct PushMessage {
    status: Option<String>,
    id: Option<String>,
    #[serde(rename = "progressDetail")]
    progress_detail: Option<ProgressDetail>,
    aux: Option<PushAux>,
    error: Option<String>,
    message: Option<String>,
}

#[derive(serde::Deserialize)]
struct ProgressDetail {
    current: Option<u64>,
    total: Option<u64>,
}

#[derive(serde::Deserialize)]
struct PushAux {
    #[serde(rename = "Digest")]
    digest: Option<String>,
}

fn handle_push_line(
    line: &[u8],
    status: hyper::StatusCode,
    events: &Events,
    digest: &mut Option<String>,
) -> Result<(), String> {
    let line = String::from_utf8_lossy(line);
    let line = line.trim();
    if line.is_empty() {
        return Ok(());
    }
    let Ok(message) = serde_json::from_str::<PushMessage>(line) else {
        if status.is_success() {
            return Ok(());
        }
        return Err(line.to_owned());
    };
    if let Some(error) = message
        .error
        .or(message.message.filter(|_| !status.is_success()))
    {
        return Err(error);
    }
    if let Some(d) = message.aux.and_then(|a| a.digest) {
        *digest = Some(d);
    }
    let text = message.status.unwrap_or_default();
    if digest.is_none()
        && let Some(rest) = text.split("digest: ").nth(1)
    {
        *digest = rest.split_whitespace().next().map(str::to_owned);
    }
    if let Some(layer) = message.id {
        let detail = message.progress_detail.unwrap_or(ProgressDetail {
            current: None,
            total: None,
        });
        events.emit(Event::PushLayer {
            layer,
            status: text,
            current: detail.current.unwrap_or(0),
            total: detail.total.unwrap_or(0),
        });
    }
    Ok(())
}

/// Whether `docker info`'s driver status says the containerd snapshotter
/// (`[["driver-type", "io.containerd.snapshotter.v1"]]`).
fn uses_containerd_store(status: Option<&[Vec<String>]>) -> bool {
    status.unwrap_or_default().iter().any(|pair| {
        matches!(pair.as_slice(), [key, value]
            if key == "driver-type" && value.starts_with("io.containerd.snapshotter"))
    })
}

/// `Step 2/3 : COPY kubemark /kubemark` → (2, 3, "COPY kubemark /kubemark").
fn parse_step(line: &str) -> Option<(usize, usize, String)> {
    let rest = line.strip_prefix("Step ")?;
    let (counts, instruction) = rest.split_once(" : ")?;
    let (n, total) = counts.split_once('/')?;
    Some((
        n.parse().ok()?,
        total.parse().ok()?,
        instruction.trim().to_owned(),
    ))
}

fn ipv4_in_cidr(ip: std::net::Ipv4Addr, cidr: &str) -> bool {
    let Some((net, bits)) = cidr.split_once('/') else {
        return false;
    };
    let (Ok(net), Ok(bits)) = (net.parse::<std::net::Ipv4Addr>(), bits.parse::<u32>()) else {
        return false;
    };
    if bits > 32 {
        return false;
    }
    let mask = if bits == 0 {
        0
    } else {
        u32::MAX << (32 - bits)
    };
    u32::from(ip) & mask == u32::from(net) & mask
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse() {
        assert_eq!(
            Endpoint::parse("unix:///run/docker.sock").unwrap(),
            Endpoint::Unix("/run/docker.sock".into())
        );
        assert_eq!(
            Endpoint::parse("tcp://10.0.0.1:2375").unwrap(),
            Endpoint::Tcp("10.0.0.1:2375".into())
        );
        let e = Endpoint::parse("ssh://me@host").unwrap_err();
        assert!(e.to_string().contains("not supported"), "{e}");
    }

    #[test]
    fn containerd_store_is_read_from_the_driver_status() {
        let pair = |k: &str, v: &str| vec![k.to_owned(), v.to_owned()];
        assert!(uses_containerd_store(Some(&[pair(
            "driver-type",
            "io.containerd.snapshotter.v1"
        )])));
        assert!(!uses_containerd_store(Some(&[
            pair("Backing Filesystem", "extfs"),
            pair("Supports d_type", "true")
        ])));
        assert!(!uses_containerd_store(None));
    }

    #[test]
    fn steps_and_cidrs() {
        assert_eq!(
            parse_step("Step 2/3 : COPY kubemark /kubemark"),
            Some((2, 3, "COPY kubemark /kubemark".into()))
        );
        assert_eq!(parse_step(" ---> abc"), None);
        assert!(ipv4_in_cidr("127.0.0.1".parse().unwrap(), "127.0.0.0/8"));
        assert!(!ipv4_in_cidr("10.0.0.1".parse().unwrap(), "127.0.0.0/8"));
        assert!(ipv4_in_cidr("10.0.0.1".parse().unwrap(), "0.0.0.0/0"));
    }

    #[test]
    fn addresses_the_engine_cannot_read_are_told_with_their_full_form() {
        for (registry, full) in [
            ("127.1:5000", "127.0.0.1"),
            ("2130706433:5000", "127.0.0.1"),
            ("0x7f.1", "127.0.0.1"),
            ("0177.0.0.1:5000", "127.0.0.1"),
            ("10.1:443", "10.0.0.1"),
        ] {
            assert_eq!(
                unreadable_address(registry)
                    .map(|a| a.to_string())
                    .as_deref(),
                Some(full),
                "{registry}"
            );
        }
        for registry in [
            "127.0.0.1:5000",
            "localhost:5000",
            "LOCALHOST:5000",
            "[::1]:5000",
            "gcr.io",
            "registry.k8s.io",
        ] {
            assert_eq!(unreadable_address(registry), None, "{registry}");
        }
    }

    #[test]
    fn push_stream_lines() {
        let events = Events::discard();
        let ok = hyper::StatusCode::OK;
        let mut digest = None;
        handle_push_line(
            br#"{"status":"Pushing","progressDetail":{"current":5,"total":10},"id":"abc"}"#,
            ok,
            &events,
            &mut digest,
        )
        .unwrap();
        assert_eq!(digest, None);
        handle_push_line(
            format!(
                r#"{{"status":"v1: digest: sha256:{} size: 528"}}"#,
                "a".repeat(64)
            )
            .as_bytes(),
            ok,
            &events,
            &mut digest,
        )
        .unwrap();
        assert_eq!(digest, Some(format!("sha256:{}", "a".repeat(64))));
        let e = handle_push_line(br#"{"errorDetail":{"message":"denied"},"error":"denied: requested access to the resource is denied"}"#, ok, &events, &mut digest).unwrap_err();
        assert!(e.contains("denied"));
    }
}
