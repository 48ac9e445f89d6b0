//! Routing: a path to the resource, namespace, name and subresource it is
//! about, and a method on that target to the verb it asks for.

use hyper::Method;

use super::request::Req;
use crate::meta::{self, RESOURCES, idx};

/// What the request is about, once routed.
#[derive(Debug, Clone)]
pub(super) struct Target {
    pub(super) res: usize,
    pub(super) ns: Option<String>,
    pub(super) name: Option<String>,
    pub(super) sub: Option<String>,
}

pub(super) fn route(segments: &[&str]) -> Option<Target> {
    let (group, version, rest) = match segments {
        ["api", "v1", rest @ ..] => ("", "v1", rest),
        ["apis", group, version, rest @ ..] => (*group, *version, rest),
        _ => return None,
    };
    let find = |plural: &str| meta::find(group, version, plural);
    let t = |res, ns: Option<&str>, name: Option<&str>, sub: Option<&str>| Target {
        res,
        ns: ns.map(str::to_owned),
        name: name.map(str::to_owned),
        sub: sub.map(str::to_owned),
    };
    match rest {
        [plural] => Some(t(find(plural)?, None, None, None)),
        ["namespaces", ns, sub] if group.is_empty() && matches!(*sub, "status" | "finalize") => {
            Some(t(idx::NAMESPACES, None, Some(ns), Some(sub)))
        }
        ["namespaces", ns, plural] if RESOURCES[find(plural)?].namespaced => {
            Some(t(find(plural)?, Some(ns), None, None))
        }
        ["namespaces", ns, plural, name] => Some(t(find(plural)?, Some(ns), Some(name), None)),
        ["namespaces", ns, plural, name, sub] => {
            Some(t(find(plural)?, Some(ns), Some(name), Some(sub)))
        }
        [plural, name] => Some(t(find(plural)?, None, Some(name), None)),
        [plural, name, sub] => Some(t(find(plural)?, None, Some(name), Some(sub))),
        _ => None,
    }
}

/// What a request asks to do, as RBAC and the fault rules name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Verb {
    Get,
    List,
    Watch,
    Create,
    Update,
    Patch,
    Delete,
    DeleteCollection,
}

impl Verb {
    /// The verb of `r` on `target`; `None` for a method the API does not serve.
    pub(super) fn of(r: &Req, target: &Target) -> Option<Verb> {
        let watch = matches!(r.q("watch"), Some("true" | "1"));
        Some(match (&r.method, target.name.is_some()) {
            (&Method::GET, _) if watch => Verb::Watch,
            (&Method::GET, true) => Verb::Get,
            (&Method::GET, false) => Verb::List,
            (&Method::POST, _) => Verb::Create,
            (&Method::PUT, _) => Verb::Update,
            (&Method::PATCH, _) => Verb::Patch,
            (&Method::DELETE, true) => Verb::Delete,
            (&Method::DELETE, false) => Verb::DeleteCollection,
            _ => return None,
        })
    }

    /// `get`, `list`, ...: the name in RBAC rules and `--faults` rules.
    pub(super) fn as_str(self) -> &'static str {
        match self {
            Verb::Get => "get",
            Verb::List => "list",
            Verb::Watch => "watch",
            Verb::Create => "create",
            Verb::Update => "update",
            Verb::Patch => "patch",
            Verb::Delete => "delete",
            Verb::DeleteCollection => "deletecollection",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        let t = route(&["api", "v1", "namespaces", "k", "pods", "p", "log"]).unwrap();
        assert_eq!(
            (t.res, t.ns.as_deref(), t.name.as_deref(), t.sub.as_deref()),
            (idx::PODS, Some("k"), Some("p"), Some("log"))
        );
        let t = route(&["api", "v1", "namespaces", "k"]).unwrap();
        assert_eq!((t.res, t.name.as_deref()), (idx::NAMESPACES, Some("k")));
        let t = route(&["api", "v1", "namespaces", "k", "status"]).unwrap();
        assert_eq!(
            (t.res, t.name.as_deref(), t.sub.as_deref()),
            (idx::NAMESPACES, Some("k"), Some("status"))
        );
        let t = route(&["api", "v1", "namespaces", "k", "secrets"]).unwrap();
        assert_eq!(
            (t.res, t.ns.as_deref(), t.name),
            (idx::SECRETS, Some("k"), None)
        );
        let t = route(&["api", "v1", "nodes"]).unwrap();
        assert_eq!((t.res, t.name), (idx::NODES, None));
        let t = route(&[
            "apis",
            "authorization.k8s.io",
            "v1",
            "selfsubjectaccessreviews",
        ])
        .unwrap();
        assert_eq!(t.res, idx::SSAR);
        assert!(route(&["api", "v1", "widgets"]).is_none());
    }
}
