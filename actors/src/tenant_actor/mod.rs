//! The [`TenantActor`]: one per tenant, owning that tenant's feed, rate budget, store
//! handle and cache namespace. A thin actor over four plain parts, each tested on its own:
//!
//! - [`feeder`]: pulls the tenant's partition into a bounded buffer and hands the actor one
//!   micro-batch at a time (backpressure ends in the broker's log);
//! - [`batch`]: validates a batch with the SCIM rules and commits it in one transaction,
//!   waiting out outages and isolating records the database refuses;
//! - [`relay`]: publishes committed outbox rows in `seq` order, once;
//! - [`jobs`]: drains the tenant's durable upstream queue under its limiter.
//!
//! The path of one SCIM record through here reads top to bottom in `handle`: the feeder's
//! `ProcessBatch` → [`batch::BatchPipeline::handle`] → [`relay::OutboxRelay::publish_committed`]
//! → the feed's offset stored (only now: the effects are committed) → reply to the feeder.
//!
//! A failing batch makes the handler return an error: the actor dies, the supervisor
//! restarts it with backoff, and the new actor's feed rewinds to the last stored offset.

mod activity;
mod batch;
mod feeder;
mod jobs;
mod relay;
mod settings;

use std::collections::HashMap;
use std::sync::Arc;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tokio::sync::watch;
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::ports::{
    EventPublisher, FeedSource, JobKind, JobPriority, NewJob, PartitionFeed, ProgressSnapshot,
    RosterCache, TenantStore,
};
use crate::tenant::TenantId;
use crate::upstream::{
    CatalogCourse, LimiterBook, LimiterSettings, MindTickleApi, TenantLimiter, UpstreamError,
};
pub use activity::Activity;
use batch::BatchPipeline;
use feeder::Feeder;
use jobs::{JobPump, PumpReport};
use relay::{OutboxRelay, RelayNext};
pub use settings::PipelineSettings;

#[cfg(test)]
pub(crate) use relay::outbound as outbound_for_tests;

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

/// Messages a tenant actor handles.
pub enum TenantMsg {
    /// Apply these records (in offset order); reply with the next offset to consume.
    ProcessBatch(Vec<crate::ports::InboundRecord>, RpcReplyPort<i64>),
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
    /// outbox and look at the job queue now rather than at the next poll. The wake-ups that
    /// arrive before the relay they asked for has started share it: a writer committing
    /// hundreds of transactions a second costs the relay one pass per pass, not one each.
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
    /// Touched on every message: the supervisor passivates the actor when it idles.
    pub activity: Arc<Activity>,
    /// The process's tenant limiters, kept across this actor's restarts and passivation.
    pub limiters: Arc<LimiterBook>,
}

