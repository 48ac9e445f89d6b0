//! A watch of a collection as server-side Tables without objects
//! (`Accept: …;as=Table`, `includeObject=None`): each event is the row of
//! cells `kubectl get` prints (a node's STATUS, a pod's READY and STATUS), a
//! hundred bytes instead of the object's thousands. What the wait needs, at a
//! fraction of the bytes and the parsing; full objects are read only to
//! explain a stall.
//!
//! Resumes from the last resourceVersion after a cut; lists again after a 410;
//! retries transient errors with back-off.

use std::collections::HashMap;
use std::time::Duration;

use futures_util::TryStreamExt;
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

/// A row by column name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cells(pub HashMap<String, String>);

impl Cells {
    pub fn get(&self, column: &str) -> &str {
        self.0.get(column).map_or("", String::as_str)
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

fn cells(columns: &[String], row: &Row) -> Option<(String, Cells)> {
    let map: HashMap<String, String> = columns
        .iter()
        .zip(&row.cells)
        .map(|(c, v)| {
            (
                c.clone(),
                v.as_str().map_or_else(|| v.to_string(), str::to_owned),
            )
        })
        .collect();
    let name = map.get("Name")?.clone();
    Some((name, Cells(map)))
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

/// Watch `path` (e.g. `/api/v1/nodes`) with a label selector.
pub fn watch(client: Client, path: String, selector: String) -> Watch {
    let (tx, updates) = mpsc::channel(1024);
    let task = tokio::spawn(async move {
        let mut columns: Vec<String> = Vec::new();
        let mut rv: Option<String> = None;
        let mut delay = Duration::from_millis(200);
        loop {
            if rv.is_none() {
                match list(&client, &path, &selector).await {
                    Ok((cols, version, rows)) => {
                        columns = cols;
                        rv = version;
                        let reset = rows.iter().filter_map(|r| cells(&columns, r)).collect();
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
                let event = match stream.try_next().await {
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
                if let Some(cols) = table.column_definitions.as_ref().filter(|c| !c.is_empty()) {
                    columns = cols.iter().map(|c| c.name.clone()).collect();
                }
                if let Some(v) = table.metadata.resource_version.clone() {
                    rv = Some(v);
                }
                for row in &table.rows {
                    let Some((name, cells)) = cells(&columns, row) else {
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

async fn list(
    client: &Client,
    path: &str,
    selector: &str,
) -> Result<(Vec<String>, Option<String>, Vec<Row>), kube::Error> {
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
            columns = table
                .column_definitions
                .iter()
                .flatten()
                .map(|c| c.name.clone())
                .collect();
        }
        // The first page's version: watching from it replays what changed while paging.
        if version.is_none() {
            version = table.metadata.resource_version.clone();
        }
        rows.extend(table.rows.clone());
        token = table.metadata.continue_token.filter(|t| !t.is_empty());
        if token.is_none() {
            return Ok((columns, version, rows));
        }
    }
}

fn encode(s: &str) -> String {
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
        let columns = vec!["Name".to_owned(), "Status".to_owned()];
        let (name, c) = cells(
            &columns,
            &Row {
                cells: vec![Value::from("n1"), Value::from("Ready")],
            },
        )
        .unwrap();
        assert_eq!(name, "n1");
        assert_eq!(c.get("Status"), "Ready");
        assert_eq!(c.get("Missing"), "");
        assert_eq!(encode("name=hollow-node,a/b"), "name%3Dhollow-node%2Ca%2Fb");
    }
}
