//! [`TenantScopedStore`] and its one way into tenant rows: [`TenantScopedStore::scoped`], a
//! transaction whose first statement is `set_config('app.tenant_id', <tenant>, true)`.
//!
//! The setting is transaction-local, so a pooled connection never carries one tenant's
//! scope into another tenant's work, and a connection with no setting sees no rows (the
//! policies compare against `nullif(current_setting(..., true), '')`, which is NULL).
//!
//! The [`tenant_tx!`](crate::tenant_tx) macro is the one spelling of a scoped transaction
//! used by every module that owns a concern's SQL; errors are classified here once
//! (transient or not, policy violation) for the callers' retry decisions.
//!
//! Round trips: the setting goes out with the work's first statements (one round trip, in
//! order: the work's statements run after it, and fail with it). Work whose last statements
//! are known may end the transaction in the same round trip ([`commit_pipelined`]); the
//! write path of the SCIM provider does, so a tenant's commits follow each other without a
//! wait on the service between the last write and the commit.

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;

use tokio_postgres::error::SqlState;
use tokio_postgres::types::Type;
use tokio_postgres::Transaction;

use super::statements::{query_typed, with_cache};
use super::{security, PgPool};
use crate::actors::events::{InternalEvent, SecurityEventObserved};
use crate::actors::ports::{SecurityEvent, StoreError};
use crate::actors::TenantId;

/// Work run inside a tenant's transaction: it gets the transaction and the tenant id.
pub type TxWork<'t, R> =
    Pin<Box<dyn Future<Output = Result<R, tokio_postgres::Error>> + Send + 't>>;

/// Runs a block in the tenant's scoped transaction and commits it:
/// `tenant_tx!(store, &tenant, |tx, t| { ...; Ok(value) })` where `tx` is the transaction
/// and `t` the tenant id (`&str`); the block is the body of an `async move` block whose
/// `?` takes `tokio_postgres::Error`. Evaluates to a future of `Result<_, StoreError>`.
#[macro_export]
macro_rules! tenant_tx {
    ($store:expr, $tenant:expr, |$tx:ident, $t:ident| $body:block) => {
        $store.scoped($tenant, move |$tx, $t| ::std::boxed::Box::pin(async move $body))
    };
}

#[derive(Clone)]
pub struct TenantScopedStore {
    pool: PgPool,
    /// Seals and opens tenant secrets (`secrets.keys`); without a key, storing or reading
    /// a MindTickle secret fails with an error naming the setting.
    sealer: std::sync::Arc<crate::sealing::SecretSealer>,
}

impl TenantScopedStore {
    pub fn new(pool: PgPool, sealer: std::sync::Arc<crate::sealing::SecretSealer>) -> Self {
        Self { pool, sealer }
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    pub(super) fn sealer(&self) -> &crate::sealing::SecretSealer {
        &self.sealer
    }

    /// Runs `work` in a transaction scoped to `tenant` and commits it. The only way the
    /// service reaches tenant rows. A row-level-security refusal is also recorded as the
    /// tenant's security event (after the refused transaction rolled back).
    pub async fn scoped<R, F>(&self, tenant: &TenantId, work: F) -> Result<R, StoreError>
    where
        R: Send,
        F: for<'t> FnOnce(&'t Transaction<'t>, &'t str) -> TxWork<'t, R> + Send,
    {
        let mut conn = self
            .pool
            .get()
            .await
            .map_err(|e| StoreError::Unavailable(super::redact(e)))?;
        let statements = conn.statements();
        let tx = conn.transaction().await.map_err(store_error)?;
        // The work runs with its connection's prepared statements (`statements`), its first
        // statements sent with the setting (in order: they run after it). A failed setting
        // is the error reported, not the "transaction is aborted" of the work after it.
        let id = tenant.as_str();
        let setting = [(
            &id as &(dyn tokio_postgres::types::ToSql + Sync),
            Type::TEXT,
        )];
        let (worked, committed) = with_cache(
            statements,
            COMMIT_SENT.scope(Cell::new(false), async {
                let (scope, worked) = tokio::join!(
                    biased;
                    query_typed(&tx, "select set_config('app.tenant_id', $1, true)", &setting),
                    work(&tx, id),
                );
                let worked = scope.and(worked);
                (worked, COMMIT_SENT.with(Cell::get))
            }),
        )
        .await;
        // When the work sent the COMMIT itself (after its last statements), the transaction
        // ended on the server: committed, or rolled back if a statement before the COMMIT
        // failed (which `worked` then reports). Dropping `tx` would send a ROLLBACK outside
        // any transaction; forgetting it leaks nothing (a top-level transaction holds only
        // the connection's borrow).
        let tx = match committed {
            true => {
                std::mem::forget(tx);
                None
            }
            false => Some(tx),
        };
        let out = match worked {
            Ok(out) => out,
            Err(e) => {
                let err = store_error(e);
                drop(tx);
                drop(conn);
                if let StoreError::PolicyViolation(detail) = &err {
                    let event = SecurityEvent {
                        kind: "rls_violation",
                        detail: serde_json::json!({ "source": "database", "detail": detail }),
                    };
                    self.record_security_event(tenant, &event).await;
                }
                return Err(err);
            }
        };
        if let Some(tx) = tx {
            tx.commit().await.map_err(store_error)?;
        }
        Ok(out)
    }

