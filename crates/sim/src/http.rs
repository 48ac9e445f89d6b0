//! The HTTP API: authentication, fault injection, routing, the verbs (get,
//! list, watch, create, update, patch, delete, deletecollection), subresources
//! (`status`, `scale`, `log`), content negotiation (JSON, Table, protobuf
//! bodies, apply YAML) and `Status` errors.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::meta::{self, RESOURCES, idx};
use crate::select::{self, FieldSelector, LabelSelector};
use crate::store::{ApiError, Change, ChangeType, Obj};
use crate::{Shared, discovery, patch, proto, table, validate};

pub type Body = BoxBody<Bytes, Infallible>;

fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).boxed()
}

fn respond(code: u16, content_type: &str, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(full(body));
    *r.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    if let Ok(v) = content_type.parse() {
        r.headers_mut().insert("content-type", v);
    }
    r
}

fn json_response(code: u16, value: &Value) -> Response<Body> {
    respond(
        code,
        "application/json",
        serde_json::to_vec(value).unwrap_or_default(),
    )
}

pub(crate) fn not_found_response(message: &str) -> Response<Body> {
    error_response(&ApiError::new(404, "NotFound", message))
}

fn error_response(e: &ApiError) -> Response<Body> {
    let mut r = json_response(e.code, &e.to_status());
    if e.code == 429 {
        r.headers_mut()
            .insert("retry-after", hyper::header::HeaderValue::from_static("1"));
    }
    r
}

/// `a=b&c=d%20e` → map.
fn parse_query(q: &str) -> HashMap<String, String> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h * 16 + l);
                    i += 3;
                }
                _ => {
                    out.push(b'%');
                    i += 1;
                }
            },
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// What the request is about, once routed.
#[derive(Debug, Clone)]
struct Target {
    res: usize,
    ns: Option<String>,
    name: Option<String>,
    sub: Option<String>,
}

fn route(segments: &[&str]) -> Option<Target> {
    let (group, version, rest) = match segments {
        ["api", "v1", rest @ ..] => ("", "v1", rest),
        ["apis", group, version, rest @ ..] => (*group, *version, rest),
        _ => return None,
    };
    let find = |plural: &str| meta::find(group, version, plural);
    let t = |res, ns: Option<&str>, name: Option<&str>, sub: Option<&str>| Target {
        res,
        ns: ns.map(str::to_owned),
        name: name.map(str::to_owned),
        sub: sub.map(str::to_owned),
    };
    match rest {
        [plural] => Some(t(find(plural)?, None, None, None)),
        ["namespaces", ns, sub] if group.is_empty() && matches!(*sub, "status" | "finalize") => {
            Some(t(idx::NAMESPACES, None, Some(ns), Some(sub)))
        }
        ["namespaces", ns, plural] if RESOURCES[find(plural)?].namespaced => {
            Some(t(find(plural)?, Some(ns), None, None))
        }
        ["namespaces", ns, plural, name] => Some(t(find(plural)?, Some(ns), Some(name), None)),
        ["namespaces", ns, plural, name, sub] => {
            Some(t(find(plural)?, Some(ns), Some(name), Some(sub)))
        }
        [plural, name] => Some(t(find(plural)?, None, Some(name), None)),
        [plural, name, sub] => Some(t(find(plural)?, None, Some(name), Some(sub))),
        _ => None,
    }
}

/// The request, read in full (bodies are small: objects, patches, options).
struct Req {
    method: Method,
    query: HashMap<String, String>,
    accept: String,
    content_type: String,
    user_agent: String,
    body: Bytes,
}