pub struct TenantState {
    feed: Arc<dyn PartitionFeed>,
    pipeline: BatchPipeline,
    relay: OutboxRelay,
    /// Callers waiting for a queued job, by job id.
    waiters: HashMap<i64, RpcReplyPort<Result<ProgressSnapshot, SyncError>>>,
    /// Wakes the job pump when work was queued.
    wake_pump: Arc<tokio::sync::Notify>,
    /// The tenant's upstream budget: every MindTickle call of this tenant waits here.
    limiter: Arc<TenantLimiter>,
    /// A `StoreRelayCursor` is on its way.
    cursor_store_scheduled: bool,
    /// A `FlushOutbox` asked for by a `Wake` is in the mailbox and has not started.
    wake_flush_queued: bool,
    /// Stops the feeder and the job pump when the state is dropped, failure included.
    _tasks_guard: DropGuard,
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
        let (tenant, deps) = (&self.tenant, &self.deps);
        let feed = deps.feeds.open(tenant).await?;
        let mut limits = deps.limits.clone();
        match deps.store.quota_override(tenant).await {
            Ok(Some(per_min)) => limits.requests_per_min = per_min,
            Ok(None) => {}
            // A database outage must not keep the tenant's pipeline from starting; the
            // default budget applies until the next start.
            Err(e) => tracing::warn!(tenant = %tenant, error = %e,
                "reading the quota override failed; using the default budget"),
        }
        let limiter: Arc<TenantLimiter> = self.limiters.limiter(tenant, limits);
        let alive = CancellationToken::new();
        let wake_pump = Arc::new(tokio::sync::Notify::new());
        let actor = myself.clone();
        tokio::spawn(
            Feeder {
                tenant: tenant.clone(),
                hand_over: Arc::new(move |batch| {
                    let actor = actor.clone();
                    Box::pin(async move {
                        match actor
                            .call(|reply| TenantMsg::ProcessBatch(batch, reply), None)
                            .await
                        {
                            Ok(ractor::rpc::CallResult::Success(next)) => Some(next),
                            _ => None,
                        }
                    })
                }),
                feed: feed.clone(),
                settings: self.settings.clone(),
                drain: self.drain.clone(),
                alive: alive.clone(),
                drained: self.drained.clone(),
                process_bytes: self.process_bytes.clone(),
            }
            .run(),
        );
        let actor = myself.clone();
        tokio::spawn(
            JobPump {
                tenant: tenant.clone(),
                store: deps.store.clone(),
                upstream: deps.upstream.clone(),
                cache: deps.cache.clone(),
                limiter: limiter.clone(),
                report: Arc::new(move |report| {
                    let _ = actor.cast(match report {
                        PumpReport::Finished(id, result) => TenantMsg::JobDone(id, result),
                        PumpReport::OutboxWritten => TenantMsg::FlushOutbox,
                    });
                }),
                wake: wake_pump.clone(),
                alive: alive.clone(),
                poll: self.settings.job_poll,
                activity: self.activity.clone(),
            }
            .run(),
        );
        // Relay whatever a previous incarnation committed but did not publish.
        myself.cast(TenantMsg::FlushOutbox)?;
        tracing::info!(tenant = %tenant, "tenant actor started");
        Ok(TenantState {
            feed,
            pipeline: BatchPipeline {
                tenant: tenant.clone(),
                store: deps.store.clone(),
                cache: deps.cache.clone(),
                settings: self.settings.clone(),
                batch_slots: self.batch_slots.clone(),
                drain: self.drain.clone(),
                jitter: Default::default(),
            },
            relay: OutboxRelay::new(
                tenant.clone(),
                deps.store.clone(),
                deps.publisher.clone(),
                self.settings.outbox_batch,
            ),
            waiters: HashMap::new(),
            wake_pump,
            limiter,
            cursor_store_scheduled: false,
            wake_flush_queued: false,
            _tasks_guard: alive.drop_guard(),
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<TenantMsg>,
        msg: TenantMsg,
        state: &mut TenantState,
    ) -> Result<(), ActorProcessingErr> {
        self.activity.touch();
        match msg {
            TenantMsg::ProcessBatch(records, reply) => {
                let handled = state.pipeline.handle(records, &mut state.relay).await?;
                if handled.jobs_queued {
                    state.wake_pump.notify_one();
                }
                let next = state.relay.publish_committed(handled.outbox).await;
                self.follow(&myself, state, next);
                let _ = state.feed.store_offset(handled.next_offset);
                let _ = reply.send(handled.next_offset);
            }
            TenantMsg::FlushOutbox => {
                // Whatever was committed before this point is read by this pass: a wake-up
                // from now on asks for the next one.
                state.wake_flush_queued = false;
                let next = state.relay.flush().await;
                self.follow(&myself, state, next);
            }
            TenantMsg::StoreRelayCursor => {
                state.cursor_store_scheduled = false;
                let next = state.relay.store_cursor().await;
                self.follow(&myself, state, next);
            }
            TenantMsg::Wake => {
                state.wake_pump.notify_one();
                // A relay pass queued behind this wake-up (not started yet) reads the rows
                // it announces, which were committed before it was sent.
                if !state.wake_flush_queued {
                    state.wake_flush_queued = true;
                    myself.cast(TenantMsg::FlushOutbox)?;
                }
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
                        self.activity.waiting(true);
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
                    self.activity.waiting(false);
                    let _ = reply.send(result);
                }
            }
            TenantMsg::Catalog(reply) => {
                let (tenant, upstream, limiter, activity) = (
                    self.tenant.clone(),
                    self.deps.upstream.clone(),
                    state.limiter.clone(),
                    self.activity.clone(),
                );
                tokio::spawn(async move {
                    let _busy = activity.busy();
                    let result = limiter.run(|| upstream.catalog(&tenant)).await;
                    let _ = reply.send(result.map_err(SyncError::from));
                });
            }
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<TenantMsg>,
        state: &mut TenantState,
    ) -> Result<(), ActorProcessingErr> {
        state.relay.flush().await;
        state.relay.store_cursor().await;
        tracing::info!(tenant = %self.tenant, "tenant actor stopped");
        Ok(())
    }
}

impl TenantActor {
    /// Turns what the relay asks for into a timer on this actor's mailbox.
    fn follow(&self, myself: &ActorRef<TenantMsg>, state: &mut TenantState, next: RelayNext) {
        let s = &self.settings;
        let cursor_in = match next {
            RelayNext::Idle => return,
            RelayNext::RetryFlush => {
                myself.send_after(s.outbox_retry, || TenantMsg::FlushOutbox);
                return;
            }
            RelayNext::StoreCursorSoon => s.cursor_store_delay,
            RelayNext::RetryCursorStore => s.outbox_retry,
        };
        if !state.cursor_store_scheduled {
            state.cursor_store_scheduled = true;
            myself.send_after(cursor_in, || TenantMsg::StoreRelayCursor);
        }
    }
}
