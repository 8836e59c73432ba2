//! Shared inbound partitions: many small tenants on `<prefix>shared.scim`, keyed by tenant
//! id, behind the same [`PartitionFeed`] port as a tenant's own topic.
//!
//! - Each assigned shared partition has a demultiplexer task ([`demux`]): it takes the
//!   partition's records in order and appends each to its tenant's [`SharedTenantQueue`].
//!   The queue is bounded (`kafka.shared_buffer_records`): a full one makes the
//!   demultiplexer wait, so the tenants of one shared partition share its throughput.
//! - A record that names no tenant of this partition (no key or an invalid id, an unknown
//!   tenant, a tenant with its own topics, a suspended tenant, a tenant whose id hashes to
//!   another partition) is dead-lettered on `<prefix>shared.scim.dlq`, same partition,
//!   with `dlq.reason`; it is never applied to any tenant.
//! - The partition's offset moves to the lowest record not yet stored by its tenant's
//!   actor or dead-lettered ([`PendingOffsets`]): nothing accepted is skipped by a commit.
//! - A tenant's queue holds exactly the records its actors have not stored; a feed reads it
//!   with a cursor, and a restarted actor rewinds by starting the cursor again at 0.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use rdkafka::consumer::stream_consumer::StreamPartitionQueue;
use rdkafka::consumer::Consumer;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;

use super::feed::to_record;
use super::{HubConsumer, HubContext, KafkaHub, SharedBook};
use crate::actors::events::{FeedReceiveFailed, InternalEvent};
use crate::actors::metric_names as m;
use crate::actors::ports::{FeedError, InboundRecord, PartitionFeed};
use crate::actors::{TenantId, TopicKind};
use crate::db::{Registry, RegistryLayout};
use crate::kafka::layout::shared_topic;

/// Offsets of one shared partition handed to tenant queues and not yet stored.
#[derive(Debug)]
pub(super) struct PendingOffsets {
    pending: BTreeSet<i64>,
    /// One past the last record taken off the partition (-1: none yet).
    read_until: i64,
    /// The last offset handed to the consumer to commit (-1: none).
    stored: i64,
}

impl Default for PendingOffsets {
    fn default() -> Self {
        Self {
            pending: BTreeSet::new(),
            read_until: -1,
            stored: -1,
        }
    }
}

impl PendingOffsets {
    /// A record was handed to a tenant queue.
    pub(super) fn taken(&mut self, offset: i64) {
        self.pending.insert(offset);
        self.read_until = self.read_until.max(offset + 1);
    }

    /// A record was dealt with on the spot (dead-lettered).
    pub(super) fn settled(&mut self, offset: i64) {
        self.read_until = self.read_until.max(offset + 1);
    }

    /// Records whose effects are committed.
    pub(super) fn done(&mut self, offsets: impl IntoIterator<Item = i64>) {
        for o in offsets {
            self.pending.remove(&o);
        }
    }

    /// Whether this record was taken already (a stray duplicate).
    pub(super) fn seen(&self, offset: i64) -> bool {
        offset < self.read_until
    }

    /// The next offset to commit, when it moved since it was last returned: the lowest
    /// pending record, or one past the last record taken when none is pending.
    pub(super) fn committable(&mut self) -> Option<i64> {
        let next = self.pending.first().copied().unwrap_or(self.read_until);
        (next > self.stored).then(|| {
            self.stored = next;
            next
        })
    }
}

/// One assigned partition of the shared inbound topic.
pub(super) struct SharedPartition {
    pub(super) partition: i32,
    pub(super) topic: String,
    pub(super) offsets: Mutex<PendingOffsets>,
    /// Stops the demultiplexer (revocation, re-created consumer, shutdown).
    pub(super) stop: CancellationToken,
}

impl SharedPartition {
    /// Hands the partition's next committable offset to the consumer.
    pub(super) fn store(&self, consumer: &HubConsumer) {
        let next = self
            .offsets
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .committable();
        if let Some(next) = next {
            // librdkafka stores `offset + 1`: hand it the last settled offset.
            if let Err(e) = consumer.store_offset(&self.topic, self.partition, next - 1) {
                tracing::debug!(partition = self.partition, error = %e, "storing a shared offset");
            }
        }
    }
}

