//! The transactional outbox and its relay cursor (migration 0007).
//!
//! Every writer appends through [`append`], inside its own tenant-scoped transaction:
//! the rows get consecutive per-tenant `seq`s allocated from the tenant's `outbox_relay`
//! row, whose lock is held until commit. A tenant's outbox writers (its SCIM batches,
//! progress syncs, quiz submissions, readiness reports) therefore commit in `seq` order,
//! so "everything up to `relayed_seq` was published" is one number per tenant instead of
//! a `sent_at` update per row.
//!
//! Dead letters use [`append_raw`]: their bytes need not be JSON.
//!
//! Lock order: call [`append`] before touching `readiness_schedule` (every writer does).

use tokio_postgres::types::Type;
use tokio_postgres::Transaction;

use crate::actors::ports::{OutboundRecord, OutboxRecord};

/// The CTE both appends start with: allocates `$5` consecutive seqs from the tenant's
/// `outbox_relay` row (locking it to commit) and carries the relay cursor `$6`; `$1` is
/// the tenant. A macro so each statement stays one literal.
macro_rules! seq_allocation {
    () => {
        "with alloc as (
             insert into outbox_relay as r (tenant_id, next_seq) values ($1, 1 + $5::int8)
             on conflict (tenant_id) do update set
                 next_seq = r.next_seq + $5::int8,
                 relayed_seq = greatest(r.relayed_seq, $6::int8),
                 relayed_at = case when $6::int8 > r.relayed_seq then now()
                                   else r.relayed_at end
             returning next_seq - $5::int8 as first),"
    };
}
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
    let rows = super::statements::query_typed(
        tx,
        concat!(
            seq_allocation!(),
            "
             ins as (
                 insert into outbox (tenant_id, topic, message_key, payload, seq)
                 select $1, $2, x.k, x.p::jsonb, alloc.first + x.n - 1
                   from alloc, unnest($3::text[], $4::text[]) with ordinality as x(k, p, n)
                 returning 1)
             select first, (select count(*) from ins) from alloc"
        ),
        &[
            (&tenant, Type::TEXT),
            (&topic.suffix(), Type::TEXT),
            (&keys, Type::TEXT_ARRAY),
            (&payloads, Type::TEXT_ARRAY),
            (&n, Type::INT8),
            (&relayed_through, Type::INT8),
        ],
    )
    .await?;
    // The allocation's upsert always returns its one row.
    Ok(rows.first().map_or(0, |r| r.get(0)))
}

/// Appends raw records (bytes that need not be JSON: dead letters) to the tenant's outbox
/// under consecutive seqs, like [`append`]. Returns the first seq.
pub async fn append_raw(
    tx: &Transaction<'_>,
    tenant: &str,
    records: &[&OutboundRecord],
    relayed_through: i64,
) -> Result<i64, tokio_postgres::Error> {
    let n = records.len() as i64;
    let topics: Vec<&str> = records.iter().map(|r| r.topic.suffix()).collect();
    let keys: Vec<Option<&[u8]>> = records.iter().map(|r| r.key.as_deref()).collect();
    let payloads: Vec<&[u8]> = records.iter().map(|r| r.payload.as_slice()).collect();
    // Headers travel as one text[] and one bytea[] per row, packed as JSON-free arrays of
    // (row, name, value) so rows with different header counts fit one statement.
    let mut h_row: Vec<i64> = Vec::new();
    let mut h_name: Vec<&str> = Vec::new();
    let mut h_value: Vec<&[u8]> = Vec::new();
    for (i, r) in records.iter().enumerate() {
        for (k, v) in &r.headers {
            h_row.push(i as i64 + 1);
            h_name.push(k);
            h_value.push(v);
        }
    }
    let row = tx
        .query_one(
            concat!(
            seq_allocation!(),
            "
             hdr as (
                 select h.r, array_agg(h.k order by h.o) as names, array_agg(h.v order by h.o) as vals
                   from unnest($7::int8[], $8::text[], $9::bytea[]) with ordinality as h(r, k, v, o)
                  group by h.r),
             ins as (
                 insert into outbox (tenant_id, topic, message_key, raw_key, raw_payload,
                                     header_names, header_values, seq)
                 select $1, x.t, '', x.k, x.p, hdr.names, hdr.vals, alloc.first + x.n - 1
                   from alloc,
                        unnest($2::text[], $3::bytea[], $4::bytea[]) with ordinality as x(t, k, p, n)
                   left join hdr on hdr.r = x.n
                 returning 1)
             select first, (select count(*) from ins) from alloc"
            ),
            &[
                &tenant,
                &topics,
                &keys,
                &payloads,
                &n,
                &relayed_through,
                &h_row,
                &h_name,
                &h_value,
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
    super::statements::query_typed(
        tx,
        "update outbox_relay set relayed_seq = $2, relayed_at = now()
          where tenant_id = $1 and relayed_seq < $2",
        &[(&tenant, Type::TEXT), (&through_seq, Type::INT8)],
    )
    .await?;
    Ok(())
}

/// Rows not yet relayed, in `seq` order, at most `limit`: those after the stored relay
/// cursor and after `after` (what the caller knows it relayed already).
pub async fn pending(
    tx: &Transaction<'_>,
    tenant: &str,
    after: i64,
    limit: usize,
) -> Result<Vec<OutboxRecord>, tokio_postgres::Error> {
    let limit = limit as i64;
    let rows = super::statements::query_typed(
        tx,
        "select seq, topic, message_key, payload::text, raw_key, raw_payload,
                    header_names, header_values
               from outbox
              where tenant_id = $1
                and seq > greatest($2, (select relayed_seq from outbox_relay
                                         where tenant_id = $1))
              order by seq limit $3",
        &[
            (&tenant, Type::TEXT),
            (&after, Type::INT8),
            (&limit, Type::INT8),
        ],
    )
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
