//! Creates a tenant's topics through the Kafka admin API.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::RDKafkaErrorCode;

use super::base_client_config;
use crate::actors::{TenantId, TopicKind};
use crate::config::KafkaConfig;

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("kafka admin client: {0}")]
    Client(String),
    #[error("creating topic {topic} failed: {code}")]
    Topic { topic: String, code: String },
}

/// Deletes the tenant's four topics (erasure). Topics already gone are fine.
pub async fn delete_tenant_topics(
    cfg: &KafkaConfig,
    tenant: &TenantId,
) -> Result<Vec<String>, AdminError> {
    let admin: AdminClient<DefaultClientContext> = base_client_config(cfg)
        .create()
        .map_err(|e| AdminError::Client(e.to_string()))?;
    let names: Vec<String> = TopicKind::ALL
        .iter()
        .map(|k| tenant.topic(&cfg.topic_prefix, *k))
        .collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(15)));
    let results = admin
        .delete_topics(&refs, &opts)
        .await
        .map_err(|e| AdminError::Client(e.to_string()))?;
    for r in results {
        if let Err((topic, code)) = r {
            if code != RDKafkaErrorCode::UnknownTopicOrPartition {
                return Err(AdminError::Topic {
                    topic,
                    code: code.to_string(),
                });
            }
        }
    }
    Ok(names)
}

/// Creates `tenant.<id>.scim`, `.user_changed`, `.events` and `.scim.dlq`. Topics that
/// already exist are fine (the call is idempotent); returns the topic names.
pub async fn create_tenant_topics(
    cfg: &KafkaConfig,
    tenant: &TenantId,
) -> Result<Vec<String>, AdminError> {
    let admin: AdminClient<DefaultClientContext> = base_client_config(cfg)
        .create()
        .map_err(|e| AdminError::Client(e.to_string()))?;
    let names: Vec<String> = TopicKind::ALL
        .iter()
        .map(|k| tenant.topic(&cfg.topic_prefix, *k))
        .collect();
    let topics: Vec<NewTopic<'_>> = names
        .iter()
        .map(|n| {
            NewTopic::new(
                n,
                cfg.topic_partitions,
                TopicReplication::Fixed(cfg.replication_factor),
            )
        })
        .collect();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(15)));
    let results = admin
        .create_topics(&topics, &opts)
        .await
        .map_err(|e| AdminError::Client(e.to_string()))?;
    for r in results {
        if let Err((topic, code)) = r {
            if code != RDKafkaErrorCode::TopicAlreadyExists {
                return Err(AdminError::Topic {
                    topic,
                    code: code.to_string(),
                });
            }
        }
    }
    Ok(names)
}
