//! Whether a host names this machine itself, read as the resolver reads it.
//!
//! A kubeconfig server or a registry host can spell this machine in many ways:
//! `LOCALHOST`, `localhost.`, `0.0.0.0`, `[::]`, `[::ffff:127.0.0.1]`, and the
//! short and numeric IPv4 forms that `inet_aton` (and so `getaddrinfo`, curl and
//! Go's resolver on Linux) accepts: `127.1`, `2130706433`, `0x7f000001`,
//! `0177.0.0.1`. Names are resolved. Each is reported with the address it
//! stands for, so an error can say "`127.1` is 127.0.0.1".

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, ToSocketAddrs};
use std::time::Duration;

/// A host that stands for this machine: what was written and what it means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Local {
    /// The host as given (brackets and case kept).
    pub host: String,
    /// The loopback or unspecified address it stands for.
    pub address: IpAddr,
    /// `true` when a name resolved to it (rather than a literal or `localhost`).
    pub resolved: bool,
}

impl std::fmt::Display for Local {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let literal = self.host.trim_start_matches('[').trim_end_matches(']');
        let unspecified = match self.address {
            IpAddr::V4(a) => a.is_unspecified(),
            IpAddr::V6(a) => {
                a.is_unspecified() || a.to_ipv4_mapped().is_some_and(|v4| v4.is_unspecified())
            }
        };
        if literal == self.address.to_string() {
            if unspecified {
                write!(f, "{} (the unspecified address: this machine)", self.host)
            } else {
                write!(f, "{} (a loopback address)", self.host)
            }
        } else if self.resolved {
            write!(f, "{} (resolves to {})", self.host, self.address)
        } else {
            write!(f, "{} (that is {})", self.host, self.address)
        }
    }
}

/// How long a name may take to resolve before it is taken as not local.
const RESOLVE_LIMIT: Duration = Duration::from_secs(3);

/// The address of this machine that `host` stands for, if it stands for one:
/// a loopback address (127.0.0.0/8, `::1`), the unspecified address (`0.0.0.0`,
/// `::`, which Linux connects to the machine itself), an IPv4-mapped form of
/// either, `localhost` and `*.localhost` in any case with or without the final
/// dot, or a name that resolves to one of these.
pub fn local_address(host: &str) -> Option<Local> {
    let found = |address: IpAddr, resolved: bool| Local {
        host: host.to_owned(),
        address,
        resolved,
    };
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let bare = bare.strip_suffix('.').unwrap_or(bare).to_ascii_lowercase();
    if bare.is_empty() {
        return None;
    }
    if let Some(ip) = literal(&bare) {
        return is_local(ip).then(|| found(ip, false));
    }
    if bare == "localhost" || bare.ends_with(".localhost") {
        return Some(found(IpAddr::V4(Ipv4Addr::LOCALHOST), false));
    }
    resolve(&bare)
        .into_iter()
        .find(|ip| is_local(*ip))
        .map(|ip| found(ip, true))
}

/// An IP literal as the resolver reads it: IPv6, or IPv4 in `inet_aton`'s forms.
pub fn literal(host: &str) -> Option<IpAddr> {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(v6) = bare.parse::<Ipv6Addr>() {
        return Some(IpAddr::V6(v6));
    }
    inet_aton(bare).map(IpAddr::V4)
}

fn is_local(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback() || v4.is_unspecified(),
        IpAddr::V6(v6) => {
            v6.is_loopback()
                || v6.is_unspecified()
                || v6
                    .to_ipv4_mapped()
                    .is_some_and(|v4| v4.is_loopback() || v4.is_unspecified())
        }
    }
}

/// `a`, `a.b`, `a.b.c` or `a.b.c.d`, each part decimal, octal (leading `0`) or
/// hex (`0x`); the last part fills the bytes that remain.
fn inet_aton(text: &str) -> Option<Ipv4Addr> {
    let parts: Vec<&str> = text.split('.').collect();
    if parts.len() > 4 {
        return None;
    }
    let numbers: Vec<u64> = parts.iter().map(|p| number(p)).collect::<Option<_>>()?;
    let (last, head) = numbers.split_last()?;
    if head.iter().any(|&n| n > 255) {
        return None;
    }
    let last_bits = 8 * (4 - head.len() as u32);
    if *last >= 1u64 << last_bits {
        return None;
    }
    let mut value = *last;
    for (i, n) in head.iter().enumerate() {
        value |= n << (24 - 8 * i as u32);
    }
    Some(Ipv4Addr::from(u32::try_from(value).ok()?))
}

