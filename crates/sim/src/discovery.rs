//! Discovery and OpenAPI: `/version`, `/api`, `/api/v1`, `/apis`, the group
//! documents, health endpoints, and the OpenAPI v3 documents kubectl reads
//! before `apply --server-side` (it needs each kind's PATCH operation with a
//! `fieldValidation` parameter and `x-kubernetes-group-version-kind`).

use std::sync::Arc;

use serde_json::{Value, json};

use crate::Shared;
use crate::http::Body;
use crate::meta::{GROUPS, RESOURCES, Resource};

fn ok(value: &Value) -> hyper::Response<Body> {
    let mut r = hyper::Response::new(http_body_util::BodyExt::boxed(http_body_util::Full::new(
        bytes::Bytes::from(serde_json::to_vec(value).unwrap_or_default()),
    )));
    r.headers_mut().insert(
        "content-type",
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}

fn verbs(r: &Resource) -> Value {
    if !r.stored {
        return json!(["create"]);
    }
    json!([
        "create",
        "delete",
        "deletecollection",
        "get",
        "list",
        "patch",
        "update",
        "watch"
    ])
}

fn resource_list(group: &str, version: &str) -> Value {
    let mut resources = Vec::new();
    for r in RESOURCES
        .iter()
        .filter(|r| r.group == group && r.version == version)
    {
        let mut entry = json!({
            "name": r.plural,
            "singularName": r.singular,
            "namespaced": r.namespaced,
            "kind": r.kind,
            "verbs": verbs(r),
        });
        if !r.short_names.is_empty() {
            entry["shortNames"] = json!(r.short_names);
        }
        if matches!(r.kind, "Pod" | "ReplicationController") {
            entry["categories"] = json!(["all"]);
        }
        resources.push(entry);
        for sub in r.subresources {
            let (kind, group, version, verbs) = match *sub {
                "scale" => (
                    "Scale",
                    Some("autoscaling"),
                    Some("v1"),
                    json!(["get", "patch", "update"]),
                ),
                "log" => (r.kind, None, None, json!(["get"])),
                _ => (r.kind, None, None, json!(["get", "patch", "update"])),
            };
            let mut e = json!({
                "name": format!("{}/{sub}", r.plural),
                "singularName": "",
                "namespaced": r.namespaced,
                "kind": kind,
                "verbs": verbs,
            });
            if let (Some(g), Some(v)) = (group, version) {
                e["group"] = json!(g);
                e["version"] = json!(v);
            }
            resources.push(e);
        }
        if r.kind == "Namespace" {
            resources.push(json!({"name": "namespaces/finalize", "singularName": "", "namespaced": false, "kind": "Namespace", "verbs": ["update"]}));
        }
    }
    let group_version = if group.is_empty() {
        version.to_owned()
    } else {
        format!("{group}/{version}")
    };
    json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version, "resources": resources})
}

fn group(name: &str) -> Value {
    let gv = json!({"groupVersion": format!("{name}/v1"), "version": "v1"});
    json!({"name": name, "versions": [gv.clone()], "preferredVersion": gv})
}

/// The responses discovery owns, if the path is one of them.
pub fn serve(shared: &Arc<Shared>, segments: &[&str]) -> Option<hyper::Response<Body>> {
    let version = &shared.cfg.version;
    let value = match segments {
        ["version"] => {
            let v = version.trim_start_matches('v');
            let mut parts = v.split('.');
            json!({
                "major": parts.next().unwrap_or("1"),
                "minor": parts.next().unwrap_or("33"),
                "gitVersion": version,
                "gitCommit": "0000000000000000000000000000000000000000",
                "gitTreeState": "clean",
                "buildDate": "2026-01-01T00:00:00Z",
                "goVersion": "go1.24.0",
                "compiler": "gc",
                "platform": "linux/amd64",
                "emulationMajor": "1",
                "emulationMinor": "33",
            })
        }
        ["healthz"] | ["livez"] | ["readyz"] => {
            let mut r = hyper::Response::new(http_body_util::BodyExt::boxed(
                http_body_util::Full::new(bytes::Bytes::from_static(b"ok")),
            ));
            r.headers_mut().insert(
                "content-type",
                hyper::header::HeaderValue::from_static("text/plain"),
            );
            return Some(r);
        }
        ["api"] => json!({
            "kind": "APIVersions",
            "versions": ["v1"],
            "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": shared.host}],
        }),
        ["api", "v1"] => resource_list("", "v1"),
        ["apis"] => json!({
            "kind": "APIGroupList",
            "apiVersion": "v1",
            "groups": GROUPS.iter().map(|g| group(g)).collect::<Vec<_>>(),
        }),
        ["apis", g] if GROUPS.contains(g) => {
            let mut v = group(g);
            v["kind"] = json!("APIGroup");
            v["apiVersion"] = json!("v1");
            v
        }
        ["apis", g, "v1"] if GROUPS.contains(g) => resource_list(g, "v1"),
        ["openapi", "v3"] => {
            let mut paths = serde_json::Map::new();
            paths.insert(
                "api/v1".into(),
                json!({"serverRelativeURL": format!("/openapi/v3/api/v1?hash={}", doc_hash("", version))}),
            );
            for g in GROUPS {
                paths.insert(
                    format!("apis/{g}/v1"),
                    json!({"serverRelativeURL": format!("/openapi/v3/apis/{g}/v1?hash={}", doc_hash(g, version))}),
                );
            }
            json!({"paths": paths})
        }
        ["openapi", "v3", "api", "v1"] => openapi_doc("", version),
        ["openapi", "v3", "apis", g, "v1"] if GROUPS.contains(g) => openapi_doc(g, version),
        ["openapi", "v2"] => {
            return Some(crate::http::not_found_response(
                "the simulator serves OpenAPI v3 only (/openapi/v3)",
            ));
        }
        _ => return None,
    };
    Some(ok(&value))
}

