//! [`RestartPolicy`]: what the supervisor knows about each tenant it owns and what it does
//! when a tenant's actor fails. Plain data, generic over the handle of a running actor, so
//! the decisions are tested here without spawning anything.
//!
//! - A failure is restarted after a capped, jittered exponential backoff (jitter spreads
//!   tenants that failed together, e.g. when the database restarted).
//! - More than `max_consecutive_failures` in a row park the tenant for `park_duration`
//!   (visible in `/readyz` and metrics) while every other tenant keeps flowing.
//! - An actor that ran `healthy_after` without failing has its streak reset.
//! - Every failure bumps the tenant's generation, so a restart timer of an earlier failure
//!   never starts a second actor.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;

use crate::backoff::Backoff;
use crate::events::{InternalEvent, TenantActorFailed};
use crate::tenant::TenantId;

#[derive(Debug, Clone)]
pub struct SupervisorSettings {
    pub restart_backoff_initial: Duration,
    pub restart_backoff_max: Duration,
    /// Failures in a row (without a healthy run in between) before the tenant is parked.
    pub max_consecutive_failures: u32,
    /// How long a parked tenant waits before one more attempt.
    pub park_duration: Duration,
    /// An actor that ran this long without failing has its failure streak reset.
    pub healthy_after: Duration,
    /// Upper bound on draining one tenant on revocation or shutdown.
    pub drain_timeout: Duration,
    /// A running actor idle (no record, job or request) this long is passivated: stopped,
    /// its partition kept, woken by the next record, job or request. `None`: never.
    pub passivate_after: Option<Duration>,
    /// With passivation on: a newly assigned tenant starts passivated (its actor starts on
    /// its first record, a pending job or outbox row, or a request), so an instance
    /// assigned thousands of tenants is serving at once instead of spawning every actor.
    pub start_passivated: bool,
}

