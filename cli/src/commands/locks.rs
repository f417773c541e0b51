//! `pgtrail locks`: lock waits with their blockers. JSON and CSV list the
//! waits; tables draw each blocking chain as a tree, blockers at the root
//! and the sessions they held up beneath them.

use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;

use pgtrail_proto::pb::{self, EpisodeKind};
use serde_json::{json, Value};

use super::episodes::{duration_us, fetch, row};
use super::{opt_time, time};
use crate::args::WindowArgs;
use crate::output::{render, Format, Row};

pub async fn run(
    server: &str,
    w: &WindowArgs,
    min: &str,
    format: Format,
) -> anyhow::Result<String> {
    let waits = fetch(server, w, min, EpisodeKind::LockWait, 0).await?;
    if format == Format::Table {
        return Ok(trees(&waits));
    }
    let rows: Vec<Row> = waits
        .iter()
        .map(|e| {
            let mut r = row(e);
            if let Some(q) = r.remove("last_query") {
                r.insert("query".into(), q);
            }
            r.insert("wait_events".into(), super::episodes::wait_events(e));
            r.insert(
                "blockers".into(),
                Value::Array(e.blockers.iter().map(blocker).collect()),
            );
            r.insert(
                "blocked_by_idle_in_transaction".into(),
                e.blockers.iter().any(|b| b.idle_in_transaction).into(),
            );
            r
        })
        .collect();
    Ok(render(
        &rows,
        &[
            "host",
            "port",
            "pid",
            "application_name",
            "started",
            "ended",
            "duration_s",
            "blockers",
            "query",
        ],
        format,
    ))
}

fn blocker(b: &pb::Blocker) -> Value {
    json!({
        "pid": b.pid,
        "backend_start": opt_time(b.backend_start_us),
        "user": b.user,
        "application_name": b.application_name,
        "state": b.state,
        "idle_in_transaction": b.idle_in_transaction,
        "waiting": b.waiting,
        "first_seen": time(b.first_seen_us),
        "last_seen": time(b.last_seen_us),
        "query": b.query,
    })
}

/// Every chain as a tree: roots are blockers not themselves waiting in
/// that instance; beneath each, the waits it held up, recursively.
fn trees(waits: &[pb::Episode]) -> String {
    let mut by_instance: BTreeMap<(&str, &str), Vec<&pb::Episode>> = BTreeMap::new();
    for e in waits {
        by_instance
            .entry((&e.host, &e.instance))
            .or_default()
            .push(e);
    }
    let mut out = String::new();
    for ((host, instance), waits) in by_instance {
        let _ = writeln!(out, "{host} / {instance}");
        let waiting: HashSet<i32> = waits.iter().map(|e| e.pid).collect();
        let mut roots: BTreeMap<i32, &pb::Blocker> = BTreeMap::new();
        for e in &waits {
            for b in &e.blockers {
                if !waiting.contains(&b.pid) {
                    roots.entry(b.pid).or_insert(b);
                }
            }
        }
        for (pid, b) in roots {
            let _ = writeln!(out, "{}", blocker_line(b));
            children(&mut out, &waits, pid, "", &mut vec![pid]);
        }
    }
    let n = waits.len();
    let _ = writeln!(out, "({n} lock {})", if n == 1 { "wait" } else { "waits" });
    out
}

fn children(
    out: &mut String,
    waits: &[&pb::Episode],
    blocker: i32,
    indent: &str,
    path: &mut Vec<i32>,
) {
    let held: Vec<&&pb::Episode> = waits
        .iter()
        .filter(|e| e.blockers.iter().any(|b| b.pid == blocker))
        .collect();
    for (i, e) in held.iter().enumerate() {
        let last = i + 1 == held.len();
        let _ = writeln!(
            out,
            "{indent}{} {}",
            if last { "└─" } else { "├─" },
            waiter_line(e)
        );
        if !path.contains(&e.pid) {
            path.push(e.pid);
            let deeper = format!("{indent}{}", if last { "   " } else { "│  " });
            children(out, waits, e.pid, &deeper, path);
            path.pop();
        }
    }
}

fn blocker_line(b: &pb::Blocker) -> String {
    let flag = if b.idle_in_transaction {
        " [IDLE IN TRANSACTION]"
    } else {
        ""
    };
    let held = (b.last_seen_us - b.first_seen_us) as f64 / 1e6;
    format!(
        "pid {} {} ({}){flag}, blocking for {held:.1}s: {}",
        b.pid,
        b.state.as_deref().unwrap_or("?"),
        b.application_name.as_deref().unwrap_or(""),
        short(b.query.as_deref().unwrap_or(""))
    )
}

fn waiter_line(e: &pb::Episode) -> String {
    let still = if e.ended_us.is_none() {
        ", still waiting"
    } else {
        ""
    };
    format!(
        "pid {} ({}) waited {:.1}s from {}{still}: {}",
        e.pid,
        e.application_name.as_deref().unwrap_or(""),
        duration_us(e) as f64 / 1e6,
        crate::time::local_display(&crate::time::rfc3339(e.started_us)).unwrap_or_default(),
        short(e.last_query.as_deref().unwrap_or(""))
    )
}

fn short(q: &str) -> String {
    let q = q.replace(['\n', '\r', '\t'], " ");
    if q.chars().count() > 80 {
        q.chars().take(79).collect::<String>() + "…"
    } else {
        q
    }
}
