//! The security-related part of the configuration: [`Secret`] values that never print, the
//! `*_file` indirection for secrets mounted as files, and the checks of the TLS and SASL
//! keys of every backend (PostgreSQL, Redis, Kafka, MindTickle) and of the HTTP edge.
//!
//! Only the shape is checked here (modes, pairs of keys, readable files); whether the
//! certificates and passwords are *right* is learnt by connecting, in the start-up
//! preflight (`crate::preflight`).

use std::fmt;
use std::path::Path;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::{Config, ConfigError};

/// The operator token `config.toml` ships with: accepted only with `http.allow_dev_token`.
pub const DEV_OPERATOR_TOKEN: &str = "dev-operator-token-change-me";

/// A secret configuration value (password, token, key passphrase). `Debug` and `Display`
/// print `<redacted>`, so neither a log line nor an error can carry it; the value is read
/// only through [`Secret::expose`].
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_empty() {
            "\"\""
        } else {
            "<redacted>"
        })
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Secret)
    }
}

/// PostgreSQL TLS modes, as libpq names them.
pub const PG_SSLMODES: [&str; 4] = ["disable", "require", "verify-ca", "verify-full"];
/// librdkafka `security.protocol` values.
pub const KAFKA_PROTOCOLS: [&str; 4] = ["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"];
/// SASL mechanisms the service supports (no Kerberos: no GSSAPI library in the image).
pub const KAFKA_SASL_MECHANISMS: [&str; 3] = ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"];

fn bad(key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::Key {
        key: key.into(),
        message: message.into(),
    }
}

fn readable(key: &str, path: &str) -> Result<(), ConfigError> {
    if path.is_empty() {
        return Ok(());
    }
    std::fs::metadata(Path::new(path))
        .map(|_| ())
        .map_err(|e| bad(key, format!("cannot read {path}: {e}")))
}

/// Reads a secret from `file` into `value` when `file` is set (trailing newline dropped).
/// Setting both is refused: which one wins would be a guess.
fn resolve_file(
    value: &mut Secret,
    file: &str,
    value_key: &str,
    file_key: &str,
) -> Result<(), ConfigError> {
    if file.is_empty() {
        return Ok(());
    }
    if !value.is_empty() {
        return Err(bad(
            file_key,
            format!("set either {value_key} or {file_key}, not both"),
        ));
    }
    let text = std::fs::read_to_string(file)
        .map_err(|e| bad(file_key, format!("cannot read {file}: {e}")))?;
    *value = Secret(text.trim_end_matches(['\r', '\n']).to_owned());
    Ok(())
}

/// Splits libpq's TLS parameters out of a PostgreSQL URL's query (tokio-postgres knows only
/// `sslmode=disable|prefer|require`): `(url without them, sslmode, sslrootcert)`. A
/// key=value connection string is returned unchanged.
pub fn split_pg_tls_params(url: &str) -> (String, Option<String>, Option<String>) {
    let Some((base, query)) = url.split_once('?') else {
        return (url.to_owned(), None, None);
    };
    let (mut mode, mut root) = (None, None);
    let kept: Vec<&str> = query
        .split('&')
        .filter(|kv| match kv.split_once('=') {
            Some(("sslmode", v)) => {
                mode = Some(v.to_owned());
                false
            }
            Some(("sslrootcert", v)) => {
                root = Some(v.to_owned());
                false
            }
            _ => !kv.is_empty(),
        })
        .collect();
    let url = if kept.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    (url, mode, root)
}

impl Config {
    /// Loads the secrets given as files (`kafka.sasl_password_file`, ...). Called by
    /// [`Config::from_sources`] before validation.
    pub(super) fn resolve_secret_files(&mut self) -> Result<(), ConfigError> {
        let k = &mut self.kafka;
        resolve_file(
            &mut k.sasl_password,
            &k.sasl_password_file,
            "kafka.sasl_password",
            "kafka.sasl_password_file",
        )?;
        resolve_file(
            &mut k.ssl_key_password,
            &k.ssl_key_password_file,
            "kafka.ssl_key_password",
            "kafka.ssl_key_password_file",
        )?;
        let h = &mut self.http;
        resolve_file(
            &mut h.operator_token,
            &h.operator_token_file,
            "http.operator_token",
            "http.operator_token_file",
        )?;
        let s = &mut self.secrets;
        resolve_file(
            &mut s.keys,
            &s.keys_file,
            "secrets.keys",
            "secrets.keys_file",
        )
    }

