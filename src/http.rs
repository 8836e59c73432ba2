//! The HTTP control endpoint (axum): health, readiness, metrics and tenant registration.
//!
//! Errors are JSON `{"error": {"code", "message"}}` with a stable code; they never echo a
//! token, a connection string or another tenant's data.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::{json, Value};

use crate::actors::metric_names as m;
use crate::actors::ports::SecurityEvent;
use crate::actors::{ActorStatus, TenantId, Tenants, TenantsError};
use crate::cache::{RedisCache, Resource};
use crate::config::Config;
use crate::db::{PgPool, Registry, RegistryError, TenantScopedStore};
use crate::kafka::KafkaPublisher;
use crate::readiness::{Aggregation, Aggregator};
use crate::config::Role;
use crate::tenants::{register, RegisterError};
use crate::tokens;

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

async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// Time allowed to each readiness check; they run in parallel, so `/readyz` answers within
/// about this long whatever is down.
const READY_CHECK_TIMEOUT: Duration = Duration::from_millis(800);

async fn check<F, E>(f: F) -> Value
where
    F: std::future::Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    match tokio::time::timeout(READY_CHECK_TIMEOUT, f).await {
        Ok(Ok(())) => json!({"ok": true}),
        Ok(Err(e)) => json!({"ok": false, "error": e.to_string()}),
        Err(_) => json!({"ok": false, "error": "timed out"}),
    }
}

/// Ready when this instance can serve: what its role uses answers (PostgreSQL; Redis and
/// the broker except for the aggregator). Tenant actors and the consumer group are reported
/// in the body: a parked or restarting tenant is that tenant's problem, and taking the
/// instance out of service would stop every other tenant too.
async fn readyz(State(s): State<AppState>) -> Response {
    let pg = check(async {
        let conn = tokio::time::timeout(READY_CHECK_TIMEOUT, s.pool.get())
            .await
            .map_err(|_| "no pooled connection in time".to_string())?
            .map_err(crate::db::redact)?;
        conn.simple_query("select 1")
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    });
    // The aggregator needs only PostgreSQL; the other roles also use Redis and the broker.
    let uses_all = s.role != Role::Aggregator;
    let redis = async {
        if uses_all {
            Some(check(s.cache.ping()).await)
        } else {
            None
        }
    };
    let kafka = async {
        if uses_all {
            Some(check(s.publisher.broker_reachable()).await)
        } else {
            None
        }
    };
    let tenants = async {
        let tenants = s.tenants.as_ref()?;
        Some(match tenants.health(READY_CHECK_TIMEOUT).await {
            Ok(tenants) => {
                let not_running: Vec<_> = tenants
                    .iter()
                    .filter(|t| t.status != ActorStatus::Running)
                    .collect();
                let restarted: Vec<_> = tenants.iter().filter(|t| t.restarts > 0).collect();
                json!({
                    "running": tenants.len() - not_running.len(),
                    "parked": not_running.iter().filter(|t| t.status == ActorStatus::Parked).count(),
                    "not_running": not_running,
                    "restarted": restarted,
                })
            }
            Err(_) => json!({"error": "supervisor not answering"}),
        })
    };
    let (pg, redis, kafka, tenants) = tokio::join!(pg, redis, kafka, tenants);
    let mut body = json!({"role": s.role.as_str(), "checks": {"postgres": pg}});
    if let Some(r) = redis {
        body["checks"]["redis"] = r;
    }
    if let Some(k) = kafka {
        body["checks"]["kafka"] = k;
    }
    let ready = body["checks"]
        .as_object()
        .is_some_and(|checks| checks.values().all(|c| c["ok"] == true));
    if let Some(t) = tenants {
        body["tenants"] = t;
    }
    if let Some(group) = &s.group {
        body["consumer_group"] = group.snapshot();
    }
    body["ready"] = Value::Bool(ready);
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

async fn metrics_text(State(s): State<AppState>) -> Response {
    match &s.metrics {
        Some(h) => ([("content-type", "text/plain; version=0.0.4")], h.render()).into_response(),
        None => {
            ApiError::new(StatusCode::NOT_FOUND, "not_found", "metrics disabled").into_response()
        }
    }
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get("authorization")?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
}

fn require_operator(s: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let ok = bearer(headers).is_some_and(|t| {
        tokens::constant_time_eq(
            &tokens::hash(t),
            &tokens::hash(&s.config.http.operator_token),
        )
    });
    if ok {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "a valid operator bearer token is required",
        ))
    }
}

