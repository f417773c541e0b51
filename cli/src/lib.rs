//! The `pgtrail` command: forensic questions to a collector (`hosts`,
//! `peaks`, `leaks`, `at`), and `record`, which runs an agent and a
//! collector in one process over an embedded store.
#![warn(missing_docs)]

pub mod args;
mod client;
mod commands;
pub mod output;
pub mod time;

pub use args::Cli;

/// Runs the command line `cli` describes; prints to stdout.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    commands::run(cli).await
}
