//! [`Feeder`]: the pull side of a tenant actor. Reads the tenant's partition into a bounded
//! buffer and hands the actor one micro-batch at a time, waiting for its commit:
//! - at most one batch per tenant is in flight and the next is fetched meanwhile;
//! - at `high_water` records or the tenant's byte budget the feeder stops pulling (and
//!   resumes at `low_water` and half the budget); the adapter's bounded prefetch then stops
//!   fetching, so a flood stays in the tenant's own log. (Not `rd_kafka_pause`: it purges
//!   the prefetch and refetches mid-batch, which some brokers answer from the next batch,
//!   silently skipping records.)
//! - the process-wide byte budget: past it, a tenant already holding records waits for its
//!   commits; one holding none may still take one, so no tenant starves;
//! - on drain it stops fetching, lets the batch in flight finish and reports `drained`.
//!
//! The feeder knows the actor only as a [`HandOver`] function, so the tests below drive it
//! with a closure.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::settings::PipelineSettings;
use crate::events::{FeedOffsetGap, FeedPaused, FeedReceiveFailed, InternalEvent, PauseReason};
use crate::metric_names as m;
use crate::ports::{InboundRecord, PartitionFeed};
use crate::tenant::TenantId;

/// Hands a batch over and resolves to the next offset once it committed (`None`: failed).
pub type HandOver = Arc<
    dyn Fn(Vec<InboundRecord>) -> Pin<Box<dyn Future<Output = Option<i64>> + Send>> + Send + Sync,
>;

/// Reads the tenant's partition into a bounded buffer and feeds the actor one batch at a time.
pub struct Feeder {
    pub tenant: TenantId,
    /// Hands one batch to the tenant actor and waits for its commit (`None`: the actor
    /// died; its restart rewinds the feed).
    pub hand_over: HandOver,
    pub feed: Arc<dyn PartitionFeed>,
    pub settings: PipelineSettings,
    pub drain: CancellationToken,
    pub alive: CancellationToken,
    pub drained: Arc<watch::Sender<bool>>,
    pub process_bytes: Arc<std::sync::atomic::AtomicUsize>,
}

/// Payload bytes a feeder holds, counted in its process's total too; released on drop
/// (including when the feeder stops with records still buffered).
struct HeldBytes {
    mine: usize,
    process: Arc<std::sync::atomic::AtomicUsize>,
}

