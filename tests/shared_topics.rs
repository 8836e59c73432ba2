//! Tenants on the shared topics (`tenant add --shared-topics`) against the real service,
//! broker, database and cache: their records arrive on `<prefix>shared.scim` keyed by
//! tenant id and go through the same pipeline as a tenant's own topic; records naming no
//! tenant of their partition are dead-lettered on the shared DLQ and never applied to any
//! tenant; a suspended shared tenant's records are dead-lettered while its neighbours
//! flow; two instances share the shared partitions and a SIGKILLed one loses nothing.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::{
    assert_effects_once_on, eventually, push, push_shared, read_tenant_records, scim_event, tenant,
    unique, Service, TestEnv,
};
use enablement::actors::{TenantId, TopicKind};
use enablement::kafka::{base_client_config, shared_topic};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use serde_json::Value;

const PARTITIONS: i32 = 4;

fn events(t: &TenantId, from: usize, n: usize) -> Vec<String> {
    (from..from + n)
        .map(|i| {
            scim_event(
                t.as_str(),
                &format!("{t}-e{i}"),
                "CREATE",
                &format!("u{i}"),
                0,
                &format!("u{i}@x.test"),
            )
        })
        .collect()
}

/// A test world whose topics no other test reads: its own topic prefix.
async fn shared_env() -> TestEnv {
    let mut env = TestEnv::new().await;
    env.config.kafka.topic_prefix = format!("{}.", unique("st"));
    env.config.kafka.shared_topic_partitions = PARTITIONS;
    env
}

/// Produces one raw record on a partition of the shared inbound topic.
async fn produce_raw(env: &TestEnv, key: Option<&str>, partition: i32, payload: &str) {
    let producer: FutureProducer = base_client_config(&env.config.kafka)
        .create()
        .expect("producer");
    let topic = shared_topic(&env.config.kafka.topic_prefix, TopicKind::Scim);
    let mut rec = FutureRecord::to(&topic)
        .partition(partition)
        .payload(payload);
    if let Some(k) = key {
        rec = rec.key(k);
    }
    producer
        .send(rec, Duration::from_secs(30))
        .await
        .map_err(|(e, _)| e)
        .expect("produce raw");
}

