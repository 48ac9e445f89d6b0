//! Namespace termination: a deleted namespace is `Terminating` until its
//! contents are gone; then its `kubernetes` finalizer is removed and it goes.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};

use super::{Feed, is_deleting, next};
use crate::Shared;
use crate::meta::{self, RESOURCES, idx};

fn terminating(shared: &Shared) -> BTreeSet<String> {
    shared
        .store
        .list(idx::NAMESPACES, None)
        .0
        .iter()
        .filter(|n| is_deleting(&n.value))
        .map(|n| meta::name(&n.value).to_owned())
        .collect()
}

/// Delete what is left in `ns`; finalize it when nothing is. True when done.
fn finish(shared: &Shared, ns: &str) -> bool {
    let namespaced: Vec<usize> = (0..RESOURCES.len())
        .filter(|&r| RESOURCES[r].namespaced && RESOURCES[r].stored)
        .collect();
    for &res in &namespaced {
        for obj in shared.store.list(res, Some(ns)).0 {
            if !is_deleting(&obj.value) {
                let _ = crate::http::delete_with_policy(
                    shared,
                    res,
                    ns,
                    meta::name(&obj.value),
                    "Background",
                    None,
                );
            }
        }
    }
    let left: usize = namespaced
        .iter()
        .map(|&res| shared.store.list(res, Some(ns)).0.len())
        .sum();
    if left > 0 {
        return false;
    }
    let _ = shared.store.modify(idx::NAMESPACES, "", ns, None, |v| {
        if let Some(Value::Array(f)) = v.pointer_mut("/spec/finalizers") {
            f.retain(|x| x != "kubernetes");
        }
        v["status"] = json!({"phase": "Terminating"});
        Ok(())
    });
    true
}

pub async fn run(shared: Arc<Shared>) {
    let mut rx = shared.store.subscribe();
    let mut pending = terminating(&shared);
    loop {
        pending.retain(|ns| !finish(&shared, ns));
        let wait = (!pending.is_empty()).then_some(Duration::from_millis(200));
        match next(&mut rx, wait).await {
            Some(Feed::Closed) => return,
            Some(Feed::Resync) => pending = terminating(&shared),
            Some(Feed::Change(c)) if c.res == idx::NAMESPACES && is_deleting(&c.obj.value) => {
                pending.insert(meta::name(&c.obj.value).to_owned());
            }
            Some(Feed::Change(_)) | None => {}
        }
    }
}
