//! Shared harness of the integration tests: real PostgreSQL, Redis, broker and binary.
//!
//! Each test gets its own database (migrated by the real `migrate`), its own tenant ids
//! and its own consumer group, so tests run in parallel without seeing each other.
#![allow(dead_code)]

use std::collections::HashMap;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use enablement::actors::{TenantId, TopicKind};
use enablement::config::Config;
use enablement::db::{connect_pool, PgPool, Registry};
use serde_json::Value;
use tokio_postgres::NoTls;

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// The AEAD key of the tests' tenant secrets (`secrets.keys`).
pub const TEST_SECRETS_KEY: &str =
    "test-1:7e57000000000000000000000000000000000000000000000000000000000001";

/// A short unique suffix: process id, counter and clock, all lowercase alphanumerics.
pub fn unique(prefix: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{prefix}-{}-{n}-{:x}", std::process::id(), nanos % 0xfffff)
}

pub fn tenant(prefix: &str) -> TenantId {
    TenantId::parse(&unique(prefix)).expect("valid generated tenant id")
}

/// Waits until `probe` returns `Some`, polling; panics with `what` at the deadline.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    match enablement::testing::poll_until(timeout, Duration::from_millis(100), probe).await {
        Some(v) => v,
        None => panic!("timed out waiting for {what}"),
    }
}

/// One test's world: a fresh migrated database and the config pointing at it.
pub struct TestEnv {
    pub config: Config,
    pub db_name: String,
    pub owner: tokio_postgres::Client,
}

impl TestEnv {
    pub async fn new() -> Self {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/config.toml");
        let mut config = Config::load(std::path::Path::new(path)).expect("config.toml loads");
        let db_name = unique("t").replace('-', "_");
        config = enablement::testing::create_database(&config, &db_name)
            .await
            .expect("a fresh migrated test database");
        config.kafka.group_id = unique("g");
        // The tests serve with the development operator token config.toml ships.
        config.http.allow_dev_token = true;
        // A test key seals tenant secrets (every process of the test gets it by child_env).
        config.secrets.keys = enablement::config::Secret::new(TEST_SECRETS_KEY);
        config.kafka.tenant_refresh_ms = 300;
        // Crash tests restart a consumer in the same group: a short session lets the
        // coordinator give the dead member's partitions back sooner.
        config.kafka.session_timeout_ms = 10_000;
        let (owner, conn) = tokio_postgres::connect(&config.postgres.migrate_url, NoTls)
            .await
            .expect("owner connects to test db");
        tokio::spawn(conn);
        Self {
            config,
            db_name,
            owner,
        }
    }

