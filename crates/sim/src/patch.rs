//! Patches: JSON merge patch (RFC 7386), strategic merge patch (list merging
//! by the Kubernetes patch merge keys of the fields the workflow uses), JSON
//! patch (RFC 6902), and server-side apply with field ownership per manager.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Map, Value, json};

use crate::store::ApiError;

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

/// RFC 7386 merge patch.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let Value::Object(t) = target else { return };
    for (k, v) in patch {
        if v.is_null() {
            t.remove(k);
        } else {
            merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
        }
    }
}

/// Strategic merge patch: a merge patch whose associative lists merge item by
/// item, with the `$patch: delete|replace` directive and `$deleteFromPrimitiveList`.
pub fn strategic_merge(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if patch.get("$patch").and_then(Value::as_str) == Some("replace") {
        let mut p = patch.clone();
        p.remove("$patch");
        *target = Value::Object(p);
        return;
    }
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let Value::Object(t) = target else { return };
    for (k, v) in patch {
        if k.starts_with("$setElementOrder/") || k == "$retainKeys" || k == "$patch" {
            continue;
        }
        if let Some(field) = k.strip_prefix("$deleteFromPrimitiveList/") {
            if let (Some(Value::Array(list)), Value::Array(remove)) = (t.get_mut(field), v) {
                list.retain(|item| !remove.contains(item));
            }
            continue;
        }
        if v.is_null() {
            t.remove(k);
            continue;
        }
        match (merge_key(k), v) {
            (Some(key), Value::Array(items)) => {
                let entry = t.entry(k.clone()).or_insert_with(|| json!([]));
                if !entry.is_array() {
                    *entry = json!([]);
                }
                let Value::Array(list) = entry else { continue };
                for item in items {
                    let id = item.get(key).cloned();
                    let directive = item.get("$patch").and_then(Value::as_str);
                    let pos = list
                        .iter()
                        .position(|x| id.is_some() && x.get(key) == id.as_ref());
                    match (directive, pos) {
                        (Some("delete"), Some(i)) => {
                            list.remove(i);
                        }
                        (Some("delete"), None) => {}
                        (_, Some(i)) => strategic_merge(&mut list[i], item),
                        (_, None) => {
                            let mut fresh = Value::Null;
                            strategic_merge(&mut fresh, item);
                            list.push(fresh);
                        }
                    }
                }
            }
            (None, Value::Array(items)) if is_set(k) => {
                let entry = t.entry(k.clone()).or_insert_with(|| json!([]));
                if let Value::Array(list) = entry {
                    for item in items {
                        if !list.contains(item) {
                            list.push(item.clone());
                        }
                    }
                }
            }
            (_, Value::Object(_)) => strategic_merge(t.entry(k.clone()).or_insert(Value::Null), v),
            _ => {
                t.insert(k.clone(), v.clone());
            }
        }
    }
}

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

// ---- server-side apply ----

/// A field path: `f:spec`, `k:{"name":"x"}`, `v:"x"` elements, as in FieldsV1.
type Path = Vec<String>;

/// The leaf paths of an applied configuration: scalars, atomic lists and empty
/// maps are leaves; maps and associative lists are descended into.
fn leaves(value: &Value, prefix: &mut Path, field: Option<&str>, out: &mut BTreeSet<Path>) {
    match value {
        Value::Object(m) if !m.is_empty() => {
            for (k, v) in m {
                prefix.push(format!("f:{k}"));
                leaves(v, prefix, Some(k), out);
                prefix.pop();
            }
        }
        Value::Array(items) if field.and_then(merge_key).is_some() => {
            let key = field.and_then(merge_key).unwrap_or_default();
            for item in items {
                let id = json!({ key: item.get(key).cloned().unwrap_or(Value::Null) });
                prefix.push(format!("k:{id}"));
                // The key field itself is owned with the item.
                out.insert(prefix.clone());
                leaves(item, prefix, None, out);
                prefix.pop();
            }
        }
        Value::Array(items) if field.is_some_and(is_set) => {
            for item in items {
                prefix.push(format!("v:{item}"));
                out.insert(prefix.clone());
                prefix.pop();
            }
        }
        _ => {
            out.insert(prefix.clone());
        }
    }
}

