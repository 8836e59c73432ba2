//! The MindTickle upstream as the actors see it: the [`MindTickleApi`] port, and the
//! per-tenant [`TenantLimiter`] that every call goes through.
//!
//! The limiter is a `governor` GCRA bucket (60 requests/min sustained with a small burst by
//! default, overridable per tenant) on a clock driven by tokio's, so tests run it on a
//! paused, controllable clock. Work waits for a permit; nothing is sent to be refused. When
//! the platform still answers 429 or 5xx, only that tenant pauses: for `Retry-After`
//! (capped) when given, else for an exponential backoff with jitter.

use std::num::NonZeroU32;
use std::ops::Add;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use governor::clock::{Clock, Reference};
use governor::nanos::Nanos;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::events::{InternalEvent, UpstreamCalled};
use crate::tenant::TenantId;

/// A course of a user as the platform reports it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UpstreamCourse {
    pub course_id: String,
    pub title: String,
    pub status: CourseStatus,
    pub quiz_score: Option<f64>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub completed_at: Option<OffsetDateTime>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CourseStatus {
    NotStarted,
    InProgress,
    Completed,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CatalogCourse {
    pub id: String,
    pub title: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RosterUser {
    pub id: String,
    pub email: Option<String>,
    pub role: Option<String>,
    pub active: bool,
}

/// How an upstream call failed; secrets are never part of it.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum UpstreamError {
    #[error("rate limited by the platform")]
    RateLimited { retry_after: Option<Duration> },
    #[error("platform error {status}")]
    Server { status: u16 },
    #[error("credentials rejected")]
    Unauthorized,
    #[error("not found")]
    NotFound,
    #[error("request timed out")]
    Timeout,
    #[error("transport error: {0}")]
    Transport(String),
    #[error("unexpected answer: {0}")]
    Invalid(String),
    #[error("no upstream credentials for this tenant")]
    NoCredentials,
}

impl UpstreamError {
    /// Worth retrying after a pause (the tenant's own budget or the platform's health).
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            UpstreamError::RateLimited { .. }
                | UpstreamError::Server { .. }
                | UpstreamError::Timeout
                | UpstreamError::Transport(_)
        )
    }
}

/// The MindTickle REST API, per tenant (the adapter holds each tenant's credentials).
#[async_trait]
pub trait MindTickleApi: Send + Sync + 'static {
    async fn user_courses(
        &self,
        tenant: &TenantId,
        user_id: &str,
    ) -> Result<Vec<UpstreamCourse>, UpstreamError>;
    async fn catalog(&self, tenant: &TenantId) -> Result<Vec<CatalogCourse>, UpstreamError>;
    async fn roster(&self, tenant: &TenantId) -> Result<Vec<RosterUser>, UpstreamError>;
    /// Pushes a SCIM change (the `user_changed` payload): deactivates the user when it is
    /// inactive, else creates or replaces it. Idempotent.
    async fn push_user(
        &self,
        tenant: &TenantId,
        change: &serde_json::Value,
    ) -> Result<(), UpstreamError>;
}

/// A point on tokio's clock, so governor follows `tokio::time::pause`/`advance`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct TokioInstant(tokio::time::Instant);

impl Add<Nanos> for TokioInstant {
    type Output = TokioInstant;
    fn add(self, other: Nanos) -> TokioInstant {
        TokioInstant(self.0 + Duration::from(other))
    }
}

impl Reference for TokioInstant {
    fn duration_since(&self, earlier: Self) -> Nanos {
        self.0.saturating_duration_since(earlier.0).into()
    }
    fn saturating_sub(&self, duration: Nanos) -> Self {
        TokioInstant(self.0.checked_sub(duration.into()).unwrap_or(self.0))
    }
}

#[derive(Debug, Clone, Copy, Default)]
pub struct TokioClock;

impl Clock for TokioClock {
    type Instant = TokioInstant;
    fn now(&self) -> TokioInstant {
        TokioInstant(tokio::time::Instant::now())
    }
}

/// Limits and retry policy of one tenant's upstream calls.
#[derive(Debug, Clone, PartialEq)]
pub struct LimiterSettings {
    pub requests_per_min: u32,
    pub burst: u32,
    /// Longest `Retry-After` honoured (a hostile or buggy value cannot park a tenant).
    pub max_retry_after: Duration,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// Attempts per call before the error is returned.
    pub max_attempts: u32,
}

impl Default for LimiterSettings {
    fn default() -> Self {
        Self {
            requests_per_min: 60,
            burst: 3,
            max_retry_after: Duration::from_secs(120),
            backoff_initial: Duration::from_millis(500),
            backoff_max: Duration::from_secs(60),
            max_attempts: 6,
        }
    }
}

type Gcra = RateLimiter<
    NotKeyed,
    InMemoryState,
    TokioClock,
    governor::middleware::NoOpMiddleware<TokioInstant>,
