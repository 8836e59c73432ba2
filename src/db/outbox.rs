//! The transactional outbox and its relay cursor (migration 0007).
//!
//! Every writer appends through [`append`], inside its own tenant-scoped transaction:
//! the rows get consecutive per-tenant `seq`s allocated from the tenant's `outbox_relay`
//! row, whose lock is held until commit. A tenant's outbox writers (its SCIM batches,
//! progress syncs, quiz submissions, readiness reports) therefore commit in `seq` order,
//! so "everything up to `relayed_seq` was published" is one number per tenant instead of
//! a `sent_at` update per row.
//!
//! Lock order: call [`append`] before touching `readiness_schedule` (every writer does).

use tokio_postgres::Transaction;

use crate::actors::TopicKind;

/// Appends rows (key, JSON text) to the tenant's outbox under consecutive seqs and moves
/// the relay cursor up to `relayed_through` (0: leave it) in the same statement. Returns
/// the first seq (the rows have `first .. first + keys.len()`).
pub async fn append(
    tx: &Transaction<'_>,
    tenant: &str,
    topic: TopicKind,
    keys: &[&str],
    payloads: &[&str],
    relayed_through: i64,
) -> Result<i64, tokio_postgres::Error> {
    let n = keys.len() as i64;
    let row = tx
        .query_one(
            "with alloc as (
                 insert into outbox_relay as r (tenant_id, next_seq) values ($1, 1 + $5::int8)
                 on conflict (tenant_id) do update set
                     next_seq = r.next_seq + $5::int8,
                     relayed_seq = greatest(r.relayed_seq, $6::int8),
                     relayed_at = case when $6::int8 > r.relayed_seq then now()
                                       else r.relayed_at end
                 returning next_seq - $5::int8 as first),
             ins as (
                 insert into outbox (tenant_id, topic, message_key, payload, seq)
                 select $1, $2, x.k, x.p::jsonb, alloc.first + x.n - 1
                   from alloc, unnest($3::text[], $4::text[]) with ordinality as x(k, p, n)
                 returning 1)
             select first, (select count(*) from ins) from alloc",
            &[
                &tenant,
                &topic.suffix(),
                &keys,
                &payloads,
                &n,
                &relayed_through,
            ],
        )
        .await?;
    Ok(row.get(0))
}

/// Moves the tenant's relay cursor up to `through_seq` (never back).
pub async fn store_cursor(
    tx: &Transaction<'_>,
    tenant: &str,
    through_seq: i64,
) -> Result<(), tokio_postgres::Error> {
    tx.execute(
        "update outbox_relay set relayed_seq = $2, relayed_at = now()
          where tenant_id = $1 and relayed_seq < $2",
        &[&tenant, &through_seq],
    )
    .await?;
    Ok(())
}