/// The value at a path, if present.
fn lookup<'a>(value: &'a Value, path: &[String]) -> Option<&'a Value> {
    let mut current = value;
    let mut field: Option<&str> = None;
    for element in path {
        if let Some(name) = element.strip_prefix("f:") {
            current = current.get(name)?;
            field = Some(name);
        } else if let Some(id) = element.strip_prefix("k:") {
            let id: Value = serde_json::from_str(id).ok()?;
            let key = field.and_then(merge_key)?;
            current = current
                .as_array()?
                .iter()
                .find(|x| x.get(key) == id.get(key))?;
            field = None;
        } else if let Some(v) = element.strip_prefix("v:") {
            let v: Value = serde_json::from_str(v).ok()?;
            current.as_array()?.iter().find(|x| **x == v)?;
            return Some(current);
        }
    }
    Some(current)
}

/// Remove the value at a path (an item of an associative list, a set member, a field).
fn remove_path(value: &mut Value, path: &[String]) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut current = value;
    let mut field: Option<String> = None;
    for element in parents {
        let next = if let Some(name) = element.strip_prefix("f:") {
            field = Some(name.to_owned());
            current.get_mut(name)
        } else if let Some(id) = element.strip_prefix("k:") {
            let id: Value = serde_json::from_str(id).unwrap_or(Value::Null);
            let key = field.as_deref().and_then(merge_key).unwrap_or("name");
            field = None;
            current
                .as_array_mut()
                .and_then(|a| a.iter_mut().find(|x| x.get(key) == id.get(key)))
        } else {
            None
        };
        match next {
            Some(n) => current = n,
            None => return,
        }
    }
    if let Some(name) = last.strip_prefix("f:") {
        if let Some(m) = current.as_object_mut() {
            m.remove(name);
        }
    } else if let Some(id) = last.strip_prefix("k:") {
        let id: Value = serde_json::from_str(id).unwrap_or(Value::Null);
        let key = field.as_deref().and_then(merge_key).unwrap_or("name");
        if let Some(a) = current.as_array_mut() {
            a.retain(|x| x.get(key) != id.get(key));
        }
    } else if let Some(v) = last.strip_prefix("v:") {
        let v: Value = serde_json::from_str(v).unwrap_or(Value::Null);
        if let Some(a) = current.as_array_mut() {
            a.retain(|x| *x != v);
        }
    }
}

/// Deep-merge an applied configuration into an object (associative lists by key).
fn apply_merge(target: &mut Value, applied: &Value, field: Option<&str>) {
    match (target, applied) {
        (Value::Object(t), Value::Object(a)) => {
            for (k, v) in a {
                let slot = t.entry(k.clone()).or_insert(Value::Null);
                if slot.is_null() {
                    *slot = v.clone();
                } else {
                    apply_merge(slot, v, Some(k));
                }
            }
        }
        (Value::Array(t), Value::Array(a)) if field.and_then(merge_key).is_some() => {
            let key = field.and_then(merge_key).unwrap_or_default();
            for item in a {
                match t.iter_mut().find(|x| x.get(key) == item.get(key)) {
                    Some(existing) => apply_merge(existing, item, None),
                    None => t.push(item.clone()),
                }
            }
        }
        (Value::Array(t), Value::Array(a)) if field.is_some_and(is_set) => {
            for item in a {
                if !t.contains(item) {
                    t.push(item.clone());
                }
            }
        }
        (t, a) => *t = a.clone(),
    }
}

/// Field sets of each manager, from and to `metadata.managedFields`.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Managers {
    /// (manager, operation) → owned paths, plus the entry's recorded time.
    entries: BTreeMap<(String, String), (BTreeSet<Path>, String)>,
}

