//! Image references (`registry/name:tag`), checked against the grammar of
//! distribution/reference before anything talks to an engine or a registry.

use std::fmt;

/// The Docker Hub, where a reference without a registry host points.
pub const DOCKER_HUB: &str = "docker.io";

/// A parsed image reference: `[host[:port]/]path[:tag][@digest]`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ImageRef {
    /// Registry host (with port), `docker.io` when the reference names none.
    pub registry: String,
    /// Repository path inside the registry, e.g. `my-project/kubemark`.
    pub repository: String,
    /// Tag, `latest` when the reference names none.
    pub tag: String,
    /// Whether the reference named its tag. `r/kubemark@sha256:…` names none and
    /// is written back as given, not as `r/kubemark:latest@sha256:…`.
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub tag_given: bool,
    /// Content digest, when the reference pins one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
}

/// Why a reference does not parse; the text says what is wrong and what is allowed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid image reference `{input}`: {reason}")]
pub struct RefError {
    pub input: String,
    pub reason: String,
}

fn yes() -> bool {
    true
}

fn is_true(b: &bool) -> bool {
    *b
}

fn err(input: &str, reason: impl Into<String>) -> RefError {
    RefError {
        input: input.to_owned(),
        reason: reason.into(),
    }
}

impl ImageRef {
    /// The kubemark image `REGISTRY/kubemark:TAG`, where `registry` may carry a path
    /// (`gcr.io/my-project`) or be a Docker Hub namespace (`myuser`).
    pub fn kubemark(registry: &str, tag: &str) -> Result<Self, RefError> {
        let registry = registry.trim_end_matches('/');
        if registry.is_empty() {
            return Err(err(
                registry,
                "the registry is empty; pass e.g. `--registry 127.0.0.1:5000` or `--registry gcr.io/my-project`",
            ));
        }
        if let Some((scheme, rest)) = registry.split_once("://") {
            return Err(err(
                registry,
                format!(
                    "the registry is a URL: give it without the scheme (`{scheme}://`), e.g. `{rest}`"
                ),
            ));
        }
        check_tag(tag).map_err(|reason| err(tag, format!("the tag {reason}")))?;
        let full = format!("{registry}/kubemark:{tag}");
        let parsed = Self::parse(&full)?;
        Ok(parsed)
    }

