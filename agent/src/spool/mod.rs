//! The agent's on-disk spool: every snapshot waits here until the collector
//! acknowledges it, so a collector outage or an agent restart loses nothing
//! the spool can hold.
//!
//! Layout of the spool directory:
//!
//! - `NNNNNNNNNNNNNNNNNNNN.seg`: segments, numbered in the order they were
//!   started; records inside are in the order they were taken (see
//!   [`segment`] for the framing). Only the newest segment is appended to.
//! - `seqs`: per-instance sequence reservations ([`seqs`]).
//! - `lock`: empty; the agent using the spool holds an exclusive `flock` on
//!   it while the spool is open.
//!
//! Invariants:
//!
//! - **One agent.** Two agents appending to one spool would interleave
//!   their segments and reuse each other's sequence numbers: opening a
//!   spool whose lock another process holds fails.
//! - **Bounded.** The segments' total size stays within `max_bytes`; to make
//!   room the oldest segment is deleted whole. Its unacknowledged records
//!   are counted per instance, logged, and added to that instance's next
//!   snapshot's `dropped_before`, so history shows the gap.
//! - **Oldest first.** A [`Cursor`] walks records in segment then file
//!   order, skipping acknowledged ones; a new stream starts from the
//!   beginning.
//! - **Acknowledged means gone.** A segment whose records are all
//!   acknowledged is deleted at once, except the newest, which is emptied
//!   (truncated) and appended to again, so that a spool that keeps up with
//!   the collector does not create and delete a file every sample; it is
//!   deleted when the agent stops, and an empty segment found at a restart
//!   is deleted then. Acknowledgements are not written
//!   down: after a restart the records of the remaining segments are sent
//!   again, and the collector recognises the ones it has (same instance and
//!   sample time) and acknowledges them as duplicates.
//! - **Unique (instance, seq).** The spool numbers each snapshot it takes
//!   in; numbers never repeat across restarts.
//! - Records are written with one `write` each (the kernel keeps them if the
//!   agent dies) and the segment is fsynced when it is closed and when the
//!   agent stops.
//!
//! A record is handed out as a [`Spooled`]: the snapshot without its rows,
//! and the rows encoded ([`Rows`]), so that the sender writes them to the
//! stream as they are. The newest records are also held in memory until
//! first read (module `held`), so sending a snapshot just taken reads nothing
//! back from disk.

mod held;
mod segment;
mod seqs;

use std::collections::{HashMap, VecDeque};
use std::fs::{self, File};
use std::path::{Path, PathBuf};

use pgtrail_proto::model::Snapshot;
use thiserror::Error;

use crate::wire::Rows;
use held::Held;
use segment::Segment;
use seqs::Sequences;

/// The largest segment; smaller spools use a sixteenth of their size.
const MAX_SEGMENT_BYTES: u64 = 8 << 20;

/// Why the spool failed.
#[derive(Debug, Error)]
pub enum SpoolError {
    /// A file operation failed.
    #[error("cannot {op} {path}")]
    Io {
        /// What was attempted.
        op: &'static str,
        /// On which file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A record does not decode.
    #[error("a spooled snapshot is corrupt")]
    Corrupt,
    /// Another agent has the spool open.
    #[error("{path} is in use by another agent (it holds the lock {path}/lock)")]
    InUse {
        /// The spool directory.
        path: String,
    },
}

impl SpoolError {
    fn io(op: &'static str, path: &Path, source: std::io::Error) -> Self {
        Self::Io {
            op,
            path: path.display().to_string(),
            source,
        }
    }
}

/// Opens `dir/lock` and takes an exclusive `flock` on it without waiting.
fn lock(dir: &Path) -> Result<File, SpoolError> {
    let path = dir.join("lock");
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| SpoolError::io("create", &path, e))?;
    match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(file),
        Err(rustix::io::Errno::WOULDBLOCK) => Err(SpoolError::InUse {
            path: dir.display().to_string(),
        }),
        Err(e) => Err(SpoolError::io("lock", &path, e.into())),
    }
}

/// Where a reader of the spool is: the next record to look at. Cursors
/// order as the records they point at.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Cursor {
    segment: u64,
    index: usize,
}

/// A spooled snapshot as [`Spool::next`] hands it out.
#[derive(Debug, Clone, PartialEq)]
pub struct Spooled {
    /// The snapshot without its rows: no sessions, no processes.
    pub snapshot: Snapshot,
    /// Its sessions and processes, encoded.
    pub rows: Rows,
}

