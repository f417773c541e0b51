//! The newest records, kept in memory until they are first read, so that
//! sending a snapshot just taken does not read back and decode what was
//! just written.
//!
//! Records are held in the order they were appended, which is the order a
//! [`Cursor`] walks them. A record is handed out once; one that a cursor
//! passes without taking it (acknowledged, evicted, or read by an earlier
//! stream) is forgotten. Past [`MAX_HELD_BYTES`] of rows the oldest are
//! forgotten too: they are read from their segment when their turn comes.

use std::collections::VecDeque;

use super::{Cursor, Spooled};

/// Rows held at most (the newest record is always held).
pub const MAX_HELD_BYTES: usize = 4 << 20;

/// Records not yet read, oldest first, by their place in the spool.
#[derive(Debug, Default)]
pub struct Held {
    records: VecDeque<(Cursor, Spooled)>,
    bytes: usize,
}

impl Held {
    /// Holds the record at `at`, newer than every record held.
    pub fn push(&mut self, at: Cursor, record: Spooled) {
        self.bytes += record.rows.as_bytes().len();
        self.records.push_back((at, record));
        while self.bytes > MAX_HELD_BYTES && self.records.len() > 1 {
            self.pop();
        }
    }

    /// The record at `at`, if held; forgets every older one.
    pub fn take(&mut self, at: Cursor) -> Option<Spooled> {
        while let Some((place, _)) = self.records.front() {
            if *place == at {
                return self.pop();
            }
            if *place > at {
                return None;
            }
            self.pop();
        }
        None
    }

    fn pop(&mut self) -> Option<Spooled> {
        let (_, record) = self.records.pop_front()?;
        self.bytes -= record.rows.as_bytes().len();
        Some(record)
    }
}

#[cfg(test)]
mod tests {
    use pgtrail_proto::model::Snapshot;
    use pgtrail_proto::pb;

    use super::*;
    use crate::wire::Rows;

    fn record(seq: u64, title_len: usize) -> Spooled {
        let process = pb::Process {
            pid: 1,
            title: "x".repeat(title_len),
            ..Default::default()
        };
        Spooled {
            snapshot: Snapshot {
                seq,
                ..Default::default()
            },
            rows: Rows::encode(&[], &[process]),
        }
    }

    fn at(segment: u64, index: usize) -> Cursor {
        Cursor { segment, index }
    }

    #[test]
    fn a_record_is_handed_out_once_and_older_ones_are_forgotten() {
        let mut held = Held::default();
        held.push(at(0, 0), record(1, 10));
        held.push(at(0, 1), record(2, 10));
        held.push(at(1, 0), record(3, 10));
        assert_eq!(held.take(at(0, 1)).unwrap().snapshot.seq, 2);
        assert!(held.take(at(0, 1)).is_none(), "once");
        assert!(held.take(at(0, 0)).is_none(), "passed");
        assert_eq!(held.take(at(1, 0)).unwrap().snapshot.seq, 3);
        assert_eq!((held.records.len(), held.bytes), (0, 0));
    }

    #[test]
    fn the_oldest_are_forgotten_past_the_bound() {
        let mut held = Held::default();
        let big = MAX_HELD_BYTES / 2;
        for i in 0..4 {
            held.push(at(0, i), record(i as u64, big));
        }
        assert_eq!(held.records.len(), 1);
        assert!(held.take(at(0, 2)).is_none());
        assert_eq!(held.take(at(0, 3)).unwrap().snapshot.seq, 3);
    }
}
