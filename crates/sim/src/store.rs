//! The object store: one table per resource, a cluster-wide increasing
//! `resourceVersion`, a bounded history of changes per resource (older
//! versions are "compacted": watching from them answers 410 Gone), and a
//! broadcast of every change to watchers and controllers.
//!
//! Objects are kept as JSON values and, serialized once per write, as bytes:
//! lists and watch events are written from the bytes.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use serde_json::{Value, json};
use tokio::sync::broadcast;

use crate::faults::Rng;
use crate::meta::{self, RESOURCES, idx};

/// A stored object.
#[derive(Debug)]
pub struct Object {
    pub value: Value,
    pub json: Bytes,
    pub rv: u64,
}

pub type Obj = Arc<Object>;

impl Object {
    fn new(mut value: Value, rv: u64) -> Obj {
        meta::metadata_mut(&mut value)
            .insert("resourceVersion".into(), Value::String(rv.to_string()));
        let json = Bytes::from(serde_json::to_vec(&value).unwrap_or_default());
        Arc::new(Self { value, json, rv })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeType {
    Added,
    Modified,
    Deleted,
}

impl ChangeType {
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeType::Added => "ADDED",
            ChangeType::Modified => "MODIFIED",
            ChangeType::Deleted => "DELETED",
        }
    }
}

/// One change, as watchers see it.
#[derive(Debug)]
pub struct Change {
    pub res: usize,
    pub kind: ChangeType,
    pub obj: Obj,
    /// The object before the change (none for ADDED).
    pub old: Option<Obj>,
}

/// An API error, rendered as a `Status`.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
    pub details: Option<Value>,
}

impl ApiError {
    pub fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            reason,
            message: message.into(),
            details: None,
        }
    }

    pub fn not_found(res: usize, name: &str) -> Self {
        let r = &RESOURCES[res];
        Self {
            code: 404,
            reason: "NotFound",
            message: format!("{} \"{name}\" not found", qualified(r)),
            details: Some(json!({"name": name, "group": r.group, "kind": r.plural})),
        }
    }

    pub fn already_exists(res: usize, name: &str) -> Self {
        let r = &RESOURCES[res];
        Self {
            code: 409,
            reason: "AlreadyExists",
            message: format!("{} \"{name}\" already exists", qualified(r)),
            details: Some(json!({"name": name, "group": r.group, "kind": r.plural})),
        }
    }

    pub fn conflict(res: usize, name: &str, why: &str) -> Self {
        let r = &RESOURCES[res];
        Self {
            code: 409,
            reason: "Conflict",
            message: format!(
                "Operation cannot be fulfilled on {} \"{name}\": {why}",
                qualified(r)
            ),
            details: Some(json!({"name": name, "group": r.group, "kind": r.plural})),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", message)
    }

    pub fn invalid(res: usize, name: &str, message: impl Into<String>) -> Self {
        let r = &RESOURCES[res];
        let message = message.into();
        Self {
            code: 422,
            reason: "Invalid",
            message: format!("{} \"{name}\" is invalid: {message}", r.kind),
            details: Some(json!({"name": name, "group": r.group, "kind": r.kind})),
        }
    }

    pub fn gone(message: impl Into<String>) -> Self {
        Self::new(410, "Expired", message)
    }

    pub fn to_status(&self) -> Value {
        meta::status(self.code, self.reason, &self.message, self.details.clone())
    }
}

/// `pods`, or `replicationcontrollers.apps` style: the resource as errors name it.
fn qualified(r: &meta::Resource) -> String {
    if r.group.is_empty() {
        r.plural.to_owned()
    } else {
        format!("{}.{}", r.plural, r.group)
    }
}

type Key = (String, String);

#[derive(Debug, Default)]
struct Table {
    objects: BTreeMap<Key, Obj>,
    history: VecDeque<Arc<Change>>,
    /// Changes at or below this version are gone from `history`.
    compacted: u64,
}

#[derive(Debug)]
struct Inner {
    rv: u64,
    tables: Vec<Table>,
    rng: Rng,
}

/// The store, shared by the HTTP server and the controllers.
#[derive(Debug)]
pub struct Store {
    inner: Mutex<Inner>,
    changes: broadcast::Sender<Arc<Change>>,
    history: usize,
}

