//! [`Tenants`]: the one handle through which the rest of the service talks to the tenants
//! running in this process (the Kafka hub assigns and revokes them, HTTP asks for progress
//! syncs and catalogs, the wiring wakes and drains them).
//!
//! Callers never see the supervisor's or the tenant actors' messages, `ractor` calls or
//! timeouts: each operation here is a method with a typed error.
//!
//! The handle exists before the supervisor does ([`Tenants::channel`]): the Kafka hub,
//! which the supervisor's actors read from, takes the handle as its [`AssignmentSink`] at
//! construction, and [`TenantsInbox::start`] spawns the supervisor afterwards. Messages
//! sent in between wait in the channel.

#[cfg(test)]
mod tests;

use std::time::Duration;

use async_trait::async_trait;
use ractor::{Actor, ActorRef, RpcReplyPort};
use tokio::sync::mpsc;

use crate::ports::{AssignmentSink, ProgressSnapshot};
use crate::supervisor::{Supervisor, SupervisorMsg, TenantHealth, WakeReason};
use crate::tenant::TenantId;
use crate::tenant_actor::{SyncError, TenantMsg};
use crate::upstream::CatalogCourse;

/// Why a request to the tenants of this process did not get an answer.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TenantsError {
    /// The tenant's actor does not run in this process (another instance or role owns it,
    /// or it is restarting or parked).
    #[error("the tenant's actor is not running on this instance")]
    NotHere,
    /// The supervisor or the actor stopped (the process is shutting down).
    #[error("the tenant actors are stopping")]
    Stopped,
    /// No answer within the time allowed.
    #[error("no answer in time")]
    Timeout,
    /// The work ran and failed.
    #[error("{0}")]
    Failed(#[from] SyncError),
}

/// A cloneable handle to the tenants of this process.
#[derive(Clone)]
pub struct Tenants {
    tx: mpsc::UnboundedSender<SupervisorMsg>,
}

/// The receiving end of [`Tenants::channel`], consumed by [`TenantsInbox::start`].
pub struct TenantsInbox {
    rx: mpsc::UnboundedReceiver<SupervisorMsg>,
}

/// The running supervisor (stop it after the last drain).
pub struct TenantsRuntime {
    supervisor: ActorRef<SupervisorMsg>,
    join: tokio::task::JoinHandle<()>,
}

impl Tenants {
    /// A handle and the inbox its messages wait in until the supervisor starts.
    pub fn channel() -> (Tenants, TenantsInbox) {
        let (tx, rx) = mpsc::unbounded_channel();
        (Tenants { tx }, TenantsInbox { rx })
    }