>;

/// The per-tenant permit source. Used by the tenant's actor only; kept by the supervisor's
/// [`LimiterBook`] across the actor's restarts and passivation.
pub struct TenantLimiter {
    /// Metric label; empty in unit tests.
    tenant: String,
    gcra: Gcra,
    settings: LimiterSettings,
    /// While set, the tenant pauses after a 429/5xx: no permit before this instant.
    paused_until: Mutex<Option<tokio::time::Instant>>,
    jitter: std::collections::hash_map::RandomState,
}

impl TenantLimiter {
    /// A limiter whose metrics carry `tenant`'s label.
    /// The limiter of a tenant actor that is starting. It starts with its burst spent:
    /// the platform still counts what a previous incarnation (a crashed process, another
    /// instance that owned the tenant a moment ago) sent in the current window, so a fresh
    /// burst on top of it could be refused. The first call waits at most one interval.
    pub fn for_tenant(tenant: &TenantId, settings: LimiterSettings) -> Self {
        let mut l = Self::new(settings);
        l.tenant = tenant.as_str().to_owned();
        let burst = NonZeroU32::new(l.settings.burst.max(1)).unwrap_or(NonZeroU32::MIN);
        let _ = l.gcra.check_n(burst);
        l
    }

    pub fn new(settings: LimiterSettings) -> Self {
        let per_min = NonZeroU32::new(settings.requests_per_min.max(1)).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(settings.burst.max(1)).unwrap_or(NonZeroU32::MIN);
        let quota = Quota::per_minute(per_min).allow_burst(burst);
        Self {
            tenant: String::new(),
            gcra: RateLimiter::direct_with_clock(quota, TokioClock),
            settings,
            paused_until: Mutex::new(None),
            jitter: Default::default(),
        }
    }

    /// Waits until a request may be sent. Returns how long it waited.
    pub async fn acquire(&self) -> Duration {
        let started = tokio::time::Instant::now();
        loop {
            let pause = *self.paused_until.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(until) = pause {
                if tokio::time::Instant::now() < until {
                    tokio::time::sleep_until(until).await;
                    continue;
                }
            }
            match self.gcra.check() {
                Ok(()) => return started.elapsed(),
                Err(not_until) => {
                    tokio::time::sleep(not_until.wait_time_from(TokioClock.now())).await;
                }
            }
        }
    }

    /// The pause after a failed attempt (`attempt` counts from 1).
    pub fn backoff(&self, error: &UpstreamError, attempt: u32) -> Duration {
        if let UpstreamError::RateLimited {
            retry_after: Some(d),
        } = error
        {
            return (*d).min(self.settings.max_retry_after);
        }
        // Full jitter on the upper half: between 50% and 100% of the exponential step.
        crate::backoff::Backoff::new(self.settings.backoff_initial, self.settings.backoff_max)
            .jittered(&self.jitter, b"", attempt, 0.5, 1.0)
    }

