//! [`BatchPipeline`]: one micro-batch of a tenant's inbound records, from raw bytes to a
//! committed transaction.
//!
//! 1. [`prepare`]: the SCIM rules validate every record into an event, a dead letter (with
//!    its reason) or a security event. Pure, so a retry or a split prepares it again.
//! 2. One transaction through the [`TenantStore`] applies the batch (the store's unit of
//!    work runs the rules' plan: users, idempotency, outbox, follow-up jobs, readiness).
//! 3. A transient failure is waited out with a capped, jittered backoff; a batch refused
//!    for any other reason is split in halves until the refused record is alone, and that
//!    record is dead-lettered while every other record is applied.
//! 4. What committed is counted and logged (internal events), the roster cache invalidated,
//!    and the committed outbox rows handed back for the relay.
//!
//! A plain struct over the ports: the tenant actor calls [`BatchPipeline::handle`] for each
//! batch its feeder hands over; the tests below drive it directly.

use std::collections::hash_map::RandomState;
use std::sync::Arc;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::relay::OutboxRelay;
use super::settings::PipelineSettings;
use crate::events::{
    BatchCommitted, BatchHandled, BatchRetried, CacheFailed, InternalEvent, RetryReason,
    SecurityEventObserved,
};
use crate::ports::{
    BatchReport, DeadLetter, InboundRecord, OutboundRecord, OutboxRecord, RosterCache, ScimBatch,
    SecurityEvent, StoreError, TenantStore,
};
use crate::scim::{self, ParseLimits, RejectCode, Rejection};
use crate::tenant::{TenantId, TopicKind};

/// Why a batch could not be committed. The actor fails on it and the supervisor restarts
/// it (the feed rewinds to the last stored offset).
#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    #[error("empty batch handed to the tenant actor")]
    Empty,
    #[error("draining while the database was unavailable: {0}")]
    Draining(StoreError),
    #[error("even the batch's dead letters alone were refused: {0}")]
    Refused(StoreError),
}

/// What a committed batch leaves for its actor.
#[derive(Debug, Default)]
pub struct Handled {
    /// The offset to consume next: every record before it has its effects committed.
    pub next_offset: i64,
    /// The outbox rows the batch's transactions committed, in `seq` order.
    pub outbox: Vec<OutboxRecord>,
    /// Upstream jobs were queued: the job pump has work.
    pub jobs_queued: bool,
}

pub struct BatchPipeline {
    pub tenant: TenantId,
    pub store: Arc<dyn TenantStore>,
    pub cache: Arc<dyn RosterCache>,
    pub settings: PipelineSettings,
    /// Shared by the process's tenants: a batch transaction runs only with a slot.
    pub batch_slots: Arc<tokio::sync::Semaphore>,
    /// Cancelled when the tenant drains: a batch waiting out an outage gives up.
    pub drain: CancellationToken,
    /// Seeds the jitter of this tenant's retry backoff.
    pub jitter: RandomState,
}

impl BatchPipeline {
    /// Validates, dead-letters and applies one micro-batch (records in offset order).
    pub async fn handle(
        &self,
        records: Vec<InboundRecord>,
        relay: &mut OutboxRelay,
    ) -> Result<Handled, BatchError> {
        let started = Instant::now();
        let next_offset = records
            .iter()
            .map(|r| r.offset + 1)
            .max()
            .ok_or(BatchError::Empty)?;
        let limits = ParseLimits::at(
            time::OffsetDateTime::now_utc(),
            self.settings.max_message_bytes,
            self.settings.max_future_skew,
        );
        let mut handled = Handled {
            next_offset,
            ..Handled::default()
        };
        let events = self
            .commit_isolating(&records, None, limits, relay, &mut handled)
            .await?;
        BatchHandled {
            tenant: &self.tenant,
            first_offset: records.first().map_or(next_offset - 1, |r| r.offset),
            last_offset: next_offset - 1,
            records: records.len(),
            events,
            took: started.elapsed(),
        }
        .emit();
        Ok(handled)
    }

