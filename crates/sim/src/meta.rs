//! The API's vocabulary: the resources the simulator serves, timestamps as the
//! API writes them, and small accessors on JSON objects.

use serde_json::{Map, Value, json};

/// One resource the simulator serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resource {
    pub group: &'static str,
    pub version: &'static str,
    pub plural: &'static str,
    pub singular: &'static str,
    pub kind: &'static str,
    pub namespaced: bool,
    pub short_names: &'static [&'static str],
    pub subresources: &'static [&'static str],
    /// Create-only review resources (SelfSubjectAccessReview) are not stored.
    pub stored: bool,
}

impl Resource {
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_owned()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    pub fn list_kind(&self) -> String {
        format!("{}List", self.kind)
    }
}

const fn core(
    plural: &'static str,
    singular: &'static str,
    kind: &'static str,
    namespaced: bool,
    short_names: &'static [&'static str],
    subresources: &'static [&'static str],
) -> Resource {
    Resource {
        group: "",
        version: "v1",
        plural,
        singular,
        kind,
        namespaced,
        short_names,
        subresources,
        stored: true,
    }
}

/// Index of each resource in [`RESOURCES`]; the store keeps one table per index.
pub mod idx {
    pub const NAMESPACES: usize = 0;
    pub const SECRETS: usize = 1;
    pub const CONFIGMAPS: usize = 2;
    pub const PODS: usize = 3;
    pub const NODES: usize = 4;
    pub const RCS: usize = 5;
    pub const EVENTS: usize = 6;
    pub const SSAR: usize = 7;
    pub const LEASES: usize = 8;
    pub const DAEMONSETS: usize = 9;
}

/// Everything served. Core v1 first, then the groups.
pub static RESOURCES: [Resource; 10] = [
    core(
        "namespaces",
        "namespace",
        "Namespace",
        false,
        &["ns"],
        &["status"],
    ),
    core("secrets", "secret", "Secret", true, &[], &[]),
    core("configmaps", "configmap", "ConfigMap", true, &["cm"], &[]),
    core("pods", "pod", "Pod", true, &["po"], &["status", "log"]),
    core("nodes", "node", "Node", false, &["no"], &["status"]),
    core(
        "replicationcontrollers",
        "replicationcontroller",
        "ReplicationController",
        true,
        &["rc"],
        &["status", "scale"],
    ),
    core("events", "event", "Event", true, &["ev"], &[]),
    Resource {
        group: "authorization.k8s.io",
        version: "v1",
        plural: "selfsubjectaccessreviews",
        singular: "selfsubjectaccessreview",
        kind: "SelfSubjectAccessReview",
        namespaced: false,
        short_names: &[],
        subresources: &[],
        stored: false,
    },
    Resource {
        group: "coordination.k8s.io",
        version: "v1",
        plural: "leases",
        singular: "lease",
        kind: "Lease",
        namespaced: true,
        short_names: &[],
        subresources: &[],
        stored: true,
    },
    // Stored and served, with no controller: what the doctor reads on a master.
    Resource {
        group: "apps",
        version: "v1",
        plural: "daemonsets",
        singular: "daemonset",
        kind: "DaemonSet",
        namespaced: true,
        short_names: &["ds"],
        subresources: &["status"],
        stored: true,
    },
];

/// The groups besides core, for `/apis`.
pub static GROUPS: [&str; 3] = ["apps", "authorization.k8s.io", "coordination.k8s.io"];

pub fn find(group: &str, version: &str, plural: &str) -> Option<usize> {
    RESOURCES
        .iter()
        .position(|r| r.group == group && r.version == version && r.plural == plural)
}

/// Seconds since the epoch, now.
pub fn now_secs() -> i64 {
    jiff::Timestamp::now().as_second()
}

/// `2026-11-25T22:37:36Z` for a Unix time.
pub fn rfc3339(secs: i64) -> String {
    jiff::Timestamp::from_second(secs)
        .unwrap_or_default()
        .to_string()
}

pub fn now_rfc3339() -> String {
    rfc3339(now_secs())
}

/// Now as a `MicroTime` writes it: `2026-11-25T22:37:36.123456Z`.
pub fn now_rfc3339_micros() -> String {
    format!("{:.6}", jiff::Timestamp::now())
}

/// The Unix time of an RFC 3339 timestamp (fractions are dropped).
pub fn parse_rfc3339(s: &str) -> Option<i64> {
    s.parse::<jiff::Timestamp>().ok().map(|t| t.as_second())
}

/// kubectl's (apimachinery's) `HumanDuration`.
pub fn human_duration(secs: i64) -> String {
    let s = secs.max(0);
    if s < 120 {
        return format!("{s}s");
    }
    let m = s / 60;
    if m < 10 {
        let rs = s % 60;
        return if rs == 0 {
            format!("{m}m")
        } else {
            format!("{m}m{rs}s")
        };
    }
    if m < 180 {
        return format!("{m}m");
    }
    let h = s / 3600;
    if h < 8 {
        let rm = m % 60;
        return if rm == 0 {
            format!("{h}h")
        } else {
            format!("{h}h{rm}m")
        };
    }
    if h < 48 {
        return format!("{h}h");
    }
    if h < 192 {
        let rh = h % 24;
        let d = h / 24;
        return if rh == 0 {
            format!("{d}d")
        } else {
            format!("{d}d{rh}h")
        };
    }
    if h < 24 * 365 * 2 {
        return format!("{}d", h / 24);
    }
    let y = h / 24 / 365;
    if h < 24 * 365 * 8 {
        let dy = (h / 24) % 365;
        return if dy == 0 {
            format!("{y}y")
        } else {
            format!("{y}y{dy}d")
        };
    }
    format!("{y}y")
}

