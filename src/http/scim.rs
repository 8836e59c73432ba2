//! The SCIM 2.0 edge, `/scim/v2/{tenant}/...` (RFC 7644): the tenant's SCIM bearer token,
//! `application/scim+json` in and out, SCIM error bodies, `ETag` / `If-Match` /
//! `If-None-Match`, then one call into the provider (`crate::scim`).
//!
//! Authorisation mirrors the tenant API's: the token names its tenant (`scim_<t>.<hex>`),
//! is checked inside that tenant's scope, and a valid token on another tenant's path gets
//! 404 and a security event. A token, once verified, is remembered for
//! [`ScimTokens::TTL`] with the tenant's status, so a provisioning burst costs one token
//! check per few seconds, not one per request; a rotated or suspended tenant's old token
//! stops working within that time.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde_json::{json, Value};
use tokio::sync::Mutex;

use super::auth::bearer;
use super::AppState;
use crate::actors::ports::SecurityEvent;
use crate::actors::scim::resource::{if_match_admits, ProviderError, SEARCH_REQUEST_SCHEMA};
use crate::actors::TenantId;
use crate::scim::{discovery, Change, ListQuery, ScimProvider, Scope, Served};
use crate::tokens;

pub const SCIM_CONTENT_TYPE: &str = "application/scim+json";

/// Verified SCIM tokens (by hash) and their tenant, for a few seconds.
#[derive(Default)]
pub struct ScimTokens {
    verified: Mutex<HashMap<[u8; 32], (TenantId, Instant)>>,
}

impl ScimTokens {
    /// How long a verified token and its tenant's status are trusted without a lookup.
    pub const TTL: Duration = Duration::from_secs(5);
    const MAX_ENTRIES: usize = 10_000;

    async fn fresh(&self, hash: &[u8; 32]) -> Option<TenantId> {
        let map = self.verified.lock().await;
        map.get(hash)
            .filter(|(_, at)| at.elapsed() < Self::TTL)
            .map(|(t, _)| t.clone())
    }

    async fn remember(&self, hash: [u8; 32], tenant: TenantId) {
        let mut map = self.verified.lock().await;
        if map.len() >= Self::MAX_ENTRIES {
            map.retain(|_, (_, at)| at.elapsed() < Self::TTL);
            if map.len() >= Self::MAX_ENTRIES {
                map.clear();
            }
        }
        map.insert(hash, (tenant, Instant::now()));
    }
}

/// The SCIM routes (mounted by the API roles).
pub fn routes() -> Router<AppState> {
    Router::new()
        .route(
            "/scim/v2/{tenant}/ServiceProviderConfig",
            get(service_provider_config),
        )
        .route("/scim/v2/{tenant}/ResourceTypes", get(resource_types))
        .route("/scim/v2/{tenant}/ResourceTypes/{id}", get(resource_type))
        .route("/scim/v2/{tenant}/Schemas", get(schemas))
        .route("/scim/v2/{tenant}/Schemas/{id}", get(schema))
        .route("/scim/v2/{tenant}/.search", post(search_all))
        .route("/scim/v2/{tenant}/Users", get(list_users).post(create_user))
        .route("/scim/v2/{tenant}/Users/.search", post(search_users))
        .route(
            "/scim/v2/{tenant}/Users/{id}",
            get(get_user)
                .put(replace_user)
                .patch(patch_user)
                .delete(delete_user),
        )
        .route(
            "/scim/v2/{tenant}/Groups",
            get(list_groups).post(create_group),
        )
        .route("/scim/v2/{tenant}/Groups/.search", post(search_groups))
        .route(
            "/scim/v2/{tenant}/Groups/{id}",
            get(get_group)
                .put(replace_group)
                .patch(patch_group)
                .delete(delete_group),
        )
}

/// An error answer in the SCIM error schema.
pub struct ScimError(ProviderError);

impl From<ProviderError> for ScimError {
    fn from(e: ProviderError) -> Self {
        Self(e)
    }
}

