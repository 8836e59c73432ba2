//! Group commit of one tenant's SCIM writes ([`TenantWriters`]).
//!
//! A tenant's writers commit one at a time: every write appends to the tenant's outbox,
//! whose sequence row is locked until commit (the order of `user_changed`). One write per
//! transaction would make the tenant's write rate that of a durable commit. Instead the
//! writes that arrive while a transaction runs wait for the next one and share it: each in
//! a savepoint (its refusal or failure undoes only itself), one commit for all, then every
//! caller gets its answer. Nothing is answered before the commit that makes it durable.
//!
//! Consecutive user writes of a batch are not run one by one: they are decided together
//! and folded into one unit of work (`users::apply_user_writes`). A batch of user writes
//! only (what identity providers send) sends its COMMIT with the unit of work's writes
//! (`db::commit_pipelined`): the outbox sequence row is held from its lock to the end of
//! the commit by the server alone, not also for a round trip to the service. If the
//! database fails that unit of work, its transaction is gone (no savepoint to return to):
//! the batch runs again in a new one, folded inside a savepoint, and if that fails too,
//! each write alone in a savepoint of its own, so one write's failure still answers only
//! that write. A batch with other work runs that way from the start.
//!
//! Two of a tenant's transactions may be in flight at once, so the database works on one
//! while the other's batch is decided or its commit flushed. Beside another, a batch only
//! locks rows (its users, in id order, then the outbox sequence row and the readiness mark,
//! in that order): a batch with a group write or a write that may claim a `userName`
//! (which takes a name lock, possibly after the sequence row) runs alone. Writes of one
//! user in two batches wait on the user's row lock and the second sees the first's result.
//!
//! Lock order, the same as the Kafka path's: the users (then groups) the writes name, in id
//! order, before anything else, then the outbox sequence row. A batch of user writes only
//! locks its users as it reads them (one statement, in id order).

use std::any::Any;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio_postgres::Transaction;

use super::users::{apply_user_writes, UserWrite};
use crate::actors::ports::StoreError;
use crate::actors::scim::resource::ProviderError;
use crate::actors::TenantId;
use crate::db::scim::Finish;
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

/// A write waiting for its tenant's next transaction.
pub(crate) enum Write {
    /// A user write: folded with the consecutive user writes of its batch.
    User(UserWrite),
    /// Any other write: its own work, in a savepoint, after locking `locks`.
    Work { locks: WriteLocks, work: WriteWork },
}

impl Write {
    /// True when the write's batch must be the tenant's only one in flight: group writes,
    /// and user writes that may claim a `userName` (they take name locks after the outbox
    /// sequence row may already be held; beside another batch that could deadlock).
    fn runs_alone(&self) -> bool {
        match self {
            Write::User(w) => w.creating || w.may_claim_user_name(),
            Write::Work { .. } => true,
        }
    }

    fn locks(&self) -> WriteLocks {
        match self {
            Write::User(w) if w.creating => WriteLocks::default(),
            Write::User(w) => WriteLocks {
                users: vec![w.id.clone()],
                groups: Vec::new(),
            },
            Write::Work { locks, .. } => locks.clone(),
        }
    }
}

struct Job {
    write: Write,
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
    /// A tenant's write transactions in flight at once. One would leave the database idle
    /// while the service decides the next batch and while a commit waits for its flush; a
    /// second overlaps them (the outbox sequence row still orders the commits).
    const TRANSACTIONS: u32 = 2;
    /// A tenant's drain task ends after this long without writes.
    const IDLE: Duration = Duration::from_secs(60);

    pub fn new(store: TenantScopedStore) -> Arc<Self> {
        Arc::new(Self {
            store,
            queues: Mutex::new(HashMap::new()),
        })
    }

    /// Runs `write` in the next transaction of the tenant's writes; answers once committed.
    pub(crate) async fn run(self: &Arc<Self>, tenant: &TenantId, write: Write) -> WriteResult {
        let mut job = Job {
            write,
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
        let slots = Arc::new(Semaphore::new(Self::TRANSACTIONS as usize));
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
            // A slot first: the writes that arrive while both transactions run join the
            // batch that takes the next free one.
            let Ok(mut slot) = Arc::clone(&slots).acquire_owned().await else {
                return;
            };
            let mut jobs = vec![first];
            while jobs.len() < Self::MAX_BATCH {
                match rx.try_recv() {
                    Ok(job) => jobs.push(job),
                    Err(_) => break,
                }
            }
            if jobs.iter().any(|j| j.write.runs_alone()) {
                // Every slot: the transaction in flight ends first, none starts beside it.
                match Arc::clone(&slots)
                    .acquire_many_owned(Self::TRANSACTIONS - 1)
                    .await
                {
                    Ok(rest) => slot.merge(rest),
                    Err(_) => return,
                }
            }
            let (this, tenant) = (Arc::clone(&self), tenant.clone());
            tokio::spawn(async move {
                this.commit(&tenant, jobs).await;
                drop(slot);
            });
        }
    }

