//! The tenants of a process end to end, through the [`Tenants`] facade: supervisor, tenant
//! actors, feeders, relays and job pumps over the in-memory fakes, on a paused clock.
//! (Each part's own rules are unit-tested next to it.)
use super::*;
use crate::fakes::*;
use crate::ports::{EventPublisher, OutboundRecord};
use crate::scim::tests::envelope;
use crate::supervisor::{ActorStatus, SupervisorSettings};
use crate::tenant::TopicKind;
use crate::tenant_actor::{PipelineSettings, TenantDeps};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio::time::Instant;

struct Harness {
    store: Arc<FakeStore>,
    feeds: Arc<FakeFeeds>,
    publisher: Arc<FakePublisher>,
    cache: Arc<FakeCache>,
    tenants: Tenants,
}

impl Harness {
    /// Assigns one tenant's partition to this instance (its actor starts).
    fn assign(&self, tenant: &TenantId) {
        self.tenants.assign(vec![tenant.clone()]);
    }
}

async fn harness(pipeline: PipelineSettings, settings: SupervisorSettings) -> Harness {
    harness_with(pipeline, settings, Arc::new(NoUpstream)).await
}

async fn harness_with(
    pipeline: PipelineSettings,
    settings: SupervisorSettings,
    upstream: Arc<dyn crate::upstream::MindTickleApi>,
) -> Harness {
    let store = Arc::new(FakeStore::default());
    let feeds = Arc::new(FakeFeeds::default());
    let publisher = Arc::new(FakePublisher::default());
    let cache = Arc::new(FakeCache::default());
    let deps = TenantDeps {
        store: store.clone(),
        cache: cache.clone(),
        publisher: publisher.clone(),
        feeds: feeds.clone(),
        upstream,
        limits: Default::default(),
    };
    let (tenants, inbox) = Tenants::channel();
    inbox
        .start(Supervisor {
            deps,
            pipeline,
            settings,
        })
        .await
        .unwrap();
    Harness {
        store,
        feeds,
        publisher,
        cache,
        tenants,
    }
}

struct NoUpstream;

#[async_trait::async_trait]
impl crate::upstream::MindTickleApi for NoUpstream {
    async fn user_courses(
        &self,
        _: &TenantId,
        _: &str,
    ) -> Result<Vec<crate::upstream::UpstreamCourse>, crate::upstream::UpstreamError> {
        Ok(vec![])
    }
    async fn catalog(
        &self,
        _: &TenantId,
    ) -> Result<Vec<crate::upstream::CatalogCourse>, crate::upstream::UpstreamError> {
        Ok(vec![])
    }
    async fn roster(
        &self,
        _: &TenantId,
    ) -> Result<Vec<crate::upstream::RosterUser>, crate::upstream::UpstreamError> {
        Ok(vec![])
    }
    async fn push_user(
        &self,
        _: &TenantId,
        _: &serde_json::Value,
    ) -> Result<(), crate::upstream::UpstreamError> {
        Ok(())
    }
}

fn t(id: &str) -> TenantId {
    TenantId::parse(id).unwrap()
}

fn event(tenant: &str, n: usize, user: &str, name: &str) -> Vec<u8> {
    let mut v: serde_json::Value = serde_json::from_slice(&envelope(
        &format!("{tenant}-e{n}"),
        "UPDATE",
        user,
        &format!(
            "2026-01-01T00:00:{:02}.{:06}Z",
            n / 1_000_000 % 60,
            n % 1_000_000
        ),
        &format!("{user}-{n}@x.test"),
    ))
    .unwrap();
    v["tenantId"] = tenant.into();
    v["user"]["userName"] = name.into();
    v.to_string().into_bytes()
}

/// Waits (on the paused clock) until `cond` holds; panics at the deadline.
async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(600);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn health(tenants: &Tenants) -> Vec<TenantHealth> {
    tenants.health(Duration::from_secs(5)).await.unwrap()
}

