//! Who may call what: the operator token (constant-time compare of hashes), a tenant's own
//! API token on its own paths, 404 (no existence leak) and a security event for a token
//! used on another tenant's path, 403 for a suspended tenant.
//!
//! A token is checked against the database only when it has the token format and names a
//! tenant that exists ([`KnownTenants`]): garbage and guessed tenant ids cost no
//! transaction.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, StatusCode};
use tokio::sync::Mutex;

use serde_json::json;

use super::error::{not_found, ApiError};
use super::AppState;
use crate::actors::ports::SecurityEvent;
use crate::actors::TenantId;
use crate::db::{Registry, RegistryError};
use crate::tokens;

/// The ids of registered tenants, reloaded from the registry when an unknown id is asked
/// for, at most once per [`KnownTenants::RELOAD_EVERY`]: a client spraying made-up tenant
/// ids causes at most one registry read per interval, whatever its rate.
pub struct KnownTenants {
    state: Mutex<(HashSet<TenantId>, Option<Instant>)>,
}

impl Default for KnownTenants {
    fn default() -> Self {
        Self {
            state: Mutex::new((HashSet::new(), None)),
        }
    }
}

impl KnownTenants {
    pub const RELOAD_EVERY: Duration = Duration::from_secs(1);

    pub async fn contains(
        &self,
        registry: &Registry,
        tenant: &TenantId,
    ) -> Result<bool, RegistryError> {
        let mut state = self.state.lock().await;
        if state.0.contains(tenant) {
            return Ok(true);
        }
        if state.1.is_some_and(|at| at.elapsed() < Self::RELOAD_EVERY) {
            return Ok(false);
        }
        let all = registry.list().await?;
        state.0 = all.into_iter().map(|t| t.tenant_id).collect();
        state.1 = Some(Instant::now());
        Ok(state.0.contains(tenant))
    }
}

pub(super) fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get("authorization")?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
}

/// True for a request that may see operational detail: on the internal listener, or with
/// the operator token.
pub(super) fn may_see_operations(s: &AppState, headers: &HeaderMap) -> bool {
    s.internal || require_operator(s, headers).is_ok()
}

pub(super) fn require_operator(s: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let ok = bearer(headers).is_some_and(|t| {
        tokens::constant_time_eq(
            &tokens::hash(t),
            &tokens::hash(s.config.http.operator_token.expose()),
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
        // The operator may name any tenant: one that does not exist is not found here,
        // before a handler writes work for it.
        let exists = s
            .known
            .contains(&s.registry, &tenant)
            .await
            .map_err(|_| retry_later())?;
        if !exists {
            return Err(not_found());
        }
        refuse_suspended(s, &tenant).await?;
        return Ok(tenant);
    }
    let claimed = tokens::claimed_tenant(token).ok_or_else(unauthorized)?;
    let exists = s
        .known
        .contains(&s.registry, &claimed)
        .await
        .map_err(|_| retry_later())?;
    if !exists {
        return Err(unauthorized());
    }
    let valid = s
        .store
        .token_matches(&claimed, tokens::hash(token))
        .await
        .map_err(|_| retry_later())?;
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
    let status = s.registry.status(tenant).await.map_err(|_| retry_later())?;
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
    if raw.is_empty() || raw.chars().count() > 256 || raw.chars().any(char::is_control) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_user_id",
            "user id must be 1 to 256 printable characters",
        ));
    }
    Ok(raw)
}

/// 503: a lookup the answer depends on failed (the registry or the store); no detail.
fn retry_later() -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
        "retry later",
    )
}
