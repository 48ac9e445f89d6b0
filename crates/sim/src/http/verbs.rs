//! The verbs on a routed resource: the checks every verb shares, then get,
//! create, update, delete and deletecollection here (list, watch and patch in
//! their own modules), with the helpers updates and patches share.

use std::sync::Arc;

use hyper::Response;
use serde_json::{Value, json};

use super::request::Req;
use super::route::{Target, Verb};
use super::subresources::{logs, scale_of};
use super::{Body, json_response, list, patch as patch_verb, respond, watch};
use crate::meta::{self, RESOURCES, idx};
use crate::select::{FieldSelector, LabelSelector};
use crate::store::{ApiError, Obj};
use crate::{Shared, patch, table, validate};

/// Serve `verb` on `t` (`None`: a method the API does not serve, 405).
pub(super) fn resource(
    shared: &Arc<Shared>,
    r: &Req,
    t: &Target,
    verb: Option<Verb>,
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
        Some(Verb::Get) => get(shared, r, t, &ns),
        Some(Verb::List) => list::list(shared, r, res, t.ns.as_deref()),
        Some(Verb::Watch) => watch::watch(shared, r, res, t.ns.as_deref()),
        Some(Verb::Create) => create(shared, r, t, &ns),
        Some(Verb::Update) => update(shared, r, t, &ns),
        Some(Verb::Patch) => patch_verb::patch(shared, r, t, &ns),
        Some(Verb::Delete) => delete(shared, r, t, &ns),
        Some(Verb::DeleteCollection) => delete_collection(shared, r, t),
        None => Err(ApiError::new(
            405,
            "MethodNotAllowed",
            "the server does not allow this method on the requested resource",
        )),
    }
}

fn get(shared: &Shared, r: &Req, t: &Target, ns: &str) -> Result<Response<Body>, ApiError> {
    let res = t.res;
    let name = t.name.as_deref().unwrap_or_default();
    if t.sub.as_deref() == Some("log") {
        return logs(shared, r, ns, name);
    }
    let obj = shared
        .store
        .get(res, ns, name)
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

fn create(shared: &Shared, r: &Req, t: &Target, ns: &str) -> Result<Response<Body>, ApiError> {
    let res = t.res;
    let resource = &RESOURCES[res];
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

fn update(shared: &Shared, r: &Req, t: &Target, ns: &str) -> Result<Response<Body>, ApiError> {
    let res = t.res;
    let resource = &RESOURCES[res];
    let name = t.name.clone().unwrap_or_default();
    let incoming = r.object()?;
    check_body_kind_or_scale(res, t.sub.as_deref(), &incoming)?;
    if meta::name(&incoming) != name && t.sub.as_deref() != Some("scale") {
        return Err(ApiError::bad_request(
            "the name of the object does not match the name on the URL",
        ));
    }
    strict(r, res, &incoming)?;
    let expected = meta::meta_str(&incoming, "resourceVersion").and_then(|v| v.parse().ok());
    let sub = t.sub.clone();
    let manager = r.manager();
    let updated = shared.store.modify(res, ns, &name, expected, |current| {
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

fn delete(shared: &Shared, r: &Req, t: &Target, ns: &str) -> Result<Response<Body>, ApiError> {
    let res = t.res;
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
    let deleted = delete_with_policy(shared, res, ns, &name, &policy, uid.as_deref())?;
    Ok(respond(200, "application/json", deleted.json.clone()))
}

fn delete_collection(shared: &Shared, r: &Req, t: &Target) -> Result<Response<Body>, ApiError> {
    let res = t.res;
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

/// The body's kind must be the resource's (when it says one).
pub(super) fn check_body_kind(res: usize, obj: &Value) -> Result<(), ApiError> {
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
pub(super) fn strict(r: &Req, res: usize, obj: &Value) -> Result<(), ApiError> {
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

/// A write to a resource with a status subresource keeps the stored status
/// (only `/status` changes it).
pub(super) fn keep_status(next: &mut Value, old: &Value) {
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
pub(super) fn finish_update(
    res: usize,
    old: &Value,
    next: &mut Value,
    manager: &str,
) -> Result<(), ApiError> {
    validate::defaults_and_checks(res, next, Some(old))?;
    let mut managers = patch::Managers::read(old);
    managers.record_update(old, next, manager);
    managers.write(next, &RESOURCES[res].api_version());
    Ok(())
}

/// The answer to an update or a patch: the object, or for `/scale` its Scale.
pub(super) fn updated_response(sub: Option<&str>, updated: &Obj) -> Response<Body> {
    if sub == Some("scale") {
        json_response(200, &scale_of(&updated.value))
    } else {
        respond(200, "application/json", updated.json.clone())
    }
}