    /// One transaction for `jobs`: the batch's locks, runs of user writes folded, other
    /// work in savepoints, one commit.
    async fn commit(&self, tenant: &TenantId, jobs: Vec<Job>) {
        let mut users: Vec<String> = Vec::new();
        let mut groups: Vec<String> = Vec::new();
        for job in &jobs {
            let locks = job.write.locks();
            users.extend(locks.users);
            groups.extend(locks.groups);
        }
        users.sort_unstable();
        users.dedup();
        groups.sort_unstable();
        groups.dedup();
        let (writes, replies): (Vec<Write>, Vec<oneshot::Sender<WriteResult>>) =
            jobs.into_iter().map(|j| (j.write, j.reply)).unzip();
        // A batch of user writes only: one unit of work that ends the transaction with its
        // writes. If the database fails it, the batch runs again below, in savepoints.
        let only_users = writes.iter().all(|w| matches!(w, Write::User(_)));
        let writes = match only_users {
            true => {
                let users = writes
                    .into_iter()
                    .filter_map(|w| match w {
                        Write::User(u) => Some(u),
                        Write::Work { .. } => None,
                    })
                    .collect();
                match self
                    .store
                    .scoped(tenant, move |tx, t| {
                        Box::pin(committed_with_writes(tx, t, users))
                    })
                    .await
                {
                    Ok(Folded::Answered(results)) => {
                        answer(replies, results);
                        return;
                    }
                    Ok(Folded::Refused(users)) => users.into_iter().map(Write::User).collect(),
                    Err(e) => {
                        fail(tenant, replies, e);
                        return;
                    }
                }
            }
            false => writes,
        };
        let outcome = self
            .store
            .scoped(tenant, move |tx, t| {
                Box::pin(async move {
                    // A transaction of one user write needs no savepoint (its refusals
                    // write nothing, its failure fails the transaction it is alone in)
                    // and no lock of its own (it locks its user as it reads it).
                    // Only user writes: one run, which locks its users (in id order) as
                    // it reads them. Else the batch's locks first, in the Kafka path's order.
                    let only_users = writes.iter().all(|w| matches!(w, Write::User(_)));
                    if !only_users {
                        scim_provider::lock_rows(tx, t, &users, &groups).await?;
                    }
                    let mut out: Vec<WriteResult> = Vec::with_capacity(writes.len());
                    let mut run: Vec<UserWrite> = Vec::new();
                    for write in writes {
                        match write {
                            Write::User(w) => run.push(w),
                            Write::Work { work, .. } => {
                                let before = std::mem::take(&mut run);
                                out.extend(user_run(tx, t, before, RunPlace::Middle).await?);
                                out.push(in_savepoint(tx, work(tx, t)).await?);
                            }
                        }
                    }
                    let place = match only_users {
                        true => RunPlace::Alone,
                        false => RunPlace::Last,
                    };
                    out.extend(user_run(tx, t, run, place).await?);
                    Ok(out)
                })
            })
            .await;
        match outcome {
            Ok(results) => answer(replies, results),
            Err(e) => fail(tenant, replies, e),
        }
    }
}

fn answer(replies: Vec<oneshot::Sender<WriteResult>>, results: Vec<WriteResult>) {
    for (reply, result) in replies.into_iter().zip(results) {
        let _ = reply.send(result);
    }
}

fn fail(tenant: &TenantId, replies: Vec<oneshot::Sender<WriteResult>>, e: StoreError) {
    tracing::warn!(tenant = %tenant, error = %e, "SCIM write batch failed; nothing committed");
    for reply in replies {
        let _ = reply.send(Err(ProviderError::unavailable()));
    }
}

/// What a batch of user writes folded in one unit of work came to.
enum Folded {
    /// Every write answered (its transaction committed, or it wrote nothing).
    Answered(Vec<WriteResult>),
    /// The database failed the unit of work of several writes: nothing of it is left (its
    /// transaction rolled back), the writes are given back to run one by one.
    Refused(Vec<UserWrite>),
}

