//! Query texts (and unchanged facts) travel once per stream.
//!
//! The sender keeps a [`StreamEncoder`]: it turns a self-contained
//! [`Snapshot`] into a [`pb::Snapshot`] that carries only the texts not yet
//! sent on the stream. The receiver keeps a [`StreamDecoder`]: it remembers
//! the texts a stream sent and turns each [`pb::Snapshot`] back into a
//! self-contained [`Snapshot`], rejecting references to texts never sent.
//!
//! Both sides are bounded. When the encoder has sent
//! [`DEFAULT_MAX_TEXTS_PER_STREAM`] texts it forgets them all and sets
//! `reset_queries` on the next snapshot; the decoder forgets too. A stream
//! that piles up more than [`MAX_TEXTS_PER_STREAM`] without a reset is
//! refused.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use crate::model::{QueryTexts, Snapshot};
use crate::unchanged::{self, Unchanged};
use crate::{pb, ProtocolError};
use std::sync::atomic::{AtomicU64, Ordering};

/// How many texts an encoder remembers before it starts over.
pub const DEFAULT_MAX_TEXTS_PER_STREAM: usize = 50_000;

/// How many texts a decoder accepts between resets.
pub const MAX_TEXTS_PER_STREAM: usize = 4 * DEFAULT_MAX_TEXTS_PER_STREAM;

/// The longest query text accepted, in bytes.
pub const MAX_TEXT_LEN: usize = 1 << 20;

/// Sender side: which texts, and which facts per instance, this stream has
/// sent. A snapshot's facts travel only when they differ from the last ones
/// sent for its instance on the stream.
#[derive(Debug)]
pub struct StreamEncoder {
    sent: HashSet<u64>,
    max: usize,
    facts: HashMap<String, pb::InstanceFacts>,
}

impl Default for StreamEncoder {
    fn default() -> Self {
        Self::with_capacity(DEFAULT_MAX_TEXTS_PER_STREAM)
    }
}

impl StreamEncoder {
    /// An encoder that starts over after `max` texts.
    pub fn with_capacity(max: usize) -> Self {
        Self {
            sent: HashSet::new(),
            max: max.max(1),
            facts: HashMap::new(),
        }
    }

    /// The wire form of `snapshot`, carrying only texts new on this stream.
    pub fn encode(&mut self, snapshot: &Snapshot) -> pb::Snapshot {
        let mut reset = false;
        if self.sent.len() + snapshot.queries.len() > self.max {
            self.sent.clear();
            reset = true;
        }
        let mut queries: Vec<pb::QueryText> = snapshot
            .queries
            .iter()
            .filter(|(id, _)| self.sent.insert(**id))
            .map(|(id, text)| pb::QueryText {
                id: *id,
                text: text.to_string(),
            })
            .collect();
        queries.sort_unstable_by_key(|q| q.id);
        let facts = snapshot.facts.as_ref().filter(|f| {
            let changed = self.facts.get(&snapshot.instance) != Some(*f);
            if changed {
                self.facts.insert(snapshot.instance.clone(), (*f).clone());
            }
            changed
        });
        pb::Snapshot {
            instance: snapshot.instance.clone(),
            seq: snapshot.seq,
            sampled_at_us: snapshot.sampled_at,
            facts: facts.cloned(),
            queries,
            reset_queries: reset,
            sessions: snapshot.sessions.clone(),
            processes: snapshot.processes.clone(),
            dropped_before: snapshot.dropped_before,
            blind_spots: snapshot.blind_spots.clone(),
            memory: snapshot.memory,
            sessions_total: snapshot.sessions_total,
            unchanged_sessions: Vec::new(),
            unchanged_processes: Vec::new(),
        }
    }
}

/// How many instances one stream may carry: the receiver keeps the
/// previous snapshot of each.
pub const MAX_INSTANCES_PER_STREAM: usize = 1024;

/// How many rows (sessions and processes, over all its instances) the
/// receiver keeps for one stream: those of one instance at the most
/// [`crate::model::MAX_ROWS`] each.
pub const MAX_ROWS_PER_STREAM: usize = 2 * crate::model::MAX_ROWS;

/// Receiver side: the texts this stream has sent, and the previous
/// snapshot of each instance on it (whose rows a `delta` refers to, see
/// [`crate::unchanged`]). Each decoder has a number of its own, unique in
/// the process, that names its stream in [`Unchanged::stream`].
#[derive(Debug)]
pub struct StreamDecoder {
    stream: u64,
    known: foldhash::HashMap<u64, Arc<str>>,
    last: HashMap<String, Decoded>,
    /// The rows `last` holds.
    held: usize,
}

