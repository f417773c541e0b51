//! The command line.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

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
    /// in the window, when it was first reached, by state, and as % of
    /// max_connections (pct_used) and of the non-superuser limit,
    /// max_connections - superuser_reserved_connections (pct_of_user_limit).
    /// --by gives one peak per user, database, application, client or
    /// state; --bucket a series of peaks, one per bucket.
    Peaks {
        /// Which instances and when [default window: 1h].
        #[command(flatten)]
        window: WindowArgs,
        /// One peak per value of this dimension.
        #[arg(long, value_enum)]
        by: Option<By>,
        /// One peak per bucket of this length: 1m, 1h, 1d (whole minutes).
        #[arg(long)]
        bucket: Option<String>,
    },
    /// Idle-in-transaction episodes overlapping the window and lasting at
    /// least --min: when the session went idle inside its transaction, when
    /// that ended (empty while it lasts), and the last query it ran; the
    /// --limit longest, in start order. --group-by sums them all up per
    /// application, user or client: count, total and longest duration, last
    /// query.
    Leaks {
        /// Which instances and when [default window: 24h].
        #[command(flatten)]
        window: WindowArgs,
        /// Only episodes at least this long, e.g. 30s, 5m.
        #[arg(long, default_value = "30s")]
        min: String,
        /// Sum episodes up per application, user or client (over every
        /// episode that matched; --limit does not apply).
        #[arg(long, value_enum)]
        group_by: Option<GroupBy>,
        /// At most this many episodes, the longest; 0 for all. A note on
        /// standard error says when more matched.
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// Long-running statements: pid, backend_start, query_start, end,
    /// duration, the query, and the wait events seen while it ran (with the
    /// number of samples that saw each; CPU means running, not waiting); the
    /// --limit longest, in start order.
    Slow {
        /// Which instances and when [default window: 24h].
        #[command(flatten)]
        window: WindowArgs,
        /// Only statements that ran at least this long.
        #[arg(long, default_value = "30s")]
        min: String,
        /// At most this many episodes, the longest; 0 for all. A note on
        /// standard error says when more matched.
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// Lock waits and who blocked them. Tables draw blocking chains as
    /// trees: each blocker with the sessions it held up beneath it, how long
    /// they waited, and the blocker's state and query; a blocker idle in
    /// transaction is flagged.
    Locks {
        /// Which instances and when [default window: 24h].
        #[command(flatten)]
        window: WindowArgs,
        /// Only waits at least this long.
        #[arg(long, default_value = "0s")]
        min: String,
    },
    /// Connections idle (outside a transaction) for at least --min; the
    /// --limit longest spells, in start order.
    Idle {
        /// Which instances and when [default window: 24h].
        #[command(flatten)]
        window: WindowArgs,
        /// Only idle spells at least this long.
        #[arg(long, default_value = "1h")]
        min: String,
        /// At most this many episodes, the longest; 0 for all. A note on
        /// standard error says when more matched.
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// Every session and process as sampled at or just before TIME.
    At {
        /// RFC 3339, HH:MM[:SS] (today), YYYY-MM-DD HH:MM[:SS], now, or a
        /// duration ago such as 10m.
        // The text is the command's help, where brackets mean optional.
        #[allow(rustdoc::broken_intra_doc_links)]
        time: String,
        /// Which instances.
        #[command(flatten)]
        scope: Scope,
    },
    /// The process tree as pstree would draw it, as sampled at or just
    /// before --at: the postmaster, its auxiliary processes, and backends
    /// with user, database, client, state, CPU and RSS.
    Ps {
        /// The moment [default: now].
        #[arg(long, default_value = "now")]
        at: String,
        /// Which instances.
        #[command(flatten)]
        scope: Scope,
    },
    /// Memory: the largest processes at the window's end (RSS; PSS and USS
    /// where sampled), the highest instance totals over the window, and the
    /// worst case work_mem x hash_mem_multiplier x --nodes x (1 +
    /// max_parallel_workers_per_gather) x connections, against the host or
    /// cgroup memory limit (flagged when it exceeds it).
    Mem {
        /// Which instances and when [default window: 1h].
        #[command(flatten)]
        window: WindowArgs,
        /// Processes to list per instance.
        #[arg(long, default_value_t = 10)]
        top: u32,
        /// Sort and hash nodes per plan assumed by the worst case.
        #[arg(long, default_value_t = 3)]
        nodes: u32,
    },
    /// Process-tree integrity: expected auxiliary processes missing and
    /// when, postmaster and crash restarts, autovacuum workers at
    /// autovacuum_max_workers and for how long, and the time spent above 80
    /// % and 95 % of the non-superuser connection limit.
    Health {
        /// Which instances and when [default window: 24h].
        #[command(flatten)]
        window: WindowArgs,
    },
    /// Connection churn: sessions started per minute (the server's own
    /// count on PostgreSQL 14+, else those samples saw), lifetimes of the
    /// sessions seen ending, the share of short-lived ones, and a hint when
    /// the pattern says a connection pooler is missing.
    Churn {
        /// Which instances and when [default window: 1h].
        #[command(flatten)]
        window: WindowArgs,
    },
    /// Wait events, active-session-history style: how many samples saw an
    /// active session in each wait event (CPU: running, not waiting), their
    /// share, and the queries seen most in each.
    Waits {
        /// Which instances and when [default window: 1h].
        #[command(flatten)]
        window: WindowArgs,
        /// Queries to list per wait event.
        #[arg(long, default_value_t = 3)]
        top: u32,
    },
    /// Record local PostgreSQL servers: the agent and the collector in one
    /// process, with the embedded store in --data, serving queries on
    /// --listen. Ctrl-C stops it cleanly.
    Record(RecordArgs),
}

/// Dimensions `peaks --by` breaks a peak down by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum By {
    /// pg_stat_activity.state.
    State,
    /// usename.
    User,
    /// datname.
    Database,
    /// application_name.
    Application,
    /// client_addr ("local" for unix sockets).
    Client,
}

/// What `leaks --group-by` sums up by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum GroupBy {
    /// application_name.
    Application,
    /// usename.
    User,
    /// client_addr.
    Client,
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
    /// The window ends now and lasts this long, e.g. 10m, 1h, 7d (windows
    /// longer than an hour are widened to whole minutes).
    #[arg(long, conflicts_with_all = ["from", "to"])]
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
    /// Raw samples are kept this long.
    #[arg(long, default_value = "7d")]
    pub keep_samples: String,
    /// Rollups and episodes are kept this long.
    #[arg(long, default_value = "90d")]
    pub keep_history: String,
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