    /// Checks the TLS, SASL and HTTP-edge keys.
    pub(super) fn validate_security(&self) -> Result<(), ConfigError> {
        let pg = &self.postgres;
        if !PG_SSLMODES.contains(&pg.sslmode.as_str()) {
            return Err(bad(
                "postgres.sslmode",
                "must be disable, require, verify-ca or verify-full",
            ));
        }
        for (key, url) in [
            ("postgres.url", &pg.url),
            ("postgres.migrate_url", &pg.migrate_url),
        ] {
            let (_, mode, root) = split_pg_tls_params(url);
            if mode.as_deref().is_some_and(|m| !PG_SSLMODES.contains(&m)) {
                return Err(bad(
                    key,
                    "sslmode must be disable, require, verify-ca or verify-full",
                ));
            }
            if let Some(root) = root {
                readable(key, &root)?;
            }
        }
        readable("postgres.sslrootcert", &pg.sslrootcert)?;
        if !pg.sslrootcert.is_empty() && !pg.sslmode.starts_with("verify") {
            return Err(bad(
                "postgres.sslrootcert",
                "is used only with sslmode verify-ca or verify-full (require checks no certificate)",
            ));
        }

        readable("redis.ca_file", &self.redis.ca_file)?;
        if !self.redis.ca_file.is_empty() && !self.redis.url.starts_with("rediss://") {
            return Err(bad("redis.ca_file", "is used only with a rediss:// url"));
        }

        let k = &self.kafka;
        if !KAFKA_PROTOCOLS.contains(&k.security_protocol.as_str()) {
            return Err(bad(
                "kafka.security_protocol",
                "must be PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL",
            ));
        }
        let tls = k.security_protocol.ends_with("SSL");
        let sasl = k.security_protocol.starts_with("SASL");
        for (key, path) in [
            ("kafka.ssl_ca_file", &k.ssl_ca_file),
            ("kafka.ssl_cert_file", &k.ssl_cert_file),
            ("kafka.ssl_key_file", &k.ssl_key_file),
        ] {
            readable(key, path)?;
            if !path.is_empty() && !tls {
                return Err(bad(key, "needs security_protocol SSL or SASL_SSL"));
            }
        }
        if k.ssl_cert_file.is_empty() != k.ssl_key_file.is_empty() {
            return Err(bad(
                "kafka.ssl_key_file",
                "ssl_cert_file and ssl_key_file go together",
            ));
        }
        if sasl {
            if !KAFKA_SASL_MECHANISMS.contains(&k.sasl_mechanism.as_str()) {
                return Err(bad(
                    "kafka.sasl_mechanism",
                    "must be PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512 with a SASL security_protocol",
                ));
            }
            if k.sasl_username.is_empty() || k.sasl_password.is_empty() {
                return Err(bad(
                    "kafka.sasl_password",
                    "sasl_username and sasl_password (or sasl_password_file) are required with a SASL security_protocol",
                ));
            }
        } else if !k.sasl_mechanism.is_empty() || !k.sasl_username.is_empty() {
            return Err(bad(
                "kafka.sasl_mechanism",
                "needs security_protocol SASL_PLAINTEXT or SASL_SSL",
            ));
        }

        let m = &self.mindtickle;
        for (key, path) in [
            ("mindtickle.ca_file", &m.ca_file),
            ("mindtickle.client_cert_file", &m.client_cert_file),
            ("mindtickle.client_key_file", &m.client_key_file),
        ] {
            readable(key, path)?;
        }
        if m.client_cert_file.is_empty() != m.client_key_file.is_empty() {
            return Err(bad(
                "mindtickle.client_key_file",
                "client_cert_file and client_key_file go together",
            ));
        }

        if let Err(e) = crate::sealing::SecretSealer::from_spec(self.secrets.keys.expose()) {
            return Err(bad("secrets.keys", e.to_string()));
        }
        let h = &self.http;
        if !h.internal_listen.is_empty()
            && h.internal_listen.parse::<std::net::SocketAddr>().is_err()
        {
            return Err(bad(
                "http.internal_listen",
                "must be empty or an ip:port address",
            ));
        }
        if h.header_read_timeout_ms == 0 || h.request_timeout_ms == 0 {
            return Err(bad(
                "http.request_timeout_ms",
                "header_read_timeout_ms and request_timeout_ms must be positive",
            ));
        }
        if h.max_concurrent_requests == 0
            || h.max_concurrent_requests_per_client == 0
            || h.max_concurrent_requests_per_client > h.max_concurrent_requests
        {
            return Err(bad(
                "http.max_concurrent_requests_per_client",
                "must be positive and at most max_concurrent_requests",
            ));
        }
        if h.auth_failures_per_min == 0 {
            return Err(bad("http.auth_failures_per_min", "must be positive"));
        }
        Ok(())
    }

