//! `pgtrail leaks`.

use chrono::Local;
use pgtrail_proto::pb;
use pgtrail_proto::time::from_duration;
use serde_json::json;

use super::{opt_time, round1, scope, time, HOUR};
use crate::args::WindowArgs;
use crate::client;
use crate::output::{render, Format, Row};
use crate::time::parse_duration;

const COLUMNS: &[&str] = &[
    "host",
    "port",
    "pid",
    "user",
    "database",
    "application_name",
    "client_addr",
    "started",
    "ended",
    "duration_s",
    "last_query",
];

pub async fn run(
    server: &str,
    w: &WindowArgs,
    min: &str,
    format: Format,
) -> anyhow::Result<String> {
    let min = parse_duration(min)?;
    let (from, to) = crate::time::window(
        w.since.as_deref(),
        w.from.as_deref(),
        w.to.as_deref(),
        24 * HOUR,
        Local::now(),
    )?;
    let mut client = client::connect(server).await?;
    let reply = client
        .leaks(pb::LeaksRequest {
            scope: scope(&w.scope),
            window: Some(pb::Window {
                from_us: from,
                to_us: to,
            }),
            min_duration_us: from_duration(min),
        })
        .await
        .map_err(client::status)?
        .into_inner();
    let rows: Vec<Row> = reply.episodes.into_iter().map(row).collect();
    Ok(render(&rows, COLUMNS, format))
}

fn row(e: pb::Episode) -> Row {
    let end = e.ended_us.unwrap_or(e.last_seen_us);
    let v = json!({
        "host": e.host,
        "instance": e.instance,
        "port": e.port,
        "pid": e.pid,
        "backend_start": opt_time(e.backend_start_us),
        "user": e.user,
        "database": e.database,
        "application_name": e.application_name,
        "client_addr": e.client_addr,
        "xact_start": opt_time(e.xact_start_us),
        "started": time(e.started_us),
        "ended": opt_time(e.ended_us),
        "last_seen": time(e.last_seen_us),
        "duration_s": round1((end - e.started_us) as f64 / 1e6),
        "last_query": e.last_query,
    });
    v.as_object().expect("object").clone()
}