impl Default for StreamDecoder {
    fn default() -> Self {
        static STREAMS: AtomicU64 = AtomicU64::new(1);
        Self {
            stream: STREAMS.fetch_add(1, Ordering::Relaxed),
            known: foldhash::HashMap::default(),
            last: HashMap::new(),
            held: 0,
        }
    }
}

/// A snapshot as it came out of a stream.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Decoded {
    /// The snapshot, self-contained, rows sorted by pid.
    pub snapshot: Snapshot,
    /// Its rows that a `delta` moved over from the snapshot before.
    pub unchanged: Unchanged,
}

impl StreamDecoder {
    /// Learns the texts `wire` (a `snapshot` message, every row in full)
    /// carries and returns the self-contained, validated snapshot, rows
    /// sorted by pid. The decoder keeps it until the next snapshot of its
    /// instance.
    pub fn decode(&mut self, wire: pb::Snapshot) -> Result<&Decoded, ProtocolError> {
        if !wire.unchanged_sessions.is_empty() || !wire.unchanged_processes.is_empty() {
            return Err(ProtocolError::Unexpected(
                "unchanged rows in a snapshot that is not a delta",
            ));
        }
        self.decode_delta(wire)
    }

    /// As [`StreamDecoder::decode`], for a `delta` message: its unchanged
    /// rows are moved over from the previous snapshot of its instance.
    pub fn decode_delta(&mut self, mut wire: pb::Snapshot) -> Result<&Decoded, ProtocolError> {
        if wire.reset_queries {
            self.known.clear();
        }
        for q in std::mem::take(&mut wire.queries) {
            if q.text.len() > MAX_TEXT_LEN {
                return Err(ProtocolError::Invalid {
                    field: "queries.text",
                    reason: format!("longer than {MAX_TEXT_LEN} bytes"),
                });
            }
            self.known.insert(q.id, q.text.into());
        }
        if self.known.len() > MAX_TEXTS_PER_STREAM {
            return Err(ProtocolError::Invalid {
                field: "queries",
                reason: format!("more than {MAX_TEXTS_PER_STREAM} texts without a reset"),
            });
        }
        let (key, previous) = match self.last.remove_entry(&wire.instance) {
            Some((key, previous)) => (key, previous),
            None if self.last.len() >= MAX_INSTANCES_PER_STREAM => {
                return Err(ProtocolError::Invalid {
                    field: "instance",
                    reason: format!("more than {MAX_INSTANCES_PER_STREAM} instances on one stream"),
                })
            }
            None => (wire.instance.clone(), Decoded::default()),
        };
        let since =
            (!previous.snapshot.instance.is_empty()).then_some(previous.snapshot.sampled_at);
        let previous = previous.snapshot;
        self.held -= previous.sessions.len() + previous.processes.len();
        unchanged::restore(
            &mut wire.sessions,
            &mut wire.unchanged_sessions,
            previous.sessions,
            |s| s.pid,
            "unchanged_sessions",
        )?;
        unchanged::restore(
            &mut wire.processes,
            &mut wire.unchanged_processes,
            previous.processes,
            |p| p.pid,
            "unchanged_processes",
        )?;
        let mut queries =
            QueryTexts::with_capacity_and_hasher(previous.queries.len(), Default::default());
        for s in &wire.sessions {
            if let Some(id) = s.query_id {
                let text = self
                    .known
                    .get(&id)
                    .ok_or(ProtocolError::UnknownQuery { pid: s.pid, id })?;
                queries.insert(id, text.clone());
            }
        }
        let snapshot = Snapshot {
            instance: wire.instance,
            seq: wire.seq,
            sampled_at: wire.sampled_at_us,
            facts: wire.facts,
            sessions: wire.sessions,
            processes: wire.processes,
            queries,
            dropped_before: wire.dropped_before,
            blind_spots: wire.blind_spots,
            memory: wire.memory,
            sessions_total: wire.sessions_total,
        };
        snapshot.validate()?;
        let rows = snapshot.sessions.len() + snapshot.processes.len();
        if self.held + rows > MAX_ROWS_PER_STREAM {
            return Err(ProtocolError::Invalid {
                field: "sessions",
                reason: format!("more than {MAX_ROWS_PER_STREAM} rows on one stream"),
            });
        }
        self.held += rows;
        // Sorted by `restore`.
        let unchanged = Unchanged {
            stream: self.stream,
            since,
            sessions: wire.unchanged_sessions,
            processes: wire.unchanged_processes,
        };
        let decoded = Decoded {
            snapshot,
            unchanged,
        };
        Ok(self.last.entry(key).insert_entry(decoded).into_mut())
    }

