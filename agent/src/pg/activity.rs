//! The per-sample `pg_stat_activity` query and its rows.
//!
//! One query a sample, prepared once per connection. Its column list
//! depends on the server's major version: `leader_pid` exists from 13,
//! `query_id` from 14. `pg_blocking_pids()` is called only for sessions
//! waiting on a lock, since it takes the lock manager's locks.

use std::borrow::Cow;
use std::time::SystemTime;

use pgtrail_proto::model::query_hash;
use pgtrail_proto::pb;
use pgtrail_proto::time::from_system_time;
use tokio_postgres::types::FromSql;
use tokio_postgres::{Column, Row};

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

/// Where each column of the activity query is in its rows, found once per
/// statement rather than by name in every row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ActivityColumns {
    pid: Option<usize>,
    backend_type: Option<usize>,
    backend_start: Option<usize>,
    datname: Option<usize>,
    usename: Option<usize>,
    application_name: Option<usize>,
    client_addr: Option<usize>,
    client_hostname: Option<usize>,
    client_port: Option<usize>,
    xact_start: Option<usize>,
    query_start: Option<usize>,
    state_change: Option<usize>,
    wait_event_type: Option<usize>,
    wait_event: Option<usize>,
    state: Option<usize>,
    backend_xid: Option<usize>,
    backend_xmin: Option<usize>,
    blocking_pids: Option<usize>,
    leader_pid: Option<usize>,
    query_id: Option<usize>,
    query: Option<usize>,
}

impl ActivityColumns {
    /// The places of the columns in `columns` (a statement's or a row's).
    pub fn of(columns: &[Column]) -> Self {
        let at = |name: &str| columns.iter().position(|c| c.name() == name);
        Self {
            pid: at("pid"),
            backend_type: at("backend_type"),
            backend_start: at("backend_start"),
            datname: at("datname"),
            usename: at("usename"),
            application_name: at("application_name"),
            client_addr: at("client_addr"),
            client_hostname: at("client_hostname"),
            client_port: at("client_port"),
            xact_start: at("xact_start"),
            query_start: at("query_start"),
            state_change: at("state_change"),
            wait_event_type: at("wait_event_type"),
            wait_event: at("wait_event"),
            state: at("state"),
            backend_xid: at("backend_xid"),
            backend_xmin: at("backend_xmin"),
            blocking_pids: at("blocking_pids"),
            leader_pid: at("leader_pid"),
            query_id: at("query_id"),
            query: at("query"),
        }
    }
}

/// The value of column `name` found at `at`; a column that is not there is
/// the error reading it by name gives.
fn get<'a, T: FromSql<'a>>(
    row: &'a Row,
    at: Option<usize>,
    name: &str,
) -> Result<T, tokio_postgres::Error> {
    match at {
        Some(i) => row.try_get(i),
        None => row.try_get(name),
    }
}

/// A column that only some versions have: absent from the row is `None`.
fn optional<'a, T: FromSql<'a>>(
    row: &'a Row,
    at: Option<usize>,
) -> Result<Option<T>, tokio_postgres::Error> {
    match at {
        Some(i) => row.try_get(i),
        None => Ok(None),
    }
}

/// One row as a session, and its query text (`None` when empty or hidden),
/// with its literals replaced by placeholders when `normalize`. `columns`
/// are the places of the row's columns.
pub fn session_from_row<'a>(
    row: &'a Row,
    columns: &ActivityColumns,
    normalize: bool,
) -> Result<(pb::Session, Option<Cow<'a, str>>), tokio_postgres::Error> {
    let c = columns;
    let text: Option<&str> = get(row, c.query, "query")?;
    let hidden = text == Some(INSUFFICIENT_PRIVILEGE);
    let text = text.filter(|t| !t.is_empty() && !hidden).map(|t| {
        if normalize {
            Cow::Owned(super::normalize::normalize(t))
        } else {
            Cow::Borrowed(t)
        }
    });
    let time = |at: Option<usize>, name: &str| -> Result<Option<i64>, tokio_postgres::Error> {
        Ok(get::<Option<SystemTime>>(row, at, name)?.map(from_system_time))
    };
    let xid = |at: Option<usize>, name: &str| -> Result<Option<u32>, tokio_postgres::Error> {
        Ok(get::<Option<i64>>(row, at, name)?.and_then(|x| u32::try_from(x).ok()))
    };
    let session = pb::Session {
        pid: get(row, c.pid, "pid")?,
        backend_type: get::<Option<String>>(row, c.backend_type, "backend_type")?
            .unwrap_or_default(),
        backend_start_us: time(c.backend_start, "backend_start")?,
        database: get(row, c.datname, "datname")?,
        user: get(row, c.usename, "usename")?,
        application_name: get(row, c.application_name, "application_name")?,
        client_addr: get(row, c.client_addr, "client_addr")?,
        client_hostname: get(row, c.client_hostname, "client_hostname")?,
        client_port: get(row, c.client_port, "client_port")?,
        xact_start_us: time(c.xact_start, "xact_start")?,
        query_start_us: time(c.query_start, "query_start")?,
        state_change_us: time(c.state_change, "state_change")?,
        wait_event_type: get(row, c.wait_event_type, "wait_event_type")?,
        wait_event: get(row, c.wait_event, "wait_event")?,
        state: get(row, c.state, "state")?,
        backend_xid: xid(c.backend_xid, "backend_xid")?,
        backend_xmin: xid(c.backend_xmin, "backend_xmin")?,
        query_id: text.as_deref().map(query_hash),
        pg_query_id: optional(row, c.query_id)?,
        leader_pid: optional(row, c.leader_pid)?,
        blocking_pids: get::<Option<Vec<i32>>>(row, c.blocking_pids, "blocking_pids")?
            .unwrap_or_default(),
        insufficient_privilege: hidden,
    };
    Ok((session, text))
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