/// `POST /api/tenants` `{"tenantId": "acme", "displayName": "Acme Corp"}` (operator token).
async fn add_tenant(
    State(s): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    require_operator(&s, &headers)?;
    let v: Value = serde_json::from_slice(&body).map_err(|_| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_json",
            "body must be a JSON object",
        )
    })?;
    let field = |name: &'static str| -> Result<&str, ApiError> {
        v.get(name).and_then(Value::as_str).ok_or_else(|| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_field",
                format!("{name} is required and must be a string"),
            )
        })
    };
    let tenant = TenantId::parse(field("tenantId")?).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_tenant_id",
            format!("tenantId: {e}"),
        )
    })?;
    let name = field("displayName")?;
    match register(&s.registry, &s.config.kafka, &tenant, name).await {
        Ok(r) => Ok((
            StatusCode::CREATED,
            Json(json!({
                "tenant": r.tenant,
                "topics": r.topics,
                "apiToken": r.api_token,
            })),
        )
            .into_response()),
        Err(RegisterError::Registry(RegistryError::Exists(_))) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "tenant_exists",
            "tenant already exists",
        )),
        Err(RegisterError::Registry(RegistryError::DisplayName)) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_field",
            "displayName must be 1 to 200 characters",
        )),
        Err(e) => {
            tracing::error!(error = %e, "tenant registration failed");
            Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "registration failed; retry later",
            ))
        }
    }
}

fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        "no such tenant or resource",
    )
}

/// Authorises a request on `/api/tenants/{tenant}/...`: the operator token, or the tenant's
/// own token. Another tenant's valid token gets 404 (no existence leak) and is recorded as
/// a security event of the token's tenant; a missing or wrong token gets 401.
pub async fn authorize_tenant(
    s: &AppState,
    headers: &HeaderMap,
    raw_tenant: &str,
) -> Result<TenantId, ApiError> {
    let tenant = TenantId::parse(raw_tenant).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_tenant_id",
            format!("tenant id: {e}"),
        )
    })?;
    let unauthorized = || {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "a valid bearer token is required",
        )
    };
    let token = bearer(headers).ok_or_else(unauthorized)?;
    if require_operator(s, headers).is_ok() {
        refuse_suspended(s, &tenant).await?;
        return Ok(tenant);
    }
    let claimed = tokens::claimed_tenant(token).ok_or_else(unauthorized)?;
    let valid = s
        .store
        .token_matches(&claimed, tokens::hash(token))
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "retry later",
            )
        })?;
    if !valid {
        return Err(unauthorized());
    }
    if claimed != tenant {
        // Recorded with the token's tenant: its token was used on another tenant's path.
        let event = SecurityEvent {
            kind: "cross_tenant_access",
            detail: json!({"source": "http", "pathTenant": tenant.as_str()}),
        };
        s.store.record_security_event(&claimed, &event).await;
        return Err(not_found());
    }
    refuse_suspended(s, &tenant).await?;
    Ok(tenant)
}

/// A suspended tenant is cut off: its data is neither served nor cached again until
/// `tenant resume`.
async fn refuse_suspended(s: &AppState, tenant: &TenantId) -> Result<(), ApiError> {
    let status = s.registry.status(tenant).await.map_err(|_| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "retry later",
        )
    })?;
    if status.as_deref() == Some("suspended") {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "tenant_suspended",
            "this tenant is suspended; an operator can resume it",
        ));
    }
    Ok(())
}

/// `GET /api/tenants/{t}/users`: the SCIM-provisioned roster, cached in Redis
/// (`tenant:{<id>}:roster`, `redis.roster_ttl_s`), answered from PostgreSQL when Redis is
/// down or the entry is missing.
async fn list_users(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path(raw): Path<String>,
) -> Result<Response, ApiError> {
    let tenant = authorize_tenant(&s, &headers, &raw).await?;
    if let Some(hit) = cache_lookup(&s, &tenant, Resource::Roster).await {
        return Ok(hit);
    }
    let users = s.store.roster(&tenant).await.map_err(unavailable)?;
    let text = json!({"tenantId": tenant.as_str(), "users": users}).to_string();
    Ok(cache_fill(&s, &tenant, Resource::Roster, text).await)
}

