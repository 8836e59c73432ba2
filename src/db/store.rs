//! [`TenantScopedStore`]: every tenant query runs inside a transaction whose first
//! statement is `set_config('app.tenant_id', <tenant>, true)`.
//!
//! The setting is transaction-local, so a pooled connection never carries one tenant's
//! scope into another tenant's work, and a connection with no setting sees no rows (the
//! policies compare against `nullif(current_setting(..., true), '')`, which is NULL).

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;

use async_trait::async_trait;
use serde_json::Value;
use time::OffsetDateTime;
use tokio_postgres::error::SqlState;
use tokio_postgres::Transaction;

use super::{outbox, PgPool};
use crate::actors::ports::{
    BatchReport, DeadLetter, Job, JobKind, JobPriority, NewJob, OutboundRecord, OutboxRecord,
    ProgressSnapshot, ScimBatch, StoreError, TenantStore,
};
use crate::actors::scim::{plan_batch, Role, StoredUser};
use crate::actors::upstream::{CourseStatus, UpstreamCourse};
use crate::actors::{TenantId, TopicKind};
use crate::readiness::schedule;

/// Work run inside a tenant's transaction.
pub type TxWork<'t, R> =
    Pin<Box<dyn Future<Output = Result<R, tokio_postgres::Error>> + Send + 't>>;

#[derive(Clone)]
pub struct TenantScopedStore {
    pool: PgPool,
}

pub(crate) fn store_error(e: tokio_postgres::Error) -> StoreError {
    match e.code() {
        Some(c) if *c == SqlState::INSUFFICIENT_PRIVILEGE => {
            tracing::error!(error = %e, "security event: row-level security refused a write");
            metrics::counter!(crate::actors::metric_names::SECURITY_EVENTS_TOTAL,
                "kind" => "rls_violation")
            .increment(1);
            StoreError::PolicyViolation(
                e.as_db_error()
                    .map(|d| d.message().to_owned())
                    .unwrap_or_default(),
            )
        }
        Some(c) if is_transient_state(c) => StoreError::Unavailable(e.to_string()),
        // No SQLSTATE: the connection broke (I/O, closed, TLS): the server is unreachable.
        None => StoreError::Unavailable(e.to_string()),
        Some(_) => StoreError::Query(
            e.as_db_error()
                .map(|d| d.message().to_owned())
                .unwrap_or_else(|| e.to_string()),
        ),
    }
}

/// SQLSTATEs that say nothing about the work itself: the server is starting, shutting
/// down, out of resources, or the transaction lost a race. The same work succeeds later.
fn is_transient_state(c: &SqlState) -> bool {
    let code = c.code();
    code.starts_with("08") // connection exception
        || code.starts_with("53") // insufficient resources (too many connections, disk full)
        || code.starts_with("57P") // admin/crash shutdown, cannot connect now
        || code.starts_with("58") // system error (I/O)
        || code == "40001" // serialization failure
        || code == "40P01" // deadlock detected
        || code == "55P03" // lock not available
        || code == "57014" // query canceled (statement timeout, server shutting down)
        || code == "25006" // read-only transaction (a replica promoted mid-failover)
}

impl TenantScopedStore {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Runs `work` in a transaction scoped to `tenant` and commits it. The only way the
    /// service reaches tenant rows.
    pub async fn scoped<R, F>(&self, tenant: &TenantId, work: F) -> Result<R, StoreError>
    where
        R: Send,
        F: for<'t> FnOnce(&'t Transaction<'t>) -> TxWork<'t, R> + Send,
    {
        let mut conn = self
            .pool
            .get()
            .await
            .map_err(|e| StoreError::Unavailable(super::redact(e)))?;
        let tx = conn.transaction().await.map_err(store_error)?;
        tx.execute(
            "select set_config('app.tenant_id', $1, true)",
            &[&tenant.as_str()],
        )
        .await
        .map_err(store_error)?;
        let out = match work(&tx).await {
            Ok(out) => out,
            Err(e) => {
                let err = store_error(e);
                drop(tx);
                drop(conn);
                if let StoreError::PolicyViolation(detail) = &err {
                    let detail = serde_json::json!({ "source": "database", "detail": detail });
                    self.record_security_event(tenant, "rls_violation", detail)
                        .await;
                }
                return Err(err);
            }
        };
        tx.commit().await.map_err(store_error)?;
        Ok(out)
    }

