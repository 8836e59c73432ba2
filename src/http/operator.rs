//! Operator routes (operator token): tenant registration through the same application
//! function as `enablement tenant add`.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use super::auth::require_operator;
use super::error::ApiError;
use super::AppState;
use crate::actors::TenantId;
use crate::db::RegistryError;
use crate::tenants::{register, TenantAdminError, Topics};

/// `POST /api/tenants` `{"tenantId": "acme", "displayName": "Acme Corp"}` (operator token);
/// `"sharedTopics": true` registers it on the shared topics.
#[utoipa::path(post, path = "/api/tenants", tag = "operator", security(("operator_token" = [])),
    request_body(content = super::openapi::NewTenant, content_type = "application/json"),
    responses((status = 201, description = "Registered; the token is shown once", body = super::openapi::TenantCreated),
              (status = 409, description = "The tenant exists", body = super::openapi::ErrorBody),
              super::openapi::CommonErrors))]
pub(super) async fn add_tenant(
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
    let topics = match v.get("sharedTopics") {
        None | Some(Value::Null) | Some(Value::Bool(false)) => Topics::Dedicated,
        Some(Value::Bool(true)) => Topics::Shared,
        Some(_) => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_field",
                "sharedTopics must be a boolean",
            ))
        }
    };
    match register(&s.registry, &s.config.kafka, &tenant, name, topics).await {
        Ok(r) => Ok((
            StatusCode::CREATED,
            Json(json!({
                "tenant": r.tenant,
                "topics": r.topics,
                "apiToken": r.api_token,
            })),
        )
            .into_response()),
        Err(TenantAdminError::Registry(RegistryError::Exists(_))) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "tenant_exists",
            "tenant already exists",
        )),
        Err(TenantAdminError::Registry(RegistryError::DisplayName)) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_field",
            "displayName must be 1 to 200 characters, not only spaces, no control characters",
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