fn fields_to_paths(fields: &Value, prefix: &mut Path, out: &mut BTreeSet<Path>) {
    let Value::Object(m) = fields else { return };
    if m.is_empty() && !prefix.is_empty() {
        out.insert(prefix.clone());
        return;
    }
    for (k, v) in m {
        if k == "." {
            out.insert(prefix.clone());
            continue;
        }
        prefix.push(k.clone());
        fields_to_paths(v, prefix, out);
        prefix.pop();
    }
}

fn paths_to_fields(paths: &BTreeSet<Path>) -> Value {
    let mut root = Map::new();
    for path in paths {
        let mut node = &mut root;
        for (i, element) in path.iter().enumerate() {
            let entry = node.entry(element.clone()).or_insert_with(|| json!({}));
            let is_last = i + 1 == path.len();
            if is_last {
                break;
            }
            let Value::Object(next) = entry else { break };
            node = next;
        }
    }
    // Items of associative lists carry a "." marking the item itself.
    fn mark(node: &mut Map<String, Value>, paths: &BTreeSet<Path>, prefix: &mut Path) {
        for (k, v) in node.iter_mut() {
            prefix.push(k.clone());
            if let Value::Object(child) = v {
                if k.starts_with("k:") && paths.contains(prefix) && !child.is_empty() {
                    child.insert(".".into(), json!({}));
                }
                mark(child, paths, prefix);
            }
            prefix.pop();
        }
    }
    mark(&mut root, paths, &mut Vec::new());
    Value::Object(root)
}

impl Managers {
    pub fn read(obj: &Value) -> Self {
        let mut entries = BTreeMap::new();
        for entry in obj
            .pointer("/metadata/managedFields")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let manager = entry
                .get("manager")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned();
            let operation = entry
                .get("operation")
                .and_then(Value::as_str)
                .unwrap_or("Update")
                .to_owned();
            let time = entry
                .get("time")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned();
            let mut paths = BTreeSet::new();
            if let Some(fields) = entry.get("fieldsV1") {
                fields_to_paths(fields, &mut Vec::new(), &mut paths);
            }
            entries.insert((manager, operation), (paths, time));
        }
        Self { entries }
    }

    pub fn write(&self, obj: &mut Value, api_version: &str) {
        let list: Vec<Value> = self
            .entries
            .iter()
            .filter(|(_, (paths, _))| !paths.is_empty())
            .map(|((manager, operation), (paths, time))| {
                json!({
                    "manager": manager,
                    "operation": operation,
                    "apiVersion": api_version,
                    "time": time,
                    "fieldsType": "FieldsV1",
                    "fieldsV1": paths_to_fields(paths),
                })
            })
            .collect();
        let m = crate::meta::metadata_mut(obj);
        if list.is_empty() {
            m.remove("managedFields");
        } else {
            m.insert("managedFields".into(), Value::Array(list));
        }
    }

    /// Record that `manager` (operation Update) wrote the leaves that differ between `old` and `new`.
    pub fn record_update(&mut self, old: &Value, new: &Value, manager: &str) {
        let mut before = BTreeSet::new();
        let mut after = BTreeSet::new();
        leaves(&strip(old), &mut Vec::new(), None, &mut before);
        leaves(&strip(new), &mut Vec::new(), None, &mut after);
        let changed: BTreeSet<Path> = after
            .iter()
            .filter(|p| lookup(&strip(old), p) != lookup(&strip(new), p))
            .cloned()
            .collect();
        let removed: BTreeSet<Path> = before.difference(&after).cloned().collect();
        if changed.is_empty() && removed.is_empty() {
            return;
        }
        for (_, (paths, _)) in self.entries.iter_mut() {
            for p in changed.iter().chain(&removed) {
                paths.remove(p);
            }
        }
        let entry = self
            .entries
            .entry((manager.to_owned(), "Update".to_owned()))
            .or_insert_with(|| (BTreeSet::new(), String::new()));
        entry.0.extend(changed);
        entry.1 = crate::meta::now_rfc3339();
    }
}

