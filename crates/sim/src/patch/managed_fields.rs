//! Field ownership: the leaf paths of an object (FieldsV1's `f:`, `k:` and
//! `v:` elements), the field sets of each manager, read from and written to
//! `metadata.managedFields`, and what an Update takes over.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Map, Value, json};

use super::{is_set, merge_key};

/// A field path: `f:spec`, `k:{"name":"x"}`, `v:"x"` elements, as in FieldsV1.
pub(super) type Path = Vec<String>;

/// The leaf paths of an applied configuration: scalars, atomic lists and empty
/// maps are leaves; maps and associative lists are descended into.
pub(super) fn leaves(
    value: &Value,
    prefix: &mut Path,
    field: Option<&str>,
    out: &mut BTreeSet<Path>,
) {
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
pub(super) fn lookup<'a>(value: &'a Value, path: &[String]) -> Option<&'a Value> {
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

/// Field sets of each manager, from and to `metadata.managedFields`.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Managers {
    /// (manager, operation) → owned paths, plus the entry's recorded time.
    pub(super) entries: BTreeMap<(String, String), (BTreeSet<Path>, String)>,
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
pub(super) fn strip(obj: &Value) -> Value {
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
