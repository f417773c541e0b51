//! The embeddable agent: a builder with documented defaults, `spawn()` that
//! samples every instance on its own task, and a bounded channel through
//! which the host program receives snapshots.
//!
//! ```no_run
//! # async fn demo() -> Result<(), pgtrail_agent::AgentError> {
//! use pgtrail_agent::{AgentBuilder, InstanceConfig};
//! let (agent, mut snapshots) = AgentBuilder::new()
//!     .instance(InstanceConfig::parse(None, "postgresql://postgres@127.0.0.1:5432/postgres")?)
//!     .spawn()?;
//! while let Some(snapshot) = snapshots.recv().await {
//!     println!("{} sessions", snapshot.sessions.len());
//! #   break;
//! }
//! agent.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! A sample that overruns its interval is abandoned and counted, never
//! queued; a snapshot the host does not take in time is dropped and counted
//! (and reported in the next snapshot's `dropped_before`), so the agent never
//! blocks or grows behind a slow consumer.

use std::sync::Arc;
use std::time::Duration;

use pgtrail_proto::model::Snapshot;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;
use tracing::{info, warn};

use crate::config::{Config, InstanceConfig};
use crate::error::AgentError;
use crate::report::error_chain;
use crate::sampler::{SampleOptions, Sampler};
use crate::stats::{Stats, StatsSnapshot};

/// The shortest interval accepted.
pub const MIN_INTERVAL: Duration = Duration::from_millis(10);

/// Snapshots waiting in the channel to the host program, per instance.
pub const DEFAULT_CHANNEL_PER_INSTANCE: usize = 16;

/// Builds an agent.
#[derive(Debug, Clone)]
pub struct AgentBuilder {
    instances: Vec<InstanceConfig>,
    options: SampleOptions,
    channel_per_instance: usize,
}

impl Default for AgentBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl AgentBuilder {
    /// An agent with no instance, sampling every
    /// [`DEFAULT_INTERVAL`](crate::config::DEFAULT_INTERVAL), cutting query
    /// texts at [`DEFAULT_QUERY_MAX_LEN`](crate::config::DEFAULT_QUERY_MAX_LEN)
    /// characters without normalizing them, reading PSS/USS every
    /// [`DEFAULT_PSS_INTERVAL`](crate::config::DEFAULT_PSS_INTERVAL), and
    /// keeping [`DEFAULT_CHANNEL_PER_INSTANCE`] snapshots per instance for
    /// the host program.
    pub fn new() -> Self {
        Self {
            instances: Vec::new(),
            options: SampleOptions::default(),
            channel_per_instance: DEFAULT_CHANNEL_PER_INSTANCE,
        }
    }

    /// The builder a config describes.
    pub fn from_config(config: &Config) -> Result<Self, AgentError> {
        let mut builder = Self::new()
            .interval(config.interval)
            .query_max_len(config.query_max_len)
            .normalize_queries(config.normalize_queries)
            .pss_interval(config.pss_interval);
        for instance in config.instances()? {
            builder = builder.instance(instance);
        }
        Ok(builder)
    }

    /// Watches one more instance.
    pub fn instance(mut self, instance: InstanceConfig) -> Self {
        self.instances.push(instance);
        self
    }

    /// Samples every `interval`.
    pub fn interval(mut self, interval: Duration) -> Self {
        self.options.interval = interval;
        self
    }

    /// Cuts query texts at `len` characters.
    pub fn query_max_len(mut self, len: usize) -> Self {
        self.options.query_max_len = len.max(1);
        self
    }

    /// Replaces literals in query texts with placeholders (`$1`, `$2`, ...)
    /// before they leave the sampler.
    pub fn normalize_queries(mut self, normalize: bool) -> Self {
        self.options.normalize_queries = normalize;
        self
    }

    /// Reads each process's PSS/USS about every `every` (spread over the
    /// samples in between, which carry the last value read).
    pub fn pss_interval(mut self, every: Duration) -> Self {
        self.options.pss_interval = every;
        self
    }

    /// Keeps up to `n` snapshots per instance waiting for the host program;
    /// beyond that new ones are dropped and counted.
    pub fn channel_per_instance(mut self, n: usize) -> Self {
        self.channel_per_instance = n.max(1);
        self
    }

    /// Starts one sampling task per instance on the current tokio runtime.
    /// Snapshots arrive on the returned channel.
    pub fn spawn(self) -> Result<(AgentHandle, mpsc::Receiver<Snapshot>), AgentError> {
        if self.instances.is_empty() {
            return Err(AgentError::Config("no instance to watch".into()));
        }
        let interval = self.options.interval;
        if interval < MIN_INTERVAL {
            return Err(AgentError::Config(format!(
                "interval {} is too short (at least {})",
                humantime::format_duration(interval),
                humantime::format_duration(MIN_INTERVAL)
            )));
        }
        let (tx, rx) = mpsc::channel(self.channel_per_instance * self.instances.len());
        let (stop, stopped) = watch::channel(false);
        let stats = Arc::new(Stats::default());
        let mut tasks = Vec::new();
        for instance in self.instances {
            let sampler = Sampler::with_options(instance, self.options)?;
            tasks.push(tokio::spawn(sample_loop(
                sampler,
                interval,
                tx.clone(),
                stats.clone(),
                stopped.clone(),
            )));
        }
        Ok((AgentHandle { stop, tasks, stats }, rx))
    }
}

/// A running agent.
#[derive(Debug)]
pub struct AgentHandle {
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    stats: Arc<Stats>,
}

impl AgentHandle {
    /// The agent's counters.
    pub fn stats(&self) -> StatsSnapshot {
        self.stats.snapshot()
    }

    /// The shared counters, for tasks that report into them.
    pub(crate) fn shared_stats(&self) -> Arc<Stats> {
        self.stats.clone()
    }

    /// Stops sampling and waits for the tasks to end. The snapshot channel
    /// closes once they have.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        for task in self.tasks {
            let _ = task.await;
        }
    }
}

async fn sample_loop(
    mut sampler: Sampler,
    interval: Duration,
    tx: mpsc::Sender<Snapshot>,
    stats: Arc<Stats>,
    mut stopped: watch::Receiver<bool>,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let mut failing: Option<String> = None;
    let mut dropped = 0u64;
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stopped.changed() => return,
        }
        match tokio::time::timeout(interval, sampler.sample()).await {
            Ok(Ok(mut snapshot)) => {
                stats.sample();
                if failing.take().is_some() {
                    info!(instance = sampler.name(), "sampling again");
                }
                snapshot.dropped_before = dropped;
                match tx.try_send(snapshot) {
                    Ok(()) => dropped = 0,
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        stats.drop_one();
                        if dropped == 0 {
                            warn!(
                                instance = sampler.name(),
                                "snapshot dropped: the consumer is behind"
                            );
                        }
                        dropped += 1;
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => return,
                }
            }
            Ok(Err(err)) => {
                stats.failure();
                let why = error_chain(&err);
                if failing.as_ref() != Some(&why) {
                    warn!(instance = sampler.name(), error = %why, "cannot sample; retrying every interval");
                    failing = Some(why);
                }
            }
            Err(_) => {
                stats.overrun();
                dropped += 1;
                sampler.reset();
                warn!(
                    instance = sampler.name(),
                    limit_ms = interval.as_millis() as u64,
                    "sample overran its interval; skipped"
                );
            }
        }
    }
}
