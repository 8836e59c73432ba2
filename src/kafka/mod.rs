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
pub use hub::{GroupHealth, HubError, KafkaHub};
pub use producer::KafkaPublisher;

use rdkafka::ClientConfig;

use crate::config::KafkaConfig;

/// Settings shared by every Kafka client: the service's, the developer tools' and the
/// benchmark's (one place for brokers and, later, security settings).
pub fn base_client_config(cfg: &KafkaConfig) -> ClientConfig {
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
