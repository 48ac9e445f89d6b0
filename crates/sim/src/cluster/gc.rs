//! The garbage collector: dependents go with their owner. Background deletion
//! removes them after the owner; `foregroundDeletion` keeps the owner until
//! they are gone; `orphan` strips their owner references instead.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use serde_json::Value;

use super::{Feed, is_deleting, next, owners};
use crate::Shared;
use crate::meta::{self, RESOURCES};
use crate::store::ChangeType;

type Dependent = (usize, String, String);

#[derive(Default)]
struct Index {
    /// Owner uid → its dependents.
    dependents: HashMap<String, HashSet<Dependent>>,
    /// Dependent → the owner uids it names.
    owners_of: HashMap<Dependent, Vec<String>>,
    /// Uids of objects that exist.
    alive: HashSet<String>,
}

impl Index {
    fn forget(&mut self, dep: &Dependent) {
        for uid in self.owners_of.remove(dep).unwrap_or_default() {
            if let Some(set) = self.dependents.get_mut(&uid) {
                set.remove(dep);
                if set.is_empty() {
                    self.dependents.remove(&uid);
                }
            }
        }
    }

    fn add(&mut self, dep: Dependent, obj: &Value) {
        self.forget(&dep);
        let uids: Vec<String> = owners(obj).into_iter().map(|(uid, ..)| uid).collect();
        for uid in &uids {
            self.dependents
                .entry(uid.clone())
                .or_default()
                .insert(dep.clone());
        }
        if !uids.is_empty() {
            self.owners_of.insert(dep, uids);
        }
    }

    fn rebuild(shared: &Shared) -> Self {
        let mut index = Index::default();
        for res in (0..RESOURCES.len()).filter(|&r| RESOURCES[r].stored) {
            for obj in shared.store.list(res, None).0 {
                let v = &obj.value;
                index
                    .alive
                    .insert(meta::meta_str(v, "uid").unwrap_or_default().to_owned());
                index.add(
                    (res, meta::namespace(v).to_owned(), meta::name(v).to_owned()),
                    v,
                );
            }
        }
        index
    }
}

fn has_finalizer(obj: &Value, f: &str) -> bool {
    obj.pointer("/metadata/finalizers")
        .and_then(Value::as_array)
        .is_some_and(|l| l.iter().any(|x| x == f))
}

fn remove_finalizer(shared: &Shared, res: usize, obj: &Value, f: &str) {
    let _ = shared
        .store
        .modify(res, meta::namespace(obj), meta::name(obj), None, |v| {
            if let Some(Value::Array(list)) = v.pointer_mut("/metadata/finalizers") {
                list.retain(|x| x != f);
            }
            Ok(())
        });
}

/// Act on an owner: delete its dependents (gone or foreground), or orphan them.
fn process_owner(shared: &Shared, index: &Index, res: usize, obj: &Value, gone: bool) {
    let uid = meta::meta_str(obj, "uid").unwrap_or_default();
    let deps: Vec<Dependent> = index
        .dependents
        .get(uid)
        .into_iter()
        .flatten()
        .cloned()
        .collect();
    if !gone && has_finalizer(obj, "orphan") {
        for (dres, dns, dname) in &deps {
            let _ = shared.store.modify(*dres, dns, dname, None, |v| {
                if let Some(Value::Array(refs)) = v.pointer_mut("/metadata/ownerReferences") {
                    refs.retain(|r| r["uid"] != uid);
                }
                Ok(())
            });
        }
        remove_finalizer(shared, res, obj, "orphan");
        return;
    }
    let foreground = !gone && has_finalizer(obj, "foregroundDeletion");
    if !gone && !foreground {
        return;
    }
    for (dres, dns, dname) in &deps {
        // A dependent with another living owner stays.
        let others_alive = index
            .owners_of
            .get(&(*dres, dns.clone(), dname.clone()))
            .is_some_and(|uids| uids.iter().any(|u| u != uid && index.alive.contains(u)));
        if !others_alive {
            let policy = if foreground {
                "Foreground"
            } else {
                "Background"
            };
            let _ = crate::http::delete_with_policy(shared, *dres, dns, dname, policy, None);
        }
    }
    if foreground && deps.is_empty() {
        remove_finalizer(shared, res, obj, "foregroundDeletion");
    }
}

pub async fn run(shared: Arc<Shared>) {
    let mut rx = shared.store.subscribe();
    let mut index = Index::rebuild(&shared);
    loop {
        let change = match next(&mut rx, None).await {
            Some(Feed::Change(c)) => c,
            Some(Feed::Resync) => {
                index = Index::rebuild(&shared);
                for res in (0..RESOURCES.len()).filter(|&r| RESOURCES[r].stored) {
                    for obj in shared
                        .store
                        .list(res, None)
                        .0
                        .iter()
                        .filter(|o| is_deleting(&o.value))
                    {
                        process_owner(&shared, &index, res, &obj.value, false);
                    }
                }
                continue;
            }
            Some(Feed::Closed) | None => return,
        };
        let v = &change.obj.value;
        let uid = meta::meta_str(v, "uid").unwrap_or_default().to_owned();
        let dep = (
            change.res,
            meta::namespace(v).to_owned(),
            meta::name(v).to_owned(),
        );
        match change.kind {
            ChangeType::Deleted => {
                index.alive.remove(&uid);
                let owner_uids = index.owners_of.get(&dep).cloned().unwrap_or_default();
                index.forget(&dep);
                process_owner(&shared, &index, change.res, v, true);
                // A foreground owner waiting for this dependent may be done now.
                for owner_uid in owner_uids {
                    if index.dependents.contains_key(&owner_uid) {
                        continue;
                    }
                    for (ores, oname, _, _) in owners(v)
                        .into_iter()
                        .filter(|(u, ..)| *u == owner_uid)
                        .filter_map(|(_, kind, name, c)| {
                            let res = RESOURCES.iter().position(|r| r.kind == kind)?;
                            Some((res, name, kind, c))
                        })
                    {
                        let ns = if RESOURCES[ores].namespaced {
                            dep.1.clone()
                        } else {
                            String::new()
                        };
                        if let Some(owner) = shared.store.get(ores, &ns, &oname)
                            && meta::meta_str(&owner.value, "uid") == Some(owner_uid.as_str())
                        {
                            process_owner(&shared, &index, ores, &owner.value, false);
                        }
                    }
                }
            }
            ChangeType::Added | ChangeType::Modified => {
                index.alive.insert(uid);
                index.add(dep.clone(), v);
                // Created for an owner that is already gone: collect it too.
                let named = owners(v);
                if change.kind == ChangeType::Added
                    && !named.is_empty()
                    && named.iter().all(|(u, ..)| !index.alive.contains(u))
                {
                    let _ = crate::http::delete_with_policy(
                        &shared,
                        dep.0,
                        &dep.1,
                        &dep.2,
                        "Background",
                        None,
                    );
                    continue;
                }
                if is_deleting(v) {
                    process_owner(&shared, &index, change.res, v, false);
                }
            }
        }
    }
}