/// The split queue of one shared partition, kept across assignments (as a tenant's).
pub(super) struct SharedSplit {
    pub(super) queue: StreamPartitionQueue<HubContext>,
    pub(super) strays_tx: mpsc::UnboundedSender<InboundRecord>,
    pub(super) strays_rx: tokio::sync::Mutex<mpsc::UnboundedReceiver<InboundRecord>>,
}

#[derive(Default)]
struct QueueState {
    /// Records not yet stored by the tenant's actors, in offset order.
    buf: VecDeque<InboundRecord>,
    /// How many of them the current actor has read.
    cursor: usize,
    /// The tenant left this instance or was suspended: nothing more is queued.
    closed: bool,
}

/// One shared tenant's records, between the demultiplexer and the tenant's actor.
pub(super) struct SharedTenantQueue {
    pub(super) partition: Arc<SharedPartition>,
    state: Mutex<QueueState>,
    arrived: Notify,
    space: Notify,
    capacity: usize,
}

impl SharedTenantQueue {
    pub(super) fn new(partition: Arc<SharedPartition>, capacity: usize) -> Self {
        Self {
            partition,
            state: Mutex::new(QueueState::default()),
            arrived: Notify::new(),
            space: Notify::new(),
            capacity: capacity.max(1),
        }
    }

    fn with<R>(&self, f: impl FnOnce(&mut QueueState) -> R) -> R {
        f(&mut self.state.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Appends a record, waiting while the queue is full. A closed queue hands the record
    /// back.
    pub(super) async fn push(&self, rec: InboundRecord) -> Result<(), InboundRecord> {
        let mut rec = Some(rec);
        loop {
            let space = self.space.notified();
            tokio::pin!(space);
            space.as_mut().enable();
            let pushed = self.with(|s| {
                if s.closed {
                    Some(false)
                } else if s.buf.len() < self.capacity {
                    s.buf.extend(rec.take());
                    Some(true)
                } else {
                    None
                }
            });
            match (pushed, rec.take()) {
                (Some(true), _) => {
                    self.arrived.notify_waiters();
                    return Ok(());
                }
                (Some(false), Some(r)) => return Err(r),
                (_, r) => rec = r,
            }
            space.await;
        }
    }

    /// The next record the current actor has not read. Cancellation safe.
    async fn next(&self) -> InboundRecord {
        loop {
            let arrived = self.arrived.notified();
            tokio::pin!(arrived);
            arrived.as_mut().enable();
            let got = self.with(|s| {
                let r = s.buf.get(s.cursor).cloned();
                if r.is_some() {
                    s.cursor += 1;
                }
                r
            });
            if let Some(r) = got {
                return r;
            }
            arrived.await;
        }
    }

    /// Returns once the queue holds a record not stored (a passivated tenant wakes).
    pub(super) async fn until_record(&self) {
        loop {
            let arrived = self.arrived.notified();
            tokio::pin!(arrived);
            arrived.as_mut().enable();
            if self.with(|s| !s.buf.is_empty()) {
                return;
            }
            arrived.await;
        }
    }

    /// A new actor reads from the first record not stored.
    pub(super) fn rewind(&self) {
        self.with(|s| s.cursor = 0);
    }

    /// Drops the records before `next_offset` (their effects are committed); returns their
    /// offsets.
    fn stored(&self, next_offset: i64) -> Vec<i64> {
        let done = self.with(|s| {
            let mut done = Vec::new();
            while s.buf.front().is_some_and(|r| r.offset < next_offset) {
                if let Some(r) = s.buf.pop_front() {
                    done.push(r.offset);
                }
                s.cursor = s.cursor.saturating_sub(1);
            }
            done
        });
        self.space.notify_waiters();
        done
    }

    /// Closes the queue and takes every record not stored (the tenant was suspended: they
    /// are dead-lettered).
    pub(super) fn take_all(&self) -> Vec<InboundRecord> {
        let all = self.with(|s| {
            s.cursor = 0;
            s.closed = true;
            std::mem::take(&mut s.buf)
        });
        self.space.notify_waiters();
        all.into()
    }
}

/// The feed of a tenant on a shared partition.
pub(super) struct SharedFeed {
    pub(super) consumer: Arc<HubConsumer>,
    pub(super) q: Arc<SharedTenantQueue>,
}

#[async_trait]
impl PartitionFeed for SharedFeed {
    async fn recv(&self) -> Result<InboundRecord, FeedError> {
        Ok(self.q.next().await)
    }

    fn store_offset(&self, next_offset: i64) -> Result<(), FeedError> {
        let done = self.q.stored(next_offset);
        let part = &self.q.partition;
        part.offsets
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .done(done);
        part.store(&self.consumer);
        Ok(())
    }

    fn contiguous(&self) -> bool {
        false
    }
}

/// Why a record on a shared partition belongs to none of its tenants (`dlq.reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Unroutable {
    /// No key, or a key that is not a tenant id.
    NoTenantKey,
    UnknownTenant,
    /// The tenant has topics of its own: a record naming it here is never applied to it.
    TenantHasOwnTopics,
    TenantSuspended,
    /// The key hashes to another partition (the producer did not use Kafka's default
    /// partitioner): applying it here would break the tenant's order.
    WrongPartition,
}

impl Unroutable {
    pub(super) fn as_str(self) -> &'static str {
        match self {
            Unroutable::NoTenantKey => "no_tenant_key",
            Unroutable::UnknownTenant => "unknown_tenant",
            Unroutable::TenantHasOwnTopics => "tenant_has_own_topics",
            Unroutable::TenantSuspended => "tenant_suspended",
            Unroutable::WrongPartition => "wrong_partition",
        }
    }
}

