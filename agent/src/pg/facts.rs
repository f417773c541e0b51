//! Instance facts: identity, version and the settings that bound
//! connections and memory.
//!
//! Settings come from `pg_settings`, which hides what the role may not read
//! instead of failing, so a setting the agent cannot see is simply absent.
//! The agent re-reads facts when [`fingerprint_sql`] changes: a reload moves
//! `pg_conf_load_time()`, a restart moves `pg_postmaster_start_time()`.

use std::collections::HashMap;
use std::time::SystemTime;

use pgtrail_proto::pb;
use pgtrail_proto::time::from_system_time;
use tokio_postgres::Client;

use crate::os::memory;

/// A cheap per-sample query: its first two columns change whenever the
/// facts may have; the third is the count of sessions ever established
/// (PG 14+, NULL before), which shows connection churn too fast to sample.
pub fn fingerprint_sql(version_num: u32) -> &'static str {
    if version_num >= 140000 {
        "SELECT pg_conf_load_time(), pg_postmaster_start_time(), \
         (SELECT sum(sessions)::int8 FROM pg_stat_database)"
    } else {
        "SELECT pg_conf_load_time(), pg_postmaster_start_time(), NULL::int8"
    }
}

const SETTINGS: &[&str] = &[
    "archive_mode",
    "autovacuum",
    "autovacuum_max_workers",
    "data_directory",
    "hash_mem_multiplier",
    "max_connections",
    "max_parallel_workers_per_gather",
    "port",
    "shared_buffers",
    "superuser_reserved_connections",
    "work_mem",
];

/// Reads the instance's facts. `postmaster_pid` (when the server runs on
/// this host) adds the pid and its cgroup's memory limit.
pub async fn read_facts(
    client: &Client,
    postmaster_pid: Option<i32>,
) -> Result<pb::InstanceFacts, tokio_postgres::Error> {
    let row = client
        .query_one(
            "SELECT current_setting('server_version_num')::int4, version(), pg_postmaster_start_time()",
            &[],
        )
        .await?;
    let version_num: i32 = row.get(0);
    let started: SystemTime = row.get(2);
    let names: Vec<&str> = SETTINGS.to_vec();
    let rows = client
        .query(
            "SELECT name, setting, unit FROM pg_settings WHERE name = ANY($1)",
            &[&names],
        )
        .await?;
    let settings: HashMap<String, (String, Option<String>)> = rows
        .iter()
        .map(|r| (r.get(0), (r.get(1), r.get(2))))
        .collect();
    // Without pg_monitor (or superuser) this is refused; the identifier is
    // then unknown.
    let system_identifier = client
        .query_one("SELECT system_identifier FROM pg_control_system()", &[])
        .await
        .ok()
        .and_then(|r| r.get::<_, Option<i64>>(0))
        .map(|id| id as u64);

    let number = |name: &str| settings.get(name).and_then(|(v, _)| v.parse::<u32>().ok());
    let bytes = |name: &str| {
        settings
            .get(name)
            .and_then(|(v, unit)| setting_bytes(v, unit.as_deref()))
    };
    Ok(pb::InstanceFacts {
        port: number("port").unwrap_or(0),
        system_identifier,
        version_num: version_num.max(0) as u32,
        version: row.get(1),
        data_directory: settings.get("data_directory").map(|(v, _)| v.clone()),
        postmaster_pid,
        postmaster_start_us: from_system_time(started),
        max_connections: number("max_connections"),
        superuser_reserved_connections: number("superuser_reserved_connections"),
        work_mem_bytes: bytes("work_mem"),
        hash_mem_multiplier: settings
            .get("hash_mem_multiplier")
            .and_then(|(v, _)| v.parse().ok()),
        max_parallel_workers_per_gather: number("max_parallel_workers_per_gather"),
        autovacuum_max_workers: number("autovacuum_max_workers"),
        autovacuum: settings.get("autovacuum").map(|(v, _)| v == "on"),
        archive_mode: settings.get("archive_mode").map(|(v, _)| v.clone()),
        host_memory_bytes: memory::host_memory_bytes(),
        cgroup_memory_limit_bytes: postmaster_pid.and_then(memory::cgroup_memory_limit),
        shared_buffers_bytes: bytes("shared_buffers"),
    })
}

/// A memory setting in bytes: `setting` counted in `unit` ("kB", "8kB",
/// "MB", ...).
fn setting_bytes(setting: &str, unit: Option<&str>) -> Option<u64> {
    let n: u64 = setting.parse().ok()?;
    let unit = unit.unwrap_or("B");
    let digits = unit.trim_end_matches(char::is_alphabetic);
    let scale: u64 = if digits.is_empty() {
        1
    } else {
        digits.parse().ok()?
    };
    let base: u64 = match &unit[digits.len()..] {
        "B" => 1,
        "kB" => 1 << 10,
        "MB" => 1 << 20,
        "GB" => 1 << 30,
        "TB" => 1 << 40,
        _ => return None,
    };
    n.checked_mul(scale)?.checked_mul(base)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn converts_memory_units() {
        assert_eq!(setting_bytes("4096", Some("kB")), Some(4 << 20));
        assert_eq!(setting_bytes("16384", Some("8kB")), Some(128 << 20));
        assert_eq!(setting_bytes("64", Some("MB")), Some(64 << 20));
        assert_eq!(setting_bytes("7", None), Some(7));
        assert_eq!(setting_bytes("x", Some("kB")), None);
        assert_eq!(setting_bytes("1", Some("parsecs")), None);
    }
}
