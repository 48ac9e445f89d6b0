//! Watch: the changes after a version (or synthetic ADDED events for the
//! current state), then the live feed, filtered by namespace and selectors,
//! as JSON or Table events, with bookmarks; the stream ends on
//! `timeoutSeconds`, on an injected cut, or when the client is too slow.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};
use hyper::Response;
use hyper::body::Frame;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::request::Req;
use super::{Body, respond};
use crate::Shared;
use crate::meta::{self, RESOURCES};
use crate::select::{FieldSelector, LabelSelector};
use crate::store::{ApiError, Change, ChangeType, Obj};
use crate::table;

/// One watch: backlog or synthetic ADDED events, then the live feed; ends on
/// `timeoutSeconds`, on an injected cut, or when the client is too slow.
pub(super) fn watch(
    shared: &Arc<Shared>,
    r: &Req,
    res: usize,
    ns: Option<&str>,
) -> Result<Response<Body>, ApiError> {
    let labels = LabelSelector::parse(r.q("labelSelector").unwrap_or_default())?;
    let fields = FieldSelector::parse(r.q("fieldSelector").unwrap_or_default())?;
    let bookmarks = matches!(r.q("allowWatchBookmarks"), Some("true" | "1"));
    let table_format = r.wants_table();
    let include = table::Include::parse(r.q("includeObject"));
    let timeout = r
        .q("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .map_or(Duration::from_secs(1800), Duration::from_secs);
    let from: Option<u64> = r
        .q("resourceVersion")
        .and_then(|v| v.parse().ok())
        .filter(|v| *v > 0);
    let ns = ns.map(str::to_owned);
    let matches = move |obj: &Value| {
        ns.as_deref().is_none_or(|n| meta::namespace(obj) == n)
            && labels.matches(obj)
            && fields.matches(obj)
    };
    let (tx, rx) = mpsc::channel::<Bytes>(256);
    // As a real server does, only the first Table event of a watch carries the column definitions.
    let headers_sent = std::sync::atomic::AtomicBool::new(false);
    let encode = move |kind: &str, obj: &Obj| -> Bytes {
        if table_format {
            let mut t = table::table(res, &[&obj.value], obj.rv, None, include);
            if headers_sent.swap(true, std::sync::atomic::Ordering::Relaxed) {
                t["columnDefinitions"] = json!([]);
            }
            Bytes::from(format!("{{\"type\":\"{kind}\",\"object\":{t}}}\n"))
        } else {
            let mut b = Vec::with_capacity(obj.json.len() + 32);
            b.extend_from_slice(b"{\"type\":\"");
            b.extend_from_slice(kind.as_bytes());
            b.extend_from_slice(b"\",\"object\":");
            b.extend_from_slice(&obj.json);
            b.extend_from_slice(b"}\n");
            Bytes::from(b)
        }
    };
    let (initial, mut start) = match from {
        Some(rv) => match shared.store.watch_from(res, rv) {
            Ok(start) => (Vec::new(), start),
            Err(gone) => {
                // A real server answers 200 and sends the 410 as an ERROR event.
                let line = format!("{{\"type\":\"ERROR\",\"object\":{}}}\n", gone.to_status());
                return Ok(respond(200, "application/json", line));
            }
        },
        None => {
            let (items, start) = shared.store.list_and_watch(res);
            (items, start)
        }
    };
    let faults = shared.injector.faults.clone();
    let bookmark_every = shared.cfg.bookmark_interval;
    let kind_name = RESOURCES[res].kind;
    let api_version = RESOURCES[res].api_version();
    tokio::spawn(async move {
        let deadline =
            tokio::time::Instant::now() + timeout.min(faults.watch_max_duration.unwrap_or(timeout));
        let max_events = faults.watch_max_events.unwrap_or(usize::MAX);
        let mut sent = 0usize;
        let mut last_rv = from.unwrap_or(start.rv);
        let send = |bytes: Bytes| {
            let tx = tx.clone();
            async move { tx.send(bytes).await.is_ok() }
        };
        for obj in initial.iter().filter(|o| matches(&o.value)) {
            if !send(encode("ADDED", obj)).await {
                return;
            }
        }
        let emit = |change: &Change, last_rv: &mut u64| -> Option<Bytes> {
            if change.res != res || change.obj.rv <= *last_rv {
                return None;
            }
            *last_rv = change.obj.rv;
            let now = matches(&change.obj.value);
            let before = change.old.as_ref().is_some_and(|o| matches(&o.value));
            let kind = match (change.kind, before, now) {
                (ChangeType::Added, _, true) => "ADDED",
                (ChangeType::Deleted, true, _) | (ChangeType::Deleted, _, true) => "DELETED",
                (ChangeType::Modified, true, true) => "MODIFIED",
                (ChangeType::Modified, false, true) => "ADDED",
                (ChangeType::Modified, true, false) => "DELETED",
                _ => return None,
            };
            Some(encode(kind, &change.obj))
        };
        for change in std::mem::take(&mut start.backlog) {
            if let Some(bytes) = emit(&change, &mut last_rv) {
                if !send(bytes).await {
                    return;
                }
                sent += 1;
                if sent >= max_events {
                    return;
                }
            }
        }
        let mut ticker = tokio::time::interval(bookmark_every);
        ticker.tick().await;
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => return,
                _ = ticker.tick(), if bookmarks => {
                    let line = format!(
                        "{{\"type\":\"BOOKMARK\",\"object\":{{\"kind\":\"{kind_name}\",\"apiVersion\":\"{api_version}\",\"metadata\":{{\"resourceVersion\":\"{last_rv}\"}}}}}}\n"
                    );
                    if !send(Bytes::from(line)).await {
                        return;
                    }
                }
                change = start.live.recv() => {
                    let change = match change {
                        Ok(c) => c,
                        // Too slow or shut down: end the watch; the client resumes from its last version.
                        Err(_) => return,
                    };
                    // Batch what is already waiting into one write: one frame, one TLS record.
                    let mut batch = Vec::new();
                    let mut lagged = false;
                    let mut pending = Some(change);
                    while let Some(change) = pending.take() {
                        if let Some(bytes) = emit(&change, &mut last_rv) {
                            batch.extend_from_slice(&bytes);
                            sent += 1;
                            if sent >= max_events {
                                break;
                            }
                        } else if change.res == res && change.obj.rv > last_rv {
                            last_rv = change.obj.rv;
                        }
                        if batch.len() < 256 * 1024 {
                            match start.live.try_recv() {
                                Ok(next) => pending = Some(next),
                                Err(tokio::sync::broadcast::error::TryRecvError::Empty) => {}
                                // Fell behind the feed: what was sent stands, then the watch ends and the
                                // client resumes from its last version (or gets 410 and lists again).
                                Err(_) => lagged = true,
                            }
                        }
                    }
                    if !batch.is_empty() && !send(Bytes::from(batch)).await {
                        return;
                    }
                    if sent >= max_events || lagged {
                        return;
                    }
                }
            }
        }
    });
    let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
    let body = StreamBody::new(futures_util::StreamExt::map(stream, |b| {
        Ok::<_, Infallible>(Frame::data(b))
    }));
    let mut response = Response::new(BodyExt::boxed(body));
    response.headers_mut().insert(
        "content-type",
        hyper::header::HeaderValue::from_static("application/json"),
    );
    Ok(response)
}
