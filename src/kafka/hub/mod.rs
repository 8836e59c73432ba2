//! [`KafkaHub`]: one group consumer per process, one split partition queue per tenant.
//!
//! - Before a tenant's topic is subscribed its partition queue is split off the main queue,
//!   so its records flow only to that tenant's actor, pulled at the actor's own pace.
//!   A record that still arrives on the main queue is routed to its tenant's feed.
//! - The subscription is the explicit list of active tenants' inbound topics, re-read from
//!   the registry every `tenant_refresh_ms`: a new tenant is picked up without restart, a
//!   suspended one is revoked (and a stray topic matching the naming scheme is never read).
//! - Assignments go to the [`AssignmentSink`] given at construction (the tenants of the
//!   process): assignment starts actors; revocation drains them (batch in flight committed, offsets
//!   stored) and commits synchronously before the partitions are released.
//! - With `kafka.assignment_strategy = "cooperative-sticky"` (the default) assignments and
//!   revocations are incremental: they name only the partitions that change owner, so an
//!   instance joining or leaving the group, or a tenant added or suspended, drains and
//!   starts only the tenants that move; the others keep flowing.
//! - Offsets are stored by the actors only after their transaction committed and are
//!   committed by librdkafka's auto-commit (`enable.auto.offset.store=false`).
//! - A watchdog ([`GroupHealth`]) reads the group state from librdkafka's statistics. When
//!   the consumer is subscribed but never settles into a steady assignment, or a tenant's
//!   feed waits while its partition has lag, for `group_wedged_after_sessions` session
//!   timeouts, the group or the broker is wedged (a broker can keep an evicted static member
//!   as leader and answer "rebalance in progress" forever): the hub drains its tenants and
//!   re-creates the consumer as a fresh dynamic member. The old consumer's callbacks are
//!   disarmed first, so its late revocations never touch the new consumer's actors.
//! - Tenants registered with shared topics live on the partitions of `<prefix>shared.scim`,
//!   keyed by tenant id: an assigned shared partition runs the tenants whose ids hash to
//!   it, fed by a demultiplexer behind the same feed port (see [`shared`]).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

mod feed;
mod health;
mod shared;

use super::base_client_config;
use crate::actors::events::{ConsumerGroupWedged, FeedReceiveFailed, InternalEvent};
use crate::actors::metric_names as m;
use crate::actors::ports::AssignmentSink;
use crate::actors::{TenantId, TopicKind};
use crate::config::KafkaConfig;
use crate::db::Registry;
use crate::kafka::layout::{shared_topic, TopicLayout};
use crate::kafka::KafkaPublisher;
use feed::{to_record, TenantQueue};
pub use health::GroupHealth;
use shared::{SharedPartition, SharedSplit, SharedTenantQueue};

#[derive(Debug, thiserror::Error)]
pub enum HubError {
    #[error("kafka consumer: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
}

enum HubEvent {
    /// Partitions assigned to the consumer of this generation: tenants' own, and shared
    /// partitions by number.
    Assigned(u64, Vec<TenantId>, Vec<i32>),
}

/// The shared partitions of a consumer: split queues (kept across assignments), assigned
/// partitions and the queues of their tenants. Held by the hub and its rebalance hooks.
#[derive(Default)]
pub(super) struct SharedBook {
    splits: Mutex<HashMap<i32, Arc<SharedSplit>>>,
    parts: Mutex<HashMap<i32, Arc<SharedPartition>>>,
    queues: Mutex<HashMap<TenantId, Arc<SharedTenantQueue>>>,
}

impl SharedBook {
    fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
        m.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The tenants of these shared partitions.
    fn tenants_on(&self, partitions: &BTreeSet<i32>) -> Vec<TenantId> {
        Self::lock(&self.queues)
            .iter()
            .filter(|(_, q)| partitions.contains(&q.partition.partition))
            .map(|(t, _)| t.clone())
            .collect()
    }

    /// Stops these partitions' demultiplexers and forgets them and their tenants' queues.
    fn release(&self, partitions: &BTreeSet<i32>) {
        let mut parts = Self::lock(&self.parts);
        for p in partitions {
            if let Some(part) = parts.remove(p) {
                part.stop.cancel();
            }
        }
        Self::lock(&self.queues).retain(|_, q| !partitions.contains(&q.partition.partition));
    }

