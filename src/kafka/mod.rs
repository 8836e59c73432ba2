//! Kafka: topic administration, the producer, the shared group consumer and dev tools.
//!
//! The service speaks only the Kafka protocol through rdkafka (librdkafka bundled), so it
//! runs against Apache Kafka, Redpanda, MSK, Confluent or the development broker alike.

mod admin;
mod devtools;
mod hub;
mod layout;
mod preflight;
mod producer;

pub use admin::{
    create_shared_topics, create_tenant_topics, create_topics_for, delete_tenant_topics, AdminError,
};
pub use devtools::{each_record, push_events, tail_topic, ReadOptions, TailOptions};
pub use hub::{GroupHealth, HubError, KafkaHub};
pub use layout::{shared_topic, Placement, TopicLayout, TENANT_HEADER};
pub use preflight::{preflight, KafkaStartError};
pub use producer::KafkaPublisher;
pub use rdkafka::Offset;

use rdkafka::ClientConfig;

use crate::config::KafkaConfig;

/// Settings shared by every Kafka client: the service's consumer, producers and admin
/// client, the developer tools (`events push/tail`) and the benchmark: brokers, TLS
/// (`ssl.*`) and SASL. Secrets go to librdkafka only; they are never logged.
pub fn base_client_config(cfg: &KafkaConfig) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &cfg.brokers)
        .set("client.id", "enablement")
        .set("log_level", "4")
        .set("socket.keepalive.enable", "true")
        .set(
            "security.protocol",
            cfg.security_protocol.to_ascii_lowercase(),
        );
    let optional = [
        ("ssl.ca.location", cfg.ssl_ca_file.as_str()),
        ("ssl.certificate.location", cfg.ssl_cert_file.as_str()),
        ("ssl.key.location", cfg.ssl_key_file.as_str()),
        ("ssl.key.password", cfg.ssl_key_password.expose()),
        ("sasl.mechanisms", cfg.sasl_mechanism.as_str()),
        ("sasl.username", cfg.sasl_username.as_str()),
        ("sasl.password", cfg.sasl_password.expose()),
    ];
    for (key, value) in optional {
        if !value.is_empty() {
            c.set(key, value);
        }
    }
    if cfg.security_protocol.ends_with("SSL") {
        // Host name checked against the certificate, as every HTTPS client does.
        c.set("ssl.endpoint.identification.algorithm", "https");
    }
    if !cfg.librdkafka_debug.is_empty() {
        c.set("debug", &cfg.librdkafka_debug);
    }
    c
}
