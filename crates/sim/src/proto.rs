//! Protobuf request bodies: `kubectl create namespace|secret|configmap` POSTs
//! `application/vnd.kubernetes.protobuf` (the `k8s\0` envelope around a
//! `runtime.Unknown`) and does not fall back to JSON. The messages below are
//! the subset of `k8s.io/api/core/v1` those commands send, with the field
//! tags of `generated.proto`.

use std::collections::BTreeMap;

use base64::Engine as _;
use prost::Message;
use serde_json::{Map, Value, json};

use crate::store::ApiError;

#[derive(Clone, PartialEq, Message)]
struct TypeMeta {
    #[prost(string, optional, tag = "1")]
    api_version: Option<String>,
    #[prost(string, optional, tag = "2")]
    kind: Option<String>,
}

#[derive(Clone, PartialEq, Message)]
struct Unknown {
    #[prost(message, optional, tag = "1")]
    type_meta: Option<TypeMeta>,
    #[prost(bytes = "vec", optional, tag = "2")]
    raw: Option<Vec<u8>>,
}

#[derive(Clone, PartialEq, Message)]
struct OwnerReference {
    #[prost(string, optional, tag = "1")]
    kind: Option<String>,
    #[prost(string, optional, tag = "3")]
    name: Option<String>,
    #[prost(string, optional, tag = "4")]
    uid: Option<String>,
    #[prost(string, optional, tag = "5")]
    api_version: Option<String>,
    #[prost(bool, optional, tag = "6")]
    controller: Option<bool>,
}

#[derive(Clone, PartialEq, Message)]
struct ObjectMeta {
    #[prost(string, optional, tag = "1")]
    name: Option<String>,
    #[prost(string, optional, tag = "2")]
    generate_name: Option<String>,
    #[prost(string, optional, tag = "3")]
    namespace: Option<String>,
    #[prost(btree_map = "string, string", tag = "11")]
    labels: BTreeMap<String, String>,
    #[prost(btree_map = "string, string", tag = "12")]
    annotations: BTreeMap<String, String>,
    #[prost(message, repeated, tag = "13")]
    owner_references: Vec<OwnerReference>,
    #[prost(string, repeated, tag = "14")]
    finalizers: Vec<String>,
}

#[derive(Clone, PartialEq, Message)]
struct NamespaceSpec {
    #[prost(string, repeated, tag = "1")]
    finalizers: Vec<String>,
}

#[derive(Clone, PartialEq, Message)]
struct Namespace {
    #[prost(message, optional, tag = "1")]
    metadata: Option<ObjectMeta>,
    #[prost(message, optional, tag = "2")]
    spec: Option<NamespaceSpec>,
}

#[derive(Clone, PartialEq, Message)]
struct Secret {
    #[prost(message, optional, tag = "1")]
    metadata: Option<ObjectMeta>,
    #[prost(btree_map = "string, bytes", tag = "2")]
    data: BTreeMap<String, Vec<u8>>,
    #[prost(string, optional, tag = "3")]
    r#type: Option<String>,
    #[prost(btree_map = "string, string", tag = "4")]
    string_data: BTreeMap<String, String>,
    #[prost(bool, optional, tag = "5")]
    immutable: Option<bool>,
}

#[derive(Clone, PartialEq, Message)]
struct ConfigMap {
    #[prost(message, optional, tag = "1")]
    metadata: Option<ObjectMeta>,
    #[prost(btree_map = "string, string", tag = "2")]
    data: BTreeMap<String, String>,
    #[prost(btree_map = "string, bytes", tag = "3")]
    binary_data: BTreeMap<String, Vec<u8>>,
    #[prost(bool, optional, tag = "4")]
    immutable: Option<bool>,
}

fn meta_json(m: Option<ObjectMeta>) -> Value {
    let m = m.unwrap_or_default();
    let mut out = Map::new();
    if let Some(v) = m.name {
        out.insert("name".into(), json!(v));
    }
    if let Some(v) = m.generate_name {
        out.insert("generateName".into(), json!(v));
    }
    if let Some(v) = m.namespace {
        out.insert("namespace".into(), json!(v));
    }
    if !m.labels.is_empty() {
        out.insert("labels".into(), json!(m.labels));
    }
    if !m.annotations.is_empty() {
        out.insert("annotations".into(), json!(m.annotations));
    }
    if !m.finalizers.is_empty() {
        out.insert("finalizers".into(), json!(m.finalizers));
    }
    if !m.owner_references.is_empty() {
        let refs: Vec<Value> = m
            .owner_references
            .into_iter()
            .map(|r| json!({"apiVersion": r.api_version, "kind": r.kind, "name": r.name, "uid": r.uid, "controller": r.controller}))
            .collect();
        out.insert("ownerReferences".into(), Value::Array(refs));
    }
    Value::Object(out)
}