    /// Commits the effects of `records` (plus `refused`, a record the database refused
    /// before), isolating what the database refuses. Returns the events applied.
    fn commit_isolating<'a>(
        &'a self,
        records: &'a [InboundRecord],
        refused: Option<DeadLetter>,
        limits: ParseLimits,
        relay: &'a mut OutboxRelay,
        handled: &'a mut Handled,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<usize, BatchError>> + Send + 'a>>
    {
        Box::pin(async move {
            let mut attempt = 0u32;
            let error = loop {
                // Parsed again on every attempt: the store consumes the batch, and the
                // happy path must not pay for a copy.
                let mut prepared = prepare(
                    &self.tenant,
                    records,
                    refused.clone(),
                    limits,
                    self.settings.max_record_bytes,
                );
                prepared.batch.delete_policy = self.settings.scim_delete;
                let batch = &prepared.batch;
                if batch.events.is_empty()
                    && batch.security_events.is_empty()
                    && batch.dead_letters.is_empty()
                {
                    return Ok(0);
                }
                let events = batch.events.len();
                let carry = relay.carry();
                let result = {
                    let _slot = self.batch_slots.acquire().await;
                    self.store
                        .apply_scim_batch(&self.tenant, prepared.batch, carry)
                        .await
                };
                match result {
                    Ok(report) => {
                        relay.carried(carry);
                        self.committed(report, &prepared.notes, handled).await;
                        return Ok(events);
                    }
                    Err(e) if e.is_transient() => {
                        attempt += 1;
                        let delay = self.settings.retry_backoff.jittered(
                            &self.jitter,
                            self.tenant.as_str().as_bytes(),
                            attempt,
                            1.0,
                            1.25,
                        );
                        BatchRetried {
                            tenant: &self.tenant,
                            reason: RetryReason::Transient { attempt, delay },
                            error: &e,
                        }
                        .emit();
                        tokio::select! {
                            _ = self.drain.cancelled() => return Err(BatchError::Draining(e)),
                            _ = tokio::time::sleep(delay) => continue,
                        }
                    }
                    Err(e) => break e,
                }
            };
            match records {
                // Only dead letters and security events were left, and even they were
                // refused: nothing to isolate any more.
                [] => Err(BatchError::Refused(error)),
                [single] => {
                    BatchRetried {
                        tenant: &self.tenant,
                        reason: RetryReason::Isolated {
                            offset: single.offset,
                        },
                        error: &error,
                    }
                    .emit();
                    let rejection = Rejection::new(
                        RejectCode::DatabaseRefused,
                        format!("the database refused the event: {error}"),
                    );
                    let letter =
                        dead_letter(single.clone(), &rejection, self.settings.max_record_bytes);
                    self.commit_isolating(&[], Some(letter), limits, relay, handled)
                        .await
                }
                _ => {
                    BatchRetried {
                        tenant: &self.tenant,
                        reason: RetryReason::Split {
                            records: records.len(),
                        },
                        error: &error,
                    }
                    .emit();
                    let (left, right) = records.split_at(records.len() / 2);
                    let a = self
                        .commit_isolating(left, refused, limits, relay, handled)
                        .await?;
                    let b = self
                        .commit_isolating(right, None, limits, relay, handled)
                        .await?;
                    Ok(a + b)
                }
            }
        })
    }

    /// Counts and logs what a transaction committed, invalidates the roster when users
    /// changed, and keeps the outbox rows for the relay.
    async fn committed(&self, report: BatchReport, notes: &BatchNotes, handled: &mut Handled) {
        for event in &notes.security_events {
            SecurityEventObserved {
                tenant: &self.tenant,
                kind: event.kind,
                detail: &event.detail,
            }
            .emit();
        }
        BatchCommitted {
            tenant: &self.tenant,
            outcomes: [
                ("applied", report.applied),
                ("unchanged", report.unchanged),
                ("stale", report.stale),
                ("duplicate", report.duplicate),
            ],
            dead_reasons: &notes.dead_reasons,
        }
        .emit();
        if report.applied > 0 {
            if let Err(e) = self.cache.invalidate_roster(&self.tenant).await {
                CacheFailed {
                    tenant: &self.tenant,
                    operation: "invalidate",
                    error: &e,
                }
                .emit();
            }
        }
        handled.jobs_queued |= report.jobs_queued > 0;
        handled.outbox.extend(report.outbox);
    }
}

