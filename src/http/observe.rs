//! Two layers every route shares: request metrics by route template, and JSON error bodies
//! for the answers the framework and the hardening layers produce themselves.
//!
//! - [`record`]: `enablement_http_requests_total{route, method, status_class}` and
//!   `enablement_http_request_duration_seconds{route, method}`. The route is the template
//!   axum matched (`/api/tenants/{tenant}/users`), `unmatched` for anything else, so a
//!   client cannot mint series by inventing paths; unknown methods count as `other`.
//! - [`json_errors`]: a 4xx/5xx answer without a JSON body (a 405 from the router, a 413
//!   from the body limit, a 400 from an extractor) gets the `{"error": {"code",
//!   "message"}}` body every handler answers with, keeping its status and headers (`Allow`).

use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::http::header::CONTENT_TYPE;
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::error::ApiError;
use crate::actors::metric_names as m;

/// Counts and times every request by route template, method and status class.
pub(super) async fn record(req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let method = method_label(req.method());
    let started = Instant::now();
    let response = next.run(req).await;
    metrics::counter!(m::HTTP_REQUESTS_TOTAL, "route" => route.clone(), "method" => method,
        "status_class" => status_class(response.status()))
    .increment(1);
    metrics::histogram!(m::HTTP_REQUEST_DURATION_SECONDS, "route" => route, "method" => method)
        .record(started.elapsed().as_secs_f64());
    response
}

fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

fn status_class(status: StatusCode) -> &'static str {
    match status.as_u16() {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

/// Gives an error answer without a JSON body the service's JSON error body.
/// On the SCIM routes, in the SCIM error schema.
pub(super) async fn json_errors(req: Request, next: Next) -> Response {
    let scim = req.uri().path().starts_with("/scim/");
    let response = next.run(req).await;
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) || is_json(&response) {
        return response;
    }
    let (code, message) = match status {
        StatusCode::METHOD_NOT_ALLOWED => ("method_not_allowed", "method not allowed here"),
        StatusCode::PAYLOAD_TOO_LARGE => ("payload_too_large", "the body is too large"),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => ("unsupported_media_type", "unsupported body type"),
        StatusCode::NOT_FOUND => ("not_found", "no such route"),
        s if s.is_client_error() => ("bad_request", "the request is malformed"),
        _ => ("internal", "the request failed"),
    };
    let (mut parts, _) = response.into_parts();
    let fresh = if scim {
        super::scim::error_response(status, message)
    } else {
        ApiError::new(status, code, message).into_response()
    };
    let (fresh_parts, body) = fresh.into_parts();
    parts.headers.remove(axum::http::header::CONTENT_LENGTH);
    if let Some(ct) = fresh_parts.headers.get(CONTENT_TYPE) {
        parts.headers.insert(CONTENT_TYPE, ct.clone());
    }
    Response::from_parts(parts, body)
}

fn is_json(response: &Response) -> bool {
    response
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.starts_with("application/json") || v.starts_with(super::scim::SCIM_CONTENT_TYPE)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_bounded() {
        assert_eq!(
            method_label(&Method::from_bytes(b"BREW").expect("method")),
            "other"
        );
        assert_eq!(status_class(StatusCode::IM_A_TEAPOT), "4xx");
        assert_eq!(status_class(StatusCode::BAD_GATEWAY), "5xx");
    }
}
