//! The SCIM unit of work and the `users` table: all of their SQL.
//!
//! [`apply_batch`] is the one transaction of a SCIM micro-batch. It does not decide
//! anything: the pure rules ([`plan_batch`]) fold the events into user states and decide the
//! follow-ups; this module writes what they decided, next to the idempotency records and
//! dead letters, so either all of a batch's effects commit or none do.

use std::collections::{HashMap, HashSet};

use serde_json::Value;
use time::OffsetDateTime;
use tokio_postgres::types::Type;
use tokio_postgres::Transaction;

use super::jobs::{self, JobRow};
use super::{outbox, schedule, secrets, security};
use crate::actors::ports::{
    BatchReport, DeadLetter, JobKind, OutboundRecord, OutboxRecord, ScimBatch,
};
use crate::actors::scim::{plan_batch, FollowUps, Role, ScimEvent, StoredUser, UserChanged};
use crate::actors::TopicKind;

/// The unit of work of one SCIM micro-batch, in the tenant's transaction: idempotency
/// records, the users involved (locked), the rules' plan written out (users, `user_changed`
/// outbox rows, follow-up jobs, readiness mark), dead letters and security events. Moves the
/// relay cursor up to `relayed_through` in the same transaction.
pub async fn apply_batch(
    tx: &Transaction<'_>,
    tenant: &str,
    batch: ScimBatch,
    relayed_through: i64,
) -> Result<BatchReport, tokio_postgres::Error> {
    Ok(apply_batch_returning(
        tx,
        tenant,
        batch,
        relayed_through,
        false,
        Finish::KeepOpen,
        None,
    )
    .await?
    .report)
}

/// A user as a unit of work wrote it, with the row's timestamps.
#[derive(Debug, Clone)]
pub struct WrittenUser {
    pub user: StoredUser,
    pub created: OffsetDateTime,
    pub updated: OffsetDateTime,
}

/// Whether a unit of work may end its transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    /// The caller goes on in the transaction and commits it.
    KeepOpen,
    /// Nothing follows in the transaction: when every event writes its user, the COMMIT is
    /// sent with the writes ([`super::commit_pipelined`]), so the tenant's outbox sequence
    /// row, locked by the writes, is released by a commit already on its way instead of one
    /// the service sends after it got the writes' results. Otherwise the caller commits.
    CommitWithWrites,
}

/// What the caller of [`apply_batch_returning`] already read in its transaction: the
/// events' users, locked by it in id order and read as stored (a user absent from
/// `users` does not exist), and whether the tenant has MindTickle credentials. Its events
/// are new (ids never recorded before: the HTTP writes'), so their idempotency records are
/// written with the batch's writes instead of first. One round trip and two statements
/// fewer than [`apply_batch`]'s reading them.
pub struct Locked<'a> {
    pub users: &'a HashMap<String, StoredUser>,
    pub has_credentials: bool,
}

/// Whether the tenant has MindTickle credentials (a push job is worth queueing).
pub async fn has_upstream_credentials(
    tx: &Transaction<'_>,
    tenant: &str,
) -> Result<bool, tokio_postgres::Error> {
    secrets::has_upstream_credentials(tx, tenant).await
}

/// What [`apply_batch_returning`] did.
#[derive(Debug, Default)]
pub struct BatchWritten {
    pub report: BatchReport,
    /// The users it wrote, as written.
    pub users: Vec<WrittenUser>,
    /// The tenant's owner was notified (`wake_owner` and something was written).
    pub woke: bool,
}