    /// Records a security event in the tenant's own `security_events` (best effort: the
    /// refusal itself already happened and was logged and counted).
    pub async fn record_security_event(&self, tenant: &TenantId, kind: &str, detail: Value) {
        let Ok(mut conn) = self.pool.get().await else {
            return;
        };
        let Ok(tx) = conn.transaction().await else {
            return;
        };
        let ok = tx
            .execute(
                "select set_config('app.tenant_id', $1, true)",
                &[&tenant.as_str()],
            )
            .await
            .is_ok()
            && tx
                .execute(
                    "insert into security_events (tenant_id, kind, detail) values ($1, $2, $3)",
                    &[&tenant.as_str(), &kind, &detail],
                )
                .await
                .is_ok();
        if ok {
            let _ = tx.commit().await;
        }
    }

    /// The user's last synced progress, `None` when the user was never synced.
    pub async fn progress(
        &self,
        tenant: &TenantId,
        user_id: &str,
    ) -> Result<Option<ProgressSnapshot>, StoreError> {
        let (t, u) = (tenant.as_str().to_owned(), user_id.to_owned());
        let rows = self
            .scoped(tenant, move |tx| {
                Box::pin(async move {
                    tx.query(
                        "select course_id, title, status, score, completed_at, synced_at
                           from course_progress where tenant_id = $1 and user_id = $2
                          order by course_id",
                        &[&t, &u],
                    )
                    .await
                })
            })
            .await?;
        if rows.is_empty() {
            return Ok(None);
        }
        let synced_at = rows.iter().map(|r| r.get::<_, OffsetDateTime>(5)).max();
        Ok(Some(ProgressSnapshot {
            user_id: user_id.to_owned(),
            courses: rows.iter().map(row_to_course).collect(),
            synced_at,
        }))
    }

    /// True when the user exists in the tenant's SCIM roster.
    pub async fn user_exists(&self, tenant: &TenantId, user_id: &str) -> Result<bool, StoreError> {
        let (t, u) = (tenant.as_str().to_owned(), user_id.to_owned());
        self.scoped(tenant, move |tx| {
            Box::pin(async move {
                Ok(tx
                    .query_opt(
                        "select 1 from users where tenant_id = $1 and user_id = $2",
                        &[&t, &u],
                    )
                    .await?
                    .is_some())
            })
        })
        .await
    }

