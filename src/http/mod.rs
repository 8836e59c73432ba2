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
//!   string or another tenant's data.

mod auth;
mod error;
mod health;
mod operator;
mod tenant_api;

use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::Router;
use metrics_exporter_prometheus::PrometheusHandle;

pub use auth::authorize_tenant;
pub use error::ApiError;

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
}

pub fn router(state: AppState) -> Router {
    let limit = state.config.http.max_body_bytes;
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
        .with_state(state)
}
