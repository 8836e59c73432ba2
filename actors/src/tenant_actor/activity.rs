//! [`Activity`]: when a tenant actor last had work (a record, a job, a request), read by
//! the supervisor to passivate actors that sat idle for `passivate_after`.
//!
//! A plain atomic shared by the actor (which touches it on every message) and the
//! supervisor (which reads it on its idle sweep), on tokio's clock so tests can pause it.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::time::Instant;

pub struct Activity {
    epoch: Instant,
    /// Milliseconds after `epoch` of the last work.
    last_ms: AtomicU64,
    /// Work in progress (a job running, a request waiting for its answer): never idle then.
    in_progress: AtomicUsize,
}

/// Work in progress; the actor is not idle until it is dropped.
pub struct Busy<'a>(&'a Activity);

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.0.touch();
        self.0.in_progress.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Default for Activity {
    fn default() -> Self {
        Self::new()
    }
}

impl Activity {
    /// Active now.
    pub fn new() -> Self {
        Self {
            epoch: Instant::now(),
            last_ms: AtomicU64::new(0),
            in_progress: AtomicUsize::new(0),
        }
    }

    /// Marks work in progress until the guard is dropped.
    pub fn busy(&self) -> Busy<'_> {
        self.in_progress.fetch_add(1, Ordering::Relaxed);
        Busy(self)
    }

    /// Starts (`true`) or ends (`false`) work in progress that no single scope holds
    /// (a request waiting in the actor's state for its job).
    pub fn waiting(&self, started: bool) {
        if started {
            self.in_progress.fetch_add(1, Ordering::Relaxed);
        } else {
            self.touch();
            let _ = self
                .in_progress
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                    Some(n.saturating_sub(1))
                });
        }
    }

    /// The actor had work now.
    pub fn touch(&self) {
        let ms = self.epoch.elapsed().as_millis() as u64;
        self.last_ms.fetch_max(ms, Ordering::Relaxed);
    }

    /// How long since the last work (zero while work is in progress).
    pub fn idle_for(&self) -> Duration {
        if self.in_progress.load(Ordering::Relaxed) > 0 {
            return Duration::ZERO;
        }
        let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        self.epoch.elapsed().saturating_sub(last)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn idle_time_counts_from_the_last_touch() {
        let a = Activity::new();
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(a.idle_for(), Duration::from_secs(5));
        a.touch();
        assert_eq!(a.idle_for(), Duration::ZERO);
        tokio::time::advance(Duration::from_millis(1500)).await;
        assert_eq!(a.idle_for(), Duration::from_millis(1500));
        let busy = a.busy();
        tokio::time::advance(Duration::from_secs(60)).await;
        assert_eq!(a.idle_for(), Duration::ZERO, "busy is never idle");
        drop(busy);
        a.waiting(true);
        tokio::time::advance(Duration::from_secs(60)).await;
        assert_eq!(
            a.idle_for(),
            Duration::ZERO,
            "a waiting request is not idle"
        );
        a.waiting(false);
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(a.idle_for(), Duration::from_secs(2));
    }
}