    /// Logs, counts and records a security event in the tenant's own `security_events`
    /// (recording is best effort: the refusal itself already happened).
    pub async fn record_security_event(&self, tenant: &TenantId, event: &SecurityEvent) {
        SecurityEventObserved {
            tenant,
            kind: event.kind,
            detail: &event.detail,
        }
        .emit();
        // Not through `scoped`, which calls this on a refusal: one level, no recursion.
        let Ok(mut conn) = self.pool.get().await else {
            return;
        };
        let Ok(tx) = conn.transaction().await else {
            return;
        };
        let scoped = tx
            .execute(
                "select set_config('app.tenant_id', $1, true)",
                &[&tenant.as_str()],
            )
            .await;
        if scoped.is_ok()
            && security::record(&tx, tenant.as_str(), event.kind, &event.detail)
                .await
                .is_ok()
        {
            let _ = tx.commit().await;
        }
    }
}

tokio::task_local! {
    /// Set by [`commit_pipelined`] inside [`TenantScopedStore::scoped`]'s work.
    static COMMIT_SENT: Cell<bool>;
}

/// Sends the COMMIT of the scoped transaction this work runs in, behind the statements the
/// work already sent (pipelined: polled with them in one `join!`, last), and waits for it.
/// Nothing may follow it in the work: the transaction is over (a statement after it would
/// run outside the tenant's scope and see no tenant rows). If a statement before it failed,
/// the server ends the transaction with a rollback instead and the work reports that
/// statement's error. Outside a scoped transaction it sends nothing: the caller commits.
///
/// Every statement before it must leave on its first poll, whole: `statements::query_typed`,
/// `Transaction::query_typed`, `batch_execute`. Not `query`/`execute` with SQL text: they
/// prepare first and send the execution after the answer, which the COMMIT would overtake
/// (the statement would then run after the commit, outside the tenant's scope, and be
/// refused by row-level security: a partial transaction).
pub async fn commit_pipelined(tx: &Transaction<'_>) -> Result<(), tokio_postgres::Error> {
    if COMMIT_SENT.try_with(|sent| sent.set(true)).is_err() {
        return Ok(());
    }
    tx.batch_execute("commit").await
}

/// Classifies a database error for the caller's retry decision.
pub(crate) fn store_error(e: tokio_postgres::Error) -> StoreError {
    match e.code() {
        Some(c) if *c == SqlState::INSUFFICIENT_PRIVILEGE => StoreError::PolicyViolation(
            e.as_db_error()
                .map(|d| d.message().to_owned())
                .unwrap_or_default(),
        ),
        Some(c) if is_transient_state(c) => StoreError::Unavailable(e.to_string()),
        // No SQLSTATE: the connection broke (I/O, closed, TLS): the server is unreachable.
        None => StoreError::Unavailable(e.to_string()),
        Some(_) => StoreError::Query(
            e.as_db_error()
                .map(|d| d.message().to_owned())
                .unwrap_or_else(|| e.to_string()),
        ),
    }
}

/// SQLSTATEs that say nothing about the work itself: the server is starting, shutting
/// down, out of resources, or the transaction lost a race. The same work succeeds later.
fn is_transient_state(c: &SqlState) -> bool {
    let code = c.code();
    code.starts_with("08") // connection exception
        || code.starts_with("53") // insufficient resources (too many connections, disk full)
        || code.starts_with("57P") // admin/crash shutdown, cannot connect now
        || code.starts_with("58") // system error (I/O)
        || code == "40001" // serialization failure
        || code == "40P01" // deadlock detected
        || code == "55P03" // lock not available
        || code == "57014" // query canceled (statement timeout, server shutting down)
        || code == "25006" // read-only transaction (a replica promoted mid-failover)
}
