//! `pgtrail health`: process-tree integrity over the window.

use pgtrail_proto::pb::{self, EpisodeKind};
use serde_json::{json, Value};

use super::{object, opt_time, scope, seconds, time, window, DAY};
use crate::args::WindowArgs;
use crate::client;
use crate::output::{render, Format, Row};

const COLUMNS: &[&str] = &[
    "host",
    "port",
    "verdict",
    "restarts",
    "missing",
    "autovacuum_saturated_s",
    "above_80_pct_s",
    "above_95_pct_s",
];

pub async fn run(server: &str, w: &WindowArgs, format: Format) -> anyhow::Result<String> {
    let window = window(w, DAY)?;
    let mut client = client::connect(server).await?;
    let reply = client
        .health(pb::HealthRequest {
            scope: scope(&w.scope),
            window: Some(window),
        })
        .await
        .map_err(client::status)?
        .into_inner();
    let rows: Vec<Row> = reply.instances.iter().map(row).collect();
    Ok(match format {
        Format::Table => {
            let mut out = render(&rows, COLUMNS, Format::Table);
            let events: Vec<Row> = rows
                .iter()
                .flat_map(|r| {
                    r["events"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|e| {
                            let mut e = e.as_object()?.clone();
                            e.insert("host".into(), r["host"].clone());
                            e.insert("port".into(), r["port"].clone());
                            Some(e)
                        })
                })
                .collect();
            if !events.is_empty() {
                out.push_str("\nevents:\n");
                out.push_str(&render(
                    &events,
                    &[
                        "host",
                        "port",
                        "event",
                        "detail",
                        "started",
                        "ended",
                        "duration_s",
                    ],
                    Format::Table,
                ));
            }
            out
        }
        other => render(&rows, COLUMNS, other),
    })
}

fn label(kind: EpisodeKind) -> &'static str {
    match kind {
        EpisodeKind::AuxMissing => "missing process",
        EpisodeKind::AutovacuumSaturated => "autovacuum saturated",
        EpisodeKind::Restart => "restart",
        _ => "other",
    }
}

fn row(i: &pb::InstanceHealth) -> Row {
    let kind_of =
        |e: &pb::Episode| EpisodeKind::try_from(e.kind).unwrap_or(EpisodeKind::Unspecified);
    let duration = |e: &pb::Episode| e.ended_us.unwrap_or(e.last_seen_us) - e.started_us;
    let restarts: Vec<&pb::Episode> = i
        .episodes
        .iter()
        .filter(|e| kind_of(e) == EpisodeKind::Restart)
        .collect();
    let mut missing: Vec<String> = i
        .episodes
        .iter()
        .filter(|e| kind_of(e) == EpisodeKind::AuxMissing)
        .filter_map(|e| e.detail.clone())
        .collect();
    missing.sort();
    missing.dedup();
    let saturated: i64 = i
        .episodes
        .iter()
        .filter(|e| kind_of(e) == EpisodeKind::AutovacuumSaturated)
        .map(duration)
        .sum();
    let mut problems = Vec::new();
    if !restarts.is_empty() {
        problems.push(format!("{} restart(s)", restarts.len()));
    }
    if !missing.is_empty() {
        problems.push(format!("missing {}", missing.join(", ")));
    }
    if saturated > 0 {
        problems.push("autovacuum saturated".to_string());
    }
    if i.above_95_us > 0 {
        problems.push("near the connection limit".to_string());
    }
    let events: Vec<Value> = i
        .episodes
        .iter()
        .map(|e| {
            json!({
                "event": label(kind_of(e)),
                "detail": e.detail,
                "pid": e.pid,
                "started": time(e.started_us),
                "ended": opt_time(e.ended_us),
                "duration_s": seconds(duration(e)),
            })
        })
        .collect();
    let facts = i.facts.clone().unwrap_or_default();
    object(json!({
        "host": i.host,
        "instance": i.instance,
        "port": i.port,
        "verdict": if problems.is_empty() { "ok".to_string() } else { problems.join("; ") },
        "restarts": restarts.len(),
        "crash_restarts": restarts.iter().filter(|e| e.detail.as_deref() == Some("crash restart")).count(),
        "missing": missing,
        "autovacuum_saturated_s": seconds(saturated),
        "autovacuum_max_workers": facts.autovacuum_max_workers,
        "max_autovacuum_workers_seen": i.max_autovacuum_workers,
        "above_80_pct_s": seconds(i.above_80_us),
        "above_95_pct_s": seconds(i.above_95_us),
        "covered_s": seconds(i.covered_us),
        "events": events,
    }))
}