    /// The tenant's user roster as provisioned by SCIM (active and deactivated).
    pub async fn roster(&self, tenant: &TenantId) -> Result<Vec<Value>, StoreError> {
        let t = tenant.as_str().to_owned();
        self.scoped(tenant, move |tx| {
            Box::pin(async move {
                Ok(tx
                    .query(
                        "select json_build_object('id', user_id, 'userName', user_name,
                                'email', email, 'role', role, 'externalId', external_id,
                                'managerId', manager_id, 'active', active, 'version', version,
                                'updatedAt', updated_at)
                           from users where tenant_id = $1 order by user_id",
                        &[&t],
                    )
                    .await?
                    .iter()
                    .map(|r| r.get::<_, Value>(0))
                    .collect())
            })
        })
        .await
    }

    /// The tenant's MindTickle credentials (client id, secret), if configured.
    /// Queues progress syncs durably and wakes the tenant's consumer wherever it runs: one
    /// user at interactive priority, or (`None`) every active user without a sync queued at
    /// background priority. Returns the number of jobs queued.
    pub async fn queue_syncs(
        &self,
        tenant: &TenantId,
        user: Option<&str>,
    ) -> Result<u64, StoreError> {
        let t = tenant.as_str().to_owned();
        let user = user.map(str::to_owned);
        self.scoped(tenant, move |tx| {
            Box::pin(async move {
                let n = match user {
                    Some(u) => {
                        tx.execute(
                            "insert into upstream_jobs (tenant_id, priority, kind, subject)
                             values ($1, 0, 'sync_progress', $2)",
                            &[&t, &u],
                        )
                        .await?
                    }
                    None => {
                        tx.execute(
                            "insert into upstream_jobs (tenant_id, priority, kind, subject)
                             select $1, 2, 'sync_progress', u.user_id from users u
                              where u.tenant_id = $1 and u.active
                                and not exists (select 1 from upstream_jobs j
                                                 where j.tenant_id = $1 and j.status = 'pending'
                                                   and j.kind = 'sync_progress'
                                                   and j.subject = u.user_id)
                              order by u.user_id",
                            &[&t],
                        )
                        .await?
                    }
                };
                super::notify_tenant_work(tx, &t).await?;
                Ok(n)
            })
        })
        .await
    }

    pub async fn upstream_credentials(
        &self,
        tenant: &TenantId,
    ) -> Result<Option<(String, String)>, StoreError> {
        let t = tenant.as_str().to_owned();
        self.scoped(tenant, move |tx| {
            Box::pin(async move {
                Ok(tx
                    .query_opt(
                        "select upstream_client_id, upstream_client_secret from tenant_secrets
                          where tenant_id = $1 and upstream_client_id is not null
                            and upstream_client_secret is not null",
                        &[&t],
                    )
                    .await?
                    .map(|r| (r.get(0), r.get(1))))
            })
        })
        .await
    }

    /// Stores the tenant's MindTickle credentials in its RLS-protected secrets row.
    pub async fn set_upstream_credentials(
        &self,
        tenant: &TenantId,
        client_id: &str,
        secret: &str,
    ) -> Result<bool, StoreError> {
        let (t, id, secret) = (
            tenant.as_str().to_owned(),
            client_id.to_owned(),
            secret.to_owned(),
        );
        let n = self
            .scoped(tenant, move |tx| {
                Box::pin(async move {
                    tx.execute(
                        "update tenant_secrets set upstream_client_id = $2,
                                upstream_client_secret = $3, rotated_at = now()
                          where tenant_id = $1",
                        &[&t, &id, &secret],
                    )
                    .await
                })
            })
            .await?;
        Ok(n == 1)
    }

    /// Replaces the tenant's API token hash (rotation: the old token stops working at
    /// once). False when the tenant does not exist.
    pub async fn set_api_token_hash(
        &self,
        tenant: &TenantId,
        token_sha256: [u8; 32],
    ) -> Result<bool, StoreError> {
        let t = tenant.as_str().to_owned();
        let n = self
            .scoped(tenant, move |tx| {
                Box::pin(async move {
                    tx.execute(
                        "update tenant_secrets set api_token_sha256 = $2, rotated_at = now()
                          where tenant_id = $1",
                        &[&t, &token_sha256.as_slice()],
                    )
                    .await
                })
            })
            .await?;
        Ok(n == 1)
    }

    /// True when `token_sha256` is the tenant's API token hash (constant-time compare).
    pub async fn token_matches(
        &self,
        tenant: &TenantId,
        token_sha256: [u8; 32],
    ) -> Result<bool, StoreError> {
        let t = tenant.as_str().to_owned();
        let stored: Option<Vec<u8>> = self
            .scoped(tenant, move |tx| {
                Box::pin(async move {
                    Ok(tx
                        .query_opt(
                            "select api_token_sha256 from tenant_secrets where tenant_id = $1",
                            &[&t],
                        )
                        .await?
                        .map(|r| r.get(0)))
                })
            })
            .await?;
        Ok(stored.is_some_and(|s| crate::tokens::constant_time_eq(&s, &token_sha256)))
    }
}

