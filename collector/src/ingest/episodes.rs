//! Session episodes, tracked as samples arrive: idle in transaction, long
//! queries, lock waits (with their blockers) and long idle connections.
//!
//! An episode is identified by its kind, the session (pid, backend_start)
//! and the moment that identifies the condition (`state_change` or
//! `query_start`), so a reused pid or a second spell of the same session
//! is a new episode. Where pg_stat_activity says when a condition began or
//! ended, that exact time is used; otherwise the sample that first saw it
//! (or first missed it), which is within one interval of the truth:
//!
//! | kind | begins | ends |
//! |---|---|---|
//! | idle in transaction | `state_change` | the next statement's `query_start` |
//! | slow query | `query_start` | `state_change` when the session went idle |
//! | lock wait | first sample waiting | first sample not waiting |
//! | idle | `state_change` | the next statement's `query_start` |
//!
//! Episodes shorter than their kind's [`floor`] are not stored: a busy
//! server runs thousands of sub-second statements a second.

use foldhash::HashMap;

use pgtrail_proto::model::{Snapshot, CLIENT_BACKEND, IDLE_IN_TRANSACTION};
use pgtrail_proto::pb;
use pgtrail_proto::time::{Micros, SECOND};

use super::open_set::{Changes, OpenSet};
use super::rollup::write_wait_key;
use crate::store::{BlockerRecord, EpisodeKind, EpisodeRecord};

/// The session kinds tracked here.
pub const SESSION_KINDS: [EpisodeKind; 4] = [
    EpisodeKind::IdleInTransaction,
    EpisodeKind::SlowQuery,
    EpisodeKind::LockWait,
    EpisodeKind::Idle,
];

/// The shortest episode of a kind worth storing.
pub fn floor(kind: EpisodeKind) -> Micros {
    match kind {
        EpisodeKind::IdleInTransaction | EpisodeKind::SlowQuery => SECOND,
        EpisodeKind::Idle => 5 * SECOND,
        _ => 0,
    }
}

/// The moment identifying `kind` in session `s`, when `s` is in it. Only
/// client backends have idle, idle-in-transaction and slow-query episodes
/// (a walsender is "active" for as long as it streams); any backend can
/// wait on a lock.
fn condition(kind: EpisodeKind, s: &pb::Session, now: Micros) -> Option<Micros> {
    let state = s.state.as_deref();
    if kind != EpisodeKind::LockWait && s.backend_type != CLIENT_BACKEND {
        return None;
    }
    match kind {
        EpisodeKind::IdleInTransaction => state
            .filter(|st| st.starts_with(IDLE_IN_TRANSACTION))
            .map(|_| s.state_change_us.unwrap_or(now)),
        EpisodeKind::SlowQuery => (state == Some("active")).then_some(s.query_start_us?),
        EpisodeKind::LockWait => {
            (s.wait_event_type.as_deref() == Some("Lock")).then(|| s.query_start_us.unwrap_or(now))
        }
        EpisodeKind::Idle => (state == Some("idle")).then(|| s.state_change_us.unwrap_or(now)),
        _ => None,
    }
}

/// The open session episodes of one instance.
#[derive(Debug, Default)]
pub struct SessionEpisodes {
    open: OpenSet,
}

impl SessionEpisodes {
    /// Resumes the episodes the store has open.
    pub fn resume(open: Vec<(EpisodeKind, EpisodeRecord)>) -> Self {
        Self {
            open: OpenSet::resume(open, ident_of),
        }
    }

    /// Episodes open now.
    pub fn open(&self) -> impl Iterator<Item = (EpisodeKind, &EpisodeRecord)> {
        self.open.records()
    }

