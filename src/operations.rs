//! What an operator sees and steers beyond the HTTP API: the owners report and the
//! per-tenant gauges behind `enablement status` and the alert rules, the status table
//! itself, and the redrive of dead letters.
//!
//! - [`run_reporter`] (consumer roles): every few seconds, the tenants this instance owns
//!   with their actor state and broker lag go to `tenant_owners`; their outbox, job queue
//!   and readiness report figures become gauges (`enablement_outbox_unrelayed_rows`, ages).
//! - [`status`]: one row per registered tenant, joined from the registry, the owners'
//!   reports and `tenant_ops_stats` (counts and ages; no tenant rows are read).
//! - [`redrive`]: republishes a tenant's dead letters to its inbound topic and marks them,
//!   so redriving again republishes nothing.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::actors::metric_names as m;
use crate::actors::ports::{EventPublisher, OutboundRecord};
use crate::actors::{ActorStatus, TenantId, Tenants, TopicKind};
use crate::config::KafkaConfig;
use crate::db::ops::{self, OwnerReport, TenantFigures};
use crate::db::{PgPool, Registry, TenantScopedStore};
use crate::kafka::{each_record, GroupHealth, KafkaPublisher, Offset, ReadOptions};

/// How often an instance reports its tenants (a changed state or lag is written at once).
pub const REPORT_INTERVAL: Duration = Duration::from_secs(5);
/// An unchanged row is rewritten this often, so a row older than [`STALE_AFTER`] means its
/// instance stopped reporting (killed without the goodbye of a clean shutdown).
pub const REFRESH_AFTER: Duration = Duration::from_secs(30);
pub const STALE_AFTER: Duration = Duration::from_secs(90);
/// The outbox, queue and report gauges are sampled every this many reports (15 s): the
/// alerts on them look at minutes.
const FIGURES_EVERY: u64 = 3;

/// Reports this instance's tenants until `shutdown`, then removes its report.
pub async fn run_reporter(
    pool: PgPool,
    instance: String,
    tenants: Tenants,
    group: Arc<GroupHealth>,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(REPORT_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut round: u64 = 0;
    let mut owned_before = 0u64;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tick.tick() => {}
        }
        // Every third report, and at once when the tenants owned here changed (after an
        // assignment their gauges appear without waiting for the next sample).
        let owned_now = group.owned_fingerprint();
        let figures = round.is_multiple_of(FIGURES_EVERY) || owned_now != owned_before;
        owned_before = owned_now;
        round += 1;
        if let Err(e) = report_once(&pool, &instance, &tenants, &group, figures).await {
            tracing::warn!(error = %e, "reporting owned tenants failed");
        }
    }
    if let Err(e) = ops::forget_owner(&pool, &instance).await {
        tracing::debug!(error = %e, "removing this instance's owner report");
    }
}

async fn report_once(
    pool: &PgPool,
    instance: &str,
    tenants: &Tenants,
    group: &GroupHealth,
    figures: bool,
) -> Result<(), String> {
    let health: BTreeMap<TenantId, (ActorStatus, u64)> = tenants
        .health(Duration::from_secs(2))
        .await
        .map_err(|e| e.to_string())?
        .into_iter()
        .map(|h| (h.tenant, (h.status, h.restarts)))
        .collect();
    let owned: Vec<OwnerReport> = group
        .owned_with_lag()
        .into_iter()
        .map(|(tenant, lag)| {
            let (state, restarts) = match health.get(&tenant) {
                Some((status, restarts)) => (actor_state(*status), *restarts),
                None => ("assigned", 0),
            };
            OwnerReport {
                tenant,
                actor_state: state.to_owned(),
                restarts,
                lag_messages: lag,
            }
        })
        .collect();
    ops::report_owners(pool, instance, &owned, REFRESH_AFTER)
        .await
        .map_err(|e| e.to_string())?;
    if !figures {
        return Ok(());
    }
    // Figures of the tenants with an actor: a passivated tenant is idle (its outbox was
    // flushed and its queue drained before it stopped; new work wakes it first).
    let ids: Vec<TenantId> = owned
        .into_iter()
        .filter(|o| o.actor_state != "passivated")
        .map(|o| o.tenant)
        .collect();
    let figures = ops::tenant_figures(pool, &ids, false)
        .await
        .map_err(|e| e.to_string())?;
    for (tenant, f) in figures {
        let t = tenant.as_str().to_owned();
        metrics::gauge!(m::OUTBOX_UNRELAYED_ROWS, "tenant" => t.clone())
            .set(f.unrelayed_rows as f64);
        metrics::gauge!(m::OUTBOX_OLDEST_UNRELAYED_AGE_SECONDS, "tenant" => t.clone())
            .set(f.oldest_unrelayed_secs);
        if let Some(at) = f.last_report_at {
            let age = (time::OffsetDateTime::now_utc() - at)
                .as_seconds_f64()
                .max(0.0);
            metrics::gauge!(m::READINESS_REPORT_AGE_SECONDS, "tenant" => t.clone()).set(age);
        }
        for p in crate::actors::jobs::JobPriority::ALL {
            let age = f
                .oldest_pending_secs
                .get(p.as_str())
                .copied()
                .unwrap_or(0.0);
            metrics::gauge!(m::UPSTREAM_QUEUE_OLDEST_AGE_SECONDS, "tenant" => t.clone(),
                "priority" => p.as_str())
            .set(age);
        }
    }
    Ok(())
}