/// The tenant a shared record's key names, if it is a valid id.
fn key_tenant(rec: &InboundRecord) -> Option<TenantId> {
    let key = std::str::from_utf8(rec.key.as_deref()?).ok()?;
    TenantId::parse(key).ok()
}

/// Publishes a record on the shared DLQ (same partition), retrying until the broker
/// acknowledges it or the partition is stopped (then the record is read again by the
/// next owner: nothing is dropped). Payloads too large with the `dlq.*` headers are cut
/// to fit and say so.
pub(super) async fn dead_letter(
    producer: &FutureProducer,
    part: &SharedPartition,
    dlq_topic: &str,
    max_record_bytes: usize,
    rec: &InboundRecord,
    reason: Unroutable,
) -> bool {
    const DLQ_OVERHEAD: usize = 4096;
    let key_len = rec.key.as_ref().map_or(0, Vec::len);
    let room = max_record_bytes.saturating_sub(DLQ_OVERHEAD + key_len);
    let original_headers: usize = rec.headers.iter().map(|(k, v)| k.len() + v.len()).sum();
    let keep_headers = original_headers <= room / 2;
    let room = room.saturating_sub(if keep_headers { original_headers } else { 0 });
    let payload = &rec.payload[..rec.payload.len().min(room)];
    let source_offset = rec.offset.to_string();
    let source_partition = part.partition.to_string();
    let original_len = rec.payload.len().to_string();
    let mut attempt = 0u32;
    loop {
        let mut headers = OwnedHeaders::new();
        if keep_headers {
            for (k, v) in &rec.headers {
                headers = headers.insert(Header {
                    key: k,
                    value: Some(v.as_slice()),
                });
            }
        }
        for (key, value) in [
            ("dlq.reason", reason.as_str()),
            ("dlq.source.topic", part.topic.as_str()),
            ("dlq.source.partition", source_partition.as_str()),
            ("dlq.source.offset", source_offset.as_str()),
        ] {
            headers = headers.insert(Header {
                key,
                value: Some(value.as_bytes()),
            });
        }
        if payload.len() < rec.payload.len() {
            headers = headers.insert(Header {
                key: "dlq.payload.truncated_from",
                value: Some(original_len.as_bytes()),
            });
        }
        let mut record = FutureRecord::to(dlq_topic)
            .partition(part.partition)
            .payload(payload)
            .headers(headers);
        if let Some(k) = &rec.key {
            record = record.key(k.as_slice());
        }
        let sent = tokio::select! {
            _ = part.stop.cancelled() => return false,
            r = producer.send(record, Duration::from_secs(30)) => r,
        };
        match sent {
            Ok(_) => {
                tracing::warn!(
                    partition = part.partition,
                    offset = rec.offset,
                    reason = reason.as_str(),
                    "record on a shared partition dead-lettered"
                );
                metrics::counter!(m::SHARED_RECORDS_DEAD_LETTERED_TOTAL, "reason" => reason.as_str())
                    .increment(1);
                return true;
            }
            Err((e, _)) => {
                attempt = attempt.saturating_add(1);
                tracing::warn!(partition = part.partition, error = %e, "shared dead letter failed; retrying");
                let pause =
                    Duration::from_millis(200u64.saturating_mul(u64::from(attempt.min(25))));
                tokio::select! {
                    _ = part.stop.cancelled() => return false,
                    _ = tokio::time::sleep(pause) => {}
                }
            }
        }
    }
}