/// [`apply_batch`], also returning the users it wrote (the SCIM provider answers with them
/// instead of reading them back). With `wake_owner`, a batch that changes something also
/// notifies the tenant's owner ([`super::notify_tenant_work`]), sent with its writes.
pub async fn apply_batch_returning(
    tx: &Transaction<'_>,
    tenant: &str,
    batch: ScimBatch,
    relayed_through: i64,
    wake_owner: bool,
    finish: Finish,
    locked: Option<Locked<'_>>,
) -> Result<BatchWritten, tokio_postgres::Error> {
    let mut report = BatchReport::default();
    let mut written = Vec::new();
    let mut woke = false;
    let ScimBatch {
        events,
        delete_policy,
        security_events,
        dead_letters,
    } = batch;
    if !events.is_empty() {
        let ids: Vec<String> = events.iter().map(|e| e.event_id.clone()).collect();
        let id_refs: Vec<&str> = ids.iter().map(String::as_str).collect();
        // The users the events are about: when all of them are written, the caller needs
        // nothing more from the transaction (every answer comes from what was written).
        let about: HashSet<String> = match finish {
            Finish::CommitWithWrites => events.iter().map(|e| e.user.id.clone()).collect(),
            Finish::KeepOpen => HashSet::new(),
        };
        let (seen, current, has_credentials, record_with_writes) = match locked {
            Some(l) => {
                let current = events
                    .iter()
                    .filter_map(|e| l.users.get(&e.user.id))
                    .map(|u| (u.user_id.clone(), u.clone()))
                    .collect();
                (HashSet::new(), current, l.has_credentials, true)
            }
            None => {
                // Pipelined (one round trip): the statements are sent together and run in
                // order. The credentials are read whether or not the plan pushes.
                let (seen, current, has_credentials) = tokio::join!(
                    biased;
                    record_event_ids(tx, tenant, &id_refs),
                    lock_users(tx, tenant, &events),
                    secrets::has_upstream_credentials(tx, tenant),
                );
                // The first failed statement's error, not a later one's "transaction is
                // aborted".
                (seen?, current?, has_credentials?, false)
            }
        };
        // The pure rules decide; the rest of this function only writes their plan.
        let plan = plan_batch(current, &seen, events, delete_policy);
        for (_, outcome) in &plan.outcomes {
            report.count(*outcome);
        }
        let changes = Changes {
            changes: &plan.changes,
            follow_ups: plan.follow_ups,
            has_credentials,
            relayed_through,
        };
        // Pipelined as well: the users upsert, then the outbox rows and follow-ups, then the
        // wake-up (delivered at commit).
        woke = wake_owner && !plan.changes.is_empty();
        let wake = async {
            match woke {
                true => super::notify_tenant_work(tx, tenant).await,
                false => Ok(()),
            }
        };
        let commit = finish == Finish::CommitWithWrites
            && dead_letters.is_empty()
            && security_events.is_empty()
            && relayed_through == 0
            && about
                .iter()
                .all(|id| plan.upserts.iter().any(|u| &u.user_id == id));
        let end = async {
            match commit {
                true => super::commit_pipelined(tx).await,
                false => Ok(()),
            }
        };
        let record = async {
            match record_with_writes {
                true => record_event_ids(tx, tenant, &id_refs).await.map(drop),
                false => Ok(()),
            }
        };
        let (recorded, users, appended, woken, ended) = tokio::join!(
            biased;
            record,
            upsert_users(tx, tenant, plan.upserts),
            append_changes(tx, tenant, changes, &mut report),
            wake,
            end,
        );
        recorded?;
        written = users?;
        appended?;
        woken?;
        ended?;
        if commit {
            return Ok(BatchWritten {
                report,
                users: written,
                woke,
            });
        }
    }
    if !dead_letters.is_empty() {
        write_dead_letters(tx, tenant, dead_letters, relayed_through, &mut report).await?;
    }
    // `outbox::append` carried the cursor when the batch wrote outbox rows.
    if relayed_through > 0 && report.outbox.is_empty() {
        outbox::store_cursor(tx, tenant, relayed_through).await?;
    }
    for event in &security_events {
        security::record(tx, tenant, event.kind, &event.detail).await?;
    }
    Ok(BatchWritten {
        report,
        users: written,
        woke,
    })
}

/// Writes the idempotency records; returns the ids among `ids` processed before.
async fn record_event_ids(
    tx: &Transaction<'_>,
    tenant: &str,
    ids: &[&str],
) -> Result<HashSet<String>, tokio_postgres::Error> {
    let fresh: HashSet<String> = super::statements::query_typed(
        tx,
        "insert into processed_events (tenant_id, event_id)
             select $1, unnest($2::text[]) on conflict do nothing returning event_id",
        &[(&tenant, Type::TEXT), (&ids, Type::TEXT_ARRAY)],
    )
    .await?
    .iter()
    .map(|r| r.get(0))
    .collect();
    Ok(ids
        .iter()
        .filter(|id| !fresh.contains(**id))
        .map(|id| id.to_string())
        .collect())
}

