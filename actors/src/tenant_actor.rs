//! The [`TenantActor`]: one per tenant, owning that tenant's feed, store handle and cache
//! namespace.
//!
//! The actor pulls; nothing pushes into it. A small feeder task (spawned in `pre_start`,
//! cancelled when the actor's state drops) reads the tenant's partition into a bounded
//! buffer and hands the actor one micro-batch at a time with a request/reply call, so:
//! - at most one batch per tenant is in flight and the next is fetched meanwhile;
//! - when the buffer reaches `high_water` the feeder pauses (stops pulling the partition)
//!   and resumes at `low_water`; the adapter's bounded prefetch then stops fetching, so a
//!   flood stays in the tenant's own log and memory stays bounded. (Not `rd_kafka_pause`:
//!   it purges the prefetch and refetches mid-batch, which some brokers answer from the
//!   next batch, silently skipping records.)
//! - offsets are stored only after the actor replied, i.e. after the batch's transaction
//!   committed (its DLQ records acknowledged, its outbox rows durable).
//!
//! The outbox is relayed by cursor. A batch's outbox rows come back from its commit with
//! their per-tenant `seq`; when they directly follow the last seq this actor relayed, it
//! publishes them from memory and carries the new cursor in its next transaction (or
//! stores it after `cursor_store_delay` when no batch follows). Anything else (rows of
//! another writer in between, a relay that failed, a restart) is relayed from the table in
//! `seq` order, so per-key order holds and a crash at any point republishes, never loses.
//!
//! A failing batch makes the handler return an error: the actor dies, the supervisor
//! restarts it with backoff, and the new actor's feed rewinds to the last stored offset.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::backoff::Backoff;
use crate::metric_names as m;
use crate::ports::{
    BatchReport, DeadLetter, EventPublisher, FeedSource, InboundRecord, OutboundRecord,
    OutboxRecord, PartitionFeed, RosterCache, ScimBatch, SecurityEvent, TenantStore,
};
use crate::ports::{Job, JobKind, JobPriority, NewJob, ProgressSnapshot};
use crate::scim::{self, ParseLimits, RejectCode, Rejection};
use crate::tenant::{TenantId, TopicKind};
use crate::upstream::{
    CatalogCourse, LimiterSettings, MindTickleApi, TenantLimiter, UpstreamError,
};

/// The adapters every tenant actor works through.
#[derive(Clone)]
pub struct TenantDeps {
    pub store: Arc<dyn TenantStore>,
    pub cache: Arc<dyn RosterCache>,
    pub publisher: Arc<dyn EventPublisher>,
    pub feeds: Arc<dyn FeedSource>,
    pub upstream: Arc<dyn MindTickleApi>,
    /// Default limits of each tenant's upstream budget.
    pub limits: LimiterSettings,
}

/// Why a progress sync did not complete.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SyncError {
    #[error("upstream: {0}")]
    Upstream(#[from] UpstreamError),
    #[error("store: {0}")]
    Store(String),
}

/// Tuning of the per-tenant pipeline (from `[pipeline]` in the config).
#[derive(Debug, Clone)]
pub struct PipelineSettings {
    /// Most events committed in one transaction.
    pub max_batch_events: usize,
    /// How long a partial batch waits for more records before it is handed over.
    pub batch_linger: Duration,
    /// Buffered records at which the partition is paused.
    pub high_water: usize,
    /// Buffered records at which a paused partition resumes.
    pub low_water: usize,
    /// Larger payloads are rejected to the DLQ.
    pub max_message_bytes: usize,
    /// Outbox rows relayed per round trip.
    pub outbox_batch: usize,
    /// Delay before retrying an outbox relay that failed.
    pub outbox_retry: Duration,
    /// How often an idle job pump looks at the queue without being woken.
    pub job_poll: Duration,
    /// How long a relay cursor may wait for the next batch to carry it before it is
    /// stored on its own (a crash in between republishes, at least once, never loses).
    pub cursor_store_delay: Duration,
    /// Batch transactions one process runs at once, across its tenants. Each tenant has
    /// at most one in flight anyway; this bounds how many the database works on together
    /// (more concurrent writers than its cores only add contention) and leaves the rest
    /// of the pool to job pumps and the API. Waiting batches are served in arrival order.
    pub max_concurrent_batches: usize,
    /// Largest record the broker accepts (`kafka.max_record_bytes`): dead letters are cut
    /// to fit, and `max_message_bytes` leaves room for the `user_changed` envelope.
    pub max_record_bytes: usize,
    /// Bytes of payload one tenant may hold in the service (buffered and in flight); its
    /// feed pauses at this, like at `high_water` records, and resumes below half of it.
    pub tenant_buffer_max_bytes: usize,
    /// Bytes of payload all tenants of the process may hold together. Past it, a tenant
    /// that already holds records fetches no more; one holding none may still take one,
    /// so every tenant keeps moving and the total stays within this plus one record each.
    pub process_buffer_max_bytes: usize,
    /// `occurredAt` later than now plus this is dead-lettered as implausible.
    pub max_future_skew: Duration,
    /// Waiting out a database outage: a batch whose transaction failed for a transient
    /// reason is retried after this capped, jittered backoff (never skipped, never parked).
    pub retry_backoff: Backoff,
}

