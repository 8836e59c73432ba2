//! The [`Supervisor`]: spawns one [`TenantActor`] per tenant assigned to this instance and
//! keeps it alive. A thin actor over [`policy::RestartPolicy`], which holds every decision.
//!
//! Supervision is written out in `handle_supervisor_evt` (ractor's default would stop the
//! supervisor when any child dies): a failed tenant actor is restarted after the policy's
//! backoff, or parked, while every other tenant keeps flowing. Revocation and shutdown
//! drain: the feeder stops fetching, the batch in flight commits and its offset is stored,
//! then the actor stops (flushing its outbox).
//!
//! Passivation: a sweep every quarter of `passivate_after` stops the actors idle that long
//! (drained like a revocation) and keeps their tenants owned. A passivated tenant's
//! partition stays assigned; a watch on it ([`FeedSource::until_record`]), a job written
//! for it elsewhere ([`SupervisorMsg::Wake`]) or a request ([`SupervisorMsg::Lookup`])
//! starts its actor again. Its limiter is kept meanwhile ([`LimiterBook`]).
//!
//! Nothing outside the actors crate sends these messages: the service talks to tenants
//! through [`crate::tenants::Tenants`].

mod policy;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::metric_names as m;
use crate::ports::{FeedSource, TenantStore};
use crate::tenant::TenantId;
use crate::tenant_actor::{Activity, PipelineSettings, TenantActor, TenantDeps, TenantMsg};
use crate::upstream::LimiterBook;
pub use policy::{ActorStatus, SupervisorSettings, TenantHealth};
use policy::{RestartAfter, RestartPolicy};

pub enum SupervisorMsg {
    /// These tenants' partitions are assigned to this instance: run their actors.
    Assign(Vec<TenantId>),
    /// These tenants' partitions are being revoked: drain and stop their actors.
    Revoke(Vec<TenantId>, RpcReplyPort<()>),
    /// Backoff elapsed for a failed tenant (generation guards against stale timers).
    Restart(TenantId, u64),
    /// The running actor of a tenant on this instance, if any.
    Lookup(TenantId, RpcReplyPort<Option<ActorRef<TenantMsg>>>),
    /// Work for the tenant: wake its actor if it runs here, start it if it is passivated.
    Wake(TenantId, WakeReason),
    /// Passivate the actors idle for `passivate_after` (the periodic sweep).
    PassivateIdle,
    /// Status of every tenant, for `/readyz`.
    Health(RpcReplyPort<Vec<TenantHealth>>),
    /// Drain and stop every tenant actor.
    Shutdown(RpcReplyPort<()>),
}

/// What woke a passivated tenant (the `reason` label of `enablement_tenant_wakes_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WakeReason {
    /// A record arrived on its partition.
    Record,
    /// Work was written for it by another process (a queued job, outbox rows).
    Job,
    /// A request of the HTTP API needs its actor.
    Request,
}

impl WakeReason {
    pub fn as_str(self) -> &'static str {
        match self {
            WakeReason::Record => "record",
            WakeReason::Job => "job",
            WakeReason::Request => "request",
        }
    }
}

pub struct Supervisor {
    pub deps: TenantDeps,
    pub pipeline: PipelineSettings,
    pub settings: SupervisorSettings,
}

/// A running tenant actor and the handles to drain it.
pub struct Running {
    actor: ActorRef<TenantMsg>,
    drain: CancellationToken,
    drained: watch::Receiver<bool>,
    activity: Arc<Activity>,
}

pub struct SupervisorState {
    policy: RestartPolicy<Running>,
    by_actor: HashMap<ActorId, TenantId>,
    /// Batch transactions of this process's tenants in flight at once (shared, FIFO).
    batch_slots: Arc<tokio::sync::Semaphore>,
    /// Payload bytes held by the process's tenant feeders together.
    process_bytes: Arc<std::sync::atomic::AtomicUsize>,
    /// Every owned tenant's limiter, kept across restarts and passivation.
    limiters: Arc<LimiterBook>,
    /// The record watch of each passivated tenant.
    watches: HashMap<TenantId, tokio::task::JoinHandle<()>>,
    /// Checks for work an earlier owner left, run at once (thousands of tenants assigned
    /// together must not exhaust the database pool).
    pending_checks: Arc<tokio::sync::Semaphore>,
}

