//! An ingest message as it arrived: its bytes, kept so that the rows it
//! carries in full need not be encoded again.
//!
//! The collector stores a sample's rows as their protobuf encodings, and
//! the rows an agent sends are such encodings already (prost's, field for
//! field the bytes the collector would write). So the collector's `Ingest`
//! server takes each message as bytes ([`Received`], see
//! [`crate::codec::ReceivedCodec`]), decodes it from them as any message
//! is decoded, and hands the store where each row lies ([`RowBytes`]). A
//! row's bytes are offered only where they decode to the row itself: rows
//! whose pid is not the first field, pids that come twice, messages whose
//! rows do not all line up with the decoded ones are left out, and are
//! encoded as before.

use std::ops::Range;

use prost::bytes::Bytes;
use prost::encoding::{decode_key, decode_varint, skip_field, DecodeContext, WireType};
use prost::{DecodeError, Message};

use crate::pb;
use crate::unchanged::{pid as first_pid, PROCESSES, SESSIONS};

/// `pb::AgentMessage.snapshot` and `pb::AgentMessage.delta`.
const SNAPSHOT: u32 = 2;
const DELTA: u32 = 3;

/// One `pb::AgentMessage`, as it came off the stream.
#[derive(Debug, Clone, Default)]
pub struct Received(pub Bytes);

impl Received {
    /// The message.
    pub fn decode(&self) -> Result<pb::AgentMessage, DecodeError> {
        pb::AgentMessage::decode(self.0.as_ref())
    }

    /// Where the rows of `wire` (this message's snapshot or delta, as
    /// decoded, before anything moved its rows) lie in the message: `None`
    /// when they cannot be told apart (the message is not one snapshot
    /// field whose rows line up one to one with `wire`'s).
    pub fn rows(&self, wire: &pb::Snapshot) -> Option<RowBytes> {
        let bytes = &self.0;
        let snapshot = single_snapshot(bytes)?;
        let (mut sessions, mut processes) = (Vec::new(), Vec::new());
        let mut rest = &bytes[snapshot];
        while !rest.is_empty() {
            let (tag, wire_type) = decode_key(&mut rest).ok()?;
            if wire_type == WireType::LengthDelimited && (tag == SESSIONS || tag == PROCESSES) {
                let len = usize::try_from(decode_varint(&mut rest).ok()?).ok()?;
                let start = bytes.len() - rest.len();
                rest = rest.get(len..)?;
                let rows = if tag == SESSIONS {
                    &mut sessions
                } else {
                    &mut processes
                };
                rows.push(start..start + len);
            } else {
                skip_field(wire_type, tag, &mut rest, DecodeContext::default()).ok()?;
            }
        }
        Some(RowBytes {
            sessions: by_pid(bytes, sessions, wire.sessions.iter().map(|s| s.pid))?,
            processes: by_pid(bytes, processes, wire.processes.iter().map(|p| p.pid))?,
            bytes: bytes.clone(),
        })
    }
}

/// The encodings of the rows a message carried in full, by pid.
#[derive(Debug, Clone, Default)]
pub struct RowBytes {
    bytes: Bytes,
    /// (pid, where its row is), sorted by pid, each pid once.
    sessions: Vec<(i32, Range<usize>)>,
    processes: Vec<(i32, Range<usize>)>,
}

impl RowBytes {
    /// The encoding of the session row of `pid`, as it came.
    pub fn session(&self, pid: i32) -> Option<&[u8]> {
        self.find(&self.sessions, pid)
    }

    /// The encoding of the process row of `pid`, as it came.
    pub fn process(&self, pid: i32) -> Option<&[u8]> {
        self.find(&self.processes, pid)
    }

    fn find(&self, rows: &[(i32, Range<usize>)], pid: i32) -> Option<&[u8]> {
        let i = rows.binary_search_by_key(&pid, |(p, _)| *p).ok()?;
        Some(&self.bytes[rows[i].1.clone()])
    }
}

/// Where the one snapshot (or delta) field of an `AgentMessage` lies:
/// `None` unless there is exactly one (protobuf would merge two into one
/// message, whose rows no single field holds).
fn single_snapshot(message: &[u8]) -> Option<Range<usize>> {
    let mut found = None;
    let mut rest = message;
    while !rest.is_empty() {
        let (tag, wire_type) = decode_key(&mut rest).ok()?;
        if tag == SNAPSHOT || tag == DELTA {
            if found.is_some() || wire_type != WireType::LengthDelimited {
                return None;
            }
            let len = usize::try_from(decode_varint(&mut rest).ok()?).ok()?;
            let start = message.len() - rest.len();
            rest = rest.get(len..)?;
            found = Some(start..start + len);
        } else {
            skip_field(wire_type, tag, &mut rest, DecodeContext::default()).ok()?;
        }
    }
    found
}

