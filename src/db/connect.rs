//! Opening PostgreSQL connections: the URL plus the TLS settings (`postgres.sslmode`,
//! `postgres.sslrootcert`, or libpq's parameters in the URL), in one place for the pool,
//! the migrator and the notification listener; and the start-up checks that refuse a
//! connection the service must not run with.
//!
//! A failure that configuration caused (a certificate the CA does not sign, a wrong
//! password, plaintext where the server requires TLS, a role with too many rights) is a
//! [`DbError::Refused`] naming the setting to fix; an unreachable server is
//! [`DbError::Connect`], which a retry may cure.

use std::time::Duration;

use tokio_postgres::error::SqlState;
use tokio_postgres_rustls::MakeRustlsConnect;

use super::{redact, DbError};
use crate::config::{split_pg_tls_params, PostgresConfig};
use crate::tls::{self, Verify};

/// Where and how to connect: the parsed URL and its TLS connector.
#[derive(Clone)]
pub struct PgTarget {
    pub pg: tokio_postgres::Config,
    pub tls: MakeRustlsConnect,
    /// The setting that named the URL (`postgres.url` or `postgres.migrate_url`).
    url_key: &'static str,
    /// The setting that decided the TLS mode (the URL's own `sslmode`, or `postgres.sslmode`).
    mode_key: &'static str,
    verify: Option<Verify>,
}

impl PgTarget {
    /// `url_key` names the URL's setting in errors.
    pub fn new(cfg: &PostgresConfig, url: &str, url_key: &'static str) -> Result<Self, DbError> {
        let (url, url_mode, url_root) = split_pg_tls_params(url);
        let mode_key = if url_mode.is_some() {
            url_key
        } else {
            "postgres.sslmode"
        };
        let mode = url_mode.unwrap_or_else(|| cfg.sslmode.clone());
        let (root_key, root) = match url_root {
            Some(r) => (url_key, r),
            None => ("postgres.sslrootcert", cfg.sslrootcert.clone()),
        };
        let mut pg: tokio_postgres::Config = url.parse().map_err(|e| DbError::Url(redact(e)))?;
        pg.connect_timeout(Duration::from_millis(cfg.connect_timeout_ms));
        pg.application_name("enablement");
        let verify = match mode.as_str() {
            "disable" => None,
            "require" => Some(Verify::Nothing),
            "verify-ca" => Some(Verify::Chain),
            _ => Some(Verify::Full),
        };
        pg.ssl_mode(if verify.is_some() {
            tokio_postgres::config::SslMode::Require
        } else {
            tokio_postgres::config::SslMode::Disable
        });
        let client_config = tls::client_config(verify.unwrap_or(Verify::Full), root_key, &root)
            .map_err(|e| DbError::Refused {
                key: root_key.into(),
                reason: e.to_string(),
            })?;
        Ok(Self {
            pg,
            tls: MakeRustlsConnect::new(client_config),
            url_key,
            mode_key,
            verify,
        })
    }

    /// One connection, its driver task spawned. Errors are classified ([`Self::classify`]).
    pub async fn connect(&self) -> Result<tokio_postgres::Client, DbError> {
        let (client, conn) = self
            .pg
            .connect(self.tls.clone())
            .await
            .map_err(|e| self.classify(&e))?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %redact(e), "postgres connection closed");
            }
        });
        Ok(client)
    }

    /// Tells a configuration error (exit 2, names the setting) from an unreachable server.
    pub fn classify(&self, e: &tokio_postgres::Error) -> DbError {
        let refused = |key: &str, reason: String| DbError::Refused {
            key: key.into(),
            reason,
        };
        if let Some(db) = e.as_db_error() {
            let code = db.code();
            if *code == SqlState::INVALID_PASSWORD {
                return refused(
                    self.url_key,
                    "password authentication failed (wrong user or password)".into(),
                );
            }
            if *code == SqlState::INVALID_AUTHORIZATION_SPECIFICATION {
                if db.message().contains("no encryption") {
                    return refused(
                        self.mode_key,
                        "the server refuses unencrypted connections: set sslmode require, verify-ca or verify-full".into(),
                    );
                }
                return refused(
                    self.url_key,
                    format!("the server refused this login: {}", db.message()),
                );
            }
            if *code == SqlState::INVALID_CATALOG_NAME {
                return refused(
                    self.url_key,
                    format!(
                        "{} (run `enablement migrate` against the right database)",
                        db.message()
                    ),
                );
            }
        }
        let text = e.to_string();
        let source = std::error::Error::source(e)
            .map(|s| s.to_string())
            .unwrap_or_default();
        if text.contains("server does not support TLS")
            || source.contains("server does not support TLS")
        {
            return refused(
                self.mode_key,
                "the server does not offer TLS; use sslmode disable or enable ssl on the server"
                    .into(),
            );
        }
        if self.verify.is_some() && tls::is_tls_rejection(e) {
            let key = if self.mode_key == self.url_key {
                self.url_key
            } else {
                "postgres.sslrootcert"
            };
            return refused(
                key,
                format!("TLS handshake refused: {source} (is the server's certificate signed by this CA, and for verify-full issued for this host?)"),
            );
        }
        DbError::Connect(redact(format!(
            "{text}{}",
            if source.is_empty() {
                String::new()
            } else {
                format!(": {source}")
            }
        )))
    }
}

/// Refuses a service role that could read across tenants: a superuser, BYPASSRLS, an owner
/// of a row-secured table (owners are exempt from RLS unless forced, and can drop it), or a
/// member of a role that is any of those (it could `SET ROLE`).
pub async fn ensure_least_privilege(
    client: &tokio_postgres::Client,
    url_key: &str,
) -> Result<(), DbError> {
    let row = client
        .query_one(
            "select current_user::text,
                    (select string_agg(r.rolname, ', ' order by r.rolname) from pg_roles r
                      where (r.rolsuper or r.rolbypassrls)
                        and pg_has_role(current_user, r.oid, 'MEMBER')),
                    (select string_agg(distinct c.relname, ', ') from pg_class c
                      where c.relrowsecurity and pg_has_role(current_user, c.relowner, 'MEMBER'))",
            &[],
        )
        .await
        .map_err(|e| DbError::Connect(redact(e)))?;
    let user: String = row.get(0);
    let privileged: Option<String> = row.get(1);
    let owned: Option<String> = row.get(2);
    if let Some(roles) = privileged {
        return Err(DbError::Refused {
            key: url_key.into(),
            reason: format!(
                "role {user} is (or is a member of) a superuser or BYPASSRLS role ({roles}), which \
                 ignores row-level security; connect as the service role `enablement migrate` \
                 creates (postgres.app_role)"
            ),
        });
    }
    if let Some(tables) = owned {
        return Err(DbError::Refused {
            key: url_key.into(),
            reason: format!(
                "role {user} owns (or is a member of the owner of) tenant tables ({tables}); the \
                 service must connect as the unprivileged postgres.app_role, never as the \
                 migration owner"
            ),
        });
    }
    Ok(())
}
