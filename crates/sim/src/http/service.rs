//! The service: count what each client is sent, authenticate, add injected
//! latency and errors, read the request, then hand it to discovery or to the
//! verb its route names.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::{Request, Response};

use super::request::{Req, parse_query};
use super::route::{Verb, route};
use super::{Body, error_response, json_response, verbs};
use crate::meta::RESOURCES;
use crate::store::ApiError;
use crate::{Shared, discovery};

/// The whole HTTP service.
pub async fn handle(
    shared: Arc<Shared>,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let started = Instant::now();
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let agent = shared.stats.agent(
        req.headers()
            .get("user-agent")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default(),
    );
    agent
        .requests
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let response = serve(&shared, req).await;
    // Count what goes out, streams included, as it goes.
    let (parts, body) = response.into_parts();
    let counted = BodyExt::map_frame(body, move |frame| {
        if let Some(data) = frame.data_ref() {
            agent
                .bytes
                .fetch_add(data.len() as u64, std::sync::atomic::Ordering::Relaxed);
        }
        frame
    });
    let response = Response::from_parts(parts, BodyExt::boxed(counted));
    tracing::debug!(
        target: "kubemark_sim::http",
        "{} {method} {path} -> {} in {:?}",
        shared.cfg.name,
        response.status(),
        started.elapsed()
    );
    Ok(response)
}

async fn serve(shared: &Arc<Shared>, req: Request<Incoming>) -> Response<Body> {
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let authorization = header("authorization");
    let accept = header("accept");
    let content_type = header("content-type");
    let user_agent = header("user-agent");
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let query = parse_query(req.uri().query().unwrap_or_default());
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();

    let public = matches!(
        segments.as_slice(),
        ["version"] | ["healthz"] | ["livez"] | ["readyz"]
    );
    if segments.as_slice() == ["debug", "sim", "stats"]
        && shared
            .tokens
            .iter()
            .any(|t| authorization == format!("Bearer {t}"))
    {
        return json_response(200, &shared.stats.to_json());
    }
    let token = authorization.strip_prefix("Bearer ").unwrap_or_default();
    if !public && !shared.tokens.iter().any(|t| t == token) {
        return error_response(&ApiError::new(401, "Unauthorized", "Unauthorized"));
    }
    if !shared.injector.faults.latency.is_zero() {
        tokio::time::sleep(shared.injector.faults.latency).await;
    }
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return error_response(&ApiError::bad_request(format!("reading the body: {e}"))),
    };
    let r = Req {
        method,
        query,
        accept,
        content_type,
        user_agent,
        body,
    };

    if let Some(response) = discovery::serve(shared, &segments) {
        return response;
    }
    let Some(target) = route(&segments) else {
        return error_response(&ApiError::new(
            404,
            "NotFound",
            "the server could not find the requested resource",
        ));
    };
    let verb = Verb::of(&r, &target);
    // A method the API does not serve still meets the `*` fault rules first.
    let verb_name = verb.map_or("unknown", Verb::as_str);
    if let Some(code) = shared
        .injector
        .error_for(verb_name, RESOURCES[target.res].plural)
    {
        let (reason, message) = match code {
            429 => (
                "TooManyRequests",
                "the server has received too many requests and has asked us to try again later",
            ),
            503 => (
                "ServiceUnavailable",
                "the server is currently unable to handle the request",
            ),
            _ => (
                "InternalError",
                "an error on the server (injected by the simulator) has prevented the request from succeeding",
            ),
        };
        return error_response(&ApiError::new(code, reason, message));
    }
    match verbs::resource(shared, &r, &target, verb) {
        Ok(response) => response,
        Err(e) => error_response(&e),
    }
}
