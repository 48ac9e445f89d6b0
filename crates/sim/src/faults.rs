//! Faults the simulator injects on purpose, reproducibly from a seed: errors
//! by verb and resource (500, 503, 429 with `Retry-After`), added latency,
//! watch streams cut after N events or T seconds. (Compaction, which makes an
//! old `resourceVersion` answer 410, is the store's `history` setting.)

use std::sync::Mutex;
use std::time::Duration;

/// splitmix64: small, fast, reproducible.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A float in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// One error-injection rule: requests matching `verb` and `resource` fail with
/// `code` with probability `probability`.
#[derive(Debug, Clone, PartialEq)]
pub struct ErrorRule {
    /// `get`, `list`, `watch`, `create`, `update`, `patch`, `delete`, `deletecollection`, or `*`.
    pub verb: String,
    /// A plural resource name (`pods`), or `*`.
    pub resource: String,
    /// 500, 503 or 429.
    pub code: u16,
    pub probability: f64,
}

/// What to inject.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Faults {
    pub errors: Vec<ErrorRule>,
    /// Added to every request before it is served.
    pub latency: Duration,
    /// End every watch stream after this many events.
    pub watch_max_events: Option<usize>,
    /// End every watch stream after this long.
    pub watch_max_duration: Option<Duration>,
    /// Seed of the random choices.
    pub seed: u64,
}

impl Faults {
    /// The error rules of `--faults`-style text: `verb:resource:code:probability,...`,
    /// e.g. `*:*:500:0.05,*:*:429:0.05`.
    pub fn parse_errors(text: &str) -> Result<Vec<ErrorRule>, String> {
        text.split(',')
            .filter(|s| !s.trim().is_empty())
            .map(|rule| {
                let parts: Vec<&str> = rule.trim().split(':').collect();
                let [verb, resource, code, probability] = parts.as_slice() else {
                    return Err(format!("`{rule}`: expected verb:resource:code:probability"));
                };
                let code: u16 = code
                    .parse()
                    .map_err(|_| format!("`{rule}`: bad status code"))?;
                if ![429, 500, 503].contains(&code) {
                    return Err(format!("`{rule}`: the code must be 429, 500 or 503"));
                }
                let probability: f64 = probability
                    .parse()
                    .map_err(|_| format!("`{rule}`: bad probability"))?;
                if !(0.0..=1.0).contains(&probability) {
                    return Err(format!("`{rule}`: the probability must be between 0 and 1"));
                }
                Ok(ErrorRule {
                    verb: (*verb).to_owned(),
                    resource: (*resource).to_owned(),
                    code,
                    probability,
                })
            })
            .collect()
    }
}

/// The faults in effect, with their random source. The error rules can be
/// changed while the simulator serves ([`Injector::set_errors`]), so a test can
/// break a server halfway through a run.
#[derive(Debug)]
pub struct Injector {
    /// The faults given at start; `faults.errors` is only the initial rule set.
    pub faults: Faults,
    errors: std::sync::RwLock<Vec<ErrorRule>>,
    rng: Mutex<Rng>,
}

impl Injector {
    pub fn new(faults: Faults) -> Self {
        let rng = Mutex::new(Rng::new(faults.seed ^ 0x6661_756c_7473));
        let errors = std::sync::RwLock::new(faults.errors.clone());
        Self {
            faults,
            errors,
            rng,
        }
    }

    /// Replace the error rules from now on (an empty list stops injecting errors).
    pub fn set_errors(&self, rules: Vec<ErrorRule>) {
        *self
            .errors
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = rules;
    }

    /// The status code to fail this request with, if any.
    pub fn error_for(&self, verb: &str, resource: &str) -> Option<u16> {
        let rules = self
            .errors
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for rule in rules.iter() {
            let matches = (rule.verb == "*" || rule.verb == verb)
                && (rule.resource == "*" || rule.resource == resource);
            if matches {
                let roll = self
                    .rng
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .unit();
                if roll < rule.probability {
                    return Some(rule.code);
                }
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_parse_and_fire_reproducibly() {
        let rules = Faults::parse_errors("*:*:500:0.5, list:pods:429:1").unwrap();
        assert_eq!(rules.len(), 2);
        assert!(Faults::parse_errors("get:pods:404:1").is_err());
        assert!(Faults::parse_errors("get:pods:500").is_err());
        let faults = Faults {
            errors: rules,
            seed: 7,
            ..Faults::default()
        };
        let a: Vec<_> = {
            let i = Injector::new(faults.clone());
            (0..100).map(|_| i.error_for("get", "nodes")).collect()
        };
        let b: Vec<_> = {
            let i = Injector::new(faults.clone());
            (0..100).map(|_| i.error_for("get", "nodes")).collect()
        };
        assert_eq!(a, b, "same seed, same faults");
        let failures = a.iter().filter(|x| x.is_some()).count();
        assert!((30..70).contains(&failures), "{failures}");
        let i = Injector::new(faults);
        assert_eq!(
            i.error_for("list", "pods").map(|c| c == 500 || c == 429),
            Some(true)
        );
        i.set_errors(Vec::new());
        assert_eq!(
            i.error_for("list", "pods"),
            None,
            "rules replaced at run time"
        );
    }
}