    /// Opens a new owner connection (after a PostgreSQL restart broke the old one).
    pub async fn reconnect_owner(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match tokio_postgres::connect(&self.config.postgres.migrate_url, NoTls).await {
                Ok((owner, conn)) => {
                    tokio::spawn(conn);
                    self.owner = owner;
                    return;
                }
                Err(e) => {
                    assert!(Instant::now() < deadline, "owner cannot reconnect: {e}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    }

    /// The scoped store as the service builds it (the pool of the service role, the key).
    pub async fn store(&self) -> enablement::db::TenantScopedStore {
        enablement::db::TenantScopedStore::new(
            self.app_pool().await,
            enablement::sealing::SecretSealer::shared(self.config.secrets.keys.expose())
                .expect("test key"),
        )
    }

    pub async fn app_pool(&self) -> PgPool {
        connect_pool(&self.config.postgres)
            .await
            .expect("service role pool")
    }

    /// Registers a tenant through the same code as `enablement tenant add`.
    pub async fn add_tenant(&self, tenant: &TenantId) -> String {
        self.add_tenant_on(tenant, enablement::tenants::Topics::Dedicated)
            .await
    }

    /// Registers a tenant named from `prefix` and issues its SCIM token: the tenant, its API
    /// token and its SCIM token.
    pub async fn add_scim_tenant(&self, prefix: &str) -> (TenantId, String, String) {
        let t = tenant(prefix);
        let api = self.add_tenant(&t).await;
        let scim = enablement::tenants::rotate_scim_token(&self.store().await, &t)
            .await
            .expect("scim token");
        (t, api, scim)
    }

    /// Registers a tenant on the shared topics (`enablement tenant add --shared-topics`).
    pub async fn add_shared_tenant(&self, tenant: &TenantId) -> String {
        self.add_tenant_on(tenant, enablement::tenants::Topics::Shared)
            .await
    }

    async fn add_tenant_on(
        &self,
        tenant: &TenantId,
        topics: enablement::tenants::Topics,
    ) -> String {
        let registry = Registry::new(self.app_pool().await);
        enablement::tenants::register(&registry, &self.config.kafka, tenant, "Test Org", topics)
            .await
            .expect("register tenant")
            .api_token
    }

    pub async fn count(&self, sql: &str, tenant: &TenantId) -> i64 {
        self.owner
            .query_one(sql, &[&tenant.as_str()])
            .await
            .expect("count query")
            .get(0)
    }

    pub async fn processed(&self, tenant: &TenantId) -> i64 {
        self.count(
            "select count(*) from processed_events where tenant_id = $1",
            tenant,
        )
        .await
    }

    /// Pushes a SCIM CREATE of `user` and waits until the running service applied it.
    pub async fn provision(&self, t: &TenantId, event_id: &str, user: &str, email: &str) {
        let before = self.processed(t).await;
        push(
            &self.config,
            t,
            &[scim_event(t.as_str(), event_id, "CREATE", user, 1, email)],
        )
        .await;
        eventually("user provisioned", Duration::from_secs(30), || async {
            (self.processed(t).await > before).then_some(())
        })
        .await;
    }

    /// Environment for a service process using this world.
    pub fn service_env(&self, listen: &str) -> Vec<(String, String)> {
        let mut env = self.config.child_env();
        env.push(("ENABLEMENT__HTTP__LISTEN".into(), listen.into()));
        env
    }
}

pub use enablement::testing::scim_event;

pub async fn push(config: &Config, tenant: &TenantId, lines: &[String]) {
    let text = lines.join("\n");
    let n = enablement::kafka::push_events(&config.kafka, tenant, false, text.as_bytes())
        .await
        .expect("push events");
    assert_eq!(n, lines.len());
}

/// Pushes lines for a tenant on the shared topics (keyed by its id, on its partition).
pub async fn push_shared(config: &Config, tenant: &TenantId, lines: &[String]) {
    let text = lines.join("\n");
    let n = enablement::kafka::push_events(&config.kafka, tenant, true, text.as_bytes())
        .await
        .expect("push events");
    assert_eq!(n, lines.len());
}

/// Every record of a tenant topic, from the beginning to the current end.
pub async fn read_topic(config: &Config, tenant: &TenantId, kind: TopicKind) -> Vec<Value> {
    read_tenant_records(config, tenant, kind, false).await
}

/// Every record of a tenant's `kind` (on the shared topics: only its own records).
pub async fn read_tenant_records(
    config: &Config,
    tenant: &TenantId,
    kind: TopicKind,
    shared_topics: bool,
) -> Vec<Value> {
    let cfg = config.kafka.clone();
    let tenant = tenant.clone();
    tokio::task::spawn_blocking(move || {
        let mut out = Vec::new();
        let opts = enablement::kafka::TailOptions {
            from_beginning: true,
            shared_topics,
            exit_at_end: true,
            limit: None,
        };
        enablement::kafka::tail_topic(&cfg, &tenant, kind, &opts, |v| out.push(v))
            .expect("tail topic");
        out
    })
    .await
    .expect("join")
}

pub fn free_port() -> u16 {
    enablement::testing::free_port().expect("free port")
}

/// The real `enablement serve` binary.
pub struct Service {
    child: Option<Child>,
    pub base_url: String,
    pub log_path: std::path::PathBuf,
    /// Sent by [`Service::get`]: the detailed `/readyz` and `/metrics` need it.
    pub operator_token: String,
}

impl Service {
    pub fn start(env: &TestEnv, extra: &[(&str, &str)]) -> Self {
        Self::start_role(env, "all", extra)
    }

    /// `enablement serve --role <role>`.
    pub fn start_role(env: &TestEnv, role: &str, extra: &[(&str, &str)]) -> Self {
        let port = free_port();
        let listen = format!("127.0.0.1:{port}");
        let log_path = std::env::temp_dir().join(format!("{}.log", unique("svc")));
        let log = std::fs::File::create(&log_path).expect("log file");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_enablement"));
        cmd.arg("--config")
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/config.toml"))
            .arg("serve")
            .arg("--role")
            .arg(role)
            .envs(env.service_env(&listen))
            .env("RUST_LOG", "info,librdkafka=warn,rdkafka=warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        for (k, v) in extra {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("spawn enablement serve");
        Self {
            child: Some(child),
            base_url: format!("http://{listen}"),
            log_path,
            operator_token: env.config.http.operator_token.expose().to_owned(),
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// GET as the operator.
    pub async fn get(&self, path: &str) -> Option<(u16, String)> {
        let r = reqwest::Client::new()
            .get(format!("{}{path}", self.base_url))
            .bearer_auth(&self.operator_token)
            .send()
            .await
            .ok()?;
        let status = r.status().as_u16();
        Some((status, r.text().await.ok()?))
    }

    /// Waits until `/readyz` answers 200 with every tenant in `tenants` running.
    pub async fn wait_ready(&self, tenants: &[&TenantId]) {
        let want: Vec<String> = tenants.iter().map(|t| t.to_string()).collect();
        eventually("service ready", Duration::from_secs(60), || async {
            let (status, body) = self.get("/readyz").await?;
            let v: Value = serde_json::from_str(&body).ok()?;
            let running = v["tenants"]["running"].as_u64()? as usize;
            let not_running = v["tenants"]["not_running"].as_array()?;
            let any_down = not_running
                .iter()
                .any(|t| want.iter().any(|w| t["tenant"] == w.as_str()));
            (status == 200 && running >= want.len() && !any_down).then_some(())
        })
        .await;
    }

    /// A request with a bearer token: status, headers and the JSON body (Null if none).
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: &str,
    ) -> (u16, reqwest::header::HeaderMap, Value) {
        let r = reqwest::Client::new()
            .request(method, format!("{}{path}", self.base_url))
            .bearer_auth(token)
            .send()
            .await
            .expect("request");
        let (status, headers) = (r.status().as_u16(), r.headers().clone());
        (status, headers, r.json().await.unwrap_or(Value::Null))
    }

    /// Waits until `/readyz` answers 200 (roles without tenant actors).
    pub async fn wait_up(&self) {
        eventually("service up", Duration::from_secs(60), || async {
            let (status, _) = self.get("/readyz").await?;
            (status == 200).then_some(())
        })
        .await;
    }

    /// Parses `/metrics` into `name{labels} -> value`.
    pub async fn metrics(&self) -> HashMap<String, f64> {
        let (_, text) = self.get("/metrics").await.unwrap_or((0, String::new()));
        enablement::testing::parse_metrics(&text)
    }

    pub async fn metric(&self, name_and_labels: &str) -> f64 {
        self.metrics()
            .await
            .get(name_and_labels)
            .copied()
            .unwrap_or(0.0)
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends SIGTERM and waits (up to `timeout`) for the exit status.
    pub fn terminate(&mut self, timeout: Duration) -> ExitStatus {
        let mut c = self.child.take().expect("running");
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(c.id().to_string())
            .status();
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = c.try_wait().expect("wait") {
                return s;
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                panic!("service did not exit within {timeout:?} of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Starts the MindTickle simulator in-process on a free loopback port; returns its base URL.
pub async fn start_sim(settings: enablement_tools::simulator::SimSettings) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        axum::serve(listener, enablement_tools::simulator::router(settings)).await
    });
    format!("http://{addr}")
}

/// A development broker owned by one test: its own port and storage, so the test can
/// SIGKILL, restart, SIGSTOP and SIGCONT it without touching any other test's broker.
/// `tansu` is installed by `scripts/dev-services.sh` (run by `scripts/test.sh`).
pub struct Broker {
    child: Option<Child>,
    pub port: u16,
    storage: String,
    dir: std::path::PathBuf,
}

impl Broker {
    /// Starts a broker on a free port. `durable` keeps its log in a SQLite file of its own
    /// (fresh, so it stays small and fast), else in memory.
    pub fn start(durable: bool) -> Self {
        let dir = std::env::temp_dir().join(unique("broker"));
        std::fs::create_dir_all(&dir).expect("broker dir");
        let storage = if durable {
            "sqlite://tansu.db".to_string()
        } else {
            "memory://tansu/".to_string()
        };
        let mut b = Self {
            child: None,
            port: free_port(),
            storage,
            dir,
        };
        b.spawn();
        b
    }

    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn spawn(&mut self) {
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("tansu.log"))
            .expect("broker log");
        // ENABLEMENT_TEST_BROKER names another Kafka-compatible broker binary with the same
        // command line (e.g. `nisshi`, the development broker's later name).
        let bin = std::env::var("ENABLEMENT_TEST_BROKER").unwrap_or_else(|_| "tansu".into());
        let child = Command::new(&bin)
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            .args(["--storage-engine", &self.storage])
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {bin} (installed by scripts/dev-services.sh): {e}"));
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "broker did not open its port");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn signal(&self, sig: &str) {
        if let Some(c) = &self.child {
            let _ = Command::new("kill")
                .args([sig, &c.id().to_string()])
                .status();
        }
    }

    /// SIGKILL, then start again on the same port and storage.
    pub fn kill_and_restart(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.spawn();
    }

    /// Freezes the broker (SIGSTOP): connections stay open, nothing is answered.
    pub fn freeze(&self) {
        self.signal("-STOP");
    }

    pub fn thaw(&self) {
        self.signal("-CONT");
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.thaw();
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Counts of a tenant's exactly-once ledger: applied event ids, dead letters, outbox rows
/// per topic, and the records actually on the tenant's topics.
pub async fn assert_effects_once(env: &TestEnv, t: &TenantId, expected_records: i64) {
    assert_effects_once_on(env, t, expected_records, false).await;
}

/// [`assert_effects_once`] for a tenant on its own topics or (`shared_topics`) on the
/// shared ones (its records only).
pub async fn assert_effects_once_on(
    env: &TestEnv,
    t: &TenantId,
    expected_records: i64,
    shared_topics: bool,
) {
    let processed = env.processed(t).await;
    let dead = env
        .count("select count(*) from dead_letters where tenant_id = $1", t)
        .await;
    assert_eq!(
        processed + dead,
        expected_records,
        "{t}: every record applied ({processed}) or dead-lettered ({dead})"
    );
    for (kind, topic) in [
        (TopicKind::UserChanged, "user_changed"),
        (TopicKind::Dlq, "scim.dlq"),
    ] {
        let rows = env
            .owner
            .query_one(
                "select count(*) from outbox where tenant_id = $1 and topic = $2",
                &[&t.as_str(), &topic],
            )
            .await
            .expect("outbox count")
            .get::<_, i64>(0);
        let recs = eventually(
            &format!("{t}: every {topic} outbox row on its topic"),
            Duration::from_secs(120),
            || async {
                let recs = read_tenant_records(&env.config, t, kind, shared_topics).await;
                (recs.len() as i64 >= rows).then_some(recs)
            },
        )
        .await;
        let seqs: std::collections::HashSet<String> = recs
            .iter()
            .filter_map(|r| r["headers"]["outbox.seq"].as_str().map(str::to_owned))
            .collect();
        assert_eq!(
            (recs.len() as i64, seqs.len() as i64),
            (rows, rows),
            "{t}: {topic} has each outbox row exactly once"
        );
    }
}

/// Produces raw payloads (any bytes, newlines included) to a tenant's inbound topic.
pub async fn push_raw(config: &Config, tenant: &TenantId, payloads: &[Vec<u8>]) {
    use enablement::actors::ports::{EventPublisher, OutboundRecord};
    let publisher = enablement::kafka::KafkaPublisher::new(&config.kafka).expect("producer");
    let records = payloads
        .iter()
        .map(|p| OutboundRecord {
            topic: TopicKind::Scim,
            key: None,
            payload: p.clone(),
            headers: vec![],
        })
        .collect();
    publisher.publish(tenant, records).await.expect("push raw");
}

/// Runs `enablement <args>` against this world (as an operator would) and returns its
/// stdout; panics with its stderr when it fails.
pub fn cli_ok(env: &TestEnv, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_enablement"))
        .args([
            "--config",
            concat!(env!("CARGO_MANIFEST_DIR"), "/config.toml"),
        ])
        .args(args)
        .envs(env.service_env("127.0.0.1:1"))
        .output()
        .expect("run enablement");
    assert!(
        out.status.success(),
        "enablement {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Every Redis key of the tenant's namespace (SCAN, as the service does).
pub async fn tenant_cache_keys(env: &TestEnv, t: &enablement::actors::TenantId) -> Vec<String> {
    let redis = redis::Client::open(env.config.redis.url.as_str()).unwrap();
    let mut conn = redis.get_multiplexed_async_connection().await.unwrap();
    let mut keys: Vec<String> = Vec::new();
    let mut cursor: u64 = 0;
    loop {
        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(t.cache_pattern())
            .query_async(&mut conn)
            .await
            .unwrap();
        keys.extend(batch);
        if next == 0 {
            return keys;
        }
        cursor = next;
    }
}
