//! Logging (`tracing`) and metrics (the `metrics` facade rendered in Prometheus format).
//! Metric names are declared once, in `enablement_actors::metric_names`.

use metrics::{
    Counter, Gauge, Histogram, Key, KeyName, Label, Metadata, Recorder, SharedString, Unit,
};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::EnvFilter;

use crate::actors::metric_names as m;
use crate::config::LogConfig;

pub fn init_logging(cfg: &LogConfig) {
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|f| EnvFilter::try_new(f).ok())
        .or_else(|| EnvFilter::try_new(&cfg.filter).ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = if cfg.format == "json" {
        // One object per line, the event's fields at the top level beside `timestamp`,
        // `level`, `target` and `message` (README, "Logs").
        builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .try_init()
    } else {
        builder.try_init()
    };
}

/// Installs the process-wide Prometheus recorder and returns the handle `/metrics` renders.
/// Metrics named in `untenanted` lose their `tenant` label on the way in.
pub fn init_metrics(untenanted: &[String]) -> Result<PrometheusHandle, String> {
    let recorder = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full(m::SCIM_BATCH_DURATION_SECONDS.into()),
            &[
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ],
        )
        .and_then(|b| {
            b.set_buckets_for_metric(
                Matcher::Full(m::SCIM_BATCH_SIZE_EVENTS.into()),
                &[1.0, 5.0, 10.0, 50.0, 100.0, 250.0, 500.0, 1000.0],
            )
        })
        .and_then(|b| {
            b.set_buckets_for_metric(
                Matcher::Full(m::HTTP_REQUEST_DURATION_SECONDS.into()),
                &[
                    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                ],
            )
        })
        .and_then(|b| {
            b.set_buckets_for_metric(
                Matcher::Full(m::UPSTREAM_PERMIT_WAIT_SECONDS.into()),
                &[0.001, 0.01, 0.1, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0],
            )
        })
        .map_err(|e| e.to_string())?
        .build_recorder();
    let handle = recorder.handle();
    let filtered = WithoutTenantLabel {
        inner: recorder,
        names: untenanted.iter().cloned().collect(),
    };
    metrics::set_global_recorder(filtered).map_err(|e| e.to_string())?;
    describe_all();
    Ok(handle)
}

/// Gives every metric of the catalog its `# HELP` line.
fn describe_all() {
    for metric in m::CATALOG {
        match metric.kind {
            m::Kind::Counter => metrics::describe_counter!(metric.name, metric.help),
            m::Kind::Gauge => metrics::describe_gauge!(metric.name, metric.help),
            m::Kind::Histogram => metrics::describe_histogram!(metric.name, metric.help),
        }
    }
}

/// A recorder that drops the `tenant` label of the metrics in `names` before the inner
/// recorder sees them: their per-tenant series collapse into one.
struct WithoutTenantLabel<R> {
    inner: R,
    names: std::collections::HashSet<String>,
}

impl<R> WithoutTenantLabel<R> {
    fn key(&self, key: &Key) -> Key {
        if !self.names.contains(key.name()) {
            return key.clone();
        }
        let labels: Vec<Label> = key
            .labels()
            .filter(|l| l.key() != "tenant")
            .cloned()
            .collect();
        Key::from_parts(key.name().to_owned(), labels)
    }
}

impl<R: Recorder> Recorder for WithoutTenantLabel<R> {
    fn describe_counter(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.inner.describe_counter(key, unit, description)
    }
    fn describe_gauge(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.inner.describe_gauge(key, unit, description)
    }
    fn describe_histogram(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.inner.describe_histogram(key, unit, description)
    }
    fn register_counter(&self, key: &Key, metadata: &Metadata<'_>) -> Counter {
        self.inner.register_counter(&self.key(key), metadata)
    }
    fn register_gauge(&self, key: &Key, metadata: &Metadata<'_>) -> Gauge {
        self.inner.register_gauge(&self.key(key), metadata)
    }
    fn register_histogram(&self, key: &Key, metadata: &Metadata<'_>) -> Histogram {
        self.inner.register_histogram(&self.key(key), metadata)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn named_metrics_lose_their_tenant_label_and_sum_over_tenants() {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        let filtered = WithoutTenantLabel {
            inner: recorder,
            names: ["enablement_scim_events_total".to_owned()].into(),
        };
        metrics::with_local_recorder(&filtered, || {
            for tenant in ["acme", "globex"] {
                metrics::counter!("enablement_scim_events_total", "tenant" => tenant, "outcome" => "applied")
                    .increment(2);
                metrics::counter!("enablement_outbox_published_total", "tenant" => tenant)
                    .increment(1);
            }
        });
        let text = handle.render();
        assert!(
            text.contains("enablement_scim_events_total{outcome=\"applied\"} 4"),
            "{text}"
        );
        assert!(
            !text.contains("enablement_scim_events_total{tenant"),
            "{text}"
        );
        assert!(
            text.contains("enablement_outbox_published_total{tenant=\"acme\"} 1"),
            "others keep the label: {text}"
        );
    }
}
