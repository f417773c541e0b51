//! Samples as differences: consecutive samples of an instance mostly
//! repeat each other (an idle session's row and its process do not change
//! from one second to the next), so the store keeps a full sample (a
//! keyframe) at the start of each minute and, after it, only what changed:
//! rows that are new, rows that differ, and the pids that are gone. A row
//! that differs is stored as a field patch against the same pid's row in
//! the base sample (see [`super::patch`]: an active session's counters
//! moved, the rest of its row did not), or in full when the patch is not
//! smaller.
//!
//! A delta names the sample it was taken against (`base_us`), so a sample
//! is rebuilt by following those links back to a keyframe (at most a
//! minute of samples) and applying the changes forward; a sample that
//! arrives out of order is stored as a keyframe and never breaks a chain.
//!
//! Writing encodes each row once ([`Encoded`]): the stored value is put
//! together from those bytes, and the next sample's rows are compared with
//! them byte for byte, walking both samples' rows in pid order, so nothing
//! is decoded or copied row by row. Reading keeps rows encoded, by pid,
//! while it walks a chain ([`Stored`], [`Rows`]): a keyframe's rows are
//! slices of its stored value, a patch applies to the bytes of the row
//! before, and a row is decoded only when a sample is handed out, once
//! for as long as it does not change.
//! Deltas stored before patches existed hold only full rows and read the
//! same way (a build that predates patches would not see patched rows).

use std::collections::BTreeMap;
use std::ops::Range;

use pgtrail_proto::pb;
use pgtrail_proto::received::RowBytes;
use pgtrail_proto::time::Micros;
use pgtrail_proto::unchanged::Unchanged;
use prost::bytes::Bytes;
use prost::encoding::{
    decode_key, decode_varint, encode_key, encode_varint, skip_field, DecodeContext, WireType,
};
use prost::{DecodeError, Message};

use super::patch::{self, Literal, PatchError};
use super::records::StoredSample;

/// `StoredSample`'s field numbers for its rows and patches.
const SESSION_ROWS: u32 = 1;
const PROCESS_ROWS: u32 = 2;
const SESSION_PATCHES: u32 = 11;
const PROCESS_PATCHES: u32 = 12;
const SESSION_ID_PATCHES: u32 = 13;

/// The fields of `pb::Session` that are identifiers, written as they are
/// in its patches: `query_id` (18) and `pg_query_id` (19).
const SESSION_IDS: Literal = 1 << 18 | 1 << 19;

/// Where one kind of row goes in a `StoredSample`.
#[derive(Debug, Clone, Copy)]
struct Tags {
    /// Full rows.
    rows: u32,
    /// Field patches.
    patches: u32,
    /// The fields those patches write as they are.
    literal: Literal,
}

const SESSIONS: Tags = Tags {
    rows: SESSION_ROWS,
    patches: SESSION_ID_PATCHES,
    literal: SESSION_IDS,
};
const PROCESSES: Tags = Tags {
    rows: PROCESS_ROWS,
    patches: PROCESS_PATCHES,
    literal: 0,
};

/// A stored sample as read: everything but its rows decoded, its rows and
/// patches still encoded (slices of the stored value).
#[derive(Debug)]
pub struct Stored {
    /// The sample without rows or patches.
    pub header: StoredSample,
    sessions: Changes,
    processes: Changes,
}

/// One kind of row of a stored sample.
#[derive(Debug, Default)]
struct Changes {
    /// Full rows.
    rows: Vec<Bytes>,
    /// Field patches, each starting with its pid, and the fields each
    /// writes as they are.
    patches: Vec<(Bytes, Literal)>,
}

