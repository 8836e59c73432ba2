//! The tenant API, `/api/tenants/{t}/...`: each handler authorises the tenant, then reads
//! from PostgreSQL or Redis, or asks the tenant's actor through the [`Tenants`] facade
//! (durable jobs when the actor runs in another process).

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use super::auth::{authorize_tenant, valid_user_id};
use super::error::{accepted, json_answer, not_found, unavailable, ApiError};
use super::AppState;
use crate::actors::events::{CacheFailed, CacheLookup, InternalEvent};
use crate::actors::upstream::UpstreamError;
use crate::actors::{SyncError, TenantId, Tenants, TenantsError};
use crate::cache::Resource;
use crate::readiness::Aggregation;

/// `GET /api/tenants/{t}/users`: the SCIM-provisioned roster, cached in Redis
/// (`tenant:{<id>}:roster`, `redis.roster_ttl_s`), answered from PostgreSQL when Redis is
/// down or the entry is missing.
#[utoipa::path(get, path = "/api/tenants/{tenant}/users", tag = "tenant", params(("tenant" = String, Path, description = "Tenant id", pattern = "^[a-z0-9][a-z0-9-]{0,62}$")), security(("tenant_token" = []), ("operator_token" = [])),
    responses((status = 200, description = "The roster", body = super::openapi::Roster), super::openapi::CommonErrors))]
pub(super) async fn list_users(
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
pub(super) async fn cache_lookup(
    s: &AppState,
    tenant: &TenantId,
    resource: Resource,
) -> Option<Response> {
    let lookup = |hit| CacheLookup {
        tenant,
        resource: resource.key(),
        hit,
    };
    match s.cache.get(tenant, resource).await {
        Ok(Some(text)) => {
            lookup(true).emit();
            Some(json_answer(text, "hit"))
        }
        Ok(None) => {
            lookup(false).emit();
            None
        }
        Err(e) => {
            // Answered without the cache.
            let error = &e;
            CacheFailed {
                tenant,
                operation: "get",
                error,
            }
            .emit();
            None
        }
    }
}

/// Stores a freshly computed answer in the cache (best effort) and returns it.
pub(super) async fn cache_fill(
    s: &AppState,
    tenant: &TenantId,
    resource: Resource,
    text: String,
) -> Response {
    if let Err(e) = s.cache.set(tenant, resource, &text).await {
        let error = &e;
        CacheFailed {
            tenant,
            operation: "set",
            error,
        }
        .emit();
    }
    json_answer(text, "miss")
}

/// `POST /api/tenants/{t}/users/{u}/sync-progress`: syncs through the tenant's actor (and
/// its rate budget). Answers the progress, or 202 with `Location` when the budget cannot
/// serve it within `http.request_deadline_ms` (the sync completes in the background).
#[utoipa::path(post, path = "/api/tenants/{tenant}/users/{user}/sync-progress", tag = "tenant", params(("tenant" = String, Path, description = "Tenant id", pattern = "^[a-z0-9][a-z0-9-]{0,62}$"), ("user" = String, Path, description = "User id (1 to 256 characters, no control characters)", min_length = 1, max_length = 256, pattern = "^[^\\u0000-\\u001f\\u007f-\\u009f]+$")), security(("tenant_token" = []), ("operator_token" = [])),
    responses((status = 200, description = "Synced now", body = super::openapi::Progress),
              (status = 202, description = "Queued under the tenant's budget", body = super::openapi::Accepted),
              (status = 409, description = "The tenant has no MindTickle credentials yet", body = super::openapi::ErrorBody),
              (status = 502, description = "The platform did not answer", body = super::openapi::ErrorBody),
              super::openapi::CommonErrors))]
pub(super) async fn sync_progress(
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
    match answer(
        &tenant,
        tenants(&s)?.sync_progress(&tenant, &user, deadline).await,
    )? {
        Some(snapshot) => Ok(Json(snapshot).into_response()),
        None => Ok(queued()),
    }
}

/// `POST /api/tenants/{t}/sync-progress`: queues a background sync of every active user
/// without one queued (a full refresh, drained under the tenant's budget). 202 with the
/// number queued.
#[utoipa::path(post, path = "/api/tenants/{tenant}/sync-progress", tag = "tenant", params(("tenant" = String, Path, description = "Tenant id", pattern = "^[a-z0-9][a-z0-9-]{0,62}$")), security(("tenant_token" = []), ("operator_token" = [])),
    responses((status = 202, description = "Syncs of every active user queued", body = super::openapi::Accepted), super::openapi::CommonErrors))]
pub(super) async fn sync_all_progress(
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
#[utoipa::path(post, path = "/api/tenants/{tenant}/readiness/aggregate", tag = "tenant", params(("tenant" = String, Path, description = "Tenant id", pattern = "^[a-z0-9][a-z0-9-]{0,62}$")), security(("tenant_token" = []), ("operator_token" = [])),
    responses((status = 200, description = "Computed now", body = super::openapi::Report),
              (status = 202, description = "An aggregation is running; the report will be at Location", body = super::openapi::Accepted),
              super::openapi::CommonErrors))]