impl Actor for Supervisor {
    type Msg = SupervisorMsg;
    type State = SupervisorState;
    type Arguments = ();

    async fn pre_start(
        &self,
        myself: ActorRef<SupervisorMsg>,
        _: (),
    ) -> Result<SupervisorState, ActorProcessingErr> {
        if let Some(after) = self.settings.passivate_after {
            let every = (after / 4).clamp(Duration::from_millis(10), Duration::from_secs(30));
            myself.send_interval(every, || SupervisorMsg::PassivateIdle);
        }
        Ok(SupervisorState {
            policy: RestartPolicy::new(self.settings.clone()),
            by_actor: HashMap::new(),
            batch_slots: Arc::new(tokio::sync::Semaphore::new(
                self.pipeline.max_concurrent_batches.max(1),
            )),
            process_bytes: Default::default(),
            limiters: Default::default(),
            watches: HashMap::new(),
            pending_checks: Arc::new(tokio::sync::Semaphore::new(PENDING_CHECKS_AT_ONCE)),
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<SupervisorMsg>,
        msg: SupervisorMsg,
        state: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            SupervisorMsg::Assign(tenants) => {
                let lazily =
                    self.settings.start_passivated && self.settings.passivate_after.is_some();
                for tenant in tenants {
                    if lazily {
                        if state.policy.admit_passivated(&tenant) {
                            self.watch(&myself, state, tenant, true);
                        }
                    } else if state.policy.admit(&tenant) {
                        self.start(&myself, state, &tenant).await;
                    }
                }
            }
            SupervisorMsg::Restart(tenant, generation) => {
                if state.policy.restart_due(&tenant, generation) {
                    self.start(&myself, state, &tenant).await;
                }
            }
            SupervisorMsg::Revoke(tenants, reply) => {
                self.drain(state, &tenants).await;
                let _ = reply.send(());
            }
            SupervisorMsg::Shutdown(reply) => {
                let all = state.policy.tenants();
                self.drain(state, &all).await;
                let _ = reply.send(());
            }
            SupervisorMsg::Lookup(tenant, reply) => {
                self.wake(&myself, state, &tenant, WakeReason::Request)
                    .await;
                let _ = reply.send(state.policy.handle(&tenant).map(|r| r.actor.clone()));
            }
            SupervisorMsg::Wake(tenant, reason) => {
                if !self.wake(&myself, state, &tenant, reason).await {
                    if let Some(r) = state.policy.handle(&tenant) {
                        let _ = r.actor.cast(TenantMsg::Wake);
                    }
                }
            }
            SupervisorMsg::PassivateIdle => self.passivate_idle(&myself, state).await,
            SupervisorMsg::Health(reply) => {
                let _ = reply.send(state.policy.health());
            }
        }
        publish_gauges(state);
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<SupervisorMsg>,
        event: SupervisionEvent,
        state: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        let (cell, reason) = match event {
            SupervisionEvent::ActorFailed(cell, err) => (cell, err.to_string()),
            SupervisionEvent::ActorTerminated(cell, _, _) => (cell, "stopped unexpectedly".into()),
            _ => return Ok(()),
        };
        // A drained actor was forgotten before it stopped: not a failure.
        if let Some(tenant) = state.by_actor.remove(&cell.get_id()) {
            if let Some(next) = state.policy.failed(&tenant, &reason) {
                schedule_restart(&myself, tenant, next);
            }
        }
        publish_gauges(state);
        Ok(())
    }
}

impl Supervisor {
    /// Spawns the tenant's actor; a spawn failure counts as a failure of the actor.
    async fn start(
        &self,
        myself: &ActorRef<SupervisorMsg>,
        state: &mut SupervisorState,
        tenant: &TenantId,
    ) {
        let drain = CancellationToken::new();
        let (drained_tx, drained_rx) = watch::channel(false);
        let activity = Arc::new(Activity::new());
        let actor = TenantActor {
            tenant: tenant.clone(),
            deps: self.deps.clone(),
            settings: self.pipeline.clone(),
            drain: drain.clone(),
            drained: Arc::new(drained_tx),
            batch_slots: state.batch_slots.clone(),
            process_bytes: state.process_bytes.clone(),
            activity: activity.clone(),
            limiters: state.limiters.clone(),
        };
        match Actor::spawn_linked(None, actor, (), myself.get_cell()).await {
            Ok((actor, _join)) => {
                metrics::counter!(m::ACTOR_STARTS_TOTAL, "tenant" => tenant.as_str().to_owned())
                    .increment(1);
                state.by_actor.insert(actor.get_id(), tenant.clone());
                state.policy.running(
                    tenant,
                    Running {
                        actor,
                        drain,
                        drained: drained_rx,
                        activity,
                    },
                );
            }
            Err(e) => {
                if let Some(next) = state
                    .policy
                    .failed(tenant, &format!("failed to start: {e}"))
                {
                    schedule_restart(myself, tenant.clone(), next);
                }
            }
        }
    }