/// A cached answer, counting the hit or miss; Redis failures count and fall through.
async fn cache_lookup(s: &AppState, tenant: &TenantId, resource: Resource) -> Option<Response> {
    let label = tenant.as_str().to_owned();
    match s.cache.get(tenant, resource).await {
        Ok(Some(text)) => {
            metrics::counter!(m::CACHE_HITS_TOTAL, "tenant" => label, "resource" => resource.key())
                .increment(1);
            Some(json_answer(text, "hit"))
        }
        Ok(None) => {
            metrics::counter!(m::CACHE_MISSES_TOTAL, "tenant" => label, "resource" => resource.key())
                .increment(1);
            None
        }
        Err(e) => {
            tracing::warn!(tenant = %tenant, error = %e, "cache read failed; answering without it");
            metrics::counter!(m::CACHE_ERRORS_TOTAL, "operation" => "get").increment(1);
            None
        }
    }
}

/// Stores a freshly computed answer in the cache (best effort) and returns it.
async fn cache_fill(s: &AppState, tenant: &TenantId, resource: Resource, text: String) -> Response {
    if let Err(e) = s.cache.set(tenant, resource, &text).await {
        tracing::warn!(tenant = %tenant, error = %e, "cache write failed");
        metrics::counter!(m::CACHE_ERRORS_TOTAL, "operation" => "set").increment(1);
    }
    json_answer(text, "miss")
}

fn json_answer(text: String, cache: &'static str) -> Response {
    (
        [("content-type", "application/json"), ("x-cache", cache)],
        text,
    )
        .into_response()
}

fn valid_user_id(raw: &str) -> Result<&str, ApiError> {
    if raw.is_empty() || raw.len() > 256 || raw.chars().any(char::is_control) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_user_id",
            "user id must be 1 to 256 printable characters",
        ));
    }
    Ok(raw)
}

/// 202 with `Location`: the work goes on (queued or running); its result is at `location`.
fn accepted(status: &str, location: &str) -> Response {
    (
        StatusCode::ACCEPTED,
        [("location", location.to_owned())],
        Json(json!({"status": status, "location": location})),
    )
        .into_response()
}

fn unavailable(e: impl std::fmt::Display) -> ApiError {
    tracing::warn!(error = %e, "request failed");
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
        "retry later",
    )
}

/// `POST /api/tenants/{t}/users/{u}/sync-progress`: syncs through the tenant's actor (and
/// its rate budget). Answers the progress, or 202 with `Location` when the budget cannot
/// serve it within `http.request_deadline_ms` (the sync completes in the background).
async fn sync_progress(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path((raw, user)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let tenant = authorize_tenant(&s, &headers, &raw).await?;
    let user = valid_user_id(&user)?;
    if !s
        .store
        .user_exists(&tenant, user)
        .await
        .map_err(unavailable)?
    {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "user_not_found",
            "no such user in this tenant",
        ));
    }
    let user = user.to_owned();
    let location = format!("/api/tenants/{tenant}/users/{user}/sync-progress");
    let queued = || accepted("queued", &location);
    if !is_local(&s, &tenant).await {
        // The tenant's consumer runs in another process (api role, or another instance):
        // queue the sync durably; that consumer is woken through PostgreSQL.
        s.store
            .queue_syncs(&tenant, Some(&user))
            .await
            .map_err(unavailable)?;
        return Ok(queued());
    }
    let deadline = Duration::from_millis(s.config.http.request_deadline_ms);
    match answer(&tenant, tenants(&s)?.sync_progress(&tenant, &user, deadline).await)? {
        Some(snapshot) => Ok(Json(snapshot).into_response()),
        None => Ok(queued()),
    }
}

/// `POST /api/tenants/{t}/sync-progress`: queues a background sync of every active user
/// without one queued (a full refresh, drained under the tenant's budget). 202 with the
/// number queued.
async fn sync_all_progress(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path(raw): Path<String>,
) -> Result<Response, ApiError> {
    let tenant = authorize_tenant(&s, &headers, &raw).await?;
    let queued = s
        .store
        .queue_syncs(&tenant, None)
        .await
        .map_err(unavailable)?;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"status": "queued", "queued": queued})),
    )
        .into_response())
}

/// `POST /api/tenants/{t}/readiness/aggregate`: computes the tenant's readiness report now
/// and answers it; 202 (with `Location`) when an aggregation of the tenant is already
/// running anywhere: the request is coalesced into it.
async fn aggregate_readiness(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path(raw): Path<String>,
) -> Result<Response, ApiError> {
    use crate::actors::readiness::AggregationTrigger;
    let tenant = authorize_tenant(&s, &headers, &raw).await?;
    let location = format!("/api/tenants/{tenant}/readiness");
    match s
        .aggregator
        .aggregate(&tenant, AggregationTrigger::Manual)
        .await
        .map_err(unavailable)?
    {
        Aggregation::Computed(report) => Ok(Json(report).into_response()),
        Aggregation::Running | Aggregation::NotDue => Ok(accepted("running", &location)),
        Aggregation::UnknownTenant => Err(not_found()),
    }
}

