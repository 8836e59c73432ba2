//! The [`Supervisor`]: spawns one [`TenantActor`] per tenant assigned to this instance and
//! keeps it alive. A thin actor over [`policy::RestartPolicy`], which holds every decision.
//!
//! Supervision is written out in `handle_supervisor_evt` (ractor's default would stop the
//! supervisor when any child dies): a failed tenant actor is restarted after the policy's
//! backoff, or parked, while every other tenant keeps flowing. Revocation and shutdown
//! drain: the feeder stops fetching, the batch in flight commits and its offset is stored,
//! then the actor stops (flushing its outbox).
//!
//! Nothing outside the actors crate sends these messages: the service talks to tenants
//! through [`crate::tenants::Tenants`].

mod policy;

use std::collections::HashMap;
use std::sync::Arc;

use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::metric_names as m;
use crate::tenant::TenantId;
use crate::tenant_actor::{PipelineSettings, TenantActor, TenantDeps, TenantMsg};
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
    /// Work was written for the tenant elsewhere: wake its actor if it runs here.
    Wake(TenantId),
    /// Status of every tenant, for `/readyz`.
    Health(RpcReplyPort<Vec<TenantHealth>>),
    /// Drain and stop every tenant actor.
    Shutdown(RpcReplyPort<()>),
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
}

pub struct SupervisorState {
    policy: RestartPolicy<Running>,
    by_actor: HashMap<ActorId, TenantId>,
    /// Batch transactions of this process's tenants in flight at once (shared, FIFO).
    batch_slots: Arc<tokio::sync::Semaphore>,
    /// Payload bytes held by the process's tenant feeders together.
    process_bytes: Arc<std::sync::atomic::AtomicUsize>,
}

impl Actor for Supervisor {
    type Msg = SupervisorMsg;
    type State = SupervisorState;
    type Arguments = ();

    async fn pre_start(
        &self,
        _myself: ActorRef<SupervisorMsg>,
        _: (),
    ) -> Result<SupervisorState, ActorProcessingErr> {
        Ok(SupervisorState {
            policy: RestartPolicy::new(self.settings.clone()),
            by_actor: HashMap::new(),
            batch_slots: Arc::new(tokio::sync::Semaphore::new(
                self.pipeline.max_concurrent_batches.max(1),
            )),
            process_bytes: Default::default(),
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
                for tenant in tenants {
                    if state.policy.admit(&tenant) {
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
                let _ = reply.send(state.policy.handle(&tenant).map(|r| r.actor.clone()));
            }
            SupervisorMsg::Wake(tenant) => {
                if let Some(r) = state.policy.handle(&tenant) {
                    let _ = r.actor.cast(TenantMsg::Wake);
                }
            }
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
        let actor = TenantActor {
            tenant: tenant.clone(),
            deps: self.deps.clone(),
            settings: self.pipeline.clone(),
            drain: drain.clone(),
            drained: Arc::new(drained_tx),
            batch_slots: state.batch_slots.clone(),
            process_bytes: state.process_bytes.clone(),
        };
        match Actor::spawn_linked(None, actor, (), myself.get_cell()).await {
            Ok((actor, _join)) => {
                state.by_actor.insert(actor.get_id(), tenant.clone());
                state.policy.running(
                    tenant,
                    Running {
                        actor,
                        drain,
                        drained: drained_rx,
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

    /// Drains the tenants concurrently, then stops their actors and forgets them.
    async fn drain(&self, state: &mut SupervisorState, tenants: &[TenantId]) {
        let timeout = self.settings.drain_timeout;
        let mut set = tokio::task::JoinSet::new();
        for tenant in tenants {
            let Some(r) = state.policy.release(tenant) else {
                continue;
            };
            state.by_actor.remove(&r.actor.get_id());
            r.drain.cancel();
            let tenant = tenant.clone();
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

fn publish_gauges(state: &SupervisorState) {
    let (running, parked) = state.policy.counts();
    metrics::gauge!(m::ACTORS_RUNNING).set(running as f64);
    metrics::gauge!(m::ACTORS_PARKED).set(parked as f64);
}
