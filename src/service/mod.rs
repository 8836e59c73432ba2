//! `enablement serve [--role all|consumer|aggregator|api]`: wiring and graceful shutdown.
//!
//! One cancellation root: SIGTERM or SIGINT cancels it; the HTTP server stops accepting,
//! the supervisor drains every tenant actor (fetching stops, batches in flight commit,
//! outboxes flush, offsets are stored), the stored offsets are committed, and the process
//! exits 0, all within `shutdown.grace_period_ms`.
//!
//! Before anything starts, [`preflight`] connects to every backend with the configured TLS
//! and credentials and refuses (exit 2, naming the setting) what configuration got wrong.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

mod preflight;

use crate::actors::{Supervisor, TenantDeps, Tenants, TenantsRuntime};
use crate::cache::RedisCache;
use crate::config::{Config, Role};
use crate::db::{connect_pool, listen_tenant_work, Registry, TenantScopedStore};
use crate::http::{internal_router, router, AppState, KnownTenants, Listener};
use crate::kafka::{KafkaHub, KafkaPublisher};
use crate::readiness::Aggregator;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("{0}")]
    Startup(String),
    /// The configuration is unsafe or does not fit the backends (exit code 2).
    #[error("refusing to start: {0}")]
    Refused(String),
    #[error("shutdown did not complete within the grace period")]
    GraceExceeded,
}

fn startup(e: impl std::fmt::Display) -> ServeError {
    ServeError::Startup(e.to_string())
}

/// The consumer side of a process: supervisor, tenant actors and the Kafka hub.
struct ConsumerParts {
    tenants: Tenants,
    runtime: TenantsRuntime,
    hub: Arc<KafkaHub>,
    hub_task: tokio::task::JoinHandle<()>,
}

