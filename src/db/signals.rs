//! Cross-process wake-ups through PostgreSQL `LISTEN/NOTIFY`.
//!
//! Roles in separate processes coordinate only through PostgreSQL and Kafka. When a process
//! other than the tenant's consumer writes work for it (an aggregator's outbox row or refresh
//! syncs, an API process's queued sync), it notifies `enablement_tenant_work` with the tenant
//! id in the same transaction (delivered at commit). The consumer process listens and wakes
//! that tenant's actor, which relays its outbox and looks at its job queue at once. The
//! notification is only a shortcut: the job pump also polls, and the outbox is relayed at the
//! actor's next start at the latest.

use std::time::Duration;

use tokio_postgres::types::Type;
use tokio_postgres::{AsyncMessage, Transaction};
use tokio_util::sync::CancellationToken;

use crate::actors::TenantId;
use crate::config::PostgresConfig;

pub const TENANT_WORK_CHANNEL: &str = "enablement_tenant_work";

/// Announces new work for `tenant` when the transaction commits.
pub async fn notify_tenant_work(
    tx: &Transaction<'_>,
    tenant: &str,
) -> Result<(), tokio_postgres::Error> {
    super::statements::query_typed(
        tx,
        "select pg_notify($1, $2)",
        &[(&TENANT_WORK_CHANNEL, Type::TEXT), (&tenant, Type::TEXT)],
    )
    .await
    .map(|_| ())
}

/// Listens until `shutdown`, calling `wake` for each notified tenant; reconnects after a
/// lost connection (notifications sent meanwhile are covered by the pumps' polling).
pub async fn listen_tenant_work<F>(cfg: PostgresConfig, wake: F, shutdown: CancellationToken)
where
    F: Fn(TenantId) + Send + Sync + 'static,
{
    let mut retry = Duration::from_millis(500);
    while !shutdown.is_cancelled() {
        match listen_once(&cfg, &wake, &shutdown).await {
            Ok(()) => return,
            Err(e) => {
                tracing::warn!(error = %super::redact(e), "tenant work listener lost; reconnecting");
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(retry) => {}
        }
        retry = (retry * 2).min(Duration::from_secs(10));
    }
}

async fn listen_once<F>(
    cfg: &PostgresConfig,
    wake: &F,
    shutdown: &CancellationToken,
) -> Result<(), String>
where
    F: Fn(TenantId),
{
    let target = match super::PgTarget::new(cfg, &cfg.url, "postgres.url") {
        Ok(mut t) => {
            t.pg.application_name("enablement-listener");
            t
        }
        Err(e) => {
            tracing::error!(error = %e, "tenant work listener: unusable postgres settings");
            shutdown.cancelled().await;
            return Ok(());
        }
    };
    let (client, mut conn) = target
        .pg
        .connect(target.tls.clone())
        .await
        .map_err(|e| target.classify(&e).to_string())?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Result<String, String>>();
    // The connection must be polled for the LISTEN to complete and notifications to arrive.
    let driver = tokio::spawn(async move {
        loop {
            match std::future::poll_fn(|cx| conn.poll_message(cx)).await {
                Some(Ok(AsyncMessage::Notification(n))) => {
                    if tx.send(Ok(n.payload().to_owned())).is_err() {
                        return;
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    let _ = tx.send(Err(e.to_string()));
                    return;
                }
                None => {
                    let _ = tx.send(Err("connection closed".into()));
                    return;
                }
            }
        }
    });
    client
        .batch_execute(&format!("listen {TENANT_WORK_CHANNEL}"))
        .await
        .map_err(|e| e.to_string())?;
    tracing::info!("listening for cross-process tenant work");
    let result = loop {
        tokio::select! {
            _ = shutdown.cancelled() => break Ok(()),
            msg = rx.recv() => match msg {
                Some(Ok(payload)) => match TenantId::parse(&payload) {
                    Ok(tenant) => wake(tenant),
                    Err(_) => tracing::warn!("ignoring a tenant work notification with an invalid tenant id"),
                },
                Some(Err(e)) => break Err(e),
                None => break Err("listener stopped".into()),
            }
        }
    };
    drop(client);
    driver.abort();
    result
}