/// The current state of the users the events touch, locked for this transaction (in id
/// order, so concurrent batches of one tenant cannot deadlock).
async fn lock_users(
    tx: &Transaction<'_>,
    tenant: &str,
    events: &[ScimEvent],
) -> Result<HashMap<String, StoredUser>, tokio_postgres::Error> {
    let mut user_ids: Vec<&str> = events.iter().map(|e| e.user.id.as_str()).collect();
    user_ids.sort_unstable();
    user_ids.dedup();
    Ok(super::statements::query_typed(
        tx,
        "select user_id, user_name, email, role, external_id, manager_id, active, deleted,
                    scim, version, source_occurred_at, source_event_id
               from users where tenant_id = $1 and user_id = any($2::text[])
              order by user_id for update",
        &[(&tenant, Type::TEXT), (&user_ids, Type::TEXT_ARRAY)],
    )
    .await?
    .iter()
    .map(|r| {
        let u = row_to_user(r);
        (u.user_id.clone(), u)
    })
    .collect())
}

/// Writes the final state of every user the batch changed, in one statement; returns
/// them with the rows' timestamps.
async fn upsert_users(
    tx: &Transaction<'_>,
    tenant: &str,
    upserts: Vec<StoredUser>,
) -> Result<Vec<WrittenUser>, tokio_postgres::Error> {
    if upserts.is_empty() {
        return Ok(Vec::new());
    }
    let c_id: Vec<&str> = upserts.iter().map(|u| u.user_id.as_str()).collect();
    let c_name: Vec<&str> = upserts.iter().map(|u| u.user_name.as_str()).collect();
    let c_email: Vec<Option<&str>> = upserts.iter().map(|u| u.email.as_deref()).collect();
    let c_role: Vec<&str> = upserts.iter().map(|u| u.role.as_str()).collect();
    let c_ext: Vec<Option<&str>> = upserts.iter().map(|u| u.external_id.as_deref()).collect();
    let c_mgr: Vec<Option<&str>> = upserts.iter().map(|u| u.manager_id.as_deref()).collect();
    let c_active: Vec<bool> = upserts.iter().map(|u| u.active).collect();
    let c_deleted: Vec<bool> = upserts.iter().map(|u| u.deleted).collect();
    let c_scim: Vec<&Value> = upserts.iter().map(|u| &u.resource).collect();
    let c_version: Vec<i64> = upserts.iter().map(|u| u.version).collect();
    let c_at: Vec<OffsetDateTime> = upserts.iter().map(|u| u.occurred_at).collect();
    let c_event: Vec<&str> = upserts.iter().map(|u| u.last_event_id.as_str()).collect();
    let rows = super::statements::query_typed(
        tx,
        "insert into users (tenant_id, user_id, user_name, email, role, external_id,
                            manager_id, active, scim, version, source_occurred_at,
                            source_event_id, deleted)
         select $1, * from unnest($2::text[], $3::text[], $4::text[], $5::text[],
                                  $6::text[], $7::text[], $8::bool[], $9::jsonb[],
                                  $10::int8[], $11::timestamptz[], $12::text[], $13::bool[])
         on conflict (tenant_id, user_id) do update set
             user_name = excluded.user_name, email = excluded.email,
             role = excluded.role, external_id = excluded.external_id,
             manager_id = excluded.manager_id, active = excluded.active,
             scim = excluded.scim, version = excluded.version,
             source_occurred_at = excluded.source_occurred_at,
             source_event_id = excluded.source_event_id, deleted = excluded.deleted,
             updated_at = now()
         returning user_id, created_at, updated_at",
        &[
            (&tenant, Type::TEXT),
            (&c_id, Type::TEXT_ARRAY),
            (&c_name, Type::TEXT_ARRAY),
            (&c_email, Type::TEXT_ARRAY),
            (&c_role, Type::TEXT_ARRAY),
            (&c_ext, Type::TEXT_ARRAY),
            (&c_mgr, Type::TEXT_ARRAY),
            (&c_active, Type::BOOL_ARRAY),
            (&c_scim, Type::JSONB_ARRAY),
            (&c_version, Type::INT8_ARRAY),
            (&c_at, Type::TIMESTAMPTZ_ARRAY),
            (&c_event, Type::TEXT_ARRAY),
            (&c_deleted, Type::BOOL_ARRAY),
        ],
    )
    .await?;
    let mut stamps: HashMap<String, (OffsetDateTime, OffsetDateTime)> = rows
        .iter()
        .map(|r| (r.get(0), (r.get(1), r.get(2))))
        .collect();
    Ok(upserts
        .into_iter()
        .filter_map(|user| {
            let (created, updated) = stamps.remove(&user.user_id)?;
            Some(WrittenUser {
                user,
                created,
                updated,
            })
        })
        .collect())
}

