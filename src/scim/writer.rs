//! Group commit of one tenant's SCIM writes ([`TenantWriters`]).
//!
//! A tenant's writers commit one at a time: every write appends to the tenant's outbox,
//! whose sequence row is locked until commit (the order of `user_changed`). One write per
//! transaction would make the tenant's write rate that of a durable commit. Instead the
//! writes that arrive while a transaction runs wait for the next one and share it: each in
//! a savepoint (its refusal or failure undoes only itself), one commit for all, then every
//! caller gets its answer. Nothing is answered before the commit that makes it durable.
//!
//! Lock order, the same as the Kafka path's: the users (then groups) the writes name, in id
//! order, before anything else, then the outbox sequence row.

use std::any::Any;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio_postgres::Transaction;

use crate::actors::scim::resource::ProviderError;
use crate::actors::TenantId;
use crate::db::{scim_provider, TenantScopedStore, TxWork};

/// What a write's work returns: its own answer (downcast by its caller), or a protocol
/// error that undoes it.
pub(crate) type WriteResult = Result<Box<dyn Any + Send>, ProviderError>;

/// One write's work inside the shared transaction.
pub(crate) type WriteWork =
    Box<dyn for<'t> FnOnce(&'t Transaction<'t>, &'t str) -> TxWork<'t, WriteResult> + Send>;

/// The rows a write will lock, taken for the whole batch first, in id order.
#[derive(Debug, Default, Clone)]
pub(crate) struct WriteLocks {
    pub users: Vec<String>,
    pub groups: Vec<String>,
}

/// Boxes a write's work (the bound lets the closure's signature be inferred).
pub(crate) fn work<F>(f: F) -> WriteWork
where
    F: for<'t> FnOnce(&'t Transaction<'t>, &'t str) -> TxWork<'t, WriteResult> + Send + 'static,
{
    Box::new(f)
}

struct Job {
    locks: WriteLocks,
    work: WriteWork,
    reply: oneshot::Sender<WriteResult>,
}

/// Per-tenant write queues, each drained by one task that commits them in batches.
pub struct TenantWriters {
    store: TenantScopedStore,
    queues: Mutex<HashMap<TenantId, mpsc::Sender<Job>>>,
}

impl TenantWriters {
    /// Writes sharing one transaction at most.
    const MAX_BATCH: usize = 64;
    /// A tenant's drain task ends after this long without writes.
    const IDLE: Duration = Duration::from_secs(60);

    pub fn new(store: TenantScopedStore) -> Arc<Self> {
        Arc::new(Self {
            store,
            queues: Mutex::new(HashMap::new()),
        })
    }

    /// Runs `work` in the next transaction of the tenant's writes; answers once committed.
    pub(crate) async fn run(
        self: &Arc<Self>,
        tenant: &TenantId,
        locks: WriteLocks,
        work: WriteWork,
    ) -> WriteResult {
        let mut job = Job {
            locks,
            work,
            reply: oneshot::channel().0,
        };
        // Twice at most: a queue whose task just ended for idleness refuses the first send.
        for _ in 0..2 {
            let (reply, answer) = oneshot::channel();
            job.reply = reply;
            match self.queue(tenant).send(job).await {
                Ok(()) => {
                    return answer
                        .await
                        .unwrap_or_else(|_| Err(ProviderError::unavailable()))
                }
                Err(mpsc::error::SendError(back)) => {
                    self.forget(tenant);
                    job = back;
                }
            }
        }
        Err(ProviderError::unavailable())
    }

    fn queue(self: &Arc<Self>, tenant: &TenantId) -> mpsc::Sender<Job> {
        let mut queues = self.queues.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(q) = queues.get(tenant).filter(|q| !q.is_closed()) {
            return q.clone();
        }
        let (tx, rx) = mpsc::channel(Self::MAX_BATCH * 4);
        queues.insert(tenant.clone(), tx.clone());
        tokio::spawn(Arc::clone(self).drain(tenant.clone(), rx));
        tx
    }

    fn forget(&self, tenant: &TenantId) {
        let mut queues = self.queues.lock().unwrap_or_else(|p| p.into_inner());
        if queues.get(tenant).is_some_and(|q| q.is_closed()) {
            queues.remove(tenant);
        }
    }

    async fn drain(self: Arc<Self>, tenant: TenantId, mut rx: mpsc::Receiver<Job>) {
        loop {
            let first = match tokio::time::timeout(Self::IDLE, rx.recv()).await {
                Ok(Some(job)) => job,
                Ok(None) => return,
                Err(_) => {
                    // Idle: leave, unless a write arrived meanwhile (checked under the map's
                    // lock, so no sender can be handed out for a queue about to close).
                    let mut queues = self.queues.lock().unwrap_or_else(|p| p.into_inner());
                    if rx.is_empty() {
                        queues.remove(&tenant);
                        rx.close();
                        return;
                    }
                    continue;
                }
            };
            let mut jobs = vec![first];
            while jobs.len() < Self::MAX_BATCH {
                match rx.try_recv() {
                    Ok(job) => jobs.push(job),
                    Err(_) => break,
                }
            }
            self.commit(&tenant, jobs).await;
        }
    }

    /// One transaction for `jobs`: the batch's locks, each work in a savepoint, one commit.
    async fn commit(&self, tenant: &TenantId, jobs: Vec<Job>) {
        let mut users: Vec<String> = jobs.iter().flat_map(|j| j.locks.users.clone()).collect();
        let mut groups: Vec<String> = jobs.iter().flat_map(|j| j.locks.groups.clone()).collect();
        users.sort_unstable();
        users.dedup();
        groups.sort_unstable();
        groups.dedup();
        let (works, replies): (Vec<WriteWork>, Vec<oneshot::Sender<WriteResult>>) =
            jobs.into_iter().map(|j| (j.work, j.reply)).unzip();
        let outcome = self
            .store
            .scoped(tenant, move |tx, t| {
                Box::pin(async move {
                    scim_provider::lock_rows(tx, t, &users, &groups).await?;
                    let mut out: Vec<WriteResult> = Vec::with_capacity(works.len());
                    for work in works {
                        tx.batch_execute("savepoint scim_write").await?;
                        match work(tx, t).await {
                            Ok(Ok(v)) => {
                                tx.batch_execute("release savepoint scim_write").await?;
                                out.push(Ok(v));
                            }
                            Ok(Err(e)) => {
                                tx.batch_execute("rollback to savepoint scim_write").await?;
                                out.push(Err(e));
                            }
                            Err(e) => {
                                tracing::warn!(error = %crate::db::store_error(e), "SCIM write failed in the store");
                                tx.batch_execute("rollback to savepoint scim_write").await?;
                                out.push(Err(ProviderError::unavailable()));
                            }
                        }
                    }
                    Ok(out)
                })
            })
            .await;
        match outcome {
            Ok(results) => {
                for (reply, result) in replies.into_iter().zip(results) {
                    let _ = reply.send(result);
                }
            }
            Err(e) => {
                tracing::warn!(tenant = %tenant, error = %e, "SCIM write batch failed; nothing committed");
                for reply in replies {
                    let _ = reply.send(Err(ProviderError::unavailable()));
                }
            }
        }
    }
}