#[tokio::test(start_paused = true)]
async fn applies_events_dead_letters_bad_ones_and_stores_offsets_after_commit() {
    let h = harness(PipelineSettings::default(), SupervisorSettings::default()).await;
    let acme = t("acme");
    let log = h.feeds.log(&acme);
    log.append(event("acme", 1, "u1", "ada"));
    log.append(b"{not json".to_vec());
    log.append(event("globex", 2, "u2", "eve")); // names another tenant
    log.append(event("acme", 3, "u1", "ada"));
    log.append(event("acme", 1, "u1", "ada")); // replayed event id
    h.assign(&acme);
    wait_for("all offsets stored", || log.stored() == 5).await;

    let users = h.store.users(&acme);
    assert_eq!(users.len(), 1);
    assert_eq!(users["u1"].version, 2);
    // Dead letters ride the outbox: committed with the batch, relayed after it.
    wait_for("dead letters relayed", || {
        h.publisher.on(&acme, TopicKind::Dlq).len() == 2
    })
    .await;
    let dlq = h.publisher.on(&acme, TopicKind::Dlq);
    let reasons: Vec<String> = dlq
        .iter()
        .map(|r| {
            let (_, v) = r.headers.iter().find(|(k, _)| k == "dlq.reason").unwrap();
            String::from_utf8(v.clone()).unwrap()
        })
        .collect();
    assert_eq!(reasons, ["invalid_json", "tenant_mismatch"]);
    assert_eq!(dlq[0].payload, b"{not json".to_vec(), "original bytes kept");
    let (_, off) = dlq[1]
        .headers
        .iter()
        .find(|(k, _)| k == "dlq.source.offset")
        .unwrap();
    assert_eq!(off, b"2");
    h.store.with(&acme, |d| {
        assert_eq!(d.security.len(), 1);
        assert_eq!(d.security[0].kind, "tenant_mismatch");
        assert_eq!(d.processed.len(), 2);
    });
    wait_for("outbox relayed", || {
        h.publisher.on(&acme, TopicKind::UserChanged).len() == 2
    })
    .await;
    let mut seqs = h.publisher.outbox_seqs(&acme);
    seqs.sort_unstable();
    assert_eq!(seqs, [1, 2, 3, 4]);
    // The cursor is stored once no further batch carries it.
    wait_for("relay cursor stored", || {
        h.store.with(&acme, |d| d.relayed_seq) == 4
    })
    .await;
    assert!(!h.cache.invalidations.lock().unwrap().is_empty());
}

#[tokio::test(start_paused = true)]
async fn rows_of_another_writer_are_relayed_in_seq_order_before_a_batch() {
    let h = harness(PipelineSettings::default(), SupervisorSettings::default()).await;
    let acme = t("acme");
    let log = h.feeds.log(&acme);
    log.append(event("acme", 1, "u1", "ada"));
    h.assign(&acme);
    wait_for("first batch relayed", || {
        h.publisher.outbox_seqs(&acme) == [1]
    })
    .await;
    // A progress sync commits seq 2 without telling the actor; the next batch gets 3.
    h.store.append_outbox(
        &acme,
        TopicKind::Events,
        "u1",
        b"{\"type\":\"progress.synced\"}",
    );
    log.append(event("acme", 2, "u2", "bob"));
    wait_for("second batch relayed", || {
        h.publisher.outbox_seqs(&acme).len() == 3
    })
    .await;
    assert_eq!(h.publisher.outbox_seqs(&acme), [1, 2, 3]);
    wait_for("relay cursor stored", || {
        h.store.with(&acme, |d| d.relayed_seq) == 3
    })
    .await;
}

/// Wake-ups (another process committed outbox rows: the SCIM provider's HTTP writes send
/// one per transaction) that queue up while the actor is busy share one relay pass over
/// the table instead of one pass each, and no row announced by one is left behind.
#[tokio::test(start_paused = true)]
async fn wake_ups_queued_behind_a_busy_actor_share_one_relay_pass() {
    let h = harness(PipelineSettings::default(), SupervisorSettings::default()).await;
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    *h.store.gate.lock().unwrap() = Some(gate.clone());
    let acme = t("acme");
    let log = h.feeds.log(&acme);
    log.append(event("acme", 1, "u1", "ada"));
    h.assign(&acme);
    wait_for("the actor busy in a batch", || {
        h.store.gated.load(Ordering::SeqCst) == 1
    })
    .await;
    // Another writer commits rows and wakes the tenant fifty times meanwhile.
    for n in 0..50 {
        h.store
            .append_outbox(&acme, TopicKind::Events, &format!("w{n}"), b"{}");
        h.tenants.wake(&acme);
    }
    // The supervisor answers after it forwarded every wake-up (its mailbox is in order).
    health(&h.tenants).await;
    let before = h.store.outbox_reads.load(Ordering::SeqCst);
    gate.add_permits(1000);
    // One more row and wake-up: the relay that publishes this row comes after every
    // earlier wake-up was handled.
    h.store
        .append_outbox(&acme, TopicKind::Events, "last", b"{}");
    h.tenants.wake(&acme);
    wait_for("every row relayed", || {
        h.publisher.outbox_seqs(&acme).len() == 52
    })
    .await;
    let seqs = h.publisher.outbox_seqs(&acme);
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "in seq order: {seqs:?}"
    );
    let passes = h.store.outbox_reads.load(Ordering::SeqCst) - before;
    assert!(
        passes <= 4,
        "fifty wake-ups cost {passes} reads of the outbox (one pass each would be 50)"
    );
}

