//! `pgtrail churn`: sessions started per minute, lifetimes, and whether
//! the pattern says a pooler is missing.

use pgtrail_proto::pb;
use serde_json::json;

use super::{object, round1, scope, window, HOUR};
use crate::args::WindowArgs;
use crate::client;
use crate::output::{render, Format, Row};

const COLUMNS: &[&str] = &[
    "host",
    "port",
    "sessions_started",
    "per_minute",
    "max_per_minute",
    "short_lived_pct",
    "hint",
];

/// Lifetime bucket labels, as the collector counts them.
const LIFETIMES: [&str; 5] = ["under_1s", "under_10s", "under_1m", "under_1h", "over_1h"];

pub async fn run(server: &str, w: &WindowArgs, format: Format) -> anyhow::Result<String> {
    let window = window(w, HOUR)?;
    let mut client = client::connect(server).await?;
    let reply = client
        .churn(pb::ChurnRequest {
            scope: scope(&w.scope),
            window: Some(window),
        })
        .await
        .map_err(client::status)?
        .into_inner();
    let rows: Vec<Row> = reply.instances.iter().map(row).collect();
    Ok(render(&rows, COLUMNS, format))
}

fn row(c: &pb::InstanceChurn) -> Row {
    // Sessions the server counted but no sample saw lived under one
    // interval: short-lived by any measure.
    let started = c.sessions_started.unwrap_or(c.sessions_seen);
    let unseen = started.saturating_sub(c.sessions_seen);
    let ended_seen: u64 = c.lifetimes.iter().sum();
    let short_seen: u64 = c.lifetimes.iter().take(2).sum();
    let short = unseen + short_seen;
    let judged = unseen + ended_seen;
    let short_pct = (judged > 0).then(|| short as f64 * 100.0 / judged as f64);
    let per_minute = started as f64 / f64::from(c.minutes.max(1));
    let hint = hint(per_minute, short_pct);
    let lifetimes: serde_json::Map<String, serde_json::Value> = LIFETIMES
        .iter()
        .zip(c.lifetimes.iter().chain(std::iter::repeat(&0)))
        .map(|(k, n)| (k.to_string(), (*n).into()))
        .collect();
    object(json!({
        "host": c.host,
        "instance": c.instance,
        "port": c.port,
        "minutes": c.minutes,
        "sessions_started": started,
        "counted_by_server": c.sessions_started.is_some(),
        "sessions_seen": c.sessions_seen,
        "per_minute": round1(per_minute),
        "max_per_minute": c.max_per_minute,
        "lifetimes": lifetimes,
        "short_lived": short,
        "short_lived_pct": short_pct.map(round1),
        "hint": hint,
    }))
}

/// A plain-language reading of the pattern.
fn hint(per_minute: f64, short_pct: Option<f64>) -> String {
    match short_pct {
        Some(p) if per_minute >= 30.0 && p >= 50.0 => format!(
            "{per_minute:.0} new connections a minute, {p:.0}% of them under 10 s: each costs a fork and backend start-up; a connection pooler (PgBouncer, pgcat, pgdog) in front of the server would remove most of them"
        ),
        Some(p) if per_minute >= 5.0 && p >= 50.0 => format!(
            "frequent short sessions ({per_minute:.0} a minute, {p:.0}% under 10 s): consider a connection pooler"
        ),
        _ => "no sign of a missing pooler".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hints_follow_the_pattern() {
        assert!(hint(120.0, Some(90.0)).contains("pooler"));
        assert!(hint(10.0, Some(80.0)).contains("consider a connection pooler"));
        assert_eq!(hint(0.5, Some(100.0)), "no sign of a missing pooler");
        assert_eq!(hint(100.0, Some(5.0)), "no sign of a missing pooler");
    }
}
