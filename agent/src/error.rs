//! Errors of the agent library.

use thiserror::Error;

/// Why the agent could not start or could not take a sample.
#[derive(Debug, Error)]
pub enum AgentError {
    /// The configuration is unusable.
    #[error("{0}")]
    Config(String),
    /// The configuration file could not be read.
    #[error("cannot read config file {path}")]
    ConfigFile {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The server could not be reached or refused the agent.
    #[error("cannot connect to instance {instance}")]
    Connect {
        /// The instance's name.
        instance: String,
        /// The driver's error.
        #[source]
        source: tokio_postgres::Error,
    },
    /// A query of the sample failed (the connection is dropped and retried).
    #[error("sampling instance {instance} failed")]
    Query {
        /// The instance's name.
        instance: String,
        /// The driver's error.
        #[source]
        source: tokio_postgres::Error,
    },
    /// A sample took longer than its time limit.
    #[error("sampling instance {instance} took longer than {limit_ms} ms")]
    Timeout {
        /// The instance's name.
        instance: String,
        /// The limit.
        limit_ms: u64,
    },
    /// The host's /proc could not be read at all.
    #[error("cannot read /proc")]
    Proc(#[source] procfs::ProcError),
}
