//! `pgtrail peaks`.

use pgtrail_proto::pb;
use pgtrail_proto::time::from_duration;
use serde_json::json;

use super::{object, opt_time, pct, scope, time, window, HOUR};
use crate::args::{By, WindowArgs};
use crate::client;
use crate::output::{render, Format, Row};
use crate::time::parse_duration;

pub async fn run(
    server: &str,
    w: &WindowArgs,
    by: Option<By>,
    bucket: Option<&str>,
    format: Format,
) -> anyhow::Result<String> {
    let window = window(w, HOUR)?;
    let bucket_us = match bucket {
        Some(b) => {
            let us = from_duration(parse_duration(b)?);
            if us <= 0 || us % 60_000_000 != 0 {
                anyhow::bail!("--bucket {b} is not a whole number of minutes: use e.g. 1m, 1h, 1d");
            }
            us
        }
        None => 0,
    };
    let dimension = match by {
        None => pb::Dimension::Unspecified,
        Some(By::State) => pb::Dimension::State,
        Some(By::User) => pb::Dimension::User,
        Some(By::Database) => pb::Dimension::Database,
        Some(By::Application) => pb::Dimension::Application,
        Some(By::Client) => pb::Dimension::Client,
    };
    let mut client = client::connect(server).await?;
    let reply = client
        .peaks(pb::PeaksRequest {
            scope: scope(&w.scope),
            window: Some(window),
            by: dimension as i32,
            bucket_us,
        })
        .await
        .map_err(client::status)?
        .into_inner();
    let by_name = by.map(|b| match b {
        By::State => "state",
        By::User => "user",
        By::Database => "database",
        By::Application => "application",
        By::Client => "client",
    });
    let rows: Vec<Row> = reply.peaks.into_iter().map(|p| row(p, by_name)).collect();
    let mut columns = vec!["host", "port"];
    if bucket_us > 0 {
        columns.push("bucket");
    }
    if let Some(name) = by_name {
        columns.push(name);
    }
    columns.extend(["at", "total"]);
    if by.is_none() {
        columns.push("by_state");
    }
    columns.extend(["max_connections", "pct_used", "pct_of_user_limit"]);
    Ok(render(&rows, &columns, format))
}

fn row(p: pb::Peak, by: Option<&str>) -> Row {
    let mut by_state: Vec<(String, u32)> = p.by_state.into_iter().collect();
    by_state.sort();
    let user_limit = match (p.max_connections, p.superuser_reserved_connections) {
        (Some(m), Some(r)) => Some(m.saturating_sub(r)),
        _ => None,
    };
    let mut r = object(json!({
        "host": p.host,
        "instance": p.instance,
        "port": p.port,
        "bucket": opt_time(p.bucket_start_us),
    }));
    if let Some(name) = by {
        r.insert(name.to_string(), p.value.into());
    }
    r.extend(object(json!({
        "at": time(p.at_us),
        "total": p.total,
        "by_state": by_state
            .into_iter()
            .map(|(k, n)| (k, n.into()))
            .collect::<serde_json::Map<_, _>>(),
        "max_connections": p.max_connections,
        "superuser_reserved_connections": p.superuser_reserved_connections,
        "pct_used": pct(p.total, p.max_connections),
        "pct_of_user_limit": pct(p.total, user_limit),
        "samples": p.samples,
    })));
    if p.bucket_start_us.is_none() {
        r.remove("bucket");
    }
    if by.is_some() {
        r.remove("by_state");
    }
    r
}
