//! Rows that did not change travel as their pid.
//!
//! From one second to the next most rows of a snapshot repeat the row of the
//! same pid before (an idle session, its sleeping process). On a stream
//! the sender keeps [`SentRows`]: the rows it last sent per instance, as
//! bytes. A row whose bytes are the same as last time goes as its pid in
//! `unchanged_sessions` or `unchanged_processes`, and the message is a
//! `delta`. The receiver keeps [`ReceivedRows`]: the rows of the previous
//! snapshot per instance, decoded, and puts the unchanged ones back, so
//! what comes out of a stream is self-contained again.
//!
//! Both sides start empty with the stream, so the first snapshot of an
//! instance on a stream is sent whole (after a reconnect, spooled
//! snapshots too). A pid that occurs twice in a snapshot is always sent in
//! full: a pid names one row.

use std::collections::{HashMap, HashSet};
use std::ops::Range;

use prost::bytes::Bytes;
use prost::encoding::{decode_key, decode_varint, WireType};
use prost::Message;

use crate::model::MAX_ROWS;
use crate::{pb, ProtocolError};

/// `pb::Snapshot.sessions`.
const SESSIONS: u32 = 7;
/// `pb::Snapshot.processes`.
const PROCESSES: u32 = 8;
/// `pb::Session.pid` and `pb::Process.pid`.
const PID: u32 = 1;

/// How many instances one stream may carry: each keeps its last rows.
pub const MAX_INSTANCES_PER_STREAM: usize = 1024;

/// Sender side: per instance, the bytes of the rows last sent, by pid.
#[derive(Debug, Default)]
pub struct SentRows {
    last: HashMap<String, Last>,
}

/// One instance's rows as last sent.
#[derive(Debug, Default)]
struct Last {
    sessions: HashMap<i32, Bytes>,
    processes: HashMap<i32, Bytes>,
}

/// A snapshot's rows with the unchanged ones taken out.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Split {
    /// The rows that go in full: fields 7 and 8 of a `pb::Snapshot`.
    pub changed: Bytes,
    /// Pids of the session rows left out.
    pub unchanged_sessions: Vec<i32>,
    /// Pids of the process rows left out.
    pub unchanged_processes: Vec<i32>,
}

impl Split {
    /// Whether any row was left out: the snapshot must go as a `delta`.
    pub fn is_delta(&self) -> bool {
        !self.unchanged_sessions.is_empty() || !self.unchanged_processes.is_empty()
    }
}

/// One row of encoded rows: which list, its pid, where its bytes are.
struct RowAt {
    tag: u32,
    /// `None` when the row does not start with its pid: always sent.
    pid: Option<i32>,
    /// The whole field, key and length included.
    field: Range<usize>,
    /// The row's own bytes.
    row: Range<usize>,
}

impl SentRows {
    /// Splits `rows`, a snapshot of `instance`'s sessions and processes as
    /// fields 7 and 8 of a `pb::Snapshot` (as `prost` writes them), into
    /// what goes in full and the pids of the rest, and remembers them as
    /// the rows last sent.
    /// Bytes that are not such fields are refused, and the instance's rows
    /// forgotten (whatever is sent instead, the next goes whole).
    pub fn split(&mut self, instance: &str, rows: &Bytes) -> Result<Split, ProtocolError> {
        let at = match index(rows) {
            Ok(at) => at,
            Err(e) => {
                // The receiver will keep whatever goes instead: start over.
                self.last.remove(instance);
                return Err(e);
            }
        };
        let (sessions, twice_s) = by_pid(rows, &at, SESSIONS);
        let (processes, twice_p) = by_pid(rows, &at, PROCESSES);
        let last = match self.last.get_mut(instance) {
            Some(last) => last,
            None => self.last.entry(instance.to_string()).or_default(),
        };
        let mut split = Split::default();
        let mut changed = Vec::with_capacity(rows.len());
        for row in &at {
            let (before, twice, unchanged) = match row.tag {
                SESSIONS => (&last.sessions, &twice_s, &mut split.unchanged_sessions),
                _ => (&last.processes, &twice_p, &mut split.unchanged_processes),
            };
            let same = row.pid.is_some_and(|pid| {
                !twice.contains(&pid)
                    && before.get(&pid).map(AsRef::as_ref) == Some(&rows[row.row.clone()])
            });
            match row.pid {
                Some(pid) if same => unchanged.push(pid),
                _ => changed.extend_from_slice(&rows[row.field.clone()]),
            }
        }
        split.changed = changed.into();
        last.sessions = sessions;
        last.processes = processes;
        Ok(split)
    }

