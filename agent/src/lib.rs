//! The pgtrail agent.
//!
//! Samples `pg_stat_activity` and the postmaster's process tree of one or
//! more PostgreSQL instances every interval and streams the snapshots to a
//! collector ([`run`]), or hands them to the host program ([`AgentBuilder`]).
//! [`Sampler`] takes one snapshot on demand.
//!
//! The agent needs no superuser: the `pg_monitor` role lets it see every
//! session. What it cannot see is marked unknown and named in each
//! snapshot's `blind_spots`.
#![warn(missing_docs)]
// Module docs link the private modules they describe: read them with
// `cargo doc --document-private-items`.
#![allow(rustdoc::private_intra_doc_links)]

mod builder;
pub mod config;
mod error;
mod ingest;
pub mod os;
pub mod pg;
mod report;
mod sampler;
mod sender;
pub mod spool;
mod stats;
pub mod wire;

pub use builder::{AgentBuilder, AgentHandle, DEFAULT_CHANNEL_PER_INSTANCE, MIN_INTERVAL};
pub use config::{Config, InstanceConfig};
pub use error::AgentError;
pub use report::error_chain;
pub use sampler::{SampleOptions, Sampler};
pub use sender::Sender;
pub use stats::StatsSnapshot;

use pgtrail_proto::pb;
use spool::{Spool, SpoolError};
use tracing::info;

/// The agent's version, sent in its hello.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Runs the agent until `shutdown` resolves: samples every configured
/// instance and streams the snapshots to the collector.
pub async fn run(
    config: Config,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<StatsSnapshot, AgentError> {
    let host = config.host_name();
    let spool_dir = config.spool_dir();
    let spool = Spool::open(&spool_dir, config.spool_max_bytes).map_err(|e| {
        let hint = match e {
            SpoolError::InUse { .. } => "give each agent a spool_dir (or --spool-dir) of its own",
            _ => "set spool_dir (or --spool-dir) to a directory this user may write",
        };
        AgentError::Config(format!(
            "cannot use the spool directory {}: {}; {hint}",
            spool_dir.display(),
            error_chain(&e)
        ))
    })?;
    if spool.unacked() > 0 {
        info!(spool = %spool_dir.display(), waiting = spool.unacked(), "resuming the spool: unacknowledged snapshots are sent first");
    }
    let (agent, snapshots) = AgentBuilder::from_config(&config)?.spawn()?;
    let hello = pb::Hello {
        agent_id: format!("{host}/{}", std::process::id()),
        host: host.clone(),
        agent_version: VERSION.to_string(),
    };
    let sender = Sender::new(
        config.collector.clone(),
        hello,
        config.queue_capacity,
        spool,
        agent.shared_stats(),
    );
    let sending = tokio::spawn(sender.run(snapshots));
    info!(host = %host, collector = %config.collector, instances = config.instances.len(), interval = ?config.interval, "agent started");
    let stats = agent.shared_stats();
    shutdown.await;
    agent.shutdown().await;
    let _ = sending.await;
    let stats = stats.snapshot();
    info!(
        samples = stats.samples,
        failures = stats.failures,
        overruns = stats.overruns,
        dropped = stats.dropped,
        acked = stats.acked,
        "agent stopped"
    );
    Ok(stats)
}
