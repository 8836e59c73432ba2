//! The analytics aggregator: team readiness reports per tenant, computed by PostgreSQL.
//!
//! - [`schedule`]: marks a tenant's inputs as changed, in the transaction of the change.
//! - [`Aggregator`]: computes one tenant's report in one scoped transaction: lock the
//!   tenant's row in `readiness_locks` (`SKIP LOCKED`: at most one aggregation per tenant at a
//!   time across every process, a second request is told it is running), run `report.sql`,
//!   queue refresh syncs for stale users, store the report (bounded history), write
//!   `readiness.aggregated` to the outbox, clear the schedule if nothing changed meanwhile,
//!   and `NOTIFY` the tenant's consumer so the outbox is relayed and refresh syncs start.
//! - [`worker`]: the `aggregator` role's loops, running due tenants oldest change first.

pub mod worker;

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use time::OffsetDateTime;

use crate::actors::events::{InternalEvent, ReadinessAggregation};
use crate::actors::ports::JobPriority;
use crate::actors::ports::StoreError;
use crate::actors::readiness::{AggregationTrigger, ReadinessMark, ReadinessReport};
use crate::actors::TenantId;
use crate::config::AggregatorSettings;
use crate::db::{jobs, TenantScopedStore};
use crate::tenant_tx;

/// The aggregate query (one statement, one jsonb value); also what the benchmark times bare.
pub const REPORT_SQL: &str = include_str!("report.sql");

/// What an aggregation request came to.
#[derive(Debug)]
pub enum Aggregation {
    Computed(Box<ReadinessReport>),
    /// Another transaction is aggregating this tenant right now.
    Running,
    /// (Scheduled runs only) the tenant is no longer due: another worker ran it.
    NotDue,
    /// No such tenant.
    UnknownTenant,
}

#[derive(Clone)]
pub struct Aggregator {
    store: TenantScopedStore,
    settings: Arc<AggregatorSettings>,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

struct Claim {
    generation: i64,
}

impl Aggregator {
    pub fn new(store: TenantScopedStore, settings: AggregatorSettings) -> Self {
        Self {
            store,
            settings: Arc::new(settings),
        }
    }

    pub fn settings(&self) -> &AggregatorSettings {
        &self.settings
    }

    /// Computes and stores `tenant`'s report now, unless one is being computed.
    /// Scheduled triggers run only if the tenant is still due when its lock is taken.
    pub async fn aggregate(
        &self,
        tenant: &TenantId,
        trigger: AggregationTrigger,
    ) -> Result<Aggregation, StoreError> {
        let started = Instant::now();
        let settings = self.settings.clone();
        let outcome = tenant_tx!(self.store, tenant, |tx, t| {
            aggregate_tx(tx, t, trigger, &settings, started).await
        })
        .await
        .and_then(|r| r.map_err(StoreError::Query));
        match &outcome {
            Ok(Aggregation::Computed(report)) => ReadinessAggregation::Stored {
                tenant,
                trigger: trigger.as_str(),
                provisional: report.provisional,
                took: started.elapsed(),
            }
            .emit(),
            Ok(Aggregation::Running) => ReadinessAggregation::Coalesced.emit(),
            Ok(_) => {}
            Err(error) => ReadinessAggregation::Failed { tenant, error }.emit(),
        }
        outcome
    }

    /// The tenant's latest stored report.
    pub async fn latest(&self, tenant: &TenantId) -> Result<Option<ReadinessReport>, StoreError> {
        let row = tenant_tx!(self.store, tenant, |tx, t| {
            tx.query_opt(
                "select id, report from readiness_reports where tenant_id = $1
                  order by id desc limit 1",
                &[&t],
            )
            .await
        })
        .await?;
        row.map(|r| stored_report(r.get(0), r.get(1))).transpose()
    }