pub(super) async fn aggregate_readiness(
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
#[utoipa::path(get, path = "/api/tenants/{tenant}/readiness", tag = "tenant", params(("tenant" = String, Path, description = "Tenant id", pattern = "^[a-z0-9][a-z0-9-]{0,62}$")), security(("tenant_token" = []), ("operator_token" = [])),
    responses((status = 200, description = "The latest report", body = super::openapi::Report), super::openapi::CommonErrors))]
pub(super) async fn latest_readiness(
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
#[utoipa::path(get, path = "/api/tenants/{tenant}/users/{user}/sync-progress", tag = "tenant", params(("tenant" = String, Path, description = "Tenant id", pattern = "^[a-z0-9][a-z0-9-]{0,62}$"), ("user" = String, Path, description = "User id (1 to 256 characters, no control characters)", min_length = 1, max_length = 256, pattern = "^[^\\u0000-\\u001f\\u007f-\\u009f]+$")), security(("tenant_token" = []), ("operator_token" = [])),
    responses((status = 200, description = "The last synced progress", body = super::openapi::Progress), super::openapi::CommonErrors))]
pub(super) async fn last_progress(
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
#[utoipa::path(post, path = "/api/tenants/{tenant}/quiz-results", tag = "tenant", params(("tenant" = String, Path, description = "Tenant id", pattern = "^[a-z0-9][a-z0-9-]{0,62}$")), security(("tenant_token" = []), ("operator_token" = [])),
    request_body(content = super::openapi::QuizSubmission, content_type = "application/json"),
    responses((status = 201, description = "Recorded", body = super::openapi::QuizRecorded),
              (status = 200, description = "Recorded before (same content)", body = super::openapi::QuizRecorded),
              (status = 409, description = "submissionId used before for other content", body = super::openapi::ErrorBody),
              super::openapi::CommonErrors))]
pub(super) async fn quiz_results(
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
pub(super) async fn is_local(s: &AppState, tenant: &TenantId) -> bool {
    match &s.tenants {
        Some(tenants) => tenants.is_local(tenant).await,
        None => false,
    }
}

pub(super) fn tenants(s: &AppState) -> Result<&Tenants, ApiError> {
    s.tenants
        .as_ref()
        .ok_or_else(|| unavailable("no tenant actors in this role"))
}

/// What an answer of the tenant's actor means for the client. `Ok(None)`: not done within
/// the request deadline (the work goes on; queued work is durable).
pub(super) fn answer<T>(
    tenant: &TenantId,
    result: Result<T, TenantsError>,
) -> Result<Option<T>, ApiError> {
    match result {
        Ok(v) => Ok(Some(v)),
        Err(TenantsError::Timeout) => Ok(None),
        Err(TenantsError::Failed(SyncError::Upstream(UpstreamError::NoCredentials))) => {
            Err(ApiError::new(
                StatusCode::CONFLICT,
                "upstream_not_configured",
                "the tenant has no MindTickle credentials; an operator sets them with `enablement tenant set-upstream`",
            ))
        }
        Err(TenantsError::Failed(SyncError::Upstream(UpstreamError::NotFound))) => {
            Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found_upstream",
                "the platform does not know this user or organisation",
            ))
        }
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
#[utoipa::path(get, path = "/api/tenants/{tenant}/courses", tag = "tenant", params(("tenant" = String, Path, description = "Tenant id", pattern = "^[a-z0-9][a-z0-9-]{0,62}$")), security(("tenant_token" = []), ("operator_token" = [])),
    responses((status = 200, description = "The catalog", body = super::openapi::Catalog),
              (status = 202, description = "Queued for the tenant's owner; come back", body = super::openapi::Accepted),
              (status = 409, description = "The tenant has no MindTickle credentials yet", body = super::openapi::ErrorBody),
              (status = 502, description = "The platform did not answer", body = super::openapi::ErrorBody),
              super::openapi::CommonErrors))]
pub(super) async fn course_catalog(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path(raw): Path<String>,
) -> Result<Response, ApiError> {
    let tenant = authorize_tenant(&s, &headers, &raw).await?;
    if let Some(hit) = cache_lookup(&s, &tenant, Resource::Catalog).await {
        return Ok(hit);
    }
    if !is_local(&s, &tenant).await {
        // The tenant's actor (and its rate budget) runs in another process: queue a
        // refresh that the owner runs into the cache; the client comes back for it.
        s.store
            .queue_catalog_refresh(&tenant)
            .await
            .map_err(unavailable)?;
        return Ok(accepted(
            "queued",
            &format!("/api/tenants/{tenant}/courses"),
        ));
    }
    let deadline = Duration::from_millis(s.config.http.request_deadline_ms);
    let courses =
        answer(&tenant, tenants(&s)?.catalog(&tenant, deadline).await)?.ok_or_else(|| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "budget_exhausted",
                "the tenant's upstream budget is spent; retry later",
            )
        })?;
    let text = crate::cache::catalog_text(&tenant, &courses);
    Ok(cache_fill(&s, &tenant, Resource::Catalog, text).await)
}
