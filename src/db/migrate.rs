//! `enablement migrate`: applies the embedded `migrations/*.sql` in order as the owner role.
//!
//! Safe to run twice and from two processes at once: everything happens under a
//! session-level advisory lock, each migration commits atomically with its record in
//! `schema_migrations`, and an applied migration whose text changed is refused.

use sha2::{Digest, Sha256};
use tokio_postgres::error::SqlState;

use crate::config::{is_sql_identifier, PostgresConfig};

/// The migrations, embedded at build time so the binary needs no files at run time.
const MIGRATIONS: &[(i32, &str, &str)] = &[
    (
        1,
        "0001_tenant_pipeline.sql",
        include_str!("../../migrations/0001_tenant_pipeline.sql"),
    ),
    (
        2,
        "0002_course_progress.sql",
        include_str!("../../migrations/0002_course_progress.sql"),
    ),
    (
        3,
        "0003_quiz_submissions.sql",
        include_str!("../../migrations/0003_quiz_submissions.sql"),
    ),
    (
        4,
        "0004_upstream_jobs.sql",
        include_str!("../../migrations/0004_upstream_jobs.sql"),
    ),
    (
        5,
        "0005_readiness.sql",
        include_str!("../../migrations/0005_readiness.sql"),
    ),
    (
        6,
        "0006_progress_sync_replaces.sql",
        include_str!("../../migrations/0006_progress_sync_replaces.sql"),
    ),
    (
        7,
        "0007_outbox_relay_cursor.sql",
        include_str!("../../migrations/0007_outbox_relay_cursor.sql"),
    ),
    (
        8,
        "0008_dead_letters.sql",
        include_str!("../../migrations/0008_dead_letters.sql"),
    ),
    (
        9,
        "0009_retention.sql",
        include_str!("../../migrations/0009_retention.sql"),
    ),
    (
        10,
        "0010_sealed_secrets.sql",
        include_str!("../../migrations/0010_sealed_secrets.sql"),
    ),
    (
        11,
        "0011_tenant_erasures.sql",
        include_str!("../../migrations/0011_tenant_erasures.sql"),
    ),
    (
        12,
        "0012_refresh_catalog_jobs.sql",
        include_str!("../../migrations/0012_refresh_catalog_jobs.sql"),
    ),
    (
        13,
        "0013_shared_topics.sql",
        include_str!("../../migrations/0013_shared_topics.sql"),
    ),
    (
        14,
        "0014_operations.sql",
        include_str!("../../migrations/0014_operations.sql"),
    ),
    (
        15,
        "0015_scim_lookups.sql",
        include_str!("../../migrations/0015_scim_lookups.sql"),
    ),
    (
        16,
        "0016_scim_provider.sql",
        include_str!("../../migrations/0016_scim_provider.sql"),
    ),
];

/// Key of the advisory lock that serialises migrators (arbitrary, fixed).
const MIGRATION_LOCK_KEY: i64 = 0x656e_6162_6c65;

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("cannot connect with postgres.migrate_url: {0}")]
    Connect(String),
    #[error("postgres.app_role is not a plain SQL identifier")]
    RoleName,
    #[error("migration {name} was changed after it was applied (checksum mismatch)")]
    Changed { name: String },
    #[error("migration {name} failed: {message}")]
    Failed { name: String, message: String },
    #[error("database error: {0}")]
    Db(String),
    /// TLS, credentials or the URL are wrong (exit 2).
    #[error("{0}")]
    Refused(super::DbError),
}

impl From<super::DbError> for MigrateError {
    fn from(e: super::DbError) -> Self {
        match e {
            super::DbError::Connect(m) => MigrateError::Connect(m),
            other => MigrateError::Refused(other),
        }
    }
}

#[derive(Debug, Default)]
pub struct MigrationReport {
    pub applied: Vec<String>,
    pub already_applied: Vec<String>,
}

fn db(e: tokio_postgres::Error) -> MigrateError {
    MigrateError::Db(
        e.as_db_error()
            .map(|d| format!("{}: {}", d.code().code(), d.message()))
            .unwrap_or_else(|| e.to_string()),
    )
}

pub async fn migrate(cfg: &PostgresConfig) -> Result<MigrationReport, MigrateError> {
    migrate_through(cfg, i32::MAX).await
}

