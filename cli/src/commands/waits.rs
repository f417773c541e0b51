//! `pgtrail waits`: wait events over the window, active-session-history
//! style.

use pgtrail_proto::pb;
use serde_json::{json, Value};

use super::{object, round1, scope, window, HOUR};
use crate::args::WindowArgs;
use crate::client;
use crate::output::{render, Format, Row};

const COLUMNS: &[&str] = &[
    "host",
    "port",
    "event_type",
    "event",
    "samples",
    "pct",
    "top_queries",
];

pub async fn run(server: &str, w: &WindowArgs, top: u32, format: Format) -> anyhow::Result<String> {
    let window = window(w, HOUR)?;
    let mut client = client::connect(server).await?;
    let reply = client
        .waits(pb::WaitsRequest {
            scope: scope(&w.scope),
            window: Some(window),
            top,
        })
        .await
        .map_err(client::status)?
        .into_inner();
    let mut rows: Vec<Row> = reply.waits.iter().map(row).collect();
    if format != Format::Table {
        return Ok(render(&rows, COLUMNS, format));
    }
    // Tables show the queries as "samples× text; ...".
    for r in &mut rows {
        let summary: Vec<String> = r["top_queries"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|q| format!("{}× {}", q["samples"], q["query"].as_str().unwrap_or("")))
            .collect();
        r.insert("top_queries".into(), summary.join("; ").into());
    }
    Ok(render(&rows, COLUMNS, format))
}

fn row(w: &pb::WaitSummary) -> Row {
    let queries: Vec<Value> = w
        .top_queries
        .iter()
        .map(|q| json!({"query": q.query, "samples": q.samples}))
        .collect();
    object(json!({
        "host": w.host,
        "instance": w.instance,
        "port": w.port,
        "event_type": w.event_type,
        "event": w.event,
        "samples": w.samples,
        "pct": round1(w.samples as f64 * 100.0 / w.total_samples.max(1) as f64),
        "top_queries": queries,
    }))
}