    /// Folds in the next sample (samples must come in time order).
    pub fn observe(&mut self, snapshot: &Snapshot) -> Changes {
        let now = snapshot.sampled_at;
        // Needed for lock waits and ended episodes only: made then.
        let sessions = std::cell::OnceCell::new();
        let by_pid = || sessions.get_or_init(|| ByPid::new(&snapshot.sessions));
        let mut key_buf = String::new();
        for s in &snapshot.sessions {
            for kind in SESSION_KINDS {
                let Some(ident) = condition(kind, s, now) else {
                    continue;
                };
                let key = (kind, s.pid, s.backend_start_us, ident);
                let record = self.open.see(key, now, || new_record(kind, s, ident, now));
                record.query_id = s.query_id.or(record.query_id);
                let mut changed = false;
                if matches!(kind, EpisodeKind::SlowQuery | EpisodeKind::LockWait) {
                    key_buf.clear();
                    write_wait_key(&mut key_buf, s);
                    match record.wait_events.get_mut(key_buf.as_str()) {
                        Some(n) => *n += 1,
                        None => {
                            record.wait_events.insert(key_buf.clone(), 1);
                            changed = true;
                        }
                    }
                }
                if kind == EpisodeKind::LockWait {
                    changed |= note_blockers(record, s, by_pid(), now);
                }
                if changed {
                    self.open.mark_changed(&key);
                }
            }
        }
        self.open.close_unseen(now, floor, |kind, e, now| {
            let session = by_pid()
                .get(e.pid)
                .filter(|s| s.backend_start_us == e.backend_start_us);
            ended(kind, e, session, now)
        })
    }
}

fn ident_of(kind: EpisodeKind, e: &EpisodeRecord) -> Micros {
    match kind {
        EpisodeKind::LockWait => e.query_start_us.unwrap_or(e.started_us),
        _ => e.started_us,
    }
}

fn new_record(kind: EpisodeKind, s: &pb::Session, ident: Micros, now: Micros) -> EpisodeRecord {
    EpisodeRecord {
        pid: s.pid,
        backend_start_us: s.backend_start_us,
        user: s.user.clone(),
        database: s.database.clone(),
        application_name: s.application_name.clone(),
        client_addr: s.client_addr.clone(),
        xact_start_us: s.xact_start_us,
        started_us: if kind == EpisodeKind::LockWait {
            now
        } else {
            ident
        },
        ended_us: None,
        last_seen_us: now,
        query_id: s.query_id,
        backend_type: Some(s.backend_type.clone()),
        query_start_us: s.query_start_us,
        samples: 0,
        ..Default::default()
    }
}

/// When an unseen episode ended, given its session as sampled now (if it
/// is still there).
fn ended(
    kind: EpisodeKind,
    e: &EpisodeRecord,
    session: Option<&pb::Session>,
    now: Micros,
) -> Micros {
    let exact = match kind {
        EpisodeKind::IdleInTransaction | EpisodeKind::Idle => {
            session.and_then(|s| s.query_start_us)
        }
        EpisodeKind::SlowQuery => session
            .filter(|s| {
                s.state.as_deref() != Some("active") || s.query_start_us != e.query_start_us
            })
            .and_then(|s| {
                if s.query_start_us != e.query_start_us {
                    s.query_start_us
                } else {
                    s.state_change_us
                }
            }),
        _ => None,
    };
    exact
        .filter(|&t| t > e.started_us && t <= now)
        .unwrap_or(now)
}

/// A snapshot's sessions by pid (of two with one pid, the last): found by
/// binary search when they are sorted by pid, as a stream delivers them,
/// else through a map.
struct ByPid<'a> {
    sessions: &'a [pb::Session],
    map: Option<HashMap<i32, &'a pb::Session>>,
}

impl<'a> ByPid<'a> {
    fn new(sessions: &'a [pb::Session]) -> Self {
        let sorted = sessions.is_sorted_by_key(|s| s.pid);
        Self {
            sessions,
            map: (!sorted).then(|| sessions.iter().map(|s| (s.pid, s)).collect()),
        }
    }

    fn get(&self, pid: i32) -> Option<&'a pb::Session> {
        if let Some(map) = &self.map {
            return map.get(&pid).copied();
        }
        let after = self.sessions.partition_point(|s| s.pid <= pid);
        let last = self.sessions.get(after.checked_sub(1)?)?;
        (last.pid == pid).then_some(last)
    }
}

