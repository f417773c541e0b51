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
//!
//! Writing encodes each row once ([`Encoded`]): the stored value is put
//! together from those bytes, and the next sample's rows are compared with
//! them byte for byte, walking both samples' rows in pid order, so nothing
//! is decoded or copied row by row. Reading rebuilds rows by pid
//! ([`Rows`]).

use std::collections::BTreeMap;
use std::ops::Range;

use pgtrail_proto::pb;
use pgtrail_proto::time::Micros;
use prost::encoding::{encode_key, encode_varint, WireType};
use prost::Message;

use super::records::StoredSample;

/// `StoredSample`'s field numbers for its rows.
const SESSIONS_TAG: u32 = 1;
const PROCESSES_TAG: u32 = 2;

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

/// One encoded row: its pid and where its bytes are.
#[derive(Debug, Clone, PartialEq)]
struct Row {
    pid: i32,
    bytes: Range<usize>,
}

/// A sample's rows, each encoded once into one buffer.
#[derive(Debug, Default)]
pub struct Encoded {
    bytes: Vec<u8>,
    sessions: Vec<Row>,
    processes: Vec<Row>,
}

impl Encoded {
    /// Encodes `sample`'s rows, in their order.
    pub fn of(sample: &StoredSample) -> Self {
        let len: usize = sample
            .sessions
            .iter()
            .map(Message::encoded_len)
            .sum::<usize>()
            + sample
                .processes
                .iter()
                .map(Message::encoded_len)
                .sum::<usize>();
        let mut bytes = Vec::with_capacity(len);
        let sessions = sample
            .sessions
            .iter()
            .map(|s| encode_row(s.pid, s, &mut bytes))
            .collect();
        let processes = sample
            .processes
            .iter()
            .map(|p| encode_row(p.pid, p, &mut bytes))
            .collect();
        Self {
            bytes,
            sessions,
            processes,
        }
    }

    /// The stored value of `sample` as a keyframe: every row, in order.
    pub fn keyframe(&self, sample: &StoredSample) -> Vec<u8> {
        let header = header(sample, true, None, Vec::new(), Vec::new());
        let mut out = Vec::with_capacity(self.bytes.len() + 8 * self.rows() + 64);
        for row in &self.sessions {
            self.put(SESSIONS_TAG, row, &mut out);
        }
        for row in &self.processes {
            self.put(PROCESSES_TAG, row, &mut out);
        }
        header.encode(&mut out).expect("a Vec grows");
        out
    }

    /// The rows sorted by pid (of rows sharing a pid, the last), as the
    /// next sample's delta is compared against.
    pub fn into_base(mut self) -> Base {
        by_pid(&mut self.sessions);
        by_pid(&mut self.processes);
        Base(self)
    }

    fn rows(&self) -> usize {
        self.sessions.len() + self.processes.len()
    }

    fn row(&self, row: &Row) -> &[u8] {
        &self.bytes[row.bytes.clone()]
    }

    /// Appends `row` as field `tag` of a `StoredSample`.
    fn put(&self, tag: u32, row: &Row, out: &mut Vec<u8>) {
        encode_key(tag, WireType::LengthDelimited, out);
        encode_varint(row.bytes.len() as u64, out);
        out.extend_from_slice(self.row(row));
    }
}

/// A sample's encoded rows sorted by pid: what the next sample of its
/// instance is stored against.
#[derive(Debug, Default)]
pub struct Base(Encoded);

impl Base {
    /// The stored value of `sample` (whose rows are `current`) as a delta
    /// against `self`, the rows of the sample at `base_at`.
    pub fn delta(&self, base_at: Micros, current: &Base, sample: &StoredSample) -> Vec<u8> {
        let (base, now) = (&self.0, &current.0);
        let mut out = Vec::with_capacity(now.bytes.len() / 4 + 64);
        let gone_sessions = changes(
            SESSIONS_TAG,
            base,
            now,
            &base.sessions,
            &now.sessions,
            &mut out,
        );
        let gone_processes = changes(
            PROCESSES_TAG,
            base,
            now,
            &base.processes,
            &now.processes,
            &mut out,
        );
        let header = header(sample, false, Some(base_at), gone_sessions, gone_processes);
        header.encode(&mut out).expect("a Vec grows");
        out
    }
}

/// Walks `before` (rows of `base`) and `after` (rows of `now`), both sorted
/// by pid, writing the rows of `after` that are new or differ as field
/// `tag`; returns the pids that are gone.
fn changes(
    tag: u32,
    base: &Encoded,
    now: &Encoded,
    before: &[Row],
    after: &[Row],
    out: &mut Vec<u8>,
) -> Vec<i32> {
    let mut gone = Vec::new();
    let (mut i, mut j) = (0, 0);
    while i < before.len() || j < after.len() {
        match (before.get(i), after.get(j)) {
            (Some(b), Some(a)) if b.pid == a.pid => {
                if base.row(b) != now.row(a) {
                    now.put(tag, a, out);
                }
                i += 1;
                j += 1;
            }
            (Some(b), Some(a)) if b.pid < a.pid => {
                gone.push(b.pid);
                i += 1;
            }
            (Some(b), None) => {
                gone.push(b.pid);
                i += 1;
            }
            (_, Some(a)) => {
                now.put(tag, a, out);
                j += 1;
            }
            (None, None) => unreachable!("the loop ends first"),
        }
    }
    gone
}

