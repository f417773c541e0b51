//! Retention: raw samples are kept for [`Retention::samples`], rollups and
//! episodes for [`Retention::history`]. sled has no TTL, so a background
//! task deletes the time-ordered key ranges that fell out, in small batches
//! on a blocking thread, so ingest never waits long behind it.

use std::sync::Arc;
use std::time::Duration;

use pgtrail_proto::time::{self, from_duration, Micros};
use serde::Deserialize;
use tracing::{info, warn};

use crate::store::{Store, StoreError};

/// Raw samples are kept this long by default.
pub const DEFAULT_SAMPLES: Duration = Duration::from_secs(7 * 24 * 3600);
/// Rollups and episodes are kept this long by default.
pub const DEFAULT_HISTORY: Duration = Duration::from_secs(90 * 24 * 3600);
/// How often the background task looks for expired data.
pub const DEFAULT_EVERY: Duration = Duration::from_secs(10 * 60);

/// How long history is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Retention {
    /// Raw samples (what `at` and `ps` read).
    #[serde(with = "humantime_serde")]
    pub samples: Duration,
    /// Rollups and episodes (what every question over a window reads).
    #[serde(with = "humantime_serde")]
    pub history: Duration,
    /// How often to look for expired data.
    #[serde(with = "humantime_serde")]
    pub every: Duration,
}

impl Default for Retention {
    fn default() -> Self {
        Self {
            samples: DEFAULT_SAMPLES,
            history: DEFAULT_HISTORY,
            every: DEFAULT_EVERY,
        }
    }
}

/// A duration as people write retention: "7d", "90d", "12h", else
/// humantime's form.
pub fn display(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0 => humantime::format_duration(d).to_string(),
        s if s % 86_400 == 0 && d.subsec_nanos() == 0 => format!("{}d", s / 86_400),
        s if s % 3_600 == 0 && d.subsec_nanos() == 0 => format!("{}h", s / 3_600),
        _ => humantime::format_duration(d).to_string(),
    }
}

impl Retention {
    /// Removes from `store` what is older than the horizons counted back
    /// from `now`; returns how many records went.
    pub fn expire(&self, store: &dyn Store, now: Micros) -> Result<u64, StoreError> {
        let raw_before = now - from_duration(self.samples);
        let kept_before = now - from_duration(self.history.max(self.samples));
        let mut removed = 0;
        for instance in store.instances()? {
            removed += store.expire(instance.id, raw_before, kept_before)?;
        }
        Ok(removed)
    }

    /// Runs [`Retention::expire`] every [`Retention::every`] until the
    /// returned task is aborted.
    pub fn spawn(self, store: Arc<dyn Store>) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(self.every.max(Duration::from_secs(1)));
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticker.tick().await;
                let store = store.clone();
                let result =
                    tokio::task::spawn_blocking(move || self.expire(&*store, time::now())).await;
                match result {
                    Ok(Ok(0)) => {}
                    Ok(Ok(removed)) => info!(removed, "expired old history"),
                    Ok(Err(e)) => {
                        warn!(error = %crate::query::error_chain(&e), "expiring old history failed; will retry")
                    }
                    Err(e) => warn!(error = %e, "expiry task failed"),
                }
            }
        })
    }
}
