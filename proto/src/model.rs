//! Domain types: what the agent produces and the collector stores, validated.
//!
//! A [`Snapshot`] is self-contained: every query text its sessions refer to
//! is in [`Snapshot::queries`]. On the wire the texts travel once per stream
//! (see [`crate::intern`]); the conversions there turn one into the other.
//! Rows reuse the generated [`pb::Session`] and [`pb::Process`]: they are
//! plain data, and [`Snapshot::validate`] checks what a peer could get wrong.

use std::sync::Arc;

use crate::pb;
use crate::time::Micros;
use crate::ProtocolError;

/// The `backend_type` of sessions that serve client connections.
pub const CLIENT_BACKEND: &str = "client backend";

/// The `state` of a session idle inside a transaction.
pub const IDLE_IN_TRANSACTION: &str = "idle in transaction";

/// The most sessions or processes one snapshot may hold.
pub const MAX_ROWS: usize = 100_000;

/// The longest instance name accepted.
pub const MAX_NAME_LEN: usize = 255;

/// Query texts by their content hash (hashed again with `foldhash`: the
/// collector builds this map for every snapshot it receives).
pub type QueryTexts = foldhash::HashMap<u64, Arc<str>>;

/// One sample of one instance, with every query text it refers to.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    /// The instance's name on its host.
    pub instance: String,
    /// Per-instance sequence number.
    pub seq: u64,
    /// When the sample was taken.
    pub sampled_at: Micros,
    /// Instance facts, when they changed or the stream is new.
    pub facts: Option<pb::InstanceFacts>,
    /// Rows of pg_stat_activity; `query_id` refers into `queries`.
    pub sessions: Vec<pb::Session>,
    /// The postmaster and its children.
    pub processes: Vec<pb::Process>,
    /// Every query text a session refers to, by id.
    pub queries: QueryTexts,
    /// Snapshots dropped for this instance just before this one.
    pub dropped_before: u64,
    /// What the agent could not see.
    pub blind_spots: Vec<String>,
    /// Host and cgroup memory at sampling time.
    pub memory: Option<pb::MemoryUsage>,
    /// sum(pg_stat_database.sessions) (PG 14+).
    pub sessions_total: Option<u64>,
}

impl Snapshot {
    /// Checks what a peer could get wrong: names, times, pids, sizes, and
    /// that every referenced query text is present.
    pub fn validate(&self) -> Result<(), ProtocolError> {
        validate_instance_name(&self.instance)?;
        if self.sampled_at <= 0 {
            return Err(invalid("sampled_at_us", "must be after 1970"));
        }
        if self.sessions.len() > MAX_ROWS || self.processes.len() > MAX_ROWS {
            return Err(invalid("sessions", format!("more than {MAX_ROWS} rows")));
        }
        for s in &self.sessions {
            if s.pid <= 0 {
                return Err(invalid("session.pid", format!("{} is not a pid", s.pid)));
            }
            if let Some(id) = s.query_id {
                if !self.queries.contains_key(&id) {
                    return Err(ProtocolError::UnknownQuery { pid: s.pid, id });
                }
            }
        }
        for p in &self.processes {
            if p.pid <= 0 {
                return Err(invalid("process.pid", format!("{} is not a pid", p.pid)));
            }
            if pb::ProcessKind::try_from(p.kind).is_err() {
                return Err(invalid("process.kind", format!("unknown kind {}", p.kind)));
            }
        }
        Ok(())
    }

    /// The text of a session's query, when it has one.
    pub fn query_of(&self, session: &pb::Session) -> Option<&Arc<str>> {
        session.query_id.and_then(|id| self.queries.get(&id))
    }

    /// The client backends: the sessions `pg_stat_activity` shows with
    /// `backend_type = 'client backend'`.
    pub fn client_backends(&self) -> impl Iterator<Item = &pb::Session> {
        self.sessions
            .iter()
            .filter(|s| s.backend_type == CLIENT_BACKEND)
    }
}

/// Checks an instance name: non-empty, bounded, printable.
pub fn validate_instance_name(name: &str) -> Result<(), ProtocolError> {
    if name.is_empty() {
        return Err(ProtocolError::Missing("instance"));
    }
    if name.len() > MAX_NAME_LEN || name.chars().any(char::is_control) {
        return Err(invalid(
            "instance",
            format!("must be 1-{MAX_NAME_LEN} printable characters"),
        ));
    }
    Ok(())
}

