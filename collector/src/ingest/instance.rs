//! Instance-level episodes: expected auxiliary processes missing,
//! autovacuum at its worker limit, and restarts.
//!
//! - An auxiliary process is expected by what the instance is: a primary
//!   runs a checkpointer, background writer, walwriter, autovacuum launcher
//!   (when autovacuum is on), archiver (when archive_mode is on) and, before
//!   PostgreSQL 15, a stats collector; a server in recovery (it has a
//!   startup process) runs a checkpointer, background writer and startup.
//!   Checked only when the agent sees the server's processes. Such an
//!   episode's `pid` holds the missing [`pb::ProcessKind`].
//! - A restart is a moment: a new postmaster ("postmaster restart"), or
//!   every child replaced under the same postmaster, seen as a new
//!   checkpointer ("crash restart": what a backend killed by SIGKILL or the
//!   OOM killer causes).

use pgtrail_proto::model::Snapshot;
use pgtrail_proto::pb::{self, ProcessKind};
use pgtrail_proto::time::Micros;

use super::open_set::{Changes, OpenSet};
use crate::store::{EpisodeKind, EpisodeRecord};

/// A process's identity across samples: pid and start time.
type Identity = (i32, Micros);

/// The instance-level trackers of one instance.
#[derive(Debug, Default)]
pub struct InstanceEpisodes {
    open: OpenSet,
    postmaster: Option<Identity>,
    checkpointer: Option<Identity>,
}

impl InstanceEpisodes {
    /// Resumes the episodes the store has open.
    pub fn resume(open: Vec<(EpisodeKind, EpisodeRecord)>) -> Self {
        Self {
            open: OpenSet::resume(open, |_, _| 0),
            ..Default::default()
        }
    }

    /// Folds in the next sample; `facts` are those in force.
    pub fn observe(&mut self, snapshot: &Snapshot, facts: Option<&pb::InstanceFacts>) -> Changes {
        let now = snapshot.sampled_at;
        let mut restarts = Vec::new();
        let find = |kind: ProcessKind| {
            snapshot
                .processes
                .iter()
                .find(|p| p.kind == kind as i32)
                .map(|p| (p.pid, p.start_time_us))
        };
        if !snapshot.processes.is_empty() {
            let postmaster = find(ProcessKind::Postmaster);
            let checkpointer = find(ProcessKind::Checkpointer);
            if let (Some(before), Some(now_pm)) = (self.postmaster, postmaster) {
                if before != now_pm {
                    restarts.push(restart(now, now_pm.0, "postmaster restart"));
                } else if let (Some(a), Some(b)) = (self.checkpointer, checkpointer) {
                    if a != b {
                        restarts.push(restart(now, now_pm.0, "crash restart"));
                    }
                }
            }
            self.postmaster = postmaster.or(self.postmaster);
            self.checkpointer = checkpointer.or(self.checkpointer);

            for kind in expected(snapshot, facts) {
                if find(kind).is_none() {
                    let key = (EpisodeKind::AuxMissing, kind as i32, None, 0);
                    self.open.see(key, now, || EpisodeRecord {
                        pid: kind as i32,
                        started_us: now,
                        last_seen_us: now,
                        detail: Some(kind.label().to_string()),
                        ..Default::default()
                    });
                }
            }
            let workers = snapshot
                .processes
                .iter()
                .filter(|p| p.kind == ProcessKind::AutovacuumWorker as i32)
                .count() as u32;
            let limit = facts.and_then(|f| f.autovacuum_max_workers).unwrap_or(0);
            if limit > 0 && workers >= limit {
                let key = (EpisodeKind::AutovacuumSaturated, 0, None, 0);
                self.open.see(key, now, || EpisodeRecord {
                    started_us: now,
                    last_seen_us: now,
                    detail: Some(format!("{workers} of {limit} autovacuum workers busy")),
                    ..Default::default()
                });
            }
        }
        let mut changes = self.open.close_unseen(now, |_| 0, |_, _, now| now);
        changes
            .closed
            .extend(restarts.into_iter().map(|e| (EpisodeKind::Restart, e)));
        changes
    }
}

fn restart(now: Micros, postmaster: i32, what: &str) -> EpisodeRecord {
    EpisodeRecord {
        pid: postmaster,
        started_us: now,
        ended_us: Some(now),
        last_seen_us: now,
        detail: Some(what.to_string()),
        samples: 1,
        ..Default::default()
    }
}

