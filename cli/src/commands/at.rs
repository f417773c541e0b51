//! `pgtrail at TIME`: every session and process as sampled at or just
//! before TIME. JSON has one object per instance; a table is printed per
//! instance; CSV flattens sessions with their instance's columns.

use std::collections::HashMap;

use chrono::Local;
use pgtrail_agent::os::syscall_name;
use pgtrail_proto::pb;
use serde_json::{json, Value};

use super::{opt_time, round1, scope, time};
use crate::args::Scope;
use crate::client;
use crate::output::{render, Format, Row};
use crate::time::rfc3339;

const SESSION_COLUMNS: &[&str] = &[
    "pid",
    "backend_type",
    "state",
    "user",
    "database",
    "application_name",
    "client_addr",
    "wait_event",
    "os_state",
    "cpu_pct",
    "rss_bytes",
    "query",
];

const PROCESS_COLUMNS: &[&str] = &[
    "pid",
    "ppid",
    "kind",
    "os_state",
    "cpu_pct",
    "rss_bytes",
    "wchan",
    "title",
];

pub async fn run(server: &str, t: &str, s: &Scope, format: Format) -> anyhow::Result<String> {
    let at = crate::time::parse_time(t, Local::now())?;
    let mut client = client::connect(server).await?;
    let reply = client
        .at(pb::AtRequest {
            scope: scope(s),
            at_us: at,
        })
        .await
        .map_err(client::status)?
        .into_inner();
    if reply.instances.is_empty() {
        anyhow::bail!("no instance has a sample at or before {}", rfc3339(at));
    }
    let instances: Vec<Row> = reply.instances.into_iter().map(instance).collect();
    Ok(match format {
        Format::Json => render(&instances, &[], Format::Json),
        Format::Csv => {
            let mut columns = vec!["host", "port", "sampled_at"];
            columns.extend_from_slice(SESSION_COLUMNS);
            render(&flatten(&instances), &columns, Format::Csv)
        }
        Format::Table => instances.iter().map(table).collect::<Vec<_>>().join("\n"),
    })
}

fn table(i: &Row) -> String {
    let rows = |key: &str| -> Vec<Row> {
        i[key]
            .as_array()
            .map(|a| a.iter().filter_map(|v| v.as_object().cloned()).collect())
            .unwrap_or_default()
    };
    let port = i["port"]
        .as_u64()
        .map_or(String::new(), |p| format!(" port {p}"));
    let sampled =
        crate::time::local_display(i["sampled_at"].as_str().unwrap_or("")).unwrap_or_default();
    let mut out = format!(
        "{} / {}{port}, sampled at {sampled}\n",
        i["host"].as_str().unwrap_or(""),
        i["instance"].as_str().unwrap_or(""),
    );
    out += &render(&rows("sessions"), SESSION_COLUMNS, Format::Table);
    let others: Vec<Row> = rows("processes")
        .into_iter()
        .filter(|p| p.get("session").and_then(Value::as_bool) != Some(true))
        .collect();
    if !others.is_empty() {
        out += "\nprocesses without a pg_stat_activity row:\n";
        out += &render(&others, PROCESS_COLUMNS, Format::Table);
    }
    out
}

fn flatten(instances: &[Row]) -> Vec<Row> {
    let mut out = Vec::new();
    for i in instances {
        for s in i["sessions"].as_array().into_iter().flatten() {
            let mut row = Row::new();
            for key in ["host", "instance", "port", "sampled_at"] {
                row.insert(key.into(), i[key].clone());
            }
            if let Some(s) = s.as_object() {
                row.extend(s.clone());
            }
            out.push(row);
        }
    }
    out
}

