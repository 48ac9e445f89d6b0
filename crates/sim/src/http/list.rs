//! List: selectors, a single name without a scan, pages with `limit` and
//! `continue` tokens, and Tables.

use base64::Engine as _;
use hyper::Response;
use serde_json::{Value, json};

use super::request::Req;
use super::{Body, json_response, respond};
use crate::Shared;
use crate::meta::{self, RESOURCES};
use crate::select::{FieldSelector, LabelSelector};
use crate::store::{ApiError, Obj};
use crate::table;

pub(super) fn list(
    shared: &Shared,
    r: &Req,
    res: usize,
    ns: Option<&str>,
) -> Result<Response<Body>, ApiError> {
    let labels = LabelSelector::parse(r.q("labelSelector").unwrap_or_default())?;
    let fields = FieldSelector::parse(r.q("fieldSelector").unwrap_or_default())?;
    let limit: usize = r
        .q("limit")
        .and_then(|l| l.parse().ok())
        .filter(|l| *l > 0)
        .unwrap_or(usize::MAX);
    let (items, rv) = match fields.name() {
        // A single name: no need to scan the table.
        Some(name) => {
            let rv = shared.store.rv();
            let found = match ns {
                Some(ns) => shared.store.get(res, ns, name).into_iter().collect(),
                None if !RESOURCES[res].namespaced => {
                    shared.store.get(res, "", name).into_iter().collect()
                }
                None => shared.store.list(res, None).0,
            };
            (found, rv)
        }
        None => shared.store.list(res, ns),
    };
    let (start_key, snapshot_rv) = match r.q("continue") {
        Some(token) => decode_continue(token)?,
        None => (None, rv),
    };
    let mut page: Vec<&Obj> = Vec::new();
    let mut next = None;
    for obj in &items {
        let key = (meta::namespace(&obj.value), meta::name(&obj.value));
        if let Some((sns, sname)) = &start_key
            && (key.0, key.1) <= (sns.as_str(), sname.as_str())
        {
            continue;
        }
        if !(labels.matches(&obj.value) && fields.matches(&obj.value)) {
            continue;
        }
        if page.len() == limit {
            let last = page.last().map(|o| {
                (
                    meta::namespace(&o.value).to_owned(),
                    meta::name(&o.value).to_owned(),
                )
            });
            next = last.map(|(n, m)| encode_continue(&n, &m, snapshot_rv));
            break;
        }
        page.push(obj);
    }
    if r.wants_table() {
        let values: Vec<&Value> = page.iter().map(|o| &o.value).collect();
        return Ok(json_response(
            200,
            &table::table(
                res,
                &values,
                snapshot_rv,
                next.as_deref(),
                table::Include::parse(r.q("includeObject")),
            ),
        ));
    }
    let resource = &RESOURCES[res];
    // Every page reports the first page's version, as a real server's snapshot does:
    // a client that watches from it replays whatever changed while it paged.
    let mut metadata = json!({"resourceVersion": snapshot_rv.to_string()});
    if let Some(token) = &next {
        metadata["continue"] = json!(token);
    }
    let mut out = Vec::with_capacity(64 + page.iter().map(|o| o.json.len() + 1).sum::<usize>());
    out.extend_from_slice(
        format!(
            "{{\"kind\":\"{}\",\"apiVersion\":\"{}\",\"metadata\":{metadata},\"items\":[",
            resource.list_kind(),
            resource.api_version()
        )
        .as_bytes(),
    );
    for (i, obj) in page.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(&obj.json);
    }
    out.extend_from_slice(b"]}");
    Ok(respond(200, "application/json", out))
}

fn encode_continue(ns: &str, name: &str, rv: u64) -> String {
    let raw = json!({"ns": ns, "name": name, "rv": rv}).to_string();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
}

fn decode_continue(token: &str) -> Result<(Option<(String, String)>, u64), ApiError> {
    let bad = || ApiError::bad_request("continue key is not valid");
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token)
        .map_err(|_| bad())?;
    let v: Value = serde_json::from_slice(&raw).map_err(|_| bad())?;
    let ns = v["ns"].as_str().ok_or_else(bad)?.to_owned();
    let name = v["name"].as_str().ok_or_else(bad)?.to_owned();
    Ok((Some((ns, name)), v["rv"].as_u64().unwrap_or(0)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn continue_tokens_round_trip() {
        let t = encode_continue("ns", "name", 42);
        assert_eq!(
            decode_continue(&t).unwrap(),
            (Some(("ns".into(), "name".into())), 42)
        );
        assert!(decode_continue("garbage!").is_err());
    }
}