    fn release_all(&self) {
        let all: BTreeSet<i32> = Self::lock(&self.parts).keys().copied().collect();
        self.release(&all);
        Self::lock(&self.queues).clear();
    }
}

/// Rebalance hooks. They run on the thread polling the main queue.
pub struct HubContext {
    prefix: String,
    events: mpsc::UnboundedSender<HubEvent>,
    /// Where assignments go (the tenants of this process).
    sink: Arc<dyn AssignmentSink>,
    /// How long a revocation may wait for the tenants to drain.
    revoke_timeout: Duration,
    /// Which consumer this is (the hub re-creates a wedged one).
    generation: u64,
    /// Cleared when the hub replaces this consumer: its callbacks then do nothing.
    armed: AtomicBool,
    health: Arc<GroupHealth>,
    shared: Arc<SharedBook>,
    shared_inbound: String,
}

impl HubContext {
    /// The shared inbound partitions in `tpl`.
    fn shared_of(&self, tpl: &TopicPartitionList) -> BTreeSet<i32> {
        tpl.elements()
            .iter()
            .filter(|e| e.topic() == self.shared_inbound)
            .map(|e| e.partition())
            .collect()
    }

    fn tenants_of(&self, tpl: &TopicPartitionList) -> Vec<TenantId> {
        let set: BTreeSet<TenantId> = tpl
            .elements()
            .iter()
            .filter_map(|e| TenantId::from_scim_topic(&self.prefix, e.topic()))
            .collect();
        set.into_iter().collect()
    }
}

impl ClientContext for HubContext {
    /// Broker-side lag per tenant partition and the group state, from librdkafka's
    /// periodic statistics.
    fn stats(&self, statistics: rdkafka::Statistics) {
        if !self.armed.load(Ordering::SeqCst) {
            return;
        }
        self.health.observe_stats(statistics.cgrp.as_ref());
        for (name, topic) in &statistics.topics {
            let Some(tenant) = TenantId::from_scim_topic(&self.prefix, name) else {
                continue;
            };
            if let Some(p) = topic.partitions.get(&0) {
                if p.consumer_lag >= 0 {
                    metrics::gauge!(m::TENANT_LAG_MESSAGES, "tenant" => tenant.as_str().to_owned())
                        .set(p.consumer_lag as f64);
                    self.health
                        .with(|s| s.lag.insert(tenant.clone(), p.consumer_lag));
                }
            }
        }
    }
}

impl ConsumerContext for HubContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if !self.armed.load(Ordering::SeqCst) {
            return; // a replaced consumer closing: its tenants were drained already
        }
        if let Rebalance::Revoke(tpl) = rebalance {
            let shared = self.shared_of(tpl);
            let mut tenants = self.tenants_of(tpl);
            tenants.extend(self.shared.tenants_on(&shared));
            let revoked = tenants.clone();
            tracing::info!(
                count = tenants.len(),
                lost = consumer.assignment_lost(),
                "partitions revoked; draining tenant actors"
            );
            let sink = self.sink.clone();
            let timeout = self.revoke_timeout;
            // The group waits for us: drain synchronously, then commit, then release.
            let drained = tokio::task::block_in_place(|| {
                tokio::runtime::Handle::current()
                    .block_on(async move { sink.revoke(tenants, timeout).await })
            });
            if !drained {
                tracing::warn!("draining revoked tenants did not complete");
            }
            // Their actors stored what they committed; the rest is read by the next owner.
            self.shared.release(&shared);
            if let Err(e) = consumer.commit_consumer_state(CommitMode::Sync) {
                tracing::debug!(error = %e, "commit on revoke");
            }
            // Incremental (cooperative) revocations name only the partitions that move;
            // eager ones name every partition.
            self.health.with(|s| {
                for t in &revoked {
                    s.owned.remove(t);
                    s.lag.remove(t);
                }
            });
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if !self.armed.load(Ordering::SeqCst) {
            return;
        }
        if let Rebalance::Assign(tpl) = rebalance {
            let shared: Vec<i32> = self.shared_of(tpl).into_iter().collect();
            let mut tenants = self.tenants_of(tpl);
            // Never run a tenant this consumer did not subscribe to: a broker can hand a
            // static member an assignment of another group or an earlier subscription.
            let foreign = self.health.with(|s| {
                let (mine, foreign): (Vec<TenantId>, Vec<TenantId>) =
                    tenants.drain(..).partition(|t| s.subscription.contains(t));
                tenants = mine;
                if foreign.is_empty() {
                    s.foreign_since = None;
                } else if s.foreign_since.is_none() {
                    s.foreign_since = Some(std::time::Instant::now());
                }
                s.owned.extend(tenants.iter().cloned());
                foreign.len()
            });
            if foreign > 0 {
                tracing::warn!(
                    foreign,
                    "the group assigned topics outside this consumer's subscription; ignoring them"
                );
            }
            tracing::info!(
                count = tenants.len(),
                shared = shared.len(),
                "partitions assigned"
            );
            let _ = self
                .events
                .send(HubEvent::Assigned(self.generation, tenants, shared));
        }
    }
}

