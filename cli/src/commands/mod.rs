//! One file per subcommand; each asks the collector and renders rows.

mod at;
mod hosts;
mod leaks;
mod peaks;
mod record;

use std::time::Duration;

use pgtrail_proto::pb;
use serde_json::Value;

use crate::args::{Cli, Command, Scope};
use crate::time::rfc3339;

/// Runs one command line.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let out = match cli.command {
        Command::Record(args) => return record::run(args).await,
        Command::Hosts(scope) => hosts::run(&cli.server, &scope, cli.format).await?,
        Command::Peaks(window) => peaks::run(&cli.server, &window, cli.format).await?,
        Command::Leaks { window, min } => {
            leaks::run(&cli.server, &window, &min, cli.format).await?
        }
        Command::At { time, scope } => at::run(&cli.server, &time, &scope, cli.format).await?,
    };
    print!("{out}");
    Ok(())
}

fn scope(s: &Scope) -> Option<pb::Scope> {
    Some(pb::Scope {
        hosts: s.hosts.clone(),
    })
}

fn time(t: i64) -> Value {
    Value::String(rfc3339(t))
}

fn opt_time(t: Option<i64>) -> Value {
    t.map_or(Value::Null, time)
}

fn pct(part: u32, whole: Option<u32>) -> Value {
    match whole {
        Some(w) if w > 0 => round1(f64::from(part) * 100.0 / f64::from(w)),
        _ => Value::Null,
    }
}

fn round1(x: f64) -> Value {
    serde_json::Number::from_f64((x * 10.0).round() / 10.0).map_or(Value::Null, Value::Number)
}

const HOUR: Duration = Duration::from_secs(3600);