impl Req {
    fn q(&self, key: &str) -> Option<&str> {
        self.query
            .get(key)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    fn wants_table(&self) -> bool {
        self.accept.contains("as=Table")
    }

    /// The body as a JSON object (JSON, YAML or protobuf).
    fn object(&self) -> Result<Value, ApiError> {
        if self
            .content_type
            .starts_with("application/vnd.kubernetes.protobuf")
        {
            return proto::decode(&self.body);
        }
        if self.content_type.contains("yaml") {
            return serde_yaml::from_slice::<Value>(&self.body)
                .map_err(|e| ApiError::bad_request(format!("error decoding YAML: {e}")));
        }
        serde_json::from_slice(&self.body)
            .map_err(|e| ApiError::bad_request(format!("error decoding JSON: {e}")))
    }

    /// The field manager for non-apply writes, as the API server derives it.
    fn manager(&self) -> String {
        match self.q("fieldManager") {
            Some(m) => m.to_owned(),
            None => self
                .user_agent
                .split('/')
                .next()
                .filter(|s| !s.is_empty())
                .unwrap_or("unknown")
                .to_owned(),
        }
    }
}

fn verb_of(method: &Method, target: &Target, query: &HashMap<String, String>) -> &'static str {
    let watch = matches!(query.get("watch").map(String::as_str), Some("true" | "1"));
    match (method, target.name.is_some()) {
        (&Method::GET, _) if watch => "watch",
        (&Method::GET, true) => "get",
        (&Method::GET, false) => "list",
        (&Method::POST, _) => "create",
        (&Method::PUT, _) => "update",
        (&Method::PATCH, _) => "patch",
        (&Method::DELETE, true) => "delete",
        (&Method::DELETE, false) => "deletecollection",
        _ => "unknown",
    }
}

/// The whole HTTP service.
pub async fn handle(
    shared: Arc<Shared>,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let started = Instant::now();
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let agent = shared.stats.agent(
        req.headers()
            .get("user-agent")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default(),
    );
    agent
        .requests
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let response = serve(&shared, req).await;
    // Count what goes out, streams included, as it goes.
    let (parts, body) = response.into_parts();
    let counted = BodyExt::map_frame(body, move |frame| {
        if let Some(data) = frame.data_ref() {
            agent
                .bytes
                .fetch_add(data.len() as u64, std::sync::atomic::Ordering::Relaxed);
        }
        frame
    });
    let response = Response::from_parts(parts, BodyExt::boxed(counted));
    tracing::debug!(
        target: "kubemark_sim::http",
        "{} {method} {path} -> {} in {:?}",
        shared.cfg.name,
        response.status(),
        started.elapsed()
    );
    Ok(response)
}

async fn serve(shared: &Arc<Shared>, req: Request<Incoming>) -> Response<Body> {
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let authorization = header("authorization");
    let accept = header("accept");
    let content_type = header("content-type");
    let user_agent = header("user-agent");
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let query = parse_query(req.uri().query().unwrap_or_default());
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();

    let public = matches!(
        segments.as_slice(),
        ["version"] | ["healthz"] | ["livez"] | ["readyz"]
    );
    if segments.as_slice() == ["debug", "sim", "stats"]
        && shared
            .tokens
            .iter()
            .any(|t| authorization == format!("Bearer {t}"))
    {
        return json_response(200, &shared.stats.to_json());
    }
    let token = authorization.strip_prefix("Bearer ").unwrap_or_default();
    if !public && !shared.tokens.iter().any(|t| t == token) {
        return error_response(&ApiError::new(401, "Unauthorized", "Unauthorized"));
    }
    if !shared.injector.faults.latency.is_zero() {
        tokio::time::sleep(shared.injector.faults.latency).await;
    }
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return error_response(&ApiError::bad_request(format!("reading the body: {e}"))),
    };
    let r = Req {
        method,
        query,
        accept,
        content_type,
        user_agent,
        body,
    };

    if let Some(response) = discovery::serve(shared, &segments) {
        return response;
    }
    let Some(target) = route(&segments) else {
        return error_response(&ApiError::new(
            404,
            "NotFound",
            "the server could not find the requested resource",
        ));
    };
    let verb = verb_of(&r.method, &target, &r.query);
    if let Some(code) = shared
        .injector
        .error_for(verb, RESOURCES[target.res].plural)
    {
        let (reason, message) = match code {
            429 => (
                "TooManyRequests",
                "the server has received too many requests and has asked us to try again later",
            ),
            503 => (
                "ServiceUnavailable",
                "the server is currently unable to handle the request",
            ),
            _ => (
                "InternalError",
                "an error on the server (injected by the simulator) has prevented the request from succeeding",
            ),
        };
        return error_response(&ApiError::new(code, reason, message));
    }
    match resource(shared, &r, &target, verb).await {
        Ok(response) => response,
        Err(e) => error_response(&e),
    }
}

