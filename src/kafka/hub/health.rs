//! [`GroupHealth`]: what the hub knows about its consumer group (subscription, assignment,
//! librdkafka's group and join state, lag per tenant, a wedged finding), for `/readyz`,
//! metrics and the watchdog.

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;

use crate::actors::metric_names as m;
use crate::actors::TenantId;

/// What the hub knows about its consumer group: for `/readyz`, metrics and the watchdog.
#[derive(Default)]
pub struct GroupHealth {
    pub(super) state: Mutex<GroupState>,
}

#[derive(Default)]
pub(super) struct GroupState {
    pub(super) subscribed: usize,
    /// The tenants whose partitions the group assigned to this consumer (incremental
    /// assignments add to it, revocations take from it).
    pub(super) owned: BTreeSet<TenantId>,
    /// librdkafka's view (`cgrp.state`, `cgrp.join_state`), from the last statistics.
    pub(super) group_state: String,
    pub(super) join_state: String,
    /// Since when the consumer, subscribed, has not been in a steady assignment.
    pub(super) unsettled_since: Option<std::time::Instant>,
    /// Consumer lag per tenant partition, from the last statistics.
    pub(super) lag: HashMap<TenantId, i64>,
    pub(super) wedged: Option<(&'static str, std::time::Instant)>,
    /// The tenants this consumer subscribed to.
    pub(super) subscription: BTreeSet<TenantId>,
    /// Since when the group has assigned topics outside the subscription (a broker that
    /// hands a static member an assignment of another group or an earlier subscription).
    pub(super) foreign_since: Option<std::time::Instant>,
    pub(super) recreations: u64,
    pub(super) static_membership: bool,
}

impl GroupHealth {
    pub(super) fn with<R>(&self, f: impl FnOnce(&mut GroupState) -> R) -> R {
        f(&mut self.state.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// The group's health as JSON (the `/readyz` body).
    pub fn snapshot(&self) -> serde_json::Value {
        self.with(|s| {
            serde_json::json!({
                "subscribed_tenants": s.subscribed,
                "assigned_tenants": s.owned.len(),
                // Which tenants this instance owns (the first 1,000 by id).
                "owned": s.owned.iter().take(1000).map(TenantId::as_str).collect::<Vec<_>>(),
                "state": s.group_state,
                "join_state": s.join_state,
                "unsettled_for_ms": s.unsettled_since.map(|t| t.elapsed().as_millis() as u64),
                "wedged": s.wedged.map(|(reason, since)| serde_json::json!({
                    "reason": reason, "for_ms": since.elapsed().as_millis() as u64})),
                "consumer_recreations": s.recreations,
                "static_membership": s.static_membership,
            })
        })
    }

    /// True when this consumer owns the tenant's partition now.
    pub fn owns(&self, tenant: &TenantId) -> bool {
        self.with(|s| s.owned.contains(tenant))
    }

    /// The tenants this consumer owns, with their broker lag when the last statistics had it.
    pub fn owned_with_lag(&self) -> Vec<(TenantId, Option<i64>)> {
        self.with(|s| {
            s.owned
                .iter()
                .map(|t| (t.clone(), s.lag.get(t).copied()))
                .collect()
        })
    }

    /// A number that changes when the set of tenants owned here changes.
    pub fn owned_fingerprint(&self) -> u64 {
        use std::hash::{Hash, Hasher};
        self.with(|s| {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            s.owned.hash(&mut h);
            h.finish()
        })
    }

    pub(super) fn observe_stats(&self, cgrp: Option<&rdkafka::statistics::ConsumerGroup>) {
        self.with(|s| {
            metrics::gauge!(m::KAFKA_SUBSCRIBED_TENANTS).set(s.subscribed as f64);
            metrics::gauge!(m::KAFKA_ASSIGNED_TENANTS).set(s.owned.len() as f64);
        });
        let Some(cgrp) = cgrp else { return };
        self.with(|s| {
            s.group_state = cgrp.state.clone();
            s.join_state = cgrp.join_state.clone();
            let steady = cgrp.join_state == "steady" && cgrp.state == "up";
            if steady || s.subscribed == 0 {
                s.unsettled_since = None;
            } else if s.unsettled_since.is_none() {
                s.unsettled_since = Some(std::time::Instant::now());
            }
        });
    }
}
