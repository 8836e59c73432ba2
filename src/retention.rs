//! Retention: a background pass that deletes, per tenant and in small batches, the rows
//! that have outlived their use: relayed outbox rows, finished upstream jobs, old security
//! events, old idempotency records and old dead-letter records.
//!
//! Every delete runs in the tenant's scoped transaction (row-level security confines it to
//! that tenant) and removes at most `batch_rows` rows, so no pass holds long locks or
//! bloats one transaction. Expired idempotency records are safe to drop: a replayed event
//! is still a no-op because the user row keeps the `occurredAt` of the last applied event
//! and an event not newer than it is stale (see `scim::plan_batch`).

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::actors::metric_names as m;
use crate::actors::ports::StoreError;
use crate::actors::TenantId;
use crate::db::{Registry, TenantScopedStore};

/// How long each kind of row is kept.
#[derive(Debug, Clone)]
pub struct Keep {
    pub outbox_relayed: Duration,
    pub finished_jobs: Duration,
    pub security_events: Duration,
    pub idempotency: Duration,
    pub dead_letters: Duration,
}

#[derive(Debug, Clone)]
pub struct RetentionSettings {
    /// Between passes; zero disables retention.
    pub interval: Duration,
    pub batch_rows: i64,
    pub keep: Keep,
}

/// One delete per kind of row: `$1` tenant, `$2` the age in seconds, `$3` the batch size.
/// Each statement deletes at most `$3` of the tenant's rows older than `$2`.
const DELETES: [(&str, &str); 5] = [
    (
        "outbox",
        "delete from outbox where tenant_id = $1 and id in (
             select id from outbox
              where tenant_id = $1 and created_at < now() - make_interval(secs => $2)
                and seq <= coalesce((select relayed_seq from outbox_relay where tenant_id = $1), 0)
              limit $3)",
    ),
    (
        "upstream_jobs",
        "delete from upstream_jobs where tenant_id = $1 and id in (
             select id from upstream_jobs
              where tenant_id = $1 and status <> 'pending'
                and done_at < now() - make_interval(secs => $2)
              limit $3)",
    ),
    (
        "security_events",
        "delete from security_events where tenant_id = $1 and id in (
             select id from security_events
              where tenant_id = $1 and occurred_at < now() - make_interval(secs => $2)
              limit $3)",
    ),
    (
        "processed_events",
        "delete from processed_events where tenant_id = $1 and event_id in (
             select event_id from processed_events
              where tenant_id = $1 and processed_at < now() - make_interval(secs => $2)
              limit $3)",
    ),
    (
        "dead_letters",
        "delete from dead_letters where tenant_id = $1 and source_offset in (
             select source_offset from dead_letters
              where tenant_id = $1 and created_at < now() - make_interval(secs => $2)
              limit $3)",
    ),
];

fn keep_of(keep: &Keep, table: &str) -> Duration {
    match table {
        "outbox" => keep.outbox_relayed,
        "upstream_jobs" => keep.finished_jobs,
        "security_events" => keep.security_events,
        "processed_events" => keep.idempotency,
        _ => keep.dead_letters,
    }
}

/// Runs one pass over one tenant: each kind of row in batches until a batch comes back
/// short. Returns the rows deleted per table.
pub async fn purge_tenant(
    store: &TenantScopedStore,
    tenant: &TenantId,
    settings: &RetentionSettings,
) -> Result<Vec<(&'static str, u64)>, StoreError> {
    let mut out = Vec::new();
    for (table, sql) in DELETES {
        let age = keep_of(&settings.keep, table).as_secs_f64();
        let mut deleted = 0u64;
        loop {
            let (t, limit) = (tenant.as_str().to_owned(), settings.batch_rows);
            let n = store
                .scoped(tenant, move |tx| {
                    Box::pin(async move { tx.execute(sql, &[&t, &age, &limit]).await })
                })
                .await?;
            deleted += n;
            if n < settings.batch_rows as u64 {
                break;
            }
        }
        if deleted > 0 {
            metrics::counter!(m::RETENTION_DELETED_TOTAL, "table" => table).increment(deleted);
        }
        out.push((table, deleted));
    }
    Ok(out)
}

/// Runs passes over every registered tenant until `shutdown` is cancelled.
pub async fn run(
    store: TenantScopedStore,
    registry: Registry,
    settings: RetentionSettings,
    shutdown: CancellationToken,
) {
    if settings.interval.is_zero() {
        return;
    }
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(settings.interval) => {}
        }
        let tenants = match registry.list().await {
            Ok(list) => list,
            Err(e) => {
                tracing::warn!(error = %e, "retention: reading the registry failed");
                continue;
            }
        };
        for record in tenants {
            if shutdown.is_cancelled() {
                return;
            }
            if let Err(e) = purge_tenant(&store, &record.tenant_id, &settings).await {
                tracing::warn!(tenant = %record.tenant_id, error = %e, "retention pass failed");
            }
        }
    }
}