/// Takes one shared partition's records in order and routes each to its tenant's queue,
/// or dead-letters it. Runs until the partition is revoked (its `stop` token).
pub(super) async fn demux(
    hub: Arc<KafkaHub>,
    part: Arc<SharedPartition>,
    split: Arc<SharedSplit>,
    registry: Registry,
) {
    let dlq_topic = shared_topic(hub.layout.prefix(), TopicKind::Dlq);
    let mut strays = split.strays_rx.lock().await;
    loop {
        let rec = tokio::select! {
            _ = part.stop.cancelled() => return,
            m = split.queue.recv() => match m {
                Ok(m) => to_record(&m),
                Err(e) => {
                    FeedReceiveFailed { tenant: None, kind: "shared", error: &e }.emit();
                    continue;
                }
            },
            Some(r) = strays.recv() => r,
        };
        if part
            .offsets
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .seen(rec.offset)
        {
            continue;
        }
        let offset = rec.offset;
        let refused = match hub.route_shared(&part, &rec, &registry).await {
            Ok(queue) => {
                part.offsets
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .taken(offset);
                let pushed = tokio::select! {
                    _ = part.stop.cancelled() => return,
                    r = queue.push(rec) => r,
                };
                // A queue closed meanwhile: its tenant was suspended.
                pushed.err().map(|r| (r, Unroutable::TenantSuspended))
            }
            Err(reason) => Some((rec, reason)),
        };
        if let Some((rec, reason)) = refused {
            if !hub
                .dead_letter_shared(&part, &dlq_topic, &rec, reason)
                .await
            {
                return;
            }
        }
    }
}

impl KafkaHub {
    /// Dead-letters a record of a shared partition, then lets the partition's offset pass
    /// it. False when the partition was stopped first (the record is read again).
    pub(super) async fn dead_letter_shared(
        &self,
        part: &SharedPartition,
        dlq_topic: &str,
        rec: &InboundRecord,
        reason: Unroutable,
    ) -> bool {
        if !dead_letter(
            &self.producer,
            part,
            dlq_topic,
            self.max_record_bytes,
            rec,
            reason,
        )
        .await
        {
            return false;
        }
        {
            let mut offsets = part.offsets.lock().unwrap_or_else(|p| p.into_inner());
            offsets.done([rec.offset]);
            offsets.settled(rec.offset);
        }
        part.store(&self.consumer());
        true
    }

    /// The queue of a shared tenant owned here.
    pub(super) fn shared_queue(&self, tenant: &TenantId) -> Option<Arc<SharedTenantQueue>> {
        SharedBook::lock(&self.shared.queues).get(tenant).cloned()
    }

    /// Runs a shared tenant here: its queue on `part`, owned, its actor assigned.
    pub(super) fn adopt_shared(
        &self,
        tenant: &TenantId,
        part: &Arc<SharedPartition>,
    ) -> Arc<SharedTenantQueue> {
        let q = {
            let mut queues = SharedBook::lock(&self.shared.queues);
            if let Some(q) = queues.get(tenant) {
                return q.clone();
            }
            let q = Arc::new(SharedTenantQueue::new(part.clone(), self.shared_capacity));
            queues.insert(tenant.clone(), q.clone());
            q
        };
        self.health.with(|s| s.owned.insert(tenant.clone()));
        self.sink.assign(vec![tenant.clone()]);
        q
    }