fn instance(mut i: pb::InstanceState) -> Row {
    i.sessions.sort_by_key(|s| s.pid);
    i.processes
        .sort_by_key(|p| (p.kind != pb::ProcessKind::Postmaster as i32, p.pid));
    let texts: HashMap<u64, String> = i.queries.into_iter().map(|q| (q.id, q.text)).collect();
    let procs: HashMap<i32, &pb::Process> = i.processes.iter().map(|p| (p.pid, p)).collect();
    let session_pids: std::collections::HashSet<i32> = i.sessions.iter().map(|s| s.pid).collect();
    let sessions: Vec<Value> = i
        .sessions
        .iter()
        .map(|s| session(s, procs.get(&s.pid).copied(), &texts))
        .collect();
    let processes: Vec<Value> = i
        .processes
        .iter()
        .map(|p| process(p, session_pids.contains(&p.pid)))
        .collect();
    let v = json!({
        "host": i.host,
        "instance": i.instance,
        "port": i.port,
        "sampled_at": time(i.sampled_at_us),
        "blind_spots": i.blind_spots,
        "sessions": sessions,
        "processes": processes,
    });
    v.as_object().expect("object").clone()
}

fn session(s: &pb::Session, p: Option<&pb::Process>, texts: &HashMap<u64, String>) -> Value {
    let query = if s.insufficient_privilege {
        Some("<insufficient privilege>".to_string())
    } else {
        s.query_id.and_then(|id| texts.get(&id).cloned())
    };
    json!({
        "pid": s.pid,
        "backend_type": s.backend_type,
        "state": s.state,
        "user": s.user,
        "database": s.database,
        "application_name": s.application_name,
        "client_addr": s.client_addr,
        "client_port": s.client_port,
        "backend_start": opt_time(s.backend_start_us),
        "xact_start": opt_time(s.xact_start_us),
        "query_start": opt_time(s.query_start_us),
        "state_change": opt_time(s.state_change_us),
        "wait_event_type": s.wait_event_type,
        "wait_event": s.wait_event,
        "blocking_pids": s.blocking_pids,
        "leader_pid": s.leader_pid,
        "query_id": s.pg_query_id,
        "query": query,
        "os_state": p.map(|p| p.state.clone()),
        "cpu_pct": p.and_then(|p| p.cpu_pct).map(|c| round1(f64::from(c))),
        "rss_bytes": p.and_then(|p| p.rss_bytes),
        "read_bytes": p.and_then(|p| p.read_bytes),
        "write_bytes": p.and_then(|p| p.write_bytes),
        "wchan": p.and_then(|p| p.wchan.clone()),
        "syscall": p.and_then(|p| p.syscall),
        "syscall_name": p.and_then(|p| p.syscall).and_then(syscall_name),
        "voluntary_ctxt_switches": p.and_then(|p| p.voluntary_ctxt_switches),
        "nonvoluntary_ctxt_switches": p.and_then(|p| p.nonvoluntary_ctxt_switches),
        "blkio_delay_us": p.and_then(|p| p.blkio_delay_us),
        "pss_bytes": p.and_then(|p| p.pss_bytes),
        "uss_bytes": p.and_then(|p| p.uss_bytes),
        "threads": p.and_then(|p| p.threads),
        "oom_score": p.and_then(|p| p.oom_score),
    })
}

fn process(p: &pb::Process, has_session: bool) -> Value {
    let kind = pb::ProcessKind::try_from(p.kind).unwrap_or(pb::ProcessKind::Unspecified);
    json!({
        "pid": p.pid,
        "ppid": p.ppid,
        "kind": kind.label(),
        "title": p.title,
        "session": has_session,
        "os_state": p.state,
        "start_time": time(p.start_time_us),
        "cpu_pct": p.cpu_pct.map(|c| round1(f64::from(c))),
        "utime_us": p.utime_us,
        "stime_us": p.stime_us,
        "rss_bytes": p.rss_bytes,
        "read_bytes": p.read_bytes,
        "write_bytes": p.write_bytes,
        "wchan": p.wchan,
        "syscall": p.syscall,
        "syscall_name": p.syscall.and_then(syscall_name),
        "voluntary_ctxt_switches": p.voluntary_ctxt_switches,
        "nonvoluntary_ctxt_switches": p.nonvoluntary_ctxt_switches,
        "blkio_delay_us": p.blkio_delay_us,
        "pss_bytes": p.pss_bytes,
        "uss_bytes": p.uss_bytes,
        "threads": p.threads,
        "oom_score": p.oom_score,
    })
}
