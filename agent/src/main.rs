//! `pgtrail-agent`: samples local PostgreSQL instances and streams
//! snapshots to a pgtrail collector.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use pgtrail_agent::config::InstanceSpec;
use pgtrail_agent::Config;

/// Samples pg_stat_activity and the postmaster's process tree of local
/// PostgreSQL instances and streams snapshots to a pgtrail collector.
#[derive(Debug, Parser)]
#[command(name = "pgtrail-agent", version, about)]
#[deny(missing_docs)]
struct Args {
    /// What to do; runs the agent when omitted.
    #[command(subcommand)]
    command: Option<Command>,
    /// TOML config file (settings there are overridden by env and flags).
    #[arg(long, short, env = "PGTRAIL_AGENT_CONFIG", global = true)]
    config: Option<PathBuf>,
    /// A PostgreSQL instance to watch, as a URL or key=value connection
    /// string; repeat for several. Adds to the config's instances.
    #[arg(long = "pg", value_name = "URL")]
    pg: Vec<String>,
    /// The collector's URL.
    #[arg(long, env = "PGTRAIL_COLLECTOR")]
    collector: Option<String>,
    /// Time between samples, e.g. 1s, 500ms.
    #[arg(long, value_parser = humantime::parse_duration)]
    interval: Option<Duration>,
    /// The host name to report (default: the kernel's).
    #[arg(long, env = "PGTRAIL_HOST_NAME")]
    host_name: Option<String>,
    /// Where unacknowledged snapshots wait on disk (default:
    /// $STATE_DIRECTORY/spool, else ./pgtrail-agent-spool).
    #[arg(long, env = "PGTRAIL_SPOOL_DIR")]
    spool_dir: Option<PathBuf>,
    /// How often each process's PSS/USS is read, e.g. 30s.
    #[arg(long, value_parser = humantime::parse_duration)]
    pss_interval: Option<Duration>,
    /// Replace literals in query texts with placeholders before they leave
    /// the host.
    #[arg(long)]
    normalize_queries: bool,
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Plain, env = "PGTRAIL_LOG_FORMAT", global = true)]
    log_format: LogFormat,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
enum Command {
    /// Check the configuration (file, env and flags) and exit: for systemd's
    /// ExecStartPre.
    CheckConfig,
}

/// How log lines look.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    /// Human-readable lines.
    Plain,
    /// One JSON object per line.
    Json,
}

fn main() -> ExitCode {
    let args = Args::parse();
    init_logging(args.log_format);
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    let config = resolve(&args)?;
    if let Some(Command::CheckConfig) = args.command {
        let instances = config.instances()?;
        println!(
            "config ok: {} instance(s) ({}), collector {}, every {}, spool {}",
            instances.len(),
            instances
                .iter()
                .map(|i| i.name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            config.collector,
            humantime::format_duration(config.interval),
            config.spool_dir().display()
        );
        return Ok(());
    }
    let instances = config.instances()?.len();
    let runtime = runtime(instances).context("cannot start the async runtime")?;
    runtime.block_on(async {
        pgtrail_agent::run(config, shutdown_signal()).await?;
        Ok(())
    })
}

/// One worker thread per instance, at most one per core: sampling is
/// mostly synchronous `/proc` reading, so more threads than instances only
/// add wake-ups across threads, and a lone instance runs cheapest on the
/// one thread.
fn runtime(instances: usize) -> std::io::Result<tokio::runtime::Runtime> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    match instances.clamp(1, cores) {
        1 => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
        workers => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .enable_all()
            .build(),
    }
}

/// File < env < flags.
fn resolve(args: &Args) -> anyhow::Result<Config> {
    let mut config = match &args.config {
        Some(path) => Config::from_file(path)?,
        None => Config::default(),
    };
    config
        .instances
        .extend(args.pg.iter().map(|url| InstanceSpec {
            name: None,
            url: url.clone(),
        }));
    if let Some(c) = &args.collector {
        config.collector = c.clone();
    }
    if let Some(i) = args.interval {
        config.interval = i;
    }
    if let Some(h) = &args.host_name {
        config.host_name = Some(h.clone());
    }
    if let Some(d) = &args.spool_dir {
        config.spool_dir = Some(d.clone());
    }
    if let Some(p) = args.pss_interval {
        config.pss_interval = p;
    }
    if args.normalize_queries {
        config.normalize_queries = true;
    }
    Ok(config)
}

/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match format {
        LogFormat::Plain => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
