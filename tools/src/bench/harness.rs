//! What every scenario needs: a fresh database, tenants, events on their topics, the real
//! service as a child process (with its RSS sampled from `/proc`), and waits with deadlines.

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio_postgres::NoTls;

use super::BenchError;
use enablement::actors::ports::{EventPublisher, OutboundRecord};
use enablement::actors::{TenantId, TopicKind};
use enablement::config::Config;
use enablement::db::{connect_pool, PgPool, Registry};
use enablement::kafka::KafkaPublisher;

/// One scenario's world: its own database and consumer group, unique tenant ids.
pub struct BenchWorld {
    pub config: Config,
    pub db_name: String,
    pub owner: tokio_postgres::Client,
    pub run_id: String,
    /// The configuration file the bench was given; service processes read it too.
    pub config_path: std::path::PathBuf,
    admin_url: String,
    keep: bool,
}

pub fn fail(e: impl std::fmt::Display) -> BenchError {
    BenchError(e.to_string())
}

/// A PostgreSQL error with the server's message (tokio-postgres displays only "db error").
pub fn pg(e: tokio_postgres::Error) -> BenchError {
    BenchError(
        e.as_db_error()
            .map(|d| format!("PostgreSQL: {}", d.message()))
            .unwrap_or_else(|| e.to_string()),
    )
}

impl BenchWorld {
    pub async fn new(
        base: &Config,
        config_path: &std::path::Path,
        scenario: &str,
        keep: bool,
    ) -> Result<Self, BenchError> {
        let run_id = format!(
            "{}{}",
            &scenario[..scenario.len().min(3)],
            std::process::id() % 100_000
        );
        let db_name = format!("bench_{scenario}_{}", std::process::id());
        let admin_url = base.postgres.migrate_url.clone();
        let mut config = enablement::testing::create_database(base, &db_name)
            .await
            .map_err(fail)?;
        config.kafka.group_id = format!("bench-{run_id}-{}", now_ms());
        // Topics of its own too: the shared topics of earlier runs are never read.
        config.kafka.topic_prefix =
            format!("{}{}.", base.kafka.topic_prefix, config.kafka.group_id);
        // A local benchmark: the development operator token is fine here, and a fixed key
        // seals the tenants' upstream secrets.
        config.http.allow_dev_token = true;
        config.secrets.keys = enablement::config::Secret::new(
            "bench-1:be0c000000000000000000000000000000000000000000000000000000000001",
        );
        // Unique per world like the group: a broker that keys static members by instance id
        // alone (nisshi 0.8.1) would hand one world's member another world's assignment.
        config.kafka.group_instance_id = format!("bench-{run_id}-{}", now_ms());
        config.kafka.tenant_refresh_ms = 500;
        config.http.listen = std::net::SocketAddr::from(([127, 0, 0, 1], free_port()?));
        let (owner, conn) = tokio_postgres::connect(&config.postgres.migrate_url, NoTls)
            .await
            .map_err(fail)?;
        tokio::spawn(conn);
        Ok(Self {
            config,
            db_name,
            owner,
            run_id,
            config_path: config_path.to_owned(),
            admin_url,
            keep,
        })
    }

    pub async fn app_pool(&self) -> Result<PgPool, BenchError> {
        connect_pool(&self.config.postgres).await.map_err(fail)
    }

    /// The scoped store as the service builds it (the service role's pool, the bench key).
    pub async fn store(&self) -> Result<enablement::db::TenantScopedStore, BenchError> {
        let sealer = enablement::sealing::SecretSealer::shared(self.config.secrets.keys.expose())
            .map_err(fail)?;
        Ok(enablement::db::TenantScopedStore::new(
            self.app_pool().await?,
            sealer,
        ))
    }

    /// `t<run>-<name>`: unique per run, so topics of earlier runs are never read.
    pub fn tenant(&self, name: &str) -> Result<TenantId, BenchError> {
        TenantId::parse(&format!("{}-{name}", self.run_id)).map_err(fail)
    }

    /// Registers tenants through the service's own registration (topics, then rows).
    pub async fn register(&self, tenants: &[TenantId]) -> Result<(), BenchError> {
        let registry = Registry::new(self.app_pool().await?);
        for t in tenants {
            enablement::tenants::register(
                &registry,
                &self.config.kafka,
                t,
                "Bench Org",
                enablement::tenants::Topics::Dedicated,
            )
            .await
            .map_err(fail)?;
        }
        Ok(())
    }

