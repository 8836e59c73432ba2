//! Who may call what: the operator token (constant-time compare of hashes), a tenant's own
//! API token on its own paths, 404 (no existence leak) and a security event for a token
//! used on another tenant's path, 403 for a suspended tenant.

use axum::http::{HeaderMap, StatusCode};

use serde_json::json;

use super::error::{not_found, ApiError};
use super::AppState;
use crate::actors::ports::SecurityEvent;
use crate::actors::TenantId;
use crate::tokens;

pub(super) fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get("authorization")?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
}

pub(super) fn require_operator(s: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
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
pub(super) async fn refuse_suspended(s: &AppState, tenant: &TenantId) -> Result<(), ApiError> {
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

pub(super) fn valid_user_id(raw: &str) -> Result<&str, ApiError> {
    if raw.is_empty() || raw.len() > 256 || raw.chars().any(char::is_control) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_user_id",
            "user id must be 1 to 256 printable characters",
        ));
    }
    Ok(raw)
}