/// The object without the fields no manager owns (identity, status bookkeeping).
fn strip(obj: &Value) -> Value {
    let mut v = obj.clone();
    if let Some(m) = v.get_mut("metadata").and_then(Value::as_object_mut) {
        for f in [
            "managedFields",
            "resourceVersion",
            "uid",
            "creationTimestamp",
            "generation",
            "deletionTimestamp",
        ] {
            m.remove(f);
        }
    }
    if let Some(m) = v.as_object_mut() {
        m.remove("kind");
        m.remove("apiVersion");
        m.remove("status");
    }
    v
}

/// Server-side apply of `applied` by `manager` onto `current` (`Null` when the
/// object is new). Conflicts with other managers' fields fail with 409 unless `force`.
pub fn server_side_apply(
    current: &Value,
    applied: &Value,
    manager: &str,
    force: bool,
    api_version: &str,
) -> Result<Value, ApiError> {
    let config = strip(applied);
    let mut wanted = BTreeSet::new();
    leaves(&config, &mut Vec::new(), None, &mut wanted);
    // Paths of the object's own identity are never "owned" in a conflicting way.
    wanted.retain(|p| {
        !matches!(
            p.first().map(String::as_str),
            Some("f:kind" | "f:apiVersion")
        )
    });
    let mut managers = Managers::read(current);
    let me = (manager.to_owned(), "Apply".to_owned());
    let base = strip(current);

    let mut conflicts = Vec::new();
    for ((other, operation), (paths, _)) in &managers.entries {
        if (other, operation) == (&me.0, &me.1) {
            continue;
        }
        for p in paths.intersection(&wanted) {
            if lookup(&base, p) != lookup(&config, p) {
                conflicts.push((other.clone(), p.clone()));
            }
        }
    }
    if !conflicts.is_empty() {
        if !force {
            let list: Vec<String> = conflicts
                .iter()
                .map(|(m, p)| format!("conflict with \"{m}\": {}", display_path(p)))
                .collect();
            let causes: Vec<Value> = conflicts
                .iter()
                .map(|(m, p)| json!({"reason": "FieldManagerConflict", "message": format!("conflict with \"{m}\""), "field": display_path(p)}))
                .collect();
            return Err(ApiError {
                code: 409,
                reason: "Conflict",
                message: format!(
                    "Apply failed with {} conflict{}: {}",
                    list.len(),
                    if list.len() == 1 { "" } else { "s" },
                    list.join(", ")
                ),
                details: Some(json!({"causes": causes})),
            });
        }
        for (_, (paths, _)) in managers.entries.iter_mut() {
            for (_, p) in &conflicts {
                paths.remove(p);
            }
        }
    }

    let previous = managers
        .entries
        .get(&me)
        .map(|(p, _)| p.clone())
        .unwrap_or_default();
    let mut result = if current.is_null() {
        json!({})
    } else {
        current.clone()
    };
    // Fields this manager applied before and no longer does, and nobody else owns, go away.
    for p in previous.difference(&wanted) {
        let owned_elsewhere = managers
            .entries
            .iter()
            .any(|(k, (paths, _))| *k != me && paths.contains(p));
        if !owned_elsewhere {
            remove_path(&mut result, p);
        }
    }
    apply_merge(&mut result, &config, None);
    let time = match managers.entries.get(&me) {
        Some((paths, time)) if *paths == wanted => time.clone(),
        _ => crate::meta::now_rfc3339(),
    };
    managers.entries.insert(me, (wanted, time));
    managers.write(&mut result, api_version);
    Ok(result)
}

