//! When each process's `smaps_rollup` (its PSS and USS) is read.
//!
//! Reading it costs about 0.3 ms per backend, so it is read on a slower
//! cadence than the rest of a process, spread over the samples so that no
//! one sample pays for every process, and within a budget of reading time
//! per sample. A process that has not run and whose RSS has not moved
//! since its last memory read is skipped (its USS cannot have changed; its
//! PSS moves only as other processes map or unmap pages it shares) for up
//! to [`MEMORY_MAX_AGE`] cadences. Between two memory reads a process
//! carries the last PSS/USS read.

use std::time::{Duration, Instant};

use pgtrail_proto::pb;
use pgtrail_proto::time::Micros;

use super::process::read_memory;

/// One read of `smaps_rollup`.
#[derive(Debug, Clone, Copy)]
pub(super) struct Memory {
    /// PSS and USS; `None` when refused.
    pub value: Option<(u64, u64)>,
    /// When it was read.
    pub at: Micros,
    /// The process's `schedstat` runtime and RSS when it was read: while
    /// neither moves, its private memory has not changed.
    pub runtime: Option<u64>,
    pub rss: Option<u64>,
}

impl Memory {
    /// Sets `p`'s PSS/USS from this read; true when it was refused.
    pub fn apply(&self, p: &mut pb::Process) -> bool {
        match self.value {
            Some((pss, uss)) => {
                p.pss_bytes = Some(pss);
                p.uss_bytes = Some(uss);
                false
            }
            None => {
                p.pss_bytes = None;
                p.uss_bytes = None;
                true
            }
        }
    }
}

/// A process that has not run and whose RSS has not moved keeps its PSS/USS
/// for up to this many cadences.
pub(super) const MEMORY_MAX_AGE: i64 = 10;

/// Wall time one sample may spend reading `smaps_rollup` (at least one
/// read per sample): about 0.3 ms per PostgreSQL backend, so at a thousand
/// backends a 30 s cadence alone would cost 10 ms a sample.
const MEMORY_BUDGET: Duration = Duration::from_millis(2);

/// How often each process's memory is read, and the reading time allowed
/// per sample.
#[derive(Debug, Clone, Copy)]
pub(super) struct MemoryCadence {
    /// The cadence; no memory is read without one.
    pub every: Option<Micros>,
    /// Reading time allowed per sample.
    pub budget: Duration,
}

impl Default for MemoryCadence {
    fn default() -> Self {
        Self {
            every: None,
            budget: MEMORY_BUDGET,
        }
    }
}

impl MemoryCadence {
    /// Reads the PSS/USS of the processes due among `processes` (sampled
    /// every `interval`; `last` gives each one's last memory read and its
    /// `schedstat` runtime now), and returns them by pid (sorted). Due
    /// are, in this order: those never read; those read longer than the
    /// cadence ago that ran or whose RSS moved since; those read longer
    /// than [`MEMORY_MAX_AGE`] cadences ago. At most the share of the tree
    /// that keeps the cost even across samples, and at most the budget of
    /// reading.
    pub fn read_due(
        &self,
        interval: Micros,
        processes: &[pb::Process],
        last: impl Iterator<Item = (Option<Memory>, Option<u64>)>,
        now: Micros,
    ) -> Vec<(i32, Option<(u64, u64)>)> {
        let Some(every) = self.every else {
            return Vec::new();
        };
        let stale = every - interval / 2;
        let mut due: Vec<(u8, Micros, i32)> = processes
            .iter()
            .zip(last)
            .filter_map(|(p, (memory, runtime))| {
                let Some(m) = memory else {
                    return Some((0, Micros::MIN, p.pid));
                };
                let age = now - m.at;
                let moved = runtime.is_none() || m.runtime != runtime || m.rss != p.rss_bytes;
                if age >= stale && moved {
                    Some((1, m.at, p.pid))
                } else if age >= MEMORY_MAX_AGE * every - interval / 2 {
                    Some((2, m.at, p.pid))
                } else {
                    None
                }
            })
            .collect();
        due.sort_unstable();
        let share = ((processes.len() as i64 * interval + every - 1) / every).max(1) as usize;
        let started = Instant::now();
        let mut fresh = Vec::new();
        for (_, _, pid) in due.into_iter().take(share) {
            if !fresh.is_empty() && started.elapsed() >= self.budget {
                break;
            }
            fresh.push((pid, read_memory(pid).ok()));
        }
        fresh.sort_unstable_by_key(|(pid, _)| *pid);
        fresh
    }
}