type HubConsumer = StreamConsumer<HubContext>;

pub struct KafkaHub {
    consumer: RwLock<Arc<HubConsumer>>,
    /// How the consumer was made (re-used when the watchdog re-creates it).
    client: rdkafka::ClientConfig,
    prefix: String,
    queues: Mutex<HashMap<TenantId, Arc<TenantQueue>>>,
    events_tx: mpsc::UnboundedSender<HubEvent>,
    events: tokio::sync::Mutex<mpsc::UnboundedReceiver<HubEvent>>,
    refresh: Duration,
    /// The supervisor's drain timeout plus slack for stopping the actors: how long a
    /// revocation (by the group or by the watchdog) waits for the tenants to drain.
    revoke_timeout: Duration,
    sink: Arc<dyn AssignmentSink>,
    generation: AtomicU64,
    health: Arc<GroupHealth>,
    /// Subscribed-but-unsettled or silent-with-lag for this long means wedged.
    wedged_after: Option<Duration>,
    /// An assignment outside the subscription for this long (one session timeout: any
    /// rebalance for a subscription change has settled by then) is a broker defect.
    foreign_after: Option<Duration>,
    /// Where tenants' records live (shared with the publisher; kept current here).
    layout: Arc<TopicLayout>,
    shared: Arc<SharedBook>,
    /// Shared tenants by id, with whether each is active (the last registry refresh).
    shared_registry: Mutex<BTreeMap<TenantId, bool>>,
    /// Records buffered per shared tenant (`kafka.shared_buffer_records`).
    shared_capacity: usize,
    /// Dead letters of shared partitions go straight to the shared DLQ topic.
    producer: rdkafka::producer::FutureProducer,
    max_record_bytes: usize,
}

impl KafkaHub {
    pub fn new(
        cfg: &KafkaConfig,
        group_instance_id: &str,
        drain_timeout: Duration,
        sink: Arc<dyn AssignmentSink>,
        publisher: &KafkaPublisher,
    ) -> Result<Arc<Self>, HubError> {
        let (tx, rx) = mpsc::unbounded_channel();
        let revoke_timeout = drain_timeout + Duration::from_secs(5);
        let mut client = base_client_config(cfg);
        client
            .set("group.id", &cfg.group_id)
            .set("enable.auto.commit", "true")
            .set("enable.auto.offset.store", "false")
            .set(
                "auto.commit.interval.ms",
                cfg.auto_commit_interval_ms.to_string(),
            )
            .set("auto.offset.reset", "earliest")
            .set("session.timeout.ms", cfg.session_timeout_ms.to_string())
            .set("partition.assignment.strategy", &cfg.assignment_strategy)
            .set(
                "fetch.message.max.bytes",
                cfg.fetch_max_bytes_per_partition.to_string(),
            )
            .set(
                "queued.max.messages.kbytes",
                cfg.queued_max_kbytes_per_partition.to_string(),
            )
            .set("queued.min.messages", "1000")
            .set("fetch.wait.max.ms", "50")
            .set("enable.partition.eof", "false")
            .set(
                "statistics.interval.ms",
                cfg.statistics_interval_ms.to_string(),
            );
        let health = Arc::new(GroupHealth::default());
        let mut first = client.clone();
        if cfg.static_membership {
            first.set("group.instance.id", group_instance_id);
        }
        health.with(|s| s.static_membership = cfg.static_membership);
        let shared = Arc::new(SharedBook::default());
        let consumer = Self::create(
            &first,
            &cfg.topic_prefix,
            &tx,
            &sink,
            revoke_timeout,
            0,
            &health,
            &shared,
        )?;
        let wedged_after = (cfg.group_wedged_after_sessions > 0).then(|| {
            Duration::from_millis(cfg.session_timeout_ms)
                .saturating_mul(cfg.group_wedged_after_sessions)
        });
        Ok(Arc::new(Self {
            consumer: RwLock::new(Arc::new(consumer)),
            client,
            prefix: cfg.topic_prefix.clone(),
            queues: Mutex::new(HashMap::new()),
            events_tx: tx,
            events: tokio::sync::Mutex::new(rx),
            refresh: Duration::from_millis(cfg.tenant_refresh_ms),
            revoke_timeout,
            sink,
            generation: AtomicU64::new(0),
            health,
            wedged_after,
            foreign_after: (cfg.group_wedged_after_sessions > 0)
                .then(|| Duration::from_millis(cfg.session_timeout_ms)),
            layout: publisher.layout(),
            shared,
            shared_registry: Mutex::new(BTreeMap::new()),
            shared_capacity: cfg.shared_buffer_records,
            producer: publisher.producer().clone(),
            max_record_bytes: cfg.max_record_bytes,
        }))
    }