    /// A shared partition was assigned: starts its demultiplexer and the active shared
    /// tenants whose ids hash to it.
    pub(super) fn start_shared(self: &Arc<Self>, partition: i32, registry: &Registry) {
        let Some(split) = SharedBook::lock(&self.shared.splits)
            .get(&partition)
            .cloned()
        else {
            tracing::warn!(
                partition,
                "assigned a shared partition that was never split"
            );
            return;
        };
        let part = Arc::new(SharedPartition {
            partition,
            topic: shared_topic(self.layout.prefix(), TopicKind::Scim),
            offsets: Mutex::new(PendingOffsets::default()),
            stop: CancellationToken::new(),
        });
        if let Some(old) = SharedBook::lock(&self.shared.parts).insert(partition, part.clone()) {
            old.stop.cancel();
        }
        let n = self.layout.shared_partitions();
        let tenants: Vec<TenantId> = SharedBook::lock(&self.shared_registry)
            .iter()
            .filter(|(t, active)| **active && t.shared_partition(n) == partition)
            .map(|(t, _)| t.clone())
            .collect();
        let mut started = Vec::with_capacity(tenants.len());
        {
            let mut queues = SharedBook::lock(&self.shared.queues);
            for t in tenants {
                queues.entry(t.clone()).or_insert_with(|| {
                    Arc::new(SharedTenantQueue::new(part.clone(), self.shared_capacity))
                });
                started.push(t);
            }
        }
        self.health
            .with(|s| s.owned.extend(started.iter().cloned()));
        tracing::info!(
            partition,
            tenants = started.len(),
            "shared partition assigned"
        );
        self.sink.assign(started);
        tokio::spawn(demux(self.clone(), part, split, registry.clone()));
    }

    /// Follows the registry's shared tenants: the publisher's layout, tenants added on a
    /// partition owned here (started), tenants suspended or removed (stopped; the records
    /// they had not applied are dead-lettered with `tenant_suspended`).
    pub(super) async fn follow_shared(&self, layout: &RegistryLayout) {
        self.layout.set_shared(layout.shared.keys().cloned());
        *SharedBook::lock(&self.shared_registry) = layout.shared.clone();
        let n = self.layout.shared_partitions();
        let parts: HashMap<i32, Arc<SharedPartition>> =
            SharedBook::lock(&self.shared.parts).clone();
        let queued: std::collections::HashSet<TenantId> = SharedBook::lock(&self.shared.queues)
            .keys()
            .cloned()
            .collect();
        for (t, active) in &layout.shared {
            if *active && !queued.contains(t) {
                if let Some(part) = parts.get(&t.shared_partition(n)) {
                    self.adopt_shared(t, part);
                }
            }
        }
        let gone: Vec<TenantId> = queued
            .into_iter()
            .filter(|t| layout.shared.get(t) != Some(&true))
            .collect();
        if gone.is_empty() {
            return;
        }
        let dlq_topic = shared_topic(self.layout.prefix(), TopicKind::Dlq);
        for t in gone {
            let Some(q) = SharedBook::lock(&self.shared.queues).remove(&t) else {
                continue;
            };
            self.health.with(|s| s.owned.remove(&t));
            self.sink.revoke(vec![t.clone()], self.revoke_timeout).await;
            let left = q.take_all();
            tracing::info!(tenant = %t, records = left.len(), "shared tenant suspended; stopping it");
            for rec in left {
                if !self
                    .dead_letter_shared(&q.partition, &dlq_topic, &rec, Unroutable::TenantSuspended)
                    .await
                {
                    break;
                }
            }
        }
    }

