//! Prepared statements kept per pooled connection ([`PgConnection`], [`query_typed`]).
//!
//! A statement sent with its text (`query_typed`) is parsed, analysed and planned by
//! PostgreSQL on every execution. On the write paths (a SCIM PATCH runs about a dozen
//! statements, most of them multi-row `unnest` inserts with `on conflict`), that planning
//! is a large part of the database's CPU: the same transaction run by `pgbench` with
//! `-M prepared` instead of `-M extended` ran at 1.8x the rate on the benchmark machine.
//!
//! So each pooled connection carries a bounded cache of the statements it prepared, keyed
//! by their text. The cache travels with the connection ([`PgManager`] builds it), and a
//! tenant's scoped transaction makes its connection's cache the current one for the work
//! it runs ([`with_cache`]); [`query_typed`] prepares a statement once per connection and
//! then only binds and executes it (one round trip, as before). Outside such a scope, or
//! with `postgres.statement_cache_capacity = 0` (for a PgBouncer in transaction mode that
//! does not track prepared statements), it sends the text as before.
//!
//! A cached statement stays valid across schema changes (PostgreSQL re-plans it); one
//! whose result type a migration changed fails once with `0A000` and is dropped, so the
//! next use prepares it again. Row-level security is unaffected: the policies read
//! `app.tenant_id` when the statement executes, not when it is planned.

use std::collections::HashMap;
use std::ops::{Deref, DerefMut};
use std::sync::{Arc, Mutex};

use bb8_postgres::PostgresConnectionManager;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Client, Row, Statement, Transaction};
use tokio_postgres_rustls::MakeRustlsConnect;

/// A pooled connection: the client and the statements prepared on it.
pub struct PgConnection {
    client: Client,
    statements: Arc<StatementCache>,
}

impl PgConnection {
    /// This connection's prepared statements.
    pub(crate) fn statements(&self) -> Arc<StatementCache> {
        Arc::clone(&self.statements)
    }
}

impl Deref for PgConnection {
    type Target = Client;
    fn deref(&self) -> &Client {
        &self.client
    }
}

impl DerefMut for PgConnection {
    fn deref_mut(&mut self) -> &mut Client {
        &mut self.client
    }
}

/// The pool's connection manager: bb8-postgres's, with a statement cache per connection.
#[derive(Clone)]
pub struct PgManager {
    inner: PostgresConnectionManager<MakeRustlsConnect>,
    capacity: usize,
}

impl PgManager {
    pub fn new(
        pg: tokio_postgres::Config,
        tls: MakeRustlsConnect,
        statement_cache_capacity: usize,
    ) -> Self {
        Self {
            inner: PostgresConnectionManager::new(pg, tls),
            capacity: statement_cache_capacity,
        }
    }
}

impl bb8::ManageConnection for PgManager {
    type Connection = PgConnection;
    type Error = tokio_postgres::Error;

    async fn connect(&self) -> Result<PgConnection, tokio_postgres::Error> {
        Ok(PgConnection {
            client: self.inner.connect().await?,
            statements: Arc::new(StatementCache::new(self.capacity)),
        })
    }

    async fn is_valid(&self, conn: &mut PgConnection) -> Result<(), tokio_postgres::Error> {
        self.inner.is_valid(&mut conn.client).await
    }

    fn has_broken(&self, conn: &mut PgConnection) -> bool {
        self.inner.has_broken(&mut conn.client)
    }
}

/// The statements one connection prepared, by text; at most `capacity` (the least recently
/// used one gives way, so a stream of distinct filter shapes cannot grow it).
pub(crate) struct StatementCache {
    capacity: usize,
    entries: Mutex<Entries>,
}

#[derive(Default)]
struct Entries {
    by_sql: HashMap<Box<str>, (Statement, u64)>,
    clock: u64,
}