/// Upserts the user's course progress and writes `progress.synced` to the outbox.
async fn record_progress_tx(
    tx: &Transaction<'_>,
    t: &str,
    u: &str,
    courses: Vec<UpstreamCourse>,
) -> Result<ProgressSnapshot, tokio_postgres::Error> {
    let ids: Vec<&str> = courses.iter().map(|c| c.course_id.as_str()).collect();
    let titles: Vec<&str> = courses.iter().map(|c| c.title.as_str()).collect();
    let statuses: Vec<&str> = courses.iter().map(|c| status_str(c.status)).collect();
    let scores: Vec<Option<f64>> = courses.iter().map(|c| c.quiz_score).collect();
    let done: Vec<Option<OffsetDateTime>> = courses.iter().map(|c| c.completed_at).collect();
    if !courses.is_empty() {
        tx.execute(
            "insert into course_progress (tenant_id, user_id, course_id, title,
                                                          status, score, completed_at)
                             select $1, $2, * from unnest($3::text[], $4::text[], $5::text[],
                                                          $6::float8[], $7::timestamptz[])
                             on conflict (tenant_id, user_id, course_id) do update set
                                 title = excluded.title, status = excluded.status,
                                 score = excluded.score, completed_at = excluded.completed_at,
                                 synced_at = now()",
            &[&t, &u, &ids, &titles, &statuses, &scores, &done],
        )
        .await?;
    }
    // The platform's answer is the user's whole course set: courses no longer assigned go.
    tx.execute(
        "delete from course_progress
          where tenant_id = $1 and user_id = $2 and not (course_id = any($3::text[]))",
        &[&t, &u, &ids],
    )
    .await?;
    let synced: OffsetDateTime = tx.query_one("select now()", &[]).await?.get(0);
    let snapshot = ProgressSnapshot {
        user_id: u.to_owned(),
        courses,
        synced_at: Some(synced),
    };
    let payload = serde_json::json!({
        "type": "progress.synced", "tenantId": t, "userId": u,
        "courses": snapshot.courses, "syncedAt": snapshot.synced_at
            .and_then(|s| s.format(&time::format_description::well_known::Rfc3339).ok()),
    })
    .to_string();
    outbox::append(tx, t, TopicKind::Events, &[u], &[&payload], 0).await?;
    schedule::mark_changed(tx, t, schedule::PROGRESS_SYNCED).await?;
    Ok(snapshot)
}

fn status_str(s: CourseStatus) -> &'static str {
    match s {
        CourseStatus::NotStarted => "not_started",
        CourseStatus::InProgress => "in_progress",
        CourseStatus::Completed => "completed",
    }
}

fn row_to_course(r: &tokio_postgres::Row) -> UpstreamCourse {
    UpstreamCourse {
        course_id: r.get(0),
        title: r.get(1),
        status: match r.get::<_, &str>(2) {
            "completed" => CourseStatus::Completed,
            "in_progress" => CourseStatus::InProgress,
            _ => CourseStatus::NotStarted,
        },
        quiz_score: r.get(3),
        completed_at: r.get(4),
    }
}

fn row_to_user(r: &tokio_postgres::Row) -> StoredUser {
    StoredUser {
        user_id: r.get("user_id"),
        user_name: r.get("user_name"),
        email: r.get("email"),
        role: Role::parse(r.get("role")).unwrap_or(Role::Rep),
        external_id: r.get("external_id"),
        manager_id: r.get("manager_id"),
        active: r.get("active"),
        resource: r.get("scim"),
        version: r.get("version"),
        occurred_at: r.get("source_occurred_at"),
        last_event_id: r.get("source_event_id"),
    }
}

