//! Configuration: a TOML file (`--config`, default `./config.toml`) with every key
//! overridable from the environment as `ENABLEMENT__<SECTION>__<KEY>`.
//!
//! Every struct denies unknown fields, and [`Config::validate`] checks values that types
//! alone cannot, so a typo or a bad value stops the service at start with a message naming
//! the key instead of being silently ignored.

use std::net::SocketAddr;
use std::path::Path;

use serde::{Deserialize, Serialize};

mod security;
mod settings;

use crate::actors::metric_names::OWNED_TENANT_GAUGES;
use crate::actors::{PipelineSettings, SupervisorSettings};

pub use security::{split_pg_tls_params, Secret, DEV_OPERATOR_TOKEN, KAFKA_PROTOCOLS, PG_SSLMODES};
pub use settings::{AggregatorSettings, Keep, RetentionSettings, Role};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid TOML: {message}")]
    Syntax { path: String, message: String },
    #[error("config key `{key}`: {message}")]
    Key { key: String, message: String },
    #[error("environment variable {var}: {message}")]
    Env { var: String, message: String },
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub postgres: PostgresConfig,
    pub redis: RedisConfig,
    pub kafka: KafkaConfig,
    pub http: HttpConfig,
    pub pipeline: PipelineConfig,
    pub supervisor: SupervisorConfig,
    pub shutdown: ShutdownConfig,
    pub mindtickle: MindTickleConfig,
    pub aggregator: AggregatorConfig,
    pub retention: RetentionConfig,
    pub secrets: SecretsConfig,
    pub log: LogConfig,
    pub metrics: MetricsConfig,
}

/// The Prometheus metrics (`src/telemetry.rs`).
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Metrics whose `tenant` label is dropped: one series summed over every tenant of the
    /// instance instead of one per tenant (bounds the series count with thousands of
    /// tenants; the owner-only gauges keep their label).
    pub untenanted: Vec<String>,
}

/// Encryption of tenant secrets at rest (`src/sealing.rs`).
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct SecretsConfig {
    /// AEAD keys, `<key id>:<64 hex characters>` comma separated; the first seals, all
    /// open. From `ENABLEMENT__SECRETS__KEYS` or `keys_file`, never a committed file.
    pub keys: Secret,
    pub keys_file: String,
}

/// Deletion of rows that have outlived their use (`src/retention.rs`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionConfig {
    /// How often a pass runs (0 disables retention).
    pub interval_s: u64,
    /// Rows deleted per statement (small: short transactions, no long locks).
    pub batch_rows: u32,
    /// Outbox rows already relayed, older than this.
    pub outbox_relayed_keep_s: u64,
    /// Upstream jobs done or failed, older than this.
    pub finished_jobs_keep_s: u64,
    /// Security events older than this.
    pub security_events_keep_s: u64,
    /// Idempotency records (applied event ids) older than this.
    pub idempotency_keep_s: u64,
    /// Dead-letter records (the DLQ topic keeps the records themselves) older than this.
    pub dead_letters_keep_s: u64,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        const DAY: u64 = 86_400;
        Self {
            interval_s: 600,
            batch_rows: 1000,
            outbox_relayed_keep_s: 7 * DAY,
            finished_jobs_keep_s: 7 * DAY,
            security_events_keep_s: 365 * DAY,
            idempotency_keep_s: 30 * DAY,
            dead_letters_keep_s: 30 * DAY,
        }
    }
}

/// The readiness aggregator (`serve --role aggregator`, or inside `all`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AggregatorConfig {
    pub freshness_ms: u64,
    pub debounce_ms: u64,
    pub max_delay_ms: u64,
    pub poll_interval_ms: u64,
    pub concurrency: usize,
    pub history_per_tenant: u32,
    pub statement_timeout_ms: u64,
    pub refresh_stale_max_jobs: u32,
}

