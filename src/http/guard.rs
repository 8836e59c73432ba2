//! What keeps one hostile client from starving or probing the endpoint, per client address:
//! a cap on its requests in progress (429 beyond it), and a budget of failed
//! authentications (a governor keyed limiter, `http.auth_failures_per_min`). A client that
//! spends its budget gets 429 with `Retry-After` on every request until the budget
//! refills, before any token is looked at or any database work is done.
//!
//! The global limits (concurrency, request timeout, body size) are tower/tower-http layers
//! in [`super::router`]; the slow-header bound is in [`super::server`].

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock, DefaultClock};
use governor::{Quota, RateLimiter};

use super::error::ApiError;
use crate::actors::metric_names as m;

type KeyedLimiter =
    RateLimiter<IpAddr, governor::state::keyed::DefaultKeyedStateStore<IpAddr>, DefaultClock>;

/// Per-client state shared by every request of one listener.
pub struct ClientGuard {
    in_flight: Mutex<HashMap<IpAddr, usize>>,
    max_in_flight: usize,
    failures: KeyedLimiter,
    /// Clients whose failure budget is spent, until when.
    blocked: Mutex<HashMap<IpAddr, Instant>>,
    clock: DefaultClock,
}

impl ClientGuard {
    pub fn new(max_in_flight_per_client: usize, auth_failures_per_min: u32) -> Arc<Self> {
        let per_min = NonZeroU32::new(auth_failures_per_min).unwrap_or(NonZeroU32::MIN);
        Arc::new(Self {
            in_flight: Mutex::new(HashMap::new()),
            max_in_flight: max_in_flight_per_client,
            failures: RateLimiter::keyed(Quota::per_minute(per_min)),
            blocked: Mutex::new(HashMap::new()),
            clock: DefaultClock::default(),
        })
    }

    /// How long the client must still wait, if its failure budget is spent.
    fn blocked_for(&self, ip: IpAddr) -> Option<Duration> {
        let mut blocked = self.blocked.lock().ok()?;
        let until = *blocked.get(&ip)?;
        let now = Instant::now();
        if until > now {
            Some(until - now)
        } else {
            blocked.remove(&ip);
            None
        }
    }

    /// Counts one failed authentication; returns the wait when it spent the budget.
    fn failed(&self, ip: IpAddr) -> Option<Duration> {
        match self.failures.check_key(&ip) {
            Ok(()) => None,
            Err(not_until) => {
                let wait = not_until
                    .wait_time_from(self.clock.now())
                    .max(Duration::from_secs(1));
                if let Ok(mut blocked) = self.blocked.lock() {
                    // Bounded: forget expired entries when the map grows.
                    if blocked.len() > 10_000 {
                        let now = Instant::now();
                        blocked.retain(|_, until| *until > now);
                    }
                    blocked.insert(ip, Instant::now() + wait);
                }
                self.failures.retain_recent();
                Some(wait)
            }
        }
    }

    fn enter(&self, ip: IpAddr) -> bool {
        let Ok(mut map) = self.in_flight.lock() else {
            return true;
        };
        let n = map.entry(ip).or_insert(0);
        if *n >= self.max_in_flight {
            return false;
        }
        *n += 1;
        true
    }

    fn leave(&self, ip: IpAddr) {
        if let Ok(mut map) = self.in_flight.lock() {
            if let Some(n) = map.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    map.remove(&ip);
                }
            }
        }
    }
}

/// Leaves the in-flight count when the request ends, however it ends (a timeout drops it).
struct InFlight<'a> {
    guard: &'a ClientGuard,
    ip: IpAddr,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.guard.leave(self.ip);
    }
}

/// A 429 with `Retry-After`; on the SCIM paths in the SCIM error schema, as SCIM clients
/// expect every answer there to be.
fn too_many(
    scim: bool,
    code: &'static str,
    message: &'static str,
    retry_after: Duration,
) -> Response {
    let mut r = if scim {
        super::scim::error_response(StatusCode::TOO_MANY_REQUESTS, message)
    } else {
        ApiError::new(StatusCode::TOO_MANY_REQUESTS, code, message).into_response()
    };
    let secs = retry_after.as_secs_f64().ceil().max(1.0) as u64;
    if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
        r.headers_mut().insert("retry-after", v);
    }
    r
}

/// The middleware: refuse a blocked client, cap its requests in progress, count its 401s.
pub async fn per_client(
    State(guard): State<Arc<ClientGuard>>,
    req: Request,
    next: Next,
) -> Response {
    let ip = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip())
        .unwrap_or(IpAddr::from([0, 0, 0, 0]));
    let scim = req.uri().path().starts_with("/scim/");
    if let Some(wait) = guard.blocked_for(ip) {
        metrics::counter!(m::HTTP_REFUSED_TOTAL, "reason" => "auth_failures").increment(1);
        return too_many(
            scim,
            "too_many_auth_failures",
            "too many failed authentications from this address; retry later",
            wait,
        );
    }
    if !guard.enter(ip) {
        metrics::counter!(m::HTTP_REFUSED_TOTAL, "reason" => "client_concurrency").increment(1);
        return too_many(
            scim,
            "too_many_requests",
            "too many requests in progress from this address",
            Duration::from_secs(1),
        );
    }
    let _in_flight = InFlight { guard: &guard, ip };
    let response = next.run(req).await;
    if response.status() == StatusCode::UNAUTHORIZED {
        if let Some(wait) = guard.failed(ip) {
            metrics::counter!(m::HTTP_REFUSED_TOTAL, "reason" => "auth_failures").increment(1);
            return too_many(
                scim,
                "too_many_auth_failures",
                "too many failed authentications from this address; retry later",
                wait,
            );
        }
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_failure_budget_blocks_then_the_in_flight_cap_counts_per_address() {
        let g = ClientGuard::new(2, 3);
        let a: IpAddr = [10, 0, 0, 1].into();
        let b: IpAddr = [10, 0, 0, 2].into();
        assert!(g.failed(a).is_none() && g.failed(a).is_none() && g.failed(a).is_none());
        let wait = g
            .failed(a)
            .expect("the fourth failure in a minute spends the budget");
        assert!(
            wait >= Duration::from_secs(1) && wait <= Duration::from_secs(60),
            "{wait:?}"
        );
        assert!(g.blocked_for(a).is_some());
        assert!(
            g.blocked_for(b).is_none(),
            "another address is not affected"
        );
        assert!(g.enter(b) && g.enter(b));
        assert!(!g.enter(b), "a third request in progress is refused");
        g.leave(b);
        assert!(g.enter(b));
    }
}