    /// Refuses what is unsafe to *serve* with, though fine for the other commands: the
    /// operator token `config.toml` ships with, unless development is declared.
    pub fn check_serve_safety(&self) -> Result<(), ConfigError> {
        if self.http.operator_token.expose() == DEV_OPERATOR_TOKEN && !self.http.allow_dev_token {
            return Err(bad(
                "http.operator_token",
                "is the development token shipped in config.toml: set ENABLEMENT__HTTP__OPERATOR_TOKEN \
                 (or http.operator_token_file) to a secret of your own, or declare a development \
                 run with ENABLEMENT__HTTP__ALLOW_DEV_TOKEN=true",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libpq_tls_parameters_are_taken_out_of_the_url() {
        let (url, mode, root) = split_pg_tls_params(
            "postgres://u@db:5432/e?sslmode=verify-full&application_name=x&sslrootcert=/ca.pem",
        );
        assert_eq!(url, "postgres://u@db:5432/e?application_name=x");
        assert_eq!(mode.as_deref(), Some("verify-full"));
        assert_eq!(root.as_deref(), Some("/ca.pem"));
        assert_eq!(
            split_pg_tls_params("postgres://u@db/e").0,
            "postgres://u@db/e"
        );
    }

    #[test]
    fn a_secret_never_prints() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s:?} {s}"), "<redacted> <redacted>");
        assert_eq!(s.expose(), "hunter2");
    }

    fn err_key(text: &str, vars: &[(&str, &str)]) -> String {
        let vars = vars.iter().map(|(k, v)| (k.to_string(), v.to_string()));
        match Config::from_sources(text, "t", vars).unwrap_err() {
            ConfigError::Key { key, .. } => key,
            other => panic!("unexpected {other}"),
        }
    }

    #[test]
    fn tls_and_sasl_keys_are_checked_by_name() {
        assert_eq!(
            err_key("[postgres]\nsslmode = \"verify\"\n", &[]),
            "postgres.sslmode"
        );
        assert_eq!(
            err_key(
                "[postgres]\nsslmode = \"verify-full\"\nsslrootcert = \"/nonexistent.pem\"\n",
                &[]
            ),
            "postgres.sslrootcert"
        );
        assert_eq!(
            err_key("[redis]\nca_file = \"/etc/hostname\"\n", &[]),
            "redis.ca_file"
        );
        assert_eq!(
            err_key("", &[("ENABLEMENT__KAFKA__SECURITY_PROTOCOL", "SASL_SSL")]),
            "kafka.sasl_mechanism"
        );
        assert_eq!(
            err_key(
                "",
                &[
                    ("ENABLEMENT__KAFKA__SECURITY_PROTOCOL", "SASL_SSL"),
                    ("ENABLEMENT__KAFKA__SASL_MECHANISM", "SCRAM-SHA-512"),
                    ("ENABLEMENT__KAFKA__SASL_USERNAME", "svc"),
                ]
            ),
            "kafka.sasl_password"
        );
        assert_eq!(
            err_key("[kafka]\nssl_ca_file = \"/etc/hostname\"\n", &[]),
            "kafka.ssl_ca_file"
        );
        assert_eq!(
            err_key("[mindtickle]\nclient_cert_file = \"/etc/hostname\"\n", &[]),
            "mindtickle.client_key_file"
        );
        assert_eq!(
            err_key("[http]\ninternal_listen = \"nope\"\n", &[]),
            "http.internal_listen"
        );
    }

    #[test]
    fn a_secret_file_is_read_and_both_forms_at_once_are_refused() {
        let dir = std::env::temp_dir().join(format!("enablement-secret-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("sasl");
        std::fs::write(&file, "s3cret\n").unwrap();
        let file = file.display().to_string();
        let vars = [
            ("ENABLEMENT__KAFKA__SECURITY_PROTOCOL", "SASL_SSL"),
            ("ENABLEMENT__KAFKA__SASL_MECHANISM", "PLAIN"),
            ("ENABLEMENT__KAFKA__SASL_USERNAME", "svc"),
            ("ENABLEMENT__KAFKA__SASL_PASSWORD_FILE", file.as_str()),
        ];
        let c = Config::from_sources(
            "",
            "t",
            vars.iter().map(|(k, v)| (k.to_string(), v.to_string())),
        )
        .unwrap();
        assert_eq!(c.kafka.sasl_password.expose(), "s3cret");
        assert!(!format!("{c:?}").contains("s3cret"));
        let mut both = vars.to_vec();
        both.push(("ENABLEMENT__KAFKA__SASL_PASSWORD", "x"));
        assert_eq!(err_key("", &both), "kafka.sasl_password_file");
    }

    #[test]
    fn the_shipped_operator_token_is_refused_unless_development_is_declared() {
        let c = Config::default();
        assert!(
            matches!(c.check_serve_safety(), Err(ConfigError::Key { key, .. }) if key == "http.operator_token")
        );
        let mut dev = Config::default();
        dev.http.allow_dev_token = true;
        assert!(dev.check_serve_safety().is_ok());
        let mut prod = Config::default();
        prod.http.operator_token = Secret::new("a-real-operator-secret-0123456789");
        assert!(prod.check_serve_safety().is_ok());
    }
}
