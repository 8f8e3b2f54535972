//! [`Health`]: what a plugin instance's calls have done, shared between the
//! instance (which records every call and fault) and whoever decides what
//! to do about a faulty version (the server's circuit breaker).

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Fault times kept per plugin: enough for any sensible breaker threshold.
const KEPT_FAULTS: usize = 64;

/// Call and fault counts of one plugin version.
#[derive(Debug, Default)]
pub struct Health {
    calls: AtomicU64,
    faults: AtomicU64,
    recent: Mutex<VecDeque<Instant>>,
}

impl Health {
    pub(crate) fn record_call(&self) {
        self.calls.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn record_fault(&self) {
        self.faults.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut recent) = self.recent.lock() {
            if recent.len() == KEPT_FAULTS {
                recent.pop_front();
            }
            recent.push_back(Instant::now());
        }
    }

    /// Calls so far.
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }

    /// Faults so far (traps, overruns, invalid answers, failed restarts).
    pub fn faults(&self) -> u64 {
        self.faults.load(Ordering::Relaxed)
    }

    /// Faults within `window` before `now` that happened after `since`.
    pub fn faults_within(&self, window: Duration, since: Instant, now: Instant) -> usize {
        let from = now.checked_sub(window).map_or(since, |start| start.max(since));
        self.recent.lock().map_or(0, |recent| recent.iter().filter(|&&t| t >= from).count())
    }
}
