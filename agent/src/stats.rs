//! Counters of the agent's repeated operational events, so a host program
//! (or a log line at shutdown) can tell what happened without grepping logs.

use std::sync::atomic::{AtomicU64, Ordering};

/// Live counters, shared by the agent's tasks.
#[derive(Debug, Default)]
pub struct Stats {
    samples: AtomicU64,
    failures: AtomicU64,
    overruns: AtomicU64,
    dropped: AtomicU64,
    acked: AtomicU64,
}

/// A copy of the counters at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    /// Snapshots taken.
    pub samples: u64,
    /// Samples that failed (server unreachable, query error).
    pub failures: u64,
    /// Samples abandoned because they overran their interval.
    pub overruns: u64,
    /// Snapshots dropped because a queue was full.
    pub dropped: u64,
    /// Snapshots the collector acknowledged.
    pub acked: u64,
}

impl Stats {
    pub(crate) fn sample(&self) {
        self.samples.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn failure(&self) {
        self.failures.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn overrun(&self) {
        self.overruns.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn drop_one(&self) {
        self.dropped.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn ack(&self) {
        self.acked.fetch_add(1, Ordering::Relaxed);
    }

    /// The counters now.
    pub fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            samples: self.samples.load(Ordering::Relaxed),
            failures: self.failures.load(Ordering::Relaxed),
            overruns: self.overruns.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
            acked: self.acked.load(Ordering::Relaxed),
        }
    }
}