async fn resource(
    shared: &Arc<Shared>,
    r: &Req,
    t: &Target,
    verb: &str,
) -> Result<Response<Body>, ApiError> {
    let res = t.res;
    let resource = &RESOURCES[res];
    if t.ns.is_some() && !resource.namespaced {
        return Err(ApiError::new(
            404,
            "NotFound",
            "the server could not find the requested resource",
        ));
    }
    if let Some(sub) = &t.sub
        && !resource.subresources.contains(&sub.as_str())
        && !(res == idx::NAMESPACES && sub == "finalize")
    {
        return Err(ApiError::new(
            404,
            "NotFound",
            format!("{} has no subresource {sub}", resource.plural),
        ));
    }
    let ns = t.ns.clone().unwrap_or_default();
    match verb {
        "get" => {
            let name = t.name.as_deref().unwrap_or_default();
            if t.sub.as_deref() == Some("log") {
                return logs(shared, r, &ns, name);
            }
            let obj = shared
                .store
                .get(res, &ns, name)
                .ok_or_else(|| ApiError::not_found(res, name))?;
            if t.sub.as_deref() == Some("scale") {
                return Ok(json_response(200, &scale_of(&obj.value)));
            }
            if r.wants_table() {
                return Ok(json_response(
                    200,
                    &table::table(
                        res,
                        &[&obj.value],
                        obj.rv,
                        None,
                        table::Include::parse(r.q("includeObject")),
                    ),
                ));
            }
            Ok(respond(200, "application/json", obj.json.clone()))
        }
        "list" => list(shared, r, res, t.ns.as_deref()),
        "watch" => watch(shared, r, res, t.ns.as_deref()),
        "create" => {
            if t.name.is_some() {
                return Err(ApiError::new(
                    405,
                    "MethodNotAllowed",
                    "create is only allowed on collections",
                ));
            }
            if res == idx::SSAR {
                return Ok(json_response(201, &access_review(shared, r.object()?)));
            }
            let mut obj = r.object()?;
            check_body_kind(res, &obj)?;
            if resource.namespaced {
                match meta::meta_str(&obj, "namespace") {
                    Some(body_ns) if !body_ns.is_empty() && body_ns != ns => {
                        return Err(ApiError::bad_request(
                            "the namespace of the provided object does not match the namespace sent on the request",
                        ));
                    }
                    _ => {
                        meta::metadata_mut(&mut obj).insert("namespace".into(), json!(ns));
                    }
                }
            }
            strict(r, res, &obj)?;
            validate::defaults_and_checks(res, &mut obj, None)?;
            let manager = r.manager();
            let mut managers = patch::Managers::default();
            managers.record_update(&Value::Null, &obj, &manager);
            managers.write(&mut obj, &resource.api_version());
            if r.q("dryRun").is_some() {
                return Ok(json_response(201, &obj));
            }
            let created = shared.store.create(res, obj)?;
            Ok(respond(201, "application/json", created.json.clone()))
        }
        "update" => {
            let name = t.name.clone().unwrap_or_default();
            let incoming = r.object()?;
            check_body_kind_or_scale(res, t.sub.as_deref(), &incoming)?;
            if meta::name(&incoming) != name && t.sub.as_deref() != Some("scale") {
                return Err(ApiError::bad_request(
                    "the name of the object does not match the name on the URL",
                ));
            }
            strict(r, res, &incoming)?;
            let expected =
                meta::meta_str(&incoming, "resourceVersion").and_then(|v| v.parse().ok());
            let sub = t.sub.clone();
            let manager = r.manager();
            let updated = shared.store.modify(res, &ns, &name, expected, |current| {
                let old = current.clone();
                let mut next = match sub.as_deref() {
                    Some("status") => {
                        let mut v = old.clone();
                        v["status"] = incoming.get("status").cloned().unwrap_or(Value::Null);
                        v
                    }
                    Some("scale") => {
                        let mut v = old.clone();
                        v["spec"]["replicas"] = incoming
                            .pointer("/spec/replicas")
                            .cloned()
                            .unwrap_or(json!(0));
                        v
                    }
                    Some("finalize") => {
                        let mut v = old.clone();
                        v["spec"]["finalizers"] = incoming
                            .pointer("/spec/finalizers")
                            .cloned()
                            .unwrap_or(json!([]));
                        v
                    }
                    _ => {
                        let mut v = incoming.clone();
                        if resource.subresources.contains(&"status") {
                            keep_status(&mut v, &old);
                        }
                        v
                    }
                };
                finish_update(res, &old, &mut next, &manager)?;
                *current = next;
                Ok(())
            })?;
            Ok(updated_response(t.sub.as_deref(), &updated))
        }
        "patch" => patch_request(shared, r, t, &ns).await,
        "delete" => {
            let name = t.name.clone().unwrap_or_default();
            let options: Value = if r.body.is_empty() {
                json!({})
            } else {
                r.object().unwrap_or_else(|_| json!({}))
            };
            let policy = r
                .q("propagationPolicy")
                .map(str::to_owned)
                .or_else(|| {
                    options
                        .get("propagationPolicy")
                        .and_then(Value::as_str)
                        .map(str::to_owned)
                })
                .unwrap_or_else(|| "Background".to_owned());
            let uid = options
                .pointer("/preconditions/uid")
                .and_then(Value::as_str)
                .map(str::to_owned);
            let deleted = delete_with_policy(shared, res, &ns, &name, &policy, uid.as_deref())?;
            Ok(respond(200, "application/json", deleted.json.clone()))
        }
        "deletecollection" => {
            let labels = LabelSelector::parse(r.q("labelSelector").unwrap_or_default())?;
            let fields = FieldSelector::parse(r.q("fieldSelector").unwrap_or_default())?;
            let (items, _) = shared.store.list(res, t.ns.as_deref());
            for obj in items
                .iter()
                .filter(|o| labels.matches(&o.value) && fields.matches(&o.value))
            {
                let policy = r.q("propagationPolicy").unwrap_or("Background").to_owned();
                let _ = delete_with_policy(
                    shared,
                    res,
                    meta::namespace(&obj.value),
                    meta::name(&obj.value),
                    &policy,
                    None,
                );
            }
            Ok(json_response(
                200,
                &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success"}),
            ))
        }
        _ => Err(ApiError::new(
            405,
            "MethodNotAllowed",
            "the server does not allow this method on the requested resource",
        )),
    }
}