    /// Drains the tenants concurrently, then stops their actors and forgets them (their
    /// partitions left this instance).
    async fn drain(&self, state: &mut SupervisorState, tenants: &[TenantId]) {
        let mut running = Vec::new();
        for tenant in tenants {
            stop_watch(state, tenant).await;
            state.limiters.forget(tenant);
            if let Some(r) = state.policy.release(tenant) {
                running.push((tenant.clone(), r));
            }
        }
        self.stop_drained(state, running).await;
    }

    /// Passivates the running actors idle for `passivate_after`: drains and stops them,
    /// keeps their tenants owned, and watches their partitions for the next record.
    async fn passivate_idle(&self, myself: &ActorRef<SupervisorMsg>, state: &mut SupervisorState) {
        let Some(after) = self.settings.passivate_after else {
            return;
        };
        let idle: Vec<TenantId> = state
            .policy
            .running_handles()
            .filter(|(_, r)| r.activity.idle_for() >= after)
            .map(|(t, _)| t.clone())
            .collect();
        if idle.is_empty() {
            return;
        }
        let mut stopping = Vec::new();
        for tenant in idle {
            if let Some(r) = state.policy.passivate(&tenant) {
                stopping.push((tenant, r));
            }
        }
        metrics::counter!(m::TENANT_PASSIVATIONS_TOTAL).increment(stopping.len() as u64);
        let tenants: Vec<TenantId> = stopping.iter().map(|(t, _)| t.clone()).collect();
        self.stop_drained(state, stopping).await;
        for tenant in tenants {
            tracing::debug!(tenant = %tenant, "tenant actor passivated");
            self.watch(myself, state, tenant, false);
        }
    }

    /// Watches a passivated tenant for work: `pending` first looks for work left by an
    /// earlier owner (queued jobs, unrelayed outbox rows), then waits for a record.
    fn watch(
        &self,
        myself: &ActorRef<SupervisorMsg>,
        state: &mut SupervisorState,
        tenant: TenantId,
        pending: bool,
    ) {
        let (feeds, store) = (self.deps.feeds.clone(), self.deps.store.clone());
        let supervisor = myself.clone();
        let watched = tenant.clone();
        let checks = state.pending_checks.clone();
        let watch = tokio::spawn(async move {
            if pending {
                let found = match checks.acquire().await {
                    Ok(_permit) => has_pending_work(store.as_ref(), &watched).await,
                    Err(_) => true,
                };
                if found {
                    let _ = supervisor.cast(SupervisorMsg::Wake(watched, WakeReason::Job));
                    return;
                }
            }
            watch_partition(feeds, supervisor, watched).await;
        });
        state.watches.insert(tenant, watch);
    }

