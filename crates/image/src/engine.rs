//! The Docker engine: connect (as `DOCKER_HOST` says), negotiate the API
//! version, build from a streamed context, inspect. The engine's images are
//! pushed through the registry API (`oci::import`), not by the engine.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use bollard::Docker;
use bollard::query_parameters::BuildImageOptions;
use futures_util::StreamExt;

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

    /// The underlying bollard handle, for callers that need more (tests, benchmarks).
    pub fn docker(&self) -> &Docker {
        &self.docker
    }
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
}