impl Default for AggregatorConfig {
    fn default() -> Self {
        Self {
            freshness_ms: 86_400_000,
            debounce_ms: 1_000,
            max_delay_ms: 10_000,
            poll_interval_ms: 250,
            concurrency: 2,
            history_per_tenant: 100,
            statement_timeout_ms: 120_000,
            refresh_stale_max_jobs: 100,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MindTickleConfig {
    /// Base URL of the MindTickle REST API (the bundled simulator by default).
    pub base_url: String,
    pub request_timeout_ms: u64,
    /// A token is refreshed when less than this is left of its lifetime.
    pub token_refresh_margin_s: u64,
    /// Default per-tenant quota (the registry's `rate_limit_per_min` overrides it).
    pub requests_per_min: u32,
    pub burst: u32,
    /// Longest `Retry-After` honoured.
    pub max_retry_after_s: u64,
    pub backoff_initial_ms: u64,
    pub backoff_max_ms: u64,
    pub max_attempts: u32,
    /// Largest answer body read from the API; a larger one fails that job.
    pub max_answer_bytes: usize,
    /// Extra CA certificates (PEM) trusted beside the system roots for an https base_url.
    pub ca_file: String,
    /// Client certificate and key (PEM) for mutual TLS to the upstream; both or neither.
    pub client_cert_file: String,
    pub client_key_file: String,
}

impl Default for MindTickleConfig {
    fn default() -> Self {
        Self {
            base_url: "http://127.0.0.1:4010".into(),
            request_timeout_ms: 10_000,
            token_refresh_margin_s: 300,
            requests_per_min: 60,
            burst: 3,
            max_retry_after_s: 120,
            backoff_initial_ms: 500,
            backoff_max_ms: 60_000,
            max_attempts: 6,
            max_answer_bytes: 8_388_608,
            ca_file: String::new(),
            client_cert_file: String::new(),
            client_key_file: String::new(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PostgresConfig {
    /// Connection URL of the unprivileged service role.
    pub url: String,
    /// Connection URL of the owner role that runs migrations.
    pub migrate_url: String,
    /// Name of the service role `migrate` creates and grants.
    pub app_role: String,
    pub pool_max_size: u32,
    /// Statements each pooled connection keeps prepared (parsed and planned once, then
    /// only bound and run); 0 sends every statement's text, as a PgBouncer in transaction
    /// mode without prepared-statement support needs.
    pub statement_cache_capacity: usize,
    pub connect_timeout_ms: u64,
    /// TLS to PostgreSQL, for both URLs: `disable`, `require` (encrypted, certificate not
    /// checked), `verify-ca` (chain checked), `verify-full` (chain and host name). An
    /// `sslmode`/`sslrootcert` in a URL's query overrides these.
    pub sslmode: String,
    /// CA certificates (PEM) for verify-ca/verify-full; empty means the system roots.
    pub sslrootcert: String,
}

impl Default for PostgresConfig {
    fn default() -> Self {
        Self {
            url: "postgres://enablement_app@127.0.0.1:5432/enablement".into(),
            migrate_url: "postgres://postgres@127.0.0.1:5432/enablement".into(),
            app_role: "enablement_app".into(),
            pool_max_size: 8,
            statement_cache_capacity: 256,
            connect_timeout_ms: 5_000,
            sslmode: "disable".into(),
            sslrootcert: String::new(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisConfig {
    pub url: String,
    pub roster_ttl_s: u64,
    pub catalog_ttl_s: u64,
    pub timeout_ms: u64,
    /// CA certificates (PEM) for a `rediss://` url; empty means the system roots.
    pub ca_file: String,
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            url: "redis://127.0.0.1:6379/0".into(),
            roster_ttl_s: 600,
            catalog_ttl_s: 1_800,
            timeout_ms: 1_000,
            ca_file: String::new(),
        }
    }
}

/// The partition assignment strategies librdkafka offers (`kafka.assignment_strategy`).
pub const ASSIGNMENT_STRATEGIES: [&str; 3] = ["cooperative-sticky", "roundrobin", "range"];

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    pub brokers: String,
    /// Prepended to every topic name (`<prefix>tenant.<id>.scim`).
    pub topic_prefix: String,
    pub group_id: String,
    /// Static group membership id of this instance (`group.instance.id`); empty means
    /// `enablement-<hostname>`. A restarted instance with the same id takes its partitions
    /// back at once instead of waiting for the group to expire the crashed member. Give
    /// every instance its own (e.g. the pod name).
    pub group_instance_id: String,
    /// Join the group as a static member (`group.instance.id`). Off: a dynamic member,
    /// for brokers whose static-membership rejoin misbehaves.
    pub static_membership: bool,
    /// librdkafka `partition.assignment.strategy`: `cooperative-sticky` (incremental: an
    /// instance joining or leaving, or a tenant added or suspended, moves only the partitions
    /// that change owner; every other tenant keeps flowing), or the eager `roundrobin` /
    /// `range` (every rebalance revokes and restarts every tenant of every instance). All
    /// instances of a group must use the same one.
    pub assignment_strategy: String,
    /// The group watchdog: subscribed but not in a steady assignment, or a tenant feed
    /// silent while its partition has lag, for this many session timeouts means a wedged
    /// group; the consumer is then re-created as a fresh (dynamic) member. 0 disables.
    pub group_wedged_after_sessions: u32,
    pub topic_partitions: i32,
    /// Partitions of each shared topic (`<prefix>shared.scim`, ...), where tenants
    /// registered with shared topics live, keyed by tenant id. Fixed once the topics exist:
    /// a tenant's partition is its id's hash modulo this count.
    pub shared_topic_partitions: i32,
    /// Records buffered per shared tenant before its shared partition waits for it.
    pub shared_buffer_records: usize,
    pub replication_factor: i32,
    pub session_timeout_ms: u64,
    /// Largest fetch per partition (librdkafka `fetch.message.max.bytes`).
    pub fetch_max_bytes_per_partition: u64,
    /// Prefetch buffer per partition (librdkafka `queued.max.messages.kbytes`).
    pub queued_max_kbytes_per_partition: u64,
    pub auto_commit_interval_ms: u64,
    /// How often the registry is read for added or suspended tenants.
    pub tenant_refresh_ms: u64,
    pub produce_timeout_ms: u64,
    /// Largest record the brokers accept (their `message.max.bytes`, or the topics'
    /// `max.message.bytes`): the producer's limit, dead letters are cut to fit it, and
    /// `pipeline.max_message_bytes` must leave room below it for the `user_changed` envelope.
    pub max_record_bytes: usize,
    /// How often librdkafka reports statistics (per-tenant lag gauge); 0 disables.
    pub statistics_interval_ms: u64,
    /// librdkafka debug contexts (e.g. `cgrp,fetch`); empty for none.
    pub librdkafka_debug: String,
    /// `PLAINTEXT`, `SSL`, `SASL_PLAINTEXT` or `SASL_SSL` (librdkafka `security.protocol`),
    /// for every Kafka client of the service and its tools.
    pub security_protocol: String,
    /// CA certificates (PEM) the brokers' certificates are checked against; empty means
    /// the system roots.
    pub ssl_ca_file: String,
    /// Client certificate and key (PEM) for mutual TLS; both or neither.
    pub ssl_cert_file: String,
    pub ssl_key_file: String,
    /// Passphrase of an encrypted `ssl_key_file` (or `ssl_key_password_file`).
    pub ssl_key_password: Secret,
    pub ssl_key_password_file: String,
    /// `PLAIN`, `SCRAM-SHA-256` or `SCRAM-SHA-512` with a SASL security_protocol.
    pub sasl_mechanism: String,
    pub sasl_username: String,
    /// The SASL password: from the environment (`ENABLEMENT__KAFKA__SASL_PASSWORD`) or
    /// `sasl_password_file`, never from a committed file.
    pub sasl_password: Secret,
    pub sasl_password_file: String,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            brokers: "127.0.0.1:9092".into(),
            topic_prefix: String::new(),
            group_id: "enablement".into(),
            group_instance_id: String::new(),
            static_membership: true,
            assignment_strategy: "cooperative-sticky".into(),
            group_wedged_after_sessions: 3,
            topic_partitions: 1,
            shared_topic_partitions: 16,
            shared_buffer_records: 1000,
            replication_factor: 1,
            session_timeout_ms: 45_000,
            max_record_bytes: 1_000_000,
            fetch_max_bytes_per_partition: 262_144,
            queued_max_kbytes_per_partition: 1_024,
            auto_commit_interval_ms: 1_000,
            tenant_refresh_ms: 2_000,
            produce_timeout_ms: 30_000,
            statistics_interval_ms: 5_000,
            librdkafka_debug: String::new(),
            security_protocol: "PLAINTEXT".into(),
            ssl_ca_file: String::new(),
            ssl_cert_file: String::new(),
            ssl_key_file: String::new(),
            ssl_key_password: Secret::default(),
            ssl_key_password_file: String::new(),
            sasl_mechanism: String::new(),
            sasl_username: String::new(),
            sasl_password: Secret::default(),
            sasl_password_file: String::new(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    pub listen: SocketAddr,
    /// Bearer token for registration and cross-tenant operations. Set it from the
    /// environment (`ENABLEMENT__HTTP__OPERATOR_TOKEN`) outside development.
    pub operator_token: Secret,
    /// A file holding the operator token (a mounted secret), instead of `operator_token`.
    pub operator_token_file: String,
    /// Serve with the development operator token shipped in config.toml. Development only.
    pub allow_dev_token: bool,
    /// A second address serving only `/metrics` and the detailed `/readyz` without a
    /// token (for Prometheus and probes inside the cluster); empty for none. On `listen`,
    /// both need the operator token and `/readyz` without it answers only its status.
    pub internal_listen: String,
    pub max_body_bytes: usize,
    /// How long a request waits for upstream work before answering 202 with a place to poll.
    pub request_deadline_ms: u64,
    /// A client must send its request head within this (slow-header clients are cut off).
    pub header_read_timeout_ms: u64,
    /// Upper bound of one request, body included (answers 408 after it).
    pub request_timeout_ms: u64,
    /// Requests served at once by the whole endpoint; more wait in the accept queue.
    pub max_concurrent_requests: usize,
    /// Requests served at once for one client address; more get 429.
    pub max_concurrent_requests_per_client: usize,
    /// Failed authentications one client address may make per minute before its requests
    /// get 429 with Retry-After.
    pub auth_failures_per_min: u32,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 3000)),
            operator_token: Secret::new(DEV_OPERATOR_TOKEN),
            operator_token_file: String::new(),
            allow_dev_token: false,
            internal_listen: String::new(),
            max_body_bytes: 1_048_576,
            request_deadline_ms: 10_000,
            header_read_timeout_ms: 5_000,
            request_timeout_ms: 30_000,
            max_concurrent_requests: 256,
            max_concurrent_requests_per_client: 32,
            auth_failures_per_min: 20,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PipelineConfig {
    pub max_batch_events: usize,
    pub batch_linger_ms: u64,
    pub high_water_messages: usize,
    pub low_water_messages: usize,
    pub max_message_bytes: usize,
    pub outbox_batch: usize,
    pub outbox_retry_ms: u64,
    pub job_poll_ms: u64,
    pub max_concurrent_batches: usize,
    pub max_future_skew_s: u64,
    pub tenant_buffer_max_bytes: usize,
    pub process_buffer_max_bytes: usize,
    pub retry_backoff_initial_ms: u64,
    pub retry_backoff_max_ms: u64,
    /// What a SCIM DELETE does: `deactivate` (keep the attributes) or
    /// `erase_personal_data` (deactivate and erase name, email, ids, the resource).
    pub scim_delete: crate::actors::scim::DeletePolicy,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        let d = PipelineSettings::default();
        Self {
            max_batch_events: d.max_batch_events,
            batch_linger_ms: d.batch_linger.as_millis() as u64,
            high_water_messages: d.high_water,
            low_water_messages: d.low_water,
            max_message_bytes: d.max_message_bytes,
            outbox_batch: d.outbox_batch,
            outbox_retry_ms: d.outbox_retry.as_millis() as u64,
            job_poll_ms: d.job_poll.as_millis() as u64,
            max_concurrent_batches: d.max_concurrent_batches,
            max_future_skew_s: d.max_future_skew.as_secs(),
            tenant_buffer_max_bytes: d.tenant_buffer_max_bytes,
            process_buffer_max_bytes: d.process_buffer_max_bytes,
            retry_backoff_initial_ms: d.retry_backoff.initial.as_millis() as u64,
            retry_backoff_max_ms: d.retry_backoff.max.as_millis() as u64,
            scim_delete: d.scim_delete,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SupervisorConfig {
    pub restart_backoff_initial_ms: u64,
    pub restart_backoff_max_ms: u64,
    pub max_consecutive_failures: u32,
    pub park_duration_s: u64,
    pub healthy_after_s: u64,
    pub drain_timeout_ms: u64,
    /// A tenant actor with no records, jobs or requests for this long is stopped (its
    /// partition stays assigned; a record, a job or a request starts it again). 0: never.
    pub passivate_after_ms: u64,
    /// With passivation on, newly assigned tenants start passivated (for instances that own
    /// thousands of tenants: serving at once, actors started on demand).
    pub start_passivated: bool,
}

impl Default for SupervisorConfig {
    fn default() -> Self {
        let d = SupervisorSettings::default();
        Self {
            restart_backoff_initial_ms: d.restart_backoff_initial.as_millis() as u64,
            restart_backoff_max_ms: d.restart_backoff_max.as_millis() as u64,
            max_consecutive_failures: d.max_consecutive_failures,
            park_duration_s: d.park_duration.as_secs(),
            healthy_after_s: d.healthy_after.as_secs(),
            drain_timeout_ms: d.drain_timeout.as_millis() as u64,
            passivate_after_ms: d.passivate_after.map_or(0, |p| p.as_millis() as u64),
            start_passivated: d.start_passivated,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShutdownConfig {
    pub grace_period_ms: u64,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        Self {
            grace_period_ms: 30_000,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// A `tracing` filter, e.g. `info` or `enablement=debug,rdkafka=warn`.
    pub filter: String,
    /// `text` or `json`.
    pub format: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            filter: "info".into(),
            format: "text".into(),
        }
    }
}

const ENV_PREFIX: &str = "ENABLEMENT__";

/// Room a `user_changed` record needs beyond the SCIM resource it carries.
const USER_CHANGED_ENVELOPE_BYTES: usize = 16 * 1024;

impl Config {
    /// Reads `path` (a missing file means all defaults) and applies environment overrides.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(source) => {
                return Err(ConfigError::Read {
                    path: path.display().to_string(),
                    source,
                })
            }
        };
        Self::from_sources(&text, &path.display().to_string(), std::env::vars())
    }

    /// Builds the config from TOML text and `(name, value)` environment pairs.
    pub fn from_sources(
        text: &str,
        origin: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let mut doc: toml::Table =
            text.parse()
                .map_err(|e: toml::de::Error| ConfigError::Syntax {
                    path: origin.to_owned(),
                    message: e.message().to_owned(),
                })?;
        let defaults = toml::Table::try_from(Config::default()).map_err(|e| ConfigError::Key {
            key: "<defaults>".into(),
            message: e.to_string(),
        })?;
        let mut env: Vec<(String, String)> = env
            .into_iter()
            .filter(|(k, _)| k.starts_with(ENV_PREFIX))
            .collect();
        env.sort();
        for (var, raw) in env {
            let path: Vec<String> = var[ENV_PREFIX.len()..]
                .split("__")
                .map(|s| s.to_ascii_lowercase())
                .collect();
            let [section, key] = path.as_slice() else {
                return Err(ConfigError::Env {
                    var,
                    message: "expected ENABLEMENT__<SECTION>__<KEY>".into(),
                });
            };
            // The default's type decides how the text is read: strings stay strings.
            let wants_string = defaults
                .get(section)
                .and_then(|s| s.get(key))
                .is_none_or(|v| v.is_str());
            let value = if wants_string {
                toml::Value::String(raw)
            } else {
                format!("v = {raw}")
                    .parse::<toml::Table>()
                    .ok()
                    .and_then(|mut t| t.remove("v"))
                    .unwrap_or(toml::Value::String(raw))
            };
            let table = doc
                .entry(section.clone())
                .or_insert_with(|| toml::Value::Table(Default::default()));
            let Some(table) = table.as_table_mut() else {
                return Err(ConfigError::Key {
                    key: section.clone(),
                    message: "must be a table".into(),
                });
            };
            table.insert(key.clone(), value);
        }
        let mut config: Config = serde_path_to_error::deserialize(toml::Value::Table(doc))
            .map_err(|e| ConfigError::Key {
                key: e.path().to_string(),
                message: e.inner().to_string(),
            })?;
        config.resolve_secret_files()?;
        config.validate()?;
        Ok(config)
    }

    /// Checks what the types cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        fn bad(key: &str, message: impl Into<String>) -> Result<(), ConfigError> {
            Err(ConfigError::Key {
                key: key.into(),
                message: message.into(),
            })
        }
        for (key, url) in [
            ("postgres.url", &self.postgres.url),
            ("postgres.migrate_url", &self.postgres.migrate_url),
        ] {
            if security::split_pg_tls_params(url)
                .0
                .parse::<tokio_postgres::Config>()
                .is_err()
            {
                return bad(key, "is not a PostgreSQL connection URL");
            }
        }
        if !is_sql_identifier(&self.postgres.app_role) {
            return bad("postgres.app_role", "must match ^[a-z_][a-z0-9_]{0,62}$");
        }
        if self.postgres.pool_max_size == 0 {
            return bad("postgres.pool_max_size", "must be at least 1");
        }
        if redis::Client::open(self.redis.url.as_str()).is_err() {
            return bad("redis.url", "is not a Redis URL");
        }
        if self.kafka.brokers.trim().is_empty() {
            return bad("kafka.brokers", "must name at least one broker");
        }
        if !self
            .kafka
            .topic_prefix
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
            || self.kafka.topic_prefix.len() > 100
        {
            return bad("kafka.topic_prefix", "may contain only [A-Za-z0-9._-]");
        }
        if self.kafka.group_id.trim().is_empty() {
            return bad("kafka.group_id", "must not be empty");
        }
        if self.kafka.topic_partitions != 1 {
            return bad(
                "kafka.topic_partitions",
                "must be 1: a tenant's events are totally ordered on one partition",
            );
        }
        if !(1..=1000).contains(&self.kafka.shared_topic_partitions) {
            return bad(
                "kafka.shared_topic_partitions",
                "must be between 1 and 1000",
            );
        }
        if self.kafka.shared_buffer_records == 0 {
            return bad("kafka.shared_buffer_records", "must be positive");
        }
        if let Some(name) =
            self.metrics.untenanted.iter().find(|n| {
                !n.starts_with("enablement_") || OWNED_TENANT_GAUGES.contains(&n.as_str())
            })
        {
            return bad(
                "metrics.untenanted",
                format!("{name}: not a per-tenant counter or histogram of this service"),
            );
        }
        if !ASSIGNMENT_STRATEGIES.contains(&self.kafka.assignment_strategy.as_str()) {
            return bad(
                "kafka.assignment_strategy",
                "must be cooperative-sticky, roundrobin or range",
            );
        }
        if self.kafka.group_wedged_after_sessions > 0 && self.kafka.statistics_interval_ms == 0 {
            return bad(
                "kafka.statistics_interval_ms",
                "must be positive while kafka.group_wedged_after_sessions is (the watchdog reads the group state from statistics)",
            );
        }
        if self.kafka.replication_factor < 1 {
            return bad("kafka.replication_factor", "must be at least 1");
        }
        if self.http.operator_token.expose().len() < 16 {
            return bad("http.operator_token", "must be at least 16 characters");
        }
        let p = &self.pipeline;
        if p.max_batch_events == 0 {
            return bad("pipeline.max_batch_events", "must be at least 1");
        }
        if p.max_concurrent_batches == 0
            || p.max_concurrent_batches >= self.postgres.pool_max_size as usize
        {
            return bad(
                "pipeline.max_concurrent_batches",
                "must be at least 1 and below postgres.pool_max_size",
            );
        }
        if p.low_water_messages >= p.high_water_messages {
            return bad(
                "pipeline.low_water_messages",
                "must be below pipeline.high_water_messages",
            );
        }
        if p.retry_backoff_initial_ms == 0 || p.retry_backoff_max_ms < p.retry_backoff_initial_ms {
            return bad(
                "pipeline.retry_backoff_max_ms",
                "retry_backoff_initial_ms must be positive and not above retry_backoff_max_ms",
            );
        }
        if p.tenant_buffer_max_bytes < p.max_message_bytes
            || p.process_buffer_max_bytes < p.tenant_buffer_max_bytes
        {
            return bad(
                "pipeline.tenant_buffer_max_bytes",
                "must be at least max_message_bytes and at most process_buffer_max_bytes",
            );
        }
        if p.max_message_bytes + USER_CHANGED_ENVELOPE_BYTES > self.kafka.max_record_bytes {
            return bad(
                "pipeline.max_message_bytes",
                "must leave 16384 bytes below kafka.max_record_bytes for the user_changed envelope (an accepted event must stay publishable)",
            );
        }
        if p.max_message_bytes == 0 || p.outbox_batch == 0 {
            return bad(
                "pipeline",
                "max_message_bytes and outbox_batch must be positive",
            );
        }
        if !(self.mindtickle.base_url.starts_with("http://")
            || self.mindtickle.base_url.starts_with("https://"))
        {
            return bad("mindtickle.base_url", "must be an http(s) URL");
        }
        if self.mindtickle.requests_per_min == 0 || self.mindtickle.burst == 0 {
            return bad(
                "mindtickle.requests_per_min",
                "quota and burst must be positive",
            );
        }
        let a = &self.aggregator;
        if a.concurrency == 0 || a.history_per_tenant == 0 {
            return bad(
                "aggregator.concurrency",
                "concurrency and history_per_tenant must be positive",
            );
        }
        if a.freshness_ms == 0 || a.poll_interval_ms == 0 || a.statement_timeout_ms == 0 {
            return bad(
                "aggregator.freshness_ms",
                "freshness, poll interval and statement timeout must be positive",
            );
        }
        if a.max_delay_ms < a.debounce_ms {
            return bad("aggregator.max_delay_ms", "must be at least debounce_ms");
        }
        if !matches!(self.log.format.as_str(), "text" | "json") {
            return bad("log.format", "must be text or json");
        }
        self.validate_security()
    }

    /// Environment overrides that point a child `enablement serve` at this configuration's
    /// database, consumer group and listener (used by the bench and the integration tests).
    pub fn child_env(&self) -> Vec<(String, String)> {
        vec![
            (
                "ENABLEMENT__POSTGRES__URL".into(),
                self.postgres.url.clone(),
            ),
            (
                "ENABLEMENT__POSTGRES__MIGRATE_URL".into(),
                self.postgres.migrate_url.clone(),
            ),
            (
                "ENABLEMENT__KAFKA__GROUP_ID".into(),
                self.kafka.group_id.clone(),
            ),
            (
                "ENABLEMENT__KAFKA__TENANT_REFRESH_MS".into(),
                self.kafka.tenant_refresh_ms.to_string(),
            ),
            (
                "ENABLEMENT__KAFKA__TOPIC_PREFIX".into(),
                self.kafka.topic_prefix.clone(),
            ),
            (
                "ENABLEMENT__KAFKA__SHARED_TOPIC_PARTITIONS".into(),
                self.kafka.shared_topic_partitions.to_string(),
            ),
            (
                "ENABLEMENT__KAFKA__SESSION_TIMEOUT_MS".into(),
                self.kafka.session_timeout_ms.to_string(),
            ),
            (
                "ENABLEMENT__HTTP__LISTEN".into(),
                self.http.listen.to_string(),
            ),
            (
                "ENABLEMENT__HTTP__ALLOW_DEV_TOKEN".into(),
                self.http.allow_dev_token.to_string(),
            ),
            (
                "ENABLEMENT__SECRETS__KEYS".into(),
                self.secrets.keys.expose().to_owned(),
            ),
        ]
    }

    /// The effective `group.instance.id`.
    pub fn group_instance_id(&self) -> String {
        if !self.kafka.group_instance_id.is_empty() {
            return self.kafka.group_instance_id.clone();
        }
        let host = std::env::var("HOSTNAME")
            .ok()
            .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
            .map(|h| h.trim().to_owned())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "localhost".into());
        format!("enablement-{host}")
    }
}

pub fn is_sql_identifier(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && (b[0].is_ascii_lowercase() || b[0] == b'_')
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn the_shipped_config_toml_is_valid_and_matches_the_defaults() {
        let text = include_str!("../../config.toml");
        let from_file = Config::from_sources(text, "config.toml", env(&[])).unwrap();
        assert_eq!(
            toml::to_string(&from_file).unwrap(),
            toml::to_string(&Config::default()).unwrap()
        );
    }

    #[test]
    fn environment_overrides_any_key_with_the_right_type() {
        let c = Config::from_sources(
            "[kafka]\nbrokers = \"a:1\"\n",
            "t",
            env(&[
                ("ENABLEMENT__POSTGRES__URL", "postgres://x@db:5432/e"),
                ("ENABLEMENT__KAFKA__TOPIC_PREFIX", "prod."),
                ("ENABLEMENT__PIPELINE__MAX_BATCH_EVENTS", "42"),
                ("ENABLEMENT__HTTP__OPERATOR_TOKEN", "1234567890123456789"),
                ("UNRELATED", "x"),
            ]),
        )
        .unwrap();
        assert_eq!(c.postgres.url, "postgres://x@db:5432/e");
        assert_eq!(c.kafka.brokers, "a:1");
        assert_eq!(c.kafka.topic_prefix, "prod.");
        assert_eq!(c.pipeline.max_batch_events, 42);
        assert_eq!(c.http.operator_token.expose(), "1234567890123456789");
    }

    fn key_of(text: &str, vars: &[(&str, &str)]) -> String {
        match Config::from_sources(text, "t", env(vars)).unwrap_err() {
            ConfigError::Key { key, .. } => key,
            other => panic!("unexpected {other}"),
        }
    }

    #[test]
    fn unknown_keys_and_bad_values_name_the_key() {
        assert_eq!(key_of("[kafka]\nbrokerz = \"x\"\n", &[]), "kafka.brokerz");
        assert_eq!(key_of("[nope]\n", &[]), "nope");
        assert_eq!(
            key_of("", &[("ENABLEMENT__REDIS__URLL", "x")]),
            "redis.urll"
        );
        assert_eq!(
            key_of("[http]\nlisten = \"not an addr\"\n", &[]),
            "http.listen"
        );
        assert_eq!(
            key_of("", &[("ENABLEMENT__PIPELINE__MAX_BATCH_EVENTS", "lots")]),
            "pipeline.max_batch_events"
        );
        assert_eq!(
            key_of("[pipeline]\nlow_water_messages = 5000\n", &[]),
            "pipeline.low_water_messages"
        );
        assert_eq!(
            key_of("[postgres]\napp_role = \"x; drop\"\n", &[]),
            "postgres.app_role"
        );
        // Batch transactions must leave pool connections for job pumps and the API.
        assert_eq!(
            key_of("[postgres]\npool_max_size = 4\n", &[]),
            "pipeline.max_concurrent_batches"
        );
        assert_eq!(
            key_of("[kafka]\ntopic_prefix = \"a b\"\n", &[]),
            "kafka.topic_prefix"
        );
        assert!(matches!(
            Config::from_sources("", "t", env(&[("ENABLEMENT__KAFKA", "x")])),
            Err(ConfigError::Env { .. })
        ));
    }
}