/// What a plan asks [`append_changes`] to write.
struct Changes<'a> {
    changes: &'a [UserChanged],
    follow_ups: FollowUps,
    /// The tenant has MindTickle credentials (a push job is worth queueing).
    has_credentials: bool,
    relayed_through: i64,
}

/// Appends one `user_changed` outbox row per change and writes the rules' follow-ups: a
/// MindTickle push per change (when the tenant has an account there) and the readiness
/// mark, the three statements pipelined. The rows go into the report for the relay.
async fn append_changes(
    tx: &Transaction<'_>,
    tenant: &str,
    c: Changes<'_>,
    report: &mut BatchReport,
) -> Result<(), tokio_postgres::Error> {
    if c.changes.is_empty() {
        return Ok(());
    }
    // Serialised once: the same text becomes the jsonb row, the push job's payload and the
    // Kafka record.
    let payloads: Vec<String> = c
        .changes
        .iter()
        .map(|c| serde_json::to_string(c).unwrap_or_else(|_| "null".into()))
        .collect();
    let keys: Vec<&str> = c.changes.iter().map(|c| c.user_id.as_str()).collect();
    let texts: Vec<&str> = payloads.iter().map(String::as_str).collect();
    let jobs: Vec<JobRow<'_>> = match c.follow_ups.push_changes {
        Some(priority) if c.has_credentials => keys
            .iter()
            .zip(&texts)
            .map(|(subject, payload)| JobRow {
                priority,
                kind: JobKind::PushUser,
                subject,
                payload: Some(payload),
            })
            .collect(),
        _ => Vec::new(),
    };
    let mark = async {
        match c.follow_ups.readiness {
            Some(mark) => schedule::mark_changed(tx, tenant, mark).await,
            None => Ok(()),
        }
    };
    let (first, queued, marked) = tokio::join!(
        biased;
        outbox::append(
            tx,
            tenant,
            TopicKind::UserChanged,
            &keys,
            &texts,
            c.relayed_through,
        ),
        jobs::enqueue(tx, tenant, &jobs),
        mark,
    );
    let (first, queued) = (first?, queued?);
    marked?;
    report.jobs_queued = queued.len() as u64;
    report.outbox = keys
        .iter()
        .zip(payloads)
        .zip(first..)
        .map(|((key, payload), seq)| OutboxRecord {
            seq,
            topic: TopicKind::UserChanged,
            key: Some(key.as_bytes().to_vec()),
            payload: payload.into_bytes(),
            headers: Vec::new(),
        })
        .collect();
    Ok(())
}

/// Records the batch's dead letters and appends the DLQ records of those whose source
/// offset was not dead-lettered before (a replayed batch publishes nothing twice).
async fn write_dead_letters(
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

/// The tenant's user roster as provisioned by SCIM (active and deactivated).
pub async fn roster(tx: &Transaction<'_>, t: &str) -> Result<Vec<Value>, tokio_postgres::Error> {
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
}

/// True when the user exists in the tenant's SCIM roster.
pub async fn exists(
    tx: &Transaction<'_>,
    t: &str,
    user: &str,
) -> Result<bool, tokio_postgres::Error> {
    Ok(tx
        .query_opt(
            "select 1 from users where tenant_id = $1 and user_id = $2",
            &[&t, &user],
        )
        .await?
        .is_some())
}

/// The tenant's active users, in id order.
pub async fn active_ids(
    tx: &Transaction<'_>,
    t: &str,
) -> Result<Vec<String>, tokio_postgres::Error> {
    Ok(tx
        .query(
            "select user_id from users where tenant_id = $1 and active order by user_id",
            &[&t],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect())
}

pub(super) fn row_to_user(r: &tokio_postgres::Row) -> StoredUser {
    StoredUser {
        user_id: r.get("user_id"),
        user_name: r.get("user_name"),
        email: r.get("email"),
        role: Role::parse(r.get("role")).unwrap_or(Role::Rep),
        external_id: r.get("external_id"),
        manager_id: r.get("manager_id"),
        active: r.get("active"),
        deleted: r.get("deleted"),
        resource: r.get("scim"),
        version: r.get("version"),
        occurred_at: r.get("source_occurred_at"),
        last_event_id: r.get("source_event_id"),
    }
}