#[tokio::test(start_paused = true)]
async fn a_failed_relay_is_retried_from_the_table_before_newer_rows() {
    let pipeline = PipelineSettings {
        outbox_retry: Duration::from_secs(3600),
        ..Default::default()
    };
    let h = harness(pipeline, SupervisorSettings::default()).await;
    let acme = t("acme");
    let log = h.feeds.log(&acme);
    h.publisher.failures.store(1, Ordering::SeqCst);
    log.append(event("acme", 1, "u1", "ada"));
    h.assign(&acme);
    // Committed (offset stored) although its announcement failed: the row is durable.
    wait_for("first batch committed", || log.stored() == 1).await;
    assert!(h.publisher.outbox_seqs(&acme).is_empty());
    // The same user changes again long before the retry: its older change goes first.
    log.append(event("acme", 2, "u1", "ada"));
    wait_for("both relayed", || h.publisher.outbox_seqs(&acme).len() == 2).await;
    assert_eq!(h.publisher.outbox_seqs(&acme), [1, 2]);
}

#[tokio::test(start_paused = true)]
async fn a_failing_tenant_is_restarted_with_backoff_then_parked_while_others_flow() {
    let settings = SupervisorSettings {
        restart_backoff_initial: Duration::from_millis(100),
        restart_backoff_max: Duration::from_secs(2),
        max_consecutive_failures: 3,
        park_duration: Duration::from_secs(3600),
        ..Default::default()
    };
    let h = harness(PipelineSettings::default(), settings).await;
    let (bad, good) = (t("bad"), t("good"));
    // Persistent for this tenant: even the dead letter of its refused record is refused.
    h.store.refuse_tenants.lock().unwrap().insert(bad.clone());
    h.feeds.log(&bad).append(event("bad", 1, "u1", "poison"));
    h.tenants.assign(vec![bad.clone(), good.clone()]);
    let started = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(600);
    while !health(&h.tenants)
        .await
        .iter()
        .any(|x| x.status == ActorStatus::Parked)
    {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for the tenant to park"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // 3 restarts with backoff 100, 200, 400 ms (+ up to 25% jitter) before parking.
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(700),
        "backoff honoured: {elapsed:?}"
    );
    let hs = health(&h.tenants).await;
    let bad_h = hs.iter().find(|x| x.tenant == bad).unwrap();
    assert_eq!(bad_h.status, ActorStatus::Parked);
    assert_eq!(bad_h.restarts, 4);
    assert_eq!(
        h.feeds.log(&bad).stored(),
        0,
        "poison batch never committed"
    );
    // The healthy tenant keeps flowing while the other is parked.
    let good_log = h.feeds.log(&good);
    for n in 0..50 {
        good_log.append(event("good", n, &format!("u{n}"), "fine"));
    }
    wait_for("good tenant applied", || good_log.stored() == 50).await;
    assert_eq!(h.store.users(&good).len(), 50);
    let g = health(&h.tenants)
        .await
        .into_iter()
        .find(|x| x.tenant == good)
        .unwrap();
    assert_eq!((g.status, g.restarts), (ActorStatus::Running, 0));
}