impl Stored {
    /// Reads a stored value; its rows and patches stay slices of `bytes`.
    pub fn parse(bytes: Bytes) -> Result<Self, DecodeError> {
        let mut head = Vec::new();
        let (mut sessions, mut processes) = (Changes::default(), Changes::default());
        let mut rest: &[u8] = &bytes;
        while !rest.is_empty() {
            let start = bytes.len() - rest.len();
            let (tag, wire_type) = decode_key(&mut rest)?;
            let mut payload = rest;
            skip_field(wire_type, tag, &mut rest, DecodeContext::default())?;
            let end = bytes.len() - rest.len();
            let (list, literal) = match tag {
                SESSION_ROWS => (Some(&mut sessions.rows), None),
                PROCESS_ROWS => (Some(&mut processes.rows), None),
                SESSION_PATCHES => (None, Some((&mut sessions.patches, 0))),
                SESSION_ID_PATCHES => (None, Some((&mut sessions.patches, SESSION_IDS))),
                PROCESS_PATCHES => (None, Some((&mut processes.patches, 0))),
                _ => (None, None),
            };
            if wire_type != WireType::LengthDelimited || (list.is_none() && literal.is_none()) {
                head.extend_from_slice(&bytes[start..end]);
                continue;
            }
            // `skip_field` checked that the length fits.
            let len = decode_varint(&mut payload)? as usize;
            let value = bytes.slice(end - len..end);
            match (list, literal) {
                (Some(list), _) => list.push(value),
                (_, Some((patches, literal))) => patches.push((value, literal)),
                (None, None) => unreachable!("checked above"),
            }
        }
        Ok(Self {
            header: StoredSample::decode(head.as_slice())?,
            sessions,
            processes,
        })
    }
}

/// A sample's rows by pid: encoded, and decoded once asked for.
#[derive(Debug, Default)]
pub struct Rows {
    sessions: BTreeMap<i32, Kept<pb::Session>>,
    processes: BTreeMap<i32, Kept<pb::Process>>,
}

/// A row as read: its encoding, and the row once decoded.
#[derive(Debug)]
struct Kept<M> {
    bytes: Bytes,
    decoded: Option<M>,
}

impl Rows {
    /// Applies a stored sample: a keyframe's rows replace all; a delta's
    /// changes apply to the rows of its base sample, which `self` must
    /// hold. On an error `self` is left part applied.
    pub fn apply(&mut self, stored: &Stored) -> Result<(), PatchError> {
        if stored.header.keyframe {
            self.sessions.clear();
            self.processes.clear();
        }
        apply(
            &mut self.sessions,
            &stored.header.gone_sessions,
            &stored.sessions,
        )?;
        apply(
            &mut self.processes,
            &stored.header.gone_processes,
            &stored.processes,
        )
    }

    /// `header` (a stored sample's) with a copy of these rows, sorted by
    /// pid: a full sample. Rows are decoded once, and stay decoded until a
    /// change replaces them, so a run of samples decodes only what changed.
    pub fn fill(&mut self, header: StoredSample) -> Result<StoredSample, DecodeError> {
        Ok(whole(
            header,
            copies(&mut self.sessions)?,
            copies(&mut self.processes)?,
        ))
    }

    /// As [`Rows::fill`], moving the rows into the sample.
    pub fn into_sample(self, header: StoredSample) -> Result<StoredSample, DecodeError> {
        Ok(whole(
            header,
            decoded(self.sessions)?,
            decoded(self.processes)?,
        ))
    }
}

/// Applies one kind of row's changes to `rows`.
fn apply<M>(
    rows: &mut BTreeMap<i32, Kept<M>>,
    gone: &[i32],
    changes: &Changes,
) -> Result<(), PatchError> {
    for pid in gone {
        rows.remove(pid);
    }
    for row in &changes.rows {
        // Of rows sharing a pid, the last counts.
        let kept = Kept {
            bytes: row.clone(),
            decoded: None,
        };
        rows.insert(patch::first_field(row)? as i32, kept);
    }
    for (p, literal) in &changes.patches {
        let (pid, fields) = patch::pid(p)?;
        let kept = rows.get_mut(&pid).ok_or(PatchError::NoBase(pid))?;
        let mut row = Vec::with_capacity(kept.bytes.len() + fields.len() + 8);
        patch::apply(&kept.bytes, fields, *literal, &mut row)?;
        kept.bytes = row.into();
        kept.decoded = None;
    }
    Ok(())
}

/// Copies of the rows, decoding those not decoded yet.
fn copies<M: Message + Default + Clone>(
    rows: &mut BTreeMap<i32, Kept<M>>,
) -> Result<Vec<M>, DecodeError> {
    rows.values_mut()
        .map(|kept| match &kept.decoded {
            Some(row) => Ok(row.clone()),
            None => {
                let row = M::decode(kept.bytes.as_ref())?;
                kept.decoded = Some(row.clone());
                Ok(row)
            }
        })
        .collect()
}

