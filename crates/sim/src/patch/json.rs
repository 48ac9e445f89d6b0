//! JSON patch (RFC 6902), as the API server answers it.

use serde_json::Value;

use crate::store::ApiError;

/// RFC 6902 JSON patch. A body that is not a patch is a 400, an operation
/// that does not apply a 422 (as kube-apiserver answers them); the target is
/// left as it was when an operation fails.
pub fn json_patch(target: &mut Value, ops: &Value) -> Result<(), ApiError> {
    if !ops.is_array() {
        return Err(ApiError::bad_request(
            "a JSON patch is an array of operations",
        ));
    }
    let patch: json_patch::Patch = serde_json::from_value(ops.clone())
        .map_err(|e| ApiError::bad_request(format!("invalid JSON patch: {e}")))?;
    json_patch::patch(target, &patch).map_err(|e| {
        use json_patch::{PatchErrorKind, PatchOperation};
        let path = e.path.as_str();
        let message = match (patch.0.get(e.operation), &e.kind) {
            (Some(PatchOperation::Test(_)), _) | (_, PatchErrorKind::TestFailed) => {
                format!("the test of {path} failed")
            }
            (Some(PatchOperation::Move(op)), PatchErrorKind::InvalidFromPointer) => {
                format!("{} does not exist", op.from)
            }
            (Some(PatchOperation::Copy(op)), PatchErrorKind::InvalidFromPointer) => {
                format!("{} does not exist", op.from)
            }
            (
                Some(PatchOperation::Add(_) | PatchOperation::Move(_) | PatchOperation::Copy(_)),
                PatchErrorKind::InvalidPointer,
            ) => format!("the parent of {path} does not exist"),
            (_, PatchErrorKind::InvalidPointer) => format!("{path} does not exist"),
            _ => e.to_string(),
        };
        ApiError::new(422, "Invalid", message)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn json_patch_ops() {
        let mut v = json!({"spec": {"replicas": 1, "list": [1, 2]}});
        json_patch(
            &mut v,
            &json!([
                {"op": "replace", "path": "/spec/replicas", "value": 3},
                {"op": "add", "path": "/spec/list/-", "value": 3},
                {"op": "remove", "path": "/spec/list/0"},
                {"op": "test", "path": "/spec/replicas", "value": 3}
            ]),
        )
        .unwrap();
        assert_eq!(v, json!({"spec": {"replicas": 3, "list": [2, 3]}}));
        assert!(
            json_patch(
                &mut v,
                &json!([{"op": "test", "path": "/spec/replicas", "value": 4}])
            )
            .is_err()
        );
        // A failed operation leaves the target as it was; the codes are the API server's.
        let before = v.clone();
        let e = json_patch(
            &mut v,
            &json!([
                {"op": "replace", "path": "/spec/replicas", "value": 5},
                {"op": "remove", "path": "/spec/missing"}
            ]),
        )
        .unwrap_err();
        assert_eq!(
            (e.code, e.message.as_str()),
            (422, "/spec/missing does not exist")
        );
        assert_eq!(v, before);
        let e =
            json_patch(&mut v, &json!([{"op": "add", "path": "/a/b", "value": 1}])).unwrap_err();
        assert_eq!(
            (e.code, e.message.as_str()),
            (422, "the parent of /a/b does not exist")
        );
        assert_eq!(
            json_patch(&mut v, &json!({"op": "add"})).unwrap_err().code,
            400
        );
        assert_eq!(
            json_patch(&mut v, &json!([{"op": "frob", "path": "/a"}]))
                .unwrap_err()
                .code,
            400
        );
    }
}
