//! One file per subcommand; each asks the collector and renders rows.

mod at;
mod churn;
mod episodes;
mod health;
mod hosts;
mod locks;
mod mem;
mod peaks;
mod ps;
mod record;
mod waits;

use std::time::Duration;

use chrono::Local;
use pgtrail_proto::pb;
use serde_json::Value;

use crate::args::{Cli, Command, Scope, WindowArgs};
use crate::time::rfc3339;

/// Runs one command line.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let server = cli.server.as_str();
    let f = cli.format;
    let out = match cli.command {
        Command::Record(args) => return record::run(args).await,
        Command::Hosts(scope) => hosts::run(server, &scope, f).await?,
        Command::Peaks { window, by, bucket } => {
            peaks::run(server, &window, by, bucket.as_deref(), f).await?
        }
        Command::Leaks {
            window,
            min,
            group_by,
            limit,
        } => episodes::leaks(server, &window, &min, group_by, limit, f).await?,
        Command::Slow { window, min, limit } => {
            episodes::slow(server, &window, &min, limit, f).await?
        }
        Command::Idle { window, min, limit } => {
            episodes::idle(server, &window, &min, limit, f).await?
        }
        Command::Locks { window, min } => locks::run(server, &window, &min, f).await?,
        Command::At { time, scope } => at::run(server, &time, &scope, f).await?,
        Command::Ps { at, scope } => ps::run(server, &at, &scope, f).await?,
        Command::Mem { window, top, nodes } => mem::run(server, &window, top, nodes, f).await?,
        Command::Health { window } => health::run(server, &window, f).await?,
        Command::Churn { window } => churn::run(server, &window, f).await?,
        Command::Waits { window, top } => waits::run(server, &window, top, f).await?,
    };
    print!("{out}");
    Ok(())
}

fn scope(s: &Scope) -> Option<pb::Scope> {
    Some(pb::Scope {
        hosts: s.hosts.clone(),
    })
}

/// The window `w` describes, `default` long when it says nothing.
fn window(w: &WindowArgs, default: Duration) -> anyhow::Result<pb::Window> {
    let (from, to) = crate::time::window(
        w.since.as_deref(),
        w.from.as_deref(),
        w.to.as_deref(),
        default,
        Local::now(),
    )?;
    Ok(pb::Window {
        from_us: from,
        to_us: to,
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

/// Seconds, to a tenth.
fn seconds(us: i64) -> Value {
    round1(us as f64 / 1e6)
}

/// `json!` objects as rows.
fn object(v: Value) -> crate::output::Row {
    match v {
        Value::Object(map) => map,
        _ => unreachable!("rows are built from objects"),
    }
}

const HOUR: Duration = Duration::from_secs(3600);
const DAY: Duration = Duration::from_secs(24 * 3600);
