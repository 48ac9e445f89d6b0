//! API errors, rendered as a `Status` with the reasons and messages a real
//! server gives.

use serde_json::{Value, json};

use crate::meta::{self, RESOURCES};

/// An API error, rendered as a `Status`.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
    pub details: Option<Value>,
}

impl ApiError {
    pub fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            reason,
            message: message.into(),
            details: None,
        }
    }

    pub fn not_found(res: usize, name: &str) -> Self {
        let r = &RESOURCES[res];
        Self {
            code: 404,
            reason: "NotFound",
            message: format!("{} \"{name}\" not found", qualified(r)),
            details: Some(json!({"name": name, "group": r.group, "kind": r.plural})),
        }
    }

    pub fn already_exists(res: usize, name: &str) -> Self {
        let r = &RESOURCES[res];
        Self {
            code: 409,
            reason: "AlreadyExists",
            message: format!("{} \"{name}\" already exists", qualified(r)),
            details: Some(json!({"name": name, "group": r.group, "kind": r.plural})),
        }
    }

    pub fn conflict(res: usize, name: &str, why: &str) -> Self {
        let r = &RESOURCES[res];
        Self {
            code: 409,
            reason: "Conflict",
            message: format!(
                "Operation cannot be fulfilled on {} \"{name}\": {why}",
                qualified(r)
            ),
            details: Some(json!({"name": name, "group": r.group, "kind": r.plural})),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", message)
    }

    pub fn invalid(res: usize, name: &str, message: impl Into<String>) -> Self {
        let r = &RESOURCES[res];
        let message = message.into();
        Self {
            code: 422,
            reason: "Invalid",
            message: format!("{} \"{name}\" is invalid: {message}", r.kind),
            details: Some(json!({"name": name, "group": r.group, "kind": r.kind})),
        }
    }

    pub fn gone(message: impl Into<String>) -> Self {
        Self::new(410, "Expired", message)
    }

    pub fn to_status(&self) -> Value {
        meta::status(self.code, self.reason, &self.message, self.details.clone())
    }
}

/// `pods`, or `replicationcontrollers.apps` style: the resource as errors name it.
fn qualified(r: &meta::Resource) -> String {
    if r.group.is_empty() {
        r.plural.to_owned()
    } else {
        format!("{}.{}", r.plural, r.group)
    }
}