    /// Starts a passivated tenant's actor; false when the tenant is not passivated here.
    async fn wake(
        &self,
        myself: &ActorRef<SupervisorMsg>,
        state: &mut SupervisorState,
        tenant: &TenantId,
        reason: WakeReason,
    ) -> bool {
        if !state.policy.wake(tenant) {
            return false;
        }
        // The watch must be gone before the new actor reads the partition (a watch still
        // polling could take a record from under it).
        stop_watch(state, tenant).await;
        metrics::counter!(m::TENANT_WAKES_TOTAL, "reason" => reason.as_str()).increment(1);
        self.start(myself, state, tenant).await;
        true
    }

    /// Drains the actors concurrently, then stops them.
    async fn stop_drained(&self, state: &mut SupervisorState, running: Vec<(TenantId, Running)>) {
        let timeout = self.settings.drain_timeout;
        let mut set = tokio::task::JoinSet::new();
        for (tenant, r) in running {
            state.by_actor.remove(&r.actor.get_id());
            r.drain.cancel();
            set.spawn(async move {
                let mut rx = r.drained;
                let drained =
                    tokio::time::timeout(timeout, async { rx.wait_for(|d| *d).await.map(|_| ()) })
                        .await;
                if drained.is_err() {
                    tracing::warn!(tenant = %tenant, "drain timed out; stopping anyway");
                }
                let _ = r
                    .actor
                    .stop_and_wait(Some("drained".into()), Some(timeout))
                    .await;
            });
        }
        while set.join_next().await.is_some() {}
        publish_gauges(state);
    }
}

fn schedule_restart(myself: &ActorRef<SupervisorMsg>, tenant: TenantId, next: RestartAfter) {
    let generation = next.generation;
    myself.send_after(next.delay, move || {
        SupervisorMsg::Restart(tenant, generation)
    });
}

/// How many passivated tenants' pending-work checks run at once.
const PENDING_CHECKS_AT_ONCE: usize = 8;

/// Queued jobs or outbox rows not yet relayed (work a previous owner left). A store error
/// is asked again a few times (a busy pool at a mass assignment is no reason to start
/// thousands of actors); one that persists counts as work: the actor starts and deals with
/// it.
async fn has_pending_work(store: &dyn TenantStore, tenant: &TenantId) -> bool {
    const ATTEMPTS: u32 = 5;
    for attempt in 1..=ATTEMPTS {
        let found = match store.queue_depth(tenant).await {
            Ok(depths) if depths.iter().any(|(_, n)| *n > 0) => Ok(true),
            Ok(_) => store
                .pending_outbox(tenant, 0, 1)
                .await
                .map(|rows| !rows.is_empty()),
            Err(e) => Err(e),
        };
        match found {
            Ok(found) => return found,
            Err(e) if attempt < ATTEMPTS => {
                tracing::debug!(tenant = %tenant, error = %e, "checking for pending work; retrying");
                tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt))).await;
            }
            Err(_) => {}
        }
    }
    true
}

/// Waits for a record on a passivated tenant's partition, then wakes the tenant. A feed
/// error (the partition left, the consumer is being replaced) ends the watch quietly: the
/// tenant is woken by its next job or request, or revoked.
async fn watch_partition(
    feeds: Arc<dyn FeedSource>,
    supervisor: ActorRef<SupervisorMsg>,
    tenant: TenantId,
) {
    match feeds.until_record(&tenant).await {
        Ok(()) => {
            let _ = supervisor.cast(SupervisorMsg::Wake(tenant, WakeReason::Record));
        }
        Err(e) => tracing::debug!(tenant = %tenant, error = %e, "partition watch ended"),
    }
}

/// Stops a passivated tenant's record watch and waits until it is gone.
async fn stop_watch(state: &mut SupervisorState, tenant: &TenantId) {
    if let Some(watch) = state.watches.remove(tenant) {
        watch.abort();
        let _ = watch.await;
    }
}

fn publish_gauges(state: &SupervisorState) {
    let (running, parked, passivated) = state.policy.counts();
    metrics::gauge!(m::ACTORS_RUNNING).set(running as f64);
    metrics::gauge!(m::ACTORS_PARKED).set(parked as f64);
    metrics::gauge!(m::ACTORS_PASSIVATED).set(passivated as f64);
}