/// What a watch starts from: the changes after a version, and the live feed.
#[derive(Debug)]
pub struct WatchStart {
    pub backlog: Vec<Arc<Change>>,
    pub live: broadcast::Receiver<Arc<Change>>,
    pub rv: u64,
}

impl Store {
    /// A store keeping the last `history` changes of each resource.
    pub fn new(history: usize, seed: u64) -> Self {
        // The ring keeps its last entries (and the objects they hold) alive: keep it modest;
        // a receiver that falls further behind resynchronises (controllers) or ends (watches).
        let (changes, _) = broadcast::channel(16_384);
        Self {
            inner: Mutex::new(Inner {
                rv: 1,
                tables: RESOURCES.iter().map(|_| Table::default()).collect(),
                rng: Rng::new(seed),
            }),
            changes,
            history: history.max(1),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The current resourceVersion.
    pub fn rv(&self) -> u64 {
        self.lock().rv
    }

    /// Every change from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Change>> {
        self.changes.subscribe()
    }

    pub fn get(&self, res: usize, ns: &str, name: &str) -> Option<Obj> {
        self.lock().tables[res]
            .objects
            .get(&(ns.to_owned(), name.to_owned()))
            .cloned()
    }

    /// All objects of a resource (in one namespace, if given), in key order, and the version they are at.
    pub fn list(&self, res: usize, ns: Option<&str>) -> (Vec<Obj>, u64) {
        let inner = self.lock();
        let table = &inner.tables[res];
        let items = match ns {
            Some(ns) => table
                .objects
                .range((ns.to_owned(), String::new())..)
                .take_while(|((n, _), _)| n == ns)
                .map(|(_, o)| Arc::clone(o))
                .collect(),
            None => table.objects.values().cloned().collect(),
        };
        (items, inner.rv)
    }

    /// How many objects a resource has.
    pub fn count(&self, res: usize) -> usize {
        self.lock().tables[res].objects.len()
    }

    /// Changes after `rv` for a resource, plus a live feed with nothing missed in between.
    pub fn watch_from(&self, res: usize, rv: u64) -> Result<WatchStart, ApiError> {
        let inner = self.lock();
        let table = &inner.tables[res];
        if rv < table.compacted {
            return Err(ApiError::gone(format!(
                "too old resource version: {rv} ({})",
                table.compacted
            )));
        }
        let backlog = table
            .history
            .iter()
            .filter(|c| c.obj.rv > rv)
            .cloned()
            .collect();
        Ok(WatchStart {
            backlog,
            live: self.changes.subscribe(),
            rv: inner.rv,
        })
    }

    /// A snapshot of a resource and a live feed from right after it.
    pub fn list_and_watch(&self, res: usize) -> (Vec<Obj>, WatchStart) {
        let inner = self.lock();
        let items = inner.tables[res].objects.values().cloned().collect();
        (
            items,
            WatchStart {
                backlog: Vec::new(),
                live: self.changes.subscribe(),
                rv: inner.rv,
            },
        )
    }

    /// Forget every change so far: any watch from an older version gets 410.
    pub fn compact(&self) {
        let mut inner = self.lock();
        let rv = inner.rv;
        for table in &mut inner.tables {
            table.history.clear();
            table.compacted = rv;
        }
    }

    /// Make `change` the state of `key` (a deletion removes it), then keep it in
    /// the history and tell the watchers: the one way objects change.
    fn record(&self, inner: &mut Inner, key: Key, change: Change) {
        let change = Arc::new(change);
        let table = &mut inner.tables[change.res];
        if change.kind == ChangeType::Deleted {
            table.objects.remove(&key);
        } else {
            table.objects.insert(key, Arc::clone(&change.obj));
        }
        table.history.push_back(Arc::clone(&change));
        while table.history.len() > self.history {
            if let Some(old) = table.history.pop_front() {
                table.compacted = old.obj.rv;
            }
        }
        let _ = self.changes.send(change);
    }

    fn next_rv(inner: &mut Inner) -> u64 {
        inner.rv += 1;
        inner.rv
    }

    /// Create an object: `uid`, `resourceVersion`, `creationTimestamp`, `generation`
    /// are set; `generateName` is honoured; 409 if it exists.
    pub fn create(&self, res: usize, mut value: Value) -> Result<Obj, ApiError> {
        let r = &RESOURCES[res];
        let mut inner = self.lock();
        let ns = if r.namespaced {
            meta::namespace(&value).to_owned()
        } else {
            String::new()
        };
        if r.namespaced {
            if ns.is_empty() {
                return Err(ApiError::bad_request(
                    "the namespace of the object is empty",
                ));
            }
            match inner.tables[idx::NAMESPACES]
                .objects
                .get(&(String::new(), ns.clone()))
            {
                None => return Err(ApiError::not_found(idx::NAMESPACES, &ns)),
                Some(n) if n.value.pointer("/metadata/deletionTimestamp").is_some() => {
                    return Err(ApiError {
                        code: 403,
                        reason: "Forbidden",
                        message: format!(
                            "{} \"{}\" is forbidden: unable to create new content in namespace {ns} because it is being terminated",
                            r.plural,
                            meta::name(&value)
                        ),
                        details: None,
                    });
                }
                Some(_) => {}
            }
        }
        let mut name = meta::name(&value).to_owned();
        if name.is_empty() {
            let Some(prefix) = meta::meta_str(&value, "generateName").map(str::to_owned) else {
                return Err(ApiError::invalid(
                    res,
                    "",
                    "metadata.name: Required value: name or generateName is required",
                ));
            };
            loop {
                let candidate = format!("{prefix}{}", meta::random_suffix(&mut inner.rng, 5));
                if !inner.tables[res]
                    .objects
                    .contains_key(&(ns.clone(), candidate.clone()))
                {
                    name = candidate;
                    break;
                }
            }
        }
        validate_name(res, &name)?;
        let key = (ns.clone(), name.clone());
        if inner.tables[res].objects.contains_key(&key) {
            return Err(ApiError::already_exists(res, &name));
        }
        let uid = meta::uid(&mut inner.rng);
        let rv = Self::next_rv(&mut inner);
        value["kind"] = Value::String(r.kind.to_owned());
        value["apiVersion"] = Value::String(r.api_version());
        let m = meta::metadata_mut(&mut value);
        m.insert("name".into(), Value::String(name));
        if r.namespaced {
            m.insert("namespace".into(), Value::String(ns));
        } else {
            m.remove("namespace");
        }
        m.insert("uid".into(), Value::String(uid));
        m.insert(
            "creationTimestamp".into(),
            Value::String(meta::now_rfc3339()),
        );
        m.insert("generation".into(), json!(1));
        m.remove("deletionTimestamp");
        let obj = Object::new(value, rv);
        self.record(
            &mut inner,
            key,
            Change {
                res,
                kind: ChangeType::Added,
                obj: Arc::clone(&obj),
                old: None,
            },
        );
        Ok(obj)
    }

    /// Read-modify-write one object under the lock. `f` gets the current value;
    /// identity fields it changes are restored. `expected_rv` (from the request)
    /// must match the stored version, else 409.
    pub fn modify(
        &self,
        res: usize,
        ns: &str,
        name: &str,
        expected_rv: Option<u64>,
        f: impl FnOnce(&mut Value) -> Result<(), ApiError>,
    ) -> Result<Obj, ApiError> {
        let mut inner = self.lock();
        let key = (ns.to_owned(), name.to_owned());
        let Some(current) = inner.tables[res].objects.get(&key).cloned() else {
            return Err(ApiError::not_found(res, name));
        };
        if let Some(expected) = expected_rv
            && expected != current.rv
        {
            return Err(ApiError::conflict(
                res,
                name,
                "the object has been modified; please apply your changes to the latest version and try again",
            ));
        }
        let mut value = current.value.clone();
        f(&mut value)?;
        // Identity and server-owned fields stay as they are.
        let r = &RESOURCES[res];
        value["kind"] = Value::String(r.kind.to_owned());
        value["apiVersion"] = Value::String(r.api_version());
        let old_meta = current.value.get("metadata").cloned().unwrap_or_default();
        let m = meta::metadata_mut(&mut value);
        for field in [
            "name",
            "namespace",
            "uid",
            "creationTimestamp",
            "deletionTimestamp",
        ] {
            match old_meta.get(field) {
                Some(v) => {
                    m.insert(field.into(), v.clone());
                }
                None => {
                    m.remove(field);
                }
            }
        }
        let spec_changed = current.value.get("spec") != value.get("spec");
        let generation = old_meta
            .get("generation")
            .and_then(Value::as_i64)
            .unwrap_or(1);
        meta::metadata_mut(&mut value).insert(
            "generation".into(),
            json!(if spec_changed {
                generation + 1
            } else {
                generation
            }),
        );
        // Compare as stored (the version is rewritten on write anyway).
        meta::metadata_mut(&mut value).insert(
            "resourceVersion".into(),
            Value::String(current.rv.to_string()),
        );
        if value == current.value {
            // Nothing changed: no new version, no event (as a real server does).
            return Ok(current);
        }
        let finalized =
            old_meta.get("deletionTimestamp").is_some() && !pending_finalizers(res, &value);
        let rv = Self::next_rv(&mut inner);
        let obj = Object::new(value, rv);
        if finalized {
            self.record(
                &mut inner,
                key,
                Change {
                    res,
                    kind: ChangeType::Deleted,
                    obj: Arc::clone(&obj),
                    old: Some(current),
                },
            );
        } else {
            self.record(
                &mut inner,
                key,
                Change {
                    res,
                    kind: ChangeType::Modified,
                    obj: Arc::clone(&obj),
                    old: Some(current),
                },
            );
        }
        Ok(obj)
    }

    /// Delete: with finalizers, mark `deletionTimestamp` and keep the object until
    /// they are gone; otherwise remove it. `expected_uid` is the precondition.
    pub fn delete(
        &self,
        res: usize,
        ns: &str,
        name: &str,
        expected_uid: Option<&str>,
    ) -> Result<Obj, ApiError> {
        let mut inner = self.lock();
        let key = (ns.to_owned(), name.to_owned());
        let Some(current) = inner.tables[res].objects.get(&key).cloned() else {
            return Err(ApiError::not_found(res, name));
        };
        if let Some(uid) = expected_uid
            && meta::meta_str(&current.value, "uid") != Some(uid)
        {
            // kube-apiserver names the kind here (not the resource) and both UIDs.
            let r = &RESOURCES[res];
            let mut e = ApiError::conflict(res, name, "");
            e.message = format!(
                "Operation cannot be fulfilled on {} \"{name}\": the UID in the precondition ({uid}) does not match the UID in record ({}). The object might have been deleted and then recreated",
                r.kind,
                meta::meta_str(&current.value, "uid").unwrap_or_default()
            );
            return Err(e);
        }
        let rv = Self::next_rv(&mut inner);
        if pending_finalizers(res, &current.value) {
            if current
                .value
                .pointer("/metadata/deletionTimestamp")
                .is_some()
            {
                return Ok(current);
            }
            let mut value = current.value.clone();
            let m = meta::metadata_mut(&mut value);
            m.insert(
                "deletionTimestamp".into(),
                Value::String(meta::now_rfc3339()),
            );
            m.insert("deletionGracePeriodSeconds".into(), json!(0));
            if res == idx::NAMESPACES {
                value["status"] = json!({"phase": "Terminating"});
            }
            let obj = Object::new(value, rv);
            self.record(
                &mut inner,
                key,
                Change {
                    res,
                    kind: ChangeType::Modified,
                    obj: Arc::clone(&obj),
                    old: Some(current),
                },
            );
            return Ok(obj);
        }
        let obj = Object::new(current.value.clone(), rv);
        self.record(
            &mut inner,
            key,
            Change {
                res,
                kind: ChangeType::Deleted,
                obj: Arc::clone(&obj),
                old: Some(current),
            },
        );
        Ok(obj)
    }
}

/// Whether finalizers hold the object: `metadata.finalizers`, and for a
/// namespace also `spec.finalizers` (the namespace controller's).
fn pending_finalizers(res: usize, value: &Value) -> bool {
    let nonempty = |p: &str| {
        value
            .pointer(p)
            .and_then(Value::as_array)
            .is_some_and(|f| !f.is_empty())
    };
    nonempty("/metadata/finalizers") || (res == idx::NAMESPACES && nonempty("/spec/finalizers"))
}

/// DNS-1123 subdomain names (node, pod, secret, ... names).
fn validate_name(res: usize, name: &str) -> Result<(), ApiError> {
    let ok = !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric())
        && name
            .bytes()
            .last()
            .is_some_and(|b| b.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err(ApiError::invalid(
            res,
            name,
            format!(
                "metadata.name: Invalid value: \"{name}\": a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character"
            ),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ns(store: &Store, name: &str) {
        store
            .create(idx::NAMESPACES, json!({"metadata": {"name": name}}))
            .unwrap();
    }

    #[test]
    fn create_get_update_delete() {
        let store = Store::new(100, 1);
        ns(&store, "a");
        let cm = store
            .create(
                idx::CONFIGMAPS,
                json!({"metadata": {"name": "c", "namespace": "a"}, "data": {"k": "v"}}),
            )
            .unwrap();
        assert_eq!(cm.value["kind"], "ConfigMap");
        assert_eq!(cm.value["metadata"]["resourceVersion"], cm.rv.to_string());
        assert!(cm.value["metadata"]["uid"].as_str().unwrap().len() == 36);
        let e = store
            .create(
                idx::CONFIGMAPS,
                json!({"metadata": {"name": "c", "namespace": "a"}}),
            )
            .unwrap_err();
        assert_eq!((e.code, e.reason), (409, "AlreadyExists"));
        let e = store
            .create(
                idx::CONFIGMAPS,
                json!({"metadata": {"name": "c", "namespace": "nope"}}),
            )
            .unwrap_err();
        assert_eq!(e.code, 404);

        let stale = cm.rv;
        let updated = store
            .modify(idx::CONFIGMAPS, "a", "c", Some(stale), |v| {
                v["data"]["k"] = json!("w");
                Ok(())
            })
            .unwrap();
        assert!(updated.rv > stale);
        let e = store
            .modify(idx::CONFIGMAPS, "a", "c", Some(stale), |_| Ok(()))
            .unwrap_err();
        assert_eq!((e.code, e.reason), (409, "Conflict"));
        let same = store
            .modify(idx::CONFIGMAPS, "a", "c", None, |_| Ok(()))
            .unwrap();
        assert_eq!(same.rv, updated.rv, "a no-op write keeps the version");

        store.delete(idx::CONFIGMAPS, "a", "c", None).unwrap();
        assert!(store.get(idx::CONFIGMAPS, "a", "c").is_none());
    }

    #[test]
    fn watch_history_and_compaction() {
        let store = Store::new(2, 1);
        let start = store.rv();
        ns(&store, "a");
        ns(&store, "b");
        let w = store.watch_from(idx::NAMESPACES, start).unwrap();
        assert_eq!(w.backlog.len(), 2);
        ns(&store, "c");
        let e = store.watch_from(idx::NAMESPACES, start).unwrap_err();
        assert_eq!(e.code, 410);
        let (items, rv) = store.list(idx::NAMESPACES, None);
        assert_eq!(items.len(), 3);
        assert!(
            store
                .watch_from(idx::NAMESPACES, rv)
                .unwrap()
                .backlog
                .is_empty()
        );
        store.compact();
        assert_eq!(
            store.watch_from(idx::NAMESPACES, rv - 1).unwrap_err().code,
            410
        );
    }

    #[test]
    fn finalizers_delay_removal() {
        let store = Store::new(100, 1);
        store
            .create(
                idx::NAMESPACES,
                json!({"metadata": {"name": "f", "finalizers": ["x"]}}),
            )
            .unwrap();
        let marked = store.delete(idx::NAMESPACES, "", "f", None).unwrap();
        assert!(marked.value["metadata"]["deletionTimestamp"].is_string());
        assert!(store.get(idx::NAMESPACES, "", "f").is_some());
        store
            .modify(idx::NAMESPACES, "", "f", None, |v| {
                v["metadata"]["finalizers"] = json!([]);
                Ok(())
            })
            .unwrap();
        assert!(store.get(idx::NAMESPACES, "", "f").is_none());
    }

    #[test]
    fn generate_name() {
        let store = Store::new(100, 1);
        ns(&store, "a");
        let p = store
            .create(
                idx::PODS,
                json!({"metadata": {"generateName": "hollow-node-", "namespace": "a"}}),
            )
            .unwrap();
        let name = meta::name(&p.value);
        assert!(
            name.starts_with("hollow-node-") && name.len() == 17,
            "{name}"
        );
    }
}