    /// As [`SentRows::split`], on a whole wire snapshot: takes out its
    /// unchanged rows and lists their pids. Returns whether it left any
    /// out (then it must go as a `delta`).
    pub fn strip(&mut self, wire: &mut pb::Snapshot) -> bool {
        let rows = pb::Snapshot {
            sessions: std::mem::take(&mut wire.sessions),
            processes: std::mem::take(&mut wire.processes),
            ..Default::default()
        };
        let split = self
            .split(&wire.instance, &rows.encode_to_vec().into())
            .expect("prost reads what it wrote");
        let changed = pb::Snapshot::decode(split.changed.clone()).expect("slices of prost's bytes");
        wire.sessions = changed.sessions;
        wire.processes = changed.processes;
        wire.unchanged_sessions = split.unchanged_sessions.clone();
        wire.unchanged_processes = split.unchanged_processes.clone();
        split.is_delta()
    }
}

/// Where each row of `rows` is.
fn index(rows: &[u8]) -> Result<Vec<RowAt>, ProtocolError> {
    let bad = |reason: &str| ProtocolError::Invalid {
        field: "rows",
        reason: reason.to_string(),
    };
    let mut at = Vec::new();
    let mut rest = rows;
    while !rest.is_empty() {
        let start = rows.len() - rest.len();
        let (tag, wire_type) = decode_key(&mut rest).map_err(|e| bad(&e.to_string()))?;
        if wire_type != WireType::LengthDelimited || !(tag == SESSIONS || tag == PROCESSES) {
            return Err(bad("only fields 7 and 8 hold rows"));
        }
        let len = decode_varint(&mut rest).map_err(|e| bad(&e.to_string()))?;
        if len > rest.len() as u64 {
            return Err(bad("a row runs past the end"));
        }
        let row_start = rows.len() - rest.len();
        let row = row_start..row_start + len as usize;
        rest = &rest[len as usize..];
        at.push(RowAt {
            tag,
            pid: pid(&rows[row.clone()]),
            field: start..row.end,
            row,
        });
    }
    Ok(at)
}

/// The pid a row starts with.
fn pid(mut row: &[u8]) -> Option<i32> {
    match decode_key(&mut row) {
        Ok((PID, WireType::Varint)) => decode_varint(&mut row).ok().map(|v| v as i32),
        _ => None,
    }
}

/// The rows of list `tag` by pid, without the pids that occur twice, and
/// those pids.
fn by_pid(rows: &Bytes, at: &[RowAt], tag: u32) -> (HashMap<i32, Bytes>, HashSet<i32>) {
    let mut map = HashMap::new();
    let mut twice = HashSet::new();
    for row in at.iter().filter(|r| r.tag == tag) {
        if let Some(pid) = row.pid {
            if map.insert(pid, rows.slice(row.row.clone())).is_some() {
                twice.insert(pid);
            }
        }
    }
    for pid in &twice {
        map.remove(pid);
    }
    (map, twice)
}

/// Receiver side: per instance, the rows of the previous snapshot, by pid.
#[derive(Debug, Default)]
pub struct ReceivedRows {
    last: HashMap<String, Kept>,
}

/// One instance's previous rows.
#[derive(Debug, Default)]
struct Kept {
    sessions: HashMap<i32, pb::Session>,
    processes: HashMap<i32, pb::Process>,
}

