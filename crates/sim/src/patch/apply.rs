//! Server-side apply: conflicts with other managers' fields (409 unless
//! forced), removal of what a manager stopped applying, and the deep merge of
//! the applied configuration.

use std::collections::BTreeSet;

use serde_json::{Value, json};

use super::managed_fields::{Managers, Path, leaves, lookup, strip};
use super::{is_set, merge_key};
use crate::store::ApiError;

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
