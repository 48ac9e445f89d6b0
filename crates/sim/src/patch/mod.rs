//! Patches: JSON merge patch (RFC 7386) and strategic merge patch (list
//! merging by the Kubernetes patch merge keys of the fields the workflow
//! uses) in `merge`, JSON patch (RFC 6902) in `json`, server-side apply in
//! `apply`, with field ownership per manager (`metadata.managedFields`) in
//! `managed_fields`. Here: the merge keys they share.

mod apply;
mod json;
mod managed_fields;
mod merge;

pub use apply::server_side_apply;
pub use json::json_patch;
pub use managed_fields::Managers;
pub use merge::{merge_patch, strategic_merge};

/// Merge keys of associative lists, by field name (as in the Kubernetes API's
/// `x-kubernetes-list-map-keys` / `patchMergeKey`).
fn merge_key(field: &str) -> Option<&'static str> {
    Some(match field {
        "containers"
        | "initContainers"
        | "ephemeralContainers"
        | "env"
        | "volumes"
        | "imagePullSecrets"
        | "readinessGates" => "name",
        "volumeMounts" | "volumeDevices" => "mountPath",
        "ports" => "containerPort",
        "conditions" => "type",
        "ownerReferences" => "uid",
        "addresses" => "type",
        "taints" => "key",
        _ => return None,
    })
}

/// Lists of scalars merged as sets.
fn is_set(field: &str) -> bool {
    matches!(field, "finalizers")
}