/// The auxiliary processes this instance should have now.
fn expected(snapshot: &Snapshot, facts: Option<&pb::InstanceFacts>) -> Vec<ProcessKind> {
    let in_recovery = snapshot
        .processes
        .iter()
        .any(|p| p.kind == ProcessKind::Startup as i32);
    if in_recovery {
        return vec![
            ProcessKind::Checkpointer,
            ProcessKind::BackgroundWriter,
            ProcessKind::Startup,
        ];
    }
    let mut kinds = vec![
        ProcessKind::Checkpointer,
        ProcessKind::BackgroundWriter,
        ProcessKind::Walwriter,
    ];
    if let Some(f) = facts {
        if f.autovacuum == Some(true) {
            kinds.push(ProcessKind::AutovacuumLauncher);
        }
        if matches!(f.archive_mode.as_deref(), Some("on" | "always")) {
            kinds.push(ProcessKind::Archiver);
        }
        if f.version_num != 0 && f.version_num < 150000 {
            kinds.push(ProcessKind::StatsCollector);
        }
    }
    kinds
}

#[cfg(test)]
mod tests {
    use super::*;

    fn process(pid: i32, kind: ProcessKind, start: Micros) -> pb::Process {
        pb::Process {
            pid,
            kind: kind as i32,
            start_time_us: start,
            ..Default::default()
        }
    }

    fn snapshot(t: Micros, processes: Vec<pb::Process>) -> Snapshot {
        Snapshot {
            instance: "i".into(),
            sampled_at: t,
            processes,
            ..Default::default()
        }
    }

    fn healthy(checkpointer_pid: i32) -> Vec<pb::Process> {
        vec![
            process(1, ProcessKind::Postmaster, 0),
            process(
                checkpointer_pid,
                ProcessKind::Checkpointer,
                checkpointer_pid as i64,
            ),
            process(3, ProcessKind::BackgroundWriter, 0),
            process(4, ProcessKind::Walwriter, 0),
        ]
    }

    #[test]
    fn a_missing_walwriter_is_an_episode() {
        let mut t = InstanceEpisodes::default();
        assert_eq!(
            t.observe(&snapshot(10, healthy(2)), None),
            Changes::default()
        );
        let mut without = healthy(2);
        without.retain(|p| p.kind != ProcessKind::Walwriter as i32);
        let c = t.observe(&snapshot(20, without), None);
        assert_eq!(c.opened.len(), 1);
        assert_eq!(c.opened[0].1.detail.as_deref(), Some("walwriter"));
        let c = t.observe(&snapshot(30, healthy(2)), None);
        assert_eq!(c.closed[0].1.started_us, 20);
        assert_eq!(c.closed[0].1.ended_us, Some(30));
    }

    #[test]
    fn a_new_checkpointer_under_the_same_postmaster_is_a_crash_restart() {
        let mut t = InstanceEpisodes::default();
        t.observe(&snapshot(10, healthy(2)), None);
        let c = t.observe(&snapshot(20, healthy(9)), None);
        assert_eq!(c.closed.len(), 1);
        assert_eq!(c.closed[0].0, EpisodeKind::Restart);
        assert_eq!(c.closed[0].1.detail.as_deref(), Some("crash restart"));
        let mut new_pm = healthy(9);
        new_pm[0].start_time_us = 15;
        let c = t.observe(&snapshot(30, new_pm), None);
        assert_eq!(c.closed[0].1.detail.as_deref(), Some("postmaster restart"));
    }

    #[test]
    fn autovacuum_at_its_limit_is_an_episode() {
        let facts = pb::InstanceFacts {
            autovacuum_max_workers: Some(1),
            ..Default::default()
        };
        let mut t = InstanceEpisodes::default();
        let mut busy = healthy(2);
        busy.push(process(8, ProcessKind::AutovacuumWorker, 0));
        let c = t.observe(&snapshot(10, busy), Some(&facts));
        assert_eq!(c.opened[0].0, EpisodeKind::AutovacuumSaturated);
        let c = t.observe(&snapshot(20, healthy(2)), Some(&facts));
        assert_eq!(c.closed[0].1.ended_us, Some(20));
    }
}