fn number(part: &str) -> Option<u64> {
    let (digits, radix) =
        if let Some(hex) = part.strip_prefix("0x").or_else(|| part.strip_prefix("0X")) {
            (hex, 16)
        } else if part.len() > 1 && part.starts_with('0') {
            (&part[1..], 8)
        } else {
            (part, 10)
        };
    if digits.is_empty() || digits.len() > 12 || !digits.chars().all(|c| c.is_digit(radix)) {
        return None;
    }
    u64::from_str_radix(digits, radix).ok()
}

/// The addresses a name resolves to; none when it does not resolve in time.
fn resolve(name: &str) -> Vec<IpAddr> {
    let valid = name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    if !valid {
        return Vec::new();
    }
    let (tx, rx) = std::sync::mpsc::channel();
    let owned = name.to_owned();
    std::thread::spawn(move || {
        let found: Vec<IpAddr> = (owned.as_str(), 0)
            .to_socket_addrs()
            .map(|addrs| addrs.map(|a| a.ip()).collect())
            .unwrap_or_default();
        let _ = tx.send(found);
    });
    rx.recv_timeout(RESOLVE_LIMIT).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_spelling_of_this_machine_is_local() {
        for (host, address) in [
            ("localhost", "127.0.0.1"),
            ("LOCALHOST", "127.0.0.1"),
            ("localhost.", "127.0.0.1"),
            ("Api.LocalHost", "127.0.0.1"),
            ("127.0.0.1", "127.0.0.1"),
            ("127.0.0.2", "127.0.0.2"),
            ("127.1", "127.0.0.1"),
            ("127.0.1", "127.0.0.1"),
            ("2130706433", "127.0.0.1"),
            ("0x7f000001", "127.0.0.1"),
            ("0X7F.1", "127.0.0.1"),
            ("0177.0.0.1", "127.0.0.1"),
            ("0.0.0.0", "0.0.0.0"),
            ("0", "0.0.0.0"),
            ("[::1]", "::1"),
            ("[::]", "::"),
            ("::", "::"),
            ("[::ffff:127.0.0.1]", "::ffff:127.0.0.1"),
            ("[::ffff:0.0.0.0]", "::ffff:0.0.0.0"),
        ] {
            let local = local_address(host).unwrap_or_else(|| panic!("{host} is local"));
            assert_eq!(local.address.to_string(), address, "{host}");
            assert_eq!(local.host, host);
        }
        assert_eq!(
            local_address("127.1").unwrap().to_string(),
            "127.1 (that is 127.0.0.1)"
        );
        assert_eq!(
            local_address("127.0.0.1").unwrap().to_string(),
            "127.0.0.1 (a loopback address)"
        );
        assert_eq!(
            local_address("[::]").unwrap().to_string(),
            "[::] (the unspecified address: this machine)"
        );
    }

    #[test]
    fn other_hosts_are_not() {
        for host in [
            "10.1.2.3",
            "128.0.0.1",
            "1.2.3.4",
            "[2001:db8::1]",
            "[::ffff:10.0.0.1]",
            "gcr.io",
            "registry.invalid",
            "localhost-not",
            "notlocalhost",
            "256.0.0.1",
            "127.0.0.0.1",
            "0x",
            "",
            "08.0.0.1",
        ] {
            assert_eq!(local_address(host), None, "{host}");
        }
    }

    #[test]
    fn a_name_that_resolves_to_loopback_is_local() {
        // /etc/hosts maps `localhost` on every Linux; `ip6-localhost` on Debian.
        // A name through the resolver, not the `localhost` rule:
        let addrs = resolve("localhost");
        assert!(addrs.iter().any(|a| a.is_loopback()), "{addrs:?}");
    }

    #[test]
    fn inet_aton_forms() {
        assert_eq!(inet_aton("1.2.3.4"), Some(Ipv4Addr::new(1, 2, 3, 4)));
        assert_eq!(inet_aton("1.2.772"), Some(Ipv4Addr::new(1, 2, 3, 4)));
        assert_eq!(inet_aton("1.131844"), Some(Ipv4Addr::new(1, 2, 3, 4)));
        assert_eq!(inet_aton("1.2.3.256"), None);
        assert_eq!(inet_aton("4294967296"), None);
        assert_eq!(inet_aton("4294967295"), Some(Ipv4Addr::BROADCAST));
        assert_eq!(inet_aton("a.b.c.d"), None);
    }
}