impl Spooled {
    /// Splits `snapshot` into its rows and the rest.
    fn split(mut snapshot: Snapshot) -> Self {
        let rows = Rows::encode(&snapshot.sessions, &snapshot.processes);
        snapshot.sessions = Vec::new();
        snapshot.processes = Vec::new();
        Self { snapshot, rows }
    }

    /// The whole snapshot, rows decoded.
    pub fn into_snapshot(self) -> Result<Snapshot, SpoolError> {
        let (sessions, processes) = self.rows.decode().map_err(|_| SpoolError::Corrupt)?;
        Ok(Snapshot {
            sessions,
            processes,
            ..self.snapshot
        })
    }
}

/// What [`Spool::push`] had to drop to make room.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Evicted {
    /// Per instance, the snapshots now unreported: those dropped, plus the
    /// earlier drops they were to report.
    pub dropped: HashMap<String, u64>,
    /// Snapshots dropped (what this push lost).
    pub snapshots: u64,
}

/// A bounded on-disk queue of snapshots awaiting acknowledgement.
#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
    max_bytes: u64,
    segment_bytes: u64,
    segments: VecDeque<Segment>,
    /// The id the next segment gets: ids are never reused, so a cursor
    /// never mistakes a new segment for one it has read.
    next_id: u64,
    bytes: u64,
    seqs: Sequences,
    /// Dropped snapshots not yet reported, per instance.
    dropped: HashMap<String, u64>,
    /// The newest records, until first read.
    held: Held,
    /// The open `lock` file, whose `flock` says this spool is taken; closing
    /// it (dropping the spool) lets go.
    _lock: File,
}

impl Spool {
    /// Opens (or creates) the spool in `dir`, holding at most `max_bytes`,
    /// and indexes what an earlier run left there.
    pub fn open(dir: &Path, max_bytes: u64) -> Result<Self, SpoolError> {
        fs::create_dir_all(dir).map_err(|e| SpoolError::io("create", dir, e))?;
        let lock = lock(dir)?;
        let mut ids: Vec<u64> = fs::read_dir(dir)
            .map_err(|e| SpoolError::io("list", dir, e))?
            .filter_map(|e| segment::parse_name(e.ok()?.file_name().to_str()?))
            .collect();
        ids.sort_unstable();
        let next_id = ids.last().map_or(0, |id| id + 1);
        let mut segments = VecDeque::new();
        let mut floor: HashMap<String, u64> = HashMap::new();
        for id in ids {
            let seg = Segment::open(dir, id)?;
            if seg.records.is_empty() {
                seg.remove()?;
                continue;
            }
            for r in &seg.records {
                let f = floor.entry(r.instance.clone()).or_default();
                *f = (*f).max(r.seq);
            }
            segments.push_back(seg);
        }
        let bytes = segments.iter().map(|s| s.bytes).sum();
        Ok(Self {
            dir: dir.to_path_buf(),
            max_bytes,
            segment_bytes: (max_bytes / 16).clamp(4 << 10, MAX_SEGMENT_BYTES),
            segments,
            next_id,
            bytes,
            seqs: Sequences::load(dir, &floor)?,
            dropped: HashMap::new(),
            held: Held::default(),
            _lock: lock,
        })
    }

    /// Snapshots waiting for acknowledgement.
    pub fn unacked(&self) -> usize {
        self.segments.iter().map(|s| s.unacked).sum()
    }

