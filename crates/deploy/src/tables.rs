//! A watch of a collection as server-side Tables without objects
//! (`Accept: …;as=Table`, `includeObject=None`): each event is the row of
//! cells `kubectl get` prints (a node's STATUS, a pod's READY and STATUS), a
//! hundred bytes instead of the object's thousands. What the wait needs, at a
//! fraction of the bytes and the parsing; full objects are read only to
//! explain a stall.
//!
//! Resumes from the last resourceVersion after a cut; lists again after a 410;
//! retries transient errors with back-off.

use std::time::Duration;

use futures_util::{FutureExt, TryStreamExt};
use kube::Client;
use kube::core::WatchEvent;
use serde::Deserialize;
use serde_json::Value;
use tokio::sync::mpsc;

const TABLE: &str = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io";

#[derive(Debug, Clone, Deserialize)]
struct Column {
    name: String,
}

#[derive(Debug, Clone, Deserialize)]
struct Row {
    cells: Vec<Value>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Meta {
    resource_version: Option<String>,
    #[serde(rename = "continue")]
    continue_token: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Table {
    #[serde(default)]
    metadata: Meta,
    /// Only the first event of a watch carries them (later ones: empty or null).
    #[serde(default)]
    column_definitions: Option<Vec<Column>>,
    #[serde(default)]
    rows: Vec<Row>,
}

/// The cells of a row that the watcher asked for, by column name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cells(Vec<(&'static str, String)>);

impl Cells {
    /// Cells as a watcher of these columns would give them (for tests and the simulator's peers).
    pub fn from_pairs(pairs: &[(&'static str, &str)]) -> Self {
        Self(pairs.iter().map(|(c, v)| (*c, (*v).to_owned())).collect())
    }

    pub fn get(&self, column: &str) -> &str {
        self.0
            .iter()
            .find(|(c, _)| *c == column)
            .map_or("", |(_, v)| v.as_str())
    }
}

/// What changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Update {
    /// The whole collection, after a (re)list: name → cells.
    Reset(Vec<(String, Cells)>),
    Upsert(String, Cells),
    Delete(String),
}

/// Where the columns a watcher keeps sit in this table's rows.
#[derive(Debug, Clone, Default)]
struct Layout {
    name: Option<usize>,
    kept: Vec<(&'static str, usize)>,
}

impl Layout {
    fn new(columns: &[Column], keep: &[&'static str]) -> Self {
        let at = |name: &str| columns.iter().position(|c| c.name == name);
        Self {
            name: at("Name"),
            kept: keep.iter().filter_map(|k| Some((*k, at(k)?))).collect(),
        }
    }

    fn cells(&self, row: &Row) -> Option<(String, Cells)> {
        let text = |v: &Value| v.as_str().map_or_else(|| v.to_string(), str::to_owned);
        let name = text(row.cells.get(self.name?)?);
        let kept = self
            .kept
            .iter()
            .filter_map(|(c, i)| Some((*c, text(row.cells.get(*i)?))))
            .collect();
        Some((name, Cells(kept)))
    }
}

/// Stops the watch task when dropped.
#[derive(Debug)]
pub struct Watch {
    pub updates: mpsc::Receiver<Update>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// How long a watch lets events gather in the socket after it has drained
/// what was there: one wake-up per batch instead of one per event (at 5,000
/// nodes, tens of thousands of events; the wake-ups were a third of the wait's
/// CPU). The cost is at most this much delay in noticing an event.
pub const GATHER: Duration = Duration::from_millis(50);

/// Watch `path` (e.g. `/api/v1/nodes`) with a label selector, keeping of each
/// row its name and the cells of the columns `keep` names.
pub fn watch(
    client: Client,
    path: String,
    selector: String,
    keep: &'static [&'static str],
) -> Watch {
    let (tx, updates) = mpsc::channel(1024);
    let task = tokio::spawn(async move {
        let mut layout = Layout::default();
        let mut rv: Option<String> = None;
        let mut delay = Duration::from_millis(200);
        loop {
            if rv.is_none() {
                match list(&client, &path, &selector).await {
                    Ok((columns, version, rows)) => {
                        layout = Layout::new(&columns, keep);
                        rv = version;
                        let reset = rows.iter().filter_map(|r| layout.cells(r)).collect();
                        if tx.send(Update::Reset(reset)).await.is_err() {
                            return;
                        }
                        delay = Duration::from_millis(200);
                    }
                    Err(e) => {
                        tracing::debug!("listing {path}: {e}");
                        tokio::time::sleep(delay).await;
                        delay = (delay * 2).min(Duration::from_secs(5));
                        continue;
                    }
                }
            }
            let since = rv.clone().unwrap_or_default();
            let query = format!(
                "{path}?watch=1&allowWatchBookmarks=true&includeObject=None&timeoutSeconds=290&resourceVersion={since}&labelSelector={}",
                encode(&selector)
            );
            let request = match http::Request::get(&query)
                .header(http::header::ACCEPT, TABLE)
                .body(Vec::new())
            {
                Ok(r) => r,
                Err(_) => return,
            };
            let stream = match client.request_events::<Table>(request).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::debug!("watching {path}: {e}");
                    if matches!(&e, kube::Error::Api(s) if s.code == 410) {
                        rv = None;
                    }
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                    continue;
                }
            };
            let mut stream = std::pin::pin!(stream);
            loop {
                let next = match stream.try_next().now_or_never() {
                    Some(ready) => ready,
                    None => {
                        // What the connection has not read yet may already be in the
                        // socket: let its task (and the I/O driver) run once, then look again.
                        tokio::task::yield_now().await;
                        match stream.try_next().now_or_never() {
                            Some(ready) => ready,
                            None => {
                                // Drained: let the next events gather, then wait for them.
                                tokio::time::sleep(GATHER).await;
                                stream.try_next().await
                            }
                        }
                    }
                };
                let event = match next {
                    Ok(Some(e)) => e,
                    // The server ended the watch (timeout, a cut): resume from where it was.
                    Ok(None) => break,
                    Err(e) => {
                        tracing::debug!("watch of {path}: {e}");
                        if matches!(&e, kube::Error::Api(s) if s.code == 410) {
                            rv = None;
                        }
                        tokio::time::sleep(delay).await;
                        break;
                    }
                };
                delay = Duration::from_millis(200);
                let (table, deleted) = match event {
                    WatchEvent::Added(t) | WatchEvent::Modified(t) => (t, false),
                    WatchEvent::Deleted(t) => (t, true),
                    WatchEvent::Bookmark(b) => {
                        rv = Some(b.metadata.resource_version);
                        continue;
                    }
                    WatchEvent::Error(e) => {
                        if e.code == 410 {
                            rv = None;
                        }
                        break;
                    }
                };
                if let Some(columns) = table.column_definitions.as_ref().filter(|c| !c.is_empty()) {
                    layout = Layout::new(columns, keep);
                }
                if let Some(v) = table.metadata.resource_version {
                    rv = Some(v);
                }
                for row in &table.rows {
                    let Some((name, cells)) = layout.cells(row) else {
                        continue;
                    };
                    let update = if deleted {
                        Update::Delete(name)
                    } else {
                        Update::Upsert(name, cells)
                    };
                    if tx.send(update).await.is_err() {
                        return;
                    }
                }
            }
        }
    });
    Watch { updates, task }
}

/// The rows of `path` that `selector` picks, once (paged), with the cells of `keep`.
pub async fn rows(
    client: &Client,
    path: &str,
    selector: &str,
    keep: &'static [&'static str],
) -> Result<Vec<(String, Cells)>, kube::Error> {
    let (columns, _, rows) = list(client, path, selector).await?;
    let layout = Layout::new(&columns, keep);
    Ok(rows.iter().filter_map(|r| layout.cells(r)).collect())
}

async fn list(
    client: &Client,
    path: &str,
    selector: &str,
) -> Result<(Vec<Column>, Option<String>, Vec<Row>), kube::Error> {
    let mut columns = Vec::new();
    let mut rows = Vec::new();
    let mut token: Option<String> = None;
    let mut version = None;
    loop {
        let mut query = format!(
            "{path}?includeObject=None&limit=500&labelSelector={}",
            encode(selector)
        );
        if let Some(t) = &token {
            query.push_str(&format!("&continue={}", encode(t)));
        }
        let request = http::Request::get(&query)
            .header(http::header::ACCEPT, TABLE)
            .body(Vec::new())
            .map_err(kube::Error::HttpError)?;
        let table: Table = crate::retry::call(|| client.request::<Table>(request.clone())).await?;
        if columns.is_empty() {
            columns = table.column_definitions.unwrap_or_default();
        }
        // The first page's version: watching from it replays what changed while paging.
        if version.is_none() {
            version = table.metadata.resource_version;
        }
        rows.extend(table.rows);
        token = table.metadata.continue_token.filter(|t| !t.is_empty());
        if token.is_none() {
            return Ok((columns, version, rows));
        }
    }
}

pub(crate) fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_become_named_cells() {
        let columns: Vec<Column> = ["Name", "Ready", "Status", "Restarts"]
            .iter()
            .map(|n| Column {
                name: (*n).to_owned(),
            })
            .collect();
        let layout = Layout::new(&columns, &["Status", "Missing", "Restarts"]);
        let row = |cells: Vec<Value>| Row { cells };
        let (name, c) = layout
            .cells(&row(vec![
                Value::from("n1"),
                Value::from("1/1"),
                Value::from("Running"),
                Value::from(3),
            ]))
            .unwrap();
        assert_eq!(name, "n1");
        assert_eq!(c.get("Status"), "Running");
        assert_eq!(
            c.get("Restarts"),
            "3",
            "non-string cells as their JSON text"
        );
        assert_eq!(c.get("Ready"), "", "only the columns asked for are kept");
        assert_eq!(c.get("Missing"), "");
        // A short row keeps its name; a table without a Name column yields nothing.
        assert!(layout.cells(&row(vec![Value::from("n1")])).is_some());
        assert_eq!(
            layout
                .cells(&row(vec![Value::from("n1")]))
                .unwrap()
                .1
                .get("Status"),
            ""
        );
        assert!(
            Layout::new(&columns[1..], &["Status"])
                .cells(&row(vec![Value::from("x")]))
                .is_none()
        );
        assert_eq!(encode("name=hollow-node,a/b"), "name%3Dhollow-node%2Ca%2Fb");
    }
}
