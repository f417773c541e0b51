//! `pgtrail peaks`.

use chrono::Local;
use pgtrail_proto::pb;
use serde_json::json;

use super::{pct, scope, time, HOUR};
use crate::args::WindowArgs;
use crate::client;
use crate::output::{render, Format, Row};

const COLUMNS: &[&str] = &[
    "host",
    "port",
    "at",
    "total",
    "by_state",
    "max_connections",
    "pct_used",
    "pct_of_user_limit",
];

pub async fn run(server: &str, w: &WindowArgs, format: Format) -> anyhow::Result<String> {
    let (from, to) = crate::time::window(
        w.since.as_deref(),
        w.from.as_deref(),
        w.to.as_deref(),
        HOUR,
        Local::now(),
    )?;
    let mut client = client::connect(server).await?;
    let reply = client
        .peaks(pb::PeaksRequest {
            scope: scope(&w.scope),
            window: Some(pb::Window {
                from_us: from,
                to_us: to,
            }),
        })
        .await
        .map_err(client::status)?
        .into_inner();
    let rows: Vec<Row> = reply.peaks.into_iter().map(row).collect();
    Ok(render(&rows, COLUMNS, format))
}

fn row(p: pb::Peak) -> Row {
    let mut by_state: Vec<(String, u32)> = p.by_state.into_iter().collect();
    by_state.sort();
    let user_limit = match (p.max_connections, p.superuser_reserved_connections) {
        (Some(m), Some(r)) => Some(m.saturating_sub(r)),
        _ => None,
    };
    let v = json!({
        "host": p.host,
        "instance": p.instance,
        "port": p.port,
        "at": time(p.at_us),
        "total": p.total,
        "by_state": by_state.into_iter().map(|(k, n)| (k, n.into())).collect::<serde_json::Map<_, _>>(),
        "max_connections": p.max_connections,
        "superuser_reserved_connections": p.superuser_reserved_connections,
        "pct_used": pct(p.total, p.max_connections),
        "pct_of_user_limit": pct(p.total, user_limit),
        "samples": p.samples,
    });
    v.as_object().expect("object").clone()
}