async fn apply_batch_tx(
    tx: &Transaction<'_>,
    tenant: &str,
    batch: ScimBatch,
    relayed_through: i64,
) -> Result<BatchReport, tokio_postgres::Error> {
    let mut report = BatchReport::default();
    let ScimBatch {
        events,
        security_events,
        dead_letters,
    } = batch;
    if !events.is_empty() {
        // 1. Idempotency records: ids returned are new; the rest were applied before.
        let ids: Vec<&str> = events.iter().map(|e| e.event_id.as_str()).collect();
        let fresh: HashSet<String> = tx
            .query(
                "insert into processed_events (tenant_id, event_id)
                 select $1, unnest($2::text[]) on conflict do nothing returning event_id",
                &[&tenant, &ids],
            )
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        let seen: HashSet<String> = ids
            .iter()
            .filter(|id| !fresh.contains(**id))
            .map(|id| id.to_string())
            .collect();
        // 2. Current state of the users involved, locked for this transaction.
        let mut user_ids: Vec<&str> = events.iter().map(|e| e.user.id.as_str()).collect();
        user_ids.sort_unstable();
        user_ids.dedup();
        let current: HashMap<String, StoredUser> = tx
            .query(
                "select user_id, user_name, email, role, external_id, manager_id, active, scim,
                        version, source_occurred_at, source_event_id
                   from users where tenant_id = $1 and user_id = any($2::text[])
                  order by user_id for update",
                &[&tenant, &user_ids],
            )
            .await?
            .iter()
            .map(|r| {
                let u = row_to_user(r);
                (u.user_id.clone(), u)
            })
            .collect();
        // 3. The pure rules decide; this function only writes their plan.
        let plan = plan_batch(current, &seen, events);
        for (_, outcome) in &plan.outcomes {
            report.count(*outcome);
        }
        if !plan.upserts.is_empty() {
            let mut c_id = Vec::new();
            let mut c_name = Vec::new();
            let mut c_email: Vec<Option<String>> = Vec::new();
            let mut c_role = Vec::new();
            let mut c_ext: Vec<Option<String>> = Vec::new();
            let mut c_mgr: Vec<Option<String>> = Vec::new();
            let mut c_active = Vec::new();
            let mut c_scim: Vec<Value> = Vec::new();
            let mut c_version = Vec::new();
            let mut c_at: Vec<OffsetDateTime> = Vec::new();
            let mut c_event = Vec::new();
            for u in plan.upserts {
                c_id.push(u.user_id);
                c_name.push(u.user_name);
                c_email.push(u.email);
                c_role.push(u.role.as_str());
                c_ext.push(u.external_id);
                c_mgr.push(u.manager_id);
                c_active.push(u.active);
                c_scim.push(u.resource);
                c_version.push(u.version);
                c_at.push(u.occurred_at);
                c_event.push(u.last_event_id);
            }
            tx.execute(
                "insert into users (tenant_id, user_id, user_name, email, role, external_id,
                                    manager_id, active, scim, version, source_occurred_at,
                                    source_event_id)
                 select $1, * from unnest($2::text[], $3::text[], $4::text[], $5::text[],
                                          $6::text[], $7::text[], $8::bool[], $9::jsonb[],
                                          $10::int8[], $11::timestamptz[], $12::text[])
                 on conflict (tenant_id, user_id) do update set
                     user_name = excluded.user_name, email = excluded.email,
                     role = excluded.role, external_id = excluded.external_id,
                     manager_id = excluded.manager_id, active = excluded.active,
                     scim = excluded.scim, version = excluded.version,
                     source_occurred_at = excluded.source_occurred_at,
                     source_event_id = excluded.source_event_id, updated_at = now()",
                &[
                    &tenant, &c_id, &c_name, &c_email, &c_role, &c_ext, &c_mgr, &c_active, &c_scim,
                    &c_version, &c_at, &c_event,
                ],
            )
            .await?;
        }
        if !plan.changes.is_empty() {
            // Serialised once: the same text becomes the jsonb row and the Kafka record.
            let payloads: Vec<String> = plan
                .changes
                .iter()
                .map(|c| serde_json::to_string(c).unwrap_or_else(|_| "null".into()))
                .collect();
            let keys: Vec<&str> = plan.changes.iter().map(|c| c.user_id.as_str()).collect();
            let texts: Vec<&str> = payloads.iter().map(String::as_str).collect();
            let first = outbox::append(
                tx,
                tenant,
                TopicKind::UserChanged,
                &keys,
                &texts,
                relayed_through,
            )
            .await?;
            let n = payloads.len() as i64;
            // Each change is also pushed to MindTickle, through the tenant's durable queue,
            // when the tenant has upstream credentials (read back only then).
            report.jobs_queued = tx
                .execute(
                    "insert into upstream_jobs (tenant_id, priority, kind, subject, payload)
                     select $1, 1, 'push_user', o.message_key, o.payload from outbox o
                      where o.tenant_id = $1 and o.seq >= $2 and o.seq < $2 + $3
                        and exists (select 1 from tenant_secrets s
                                     where s.tenant_id = $1 and s.upstream_client_id is not null)
                      order by o.seq",
                    &[&tenant, &first, &n],
                )
                .await?;
            schedule::mark_changed(tx, tenant, schedule::USERS_CHANGED).await?;
            report.outbox = plan
                .changes
                .iter()
                .zip(payloads)
                .zip(first..)
                .map(|((c, payload), seq)| OutboxRecord {
                    seq,
                    topic: TopicKind::UserChanged,
                    key: Some(c.user_id.clone().into_bytes()),
                    payload: payload.into_bytes(),
                    headers: Vec::new(),
                })
                .collect();
        }
    }
    if !dead_letters.is_empty() {
        dead_letter_tx(tx, tenant, dead_letters, relayed_through, &mut report).await?;
    }
    // `outbox::append` carried the cursor when the batch wrote outbox rows.
    if relayed_through > 0 && report.outbox.is_empty() {
        outbox::store_cursor(tx, tenant, relayed_through).await?;
    }
    for sec in &security_events {
        tx.execute(
            "insert into security_events (tenant_id, kind, detail) values ($1, $2, $3)",
            &[&tenant, &sec.kind, &sec.detail],
        )
        .await?;
    }
    Ok(report)
}