    /// Runs `call` under the limiter, pausing only this tenant on 429/5xx and retrying up
    /// to `max_attempts`.
    pub async fn run<T, F, Fut>(&self, mut call: F) -> Result<T, UpstreamError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, UpstreamError>>,
    {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let waited = self.acquire().await;
            let result = call().await;
            let status = match &result {
                Ok(_) => "ok",
                Err(UpstreamError::RateLimited { .. }) => "429",
                Err(UpstreamError::Server { .. }) => "5xx",
                Err(UpstreamError::Unauthorized) => "unauthorized",
                Err(UpstreamError::NotFound) => "not_found",
                Err(UpstreamError::Timeout) => "timeout",
                Err(_) => "error",
            };
            UpstreamCalled {
                tenant: &self.tenant,
                status,
                waited,
            }
            .emit();
            match result {
                Ok(v) => return Ok(v),
                Err(e) if e.is_retryable() && attempt < self.settings.max_attempts => {
                    let pause = self.backoff(&e, attempt);
                    *self.paused_until.lock().unwrap_or_else(|p| p.into_inner()) =
                        Some(tokio::time::Instant::now() + pause);
                }
                Err(e) => return Err(e),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use tokio::time::Instant;

    /// A fake platform recording when each call arrived.
    #[derive(Default)]
    struct Recorder {
        calls: Mutex<Vec<Instant>>,
        /// Answer 429 (Retry-After 30 s) to this many calls first.
        storm: Mutex<u32>,
    }

    impl Recorder {
        async fn call(&self) -> Result<(), UpstreamError> {
            self.calls.lock().unwrap().push(Instant::now());
            let mut storm = self.storm.lock().unwrap();
            if *storm > 0 {
                *storm -= 1;
                return Err(UpstreamError::RateLimited {
                    retry_after: Some(Duration::from_secs(30)),
                });
            }
            Ok(())
        }
        fn max_in_any_window(&self, window: Duration) -> usize {
            let calls = self.calls.lock().unwrap();
            (0..calls.len())
                .map(|i| {
                    calls[i..]
                        .iter()
                        .take_while(|t| **t - calls[i] < window)
                        .count()
                })
                .max()
                .unwrap_or(0)
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_sustained_rate_never_exceeds_the_quota() {
        let limiter = TenantLimiter::new(LimiterSettings::default());
        let api = Recorder::default();
        let started = Instant::now();
        for _ in 0..300 {
            limiter.run(|| api.call()).await.unwrap();
        }
        let elapsed = started.elapsed();
        // 300 calls at 60/min with a burst of 3 need at least (300 - 3) seconds.
        assert!(elapsed >= Duration::from_secs(297), "{elapsed:?}");
        assert!(
            elapsed <= Duration::from_secs(301),
            "the whole budget is used: {elapsed:?}"
        );
        assert!(api.max_in_any_window(Duration::from_secs(60)) <= 60 + 3);
        assert!(api.max_in_any_window(Duration::from_secs(1)) <= 3);
    }

    #[tokio::test(start_paused = true)]
    async fn a_429_storm_pauses_only_the_tenant_that_got_it() {
        let (a_lim, b_lim) = (
            Arc::new(TenantLimiter::new(LimiterSettings::default())),
            Arc::new(TenantLimiter::new(LimiterSettings::default())),
        );
        let (a_api, b_api) = (Arc::new(Recorder::default()), Arc::new(Recorder::default()));
        *a_api.storm.lock().unwrap() = 2;
        let started = Instant::now();
        let a = {
            let (l, api) = (a_lim.clone(), a_api.clone());
            tokio::spawn(async move {
                for _ in 0..10 {
                    l.run(|| api.call()).await.unwrap();
                }
                started.elapsed()
            })
        };
        let b = {
            let (l, api) = (b_lim.clone(), b_api.clone());
            tokio::spawn(async move {
                for _ in 0..10 {
                    l.run(|| api.call()).await.unwrap();
                }
                started.elapsed()
            })
        };
        let (a_took, b_took) = (a.await.unwrap(), b.await.unwrap());
        // B: 10 calls at its own pace (burst 3, then 1/s) = 7 s, untouched by A's storm.
        assert!(b_took <= Duration::from_secs(8), "{b_took:?}");
        // A honoured Retry-After twice (2 x 30 s) before its calls went through.
        assert!(a_took >= Duration::from_secs(60), "{a_took:?}");
        assert_eq!(a_api.calls.lock().unwrap().len(), 12);
        let a_calls = a_api.calls.lock().unwrap();
        assert!(a_calls[1] - a_calls[0] >= Duration::from_secs(30));
    }

    #[test]
    fn retry_after_is_capped_and_backoff_grows_with_jitter() {
        let l = TenantLimiter::new(LimiterSettings::default());
        let huge = UpstreamError::RateLimited {
            retry_after: Some(Duration::from_secs(86_400)),
        };
        assert_eq!(l.backoff(&huge, 1), Duration::from_secs(120));
        let e = UpstreamError::Server { status: 503 };
        let (b1, b4) = (l.backoff(&e, 1), l.backoff(&e, 4));
        assert!(b1 >= Duration::from_millis(250) && b1 <= Duration::from_millis(500));
        assert!(b4 >= Duration::from_secs(2) && b4 <= Duration::from_secs(4));
        assert!(l.backoff(&e, 30) <= Duration::from_secs(60));
        assert!(!UpstreamError::Unauthorized.is_retryable());
    }
}

/// The limiters of the tenants owned by this process, kept by the supervisor while a
/// tenant's actor restarts or is passivated: the budget a tenant spent is not forgotten by
/// stopping and starting its actor (passivating and waking cannot exceed the quota). A
/// tenant's entry goes when its partition leaves this instance.
#[derive(Default)]
pub struct LimiterBook {
    limiters: Mutex<std::collections::HashMap<TenantId, Arc<TenantLimiter>>>,
}

impl LimiterBook {
    /// The tenant's limiter: the one kept for it if its settings are unchanged, else a new
    /// one (a changed quota override takes effect at the actor's next start).
    pub fn limiter(&self, tenant: &TenantId, settings: LimiterSettings) -> Arc<TenantLimiter> {
        let mut book = self.limiters.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(l) = book.get(tenant) {
            if l.settings == settings {
                return l.clone();
            }
        }
        let l = Arc::new(TenantLimiter::for_tenant(tenant, settings));
        book.insert(tenant.clone(), l.clone());
        l
    }

    /// Forgets the tenant (its partition moved to another instance).
    pub fn forget(&self, tenant: &TenantId) {
        self.limiters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(tenant);
    }

    pub fn len(&self) -> usize {
        self.limiters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