/// A batch of user writes decided together and written in one unit of work whose COMMIT is
/// sent with its writes (no round trip between the last write and the commit: the next
/// transaction of the tenant waits on the outbox sequence row for less). No savepoint: a
/// failure of several writes gives them back ([`Folded::Refused`]) and the transaction ends
/// (a COMMIT after a failed statement rolls back; one not sent yet is sent by the store and
/// does the same); the failure of a single write is its answer.
async fn committed_with_writes(
    tx: &Transaction<'_>,
    t: &str,
    users: Vec<UserWrite>,
) -> Result<Folded, tokio_postgres::Error> {
    // Generic plans for the unit of work's statements (prepared once per connection): its
    // statements look rows up by key, so a plan for the parameters at hand is no better,
    // and PostgreSQL would otherwise keep planning those whose generic cost it estimates
    // higher (arrays of ids, `unnest`): 7 % of the machine's CPU in the benchmark's PATCH
    // rounds went to planning, 0.1 % with this. Transaction-local, like the tenant scope.
    let (generic, written) = tokio::join!(
        biased;
        tx.batch_execute("set local plan_cache_mode = force_generic_plan"),
        apply_user_writes(tx, t, &users, true, Finish::CommitWithWrites),
    );
    generic?;
    match written {
        Ok(answers) => Ok(Folded::Answered(answers)),
        Err(e) if users.len() > 1 => {
            tracing::warn!(error = %crate::db::store_error(e), writes = users.len(), "folded SCIM writes failed in the store; retrying one by one");
            Ok(Folded::Refused(users))
        }
        Err(e) => Err(e),
    }
}

/// Where a run of user writes stands in its transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RunPlace {
    /// Other work follows: its savepoint is released (savepoints must not pile up).
    Middle,
    /// Nothing follows: the commit releases its savepoint.
    Last,
    /// The only work of the transaction: nothing locked before it, nothing follows.
    Alone,
}

/// A run of user writes folded in one savepoint; if the database fails it, each write
/// again alone in its own. The savepoint and the run's first statement go together (one
/// round trip).
async fn user_run(
    tx: &Transaction<'_>,
    t: &str,
    run: Vec<UserWrite>,
    place: RunPlace,
) -> Result<Vec<WriteResult>, tokio_postgres::Error> {
    if run.is_empty() {
        return Ok(Vec::new());
    }
    let lock = place == RunPlace::Alone;
    let (savepoint, folded) = tokio::join!(
        biased;
        tx.batch_execute("savepoint scim_run"),
        apply_user_writes(tx, t, &run, lock, Finish::KeepOpen),
    );
    savepoint?;
    match folded {
        Ok(answers) => {
            if place == RunPlace::Middle {
                tx.batch_execute("release savepoint scim_run").await?;
            }
            Ok(answers)
        }
        Err(e) if run.len() > 1 => {
            tracing::warn!(error = %crate::db::store_error(e), writes = run.len(), "folded SCIM writes failed in the store; retrying one by one");
            tx.batch_execute("rollback to savepoint scim_run").await?;
            let mut out = Vec::with_capacity(run.len());
            for w in run {
                let one = [w];
                let answer = in_savepoint(tx, async {
                    apply_user_writes(tx, t, &one, lock, Finish::KeepOpen)
                        .await
                        .map(|mut a| a.pop().unwrap_or_else(|| Err(ProviderError::unavailable())))
                })
                .await?;
                out.push(answer);
            }
            Ok(out)
        }
        Err(e) => {
            tracing::warn!(error = %crate::db::store_error(e), "SCIM write failed in the store");
            tx.batch_execute("rollback to savepoint scim_run").await?;
            Ok(vec![Err(ProviderError::unavailable())])
        }
    }
}

/// Runs one write's work in a savepoint: its refusal or failure undoes only itself.
async fn in_savepoint<F>(
    tx: &Transaction<'_>,
    work: F,
) -> Result<WriteResult, tokio_postgres::Error>
where
    F: std::future::Future<Output = Result<WriteResult, tokio_postgres::Error>>,
{
    tx.batch_execute("savepoint scim_write").await?;
    match work.await {
        Ok(Ok(v)) => {
            tx.batch_execute("release savepoint scim_write").await?;
            Ok(Ok(v))
        }
        Ok(Err(e)) => {
            tx.batch_execute("rollback to savepoint scim_write").await?;
            Ok(Err(e))
        }
        Err(e) => {
            tracing::warn!(error = %crate::db::store_error(e), "SCIM write failed in the store");
            tx.batch_execute("rollback to savepoint scim_write").await?;
            Ok(Err(ProviderError::unavailable()))
        }
    }
}