fn encode_row(pid: i32, row: &impl Message, bytes: &mut Vec<u8>) -> Row {
    let start = bytes.len();
    row.encode(bytes).expect("a Vec grows");
    Row {
        pid,
        bytes: start..bytes.len(),
    }
}

/// Sorts rows by pid, keeping the last of rows that share one (as
/// [`Rows::of`] does).
fn by_pid(rows: &mut Vec<Row>) {
    rows.reverse();
    rows.sort_by_key(|r| r.pid);
    rows.dedup_by_key(|r| r.pid);
}

/// Everything of a stored sample but its rows.
fn header(
    sample: &StoredSample,
    keyframe: bool,
    base_us: Option<Micros>,
    gone_sessions: Vec<i32>,
    gone_processes: Vec<i32>,
) -> StoredSample {
    StoredSample {
        sessions: Vec::new(),
        processes: Vec::new(),
        blind_spots: sample.blind_spots.clone(),
        seq: sample.seq,
        memory: sample.memory,
        sessions_total: sample.sessions_total,
        keyframe,
        base_us,
        gone_sessions,
        gone_processes,
    }
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

    /// `b` stored against `a` (taken at 100), decoded.
    fn delta(a: &StoredSample, b: &StoredSample) -> StoredSample {
        let base = Encoded::of(a).into_base();
        let bytes = base.delta(100, &Encoded::of(b).into_base(), b);
        StoredSample::decode(bytes.as_slice()).unwrap()
    }

    #[test]
    fn a_delta_holds_only_what_changed_and_rebuilds_the_sample() {
        let a = full(
            vec![session(1, "idle"), session(2, "idle"), session(3, "active")],
            vec![process(1, 10), process(2, 20), process(3, 30)],
        );
        let mut b = full(
            vec![session(4, "active"), session(1, "idle"), session(3, "idle")],
            vec![process(1, 10), process(3, 31), process(4, 40)],
        );
        b.seq = 7;
        b.blind_spots = vec!["io".into()];
        let delta = delta(&a, &b);
        assert!(!delta.keyframe);
        assert_eq!(delta.base_us, Some(100));
        assert_eq!(
            (delta.seq, delta.blind_spots.clone()),
            (7, vec!["io".into()])
        );
        let pids: Vec<i32> = delta.sessions.iter().map(|s| s.pid).collect();
        assert_eq!(pids, vec![3, 4], "session 1 did not change");
        assert_eq!(delta.gone_sessions, vec![2]);
        let pids: Vec<i32> = delta.processes.iter().map(|p| p.pid).collect();
        assert_eq!(pids, vec![3, 4]);
        assert_eq!(delta.gone_processes, vec![2]);

        let mut rows = Rows::of(&a);
        rows.apply(&delta);
        assert_eq!(rows, Rows::of(&b));
        let mut rebuilt = delta.clone();
        rows.fill(&mut rebuilt);
        let mut sorted = b.sessions.clone();
        sorted.sort_by_key(|s| s.pid);
        assert_eq!(rebuilt.sessions, sorted);
        assert!(rebuilt.keyframe && rebuilt.base_us.is_none());
    }

    #[test]
    fn an_unchanged_sample_is_an_empty_delta() {
        let a = full(vec![session(1, "idle")], vec![process(1, 10)]);
        let delta = delta(&a, &a);
        assert!(delta.sessions.is_empty() && delta.processes.is_empty());
        assert!(delta.gone_sessions.is_empty() && delta.gone_processes.is_empty());
    }

    #[test]
    fn a_keyframe_keeps_every_row_in_order() {
        let mut a = full(
            vec![
                session(9, "idle"),
                session(2, "active"),
                session(9, "active"),
            ],
            vec![process(5, 50), process(1, 10)],
        );
        a.keyframe = false;
        a.seq = 3;
        a.sessions_total = Some(12);
        let stored = StoredSample::decode(Encoded::of(&a).keyframe(&a).as_slice()).unwrap();
        a.keyframe = true;
        assert_eq!(stored, a);
    }

    #[test]
    fn of_rows_sharing_a_pid_the_last_counts() {
        let a = full(vec![session(1, "idle"), session(1, "active")], vec![]);
        let b = full(vec![session(1, "active")], vec![]);
        let same = delta(&a, &b);
        assert!(same.sessions.is_empty(), "the last row of pid 1 was active");
        let mut rows = Rows::of(&a);
        rows.apply(&delta(&b, &a));
        assert_eq!(rows, Rows::of(&a));
    }
}