    /// Parse a full reference such as `127.0.0.1:5000/kubemark:v1` or `busybox`.
    pub fn parse(input: &str) -> Result<Self, RefError> {
        if input.is_empty() {
            return Err(err(input, "it is empty"));
        }
        if let Some((scheme, rest)) = input.split_once("://") {
            return Err(err(
                input,
                format!(
                    "it is a URL: an image reference has no scheme (`{scheme}://`); write `{rest}` (registries on this machine are reached over plain HTTP without saying so)"
                ),
            ));
        }
        if let Some(c) = input.chars().find(|c| c.is_whitespace() || c.is_control()) {
            return Err(err(
                input,
                format!("it contains {c:?}; a reference has no spaces"),
            ));
        }
        if input.len() > 512 {
            return Err(err(
                input,
                format!("it is {} characters long (at most 512)", input.len()),
            ));
        }
        let (rest, digest) = match input.split_once('@') {
            Some((rest, digest)) => {
                check_digest(digest).map_err(|reason| err(input, reason))?;
                (rest, Some(digest.to_owned()))
            }
            None => (input, None),
        };
        // A tag is after the last ':' that comes after the last '/'.
        let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => {
                let i = last_slash + i;
                (&rest[..i], Some(&rest[i + 1..]))
            }
            None => (rest, None),
        };
        if let Some(tag) = tag {
            check_tag(tag).map_err(|reason| err(input, format!("the tag `{tag}` {reason}")))?;
        }
        if name.len() > 255 {
            return Err(err(input, "the name is longer than 255 characters"));
        }
        let mut parts = name.splitn(2, '/');
        let first = parts.next().unwrap_or_default();
        let (registry, path) = match parts.next() {
            Some(path) if looks_like_host(first) => {
                check_host(first).map_err(|reason| err(input, reason))?;
                (first.to_owned(), path.to_owned())
            }
            _ => (DOCKER_HUB.to_owned(), name.to_owned()),
        };
        for component in path.split('/') {
            check_path_component(component).map_err(|reason| err(input, reason))?;
        }
        Ok(Self {
            registry,
            repository: path,
            tag: tag.unwrap_or("latest").to_owned(),
            tag_given: tag.is_some(),
            digest,
        })
    }

    /// `registry/repository`, as the engine names the repository.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// The host that serves the registry's `/v2/` API.
    pub fn api_host(&self) -> &str {
        if self.registry == DOCKER_HUB {
            "registry-1.docker.io"
        } else {
            &self.registry
        }
    }

    /// The key under which `docker login` stores credentials for this registry.
    pub fn credential_key(&self) -> &str {
        if self.registry == DOCKER_HUB {
            "https://index.docker.io/v1/"
        } else {
            &self.registry
        }
    }

    /// The address of this machine the registry host stands for, if it does
    /// (`localhost`, `LOCALHOST`, `127.1`, `[::1]`, a name resolving to loopback).
    pub fn local_registry(&self) -> Option<crate::Local> {
        crate::local_address(host_without_port(&self.registry))
    }

    /// Whether the registry host is this machine.
    pub fn is_loopback_registry(&self) -> bool {
        self.local_registry().is_some()
    }

    /// The same reference pinned to `digest`.
    pub fn with_digest(&self, digest: &str) -> Self {
        Self {
            digest: Some(digest.to_owned()),
            ..self.clone()
        }
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if self.tag_given || self.digest.is_none() {
            write!(f, ":{}", self.tag)?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

/// The host part of `host[:port]`, keeping IPv6 brackets.
pub fn host_without_port(registry: &str) -> &str {
    if registry.starts_with('[') {
        return registry.split_once(']').map_or(registry, |(h, _)| h);
    }
    registry.split_once(':').map_or(registry, |(h, _)| h)
}

/// docker's rule: the first component is a registry host if it has a `.` or a `:`,
/// or is `localhost`; otherwise the reference is on the Docker Hub.
fn looks_like_host(first: &str) -> bool {
    first.contains('.') || first.contains(':') || first == "localhost" || first.starts_with('[')
}

fn check_host(host: &str) -> Result<(), String> {
    let (name, port) = if let Some(rest) = host.strip_prefix('[') {
        let (v6, after) = rest
            .split_once(']')
            .ok_or_else(|| format!("the registry host `{host}` has an unclosed `[`"))?;
        v6.parse::<std::net::Ipv6Addr>()
            .map_err(|_| format!("`{v6}` is not an IPv6 address"))?;
        (None, after.strip_prefix(':'))
    } else {
        match host.split_once(':') {
            Some((name, port)) => (Some(name), Some(port)),
            None => (Some(host), None),
        }
    };
    if let Some(name) = name {
        let ok = !name.is_empty()
            && name.split('.').all(|label| {
                !label.is_empty()
                    && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                    && !label.starts_with('-')
                    && !label.ends_with('-')
            });
        if !ok {
            return Err(format!(
                "the registry host `{name}` is not a host name or IP address"
            ));
        }
    }
    if let Some(port) = port
        && (port.is_empty() || port.parse::<u16>().is_err())
    {
        return Err(format!(
            "the registry port `{port}` is not a number 0-65535"
        ));
    }
    Ok(())
}

fn check_path_component(component: &str) -> Result<(), String> {
    const RULE: &str = "each part of a repository name is lowercase letters and digits, separated by `.`, `_`, `__` or dashes";
    let bytes = component.as_bytes();
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    if bytes.is_empty() {
        return Err(format!("the repository name has an empty part; {RULE}"));
    }
    if !alnum(bytes[0]) || !alnum(bytes[bytes.len() - 1]) {
        return Err(format!(
            "`{component}` must start and end with a lowercase letter or digit; {RULE}"
        ));
    }
    let mut i = 0;
    while i < bytes.len() {
        if alnum(bytes[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && !alnum(bytes[i]) {
            i += 1;
        }
        let sep = &component[start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|b| b == b'-');
        if !ok {
            return Err(format!("`{component}` has the separator `{sep}`; {RULE}"));
        }
    }
    Ok(())
}

/// A tag: `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`.
pub fn check_tag(tag: &str) -> Result<(), String> {
    const RULE: &str =
        "a tag is 1-128 letters, digits, `_`, `.` or `-`, and does not start with `.` or `-`";
    let word = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut chars = tag.chars();
    match chars.next() {
        None => return Err(format!("is empty; {RULE}")),
        Some(c) if !word(c) => return Err(format!("starts with `{c}`; {RULE}")),
        Some(_) => {}
    }
    if tag.len() > 128 {
        return Err(format!("is {} characters long; {RULE}", tag.len()));
    }
    if let Some(c) = chars.find(|&c| !(word(c) || c == '.' || c == '-')) {
        return Err(format!("contains `{c}`; {RULE}"));
    }
    Ok(())
}

fn check_digest(digest: &str) -> Result<(), String> {
    let ok = digest.strip_prefix("sha256:").is_some_and(|hex| {
        hex.len() == 64
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    });
    if ok {
        Ok(())
    } else {
        Err(format!(
            "the digest `{digest}` is not `sha256:` followed by 64 lowercase hex digits"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubemark_refs() {
        let r = ImageRef::kubemark("127.0.0.1:5000", "v1").unwrap();
        assert_eq!(r.to_string(), "127.0.0.1:5000/kubemark:v1");
        assert_eq!(r.registry, "127.0.0.1:5000");
        assert!(r.is_loopback_registry());

        let r = ImageRef::kubemark("gcr.io/my-project/", "v1.32.0-alpha.1").unwrap();
        assert_eq!(r.name(), "gcr.io/my-project/kubemark");
        assert_eq!(r.repository, "my-project/kubemark");
        assert!(!r.is_loopback_registry());

        let r = ImageRef::kubemark("someuser", "x").unwrap();
        assert_eq!(r.registry, DOCKER_HUB);
        assert_eq!(r.repository, "someuser/kubemark");
        assert_eq!(r.api_host(), "registry-1.docker.io");
        assert_eq!(r.credential_key(), "https://index.docker.io/v1/");

        assert!(
            ImageRef::kubemark("localhost:5000", "t")
                .unwrap()
                .is_loopback_registry()
        );
        assert!(
            ImageRef::kubemark("[::1]:5000", "t")
                .unwrap()
                .is_loopback_registry()
        );
    }

    #[test]
    fn bad_tags_say_why() {
        for (tag, why) in [
            ("", "is empty"),
            ("-x", "starts with `-`"),
            (".x", "starts with `.`"),
            ("v1/2", "contains `/`"),
            ("v1:2", "contains `:`"),
            ("a b", "contains ` `"),
        ] {
            let e = ImageRef::kubemark("r.io", tag).unwrap_err();
            assert!(e.to_string().contains(why), "{tag:?}: {e}");
        }
        let long = "a".repeat(129);
        assert!(ImageRef::kubemark("r.io", &long).is_err());
        assert!(ImageRef::kubemark("r.io", &"a".repeat(128)).is_ok());
    }

    #[test]
    fn bad_registries_say_why() {
        for (registry, why) in [
            ("-bad.io", "not a host name"),
            ("r.io:port", "port `port`"),
            ("r.io:99999", "port"),
            ("r.io//x", "empty part"),
            ("bad_host.io:5000", "not a host name"),
            ("r.io/UPPER", "lowercase"),
            ("r.io/a..b", "separator `..`"),
            (
                "http://x",
                "give it without the scheme (`http://`), e.g. `x`",
            ),
        ] {
            let e = ImageRef::kubemark(registry, "v1").unwrap_err();
            assert!(e.to_string().contains(why), "{registry:?}: {e}");
        }
    }

    #[test]
    fn bad_references_say_why() {
        for (input, why) in [
            ("Reg Istry/UP/kubemark:v1", "contains ' '"),
            ("http://r.io/kubemark:v1", "it is a URL"),
            ("r.io:99999/kubemark:v1", "port `99999`"),
            ("r.io/kubemark:-bad", "the tag `-bad` starts with `-`"),
            (
                "r.io/UP/kubemark:v1",
                "`UP` must start and end with a lowercase letter",
            ),
        ] {
            let e = ImageRef::parse(input).unwrap_err();
            assert!(e.to_string().contains(why), "{input:?}: {e}");
        }
        let long = format!("r.io/kubemark:{}", "a".repeat(200));
        let e = ImageRef::parse(&long).unwrap_err();
        assert!(e.to_string().contains("200 characters long"), "{e}");
    }

    #[test]
    fn parse_full_references() {
        let r = ImageRef::parse("busybox").unwrap();
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str(), r.tag.as_str()),
            (DOCKER_HUB, "busybox", "latest")
        );
        let r = ImageRef::parse("localhost:5000/a/b__c:1.0").unwrap();
        assert_eq!(r.registry, "localhost:5000");
        assert_eq!(r.repository, "a/b__c");
        assert_eq!(r.tag, "1.0");
        let digest = format!("sha256:{}", "a".repeat(64));
        let r = ImageRef::parse(&format!("r.io/x:t@{digest}")).unwrap();
        assert_eq!(r.digest.as_deref(), Some(digest.as_str()));
        assert_eq!(r.to_string(), format!("r.io/x:t@{digest}"));
        assert!(ImageRef::parse("r.io/x@sha256:abc").is_err());
        // A digest without a tag stays without one.
        let r = ImageRef::parse(&format!("r.io/kubemark@{digest}")).unwrap();
        assert_eq!(r.to_string(), format!("r.io/kubemark@{digest}"));
        assert_eq!(r.tag, "latest");
        // Records written before `tag_given` existed named their tag.
        let old: ImageRef =
            serde_json::from_str(r#"{"registry":"r.io","repository":"kubemark","tag":"v1"}"#)
                .unwrap();
        assert!(old.tag_given);
        assert_eq!(old.to_string(), "r.io/kubemark:v1");
        assert!(ImageRef::parse("").is_err());
    }
}
