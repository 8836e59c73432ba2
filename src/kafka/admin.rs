//! Creates a tenant's topics, and the shared topics, through the Kafka admin API.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::RDKafkaErrorCode;

use super::base_client_config;
use super::layout::shared_topic;
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
    let (admin, names) = admin_for(cfg, tenant)?;
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let results = admin
        .delete_topics(&refs, &options())
        .await
        .map_err(|e| AdminError::Client(e.to_string()))?;
    check(results, RDKafkaErrorCode::UnknownTopicOrPartition)?;
    Ok(names)
}

/// Creates `tenant.<id>.scim`, `.user_changed`, `.events` and `.scim.dlq`. Topics that
/// already exist are fine (the call is idempotent); returns the topic names.
pub async fn create_tenant_topics(
    cfg: &KafkaConfig,
    tenant: &TenantId,
) -> Result<Vec<String>, AdminError> {
    create_topics_for(cfg, std::slice::from_ref(tenant)).await?;
    Ok(TopicKind::ALL
        .iter()
        .map(|k| tenant.topic(&cfg.topic_prefix, *k))
        .collect())
}

/// Creates the four topics of each of `tenants` through one admin client, in requests of
/// at most `TOPICS_PER_REQUEST` topics (registering thousands of tenants: one connection,
/// a few dozen round trips). Topics that already exist are fine. Returns how many topics.
pub async fn create_topics_for(
    cfg: &KafkaConfig,
    tenants: &[TenantId],
) -> Result<usize, AdminError> {
    let names: Vec<(String, i32)> = tenants
        .iter()
        .flat_map(|t| {
            TopicKind::ALL
                .iter()
                .map(|k| (t.topic(&cfg.topic_prefix, *k), cfg.topic_partitions))
        })
        .collect();
    create_named(cfg, &names).await?;
    Ok(names.len())
}

/// Creates the four shared topics (`<prefix>shared.scim`, ...) with
/// `kafka.shared_topic_partitions` partitions each. Idempotent; returns their names.
pub async fn create_shared_topics(cfg: &KafkaConfig) -> Result<Vec<String>, AdminError> {
    let names: Vec<(String, i32)> = TopicKind::ALL
        .iter()
        .map(|k| {
            (
                shared_topic(&cfg.topic_prefix, *k),
                cfg.shared_topic_partitions,
            )
        })
        .collect();
    create_named(cfg, &names).await?;
    Ok(names.into_iter().map(|(n, _)| n).collect())
}

/// Creates `(name, partitions)` topics through one admin client, in batches.
async fn create_named(cfg: &KafkaConfig, names: &[(String, i32)]) -> Result<(), AdminError> {
    const TOPICS_PER_REQUEST: usize = 200;
    let admin: AdminClient<DefaultClientContext> = base_client_config(cfg)
        .create()
        .map_err(|e| AdminError::Client(e.to_string()))?;
    for chunk in names.chunks(TOPICS_PER_REQUEST) {
        let topics: Vec<NewTopic<'_>> = chunk
            .iter()
            .map(|(n, partitions)| {
                NewTopic::new(
                    n,
                    *partitions,
                    TopicReplication::Fixed(cfg.replication_factor),
                )
            })
            .collect();
        let results = admin
            .create_topics(&topics, &options())
            .await
            .map_err(|e| AdminError::Client(e.to_string()))?;
        check(results, RDKafkaErrorCode::TopicAlreadyExists)?;
    }
    Ok(())
}

/// An admin client with the service's settings, and the tenant's four topic names.
fn admin_for(
    cfg: &KafkaConfig,
    tenant: &TenantId,
) -> Result<(AdminClient<DefaultClientContext>, Vec<String>), AdminError> {
    let admin = base_client_config(cfg)
        .create()
        .map_err(|e| AdminError::Client(e.to_string()))?;
    let names = TopicKind::ALL
        .iter()
        .map(|k| tenant.topic(&cfg.topic_prefix, *k))
        .collect();
    Ok((admin, names))
}

fn options() -> AdminOptions {
    AdminOptions::new().operation_timeout(Some(Duration::from_secs(15)))
}

/// The first per-topic failure other than `fine` (the idempotent outcome).
fn check(
    results: Vec<Result<String, (String, RDKafkaErrorCode)>>,
    fine: RDKafkaErrorCode,
) -> Result<(), AdminError> {
    for r in results {
        if let Err((topic, code)) = r {
            if code != fine {
                return Err(AdminError::Topic {
                    topic,
                    code: code.to_string(),
                });
            }
        }
    }
    Ok(())
}
