//! Operations SQL: the owners table (`enablement status`), per-tenant operational figures
//! (`tenant_ops_stats`, migration 0014) and dead letters marked redriven. Nothing here
//! returns a tenant's rows: ids, states, counts, ages and timestamps only.

use std::collections::BTreeMap;

use time::OffsetDateTime;

use super::{redact, PgPool, TenantScopedStore};
use crate::actors::jobs::JobPriority;
use crate::actors::ports::StoreError;
use crate::actors::TenantId;

#[derive(Debug, thiserror::Error)]
#[error("database error: {0}")]
pub struct OpsError(String);

/// The error with its cause (a PostgreSQL error's text is in its source), redacted.
fn db(e: impl std::error::Error) -> OpsError {
    match e.source() {
        Some(cause) => OpsError(redact(format!("{e}: {cause}"))),
        None => OpsError(redact(e)),
    }
}

/// One tenant as its owning instance last reported it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct OwnerReport {
    pub tenant: TenantId,
    pub actor_state: String,
    pub restarts: u64,
    pub lag_messages: Option<i64>,
}

/// A row of `tenant_owners`, with how long ago it was reported.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct OwnerRow {
    pub instance: String,
    #[serde(flatten)]
    pub report: OwnerReport,
    pub reported_secs_ago: f64,
}

/// Per-tenant figures from `tenant_ops_stats`.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct TenantFigures {
    pub unrelayed_rows: i64,
    pub oldest_unrelayed_secs: f64,
    /// Pending upstream jobs and the age of the oldest, by priority name.
    pub pending_jobs: BTreeMap<&'static str, i64>,
    pub oldest_pending_secs: BTreeMap<&'static str, f64>,
    /// Only with history: events committed and records dead-lettered in the last hour.
    pub events_last_hour: Option<i64>,
    pub dead_letters_last_hour: Option<i64>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub last_report_at: Option<OffsetDateTime>,
    pub last_report_provisional: Option<bool>,
}

/// Replaces what this instance reported: `owned` upserted (taking over rows of tenants
/// that moved here), its rows of tenants it no longer owns deleted. A row whose report did
/// not change is rewritten only once it is older than `refresh_after`: thousands of idle
/// tenants cost no write per report.
pub async fn report_owners(
    pool: &PgPool,
    instance: &str,
    owned: &[OwnerReport],
    refresh_after: std::time::Duration,
) -> Result<(), OpsError> {
    let mut conn = pool.get().await.map_err(db)?;
    let tx = conn.transaction().await.map_err(db)?;
    let ids: Vec<&str> = owned.iter().map(|o| o.tenant.as_str()).collect();
    let states: Vec<&str> = owned.iter().map(|o| o.actor_state.as_str()).collect();
    let restarts: Vec<i64> = owned.iter().map(|o| o.restarts as i64).collect();
    let lags: Vec<Option<i64>> = owned.iter().map(|o| o.lag_messages).collect();
    tx.execute(
        "insert into tenant_owners (tenant_id, instance_id, actor_state, restarts, lag_messages, reported_at)
         select t, $1, s, r, l, now()
           from unnest($2::text[], $3::text[], $4::bigint[], $5::bigint[]) as u(t, s, r, l)
           where exists (select 1 from tenants where tenant_id = u.t)
         on conflict (tenant_id) do update
            set instance_id = excluded.instance_id, actor_state = excluded.actor_state,
                restarts = excluded.restarts, lag_messages = excluded.lag_messages,
                reported_at = excluded.reported_at
          where (tenant_owners.instance_id, tenant_owners.actor_state, tenant_owners.restarts,
                 tenant_owners.lag_messages)
                is distinct from (excluded.instance_id, excluded.actor_state, excluded.restarts,
                                  excluded.lag_messages)
             or tenant_owners.reported_at < now() - make_interval(secs => $6)",
        &[&instance, &ids, &states, &restarts, &lags, &refresh_after.as_secs_f64()],
    )
    .await
    .map_err(db)?;
    tx.execute(
        "delete from tenant_owners where instance_id = $1 and not (tenant_id = any($2))",
        &[&instance, &ids],
    )
    .await
    .map_err(db)?;
    tx.commit().await.map_err(db)
}

/// Forgets everything this instance reported (on shutdown: its tenants move).
pub async fn forget_owner(pool: &PgPool, instance: &str) -> Result<(), OpsError> {
    let conn = pool.get().await.map_err(db)?;
    conn.execute(
        "delete from tenant_owners where instance_id = $1",
        &[&instance],
    )
    .await
    .map(|_| ())
    .map_err(db)
}