/// What validation found besides the batch, told once the batch committed.
#[derive(Default)]
struct BatchNotes {
    security_events: Vec<SecurityEvent>,
    /// Source offset and reason of every dead letter in the batch.
    dead_reasons: Vec<(i64, &'static str)>,
}

struct Prepared {
    batch: ScimBatch,
    notes: BatchNotes,
}

/// Validates the records into a batch: events, dead letters (with their reason) and
/// security events (a payload naming another tenant). Pure.
fn prepare(
    tenant: &TenantId,
    records: &[InboundRecord],
    refused: Option<DeadLetter>,
    limits: ParseLimits,
    max_record_bytes: usize,
) -> Prepared {
    let mut batch = ScimBatch::default();
    for rec in records {
        match scim::parse_event(tenant, &rec.payload, limits) {
            Ok(ev) => {
                tracing::debug!(tenant = %tenant, event_id = %ev.event_id, offset = rec.offset,
                    "event validated");
                batch.events.push(ev)
            }
            Err(rejection) => {
                if rejection.code == RejectCode::TenantMismatch {
                    batch.security_events.push(SecurityEvent {
                        kind: "tenant_mismatch",
                        detail: serde_json::json!({
                            "source": "scim_topic",
                            "offset": rec.offset,
                            "detail": rejection.detail,
                        }),
                    });
                }
                batch
                    .dead_letters
                    .push(dead_letter(rec.clone(), &rejection, max_record_bytes));
            }
        }
    }
    batch.dead_letters.extend(refused);
    let notes = BatchNotes {
        security_events: batch.security_events.clone(),
        dead_reasons: batch
            .dead_letters
            .iter()
            .map(|d| (d.source_offset, d.reason))
            .collect(),
    };
    Prepared { batch, notes }
}

/// The dead letter of a record: original bytes and key, original headers, plus the reason
/// and source. Text the database could not store (a NUL) is escaped in the headers.
///
/// A DLQ record never exceeds `max_record_bytes` (what the broker accepts): a record the
/// broker refused would block the tenant's relay. An original too large for that with the
/// `dlq.*` headers added (it can be as large as the broker's limit itself) is truncated and
/// says so in `dlq.payload.truncated_from` (its original length); original headers too large
/// to fit are dropped (`dlq.headers.dropped`).
fn dead_letter(rec: InboundRecord, rejection: &Rejection, max_record_bytes: usize) -> DeadLetter {
    let storable = |s: &str| s.replace('\0', "\\u0000");
    let mut headers: Vec<(String, Vec<u8>)> = rec
        .headers
        .into_iter()
        .map(|(k, v)| (storable(&k), v))
        .collect();
    // Room for the dlq.* headers below and the record framing.
    const DLQ_OVERHEAD: usize = 2048;
    let header_bytes =
        |hs: &[(String, Vec<u8>)]| hs.iter().map(|(k, v)| k.len() + v.len() + 8).sum::<usize>();
    let key_len = rec.key.as_ref().map_or(0, Vec::len);
    let mut payload = rec.payload;
    let budget = max_record_bytes.saturating_sub(DLQ_OVERHEAD + key_len);
    if header_bytes(&headers) > budget / 2 {
        headers = vec![("dlq.headers.dropped".into(), b"true".to_vec())];
    }
    let room = budget.saturating_sub(header_bytes(&headers));
    if payload.len() > room {
        headers.push((
            "dlq.payload.truncated_from".into(),
            payload.len().to_string().into_bytes(),
        ));
        payload.truncate(room);
    }
    for (key, value) in [
        ("dlq.reason", rejection.code.as_str().to_owned()),
        ("dlq.detail", storable(&rejection.detail)),
        ("dlq.source.topic", TopicKind::Scim.suffix().to_owned()),
        ("dlq.source.offset", rec.offset.to_string()),
    ] {
        headers.push((key.into(), value.into_bytes()));
    }
    DeadLetter {
        source_offset: rec.offset,
        reason: rejection.code.as_str(),
        record: OutboundRecord {
            topic: TopicKind::Dlq,
            key: rec.key,
            payload,
            headers,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fakes::{FakeCache, FakePublisher, FakeStore};
    use crate::scim::tests::envelope;
    use std::sync::atomic::Ordering;

    fn t() -> TenantId {
        TenantId::parse("acme").unwrap()
    }

    fn record(offset: i64, user: &str) -> InboundRecord {
        let payload = envelope(
            &format!("e{offset}"),
            "CREATE",
            user,
            "2026-01-01T00:00:00Z",
            &format!("{user}@acme.example"),
        );
        InboundRecord {
            offset,
            key: None,
            payload,
            headers: vec![],
        }
    }

    struct World {
        store: Arc<FakeStore>,
        cache: Arc<FakeCache>,
        pipeline: BatchPipeline,
        relay: OutboxRelay,
    }

    fn world() -> World {
        let store = Arc::new(FakeStore::default());
        let cache = Arc::new(FakeCache::default());
        let publisher = Arc::new(FakePublisher::default());
        let settings = PipelineSettings::default();
        let relay = OutboxRelay::new(t(), store.clone(), publisher, settings.outbox_batch);
        let pipeline = BatchPipeline {
            tenant: t(),
            store: store.clone(),
            cache: cache.clone(),
            settings,
            batch_slots: Arc::new(tokio::sync::Semaphore::new(1)),
            drain: CancellationToken::new(),
            jitter: RandomState::new(),
        };
        World {
            store,
            cache,
            pipeline,
            relay,
        }
    }

    fn dlq(store: &FakeStore) -> Vec<(i64, &'static str)> {
        let mut v: Vec<_> = store.with(&t(), |d| {
            d.dead_letters.iter().map(|(o, r)| (*o, *r)).collect()
        });
        v.sort();
        v
    }

    #[tokio::test]
    async fn a_batch_commits_its_events_dead_letters_bad_ones_and_hands_back_its_outbox() {
        let mut w = world();
        let mut records: Vec<InboundRecord> = (0..3).map(|i| record(i, &format!("u{i}"))).collect();
        records.push(InboundRecord {
            offset: 3,
            key: Some(b"k".to_vec()),
            payload: b"{not json".to_vec(),
            headers: vec![],
        });
        let handled = w.pipeline.handle(records, &mut w.relay).await.unwrap();
        assert_eq!(handled.next_offset, 4);
        assert_eq!(w.store.users(&t()).len(), 3);
        assert_eq!(dlq(&w.store), vec![(3, "invalid_json")]);
        let topics: Vec<TopicKind> = handled.outbox.iter().map(|r| r.topic).collect();
        assert_eq!(
            topics,
            [
                TopicKind::UserChanged,
                TopicKind::UserChanged,
                TopicKind::UserChanged,
                TopicKind::Dlq
            ]
        );
        assert_eq!(
            w.cache.invalidations.lock().unwrap().len(),
            1,
            "roster invalidated once"
        );
    }

    #[tokio::test]
    async fn a_record_the_database_refuses_is_split_out_and_dead_lettered_alone() {
        let mut w = world();
        *w.store.poison_user_name.lock().unwrap() = Some("u5@acme.test".into());
        let records: Vec<InboundRecord> = (0..8).map(|i| record(i, &format!("u{i}"))).collect();
        let handled = w.pipeline.handle(records, &mut w.relay).await.unwrap();
        assert_eq!(handled.next_offset, 8);
        assert_eq!(w.store.users(&t()).len(), 7, "every other record applied");
        assert_eq!(dlq(&w.store), vec![(5, "database_refused")]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_transient_failure_is_waited_out_and_the_batch_committed_once() {
        let mut w = world();
        w.store.transient_failures.store(3, Ordering::SeqCst);
        let handled = w
            .pipeline
            .handle(vec![record(0, "u0")], &mut w.relay)
            .await
            .unwrap();
        assert_eq!(handled.outbox.len(), 1);
        assert_eq!(
            w.store.attempts.load(Ordering::SeqCst),
            4,
            "three outages, one commit"
        );
        assert!(dlq(&w.store).is_empty(), "an outage never dead-letters");
    }

    #[tokio::test(start_paused = true)]
    async fn draining_gives_up_waiting_out_an_outage_without_committing() {
        let mut w = world();
        w.store
            .transient_failures
            .store(usize::MAX, Ordering::SeqCst);
        w.pipeline.drain.cancel();
        let err = w
            .pipeline
            .handle(vec![record(0, "u0")], &mut w.relay)
            .await
            .unwrap_err();
        assert!(matches!(err, BatchError::Draining(_)), "{err}");
        assert!(w.store.users(&t()).is_empty());
    }

    #[tokio::test]
    async fn a_tenant_whose_dead_letters_are_refused_too_fails_the_batch() {
        let mut w = world();
        w.store.refuse_tenants.lock().unwrap().insert(t());
        let err = w
            .pipeline
            .handle(vec![record(0, "u0")], &mut w.relay)
            .await
            .unwrap_err();
        assert!(matches!(err, BatchError::Refused(_)), "{err}");
    }

    #[test]
    fn a_dead_letter_never_exceeds_what_the_broker_accepts() {
        let rec = InboundRecord {
            offset: 9,
            key: Some(b"key".to_vec()),
            payload: vec![b'x'; 50_000],
            headers: vec![("h".into(), vec![b'y'; 40_000])],
        };
        let rejection = Rejection::new(RejectCode::Oversized, "too large");
        let d = dead_letter(rec, &rejection, 20_000);
        let size = d.record.payload.len()
            + d.record.key.as_ref().map_or(0, Vec::len)
            + d.record
                .headers
                .iter()
                .map(|(k, v)| k.len() + v.len() + 8)
                .sum::<usize>();
        assert!(size <= 20_000, "{size}");
        let header = |k: &str| {
            d.record
                .headers
                .iter()
                .find(|(hk, _)| hk == k)
                .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
        };
        assert_eq!(
            header("dlq.payload.truncated_from").as_deref(),
            Some("50000")
        );
        assert_eq!(header("dlq.headers.dropped").as_deref(), Some("true"));
        assert_eq!(header("dlq.source.offset").as_deref(), Some("9"));
    }
}