/// The content hash pgtrail uses for query texts.
pub fn query_hash(text: &str) -> u64 {
    xxhash_rust::xxh3::xxh3_64(text.as_bytes())
}

fn invalid(field: &'static str, reason: impl Into<String>) -> ProtocolError {
    ProtocolError::Invalid {
        field,
        reason: reason.into(),
    }
}

impl pb::ProcessKind {
    /// A short human name: "checkpointer", "client backend", ...
    pub fn label(self) -> &'static str {
        use pb::ProcessKind as K;
        match self {
            K::Unspecified => "unknown",
            K::Postmaster => "postmaster",
            K::ClientBackend => "client backend",
            K::Checkpointer => "checkpointer",
            K::BackgroundWriter => "background writer",
            K::Walwriter => "walwriter",
            K::AutovacuumLauncher => "autovacuum launcher",
            K::AutovacuumWorker => "autovacuum worker",
            K::Archiver => "archiver",
            K::Logger => "logger",
            K::StatsCollector => "stats collector",
            K::LogicalReplicationLauncher => "logical replication launcher",
            K::LogicalReplicationWorker => "logical replication worker",
            K::Walsender => "walsender",
            K::Walreceiver => "walreceiver",
            K::Startup => "startup",
            K::ParallelWorker => "parallel worker",
            K::BackgroundWorker => "background worker",
            K::Walsummarizer => "walsummarizer",
            K::SlotsyncWorker => "slotsync worker",
            K::IoWorker => "io worker",
            K::Other => "other",
        }
    }

    /// The kind of a `pg_stat_activity.backend_type`, or of the name a
    /// process title carries after "postgres: ".
    pub fn from_backend_type(backend_type: &str) -> Self {
        use pb::ProcessKind as K;
        match backend_type {
            "client backend" => K::ClientBackend,
            "checkpointer" => K::Checkpointer,
            "background writer" => K::BackgroundWriter,
            "walwriter" => K::Walwriter,
            "autovacuum launcher" => K::AutovacuumLauncher,
            "autovacuum worker" => K::AutovacuumWorker,
            "archiver" => K::Archiver,
            "logger" => K::Logger,
            "stats collector" => K::StatsCollector,
            "logical replication launcher" => K::LogicalReplicationLauncher,
            "logical replication worker"
            | "logical replication apply worker"
            | "logical replication tablesync worker"
            | "logical replication parallel worker" => K::LogicalReplicationWorker,
            "walsender" => K::Walsender,
            "walreceiver" => K::Walreceiver,
            "startup" => K::Startup,
            "parallel worker" => K::ParallelWorker,
            "background worker" => K::BackgroundWorker,
            "walsummarizer" => K::Walsummarizer,
            "slotsync worker" => K::SlotsyncWorker,
            "io worker" => K::IoWorker,
            _ => K::Other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot() -> Snapshot {
        Snapshot {
            instance: "5432".into(),
            seq: 1,
            sampled_at: 1_700_000_000_000_000,
            ..Default::default()
        }
    }

    #[test]
    fn accepts_a_plain_snapshot() {
        snapshot().validate().unwrap();
    }

    #[test]
    fn rejects_a_dangling_query_reference() {
        let mut s = snapshot();
        s.sessions.push(pb::Session {
            pid: 42,
            query_id: Some(7),
            ..Default::default()
        });
        let err = s.validate().unwrap_err();
        assert!(matches!(
            err,
            ProtocolError::UnknownQuery { pid: 42, id: 7 }
        ));
        s.queries.insert(7, "select 1".into());
        s.validate().unwrap();
    }

    #[test]
    fn rejects_bad_names_times_and_pids() {
        let mut s = snapshot();
        s.instance.clear();
        assert!(s.validate().is_err());
        let mut s = snapshot();
        s.sampled_at = 0;
        assert!(s.validate().is_err());
        let mut s = snapshot();
        s.processes.push(pb::Process {
            pid: -1,
            ..Default::default()
        });
        assert!(s.validate().is_err());
    }

    #[test]
    fn maps_backend_types_to_kinds() {
        use pb::ProcessKind as K;
        assert_eq!(K::from_backend_type("checkpointer"), K::Checkpointer);
        assert_eq!(
            K::from_backend_type("logical replication apply worker"),
            K::LogicalReplicationWorker
        );
        assert_eq!(K::from_backend_type("pg_cron scheduler"), K::Other);
        assert_eq!(K::Walwriter.label(), "walwriter");
    }
}
