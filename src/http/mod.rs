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
//! - [`guard`]: per-client limits (requests in progress, failed authentications).
//!
//! Hardening, outermost first: the global concurrency limit and the request timeout
//! (tower), the per-client guard, the body limit (tower-http, on `Content-Length` before a
//! byte of the body is read, and while streaming). `/metrics` and the detailed `/readyz`
//! need the operator token, except on the internal listener (`http.internal_listen`).

mod auth;
mod error;
mod guard;
mod health;
mod operator;
mod server;
mod tenant_api;

use std::sync::Arc;
use std::time::Duration;

use axum::error_handling::HandleErrorLayer;
use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::Router;
use metrics_exporter_prometheus::PrometheusHandle;
use tower::ServiceBuilder;

pub use auth::{authorize_tenant, KnownTenants};
pub use error::ApiError;
pub use server::Listener;

use crate::actors::Tenants;
use crate::cache::RedisCache;
use crate::config::{Config, Role};
use crate::db::{PgPool, Registry, TenantScopedStore};
use crate::kafka::KafkaPublisher;
use crate::readiness::Aggregator;
use health::{healthz, metrics_text, readyz};
use operator::add_tenant;
use tenant_api::{
    aggregate_readiness, course_catalog, last_progress, latest_readiness, list_users, quiz_results,
    sync_all_progress, sync_progress,
};

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
}

/// The internal listener's router: health, readiness in detail, metrics; nothing else.
pub fn internal_router(mut state: AppState) -> Router {
    state.internal = true;
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route") })
        .with_state(state)
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
    let ops = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text));
    let app = if state.role.serves_api() {
        ops.route("/api/tenants", post(add_tenant))
            .route("/api/tenants/{tenant}/users", get(list_users))
            .route("/api/tenants/{tenant}/quiz-results", post(quiz_results))
            .route("/api/tenants/{tenant}/courses", get(course_catalog))
            .route(
                "/api/tenants/{tenant}/sync-progress",
                post(sync_all_progress),
            )
            .route(
                "/api/tenants/{tenant}/users/{user}/sync-progress",
                post(sync_progress).get(last_progress),
            )
            .route(
                "/api/tenants/{tenant}/readiness/aggregate",
                post(aggregate_readiness),
            )
            .route("/api/tenants/{tenant}/readiness", get(latest_readiness))
    } else {
        ops
    };
    app.fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route") })
        .layer(DefaultBodyLimit::max(limit))
        .layer(tower_http::limit::RequestBodyLimitLayer::new(limit))
        .layer(axum::middleware::from_fn_with_state(
            guard,
            guard::per_client,
        ))
        .layer(global)
        .with_state(state)
}
