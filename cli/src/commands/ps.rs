//! `pgtrail ps`: the process tree as pstree would draw it, from the sample
//! at or just before a moment. JSON and CSV give the processes as rows
//! (with their sessions' columns).

use std::collections::HashMap;
use std::fmt::Write as _;

use chrono::Local;
use pgtrail_proto::pb;
use serde_json::{json, Value};

use super::{object, round1, scope, time};
use crate::args::Scope;
use crate::client;
use crate::output::{render, Format, Row};

const COLUMNS: &[&str] = &[
    "host",
    "port",
    "pid",
    "ppid",
    "kind",
    "user",
    "database",
    "client_addr",
    "state",
    "os_state",
    "cpu_pct",
    "rss_bytes",
    "wchan",
];

pub async fn run(server: &str, at: &str, s: &Scope, format: Format) -> anyhow::Result<String> {
    let t = crate::time::parse_time(at, Local::now())?;
    let mut client = client::connect(server).await?;
    let reply = client
        .at(pb::AtRequest {
            scope: scope(s),
            at_us: t,
        })
        .await
        .map_err(client::status)?
        .into_inner();
    if reply.instances.is_empty() {
        anyhow::bail!(
            "no instance has a sample at or before {}",
            crate::time::rfc3339(t)
        );
    }
    if format == Format::Table {
        return Ok(reply
            .instances
            .iter()
            .map(tree)
            .collect::<Vec<_>>()
            .join("\n"));
    }
    let rows: Vec<Row> = reply.instances.iter().flat_map(rows).collect();
    Ok(render(&rows, COLUMNS, format))
}

fn rows(i: &pb::InstanceState) -> Vec<Row> {
    let sessions: HashMap<i32, &pb::Session> = i.sessions.iter().map(|s| (s.pid, s)).collect();
    let mut procs: Vec<&pb::Process> = i.processes.iter().collect();
    procs.sort_by_key(|p| (p.kind != pb::ProcessKind::Postmaster as i32, p.pid));
    procs
        .into_iter()
        .map(|p| {
            let s = sessions.get(&p.pid);
            let kind = pb::ProcessKind::try_from(p.kind).unwrap_or(pb::ProcessKind::Unspecified);
            object(json!({
                "host": i.host,
                "instance": i.instance,
                "port": i.port,
                "sampled_at": time(i.sampled_at_us),
                "pid": p.pid,
                "ppid": p.ppid,
                "kind": kind.label(),
                "title": p.title,
                "user": s.and_then(|s| s.user.clone()),
                "database": s.and_then(|s| s.database.clone()),
                "client_addr": s.and_then(|s| s.client_addr.clone()),
                "application_name": s.and_then(|s| s.application_name.clone()),
                "state": s.and_then(|s| s.state.clone()),
                "os_state": p.state,
                "cpu_pct": p.cpu_pct.map(|c| round1(f64::from(c))),
                "rss_bytes": p.rss_bytes,
                "pss_bytes": p.pss_bytes,
                "uss_bytes": p.uss_bytes,
                "wchan": p.wchan,
                "syscall": p.syscall,
                "syscall_name": p.syscall.and_then(pgtrail_agent::os::syscall_name),
                "voluntary_ctxt_switches": p.voluntary_ctxt_switches,
                "nonvoluntary_ctxt_switches": p.nonvoluntary_ctxt_switches,
                "blkio_delay_us": p.blkio_delay_us,
                "threads": p.threads,
                "oom_score": p.oom_score,
            }))
        })
        .collect()
}

/// `postgres(1234)─┬─postgres(1235) checkpointer` and so on.
fn tree(i: &pb::InstanceState) -> String {
    let rows = rows(i);
    let mut out = format!(
        "{} / {}{}, sampled at {}\n",
        i.host,
        i.instance,
        i.port.map_or(String::new(), |p| format!(" port {p}")),
        crate::time::local_display(&crate::time::rfc3339(i.sampled_at_us)).unwrap_or_default()
    );
    let Some((root, children)) = rows.split_first() else {
        out.push_str("(no process data: the agent does not see this server's /proc)\n");
        return out;
    };
    let head = format!("postgres({})", root["pid"]);
    let pad = " ".repeat(head.chars().count());
    for (n, child) in children.iter().enumerate() {
        let branch = match (n, children.len()) {
            (0, 1) => "───",
            (0, _) => "─┬─",
            (k, len) if k + 1 == len => " └─",
            _ => " ├─",
        };
        let lead = if n == 0 { head.as_str() } else { pad.as_str() };
        let _ = writeln!(
            out,
            "{lead}{branch}postgres({}) {}",
            child["pid"],
            describe(child)
        );
    }
    if children.is_empty() {
        let _ = writeln!(out, "{head}");
    }
    out
}

fn describe(p: &Row) -> String {
    let text = |k: &str| p.get(k).and_then(Value::as_str).unwrap_or("").to_string();
    let mut parts = vec![text("kind")];
    if p.get("state").is_some_and(|v| !v.is_null()) || p.get("user").is_some_and(|v| !v.is_null()) {
        for k in ["user", "database", "client_addr", "state"] {
            let v = text(k);
            if !v.is_empty() {
                parts.push(v);
            }
        }
    }
    let cpu = p.get("cpu_pct").and_then(Value::as_f64);
    let rss = p.get("rss_bytes").and_then(Value::as_u64);
    let mut stats = vec![format!("{}", text("os_state"))];
    if let Some(c) = cpu {
        stats.push(format!("cpu {c:.1}%"));
    }
    if let Some(r) = rss {
        stats.push(format!("rss {}", bytes(r)));
    }
    let wchan = text("wchan");
    if !wchan.is_empty() {
        stats.push(format!("wchan {wchan}"));
    }
    let syscall = text("syscall_name");
    if !syscall.is_empty() {
        stats.push(format!("in {syscall}"));
    }
    format!("{} [{}]", parts.join(" "), stats.join(", "))
}

/// Bytes as KiB/MiB/GiB.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}