impl HeldBytes {
    fn add(&mut self, n: usize) {
        self.mine += n;
        self.process
            .fetch_add(n, std::sync::atomic::Ordering::Relaxed);
    }
    fn release(&mut self, n: usize) {
        let n = n.min(self.mine);
        self.mine -= n;
        self.process
            .fetch_sub(n, std::sync::atomic::Ordering::Relaxed);
    }
    fn process_total(&self) -> usize {
        self.process.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl Drop for HeldBytes {
    fn drop(&mut self) {
        let n = self.mine;
        self.release(n);
    }
}

fn payload_bytes(records: &[InboundRecord]) -> usize {
    records.iter().map(|r| r.payload.len()).sum()
}

type InFlight = Pin<Box<dyn Future<Output = Option<i64>> + Send>>;

impl Feeder {
    pub async fn run(self) {
        let label = self.tenant.as_str().to_owned();
        let backlog = metrics::gauge!(m::TENANT_BACKLOG_MESSAGES, "tenant" => label);
        let mut buffer: VecDeque<InboundRecord> = VecDeque::new();
        let mut in_flight: Option<(InFlight, usize, usize)> = None;
        let mut held = HeldBytes {
            mine: 0,
            process: self.process_bytes.clone(),
        };
        let (tenant_budget, process_budget) = (
            self.settings.tenant_buffer_max_bytes,
            self.settings.process_buffer_max_bytes,
        );
        let mut paused = false;
        let mut draining = false;
        // Offset of the next record we expect; anything below it is a re-delivery.
        let mut next_expected: Option<i64> = None;
        // When the oldest buffered record arrived while no batch was in flight.
        let mut linger_until: Option<Instant> = None;
        loop {
            let inflight_len = in_flight.as_ref().map_or(0, |(_, n, _)| *n);
            backlog.set((buffer.len() + inflight_len) as f64);
            if draining && in_flight.is_none() {
                break;
            }
            // Hand a batch over when the actor is free and the batch is full or has lingered.
            if in_flight.is_none() && !draining && !buffer.is_empty() {
                let full = buffer.len() >= self.settings.max_batch_events;
                let due = linger_until.is_some_and(|t| Instant::now() >= t);
                if full || due || self.settings.batch_linger.is_zero() {
                    let n = buffer.len().min(self.settings.max_batch_events);
                    let batch: Vec<InboundRecord> = buffer.drain(..n).collect();
                    let batch_bytes = payload_bytes(&batch);
                    let fut: InFlight = (self.hand_over)(batch);
                    in_flight = Some((fut, n, batch_bytes));
                    linger_until = None;
                    let buffered_bytes = held.mine - batch_bytes;
                    if paused
                        && buffer.len() <= self.settings.low_water
                        && buffered_bytes <= tenant_budget / 2
                    {
                        tracing::debug!(tenant = %self.tenant, "resuming below low water");
                        paused = false;
                    }
                    continue;
                }
            }
            // The process-wide budget: while it is spent, a tenant holding records waits for
            // its own to be committed; one holding none may still take one.
            let over_process = held.mine > 0 && held.process_total() >= process_budget;
            let linger = linger_until;
            tokio::select! {
                biased;
                _ = self.alive.cancelled() => return,
                _ = self.drain.cancelled(), if !draining => {
                    draining = true;
                }
                done = async { in_flight.as_mut().map(|(f, _, _)| f).expect("guarded").await },
                    if in_flight.is_some() => {
                    if let Some((_, _, bytes)) = in_flight.take() {
                        held.release(bytes);
                    }
                    if done.is_none() {
                        // The actor died mid-batch; its restart rewinds the feed.
                        return;
                    }
                    if !buffer.is_empty() && linger_until.is_none() {
                        linger_until = Some(Instant::now());
                    }
                }
                _ = async { tokio::time::sleep_until(linger.expect("guarded")).await },
                    if linger.is_some() && in_flight.is_none() => {}
                _ = tokio::time::sleep(Duration::from_millis(20)), if over_process && !paused && !draining => {
                    // Re-checked shortly: other tenants' commits free the budget.
                }
                rec = self.feed.recv(), if !paused && !draining && !over_process => match rec {
                    Ok(rec) if next_expected.is_some_and(|n| rec.offset < n) => {
                        // Re-delivered after a reposition: already buffered or handed over.
                        tracing::trace!(tenant = %self.tenant, offset = rec.offset, "re-delivery dropped");
                    }
                    Ok(rec) => {
                        if next_expected.is_some_and(|n| rec.offset > n) && self.feed.contiguous() {
                            FeedOffsetGap {
                                tenant: &self.tenant,
                                offset: rec.offset,
                                expected: next_expected.unwrap_or_default(),
                            }
                            .emit();
                        }
                        next_expected = Some(rec.offset + 1);
                        held.add(rec.payload.len());
                        buffer.push_back(rec);
                        if linger_until.is_none() && in_flight.is_none() {
                            linger_until = Some(Instant::now() + self.settings.batch_linger);
                        }
                        if !paused && buffer.len() >= self.settings.high_water {
                            paused = true;
                            FeedPaused { tenant: &self.tenant, reason: PauseReason::HighWater }.emit();
                        } else if !paused && held.mine >= tenant_budget {
                            paused = true;
                            let reason = PauseReason::ByteBudget { bytes: held.mine };
                            FeedPaused { tenant: &self.tenant, reason }.emit();
                        }
                    }
                    Err(e) => {
                        FeedReceiveFailed { tenant: Some(&self.tenant), kind: "recv", error: &e }
                            .emit();
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                },
            }
        }
        backlog.set(0.0);
        let _ = self.drained.send(true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fakes::FakeFeeds;
    use crate::ports::FeedSource;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;

    fn t() -> TenantId {
        TenantId::parse("acme").unwrap()
    }

    /// A feeder over a fake log whose hand-over records each batch and, when `gate` is
    /// set, waits for a permit per batch (an actor busy committing).
    struct Rig {
        feeds: Arc<FakeFeeds>,
        batches: Arc<Mutex<Vec<Vec<i64>>>>,
        gate: Arc<tokio::sync::Semaphore>,
        drain: CancellationToken,
        drained: watch::Receiver<bool>,
    }

    async fn rig(settings: PipelineSettings, records: usize, payload: usize) -> Rig {
        let feeds = Arc::new(FakeFeeds::default());
        let log = feeds.log(&t());
        for _ in 0..records {
            log.append(vec![b'x'; payload]);
        }
        let feed = feeds.open(&t()).await.unwrap();
        let batches: Arc<Mutex<Vec<Vec<i64>>>> = Default::default();
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        let (drained_tx, drained) = watch::channel(false);
        let drain = CancellationToken::new();
        let (seen, permits, store) = (batches.clone(), gate.clone(), feed.clone());
        let hand_over: HandOver = Arc::new(move |batch: Vec<InboundRecord>| {
            let (seen, permits, store) = (seen.clone(), permits.clone(), store.clone());
            Box::pin(async move {
                let offsets: Vec<i64> = batch.iter().map(|r| r.offset).collect();
                let next = offsets.last().map(|o| o + 1);
                seen.lock().unwrap().push(offsets);
                permits.acquire().await.ok()?.forget();
                // The actor stores the offset after its commit.
                store.store_offset(next?).ok()?;
                next
            })
        });
        tokio::spawn(
            Feeder {
                tenant: t(),
                hand_over,
                feed,
                settings,
                drain: drain.clone(),
                alive: CancellationToken::new(),
                drained: Arc::new(drained_tx),
                process_bytes: Arc::new(AtomicUsize::new(0)),
            }
            .run(),
        );
        Rig {
            feeds,
            batches,
            gate,
            drain,
            drained,
        }
    }

    async fn until(what: &str, mut cond: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !cond() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    fn settings() -> PipelineSettings {
        PipelineSettings {
            max_batch_events: 10,
            high_water: 30,
            low_water: 10,
            ..PipelineSettings::default()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn batches_go_over_one_at_a_time_in_offset_order() {
        let r = rig(settings(), 25, 10).await;
        r.gate.add_permits(100);
        until("all handed over", || r.feeds.log(&t()).stored() == 25).await;
        let batches = r.batches.lock().unwrap().clone();
        let offsets: Vec<i64> = batches.iter().flatten().copied().collect();
        assert_eq!(
            offsets,
            (0..25).collect::<Vec<i64>>(),
            "each record once, in order"
        );
        assert!(
            batches.iter().all(|b| b.len() <= 10),
            "at most max_batch_events"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_busy_actor_pauses_the_feed_at_high_water() {
        let r = rig(settings(), 500, 10).await;
        until("first batch in flight", || {
            r.batches.lock().unwrap().len() == 1
        })
        .await;
        tokio::time::sleep(Duration::from_secs(5)).await;
        let log = r.feeds.log(&t());
        let held = log.max_buffered_seen.load(Ordering::SeqCst);
        // Fetched and not committed: the batch in flight plus a buffer at high water.
        assert!(held <= 10 + 30, "fetched {held} while the actor was busy");
        r.gate.add_permits(1000);
        until("all committed", || log.stored() == 500).await;
    }

    #[tokio::test(start_paused = true)]
    async fn the_byte_budget_pauses_large_payloads_before_high_water() {
        let budget = PipelineSettings {
            tenant_buffer_max_bytes: 5_000,
            ..settings()
        };
        let r = rig(budget, 100, 1_000).await;
        until("first batch in flight", || {
            r.batches.lock().unwrap().len() == 1
        })
        .await;
        tokio::time::sleep(Duration::from_secs(5)).await;
        let held = r.feeds.log(&t()).max_buffered_seen.load(Ordering::SeqCst);
        assert!(held <= 6, "held {held} records of 1 kB at a 5 kB budget");
    }

    #[tokio::test(start_paused = true)]
    async fn drain_finishes_the_batch_in_flight_then_reports_drained() {
        let mut r = rig(settings(), 50, 10).await;
        until("first batch in flight", || {
            r.batches.lock().unwrap().len() == 1
        })
        .await;
        r.drain.cancel();
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(
            !*r.drained.borrow(),
            "still waiting for the batch in flight"
        );
        r.gate.add_permits(1);
        r.drained.wait_for(|d| *d).await.unwrap();
        assert_eq!(
            r.batches.lock().unwrap().len(),
            1,
            "nothing handed over after the drain"
        );
        assert_eq!(
            r.feeds.log(&t()).stored(),
            10,
            "the batch in flight committed"
        );
    }
}