/// The body's kind must be the resource's (when it says one).
fn check_body_kind(res: usize, obj: &Value) -> Result<(), ApiError> {
    match obj.get("kind").and_then(Value::as_str) {
        Some(kind) if kind != RESOURCES[res].kind => Err(ApiError::bad_request(format!(
            "the body is a {kind}, the URL is for {}",
            RESOURCES[res].plural
        ))),
        _ => Ok(()),
    }
}

fn check_body_kind_or_scale(res: usize, sub: Option<&str>, obj: &Value) -> Result<(), ApiError> {
    if sub == Some("scale") {
        return Ok(());
    }
    check_body_kind(res, obj)
}

/// `fieldValidation=Strict`: unknown fields are an error.
fn strict(r: &Req, res: usize, obj: &Value) -> Result<(), ApiError> {
    if r.q("fieldValidation") == Some("Strict") {
        let unknown = validate::unknown_fields(res, obj);
        if !unknown.is_empty() {
            let list: Vec<String> = unknown
                .iter()
                .map(|f| format!("unknown field \"{f}\""))
                .collect();
            return Err(ApiError::bad_request(format!(
                "strict decoding error: {}",
                list.join(", ")
            )));
        }
    }
    Ok(())
}

/// Delete with a propagation policy: Foreground and Orphan go through the
/// garbage collector's finalizers, Background deletes at once (the collector
/// then removes dependents).
pub fn delete_with_policy(
    shared: &Shared,
    res: usize,
    ns: &str,
    name: &str,
    policy: &str,
    uid: Option<&str>,
) -> Result<Obj, ApiError> {
    let finalizer = match policy {
        "Foreground" => Some("foregroundDeletion"),
        "Orphan" => Some("orphan"),
        "Background" => None,
        other => {
            return Err(ApiError::bad_request(format!(
                "propagationPolicy {other} is not one of Foreground, Background, Orphan"
            )));
        }
    };
    if let Some(finalizer) = finalizer {
        shared.store.modify(res, ns, name, None, |v| {
            let m = meta::metadata_mut(v);
            let list = m.entry("finalizers").or_insert_with(|| json!([]));
            if let Value::Array(list) = list
                && !list.iter().any(|f| f == finalizer)
            {
                list.push(json!(finalizer));
            }
            Ok(())
        })?;
    }
    shared.store.delete(res, ns, name, uid)
}