impl Default for PipelineSettings {
    fn default() -> Self {
        Self {
            max_batch_events: 500,
            batch_linger: Duration::from_millis(5),
            high_water: 2000,
            low_water: 500,
            max_message_bytes: 256 * 1024,
            outbox_batch: 1000,
            outbox_retry: Duration::from_secs(1),
            job_poll: Duration::from_secs(10),
            cursor_store_delay: Duration::from_secs(1),
            max_concurrent_batches: 4,
            max_record_bytes: 1_000_000,
            tenant_buffer_max_bytes: 8 * 1024 * 1024,
            process_buffer_max_bytes: 128 * 1024 * 1024,
            max_future_skew: Duration::from_secs(24 * 3600),
            retry_backoff: Backoff::new(Duration::from_millis(200), Duration::from_secs(10)),
        }
    }
}

/// Messages a tenant actor handles.
pub enum TenantMsg {
    /// Apply these records (in offset order); reply with the next offset to consume.
    ProcessBatch(Vec<InboundRecord>, RpcReplyPort<i64>),
    /// Relay unsent outbox rows to Kafka.
    FlushOutbox,
    /// Store the relay cursor if no batch carried it meanwhile.
    StoreRelayCursor,
    /// Fetch a user's course progress from MindTickle (under the tenant's limiter), store
    /// it and announce `progress.synced`. Runs beside the SCIM pipeline, never blocking it.
    SyncProgress(String, RpcReplyPort<Result<ProgressSnapshot, SyncError>>),
    /// Fetch the course catalog (under the tenant's limiter), beside the mailbox.
    Catalog(RpcReplyPort<Result<Vec<CatalogCourse>, SyncError>>),
    /// The job pump finished a job: answer whoever waits for it.
    JobDone(i64, Result<ProgressSnapshot, SyncError>),
    /// Another process wrote work for this tenant (outbox rows, queued jobs): relay the
    /// outbox and look at the job queue now rather than at the next poll.
    Wake,
}

/// Configuration of one tenant actor; its [`TenantState`] is built in `pre_start`.
pub struct TenantActor {
    pub tenant: TenantId,
    pub deps: TenantDeps,
    pub settings: PipelineSettings,
    /// Cancelled by the supervisor to drain: stop fetching, finish the batch in flight.
    pub drain: CancellationToken,
    /// Set to `true` by the feeder once drained (its last offset stored).
    pub drained: Arc<watch::Sender<bool>>,
    /// Shared by the process's tenant actors: a batch transaction runs only with a slot.
    pub batch_slots: Arc<tokio::sync::Semaphore>,
    /// Payload bytes held by all tenant feeders of the process.
    pub process_bytes: Arc<std::sync::atomic::AtomicUsize>,
}

