//! [`OutboxRelay`]: publishes a tenant's committed outbox rows to Kafka, in `seq` order,
//! at least once and, in practice, once.
//!
//! The relay works by cursor. A batch's rows come back from its commit with their seqs;
//! when they directly follow the last seq this relay published, they are published from
//! memory and the new cursor rides along in the next batch's transaction ([`Self::carry`]),
//! or is stored on its own a little later. Anything else (rows of another writer in between,
//! a publish that failed, a new incarnation) is relayed from the table in `seq` order. After
//! a restart or a failed publish some rows may already be on their topics: the relay then
//! asks each topic for the last `outbox.seq` it holds and skips what is there.
//!
//! A plain struct: the tenant actor owns one and turns its [`RelayNext`] answers into
//! timers, so the cursor logic is tested here without an actor.

use std::sync::Arc;

use crate::events::{InternalEvent, OutboxPublished};
use crate::ports::{
    EventPublisher, OutboundRecord, OutboxRecord, PublishError, StoreError, TenantStore,
};
use crate::tenant::{TenantId, TopicKind};

/// What the owner of a relay should arrange next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayNext {
    /// Nothing pending.
    Idle,
    /// Rows were published from memory: store the cursor soon unless a batch carries it.
    StoreCursorSoon,
    /// A relay failed (rows stay durable): flush from the table after a pause.
    RetryFlush,
    /// Storing the cursor failed: try again after a pause (a crash meanwhile republishes).
    RetryCursorStore,
}

#[derive(Debug, thiserror::Error)]
enum RelayError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Publish(#[from] PublishError),
}

pub struct OutboxRelay {
    tenant: TenantId,
    store: Arc<dyn TenantStore>,
    publisher: Arc<dyn EventPublisher>,
    /// Rows read from the table per round trip.
    batch_rows: usize,
    /// Every seq up to this was published (0 until the first relay: the stored cursor
    /// then counts as well).
    relayed_through: i64,
    /// The highest cursor written to the store.
    cursor_stored: i64,
    /// Rows after `relayed_through` may already be on their topics (a new incarnation, or
    /// a publish that failed part-way).
    uncertain: bool,
}

impl OutboxRelay {
    pub fn new(
        tenant: TenantId,
        store: Arc<dyn TenantStore>,
        publisher: Arc<dyn EventPublisher>,
        batch_rows: usize,
    ) -> Self {
        Self {
            tenant,
            store,
            publisher,
            batch_rows: batch_rows.max(1),
            relayed_through: 0,
            cursor_stored: 0,
            uncertain: true,
        }
    }

    /// The cursor a batch transaction should store (0: nothing new to store).
    pub fn carry(&self) -> i64 {
        if self.relayed_through > self.cursor_stored {
            self.relayed_through
        } else {
            0
        }
    }

    /// A batch transaction that carried `through` committed.
    pub fn carried(&mut self, through: i64) {
        self.cursor_stored = self.cursor_stored.max(through);
    }

    /// Publishes rows just committed, from memory, when they directly follow what was
    /// relayed before; otherwise relays from the table so `seq` order holds.
    pub async fn publish_committed(&mut self, rows: Vec<OutboxRecord>) -> RelayNext {
        let (Some(first), Some(last)) = (rows.first(), rows.last()) else {
            return RelayNext::Idle;
        };
        let (first, last, n) = (first.seq, last.seq, rows.len());
        if first != self.relayed_through + 1 {
            return self.flush().await;
        }
        let records = rows.into_iter().map(outbound).collect();
        match self.publisher.publish(&self.tenant, records).await {
            Ok(()) => {
                self.relayed_through = last;
                OutboxPublished {
                    tenant: &self.tenant,
                    rows: n,
                }
                .emit();
                RelayNext::StoreCursorSoon
            }
            Err(e) => {
                // The rows are durable: the retry relays them from the table, in order,
                // skipping what reached the topics before the failure.
                self.uncertain = true;
                tracing::warn!(tenant = %self.tenant, error = %e, "outbox relay failed; retrying");
                RelayNext::RetryFlush
            }
        }
    }

