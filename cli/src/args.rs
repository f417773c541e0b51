//! The command line.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::output::Format;

/// Where `pgtrail` asks its questions unless told otherwise.
pub const DEFAULT_SERVER: &str = "http://127.0.0.1:7070";

/// pgtrail: a flight recorder for every PostgreSQL process. Ask a collector
/// what happened, or record a local server.
#[derive(Debug, Parser)]
#[command(name = "pgtrail", version, about, long_about = None)]
#[deny(missing_docs)]
pub struct Cli {
    /// The collector (or `pgtrail record`) to ask.
    #[arg(long, global = true, env = "PGTRAIL_SERVER", default_value = DEFAULT_SERVER)]
    pub server: String,
    /// Output format.
    #[arg(long, global = true, value_enum, default_value_t = Format::Table)]
    pub format: Format,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// The instances the collector knows: host, port, version,
    /// max_connections, first and last sample.
    Hosts(Scope),
    /// Per instance, the highest number of client backends (pg_stat_activity
    /// rows with backend_type 'client backend', the agent's own included)
    /// in the window, when it happened, by state, and as % of
    /// max_connections (pct_used) and of the non-superuser limit,
    /// max_connections - superuser_reserved_connections (pct_of_user_limit).
    Peaks(WindowArgs),
    /// Idle-in-transaction episodes overlapping the window and lasting at
    /// least --min: when the session went idle inside its transaction, when
    /// that ended (empty while it lasts), and the last query it ran.
    Leaks {
        /// Which instances and when.
        #[command(flatten)]
        window: WindowArgs,
        /// Only episodes at least this long, e.g. 30s, 5m.
        #[arg(long, default_value = "30s")]
        min: String,
    },
    /// Every session and process as sampled at or just before TIME.
    At {
        /// RFC 3339, HH:MM[:SS] (today), YYYY-MM-DD HH:MM[:SS], now, or a
        /// duration ago such as 10m.
        time: String,
        /// Which instances.
        #[command(flatten)]
        scope: Scope,
    },
    /// Record local PostgreSQL servers: the agent and the collector in one
    /// process, with the embedded store in --data, serving queries on
    /// --listen. Ctrl-C stops it cleanly.
    Record(RecordArgs),
}

/// Which instances a question is about.
#[derive(Debug, Clone, Args)]
pub struct Scope {
    /// Only instances on this host (exact name or a glob such as db-*);
    /// repeat for several. Every host when omitted.
    #[arg(long = "host", value_name = "HOST")]
    pub hosts: Vec<String>,
}

/// Which instances and which window.
#[derive(Debug, Clone, Args)]
pub struct WindowArgs {
    /// Which instances.
    #[command(flatten)]
    pub scope: Scope,
    /// The window ends now and lasts this long, e.g. 10m, 1h, 7d [default:
    /// 1h for peaks, 24h for leaks].
    #[arg(long, conflicts_with = "from")]
    pub since: Option<String>,
    /// The window starts at this time.
    #[arg(long)]
    pub from: Option<String>,
    /// The window ends at this time [default: now].
    #[arg(long)]
    pub to: Option<String>,
}

/// `pgtrail record`.
#[derive(Debug, Clone, Args)]
pub struct RecordArgs {
    /// A PostgreSQL server to record, as a URL or key=value connection
    /// string; repeat for several.
    #[arg(long = "pg", value_name = "URL", required = true, env = "PGTRAIL_PG")]
    pub pg: Vec<String>,
    /// Directory of the embedded store.
    #[arg(long, default_value = pgtrail_collector::config::DEFAULT_DATA)]
    pub data: PathBuf,
    /// Address to serve queries on.
    #[arg(long, default_value = pgtrail_collector::config::DEFAULT_LISTEN)]
    pub listen: SocketAddr,
    /// Time between samples, e.g. 1s, 500ms.
    #[arg(long, default_value = "1s")]
    pub interval: String,
    /// The host name to record under (default: the kernel's).
    #[arg(long, env = "PGTRAIL_HOST_NAME")]
    pub host_name: Option<String>,
}
