//! [`TopicLayout`]: where a tenant's records live.
//!
//! A tenant has its own four topics (`<prefix>tenant.<id>.scim`, `.user_changed`,
//! `.events`, `.scim.dlq`), or, registered with shared topics, its records live on the four
//! shared topics `<prefix>shared.scim`, ... keyed by tenant id: every record of the tenant
//! on the partition Kafka's default partitioner gives its id
//! ([`TenantId::shared_partition`]), with a `tenant` header on the outputs. Shared topics
//! are for many small tenants: a broker holds four topics in all instead of four per
//! tenant, and a consumer holds a few partitions instead of one per tenant. The pipeline
//! behind is the same; the price is that the tenants of one shared partition share its
//! throughput (see the README).
//!
//! Every Kafka client of the service (publisher, hub, `events push/tail`) asks this one
//! place. Which tenants are shared is read from the registry (`tenants.topics`, fixed at
//! registration) by the hub's refresh, before any of their actors can run.

use std::collections::HashSet;
use std::sync::RwLock;

use crate::actors::{TenantId, TopicKind};
use crate::config::KafkaConfig;

/// The header naming the tenant of a record on a shared output topic.
pub const TENANT_HEADER: &str = "tenant";

/// Where one of a tenant's records goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    pub topic: String,
    pub partition: i32,
    /// On a shared topic: keyed by the tenant id, with a `tenant` header.
    pub shared: bool,
}

/// The name of a shared topic: `<prefix>shared.<suffix>`.
pub fn shared_topic(prefix: &str, kind: TopicKind) -> String {
    format!("{prefix}shared.{}", kind.suffix())
}

pub struct TopicLayout {
    prefix: String,
    shared_partitions: i32,
    shared: RwLock<HashSet<TenantId>>,
}

impl TopicLayout {
    pub fn new(cfg: &KafkaConfig) -> Self {
        Self {
            prefix: cfg.topic_prefix.clone(),
            shared_partitions: cfg.shared_topic_partitions.max(1),
            shared: RwLock::new(HashSet::new()),
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn shared_partitions(&self) -> i32 {
        self.shared_partitions
    }

    /// Replaces the set of tenants on the shared topics.
    pub fn set_shared(&self, tenants: impl IntoIterator<Item = TenantId>) {
        let set: HashSet<TenantId> = tenants.into_iter().collect();
        *self.shared.write().unwrap_or_else(|p| p.into_inner()) = set;
    }

    /// Adds one tenant to the shared set (a registration in this process).
    pub fn add_shared(&self, tenant: TenantId) {
        self.shared
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(tenant);
    }

    pub fn is_shared(&self, tenant: &TenantId) -> bool {
        self.shared
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains(tenant)
    }

    /// The topic and partition of one of the tenant's records of `kind`.
    pub fn place(&self, tenant: &TenantId, kind: TopicKind) -> Placement {
        if self.is_shared(tenant) {
            Placement {
                topic: shared_topic(&self.prefix, kind),
                partition: tenant.shared_partition(self.shared_partitions),
                shared: true,
            }
        } else {
            Placement {
                topic: tenant.topic(&self.prefix, kind),
                partition: 0,
                shared: false,
            }
        }
    }

    /// Whether `topic` is the shared inbound topic.
    pub fn is_shared_inbound(&self, topic: &str) -> bool {
        topic == shared_topic(&self.prefix, TopicKind::Scim)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_tenants_go_to_the_shared_topics_on_their_partition() {
        let cfg = KafkaConfig {
            topic_prefix: "p.".into(),
            shared_topic_partitions: 8,
            ..KafkaConfig::default()
        };
        let layout = TopicLayout::new(&cfg);
        let small = TenantId::parse("small").unwrap();
        let big = TenantId::parse("big").unwrap();
        layout.set_shared([small.clone()]);
        let p = layout.place(&small, TopicKind::Dlq);
        assert_eq!(p.topic, "p.shared.scim.dlq");
        assert_eq!(p.partition, small.shared_partition(8));
        assert!(p.shared);
        assert_eq!(
            layout.place(&big, TopicKind::Scim),
            Placement {
                topic: "p.tenant.big.scim".into(),
                partition: 0,
                shared: false
            }
        );
        assert!(layout.is_shared_inbound("p.shared.scim"));
        assert!(!layout.is_shared_inbound("p.tenant.shared.scim"));
    }
}
