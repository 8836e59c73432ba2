//! Faults in the middle of a stream: PostgreSQL restarted, the broker SIGKILLed and
//! restarted (durable storage), the service SIGKILLed at random points (some land between
//! a batch's commit and its publish), Redis stopped, the broker frozen past the group's
//! session timeout. Afterwards every event is applied exactly once, every effect is on its
//! topic exactly once, and no tenant is parked.
//!
//! How the dependencies are restarted, on a developer machine and in CI alike:
//! - the broker is this test's own `tansu` process (`common::Broker`, its own port and a
//!   fresh SQLite file), SIGKILLed and started again on the same storage, or SIGSTOPped;
//! - PostgreSQL is the machine's server, restarted with `pg_ctlcluster <version> main
//!   restart` (Debian's wrapper; run as root, as `scripts/test.sh` and CI are). cargo runs
//!   test binaries one after another, and the tests of this binary take a lock, so no
//!   other test sees the restart;
//! - Redis is the machine's server on 6379, stopped with `redis-cli shutdown nosave` (it
//!   keeps nothing) and started again with `redis-server --daemonize yes`.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{assert_effects_once, eventually, push, scim_event, tenant, Broker, Service, TestEnv};
use enablement::actors::TenantId;

/// Tests here restart shared services: one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn restart_postgres() {
    postgres("restart");
}

/// `pg_ctlcluster <version> main <action>` on the machine's cluster.
fn postgres(action: &str) {
    let version = std::fs::read_dir("/etc/postgresql")
        .expect("Debian PostgreSQL layout (/etc/postgresql)")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .next()
        .expect("a PostgreSQL cluster");
    let ok = Command::new("pg_ctlcluster")
        .args(["--skip-systemctl-redirect", &version, "main", action])
        .status()
        .expect("pg_ctlcluster")
        .success();
    assert!(ok, "PostgreSQL {action} failed");
}

/// PostgreSQL stopped until this is dropped (also when the test fails meanwhile).
struct PostgresDown;

impl PostgresDown {
    fn stop() -> Self {
        postgres("stop");
        PostgresDown
    }
}

impl Drop for PostgresDown {
    fn drop(&mut self) {
        postgres("start");
    }
}

fn stop_redis() {
    let _ = Command::new("redis-cli")
        .args(["-p", "6379", "shutdown", "nosave"])
        .status();
}