/// `GET /api/tenants/{t}/readiness`: the latest report (provisional or final).
async fn latest_readiness(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path(raw): Path<String>,
) -> Result<Response, ApiError> {
    let tenant = authorize_tenant(&s, &headers, &raw).await?;
    match s.aggregator.latest(&tenant).await.map_err(unavailable)? {
        Some(report) => Ok(Json(report).into_response()),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "no_report",
            "no readiness report yet; POST .../readiness/aggregate computes one",
        )),
    }
}

/// `GET /api/tenants/{t}/users/{u}/sync-progress`: the last synced progress.
async fn last_progress(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path((raw, user)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let tenant = authorize_tenant(&s, &headers, &raw).await?;
    let user = valid_user_id(&user)?;
    match s.store.progress(&tenant, user).await.map_err(unavailable)? {
        Some(p) => Ok(Json(p).into_response()),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_synced",
            "no progress synced for this user yet",
        )),
    }
}

/// `POST /api/tenants/{t}/quiz-results`: records a QuizSubmission (idempotent by
/// `submissionId`), updates the course score, announces `quiz.completed`. Never cached.
async fn quiz_results(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path(raw): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    use crate::quiz::{parse, record, Recorded};
    let tenant = authorize_tenant(&s, &headers, &raw).await?;
    let sub = parse(&body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_field",
            format!("{}: {}", e.field, e.message),
        )
    })?;
    match record(&s.store, &tenant, &sub).await.map_err(unavailable)? {
        Recorded::New => {
            if let Some(tenants) = &s.tenants {
                tenants.wake(&tenant);
            }
            Ok((
                StatusCode::CREATED,
                Json(json!({"submissionId": sub.submission_id, "recorded": true})),
            )
                .into_response())
        }
        Recorded::Duplicate => Ok(Json(
            json!({"submissionId": sub.submission_id, "recorded": false, "duplicate": true}),
        )
        .into_response()),
        Recorded::Conflict => Err(ApiError::new(
            StatusCode::CONFLICT,
            "submission_conflict",
            "submissionId was already used for a different submission",
        )),
        Recorded::UnknownUser => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "user_not_found",
            "no such user in this tenant",
        )),
    }
}

/// True when the tenant's actor runs in this process.
async fn is_local(s: &AppState, tenant: &TenantId) -> bool {
    match &s.tenants {
        Some(tenants) => tenants.is_local(tenant).await,
        None => false,
    }
}

fn tenants(s: &AppState) -> Result<&Tenants, ApiError> {
    s.tenants
        .as_ref()
        .ok_or_else(|| unavailable("no tenant actors in this role"))
}

/// What an answer of the tenant's actor means for the client. `Ok(None)`: not done within
/// the request deadline (the work goes on; queued work is durable).
fn answer<T>(tenant: &TenantId, result: Result<T, TenantsError>) -> Result<Option<T>, ApiError> {
    match result {
        Ok(v) => Ok(Some(v)),
        Err(TenantsError::Timeout) => Ok(None),
        Err(TenantsError::Failed(e)) => {
            tracing::warn!(tenant = %tenant, error = %e, "upstream work failed");
            Err(ApiError::new(
                StatusCode::BAD_GATEWAY,
                "upstream_failed",
                "the platform did not answer; retry later",
            ))
        }
        Err(e @ (TenantsError::NotHere | TenantsError::Stopped)) => Err(unavailable(e)),
    }
}

/// `GET /api/tenants/{t}/courses`: the MindTickle course catalog, cached in Redis
/// (`tenant:{<id>}:catalog`, `redis.catalog_ttl_s`), fetched through the tenant's budget on
/// a miss.
async fn course_catalog(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path(raw): Path<String>,
) -> Result<Response, ApiError> {
    let tenant = authorize_tenant(&s, &headers, &raw).await?;
    if let Some(hit) = cache_lookup(&s, &tenant, Resource::Catalog).await {
        return Ok(hit);
    }
    let deadline = Duration::from_millis(s.config.http.request_deadline_ms);
    let courses = answer(&tenant, tenants(&s)?.catalog(&tenant, deadline).await)?
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "budget_exhausted",
                "the tenant's upstream budget is spent; retry later",
            )
        })?;
    let text = json!({"tenantId": tenant.as_str(), "courses": courses}).to_string();
    Ok(cache_fill(&s, &tenant, Resource::Catalog, text).await)
}
