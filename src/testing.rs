//! A small public API for building a world against the real services, shared by the
//! integration tests (`tests/common`) and the benchmark (`enablement-tools`): a fresh
//! migrated database with a configuration pointing at it, SCIM events in the envelope the
//! service reads, and free loopback ports. Nothing in the service itself uses it.

use serde_json::json;
use tokio_postgres::NoTls;

use crate::config::Config;
use crate::db::{migrate, MigrateError};

#[derive(Debug, thiserror::Error)]
pub enum TestingError {
    #[error(
        "PostgreSQL (postgres.migrate_url) is not reachable: {0}; run scripts/dev-services.sh"
    )]
    Unreachable(String),
    #[error("cannot create database {db}: {message}")]
    Create { db: String, message: String },
    #[error(transparent)]
    Migrate(#[from] MigrateError),
}

/// `url` with its database replaced by `db` (query parameters kept).
pub fn database_url(url: &str, db: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let mut out = match base.rfind('/') {
        Some(cut) if base[..cut].ends_with('/') => format!("{base}/{db}"),
        Some(cut) => format!("{}/{db}", &base[..cut]),
        None => format!("{base}/{db}"),
    };
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}

/// Creates (or re-creates) database `db`, migrates it with the service's own migrations,
/// and returns `base` pointing at it (both the service and the owner URL).
pub async fn create_database(base: &Config, db: &str) -> Result<Config, TestingError> {
    let (admin, conn) = tokio_postgres::connect(&base.postgres.migrate_url, NoTls)
        .await
        .map_err(|e| TestingError::Unreachable(e.to_string()))?;
    tokio::spawn(conn);
    let create = |e: tokio_postgres::Error| TestingError::Create {
        db: db.to_owned(),
        message: e.to_string(),
    };
    admin
        .batch_execute(&format!("drop database if exists {db} with (force)"))
        .await
        .map_err(create)?;
    admin
        .batch_execute(&format!("create database {db}"))
        .await
        .map_err(create)?;
    let mut config = base.clone();
    config.postgres.url = database_url(&base.postgres.url, db);
    config.postgres.migrate_url = database_url(&base.postgres.migrate_url, db);
    migrate(&config.postgres).await?;
    Ok(config)
}

/// A SCIM event envelope (a core User with one email and the `rep` role). `seq` orders the
/// versions of one user: it becomes `occurredAt` (milliseconds after a fixed instant).
pub fn scim_event(
    tenant: &str,
    event_id: &str,
    op: &str,
    user: &str,
    seq: u64,
    email: &str,
) -> String {
    let at = time::OffsetDateTime::UNIX_EPOCH
        + time::Duration::days(20_000)
        + time::Duration::milliseconds(seq as i64);
    let at = at
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    json!({
        "eventId": event_id, "tenantId": tenant, "operation": op, "occurredAt": at,
        "user": {
            "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
            "id": user, "userName": format!("{user}@{tenant}.test"),
            "emails": [{"value": email, "primary": true}],
            "roles": [{"value": "rep"}], "active": true
        }
    })
    .to_string()
}

/// Polls `probe` every `every` until it answers `Some`; `None` once `timeout` passed. The
/// one way tests and the benchmark wait for a condition (never a bare sleep).
pub async fn poll_until<T, F, Fut>(
    timeout: std::time::Duration,
    every: std::time::Duration,
    mut probe: F,
) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Some(v) = probe().await {
            return Some(v);
        }
        if std::time::Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(every).await;
    }
}

/// Prometheus text (`/metrics`) as `name{labels} -> value`; comments skipped.
pub fn parse_metrics(text: &str) -> std::collections::HashMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_owned(), v.parse().ok()?))
        })
        .collect()
}

/// A loopback port nobody listens on right now, never handed out before by this process,
/// and below the kernel's ephemeral range.
///
/// A test picks the port, then a child process binds it. Asking the kernel for port 0 is
/// racy in between: two tests of one binary were handed the same port (one child then
/// failed to bind, and that test talked to the other test's service), and an outgoing
/// connection's source port can take it too. Ports below the ephemeral range are never
/// picked as source ports, and the set below keeps this process from repeating itself.
pub fn free_port() -> std::io::Result<u16> {
    use std::sync::{Mutex, PoisonError};
    static HANDED_OUT: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let (low, high) = if ephemeral_low >= 12_000 {
        (ephemeral_low - 10_000, ephemeral_low)
    } else {
        // An unusual range: let the kernel choose (the process-wide set still applies).
        (0, 0)
    };
    let mut handed = HANDED_OUT.lock().unwrap_or_else(PoisonError::into_inner);
    let span = u32::from(high - low);
    let start = if span == 0 {
        0
    } else {
        rand::random::<u32>() % span
    };
    for i in 0..span.max(64) {
        let candidate = if span == 0 {
            0
        } else {
            // In range by construction: low + (x mod span) < high.
            low + u16::try_from((start + i) % span).unwrap_or(0)
        };
        let Ok(listener) = std::net::TcpListener::bind(("127.0.0.1", candidate)) else {
            continue;
        };
        let port = listener.local_addr()?.port();
        if !handed.contains(&port) {
            handed.push(port);
            return Ok(port);
        }
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::AddrInUse,
        "no free loopback port",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_url_replaces_only_the_database() {
        assert_eq!(
            database_url(
                "postgres://u@127.0.0.1:5432/enablement?sslmode=disable",
                "t_1"
            ),
            "postgres://u@127.0.0.1:5432/t_1?sslmode=disable"
        );
        assert_eq!(database_url("postgres://u@h/db", "x"), "postgres://u@h/x");
    }
}