fn start_redis() {
    let ok = Command::new("redis-server")
        .args([
            "--daemonize",
            "yes",
            "--bind",
            "127.0.0.1",
            "--port",
            "6379",
        ])
        .args(["--save", "", "--appendonly", "no", "--dir", "/tmp"])
        .args(["--logfile", "/tmp/enablement-faults-redis.log"])
        .status()
        .expect("redis-server")
        .success();
    assert!(ok, "Redis did not start");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect("127.0.0.1:6379").is_err() {
        assert!(Instant::now() < deadline, "Redis did not open 6379");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn chunk(t: &TenantId, from: usize, to: usize) -> Vec<String> {
    (from..to)
        .map(|i| {
            let op = if i % 7 == 6 { "UPDATE" } else { "CREATE" };
            // Every event changes its user: each one is an outbox row and a user_changed record.
            let email = format!("f{i}@f.test");
            scim_event(
                t.as_str(),
                &format!("f{i}"),
                op,
                &format!("u{}", i % 400),
                i as u64,
                &email,
            )
        })
        .collect()
}

async fn total(env: &TestEnv, tenants: &[TenantId]) -> i64 {
    let mut n = 0;
    for t in tenants {
        n += env.processed(t).await;
    }
    n
}

/// Waits until at least `n` events are applied across `tenants`; returns how long it took.
async fn applied_at_least(env: &TestEnv, tenants: &[TenantId], n: i64, what: &str) -> Duration {
    let started = Instant::now();
    eventually(what, Duration::from_secs(240), || async {
        (total(env, tenants).await >= n).then_some(())
    })
    .await;
    started.elapsed()
}

/// A few hundred milliseconds, different every time: where a SIGKILL lands.
fn jitter() -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    Duration::from_millis(50 + u64::from(nanos % 700))
}

fn service(env: &TestEnv, broker: &Broker) -> Service {
    // FAULTS_RUST_LOG (e.g. "info,librdkafka=debug" with ENABLEMENT__KAFKA__LIBRDKAFKA_DEBUG)
    // turns the service's log up when a run needs diagnosing.
    let log = std::env::var("FAULTS_RUST_LOG")
        .unwrap_or_else(|_| "info,librdkafka=warn,rdkafka=warn".into());
    Service::start(
        env,
        &[
            ("RUST_LOG", log.as_str()),
            ("ENABLEMENT__KAFKA__BROKERS", broker.address().as_str()),
            // Small batches: many commits, so kills land between a commit and its publish.
            ("ENABLEMENT__PIPELINE__MAX_BATCH_EVENTS", "40"),
            ("ENABLEMENT__KAFKA__GROUP_WEDGED_AFTER_SESSIONS", "2"),
            ("ENABLEMENT__KAFKA__STATISTICS_INTERVAL_MS", "1000"),
            ("ENABLEMENT__SUPERVISOR__MAX_CONSECUTIVE_FAILURES", "8"),
        ],
    )
}

/// Polls (every 20 ms) until at least `n` events are applied: a fault started right after
/// lands while the rest of the backlog is still flowing.
async fn when_applied(env: &TestEnv, tenants: &[TenantId], n: i64) {
    let deadline = Instant::now() + Duration::from_secs(240);
    while total(env, tenants).await < n {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {n} applied events"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarts_and_kills_mid_stream_lose_nothing_and_apply_nothing_twice() {
    let _serial = SERIAL.lock().await;
    let mut broker = Broker::start(true);
    let mut env = TestEnv::new().await;
    env.config.kafka.brokers = broker.address();
    let tenants: Vec<TenantId> = (0..4).map(|_| tenant("fault")).collect();
    for t in &tenants {
        env.add_tenant(t).await;
    }
    const PER_TENANT: usize = 6000;
    const CHUNK: usize = PER_TENANT / 4;
    let n = tenants.len() as i64;
    let chunk_total = n * CHUNK as i64;
    let mut report = Vec::new();

    // 1. PostgreSQL restarts while the first chunk flows: batches wait it out.
    for t in &tenants {
        push(&env.config, t, &chunk(t, 0, CHUNK)).await;
    }
    let mut svc = service(&env, &broker);
    when_applied(&env, &tenants, chunk_total / 5).await;
    let started = Instant::now();
    let in_flight = chunk_total - total(&env, &tenants).await;
    restart_postgres();
    env.reconnect_owner().await;
    applied_at_least(
        &env,
        &tenants,
        chunk_total,
        "chunk 1 after the PostgreSQL restart",
    )
    .await;
    report.push(("PostgreSQL restart", in_flight, started.elapsed()));
    let retries = svc
        .metric("enablement_scim_batch_retries_total{reason=\"transient\"}")
        .await;
    assert!(
        retries > 0.0,
        "the restart hit batches in flight (retried {retries})"
    );

    // 2-3. The service is SIGKILLed twice while a backlog drains.
    for (round, part) in [(1usize, "first"), (2, "second")] {
        svc.kill();
        for t in &tenants {
            push(
                &env.config,
                t,
                &chunk(t, round * CHUNK, (round + 1) * CHUNK),
            )
            .await;
        }
        svc = service(&env, &broker);
        let base = chunk_total * round as i64;
        when_applied(&env, &tenants, base + chunk_total / 4).await;
        tokio::time::sleep(jitter()).await;
        let in_flight = base + chunk_total - total(&env, &tenants).await;
        let started = Instant::now();
        svc.kill();
        svc = service(&env, &broker);
        applied_at_least(&env, &tenants, base + chunk_total, part).await;
        report.push(("service SIGKILL", in_flight, started.elapsed()));
    }

    // 4. The broker is SIGKILLed and restarted on its durable storage mid-stream, and
    //    Redis is down meanwhile (roster invalidations fail and are counted).
    stop_redis();
    for t in &tenants {
        push(&env.config, t, &chunk(t, 3 * CHUNK, PER_TENANT)).await;
    }
    let base = chunk_total * 3;
    when_applied(&env, &tenants, base + chunk_total / 5).await;
    let in_flight = base + chunk_total - total(&env, &tenants).await;
    let started = Instant::now();
    broker.kill_and_restart();
    applied_at_least(
        &env,
        &tenants,
        base + chunk_total,
        "chunk 4 after a broker restart",
    )
    .await;
    report.push((
        "broker SIGKILL and restart, Redis down",
        in_flight,
        started.elapsed(),
    ));
    let cache_errors = svc
        .metric("enablement_cache_errors_total{operation=\"invalidate\"}")
        .await;
    start_redis();
    assert!(cache_errors > 0.0, "Redis was down while batches committed");

    for (fault, in_flight, drained) in &report {
        println!("{fault}: {in_flight} events in flight, drained in {drained:?}");
    }
    for t in &tenants {
        assert_eq!(
            env.processed(t).await,
            PER_TENANT as i64,
            "{t}: each event applied once"
        );
        assert_effects_once(&env, t, PER_TENANT as i64).await;
        assert_eq!(
            env.count("select count(*) from users where tenant_id = $1", t)
                .await,
            400
        );
    }
    let (status, body) = svc.get("/readyz").await.expect("readyz");
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["tenants"]["parked"], 0, "{body}");
    assert_eq!(v["tenants"]["not_running"], serde_json::json!([]), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_frozen_past_the_session_timeout_is_detected_and_recovered() {
    let _serial = SERIAL.lock().await;
    // Durable storage: after a freeze, the in-memory engine of the development broker was
    // seen answering a fetch in the middle of a record batch from the next batch (records
    // skipped, broker-side); the SQLite engine answers from the requested offset.
    let broker = Broker::start(true);
    let mut env = TestEnv::new().await;
    env.config.kafka.brokers = broker.address();
    let tenants: Vec<TenantId> = (0..2).map(|_| tenant("frozen")).collect();
    for t in &tenants {
        env.add_tenant(t).await;
    }
    let svc = service(&env, &broker);
    svc.wait_ready(&tenants.iter().collect::<Vec<_>>()).await;
    for t in &tenants {
        push(&env.config, t, &chunk(t, 0, 600)).await;
    }
    applied_at_least(&env, &tenants, 100, "first events").await;
    // Frozen longer than the 10 s session: the coordinator evicts the member; on the
    // static rejoin the development broker can wedge the group for good.
    broker.freeze();
    tokio::time::sleep(Duration::from_secs(14)).await;
    broker.thaw();
    for t in &tenants {
        push(&env.config, t, &chunk(t, 600, 900)).await;
    }
    let d = applied_at_least(&env, &tenants, 1800, "everything after the freeze").await;
    println!("broker frozen 14 s: drained {d:?} after the thaw");
    for t in &tenants {
        assert_effects_once(&env, t, 900).await;
    }
    let (status, body) = svc.get("/readyz").await.expect("readyz");
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        v["consumer_group"]["wedged"],
        serde_json::Value::Null,
        "{body}"
    );
    println!("consumer group after the freeze: {}", v["consumer_group"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_static_member_handed_a_foreign_assignment_still_consumes_its_own_tenants() {
    let _serial = SERIAL.lock().await;
    let broker = Broker::start(false);
    // A static member that comes back with a changed subscription: a broker that keeps the
    // member's previous assignment (nisshi 0.8.1 was seen doing so) hands it topics it no
    // longer subscribes to. The service ignores them and, if it lasts, re-creates its
    // consumer as a fresh member; on a broker without that defect nothing happens.
    let mut env = TestEnv::new().await;
    env.config.kafka.brokers = broker.address();
    let start = |env: &TestEnv| {
        Service::start(
            env,
            &[
                ("ENABLEMENT__KAFKA__BROKERS", broker.address().as_str()),
                ("ENABLEMENT__KAFKA__GROUP_WEDGED_AFTER_SESSIONS", "2"),
                ("ENABLEMENT__KAFKA__STATISTICS_INTERVAL_MS", "1000"),
            ],
        )
    };
    let (old, new) = (tenant("old"), tenant("new"));
    env.add_tenant(&old).await;
    let mut svc = start(&env);
    svc.wait_ready(&[&old]).await;
    assert!(svc.terminate(Duration::from_secs(60)).success());
    common::cli_ok(&env, &["tenant", "suspend", old.as_str()]);
    env.add_tenant(&new).await;
    let svc = start(&env);
    push(&env.config, &new, &chunk(&new, 0, 50)).await;
    push(&env.config, &old, &chunk(&old, 0, 20)).await;
    applied_at_least(
        &env,
        std::slice::from_ref(&new),
        50,
        "the new tenant's events",
    )
    .await;
    assert_effects_once(&env, &new, 50).await;
    assert_eq!(
        env.processed(&old).await,
        0,
        "nothing of the suspended tenant applied"
    );
    let (_, body) = svc.get("/readyz").await.expect("readyz");
    println!("consumer group: {body}");
}

/// SCIM writes over HTTP while PostgreSQL restarts, then while it is down (the provider's
/// write transactions send their COMMIT with their writes): every write is answered, 200,
/// or 503 with a SCIM error body while the database is away (never a hang, a 500 or a
/// wrong answer); writes go through again once it is back, without restarting the service;
/// and every acknowledged PATCH is kept: each writer's user holds its last acknowledged
/// value or one it sent after that (a write answered 503 may have committed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scim_writes_across_a_postgres_restart_are_answered_and_acknowledged_ones_kept() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;

    let _serial = SERIAL.lock().await;
    let mut env = TestEnv::new().await;
    let (t, _, token) = env.add_scim_tenant("scimpg").await;
    let svc = Service::start_role(&env, "api", &[]);
    svc.wait_up().await;
    let base = format!("{}/scim/v2/{t}", svc.base_url);
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client");
    const WRITERS: usize = 4;
    let mut ids = Vec::new();
    for c in 0..WRITERS {
        let body = serde_json::json!({
            "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
            "userName": format!("pg{c}@acme.test"), "active": true});
        let r = client
            .post(format!("{base}/Users"))
            .bearer_auth(&token)
            .header("content-type", "application/scim+json")
            .body(body.to_string())
            .send()
            .await
            .expect("create");
        assert_eq!(r.status().as_u16(), 201);
        let v: serde_json::Value = r.json().await.expect("created");
        ids.push(v["id"].as_str().expect("id").to_owned());
    }

    // Each writer PATCHes its own user in sequence: title "c<writer>-<n>".
    let stop = Arc::new(AtomicBool::new(false));
    let acked: Arc<Vec<AtomicU64>> = Arc::new((0..WRITERS).map(|_| AtomicU64::new(0)).collect());
    let refused = Arc::new(AtomicU64::new(0));
    let mut writers = tokio::task::JoinSet::new();
    for (c, id) in ids.iter().cloned().enumerate() {
        let (client, base, token) = (client.clone(), base.clone(), token.clone());
        let (stop, acked, refused) = (stop.clone(), acked.clone(), refused.clone());
        writers.spawn(async move {
            let (mut n, mut last_acked, mut unavailable) = (0u64, 0u64, 0u64);
            while !stop.load(Ordering::SeqCst) {
                n += 1;
                let body = serde_json::json!({
                    "schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
                    "Operations": [{"op": "replace", "path": "title", "value": format!("c{c}-{n}")}]});
                let r = client
                    .patch(format!("{base}/Users/{id}"))
                    .bearer_auth(&token)
                    .header("content-type", "application/scim+json")
                    .body(body.to_string())
                    .send()
                    .await
                    .expect("answered within 30 s");
                let status = r.status().as_u16();
                let v: serde_json::Value = r.json().await.unwrap_or_default();
                match status {
                    200 => {
                        assert_eq!(v["title"], format!("c{c}-{n}"), "answered with its write");
                        last_acked = n;
                        acked[c].fetch_add(1, Ordering::SeqCst);
                    }
                    503 => {
                        assert_eq!(
                            v["schemas"][0], "urn:ietf:params:scim:api:messages:2.0:Error",
                            "a SCIM error body: {v}"
                        );
                        unavailable += 1;
                        refused.fetch_add(1, Ordering::SeqCst);
                        // Not a synchronisation: a client's pause before it tries again.
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    other => panic!("write {n} of writer {c} answered {other}: {v}"),
                }
            }
            (c, last_acked, n, unavailable)
        });
    }
    let before = acked.clone();
    eventually("writes before the restart", Duration::from_secs(60), || {
        let ok = before.iter().all(|a| a.load(Ordering::SeqCst) >= 5);
        async move { ok.then_some(()) }
    })
    .await;
    // A restart (about 150 ms here: the pool usually waits it out, or the writes in flight
    // get 503), then the database down until writes have been refused.
    tokio::task::spawn_blocking(restart_postgres)
        .await
        .expect("restart");
    let down = tokio::task::spawn_blocking(PostgresDown::stop)
        .await
        .expect("stop");
    eventually(
        "a write refused while PostgreSQL is down",
        Duration::from_secs(60),
        || {
            let n = refused.load(Ordering::SeqCst);
            async move { (n > 0).then_some(()) }
        },
    )
    .await;
    tokio::task::spawn_blocking(move || drop(down))
        .await
        .expect("start");
    let after: Vec<u64> = acked.iter().map(|a| a.load(Ordering::SeqCst)).collect();
    eventually("writes after the restart", Duration::from_secs(60), || {
        let ok = acked
            .iter()
            .zip(&after)
            .all(|(a, before)| a.load(Ordering::SeqCst) >= before + 5);
        async move { ok.then_some(()) }
    })
    .await;
    stop.store(true, Ordering::SeqCst);
    let mut outcomes = Vec::new();
    while let Some(done) = writers.join_next().await {
        outcomes.push(done.expect("writer"));
    }
    env.reconnect_owner().await;
    let mut unavailable_total = 0;
    for (c, last_acked, attempted, unavailable) in outcomes {
        unavailable_total += unavailable;
        let title: String = env
            .owner
            .query_one(
                "select scim->>'title' from users where tenant_id = $1 and user_id = $2",
                &[&t.as_str(), &ids[c]],
            )
            .await
            .expect("stored user")
            .get(0);
        let stored: u64 = title
            .strip_prefix(&format!("c{c}-"))
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("writer {c}'s title {title:?}"));
        assert!(
            stored >= last_acked && stored <= attempted,
            "writer {c}: stored {stored}, last acknowledged {last_acked}, last sent {attempted}"
        );
    }
    assert!(unavailable_total > 0);
    eprintln!("503 answers while PostgreSQL was away: {unavailable_total}");
}