/// The rows, decoding those not decoded yet.
fn decoded<M: Message + Default>(rows: BTreeMap<i32, Kept<M>>) -> Result<Vec<M>, DecodeError> {
    rows.into_values()
        .map(|kept| match kept.decoded {
            Some(row) => Ok(row),
            None => M::decode(kept.bytes.as_ref()),
        })
        .collect()
}

/// `header` made a full sample of these rows.
fn whole(
    mut header: StoredSample,
    sessions: Vec<pb::Session>,
    processes: Vec<pb::Process>,
) -> StoredSample {
    header.sessions = sessions;
    header.processes = processes;
    header.keyframe = true;
    header.base_us = None;
    header.gone_sessions.clear();
    header.gone_processes.clear();
    header.session_patches.clear();
    header.process_patches.clear();
    header.session_id_patches.clear();
    header
}

/// One encoded row: its pid and where its bytes are.
#[derive(Debug, Clone, PartialEq)]
struct Row {
    pid: i32,
    bytes: Range<usize>,
    /// Copied from the base the sample is encoded against (so equal to
    /// its row of that pid): nothing to compare.
    copied: bool,
}

/// A sample's rows, each encoded once into one buffer.
#[derive(Debug, Default)]
pub struct Encoded {
    bytes: Vec<u8>,
    sessions: Vec<Row>,
    processes: Vec<Row>,
}

