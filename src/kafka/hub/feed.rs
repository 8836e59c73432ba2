//! The per-tenant end of the shared consumer: a tenant's split partition queue
//! ([`TenantQueue`]), the [`FeedSource`] that opens it for a tenant actor (rewinding to the
//! first record not known committed after a restart) and the [`PartitionFeed`] the actor
//! pulls from and stores offsets through.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use rdkafka::consumer::stream_consumer::StreamPartitionQueue;
use rdkafka::consumer::Consumer;
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rdkafka::Offset;
use tokio::sync::mpsc;

use super::shared::SharedFeed;
use super::{HubConsumer, HubContext, KafkaHub};
use crate::actors::ports::{FeedError, FeedSource, InboundRecord, PartitionFeed};
use crate::actors::TenantId;

/// The per-tenant end of the shared consumer.
pub(super) struct TenantQueue {
    pub(super) topic: String,
    pub(super) queue: StreamPartitionQueue<HubContext>,
    pub(super) strays_tx: mpsc::UnboundedSender<InboundRecord>,
    pub(super) strays_rx: tokio::sync::Mutex<mpsc::UnboundedReceiver<InboundRecord>>,
    /// Next offset whose effects are not known committed (-1: none stored yet).
    pub(super) next_offset: AtomicI64,
    /// One past the last offset handed to an actor (-1: none yet).
    pub(super) fetched_until: AtomicI64,
    pub(super) opened: AtomicBool,
    /// Since when the tenant's actor has been waiting for a record (None: not waiting).
    pub(super) waiting_since: Mutex<Option<std::time::Instant>>,
}

pub(super) fn to_record(m: &BorrowedMessage<'_>) -> InboundRecord {
    InboundRecord {
        offset: m.offset(),
        key: m.key().map(<[u8]>::to_vec),
        payload: m.payload().map(<[u8]>::to_vec).unwrap_or_default(),
        headers: m
            .headers()
            .map(|hs| {
                hs.iter()
                    .map(|h| {
                        (
                            h.key.to_owned(),
                            h.value.map(<[u8]>::to_vec).unwrap_or_default(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default(),
    }
}

impl KafkaHub {
    /// The tenant's split queue, if its partition was ever assigned here.
    fn tenant_queue(&self, tenant: &TenantId) -> Result<Arc<TenantQueue>, FeedError> {
        self.queues
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(tenant)
            .cloned()
            .ok_or(FeedError::NotAssigned)
    }
}

#[async_trait]
impl FeedSource for KafkaHub {
    async fn open(&self, tenant: &TenantId) -> Result<Arc<dyn PartitionFeed>, FeedError> {
        if let Some(q) = self.shared_queue(tenant) {
            // A restart reads again what its predecessor did not store.
            q.rewind();
            return Ok(Arc::new(SharedFeed {
                consumer: self.consumer(),
                q,
            }));
        }
        let q = self.tenant_queue(tenant)?;
        if q.opened.swap(true, Ordering::SeqCst) {
            // A restart: rewind to the first record not known committed. What the previous
            // actor fetched beyond that is discarded by the seek and read again.
            let stored = q.next_offset.load(Ordering::SeqCst);
            let target = if stored >= 0 {
                Offset::Offset(stored)
            } else {
                self.committed_offset(&q.topic)
                    .map_or(Offset::Beginning, Offset::Offset)
            };
            let mut strays = q.strays_rx.lock().await;
            while strays.try_recv().is_ok() {}
            drop(strays);
            self.consumer()
                .seek(&q.topic, 0, target, Duration::from_secs(5))
                .map_err(|e| FeedError::Broker(e.to_string()))?;
            tracing::info!(tenant = %tenant, offset = ?target, "feed rewound for restarted actor");
        }
        Ok(Arc::new(KafkaFeed {
            consumer: self.consumer(),
            q,
        }))
    }

    async fn until_record(&self, tenant: &TenantId) -> Result<(), FeedError> {
        if let Some(q) = self.shared_queue(tenant) {
            q.until_record().await;
            return Ok(());
        }
        let q = self.tenant_queue(tenant)?;
        // Records the last actor fetched but did not commit (a drain abandons its buffer):
        // they are in no queue any more, so wake now and let `open` rewind to them.
        if q.fetched_until.load(Ordering::SeqCst) > q.next_offset.load(Ordering::SeqCst) {
            return Ok(());
        }
        let offset = tokio::select! {
            m = q.queue.recv() => m.map(|m| m.offset()).map_err(|e| FeedError::Broker(e.to_string()))?,
            Some(r) = async { q.strays_rx.lock().await.recv().await } => r.offset,
        };
        // The record taken here is read again: the next `open` rewinds to it (a tenant
        // that never ran here has no position yet; this record is its first).
        let _ = q
            .next_offset
            .compare_exchange(-1, offset, Ordering::SeqCst, Ordering::SeqCst);
        q.opened.store(true, Ordering::SeqCst);
        Ok(())
    }
}

/// Sets a feed's `waiting_since` while a `recv` is pending; clears it when dropped.
struct Waiting<'a>(&'a Mutex<Option<std::time::Instant>>);

impl<'a> Waiting<'a> {
    fn start(slot: &'a Mutex<Option<std::time::Instant>>) -> Self {
        slot.lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_or_insert_with(std::time::Instant::now);
        Self(slot)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }
}

struct KafkaFeed {
    consumer: Arc<HubConsumer>,
    q: Arc<TenantQueue>,
}

#[async_trait]
impl PartitionFeed for KafkaFeed {
    async fn recv(&self) -> Result<InboundRecord, FeedError> {
        // Marks the actor as waiting for as long as this call is pending (the feeder drops
        // the call when it pauses at high water: a paused feed is not a silent one).
        let _waiting = Waiting::start(&self.q.waiting_since);
        let record = tokio::select! {
            m = self.q.queue.recv() => m.map(|m| to_record(&m)).map_err(|e| FeedError::Broker(e.to_string())),
            Some(r) = async { self.q.strays_rx.lock().await.recv().await } => Ok(r),
        }?;
        self.q
            .fetched_until
            .fetch_max(record.offset + 1, Ordering::SeqCst);
        Ok(record)
    }

    fn store_offset(&self, next_offset: i64) -> Result<(), FeedError> {
        self.q.next_offset.fetch_max(next_offset, Ordering::SeqCst);
        // librdkafka stores `offset + 1`: hand it the last processed offset.
        self.consumer
            .store_offset(&self.q.topic, 0, next_offset - 1)
            .map_err(|e| FeedError::Broker(e.to_string()))
    }
}