    /// Tenants whose re-aggregation is due, the oldest change first.
    pub async fn due_tenants(
        &self,
        limit: i64,
    ) -> Result<Vec<(TenantId, AggregationTrigger)>, StoreError> {
        let conn = self
            .store
            .pool()
            .get()
            .await
            .map_err(|e| StoreError::Unavailable(crate::db::redact(e)))?;
        let rows = conn
            .query(
                "select s.tenant_id, s.reason from readiness_schedule s
                   join tenants t on t.tenant_id = s.tenant_id
                  where t.status = 'active' and s.pending_since is not null
                    and (s.changed_at + $1::float8 * interval '1 millisecond' <= now()
                         or s.pending_since + $2::float8 * interval '1 millisecond' <= now())
                  order by s.pending_since limit $3",
                &[
                    &ms(self.settings.debounce),
                    &ms(self.settings.max_delay),
                    &limit,
                ],
            )
            .await
            .map_err(crate::db::store_error)?;
        Ok(rows
            .iter()
            .filter_map(|r| {
                let tenant = TenantId::parse(r.get::<_, &str>(0)).ok()?;
                let trigger = match r.get::<_, Option<&str>>(1) {
                    Some(reason) if reason == ReadinessMark::SyncSettled.as_str() => {
                        AggregationTrigger::Scheduled
                    }
                    _ => AggregationTrigger::Changed,
                };
                Some((tenant, trigger))
            })
            .collect())
    }

    /// Runs the first due tenant nobody else is running. `Ok(None)`: nothing to do.
    pub async fn run_next_due(&self) -> Result<Option<ReadinessReport>, StoreError> {
        for (tenant, trigger) in self.due_tenants(16).await? {
            if let Aggregation::Computed(report) = self.aggregate(&tenant, trigger).await? {
                return Ok(Some(*report));
            }
        }
        Ok(None)
    }
}

fn stored_report(id: i64, raw: Value) -> Result<ReadinessReport, StoreError> {
    let mut report: ReadinessReport = serde_json::from_value(raw)
        .map_err(|e| StoreError::Query(format!("stored report unreadable: {e}")))?;
    report.report_id = Some(id);
    Ok(report)
}

async fn aggregate_tx(
    tx: &tokio_postgres::Transaction<'_>,
    t: &str,
    trigger: AggregationTrigger,
    settings: &AggregatorSettings,
    started: Instant,
) -> Result<Result<Aggregation, String>, tokio_postgres::Error> {
    let known = tx
        .query_opt("select 1 from tenants where tenant_id = $1", &[&t])
        .await?
        .is_some();
    if !known {
        return Ok(Ok(Aggregation::UnknownTenant));
    }
    // The lock row exists for every tenant (registration, migration); a plain read first,
    // so this never waits on a running aggregation.
    tx.execute(
        "insert into readiness_locks (tenant_id) select $1
          where not exists (select 1 from readiness_locks where tenant_id = $1)
         on conflict do nothing",
        &[&t],
    )
    .await?;
    let locked = tx
        .query_opt(
            "select clock_timestamp() from readiness_locks where tenant_id = $1
               for update skip locked",
            &[&t],
        )
        .await?;
    let Some(locked) = locked else {
        return Ok(Ok(Aggregation::Running));
    };
    let started_at: OffsetDateTime = locked.get(0);
    let Some(claim) = claim(tx, t, trigger, settings).await? else {
        return Ok(Ok(Aggregation::NotDue));
    };
    tx.execute(
        "select set_config('statement_timeout', $1, true)",
        &[&(settings.statement_timeout.as_millis() as i64).to_string()],
    )
    .await?;
    let raw: Value = tx
        .query_one(REPORT_SQL, &[&t, &ms(settings.freshness)])
        .await?
        .get(0);
    let mut report: ReadinessReport = match serde_json::from_value(raw) {
        Ok(r) => r,
        // A shape mismatch between report.sql and the type is a bug, never data.
        Err(e) => {
            return Ok(Err(format!(
                "report query returned an unexpected shape: {e}"
            )))
        }
    };
    report.classify();
    if report.stale_progress_rows > 0 && settings.refresh_stale_max_jobs > 0 {
        report.refresh_syncs_queued = queue_refresh_syncs(tx, t, settings).await? as i64;
    }
    report.trigger = trigger;
    report.computed_by = settings.instance.clone();
    report.duration_ms = started.elapsed().as_secs_f64() * 1000.0;
    let stored = serde_json::to_value(&report).unwrap_or(Value::Null);
    let id: i64 = tx
        .query_one(
            "insert into readiness_reports (tenant_id, provisional, computed_at, inputs_as_of,
                                            trigger, computed_by, started_at, finished_at, report)
             values ($1, $2, now(), ($3::text)::timestamptz, $4, $5, $6, clock_timestamp(), $7)
             returning id",
            &[
                &t,
                &report.provisional,
                &report.inputs_as_of,
                &trigger.as_str(),
                &settings.instance,
                &started_at,
                &stored,
            ],
        )
        .await?
        .get(0);
    report.report_id = Some(id);
    let announcement = report.announcement().to_string();
    crate::db::outbox::append(
        tx,
        t,
        crate::actors::TopicKind::Events,
        &["readiness"],
        &[&announcement],
        0,
    )
    .await?;
    // Bounded history: keep the newest `history_per_tenant` reports.
    tx.execute(
        "delete from readiness_reports where tenant_id = $1 and id <= (
             select id from readiness_reports where tenant_id = $1
              order by id desc offset $2 limit 1)",
        &[&t, &settings.history_per_tenant],
    )
    .await?;
    // Done with the changes this run saw; a provisional report waits for its sync work.
    tx.execute(
        "insert into readiness_schedule (tenant_id, await_drain) values ($1, $2)
         on conflict (tenant_id) do update set
             await_drain = excluded.await_drain,
             pending_since = case when readiness_schedule.generation = $3 then null
                                  else readiness_schedule.pending_since end",
        &[&t, &report.provisional, &claim.generation],
    )
    .await?;
    crate::db::notify_tenant_work(tx, t).await?;
    Ok(Ok(Aggregation::Computed(Box::new(report))))
}