impl StatementCache {
    fn new(capacity: usize) -> Self {
        Self {
            capacity,
            entries: Mutex::new(Entries::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Entries> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn get(&self, sql: &str) -> Option<Statement> {
        let mut e = self.lock();
        e.clock += 1;
        let now = e.clock;
        e.by_sql.get_mut(sql).map(|(s, used)| {
            *used = now;
            s.clone()
        })
    }

    fn put(&self, sql: &str, statement: Statement) {
        let mut e = self.lock();
        if e.by_sql.len() >= self.capacity {
            let oldest = e
                .by_sql
                .iter()
                .min_by_key(|(_, (_, used))| *used)
                .map(|(k, _)| k.clone());
            if let Some(k) = oldest {
                e.by_sql.remove(&k);
            }
        }
        e.clock += 1;
        let now = e.clock;
        e.by_sql.insert(sql.into(), (statement, now));
    }

    fn forget(&self, sql: &str) {
        self.lock().by_sql.remove(sql);
    }

    /// How many statements are prepared on the connection.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().by_sql.len()
    }
}

tokio::task_local! {
    /// The statement cache of the connection the current scoped transaction runs on.
    static CURRENT: Arc<StatementCache>;
}

/// Runs `work` with `cache` as the current connection's statements (what
/// [`TenantScopedStore::scoped`](super::TenantScopedStore::scoped) does for its work).
pub(crate) async fn with_cache<F: std::future::Future>(
    cache: Arc<StatementCache>,
    work: F,
) -> F::Output {
    CURRENT.scope(cache, work).await
}

/// `tx.query_typed(sql, params)`, but prepared once per connection when the transaction
/// runs in a scope with a statement cache: then each execution is bind and execute only.
pub async fn query_typed(
    tx: &Transaction<'_>,
    sql: &str,
    params: &[(&(dyn ToSql + Sync), Type)],
) -> Result<Vec<Row>, tokio_postgres::Error> {
    let cache = CURRENT.try_with(Arc::clone).ok().filter(|c| c.capacity > 0);
    let Some(cache) = cache else {
        return tx.query_typed(sql, params).await;
    };
    let Some(statement) = cache.get(sql) else {
        // Not prepared yet: prepared and run as text in the same poll, so both requests
        // leave before any statement a caller pipelines after this one. (Awaiting the
        // prepare first would let those overtake it: a reordered pipeline, and locks taken
        // out of order, a deadlock seen with two writers of one tenant.)
        let types: Vec<Type> = params.iter().map(|(_, t)| t.clone()).collect();
        let (prepared, rows) =
            tokio::join!(biased; tx.prepare_typed(sql, &types), tx.query_typed(sql, params));
        if let Ok(s) = prepared {
            cache.put(sql, s);
        }
        return rows;
    };
    let values: Vec<&(dyn ToSql + Sync)> = params.iter().map(|(v, _)| *v).collect();
    match tx.query(&statement, &values).await {
        Err(e) if e.code() == Some(&SqlState::FEATURE_NOT_SUPPORTED) => {
            // "cached plan must not change result type": a migration changed a table under
            // it. Prepared again on its next use.
            cache.forget(sql);
            Err(e)
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn client() -> Client {
        let (client, conn) = tokio_postgres::connect(
            "host=127.0.0.1 user=postgres dbname=postgres",
            tokio_postgres::NoTls,
        )
        .await
        .expect("PostgreSQL on 127.0.0.1:5432 (trust auth) is needed for this test");
        tokio::spawn(conn);
        client
    }

    async fn prepared_on_server(tx: &Transaction<'_>) -> i64 {
        tx.query_typed("select count(*) from pg_prepared_statements", &[])
            .await
            .expect("count")[0]
            .get(0)
    }

    async fn plus(tx: &Transaction<'_>, n: i64) -> i64 {
        let sql = format!("select $1::int8 + {n}");
        query_typed(tx, &sql, &[(&n, Type::INT8)])
            .await
            .expect("query")[0]
            .get(0)
    }

    /// A statement is prepared once per connection and then reused; outside a scope, or
    /// with capacity 0, nothing is prepared; the least recently used statement gives way.
    #[tokio::test]
    async fn statements_are_prepared_once_per_connection_and_bounded() {
        let mut c = client().await;
        let cache = Arc::new(StatementCache::new(2));
        let tx = c.transaction().await.expect("begin");
        assert_eq!(plus(&tx, 1).await, 2);
        assert_eq!(
            prepared_on_server(&tx).await,
            0,
            "outside a scope: sent as text"
        );
        with_cache(cache.clone(), async {
            for _ in 0..3 {
                assert_eq!(plus(&tx, 1).await, 2);
            }
            assert_eq!(
                prepared_on_server(&tx).await,
                1,
                "prepared once, run three times"
            );
            plus(&tx, 2).await;
            plus(&tx, 1).await; // 2 is now the least recently used
            plus(&tx, 3).await;
        })
        .await;
        assert_eq!(cache.len(), 2);
        assert!(cache.get("select $1::int8 + 2").is_none(), "evicted");
        assert!(cache.get("select $1::int8 + 1").is_some());
        let off = Arc::new(StatementCache::new(0));
        with_cache(off.clone(), async { plus(&tx, 4).await }).await;
        assert_eq!(off.len(), 0);
        // The evicted statement was closed on the server: at most `capacity` stay.
        let left = with_cache(cache.clone(), async { prepared_on_server(&tx).await }).await;
        assert!(left <= 2, "{left} statements left prepared on the server");
    }

    /// Statements a caller pipelines run in the order it sent them, whether or not they
    /// were prepared before: a statement's first use must not be overtaken by the ones
    /// after it (the lock order of the write path depends on it).
    #[tokio::test]
    async fn pipelined_statements_keep_their_order_on_first_use() {
        let mut c = client().await;
        let table = format!("statements_order_{}", std::process::id());
        c.batch_execute(&format!("create temp table {table} (n serial, v text)"))
            .await
            .expect("table");
        let cache = Arc::new(StatementCache::new(8));
        let tx = c.transaction().await.expect("begin");
        let first = format!("insert into {table} (v) values ($1 || '-first')");
        let second = format!("insert into {table} (v) values ($1 || '-second')");
        with_cache(cache.clone(), async {
            // The second statement is prepared already, the first is not.
            query_typed(&tx, &second, &[(&"warm", Type::TEXT)])
                .await
                .expect("warm");
            let (a, b) = tokio::join!(
                query_typed(&tx, &first, &[(&"x", Type::TEXT)]),
                query_typed(&tx, &second, &[(&"x", Type::TEXT)]),
            );
            a.expect("first");
            b.expect("second");
        })
        .await;
        let order: Vec<String> = tx
            .query(&format!("select v from {table} order by n"), &[])
            .await
            .expect("read")
            .iter()
            .map(|r| r.get(0))
            .collect();
        assert_eq!(order, ["warm-second", "x-first", "x-second"]);
        assert!(cache.get(&first).is_some(), "prepared for its next use");
    }

    /// A migration that changes a cached statement's result type costs that statement one
    /// failed execution: it is dropped and prepared again on its next use.
    #[tokio::test]
    async fn a_statement_whose_result_type_changed_is_prepared_again() {
        let mut c = client().await;
        let table = format!("statements_test_{}", std::process::id());
        c.batch_execute(&format!(
            "create temp table {table} (a int4); insert into {table} values (7)"
        ))
        .await
        .expect("table");
        let cache = Arc::new(StatementCache::new(8));
        let sql = format!("select a from {table} where $1::int4 > 0");
        async fn read(
            c: &mut Client,
            cache: &Arc<StatementCache>,
            sql: &str,
        ) -> Result<usize, tokio_postgres::Error> {
            let tx = c.transaction().await.expect("begin");
            let one = 1_i32;
            let rows =
                with_cache(cache.clone(), query_typed(&tx, sql, &[(&one, Type::INT4)])).await;
            rows.map(|r| r.len())
        }
        assert_eq!(read(&mut c, &cache, &sql).await.expect("first"), 1);
        c.batch_execute(&format!("alter table {table} alter column a type int8"))
            .await
            .expect("alter");
        let err = read(&mut c, &cache, &sql)
            .await
            .expect_err("the cached plan's result type changed");
        assert_eq!(err.code(), Some(&SqlState::FEATURE_NOT_SUPPORTED));
        assert_eq!(read(&mut c, &cache, &sql).await.expect("prepared again"), 1);
    }
}