fn actor_state(status: ActorStatus) -> &'static str {
    match status {
        ActorStatus::Running => "running",
        ActorStatus::Restarting => "restarting",
        ActorStatus::Parked => "parked",
        ActorStatus::Passivated => "passivated",
    }
}

/// One tenant in `enablement status`.
#[derive(Debug, Clone, Serialize)]
pub struct TenantStatus {
    pub tenant: TenantId,
    /// Registry status: `active` or `suspended`.
    pub status: String,
    /// `dedicated` or `shared` topics.
    pub topics: &'static str,
    /// The actor's state as its owner last reported it; `unowned` when no instance
    /// reported the tenant, `stale` when the last report is older than [`STALE_AFTER`].
    pub state: String,
    pub instance: Option<String>,
    pub restarts: Option<u64>,
    pub lag_messages: Option<i64>,
    #[serde(flatten)]
    pub figures: TenantFigures,
}

#[derive(Debug, thiserror::Error)]
pub enum OperationsError {
    #[error(transparent)]
    Registry(#[from] crate::db::RegistryError),
    #[error(transparent)]
    Ops(#[from] ops::OpsError),
    #[error("database error: {0}")]
    Store(#[from] crate::actors::ports::StoreError),
    #[error("broker: {0}")]
    Broker(String),
}

/// Every registered tenant with its owner's report and its figures of the last hour.
pub async fn status(registry: &Registry) -> Result<Vec<TenantStatus>, OperationsError> {
    let pool = registry.pool();
    let tenants = registry.list().await?;
    let owners: BTreeMap<TenantId, ops::OwnerRow> = ops::owners(pool)
        .await?
        .into_iter()
        .map(|o| (o.report.tenant.clone(), o))
        .collect();
    let ids: Vec<TenantId> = tenants.iter().map(|t| t.tenant_id.clone()).collect();
    let mut figures = ops::tenant_figures(pool, &ids, true).await?;
    let stale_after = STALE_AFTER.as_secs_f64();
    Ok(tenants
        .into_iter()
        .map(|t| {
            let owner = owners.get(&t.tenant_id);
            let state = match owner {
                None => "unowned".to_owned(),
                Some(o) if o.reported_secs_ago > stale_after => "stale".to_owned(),
                Some(o) => o.report.actor_state.clone(),
            };
            TenantStatus {
                figures: figures.remove(&t.tenant_id).unwrap_or_default(),
                status: t.status,
                topics: if t.shared_topics {
                    "shared"
                } else {
                    "dedicated"
                },
                state,
                instance: owner.map(|o| o.instance.clone()),
                restarts: owner.map(|o| o.report.restarts),
                lag_messages: owner.and_then(|o| o.report.lag_messages),
                tenant: t.tenant_id,
            }
        })
        .collect())
}

/// What `events redrive` selects.
#[derive(Debug, Clone, Default)]
pub struct RedriveFilter {
    /// Only dead letters of this reason (`dlq.reason`).
    pub reason: Option<String>,
    /// Only DLQ records at or after this offset of the DLQ topic.
    pub from_offset: Option<i64>,
    /// List what would be redriven; publish and mark nothing.
    pub dry_run: bool,
}

/// One DLQ record and what redrive did with it.
#[derive(Debug, Clone, Serialize)]
pub struct RedriveItem {
    pub dlq_offset: i64,
    pub source_offset: Option<i64>,
    pub reason: Option<String>,
    /// `redriven`, `would_redrive` (dry run), `already_redriven`, `filtered`,
    /// `failed_again` (a redriven record rejected again: the cause is not fixed),
    /// `truncated` (the DLQ kept only part of the bytes), `unknown` (no dead-letter row:
    /// removed by retention, or not this tenant's).
    pub outcome: &'static str,
}

/// The header a redriven record carries: the inbound offset it was dead-lettered from.
pub const REDRIVE_SOURCE_OFFSET: &str = "redrive.source.offset";

/// Republishes the tenant's dead letters (original key, bytes and headers; `dlq.*`
/// headers removed, [`REDRIVE_SOURCE_OFFSET`] added) to its inbound topic, then marks
/// them redriven. A dead letter already marked is skipped: redriving twice publishes
/// nothing twice (and the pipeline's idempotency by `eventId` applies an event once even
/// if a crash between publish and mark made it publish again).
pub async fn redrive(
    kafka: &KafkaConfig,
    store: &TenantScopedStore,
    tenant: &TenantId,
    shared_topics: bool,
    filter: &RedriveFilter,
) -> Result<Vec<RedriveItem>, OperationsError> {
    let read = ReadOptions {
        shared_topics,
        start: filter.from_offset.map_or(Offset::Beginning, Offset::Offset),
        exit_at_end: true,
        limit: None,
    };
    let (cfg, t) = (kafka.clone(), tenant.clone());
    let records = tokio::task::spawn_blocking(move || {
        let mut out = Vec::new();
        each_record(&cfg, &t, TopicKind::Dlq, &read, |_, r| out.push(r)).map(|_| out)
    })
    .await
    .map_err(|e| OperationsError::Broker(e.to_string()))?
    .map_err(OperationsError::Broker)?;

    let header = |r: &crate::actors::ports::InboundRecord, name: &str| {
        r.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
    };
    let offsets: Vec<i64> = records
        .iter()
        .flat_map(|r| {
            [
                header(r, "dlq.source.offset"),
                header(r, REDRIVE_SOURCE_OFFSET),
            ]
        })
        .filter_map(|v| v?.parse().ok())
        .collect();
    let known = ops::dead_letter_states(store, tenant, offsets).await?;
    let mut items = Vec::new();
    let mut to_publish = Vec::new();
    // The relay publishes at least once: a dead letter may sit twice on the DLQ topic.
    let mut taken = std::collections::BTreeSet::new();
    for r in &records {
        let source_offset: Option<i64> =
            header(r, "dlq.source.offset").and_then(|v| v.parse().ok());
        let reason = header(r, "dlq.reason");
        let outcome = match source_offset.and_then(|o| known.get(&o)) {
            _ if filter.reason.is_some() && filter.reason != reason => "filtered",
            None => "unknown",
            Some(state) if state.redriven => "already_redriven",
            // A redriven record rejected again: its cause is not fixed; not redriven in a
            // loop (push it by hand once it is).
            Some(_)
                if header(r, REDRIVE_SOURCE_OFFSET)
                    .and_then(|v| v.parse::<i64>().ok())
                    .is_some_and(|o| known.get(&o).is_some_and(|s| s.redriven)) =>
            {
                "failed_again"
            }
            Some(_) if source_offset.is_some_and(|o| !taken.insert(o)) => "already_redriven",
            Some(_) if header(r, "dlq.payload.truncated_from").is_some() => "truncated",
            Some(_) if filter.dry_run => "would_redrive",
            Some(_) => "redriven",
        };
        if outcome == "redriven" {
            let mut headers: Vec<(String, Vec<u8>)> = r
                .headers
                .iter()
                .filter(|(k, _)| !k.starts_with("dlq.") && k != crate::kafka::TENANT_HEADER)
                .cloned()
                .collect();
            if let Some(o) = source_offset {
                headers.push((REDRIVE_SOURCE_OFFSET.to_owned(), o.to_string().into_bytes()));
            }
            to_publish.push(OutboundRecord {
                topic: TopicKind::Scim,
                key: r.key.clone(),
                payload: r.payload.clone(),
                headers,
            });
        }
        items.push(RedriveItem {
            dlq_offset: r.offset,
            source_offset,
            reason,
            outcome,
        });
    }
    if !to_publish.is_empty() {
        let publisher =
            KafkaPublisher::new(kafka).map_err(|e| OperationsError::Broker(e.to_string()))?;
        if shared_topics {
            publisher.layout().add_shared(tenant.clone());
        }
        publisher
            .publish(tenant, to_publish)
            .await
            .map_err(|e| OperationsError::Broker(e.to_string()))?;
        let marked: Vec<i64> = items
            .iter()
            .filter(|i| i.outcome == "redriven")
            .filter_map(|i| i.source_offset)
            .collect();
        ops::mark_redriven(store, tenant, marked).await?;
    }
    Ok(items)
}
