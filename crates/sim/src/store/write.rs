//! Writes: create (identity, `generateName`, namespace checks), modify
//! (read-modify-write with identity kept, `generation`, optimistic
//! concurrency, finalization) and delete (finalizers, UID preconditions).

use std::sync::Arc;

use serde_json::{Value, json};

use super::{ApiError, Change, ChangeType, Obj, Object, Store};
use crate::meta::{self, RESOURCES, idx};

impl Store {
    /// Create an object: `uid`, `resourceVersion`, `creationTimestamp`, `generation`
    /// are set; `generateName` is honoured; 409 if it exists.
    pub fn create(&self, res: usize, mut value: Value) -> Result<Obj, ApiError> {
        let r = &RESOURCES[res];
        let mut inner = self.lock();
        let ns = if r.namespaced {
            meta::namespace(&value).to_owned()
        } else {
            String::new()
        };
        if r.namespaced {
            if ns.is_empty() {
                return Err(ApiError::bad_request(
                    "the namespace of the object is empty",
                ));
            }
            match inner.tables[idx::NAMESPACES]
                .objects
                .get(&(String::new(), ns.clone()))
            {
                None => return Err(ApiError::not_found(idx::NAMESPACES, &ns)),
                Some(n) if n.value.pointer("/metadata/deletionTimestamp").is_some() => {
                    return Err(ApiError {
                        code: 403,
                        reason: "Forbidden",
                        message: format!(
                            "{} \"{}\" is forbidden: unable to create new content in namespace {ns} because it is being terminated",
                            r.plural,
                            meta::name(&value)
                        ),
                        details: None,
                    });
                }
                Some(_) => {}
            }
        }
        let mut name = meta::name(&value).to_owned();
        if name.is_empty() {
            let Some(prefix) = meta::meta_str(&value, "generateName").map(str::to_owned) else {
                return Err(ApiError::invalid(
                    res,
                    "",
                    "metadata.name: Required value: name or generateName is required",
                ));
            };
            loop {
                let candidate = format!("{prefix}{}", meta::random_suffix(&mut inner.rng, 5));
                if !inner.tables[res]
                    .objects
                    .contains_key(&(ns.clone(), candidate.clone()))
                {
                    name = candidate;
                    break;
                }
            }
        }
        validate_name(res, &name)?;
        let key = (ns.clone(), name.clone());
        if inner.tables[res].objects.contains_key(&key) {
            return Err(ApiError::already_exists(res, &name));
        }
        let uid = meta::uid(&mut inner.rng);
        let rv = Self::next_rv(&mut inner);
        value["kind"] = Value::String(r.kind.to_owned());
        value["apiVersion"] = Value::String(r.api_version());
        let m = meta::metadata_mut(&mut value);
        m.insert("name".into(), Value::String(name));
        if r.namespaced {
            m.insert("namespace".into(), Value::String(ns));
        } else {
            m.remove("namespace");
        }
        m.insert("uid".into(), Value::String(uid));
        m.insert(
            "creationTimestamp".into(),
            Value::String(meta::now_rfc3339()),
        );
        m.insert("generation".into(), json!(1));
        m.remove("deletionTimestamp");
        let obj = Object::new(value, rv);
        self.record(
            &mut inner,
            key,
            Change {
                res,
                kind: ChangeType::Added,
                obj: Arc::clone(&obj),
                old: None,
            },
        );
        Ok(obj)
    }