fn scale_of(rc: &Value) -> Value {
    let m = rc.get("metadata").cloned().unwrap_or_default();
    json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {
            "name": m.get("name"),
            "namespace": m.get("namespace"),
            "uid": m.get("uid"),
            "resourceVersion": m.get("resourceVersion"),
            "creationTimestamp": m.get("creationTimestamp"),
        },
        "spec": {"replicas": rc.pointer("/spec/replicas").cloned().unwrap_or(json!(1))},
        "status": {
            "replicas": rc.pointer("/status/replicas").cloned().unwrap_or(json!(0)),
            "selector": select::rc_selector_text(rc),
        },
    })
}

fn access_review(shared: &Shared, mut review: Value) -> Value {
    let attrs = review
        .pointer("/spec/resourceAttributes")
        .cloned()
        .unwrap_or_default();
    let verb = attrs
        .get("verb")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let resource = attrs
        .get("resource")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let denied = shared
        .cfg
        .deny
        .iter()
        .any(|(v, r)| (v == "*" || v == verb) && (r == "*" || r == resource));
    review["status"] = if denied {
        json!({"allowed": false, "denied": true, "reason": format!("the simulator denies {verb} on {resource}")})
    } else {
        json!({"allowed": true, "reason": "the simulator allows everything it was not told to deny"})
    };
    review["kind"] = json!("SelfSubjectAccessReview");
    review["apiVersion"] = json!("authorization.k8s.io/v1");
    review
}