/// Records the sessions blocking `s`; true when a new blocker appeared.
fn note_blockers(
    record: &mut EpisodeRecord,
    s: &pb::Session,
    by_pid: &ByPid<'_>,
    now: Micros,
) -> bool {
    let mut added = false;
    for &pid in &s.blocking_pids {
        let blocker = by_pid.get(pid);
        let idle_in_xact = blocker
            .and_then(|b| b.state.as_deref())
            .is_some_and(|st| st.starts_with(IDLE_IN_TRANSACTION));
        let waiting = blocker.is_some_and(|b| b.wait_event_type.as_deref() == Some("Lock"));
        match record.blockers.iter_mut().find(|b| b.pid == pid) {
            Some(b) => {
                b.last_seen_us = now;
                b.idle_in_transaction |= idle_in_xact;
                b.waiting |= waiting;
            }
            None => {
                added = true;
                record.blockers.push(BlockerRecord {
                    pid,
                    backend_start_us: blocker.and_then(|b| b.backend_start_us),
                    user: blocker.and_then(|b| b.user.clone()),
                    application_name: blocker.and_then(|b| b.application_name.clone()),
                    state: blocker.and_then(|b| b.state.clone()),
                    query_id: blocker.and_then(|b| b.query_id),
                    idle_in_transaction: idle_in_xact,
                    first_seen_us: now,
                    last_seen_us: now,
                    waiting,
                });
            }
        }
    }
    added
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_are_found_by_pid_sorted_or_not() {
        let rows = [(3, "idle"), (5, "active"), (5, "idle"), (9, "active")];
        let mut sessions: Vec<_> = rows.iter().map(|&(p, st)| session(p, st, 0, 0)).collect();
        for _ in 0..2 {
            let by_pid = ByPid::new(&sessions);
            let state = |pid| by_pid.get(pid).and_then(|s| s.state.clone());
            assert_eq!(state(3).as_deref(), Some("idle"));
            assert_eq!(state(5).as_deref(), Some("idle"), "the last of pid 5");
            assert_eq!(state(9).as_deref(), Some("active"));
            assert!(by_pid.get(1).is_none() && by_pid.get(4).is_none() && by_pid.get(10).is_none());
            sessions.swap(0, 3);
            sessions.swap(1, 2);
            sessions.swap(1, 3);
        }
    }

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

    fn of(kind: EpisodeKind, list: &[(EpisodeKind, EpisodeRecord)]) -> Vec<EpisodeRecord> {
        list.iter()
            .filter(|(k, _)| *k == kind)
            .map(|(_, e)| e.clone())
            .collect()
    }

    const IIT: EpisodeKind = EpisodeKind::IdleInTransaction;

    #[test]
    fn idle_in_transaction_closes_at_the_next_statement() {
        let mut t = SessionEpisodes::default();
        let s = || session(7, IDLE_IN_TRANSACTION, 99_500_000, 80 * SECOND);
        let c = t.observe(&at(100 * SECOND, vec![s()]));
        assert!(
            of(IIT, &c.opened).is_empty(),
            "under the floor: not stored yet"
        );
        let c = t.observe(&at(101 * SECOND, vec![s()]));
        assert_eq!(of(IIT, &c.opened).len(), 1, "stored once past the floor");
        let c = t.observe(&at(102 * SECOND, vec![s()]));
        assert!(
            of(IIT, &c.opened).is_empty(),
            "an ongoing episode changes nothing"
        );
        // COMMIT ran at 102.5 s; the session is idle at 103 s.
        let c = t.observe(&at(
            103 * SECOND,
            vec![session(7, "idle", 102_500_001, 102_500_000)],
        ));
        let closed = of(IIT, &c.closed);
        assert_eq!(closed.len(), 1);
        assert_eq!(closed[0].started_us, 99_500_000);
        assert_eq!(closed[0].ended_us, Some(102_500_000));
        assert_eq!(closed[0].last_seen_us, 102 * SECOND);
        assert_eq!(closed[0].samples, 3);
    }

    #[test]
    fn a_vanished_session_ends_at_the_sample_that_missed_it() {
        let mut t = SessionEpisodes::default();
        t.observe(&at(
            100 * SECOND,
            vec![session(7, IDLE_IN_TRANSACTION, 90 * SECOND, 80)],
        ));
        let c = t.observe(&at(101 * SECOND, vec![]));
        assert_eq!(of(IIT, &c.closed)[0].ended_us, Some(101 * SECOND));
    }

    #[test]
    fn short_episodes_are_not_stored() {
        let mut t = SessionEpisodes::default();
        t.observe(&at(
            100 * SECOND,
            vec![session(7, "active", 100 * SECOND, 100 * SECOND - 10)],
        ));
        let c = t.observe(&at(
            101 * SECOND,
            vec![session(7, "idle", 100 * SECOND, 100 * SECOND - 10)],
        ));
        assert!(of(EpisodeKind::SlowQuery, &c.closed).is_empty());
    }

    #[test]
    fn a_slow_query_ends_when_the_session_goes_idle_and_keeps_its_waits() {
        let mut t = SessionEpisodes::default();
        let mut s = session(7, "active", 10 * SECOND, 10 * SECOND);
        s.wait_event_type = Some("IO".into());
        s.wait_event = Some("DataFileRead".into());
        t.observe(&at(11 * SECOND, vec![s.clone()]));
        s.wait_event_type = None;
        s.wait_event = None;
        t.observe(&at(12 * SECOND, vec![s.clone()]));
        let c = t.observe(&at(
            13 * SECOND,
            vec![session(7, "idle", 12_600_000, 10 * SECOND)],
        ));
        let slow = of(EpisodeKind::SlowQuery, &c.closed);
        assert_eq!(slow[0].ended_us, Some(12_600_000));
        assert_eq!(slow[0].wait_events["IO:DataFileRead"], 1);
        assert_eq!(slow[0].wait_events["CPU"], 1);
    }

    #[test]
    fn lock_waits_remember_their_blockers() {
        let mut t = SessionEpisodes::default();
        let holder = session(5, IDLE_IN_TRANSACTION, SECOND, SECOND);
        let mut waiter = session(6, "active", 2 * SECOND, 2 * SECOND);
        waiter.wait_event_type = Some("Lock".into());
        waiter.wait_event = Some("transactionid".into());
        waiter.blocking_pids = vec![5];
        let c = t.observe(&at(3 * SECOND, vec![holder.clone(), waiter.clone()]));
        let open = of(EpisodeKind::LockWait, &c.opened);
        assert_eq!(open.len(), 1, "lock waits are stored from the first sample");
        assert_eq!(open[0].blockers[0].pid, 5);
        assert!(open[0].blockers[0].idle_in_transaction);
        t.observe(&at(4 * SECOND, vec![holder.clone(), waiter.clone()]));
        let c = t.observe(&at(
            5 * SECOND,
            vec![session(6, "idle", 5 * SECOND, 2 * SECOND)],
        ));
        let closed = of(EpisodeKind::LockWait, &c.closed);
        assert_eq!(closed[0].started_us, 3 * SECOND);
        assert_eq!(closed[0].ended_us, Some(5 * SECOND));
        assert_eq!(closed[0].blockers[0].last_seen_us, 4 * SECOND);
    }

    #[test]
    fn a_reused_pid_is_another_session() {
        let mut t = SessionEpisodes::default();
        t.observe(&at(
            100 * SECOND,
            vec![session(7, IDLE_IN_TRANSACTION, 90 * SECOND, 80)],
        ));
        let mut other = session(7, IDLE_IN_TRANSACTION, 90 * SECOND, 80);
        other.backend_start_us = Some(95 * SECOND);
        let c = t.observe(&at(101 * SECOND, vec![other]));
        assert_eq!(of(IIT, &c.closed)[0].ended_us, Some(101 * SECOND));
        assert_eq!(of(IIT, &c.opened)[0].backend_start_us, Some(95 * SECOND));
    }

    #[test]
    fn resumes_from_the_store() {
        let mut t = SessionEpisodes::default();
        let s = || session(7, IDLE_IN_TRANSACTION, 99_500_000, 80);
        t.observe(&at(100 * SECOND, vec![s()]));
        let c = t.observe(&at(101 * SECOND, vec![s()]));
        assert_eq!(c.opened.len(), 1);
        let mut resumed = SessionEpisodes::resume(c.opened);
        let c = resumed.observe(&at(102 * SECOND, vec![s()]));
        assert!(c.opened.is_empty() && c.closed.is_empty());
    }
}