    /// Read-modify-write one object under the lock. `f` gets the current value;
    /// identity fields it changes are restored. `expected_rv` (from the request)
    /// must match the stored version, else 409.
    pub fn modify(
        &self,
        res: usize,
        ns: &str,
        name: &str,
        expected_rv: Option<u64>,
        f: impl FnOnce(&mut Value) -> Result<(), ApiError>,
    ) -> Result<Obj, ApiError> {
        let mut inner = self.lock();
        let key = (ns.to_owned(), name.to_owned());
        let Some(current) = inner.tables[res].objects.get(&key).cloned() else {
            return Err(ApiError::not_found(res, name));
        };
        if let Some(expected) = expected_rv
            && expected != current.rv
        {
            return Err(ApiError::conflict(
                res,
                name,
                "the object has been modified; please apply your changes to the latest version and try again",
            ));
        }
        let mut value = current.value.clone();
        f(&mut value)?;
        // Identity and server-owned fields stay as they are.
        let r = &RESOURCES[res];
        value["kind"] = Value::String(r.kind.to_owned());
        value["apiVersion"] = Value::String(r.api_version());
        let old_meta = current.value.get("metadata").cloned().unwrap_or_default();
        let m = meta::metadata_mut(&mut value);
        for field in [
            "name",
            "namespace",
            "uid",
            "creationTimestamp",
            "deletionTimestamp",
        ] {
            match old_meta.get(field) {
                Some(v) => {
                    m.insert(field.into(), v.clone());
                }
                None => {
                    m.remove(field);
                }
            }
        }
        let spec_changed = current.value.get("spec") != value.get("spec");
        let generation = old_meta
            .get("generation")
            .and_then(Value::as_i64)
            .unwrap_or(1);
        meta::metadata_mut(&mut value).insert(
            "generation".into(),
            json!(if spec_changed {
                generation + 1
            } else {
                generation
            }),
        );
        // Compare as stored (the version is rewritten on write anyway).
        meta::metadata_mut(&mut value).insert(
            "resourceVersion".into(),
            Value::String(current.rv.to_string()),
        );
        if value == current.value {
            // Nothing changed: no new version, no event (as a real server does).
            return Ok(current);
        }
        let finalized =
            old_meta.get("deletionTimestamp").is_some() && !pending_finalizers(res, &value);
        let rv = Self::next_rv(&mut inner);
        let obj = Object::new(value, rv);
        if finalized {
            self.record(
                &mut inner,
                key,
                Change {
                    res,
                    kind: ChangeType::Deleted,
                    obj: Arc::clone(&obj),
                    old: Some(current),
                },
            );
        } else {
            self.record(
                &mut inner,
                key,
                Change {
                    res,
                    kind: ChangeType::Modified,
                    obj: Arc::clone(&obj),
                    old: Some(current),
                },
            );
        }
        Ok(obj)
    }

    /// Delete: with finalizers, mark `deletionTimestamp` and keep the object until
    /// they are gone; otherwise remove it. `expected_uid` is the precondition.
    pub fn delete(
        &self,
        res: usize,
        ns: &str,
        name: &str,
        expected_uid: Option<&str>,
    ) -> Result<Obj, ApiError> {
        let mut inner = self.lock();
        let key = (ns.to_owned(), name.to_owned());
        let Some(current) = inner.tables[res].objects.get(&key).cloned() else {
            return Err(ApiError::not_found(res, name));
        };
        if let Some(uid) = expected_uid
            && meta::meta_str(&current.value, "uid") != Some(uid)
        {
            // kube-apiserver names the kind here (not the resource) and both UIDs.
            let r = &RESOURCES[res];
            let mut e = ApiError::conflict(res, name, "");
            e.message = format!(
                "Operation cannot be fulfilled on {} \"{name}\": the UID in the precondition ({uid}) does not match the UID in record ({}). The object might have been deleted and then recreated",
                r.kind,
                meta::meta_str(&current.value, "uid").unwrap_or_default()
            );
            return Err(e);
        }
        let rv = Self::next_rv(&mut inner);
        if pending_finalizers(res, &current.value) {
            if current
                .value
                .pointer("/metadata/deletionTimestamp")
                .is_some()
            {
                return Ok(current);
            }
            let mut value = current.value.clone();
            let m = meta::metadata_mut(&mut value);
            m.insert(
                "deletionTimestamp".into(),
                Value::String(meta::now_rfc3339()),
            );
            m.insert("deletionGracePeriodSeconds".into(), json!(0));
            if res == idx::NAMESPACES {
                value["status"] = json!({"phase": "Terminating"});
            }
            let obj = Object::new(value, rv);
            self.record(
                &mut inner,
                key,
                Change {
                    res,
                    kind: ChangeType::Modified,
                    obj: Arc::clone(&obj),
                    old: Some(current),
                },
            );
            return Ok(obj);
        }
        let obj = Object::new(current.value.clone(), rv);
        self.record(
            &mut inner,
            key,
            Change {
                res,
                kind: ChangeType::Deleted,
                obj: Arc::clone(&obj),
                old: Some(current),
            },
        );
        Ok(obj)
    }
}