    /// A snapshot that needs no stream (every text it refers to, every
    /// row in full), such as a spool record: decoded and validated.
    pub fn decode_alone(wire: pb::Snapshot) -> Result<Snapshot, ProtocolError> {
        let mut decoder = Self::default();
        let instance = wire.instance.clone();
        decoder.decode(wire)?;
        let decoded = decoder.last.remove(&instance).expect("decoded just now");
        Ok(decoded.snapshot)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::query_hash;
    use crate::unchanged::SentRows;

    fn snapshot(seq: u64, texts: &[&str]) -> Snapshot {
        let mut s = Snapshot {
            instance: "main".into(),
            seq,
            sampled_at: 1_700_000_000_000_000 + seq as i64,
            ..Default::default()
        };
        for (i, t) in texts.iter().enumerate() {
            let id = query_hash(t);
            s.queries.insert(id, (*t).into());
            s.sessions.push(pb::Session {
                pid: 100 + i as i32,
                query_id: Some(id),
                ..Default::default()
            });
        }
        s
    }

    #[test]
    fn a_text_travels_once_per_stream() {
        let mut tx = StreamEncoder::default();
        let mut rx = StreamDecoder::default();
        let first = snapshot(1, &["select 1", "select 2"]);
        let wire = tx.encode(&first);
        assert_eq!(wire.queries.len(), 2);
        assert_eq!(rx.decode(wire).unwrap().snapshot, first);

        let second = snapshot(2, &["select 2", "select 3"]);
        let wire = tx.encode(&second);
        assert_eq!(wire.queries.len(), 1, "only the new text travels");
        assert_eq!(rx.decode(wire).unwrap().snapshot, second);
    }

    #[test]
    fn facts_travel_when_they_change() {
        let mut tx = StreamEncoder::default();
        let mut s = snapshot(1, &[]);
        s.facts = Some(pb::InstanceFacts {
            max_connections: Some(100),
            ..Default::default()
        });
        assert!(tx.encode(&s).facts.is_some());
        assert!(tx.encode(&s).facts.is_none(), "unchanged: not resent");
        s.facts.as_mut().unwrap().max_connections = Some(200);
        assert!(tx.encode(&s).facts.is_some());
        assert!(
            StreamEncoder::default().encode(&s).facts.is_some(),
            "new stream"
        );
    }

    #[test]
    fn a_new_stream_must_resend() {
        let mut tx = StreamEncoder::default();
        tx.encode(&snapshot(1, &["select 1"]));
        let wire = tx.encode(&snapshot(2, &["select 1"]));
        let err = StreamDecoder::default().decode(wire).unwrap_err();
        assert!(matches!(err, ProtocolError::UnknownQuery { .. }));
    }

    #[test]
    fn the_encoder_starts_over_when_full() {
        let mut tx = StreamEncoder::with_capacity(2);
        let mut rx = StreamDecoder::default();
        rx.decode(tx.encode(&snapshot(1, &["a", "b"]))).unwrap();
        let wire = tx.encode(&snapshot(2, &["b", "c"]));
        assert!(wire.reset_queries);
        assert_eq!(wire.queries.len(), 2);
        rx.decode(wire).unwrap();
        assert_eq!(rx.known.len(), 2);
    }

    #[test]
    fn unchanged_rows_come_only_in_a_delta() {
        let mut tx = StreamEncoder::with_capacity(2);
        let mut rows = SentRows::default();
        let mut rx = StreamDecoder::default();
        let mut first = tx.encode(&snapshot(1, &["a", "b"]));
        assert!(!rows.strip(&mut first), "the first goes whole");
        rx.decode(first).unwrap();

        // The encoder starts its texts over; the rows did not change.
        let second = snapshot(2, &["a", "b"]);
        let mut wire = tx.encode(&second);
        assert!(wire.reset_queries);
        assert!(rows.strip(&mut wire));
        assert!(wire.sessions.is_empty());
        let err = rx.decode(wire.clone()).unwrap_err();
        assert!(matches!(err, ProtocolError::Unexpected(_)), "{err}");
        let decoded = rx.decode_delta(wire).unwrap();
        assert_eq!(decoded.snapshot, second);
        assert_eq!(decoded.unchanged.since, Some(snapshot(1, &[]).sampled_at));
        assert_eq!(decoded.unchanged.sessions, vec![100, 101]);
        assert_ne!(decoded.unchanged.stream, StreamDecoder::default().stream);
    }
}