    async fn ask<T: Send + 'static>(
        &self,
        build: impl FnOnce(RpcReplyPort<T>) -> SupervisorMsg,
        timeout: Duration,
    ) -> Result<T, TenantsError> {
        let (tx, rx) = ractor::concurrency::oneshot();
        self.tx
            .send(build(tx.into()))
            .map_err(|_| TenantsError::Stopped)?;
        match tokio::time::timeout(timeout, rx).await {
            Err(_) => Err(TenantsError::Timeout),
            Ok(Err(_)) => Err(TenantsError::Stopped),
            Ok(Ok(v)) => Ok(v),
        }
    }

    async fn actor(&self, tenant: &TenantId) -> Result<ActorRef<TenantMsg>, TenantsError> {
        let lookup = Duration::from_secs(3);
        self.ask(|r| SupervisorMsg::Lookup(tenant.clone(), r), lookup)
            .await?
            .ok_or(TenantsError::NotHere)
    }

    /// True when the tenant's actor runs in this process.
    pub async fn is_local(&self, tenant: &TenantId) -> bool {
        self.actor(tenant).await.is_ok()
    }

    /// Asks the tenant's actor for upstream work and waits up to `deadline`.
    async fn ask_actor<T: Send + 'static>(
        &self,
        tenant: &TenantId,
        build: impl FnOnce(RpcReplyPort<Result<T, SyncError>>) -> TenantMsg,
        deadline: Duration,
    ) -> Result<T, TenantsError> {
        let actor = self.actor(tenant).await?;
        match tokio::time::timeout(deadline, actor.call(build, None)).await {
            Err(_) => Err(TenantsError::Timeout),
            Ok(Ok(ractor::rpc::CallResult::Success(result))) => Ok(result?),
            Ok(_) => Err(TenantsError::Stopped),
        }
    }

    /// Syncs a user's course progress through the tenant's actor (a durable job, run under
    /// the tenant's budget). [`TenantsError::Timeout`] after `deadline`: the job goes on.
    pub async fn sync_progress(
        &self,
        tenant: &TenantId,
        user_id: &str,
        deadline: Duration,
    ) -> Result<ProgressSnapshot, TenantsError> {
        let user = user_id.to_owned();
        self.ask_actor(tenant, |r| TenantMsg::SyncProgress(user, r), deadline)
            .await
    }

    /// The tenant's MindTickle course catalog, fetched under its budget.
    pub async fn catalog(
        &self,
        tenant: &TenantId,
        deadline: Duration,
    ) -> Result<Vec<CatalogCourse>, TenantsError> {
        self.ask_actor(tenant, TenantMsg::Catalog, deadline).await
    }

    /// Work was written for the tenant by another process: relay its outbox and look at
    /// its job queue now (nothing happens when its actor runs elsewhere).
    pub fn wake(&self, tenant: &TenantId) {
        let _ = self
            .tx
            .send(SupervisorMsg::Wake(tenant.clone(), WakeReason::Job));
    }

    /// The status of every tenant owned by this process.
    pub async fn health(&self, timeout: Duration) -> Result<Vec<TenantHealth>, TenantsError> {
        self.ask(SupervisorMsg::Health, timeout).await
    }

    /// Runs these tenants' actors here (their partitions were assigned to this instance).
    pub fn assign(&self, tenants: Vec<TenantId>) {
        if !tenants.is_empty() {
            let _ = self.tx.send(SupervisorMsg::Assign(tenants));
        }
    }

    /// Drains and stops these tenants' actors; returns once they stopped (batch in flight
    /// committed, offsets stored) or after `timeout`.
    pub async fn revoke(
        &self,
        tenants: Vec<TenantId>,
        timeout: Duration,
    ) -> Result<(), TenantsError> {
        self.ask(|r| SupervisorMsg::Revoke(tenants, r), timeout)
            .await
    }

    /// Drains and stops every tenant actor of the process.
    pub async fn shutdown(&self, timeout: Duration) -> Result<(), TenantsError> {
        self.ask(SupervisorMsg::Shutdown, timeout).await
    }
}

#[async_trait]
impl AssignmentSink for Tenants {
    fn assign(&self, tenants: Vec<TenantId>) {
        Tenants::assign(self, tenants)
    }

    async fn revoke(&self, tenants: Vec<TenantId>, timeout: Duration) -> bool {
        Tenants::revoke(self, tenants, timeout).await.is_ok()
    }
}

impl TenantsInbox {
    /// Spawns the supervisor and forwards the handle's messages to it, in order.
    pub async fn start(self, supervisor: Supervisor) -> Result<TenantsRuntime, ractor::SpawnErr> {
        let (actor, join) = Actor::spawn(None, supervisor, ()).await?;
        let forward_to = actor.clone();
        let mut rx = self.rx;
        tokio::spawn(async move {
            while let Some(msg) = rx.recv().await {
                if forward_to.send_message(msg).is_err() {
                    break; // stopped: the rest would be answered by dropped reply ports
                }
            }
        });
        Ok(TenantsRuntime {
            supervisor: actor,
            join,
        })
    }
}

impl TenantsRuntime {
    /// Stops the supervisor (after [`Tenants::shutdown`] drained the tenants).
    pub async fn stop(self) {
        self.supervisor.stop(None);
        let _ = self.join.await;
    }
}