pub struct TenantState {
    feed: Arc<dyn PartitionFeed>,
    /// Callers waiting for a queued job, by job id.
    waiters: std::collections::HashMap<i64, RpcReplyPort<Result<ProgressSnapshot, SyncError>>>,
    /// Wakes the job pump when work was queued.
    wake_pump: Arc<tokio::sync::Notify>,
    /// The tenant's upstream budget: every MindTickle call of this tenant waits here.
    limiter: Arc<TenantLimiter>,
    /// The outbox relay cursor as this actor knows it: every seq up to it was published.
    /// 0 until the first relay (the stored cursor then counts as well).
    relayed_through: i64,
    /// The highest cursor this actor wrote to the store.
    cursor_stored: i64,
    /// A `StoreRelayCursor` is on its way.
    cursor_store_scheduled: bool,
    /// Some outbox rows after `relayed_through` may already be on their topics (this is a
    /// new incarnation, or a publish failed part-way): the next table relay looks at the
    /// topics' last `outbox.seq` first.
    relay_uncertain: bool,
    /// Seeds the jitter of this tenant's retry backoff.
    jitter: std::collections::hash_map::RandomState,
    /// Stops the feeder when the state is dropped, including when the actor fails.
    _feeder_guard: DropGuard,
}

impl TenantState {
    /// Sends one `StoreRelayCursor` after `delay` unless one is already on its way.
    fn schedule_cursor_store(&mut self, myself: &ActorRef<TenantMsg>, delay: Duration) {
        if !self.cursor_store_scheduled {
            self.cursor_store_scheduled = true;
            myself.send_after(delay, || TenantMsg::StoreRelayCursor);
        }
    }
}

impl Actor for TenantActor {
    type Msg = TenantMsg;
    type State = TenantState;
    type Arguments = ();