    /// The queue of the tenant a shared record belongs to, on this partition; or why it
    /// belongs to none. A tenant registered since the last registry refresh is looked up
    /// (one indexed query) and adopted.
    async fn route_shared(
        self: &Arc<Self>,
        part: &Arc<SharedPartition>,
        rec: &InboundRecord,
        registry: &Registry,
    ) -> Result<Arc<SharedTenantQueue>, Unroutable> {
        let tenant = key_tenant(rec).ok_or(Unroutable::NoTenantKey)?;
        if let Some(q) = self.shared_queue(&tenant) {
            return match Arc::ptr_eq(&q.partition, part) {
                true => Ok(q),
                false => Err(Unroutable::WrongPartition),
            };
        }
        let record = loop {
            match registry.get(&tenant).await {
                Ok(r) => break r,
                Err(e) => {
                    // Not knowing is no reason to dead-letter: wait and ask again.
                    tracing::warn!(error = %e, "reading the registry for a shared record failed");
                    tokio::select! {
                        _ = part.stop.cancelled() => return Err(Unroutable::UnknownTenant),
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
            }
        };
        let Some(record) = record else {
            return Err(Unroutable::UnknownTenant);
        };
        if !record.shared_topics {
            return Err(Unroutable::TenantHasOwnTopics);
        }
        if record.status != "active" {
            return Err(Unroutable::TenantSuspended);
        }
        if tenant.shared_partition(self.layout.shared_partitions()) != part.partition {
            return Err(Unroutable::WrongPartition);
        }
        self.layout.add_shared(tenant.clone());
        let q = self.adopt_shared(&tenant, part);
        Ok(q)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_partition_commits_up_to_the_lowest_record_not_stored() {
        let mut o = PendingOffsets::default();
        assert_eq!(o.committable(), None);
        o.taken(10); // tenant a
        o.taken(11); // tenant b
        o.settled(12); // dead-lettered
        o.taken(13); // tenant a
        assert_eq!(o.committable(), Some(10));
        o.done([11]); // b stored: a's 10 still holds the partition
        assert_eq!(o.committable(), None);
        o.done([10, 13]);
        assert_eq!(o.committable(), Some(14));
        assert!(o.seen(13) && !o.seen(14));
    }

    fn rec(offset: i64) -> InboundRecord {
        InboundRecord {
            offset,
            key: Some(b"acme".to_vec()),
            payload: vec![],
            headers: vec![],
        }
    }

    fn part() -> Arc<SharedPartition> {
        Arc::new(SharedPartition {
            partition: 0,
            topic: "shared.scim".into(),
            offsets: Mutex::new(PendingOffsets::default()),
            stop: CancellationToken::new(),
        })
    }

    #[tokio::test]
    async fn a_restarted_reader_rewinds_to_the_first_record_not_stored() {
        let q = SharedTenantQueue::new(part(), 10);
        for o in [3, 7, 9] {
            q.push(rec(o)).await.expect("open");
        }
        assert_eq!(q.next().await.offset, 3);
        assert_eq!(q.next().await.offset, 7);
        assert_eq!(q.stored(4), vec![3]);
        q.rewind();
        assert_eq!(q.next().await.offset, 7);
        assert_eq!(q.next().await.offset, 9);
        assert_eq!(q.stored(10), vec![7, 9]);
        let next = tokio::time::timeout(Duration::from_millis(50), q.next()).await;
        assert!(next.is_err(), "nothing left to read");
    }

    #[tokio::test]
    async fn a_full_queue_makes_the_writer_wait_until_records_are_stored() {
        let q = Arc::new(SharedTenantQueue::new(part(), 2));
        q.push(rec(1)).await.expect("open");
        q.push(rec(2)).await.expect("open");
        let writer = {
            let q = q.clone();
            tokio::spawn(async move { q.push(rec(3)).await })
        };
        tokio::task::yield_now().await;
        assert!(!writer.is_finished(), "the third record waits for room");
        assert_eq!(q.next().await.offset, 1);
        q.stored(2);
        tokio::time::timeout(Duration::from_secs(5), writer)
            .await
            .expect("room made")
            .expect("join")
            .expect("open");
        assert_eq!(q.take_all().len(), 2);
        assert!(
            q.push(rec(4)).await.is_err(),
            "a closed queue hands records back"
        );
    }
}
