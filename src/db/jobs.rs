//! The durable per-tenant upstream queue (`upstream_jobs`, migration 0004): all of its SQL.
//!
//! Every job enters through [`enqueue`], whoever queues it (a SCIM batch's pushes, a user's
//! sync request, a full refresh, the aggregator's refresh of stale progress); the tenant's
//! job pump takes them in priority order with [`next`] and settles them with [`finish`].

use tokio_postgres::types::Type;
use tokio_postgres::Transaction;

use crate::actors::ports::{Job, JobKind, JobPriority};

/// A job to queue. `payload` is JSON text (`None`: `{}`), so a SCIM push can carry the very
/// text of its `user_changed` record without serialising it again.
pub struct JobRow<'a> {
    pub priority: JobPriority,
    pub kind: JobKind,
    /// The user the job is about.
    pub subject: &'a str,
    pub payload: Option<&'a str>,
}

/// Queues the jobs, in order; returns their ids.
pub async fn enqueue(
    tx: &Transaction<'_>,
    tenant: &str,
    jobs: &[JobRow<'_>],
) -> Result<Vec<i64>, tokio_postgres::Error> {
    if jobs.is_empty() {
        return Ok(Vec::new());
    }
    let priorities: Vec<i16> = jobs.iter().map(|j| j.priority as i16).collect();
    let kinds: Vec<&str> = jobs.iter().map(|j| j.kind.as_str()).collect();
    let subjects: Vec<&str> = jobs.iter().map(|j| j.subject).collect();
    let payloads: Vec<Option<&str>> = jobs.iter().map(|j| j.payload).collect();
    Ok(super::statements::query_typed(
        tx,
        "insert into upstream_jobs (tenant_id, priority, kind, subject, payload)
             select $1, j.priority, j.kind, j.subject, coalesce(j.payload::jsonb, '{}'::jsonb)
               from unnest($2::int2[], $3::text[], $4::text[], $5::text[])
                    with ordinality as j(priority, kind, subject, payload, n)
              order by j.n
             returning id",
        &[
            (&tenant, Type::TEXT),
            (&priorities, Type::INT2_ARRAY),
            (&kinds, Type::TEXT_ARRAY),
            (&subjects, Type::TEXT_ARRAY),
            (&payloads, Type::TEXT_ARRAY),
        ],
    )
    .await?
    .iter()
    .map(|r| r.get(0))
    .collect())
}

/// Queues a job of `kind` about the whole tenant (subject `""`), unless one is pending;
/// true when queued.
pub async fn enqueue_unless_pending(
    tx: &Transaction<'_>,
    tenant: &str,
    priority: JobPriority,
    kind: JobKind,
) -> Result<bool, tokio_postgres::Error> {
    let n = tx
        .execute(
            "insert into upstream_jobs (tenant_id, priority, kind, subject)
             select $1, $2, $3, ''
              where not exists (select 1 from upstream_jobs
                                 where tenant_id = $1 and kind = $3 and status = 'pending')",
            &[&tenant, &(priority as i16), &kind.as_str()],
        )
        .await?;
    Ok(n == 1)
}

/// Queues a progress sync at `priority` for each of `users` (in order) that has none
/// pending, at most `limit`; returns how many were queued.
pub async fn enqueue_syncs(
    tx: &Transaction<'_>,
    tenant: &str,
    priority: JobPriority,
    users: &[String],
    limit: i64,
) -> Result<u64, tokio_postgres::Error> {
    let rows = tx
        .query(
            "select u.user_id from unnest($2::text[]) with ordinality as u(user_id, n)
              where not exists (select 1 from upstream_jobs j
                                 where j.tenant_id = $1 and j.status = 'pending'
                                   and j.kind = 'sync_progress' and j.subject = u.user_id)
              order by u.n limit $3",
            &[&tenant, &users, &limit],
        )
        .await?;
    let subjects: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
    let jobs: Vec<JobRow<'_>> = subjects
        .iter()
        .map(|s| JobRow {
            priority,
            kind: JobKind::SyncProgress,
            subject: s,
            payload: None,
        })
        .collect();
    Ok(enqueue(tx, tenant, &jobs).await?.len() as u64)
}

/// The next pending job in priority order.
pub async fn next(
    tx: &Transaction<'_>,
    tenant: &str,
) -> Result<Option<Job>, tokio_postgres::Error> {
    let row = tx
        .query_opt(
            "select id, kind, subject, payload from upstream_jobs
              where tenant_id = $1 and status = 'pending'
              order by priority, id limit 1",
            &[&tenant],
        )
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

/// Marks a pending job done (or failed with `error`). False when it was not pending (a
/// replay after a crash between the upstream call and this commit): its effect must not
/// happen twice.
pub async fn finish(
    tx: &Transaction<'_>,
    tenant: &str,
    id: i64,
    error: Option<&str>,
) -> Result<bool, tokio_postgres::Error> {
    let status = if error.is_some() { "failed" } else { "done" };
    let n = tx
        .execute(
            "update upstream_jobs set status = $3, last_error = $4, done_at = now(),
                    attempts = attempts + 1
              where tenant_id = $1 and id = $2 and status = 'pending'",
            &[&tenant, &id, &status, &error],
        )
        .await?;
    Ok(n == 1)
}

/// The subject (user) of a job.
pub async fn subject(
    tx: &Transaction<'_>,
    tenant: &str,
    id: i64,
) -> Result<String, tokio_postgres::Error> {
    Ok(tx
        .query_one(
            "select subject from upstream_jobs where tenant_id = $1 and id = $2",
            &[&tenant, &id],
        )
        .await?
        .get(0))
}

/// Pending jobs per priority.
pub async fn depth(
    tx: &Transaction<'_>,
    tenant: &str,
) -> Result<Vec<(JobPriority, u64)>, tokio_postgres::Error> {
    let rows = tx
        .query(
            "select priority, count(*) from upstream_jobs
              where tenant_id = $1 and status = 'pending' group by priority",
            &[&tenant],
        )
        .await?;
    let mut out: Vec<(JobPriority, u64)> = JobPriority::ALL.into_iter().map(|p| (p, 0)).collect();
    for r in rows {
        if let Some(p) = JobPriority::from_i16(r.get(0)) {
            if let Some(slot) = out.iter_mut().find(|(q, _)| *q == p) {
                slot.1 = r.get::<_, i64>(1) as u64;
            }
        }
    }
    Ok(out)
}