/// Every record of every partition of a topic: (partition, key, headers).
fn read_all(env: &TestEnv, topic: &str) -> Vec<(i32, Option<String>, BTreeMap<String, String>)> {
    let consumer: BaseConsumer = base_client_config(&env.config.kafka)
        .set("group.id", unique("reader"))
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    let mut ends = BTreeMap::new();
    for p in 0..PARTITIONS {
        let (low, high) = consumer
            .fetch_watermarks(topic, p, Duration::from_secs(10))
            .expect("watermarks");
        if high > low {
            ends.insert(p, high);
            tpl.add_partition_offset(topic, p, Offset::Beginning)
                .expect("tpl");
        }
    }
    let mut out = Vec::new();
    if ends.is_empty() {
        return out;
    }
    consumer.assign(&tpl).expect("assign");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut done = BTreeSet::new();
    while done.len() < ends.len() && std::time::Instant::now() < deadline {
        let Some(Ok(m)) = consumer.poll(Duration::from_millis(500)) else {
            continue;
        };
        let headers = m
            .headers()
            .map(|hs| {
                hs.iter()
                    .map(|h| {
                        (
                            h.key.to_owned(),
                            String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        out.push((
            m.partition(),
            m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
            headers,
        ));
        if m.offset() + 1 >= ends[&m.partition()] {
            done.insert(m.partition());
        }
    }
    out
}

/// The shared DLQ's records by `dlq.reason`.
fn dead_letters_by_reason(env: &TestEnv) -> BTreeMap<String, usize> {
    let topic = shared_topic(&env.config.kafka.topic_prefix, TopicKind::Dlq);
    let mut by = BTreeMap::new();
    for (_, _, h) in read_all(env, &topic) {
        *by.entry(h.get("dlq.reason").cloned().unwrap_or_default())
            .or_insert(0) += 1;
    }
    by
}

async fn readyz(svc: &Service) -> Option<Value> {
    let (_, body) = svc.get("/readyz").await?;
    serde_json::from_str(&body).ok()
}

async fn owned(svc: &Service) -> BTreeSet<String> {
    readyz(svc)
        .await
        .and_then(|v| {
            v["consumer_group"]["owned"].as_array().map(|a| {
                a.iter()
                    .filter_map(|t| t.as_str().map(str::to_owned))
                    .collect()
            })
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_tenants_flow_and_records_naming_no_tenant_of_the_partition_are_dead_lettered() {
    let env = shared_env().await;
    let (a, b, c) = (tenant("sha"), tenant("shb"), tenant("shc"));
    let own = tenant("own");
    for t in [&a, &b, &c] {
        env.add_shared_tenant(t).await;
    }
    env.add_tenant(&own).await;
    // Shared tenants start passivated: their records wake them.
    let svc = Service::start_role(
        &env,
        "all",
        &[("ENABLEMENT__SUPERVISOR__START_PASSIVATED", "true")],
    );
    for t in [&a, &b, &c] {
        push_shared(&env.config, t, &events(t, 0, 20)).await;
    }
    push(&env.config, &own, &events(&own, 0, 5)).await;

    // Poison on the shared topic, each on the partition its key (if any) hashes to.
    let pa = a.shared_partition(PARTITIONS);
    produce_raw(&env, None, pa, "{}").await;
    produce_raw(&env, Some("Not*A*Tenant"), pa, "{}").await;
    let ghost = tenant("ghost");
    produce_raw(
        &env,
        Some(ghost.as_str()),
        ghost.shared_partition(PARTITIONS),
        "{}",
    )
    .await;
    // A record naming a tenant with its own topics: never applied to it.
    let forged = events(&own, 100, 1).remove(0);
    produce_raw(
        &env,
        Some(own.as_str()),
        own.shared_partition(PARTITIONS),
        &forged,
    )
    .await;
    // A's id on a partition it does not hash to (a producer not using the default
    // partitioner): applying it would break A's order.
    let wrong = (pa + 1) % PARTITIONS;
    let stray = events(&a, 200, 1).remove(0);
    produce_raw(&env, Some(a.as_str()), wrong, &stray).await;
    // Records after the poison still flow.
    push_shared(&env.config, &a, &events(&a, 20, 5)).await;

    for (t, n) in [(&a, 25), (&b, 20), (&c, 20), (&own, 5)] {
        eventually(
            &format!("{t}: {n} events applied"),
            Duration::from_secs(90),
            || async { (env.processed(t).await == n).then_some(()) },
        )
        .await;
    }
    let dead = eventually(
        "five poison records on the shared DLQ",
        Duration::from_secs(60),
        || async {
            let by = dead_letters_by_reason(&env);
            (by.values().sum::<usize>() == 5).then_some(by)
        },
    )
    .await;
    let expected: BTreeMap<String, usize> = [
        ("no_tenant_key", 2),
        ("unknown_tenant", 1),
        ("tenant_has_own_topics", 1),
        ("wrong_partition", 1),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    assert_eq!(dead, expected);
    assert!(
        svc.metric("enablement_tenant_wakes_total{reason=\"record\"}")
            .await
            >= 3.0,
        "passivated shared tenants woken by their records"
    );

    // Each shared tenant's effects once, on its partition, with its tenant header.
    for (t, n) in [(&a, 25), (&b, 20), (&c, 20)] {
        assert_effects_once_on(&env, t, n, true).await;
        let changed = read_tenant_records(&env.config, t, TopicKind::UserChanged, true).await;
        assert_eq!(changed.len() as i64, n, "{t}");
        assert!(changed.iter().all(|r| r["headers"]["tenant"] == t.as_str()));
    }
    let topic = shared_topic(&env.config.kafka.topic_prefix, TopicKind::UserChanged);
    for (p, _, h) in read_all(&env, &topic) {
        let t = TenantId::parse(&h["tenant"]).expect("tenant header");
        assert_eq!(p, t.shared_partition(PARTITIONS), "{t} on its partition");
    }
    // The forged record never reached the tenant with its own topics.
    assert_effects_once_on(&env, &own, 5, false).await;
    assert_eq!(
        env.count(
            "select count(*) from processed_events where tenant_id = $1 and event_id like '%-e100'",
            &own
        )
        .await,
        0
    );

    // Suspending a shared tenant: its later records are dead-lettered, its neighbours flow.
    common::cli_ok(&env, &["tenant", "suspend", c.as_str()]);
    eventually(
        "the suspended shared tenant is no longer owned",
        Duration::from_secs(60),
        || async { (!owned(&svc).await.contains(c.as_str())).then_some(()) },
    )
    .await;
    push_shared(&env.config, &c, &events(&c, 20, 3)).await;
    push_shared(&env.config, &b, &events(&b, 20, 3)).await;
    eventually(
        "the neighbour's records applied",
        Duration::from_secs(60),
        || async { (env.processed(&b).await == 23).then_some(()) },
    )
    .await;
    eventually(
        "the suspended tenant's records dead-lettered",
        Duration::from_secs(60),
        || async {
            (dead_letters_by_reason(&env).get("tenant_suspended") == Some(&3)).then_some(())
        },
    )
    .await;
    assert_eq!(env.processed(&c).await, 20);
    drop(svc);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_share_the_shared_partitions_and_a_sigkill_loses_nothing() {
    let env = shared_env().await;
    // Two tenants on each shared partition, so each instance's half of the partitions
    // holds tenants whichever half it gets.
    let mut tenants: Vec<TenantId> = Vec::new();
    let mut per_partition = [0; PARTITIONS as usize];
    let mut i = 0;
    while tenants.len() < 2 * PARTITIONS as usize {
        let t = tenant(&format!("sh{i}"));
        let p = t.shared_partition(PARTITIONS) as usize;
        if per_partition[p] < 2 {
            per_partition[p] += 1;
            tenants.push(t);
        }
        i += 1;
    }
    for t in &tenants {
        env.add_shared_tenant(t).await;
    }
    let ids: BTreeSet<String> = tenants.iter().map(|t| t.to_string()).collect();
    // Two members of one group: each its own static id.
    let id_one = unique("one");
    let id_two = unique("two");
    let mut one = Service::start_role(
        &env,
        "consumer",
        &[("ENABLEMENT__KAFKA__GROUP_INSTANCE_ID", id_one.as_str())],
    );
    let two = Service::start_role(
        &env,
        "consumer",
        &[("ENABLEMENT__KAFKA__GROUP_INSTANCE_ID", id_two.as_str())],
    );
    // Every shared tenant runs on exactly one of the two.
    eventually(
        "the shared tenants split over both instances",
        Duration::from_secs(90),
        || async {
            let (x, y) = (owned(&one).await, owned(&two).await);
            let both: BTreeSet<String> = x.union(&y).cloned().collect();
            (x.is_disjoint(&y) && both == ids && !x.is_empty() && !y.is_empty()).then_some(())
        },
    )
    .await;
    let per_tenant = 150;
    for t in &tenants {
        push_shared(&env.config, t, &events(t, 0, per_tenant)).await;
    }
    // Mid-flood: the first instance dies without draining.
    eventually("some events applied", Duration::from_secs(60), || async {
        let mut total = 0;
        for t in &tenants {
            total += env.processed(t).await;
        }
        (total > 0).then_some(())
    })
    .await;
    one.kill();
    // Records after the kill: applied only once the survivor took the dead one's partitions.
    let more = 50;
    for t in &tenants {
        push_shared(&env.config, t, &events(t, per_tenant, more)).await;
    }
    let total = (per_tenant + more) as i64;
    for t in &tenants {
        eventually(
            &format!("{t}: every event applied after the kill"),
            Duration::from_secs(180),
            || async { (env.processed(t).await == total).then_some(()) },
        )
        .await;
    }
    assert_eq!(
        owned(&two).await,
        ids,
        "the survivor owns every shared tenant"
    );
    for t in &tenants {
        assert_effects_once_on(&env, t, total, true).await;
    }
    drop(two);
}