/// Applies the migrations up to and including version `last` (tests of upgrades start
/// from an older schema this way).
pub async fn migrate_through(
    cfg: &PostgresConfig,
    last: i32,
) -> Result<MigrationReport, MigrateError> {
    if !is_sql_identifier(&cfg.app_role) {
        return Err(MigrateError::RoleName);
    }
    let target = super::PgTarget::new(cfg, &cfg.migrate_url, "postgres.migrate_url")?;
    let (mut client, conn) = target
        .pg
        .connect(target.tls.clone())
        .await
        .map_err(|e| MigrateError::from(target.classify(&e)))?;
    let conn_task = tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::warn!(error = %super::redact(e), "migration connection ended");
        }
    });
    client
        .execute("select pg_advisory_lock($1)", &[&MIGRATION_LOCK_KEY])
        .await
        .map_err(db)?;
    let result = apply_all(&mut client, cfg, last).await;
    let _ = client
        .execute("select pg_advisory_unlock($1)", &[&MIGRATION_LOCK_KEY])
        .await;
    drop(client);
    let _ = conn_task.await;
    result
}

async fn apply_all(
    client: &mut tokio_postgres::Client,
    cfg: &PostgresConfig,
    last: i32,
) -> Result<MigrationReport, MigrateError> {
    let role = format!("\"{}\"", cfg.app_role);
    client
        .batch_execute(
            "create table if not exists schema_migrations (
                 version    integer primary key,
                 name       text not null,
                 checksum   text not null,
                 applied_at timestamptz not null default now())",
        )
        .await
        .map_err(db)?;
    // The service role: may log in, owns nothing, cannot bypass RLS. Re-asserted on every
    // run so a role created by hand with more rights is brought back to least privilege.
    // Roles are cluster-wide while the advisory lock is per database, so both steps
    // tolerate a migrator of another database doing the same at the same moment.
    let attrs = client
        .query_opt(
            "select rolsuper or rolbypassrls or rolcreatedb or rolcreaterole or rolreplication
                    or rolinherit or not rolcanlogin
               from pg_roles where rolname = $1",
            &[&cfg.app_role],
        )
        .await
        .map_err(db)?;
    let needs_restrict = match attrs {
        None => {
            match client
                .batch_execute(&format!("create role {role} login"))
                .await
            {
                Ok(()) => {}
                // Another migrator created it at the same moment (the catalog's unique index
                // answers before the duplicate-object check does).
                Err(e)
                    if e.code() == Some(&SqlState::DUPLICATE_OBJECT)
                        || e.code() == Some(&SqlState::UNIQUE_VIOLATION) => {}
                Err(e) => return Err(db(e)),
            }
            true
        }
        Some(row) => row.get::<_, bool>(0),
    };
    if needs_restrict {
        let restrict = format!(
            "alter role {role} login nosuperuser nobypassrls nocreatedb nocreaterole noreplication noinherit"
        );
        if let Err(e) = client.batch_execute(&restrict).await {
            // "tuple concurrently updated": another migrator just applied the same change.
            if e.code() != Some(&SqlState::T_R_SERIALIZATION_FAILURE)
                && e.code() != Some(&SqlState::INTERNAL_ERROR)
            {
                return Err(db(e));
            }
            client.batch_execute(&restrict).await.map_err(db)?;
        }
    }
    let dbname: String = client
        .query_one("select current_database()", &[])
        .await
        .map_err(db)?
        .get(0);
    client
        .batch_execute(&format!(
            "grant connect on database \"{}\" to {role}",
            dbname.replace('"', "\"\"")
        ))
        .await
        .map_err(db)?;

    let mut report = MigrationReport::default();
    for (version, name, sql) in MIGRATIONS.iter().filter(|(v, _, _)| *v <= last) {
        let checksum = hex::encode(Sha256::digest(sql.as_bytes()));
        let row = client
            .query_opt(
                "select checksum from schema_migrations where version = $1",
                &[version],
            )
            .await
            .map_err(db)?;
        if let Some(row) = row {
            let stored: String = row.get(0);
            if stored != checksum {
                return Err(MigrateError::Changed {
                    name: name.to_string(),
                });
            }
            report.already_applied.push(name.to_string());
            continue;
        }
        let tx = client.transaction().await.map_err(db)?;
        tx.batch_execute(&sql.replace("__APP_ROLE__", &role))
            .await
            .map_err(|e| MigrateError::Failed {
                name: name.to_string(),
                message: e
                    .as_db_error()
                    .map(|d| d.message().to_owned())
                    .unwrap_or_else(|| e.to_string()),
            })?;
        tx.execute(
            "insert into schema_migrations (version, name, checksum) values ($1, $2, $3)",
            &[version, name, &checksum],
        )
        .await
        .map_err(db)?;
        tx.commit().await.map_err(db)?;
        tracing::info!(migration = name, "applied");
        report.applied.push(name.to_string());
    }
    Ok(report)
}
