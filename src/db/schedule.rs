//! Marks a tenant's readiness inputs as changed, inside the transaction of the change, so a
//! committed change is never without its re-aggregation and a rolled-back one never causes
//! one. The aggregator runs the tenant once the debounce passed (see
//! [`crate::config::AggregatorSettings`]); every mark bumps `generation`, so a run clears the mark
//! only when no change arrived while it ran.

use tokio_postgres::types::Type;
use tokio_postgres::Transaction;

use crate::actors::metric_names as m;
use crate::actors::readiness::ReadinessMark;

/// Marks the tenant's inputs changed (debounced re-aggregation).
pub async fn mark_changed(
    tx: &Transaction<'_>,
    tenant: &str,
    mark: ReadinessMark,
) -> Result<(), tokio_postgres::Error> {
    let reason = mark.as_str();
    super::statements::query_typed(
        tx,
        "insert into readiness_schedule (tenant_id, pending_since, changed_at, generation, reason)
         values ($1, now(), now(), 1, $2)
         on conflict (tenant_id) do update set
             pending_since = coalesce(readiness_schedule.pending_since, now()),
             changed_at = now(),
             generation = readiness_schedule.generation + 1,
             reason = excluded.reason",
        &[(&tenant, Type::TEXT), (&reason, Type::TEXT)],
    )
    .await?;
    metrics::counter!(m::READINESS_REAGGREGATIONS_SCHEDULED_TOTAL, "reason" => reason).increment(1);
    Ok(())
}

/// After a sync job settled: if the last report was provisional and the tenant has no sync
/// queued any more, schedule the re-aggregation that can make it final.
pub async fn mark_if_sync_settled(
    tx: &Transaction<'_>,
    tenant: &str,
) -> Result<(), tokio_postgres::Error> {
    let n = tx
        .execute(
            "update readiness_schedule set
                 pending_since = coalesce(pending_since, now()), changed_at = now(),
                 generation = generation + 1, reason = $2, await_drain = false
              where tenant_id = $1 and await_drain
                and not exists (select 1 from upstream_jobs j
                                 where j.tenant_id = $1 and j.status = 'pending'
                                   and j.kind = 'sync_progress')",
            &[&tenant, &ReadinessMark::SyncSettled.as_str()],
        )
        .await?;
    if n > 0 {
        metrics::counter!(m::READINESS_REAGGREGATIONS_SCHEDULED_TOTAL, "reason" => ReadinessMark::SyncSettled.as_str())
            .increment(1);
    }
    Ok(())
}