/// Every reported owner row.
pub async fn owners(pool: &PgPool) -> Result<Vec<OwnerRow>, OpsError> {
    let conn = pool.get().await.map_err(db)?;
    let rows = conn
        .query(
            "select tenant_id, instance_id, actor_state, restarts, lag_messages,
                    extract(epoch from now() - reported_at)::float8
               from tenant_owners",
            &[],
        )
        .await
        .map_err(db)?;
    Ok(rows
        .iter()
        .filter_map(|r| {
            let tenant = TenantId::parse(r.get::<_, &str>(0)).ok()?;
            Some(OwnerRow {
                instance: r.get(1),
                report: OwnerReport {
                    tenant,
                    actor_state: r.get(2),
                    restarts: r.get::<_, i64>(3).max(0) as u64,
                    lag_messages: r.get(4),
                },
                reported_secs_ago: r.get(5),
            })
        })
        .collect())
}

/// Operational figures of `tenants`, in chunks of 500 (one round trip each).
pub async fn tenant_figures(
    pool: &PgPool,
    tenants: &[TenantId],
    history: bool,
) -> Result<BTreeMap<TenantId, TenantFigures>, OpsError> {
    let mut out = BTreeMap::new();
    let conn = pool.get().await.map_err(db)?;
    for chunk in tenants.chunks(500) {
        let ids: Vec<&str> = chunk.iter().map(TenantId::as_str).collect();
        let rows = conn
            .query(
                "select tenant_id, unrelayed_rows, oldest_unrelayed_s::float8, pending_jobs,
                        oldest_pending_s, events_last_hour, dead_letters_last_hour,
                        last_report_at, last_report_provisional
                   from tenant_ops_stats($1, $2)",
                &[&ids, &history],
            )
            .await
            .map_err(db)?;
        for r in rows {
            let Ok(tenant) = TenantId::parse(r.get::<_, &str>(0)) else {
                continue;
            };
            let by_priority = |v: serde_json::Value| -> Vec<(&'static str, f64)> {
                v.as_object()
                    .map(|o| {
                        o.iter()
                            .filter_map(|(k, v)| {
                                let p = JobPriority::from_i16(k.parse().ok()?)?;
                                Some((p.as_str(), v.as_f64()?))
                            })
                            .collect()
                    })
                    .unwrap_or_default()
            };
            out.insert(
                tenant,
                TenantFigures {
                    unrelayed_rows: r.get(1),
                    oldest_unrelayed_secs: r.get(2),
                    pending_jobs: by_priority(r.get(3))
                        .into_iter()
                        .map(|(p, n)| (p, n as i64))
                        .collect(),
                    oldest_pending_secs: by_priority(r.get(4)).into_iter().collect(),
                    events_last_hour: r.get(5),
                    dead_letters_last_hour: r.get(6),
                    last_report_at: r.get(7),
                    last_report_provisional: r.get(8),
                },
            );
        }
    }
    Ok(out)
}

/// A dead letter as the database knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetterState {
    pub reason: String,
    pub redriven: bool,
}

/// The tenant's dead letters at these source offsets (absent: never dead-lettered here,
/// or removed by retention).
pub async fn dead_letter_states(
    store: &TenantScopedStore,
    tenant: &TenantId,
    offsets: Vec<i64>,
) -> Result<BTreeMap<i64, DeadLetterState>, StoreError> {
    crate::tenant_tx!(store, tenant, |tx, t| {
        let rows = tx
            .query(
                "select source_offset, reason, redriven_at is not null from dead_letters
                  where tenant_id = $1 and source_offset = any($2)",
                &[&t, &offsets],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| {
                (
                    r.get::<_, i64>(0),
                    DeadLetterState {
                        reason: r.get(1),
                        redriven: r.get(2),
                    },
                )
            })
            .collect())
    })
    .await
}

/// Marks these dead letters redriven; returns how many were not marked before.
pub async fn mark_redriven(
    store: &TenantScopedStore,
    tenant: &TenantId,
    offsets: Vec<i64>,
) -> Result<u64, StoreError> {
    crate::tenant_tx!(store, tenant, |tx, t| {
        tx.execute(
            "update dead_letters set redriven_at = now()
              where tenant_id = $1 and source_offset = any($2) and redriven_at is null",
            &[&t, &offsets],
        )
        .await
    })
    .await
}
