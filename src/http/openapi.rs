//! The OpenAPI 3.1 description of every route, generated from the handlers (`utoipa`):
//! each handler carries its `#[utoipa::path]` next to its code, and the router is built
//! from those same annotations ([`utoipa_axum::routes!`]), so a route cannot exist without
//! its description. Served at `/openapi.json`.
//!
//! The schemas below describe the bodies as clients see them; where a rule cannot be said
//! in JSON Schema (a quiz score must match its answers, question ids are unique, a user
//! must exist) the description says it and the handler answers 400 or 404.

use serde::Serialize;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};

/// Every error answer: a stable `code` and a human message (never a secret, a connection
/// string or another tenant's data).
#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable, machine-readable (`unauthorized`, `invalid_tenant_id`, `not_found`, ...).
    pub code: String,
    pub message: String,
}

/// `GET /healthz`.
#[derive(Serialize, ToSchema)]
pub struct Health {
    pub status: String,
}

/// `GET /readyz`: `ready` always; with the operator token (or on the internal listener)
/// also the checks of each dependency, the tenants and the consumer group.
#[derive(Serialize, ToSchema)]
pub struct Readiness {
    pub ready: bool,
}

/// `POST /api/tenants`.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct NewTenant {
    /// Lowercase letters, digits and `-`, starting with a letter or digit.
    #[schema(pattern = "^[a-z0-9][a-z0-9-]{0,62}$", max_length = 63)]
    pub tenant_id: String,
    /// 1 to 200 characters, not only spaces, no control characters.
    #[schema(
        pattern = "^[^\\u0000-\\u001f\\u007f-\\u009f]*[^\\s\\u0000-\\u001f\\u007f-\\u009f][^\\u0000-\\u001f\\u007f-\\u009f]*$",
        min_length = 1,
        max_length = 200
    )]
    pub display_name: String,
    /// Keep the tenant's records on the shared topics (fixed at registration).
    #[schema(default = false)]
    pub shared_topics: Option<bool>,
}

/// A registered tenant; `apiToken` is shown this once.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TenantCreated {
    #[schema(value_type = Object)]
    pub tenant: serde_json::Value,
    pub topics: Vec<String>,
    pub api_token: String,
}

/// The SCIM-provisioned roster.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Roster {
    pub tenant_id: String,
    #[schema(value_type = Vec<Object>)]
    pub users: Vec<serde_json::Value>,
}

/// The course catalog (cached per tenant).
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Catalog {
    pub tenant_id: String,
    #[schema(value_type = Vec<Object>)]
    pub courses: Vec<serde_json::Value>,
}

/// 202: the work goes on; its result is at `location` when there is one.
#[derive(Serialize, ToSchema)]
pub struct Accepted {
    /// `queued` or `running`.
    pub status: String,
    pub location: Option<String>,
    /// Syncs queued (`POST .../sync-progress`).
    pub queued: Option<u64>,
}

/// A user's course progress as last synced.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Progress {
    pub user_id: String,
    #[schema(value_type = Vec<Object>)]
    pub courses: Vec<serde_json::Value>,
}

/// A team-readiness report (provisional while syncs are pending).
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    pub tenant_id: String,
}

/// One answer of a quiz submission.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[serde(deny_unknown_fields)]
pub struct QuizAnswer {
    #[schema(min_length = 1)]
    pub question_id: String,
    pub selected: String,
    pub correct: bool,
}

/// A quiz submission, idempotent by `submissionId`. Beyond the schema: question ids are
/// unique, `score` is the share of correct answers (within 1 point), and `userId` is in
/// the tenant's roster (else 404).
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[serde(deny_unknown_fields)]
pub struct QuizSubmission {
    #[schema(min_length = 1, max_length = 256, pattern = "\\S")]
    pub submission_id: String,
    #[schema(min_length = 1, max_length = 256, pattern = "\\S")]
    pub user_id: String,
    #[schema(min_length = 1, max_length = 256, pattern = "\\S")]
    pub course_id: String,
    #[schema(min_length = 1, max_length = 256, pattern = "\\S")]
    pub quiz_id: String,
    #[schema(min_items = 1, max_items = 1000)]
    pub answers: Vec<QuizAnswer>,
    #[schema(minimum = 0, maximum = 100)]
    pub score: f64,
    #[schema(format = DateTime)]
    pub submitted_at: String,
}

/// What recording a quiz submission did.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct QuizRecorded {
    pub submission_id: String,
    pub recorded: bool,
    pub duplicate: Option<bool>,
}

/// The bearer schemes: the operator token (every route) and a tenant's own API token
/// (its `/api/tenants/{tenant}/...` routes).
struct BearerSchemes;

impl Modify for BearerSchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        for name in ["operator_token", "tenant_token"] {
            components.add_security_scheme(
                name,
                SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
            );
        }
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "enablement",
        description = "Multi-tenant SCIM and MindTickle enablement service: health, \
                       operator and tenant API. Every error answers `ErrorBody`."
    ),
    modifiers(&BearerSchemes),
    components(schemas(ErrorBody, ErrorDetail)),
    tags(
        (name = "operations", description = "Health, readiness, metrics, this document"),
        (name = "operator", description = "Operator token"),
        (name = "tenant", description = "A tenant's own token, or the operator token")
    )
)]
pub struct ApiDoc;

/// The error answers every route may give besides its own: a malformed id (400), no or a
/// wrong token (401), a suspended tenant (403), nothing there (404), too slow (408), a body
/// over `http.max_body_bytes` (413), too many requests or failed authentications from one
/// client (429), a dependency down (503).
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)] // a description only: handlers answer through `ApiError`
pub enum CommonErrors {
    #[response(status = 400, description = "Malformed id, field or body")]
    BadRequest(#[to_schema] ErrorBody),
    #[response(status = 401, description = "No valid bearer token")]
    Unauthorized(ErrorBody),
    #[response(status = 403, description = "The tenant is suspended")]
    Forbidden(ErrorBody),
    #[response(
        status = 404,
        description = "No such tenant or resource (also another tenant's)"
    )]
    NotFound(ErrorBody),
    #[response(
        status = 408,
        description = "The request took longer than http.request_timeout_ms"
    )]
    Timeout(ErrorBody),
    #[response(
        status = 413,
        description = "The body is larger than http.max_body_bytes"
    )]
    TooLarge(ErrorBody),
    #[response(
        status = 429,
        description = "Too many requests in progress or failed authentications from this client"
    )]
    TooMany(ErrorBody),
    #[response(status = 503, description = "A dependency is unavailable; retry later")]
    Unavailable(ErrorBody),
}

/// The errors of a route that needs no token: throttled or too slow only.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)] // a description only
pub enum EdgeErrors {
    #[response(
        status = 408,
        description = "The request took longer than http.request_timeout_ms"
    )]
    Timeout(#[to_schema] ErrorBody),
    #[response(
        status = 413,
        description = "The body is larger than http.max_body_bytes"
    )]
    TooLarge(ErrorBody),
    #[response(
        status = 429,
        description = "Too many requests in progress from this client"
    )]
    TooMany(ErrorBody),
}

/// `GET /openapi.json`: this document.
#[utoipa::path(get, path = "/openapi.json", tag = "operations",
    responses((status = 200, description = "The OpenAPI 3.1 document", content_type = "application/json", body = Object), EdgeErrors))]
pub(super) async fn openapi_json(
    axum::Extension(doc): axum::Extension<std::sync::Arc<OpenApiText>>,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    ([("content-type", "application/json")], doc.0.clone()).into_response()
}

/// The rendered document, handed to [`openapi_json`].
pub struct OpenApiText(pub String);