    async fn pre_start(
        &self,
        myself: ActorRef<TenantMsg>,
        _: (),
    ) -> Result<TenantState, ActorProcessingErr> {
        let feed = self.deps.feeds.open(&self.tenant).await?;
        let mut limits = self.deps.limits.clone();
        match self.deps.store.quota_override(&self.tenant).await {
            Ok(Some(per_min)) => limits.requests_per_min = per_min,
            Ok(None) => {}
            // A database outage must not keep the tenant's pipeline from starting; the
            // default budget applies until the next start.
            Err(e) => tracing::warn!(tenant = %self.tenant, error = %e,
                "reading the quota override failed; using the default budget"),
        }
        let alive = CancellationToken::new();
        let feeder = Feeder {
            tenant: self.tenant.clone(),
            actor: myself.clone(),
            feed: feed.clone(),
            settings: self.settings.clone(),
            drain: self.drain.clone(),
            alive: alive.clone(),
            drained: self.drained.clone(),
            process_bytes: self.process_bytes.clone(),
        };
        tokio::spawn(feeder.run());
        // Relay whatever a previous incarnation committed but did not publish.
        myself.cast(TenantMsg::FlushOutbox)?;
        tracing::info!(tenant = %self.tenant, "tenant actor started");
        let limiter = Arc::new(TenantLimiter::for_tenant(&self.tenant, limits));
        let wake_pump = Arc::new(tokio::sync::Notify::new());
        tokio::spawn(
            JobPump {
                tenant: self.tenant.clone(),
                deps: self.deps.clone(),
                limiter: limiter.clone(),
                actor: myself.clone(),
                wake: wake_pump.clone(),
                alive: alive.clone(),
                poll: self.settings.job_poll,
            }
            .run(),
        );
        Ok(TenantState {
            feed,
            waiters: Default::default(),
            wake_pump,
            limiter,
            relayed_through: 0,
            cursor_stored: 0,
            cursor_store_scheduled: false,
            relay_uncertain: true,
            jitter: Default::default(),
            _feeder_guard: alive.drop_guard(),
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<TenantMsg>,
        msg: TenantMsg,
        state: &mut TenantState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            TenantMsg::ProcessBatch(records, reply) => {
                let next = self.process_batch(&myself, state, records).await?;
                let _ = state.feed.store_offset(next);
                let _ = reply.send(next);
            }
            TenantMsg::FlushOutbox => self.flush_outbox(&myself, state).await,
            TenantMsg::StoreRelayCursor => {
                state.cursor_store_scheduled = false;
                self.store_cursor(&myself, state).await;
            }
            TenantMsg::Wake => {
                state.wake_pump.notify_one();
                self.flush_outbox(&myself, state).await;
            }
            TenantMsg::SyncProgress(user_id, reply) => {
                // Durable first: the job survives a restart; the caller waits for it only
                // as long as it likes (the HTTP layer answers 202 past its deadline).
                let job = NewJob {
                    priority: JobPriority::Interactive,
                    kind: JobKind::SyncProgress,
                    subject: user_id,
                    payload: serde_json::Value::Null,
                };
                match self.deps.store.enqueue_job(&self.tenant, &job).await {
                    Ok(id) => {
                        state.waiters.insert(id, reply);
                        state.wake_pump.notify_one();
                    }
                    Err(e) => {
                        let _ = reply.send(Err(SyncError::Store(e.to_string())));
                    }
                }
            }
            TenantMsg::JobDone(id, result) => {
                if let Some(reply) = state.waiters.remove(&id) {
                    let _ = reply.send(result);
                }
            }
            TenantMsg::Catalog(reply) => {
                let (tenant, deps, limiter) = (
                    self.tenant.clone(),
                    self.deps.clone(),
                    state.limiter.clone(),
                );
                tokio::spawn(async move {
                    let result = limiter.run(|| deps.upstream.catalog(&tenant)).await;
                    let _ = reply.send(result.map_err(SyncError::from));
                });
            }
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        myself: ActorRef<TenantMsg>,
        state: &mut TenantState,
    ) -> Result<(), ActorProcessingErr> {
        self.flush_outbox(&myself, state).await;
        self.store_cursor(&myself, state).await;
        tracing::info!(tenant = %self.tenant, "tenant actor stopped");
        Ok(())
    }
}

impl TenantActor {
    /// Validates, dead-letters, applies and relays one micro-batch. Returns the next offset.
    async fn process_batch(
        &self,
        myself: &ActorRef<TenantMsg>,
        state: &mut TenantState,
        records: Vec<InboundRecord>,
    ) -> Result<i64, ActorProcessingErr> {
        let started = Instant::now();
        let Some(next_offset) = records.iter().map(|r| r.offset + 1).max() else {
            return Err("empty batch handed to tenant actor".into());
        };
        let limits = ParseLimits::at(
            time::OffsetDateTime::now_utc(),
            self.settings.max_message_bytes,
            self.settings.max_future_skew,
        );
        let event_count = self
            .commit_isolating(myself, state, &records, None, limits)
            .await?;
        metrics::histogram!(m::SCIM_BATCH_DURATION_SECONDS).record(started.elapsed().as_secs_f64());
        metrics::histogram!(m::SCIM_BATCH_SIZE_EVENTS).record(event_count as f64);
        Ok(next_offset)
    }

    /// Commits the effects of `records` (plus `refused`, a record the database refused
    /// before): a transient failure is waited out and retried; a batch the database refuses
    /// for any other reason is split in halves until the refused record is alone, and that
    /// record is dead-lettered while every other record is applied. Returns the events
    /// applied. Fails only when even a dead letter alone cannot be committed (persistent for
    /// this tenant: the supervisor restarts, then parks it) or the actor is draining.
    fn commit_isolating<'a>(
        &'a self,
        myself: &'a ActorRef<TenantMsg>,
        state: &'a mut TenantState,
        records: &'a [InboundRecord],
        refused: Option<DeadLetter>,
        limits: ParseLimits,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<usize, ActorProcessingErr>> + Send + 'a>,
    > {
        Box::pin(async move {
            let mut attempt = 0u32;
            let error = loop {
                // Parsed again on every attempt: the store consumes the batch, and the
                // happy path must not pay for a copy.
                let prepared = prepare(
                    &self.tenant,
                    records,
                    refused.clone(),
                    limits,
                    self.settings.max_record_bytes,
                );
                if prepared.batch.events.is_empty()
                    && prepared.batch.security_events.is_empty()
                    && prepared.batch.dead_letters.is_empty()
                {
                    return Ok(0);
                }
                let events = prepared.batch.events.len();
                // The cursor rides along when this actor relayed rows since it last stored one.
                let carry = if state.relayed_through > state.cursor_stored {
                    state.relayed_through
                } else {
                    0
                };
                let slot = self.batch_slots.acquire().await?;
                let result = self
                    .deps
                    .store
                    .apply_scim_batch(&self.tenant, prepared.batch, carry)
                    .await;
                drop(slot);
                match result {
                    Ok(report) => {
                        state.cursor_stored = state.cursor_stored.max(carry);
                        self.after_commit(myself, state, report, &prepared.notes)
                            .await;
                        return Ok(events);
                    }
                    Err(e) if e.is_transient() => {
                        attempt += 1;
                        let delay = self.settings.retry_backoff.jittered(
                            &state.jitter,
                            self.tenant.as_str().as_bytes(),
                            attempt,
                            1.0,
                            1.25,
                        );
                        metrics::counter!(m::SCIM_BATCH_RETRIES_TOTAL, "reason" => "transient")
                            .increment(1);
                        tracing::warn!(tenant = %self.tenant, error = %e, attempt,
                            delay_ms = delay.as_millis() as u64,
                            "batch hit a transient database failure; waiting it out");
                        tokio::select! {
                            _ = self.drain.cancelled() => return Err(e.into()),
                            _ = tokio::time::sleep(delay) => continue,
                        }
                    }
                    Err(e) => break e,
                }
            };
            match records {
                [] => {
                    // Only dead letters and security events were left, and even they were
                    // refused: nothing to isolate any more.
                    tracing::error!(tenant = %self.tenant, error = %error,
                        "a batch of dead letters alone was refused");
                    Err(error.into())
                }
                [single] => {
                    metrics::counter!(m::SCIM_BATCH_RETRIES_TOTAL, "reason" => "isolated")
                        .increment(1);
                    tracing::warn!(tenant = %self.tenant, offset = single.offset,
                        error = %error, "the database refused one record; dead-lettering it");
                    let rejection = Rejection::new(
                        RejectCode::DatabaseRefused,
                        format!("the database refused the event: {error}"),
                    );
                    let letter =
                        dead_letter(single.clone(), &rejection, self.settings.max_record_bytes);
                    self.commit_isolating(myself, state, &[], Some(letter), limits)
                        .await
                }
                _ => {
                    metrics::counter!(m::SCIM_BATCH_RETRIES_TOTAL, "reason" => "split")
                        .increment(1);
                    tracing::info!(tenant = %self.tenant, records = records.len(),
                        error = %error, "batch refused; splitting it to isolate the record");
                    let (left, right) = records.split_at(records.len() / 2);
                    let a = self
                        .commit_isolating(myself, state, left, refused, limits)
                        .await?;
                    let b = self
                        .commit_isolating(myself, state, right, None, limits)
                        .await?;
                    Ok(a + b)
                }
            }
        })
    }

    /// Counts, logs, invalidates and relays what a committed batch did.
    async fn after_commit(
        &self,
        myself: &ActorRef<TenantMsg>,
        state: &mut TenantState,
        report: BatchReport,
        notes: &BatchNotes,
    ) {
        let tenant = &self.tenant;
        let label = tenant.as_str().to_owned();
        for offset in &notes.mismatches {
            tracing::error!(tenant = %tenant, offset,
                "security event: payload names another tenant");
            metrics::counter!(m::SECURITY_EVENTS_TOTAL, "kind" => "tenant_mismatch").increment(1);
        }
        for reason in &notes.dead_reasons {
            metrics::counter!(m::SCIM_DLQ_TOTAL, "tenant" => label.clone(), "reason" => *reason)
                .increment(1);
        }
        for (outcome, n) in [
            ("applied", report.applied),
            ("unchanged", report.unchanged),
            ("stale", report.stale),
            ("duplicate", report.duplicate),
        ] {
            if n > 0 {
                metrics::counter!(m::SCIM_EVENTS_TOTAL, "tenant" => label.clone(),
                    "outcome" => outcome)
                .increment(n);
            }
        }
        if report.jobs_queued > 0 {
            state.wake_pump.notify_one();
        }
        if report.applied > 0 {
            if let Err(e) = self.deps.cache.invalidate_roster(tenant).await {
                tracing::warn!(tenant = %tenant, error = %e, "roster invalidation failed");
                metrics::counter!(m::CACHE_ERRORS_TOTAL, "operation" => "invalidate").increment(1);
            }
        }
        if !report.outbox.is_empty() {
            self.relay_committed(myself, state, report.outbox).await;
        }
    }

    /// Publishes rows this actor just committed, from memory, when they directly follow
    /// what it relayed before; otherwise relays from the table so `seq` order holds.
    async fn relay_committed(
        &self,
        myself: &ActorRef<TenantMsg>,
        state: &mut TenantState,
        rows: Vec<OutboxRecord>,
    ) {
        let (Some(first), Some(last)) = (rows.first(), rows.last()) else {
            return;
        };
        let (first, last, n) = (first.seq, last.seq, rows.len());
        if first != state.relayed_through + 1 {
            self.flush_outbox(myself, state).await;
            return;
        }
        let records = rows.into_iter().map(outbound).collect();
        match self.deps.publisher.publish(&self.tenant, records).await {
            Ok(()) => {
                state.relayed_through = last;
                metrics::counter!(m::OUTBOX_PUBLISHED_TOTAL,
                    "tenant" => self.tenant.as_str().to_owned())
                .increment(n as u64);
                state.schedule_cursor_store(myself, self.settings.cursor_store_delay);
            }
            Err(e) => {
                // The rows are durable: the retry relays them from the table, in order,
                // skipping what reached the topics before the failure.
                state.relay_uncertain = true;
                tracing::warn!(tenant = %self.tenant, error = %e, "outbox relay failed; retrying");
                myself.send_after(self.settings.outbox_retry, || TenantMsg::FlushOutbox);
            }
        }
    }

    /// Stores the relay cursor when no batch carried it. A failure is retried later; in
    /// between, a crash would only republish.
    async fn store_cursor(&self, myself: &ActorRef<TenantMsg>, state: &mut TenantState) {
        if state.relayed_through <= state.cursor_stored {
            return;
        }
        let through = state.relayed_through;
        match self
            .deps
            .store
            .mark_outbox_relayed(&self.tenant, through)
            .await
        {
            Ok(()) => state.cursor_stored = state.cursor_stored.max(through),
            Err(e) => {
                tracing::warn!(tenant = %self.tenant, error = %e, "storing the relay cursor failed");
                state.schedule_cursor_store(myself, self.settings.outbox_retry);
            }
        }
    }

    /// Relays the outbox from the table until it is empty. A failure is logged and retried
    /// later: the rows are durable, so the batch that wrote them stays committed.
    async fn flush_outbox(&self, myself: &ActorRef<TenantMsg>, state: &mut TenantState) {
        loop {
            match self.relay_once(state).await {
                Ok(0) => return,
                Ok(n) if n < self.settings.outbox_batch => return,
                Ok(_) => continue,
                Err(e) => {
                    tracing::warn!(tenant = %self.tenant, error = %e, "outbox relay failed; retrying");
                    myself.send_after(self.settings.outbox_retry, || TenantMsg::FlushOutbox);
                    return;
                }
            }
        }
    }

    async fn relay_once(&self, state: &mut TenantState) -> Result<usize, ActorProcessingErr> {
        let mut rows = self
            .deps
            .store
            .pending_outbox(
                &self.tenant,
                state.relayed_through,
                self.settings.outbox_batch,
            )
            .await?;
        let Some(last) = rows.last().map(|r| r.seq) else {
            return Ok(0);
        };
        let n = rows.len();
        if state.relay_uncertain {
            // A previous incarnation (or a failed publish) may have put some of these rows
            // on their topics without storing the cursor: skip what each topic already has.
            let mut topics: Vec<TopicKind> = rows.iter().map(|r| r.topic).collect();
            topics.sort_by_key(|t| t.suffix());
            topics.dedup();
            for topic in topics {
                if let Some(on_topic) = self
                    .deps
                    .publisher
                    .last_outbox_seq(&self.tenant, topic)
                    .await?
                {
                    rows.retain(|r| r.topic != topic || r.seq > on_topic);
                }
            }
            if rows.len() < n {
                tracing::info!(tenant = %self.tenant, skipped = n - rows.len(),
                    "outbox rows already on their topics; not republished");
            }
        }
        let records = rows.into_iter().map(outbound).collect();
        if let Err(e) = self.deps.publisher.publish(&self.tenant, records).await {
            state.relay_uncertain = true;
            return Err(e.into());
        }
        state.relay_uncertain = false;
        state.relayed_through = state.relayed_through.max(last);
        self.deps
            .store
            .mark_outbox_relayed(&self.tenant, last)
            .await?;
        state.cursor_stored = state.cursor_stored.max(last);
        metrics::counter!(m::OUTBOX_PUBLISHED_TOTAL, "tenant" => self.tenant.as_str().to_owned())
            .increment(n as u64);
        Ok(n)
    }
}

/// The Kafka record of an outbox row; `outbox.seq` lets consumers drop republished rows.
fn outbound(r: OutboxRecord) -> OutboundRecord {
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
pub(crate) fn outbound_for_tests(r: OutboxRecord) -> OutboundRecord {
    outbound(r)
}

/// What validation found besides the batch, reported once the batch committed.
#[derive(Default)]
struct BatchNotes {
    /// Offsets of payloads naming another tenant (security events).
    mismatches: Vec<i64>,
    /// Reason of every dead letter in the batch.
    dead_reasons: Vec<&'static str>,
}

struct Prepared {
    batch: ScimBatch,
    notes: BatchNotes,
}

/// Validates the records into a batch: events, dead letters (with their reason) and
/// security events. Pure, so a retry or a split prepares the same batch again.
fn prepare(
    tenant: &TenantId,
    records: &[InboundRecord],
    refused: Option<DeadLetter>,
    limits: ParseLimits,
    max_record_bytes: usize,
) -> Prepared {
    let mut batch = ScimBatch::default();
    let mut notes = BatchNotes::default();
    for rec in records {
        match scim::parse_event(tenant, &rec.payload, limits) {
            Ok(ev) => batch.events.push(ev),
            Err(rejection) => {
                if rejection.code == RejectCode::TenantMismatch {
                    notes.mismatches.push(rec.offset);
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
    notes.dead_reasons = batch.dead_letters.iter().map(|d| d.reason).collect();
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
    headers.push((
        "dlq.reason".into(),
        rejection.code.as_str().as_bytes().to_vec(),
    ));
    headers.push((
        "dlq.detail".into(),
        storable(&rejection.detail).into_bytes(),
    ));
    headers.push((
        "dlq.source.topic".into(),
        TopicKind::Scim.suffix().as_bytes().to_vec(),
    ));
    headers.push((
        "dlq.source.offset".into(),
        rec.offset.to_string().into_bytes(),
    ));
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

/// Reads the tenant's partition into a bounded buffer and feeds the actor one batch at a time.
struct Feeder {
    tenant: TenantId,
    actor: ActorRef<TenantMsg>,
    feed: Arc<dyn PartitionFeed>,
    settings: PipelineSettings,
    drain: CancellationToken,
    alive: CancellationToken,
    drained: Arc<watch::Sender<bool>>,
    process_bytes: Arc<std::sync::atomic::AtomicUsize>,
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

type InFlight = std::pin::Pin<Box<dyn std::future::Future<Output = Option<i64>> + Send>>;

impl Feeder {
    async fn run(self) {
        let label = self.tenant.as_str().to_owned();
        let backlog = metrics::gauge!(m::TENANT_BACKLOG_MESSAGES, "tenant" => label.clone());
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
                    let actor = self.actor.clone();
                    let fut: InFlight = Box::pin(async move {
                        match actor
                            .call(|reply| TenantMsg::ProcessBatch(batch, reply), None)
                            .await
                        {
                            Ok(ractor::rpc::CallResult::Success(next)) => Some(next),
                            _ => None,
                        }
                    });
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
                        if next_expected.is_some_and(|n| rec.offset > n) {
                            // Legitimate with transaction markers or compaction; otherwise a
                            // broker skipped records. Visible, never silent.
                            tracing::warn!(tenant = %self.tenant, offset = rec.offset,
                                expected = ?next_expected, "offset gap in tenant partition");
                            metrics::counter!(m::FEED_ERRORS_TOTAL, "kind" => "offset_gap").increment(1);
                        }
                        next_expected = Some(rec.offset + 1);
                        held.add(rec.payload.len());
                        buffer.push_back(rec);
                        if linger_until.is_none() && in_flight.is_none() {
                            linger_until = Some(Instant::now() + self.settings.batch_linger);
                        }
                        if !paused && buffer.len() >= self.settings.high_water {
                            tracing::debug!(tenant = %self.tenant, "pausing at high water");
                            paused = true;
                            metrics::counter!(m::TENANT_PARTITION_PAUSES_TOTAL, "tenant" => label.clone())
                                .increment(1);
                        } else if !paused && held.mine >= tenant_budget {
                            tracing::debug!(tenant = %self.tenant, bytes = held.mine,
                                "pausing at the tenant's byte budget");
                            paused = true;
                            metrics::counter!(m::TENANT_BYTE_BUDGET_PAUSES_TOTAL, "tenant" => label.clone())
                                .increment(1);
                        }
                    }
                    Err(e) => {
                        tracing::warn!(tenant = %self.tenant, error = %e, "feed receive failed");
                        metrics::counter!(m::FEED_ERRORS_TOTAL, "kind" => "recv").increment(1);
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                },
            }
        }
        backlog.set(0.0);
        let _ = self.drained.send(true);
    }
}

/// Drains the tenant's durable upstream queue, one job at a time, under its limiter.
struct JobPump {
    tenant: TenantId,
    deps: TenantDeps,
    limiter: Arc<TenantLimiter>,
    actor: ActorRef<TenantMsg>,
    wake: Arc<tokio::sync::Notify>,
    alive: CancellationToken,
    poll: Duration,
}

impl JobPump {
    async fn run(self) {
        loop {
            let next = tokio::select! {
                _ = self.alive.cancelled() => return,
                next = self.deps.store.next_job(&self.tenant) => next,
            };
            self.publish_depth().await;
            match next {
                Ok(Some(job)) => {
                    tokio::select! {
                        _ = self.alive.cancelled() => return,
                        _ = self.execute(job) => {}
                    }
                }
                Ok(None) => {
                    tokio::select! {
                        _ = self.alive.cancelled() => return,
                        _ = self.wake.notified() => {}
                        _ = tokio::time::sleep(self.poll) => {}
                    }
                }
                Err(e) => {
                    tracing::warn!(tenant = %self.tenant, error = %e, "reading the job queue failed");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }

    async fn publish_depth(&self) {
        if let Ok(depths) = self.deps.store.queue_depth(&self.tenant).await {
            for (priority, n) in depths {
                metrics::gauge!(m::UPSTREAM_QUEUE_DEPTH, "tenant" => self.tenant.as_str().to_owned(),
                    "priority" => priority.as_str())
                .set(n as f64);
            }
        }
    }

    async fn execute(&self, job: Job) {
        let (tenant, deps) = (&self.tenant, &self.deps);
        match job.kind {
            JobKind::SyncProgress => {
                let fetched = self
                    .limiter
                    .run(|| deps.upstream.user_courses(tenant, &job.subject))
                    .await;
                let result = match fetched {
                    Ok(courses) => match deps.store.finish_sync_job(tenant, job.id, &courses).await
                    {
                        Ok(snapshot) => {
                            let _ = self.actor.cast(TenantMsg::FlushOutbox);
                            Ok(snapshot)
                        }
                        Err(e) => {
                            // Still pending: retried on the next turn (effects not committed).
                            tracing::warn!(tenant = %tenant, error = %e, "finishing a sync job failed");
                            tokio::time::sleep(Duration::from_secs(1)).await;
                            return;
                        }
                    },
                    Err(e) => {
                        let _ = deps
                            .store
                            .finish_job(tenant, job.id, Some(&e.to_string()))
                            .await;
                        Err(SyncError::from(e))
                    }
                };
                let synced = result.is_ok();
                // Answer the waiter before relaying: the caller should not wait for Kafka.
                let _ = self.actor.cast(TenantMsg::JobDone(job.id, result));
                if synced {
                    let _ = self.actor.cast(TenantMsg::FlushOutbox);
                }
            }
            JobKind::PushUser => {
                let pushed = self
                    .limiter
                    .run(|| deps.upstream.push_user(tenant, &job.payload))
                    .await;
                let error = pushed.err().map(|e| e.to_string());
                if let Err(e) = deps
                    .store
                    .finish_job(tenant, job.id, error.as_deref())
                    .await
                {
                    tracing::warn!(tenant = %tenant, error = %e, "finishing a push job failed");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }
}
