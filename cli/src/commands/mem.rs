//! `pgtrail mem`: the largest processes, instance totals over the window,
//! and the worst-case work_mem estimate against the memory limit.

use pgtrail_proto::pb;
use serde_json::{json, Value};

use super::{object, opt_time, scope, time, window, HOUR};
use crate::args::WindowArgs;
use crate::client;
use crate::commands::ps::bytes;
use crate::output::{render, Format, Row};

const TOP_COLUMNS: &[&str] = &[
    "host",
    "port",
    "pid",
    "kind",
    "user",
    "database",
    "application_name",
    "state",
    "rss",
    "pss",
    "uss",
    "query",
];

const SUMMARY_COLUMNS: &[&str] = &[
    "host",
    "port",
    "max_rss_total",
    "max_rss_total_at",
    "peak_connections",
    "worst_case",
    "limit",
    "limit_source",
    "exceeds_limit",
];

pub async fn run(
    server: &str,
    w: &WindowArgs,
    top: u32,
    nodes: u32,
    format: Format,
) -> anyhow::Result<String> {
    let window = window(w, HOUR)?;
    let mut client = client::connect(server).await?;
    let reply = client
        .mem(pb::MemRequest {
            scope: scope(&w.scope),
            window: Some(window),
            top,
        })
        .await
        .map_err(client::status)?
        .into_inner();
    let instances: Vec<Row> = reply.instances.iter().map(|i| instance(i, nodes)).collect();
    Ok(match format {
        Format::Json => render(&instances, &[], Format::Json),
        Format::Csv => render(&instances, SUMMARY_COLUMNS, Format::Csv),
        Format::Table => {
            let mut out = render(&instances, SUMMARY_COLUMNS, Format::Table);
            let top: Vec<Row> = instances
                .iter()
                .flat_map(|i| {
                    i["top"].as_array().into_iter().flatten().filter_map(|p| {
                        let mut r = p.as_object()?.clone();
                        r.insert("host".into(), i["host"].clone());
                        r.insert("port".into(), i["port"].clone());
                        Some(r)
                    })
                })
                .collect();
            out.push_str("\nlargest processes at the window's end:\n");
            out.push_str(&render(&top, TOP_COLUMNS, Format::Table));
            out
        }
    })
}

/// work_mem × hash_mem_multiplier × nodes × (1 + parallel workers) ×
/// connections, in bytes.
pub fn worst_case(f: &pb::InstanceFacts, nodes: u32, connections: u32) -> Option<f64> {
    let work_mem = f.work_mem_bytes? as f64;
    let hash = f.hash_mem_multiplier.unwrap_or(1.0);
    let parallel = f64::from(f.max_parallel_workers_per_gather.unwrap_or(0));
    Some(work_mem * hash * f64::from(nodes) * (1.0 + parallel) * f64::from(connections))
}

fn instance(i: &pb::InstanceMemory, nodes: u32) -> Row {
    let facts = i.facts.clone().unwrap_or_default();
    let connections = facts.max_connections.unwrap_or(i.peak_connections);
    let worst = worst_case(&facts, nodes, connections);
    let worst_at_peak = worst_case(&facts, nodes, i.peak_connections);
    let cgroup = i
        .memory
        .and_then(|m| m.cgroup_limit_bytes)
        .or(facts.cgroup_memory_limit_bytes);
    let (limit, source) = match (cgroup, facts.host_memory_bytes) {
        (Some(c), _) => (Some(c), Some("cgroup")),
        (None, Some(h)) => (Some(h), Some("host")),
        _ => (None, None),
    };
    let exceeds = match (worst, limit) {
        (Some(w), Some(l)) => Value::Bool(w > l as f64),
        _ => Value::Null,
    };
    let top: Vec<Value> = i
        .top
        .iter()
        .map(|p| {
            let kind = pb::ProcessKind::try_from(p.kind).unwrap_or(pb::ProcessKind::Unspecified);
            json!({
                "pid": p.pid,
                "kind": kind.label(),
                "user": p.user,
                "database": p.database,
                "application_name": p.application_name,
                "state": p.state,
                "rss_bytes": p.rss_bytes,
                "pss_bytes": p.pss_bytes,
                "uss_bytes": p.uss_bytes,
                "rss": p.rss_bytes.map(bytes),
                "pss": p.pss_bytes.map(bytes),
                "uss": p.uss_bytes.map(bytes),
                "query": p.query,
            })
        })
        .collect();
    object(json!({
        "host": i.host,
        "instance": i.instance,
        "port": i.port,
        "sampled_at": time(i.sampled_at_us),
        "max_rss_total_bytes": i.max_rss_total_bytes,
        "max_rss_total": bytes(i.max_rss_total_bytes),
        "max_rss_total_at": opt_time((i.max_rss_total_at_us != 0).then_some(i.max_rss_total_at_us)),
        "max_pss_total_bytes": i.max_pss_total_bytes,
        "peak_connections": i.peak_connections,
        "work_mem_bytes": facts.work_mem_bytes,
        "hash_mem_multiplier": facts.hash_mem_multiplier,
        "max_parallel_workers_per_gather": facts.max_parallel_workers_per_gather,
        "max_connections": facts.max_connections,
        "nodes": nodes,
        "worst_case_bytes": worst.map(|w| w as u64),
        "worst_case": worst.map(|w| bytes(w as u64)),
        "worst_case_at_peak_bytes": worst_at_peak.map(|w| w as u64),
        "limit_bytes": limit,
        "limit": limit.map(bytes),
        "limit_source": source,
        "exceeds_limit": exceeds,
        "top": top,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_worst_case_multiplies_out() {
        // The reference example: 64 MB, 3 nodes, 2 workers, 100 connections.
        let f = pb::InstanceFacts {
            work_mem_bytes: Some(64_000_000),
            hash_mem_multiplier: Some(1.0),
            max_parallel_workers_per_gather: Some(2),
            ..Default::default()
        };
        assert_eq!(worst_case(&f, 3, 100), Some(57_600_000_000.0));
        let f = pb::InstanceFacts {
            work_mem_bytes: Some(4 << 20),
            hash_mem_multiplier: Some(2.0),
            max_parallel_workers_per_gather: Some(0),
            ..Default::default()
        };
        assert_eq!(worst_case(&f, 3, 10), Some((4u64 << 20) as f64 * 60.0));
    }
}
