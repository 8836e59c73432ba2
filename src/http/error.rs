//! [`ApiError`]: every error answer, as JSON `{"error": {"code", "message"}}` with a stable
//! code, and the few answers handlers share.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

/// An error answer with a stable code.
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(json!({"error": {"code": self.code, "message": self.message}})),
        )
            .into_response()
    }
}

pub(super) fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        "no such tenant or resource",
    )
}

pub(super) fn unavailable(e: impl std::fmt::Display) -> ApiError {
    tracing::warn!(error = %e, "request failed");
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
        "retry later",
    )
}

/// 202 with `Location`: the work goes on (queued or running); its result is at `location`.
pub(super) fn accepted(status: &str, location: &str) -> Response {
    (
        StatusCode::ACCEPTED,
        [("location", location.to_owned())],
        Json(json!({"status": status, "location": location})),
    )
        .into_response()
}

pub(super) fn json_answer(text: String, cache: &'static str) -> Response {
    (
        [("content-type", "application/json"), ("x-cache", cache)],
        text,
    )
        .into_response()
}