pub async fn serve(config: Config, role: Role) -> Result<(), ServeError> {
    let config = Arc::new(config);
    config
        .check_serve_safety()
        .map_err(|e| ServeError::Refused(e.to_string()))?;
    let metrics = crate::telemetry::init_metrics(&config.metrics.untenanted).map_err(startup)?;
    let pool = connect_pool(&config.postgres)
        .await
        .map_err(|e| match e.is_configuration() {
            true => ServeError::Refused(e.to_string()),
            false => startup(e),
        })?;
    let registry = Registry::new(pool.clone());
    let sealer = crate::sealing::SecretSealer::shared(config.secrets.keys.expose())
        .map_err(|e| ServeError::Refused(e.to_string()))?;
    let store = TenantScopedStore::new(pool.clone(), sealer);
    let cache = Arc::new(RedisCache::new(&config.redis).map_err(startup)?);
    preflight::backends(&config, &cache).await?;
    let publisher = KafkaPublisher::new(&config.kafka).map_err(startup)?;
    let aggregator = Aggregator::new(store.clone(), config.aggregator_settings());
    let shutdown = CancellationToken::new();

    let consumer = if role.consumes() {
        Some(start_consumer(&config, &store, &cache, &publisher, &registry, &shutdown).await?)
    } else {
        None
    };
    // Retention runs beside the pipeline (any instance may; deletes are small and scoped).
    if role.consumes() {
        tokio::spawn(crate::retention::run(
            store.clone(),
            registry.clone(),
            config.retention_settings(),
            shutdown.child_token(),
        ));
    }
    let aggregator_task = role.aggregates().then(|| {
        tokio::spawn(crate::readiness::worker::run(
            aggregator.clone(),
            shutdown.child_token(),
        ))
    });

    let listener = bind(config.http.listen).await?;
    let internal_listener = match config.http.internal_listen.as_str() {
        "" => None,
        addr => Some(bind(addr.parse().map_err(startup)?).await?),
    };
    tracing::info!(listen = %config.http.listen, internal = %config.http.internal_listen, role = role.as_str(), "serving");
    let scim_writers = crate::scim::writer::TenantWriters::new(store.clone());
    let state = AppState {
        config: config.clone(),
        role,
        pool: pool.clone(),
        registry,
        cache,
        store,
        publisher: publisher.clone(),
        tenants: consumer.as_ref().map(|c| c.tenants.clone()),
        group: consumer.as_ref().map(|c| c.hub.health()),
        aggregator,
        metrics: Some(metrics),
        known: Arc::new(KnownTenants::default()),
        internal: false,
        scim_tokens: crate::http::scim_token_cache(),
        scim_writers,
    };
    let header_read_timeout = Duration::from_millis(config.http.header_read_timeout_ms);
    if let Some(listener) = internal_listener {
        let internal = Listener {
            listener,
            app: internal_router(state.clone()),
            header_read_timeout,
        };
        tokio::spawn(internal.run(shutdown.child_token()));
    }
    let public = Listener {
        listener,
        app: router(state),
        header_read_timeout,
    };
    let http_task = tokio::spawn(public.run(shutdown.child_token()));

    crate::signal::shutdown_signal().await;
    tracing::info!("shutdown requested; draining");
    shutdown.cancel();
    let grace = Duration::from_millis(config.shutdown.grace_period_ms);
    let drained = tokio::time::timeout(grace, async {
        if let Some(c) = consumer {
            let _ = c.tenants.shutdown(grace).await;
            let _ = c.hub_task.await;
            if let Err(e) = c.hub.commit_now() {
                tracing::warn!(error = %e, "final offset commit failed");
            }
            publisher.flush(Duration::from_secs(5));
            c.runtime.stop().await;
        }
        if let Some(task) = aggregator_task {
            let _ = task.await;
        }
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

async fn bind(addr: std::net::SocketAddr) -> Result<tokio::net::TcpListener, ServeError> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| ServeError::Startup(format!("cannot listen on {addr}: {e}")))
}

async fn start_consumer(
    config: &Arc<Config>,
    store: &TenantScopedStore,
    cache: &Arc<RedisCache>,
    publisher: &KafkaPublisher,
    registry: &Registry,
    shutdown: &CancellationToken,
) -> Result<ConsumerParts, ServeError> {
    let supervisor_settings = config.supervisor_settings();
    // The handle first: the hub reports assignments to it, the supervisor reads the hub.
    let (tenants, inbox) = Tenants::channel();
    let hub = KafkaHub::new(
        &config.kafka,
        &config.group_instance_id(),
        supervisor_settings.drain_timeout,
        Arc::new(tenants.clone()),
        publisher,
    )
    .map_err(startup)?;
    let upstream =
        crate::upstream::MindTickleClient::new(&config.mindtickle, Arc::new(store.clone()))
            .map_err(ServeError::Refused)?;
    upstream.preflight().await.map_err(ServeError::Refused)?;
    let deps = TenantDeps {
        upstream: Arc::new(upstream),
        limits: config.limiter_settings(),
        store: Arc::new(store.clone()),
        cache: cache.clone(),
        publisher: Arc::new(publisher.clone()),
        feeds: hub.clone(),
    };
    let runtime = inbox
        .start(Supervisor {
            deps,
            pipeline: config.pipeline_settings(),
            settings: supervisor_settings,
        })
        .await
        .map_err(startup)?;
    let hub_task = tokio::spawn(hub.clone().run(registry.clone(), shutdown.child_token()));
    // Who runs which tenant, and the outbox and queue gauges of the tenants owned here.
    tokio::spawn(crate::operations::run_reporter(
        registry.pool().clone(),
        config.group_instance_id(),
        tenants.clone(),
        hub.health(),
        shutdown.child_token(),
    ));
    // Work written for a tenant by another process (aggregator, API) wakes its actor.
    let wake = tenants.clone();
    tokio::spawn(listen_tenant_work(
        config.postgres.clone(),
        move |tenant| wake.wake(&tenant),
        shutdown.child_token(),
    ));
    Ok(ConsumerParts {
        tenants,
        runtime,
        hub,
        hub_task,
    })
}