    #[allow(clippy::too_many_arguments)]
    fn create(
        client: &rdkafka::ClientConfig,
        prefix: &str,
        events: &mpsc::UnboundedSender<HubEvent>,
        sink: &Arc<dyn AssignmentSink>,
        revoke_timeout: Duration,
        generation: u64,
        health: &Arc<GroupHealth>,
        shared: &Arc<SharedBook>,
    ) -> Result<HubConsumer, HubError> {
        let context = HubContext {
            shared: shared.clone(),
            shared_inbound: shared_topic(prefix, TopicKind::Scim),
            prefix: prefix.to_owned(),
            events: events.clone(),
            sink: sink.clone(),
            revoke_timeout,
            generation,
            armed: AtomicBool::new(true),
            health: health.clone(),
        };
        Ok(client.create_with_context(context)?)
    }

    /// The consumer in use (the watchdog may replace it).
    fn consumer(&self) -> Arc<HubConsumer> {
        self.consumer
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The group's health, for `/readyz`.
    pub fn health(&self) -> Arc<GroupHealth> {
        self.health.clone()
    }

    fn ensure_split(&self, tenant: &TenantId) -> bool {
        let mut queues = self.queues.lock().unwrap_or_else(|p| p.into_inner());
        if queues.contains_key(tenant) {
            return true;
        }
        let topic = tenant.topic(&self.prefix, TopicKind::Scim);
        let Some(queue) = self.consumer().split_partition_queue(&topic, 0) else {
            tracing::warn!(tenant = %tenant, "cannot split partition queue");
            return false;
        };
        let (strays_tx, strays_rx) = mpsc::unbounded_channel();
        queues.insert(
            tenant.clone(),
            Arc::new(TenantQueue {
                topic,
                queue,
                strays_tx,
                strays_rx: tokio::sync::Mutex::new(strays_rx),
                next_offset: AtomicI64::new(-1),
                fetched_until: AtomicI64::new(-1),
                opened: AtomicBool::new(false),
                waiting_since: Mutex::new(None),
            }),
        );
        true
    }

    /// Splits every partition of the shared inbound topic off the main queue (before
    /// subscribing, like a tenant's own partition).
    fn ensure_shared_splits(&self) {
        let topic = shared_topic(&self.prefix, TopicKind::Scim);
        let mut splits = SharedBook::lock(&self.shared.splits);
        for p in 0..self.layout.shared_partitions() {
            if splits.contains_key(&p) {
                continue;
            }
            let Some(queue) = self.consumer().split_partition_queue(&topic, p) else {
                tracing::warn!(partition = p, "cannot split shared partition queue");
                continue;
            };
            let (strays_tx, strays_rx) = mpsc::unbounded_channel();
            splits.insert(
                p,
                Arc::new(SharedSplit {
                    queue,
                    strays_tx,
                    strays_rx: tokio::sync::Mutex::new(strays_rx),
                }),
            );
        }
    }

    fn subscribe(&self, tenants: &BTreeSet<TenantId>, shared: bool) -> Result<(), HubError> {
        for t in tenants {
            self.ensure_split(t);
        }
        if shared {
            self.ensure_shared_splits();
        }
        self.health.with(|s| {
            s.subscribed = tenants.len() + usize::from(shared);
            s.subscription = tenants.clone();
        });
        if tenants.is_empty() && !shared {
            self.consumer().unsubscribe();
            return Ok(());
        }
        let mut topics: Vec<String> = tenants
            .iter()
            .map(|t| t.topic(&self.prefix, TopicKind::Scim))
            .collect();
        if shared {
            topics.push(shared_topic(&self.prefix, TopicKind::Scim));
        }
        let refs: Vec<&str> = topics.iter().map(String::as_str).collect();
        self.consumer().subscribe(&refs)?;
        Ok(())
    }

    /// Serves the group (rebalances, stray records) and follows the registry until
    /// `shutdown` is cancelled; re-creates the consumer when the watchdog finds it wedged.
    pub async fn run(self: Arc<Self>, registry: Registry, shutdown: CancellationToken) {
        let mut subscribed: Option<(BTreeSet<TenantId>, bool)> = None;
        let mut seen: Option<(i64, i64)> = None;
        let mut tick = tokio::time::interval(self.refresh);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut events = self.events.lock().await;
        loop {
            let consumer = self.consumer();
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tick.tick() => {
                    if let Some(reason) = self.wedged() {
                        self.recreate(reason).await;
                        subscribed = None;
                        continue;
                    }
                    // The whole registry is read only when it changed (or after a re-created
                    // consumer, which subscribes anew).
                    let fingerprint = registry.fingerprint().await.ok();
                    if subscribed.is_some() && fingerprint.is_some() && fingerprint == seen {
                        continue;
                    }
                    match registry.layout().await {
                        Ok(layout) => {
                            seen = fingerprint;
                            let want = (layout.dedicated.clone(), !layout.shared.is_empty());
                            self.follow_shared(&layout).await;
                            if subscribed.as_ref() != Some(&want) {
                                match self.subscribe(&want.0, want.1) {
                                    Ok(()) => {
                                        tracing::info!(tenants = want.0.len(), shared = want.1, "subscription updated");
                                        subscribed = Some(want);
                                    }
                                    Err(e) => tracing::warn!(error = %e, "subscribe failed"),
                                }
                            }
                        }
                        Err(e) => tracing::warn!(error = %e, "reading the tenant registry failed"),
                    }
                },
                Some(ev) = events.recv() => match ev {
                    HubEvent::Assigned(generation, tenants, shared) => {
                        if generation != self.generation.load(Ordering::SeqCst) {
                            continue; // from a consumer replaced since
                        }
                        let ready: Vec<TenantId> =
                            tenants.into_iter().filter(|t| self.ensure_split(t)).collect();
                        self.forget_positions(&ready);
                        self.sink.assign(ready);
                        for p in shared {
                            self.start_shared(p, &registry);
                        }
                    }
                },
                msg = consumer.recv() => match msg {
                    Ok(msg) => self.route_stray(&msg),
                    Err(e) => {
                        FeedReceiveFailed { tenant: None, kind: "consumer", error: &e }.emit();
                    }
                },
            }
        }
    }

