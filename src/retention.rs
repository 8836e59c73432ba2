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
use crate::config::{Keep, RetentionSettings};
use crate::db::{Registry, TenantScopedStore};
use crate::tenant_tx;

/// What each kind of row is: its table, the column identifying a row within the tenant,
/// its age column, what else must hold before it may go, and how long it is kept.
struct Purge {
    table: &'static str,
    key: &'static str,
    age: &'static str,
    also: &'static str,
    keep: fn(&Keep) -> Duration,
}

const PURGES: [Purge; 5] = [
    Purge {
        table: "outbox",
        key: "id",
        age: "created_at",
        // Only rows the relay has published.
        also: "and seq <= coalesce((select relayed_seq from outbox_relay where tenant_id = $1), 0)",
        keep: |k| k.outbox_relayed,
    },
    Purge {
        table: "upstream_jobs",
        key: "id",
        age: "done_at",
        also: "and status <> 'pending'",
        keep: |k| k.finished_jobs,
    },
    Purge {
        table: "security_events",
        key: "id",
        age: "occurred_at",
        also: "",
        keep: |k| k.security_events,
    },
    Purge {
        table: "processed_events",
        key: "event_id",
        age: "processed_at",
        also: "",
        keep: |k| k.idempotency,
    },
    Purge {
        table: "dead_letters",
        key: "source_offset",
        age: "created_at",
        also: "",
        keep: |k| k.dead_letters,
    },
];

impl Purge {
    /// Deletes at most `$3` of tenant `$1`'s rows older than `$2` seconds.
    fn sql(&self) -> String {
        let Purge {
            table,
            key,
            age,
            also,
            ..
        } = self;
        format!(
            "delete from {table} where tenant_id = $1 and {key} in (
                 select {key} from {table}
                  where tenant_id = $1 and {age} < now() - make_interval(secs => $2) {also}
                  limit $3)"
        )
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
    for purge in &PURGES {
        let (table, sql) = (purge.table, purge.sql());
        let age = (purge.keep)(&settings.keep).as_secs_f64();
        let mut deleted = 0u64;
        loop {
            let (limit, sql) = (settings.batch_rows, sql.clone());
            let n = tenant_tx!(store, tenant, |tx, t| {
                tx.execute(sql.as_str(), &[&t, &age, &limit]).await
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
