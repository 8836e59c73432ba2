//! Kafka: topic administration, the producer, the shared group consumer and dev tools.
//!
//! The service speaks only the Kafka protocol through rdkafka (librdkafka bundled), so it
//! runs against Apache Kafka, Redpanda, MSK, Confluent or the development broker alike.

mod admin;
mod devtools;
mod hub;
mod producer;

pub use admin::{create_tenant_topics, AdminError};
pub use devtools::{push_events, tail_topic, TailOptions};
pub use hub::{HubError, KafkaHub};
pub use producer::KafkaPublisher;

use rdkafka::ClientConfig;

use crate::config::KafkaConfig;

/// Settings shared by every client of the service.
pub(crate) fn base_client_config(cfg: &KafkaConfig) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &cfg.brokers)
        .set("client.id", "enablement")
        .set("log_level", "4")
        .set("socket.keepalive.enable", "true");
    if !cfg.librdkafka_debug.is_empty() {
        c.set("debug", &cfg.librdkafka_debug);
    }
    c
}

/// Probes the broker with a metadata request (for `/readyz`).
pub async fn broker_reachable(cfg: &KafkaConfig) -> Result<(), String> {
    let cfg = cfg.clone();
    tokio::task::spawn_blocking(move || {
        let consumer: rdkafka::consumer::BaseConsumer = base_client_config(&cfg)
            .create()
            .map_err(|e| e.to_string())?;
        use rdkafka::consumer::Consumer;
        consumer
            .fetch_metadata(None, std::time::Duration::from_secs(3))
            .map(|_| ())
            .map_err(|e| e.to_string())
    })
    .await
    .map_err(|e| e.to_string())?
}
