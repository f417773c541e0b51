//! Idle-in-transaction episodes, tracked as samples arrive.
//!
//! An episode is identified by (pid, backend_start, when it began), so a
//! reused pid or a second idle spell of the same session is a new episode.
//! It began at the session's `state_change` (exact, not rounded to the
//! sample). It ends:
//! - when the session runs its next statement: at that statement's
//!   `query_start` (exact);
//! - when the session is gone: at the first sample that no longer sees it
//!   (so within one interval of the truth).

use std::collections::HashMap;

use pgtrail_proto::model::{Snapshot, IDLE_IN_TRANSACTION};
use pgtrail_proto::pb;
use pgtrail_proto::time::Micros;

use crate::store::EpisodeRecord;

type Key = (i32, Option<Micros>, Micros);

/// What one sample changed.
#[derive(Debug, Default, PartialEq)]
pub struct Changes {
    /// Episodes that began.
    pub opened: Vec<EpisodeRecord>,
    /// Episodes that ended, with `ended_us` set.
    pub closed: Vec<EpisodeRecord>,
}

/// The open episodes of one instance.
#[derive(Debug, Default)]
pub struct EpisodeTracker {
    open: HashMap<Key, EpisodeRecord>,
}

impl EpisodeTracker {
    /// A tracker that resumes the episodes the store has open.
    pub fn resume(open: Vec<EpisodeRecord>) -> Self {
        Self {
            open: open.into_iter().map(|e| (key_of(&e), e)).collect(),
        }
    }

    /// Episodes open now.
    pub fn open(&self) -> impl Iterator<Item = &EpisodeRecord> {
        self.open.values()
    }

    /// Folds in the next sample (samples must come in time order).
    pub fn observe(&mut self, snapshot: &Snapshot) -> Changes {
        let now = snapshot.sampled_at;
        let mut changes = Changes::default();
        let mut seen = HashMap::with_capacity(self.open.len());
        for s in &snapshot.sessions {
            if s.state.as_deref() != Some(IDLE_IN_TRANSACTION) {
                continue;
            }
            let started = s.state_change_us.unwrap_or(now);
            let key = (s.pid, s.backend_start_us, started);
            match self.open.get_mut(&key) {
                Some(e) => e.last_seen_us = now,
                None => {
                    let e = EpisodeRecord {
                        pid: s.pid,
                        backend_start_us: s.backend_start_us,
                        user: s.user.clone(),
                        database: s.database.clone(),
                        application_name: s.application_name.clone(),
                        client_addr: s.client_addr.clone(),
                        xact_start_us: s.xact_start_us,
                        started_us: started,
                        ended_us: None,
                        last_seen_us: now,
                        query_id: s.query_id,
                    };
                    changes.opened.push(e.clone());
                    self.open.insert(key, e);
                }
            }
            seen.insert(key, ());
        }
        let sessions: HashMap<(i32, Option<Micros>), &pb::Session> = snapshot
            .sessions
            .iter()
            .map(|s| ((s.pid, s.backend_start_us), s))
            .collect();
        let ended: Vec<Key> = self
            .open
            .keys()
            .filter(|k| !seen.contains_key(*k))
            .copied()
            .collect();
        for key in ended {
            let mut e = self.open.remove(&key).expect("listed above");
            let next_statement = sessions
                .get(&(key.0, key.1))
                .and_then(|s| s.query_start_us)
                .filter(|&q| q > e.started_us && q <= now);
            e.ended_us = Some(next_statement.unwrap_or(now));
            changes.closed.push(e);
        }
        changes.closed.sort_by_key(|e| (e.started_us, e.pid));
        changes
    }
}

fn key_of(e: &EpisodeRecord) -> Key {
    (e.pid, e.backend_start_us, e.started_us)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(pid: i32, state: &str, state_change: Micros, query_start: Micros) -> pb::Session {
        pb::Session {
            pid,
            backend_type: "client backend".into(),
            backend_start_us: Some(1),
            state: Some(state.into()),
            state_change_us: Some(state_change),
            query_start_us: Some(query_start),
            application_name: Some("app".into()),
            ..Default::default()
        }
    }

    fn at(t: Micros, sessions: Vec<pb::Session>) -> Snapshot {
        Snapshot {
            instance: "i".into(),
            sampled_at: t,
            sessions,
            ..Default::default()
        }
    }

    #[test]
    fn opens_once_and_closes_at_the_next_statement() {
        let mut t = EpisodeTracker::default();
        let c = t.observe(&at(100, vec![session(7, IDLE_IN_TRANSACTION, 90, 80)]));
        assert_eq!(c.opened.len(), 1);
        assert_eq!(c.opened[0].started_us, 90);
        let c = t.observe(&at(200, vec![session(7, IDLE_IN_TRANSACTION, 90, 80)]));
        assert_eq!(c, Changes::default(), "an ongoing episode changes nothing");
        assert_eq!(t.open().next().unwrap().last_seen_us, 200);
        // COMMIT ran at 250; the session is idle at 300.
        let c = t.observe(&at(300, vec![session(7, "idle", 251, 250)]));
        assert_eq!(c.closed.len(), 1);
        assert_eq!(c.closed[0].ended_us, Some(250));
        assert_eq!(c.closed[0].last_seen_us, 200);
        assert_eq!(t.open().count(), 0);
    }

    #[test]
    fn a_vanished_session_ends_at_the_sample_that_missed_it() {
        let mut t = EpisodeTracker::default();
        t.observe(&at(100, vec![session(7, IDLE_IN_TRANSACTION, 90, 80)]));
        let c = t.observe(&at(200, vec![]));
        assert_eq!(c.closed[0].ended_us, Some(200));
    }

    #[test]
    fn a_second_idle_spell_is_a_second_episode() {
        let mut t = EpisodeTracker::default();
        t.observe(&at(100, vec![session(7, IDLE_IN_TRANSACTION, 90, 80)]));
        let c = t.observe(&at(200, vec![session(7, IDLE_IN_TRANSACTION, 160, 150)]));
        assert_eq!(c.closed.len(), 1);
        assert_eq!(c.closed[0].ended_us, Some(150));
        assert_eq!(c.opened.len(), 1);
        assert_eq!(c.opened[0].started_us, 160);
    }

    #[test]
    fn a_reused_pid_is_another_session() {
        let mut t = EpisodeTracker::default();
        t.observe(&at(100, vec![session(7, IDLE_IN_TRANSACTION, 90, 80)]));
        let mut other = session(7, IDLE_IN_TRANSACTION, 90, 80);
        other.backend_start_us = Some(95);
        let c = t.observe(&at(200, vec![other]));
        assert_eq!((c.opened.len(), c.closed.len()), (1, 1));
        assert_eq!(c.closed[0].ended_us, Some(200));
    }

    #[test]
    fn resumes_from_the_store() {
        let mut t = EpisodeTracker::default();
        let c = t.observe(&at(100, vec![session(7, IDLE_IN_TRANSACTION, 90, 80)]));
        let mut resumed = EpisodeTracker::resume(c.opened);
        let c = resumed.observe(&at(200, vec![session(7, IDLE_IN_TRANSACTION, 90, 80)]));
        assert_eq!(c, Changes::default());
    }
}