/// `obj.metadata.<field>` as a string.
pub fn meta_str<'a>(obj: &'a Value, field: &str) -> Option<&'a str> {
    obj.get("metadata")?.get(field)?.as_str()
}

pub fn name(obj: &Value) -> &str {
    meta_str(obj, "name").unwrap_or_default()
}

pub fn namespace(obj: &Value) -> &str {
    meta_str(obj, "namespace").unwrap_or_default()
}

/// The object's `metadata` map, created if absent.
pub fn metadata_mut(obj: &mut Value) -> &mut Map<String, Value> {
    if !obj.is_object() {
        *obj = Value::Object(Map::new());
    }
    let Value::Object(root) = obj else {
        unreachable!("made an object above")
    };
    let entry = root.entry("metadata").or_insert_with(|| json!({}));
    if !entry.is_object() {
        *entry = json!({});
    }
    let Value::Object(meta) = entry else {
        unreachable!("made an object above")
    };
    meta
}

/// Labels of an object, empty when none.
pub fn labels(obj: &Value) -> impl Iterator<Item = (&str, &str)> {
    obj.get("metadata")
        .and_then(|m| m.get("labels"))
        .and_then(Value::as_object)
        .into_iter()
        .flat_map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.as_str(), v.as_str()?)))
        })
}

pub fn label<'a>(obj: &'a Value, key: &str) -> Option<&'a str> {
    obj.get("metadata")?.get("labels")?.get(key)?.as_str()
}

/// A `Status` failure object, as the API returns for errors.
pub fn status(code: u16, reason: &str, message: &str, details: Option<Value>) -> Value {
    let mut s = json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    });
    if let Some(details) = details {
        s["details"] = details;
    }
    s
}

/// A random-looking suffix of `n` lowercase consonants and digits, as generateName uses.
pub fn random_suffix(rng: &mut crate::faults::Rng, n: usize) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    (0..n)
        .map(|_| ALPHABET[(rng.next_u64() % ALPHABET.len() as u64) as usize] as char)
        .collect()
}

/// A UUID-shaped unique id.
pub fn uid(rng: &mut crate::faults::Rng) -> String {
    let a = rng.next_u64();
    let b = rng.next_u64();
    format!(
        "{:08x}-{:04x}-4{:03x}-a{:03x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0xfff,
        b >> 52,
        b & 0xffff_ffff_ffff
    )
}

/// A Kubernetes quantity (`100m`, `1Gi`, `50M`, `2`) in milli-units, by the
/// one parser the tool uses everywhere (`kubemark_contract::Quantity`).
pub fn quantity_milli(q: &str) -> Option<i128> {
    kubemark_contract::Quantity::parse(q)
        .ok()
        .map(|q| q.milli())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_round_trip() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_795_000_000), "2026-11-18T11:06:40Z");
        assert_eq!(parse_rfc3339("2026-11-18T11:06:40Z"), Some(1_795_000_000));
        assert_eq!(
            parse_rfc3339("2024-02-29T12:00:00Z")
                .map(rfc3339)
                .as_deref(),
            Some("2024-02-29T12:00:00Z")
        );
        assert_eq!(
            parse_rfc3339("2026-11-18T11:06:40.123456Z"),
            Some(1_795_000_000)
        );
        assert_eq!(parse_rfc3339("yesterday"), None);
        let micros = now_rfc3339_micros();
        assert_eq!((micros.len(), &micros[19..20]), (27, "."), "{micros}");
    }

    #[test]
    fn durations_read_like_kubectl() {
        assert_eq!(human_duration(5), "5s");
        assert_eq!(human_duration(125), "2m5s");
        assert_eq!(human_duration(600), "10m");
        assert_eq!(human_duration(3 * 3600 + 60), "3h1m");
        assert_eq!(human_duration(10 * 3600), "10h");
        assert_eq!(human_duration(3 * 86400 + 3600), "3d1h");
        assert_eq!(human_duration(20 * 86400), "20d");
    }

    #[test]
    fn quantities() {
        assert_eq!(quantity_milli("20m"), Some(20));
        assert_eq!(quantity_milli("2"), Some(2000));
        assert_eq!(quantity_milli("50M"), Some(50_000_000_000));
        assert_eq!(quantity_milli("1Ki"), Some(1_024_000));
        assert_eq!(quantity_milli("102400Ki"), Some(104_857_600_000));
        assert_eq!(quantity_milli("0.5"), Some(500));
        assert_eq!(quantity_milli("x"), None);
    }
}