    /// Why the group looks wedged, if it does: subscribed but unsettled, or a tenant feed
    /// waiting while its partition has lag, for longer than `wedged_after`.
    fn wedged(&self) -> Option<&'static str> {
        let limit = self.wedged_after?;
        let waiting: Vec<(TenantId, std::time::Instant)> = {
            let queues = self.queues.lock().unwrap_or_else(|p| p.into_inner());
            queues
                .iter()
                .filter_map(|(t, q)| {
                    let since = *q.waiting_since.lock().unwrap_or_else(|p| p.into_inner());
                    since.map(|s| (t.clone(), s))
                })
                .collect()
        };
        self.health.with(|s| {
            let reason =
                if s.subscribed > 0 && s.unsettled_since.is_some_and(|t| t.elapsed() >= limit) {
                    Some("no_assignment")
                } else if s
                    .foreign_since
                    .zip(self.foreign_after)
                    .is_some_and(|(t, after)| t.elapsed() >= after)
                {
                    Some("foreign_assignment")
                } else if !s.owned.is_empty()
                    && waiting.iter().any(|(t, since)| {
                        since.elapsed() >= limit && s.lag.get(t).is_some_and(|lag| *lag > 0)
                    })
                {
                    Some("silent_feed")
                } else {
                    None
                };
            match reason {
                Some(r) => {
                    s.wedged.get_or_insert((r, std::time::Instant::now()));
                }
                None => s.wedged = None,
            }
            reason
        })
    }

    /// Drains every tenant of this hub, then replaces the consumer by a fresh dynamic
    /// member of the group. The old consumer is disarmed first (its late rebalance
    /// callbacks do nothing) and closed off the runtime (closing may block on a wedged
    /// broker). Offsets stored but not committed are re-read by the new member and are
    /// no-ops there (idempotency records, dead letters keyed by offset).
    async fn recreate(&self, reason: &'static str) {
        ConsumerGroupWedged { reason }.emit();
        let mut tenants: Vec<TenantId> = self
            .queues
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .cloned()
            .collect();
        tenants.extend(SharedBook::lock(&self.shared.queues).keys().cloned());
        let old = self.consumer();
        old.context().armed.store(false, Ordering::SeqCst);
        let timeout = self.revoke_timeout;
        if !self.sink.revoke(tenants, timeout).await {
            tracing::warn!("draining tenants before re-creating the consumer did not complete");
        }
        let _ = old.commit_consumer_state(CommitMode::Async);
        let generation = self.generation.fetch_add(1, Ordering::SeqCst) + 1;
        let fresh = match Self::create(
            &self.client,
            &self.prefix,
            &self.events_tx,
            &self.sink,
            self.revoke_timeout,
            generation,
            &self.health,
            &self.shared,
        ) {
            Ok(c) => Arc::new(c),
            Err(e) => {
                tracing::error!(error = %e, "re-creating the consumer failed; keeping the old one");
                old.context().armed.store(true, Ordering::SeqCst);
                return;
            }
        };
        self.queues
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        self.shared.release_all();
        SharedBook::lock(&self.shared.splits).clear();
        *self.consumer.write().unwrap_or_else(|p| p.into_inner()) = fresh;
        self.health.with(|s| {
            s.recreations += 1;
            s.static_membership = false;
            s.owned.clear();
            s.unsettled_since = None;
            s.foreign_since = None;
            s.wedged = None;
            s.lag.clear();
        });
        tokio::task::spawn_blocking(move || drop(old));
    }

    /// A fresh assignment starts from the group's committed offsets: forget what a previous
    /// assignment stored so the next actor does not seek back to it.
    fn forget_positions(&self, tenants: &[TenantId]) {
        let queues = self.queues.lock().unwrap_or_else(|p| p.into_inner());
        for t in tenants {
            if let Some(q) = queues.get(t) {
                q.opened.store(false, Ordering::SeqCst);
                q.next_offset.store(-1, Ordering::SeqCst);
                q.fetched_until.store(-1, Ordering::SeqCst);
            }
        }
    }

    /// A record delivered on the main queue (fetched before its queue was split).
    fn route_stray(&self, msg: &BorrowedMessage<'_>) {
        if self.layout.is_shared_inbound(msg.topic()) {
            if let Some(split) = SharedBook::lock(&self.shared.splits).get(&msg.partition()) {
                let _ = split.strays_tx.send(to_record(msg));
            }
            return;
        }
        let tenant = TenantId::from_scim_topic(&self.prefix, msg.topic());
        let queue = tenant.and_then(|t| {
            self.queues
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(&t)
                .cloned()
        });
        match queue {
            Some(q) => {
                let _ = q.strays_tx.send(to_record(msg));
            }
            None => {
                // Not a tenant topic we split: leave its offset uncommitted so it is
                // re-read once the tenant's queue exists.
                tracing::warn!(topic = msg.topic(), "record for an unknown tenant topic");
            }
        }
    }

    /// Commits every stored offset now (shutdown).
    pub fn commit_now(&self) -> Result<(), HubError> {
        match self.consumer().commit_consumer_state(CommitMode::Sync) {
            Ok(()) => Ok(()),
            Err(rdkafka::error::KafkaError::ConsumerCommit(
                rdkafka::error::RDKafkaErrorCode::NoOffset,
            )) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    fn committed_offset(&self, topic: &str) -> Option<i64> {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(topic, 0);
        let consumer = self.consumer();
        let got =
            tokio::task::block_in_place(|| consumer.committed_offsets(tpl, Duration::from_secs(5)))
                .ok()?;
        match got.find_partition(topic, 0)?.offset() {
            Offset::Offset(n) => Some(n),
            _ => None,
        }
    }
}
