//! What a watch starts from: the changes kept after a version (410 Gone when
//! they are compacted away), or a snapshot, and the live feed; and compaction.

use std::sync::Arc;

use tokio::sync::broadcast;

use super::{ApiError, Change, Obj, Store};

/// What a watch starts from: the changes after a version, and the live feed.
#[derive(Debug)]
pub struct WatchStart {
    pub backlog: Vec<Arc<Change>>,
    pub live: broadcast::Receiver<Arc<Change>>,
    pub rv: u64,
}

impl Store {
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
}

#[cfg(test)]
mod tests {
    use super::super::test_namespace as ns;
    use super::*;
    use crate::meta::idx;

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
}