impl Encoded {
    /// Encodes a sample's rows, in their order. With `reuse`, the rows it
    /// names as unchanged are copied from the base (whose rows they
    /// equal), when the base has their pid; the rows `received` holds are
    /// copied from there.
    pub fn of(
        sessions: &[pb::Session],
        processes: &[pb::Process],
        reuse: Option<(&Base, &Unchanged)>,
        received: Option<&RowBytes>,
    ) -> Self {
        let mut bytes = Vec::with_capacity(match reuse {
            Some((base, _)) => base.0.bytes.len() + base.0.bytes.len() / 4,
            None => {
                sessions.iter().map(Message::encoded_len).sum::<usize>()
                    + processes.iter().map(Message::encoded_len).sum::<usize>()
            }
        });
        let reuse_sessions = reuse.map(|(b, u)| (&b.0, &b.0.sessions[..], &u.sessions[..]));
        let sessions = encode_rows(
            sessions,
            |s| s.pid,
            reuse_sessions,
            |pid| received.and_then(|r| r.session(pid)),
            &mut bytes,
        );
        let reuse_processes = reuse.map(|(b, u)| (&b.0, &b.0.processes[..], &u.processes[..]));
        let processes = encode_rows(
            processes,
            |p| p.pid,
            reuse_processes,
            |pid| received.and_then(|r| r.process(pid)),
            &mut bytes,
        );
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
            put(SESSIONS.rows, self.row(row), &mut out);
        }
        for row in &self.processes {
            put(PROCESSES.rows, self.row(row), &mut out);
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

    /// The bytes of the row of `pid` among `rows` (of `self`, sorted by
    /// pid).
    #[cfg(test)]
    fn find(&self, rows: &[Row], pid: i32) -> Option<&[u8]> {
        let i = rows.binary_search_by_key(&pid, |r| r.pid).ok()?;
        Some(self.row(&rows[i]))
    }

    fn rows(&self) -> usize {
        self.sessions.len() + self.processes.len()
    }

    fn row(&self, row: &Row) -> &[u8] {
        &self.bytes[row.bytes.clone()]
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
        let gone_sessions = changes(SESSIONS, base, now, &base.sessions, &now.sessions, &mut out);
        let gone_processes = changes(
            PROCESSES,
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
/// by pid, writing the rows of `after` that are new (in full) or differ
/// (as a patch when it is smaller, else in full) under `tags`; returns the
/// pids that are gone.
fn changes(
    tags: Tags,
    base: &Encoded,
    now: &Encoded,
    before: &[Row],
    after: &[Row],
    out: &mut Vec<u8>,
) -> Vec<i32> {
    let mut gone = Vec::new();
    let mut scratch = Vec::new();
    let (mut i, mut j) = (0, 0);
    while i < before.len() || j < after.len() {
        match (before.get(i), after.get(j)) {
            (Some(b), Some(a)) if b.pid == a.pid => {
                let (old, new) = (base.row(b), now.row(a));
                debug_assert!(!a.copied || old == new, "a copied row equals its base");
                if !a.copied && old != new {
                    scratch.clear();
                    let patched = patch::write(a.pid, old, new, tags.literal, &mut scratch).is_ok();
                    if patched && scratch.len() < new.len() {
                        put(tags.patches, &scratch, out);
                    } else {
                        put(tags.rows, new, out);
                    }
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
                put(tags.rows, now.row(a), out);
                j += 1;
            }
            (None, None) => unreachable!("the loop ends first"),
        }
    }
    gone
}

/// Appends `bytes` as field `tag` of a `StoredSample`.
fn put(tag: u32, bytes: &[u8], out: &mut Vec<u8>) {
    encode_key(tag, WireType::LengthDelimited, out);
    encode_varint(bytes.len() as u64, out);
    out.extend_from_slice(bytes);
}

fn encode_row(pid: i32, row: &impl Message, bytes: &mut Vec<u8>) -> Row {
    let start = bytes.len();
    row.encode(bytes).expect("a Vec grows");
    Row {
        pid,
        bytes: start..bytes.len(),
        copied: false,
    }
}

/// Encodes `rows` into `bytes`, in their order; with `reuse` (a base, its
/// rows of this kind, and the sorted pids of the rows that are unchanged
/// since it), an unchanged row the base has is copied from it instead,
/// and a row `received` has the encoding of is copied from there.
fn encode_rows<'r, M: Message + Default + PartialEq>(
    rows: &[M],
    pid: fn(&M) -> i32,
    reuse: Option<(&Encoded, &[Row], &[i32])>,
    received: impl Fn(i32) -> Option<&'r [u8]>,
    bytes: &mut Vec<u8>,
) -> Vec<Row> {
    let mut reuse = reuse.map(|(base, base_rows, unchanged)| {
        (
            base,
            Seek::new(base_rows, |r| r.pid),
            Seek::new(unchanged, |&p| p),
        )
    });
    rows.iter()
        .map(|row| {
            let pid = pid(row);
            let kept = reuse.as_mut().and_then(|(base, base_rows, unchanged)| {
                unchanged.find(pid)?;
                Some(base.row(base_rows.find(pid)?))
            });
            if let Some(kept) = kept {
                return copy_row(pid, kept, true, bytes);
            }
            match received(pid) {
                Some(came) => {
                    debug_assert!(
                        M::decode(came).is_ok_and(|m| &m == row),
                        "decodes to the row"
                    );
                    copy_row(pid, came, false, bytes)
                }
                None => encode_row(pid, row, bytes),
            }
        })
        .collect()
}

/// Finds pids in a list sorted by pid: walking on while they are asked for
/// in order (a sample's rows from a stream are sorted by pid), searching
/// when one is not.
struct Seek<'a, T, F> {
    items: &'a [T],
    pid: F,
    next: usize,
}

impl<'a, T, F: Fn(&T) -> i32> Seek<'a, T, F> {
    fn new(items: &'a [T], pid: F) -> Self {
        Self {
            items,
            pid,
            next: 0,
        }
    }

    #[inline]
    fn find(&mut self, pid: i32) -> Option<&'a T> {
        let key = &self.pid;
        if self.next > 0 && key(&self.items[self.next - 1]) >= pid {
            self.next = self.items.partition_point(|t| key(t) < pid);
        } else {
            while self.items.get(self.next).is_some_and(|t| key(t) < pid) {
                self.next += 1;
            }
        }
        let found = self.items.get(self.next).filter(|t| key(t) == pid)?;
        self.next += 1;
        Some(found)
    }
}

/// Appends a row's bytes as they are; `copied` when they are the base's
/// row of the same pid.
fn copy_row(pid: i32, row: &[u8], copied: bool, bytes: &mut Vec<u8>) -> Row {
    let start = bytes.len();
    bytes.extend_from_slice(row);
    Row {
        pid,
        bytes: start..bytes.len(),
        copied,
    }
}

/// Sorts rows by pid, keeping the last of rows that share one (as
/// [`Rows::apply`] does).
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
        session_patches: Vec::new(),
        process_patches: Vec::new(),
        session_id_patches: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::testing::{Population, Rng};

    #[test]
    fn seek_finds_what_a_search_finds_in_any_order() {
        let pids = [2, 3, 5, 8, 13, 21];
        let asked = [1, 2, 3, 4, 5, 13, 13, 2, 21, 22, 8, 0, 21];
        let mut seek = Seek::new(&pids, |&p| p);
        for pid in asked {
            assert_eq!(
                seek.find(pid).copied(),
                pids.binary_search(&pid).ok().map(|i| pids[i]),
                "pid {pid}"
            );
        }
        assert_eq!(Seek::new(&[] as &[i32], |&p| p).find(1), None);
    }

    #[test]
    fn rows_received_are_stored_as_they_came() {
        let (a, b) = (idle(1, "active"), idle(2, "idle"));
        let (came, wire, rows) = received_with_an_unknown_field(&a, &b);
        assert_eq!(wire.sessions, [a.clone(), b.clone()]);
        let sample = full(wire.sessions.clone(), Vec::new());
        let value = Encoded::of(&wire.sessions, &[], None, Some(&rows)).keyframe(&sample);
        let stored = Stored::parse(value.clone().into()).unwrap();
        let kept: Vec<&[u8]> = stored.sessions.rows.iter().map(AsRef::as_ref).collect();
        assert_eq!(
            kept,
            [came.as_slice(), &b.encode_to_vec()],
            "not encoded again"
        );
        assert_eq!(read(&[value]), [sample]);
    }

    #[test]
    fn unchanged_rows_are_copied_from_the_base() {
        use pgtrail_proto::unchanged::Unchanged;
        let (a, b) = (idle(1, "active"), idle(2, "idle"));
        // The base's row 1 carries a field this build does not know, so
        // its stored bytes are not what encoding the decoded row gives.
        let (came, wire, rows) = received_with_an_unknown_field(&a, &b);
        let base = Encoded::of(&wire.sessions, &[], None, Some(&rows)).into_base();
        // The next sample: row 1 moved over unchanged, row 2 changed.
        let b2 = idle(2, "active");
        let next = [a.clone(), b2.clone()];
        let stored_rows = |unchanged: Vec<i32>| {
            let unchanged = Unchanged {
                sessions: unchanged,
                ..Default::default()
            };
            let encoded = Encoded::of(&next, &[], Some((&base, &unchanged)), None);
            let value = encoded.keyframe(&full(next.to_vec(), Vec::new()));
            let stored = Stored::parse(value.into()).unwrap();
            stored
                .sessions
                .rows
                .iter()
                .map(|r| r.to_vec())
                .collect::<Vec<_>>()
        };
        assert_eq!(
            stored_rows(vec![1]),
            [came.clone(), b2.encode_to_vec()],
            "row 1 copied from the base, row 2 encoded"
        );
        assert_eq!(
            stored_rows(Vec::new()),
            [a.encode_to_vec(), b2.encode_to_vec()],
            "not named unchanged: encoded"
        );
    }

    /// A message of sessions `a` and `b` as another sender might write
    /// it: `a`'s row with a field this build does not know, which decoding
    /// drops. Returns that row's bytes, the decoded snapshot and where its
    /// rows lie.
    fn received_with_an_unknown_field(
        a: &pb::Session,
        b: &pb::Session,
    ) -> (Vec<u8>, pb::Snapshot, RowBytes) {
        use pgtrail_proto::received::Received;
        use prost::encoding::encode_varint;
        let mut came = a.encode_to_vec();
        encode_key(999, WireType::Varint, &mut came);
        encode_varint(5, &mut came);
        let mut snapshot = Vec::new();
        for row in [came.as_slice(), &b.encode_to_vec()] {
            put(7, row, &mut snapshot); // pb::Snapshot.sessions
        }
        let mut message = Vec::new();
        put(2, &snapshot, &mut message); // pb::AgentMessage.snapshot
        let received = Received(message.into());
        let Some(pb::agent_message::Kind::Snapshot(wire)) = received.decode().unwrap().kind else {
            panic!("a snapshot");
        };
        let rows = received.rows(&wire).unwrap();
        (came, wire, rows)
    }

    fn idle(pid: i32, state: &str) -> pb::Session {
        pb::Session {
            pid,
            backend_type: "client backend".into(),
            state: Some(state.into()),
            ..Default::default()
        }
    }

    fn rss(pid: i32, rss: u64) -> pb::Process {
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

    fn keyframe(a: &StoredSample) -> Vec<u8> {
        Encoded::of(&a.sessions, &a.processes, None, None).keyframe(a)
    }

    /// `b` stored against `a` (taken at 100).
    fn delta(a: &StoredSample, b: &StoredSample) -> Vec<u8> {
        let base = Encoded::of(&a.sessions, &a.processes, None, None).into_base();
        base.delta(
            100,
            &Encoded::of(&b.sessions, &b.processes, None, None).into_base(),
            b,
        )
    }

    /// The full samples a chain of stored values reads back as.
    fn read(values: &[Vec<u8>]) -> Vec<StoredSample> {
        let mut rows = Rows::default();
        values
            .iter()
            .map(|v| {
                let stored = Stored::parse(Bytes::from(v.clone())).unwrap();
                rows.apply(&stored).unwrap();
                rows.fill(stored.header).unwrap()
            })
            .collect()
    }

    /// `s` as it reads back: a keyframe, its rows by pid (of rows sharing
    /// one, the last).
    fn whole(s: &StoredSample) -> StoredSample {
        let sessions: BTreeMap<i32, pb::Session> =
            s.sessions.iter().map(|r| (r.pid, r.clone())).collect();
        let processes: BTreeMap<i32, pb::Process> =
            s.processes.iter().map(|r| (r.pid, r.clone())).collect();
        StoredSample {
            sessions: sessions.into_values().collect(),
            processes: processes.into_values().collect(),
            keyframe: true,
            ..s.clone()
        }
    }

    #[test]
    fn query_ids_are_patched_as_they_are_and_older_patches_still_apply() {
        let with = |query_id: u64, state: &str| pb::Session {
            query_id: Some(query_id),
            pg_query_id: Some(query_id as i64 >> 1),
            ..idle(1, state)
        };
        let a = full(vec![with(0x9e37_79b9_7f4a_7c15, "idle")], vec![]);
        let b = full(vec![with(0x9e37_79b9_7f4a_7c16, "active")], vec![]);
        let stored = StoredSample::decode(delta(&a, &b).as_slice()).unwrap();
        // Tags 18 and 19 are the ids.
        let key = |tag| {
            let mut key = Vec::new();
            encode_key(tag, WireType::Varint, &mut key);
            key
        };
        let only = |query_id, pg_query_id| pb::Session {
            query_id,
            pg_query_id,
            ..Default::default()
        };
        assert!(only(Some(1), None).encode_to_vec().starts_with(&key(18)));
        assert!(only(None, Some(1)).encode_to_vec().starts_with(&key(19)));
        let [patch] = stored.session_id_patches.as_slice() else {
            panic!("one patch: {stored:?}");
        };
        // Both ids whole: 8 bytes of the query id's varint and more.
        assert!(patch.len() > 2 * 8, "{} bytes", patch.len());

        // As a build of format 4 wrote it: differences, in field 11.
        let (old, new) = (a.sessions[0].encode_to_vec(), b.sessions[0].encode_to_vec());
        let mut differenced = Vec::new();
        patch::write(1, &old, &new, 0, &mut differenced).unwrap();
        assert!(differenced.len() < patch.len());
        let older = StoredSample {
            session_patches: vec![differenced],
            base_us: Some(100),
            ..Default::default()
        };
        let rebuilt = read(&[keyframe(&a), older.encode_to_vec()]);
        assert_eq!(rebuilt[1].sessions, b.sessions);
    }

    #[test]
    fn a_delta_holds_only_what_changed_and_rebuilds_the_sample() {
        let mut wide = rss(5, 50);
        wide.title = "postgres: app db 10.0.0.1(5000) idle".into();
        wide.utime_us = Some(1_000_000);
        let a = full(
            vec![idle(1, "idle"), idle(2, "idle"), idle(3, "active")],
            vec![rss(1, 10), rss(2, 20), rss(3, 30), wide.clone()],
        );
        wide.utime_us = Some(1_000_700);
        let mut b = full(
            vec![idle(4, "active"), idle(1, "idle"), idle(3, "idle")],
            vec![rss(1, 10), rss(3, 31), rss(4, 40), wide],
        );
        b.seq = 7;
        b.blind_spots = vec!["io".into()];
        let bytes = delta(&a, &b);
        let stored = StoredSample::decode(bytes.as_slice()).unwrap();
        assert!(!stored.keyframe);
        assert_eq!(stored.base_us, Some(100));
        assert_eq!(
            (stored.seq, stored.blind_spots.clone()),
            (7, vec!["io".into()])
        );
        let pids: Vec<i32> = stored.sessions.iter().map(|s| s.pid).collect();
        assert_eq!(pids, vec![4], "session 1 did not change, 3 is patched");
        assert_eq!(stored.session_id_patches.len(), 1);
        assert_eq!(patch::pid(&stored.session_id_patches[0]).unwrap().0, 3);
        assert_eq!(stored.gone_sessions, vec![2]);
        // Process 3's patch would be as long as its row.
        let pids: Vec<i32> = stored.processes.iter().map(|p| p.pid).collect();
        assert_eq!(pids, vec![3, 4]);
        assert_eq!(stored.process_patches.len(), 1);
        assert_eq!(patch::pid(&stored.process_patches[0]).unwrap().0, 5);
        assert!(stored.process_patches[0].len() < 8);
        assert_eq!(stored.gone_processes, vec![2]);

        let rebuilt = read(&[keyframe(&a), bytes]);
        assert_eq!(rebuilt[0], whole(&a));
        assert_eq!(rebuilt[1], whole(&b));
        assert!(rebuilt[1].session_id_patches.is_empty() && rebuilt[1].base_us.is_none());
    }

    #[test]
    fn an_unchanged_sample_is_an_empty_delta() {
        let a = full(vec![idle(1, "idle")], vec![rss(1, 10)]);
        let stored = StoredSample::decode(delta(&a, &a).as_slice()).unwrap();
        assert!(stored.sessions.is_empty() && stored.processes.is_empty());
        assert!(stored.session_id_patches.is_empty() && stored.process_patches.is_empty());
        assert!(stored.gone_sessions.is_empty() && stored.gone_processes.is_empty());
    }

    #[test]
    fn a_keyframe_keeps_every_row_in_order() {
        let mut a = full(
            vec![idle(9, "idle"), idle(2, "active"), idle(9, "active")],
            vec![rss(5, 50), rss(1, 10)],
        );
        a.keyframe = false;
        a.seq = 3;
        a.sessions_total = Some(12);
        let stored = StoredSample::decode(keyframe(&a).as_slice()).unwrap();
        a.keyframe = true;
        assert_eq!(stored, a);
        assert_eq!(read(&[keyframe(&a)])[0], whole(&a));
    }

    #[test]
    fn of_rows_sharing_a_pid_the_last_counts() {
        let a = full(vec![idle(1, "idle"), idle(1, "active")], vec![]);
        let b = full(vec![idle(1, "active")], vec![]);
        let same = StoredSample::decode(delta(&a, &b).as_slice()).unwrap();
        assert!(same.sessions.is_empty() && same.session_id_patches.is_empty());
        let back = read(&[keyframe(&b), delta(&b, &a)]);
        assert_eq!(back[1], whole(&a));
    }

    #[test]
    fn a_chain_mixing_patches_and_full_rows_rebuilds_every_sample() {
        let mut rng = Rng(3);
        let mut backends = Population::default();
        let (mut patches, mut changed_rows) = (0, 0);
        for chain in 0..20 {
            let mut values: Vec<Vec<u8>> = Vec::new();
            let mut samples: Vec<StoredSample> = Vec::new();
            for step in 0..30 {
                let mut sample = backends.step(&mut rng);
                sample.seq = (chain * 30 + step) as u64;
                let value = match samples.last() {
                    None => keyframe(&sample),
                    Some(before) => delta(before, &sample),
                };
                let stored = StoredSample::decode(value.as_slice()).unwrap();
                patches += stored.session_id_patches.len() + stored.process_patches.len();
                changed_rows += stored.sessions.len() + stored.processes.len();
                values.push(value);
                samples.push(sample);
            }
            let rebuilt = read(&values);
            for (i, (got, want)) in rebuilt.iter().zip(&samples).enumerate() {
                assert_eq!(got, &whole(want), "chain {chain}, sample {i}");
            }
        }
        assert!(
            patches > 1000 && changed_rows > 500,
            "{patches} {changed_rows}"
        );
    }

    #[test]
    fn a_delta_of_full_rows_only_reads_as_before() {
        // As deltas were stored before patches: every changed row in full.
        let a = full(
            vec![idle(1, "idle"), idle(2, "idle")],
            vec![rss(1, 10), rss(2, 20)],
        );
        let b = StoredSample {
            sessions: vec![idle(2, "active"), idle(3, "active")],
            processes: vec![rss(2, 21)],
            keyframe: false,
            base_us: Some(100),
            gone_processes: vec![1],
            seq: 2,
            ..Default::default()
        };
        let rebuilt = read(&[keyframe(&a), b.encode_to_vec()]);
        let want = full(
            vec![idle(1, "idle"), idle(2, "active"), idle(3, "active")],
            vec![rss(2, 21)],
        );
        assert_eq!(rebuilt[1], StoredSample { seq: 2, ..want });
    }

    #[test]
    fn a_patch_without_its_row_is_an_error() {
        let a = full(vec![idle(1, "idle")], vec![]);
        let b = full(vec![idle(1, "a much longer state than before")], vec![]);
        let patched = delta(&a, &b);
        let mut rows = Rows::default();
        let empty = Stored::parse(keyframe(&full(vec![], vec![])).into()).unwrap();
        rows.apply(&empty).unwrap();
        let stored = Stored::parse(patched.clone().into()).unwrap();
        assert_eq!(rows.apply(&stored), Err(PatchError::NoBase(1)));
        assert!(Stored::parse(patched[..patched.len() - 1].to_vec().into()).is_err());
    }

    #[test]
    fn rows_named_unchanged_are_copied_from_the_base() {
        let a = full(vec![idle(1, "idle"), idle(2, "idle")], vec![rss(1, 10)]);
        let base = Encoded::of(&a.sessions, &a.processes, None, None).into_base();
        let all = Unchanged {
            since: Some(100),
            sessions: vec![1, 2],
            processes: vec![1],
            ..Default::default()
        };
        let fresh = Encoded::of(&a.sessions, &a.processes, None, None);
        let reused = Encoded::of(&a.sessions, &a.processes, Some((&base, &all)), None);
        assert_eq!(reused.bytes, fresh.bytes);
        let places =
            |rows: &[Row]| -> Vec<_> { rows.iter().map(|r| (r.pid, r.bytes.clone())).collect() };
        assert_eq!(places(&reused.sessions), places(&fresh.sessions));
        assert!(reused.sessions.iter().all(|r| r.copied));
        assert!(!fresh.sessions.iter().any(|r| r.copied));

        // The hint is trusted: the row of a pid named unchanged is the
        // base's; others, and pids the base lacks, are encoded.
        let b = full(
            vec![idle(1, "active"), idle(2, "active"), idle(3, "idle")],
            vec![rss(1, 20)],
        );
        let some = Unchanged {
            sessions: vec![1, 3],
            ..all
        };
        let got = Encoded::of(&b.sessions, &b.processes, Some((&base, &some)), None).into_base();
        let decoded = |pid| pb::Session::decode(got.0.find(&got.0.sessions, pid).unwrap()).unwrap();
        assert_eq!(decoded(1), a.sessions[0], "copied");
        assert_eq!(decoded(2), b.sessions[1], "encoded");
        assert_eq!(decoded(3), b.sessions[2], "not in the base: encoded");
        let process = got.0.find(&got.0.processes, 1).unwrap();
        assert_eq!(pb::Process::decode(process).unwrap(), a.processes[0]);
    }
}