    /// Registers many tenants at once (topics in batches through one admin client).
    pub async fn register_many(&self, tenants: &[TenantId]) -> Result<(), BenchError> {
        self.register_many_on(tenants, enablement::tenants::Topics::Dedicated)
            .await
    }

    /// Registers many tenants at once on their own or on the shared topics.
    pub async fn register_many_on(
        &self,
        tenants: &[TenantId],
        topics: enablement::tenants::Topics,
    ) -> Result<(), BenchError> {
        let registry = Registry::new(self.app_pool().await?);
        let named: Vec<(TenantId, String)> = tenants
            .iter()
            .map(|t| (t.clone(), "Bench Org".to_owned()))
            .collect();
        enablement::tenants::register_many(&registry, &self.config.kafka, &named, topics)
            .await
            .map_err(fail)?;
        Ok(())
    }

    pub async fn scalar(&self, sql: &str) -> Result<i64, BenchError> {
        self.owner
            .query_one(sql, &[])
            .await
            .map(|r| r.get(0))
            .map_err(fail)
    }

    /// Environment overrides that point a service process at this world.
    pub fn service_env(&self, extra: &[(&str, String)]) -> Vec<(String, String)> {
        let c = &self.config;
        let mut env = c.child_env();
        env.extend([
            // One static identity per process: a later process of the same world has other
            // tenants, and a broker may hand a returning static member its old assignment.
            (
                "ENABLEMENT__KAFKA__GROUP_INSTANCE_ID".to_owned(),
                format!("{}-{}", c.kafka.group_instance_id, now_ms()),
            ),
            (
                "ENABLEMENT__MINDTICKLE__BASE_URL".into(),
                c.mindtickle.base_url.clone(),
            ),
            ("ENABLEMENT__LOG__FILTER".into(), "warn".into()),
        ]);
        env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.clone())));
        env
    }

    pub async fn cleanup(self) {
        if self.keep {
            eprintln!("bench: kept database {}", self.db_name);
            return;
        }
        drop(self.owner);
        if let Ok((admin, conn)) = tokio_postgres::connect(&self.admin_url, NoTls).await {
            tokio::spawn(conn);
            let _ = admin
                .batch_execute(&format!(
                    "drop database if exists {} with (force)",
                    self.db_name
                ))
                .await;
        }
    }
}

pub fn now_ms() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0)
}

pub fn free_port() -> Result<u16, BenchError> {
    enablement::testing::free_port().map_err(fail)
}

/// A SCIM CREATE/REPLACE envelope; `seq` orders versions of one user.
pub fn scim_event(tenant: &str, event_id: &str, user: &str, seq: u64) -> String {
    let op = if seq == 0 { "CREATE" } else { "REPLACE" };
    let email = format!("{user}.{seq}@{tenant}.test");
    enablement::testing::scim_event(tenant, event_id, op, user, seq, &email)
}

/// Produces `events` (already JSON) to the tenant's inbound topic, keyed by user.
pub async fn produce(
    publisher: &KafkaPublisher,
    tenant: &TenantId,
    events: Vec<(String, String)>,
) -> Result<(), BenchError> {
    for chunk in events.chunks(5_000) {
        let records = chunk
            .iter()
            .map(|(key, payload)| OutboundRecord {
                topic: TopicKind::Scim,
                key: Some(key.as_bytes().to_vec()),
                payload: payload.as_bytes().to_vec(),
                headers: vec![],
            })
            .collect();
        publisher.publish(tenant, records).await.map_err(fail)?;
    }
    Ok(())
}

/// Polls `probe` every 50 ms until it answers, or fails after `timeout`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, probe: F) -> Result<T, BenchError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    enablement::testing::poll_until(timeout, Duration::from_millis(50), probe)
        .await
        .ok_or_else(|| fail(format!("timed out after {timeout:?} waiting for {what}")))
}

/// The service binary: `ENABLEMENT_BIN`, else `enablement` next to this executable (cargo
/// builds both into the same target directory).
pub fn service_binary() -> Result<std::path::PathBuf, BenchError> {
    if let Some(path) = std::env::var_os("ENABLEMENT_BIN") {
        return Ok(path.into());
    }
    let exe = std::env::current_exe().map_err(fail)?;
    let path = exe.with_file_name("enablement");
    if path.is_file() {
        Ok(path)
    } else {
        Err(fail(format!(
            "the service binary {} is missing: build it first (cargo build --release --bin enablement) or set ENABLEMENT_BIN",
            path.display()
        )))
    }
}

