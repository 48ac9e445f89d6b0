//! The object store: one table per resource, a cluster-wide increasing
//! `resourceVersion`, a bounded history of changes per resource (older
//! versions are "compacted": watching from them answers 410 Gone), and a
//! broadcast of every change to watchers and controllers.
//!
//! Objects are kept as JSON values and, serialized once per write, as bytes:
//! lists and watch events are written from the bytes. Here: the tables,
//! reads, and the one way objects change (`record`); the writes (create,
//! modify, delete) are in `write`, watch starts and compaction in `watch`,
//! API errors in `error`.

mod error;
mod watch;
mod write;

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use serde_json::Value;
use tokio::sync::broadcast;

use crate::faults::Rng;
use crate::meta::{self, RESOURCES};

pub use error::ApiError;
pub use watch::WatchStart;

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
}

#[cfg(test)]
fn test_namespace(store: &Store, name: &str) {
    #[allow(clippy::unwrap_used)]
    store
        .create(
            meta::idx::NAMESPACES,
            serde_json::json!({"metadata": {"name": name}}),
        )
        .unwrap();
}