impl ReceivedRows {
    /// Puts `wire`'s unchanged rows back from the previous snapshot of its
    /// instance (every row then sorted by pid) and keeps its rows for the
    /// next. A pid the previous snapshot did not have is refused.
    pub fn restore(&mut self, wire: &mut pb::Snapshot) -> Result<(), ProtocolError> {
        if !self.last.contains_key(&wire.instance) && self.last.len() >= MAX_INSTANCES_PER_STREAM {
            return Err(ProtocolError::Invalid {
                field: "instance",
                reason: format!("more than {MAX_INSTANCES_PER_STREAM} instances on one stream"),
            });
        }
        let kept = self.last.entry(wire.instance.clone()).or_default();
        let unchanged = std::mem::take(&mut wire.unchanged_sessions);
        restore(
            &mut wire.sessions,
            &unchanged,
            &mut kept.sessions,
            |s| s.pid,
            "unchanged_sessions",
        )?;
        let unchanged = std::mem::take(&mut wire.unchanged_processes);
        restore(
            &mut wire.processes,
            &unchanged,
            &mut kept.processes,
            |p| p.pid,
            "unchanged_processes",
        )
    }
}

/// Adds the `unchanged` rows to `rows` from `kept`, sorts them by pid, and
/// makes `kept` hold them. Each row is copied once: an unchanged one out of
/// `kept`, a changed one into it.
fn restore<M: Clone>(
    rows: &mut Vec<M>,
    unchanged: &[i32],
    kept: &mut HashMap<i32, M>,
    pid: fn(&M) -> i32,
    field: &'static str,
) -> Result<(), ProtocolError> {
    if rows.len() + unchanged.len() > MAX_ROWS {
        return Err(ProtocolError::Invalid {
            field,
            reason: format!("more than {MAX_ROWS} rows"),
        });
    }
    let mut next = HashMap::with_capacity(rows.len() + unchanged.len());
    rows.reserve(unchanged.len());
    for &p in unchanged {
        let row =
            kept.remove(&p)
                .or_else(|| next.remove(&p))
                .ok_or_else(|| ProtocolError::Invalid {
                    field,
                    reason: format!("pid {p} was not in the previous snapshot of the instance"),
                })?;
        rows.push(row.clone());
        next.insert(p, row);
    }
    for row in rows.iter().take(rows.len() - unchanged.len()) {
        next.insert(pid(row), row.clone());
    }
    rows.sort_by_key(pid);
    *kept = next;
    Ok(())
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

    fn process(pid: i32, cpu: u64) -> pb::Process {
        pb::Process {
            pid,
            title: format!("postgres: {pid}"),
            utime_us: Some(cpu),
            ..Default::default()
        }
    }

    fn snapshot(
        instance: &str,
        sessions: Vec<pb::Session>,
        processes: Vec<pb::Process>,
    ) -> pb::Snapshot {
        pb::Snapshot {
            instance: instance.into(),
            sessions,
            processes,
            ..Default::default()
        }
    }

    /// Sends `wire` through `tx` and `rx`; returns what `rx` restored and
    /// the pids that travelled as such.
    fn send(
        tx: &mut SentRows,
        rx: &mut ReceivedRows,
        wire: &pb::Snapshot,
    ) -> (pb::Snapshot, Vec<i32>, Vec<i32>) {
        let mut out = wire.clone();
        let delta = tx.strip(&mut out);
        let lists = (
            out.unchanged_sessions.clone(),
            out.unchanged_processes.clone(),
        );
        assert_eq!(delta, !lists.0.is_empty() || !lists.1.is_empty());
        rx.restore(&mut out).unwrap();
        (out, lists.0, lists.1)
    }

    #[test]
    fn unchanged_rows_travel_as_pids_and_come_back() {
        let (mut tx, mut rx) = (SentRows::default(), ReceivedRows::default());
        let first = snapshot(
            "main",
            vec![
                session(10, "idle"),
                session(11, "active"),
                session(12, "idle"),
            ],
            vec![process(10, 0), process(11, 5), process(12, 0)],
        );
        let (got, s, p) = send(&mut tx, &mut rx, &first);
        assert_eq!((got, s, p), (first, vec![], vec![]), "the first goes whole");

        // 11 ran, 12 left, 13 came; 10 did not change.
        let second = snapshot(
            "main",
            vec![
                session(10, "idle"),
                session(11, "idle"),
                session(13, "active"),
            ],
            vec![process(10, 0), process(11, 9), process(13, 1)],
        );
        let (got, s, p) = send(&mut tx, &mut rx, &second);
        assert_eq!((s, p), (vec![10], vec![10]));
        assert_eq!(got, second);

        let (got, s, p) = send(&mut tx, &mut rx, &second);
        assert_eq!(
            (s, p),
            (vec![10, 11, 13], vec![10, 11, 13]),
            "nothing changed"
        );
        assert_eq!(got, second);
    }

    #[test]
    fn rows_come_back_in_pid_order_per_instance() {
        let (mut tx, mut rx) = (SentRows::default(), ReceivedRows::default());
        let a = snapshot("a", vec![session(20, "idle"), session(21, "idle")], vec![]);
        let b = snapshot("b", vec![session(20, "active")], vec![]);
        send(&mut tx, &mut rx, &a);
        send(&mut tx, &mut rx, &b);
        // 21 changed, 20 did not: the delta lists 20 after 21's full row.
        let a2 = snapshot(
            "a",
            vec![session(20, "idle"), session(21, "active")],
            vec![],
        );
        let (got, s, _) = send(&mut tx, &mut rx, &a2);
        assert_eq!(s, vec![20], "compared with a's rows, not b's");
        assert_eq!(got.sessions, a2.sessions);
        let (got, s, _) = send(&mut tx, &mut rx, &b);
        assert_eq!(s, vec![20]);
        assert_eq!(got, b);
    }

    #[test]
    fn a_pid_that_occurs_twice_goes_in_full() {
        let (mut tx, mut rx) = (SentRows::default(), ReceivedRows::default());
        let twice = snapshot(
            "main",
            vec![
                session(10, "idle"),
                session(10, "active"),
                session(11, "idle"),
            ],
            vec![],
        );
        send(&mut tx, &mut rx, &twice);
        let (got, s, _) = send(&mut tx, &mut rx, &twice);
        assert_eq!(s, vec![11]);
        assert_eq!(got, twice, "both rows of pid 10, in their order");
        let once = snapshot(
            "main",
            vec![session(10, "active"), session(11, "idle")],
            vec![],
        );
        let (got, s, _) = send(&mut tx, &mut rx, &once);
        assert_eq!(s, vec![11], "10 was not one row before");
        assert_eq!(got, once);
    }

    #[test]
    fn a_pid_the_receiver_never_had_is_refused() {
        let mut tx = SentRows::default();
        let s = snapshot("main", vec![session(10, "idle")], vec![process(10, 0)]);
        tx.strip(&mut s.clone());
        let mut delta = s.clone();
        assert!(tx.strip(&mut delta));
        let err = ReceivedRows::default().restore(&mut delta).unwrap_err();
        assert!(
            err.to_string()
                .contains("pid 10 was not in the previous snapshot"),
            "{err}"
        );

        let mut rx = ReceivedRows::default();
        rx.restore(&mut snapshot("main", vec![], vec![process(10, 0)]))
            .unwrap();
        let mut wrong = snapshot("main", vec![], vec![]);
        wrong.unchanged_sessions = vec![10];
        assert!(
            rx.restore(&mut wrong).is_err(),
            "10 was a process, not a session"
        );
    }

    #[test]
    fn split_refuses_what_is_not_rows() {
        let mut tx = SentRows::default();
        let not_rows = pb::Snapshot {
            instance: "main".into(),
            ..Default::default()
        };
        assert!(tx.split("main", &not_rows.encode_to_vec().into()).is_err());
        let mut rows = snapshot("", vec![session(10, "idle")], vec![]).encode_to_vec();
        rows.pop();
        assert!(tx.split("main", &rows.into()).is_err(), "cut short");
        assert!(tx.split("main", &Bytes::new()).unwrap() == Split::default());
    }

    #[test]
    fn a_stream_carries_a_bounded_number_of_instances() {
        let mut rx = ReceivedRows::default();
        for i in 0..MAX_INSTANCES_PER_STREAM {
            rx.restore(&mut snapshot(&i.to_string(), vec![], vec![]))
                .unwrap();
        }
        assert!(
            rx.restore(&mut snapshot("0", vec![], vec![])).is_ok(),
            "known"
        );
        assert!(rx.restore(&mut snapshot("new", vec![], vec![])).is_err());
    }
}
