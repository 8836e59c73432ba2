//! The start-up check of the backends a `serve` process needs beyond PostgreSQL (whose
//! pool is opened, and its role checked, by `db::connect_pool`): Redis and Kafka, each
//! through its own classification of what went wrong.
//!
//! A configuration error refuses the start with the setting to fix. An unreachable backend
//! does not: Redis is only a cache, and the service waits out a broker that is down.

use std::time::Duration;

use super::ServeError;
use crate::cache::{CacheStartError, RedisCache};
use crate::config::Config;
use crate::kafka::KafkaStartError;

/// How long the Kafka check waits for a broker before starting without one.
const KAFKA_PREFLIGHT: Duration = Duration::from_secs(5);

pub(super) async fn backends(config: &Config, cache: &RedisCache) -> Result<(), ServeError> {
    match cache.preflight().await {
        Ok(()) => {}
        Err(e @ CacheStartError::Refused { .. }) => return Err(ServeError::Refused(e.to_string())),
        Err(e) => tracing::warn!(error = %e, "starting without the cache"),
    }
    let kafka = config.kafka.clone();
    let checked =
        tokio::task::spawn_blocking(move || crate::kafka::preflight(&kafka, KAFKA_PREFLIGHT))
            .await
            .map_err(|e| ServeError::Startup(format!("kafka preflight: {e}")))?;
    match checked {
        Ok(()) => Ok(()),
        Err(e @ KafkaStartError::Refused { .. }) => Err(ServeError::Refused(e.to_string())),
        Err(e) => {
            tracing::warn!(error = %e, "starting before the broker answers; it is retried");
            Ok(())
        }
    }
}
