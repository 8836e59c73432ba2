//! `/healthz` (the process answers), `/readyz` (what this instance's role uses answers,
//! checked in parallel with a deadline each; tenants and the consumer group reported in the
//! body) and `/metrics` (Prometheus text).
//!
//! Tenant ids and error texts are operational detail: the detailed `/readyz` body and
//! `/metrics` are served on the internal listener, or with the operator token. Without it,
//! `/readyz` answers its status code and `{"ready": ..}` only (enough for a load balancer),
//! and `/metrics` answers 401.

use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use super::auth::may_see_operations;
use super::error::ApiError;
use super::AppState;
use crate::actors::metric_names::{INSTANCE_READY, OWNED_TENANT_GAUGES};
use crate::actors::{ActorStatus, TenantId};
use crate::config::Role;

#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses((status = 200, description = "The process answers", body = super::openapi::Health), super::openapi::EdgeErrors))]
pub(super) async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// Time allowed to each readiness check; they run in parallel, so `/readyz` answers within
/// about this long whatever is down.
pub(super) const READY_CHECK_TIMEOUT: Duration = Duration::from_millis(800);

pub(super) async fn check<F, E>(f: F) -> Value
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
#[utoipa::path(get, path = "/readyz", tag = "operations", security((), ("operator_token" = [])),
    responses((status = 200, description = "Ready", body = super::openapi::Readiness),
              (status = 503, description = "Not ready", body = super::openapi::Readiness),
              super::openapi::EdgeErrors))]
pub(super) async fn readyz(State(s): State<AppState>, headers: HeaderMap) -> Response {
    let (ready, body) = evaluate(&s).await;
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    if !may_see_operations(&s, &headers) {
        return (status, Json(json!({"ready": ready}))).into_response();
    }
    (status, Json(body)).into_response()
}

/// Whether the instance is ready, and the detailed body of `/readyz`.
async fn evaluate(s: &AppState) -> (bool, Value) {
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
                // A passivated tenant is served: its actor starts on its next record,
                // job or request.
                let passivated = tenants
                    .iter()
                    .filter(|t| t.status == ActorStatus::Passivated)
                    .count();
                let not_running: Vec<_> = tenants
                    .iter()
                    .filter(|t| !matches!(t.status, ActorStatus::Running | ActorStatus::Passivated))
                    .collect();
                let restarted: Vec<_> = tenants.iter().filter(|t| t.restarts > 0).collect();
                json!({
                    "running": tenants.len() - not_running.len() - passivated,
                    "passivated": passivated,
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
    (ready, body)
}

#[utoipa::path(get, path = "/metrics", tag = "operations", security(("operator_token" = [])),
    responses((status = 200, description = "Prometheus text format", content_type = "text/plain", body = String),
              (status = 401, description = "The operator token is required (or the internal listener)", body = super::openapi::ErrorBody),
              super::openapi::EdgeErrors))]
pub(super) async fn metrics_text(State(s): State<AppState>, headers: HeaderMap) -> Response {
    if !may_see_operations(&s, &headers) {
        return ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "metrics need the operator token, or the internal listener (http.internal_listen)",
        )
        .into_response();
    }
    match &s.metrics {
        Some(h) => {
            // Readiness as of this scrape: an alert on it needs no other probe.
            let (ready, _) = evaluate(&s).await;
            metrics::gauge!(INSTANCE_READY).set(if ready { 1.0 } else { 0.0 });
            let mut text = h.render();
            if let Some(group) = &s.group {
                text = without_moved_tenants(&text, |t| {
                    TenantId::parse(t).is_ok_and(|t| group.owns(&t))
                });
            }
            ([("content-type", "text/plain; version=0.0.4")], text).into_response()
        }
        None => {
            ApiError::new(StatusCode::NOT_FOUND, "not_found", "metrics disabled").into_response()
        }
    }
}

/// The Prometheus text without the series of [`OWNED_TENANT_GAUGES`] whose tenant this
/// instance does not own (its partition moved to another instance): a gauge's last value
/// stays in the recorder, but only its owner reports it, so a sum over instances counts
/// every tenant once.
fn without_moved_tenants(text: &str, owned: impl Fn(&str) -> bool) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        let moved = OWNED_TENANT_GAUGES.iter().any(|name| {
            line.strip_prefix(name)
                .and_then(|rest| rest.strip_prefix('{'))
                .and_then(|labels| labels.split("tenant=\"").nth(1))
                .and_then(|v| v.split('"').next())
                .is_some_and(|tenant| !owned(tenant))
        });
        if !moved {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::without_moved_tenants;

    #[test]
    fn series_of_tenants_owned_elsewhere_are_left_out() {
        let text = "# TYPE enablement_tenant_lag_messages gauge\n\
            enablement_tenant_lag_messages{tenant=\"acme\"} 3\n\
            enablement_tenant_lag_messages{tenant=\"globex\"} 5\n\
            enablement_upstream_queue_depth{tenant=\"globex\",priority=\"interactive\"} 1\n\
            enablement_scim_events_total{tenant=\"globex\",outcome=\"applied\"} 9\n";
        let out = without_moved_tenants(text, |t| t == "acme");
        assert!(out.contains("{tenant=\"acme\"} 3"), "{out}");
        assert!(!out.contains("lag_messages{tenant=\"globex\""), "{out}");
        assert!(!out.contains("queue_depth{tenant=\"globex\""), "{out}");
        // Counters stay: they are this instance's own history.
        assert!(out.contains("scim_events_total{tenant=\"globex\""), "{out}");
        assert!(out.starts_with("# TYPE"), "{out}");
    }
}