impl Default for SupervisorSettings {
    fn default() -> Self {
        Self {
            restart_backoff_initial: Duration::from_millis(200),
            restart_backoff_max: Duration::from_secs(30),
            max_consecutive_failures: 8,
            park_duration: Duration::from_secs(300),
            healthy_after: Duration::from_secs(60),
            drain_timeout: Duration::from_secs(20),
            passivate_after: Some(Duration::from_secs(600)),
            start_passivated: false,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ActorStatus {
    Running,
    Restarting,
    Parked,
    /// Stopped while idle; its partition stays assigned here and it starts on demand.
    Passivated,
}

#[derive(Debug, Clone, Serialize)]
pub struct TenantHealth {
    pub tenant: TenantId,
    pub status: ActorStatus,
    pub restarts: u64,
}

/// When to try a failed tenant again: send yourself a restart for `generation` after `delay`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestartAfter {
    pub delay: Duration,
    pub generation: u64,
    pub parked: bool,
}

enum Phase<R> {
    Running { handle: R, started: Instant },
    Restarting,
    Parked,
    Passivated,
}

struct Slot<R> {
    phase: Phase<R>,
    failures_in_row: u32,
    restarts: u64,
    generation: u64,
}

pub struct RestartPolicy<R> {
    settings: SupervisorSettings,
    slots: HashMap<TenantId, Slot<R>>,
    jitter: RandomState,
}

impl<R> RestartPolicy<R> {
    pub fn new(settings: SupervisorSettings) -> Self {
        Self {
            settings,
            slots: HashMap::new(),
            jitter: RandomState::new(),
        }
    }

    /// Takes the tenant on; true when it is new here (the caller starts its actor).
    pub fn admit(&mut self, tenant: &TenantId) -> bool {
        if self.slots.contains_key(tenant) {
            return false;
        }
        self.slots.insert(
            tenant.clone(),
            Slot {
                phase: Phase::Restarting,
                failures_in_row: 0,
                restarts: 0,
                generation: 0,
            },
        );
        true
    }

    /// Takes the tenant on, passivated (started on demand); true when it is new here.
    pub fn admit_passivated(&mut self, tenant: &TenantId) -> bool {
        if !self.admit(tenant) {
            return false;
        }
        if let Some(slot) = self.slots.get_mut(tenant) {
            slot.phase = Phase::Passivated;
        }
        true
    }

    /// True when a restart timer of `generation` should start the tenant's actor now.
    pub fn restart_due(&self, tenant: &TenantId, generation: u64) -> bool {
        self.slots.get(tenant).is_some_and(|s| {
            s.generation == generation && matches!(s.phase, Phase::Restarting | Phase::Parked)
        })
    }

    /// The tenant's actor started.
    pub fn running(&mut self, tenant: &TenantId, handle: R) {
        if let Some(slot) = self.slots.get_mut(tenant) {
            slot.phase = Phase::Running {
                handle,
                started: Instant::now(),
            };
        }
    }

    /// The tenant's actor failed, stopped unexpectedly or could not start: count it and
    /// decide when to try again. `None` when the tenant is no longer owned here.
    pub fn failed(&mut self, tenant: &TenantId, reason: &str) -> Option<RestartAfter> {
        let slot = self.slots.get_mut(tenant)?;
        if let Phase::Running { started, .. } = &slot.phase {
            if started.elapsed() >= self.settings.healthy_after {
                slot.failures_in_row = 0;
            }
        }
        slot.failures_in_row += 1;
        slot.restarts += 1;
        slot.generation += 1;
        let parked = slot.failures_in_row > self.settings.max_consecutive_failures;
        let delay = if parked {
            slot.phase = Phase::Parked;
            self.settings.park_duration
        } else {
            slot.phase = Phase::Restarting;
            // Up to +25% jitter so tenants failing together do not retry in lockstep.
            Backoff::new(
                self.settings.restart_backoff_initial,
                self.settings.restart_backoff_max,
            )
            .jittered(
                &self.jitter,
                tenant.as_str().as_bytes(),
                slot.failures_in_row,
                1.0,
                1.25,
            )
        };
        TenantActorFailed {
            tenant,
            failures_in_row: slot.failures_in_row,
            reason,
            delay,
            parked,
        }
        .emit();
        Some(RestartAfter {
            delay,
            generation: slot.generation,
            parked,
        })
    }

    /// The running actor's handle, if the tenant's actor runs.
    pub fn handle(&self, tenant: &TenantId) -> Option<&R> {
        match &self.slots.get(tenant)?.phase {
            Phase::Running { handle, .. } => Some(handle),
            _ => None,
        }
    }

    /// Passivates the tenant's running actor: returns its handle (the caller drains and
    /// stops it); the tenant stays owned here. `None` when it does not run.
    pub fn passivate(&mut self, tenant: &TenantId) -> Option<R> {
        let slot = self.slots.get_mut(tenant)?;
        if !matches!(slot.phase, Phase::Running { .. }) {
            return None;
        }
        match std::mem::replace(&mut slot.phase, Phase::Passivated) {
            Phase::Running { handle, .. } => Some(handle),
            _ => None,
        }
    }

    /// True when the tenant is passivated: it is now starting (the caller starts it).
    pub fn wake(&mut self, tenant: &TenantId) -> bool {
        match self.slots.get_mut(tenant) {
            Some(slot) if matches!(slot.phase, Phase::Passivated) => {
                slot.phase = Phase::Restarting;
                true
            }
            _ => false,
        }
    }

    /// The running actors' handles.
    pub fn running_handles(&self) -> impl Iterator<Item = (&TenantId, &R)> {
        self.slots.iter().filter_map(|(t, s)| match &s.phase {
            Phase::Running { handle, .. } => Some((t, handle)),
            _ => None,
        })
    }

    /// Forgets the tenant (revoked or shutting down); returns its running actor's handle.
    pub fn release(&mut self, tenant: &TenantId) -> Option<R> {
        match self.slots.remove(tenant)?.phase {
            Phase::Running { handle, .. } => Some(handle),
            _ => None,
        }
    }

    pub fn tenants(&self) -> Vec<TenantId> {
        self.slots.keys().cloned().collect()
    }

    /// Every owned tenant's status, sorted by tenant.
    pub fn health(&self) -> Vec<TenantHealth> {
        let mut out: Vec<TenantHealth> = self
            .slots
            .iter()
            .map(|(t, s)| TenantHealth {
                tenant: t.clone(),
                status: match s.phase {
                    Phase::Running { .. } => ActorStatus::Running,
                    Phase::Restarting => ActorStatus::Restarting,
                    Phase::Parked => ActorStatus::Parked,
                    Phase::Passivated => ActorStatus::Passivated,
                },
                restarts: s.restarts,
            })
            .collect();
        out.sort_by(|a, b| a.tenant.cmp(&b.tenant));
        out
    }

    /// (running, parked, passivated) tenants.
    pub fn counts(&self) -> (usize, usize, usize) {
        let count = |f: fn(&Phase<R>) -> bool| self.slots.values().filter(|s| f(&s.phase)).count();
        (
            count(|p| matches!(p, Phase::Running { .. })),
            count(|p| matches!(p, Phase::Parked)),
            count(|p| matches!(p, Phase::Passivated)),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(id: &str) -> TenantId {
        TenantId::parse(id).unwrap()
    }

    fn policy() -> RestartPolicy<&'static str> {
        RestartPolicy::new(SupervisorSettings {
            restart_backoff_initial: Duration::from_millis(100),
            restart_backoff_max: Duration::from_secs(1),
            max_consecutive_failures: 3,
            park_duration: Duration::from_secs(60),
            healthy_after: Duration::from_secs(10),
            drain_timeout: Duration::from_secs(1),
            passivate_after: Some(Duration::from_secs(30)),
            start_passivated: false,
        })
    }

    #[tokio::test(start_paused = true)]
    async fn failures_back_off_exponentially_then_park_the_tenant() {
        let mut p = policy();
        let a = t("a");
        assert!(p.admit(&a));
        assert!(!p.admit(&a), "admitted once");
        let mut delays = vec![];
        for _ in 0..3 {
            p.running(&a, "actor");
            let next = p.failed(&a, "boom").unwrap();
            assert!(!next.parked);
            delays.push(next.delay);
        }
        for (i, d) in delays.iter().enumerate() {
            let step = Duration::from_millis(100 << i);
            assert!(*d >= step && *d <= step.mul_f64(1.25), "attempt {i}: {d:?}");
        }
        p.running(&a, "actor");
        let parked = p.failed(&a, "boom").unwrap();
        assert!(parked.parked);
        assert_eq!(parked.delay, Duration::from_secs(60));
        assert_eq!(p.health()[0].status, ActorStatus::Parked);
        assert_eq!(p.health()[0].restarts, 4);
        assert_eq!(p.counts(), (0, 1, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn a_healthy_run_resets_the_streak() {
        let mut p = policy();
        let a = t("a");
        p.admit(&a);
        for _ in 0..3 {
            p.running(&a, "actor");
            p.failed(&a, "boom");
        }
        p.running(&a, "actor");
        tokio::time::advance(Duration::from_secs(11)).await;
        let next = p.failed(&a, "boom").unwrap();
        assert!(!next.parked, "the long healthy run reset the streak");
        assert!(next.delay < Duration::from_millis(130), "{:?}", next.delay);
    }

    #[tokio::test(start_paused = true)]
    async fn a_stale_restart_timer_never_starts_a_second_actor() {
        let mut p = policy();
        let a = t("a");
        p.admit(&a);
        p.running(&a, "actor");
        let first = p.failed(&a, "boom").unwrap();
        assert!(p.restart_due(&a, first.generation));
        p.running(&a, "second");
        assert!(!p.restart_due(&a, first.generation), "running again");
        let second = p.failed(&a, "boom").unwrap();
        assert!(
            !p.restart_due(&a, first.generation),
            "an older failure's timer"
        );
        assert!(p.restart_due(&a, second.generation));
    }

    #[tokio::test(start_paused = true)]
    async fn a_released_tenant_is_forgotten_and_its_late_failure_ignored() {
        let mut p = policy();
        let (a, b) = (t("a"), t("b"));
        p.admit(&a);
        p.admit(&b);
        p.running(&a, "actor-a");
        assert_eq!(p.handle(&a), Some(&"actor-a"));
        assert_eq!(p.handle(&b), None, "b not started yet");
        assert_eq!(p.release(&a), Some("actor-a"));
        assert_eq!(p.failed(&a, "late"), None);
        assert!(!p.restart_due(&a, 0));
        assert_eq!(p.tenants(), vec![b]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_passivated_tenant_stays_owned_and_wakes_once() {
        let mut p = policy();
        let a = t("a");
        p.admit(&a);
        assert_eq!(p.passivate(&a), None, "not running yet");
        p.running(&a, "actor");
        assert_eq!(p.passivate(&a), Some("actor"));
        assert_eq!(p.handle(&a), None);
        assert_eq!(p.counts(), (0, 0, 1));
        assert_eq!(p.health()[0].status, ActorStatus::Passivated);
        assert!(
            !p.restart_due(&a, 0),
            "no restart timer starts a passivated tenant"
        );
        assert!(p.wake(&a), "the first wake starts it");
        assert!(!p.wake(&a), "a second wake while it starts does nothing");
        p.running(&a, "again");
        assert_eq!(p.handle(&a), Some(&"again"));
        assert_eq!(p.tenants(), vec![a]);
    }
}
