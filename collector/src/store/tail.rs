//! The minute of samples each instance is still writing: kept in memory
//! and in a log file of its own (`segments/<instance>/open.log`), never in
//! sled, whose log keeps every byte written to it for good (sled 0.34
//! does not win back the space of values removed soon after). Each sample
//! is appended to the file when it is stored and synced by the next
//! flush; when the instance's next minute starts, the file's bytes are
//! the minute's block ([`super::sealed`]): compressed, appended to the
//! day's segment file, indexed in sled, and the file emptied.
//!
//! The file holds blocks' entries without their count, so a write torn by
//! a crash loses only its own, incomplete, entry, which opening cuts off.

use std::fs::File;
use std::io::Write;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;

use pgtrail_proto::time::Micros;
use prost::bytes::Bytes;

use super::sealed::{self, Block};
use super::StoreError;

/// One instance's open minute.
#[derive(Debug)]
pub(super) struct Tail {
    /// The start of the latest sealed minute: a sample at or before its
    /// end came late and is stored in sled's `samples` on its own.
    pub sealed_through: Option<Micros>,
    /// The start of the minute being written, while it has a sample.
    pub minute: Option<Micros>,
    file: Arc<File>,
    path: PathBuf,
    /// The file's bytes.
    raw: Vec<u8>,
    /// Times and places in `raw` of its samples, in time order.
    entries: Vec<(Micros, Range<usize>)>,
    /// The time of the last sample written to the file.
    last_written: Micros,
    /// Written since the last sync.
    unsynced: bool,
    /// `raw` as a block for reads, until the next sample.
    snapshot: Option<Arc<Block>>,
}

impl Tail {
    /// The tail in `file` (at `path`), holding `raw`, its bytes.
    pub fn new(
        file: File,
        path: PathBuf,
        raw: Vec<u8>,
        sealed_through: Option<Micros>,
    ) -> Result<Tail, StoreError> {
        let (entries, whole) = sealed::entries(&raw);
        let mut tail = Tail {
            sealed_through,
            minute: None,
            file: Arc::new(file),
            path,
            raw,
            entries: Vec::new(),
            last_written: 0,
            unsynced: false,
            snapshot: None,
        };
        if whole < tail.raw.len() {
            // A write the crash cut short.
            tail.raw.truncate(whole);
            tail.file
                .set_len(whole as u64)
                .map_err(|e| tail.failed(e))?;
        }
        tail.last_written = entries.last().map_or(0, |(t, _)| *t);
        tail.minute = entries.iter().map(|(t, _)| sealed::minute_of(*t)).min();
        let mut entries = entries;
        entries.sort_by_key(|(t, _)| *t);
        tail.entries = entries;
        Ok(tail)
    }

    /// Whether it holds a sample at `t`.
    pub fn has(&self, t: Micros) -> bool {
        self.entries.binary_search_by_key(&t, |e| e.0).is_ok()
    }

    /// Adds the sample at `t`, its stored `value`, to the file (not synced
    /// yet) and to memory.
    pub fn push(&mut self, t: Micros, value: &[u8]) -> Result<(), StoreError> {
        let start = self.raw.len();
        sealed::encode_entry(&mut self.raw, self.last_written, t, value);
        if let Err(e) = (&*self.file).write_all(&self.raw[start..]) {
            // What did get written would misalign every entry after it.
            let _ = self.file.set_len(start as u64);
            self.raw.truncate(start);
            return Err(self.failed(e));
        }
        self.last_written = t;
        self.unsynced = true;
        self.snapshot = None;
        let value_start = self.raw.len() - value.len();
        let at = self.entries.partition_point(|e| e.0 < t);
        self.entries.insert(at, (t, value_start..self.raw.len()));
        let minute = sealed::minute_of(t);
        self.minute = Some(self.minute.map_or(minute, |m| m.min(minute)));
        Ok(())
    }

    /// The file to sync, if something was pushed since this was last
    /// asked: synced by the caller, without holding the tail up.
    pub fn take_unsynced(&mut self) -> Option<(Arc<File>, PathBuf)> {
        if !std::mem::take(&mut self.unsynced) {
            return None;
        }
        Some((self.file.clone(), self.path.clone()))
    }

    /// How many samples it holds.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// The file's bytes: the block to seal.
    pub fn raw(&self) -> &[u8] {
        &self.raw
    }

    /// The times of its first and last samples.
    pub fn bounds(&self) -> Option<(Micros, Micros)> {
        Some((self.entries.first()?.0, self.entries.last()?.0))
    }

    /// Empties it once its minute is sealed (`minute`).
    pub fn sealed(&mut self, minute: Micros) -> Result<(), StoreError> {
        self.file.set_len(0).map_err(|e| self.failed(e))?;
        self.raw.clear();
        self.entries.clear();
        self.last_written = 0;
        self.unsynced = false;
        self.snapshot = None;
        self.minute = None;
        self.sealed_through = Some(minute);
        Ok(())
    }

    /// Its samples as a block, for reads; `None` while it has none.
    pub fn snapshot(&mut self) -> Option<Arc<Block>> {
        if self.entries.is_empty() {
            return None;
        }
        let block = self.snapshot.get_or_insert_with(|| {
            Arc::new(Block::new(
                Bytes::copy_from_slice(&self.raw),
                self.entries.clone(),
            ))
        });
        Some(block.clone())
    }

    fn failed(&self, source: std::io::Error) -> StoreError {
        StoreError::Segment {
            path: self.path.display().to_string(),
            source,
        }
    }
}