fn display_path(p: &Path) -> String {
    p.iter()
        .map(|e| {
            if let Some(f) = e.strip_prefix("f:") {
                format!(".{f}")
            } else if let Some(k) = e.strip_prefix("k:") {
                format!("[{k}]")
            } else {
                format!("[{}]", e.trim_start_matches("v:"))
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_patch_sets_and_removes() {
        let mut v = json!({"a": 1, "b": {"c": 2, "d": 3}});
        merge_patch(&mut v, &json!({"a": null, "b": {"c": 5}, "e": [1]}));
        assert_eq!(v, json!({"b": {"c": 5, "d": 3}, "e": [1]}));
    }

    #[test]
    fn strategic_merge_merges_containers_by_name() {
        let mut v = json!({"spec": {"containers": [{"name": "a", "image": "x"}, {"name": "b", "image": "y"}], "tolerations": [{"key": "t"}]}});
        strategic_merge(
            &mut v,
            &json!({"spec": {"containers": [{"name": "b", "image": "z"}, {"name": "c", "image": "w"}, {"name": "a", "$patch": "delete"}], "tolerations": [{"key": "u"}]}}),
        );
        assert_eq!(
            v,
            json!({"spec": {"containers": [{"name": "b", "image": "z"}, {"name": "c", "image": "w"}], "tolerations": [{"key": "u"}]}})
        );
    }

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

    #[test]
    fn apply_owns_removes_and_conflicts() {
        let applied = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "labels": {"a": "1"}}, "data": {"x": "1", "y": "2"}});
        let first = server_side_apply(&Value::Null, &applied, "deploy", false, "v1").unwrap();
        assert_eq!(first["data"], json!({"x": "1", "y": "2"}));
        assert_eq!(first["metadata"]["managedFields"][0]["manager"], "deploy");

        // The same apply again changes nothing at all (the time of the entry is kept).
        let again = server_side_apply(&first, &applied, "deploy", false, "v1").unwrap();
        assert_eq!(again, first);

        // Dropping a field from the configuration removes it.
        let smaller = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"x": "1"}});
        let second = server_side_apply(&first, &smaller, "deploy", false, "v1").unwrap();
        assert_eq!(second["data"], json!({"x": "1"}));
        assert!(
            second["metadata"]
                .get("labels")
                .is_none_or(|l| l.get("a").is_none())
        );

        // Another manager that sets a different value conflicts, unless forced.
        let other = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"x": "9"}});
        let e = server_side_apply(&second, &other, "someone", false, "v1").unwrap_err();
        assert_eq!(e.code, 409);
        assert!(
            e.message.contains("conflict with \"deploy\": .data.x"),
            "{}",
            e.message
        );
        let forced = server_side_apply(&second, &other, "someone", true, "v1").unwrap();
        assert_eq!(forced["data"]["x"], "9");
        // The same value is shared ownership, not a conflict.
        let same = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"x": "1"}});
        assert!(server_side_apply(&second, &same, "third", false, "v1").is_ok());
    }

    #[test]
    fn apply_merges_containers_by_key_and_tracks_updates() {
        let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": {"containers": [{"name": "a", "image": "x", "args": ["1", "2"]}]}});
        let applied = server_side_apply(&Value::Null, &pod, "m", false, "v1").unwrap();
        let fields = &applied["metadata"]["managedFields"][0]["fieldsV1"];
        assert!(
            fields["f:spec"]["f:containers"]["k:{\"name\":\"a\"}"]["f:image"].is_object(),
            "{fields}"
        );
        assert!(
            fields["f:spec"]["f:containers"]["k:{\"name\":\"a\"}"]["."].is_object(),
            "{fields}"
        );
        // An Update by someone else takes over the field it changed.
        let mut updated = applied.clone();
        updated["spec"]["containers"][0]["image"] = json!("y");
        let mut managers = Managers::read(&applied);
        managers.record_update(&applied, &updated, "kubectl-edit");
        managers.write(&mut updated, "v1");
        let e = server_side_apply(&updated, &pod, "m", false, "v1").unwrap_err();
        assert!(e.message.contains("kubectl-edit"), "{}", e.message);
        let reapplied = server_side_apply(&updated, &pod, "m", true, "v1").unwrap();
        assert_eq!(reapplied["spec"]["containers"][0]["image"], "x");
        assert_eq!(
            reapplied["spec"]["containers"][0]["args"],
            json!(["1", "2"])
        );
    }
}
