//! What the API server does to an object before storing it: type checks
//! (through the k8s-openapi types, as a real server decodes into Go structs),
//! unknown fields for `fieldValidation=Strict`, defaults, and the validation
//! rules the kubemark workflow can run into.

use k8s_openapi::api::authorization::v1::SelfSubjectAccessReview;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{
    ConfigMap, Event, Namespace, Node, Pod, ReplicationController, Secret,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::meta::{self, RESOURCES, idx};
use crate::store::ApiError;

fn round_trip<T: DeserializeOwned + Serialize>(res: usize, obj: &Value) -> Result<Value, ApiError> {
    let typed: T = serde_json::from_value(obj.clone()).map_err(|e| {
        let kind = RESOURCES[res].kind;
        ApiError::bad_request(format!(
            "{kind} in version \"v1\" cannot be handled as a {kind}: {e}"
        ))
    })?;
    serde_json::to_value(typed).map_err(|e| ApiError::bad_request(e.to_string()))
}

fn typed(res: usize, obj: &Value) -> Result<Value, ApiError> {
    match res {
        idx::NAMESPACES => round_trip::<Namespace>(res, obj),
        idx::SECRETS => round_trip::<Secret>(res, obj),
        idx::CONFIGMAPS => round_trip::<ConfigMap>(res, obj),
        idx::PODS => round_trip::<Pod>(res, obj),
        idx::NODES => round_trip::<Node>(res, obj),
        idx::RCS => round_trip::<ReplicationController>(res, obj),
        idx::EVENTS => round_trip::<Event>(res, obj),
        idx::SSAR => round_trip::<SelfSubjectAccessReview>(res, obj),
        idx::LEASES => round_trip::<Lease>(res, obj),
        idx::DAEMONSETS => round_trip::<k8s_openapi::api::apps::v1::DaemonSet>(res, obj),
        _ => Ok(obj.clone()),
    }
}

fn diff(input: &Value, known: &Value, path: &str, out: &mut Vec<String>) {
    match (input, known) {
        (Value::Object(i), Value::Object(k)) => {
            for (key, v) in i {
                if v.is_null() {
                    continue;
                }
                let here = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                match k.get(key) {
                    None => out.push(here),
                    Some(kv) => diff(v, kv, &here, out),
                }
            }
        }
        (Value::Array(i), Value::Array(k)) => {
            for (n, (iv, kv)) in i.iter().zip(k).enumerate() {
                diff(iv, kv, &format!("{path}[{n}]"), out);
            }
        }
        _ => {}
    }
}

/// Fields the resource's schema does not have (`spec.contaners`), for `fieldValidation=Strict`.
pub fn unknown_fields(res: usize, obj: &Value) -> Vec<String> {
    let Ok(known) = typed(res, obj) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    diff(obj, &known, "", &mut out);
    out
}

fn required(res: usize, obj: &Value, field: &str) -> ApiError {
    ApiError::invalid(res, meta::name(obj), format!("{field}: Required value"))
}

fn default_containers(containers: Option<&mut Value>) {
    for c in containers
        .and_then(Value::as_array_mut)
        .into_iter()
        .flatten()
    {
        let image = c["image"].as_str().unwrap_or_default().to_owned();
        let tag = image.rsplit('/').next().unwrap_or_default();
        let latest = !tag.contains(':') || tag.ends_with(":latest");
        let Some(m) = c.as_object_mut() else { continue };
        m.entry("imagePullPolicy").or_insert_with(|| {
            json!(if latest && !image.contains('@') {
                "Always"
            } else {
                "IfNotPresent"
            })
        });
        m.entry("terminationMessagePath")
            .or_insert_with(|| json!("/dev/termination-log"));
        m.entry("terminationMessagePolicy")
            .or_insert_with(|| json!("File"));
        m.entry("resources").or_insert_with(|| json!({}));
    }
}

fn check_containers(
    res: usize,
    obj: &Value,
    containers: Option<&Value>,
    field: &str,
) -> Result<(), ApiError> {
    let list = containers.and_then(Value::as_array);
    if list.is_none_or(Vec::is_empty) {
        return Err(required(res, obj, field));
    }
    for (i, c) in list.into_iter().flatten().enumerate() {
        if c["name"].as_str().is_none_or(str::is_empty) {
            return Err(required(res, obj, &format!("{field}[{i}].name")));
        }
        if c["image"].as_str().is_none_or(str::is_empty) {
            return Err(required(res, obj, &format!("{field}[{i}].image")));
        }
    }
    Ok(())
}

fn default_pod_spec(spec: &mut Value) {
    let Some(m) = spec.as_object_mut() else {
        return;
    };
    m.entry("restartPolicy").or_insert_with(|| json!("Always"));
    m.entry("dnsPolicy")
        .or_insert_with(|| json!("ClusterFirst"));
    m.entry("schedulerName")
        .or_insert_with(|| json!("default-scheduler"));
    m.entry("terminationGracePeriodSeconds")
        .or_insert_with(|| json!(30));
    m.entry("securityContext").or_insert_with(|| json!({}));
    default_containers(m.get_mut("containers"));
    default_containers(m.get_mut("initContainers"));
}

/// Defaults and validation for a create (`old` = None) or an update.
pub fn defaults_and_checks(
    res: usize,
    obj: &mut Value,
    old: Option<&Value>,
) -> Result<(), ApiError> {
    typed(res, obj)?;
    match res {
        idx::NAMESPACES => {
            let name = meta::name(obj).to_owned();
            if old.is_none() && obj.pointer("/spec/finalizers").is_none() {
                obj["spec"] = json!({"finalizers": ["kubernetes"]});
            }
            let labels = meta::metadata_mut(obj)
                .entry("labels")
                .or_insert_with(|| json!({}));
            labels["kubernetes.io/metadata.name"] = json!(name);
            if obj.pointer("/metadata/deletionTimestamp").is_none() {
                obj["status"] = json!({"phase": "Active"});
            }
        }
        idx::SECRETS => {
            if obj
                .get("type")
                .and_then(Value::as_str)
                .is_none_or(str::is_empty)
            {
                obj["type"] = json!("Opaque");
            }
            if let Some(Value::Object(string_data)) =
                obj.as_object_mut().and_then(|m| m.remove("stringData"))
            {
                let engine = base64::engine::general_purpose::STANDARD;
                let data = obj
                    .as_object_mut()
                    .map(|m| m.entry("data").or_insert_with(|| json!({})));
                if let Some(Value::Object(data)) = data {
                    for (k, v) in string_data {
                        use base64::Engine as _;
                        data.insert(k, json!(engine.encode(v.as_str().unwrap_or_default())));
                    }
                }
            }
            if let Some(old) = old
                && old.get("immutable") == Some(&json!(true))
                && old.get("data") != obj.get("data")
            {
                return Err(ApiError::invalid(
                    res,
                    meta::name(obj),
                    "data: Forbidden: field is immutable when `immutable` is set",
                ));
            }
        }
        idx::PODS => {
            check_containers(res, obj, obj.pointer("/spec/containers"), "spec.containers")?;
            if let Some(spec) = obj.get_mut("spec") {
                default_pod_spec(spec);
            }
            if let Some(old) = old {
                let strip = |v: &Value| {
                    let mut s = v.get("spec").cloned().unwrap_or_default();
                    for c in s
                        .get_mut("containers")
                        .and_then(Value::as_array_mut)
                        .into_iter()
                        .flatten()
                    {
                        if let Some(m) = c.as_object_mut() {
                            m.remove("image");
                        }
                    }
                    if let Some(m) = s.as_object_mut() {
                        m.remove("activeDeadlineSeconds");
                        m.remove("tolerations");
                    }
                    s
                };
                if strip(old) != strip(obj) {
                    return Err(ApiError::invalid(
                        res,
                        meta::name(obj),
                        "spec: Forbidden: pod updates may not change fields other than `spec.containers[*].image`, `spec.activeDeadlineSeconds` or `spec.tolerations` (only additions to existing tolerations)",
                    ));
                }
            } else {
                // The DefaultTolerationSeconds admission plugin.
                let tolerations = obj["spec"]
                    .as_object_mut()
                    .map(|m| m.entry("tolerations").or_insert_with(|| json!([])));
                if let Some(Value::Array(t)) = tolerations {
                    for key in [
                        "node.kubernetes.io/not-ready",
                        "node.kubernetes.io/unreachable",
                    ] {
                        if !t.iter().any(|x| x["key"] == key) {
                            t.push(json!({"key": key, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}));
                        }
                    }
                }
                if obj.get("status").is_none_or(|s| s.get("phase").is_none()) {
                    obj["status"] = json!({"phase": "Pending", "qosClass": "Burstable"});
                }
            }
        }
        idx::RCS => {
            let template_labels = obj.pointer("/spec/template/metadata/labels").cloned();
            if obj.pointer("/spec/template").is_none() {
                return Err(required(res, obj, "spec.template"));
            }
            check_containers(
                res,
                obj,
                obj.pointer("/spec/template/spec/containers"),
                "spec.template.spec.containers",
            )?;
            if obj
                .pointer("/spec/selector")
                .is_none_or(|s| s.as_object().is_none_or(|m| m.is_empty()))
            {
                obj["spec"]["selector"] = template_labels.clone().unwrap_or_else(|| json!({}));
            }
            if obj.pointer("/spec/replicas").is_none() {
                obj["spec"]["replicas"] = json!(1);
            }
            let selector = obj
                .pointer("/spec/selector")
                .and_then(Value::as_object)
                .cloned()
                .unwrap_or_default();
            let labels = template_labels.unwrap_or_default();
            if selector.is_empty() || selector.iter().any(|(k, v)| labels.get(k) != Some(v)) {
                return Err(ApiError::invalid(
                    res,
                    meta::name(obj),
                    "spec.template.metadata.labels: Invalid value: `selector` does not match template `labels`",
                ));
            }
            if obj
                .pointer("/spec/replicas")
                .and_then(Value::as_i64)
                .is_some_and(|r| r < 0)
            {
                return Err(ApiError::invalid(
                    res,
                    meta::name(obj),
                    "spec.replicas: Invalid value: must be greater than or equal to 0",
                ));
            }
            if let Some(spec) = obj.pointer_mut("/spec/template/spec") {
                default_pod_spec(spec);
            }
        }
        _ => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_fields_are_found() {
        let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "labelz": {}},
            "spec": {"containers": [{"name": "a", "image": "x", "imagePullPolicyy": "Always"}]}});
        assert_eq!(
            unknown_fields(idx::PODS, &pod),
            vec!["metadata.labelz", "spec.containers[0].imagePullPolicyy"]
        );
        let ok = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s", "creationTimestamp": null}, "data": {"k": "dg=="}});
        assert!(unknown_fields(idx::SECRETS, &ok).is_empty());
    }

    #[test]
    fn wrong_types_are_bad_requests() {
        let mut pod = json!({"metadata": {"name": "p"}, "spec": {"containers": "nope"}});
        let e = defaults_and_checks(idx::PODS, &mut pod, None).unwrap_err();
        assert_eq!(e.code, 400);
        assert!(
            e.message.contains("cannot be handled as a Pod"),
            "{}",
            e.message
        );
    }

    #[test]
    fn rc_defaults_and_selector_check() {
        let mut rc = json!({"metadata": {"name": "hollow-node"}, "spec": {"template": {"metadata": {"labels": {"name": "hollow-node"}}, "spec": {"containers": [{"name": "k", "image": "i:1"}]}}}});
        defaults_and_checks(idx::RCS, &mut rc, None).unwrap();
        assert_eq!(rc["spec"]["replicas"], 1);
        assert_eq!(rc["spec"]["selector"], json!({"name": "hollow-node"}));
        assert_eq!(
            rc["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy"],
            "IfNotPresent"
        );
        let mut bad = rc.clone();
        bad["spec"]["selector"] = json!({"name": "other"});
        assert_eq!(
            defaults_and_checks(idx::RCS, &mut bad, None)
                .unwrap_err()
                .code,
            422
        );
    }

    #[test]
    fn secrets_merge_string_data() {
        let mut s = json!({"metadata": {"name": "s"}, "stringData": {"a": "hello"}});
        defaults_and_checks(idx::SECRETS, &mut s, None).unwrap();
        assert_eq!(
            s,
            json!({"metadata": {"name": "s"}, "type": "Opaque", "data": {"a": "aGVsbG8="}})
        );
    }
}
