//! The per-tenant Redis namespace `tenant:{<id>}:*` behind the `RosterCache` port.
//!
//! Redis is only a cache: the connection is opened lazily and re-opened after failures, so
//! the service starts and keeps working with Redis down (callers count the failures).
//! Whole-tenant invalidation walks the tenant's hash-tagged pattern with `SCAN`, never `KEYS`.
//!
//! A `rediss://` url speaks TLS (rustls), checked against `redis.ca_file` or the system
//! roots. Down is tolerated, misconfigured is not: [`RedisCache::preflight`] tells a wrong
//! CA, a wrong password or plaintext against a TLS port (the start is refused, naming the
//! setting) from a server that is merely unreachable.

use std::time::Duration;

use async_trait::async_trait;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::sync::Mutex;

use crate::actors::ports::{CacheError, RosterCache};
use crate::actors::upstream::CatalogCourse;
use crate::actors::TenantId;
use crate::config::RedisConfig;

/// What the service caches per tenant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resource {
    Roster,
    Catalog,
}

impl Resource {
    pub fn key(self) -> &'static str {
        match self {
            Resource::Roster => "roster",
            Resource::Catalog => "catalog",
        }
    }
}

pub struct RedisCache {
    client: redis::Client,
    conn: Mutex<Option<ConnectionManager>>,
    timeout: Duration,
    roster_ttl_s: u64,
    catalog_ttl_s: u64,
}

fn unavailable(e: impl std::fmt::Display) -> CacheError {
    CacheError::Unavailable(e.to_string())
}

/// The outcome of [`RedisCache::preflight`] when it is not a plain success.
#[derive(Debug, thiserror::Error)]
pub enum CacheStartError {
    /// The settings are wrong: the service refuses to start (exit 2).
    #[error("{key}: {reason}")]
    Refused { key: &'static str, reason: String },
    /// Redis is not reachable now: the service starts and works without its cache.
    #[error("redis unavailable: {0}")]
    Unavailable(String),
}

impl RedisCache {
    pub fn new(cfg: &RedisConfig) -> Result<Self, CacheError> {
        let client = if cfg.ca_file.is_empty() {
            redis::Client::open(cfg.url.as_str()).map_err(unavailable)?
        } else {
            let root_cert = std::fs::read(&cfg.ca_file)
                .map_err(|e| CacheError::Unavailable(format!("redis.ca_file: {e}")))?;
            redis::Client::build_with_tls(
                cfg.url.as_str(),
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(root_cert),
                },
            )
            .map_err(|e| CacheError::Unavailable(format!("redis.ca_file: {e}")))?
        };
        Ok(Self {
            client,
            conn: Mutex::new(None),
            timeout: Duration::from_millis(cfg.timeout_ms),
            roster_ttl_s: cfg.roster_ttl_s,
            catalog_ttl_s: cfg.catalog_ttl_s,
        })
    }

    async fn connection(&self) -> Result<ConnectionManager, CacheError> {
        let mut slot = self.conn.lock().await;
        if let Some(c) = slot.as_ref() {
            return Ok(c.clone());
        }
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(self.timeout)
            .set_response_timeout(self.timeout)
            .set_number_of_retries(1);
        let conn = tokio::time::timeout(
            self.timeout * 2,
            self.client.get_connection_manager_with_config(config),
        )
        .await
        .map_err(|_| CacheError::Unavailable("connect timed out".into()))?
        .map_err(unavailable)?;
        *slot = Some(conn.clone());
        Ok(conn)
    }

    /// A cached resource of the tenant (JSON text), if present.
    pub async fn get(
        &self,
        tenant: &TenantId,
        resource: Resource,
    ) -> Result<Option<String>, CacheError> {
        let mut c = self.connection().await?;
        redis::cmd("GET")
            .arg(tenant.cache_key(resource.key()))
            .query_async(&mut c)
            .await
            .map_err(unavailable)
    }

    /// Caches a resource of the tenant for its TTL (roster 10 min, catalog 30 min by
    /// default). Quiz results are never cached: there is no `Resource` for them.
    pub async fn set(
        &self,
        tenant: &TenantId,
        resource: Resource,
        json: &str,
    ) -> Result<(), CacheError> {
        let ttl = match resource {
            Resource::Roster => self.roster_ttl_s,
            Resource::Catalog => self.catalog_ttl_s,
        };
        let mut c = self.connection().await?;
        redis::cmd("SET")
            .arg(tenant.cache_key(resource.key()))
            .arg(json)
            .arg("EX")
            .arg(ttl)
            .query_async::<()>(&mut c)
            .await
            .map_err(unavailable)
    }

