//! `pgtrail leaks`, `slow` and `idle`: session episodes of one kind.

use std::collections::BTreeMap;

use pgtrail_proto::pb::{self, EpisodeKind};
use pgtrail_proto::time::from_duration;
use serde_json::{json, Value};

use super::{object, opt_time, scope, seconds, time, window, DAY};
use crate::args::{GroupBy, WindowArgs};
use crate::client;
use crate::output::{render, Format, Row};
use crate::time::parse_duration;

/// The table columns of `leaks` and `idle`.
const SESSION_COLUMNS: &[&str] = &[
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

/// Asks for episodes of `kind`, at most `limit` of them (the longest; 0
/// for all), and says on standard error when more matched.
pub async fn fetch(
    server: &str,
    w: &WindowArgs,
    min: &str,
    kind: EpisodeKind,
    limit: u32,
) -> anyhow::Result<Vec<pb::Episode>> {
    let min = from_duration(parse_duration(min)?);
    let window = window(w, DAY)?;
    let mut client = client::connect(server).await?;
    let answer = client
        .episodes(pb::EpisodesRequest {
            scope: scope(&w.scope),
            window: Some(window),
            min_duration_us: min,
            kind: kind as i32,
            limit,
        })
        .await
        .map_err(client::status)?
        .into_inner();
    if answer.more {
        eprintln!(
            "note: the {} longest episodes; more matched (--limit 0 shows all)",
            answer.episodes.len()
        );
    }
    Ok(answer.episodes)
}

/// How long an episode lasted (so far, while open).
pub fn duration_us(e: &pb::Episode) -> i64 {
    e.ended_us.unwrap_or(e.last_seen_us) - e.started_us
}

/// The fields every session episode has.
pub fn row(e: &pb::Episode) -> Row {
    object(json!({
        "host": e.host,
        "instance": e.instance,
        "port": e.port,
        "pid": e.pid,
        "backend_start": opt_time(e.backend_start_us),
        "user": e.user,
        "database": e.database,
        "application_name": e.application_name,
        "client_addr": e.client_addr,
        "backend_type": e.backend_type,
        "xact_start": opt_time(e.xact_start_us),
        "query_start": opt_time(e.query_start_us),
        "started": time(e.started_us),
        "ended": opt_time(e.ended_us),
        "last_seen": time(e.last_seen_us),
        "duration_s": seconds(duration_us(e)),
        "last_query": e.last_query,
    }))
}

/// Wait events as "event×samples", most seen first.
pub fn wait_events(e: &pb::Episode) -> Value {
    let mut w: Vec<(&String, &u32)> = e.wait_events.iter().collect();
    w.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    Value::Object(
        w.into_iter()
            .map(|(k, n)| (k.clone(), (*n).into()))
            .collect(),
    )
}

pub async fn leaks(
    server: &str,
    w: &WindowArgs,
    min: &str,
    group_by: Option<GroupBy>,
    limit: u32,
    format: Format,
) -> anyhow::Result<String> {
    let limit = if group_by.is_some() { 0 } else { limit };
    let episodes = fetch(server, w, min, EpisodeKind::IdleInTransaction, limit).await?;
    let Some(group_by) = group_by else {
        let rows: Vec<Row> = episodes.iter().map(row).collect();
        return Ok(render(&rows, SESSION_COLUMNS, format));
    };
    let (name, key): (&str, fn(&pb::Episode) -> Option<String>) = match group_by {
        GroupBy::Application => ("application_name", |e| e.application_name.clone()),
        GroupBy::User => ("user", |e| e.user.clone()),
        GroupBy::Client => ("client_addr", |e| e.client_addr.clone()),
    };
    let mut groups: BTreeMap<(String, String, Option<String>), Vec<&pb::Episode>> = BTreeMap::new();
    for e in &episodes {
        groups
            .entry((e.host.clone(), e.instance.clone(), key(e)))
            .or_default()
            .push(e);
    }
    let mut rows: Vec<Row> = groups
        .into_iter()
        .map(|((host, instance, value), list)| {
            let total: i64 = list.iter().map(|e| duration_us(e)).sum();
            let longest = list.iter().map(|e| duration_us(e)).max().unwrap_or(0);
            let last = list.iter().max_by_key(|e| e.started_us).expect("non-empty");
            let mut r = object(json!({
                "host": host,
                "instance": instance,
                "port": last.port,
            }));
            r.insert(name.to_string(), value.into());
            r.extend(object(json!({
                "episodes": list.len(),
                "total_s": seconds(total),
                "longest_s": seconds(longest),
                "last_started": time(last.started_us),
                "last_query": last.last_query,
            })));
            r
        })
        .collect();
    rows.sort_by(|a, b| {
        b["total_s"]
            .as_f64()
            .partial_cmp(&a["total_s"].as_f64())
            .unwrap_or(std::cmp::Ordering::Equal)
    });
    Ok(render(
        &rows,
        &[
            "host",
            "port",
            name,
            "episodes",
            "total_s",
            "longest_s",
            "last_started",
            "last_query",
        ],
        format,
    ))
}

pub async fn slow(
    server: &str,
    w: &WindowArgs,
    min: &str,
    limit: u32,
    format: Format,
) -> anyhow::Result<String> {
    let episodes = fetch(server, w, min, EpisodeKind::SlowQuery, limit).await?;
    let rows: Vec<Row> = episodes
        .iter()
        .map(|e| {
            let mut r = row(e);
            r.insert("wait_events".into(), wait_events(e));
            if let Some(q) = r.remove("last_query") {
                r.insert("query".into(), q);
            }
            r
        })
        .collect();
    Ok(render(
        &rows,
        &[
            "host",
            "port",
            "pid",
            "user",
            "database",
            "application_name",
            "query_start",
            "ended",
            "duration_s",
            "wait_events",
            "query",
        ],
        format,
    ))
}

pub async fn idle(
    server: &str,
    w: &WindowArgs,
    min: &str,
    limit: u32,
    format: Format,
) -> anyhow::Result<String> {
    let episodes = fetch(server, w, min, EpisodeKind::Idle, limit).await?;
    let rows: Vec<Row> = episodes.iter().map(row).collect();
    Ok(render(&rows, SESSION_COLUMNS, format))
}