    /// Bytes on disk.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Takes `snapshot` in: numbers it, adds what was dropped of its
    /// instance before it to `dropped_before`, and appends it, deleting the
    /// oldest segments first if it would not fit. Returns what was dropped.
    pub fn push(&mut self, mut snapshot: Snapshot) -> Result<Evicted, SpoolError> {
        snapshot.seq = self.seqs.next(&snapshot.instance)?;
        if let Some(n) = self.dropped.remove(&snapshot.instance) {
            snapshot.dropped_before += n;
        }
        let Spooled { mut snapshot, rows } = Spooled::split(snapshot);
        let mut frame = segment::frame(&snapshot, &rows);
        let mut evicted = Evicted::default();
        let size = frame.len() as u64;
        if size > self.max_bytes {
            // Larger than the whole spool: this one is the loss.
            *self.dropped.entry(snapshot.instance.clone()).or_default() +=
                1 + snapshot.dropped_before;
            evicted.dropped.insert(snapshot.instance, 1);
            evicted.snapshots = 1;
            return Ok(evicted);
        }
        while self.bytes + size > self.max_bytes {
            let Some(oldest) = self.segments.pop_front() else {
                break;
            };
            self.bytes -= oldest.bytes;
            for r in oldest.records.iter().filter(|r| !r.acked) {
                // The drops it was to report are lost with it: carry them.
                evicted.snapshots += 1;
                *evicted.dropped.entry(r.instance.clone()).or_default() += 1 + r.dropped_before;
            }
            oldest.remove()?;
        }
        for (name, n) in &evicted.dropped {
            *self.dropped.entry(name.clone()).or_default() += n;
        }
        if let Some(n) = self.dropped.remove(&snapshot.instance) {
            // Reported by this very snapshot.
            snapshot.dropped_before += n;
            frame = segment::frame(&snapshot, &rows);
        }
        let tail_full = self
            .segments
            .back()
            .is_none_or(|s| s.bytes > 0 && s.bytes + size > self.segment_bytes);
        if tail_full {
            if let Some(tail) = self.segments.back() {
                tail.sync()?;
            }
            self.segments
                .push_back(Segment::create(&self.dir, self.next_id)?);
            self.next_id += 1;
        }
        let tail = self.segments.back_mut().expect("a tail segment");
        let before = tail.bytes;
        tail.append(&snapshot, &frame)?;
        self.bytes += tail.bytes - before;
        let at = Cursor {
            segment: tail.id,
            index: tail.records.len() - 1,
        };
        self.held.push(at, Spooled { snapshot, rows });
        Ok(evicted)
    }

    /// Marks (instance, seq) acknowledged; deletes its segment once every
    /// record in it is. Returns whether it was waiting.
    pub fn ack(&mut self, instance: &str, seq: u64) -> Result<bool, SpoolError> {
        let found = self.segments.iter_mut().enumerate().find_map(|(i, s)| {
            let r = s
                .records
                .iter_mut()
                .rev()
                .find(|r| r.seq == seq && r.instance == instance && !r.acked)?;
            r.acked = true;
            s.unacked -= 1;
            Some(i)
        });
        let Some(i) = found else {
            return Ok(false);
        };
        if self.segments[i].unacked == 0 {
            if i + 1 == self.segments.len() {
                // The newest: emptied under a new number, so that a cursor
                // that read it starts it afresh.
                let tail = &mut self.segments[i];
                self.bytes -= tail.bytes;
                tail.empty(self.next_id)?;
                self.next_id += 1;
            } else {
                let done = self.segments.remove(i).expect("found above");
                self.bytes -= done.bytes;
                done.remove()?;
            }
        }
        Ok(true)
    }

    /// The next unacknowledged record at or after `cursor`, which moves past
    /// it. Records lost to eviction are skipped.
    pub fn next(&mut self, cursor: &mut Cursor) -> Result<Option<Spooled>, SpoolError> {
        let from = cursor.segment;
        for seg in self.segments.iter().filter(|s| s.id >= from) {
            if seg.id > cursor.segment {
                *cursor = Cursor {
                    segment: seg.id,
                    index: 0,
                };
            }
            while cursor.index < seg.records.len() {
                let at = *cursor;
                cursor.index += 1;
                if !seg.records[at.index].acked {
                    if let Some(held) = self.held.take(at) {
                        return Ok(Some(held));
                    }
                    return seg.read(at.index).map(|s| Some(Spooled::split(s)));
                }
            }
        }
        Ok(None)
    }

    /// Whether [`Spool::next`] has anything at or after `cursor`.
    pub fn has_next(&self, cursor: &Cursor) -> bool {
        self.segments.iter().any(|s| {
            let from = if s.id == cursor.segment {
                cursor.index
            } else {
                0
            };
            s.id >= cursor.segment && s.records.iter().skip(from).any(|r| !r.acked)
        })
    }

    /// Flushes the newest segment to disk.
    pub fn sync(&self) -> Result<(), SpoolError> {
        match self.segments.back() {
            Some(s) => s.sync(),
            None => Ok(()),
        }
    }

    /// For a stopping agent: flushes the newest segment to disk, or deletes
    /// it when it was emptied, so that a spool whose records are all
    /// acknowledged leaves no segment behind.
    pub fn close(&mut self) -> Result<(), SpoolError> {
        if self.segments.back().is_some_and(|s| s.records.is_empty()) {
            let tail = self.segments.pop_back().expect("checked above");
            return tail.remove();
        }
        self.sync()
    }
}

#[cfg(test)]
mod tests;