    /// One fresh connection and a `PING`, to classify what goes wrong (see
    /// [`CacheStartError`]).
    pub async fn preflight(&self) -> Result<(), CacheStartError> {
        let tls = matches!(
            self.client.get_connection_info().addr,
            redis::ConnectionAddr::TcpTls { .. }
        );
        let attempt = async {
            let mut c = self.client.get_multiplexed_async_connection().await?;
            redis::cmd("PING").query_async::<String>(&mut c).await
        };
        let e = match tokio::time::timeout(self.timeout * 5, attempt).await {
            Ok(Ok(_)) => return Ok(()),
            Ok(Err(e)) => e,
            Err(_) => {
                return Err(if tls {
                    CacheStartError::Unavailable("TLS connection timed out".into())
                } else {
                    CacheStartError::Refused {
                        key: "redis.url",
                        reason: "the server accepted the connection but never answered PING (a TLS port? use rediss://)".into(),
                    }
                })
            }
        };
        let text = e.to_string();
        if e.kind() == redis::ErrorKind::AuthenticationFailed
            || text.contains("WRONGPASS")
            || text.contains("NOAUTH")
        {
            return Err(CacheStartError::Refused {
                key: "redis.url",
                reason: "authentication failed (wrong user or password in the url)".into(),
            });
        }
        if tls && crate::tls::is_tls_rejection(&e) {
            return Err(CacheStartError::Refused {
                key: "redis.ca_file",
                reason: format!("TLS handshake refused: {text} (is the server's certificate signed by this CA, and issued for this host?)"),
            });
        }
        if e.is_connection_refusal() || e.is_timeout() {
            return Err(CacheStartError::Unavailable(text));
        }
        if !tls && e.is_io_error() {
            // Connected, then dropped without an answer: what a TLS port does to plaintext.
            return Err(CacheStartError::Refused {
                key: "redis.url",
                reason: format!("the server closed the connection without answering ({text}); if it serves TLS, use a rediss:// url"),
            });
        }
        Err(CacheStartError::Unavailable(text))
    }

    pub async fn ping(&self) -> Result<(), CacheError> {
        let mut c = self.connection().await?;
        redis::cmd("PING")
            .query_async::<String>(&mut c)
            .await
            .map(|_| ())
            .map_err(unavailable)
    }

    /// Deletes every key of the tenant (tenant removal), by `SCAN` on its own pattern.
    pub async fn invalidate_tenant(&self, tenant: &TenantId) -> Result<u64, CacheError> {
        let mut c = self.connection().await?;
        let pattern = tenant.cache_pattern();
        let mut cursor: u64 = 0;
        let mut deleted = 0;
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(500)
                .query_async(&mut c)
                .await
                .map_err(unavailable)?;
            if !keys.is_empty() {
                deleted += redis::cmd("UNLINK")
                    .arg(&keys)
                    .query_async::<u64>(&mut c)
                    .await
                    .map_err(unavailable)?;
            }
            if next == 0 {
                return Ok(deleted);
            }
            cursor = next;
        }
    }
}

#[async_trait]
impl RosterCache for RedisCache {
    async fn invalidate_roster(&self, tenant: &TenantId) -> Result<(), CacheError> {
        let mut c = self.connection().await?;
        redis::cmd("UNLINK")
            .arg(tenant.cache_key("roster"))
            .query_async::<u64>(&mut c)
            .await
            .map(|_| ())
            .map_err(unavailable)
    }

    async fn store_catalog(
        &self,
        tenant: &TenantId,
        courses: &[CatalogCourse],
    ) -> Result<(), CacheError> {
        self.set(tenant, Resource::Catalog, &catalog_text(tenant, courses))
            .await
    }
}

/// The cached (and served) form of a tenant's course catalog: one text, whether the
/// HTTP handler or a catalog refresh job fetched it.
pub fn catalog_text(tenant: &TenantId, courses: &[CatalogCourse]) -> String {
    serde_json::json!({"tenantId": tenant.as_str(), "courses": courses}).to_string()
}