    /// Relays the outbox from the table until it is empty.
    pub async fn flush(&mut self) -> RelayNext {
        loop {
            match self.relay_once().await {
                Ok(n) if n < self.batch_rows => return RelayNext::Idle,
                Ok(_) => continue,
                Err(e) => {
                    tracing::warn!(tenant = %self.tenant, error = %e, "outbox relay failed; retrying");
                    return RelayNext::RetryFlush;
                }
            }
        }
    }

    /// Stores the cursor when no batch carried it.
    pub async fn store_cursor(&mut self) -> RelayNext {
        if self.relayed_through <= self.cursor_stored {
            return RelayNext::Idle;
        }
        let through = self.relayed_through;
        match self.store.mark_outbox_relayed(&self.tenant, through).await {
            Ok(()) => {
                self.carried(through);
                RelayNext::Idle
            }
            Err(e) => {
                tracing::warn!(tenant = %self.tenant, error = %e, "storing the relay cursor failed");
                RelayNext::RetryCursorStore
            }
        }
    }

    async fn relay_once(&mut self) -> Result<usize, RelayError> {
        let mut rows = self
            .store
            .pending_outbox(&self.tenant, self.relayed_through, self.batch_rows)
            .await?;
        let Some(last) = rows.last().map(|r| r.seq) else {
            return Ok(0);
        };
        let n = rows.len();
        if self.uncertain {
            let mut topics: Vec<TopicKind> = rows.iter().map(|r| r.topic).collect();
            topics.sort_by_key(|t| t.suffix());
            topics.dedup();
            for topic in topics {
                if let Some(on_topic) = self.publisher.last_outbox_seq(&self.tenant, topic).await? {
                    rows.retain(|r| r.topic != topic || r.seq > on_topic);
                }
            }
            if rows.len() < n {
                tracing::info!(tenant = %self.tenant, skipped = n - rows.len(),
                    "outbox rows already on their topics; not republished");
            }
        }
        let records = rows.into_iter().map(outbound).collect();
        if let Err(e) = self.publisher.publish(&self.tenant, records).await {
            self.uncertain = true;
            return Err(e.into());
        }
        self.uncertain = false;
        self.relayed_through = self.relayed_through.max(last);
        self.store.mark_outbox_relayed(&self.tenant, last).await?;
        self.carried(last);
        OutboxPublished {
            tenant: &self.tenant,
            rows: n,
        }
        .emit();
        Ok(n)
    }
}

