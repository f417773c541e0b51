//! The per-sample `pg_stat_activity` query and its rows.
//!
//! One query a sample, prepared once per connection. Its column list
//! depends on the server's major version: `leader_pid` exists from 13,
//! `query_id` from 14. `pg_blocking_pids()` is called only for sessions
//! waiting on a lock, since it takes the lock manager's locks.

use std::time::SystemTime;

use pgtrail_proto::model::query_hash;
use pgtrail_proto::pb;
use pgtrail_proto::time::from_system_time;
use tokio_postgres::Row;

/// What pg_stat_activity shows in `query` for sessions the role may not see.
pub const INSUFFICIENT_PRIVILEGE: &str = "<insufficient privilege>";

/// The `pg_stat_activity` query for a server of `version_num`
/// (`server_version_num`), with query texts cut to `query_max_len`
/// characters on the server.
pub fn activity_sql(version_num: u32, query_max_len: usize) -> String {
    let mut columns = vec![
        "pid",
        "backend_type",
        "backend_start",
        "datname",
        "usename",
        "application_name",
        "host(client_addr) AS client_addr",
        "client_hostname",
        "client_port",
        "xact_start",
        "query_start",
        "state_change",
        "wait_event_type",
        "wait_event",
        "state",
        "backend_xid::text::int8 AS backend_xid",
        "backend_xmin::text::int8 AS backend_xmin",
        "CASE WHEN wait_event_type = 'Lock' THEN pg_blocking_pids(pid) END AS blocking_pids",
    ];
    if version_num >= 130000 {
        columns.push("leader_pid");
    }
    if version_num >= 140000 {
        columns.push("query_id");
    }
    format!(
        "SELECT {}, left(query, {query_max_len}) AS query FROM pg_stat_activity",
        columns.join(", ")
    )
}

/// One row as a session, and its query text (`None` when empty or hidden),
/// with its literals replaced by placeholders when `normalize`.
pub fn session_from_row(
    row: &Row,
    normalize: bool,
) -> Result<(pb::Session, Option<String>), tokio_postgres::Error> {
    let text: Option<String> = row.try_get("query")?;
    let hidden = text.as_deref() == Some(INSUFFICIENT_PRIVILEGE);
    let text = text.filter(|t| !t.is_empty() && !hidden).map(|t| {
        if normalize {
            super::normalize::normalize(&t)
        } else {
            t
        }
    });
    let time = |name: &str| -> Result<Option<i64>, tokio_postgres::Error> {
        Ok(row
            .try_get::<_, Option<SystemTime>>(name)?
            .map(from_system_time))
    };
    let session = pb::Session {
        pid: row.try_get("pid")?,
        backend_type: row
            .try_get::<_, Option<String>>("backend_type")?
            .unwrap_or_default(),
        backend_start_us: time("backend_start")?,
        database: row.try_get("datname")?,
        user: row.try_get("usename")?,
        application_name: row.try_get("application_name")?,
        client_addr: row.try_get("client_addr")?,
        client_hostname: row.try_get("client_hostname")?,
        client_port: row.try_get("client_port")?,
        xact_start_us: time("xact_start")?,
        query_start_us: time("query_start")?,
        state_change_us: time("state_change")?,
        wait_event_type: row.try_get("wait_event_type")?,
        wait_event: row.try_get("wait_event")?,
        state: row.try_get("state")?,
        backend_xid: row
            .try_get::<_, Option<i64>>("backend_xid")?
            .and_then(|x| u32::try_from(x).ok()),
        backend_xmin: row
            .try_get::<_, Option<i64>>("backend_xmin")?
            .and_then(|x| u32::try_from(x).ok()),
        query_id: text.as_deref().map(query_hash),
        pg_query_id: optional_column(row, "query_id")?,
        leader_pid: optional_column(row, "leader_pid")?,
        blocking_pids: row
            .try_get::<_, Option<Vec<i32>>>("blocking_pids")?
            .unwrap_or_default(),
        insufficient_privilege: hidden,
    };
    Ok((session, text))
}

/// A column that only some versions have: absent from the row is `None`.
fn optional_column<'a, T>(row: &'a Row, name: &str) -> Result<Option<T>, tokio_postgres::Error>
where
    T: tokio_postgres::types::FromSql<'a>,
{
    if row.columns().iter().any(|c| c.name() == name) {
        row.try_get(name)
    } else {
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_follow_the_version() {
        let v12 = activity_sql(120015, 1024);
        assert!(!v12.contains("leader_pid"));
        assert!(!v12.contains("query_id"));
        let v13 = activity_sql(130011, 1024);
        assert!(v13.contains("leader_pid"));
        assert!(!v13.contains("query_id"));
        let v17 = activity_sql(170002, 100);
        assert!(v17.contains("leader_pid") && v17.contains("query_id"));
        assert!(v17.contains("left(query, 100)"));
    }
}
