//! The HTTP API, one concern per module: `service` (client counters,
//! authentication, injected faults, dispatch), `route` (a path to its target,
//! a method to its `Verb`), `request` (query parameters, headers, the body as
//! JSON, YAML or protobuf), `verbs` (get, create, update, delete,
//! deletecollection, and the checks they share), `list`, `watch` and `patch`
//! (those verbs), `subresources` (`scale` and `log`). Here: responses and
//! `Status` errors.

mod list;
mod patch;
mod request;
mod route;
mod service;
mod subresources;
mod verbs;
mod watch;

use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::{Response, StatusCode};
use serde_json::Value;

use crate::store::ApiError;

pub use service::handle;
pub use verbs::delete_with_policy;

pub type Body = BoxBody<Bytes, Infallible>;

fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).boxed()
}

fn respond(code: u16, content_type: &str, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(full(body));
    *r.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    if let Ok(v) = content_type.parse() {
        r.headers_mut().insert("content-type", v);
    }
    r
}

fn json_response(code: u16, value: &Value) -> Response<Body> {
    respond(
        code,
        "application/json",
        serde_json::to_vec(value).unwrap_or_default(),
    )
}

pub(crate) fn not_found_response(message: &str) -> Response<Body> {
    error_response(&ApiError::new(404, "NotFound", message))
}

fn error_response(e: &ApiError) -> Response<Body> {
    let mut r = json_response(e.code, &e.to_status());
    if e.code == 429 {
        r.headers_mut()
            .insert("retry-after", hyper::header::HeaderValue::from_static("1"));
    }
    r
}