/// The Kafka record of an outbox row; `outbox.seq` lets consumers drop republished rows.
pub fn outbound(r: OutboxRecord) -> OutboundRecord {
    let mut headers = r.headers;
    headers.push(("outbox.seq".into(), r.seq.to_string().into_bytes()));
    OutboundRecord {
        topic: r.topic,
        key: r.key,
        payload: r.payload,
        headers,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fakes::{FakePublisher, FakeStore};
    use std::sync::atomic::Ordering;

    fn t() -> TenantId {
        TenantId::parse("acme").unwrap()
    }

    /// The outbox as the fake store holds it, rows 1..=n.
    fn table(store: &FakeStore, n: i64) -> Vec<OutboxRecord> {
        for i in 1..=n {
            store.append_outbox(&t(), TopicKind::UserChanged, "u", format!("{i}").as_bytes());
        }
        store.with(&t(), |d| d.outbox.clone())
    }

    fn stored_cursor(store: &FakeStore) -> i64 {
        store.with(&t(), |d| d.relayed_seq)
    }

    fn world(batch: usize) -> (Arc<FakeStore>, Arc<FakePublisher>, OutboxRelay) {
        let (store, publisher) = (
            Arc::new(FakeStore::default()),
            Arc::new(FakePublisher::default()),
        );
        let relay = OutboxRelay::new(t(), store.clone(), publisher.clone(), batch);
        (store, publisher, relay)
    }

    #[tokio::test]
    async fn rows_following_the_cursor_go_from_memory_and_the_cursor_rides_the_next_batch() {
        let (store, publisher, mut r) = world(100);
        assert_eq!(
            r.flush().await,
            RelayNext::Idle,
            "empty table: nothing to do"
        );
        assert_eq!(r.carry(), 0);
        let rows = table(&store, 2);
        assert_eq!(r.publish_committed(rows).await, RelayNext::StoreCursorSoon);
        assert_eq!(publisher.outbox_seqs(&t()), vec![1, 2]);
        assert_eq!(r.carry(), 2, "the next batch stores the cursor");
        r.carried(2);
        assert_eq!(r.carry(), 0);
        assert_eq!(
            r.store_cursor().await,
            RelayNext::Idle,
            "nothing left to store"
        );
        assert_eq!(
            stored_cursor(&store),
            0,
            "stored by the batch, not by the relay"
        );
    }

    #[tokio::test]
    async fn rows_after_a_gap_are_relayed_from_the_table_in_seq_order() {
        let (store, publisher, mut r) = world(2);
        let rows = table(&store, 3);
        // Rows 2 and 3 were committed by this actor, but row 1 (another writer) came first.
        assert_eq!(
            r.publish_committed(rows[1..].to_vec()).await,
            RelayNext::Idle
        );
        assert_eq!(
            publisher.outbox_seqs(&t()),
            vec![1, 2, 3],
            "in seq order, two round trips"
        );
        assert_eq!(stored_cursor(&store), 3, "a table relay stores its cursor");
        assert_eq!(r.carry(), 0);
    }

    #[tokio::test]
    async fn a_failed_publish_asks_for_a_retry_then_skips_what_reached_the_topic() {
        let (store, publisher, mut r) = world(100);
        table(&store, 4);
        publisher.ack_then_fail.store(2, Ordering::SeqCst);
        assert_eq!(r.flush().await, RelayNext::RetryFlush);
        assert_eq!(stored_cursor(&store), 0, "no cursor past a failed publish");
        assert_eq!(r.flush().await, RelayNext::Idle);
        assert_eq!(
            publisher.outbox_seqs(&t()),
            vec![1, 2, 3, 4],
            "each row once"
        );
        assert_eq!(stored_cursor(&store), 4);
    }

    #[tokio::test]
    async fn a_new_relay_skips_rows_a_previous_incarnation_published() {
        let (store, publisher, mut first) = world(100);
        table(&store, 3);
        assert_eq!(first.flush().await, RelayNext::Idle);
        // The cursor store was lost (a crash right after the publish).
        store
            .data
            .lock()
            .unwrap()
            .get_mut(&t())
            .unwrap()
            .relayed_seq = 0;
        let mut second = OutboxRelay::new(t(), store.clone(), publisher.clone(), 100);
        assert_eq!(second.flush().await, RelayNext::Idle);
        assert_eq!(
            publisher.outbox_seqs(&t()),
            vec![1, 2, 3],
            "nothing republished"
        );
        assert_eq!(stored_cursor(&store), 3);
    }

    #[tokio::test]
    async fn a_cursor_store_that_fails_is_retried() {
        let (store, _publisher, mut r) = world(100);
        let rows = table(&store, 1);
        assert_eq!(r.publish_committed(rows).await, RelayNext::StoreCursorSoon);
        store.cursor_failures.store(1, Ordering::SeqCst);
        assert_eq!(r.store_cursor().await, RelayNext::RetryCursorStore);
        assert_eq!(r.carry(), 1, "still owed");
        assert_eq!(r.store_cursor().await, RelayNext::Idle);
        assert_eq!(stored_cursor(&store), 1);
    }
}