/// Whether finalizers hold the object: `metadata.finalizers`, and for a
/// namespace also `spec.finalizers` (the namespace controller's).
fn pending_finalizers(res: usize, value: &Value) -> bool {
    let nonempty = |p: &str| {
        value
            .pointer(p)
            .and_then(Value::as_array)
            .is_some_and(|f| !f.is_empty())
    };
    nonempty("/metadata/finalizers") || (res == idx::NAMESPACES && nonempty("/spec/finalizers"))
}

/// DNS-1123 subdomain names (node, pod, secret, ... names).
fn validate_name(res: usize, name: &str) -> Result<(), ApiError> {
    let ok = !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric())
        && name
            .bytes()
            .last()
            .is_some_and(|b| b.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err(ApiError::invalid(
            res,
            name,
            format!(
                "metadata.name: Invalid value: \"{name}\": a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character"
            ),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_namespace as ns;
    use super::*;

    #[test]
    fn create_get_update_delete() {
        let store = Store::new(100, 1);
        ns(&store, "a");
        let cm = store
            .create(
                idx::CONFIGMAPS,
                json!({"metadata": {"name": "c", "namespace": "a"}, "data": {"k": "v"}}),
            )
            .unwrap();
        assert_eq!(cm.value["kind"], "ConfigMap");
        assert_eq!(cm.value["metadata"]["resourceVersion"], cm.rv.to_string());
        assert!(cm.value["metadata"]["uid"].as_str().unwrap().len() == 36);
        let e = store
            .create(
                idx::CONFIGMAPS,
                json!({"metadata": {"name": "c", "namespace": "a"}}),
            )
            .unwrap_err();
        assert_eq!((e.code, e.reason), (409, "AlreadyExists"));
        let e = store
            .create(
                idx::CONFIGMAPS,
                json!({"metadata": {"name": "c", "namespace": "nope"}}),
            )
            .unwrap_err();
        assert_eq!(e.code, 404);

        let stale = cm.rv;
        let updated = store
            .modify(idx::CONFIGMAPS, "a", "c", Some(stale), |v| {
                v["data"]["k"] = json!("w");
                Ok(())
            })
            .unwrap();
        assert!(updated.rv > stale);
        let e = store
            .modify(idx::CONFIGMAPS, "a", "c", Some(stale), |_| Ok(()))
            .unwrap_err();
        assert_eq!((e.code, e.reason), (409, "Conflict"));
        let same = store
            .modify(idx::CONFIGMAPS, "a", "c", None, |_| Ok(()))
            .unwrap();
        assert_eq!(same.rv, updated.rv, "a no-op write keeps the version");

        store.delete(idx::CONFIGMAPS, "a", "c", None).unwrap();
        assert!(store.get(idx::CONFIGMAPS, "a", "c").is_none());
    }

    #[test]
    fn finalizers_delay_removal() {
        let store = Store::new(100, 1);
        store
            .create(
                idx::NAMESPACES,
                json!({"metadata": {"name": "f", "finalizers": ["x"]}}),
            )
            .unwrap();
        let marked = store.delete(idx::NAMESPACES, "", "f", None).unwrap();
        assert!(marked.value["metadata"]["deletionTimestamp"].is_string());
        assert!(store.get(idx::NAMESPACES, "", "f").is_some());
        store
            .modify(idx::NAMESPACES, "", "f", None, |v| {
                v["metadata"]["finalizers"] = json!([]);
                Ok(())
            })
            .unwrap();
        assert!(store.get(idx::NAMESPACES, "", "f").is_none());
    }

    #[test]
    fn generate_name() {
        let store = Store::new(100, 1);
        ns(&store, "a");
        let p = store
            .create(
                idx::PODS,
                json!({"metadata": {"generateName": "hollow-node-", "namespace": "a"}}),
            )
            .unwrap();
        let name = meta::name(&p.value);
        assert!(
            name.starts_with("hollow-node-") && name.len() == 17,
            "{name}"
        );
    }
}
