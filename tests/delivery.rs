//! Delivery guarantees with the real binary: crash (SIGKILL) and graceful stop (SIGTERM)
//! lose nothing and apply nothing twice; one tenant's flood never stalls another.

mod common;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use common::{eventually, push, read_topic, scim_event, tenant, Service, TestEnv};
use enablement::actors::{TenantId, TopicKind};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

/// `n` events over `users` users; every event changes the user's email, so every event is
/// one effective change. Returns the lines and, per user, the email of its last event.
fn workload(t: &TenantId, n: usize, users: usize) -> (Vec<String>, HashMap<String, String>) {
    let mut last = HashMap::new();
    let lines = (0..n)
        .map(|i| {
            let user = format!("u{}", i % users);
            let email = format!("{user}-v{i}@{t}.test");
            let op = if i < users { "CREATE" } else { "UPDATE" };
            last.insert(user.clone(), email.clone());
            scim_event(t.as_str(), &format!("{t}-{i}"), op, &user, i as u64, &email)
        })
        .collect();
    (lines, last)
}

async fn eventually_or_log<F, Fut>(_svc: &Service, timeout: Duration, mut probe: F) -> Option<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<()>>,
{
    let deadline = std::time::Instant::now() + timeout;
    while std::time::Instant::now() < deadline {
        if probe().await.is_some() {
            return Some(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}

fn ids_of(t: &TenantId, n: usize) -> HashSet<String> {
    (0..n).map(|i| format!("{t}-{i}")).collect()
}

async fn assert_exactly_once(
    env: &TestEnv,
    t: &TenantId,
    event_ids: &HashSet<String>,
    last: &HashMap<String, String>,
) {
    let n = event_ids.len();
    assert_eq!(
        env.processed(t).await,
        n as i64,
        "{t}: every event processed once"
    );
    assert_eq!(
        env.count(
            "select count(*) from outbox where tenant_id = $1 and topic = 'user_changed'",
            t
        )
        .await,
        n as i64,
        "{t}: one outbox row per effective change, none twice"
    );
    let rows = env
        .owner
        .query(
            "select user_id, email from users where tenant_id = $1",
            &[&t.as_str()],
        )
        .await
        .unwrap();
    let got: HashMap<String, String> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(&got, last, "{t}: final state is the last event per user");
    // Every change reached tenant.<id>.user_changed (duplicates allowed, loss not).
    let ids = eventually("outbox fully relayed", Duration::from_secs(60), || async {
        let unsent = env
            .count(
                "select count(*) from outbox where tenant_id = $1
                   and seq > (select relayed_seq from outbox_relay where tenant_id = $1)",
                t,
            )
            .await;
        if unsent > 0 {
            return None;
        }
        let recs = read_topic(&env.config, t, TopicKind::UserChanged).await;
        let ids: HashSet<String> = recs
            .iter()
            .filter_map(|r| r["payload"]["eventId"].as_str().map(str::to_owned))
            .collect();
        (ids.len() >= n).then_some(ids)
    })
    .await;
    assert_eq!(
        &ids, event_ids,
        "{t}: exactly the applied events were announced"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_stream_loses_nothing_and_applies_nothing_twice() {
    let env = TestEnv::new().await;
    let tenants: Vec<TenantId> = (0..3).map(|i| tenant(&format!("kill{i}"))).collect();
    for t in &tenants {
        env.add_tenant(t).await;
    }
    const N: usize = 1500;
    let loads: Vec<_> = tenants.iter().map(|t| workload(t, N, 150)).collect();
    // First half before the crash, small batches so the crash lands between transactions.
    let small_batches = [("ENABLEMENT__PIPELINE__MAX_BATCH_EVENTS", "25")];
    for (t, (lines, _)) in tenants.iter().zip(&loads) {
        push(&env.config, t, &lines[..N / 2]).await;
    }
    let mut svc = Service::start(&env, &small_batches);
    let victim = &tenants[0];
    eventually("processing under way", Duration::from_secs(60), || async {
        let done = env.processed(victim).await;
        (done > 0).then_some(())
    })
    .await;
    svc.kill();
    let at_kill: Vec<i64> = {
        let mut v = Vec::new();
        for t in &tenants {
            v.push(env.processed(t).await);
        }
        v
    };
    assert!(
        at_kill.iter().any(|&d| (d as usize) < N / 2),
        "the crash must land mid-stream: {at_kill:?}"
    );
    // The rest arrives while the service is down; then it restarts.
    for (t, (lines, _)) in tenants.iter().zip(&loads) {
        push(&env.config, t, &lines[N / 2..]).await;
    }
    let svc = Service::start(&env, &small_batches);
    for t in &tenants {
        let done = eventually_or_log(&svc, Duration::from_secs(120), || async {
            (env.processed(t).await == N as i64).then_some(())
        })
        .await;
        assert!(
            done.is_some(),
            "{t}: not all events applied after restart ({} of {N})\n{}",
            env.processed(t).await,
            svc.log()
        );
    }
    for (t, (_, last)) in tenants.iter().zip(&loads) {
        assert_exactly_once(&env, t, &ids_of(t, N), last).await;
    }
    drop(svc);
}

fn committed_offset(env: &TestEnv, t: &TenantId) -> Option<i64> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &env.config.kafka.brokers)
        .set("group.id", &env.config.kafka.group_id)
        .create()
        .unwrap();
    let topic = t.topic(&env.config.kafka.topic_prefix, TopicKind::Scim);
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(&topic, 0);
    let got = consumer
        .committed_offsets(tpl, Duration::from_secs(10))
        .unwrap();
    match got.find_partition(&topic, 0)?.offset() {
        Offset::Offset(n) => Some(n),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_commits_and_exits_zero_so_nothing_is_reapplied() {
    let env = TestEnv::new().await;
    let t = tenant("term");
    env.add_tenant(&t).await;
    const N: usize = 400;
    let (lines, last) = workload(&t, N, 40);
    let mut svc = Service::start(&env, &[]);
    svc.wait_ready(&[&t]).await;
    push(&env.config, &t, &lines).await;
    eventually("applied", Duration::from_secs(60), || async {
        (env.processed(&t).await == N as i64).then_some(())
    })
    .await;
    let status = svc.terminate(Duration::from_secs(30));
    assert!(status.success(), "exit status {status:?}\n{}", svc.log());
    assert!(svc.log().contains("shutdown complete"));
    assert_eq!(
        committed_offset(&env, &t),
        Some(N as i64),
        "offsets committed on SIGTERM"
    );

    // A new process starts from the committed offset: nothing is seen twice.
    let svc = Service::start(&env, &[]);
    svc.wait_ready(&[&t]).await;
    push(
        &env.config,
        &t,
        &[scim_event(
            t.as_str(),
            "after",
            "UPDATE",
            "u1",
            10_000,
            "after@x.test",
        )],
    )
    .await;
    eventually("new event applied", Duration::from_secs(30), || async {
        (env.processed(&t).await == N as i64 + 1).then_some(())
    })
    .await;
    let label = |o: &str| format!("enablement_scim_events_total{{tenant=\"{t}\",outcome=\"{o}\"}}");
    let applied = eventually("metrics", Duration::from_secs(10), || async {
        let v = svc.metric(&label("applied")).await;
        (v > 0.0).then_some(v)
    })
    .await;
    assert_eq!(applied, 1.0);
    assert_eq!(
        svc.metric(&label("duplicate")).await,
        0.0,
        "nothing re-read after restart"
    );
    let mut last = last;
    last.insert("u1".into(), "after@x.test".into());
    let mut ids = ids_of(&t, N);
    ids.insert("after".into());
    assert_exactly_once(&env, &t, &ids, &last).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_tenants_flood_never_stalls_another() {
    let env = TestEnv::new().await;
    let (flood, quiet) = (tenant("flood"), tenant("quiet"));
    env.add_tenant(&flood).await;
    env.add_tenant(&quiet).await;
    const FLOOD: usize = 30_000;
    let (lines, _) = workload(&flood, FLOOD, 1000);
    push(&env.config, &flood, &lines).await; // the backlog waits in the broker
    let svc = Service::start(
        &env,
        &[
            ("ENABLEMENT__PIPELINE__HIGH_WATER_MESSAGES", "1000"),
            ("ENABLEMENT__PIPELINE__LOW_WATER_MESSAGES", "200"),
            ("ENABLEMENT__PIPELINE__MAX_BATCH_EVENTS", "200"),
        ],
    );
    svc.wait_ready(&[&flood, &quiet]).await;
    eventually("flood under way", Duration::from_secs(60), || async {
        (env.processed(&flood).await > 0).then_some(())
    })
    .await;
    let quiet_lines: Vec<String> = (0..10)
        .map(|i| {
            scim_event(
                quiet.as_str(),
                &format!("q{i}"),
                "CREATE",
                &format!("q{i}"),
                i,
                "q@q.test",
            )
        })
        .collect();
    push(&env.config, &quiet, &quiet_lines).await;
    eventually("quiet tenant applied", Duration::from_secs(60), || async {
        (env.processed(&quiet).await == 10).then_some(())
    })
    .await;
    let flood_done = env.processed(&flood).await;
    assert!(
        (flood_done as usize) < FLOOD,
        "the quiet tenant must complete while the flood is still draining ({flood_done}/{FLOOD})"
    );
    eventually("flood drained", Duration::from_secs(180), || async {
        (env.processed(&flood).await == FLOOD as i64).then_some(())
    })
    .await;
    let pauses = format!("enablement_tenant_partition_pauses_total{{tenant=\"{flood}\"}}");
    assert!(
        svc.metric(&pauses).await >= 1.0,
        "the flooded partition was paused at high water"
    );
}

#[test]
fn a_bad_config_stops_the_start_naming_the_key() {
    let run = |vars: &[(&str, &str)]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_enablement"))
            .args([
                "--config",
                concat!(env!("CARGO_MANIFEST_DIR"), "/config.toml"),
                "serve",
            ])
            .envs(vars.iter().copied())
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, err) = run(&[("ENABLEMENT__KAFKA__BROKERZ", "x")]);
    assert_eq!(code, Some(2));
    assert!(err.contains("brokerz"), "{err}");
    // The operator token config.toml ships is refused unless development is declared.
    let (code, err) = run(&[]);
    assert_eq!(code, Some(2));
    assert!(
        err.contains("http.operator_token") && err.contains("ALLOW_DEV_TOKEN"),
        "{err}"
    );
    let (code, err) = run(&[("ENABLEMENT__HTTP__LISTEN", "nowhere")]);
    assert_eq!(code, Some(2));
    assert!(err.contains("http.listen"), "{err}");
    let (code, err) = run(&[("ENABLEMENT__PIPELINE__HIGH_WATER_MESSAGES", "10")]);
    assert_eq!(code, Some(2));
    assert!(err.contains("pipeline.low_water_messages"), "{err}");
}
