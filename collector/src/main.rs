//! `pgtrail-collector`: receives agents' snapshots, keeps history and
//! answers `pgtrail` queries.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use pgtrail_collector::Config;

/// The collector allocates and frees every decoded row's strings many
/// thousand times a second; mimalloc does that for a fraction of glibc's
/// cost (BENCHMARKS.md, "collector ingest").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Receives snapshots from pgtrail agents over gRPC, keeps their history in
/// an embedded store and answers the pgtrail CLI's questions.
#[derive(Debug, Parser)]
#[command(name = "pgtrail-collector", version, about)]
#[deny(missing_docs)]
struct Args {
    /// What to do; serves when omitted.
    #[command(subcommand)]
    command: Option<Command>,
    /// TOML config file (settings there are overridden by env and flags).
    #[arg(long, short, env = "PGTRAIL_COLLECTOR_CONFIG", global = true)]
    config: Option<PathBuf>,
    /// Address to serve gRPC on [default: 127.0.0.1:7070].
    #[arg(long, env = "PGTRAIL_LISTEN")]
    listen: Option<SocketAddr>,
    /// Directory of the store [default: ./pgtrail-data].
    #[arg(long, env = "PGTRAIL_DATA")]
    data: Option<PathBuf>,
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
    let mut config = match &args.config {
        Some(path) => Config::from_file(path)?,
        None => Config::default(),
    };
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    if let Some(data) = args.data {
        config.data = data;
    }
    if let Some(Command::CheckConfig) = args.command {
        println!(
            "config ok: listen {}, data {}, samples kept {}, history kept {}",
            config.listen,
            config.data.display(),
            pgtrail_collector::retention::display(config.retention.samples),
            pgtrail_collector::retention::display(config.retention.history),
        );
        return Ok(());
    }
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    runtime.block_on(pgtrail_collector::run(
        &config,
        pgtrail_collector::shutdown_signal(),
    ))?;
    Ok(())
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