/// The real `enablement serve` as a child process.
pub struct ServiceProcess {
    child: Child,
    pub base_url: String,
    pub log_path: std::path::PathBuf,
    /// `/readyz` in detail and `/metrics` need it.
    operator_token: String,
}

impl ServiceProcess {
    pub fn start(
        world: &BenchWorld,
        role: &str,
        extra: &[(&str, String)],
    ) -> Result<Self, BenchError> {
        Self::start_instance(world, role, extra, None)
    }

    /// One of several instances of a world: its own HTTP port and static member id
    /// (`instance`), else the world's.
    pub fn start_instance(
        world: &BenchWorld,
        role: &str,
        extra: &[(&str, String)],
        instance: Option<&str>,
    ) -> Result<Self, BenchError> {
        let exe = service_binary()?;
        let mut env = world.service_env(extra);
        let mut listen = world.config.http.listen;
        let mut name = role.to_owned();
        if let Some(id) = instance {
            listen = std::net::SocketAddr::from(([127, 0, 0, 1], free_port()?));
            name = format!("{role}-{id}");
            env.push(("ENABLEMENT__HTTP__LISTEN".into(), listen.to_string()));
            env.push((
                "ENABLEMENT__KAFKA__GROUP_INSTANCE_ID".into(),
                format!("{}-{id}", world.config.kafka.group_instance_id),
            ));
        }
        let log_path = std::env::temp_dir().join(format!("{}-{name}.log", world.db_name));
        let log = std::fs::File::create(&log_path).map_err(fail)?;
        let child = Command::new(exe)
            .arg("--config")
            .arg(&world.config_path)
            .arg("serve")
            .arg("--role")
            .arg(role)
            .envs(env)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(fail)?;
        Ok(Self {
            child,
            base_url: format!("http://{listen}"),
            log_path,
            operator_token: world.config.http.operator_token.expose().to_owned(),
        })
    }

    /// SIGKILL, no drain.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Resident set size now and its peak, in KiB (`/proc/<pid>/status`).
    pub fn rss_kib(&self) -> (u64, u64) {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        (field("VmRSS:"), field("VmHWM:"))
    }

    pub async fn readyz(&self) -> Option<Value> {
        let r = http_client()
            .get(format!("{}/readyz", self.base_url))
            .bearer_auth(&self.operator_token)
            .send()
            .await
            .ok()?;
        let ok = r.status().is_success();
        let v: Value = r.json().await.ok()?;
        ok.then_some(v)
    }

    /// Waits until ready with at least `actors` tenant actors running.
    pub async fn wait_ready(&mut self, actors: usize, timeout: Duration) -> Result<(), BenchError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(v) = self.readyz().await {
                let running = v["tenants"]["running"].as_u64().unwrap_or(0);
                if running as usize >= actors {
                    return Ok(());
                }
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(fail(format!(
                    "the service exited ({status}); log: {}",
                    self.log_path.display()
                )));
            }
            if Instant::now() > deadline {
                return Err(fail(format!(
                    "the service was not ready with {actors} actors within {timeout:?}; log: {}",
                    self.log_path.display()
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn metrics(&self) -> HashMap<String, f64> {
        let Ok(r) = http_client()
            .get(format!("{}/metrics", self.base_url))
            .bearer_auth(&self.operator_token)
            .send()
            .await
        else {
            return HashMap::new();
        };
        enablement::testing::parse_metrics(&r.text().await.unwrap_or_default())
    }

    /// SIGTERM, then wait (killing after `timeout`).
    pub fn stop(mut self, timeout: Duration) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A client whose requests give up after 10 s (a hung service fails the bench, not hangs it).
pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap_or_default()
}

/// Starts the MindTickle simulator in this process; returns its base URL.
pub async fn start_simulator(
    settings: crate::simulator::SimSettings,
) -> Result<String, BenchError> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(fail)?;
    let addr = listener.local_addr().map_err(fail)?;
    tokio::spawn(async move {
        let _ = axum::serve(listener, crate::simulator::router(settings)).await;
    });
    Ok(format!("http://{addr}"))
}

/// Percentile (0..=100) of sorted values.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}
