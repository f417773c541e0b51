//! Takes one snapshot of one instance: a `pg_stat_activity` query plus a
//! pass over the postmaster's process tree in `/proc`, joined by pid.
//!
//! A [`Sampler`] owns one connection to its server (one per instance, never
//! one per database) and reconnects on the next sample after a failure.

use std::time::SystemTime;

use pgtrail_proto::model::{QueryTexts, Snapshot};
use pgtrail_proto::pb;
use pgtrail_proto::time::{self, Micros, SECOND};
use tokio_postgres::{Client, NoTls, Statement};

use crate::config::InstanceConfig;
use crate::error::AgentError;
use crate::os::{read_process, Clock, ProcessTree};
use crate::pg::activity::{activity_sql, session_from_row};
use crate::pg::facts::{fingerprint_sql, read_facts};

/// The most a postmaster's start time read from /proc may differ from
/// `pg_postmaster_start_time()` for the two to be the same process (/proc
/// counts from a boot time with one-second resolution).
const START_TIME_SLACK: Micros = 3 * SECOND;

/// Samples one instance.
#[derive(Debug)]
pub struct Sampler {
    instance: InstanceConfig,
    query_max_len: usize,
    tree: ProcessTree,
    conn: Option<Connection>,
    seq: u64,
}

#[derive(Debug)]
struct Connection {
    client: Client,
    activity: Statement,
    fingerprint_stmt: Statement,
    fingerprint: (SystemTime, SystemTime),
    facts: pb::InstanceFacts,
    postmaster: Option<i32>,
    blind_spots: Vec<String>,
}

impl Sampler {
    /// A sampler for `instance`; it connects on the first sample.
    pub fn new(instance: InstanceConfig, query_max_len: usize) -> Result<Self, AgentError> {
        Ok(Self {
            instance,
            query_max_len,
            tree: ProcessTree::new(Clock::read().map_err(AgentError::Proc)?),
            conn: None,
            seq: 0,
        })
    }

    /// The instance's name.
    pub fn name(&self) -> &str {
        &self.instance.name
    }

    /// Drops the connection; the next sample reconnects. For a sample
    /// abandoned half-way, whose connection may still be busy.
    pub fn reset(&mut self) {
        self.conn = None;
    }

    /// Takes one snapshot, connecting first if needed. On error the
    /// connection is dropped and the next call reconnects.
    pub async fn sample(&mut self) -> Result<Snapshot, AgentError> {
        let result = self.try_sample().await;
        if result.is_err() {
            self.conn = None;
        }
        result
    }

    async fn try_sample(&mut self) -> Result<Snapshot, AgentError> {
        if self.conn.as_ref().is_none_or(|c| c.client.is_closed()) {
            self.conn = Some(self.connect().await?);
        }
        let conn = self.conn.as_mut().expect("connected above");
        let sampled_at = time::now();
        let query_err = |source| AgentError::Query {
            instance: self.instance.name.clone(),
            source,
        };
        let (rows, fingerprint) = tokio::try_join!(
            conn.client.query(&conn.activity, &[]),
            conn.client.query_one(&conn.fingerprint_stmt, &[]),
        )
        .map_err(query_err)?;
        let sessions_total = fingerprint
            .get::<_, Option<i64>>(2)
            .and_then(|n| u64::try_from(n).ok());
        let fingerprint = (fingerprint.get(0), fingerprint.get(1));
        if fingerprint != conn.fingerprint {
            // A reload (a restart ends the connection, so it never shows
            // here: the next connection reads fresh facts).
            conn.facts = read_facts(&conn.client, conn.postmaster)
                .await
                .map_err(query_err)?;
            conn.fingerprint = fingerprint;
        }

        let mut sessions = Vec::with_capacity(rows.len());
        let mut queries = QueryTexts::new();
        for row in &rows {
            let (session, text) = session_from_row(row).map_err(query_err)?;
            if let (Some(id), Some(text)) = (session.query_id, text) {
                queries.entry(id).or_insert_with(|| text.into());
            }
            sessions.push(session);
        }

        let mut blind_spots = conn.blind_spots.clone();
        let processes = match conn.postmaster {
            Some(pm) => match self.tree.sample(pm, sampled_at) {
                Some(mut processes) => {
                    join_kinds(&mut processes, &sessions);
                    processes
                }
                None => {
                    blind_spots.push(format!("postmaster pid {pm} is gone from /proc"));
                    Vec::new()
                }
            },
            None => Vec::new(),
        };

        self.seq += 1;
        Ok(Snapshot {
            instance: self.instance.name.clone(),
            seq: self.seq,
            sampled_at,
            facts: Some(conn.facts.clone()),
            sessions,
            processes,
            queries,
            dropped_before: 0,
            blind_spots,
            memory: None,
            sessions_total,
        })
    }

