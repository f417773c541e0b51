//! Samples as differences: consecutive samples of an instance mostly
//! repeat each other (an idle session's row and its process do not change
//! from one second to the next), so the store keeps a full sample (a
//! keyframe) at the start of each minute and, after it, only what changed:
//! rows that are new or differ, and the pids that are gone.
//!
//! A delta names the sample it was taken against (`base_us`), so a sample
//! is rebuilt by following those links back to a keyframe (at most a
//! minute of samples) and applying the changes forward; a sample that
//! arrives out of order is stored as a keyframe and never breaks a chain.

use std::collections::BTreeMap;

use pgtrail_proto::pb;
use pgtrail_proto::time::Micros;

use super::records::StoredSample;

/// A sample's rows by pid.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Rows {
    /// Sessions by pid.
    pub sessions: BTreeMap<i32, pb::Session>,
    /// Processes by pid.
    pub processes: BTreeMap<i32, pb::Process>,
}

impl Rows {
    /// The rows of a full sample.
    pub fn of(sample: &StoredSample) -> Self {
        Self {
            sessions: sample.sessions.iter().map(|s| (s.pid, s.clone())).collect(),
            processes: sample
                .processes
                .iter()
                .map(|p| (p.pid, p.clone()))
                .collect(),
        }
    }

    /// Applies a delta's changes.
    pub fn apply(&mut self, delta: &StoredSample) {
        for pid in &delta.gone_sessions {
            self.sessions.remove(pid);
        }
        for pid in &delta.gone_processes {
            self.processes.remove(pid);
        }
        for s in &delta.sessions {
            self.sessions.insert(s.pid, s.clone());
        }
        for p in &delta.processes {
            self.processes.insert(p.pid, p.clone());
        }
    }

    /// Moves the rows into `sample` (sorted by pid), making it full.
    pub fn fill(self, sample: &mut StoredSample) {
        sample.sessions = self.sessions.into_values().collect();
        sample.processes = self.processes.into_values().collect();
        sample.keyframe = true;
        sample.base_us = None;
        sample.gone_sessions.clear();
        sample.gone_processes.clear();
    }
}

/// `full` as a delta against `base` (the rows of the sample at `base_at`).
pub fn encode(base: &Rows, base_at: Micros, full: &StoredSample) -> StoredSample {
    let mut delta = StoredSample {
        keyframe: false,
        base_us: Some(base_at),
        blind_spots: full.blind_spots.clone(),
        seq: full.seq,
        memory: full.memory,
        sessions_total: full.sessions_total,
        ..Default::default()
    };
    delta.sessions = full
        .sessions
        .iter()
        .filter(|s| base.sessions.get(&s.pid) != Some(*s))
        .cloned()
        .collect();
    delta.processes = full
        .processes
        .iter()
        .filter(|p| base.processes.get(&p.pid) != Some(*p))
        .cloned()
        .collect();
    let has_session = |pid: &i32| full.sessions.iter().any(|s| s.pid == *pid);
    let has_process = |pid: &i32| full.processes.iter().any(|p| p.pid == *pid);
    delta.gone_sessions = base
        .sessions
        .keys()
        .filter(|p| !has_session(p))
        .copied()
        .collect();
    delta.gone_processes = base
        .processes
        .keys()
        .filter(|p| !has_process(p))
        .copied()
        .collect();
    delta
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(pid: i32, state: &str) -> pb::Session {
        pb::Session {
            pid,
            backend_type: "client backend".into(),
            state: Some(state.into()),
            ..Default::default()
        }
    }

    fn process(pid: i32, rss: u64) -> pb::Process {
        pb::Process {
            pid,
            rss_bytes: Some(rss),
            ..Default::default()
        }
    }

    fn full(sessions: Vec<pb::Session>, processes: Vec<pb::Process>) -> StoredSample {
        StoredSample {
            sessions,
            processes,
            keyframe: true,
            ..Default::default()
        }
    }

    #[test]
    fn a_delta_holds_only_what_changed_and_rebuilds_the_sample() {
        let a = full(
            vec![session(1, "idle"), session(2, "idle"), session(3, "active")],
            vec![process(1, 10), process(2, 20), process(3, 30)],
        );
        let b = full(
            vec![session(1, "idle"), session(3, "idle"), session(4, "active")],
            vec![process(1, 10), process(3, 31), process(4, 40)],
        );
        let delta = encode(&Rows::of(&a), 100, &b);
        assert!(!delta.keyframe);
        assert_eq!(delta.base_us, Some(100));
        let pids: Vec<i32> = delta.sessions.iter().map(|s| s.pid).collect();
        assert_eq!(pids, vec![3, 4], "session 1 did not change");
        assert_eq!(delta.gone_sessions, vec![2]);
        assert_eq!(delta.processes.len(), 2);
        assert_eq!(delta.gone_processes, vec![2]);

        let mut rows = Rows::of(&a);
        rows.apply(&delta);
        assert_eq!(rows, Rows::of(&b));
        let mut rebuilt = delta.clone();
        rows.fill(&mut rebuilt);
        assert_eq!(rebuilt.sessions, b.sessions);
        assert!(rebuilt.keyframe && rebuilt.base_us.is_none());
    }

    #[test]
    fn an_unchanged_sample_is_an_empty_delta() {
        let a = full(vec![session(1, "idle")], vec![process(1, 10)]);
        let delta = encode(&Rows::of(&a), 1, &a);
        assert!(delta.sessions.is_empty() && delta.processes.is_empty());
        assert!(delta.gone_sessions.is_empty() && delta.gone_processes.is_empty());
    }
}
