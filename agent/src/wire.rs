//! A snapshot's protobuf form with its rows encoded once.
//!
//! The rows (`sessions` and `processes`, nearly all of a snapshot's bytes)
//! are the same wherever a snapshot goes; only the fields around them
//! differ: the spool's records carry every query text and the facts, a
//! stream carries the texts and facts new on it. So the rows are encoded
//! once into [`Rows`], and each destination writes its own [`Head`] around
//! them.
//!
//! A `pb::Snapshot` is written in field order, and the rows are fields 7
//! and 8, adjacent: [`Head::encode`] writes fields 1 to 6, the rows, then
//! fields 9 to 14, byte for byte what `prost` writes for the whole message.
//!
//! On a stream, rows that did not change since the instance's previous
//! snapshot on it go as their pids ([`Rows::changed`], see
//! `pgtrail_proto::unchanged`); the spool keeps every row.

use pgtrail_proto::unchanged::SentRows;
use pgtrail_proto::{pb, ProtocolError};
use prost::bytes::{BufMut, Bytes};
use prost::encoding::message;
use prost::Message;

/// `pb::Snapshot.sessions`.
const SESSIONS: u32 = 7;
/// `pb::Snapshot.processes`.
const PROCESSES: u32 = 8;

/// A snapshot's sessions and processes as protobuf fields 7 and 8: on their
/// own a valid `pb::Snapshot` holding only its rows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rows(Bytes);

impl Rows {
    /// Encodes `sessions` and `processes`.
    pub fn encode(sessions: &[pb::Session], processes: &[pb::Process]) -> Self {
        let len = message::encoded_len_repeated(SESSIONS, sessions)
            + message::encoded_len_repeated(PROCESSES, processes);
        let mut buf = Vec::with_capacity(len);
        message::encode_repeated(SESSIONS, sessions, &mut buf);
        message::encode_repeated(PROCESSES, processes, &mut buf);
        Self(buf.into())
    }

    /// The encoded fields.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The rows that changed since the rows last sent for `wire`'s instance
    /// on a stream; the pids of the others go into `wire`'s
    /// `unchanged_sessions` and `unchanged_processes`. On an error (these
    /// are not rows) nothing is left out and the error is returned.
    pub fn changed(
        &self,
        sent: &mut SentRows,
        wire: &mut pb::Snapshot,
    ) -> Result<Self, ProtocolError> {
        let split = sent.split(&wire.instance, &self.0)?;
        wire.unchanged_sessions = split.unchanged_sessions;
        wire.unchanged_processes = split.unchanged_processes;
        Ok(Self(split.changed))
    }

    /// Decodes the sessions and processes back.
    pub fn decode(&self) -> Result<(Vec<pb::Session>, Vec<pb::Process>), prost::DecodeError> {
        let rows = pb::Snapshot::decode(self.0.clone())?;
        Ok((rows.sessions, rows.processes))
    }
}

/// Every field of a `pb::Snapshot` but its rows, split where the rows go.
#[derive(Debug, Clone, PartialEq)]
pub struct Head {
    /// Fields 1 to 6 (instance to `reset_queries`).
    front: pb::Snapshot,
    /// Fields 9 to 14 (`dropped_before` to `unchanged_processes`).
    back: pb::Snapshot,
}

impl Head {
    /// The head of `wire`, whose rows are left out (they are written from
    /// [`Rows`]).
    pub fn new(mut wire: pb::Snapshot) -> Self {
        let back = pb::Snapshot {
            dropped_before: std::mem::take(&mut wire.dropped_before),
            blind_spots: std::mem::take(&mut wire.blind_spots),
            memory: wire.memory.take(),
            sessions_total: wire.sessions_total.take(),
            unchanged_sessions: std::mem::take(&mut wire.unchanged_sessions),
            unchanged_processes: std::mem::take(&mut wire.unchanged_processes),
            ..Default::default()
        };
        wire.sessions = Vec::new();
        wire.processes = Vec::new();
        Self { front: wire, back }
    }

    /// Whether rows were left out as unchanged: the message is a `delta`.
    pub fn is_delta(&self) -> bool {
        !self.back.unchanged_sessions.is_empty() || !self.back.unchanged_processes.is_empty()
    }

    /// The length of the whole message with `rows`.
    pub fn encoded_len(&self, rows: &Rows) -> usize {
        self.front.encoded_len() + rows.0.len() + self.back.encoded_len()
    }

    /// Writes the whole message with `rows`, without a length prefix.
    pub fn encode(&self, rows: &Rows, buf: &mut impl BufMut) {
        self.front.encode_raw(buf);
        buf.put_slice(&rows.0);
        self.back.encode_raw(buf);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A snapshot with every field set, so that a field written out of
    /// order would show.
    fn full() -> pb::Snapshot {
        pb::Snapshot {
            instance: "main".into(),
            seq: 7,
            sampled_at_us: 1_700_000_000_000_000,
            facts: Some(pb::InstanceFacts {
                max_connections: Some(100),
                port: 5432,
                ..Default::default()
            }),
            queries: vec![pb::QueryText {
                id: 42,
                text: "select 1".into(),
            }],
            reset_queries: true,
            sessions: vec![
                pb::Session {
                    pid: 10,
                    backend_type: "client backend".into(),
                    query_id: Some(42),
                    blocking_pids: vec![11, 12],
                    ..Default::default()
                },
                pb::Session {
                    pid: 11,
                    ..Default::default()
                },
            ],
            processes: vec![pb::Process {
                pid: 10,
                ppid: 1,
                title: "postgres: main".into(),
                rss_bytes: Some(1 << 20),
                ..Default::default()
            }],
            dropped_before: 3,
            blind_spots: vec!["io of other users".into()],
            memory: Some(pb::MemoryUsage {
                host_available_bytes: Some(1 << 30),
                ..Default::default()
            }),
            sessions_total: Some(99),
            unchanged_sessions: vec![12, 13],
            unchanged_processes: vec![14],
        }
    }

    #[test]
    fn head_and_rows_write_what_prost_writes() {
        let wire = full();
        let rows = Rows::encode(&wire.sessions, &wire.processes);
        let head = Head::new(wire.clone());
        let mut buf = Vec::new();
        head.encode(&rows, &mut buf);
        assert_eq!(buf, wire.encode_to_vec());
        assert_eq!(head.encoded_len(&rows), buf.len());
        assert_eq!(rows.decode().unwrap(), (wire.sessions, wire.processes));
    }

    #[test]
    fn empty_rows_and_defaults_write_what_prost_writes() {
        let wire = pb::Snapshot {
            instance: "x".into(),
            sampled_at_us: 1,
            ..Default::default()
        };
        let rows = Rows::encode(&[], &[]);
        let mut buf = Vec::new();
        Head::new(wire.clone()).encode(&rows, &mut buf);
        assert_eq!(buf, wire.encode_to_vec());
    }
}