#[tokio::test(start_paused = true)]
async fn a_panicking_actor_is_restarted_and_replays_from_the_last_stored_offset() {
    let h = harness(PipelineSettings::default(), SupervisorSettings::default()).await;
    *h.store.poison_user_name.lock().unwrap() = Some("boom".into());
    let acme = t("acme");
    let log = h.feeds.log(&acme);
    log.append(event("acme", 1, "u1", "fine"));
    h.assign(&acme);
    wait_for("first event stored", || log.stored() == 1).await;
    log.append(event("acme", 2, "u2", "boom-panic"));
    let deadline = Instant::now() + Duration::from_secs(600);
    while health(&h.tenants).await.iter().all(|x| x.restarts == 0) {
        assert!(Instant::now() < deadline, "no restart after a panic");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(log.stored(), 1, "the panicking batch was not committed");
    // Fix the cause: the restarted actor replays offset 1 and carries on.
    *h.store.poison_user_name.lock().unwrap() = None;
    wait_for("replayed after restart", || log.stored() == 2).await;
    assert_eq!(h.store.users(&acme).len(), 2);
}

#[tokio::test(start_paused = true)]
async fn the_registry_quota_override_paces_the_tenants_upstream_calls() {
    let h = harness(PipelineSettings::default(), SupervisorSettings::default()).await;
    *h.store.quota.lock().unwrap() = Some(6); // one call per 10 s
    let acme = t("acme");
    h.assign(&acme);
    while !h.tenants.is_local(&acme).await {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let started = Instant::now();
    for _ in 0..5 {
        h.tenants
            .sync_progress(&acme, "u1", Duration::from_secs(600))
            .await
            .unwrap();
    }
    // 10 s per call at 6/min, and no burst: a starting actor's limiter has its burst
    // spent (a previous incarnation may have used the platform's window), so 5 calls
    // need 50 s.
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(49),
        "override applied, no burst after a start: {took:?}"
    );
    assert!(took <= Duration::from_secs(51), "{took:?}");
}

#[tokio::test(start_paused = true)]
async fn a_flood_pauses_the_partition_and_never_delays_another_tenant() {
    let pipeline = PipelineSettings {
        max_batch_events: 50,
        high_water: 200,
        low_water: 50,
        ..Default::default()
    };
    let h = harness(pipeline, SupervisorSettings::default()).await;
    // Every transaction takes 10 ms of (paused) database time.
    *h.store.batch_delay.lock().unwrap() = Duration::from_millis(10);
    let (flood, quiet) = (t("flood"), t("quiet"));
    let flood_log = h.feeds.log(&flood);
    for n in 0..5_000 {
        flood_log.append(event("flood", n, &format!("u{}", n % 100), "f"));
    }
    h.tenants.assign(vec![flood.clone(), quiet.clone()]);
    let quiet_log = h.feeds.log(&quiet);
    for n in 0..5 {
        quiet_log.append(event("quiet", n, &format!("q{n}"), "q"));
    }
    wait_for("quiet tenant applied", || quiet_log.stored() == 5).await;
    assert!(
        flood_log.stored() < 5_000,
        "the quiet tenant finished before the flood ({} done)",
        flood_log.stored()
    );
    wait_for("flood applied", || flood_log.stored() == 5_000).await;
    let peak = flood_log.max_buffered_seen.load(Ordering::SeqCst);
    assert!(
        peak <= 200 + 50 + 1,
        "buffer bounded by high water + batch: {peak}"
    );
    assert_eq!(h.store.users(&flood).len(), 100);
}

#[tokio::test(start_paused = true)]
async fn shutdown_finishes_the_batch_in_flight_and_stores_its_offset() {
    let pipeline = PipelineSettings {
        max_batch_events: 10,
        ..Default::default()
    };
    let h = harness(pipeline, SupervisorSettings::default()).await;
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    *h.store.gate.lock().unwrap() = Some(gate.clone());
    let acme = t("acme");
    let log = h.feeds.log(&acme);
    for n in 0..30 {
        log.append(event("acme", n, &format!("u{n}"), "x"));
    }
    h.assign(&acme);
    wait_for("first batch in flight", || {
        log.max_buffered_seen.load(Ordering::SeqCst) >= 10
    })
    .await;
    let tenants = h.tenants.clone();
    let shutdown =
        tokio::spawn(async move { tenants.shutdown(Duration::from_secs(60)).await.unwrap() });
    tokio::time::sleep(Duration::from_millis(50)).await;
    gate.add_permits(1000);
    shutdown.await.unwrap();
    let stored = log.stored();
    assert_eq!(
        stored, 10,
        "exactly the batch in flight was committed and stored"
    );
    assert_eq!(h.store.batches.load(Ordering::SeqCst), 1);
    assert_eq!(h.store.users(&acme).len(), 10);
    assert!(health(&h.tenants).await.is_empty());
}

fn dlq_reasons(h: &Harness, tenant: &TenantId) -> Vec<(String, String)> {
    h.publisher
        .on(tenant, TopicKind::Dlq)
        .iter()
        .map(|r| {
            let get = |name: &str| {
                let (_, v) = r.headers.iter().find(|(k, _)| k == name).unwrap();
                String::from_utf8(v.clone()).unwrap()
            };
            (get("dlq.reason"), get("dlq.source.offset"))
        })
        .collect()
}

#[tokio::test(start_paused = true)]
async fn a_record_the_database_refuses_is_dead_lettered_alone_and_the_rest_applied() {
    let h = harness(PipelineSettings::default(), SupervisorSettings::default()).await;
    *h.store.poison_user_name.lock().unwrap() = Some("poison".into());
    let acme = t("acme");
    let log = h.feeds.log(&acme);
    for n in 0..10 {
        let name = if n == 6 { "poison" } else { "fine" };
        log.append(event("acme", n, &format!("u{n}"), name));
    }
    log.append(b"[]".to_vec());
    h.assign(&acme);
    wait_for("all offsets stored", || log.stored() == 11).await;
    assert_eq!(h.store.users(&acme).len(), 9, "every other event applied");
    assert!(!h.store.users(&acme).contains_key("u6"));
    wait_for("dead letters relayed", || {
        h.publisher.on(&acme, TopicKind::Dlq).len() == 2
    })
    .await;
    let mut reasons = dlq_reasons(&h, &acme);
    reasons.sort();
    assert_eq!(
        reasons,
        [
            ("database_refused".to_string(), "6".to_string()),
            ("invalid_json".to_string(), "10".to_string())
        ]
    );
    let hs = health(&h.tenants).await;
    assert_eq!((hs[0].status, hs[0].restarts), (ActorStatus::Running, 0));
}

#[tokio::test(start_paused = true)]
async fn a_database_outage_is_waited_out_without_a_restart() {
    let h = harness(PipelineSettings::default(), SupervisorSettings::default()).await;
    // Longer than the supervisor would tolerate as crashes (8 failures park a tenant).
    h.store.transient_failures.store(20, Ordering::SeqCst);
    let acme = t("acme");
    let log = h.feeds.log(&acme);
    for n in 0..5 {
        log.append(event("acme", n, &format!("u{n}"), "fine"));
    }
    let started = Instant::now();
    h.assign(&acme);
    wait_for("applied after the outage", || log.stored() == 5).await;
    assert_eq!(h.store.users(&acme).len(), 5);
    assert!(h.store.attempts.load(Ordering::SeqCst) >= 21);
    // Backoff: 200 ms doubling to the 10 s cap over 20 failures.
    assert!(
        started.elapsed() >= Duration::from_secs(100),
        "{:?}",
        started.elapsed()
    );
    let hs = health(&h.tenants).await;
    assert_eq!((hs[0].status, hs[0].restarts), (ActorStatus::Running, 0));
    assert!(
        h.publisher.on(&acme, TopicKind::Dlq).is_empty(),
        "nothing dead-lettered"
    );
}

#[tokio::test(start_paused = true)]
async fn a_dead_letter_is_published_once_even_when_its_batch_is_replayed() {
    let h = harness(PipelineSettings::default(), SupervisorSettings::default()).await;
    let acme = t("acme");
    let log = h.feeds.log(&acme);
    log.append(b"{not json".to_vec());
    log.append(event("acme", 1, "u1", "fine"));
    // The actor dies after the commit and before its offsets are stored: the restart
    // replays both records.
    h.store.crash_after_commit.store(true, Ordering::SeqCst);
    h.assign(&acme);
    wait_for("stored after the replay", || log.stored() == 2).await;
    assert!(
        h.store.batches.load(Ordering::SeqCst) >= 2,
        "the batch was replayed"
    );
    wait_for("relayed", || {
        h.publisher.on(&acme, TopicKind::UserChanged).len() == 1
    })
    .await;
    assert_eq!(
        dlq_reasons(&h, &acme),
        [("invalid_json".to_string(), "0".to_string())]
    );
    assert_eq!(health(&h.tenants).await[0].restarts, 1);
}

#[tokio::test(start_paused = true)]
async fn a_relay_after_a_partial_publish_skips_what_reached_the_topic() {
    let h = harness(PipelineSettings::default(), SupervisorSettings::default()).await;
    let acme = t("acme");
    let log = h.feeds.log(&acme);
    for n in 0..3 {
        log.append(event("acme", n, &format!("u{n}"), "fine"));
    }
    // The broker acknowledges the first record, then the connection breaks.
    h.publisher.ack_then_fail.store(1, Ordering::SeqCst);
    h.assign(&acme);
    wait_for("all relayed", || h.publisher.outbox_seqs(&acme).len() >= 3).await;
    wait_for("cursor stored", || {
        h.store.with(&acme, |d| d.relayed_seq) == 3
    })
    .await;
    assert_eq!(
        h.publisher.outbox_seqs(&acme),
        [1, 2, 3],
        "nothing published twice"
    );
}

#[tokio::test(start_paused = true)]
async fn a_new_owner_does_not_republish_what_the_previous_one_published() {
    let h = harness(PipelineSettings::default(), SupervisorSettings::default()).await;
    let acme = t("acme");
    // A previous instance committed rows 1-3 and published 1-2, then died before it
    // stored its relay cursor.
    for n in 1..=3 {
        h.store
            .append_outbox(&acme, TopicKind::UserChanged, &format!("u{n}"), b"{}");
    }
    let published: Vec<OutboundRecord> = h
        .store
        .with(&acme, |d| d.outbox[..2].to_vec())
        .into_iter()
        .map(crate::tenant_actor::outbound_for_tests)
        .collect();
    h.publisher.publish(&acme, published).await.unwrap();
    h.assign(&acme);
    wait_for("cursor stored", || {
        h.store.with(&acme, |d| d.relayed_seq) == 3
    })
    .await;
    assert_eq!(
        h.publisher.outbox_seqs(&acme),
        [1, 2, 3],
        "rows 1-2 not republished"
    );
    assert!(h.publisher.tail_reads.load(Ordering::SeqCst) >= 1);
}

fn padded_event(tenant: &str, n: usize, pad: usize) -> Vec<u8> {
    let mut v: serde_json::Value =
        serde_json::from_slice(&event(tenant, n, &format!("u{n}"), "big")).unwrap();
    v["user"]["x-pad"] = "p".repeat(pad).into();
    v.to_string().into_bytes()
}

#[tokio::test(start_paused = true)]
async fn large_payloads_pause_a_tenant_at_its_byte_budget_not_only_at_high_water() {
    let pipeline = PipelineSettings {
        high_water: 10_000,
        low_water: 5_000,
        max_batch_events: 2,
        tenant_buffer_max_bytes: 64 * 1024,
        ..Default::default()
    };
    let h = harness(pipeline, SupervisorSettings::default()).await;
    // Slow commits: the feeder would buffer the whole flood if only records counted.
    *h.store.batch_delay.lock().unwrap() = Duration::from_millis(50);
    let acme = t("acme");
    let log = h.feeds.log(&acme);
    for n in 0..100 {
        log.append(padded_event("acme", n, 10 * 1024));
    }
    h.assign(&acme);
    wait_for("all applied", || log.stored() == 100).await;
    // ~10 KiB each: at most the budget plus the record that crossed it.
    let held = log.max_buffered_seen.load(Ordering::SeqCst);
    assert!(
        held <= 8,
        "held {held} records of 10 KiB under a 64 KiB budget"
    );
    assert_eq!(h.store.users(&acme).len(), 100);
}

#[tokio::test(start_paused = true)]
async fn the_process_byte_budget_bounds_all_tenants_together_and_starves_none() {
    let pipeline = PipelineSettings {
        high_water: 10_000,
        low_water: 5_000,
        max_batch_events: 2,
        process_buffer_max_bytes: 64 * 1024,
        ..Default::default()
    };
    let h = harness(pipeline, SupervisorSettings::default()).await;
    *h.store.batch_delay.lock().unwrap() = Duration::from_millis(50);
    let tenants: Vec<TenantId> = (0..4).map(|i| t(&format!("t{i}"))).collect();
    for tenant in &tenants {
        let log = h.feeds.log(tenant);
        for n in 0..30 {
            log.append(padded_event(tenant.as_str(), n, 10 * 1024));
        }
    }
    h.tenants.assign(tenants.clone());
    wait_for("every tenant applied", || {
        tenants.iter().all(|t| h.feeds.log(t).stored() == 30)
    })
    .await;
    let held = h.feeds.held.max.load(Ordering::SeqCst);
    // Budget (6.4 records) plus at most one record per tenant beyond it.
    assert!(held <= 7 + tenants.len(), "held {held} records together");
}

#[tokio::test(start_paused = true)]
async fn a_dead_letter_larger_than_the_broker_accepts_is_cut_to_fit_and_says_so() {
    let pipeline = PipelineSettings {
        max_record_bytes: 100 * 1024,
        ..Default::default()
    };
    let h = harness(pipeline, SupervisorSettings::default()).await;
    let acme = t("acme");
    let log = h.feeds.log(&acme);
    // As large as a broker with a bigger limit let through: oversized here.
    log.append(vec![b'x'; 300 * 1024]);
    log.append(event("acme", 1, "u1", "fine"));
    h.assign(&acme);
    wait_for("dead letter relayed", || {
        h.publisher.on(&acme, TopicKind::Dlq).len() == 1
    })
    .await;
    let dlq = &h.publisher.on(&acme, TopicKind::Dlq)[0];
    let size = dlq.payload.len()
        + dlq
            .headers
            .iter()
            .map(|(k, v)| k.len() + v.len())
            .sum::<usize>();
    assert!(size <= 100 * 1024, "{size} bytes");
    let (_, from) = dlq
        .headers
        .iter()
        .find(|(k, _)| k == "dlq.payload.truncated_from")
        .expect("truncation header");
    assert_eq!(from, (300 * 1024).to_string().as_bytes());
    assert!(
        dlq.payload.iter().all(|b| *b == b'x'),
        "a prefix of the original"
    );
    wait_for("the next event applied", || log.stored() == 2).await;
}

/// An upstream that records when each progress call reached it.
#[derive(Default)]
struct TimedUpstream {
    calls: std::sync::Mutex<Vec<Instant>>,
}

#[async_trait::async_trait]
impl crate::upstream::MindTickleApi for TimedUpstream {
    async fn user_courses(
        &self,
        _: &TenantId,
        _: &str,
    ) -> Result<Vec<crate::upstream::UpstreamCourse>, crate::upstream::UpstreamError> {
        self.calls.lock().unwrap().push(Instant::now());
        Ok(vec![])
    }
    async fn catalog(
        &self,
        _: &TenantId,
    ) -> Result<Vec<crate::upstream::CatalogCourse>, crate::upstream::UpstreamError> {
        Ok(vec![])
    }
    async fn roster(
        &self,
        _: &TenantId,
    ) -> Result<Vec<crate::upstream::RosterUser>, crate::upstream::UpstreamError> {
        Ok(vec![])
    }
    async fn push_user(
        &self,
        _: &TenantId,
        _: &serde_json::Value,
    ) -> Result<(), crate::upstream::UpstreamError> {
        Ok(())
    }
}

fn passivating(after: Duration) -> SupervisorSettings {
    SupervisorSettings {
        passivate_after: Some(after),
        ..Default::default()
    }
}

async fn status(tenants: &Tenants, tenant: &TenantId) -> Option<ActorStatus> {
    health(tenants)
        .await
        .into_iter()
        .find(|h| &h.tenant == tenant)
        .map(|h| h.status)
}

async fn wait_status(tenants: &Tenants, tenant: &TenantId, want: ActorStatus) {
    let deadline = Instant::now() + Duration::from_secs(3600);
    while status(tenants, tenant).await != Some(want) {
        assert!(Instant::now() < deadline, "timed out waiting for {want:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(start_paused = true)]
async fn an_idle_tenant_is_passivated_and_woken_by_a_record_a_job_and_a_request() {
    let h = harness(
        PipelineSettings::default(),
        passivating(Duration::from_secs(60)),
    )
    .await;
    let (acme, busy) = (t("acme"), t("busy"));
    let log = h.feeds.log(&acme);
    log.append(event("acme", 1, "u1", "ada"));
    h.tenants.assign(vec![acme.clone(), busy.clone()]);
    wait_for("first record stored", || log.stored() == 1).await;
    let idle_from = Instant::now();
    wait_status(&h.tenants, &acme, ActorStatus::Passivated).await;
    let idle = idle_from.elapsed();
    assert!(
        idle >= Duration::from_secs(60) && idle <= Duration::from_secs(80),
        "passivated after its idle time: {idle:?}"
    );
    assert_eq!(
        status(&h.tenants, &busy).await,
        Some(ActorStatus::Passivated),
        "a tenant that never had work is passivated too"
    );

    // A record wakes it; the record is applied once.
    log.append(event("acme", 2, "u2", "eve"));
    wait_for("second record stored", || log.stored() == 2).await;
    assert_eq!(status(&h.tenants, &acme).await, Some(ActorStatus::Running));
    assert_eq!(h.store.users(&acme).len(), 2);

    // Work written elsewhere (a job) wakes it.
    wait_status(&h.tenants, &acme, ActorStatus::Passivated).await;
    h.tenants.wake(&acme);
    wait_status(&h.tenants, &acme, ActorStatus::Running).await;

    // A request wakes it and is answered.
    wait_status(&h.tenants, &acme, ActorStatus::Passivated).await;
    h.tenants
        .sync_progress(&acme, "u1", Duration::from_secs(60))
        .await
        .expect("a request to a passivated tenant is served");
    assert_eq!(status(&h.tenants, &acme).await, Some(ActorStatus::Running));

    // Revoking a passivated tenant forgets it; a later record does not start it here.
    wait_status(&h.tenants, &acme, ActorStatus::Passivated).await;
    h.tenants
        .revoke(vec![acme.clone()], Duration::from_secs(60))
        .await
        .unwrap();
    log.append(event("acme", 3, "u3", "bob"));
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(status(&h.tenants, &acme).await, None);
    assert_eq!(log.stored(), 2);
}

#[tokio::test(start_paused = true)]
async fn passivating_and_waking_keeps_the_tenants_rate_budget() {
    let upstream = Arc::new(TimedUpstream::default());
    let h = harness_with(
        PipelineSettings::default(),
        passivating(Duration::from_secs(2)),
        upstream.clone(),
    )
    .await;
    *h.store.quota.lock().unwrap() = Some(6); // one call per 10 s
    let acme = t("acme");
    h.assign(&acme);
    let mut wakes = 0;
    for round in 0..8 {
        // Each request wakes the passivated actor; its limiter is the one it had.
        h.tenants
            .sync_progress(&acme, "u1", Duration::from_secs(600))
            .await
            .unwrap();
        if round < 7 {
            wait_status(&h.tenants, &acme, ActorStatus::Passivated).await;
            wakes += 1;
        }
    }
    assert_eq!(wakes, 7);
    let calls = upstream.calls.lock().unwrap().clone();
    assert_eq!(calls.len(), 8);
    // Never more than the quota: 6 calls in any minute, burst 3 included.
    for (i, at) in calls.iter().enumerate() {
        let in_minute = calls[i..]
            .iter()
            .filter(|c| c.duration_since(*at) < Duration::from_secs(60))
            .count();
        assert!(
            in_minute <= 6 + 3,
            "{in_minute} calls in the minute after call {i}"
        );
    }
    for pair in calls.windows(2) {
        let gap = pair[1].duration_since(pair[0]);
        assert!(
            gap >= Duration::from_millis(9_990),
            "calls spaced by the tenant's interval across passivation: {gap:?}"
        );
    }
}

/// A harness whose supervisor admits assigned tenants passivated.
async fn starting_passivated() -> Harness {
    harness(
        PipelineSettings::default(),
        SupervisorSettings {
            passivate_after: Some(Duration::from_secs(60)),
            start_passivated: true,
            ..Default::default()
        },
    )
    .await
}

#[tokio::test(start_paused = true)]
async fn tenants_assigned_passivated_start_on_records_or_pending_work_only() {
    let h = starting_passivated().await;
    let (idle, backlog, queued) = (t("idle"), t("backlog"), t("queued"));
    let log = h.feeds.log(&backlog);
    for n in 0..5 {
        log.append(event("backlog", n, &format!("u{n}"), "b"));
    }
    // Work an earlier owner left: a queued job.
    crate::ports::TenantStore::enqueue_job(
        h.store.as_ref(),
        &queued,
        &crate::ports::NewJob {
            priority: crate::ports::JobPriority::Background,
            kind: crate::ports::JobKind::SyncProgress,
            subject: "u1".into(),
            payload: serde_json::Value::Null,
        },
    )
    .await
    .unwrap();
    h.tenants
        .assign(vec![idle.clone(), backlog.clone(), queued.clone()]);
    wait_for("backlog applied", || log.stored() == 5).await;
    wait_status(&h.tenants, &queued, ActorStatus::Running).await;
    assert_eq!(
        status(&h.tenants, &idle).await,
        Some(ActorStatus::Passivated),
        "a tenant without work never starts"
    );
    assert_eq!(h.store.users(&backlog).len(), 5);
}

#[tokio::test(start_paused = true)]
async fn a_failing_pending_work_check_is_asked_again_rather_than_starting_the_tenant() {
    let h = starting_passivated().await;
    // Two failed reads (a pool exhausted by thousands of tenants assigned at once).
    h.store.queue_depth_failures.store(2, Ordering::SeqCst);
    let idle = t("idle");
    h.tenants.assign(vec![idle.clone()]);
    wait_for("asked a third time", || {
        h.store.queue_depth_reads.load(Ordering::SeqCst) >= 3
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        status(&h.tenants, &idle).await,
        Some(ActorStatus::Passivated),
        "a transient store error is no work: the tenant stays passivated"
    );
}
