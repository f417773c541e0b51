//! What kind of PostgreSQL process a process title names.
//!
//! PostgreSQL rewrites its argv: children read `postgres: checkpointer`,
//! `postgres: app_user mydb 10.0.1.42(54321) idle`, or, with
//! `cluster_name = 'main'`, `postgres: main: checkpointer`. The agent prefers
//! `pg_stat_activity.backend_type` when the pid has a row there; titles cover
//! the processes pg_stat_activity does not list (logger, stats collector,
//! archiver before 14) and the moments between a fork and its first report.

use pgtrail_proto::pb::ProcessKind;

/// Titles of auxiliary processes, longest first where one is a prefix of
/// another, mapped to their kind.
const AUXILIARY: &[(&str, ProcessKind)] = &[
    ("checkpointer", ProcessKind::Checkpointer),
    ("background writer", ProcessKind::BackgroundWriter),
    ("walwriter", ProcessKind::Walwriter),
    ("autovacuum launcher", ProcessKind::AutovacuumLauncher),
    ("autovacuum worker", ProcessKind::AutovacuumWorker),
    ("archiver", ProcessKind::Archiver),
    ("logger", ProcessKind::Logger),
    ("stats collector", ProcessKind::StatsCollector),
    (
        "logical replication launcher",
        ProcessKind::LogicalReplicationLauncher,
    ),
    ("logical replication", ProcessKind::LogicalReplicationWorker),
    ("walsender", ProcessKind::Walsender),
    ("walreceiver", ProcessKind::Walreceiver),
    ("startup", ProcessKind::Startup),
    ("parallel worker", ProcessKind::ParallelWorker),
    ("walsummarizer", ProcessKind::Walsummarizer),
    ("slotsync worker", ProcessKind::SlotsyncWorker),
    ("io worker", ProcessKind::IoWorker),
    ("bgworker:", ProcessKind::BackgroundWorker),
];

/// The kind a child's title names. A title of the form `postgres: ...` that
/// names no auxiliary process is a client backend (or a walsender, which
/// PostgreSQL titles like one and pg_stat_activity corrects).
pub fn kind_from_title(title: &str) -> ProcessKind {
    let Some(rest) = title.strip_prefix("postgres: ") else {
        return ProcessKind::Other;
    };
    if let Some(kind) = auxiliary(rest) {
        return kind;
    }
    // `cluster_name` puts "NAME: " before the process name.
    if let Some((_, after)) = rest.split_once(": ") {
        if let Some(kind) = auxiliary(after) {
            return kind;
        }
    }
    ProcessKind::ClientBackend
}

fn auxiliary(rest: &str) -> Option<ProcessKind> {
    AUXILIARY
        .iter()
        .find(|(name, _)| rest.starts_with(name))
        .map(|(_, kind)| *kind)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_auxiliary_processes() {
        assert_eq!(
            kind_from_title("postgres: checkpointer"),
            ProcessKind::Checkpointer
        );
        assert_eq!(
            kind_from_title("postgres: autovacuum worker process   shop"),
            ProcessKind::AutovacuumWorker
        );
        assert_eq!(
            kind_from_title("postgres: logical replication launcher"),
            ProcessKind::LogicalReplicationLauncher
        );
        assert_eq!(
            kind_from_title("postgres: main: walwriter"),
            ProcessKind::Walwriter
        );
    }

    #[test]
    fn anything_else_under_postgres_is_a_backend() {
        assert_eq!(
            kind_from_title("postgres: app shop 10.0.1.42(54321) idle"),
            ProcessKind::ClientBackend
        );
        assert_eq!(kind_from_title("/usr/bin/bash"), ProcessKind::Other);
    }
}
