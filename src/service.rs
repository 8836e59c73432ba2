//! `enablement serve`: wiring and graceful shutdown.
//!
//! One cancellation root: SIGTERM or SIGINT cancels it; the HTTP server stops accepting,
//! the supervisor drains every tenant actor (fetching stops, batches in flight commit,
//! outboxes flush, offsets are stored), the stored offsets are committed, and the process
//! exits 0, all within `shutdown.grace_period_ms`.

use std::sync::Arc;
use std::time::Duration;

use ractor::Actor;
use tokio_util::sync::CancellationToken;

use crate::actors::{Supervisor, SupervisorMsg, TenantDeps};
use crate::cache::RedisCache;
use crate::config::Config;
use crate::db::{connect_pool, Registry, TenantScopedStore};
use crate::http::{router, AppState};
use crate::kafka::{KafkaHub, KafkaPublisher};

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("{0}")]
    Startup(String),
    #[error("shutdown did not complete within the grace period")]
    GraceExceeded,
}

fn startup(e: impl std::fmt::Display) -> ServeError {
    ServeError::Startup(e.to_string())
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = term => {},
        _ = tokio::signal::ctrl_c() => {},
    }
}

pub async fn serve(config: Config) -> Result<(), ServeError> {
    let config = Arc::new(config);
    let metrics = crate::telemetry::init_metrics().map_err(startup)?;
    let pool = connect_pool(&config.postgres).await.map_err(startup)?;
    let registry = Registry::new(pool.clone());
    let store = TenantScopedStore::new(pool.clone());
    let http_store = store.clone();
    let cache = Arc::new(RedisCache::new(&config.redis).map_err(startup)?);
    let publisher = KafkaPublisher::new(&config.kafka).map_err(startup)?;
    let supervisor_settings = config.supervisor_settings();
    let hub = KafkaHub::new(
        &config.kafka,
        &config.group_instance_id(),
        supervisor_settings.drain_timeout,
    )
    .map_err(startup)?;

    let upstream = crate::upstream::MindTickleClient::new(&config.mindtickle, store.clone())
        .map_err(startup)?;
    let deps = TenantDeps {
        upstream: Arc::new(upstream),
        limits: config.limiter_settings(),
        store: Arc::new(store),
        cache: cache.clone(),
        publisher: Arc::new(publisher.clone()),
        feeds: hub.clone(),
    };
    let (supervisor, supervisor_join) = Actor::spawn(
        None,
        Supervisor {
            deps,
            pipeline: config.pipeline_settings(),
            settings: supervisor_settings,
        },
        (),
    )
    .await
    .map_err(startup)?;
    hub.attach_supervisor(supervisor.clone());

    let shutdown = CancellationToken::new();
    let hub_task = tokio::spawn(hub.clone().run(
        registry.clone(),
        supervisor.clone(),
        shutdown.child_token(),
    ));

    let listener = tokio::net::TcpListener::bind(config.http.listen)
        .await
        .map_err(|e| {
            ServeError::Startup(format!("cannot listen on {}: {e}", config.http.listen))
        })?;
    tracing::info!(listen = %config.http.listen, "serving");
    let app = router(AppState {
        config: config.clone(),
        pool: pool.clone(),
        registry,
        cache,
        store: http_store,
        publisher: publisher.clone(),
        supervisor: Some(supervisor.clone()),
        metrics: Some(metrics),
    });
    let http_stop = shutdown.child_token();
    let http_task = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move { http_stop.cancelled().await })
            .await
    });

    shutdown_signal().await;
    tracing::info!("shutdown requested; draining");
    shutdown.cancel();
    let grace = Duration::from_millis(config.shutdown.grace_period_ms);
    let drained = tokio::time::timeout(grace, async {
        let _ = supervisor.call(SupervisorMsg::Shutdown, Some(grace)).await;
        let _ = hub_task.await;
        if let Err(e) = hub.commit_now() {
            tracing::warn!(error = %e, "final offset commit failed");
        }
        publisher.flush(Duration::from_secs(5));
        supervisor.stop(None);
        let _ = supervisor_join.await;
        let _ = http_task.await;
    })
    .await;
    match drained {
        Ok(()) => {
            tracing::info!("shutdown complete");
            Ok(())
        }
        Err(_) => Err(ServeError::GraceExceeded),
    }
}
