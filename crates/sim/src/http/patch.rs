//! The PATCH verb: server-side apply (creating the object when it is new),
//! JSON merge patch, strategic merge patch and JSON patch, on the object or
//! its `status` or `scale`.

use std::sync::Arc;

use hyper::Response;
use serde_json::{Value, json};

use super::request::Req;
use super::route::Target;
use super::subresources::scale_of;
use super::verbs::{check_body_kind, finish_update, keep_status, updated_response};
use super::{Body, respond};
use crate::meta::{self, RESOURCES};
use crate::store::ApiError;
use crate::{Shared, patch, validate};

pub(super) fn patch(
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