/// `rows` (where each row of one list lies in `bytes`, in order) paired
/// with the pids of the same list decoded: sorted by pid, without rows
/// that do not start with their decoded pid (the store finds a row's pid
/// as its first field) or whose pid comes twice.
/// `None` when the two lists differ in length.
fn by_pid(
    bytes: &[u8],
    rows: Vec<Range<usize>>,
    pids: impl ExactSizeIterator<Item = i32>,
) -> Option<Vec<(i32, Range<usize>)>> {
    if rows.len() != pids.len() {
        return None;
    }
    let mut paired: Vec<(i32, Range<usize>)> = pids
        .zip(rows)
        .filter(|(pid, row)| first_pid(&bytes[row.clone()]) == Some(*pid))
        .collect();
    if !paired.is_sorted_by_key(|(pid, _)| *pid) {
        paired.sort_by_key(|(pid, _)| *pid);
    }
    let mut kept: Vec<(i32, Range<usize>)> = Vec::with_capacity(paired.len());
    let mut twice = None;
    for (pid, row) in paired {
        if twice == Some(pid) {
            continue;
        }
        if kept.last().is_some_and(|(p, _)| *p == pid) {
            kept.pop();
            twice = Some(pid);
            continue;
        }
        kept.push((pid, row));
    }
    Some(kept)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(pid: i32, query: &str) -> pb::Session {
        pb::Session {
            pid,
            backend_type: "client backend".into(),
            state: Some("active".into()),
            application_name: Some(query.into()),
            ..Default::default()
        }
    }

    fn process(pid: i32) -> pb::Process {
        pb::Process {
            pid,
            title: format!("postgres: {pid}"),
            rss_bytes: Some(1 << 20),
            ..Default::default()
        }
    }

    fn message(kind: pb::agent_message::Kind) -> Received {
        Received(pb::AgentMessage { kind: Some(kind) }.encode_to_vec().into())
    }

    fn snapshot() -> pb::Snapshot {
        pb::Snapshot {
            instance: "main".into(),
            seq: 4,
            sessions: vec![session(30, "c"), session(10, "a"), session(20, "b")],
            processes: vec![process(10), process(30)],
            unchanged_processes: vec![20],
            ..Default::default()
        }
    }

    #[test]
    fn each_row_is_the_encoding_of_the_row_decoded() {
        for kind in [
            pb::agent_message::Kind::Snapshot(snapshot()),
            pb::agent_message::Kind::Delta(snapshot()),
        ] {
            let received = message(kind);
            let decoded = received.decode().unwrap();
            let (pb::agent_message::Kind::Snapshot(wire) | pb::agent_message::Kind::Delta(wire)) =
                decoded.kind.unwrap()
            else {
                panic!("not a snapshot");
            };
            let rows = received.rows(&wire).unwrap();
            for s in &wire.sessions {
                assert_eq!(rows.session(s.pid).unwrap(), s.encode_to_vec());
            }
            for p in &wire.processes {
                assert_eq!(rows.process(p.pid).unwrap(), p.encode_to_vec());
            }
            assert_eq!(rows.process(20), None, "sent as unchanged");
            assert_eq!(rows.session(40), None);
        }
    }

    #[test]
    fn a_pid_that_comes_twice_is_not_offered() {
        let mut wire = snapshot();
        wire.sessions.push(session(20, "again"));
        let received = message(pb::agent_message::Kind::Snapshot(wire.clone()));
        let rows = received.rows(&wire).unwrap();
        assert_eq!(rows.session(20), None);
        assert!(rows.session(10).is_some() && rows.session(30).is_some());
    }

    #[test]
    fn a_row_whose_pid_is_not_its_first_field_is_not_offered() {
        let wire = pb::Snapshot {
            sessions: vec![session(0, "no pid written"), session(7, "x")],
            ..Default::default()
        };
        let received = message(pb::agent_message::Kind::Snapshot(wire.clone()));
        let rows = received.rows(&wire).unwrap();
        assert_eq!(rows.session(0), None);
        assert!(rows.session(7).is_some());
    }

    #[test]
    fn rows_that_do_not_line_up_are_not_offered() {
        let wire = snapshot();
        let received = message(pb::agent_message::Kind::Snapshot(wire.clone()));
        let mut fewer = wire.clone();
        fewer.sessions.pop();
        assert!(received.rows(&fewer).is_none());
        // Two snapshot fields merge into one message when decoded.
        let mut twice = received.0.to_vec();
        twice.extend_from_slice(&received.0);
        let twice = Received(twice.into());
        let merged = twice.decode().unwrap();
        let Some(pb::agent_message::Kind::Snapshot(merged)) = merged.kind else {
            panic!("not a snapshot");
        };
        assert!(twice.rows(&merged).is_none());
        assert!(Received(Bytes::from_static(&[0x12, 0x05, 0x01]))
            .rows(&wire)
            .is_none());
    }
}
