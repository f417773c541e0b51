//! Rows that did not change travel as their pid.
//!
//! From one second to the next most rows of a snapshot repeat the row of the
//! same pid before (an idle session, its sleeping process). On a stream
//! the sender keeps [`SentRows`]: the rows it last sent per instance, as
//! bytes. A row whose bytes are the same as last time goes as its pid in
//! `unchanged_sessions` or `unchanged_processes`, and the message is a
//! `delta`. The receiver (`crate::intern::StreamDecoder`) keeps the
//! previous snapshot of each instance, decoded, and moves its unchanged
//! rows into the new one ([`restore`]): what comes out of a stream is
//! self-contained again, and no row is decoded or copied twice.
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
use crate::time::Micros;
use crate::{pb, ProtocolError};

/// `pb::Snapshot.sessions`.
pub(crate) const SESSIONS: u32 = 7;
/// `pb::Snapshot.processes`.
pub(crate) const PROCESSES: u32 = 8;
/// `pb::Session.pid` and `pb::Process.pid`.
const PID: u32 = 1;

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
    /// what goes in full and the pids of the rest, both in pid order (the
    /// order a receiver keeps rows in), and remembers them as the rows
    /// last sent.
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
        // In pid order, as the receiver keeps rows: it sorts only what
        // does not come so (the sorting is done here, on the agent's host).
        let mut order: Vec<&RowAt> = at.iter().collect();
        order.sort_by_key(|row| (row.tag, row.pid));
        for row in order {
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

/// The pid a row starts with, read as protobuf reads an `int32`.
pub(crate) fn pid(mut row: &[u8]) -> Option<i32> {
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

/// What a decoded snapshot's rows owe to the snapshot before it on the
/// same stream: the pids of the rows moved over unchanged. A store that
/// kept the encoding of that earlier snapshot's rows may reuse it for
/// these, rather than encode them again.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Unchanged {
    /// The stream (unique in the process, see
    /// [`crate::intern::StreamDecoder`]).
    pub stream: u64,
    /// When the snapshot before was taken; `None` for the first of its
    /// instance on the stream.
    pub since: Option<Micros>,
    /// Pids of the session rows moved over, sorted.
    pub sessions: Vec<i32>,
    /// Pids of the process rows moved over, sorted.
    pub processes: Vec<i32>,
}

/// Receiver side: makes `changed` (a delta's rows sent in full) whole
/// again with the `unchanged` rows of `previous` (the rows of the
/// instance's previous snapshot on the stream, sorted by pid), sorted by
/// pid. A pid `previous` does not hold, or holds twice, or that comes
/// twice, or also in full, is refused. `unchanged` is sorted in place.
///
/// The result is built in `previous`'s place: a row is hundreds of bytes,
/// and most rows are unchanged, so those stay where they are; a changed
/// row takes the place of its pid's previous one, the rows of gone pids
/// are dropped and those of new pids inserted.
pub fn restore<M: Default>(
    changed: &mut Vec<M>,
    unchanged: &mut [i32],
    mut previous: Vec<M>,
    pid: fn(&M) -> i32,
    field: &'static str,
) -> Result<(), ProtocolError> {
    if changed.len() + unchanged.len() > MAX_ROWS {
        return Err(ProtocolError::Invalid {
            field,
            reason: format!("more than {MAX_ROWS} rows"),
        });
    }
    if !changed.is_sorted_by_key(pid) {
        sort_rows(changed, pid);
    }
    if unchanged.is_empty() {
        return Ok(());
    }
    if !unchanged.is_sorted() {
        unchanged.sort_unstable();
    }
    let missing = |p: i32| ProtocolError::Invalid {
        field,
        reason: format!("pid {p} was not in the previous snapshot of the instance, or came twice"),
    };
    for pair in previous.windows(2) {
        let p = pid(&pair[0]);
        if p == pid(&pair[1]) && unchanged.binary_search(&p).is_ok() {
            // The sender never refers to a pid that named two rows.
            return Err(missing(p));
        }
    }
    // Rows are taken out of `full` by index: a peekable iterator would
    // move a row back and forth at each look.
    let mut full = std::mem::take(changed);
    let mut next = 0;
    let mut wanted = unchanged.iter().copied().peekable();
    let mut new = Vec::new();
    let mut refused = None;
    previous.retain_mut(|row| {
        let p = pid(row);
        while full.get(next).is_some_and(|r| pid(r) < p) {
            new.push(std::mem::take(&mut full[next]));
            next += 1;
        }
        if let Some(u) = wanted.next_if(|&u| u < p) {
            refused.get_or_insert(missing(u));
        }
        let kept = wanted.next_if_eq(&p).is_some();
        if full.get(next).is_none_or(|r| pid(r) != p) {
            return kept;
        }
        next += 1;
        if kept {
            refused.get_or_insert(ProtocolError::Invalid {
                field,
                reason: format!("pid {p} came both in full and unchanged"),
            });
            return false;
        }
        *row = std::mem::take(&mut full[next - 1]);
        true
    });
    if let Some(u) = wanted.next() {
        refused.get_or_insert(missing(u));
    }
    if let Some(refused) = refused {
        return Err(refused);
    }
    new.extend(full.drain(next..));
    insert_sorted(&mut previous, new, pid);
    *changed = previous;
    Ok(())
}

/// Sorts `rows` by pid (stable), moving each row once: sorting the rows
/// themselves would move each several times.
fn sort_rows<M: Default>(rows: &mut Vec<M>, pid: fn(&M) -> i32) {
    let mut order: Vec<usize> = (0..rows.len()).collect();
    order.sort_by_key(|&i| pid(&rows[i]));
    let sorted = order
        .iter()
        .map(|&i| std::mem::take(&mut rows[i]))
        .collect();
    *rows = sorted;
}

/// Merges `new` (sorted by pid) into `rows` (sorted by pid; a row of a
/// pid both hold stays before the new one), filling from the back: a row
/// moves at most once, and only rows after the first new one move at all.
fn insert_sorted<M: Default>(rows: &mut Vec<M>, new: Vec<M>, pid: fn(&M) -> i32) {
    let mut from = rows.len();
    rows.resize_with(rows.len() + new.len(), M::default);
    let mut to = rows.len();
    for row in new.into_iter().rev() {
        let p = pid(&row);
        while from > 0 && pid(&rows[from - 1]) > p {
            from -= 1;
            to -= 1;
            rows.swap(from, to);
        }
        to -= 1;
        rows[to] = row;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::intern::StreamDecoder;

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
            sampled_at_us: 1_700_000_000_000_000,
            sessions,
            processes,
            ..Default::default()
        }
    }

    /// Sends `wire` through `tx` and `rx`; returns what `rx` restored (as
    /// a wire snapshot, to compare) and the pids that travelled as such.
    fn send(
        tx: &mut SentRows,
        rx: &mut StreamDecoder,
        wire: &pb::Snapshot,
    ) -> (pb::Snapshot, Vec<i32>, Vec<i32>) {
        let mut out = wire.clone();
        let delta = tx.strip(&mut out);
        let lists = (
            out.unchanged_sessions.clone(),
            out.unchanged_processes.clone(),
        );
        assert_eq!(delta, !lists.0.is_empty() || !lists.1.is_empty());
        let got = match delta {
            true => rx.decode_delta(out),
            false => rx.decode(out),
        }
        .unwrap();
        let got = &got.snapshot;
        let got = snapshot(&got.instance, got.sessions.clone(), got.processes.clone());
        (got, lists.0, lists.1)
    }

    #[test]
    fn unchanged_rows_travel_as_pids_and_come_back() {
        let (mut tx, mut rx) = (SentRows::default(), StreamDecoder::default());
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
    fn rows_and_unchanged_pids_are_sent_in_pid_order() {
        let mut tx = SentRows::default();
        let rows = |order: &[i32], active: i32| {
            snapshot(
                "main",
                order
                    .iter()
                    .map(|&p| session(p, if p == active { "active" } else { "idle" }))
                    .collect(),
                order.iter().map(|&p| process(p, 0)).collect(),
            )
        };
        let mut first = rows(&[30, 10, 20, 10], 0);
        assert!(!tx.strip(&mut first));
        let pids = |rows: &[pb::Session]| rows.iter().map(|s| s.pid).collect::<Vec<_>>();
        assert_eq!(
            pids(&first.sessions),
            [10, 10, 20, 30],
            "equal pids keep their order"
        );
        let mut second = rows(&[40, 30, 20, 5], 30);
        assert!(tx.strip(&mut second));
        assert_eq!(pids(&second.sessions), [5, 30, 40]);
        assert_eq!(second.unchanged_sessions, [20]);
        let procs: Vec<i32> = second.processes.iter().map(|p| p.pid).collect();
        assert_eq!(procs, [5, 40]);
        assert_eq!(second.unchanged_processes, [20, 30]);
    }

    #[test]
    fn rows_come_back_in_pid_order_per_instance() {
        let (mut tx, mut rx) = (SentRows::default(), StreamDecoder::default());
        let a = snapshot("a", vec![session(21, "idle"), session(20, "idle")], vec![]);
        let b = snapshot("b", vec![session(20, "active")], vec![]);
        let (got, _, _) = send(&mut tx, &mut rx, &a);
        assert_eq!(got.sessions[0].pid, 20, "sorted");
        send(&mut tx, &mut rx, &b);
        // 21 changed, 20 did not: the delta lists 20 after 21's full row.
        let a2 = snapshot(
            "a",
            vec![session(21, "active"), session(20, "idle")],
            vec![],
        );
        let (got, s, _) = send(&mut tx, &mut rx, &a2);
        assert_eq!(s, vec![20], "compared with a's rows, not b's");
        assert_eq!(
            got.sessions,
            vec![session(20, "idle"), session(21, "active")]
        );
        let (got, s, _) = send(&mut tx, &mut rx, &b);
        assert_eq!(s, vec![20]);
        assert_eq!(got, b);
    }

    #[test]
    fn rows_are_sorted_and_merged_by_pid_keeping_the_order_of_equal_pids() {
        let rows = |pids: &[(i32, u64)]| -> Vec<pb::Process> {
            pids.iter().map(|&(pid, cpu)| process(pid, cpu)).collect()
        };
        let pairs = |rows: &[pb::Process]| -> Vec<(i32, u64)> {
            rows.iter()
                .map(|p| (p.pid, p.utime_us.unwrap_or_default()))
                .collect()
        };
        let mut unsorted = rows(&[(9, 0), (3, 1), (7, 2), (3, 3), (1, 4)]);
        sort_rows(&mut unsorted, |p| p.pid);
        assert_eq!(pairs(&unsorted), [(1, 4), (3, 1), (3, 3), (7, 2), (9, 0)]);
        let mut held = rows(&[(2, 0), (4, 0), (4, 1), (8, 0)]);
        let new = rows(&[(1, 9), (4, 9), (5, 9), (9, 9), (10, 9)]);
        insert_sorted(&mut held, new, |p| p.pid);
        assert_eq!(
            pairs(&held),
            [
                (1, 9),
                (2, 0),
                (4, 0),
                (4, 1),
                (4, 9),
                (5, 9),
                (8, 0),
                (9, 9),
                (10, 9)
            ]
        );
        let mut empty = Vec::new();
        insert_sorted(&mut empty, rows(&[(1, 0)]), |p| p.pid);
        assert_eq!(pairs(&empty), [(1, 0)]);
    }

    #[test]
    fn a_delta_in_any_order_comes_back_merged_in_pid_order() {
        let mut rx = StreamDecoder::default();
        let first = [10, 20, 30, 40].map(|p| session(p, "idle")).to_vec();
        rx.decode(snapshot("main", first, vec![])).unwrap();
        let mut delta = snapshot(
            "main",
            vec![
                session(40, "active"),
                session(25, "active"),
                session(5, "idle"),
            ],
            vec![],
        );
        delta.unchanged_sessions = vec![30, 10];
        let got = rx.decode_delta(delta).unwrap();
        assert_eq!(
            got.snapshot.sessions,
            vec![
                session(5, "idle"),
                session(10, "idle"),
                session(25, "active"),
                session(30, "idle"),
                session(40, "active")
            ],
            "20 is gone, 5 and 25 are new"
        );
        assert_eq!(got.unchanged.sessions, vec![10, 30]);
    }

    #[test]
    fn a_pid_that_occurs_twice_goes_in_full() {
        let (mut tx, mut rx) = (SentRows::default(), StreamDecoder::default());
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
    fn a_pid_the_receiver_does_not_have_is_refused() {
        let mut tx = SentRows::default();
        let s = snapshot("main", vec![session(10, "idle")], vec![process(10, 0)]);
        tx.strip(&mut s.clone());
        let mut delta = s.clone();
        assert!(tx.strip(&mut delta));
        let err = StreamDecoder::default().decode_delta(delta).unwrap_err();
        assert!(
            err.to_string()
                .contains("pid 10 was not in the previous snapshot"),
            "{err}"
        );

        let mut rx = StreamDecoder::default();
        rx.decode(snapshot("main", vec![], vec![process(10, 0)]))
            .unwrap();
        let mut wrong = snapshot("main", vec![], vec![]);
        wrong.unchanged_sessions = vec![10];
        assert!(
            rx.decode_delta(wrong).is_err(),
            "10 was a process, not a session"
        );

        let mut rx = StreamDecoder::default();
        rx.decode(snapshot("main", vec![session(10, "idle")], vec![]))
            .unwrap();
        let mut twice = snapshot("main", vec![], vec![]);
        twice.unchanged_sessions = vec![10, 10];
        assert!(rx.decode_delta(twice).is_err(), "one row cannot come twice");

        let mut rx = StreamDecoder::default();
        rx.decode(snapshot("main", vec![session(10, "idle")], vec![]))
            .unwrap();
        let mut both = snapshot("main", vec![session(10, "active")], vec![]);
        both.unchanged_sessions = vec![10];
        let err = rx.decode_delta(both).unwrap_err();
        assert!(
            err.to_string().contains("both in full and unchanged"),
            "{err}"
        );

        let mut rx = StreamDecoder::default();
        let held_twice = snapshot(
            "main",
            vec![session(10, "idle"), session(10, "active")],
            vec![],
        );
        rx.decode(held_twice).unwrap();
        let mut one = snapshot("main", vec![], vec![]);
        one.unchanged_sessions = vec![10];
        assert!(rx.decode_delta(one).is_err(), "which of the two?");
    }

    #[test]
    fn split_refuses_what_is_not_rows_and_starts_over() {
        let mut tx = SentRows::default();
        let rows = pb::Snapshot {
            sessions: vec![session(10, "idle")],
            ..Default::default()
        }
        .encode_to_vec();
        assert!(!tx.split("main", &rows.clone().into()).unwrap().is_delta());
        let not_rows = pb::Snapshot {
            instance: "main".into(),
            ..Default::default()
        };
        assert!(tx.split("main", &not_rows.encode_to_vec().into()).is_err());
        assert!(
            !tx.split("main", &rows.clone().into()).unwrap().is_delta(),
            "forgotten after an error: the next goes whole"
        );
        let mut cut = rows;
        cut.pop();
        assert!(tx.split("main", &cut.into()).is_err(), "cut short");
        assert!(tx.split("main", &Bytes::new()).unwrap() == Split::default());
    }

    #[test]
    fn a_stream_carries_a_bounded_number_of_instances() {
        use crate::intern::MAX_INSTANCES_PER_STREAM;
        let mut rx = StreamDecoder::default();
        for i in 0..MAX_INSTANCES_PER_STREAM {
            rx.decode(snapshot(&i.to_string(), vec![], vec![])).unwrap();
        }
        assert!(rx.decode(snapshot("0", vec![], vec![])).is_ok(), "known");
        assert!(rx.decode(snapshot("new", vec![], vec![])).is_err());
    }
}
