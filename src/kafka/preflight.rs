//! The start-up check of the Kafka settings: one metadata request with the service's own
//! client settings, and librdkafka's error reports read to tell a configuration mistake
//! (a CA that does not sign the broker's certificate, a wrong SASL password, plaintext
//! against a TLS listener) from a broker that is only unreachable.
//!
//! The first refuses the start, naming the setting; the second does not: the service
//! survives a broker that is down and connects when it returns.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};

use super::base_client_config;
use crate::config::KafkaConfig;

#[derive(Debug, thiserror::Error)]
pub enum KafkaStartError {
    /// The settings are wrong (exit 2).
    #[error("{key}: {reason}")]
    Refused { key: &'static str, reason: String },
    /// No broker answered in time: the service starts and keeps trying.
    #[error("no Kafka broker answered: {0}")]
    Unavailable(String),
}

/// Records what librdkafka reports while the preflight runs.
#[derive(Default)]
struct Reports(Arc<Mutex<Vec<Report>>>);

/// One error or connection-failure log line librdkafka reported.
type Report = (Option<RDKafkaErrorCode>, String);

impl ConsumerContext for Reports {}

impl ClientContext for Reports {
    fn error(&self, error: KafkaError, reason: &str) {
        if let Ok(mut seen) = self.0.lock() {
            seen.push((error.rdkafka_error_code(), reason.to_owned()));
        }
    }
    fn log(&self, _level: rdkafka::config::RDKafkaLogLevel, fac: &str, log_message: &str) {
        if fac == "FAIL" {
            if let Ok(mut seen) = self.0.lock() {
                seen.push((None, log_message.to_owned()));
            }
        }
    }
}

/// A plaintext client whose every connection the broker accepted and then closed at the
/// first request: what a TLS listener does to plaintext (a down broker refuses instead).
fn closed_at_first_request(cfg: &KafkaConfig, reports: &[Report]) -> Option<KafkaStartError> {
    let plaintext = !cfg.security_protocol.ends_with("SSL");
    let closed = reports
        .iter()
        .any(|(_, r)| r.contains("APIVERSION_QUERY") && r.contains("closed"));
    let refused = reports
        .iter()
        .any(|(_, r)| r.contains("Connection refused"));
    (plaintext && closed && !refused).then(|| KafkaStartError::Refused {
        key: "kafka.security_protocol",
        reason: format!(
            "{} against a broker that closes every connection at its first request: a TLS \
             listener? use SSL or SASL_SSL",
            cfg.security_protocol
        ),
    })
}

/// What the reports say about the settings, if anything.
fn diagnose(reports: &[Report]) -> Option<KafkaStartError> {
    for (code, reason) in reports {
        let lower = reason.to_ascii_lowercase();
        if *code == Some(RDKafkaErrorCode::Authentication) || lower.contains("sasl authentication")
        {
            return Some(KafkaStartError::Refused {
                key: "kafka.sasl_password",
                reason: format!(
                    "the broker refused the SASL login (username, password or mechanism): {reason}"
                ),
            });
        }
        if lower.contains("certificate verify failed")
            || lower.contains("unable to get local issuer")
        {
            return Some(KafkaStartError::Refused {
                key: "kafka.ssl_ca_file",
                reason: format!("the broker's certificate is not trusted: {reason}"),
            });
        }
        if lower.contains("security.protocol") || lower.contains("connecting to a ssl listener") {
            return Some(KafkaStartError::Refused {
                key: "kafka.security_protocol",
                reason: format!("the broker speaks another protocol: {reason}"),
            });
        }
        if *code == Some(RDKafkaErrorCode::SSL) || lower.contains("ssl handshake failed") {
            return Some(KafkaStartError::Refused {
                key: "kafka.security_protocol",
                reason: format!("the TLS handshake failed (plaintext listener, or a certificate problem): {reason}"),
            });
        }
    }
    None
}

/// Runs the check (blocking up to `timeout`; call from `spawn_blocking`).
pub fn preflight(cfg: &KafkaConfig, timeout: Duration) -> Result<(), KafkaStartError> {
    let reports = Reports::default();
    let seen = reports.0.clone();
    let client: BaseConsumer<Reports> = base_client_config(cfg)
        .set("reconnect.backoff.ms", "200")
        // Connection failures are logged at info level: this client reads them (above).
        .set_log_level(rdkafka::config::RDKafkaLogLevel::Info)
        .create_with_context(reports)
        .map_err(|e| KafkaStartError::Refused {
            key: "kafka.security_protocol",
            reason: format!("librdkafka refused the client settings: {e}"),
        })?;
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let step = Duration::from_millis(1_000)
            .min(deadline.saturating_duration_since(std::time::Instant::now()));
        let result = client.fetch_metadata(None, step.max(Duration::from_millis(100)));
        // Error reports are callbacks: they are delivered only while the client is polled.
        let _ = client.poll(Duration::from_millis(100));
        let reports = seen.lock().map(|s| s.clone()).unwrap_or_default();
        if let Some(refused) = diagnose(&reports) {
            return Err(refused);
        }
        match result {
            Ok(_) => return Ok(()),
            Err(e) if std::time::Instant::now() >= deadline => {
                if let Some(refused) = closed_at_first_request(cfg, &reports) {
                    return Err(refused);
                }
                let last = reports
                    .last()
                    .map(|(_, r)| r.clone())
                    .unwrap_or_else(|| e.to_string());
                return Err(KafkaStartError::Unavailable(last));
            }
            Err(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn librdkafka_reports_name_the_setting_to_fix() {
        let key = |code, reason: &str| match diagnose(&[(code, reason.to_owned())]) {
            Some(KafkaStartError::Refused { key, .. }) => key,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            key(
                Some(RDKafkaErrorCode::Authentication),
                "SASL authentication error: Authentication failed"
            ),
            "kafka.sasl_password"
        );
        assert_eq!(
            key(Some(RDKafkaErrorCode::SSL), "ssl://127.0.0.1:1/bootstrap: SSL handshake failed: error:0A000086:SSL routines::certificate verify failed"),
            "kafka.ssl_ca_file"
        );
        assert_eq!(
            key(None, "Disconnected while requesting ApiVersion: might be caused by incorrect security.protocol configuration (connecting to a SSL listener?)"),
            "kafka.security_protocol"
        );
        assert!(diagnose(&[(
            Some(RDKafkaErrorCode::AllBrokersDown),
            "1/1 brokers are down".into()
        )])
        .is_none());
    }
}
