//! Events, as controllers and kubelets record them: the same reason and
//! message on the same object counts up instead of adding an event.

use serde_json::{Value, json};

use super::lock;
use crate::Shared;
use crate::meta::{self, idx};

/// Record an event about `involved` from `component` (on `host`, for kubelets).
pub fn record(
    shared: &Shared,
    involved: &Value,
    kind: &str,
    reason: &str,
    message: &str,
    component: &str,
    host: Option<&str>,
) {
    let uid = meta::meta_str(involved, "uid")
        .unwrap_or_default()
        .to_owned();
    let ns = match meta::namespace(involved) {
        "" => "default".to_owned(),
        ns => ns.to_owned(),
    };
    let key = (uid.clone(), reason.to_owned(), message.to_owned());
    let now = meta::now_rfc3339();
    let existing = lock(&shared.runtime.events).get(&key).cloned();
    if let Some((ens, ename)) = existing {
        let bumped = shared.store.modify(idx::EVENTS, &ens, &ename, None, |e| {
            let count = e["count"].as_i64().unwrap_or(1);
            e["count"] = json!(count + 1);
            e["lastTimestamp"] = json!(now);
            Ok(())
        });
        if bumped.is_ok() {
            return;
        }
    }
    let name = format!(
        "{}.{:x}",
        meta::name(involved),
        jiff::Timestamp::now().as_nanosecond()
    );
    let mut source = json!({"component": component});
    if let Some(host) = host {
        source["host"] = json!(host);
    }
    let event = json!({
        "metadata": {"name": name, "namespace": ns},
        "involvedObject": {
            "kind": involved["kind"],
            "namespace": meta::namespace(involved),
            "name": meta::name(involved),
            "uid": uid,
            "apiVersion": involved["apiVersion"],
            "resourceVersion": meta::meta_str(involved, "resourceVersion"),
        },
        "reason": reason,
        "message": message,
        "source": source,
        "firstTimestamp": now,
        "lastTimestamp": now,
        "count": 1,
        "type": kind,
        "reportingComponent": component,
        "reportingInstance": host.unwrap_or_default(),
    });
    if shared.store.create(idx::EVENTS, event).is_ok() {
        lock(&shared.runtime.events).insert(key, (ns, name));
    }
}