/// Reads the tenant's schedule under the lock. Scheduled triggers need it still due.
async fn claim(
    tx: &tokio_postgres::Transaction<'_>,
    t: &str,
    trigger: AggregationTrigger,
    settings: &AggregatorSettings,
) -> Result<Option<Claim>, tokio_postgres::Error> {
    let row = tx
        .query_opt(
            "select generation,
                    pending_since is not null
                    and (changed_at + $2::float8 * interval '1 millisecond' <= now()
                         or pending_since + $3::float8 * interval '1 millisecond' <= now())
               from readiness_schedule where tenant_id = $1",
            &[&t, &ms(settings.debounce), &ms(settings.max_delay)],
        )
        .await?;
    let (generation, due) = row.map_or((0, false), |r| (r.get(0), r.get(1)));
    if trigger != AggregationTrigger::Manual && !due {
        return Ok(None);
    }
    Ok(Some(Claim { generation }))
}

/// Queues background syncs for active users with stale progress and no sync queued.
async fn queue_refresh_syncs(
    tx: &tokio_postgres::Transaction<'_>,
    t: &str,
    settings: &AggregatorSettings,
) -> Result<u64, tokio_postgres::Error> {
    let stale: Vec<String> = tx
        .query(
            "select distinct p.user_id
               from course_progress p
               join users u on u.tenant_id = p.tenant_id and u.user_id = p.user_id and u.active
              where p.tenant_id = $1
                and p.synced_at < now() - $2::float8 * interval '1 millisecond'
              order by p.user_id",
            &[&t, &ms(settings.freshness)],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    jobs::enqueue_syncs(
        tx,
        t,
        JobPriority::Background,
        &stale,
        settings.refresh_stale_max_jobs,
    )
    .await
}