impl IntoResponse for ScimError {
    fn into_response(self) -> Response {
        let status =
            StatusCode::from_u16(self.0.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut r = scim_json(status, &self.0.body());
        if status == StatusCode::UNAUTHORIZED {
            r.headers_mut().insert(
                "www-authenticate",
                HeaderValue::from_static("Bearer realm=\"scim\""),
            );
        }
        r
    }
}

/// A framework answer (405, 413, a malformed query) on a SCIM route, as a SCIM error.
pub(super) fn error_response(status: StatusCode, detail: &str) -> Response {
    err(status.as_u16(), detail).into_response()
}

fn err(status: u16, detail: &str) -> ScimError {
    ScimError(ProviderError {
        status,
        scim_type: None,
        detail: detail.to_owned(),
    })
}

fn scim_json(status: StatusCode, body: &Value) -> Response {
    (
        status,
        [("content-type", SCIM_CONTENT_TYPE)],
        body.to_string(),
    )
        .into_response()
}

/// A resource answer with its `ETag` (and `Location` when created).
fn served(status: StatusCode, s: &Served, created: bool) -> Response {
    let mut r = scim_json(status, &s.resource);
    let tag = crate::scim::etag(s.version);
    if let Ok(v) = HeaderValue::from_str(&tag) {
        r.headers_mut().insert("etag", v);
    }
    if created {
        if let Some(Ok(v)) = s.resource["meta"]["location"]
            .as_str()
            .map(HeaderValue::from_str)
        {
            r.headers_mut().insert("location", v);
        }
    }
    r
}

/// Authorises a SCIM request: the tenant's own SCIM token on its own path.
async fn authorize(s: &AppState, headers: &HeaderMap, raw: &str) -> Result<TenantId, ScimError> {
    let tenant = TenantId::parse(raw).map_err(|_| err(404, "no such tenant"))?;
    let unauthorized = || err(401, "a valid SCIM bearer token is required");
    let token = bearer(headers).ok_or_else(unauthorized)?;
    let claimed = tokens::claimed_scim_tenant(token).ok_or_else(unauthorized)?;
    let hash = tokens::hash(token);
    let verified = match s.scim_tokens.fresh(&hash).await {
        Some(t) => t,
        None => {
            let exists = s
                .known
                .contains(&s.registry, &claimed)
                .await
                .map_err(|_| ScimError(ProviderError::unavailable()))?;
            if !exists {
                return Err(unauthorized());
            }
            let valid = s
                .store
                .scim_token_matches(&claimed, hash)
                .await
                .map_err(|_| ScimError(ProviderError::unavailable()))?;
            if !valid {
                return Err(unauthorized());
            }
            let status = s
                .registry
                .status(&claimed)
                .await
                .map_err(|_| ScimError(ProviderError::unavailable()))?;
            if status.as_deref() == Some("suspended") {
                return Err(err(403, "this tenant is suspended"));
            }
            s.scim_tokens.remember(hash, claimed.clone()).await;
            claimed
        }
    };
    if verified != tenant {
        let event = SecurityEvent {
            kind: "cross_tenant_access",
            detail: json!({"source": "scim", "pathTenant": tenant.as_str()}),
        };
        s.store.record_security_event(&verified, &event).await;
        return Err(err(404, "no such tenant"));
    }
    Ok(tenant)
}

/// `<scheme>://<host>/scim/v2/<tenant>` as the client addressed the service (for
/// `meta.location`); a Host header with anything but host characters is not echoed.
fn base_url(s: &AppState, headers: &HeaderMap, tenant: &TenantId) -> String {
    let host = headers
        .get("host")
        .and_then(|h| h.to_str().ok())
        .filter(|h| {
            !h.is_empty()
                && h.len() <= 255
                && h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
        })
        .map_or_else(|| s.config.http.listen.to_string(), str::to_owned);
    let scheme = match headers
        .get("x-forwarded-proto")
        .and_then(|h| h.to_str().ok())
    {
        Some("https") => "https",
        _ => "http",
    };
    format!("{scheme}://{host}/scim/v2/{tenant}")
}

fn provider(s: &AppState) -> ScimProvider {
    ScimProvider::new(
        s.store.clone(),
        s.cache.clone(),
        s.config.pipeline.scim_delete,
        s.scim_writers.clone(),
    )
}

/// The list parameters of a GET (names in any case, as SCIM clients vary).
fn list_query(params: &HashMap<String, String>) -> Result<ListQuery, ScimError> {
    let get = |name: &str| {
        params
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    };
    let int = |name: &str| -> Result<Option<i64>, ScimError> {
        get(name)
            .map(|v| {
                v.trim().parse::<i64>().map_err(|_| {
                    ScimError(ProviderError::invalid_value(format!(
                        "{name} must be an integer"
                    )))
                })
            })
            .transpose()
    };
    if get("sortBy").is_some() {
        // Advertised as unsupported (ServiceProviderConfig.sort); ignored, as RFC 7644
        // §3.4.2.3 allows, rather than refused.
    }
    Ok(ListQuery {
        filter: get("filter"),
        start_index: int("startIndex")?,
        count: int("count")?,
        attributes: get("attributes"),
        excluded_attributes: get("excludedAttributes"),
    })
}

/// A `.search` body (RFC 7644 §3.4.3).
fn search_query(body: &Bytes) -> Result<ListQuery, ScimError> {
    let v = parse_body(body)?;
    let schemas_ok = v["schemas"]
        .as_array()
        .is_some_and(|s| s.iter().any(|x| x == SEARCH_REQUEST_SCHEMA));
    if !schemas_ok {
        return Err(ScimError(ProviderError::invalid_syntax(format!(
            "schemas must name {SEARCH_REQUEST_SCHEMA}"
        ))));
    }
    let text = |k: &str| -> Result<Option<String>, ScimError> {
        match &v[k] {
            Value::Null => Ok(None),
            Value::String(s) => Ok(Some(s.clone())),
            Value::Array(items) => Ok(Some(
                items
                    .iter()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join(","),
            )),
            _ => Err(ScimError(ProviderError::invalid_value(format!(
                "{k} must be a string"
            )))),
        }
    };
    let int = |k: &str| -> Result<Option<i64>, ScimError> {
        match &v[k] {
            Value::Null => Ok(None),
            Value::Number(n) => n.as_i64().map(Some).ok_or_else(|| {
                ScimError(ProviderError::invalid_value(format!(
                    "{k} must be an integer"
                )))
            }),
            _ => Err(ScimError(ProviderError::invalid_value(format!(
                "{k} must be an integer"
            )))),
        }
    };
    Ok(ListQuery {
        filter: text("filter")?,
        start_index: int("startIndex")?,
        count: int("count")?,
        attributes: text("attributes")?,
        excluded_attributes: text("excludedAttributes")?,
    })
}

fn parse_body(body: &Bytes) -> Result<Value, ScimError> {
    serde_json::from_slice(body).map_err(|e| {
        ScimError(ProviderError::invalid_syntax(format!(
            "the body is not JSON: {}",
            e.to_string().chars().take(120).collect::<String>()
        )))
    })
}

fn if_match(headers: &HeaderMap) -> Option<&str> {
    headers.get("if-match").and_then(|h| h.to_str().ok())
}

/// 304 when `If-None-Match` names the served version.
fn read_answer(headers: &HeaderMap, s: Served) -> Response {
    let unchanged = headers
        .get("if-none-match")
        .and_then(|h| h.to_str().ok())
        .is_some_and(|h| if_match_admits(h, s.version));
    if unchanged {
        let mut r = StatusCode::NOT_MODIFIED.into_response();
        if let Ok(v) = HeaderValue::from_str(&crate::scim::etag(s.version)) {
            r.headers_mut().insert("etag", v);
        }
        return r;
    }
    served(StatusCode::OK, &s, false)
}

#[derive(Clone, Copy)]
enum Kind {
    Users,
    Groups,
    /// The root `.search`: Users, then Groups.
    All,
}

async fn read_one(
    s: AppState,
    headers: HeaderMap,
    (raw, id): (String, String),
    params: HashMap<String, String>,
    kind: Kind,
) -> Result<Response, ScimError> {
    let tenant = authorize(&s, &headers, &raw).await?;
    let base = base_url(&s, &headers, &tenant);
    let scope = Scope {
        tenant: &tenant,
        base_url: &base,
    };
    let q = list_query(&params)?;
    let p = provider(&s);
    let found = match kind {
        Kind::Users | Kind::All => p.get_user(&scope, &id, &q).await?,
        Kind::Groups => p.get_group(&scope, &id, &q).await?,
    };
    Ok(read_answer(&headers, found))
}

async fn read_list(
    s: AppState,
    headers: HeaderMap,
    raw: String,
    q: ListQuery,
    kind: Kind,
) -> Result<Response, ScimError> {
    let tenant = authorize(&s, &headers, &raw).await?;
    let base = base_url(&s, &headers, &tenant);
    let scope = Scope {
        tenant: &tenant,
        base_url: &base,
    };
    let p = provider(&s);
    let list = match kind {
        Kind::Users => p.list_users(&scope, &q).await?,
        Kind::Groups => p.list_groups(&scope, &q).await?,
        Kind::All => p.search_all(&scope, &q).await?,
    };
    Ok(scim_json(StatusCode::OK, &list))
}

async fn write(
    s: AppState,
    headers: HeaderMap,
    raw: String,
    id: Option<String>,
    change: Change,
    kind: Kind,
) -> Result<Response, ScimError> {
    let tenant = authorize(&s, &headers, &raw).await?;
    let base = base_url(&s, &headers, &tenant);
    let scope = Scope {
        tenant: &tenant,
        base_url: &base,
    };
    let p = provider(&s);
    let creating = matches!(change, Change::Create(_));
    let deleting = matches!(change, Change::Delete);
    let id = id.as_deref();
    let out = match kind {
        Kind::Users | Kind::All => p.write_user(&scope, id, change, if_match(&headers)).await?,
        Kind::Groups => {
            p.write_group(&scope, id, change, if_match(&headers))
                .await?
        }
    };
    Ok(match out {
        _ if deleting => StatusCode::NO_CONTENT.into_response(),
        Some(r) if creating => served(StatusCode::CREATED, &r, true),
        Some(r) => served(StatusCode::OK, &r, false),
        None => StatusCode::NO_CONTENT.into_response(),
    })
}

type Q = Query<HashMap<String, String>>;

async fn list_users(
    State(s): State<AppState>,
    h: HeaderMap,
    Path(t): Path<String>,
    Query(p): Q,
) -> Result<Response, ScimError> {
    let q = list_query(&p)?;
    read_list(s, h, t, q, Kind::Users).await
}
async fn list_groups(
    State(s): State<AppState>,
    h: HeaderMap,
    Path(t): Path<String>,
    Query(p): Q,
) -> Result<Response, ScimError> {
    let q = list_query(&p)?;
    read_list(s, h, t, q, Kind::Groups).await
}
async fn search_users(
    State(s): State<AppState>,
    h: HeaderMap,
    Path(t): Path<String>,
    body: Bytes,
) -> Result<Response, ScimError> {
    let q = search_query(&body)?;
    read_list(s, h, t, q, Kind::Users).await
}
async fn search_all(
    State(s): State<AppState>,
    h: HeaderMap,
    Path(t): Path<String>,
    body: Bytes,
) -> Result<Response, ScimError> {
    let q = search_query(&body)?;
    read_list(s, h, t, q, Kind::All).await
}
async fn search_groups(
    State(s): State<AppState>,
    h: HeaderMap,
    Path(t): Path<String>,
    body: Bytes,
) -> Result<Response, ScimError> {
    let q = search_query(&body)?;
    read_list(s, h, t, q, Kind::Groups).await
}
async fn get_user(
    State(s): State<AppState>,
    h: HeaderMap,
    Path(p): Path<(String, String)>,
    Query(q): Q,
) -> Result<Response, ScimError> {
    read_one(s, h, p, q, Kind::Users).await
}
async fn get_group(
    State(s): State<AppState>,
    h: HeaderMap,
    Path(p): Path<(String, String)>,
    Query(q): Q,
) -> Result<Response, ScimError> {
    read_one(s, h, p, q, Kind::Groups).await
}
async fn create_user(
    State(s): State<AppState>,
    h: HeaderMap,
    Path(t): Path<String>,
    body: Bytes,
) -> Result<Response, ScimError> {
    let v = parse_body(&body)?;
    write(s, h, t, None, Change::Create(v), Kind::Users).await
}
async fn create_group(
    State(s): State<AppState>,
    h: HeaderMap,
    Path(t): Path<String>,
    body: Bytes,
) -> Result<Response, ScimError> {
    let v = parse_body(&body)?;
    write(s, h, t, None, Change::Create(v), Kind::Groups).await
}
async fn replace_user(
    State(s): State<AppState>,
    h: HeaderMap,
    Path((t, id)): Path<(String, String)>,
    body: Bytes,
) -> Result<Response, ScimError> {
    let v = parse_body(&body)?;
    write(s, h, t, Some(id), Change::Replace(v), Kind::Users).await
}
async fn replace_group(
    State(s): State<AppState>,
    h: HeaderMap,
    Path((t, id)): Path<(String, String)>,
    body: Bytes,
) -> Result<Response, ScimError> {
    let v = parse_body(&body)?;
    write(s, h, t, Some(id), Change::Replace(v), Kind::Groups).await
}
async fn patch_user(
    State(s): State<AppState>,
    h: HeaderMap,
    Path((t, id)): Path<(String, String)>,
    body: Bytes,
) -> Result<Response, ScimError> {
    let v = parse_body(&body)?;
    write(s, h, t, Some(id), Change::Patch(v), Kind::Users).await
}
async fn patch_group(
    State(s): State<AppState>,
    h: HeaderMap,
    Path((t, id)): Path<(String, String)>,
    body: Bytes,
) -> Result<Response, ScimError> {
    let v = parse_body(&body)?;
    write(s, h, t, Some(id), Change::Patch(v), Kind::Groups).await
}
async fn delete_user(
    State(s): State<AppState>,
    h: HeaderMap,
    Path((t, id)): Path<(String, String)>,
) -> Result<Response, ScimError> {
    write(s, h, t, Some(id), Change::Delete, Kind::Users).await
}
async fn delete_group(
    State(s): State<AppState>,
    h: HeaderMap,
    Path((t, id)): Path<(String, String)>,
) -> Result<Response, ScimError> {
    write(s, h, t, Some(id), Change::Delete, Kind::Groups).await
}

async fn discovery_doc(
    s: AppState,
    headers: HeaderMap,
    raw: String,
    doc: impl FnOnce(&str) -> Option<Value>,
) -> Result<Response, ScimError> {
    let tenant = authorize(&s, &headers, &raw).await?;
    let base = base_url(&s, &headers, &tenant);
    doc(&base)
        .map(|v| scim_json(StatusCode::OK, &v))
        .ok_or_else(|| err(404, "no such resource type or schema"))
}

async fn service_provider_config(
    State(s): State<AppState>,
    h: HeaderMap,
    Path(t): Path<String>,
) -> Result<Response, ScimError> {
    discovery_doc(s, h, t, |b| Some(discovery::service_provider_config(b))).await
}
async fn resource_types(
    State(s): State<AppState>,
    h: HeaderMap,
    Path(t): Path<String>,
) -> Result<Response, ScimError> {
    discovery_doc(s, h, t, |b| Some(discovery::resource_types(b))).await
}
async fn resource_type(
    State(s): State<AppState>,
    h: HeaderMap,
    Path((t, id)): Path<(String, String)>,
) -> Result<Response, ScimError> {
    discovery_doc(s, h, t, |b| discovery::resource_type_by_id(b, &id)).await
}
async fn schemas(
    State(s): State<AppState>,
    h: HeaderMap,
    Path(t): Path<String>,
) -> Result<Response, ScimError> {
    discovery_doc(s, h, t, |b| Some(discovery::schemas(b))).await
}
async fn schema(
    State(s): State<AppState>,
    h: HeaderMap,
    Path((t, id)): Path<(String, String)>,
) -> Result<Response, ScimError> {
    discovery_doc(s, h, t, |b| discovery::schema_by_id(b, &id)).await
}

/// Holds the verified-token cache for the state (constructed once in the wiring).
pub fn token_cache() -> Arc<ScimTokens> {
    Arc::new(ScimTokens::default())
}