fn doc_hash(group: &str, version: &str) -> String {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (group, version, RESOURCES.len()).hash(&mut h);
    format!("{:016X}", h.finish())
}

fn schema_name(r: &Resource) -> String {
    match r.group {
        "" => format!("io.k8s.api.core.{}.{}", r.version, r.kind),
        g => format!(
            "io.k8s.api.{}.{}.{}",
            g.split('.').next().unwrap_or(g),
            r.version,
            r.kind
        ),
    }
}

fn operation(r: &Resource, action: &str, id: &str) -> Value {
    let reference = json!({"$ref": format!("#/components/schemas/{}", schema_name(r))});
    let mut op = json!({
        "operationId": id,
        "x-kubernetes-action": action,
        "x-kubernetes-group-version-kind": {"group": r.group, "version": r.version, "kind": r.kind},
        "responses": {"200": {"description": "OK", "content": {"application/json": {"schema": reference}}}},
        "parameters": [
            {"name": "dryRun", "in": "query", "schema": {"type": "string", "uniqueItems": true}},
            {"name": "fieldManager", "in": "query", "schema": {"type": "string", "uniqueItems": true}},
            {"name": "fieldValidation", "in": "query", "schema": {"type": "string", "uniqueItems": true}},
        ],
    });
    if action == "patch" {
        if let Some(p) = op["parameters"].as_array_mut() {
            p.push(json!({"name": "force", "in": "query", "schema": {"type": "boolean", "uniqueItems": true}}));
        }
        op["requestBody"] = json!({"content": {
            "application/apply-patch+yaml": {"schema": {"$ref": "#/components/schemas/io.k8s.apimachinery.pkg.apis.meta.v1.Patch"}},
            "application/json-patch+json": {"schema": {"$ref": "#/components/schemas/io.k8s.apimachinery.pkg.apis.meta.v1.Patch"}},
            "application/merge-patch+json": {"schema": {"$ref": "#/components/schemas/io.k8s.apimachinery.pkg.apis.meta.v1.Patch"}},
            "application/strategic-merge-patch+json": {"schema": {"$ref": "#/components/schemas/io.k8s.apimachinery.pkg.apis.meta.v1.Patch"}},
        }, "required": true});
    } else if action == "post" || action == "put" {
        op["requestBody"] = json!({"content": {"*/*": {"schema": reference}}, "required": true});
    }
    op
}

fn openapi_doc(group: &str, version: &str) -> Value {
    let mut paths = serde_json::Map::new();
    let mut schemas = serde_json::Map::new();
    schemas.insert(
        "io.k8s.apimachinery.pkg.apis.meta.v1.Patch".into(),
        json!({"type": "object", "description": "Patch is provided to give a concrete name and type to the Kubernetes PATCH request body."}),
    );
    for r in RESOURCES.iter().filter(|r| r.group == group) {
        let prefix = if group.is_empty() {
            "/api/v1".to_owned()
        } else {
            format!("/apis/{group}/{}", r.version)
        };
        let scope = if r.namespaced { "Namespaced" } else { "" };
        let collection = if r.namespaced {
            format!("{prefix}/namespaces/{{namespace}}/{}", r.plural)
        } else {
            format!("{prefix}/{}", r.plural)
        };
        let kind = r.kind;
        if r.stored {
            paths.insert(
                format!("{collection}/{{name}}"),
                json!({
                    "get": operation(r, "get", &format!("readCoreV1{scope}{kind}")),
                    "put": operation(r, "put", &format!("replaceCoreV1{scope}{kind}")),
                    "patch": operation(r, "patch", &format!("patchCoreV1{scope}{kind}")),
                    "delete": operation(r, "delete", &format!("deleteCoreV1{scope}{kind}")),
                }),
            );
            paths.insert(
                collection,
                json!({
                    "get": operation(r, "list", &format!("listCoreV1{scope}{kind}")),
                    "post": operation(r, "post", &format!("createCoreV1{scope}{kind}")),
                }),
            );
        } else {
            paths.insert(
                collection,
                json!({"post": operation(r, "post", &format!("create{kind}"))}),
            );
        }
        schemas.insert(
            schema_name(r),
            json!({
                "type": "object",
                "description": format!("{kind} (served by the kubemark simulator)"),
                "properties": {
                    "apiVersion": {"type": "string"},
                    "kind": {"type": "string"},
                    "metadata": {"type": "object"},
                },
                "x-kubernetes-group-version-kind": [{"group": r.group, "version": r.version, "kind": kind}],
            }),
        );
    }
    json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": version},
        "paths": paths,
        "components": {"schemas": schemas},
    })
}
