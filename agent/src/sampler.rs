//! Takes one snapshot of one instance: a `pg_stat_activity` query plus a
//! pass over the postmaster's process tree in `/proc`, joined by pid.
//!
//! A [`Sampler`] owns one connection to its server (one per instance, never
//! one per database) and reconnects on the next sample after a failure.

use std::collections::HashSet;
use std::time::{Duration, SystemTime};

use pgtrail_proto::model::{QueryTexts, Snapshot};
use pgtrail_proto::pb;
use pgtrail_proto::time::{self, Micros, SECOND};
use tokio_postgres::{Client, NoTls, Statement};

use tracing::warn;

use crate::config::{
    InstanceConfig, DEFAULT_INTERVAL, DEFAULT_PSS_INTERVAL, DEFAULT_QUERY_MAX_LEN,
};
use crate::error::AgentError;
use crate::os::memory::{self, CgroupMemory};
use crate::os::{proc_access_advice, read_process, Clock, ProcessTree};
use crate::pg::activity::{activity_sql, session_from_row, ActivityColumns};
use crate::pg::facts::{fingerprint_sql, read_facts};
use crate::pg::privilege::{read_privileges, PRIVILEGE_ADVICE};

/// The most a postmaster's start time read from /proc may differ from
/// `pg_postmaster_start_time()` for the two to be the same process (/proc
/// counts from a boot time with one-second resolution).
const START_TIME_SLACK: Micros = 3 * SECOND;

/// How a [`Sampler`] samples; the defaults are the agent's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SampleOptions {
    /// Query texts are cut to this many characters on the server.
    pub query_max_len: usize,
    /// Replace literals in query texts with placeholders before they leave
    /// the host.
    pub normalize_queries: bool,
    /// How often each process's PSS/USS (`smaps_rollup`) is read.
    pub pss_interval: Duration,
    /// How often samples are taken (spreads the PSS/USS reads).
    pub interval: Duration,
}

impl Default for SampleOptions {
    fn default() -> Self {
        Self {
            query_max_len: DEFAULT_QUERY_MAX_LEN,
            normalize_queries: false,
            pss_interval: DEFAULT_PSS_INTERVAL,
            interval: DEFAULT_INTERVAL,
        }
    }
}

/// Samples one instance.
#[derive(Debug)]
pub struct Sampler {
    instance: InstanceConfig,
    options: SampleOptions,
    tree: ProcessTree,
    conn: Option<Connection>,
    seq: u64,
    /// Blind spots already logged (by their first words), so each is said
    /// once in the log and every time in the data.
    announced: HashSet<String>,
}

#[derive(Debug)]
struct Connection {
    client: Client,
    activity: Statement,
    columns: ActivityColumns,
    fingerprint_stmt: Statement,
    fingerprint: (SystemTime, SystemTime),
    facts: pb::InstanceFacts,
    postmaster: Option<i32>,
    cgroup: Option<CgroupMemory>,
    blind_spots: Vec<String>,
}

impl Sampler {
    /// A sampler for `instance` that cuts query texts at `query_max_len`
    /// characters, with the other [`SampleOptions`] at their defaults; it
    /// connects on the first sample.
    pub fn new(instance: InstanceConfig, query_max_len: usize) -> Result<Self, AgentError> {
        Self::with_options(
            instance,
            SampleOptions {
                query_max_len,
                ..SampleOptions::default()
            },
        )
    }

    /// A sampler for `instance` with `options`.
    pub fn with_options(
        instance: InstanceConfig,
        options: SampleOptions,
    ) -> Result<Self, AgentError> {
        let clock = Clock::read().map_err(AgentError::Proc)?;
        Ok(Self {
            instance,
            options,
            tree: ProcessTree::new(clock)
                .interval(options.interval)
                .memory_every(options.pss_interval),
            conn: None,
            seq: 0,
            announced: HashSet::new(),
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
        let mut queries = QueryTexts::default();
        for row in &rows {
            let (session, text) =
                session_from_row(row, &conn.columns, self.options.normalize_queries)
                    .map_err(query_err)?;
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
                    let seen = self.tree.visibility();
                    if seen.restricted > 0 {
                        blind_spots.push(proc_access_advice(seen.restricted, seen.processes));
                    }
                    processes
                }
                None => {
                    blind_spots.push(format!("postmaster pid {pm} is gone from /proc"));
                    Vec::new()
                }
            },
            None => Vec::new(),
        };

        let memory = memory::usage(conn.cgroup.as_ref());
        let facts = conn.facts.clone();
        self.announce(&blind_spots);
        self.seq += 1;
        Ok(Snapshot {
            instance: self.instance.name.clone(),
            seq: self.seq,
            sampled_at,
            facts: Some(facts),
            sessions,
            processes,
            queries,
            dropped_before: 0,
            blind_spots,
            memory: Some(memory),
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
            .prepare(&activity_sql(version_num, self.options.query_max_len))
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
        let privileges = read_privileges(&client).await.map_err(query_err)?;
        if !privileges.sees_all_sessions() {
            blind_spots.push(format!("role {} {PRIVILEGE_ADVICE}", privileges.role));
        }
        Ok(Connection {
            cgroup: postmaster.and_then(CgroupMemory::of),
            columns: ActivityColumns::of(activity.columns()),
            activity,
            fingerprint_stmt,
            fingerprint: (row.get(0), row.get(1)),
            facts,
            postmaster,
            blind_spots,
            client,
        })
    }

    /// Logs each kind of blind spot the first time it shows.
    fn announce(&mut self, blind_spots: &[String]) {
        for spot in blind_spots {
            let key: String = spot
                .split(':')
                .next()
                .unwrap_or(spot)
                .chars()
                .filter(|c| !c.is_ascii_digit())
                .collect();
            if self.announced.insert(key) {
                warn!(instance = %self.instance.name, "{spot}");
            }
        }
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
        .filter(|s| !s.backend_type.is_empty()) // hidden from this role
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