    async fn connect(&self) -> Result<Connection, AgentError> {
        let connect_err = |source| AgentError::Connect {
            instance: self.instance.name.clone(),
            source,
        };
        let (client, connection) = self.instance.pg.connect(NoTls).await.map_err(connect_err)?;
        tokio::spawn(async move {
            // Ends when the client is dropped or the server goes away; the
            // next query reports why.
            let _ = connection.await;
        });
        let query_err = |source| AgentError::Query {
            instance: self.instance.name.clone(),
            source,
        };
        let row = client
            .query_one(
                "SELECT current_setting('server_version_num')::int4, pg_backend_pid(), pg_postmaster_start_time()",
                &[],
            )
            .await
            .map_err(query_err)?;
        let version_num = row.get::<_, i32>(0).max(0) as u32;
        let backend_pid: i32 = row.get(1);
        let started: SystemTime = row.get(2);

        let mut blind_spots = Vec::new();
        let postmaster = self.find_postmaster(backend_pid, time::from_system_time(started));
        if postmaster.is_none() {
            blind_spots.push(
                "the server's processes are not visible in this host's /proc (remote server or another pid namespace): no OS data".to_string(),
            );
        }
        let activity = client
            .prepare(&activity_sql(version_num, self.query_max_len))
            .await
            .map_err(query_err)?;
        let fingerprint_stmt = client
            .prepare(fingerprint_sql(version_num))
            .await
            .map_err(query_err)?;
        let row = client
            .query_one(&fingerprint_stmt, &[])
            .await
            .map_err(query_err)?;
        let facts = read_facts(&client, postmaster).await.map_err(query_err)?;
        if facts.max_connections.is_none() {
            blind_spots.push("pg_settings hides max_connections from this role".to_string());
        }
        Ok(Connection {
            activity,
            fingerprint_stmt,
            fingerprint: (row.get(0), row.get(1)),
            facts,
            postmaster,
            blind_spots,
            client,
        })
    }

    /// The postmaster is our own backend's parent, if that process is on
    /// this host and started when the server says it did.
    fn find_postmaster(&self, backend_pid: i32, started: Micros) -> Option<i32> {
        let clock = self.tree.clock();
        let backend = read_process(backend_pid, clock)?;
        let postmaster = read_process(backend.ppid, clock)?;
        ((postmaster.start_time_us - started).abs() <= START_TIME_SLACK).then_some(postmaster.pid)
    }
}

/// Sets each process's kind from its pg_stat_activity row where it has one:
/// `backend_type` is authoritative, the title only a fallback.
fn join_kinds(processes: &mut [pb::Process], sessions: &[pb::Session]) {
    let by_pid: std::collections::HashMap<i32, &str> = sessions
        .iter()
        .map(|s| (s.pid, s.backend_type.as_str()))
        .collect();
    for p in processes.iter_mut() {
        if p.kind == pb::ProcessKind::Postmaster as i32 {
            continue;
        }
        if let Some(bt) = by_pid.get(&p.pid) {
            p.kind = pb::ProcessKind::from_backend_type(bt) as i32;
        }
    }
}