fn logs(shared: &Shared, r: &Req, ns: &str, name: &str) -> Result<Response<Body>, ApiError> {
    let pod = shared
        .store
        .get(idx::PODS, ns, name)
        .ok_or_else(|| ApiError::not_found(idx::PODS, name))?;
    let containers: Vec<String> = pod
        .value
        .pointer("/spec/containers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|c| c["name"].as_str().map(str::to_owned))
        .collect();
    let container = match r.q("container") {
        Some(c) => c.to_owned(),
        None if containers.len() == 1 => containers[0].clone(),
        None => {
            return Err(ApiError::bad_request(format!(
                "a container name must be specified for pod {name}, choose one of: [{}]",
                containers.join(" ")
            )));
        }
    };
    if !containers.contains(&container) {
        return Err(ApiError::bad_request(format!(
            "container {container} is not valid for pod {name}"
        )));
    }
    let lines = shared.logs.lines(ns, name, &container);
    let tail = r
        .q("tailLines")
        .and_then(|t| t.parse::<usize>().ok())
        .unwrap_or(usize::MAX);
    let start = lines.len().saturating_sub(tail);
    let mut text = lines[start..].join("\n");
    if !text.is_empty() {
        text.push('\n');
    }
    Ok(respond(200, "text/plain", text))
}

fn list(
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

/// One watch: backlog or synthetic ADDED events, then the live feed; ends on
/// `timeoutSeconds`, on an injected cut, or when the client is too slow.
fn watch(
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

async fn patch_request(
    shared: &Arc<Shared>,
    r: &Req,
    t: &Target,
    ns: &str,
) -> Result<Response<Body>, ApiError> {
    let res = t.res;
    let resource = &RESOURCES[res];
    let name = t.name.clone().unwrap_or_default();
    let content_type = r
        .content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_owned();
    let apply = content_type == "application/apply-patch+yaml";
    let body = r.object()?;
    if apply {
        let manager = r
            .q("fieldManager")
            .ok_or_else(|| {
                ApiError::new(
                    422,
                    "Invalid",
                    "PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: is required for apply patch",
                )
            })?
            .to_owned();
        check_body_kind(res, &body)?;
        if meta::name(&body) != name {
            return Err(ApiError::bad_request(
                "the name of the object does not match the name on the URL",
            ));
        }
        // Server-side apply converts the body to a typed object first; a field
        // the schema does not declare fails there, as kube-apiserver answers it
        // (500, no reason: "Error from server: ..." in kubectl).
        let unknown = validate::unknown_fields(res, &body);
        if let Some(field) = unknown.first() {
            let r = &RESOURCES[res];
            let object = if ns.is_empty() {
                name.clone()
            } else {
                format!("{ns}/{name}")
            };
            // Go's GroupVersionKind: `apps/v1, Kind=X`, and `/v1, Kind=X` for the core group.
            let (group, version, kind) = (r.group, r.version, r.kind);
            return Err(ApiError::new(
                500,
                "",
                format!(
                    "failed to create typed patch object ({object}; {group}/{version}, Kind={kind}): .{field}: field not declared in schema"
                ),
            ));
        }
        let force = matches!(r.q("force"), Some("true" | "1"));
        if t.sub.is_none() && shared.store.get(res, ns, &name).is_none() {
            let mut obj = patch::server_side_apply(
                &Value::Null,
                &body,
                &manager,
                force,
                &resource.api_version(),
            )?;
            if resource.namespaced {
                meta::metadata_mut(&mut obj).insert("namespace".into(), json!(ns));
            }
            validate::defaults_and_checks(res, &mut obj, None)?;
            return match shared.store.create(res, obj) {
                Ok(created) => Ok(respond(201, "application/json", created.json.clone())),
                // Created meanwhile: apply to what is there now.
                Err(e) if e.code == 409 => {
                    apply_existing(shared, res, ns, &name, &body, &manager, force, None)
                }
                Err(e) => Err(e),
            };
        }
        return apply_existing(
            shared,
            res,
            ns,
            &name,
            &body,
            &manager,
            force,
            t.sub.as_deref(),
        );
    }
    let manager = r.manager();
    let sub = t.sub.clone();
    let updated = shared.store.modify(res, ns, &name, None, |current| {
        let old = current.clone();
        let mut next = match sub.as_deref() {
            Some("scale") => {
                let mut scale = scale_of(&old);
                run_patch(&content_type, &mut scale, &body)?;
                let mut v = old.clone();
                v["spec"]["replicas"] =
                    scale.pointer("/spec/replicas").cloned().unwrap_or(json!(0));
                v
            }
            _ => {
                let mut v = old.clone();
                run_patch(&content_type, &mut v, &body)?;
                v
            }
        };
        if sub.is_none() && resource.subresources.contains(&"status") {
            // The main resource ignores status changes; /status ignores the rest.
            keep_status(&mut next, &old);
        } else if sub.as_deref() == Some("status") {
            let status = next.get("status").cloned();
            next = old.clone();
            if let Some(s) = status {
                next["status"] = s;
            }
        }
        finish_update(res, &old, &mut next, &manager)?;
        *current = next;
        Ok(())
    })?;
    Ok(updated_response(t.sub.as_deref(), &updated))
}

/// A write to a resource with a status subresource keeps the stored status
/// (only `/status` changes it).
fn keep_status(next: &mut Value, old: &Value) {
    match old.get("status") {
        Some(s) => next["status"] = s.clone(),
        None => {
            if let Some(m) = next.as_object_mut() {
                m.remove("status");
            }
        }
    }
}

/// Defaults, validation and `managedFields` for an update or a patch of `old` into `next`.
fn finish_update(res: usize, old: &Value, next: &mut Value, manager: &str) -> Result<(), ApiError> {
    validate::defaults_and_checks(res, next, Some(old))?;
    let mut managers = patch::Managers::read(old);
    managers.record_update(old, next, manager);
    managers.write(next, &RESOURCES[res].api_version());
    Ok(())
}

/// The answer to an update or a patch: the object, or for `/scale` its Scale.
fn updated_response(sub: Option<&str>, updated: &Obj) -> Response<Body> {
    if sub == Some("scale") {
        json_response(200, &scale_of(&updated.value))
    } else {
        respond(200, "application/json", updated.json.clone())
    }
}

fn run_patch(content_type: &str, target: &mut Value, body: &Value) -> Result<(), ApiError> {
    match content_type {
        "application/merge-patch+json" => {
            patch::merge_patch(target, body);
            Ok(())
        }
        "application/strategic-merge-patch+json" => {
            patch::strategic_merge(target, body);
            Ok(())
        }
        "application/json-patch+json" => patch::json_patch(target, body),
        other => Err(ApiError::new(
            415,
            "UnsupportedMediaType",
            format!(
                "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml, application/strategic-merge-patch+json (got {other})"
            ),
        )),
    }
}

#[allow(clippy::too_many_arguments)]
fn apply_existing(
    shared: &Shared,
    res: usize,
    ns: &str,
    name: &str,
    body: &Value,
    manager: &str,
    force: bool,
    sub: Option<&str>,
) -> Result<Response<Body>, ApiError> {
    let api_version = RESOURCES[res].api_version();
    let updated = shared.store.modify(res, ns, name, None, |current| {
        let old = current.clone();
        let mut next = patch::server_side_apply(&old, body, manager, force, &api_version)?;
        if sub == Some("status") {
            let status = next.get("status").cloned();
            let managed = next.pointer("/metadata/managedFields").cloned();
            next = old.clone();
            if let Some(s) = status {
                next["status"] = s;
            }
            if let Some(m) = managed {
                meta::metadata_mut(&mut next).insert("managedFields".into(), m);
            }
        } else if RESOURCES[res].subresources.contains(&"status")
            && let Some(s) = old.get("status")
        {
            next["status"] = s.clone();
        }
        validate::defaults_and_checks(res, &mut next, Some(&old))?;
        *current = next;
        Ok(())
    })?;
    Ok(respond(200, "application/json", updated.json.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        let t = route(&["api", "v1", "namespaces", "k", "pods", "p", "log"]).unwrap();
        assert_eq!(
            (t.res, t.ns.as_deref(), t.name.as_deref(), t.sub.as_deref()),
            (idx::PODS, Some("k"), Some("p"), Some("log"))
        );
        let t = route(&["api", "v1", "namespaces", "k"]).unwrap();
        assert_eq!((t.res, t.name.as_deref()), (idx::NAMESPACES, Some("k")));
        let t = route(&["api", "v1", "namespaces", "k", "status"]).unwrap();
        assert_eq!(
            (t.res, t.name.as_deref(), t.sub.as_deref()),
            (idx::NAMESPACES, Some("k"), Some("status"))
        );
        let t = route(&["api", "v1", "namespaces", "k", "secrets"]).unwrap();
        assert_eq!(
            (t.res, t.ns.as_deref(), t.name),
            (idx::SECRETS, Some("k"), None)
        );
        let t = route(&["api", "v1", "nodes"]).unwrap();
        assert_eq!((t.res, t.name), (idx::NODES, None));
        let t = route(&[
            "apis",
            "authorization.k8s.io",
            "v1",
            "selfsubjectaccessreviews",
        ])
        .unwrap();
        assert_eq!(t.res, idx::SSAR);
        assert!(route(&["api", "v1", "widgets"]).is_none());
    }

    #[test]
    fn queries_decode() {
        let q = parse_query(
            "labelSelector=name%3Dhollow-node&limit=500&fieldSelector=metadata.name%3Dn1+x",
        );
        assert_eq!(q["labelSelector"], "name=hollow-node");
        assert_eq!(q["limit"], "500");
        assert_eq!(q["fieldSelector"], "metadata.name=n1 x");
        assert_eq!(percent_decode("100%"), "100%");
    }

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