/// Records the batch's dead letters and appends the DLQ records of those whose source
/// offset was not dead-lettered before (a replayed batch publishes nothing twice).
async fn dead_letter_tx(
    tx: &Transaction<'_>,
    tenant: &str,
    dead_letters: Vec<DeadLetter>,
    relayed_through: i64,
    report: &mut BatchReport,
) -> Result<(), tokio_postgres::Error> {
    let offsets: Vec<i64> = dead_letters.iter().map(|d| d.source_offset).collect();
    let reasons: Vec<&str> = dead_letters.iter().map(|d| d.reason).collect();
    let details: Vec<String> = dead_letters
        .iter()
        .map(|d| {
            d.record
                .headers
                .iter()
                .find(|(k, _)| k == "dlq.detail")
                .map(|(_, v)| String::from_utf8_lossy(v).replace('\0', ""))
                .unwrap_or_default()
        })
        .collect();
    let fresh: HashSet<i64> = tx
        .query(
            "insert into dead_letters (tenant_id, source_offset, reason, detail)
             select $1, * from unnest($2::int8[], $3::text[], $4::text[])
             on conflict (tenant_id, source_offset) do nothing
             returning source_offset",
            &[&tenant, &offsets, &reasons, &details],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let letters: Vec<DeadLetter> = dead_letters
        .into_iter()
        .filter(|d| fresh.contains(&d.source_offset))
        .collect();
    if letters.is_empty() {
        return Ok(());
    }
    let records: Vec<&OutboundRecord> = letters.iter().map(|d| &d.record).collect();
    let first = outbox::append_raw(tx, tenant, &records, relayed_through).await?;
    report.dead_lettered = letters.len() as u64;
    report.outbox.extend(
        letters
            .into_iter()
            .zip(first..)
            .map(|(d, seq)| OutboxRecord {
                seq,
                topic: d.record.topic,
                key: d.record.key,
                payload: d.record.payload,
                headers: d.record.headers,
            }),
    );
    Ok(())
}

#[async_trait]
impl TenantStore for TenantScopedStore {
    async fn apply_scim_batch(
        &self,
        tenant: &TenantId,
        batch: ScimBatch,
        relayed_through: i64,
    ) -> Result<BatchReport, StoreError> {
        let t = tenant.as_str().to_owned();
        self.scoped(tenant, move |tx| {
            Box::pin(async move { apply_batch_tx(tx, &t, batch, relayed_through).await })
        })
        .await
    }

    async fn pending_outbox(
        &self,
        tenant: &TenantId,
        after: i64,
        limit: usize,
    ) -> Result<Vec<OutboxRecord>, StoreError> {
        let t = tenant.as_str().to_owned();
        let limit = limit as i64;
        let rows = self
            .scoped(tenant, move |tx| {
                Box::pin(async move {
                    tx.query(
                        "select seq, topic, message_key, payload::text, raw_key, raw_payload,
                                header_names, header_values
                           from outbox
                          where tenant_id = $1
                            and seq > greatest($2, (select relayed_seq from outbox_relay
                                                     where tenant_id = $1))
                          order by seq limit $3",
                        &[&t, &after, &limit],
                    )
                    .await
                })
            })
            .await?;
        Ok(rows
            .iter()
            .filter_map(|r| {
                let raw: Option<Vec<u8>> = r.get(5);
                let (key, payload) = match raw {
                    // A raw record (dead letter): key and bytes as received.
                    Some(bytes) => (r.get::<_, Option<Vec<u8>>>(4), bytes),
                    None => (
                        Some(r.get::<_, String>(2).into_bytes()),
                        r.get::<_, Option<String>>(3)?.into_bytes(),
                    ),
                };
                let names: Option<Vec<String>> = r.get(6);
                let values: Option<Vec<Vec<u8>>> = r.get(7);
                Some(OutboxRecord {
                    seq: r.get(0),
                    topic: TopicKind::parse(r.get(1))?,
                    key,
                    payload,
                    headers: names
                        .unwrap_or_default()
                        .into_iter()
                        .zip(values.unwrap_or_default())
                        .collect(),
                })
            })
            .collect())
    }

    async fn quota_override(&self, tenant: &TenantId) -> Result<Option<u32>, StoreError> {
        let conn = self
            .pool
            .get()
            .await
            .map_err(|e| StoreError::Unavailable(super::redact(e)))?;
        // The registry is global and holds nothing secret: no tenant scope needed.
        let row = conn
            .query_opt(
                "select rate_limit_per_min from tenants where tenant_id = $1",
                &[&tenant.as_str()],
            )
            .await
            .map_err(store_error)?;
        Ok(row
            .and_then(|r| r.get::<_, Option<i32>>(0))
            .and_then(|n| u32::try_from(n).ok()))
    }

    async fn record_progress(
        &self,
        tenant: &TenantId,
        user_id: &str,
        courses: &[UpstreamCourse],
    ) -> Result<ProgressSnapshot, StoreError> {
        let (t, u) = (tenant.as_str().to_owned(), user_id.to_owned());
        let courses = courses.to_vec();
        self.scoped(tenant, move |tx| {
            Box::pin(async move { record_progress_tx(tx, &t, &u, courses).await })
        })
        .await
    }

    async fn enqueue_job(&self, tenant: &TenantId, job: &NewJob) -> Result<i64, StoreError> {
        let t = tenant.as_str().to_owned();
        let job = job.clone();
        self.scoped(tenant, move |tx| {
            Box::pin(async move {
                Ok(tx
                    .query_one(
                        "insert into upstream_jobs (tenant_id, priority, kind, subject, payload)
                         values ($1, $2, $3, $4, $5) returning id",
                        &[
                            &t,
                            &(job.priority as i16),
                            &job.kind.as_str(),
                            &job.subject,
                            &job.payload,
                        ],
                    )
                    .await?
                    .get(0))
            })
        })
        .await
    }

    async fn next_job(&self, tenant: &TenantId) -> Result<Option<Job>, StoreError> {
        let t = tenant.as_str().to_owned();
        let row = self
            .scoped(tenant, move |tx| {
                Box::pin(async move {
                    tx.query_opt(
                        "select id, kind, subject, payload from upstream_jobs
                          where tenant_id = $1 and status = 'pending'
                          order by priority, id limit 1",
                        &[&t],
                    )
                    .await
                })
            })
            .await?;
        Ok(row.and_then(|r| {
            Some(Job {
                id: r.get(0),
                kind: JobKind::parse(r.get(1))?,
                subject: r.get(2),
                payload: r.get(3),
            })
        }))
    }

    async fn finish_sync_job(
        &self,
        tenant: &TenantId,
        job_id: i64,
        courses: &[UpstreamCourse],
    ) -> Result<ProgressSnapshot, StoreError> {
        let t = tenant.as_str().to_owned();
        let courses = courses.to_vec();
        self.scoped(tenant, move |tx| {
            Box::pin(async move {
                // Claim the job first: a job already done (a replay after a crash between
                // the upstream call and this commit) produces no second effect.
                let claimed = tx
                    .query_opt(
                        "update upstream_jobs set status = 'done', done_at = now(),
                                attempts = attempts + 1
                          where tenant_id = $1 and id = $2 and status = 'pending'
                          returning subject",
                        &[&t, &job_id],
                    )
                    .await?;
                let user: String = match claimed {
                    Some(r) => r.get(0),
                    None => {
                        let r = tx
                            .query_one(
                                "select subject from upstream_jobs where tenant_id = $1 and id = $2",
                                &[&t, &job_id],
                            )
                            .await?;
                        let user: String = r.get(0);
                        return Ok(ProgressSnapshot {
                            user_id: user,
                            courses,
                            synced_at: None,
                        });
                    }
                };
                record_progress_tx(tx, &t, &user, courses).await
            })
        })
        .await
    }

    async fn queue_depth(&self, tenant: &TenantId) -> Result<Vec<(JobPriority, u64)>, StoreError> {
        let t = tenant.as_str().to_owned();
        let rows = self
            .scoped(tenant, move |tx| {
                Box::pin(async move {
                    tx.query(
                        "select priority, count(*) from upstream_jobs
                          where tenant_id = $1 and status = 'pending' group by priority",
                        &[&t],
                    )
                    .await
                })
            })
            .await?;
        let mut out: Vec<(JobPriority, u64)> =
            JobPriority::ALL.into_iter().map(|p| (p, 0)).collect();
        for r in rows {
            if let Some(p) = JobPriority::from_i16(r.get(0)) {
                if let Some(slot) = out.iter_mut().find(|(q, _)| *q == p) {
                    slot.1 = r.get::<_, i64>(1) as u64;
                }
            }
        }
        Ok(out)
    }

    async fn finish_job(
        &self,
        tenant: &TenantId,
        job_id: i64,
        error: Option<&str>,
    ) -> Result<(), StoreError> {
        let t = tenant.as_str().to_owned();
        let error = error.map(str::to_owned);
        self.scoped(tenant, move |tx| {
            Box::pin(async move {
                let status = if error.is_some() { "failed" } else { "done" };
                tx.execute(
                    "update upstream_jobs set status = $3, last_error = $4, done_at = now(),
                            attempts = attempts + 1
                      where tenant_id = $1 and id = $2 and status = 'pending'",
                    &[&t, &job_id, &status, &error],
                )
                .await?;
                schedule::mark_if_sync_settled(tx, &t).await
            })
        })
        .await?;
        Ok(())
    }

    async fn mark_outbox_relayed(
        &self,
        tenant: &TenantId,
        through_seq: i64,
    ) -> Result<(), StoreError> {
        let t = tenant.as_str().to_owned();
        self.scoped(tenant, move |tx| {
            Box::pin(async move { outbox::store_cursor(tx, &t, through_seq).await })
        })
        .await
    }
}