fn b64(map: BTreeMap<String, Vec<u8>>) -> Value {
    let engine = base64::engine::general_purpose::STANDARD;
    Value::Object(
        map.into_iter()
            .map(|(k, v)| (k, json!(engine.encode(v))))
            .collect(),
    )
}

/// Decode a protobuf request body into the object's JSON form.
pub fn decode(body: &[u8]) -> Result<Value, ApiError> {
    let bad = |why: String| ApiError::new(415, "UnsupportedMediaType", why);
    let payload = body
        .strip_prefix(b"k8s\0")
        .ok_or_else(|| bad("a protobuf body must start with the k8s\\0 envelope".into()))?;
    let unknown = Unknown::decode(payload)
        .map_err(|e| bad(format!("the protobuf envelope does not decode: {e}")))?;
    let tm = unknown.type_meta.unwrap_or_default();
    let kind = tm.kind.unwrap_or_default();
    let api_version = tm.api_version.unwrap_or_default();
    let raw = unknown.raw.unwrap_or_default();
    let decode_err = |e: prost::DecodeError| bad(format!("the {kind} does not decode: {e}"));
    let mut obj = match kind.as_str() {
        "Namespace" => {
            let ns = Namespace::decode(raw.as_slice()).map_err(decode_err)?;
            let mut v = json!({"metadata": meta_json(ns.metadata)});
            if let Some(spec) = ns.spec.filter(|s| !s.finalizers.is_empty()) {
                v["spec"] = json!({"finalizers": spec.finalizers});
            }
            v
        }
        "Secret" => {
            let s = Secret::decode(raw.as_slice()).map_err(decode_err)?;
            let mut v = json!({"metadata": meta_json(s.metadata)});
            if !s.data.is_empty() {
                v["data"] = b64(s.data);
            }
            if !s.string_data.is_empty() {
                v["stringData"] = json!(s.string_data);
            }
            if let Some(t) = s.r#type {
                v["type"] = json!(t);
            }
            if let Some(i) = s.immutable {
                v["immutable"] = json!(i);
            }
            v
        }
        "ConfigMap" => {
            let c = ConfigMap::decode(raw.as_slice()).map_err(decode_err)?;
            let mut v = json!({"metadata": meta_json(c.metadata)});
            if !c.data.is_empty() {
                v["data"] = json!(c.data);
            }
            if !c.binary_data.is_empty() {
                v["binaryData"] = b64(c.binary_data);
            }
            if let Some(i) = c.immutable {
                v["immutable"] = json!(i);
            }
            v
        }
        other => {
            return Err(bad(format!(
                "protobuf bodies of kind {other:?} are not supported by the simulator; send JSON"
            )));
        }
    };
    obj["kind"] = json!(kind);
    obj["apiVersion"] = json!(api_version);
    Ok(obj)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope(kind: &str, raw: Vec<u8>) -> Vec<u8> {
        let unknown = Unknown {
            type_meta: Some(TypeMeta {
                api_version: Some("v1".into()),
                kind: Some(kind.into()),
            }),
            raw: Some(raw),
        };
        let mut body = b"k8s\0".to_vec();
        body.extend(unknown.encode_to_vec());
        body
    }

    #[test]
    fn secrets_and_namespaces_decode() {
        let secret = Secret {
            metadata: Some(ObjectMeta {
                name: Some("kubeconfig".into()),
                namespace: Some("kubemark".into()),
                ..Default::default()
            }),
            data: BTreeMap::from([("kubelet.kubeconfig".to_owned(), b"apiVersion: v1".to_vec())]),
            r#type: Some("Opaque".into()),
            ..Default::default()
        };
        let v = decode(&envelope("Secret", secret.encode_to_vec())).unwrap();
        assert_eq!(v["kind"], "Secret");
        assert_eq!(v["metadata"]["name"], "kubeconfig");
        assert_eq!(v["data"]["kubelet.kubeconfig"], "YXBpVmVyc2lvbjogdjE=");
        assert_eq!(v["type"], "Opaque");

        let ns = Namespace {
            metadata: Some(ObjectMeta {
                name: Some("kubemark".into()),
                ..Default::default()
            }),
            spec: None,
        };
        let v = decode(&envelope("Namespace", ns.encode_to_vec())).unwrap();
        assert_eq!(v["metadata"]["name"], "kubemark");
        assert!(decode(b"{}").is_err());
        assert!(decode(&envelope("Pod", vec![])).is_err());
    }
}
