//! The HTTP control endpoint (axum): health, readiness, metrics, tenant registration and
//! the tenant API. A thin edge: every handler authorises, validates its input, then calls
//! one application function (the [`Tenants`] facade, the store, the aggregator, `tenants`).
//!
//! - [`health`]: `/healthz`, `/readyz` (per-dependency checks, tenants, consumer group),
//!   `/metrics`;
//! - [`auth`]: operator and tenant bearer tokens, suspended tenants;
//! - [`operator`]: `POST /api/tenants`;
//! - [`tenant_api`]: `/api/tenants/{t}/...` (roster, progress syncs, readiness, quiz
//!   results, course catalog);
//! - [`error`]: JSON errors with a stable code. They never echo a token, a connection
//!   string or another tenant's data;
//! - [`server`]: the accept loop (slow-header bound, peer address, graceful drain);
//! - [`guard`]: per-client limits (requests in progress, failed authentications);
//! - [`openapi`]: the OpenAPI 3.1 document, generated from the handlers' annotations;
//! - [`observe`]: request metrics by route template, JSON bodies for framework errors;
//! - [`scim`]: the SCIM 2.0 provider's edge, `/scim/v2/{t}/...` (its own token, content
//!   type and error schema; its contract is its discovery documents, not `/openapi.json`).
//!
//! Hardening, outermost first: the global concurrency limit and the request timeout
//! (tower), the per-client guard, the body limit (tower-http, on `Content-Length` before a
//! byte of the body is read, and while streaming). `/metrics` and the detailed `/readyz`
//! need the operator token, except on the internal listener (`http.internal_listen`).

mod auth;
mod error;
mod guard;
mod health;
mod observe;
mod openapi;
mod operator;
mod scim;
mod server;
mod tenant_api;

use std::sync::Arc;
use std::time::Duration;

use axum::error_handling::HandleErrorLayer;
use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::PrometheusHandle;
use tower::ServiceBuilder;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub use auth::{authorize_tenant, KnownTenants};
pub use error::ApiError;
pub use scim::{token_cache as scim_token_cache, ScimTokens};
pub use server::Listener;

use crate::actors::Tenants;
use crate::cache::RedisCache;
use crate::config::{Config, Role};
use crate::db::{PgPool, Registry, TenantScopedStore};
use crate::kafka::KafkaPublisher;
use crate::readiness::Aggregator;
use health::{healthz, metrics_text, readyz};

#[derive(Clone)]
pub struct AppState {
    pub config: Arc<Config>,
    pub pool: PgPool,
    pub registry: Registry,
    pub cache: Arc<RedisCache>,
    pub store: TenantScopedStore,
    pub publisher: KafkaPublisher,
    pub tenants: Option<Tenants>,
    /// The consumer group's health as the Kafka hub sees it (consumer roles only).
    pub group: Option<Arc<crate::kafka::GroupHealth>>,
    pub aggregator: Aggregator,
    pub role: Role,
    pub metrics: Option<PrometheusHandle>,
    /// Tenants that exist, so a token of an unknown tenant costs no database work.
    pub known: Arc<KnownTenants>,
    /// True on the internal listener: `/metrics` and the detailed `/readyz` need no token.
    pub internal: bool,
    /// SCIM tokens verified in the last few seconds.
    pub scim_tokens: Arc<ScimTokens>,
    /// The SCIM provider's per-tenant write queues (group commit).
    pub scim_writers: Arc<crate::scim::writer::TenantWriters>,
}

/// The internal listener's router: health, readiness in detail, metrics; nothing else.
pub fn internal_router(mut state: AppState) -> Router {
    state.internal = true;
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route") })
        .layer(axum::middleware::from_fn(observe::json_errors))
        .layer(axum::middleware::from_fn(observe::record))
        .with_state(state)
}

/// Every public route with its OpenAPI description: the operations routes always, the
/// operator and tenant routes when the role serves the API.
pub fn api_routes(role: Role) -> OpenApiRouter<AppState> {
    let ops = OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .routes(routes!(health::healthz))
        .routes(routes!(health::readyz))
        .routes(routes!(health::metrics_text))
        .routes(routes!(openapi::openapi_json));
    if !role.serves_api() {
        return ops;
    }
    ops.routes(routes!(operator::add_tenant))
        .routes(routes!(tenant_api::list_users))
        .routes(routes!(tenant_api::quiz_results))
        .routes(routes!(tenant_api::course_catalog))
        .routes(routes!(tenant_api::sync_all_progress))
        .routes(routes!(
            tenant_api::sync_progress,
            tenant_api::last_progress
        ))
        .routes(routes!(tenant_api::aggregate_readiness))
        .routes(routes!(tenant_api::latest_readiness))
}

/// The OpenAPI document of the public router of `role`, as served at `/openapi.json`.
pub fn openapi_document(role: Role) -> String {
    let (_, doc) = api_routes(role).split_for_parts();
    doc.to_json().unwrap_or_else(|_| "{}".to_owned())
}

/// The public router, with the hardening layers.
pub fn router(state: AppState) -> Router {
    let http = &state.config.http;
    let limit = http.max_body_bytes;
    let guard = guard::ClientGuard::new(
        http.max_concurrent_requests_per_client,
        http.auth_failures_per_min,
    );
    let global = ServiceBuilder::new()
        .layer(HandleErrorLayer::new(|_: tower::BoxError| async {
            ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "request_timeout",
                "the request took too long",
            )
            .into_response()
        }))
        .layer(tower::timeout::TimeoutLayer::new(Duration::from_millis(
            http.request_timeout_ms,
        )))
        .layer(tower::limit::GlobalConcurrencyLimitLayer::new(
            http.max_concurrent_requests,
        ));
    let (app, doc) = api_routes(state.role).split_for_parts();
    let doc = openapi::OpenApiText(doc.to_json().unwrap_or_else(|_| "{}".to_owned()));
    let app = app.layer(axum::Extension(Arc::new(doc)));
    let app = if state.role.serves_api() {
        app.merge(scim::routes())
    } else {
        app
    };
    app.fallback(|uri: axum::http::Uri| async move {
        if uri.path().starts_with("/scim/") {
            scim::error_response(StatusCode::NOT_FOUND, "no such SCIM endpoint")
        } else {
            ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route").into_response()
        }
    })
    .layer(DefaultBodyLimit::max(limit))
    .layer(tower_http::limit::RequestBodyLimitLayer::new(limit))
    .layer(axum::middleware::from_fn_with_state(
        guard,
        guard::per_client,
    ))
    .layer(global)
    .layer(axum::middleware::from_fn(observe::json_errors))
    .layer(axum::middleware::from_fn(observe::record))
    .with_state(state)
}
