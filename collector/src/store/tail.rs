//! What each instance is still writing: the minute of samples not yet
//! sealed, the episodes that closed since the last seal, the episodes
//! open now and the counters not yet added to the instance's record.
//! Kept in a log file of the instance's own
//! (`segments/<instance>/open.log`), never in sled, whose log keeps every
//! byte written to it for good (sled 0.34 does not win back the space of
//! values removed soon after). In memory: the episodes and counters, where
//! each sample lies in the log, and the entries not yet written; the
//! samples' bytes are read back from the file when the minute is sealed or
//! read.
//!
//! Each append adds one entry, held in memory until the next flush writes
//! it to the file (then synced), after sled's own flush, so an entry
//! never reaches the disk before what the same append wrote to sled: the
//! sample (unless it came late and went to sled), the episodes it
//! opened, changed or closed, and the snapshots the agent dropped before
//! it. When the instance's next minute starts, the minute is sealed
//! ([`super::seal`]) and the file replaced by one holding a single
//! checkpoint entry: the episodes open at that moment. Opening a tail
//! replays its file: the checkpoint, then each entry since, so the open
//! set, the closed episodes and the counters come back as they were.
//!
//! An entry is a block's entry ([`super::sealed::encode_entry`]: time,
//! length, payload), so a write torn by a crash loses only its own,
//! incomplete, entry, which opening cuts off, as it cuts off everything
//! from the first entry that does not read (zeros a power loss left, say;
//! entries carry no checksum). The payload is a flags
//! byte, then with [`SAMPLE`] the sample's length (varint) and stored
//! value, then the rest: a [`TailEpisodes`] message.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;

use pgtrail_proto::time::Micros;
use prost::bytes::Bytes;
use prost::encoding::{decode_varint, encode_varint, encoded_len_varint};
use prost::Message;

use super::keys::{self, EpisodeKind, InstanceId};
use super::records::EpisodeRecord;
use super::sealed::{self, Block};
use super::StoreError;

/// The entry holds a sample.
const SAMPLE: u8 = 1;
/// The entry's opened episodes are the whole open set, replacing it.
const CHECKPOINT: u8 = 2;

/// Samples' times and where their bytes lie, in time order.
type Places = Vec<(Micros, Range<usize>)>;

/// An episode with its kind, as the tail holds it.
type Kinded = Box<(EpisodeKind, EpisodeRecord)>;

/// An open episode's key (as in [`keys::open_episode`]).
pub(super) type OpenKey = [u8; 17];
/// A closed episode's key (as in [`keys::closed_episode`]).
pub(super) type ClosedKey = [u8; 25];

/// The episodes and counters of a tail entry.
#[derive(Clone, PartialEq, prost::Message)]
pub(super) struct TailEpisodes {
    /// Opened or changed (with [`CHECKPOINT`], every open one).
    #[prost(message, repeated, tag = "1")]
    pub opened: Vec<TailEpisode>,
    /// Closed.
    #[prost(message, repeated, tag = "2")]
    pub closed: Vec<TailEpisode>,
    /// Snapshots the agent dropped before this sample.
    #[prost(uint64, tag = "3")]
    pub dropped: u64,
}

/// An episode with its kind.
#[derive(Clone, PartialEq, prost::Message)]
pub(super) struct TailEpisode {
    /// The [`EpisodeKind`].
    #[prost(int32, tag = "1")]
    pub kind: i32,
    /// The episode.
    #[prost(message, optional, tag = "2")]
    pub record: Option<EpisodeRecord>,
}

/// What one append adds to its instance's tail; the tail keeps its
/// episodes.
#[derive(Debug)]
pub(super) struct TailEntry<'a> {
    /// The sample's time.
    pub at: Micros,
    /// Its stored value, unless it went to sled.
    pub sample: Option<&'a [u8]>,
    /// Episodes it opened or changed.
    pub opened: Vec<(EpisodeKind, EpisodeRecord)>,
    /// Episodes it closed.
    pub closed: Vec<(EpisodeKind, EpisodeRecord)>,
    /// Snapshots dropped before it, when counted here.
    pub dropped: u64,
}

/// One instance's unsealed minute, open episodes and recent closed ones.
#[derive(Debug)]
pub(super) struct Tail {
    instance: InstanceId,
    /// The start of the latest sealed minute: a sample at or before its
    /// end came late and is stored in sled's `samples` on its own.
    pub sealed_through: Option<Micros>,
    /// The start of the minute being written, while it has a sample.
    pub minute: Option<Micros>,
    file: Arc<File>,
    path: PathBuf,
    /// Entries pushed since the last write, not yet in the file. The
    /// file's own bytes are read back when the minute is sealed or read,
    /// not held here: a minute of samples is hundreds of kilobytes an
    /// instance.
    pending: Vec<u8>,
    /// How many bytes the file holds.
    written: usize,
    /// Times and places of its samples in the log (the file's bytes, then
    /// `pending`), in time order.
    entries: Places,
    /// The episodes open now (boxed: a node of the map shifts its values
    /// on every insert, and a record is hundreds of bytes).
    open: BTreeMap<OpenKey, Kinded>,
    /// The episodes closed since the last seal.
    closed: BTreeMap<ClosedKey, Kinded>,
    /// Snapshots dropped, not yet in the instance's record.
    dropped: u64,
    /// Keys of the open episodes sled's `open_episodes` still holds (from
    /// a store written before format 4), removed by the next seal.
    legacy: Vec<OpenKey>,
    /// Sealed, its file not yet replaced: it takes no entries.
    stale: bool,
    /// The time of the last entry written to the file.
    last_written: Micros,
    /// Written since the last sync.
    unsynced: bool,
    /// The samples as a block for reads, until the next sample.
    snapshot: Option<Arc<Block>>,
}

impl Tail {
    /// The tail of `instance` in `file` (at `path`), holding `raw`, its
    /// bytes; `open` is where its open set starts (what sled held before
    /// open episodes moved here), replaced by the file's checkpoint.
    pub fn new(
        instance: InstanceId,
        (file, path, raw): (File, PathBuf, Vec<u8>),
        sealed_through: Option<Micros>,
        open: Vec<(EpisodeKind, EpisodeRecord)>,
    ) -> Result<Tail, StoreError> {
        let (entries, whole) = sealed::entries(&raw);
        let mut tail = Tail {
            instance,
            sealed_through,
            minute: None,
            file: Arc::new(file),
            path,
            pending: Vec::new(),
            written: 0,
            entries: Vec::new(),
            open: BTreeMap::new(),
            closed: BTreeMap::new(),
            dropped: 0,
            legacy: Vec::new(),
            stale: false,
            last_written: 0,
            unsynced: false,
            snapshot: None,
        };
        for (kind, e) in open {
            let key = tail.open_key(kind, &e);
            tail.legacy.push(key);
            tail.open.insert(key, Box::new((kind, e)));
        }
        let (mut good, mut entry_start) = (whole, 0);
        for (at, range) in entries {
            let end = range.end;
            let Some(entry) = Replay::read(&raw, range) else {
                tracing::warn!(
                    path = %tail.path.display(),
                    offset = entry_start,
                    "a tail entry does not read: the log is cut off there"
                );
                good = entry_start;
                break;
            };
            tail.last_written = at;
            tail.apply_replay(at, entry);
            entry_start = end;
        }
        if good < raw.len() {
            // A write the crash cut short, or left unreadable.
            tail.file.set_len(good as u64).map_err(|e| tail.failed(e))?;
        }
        tail.written = good;
        Ok(tail)
    }

    /// Applies an entry read back from the file.
    fn apply_replay(&mut self, at: Micros, entry: Replay) {
        if let Some(sample) = entry.sample {
            self.add_sample(at, sample);
        }
        if entry.checkpoint {
            self.open.clear();
        }
        self.apply(entry.opened, entry.closed, entry.dropped);
    }

    fn add_sample(&mut self, at: Micros, value: Range<usize>) {
        let i = self.entries.partition_point(|e| e.0 < at);
        self.entries.insert(i, (at, value));
        let minute = sealed::minute_of(at);
        self.minute = Some(self.minute.map_or(minute, |m| m.min(minute)));
        self.snapshot = None;
    }

    fn apply(
        &mut self,
        opened: Vec<(EpisodeKind, EpisodeRecord)>,
        closed: Vec<(EpisodeKind, EpisodeRecord)>,
        dropped: u64,
    ) {
        for (kind, e) in opened {
            self.open
                .insert(self.open_key(kind, &e), Box::new((kind, e)));
        }
        for (kind, e) in closed {
            self.open.remove(&self.open_key(kind, &e));
            let key = keys::closed_episode(kind, self.instance, e.end(), e.pid, e.started_us);
            self.closed.insert(key, Box::new((kind, e)));
        }
        self.dropped += dropped;
    }

    fn open_key(&self, kind: EpisodeKind, e: &EpisodeRecord) -> OpenKey {
        keys::open_episode(kind, self.instance, e.pid, e.started_us)
    }

    /// Whether it holds a sample at `t`.
    pub fn has(&self, t: Micros) -> bool {
        self.entries.binary_search_by_key(&t, |e| e.0).is_ok()
    }

    /// Adds `entry` to the file (not synced yet) and to memory.
    pub fn push(&mut self, entry: TailEntry<'_>) -> Result<(), StoreError> {
        assert!(
            !self.stale,
            "a sealed tail is restarted before it takes entries"
        );
        let value = encode_payload(&entry, 0);
        sealed::encode_entry(&mut self.pending, self.last_written, entry.at, &value);
        self.last_written = entry.at;
        if let Some(sample) = entry.sample {
            // The sample follows the flags byte and its length.
            let value_start =
                self.log_len() - value.len() + 1 + encoded_len_varint(sample.len() as u64);
            self.add_sample(entry.at, value_start..value_start + sample.len());
        }
        self.apply(entry.opened, entry.closed, entry.dropped);
        Ok(())
    }

    /// Writes to the file the entries pushed since the last call; returns
    /// the file to sync, if anything was written since the last sync
    /// (synced by the caller, without holding the tail up).
    pub fn write_pending(&mut self) -> Result<Option<(Arc<File>, PathBuf)>, StoreError> {
        if !self.pending.is_empty() {
            if let Err(e) = (&*self.file).write_all(&self.pending) {
                // What did get written would misalign every entry after it.
                let _ = self.file.set_len(self.written as u64);
                return Err(self.failed(e));
            }
            self.written += self.pending.len();
            self.pending.clear();
            self.unsynced = true;
        }
        if !std::mem::take(&mut self.unsynced) {
            return Ok(None);
        }
        Ok(Some((self.file.clone(), self.path.clone())))
    }

    /// How many samples it holds.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Snapshots dropped since the last seal.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Its samples in time order as a sealed block's bytes.
    pub fn sample_block(&self) -> Result<Vec<u8>, StoreError> {
        let (bytes, entries) = self.samples()?;
        let mut out = Vec::with_capacity(bytes.len());
        let mut prev = 0;
        for (at, range) in entries {
            sealed::encode_entry(&mut out, prev, at, &bytes[range]);
            prev = at;
        }
        Ok(out)
    }

    /// The log's length: the file's bytes and those pending.
    fn log_len(&self) -> usize {
        self.written + self.pending.len()
    }

    /// The log's bytes from its first sample on (read back from the file,
    /// then those pending), and where in them each sample lies.
    fn samples(&self) -> Result<(Vec<u8>, Places), StoreError> {
        let from = self.entries.iter().map(|e| e.1.start).min().unwrap_or(0);
        let mut bytes = Vec::with_capacity(self.log_len() - from);
        if from < self.written {
            bytes.resize(self.written - from, 0);
            self.file
                .read_exact_at(&mut bytes, from as u64)
                .map_err(|e| self.failed(e))?;
        }
        bytes.extend_from_slice(&self.pending[from.saturating_sub(self.written)..]);
        let entries = self
            .entries
            .iter()
            .map(|(at, range)| (*at, range.start - from..range.end - from))
            .collect();
        Ok((bytes, entries))
    }

    /// The times of its first and last samples.
    pub fn bounds(&self) -> Option<(Micros, Micros)> {
        Some((self.entries.first()?.0, self.entries.last()?.0))
    }

    /// The episodes closed since the last seal, in key order.
    pub fn closed(&self) -> impl Iterator<Item = (&ClosedKey, &(EpisodeKind, EpisodeRecord))> {
        self.closed.iter().map(|(key, kinded)| (key, &**kinded))
    }

    /// The closed episode under `key`, if it closed since the last seal.
    pub fn closed_at(&self, key: &ClosedKey) -> Option<&EpisodeRecord> {
        self.closed.get(key).map(|kinded| &kinded.1)
    }

    /// The open episodes of `kind`.
    pub fn open(&self, kind: EpisodeKind) -> impl Iterator<Item = &EpisodeRecord> {
        let prefix = keys::episode_prefix(kind, self.instance);
        self.open
            .range(open_bound(prefix, 0)..=open_bound(prefix, 0xff))
            .map(|(_, kinded)| &kinded.1)
    }

    /// The bytes a replaced file starts with: a checkpoint of the open set.
    pub fn checkpoint(&self) -> Vec<u8> {
        let entry = TailEntry {
            at: 0,
            sample: None,
            opened: self
                .open
                .values()
                .map(|kinded| (**kinded).clone())
                .collect(),
            closed: Vec::new(),
            dropped: 0,
        };
        let mut out = Vec::new();
        sealed::encode_entry(&mut out, 0, 0, &encode_payload(&entry, CHECKPOINT));
        out
    }

    /// Keys of open episodes sled still holds, for the seal to remove.
    pub fn legacy_open(&self) -> &[OpenKey] {
        &self.legacy
    }

    /// Forgets what its minute (`minute`) held once that is sealed:
    /// samples, closed episodes and counters are in the segment files and
    /// sled now. Its file is stale until [`Tail::restarted`].
    pub fn sealed(&mut self, minute: Micros) {
        self.entries.clear();
        self.closed.clear();
        self.dropped = 0;
        self.unsynced = false;
        self.snapshot = None;
        self.minute = None;
        self.sealed_through = Some(minute);
        self.stale = true;
    }

    /// Whether it was sealed and its file is not yet replaced.
    pub fn is_stale(&self) -> bool {
        self.stale
    }

    /// Goes on in `file`, which holds `raw`: the [`Tail::checkpoint`] it
    /// was replaced with after a seal.
    pub fn restarted(&mut self, (file, path, raw): (File, PathBuf, Vec<u8>)) {
        self.file = Arc::new(file);
        self.path = path;
        self.written = raw.len();
        self.pending.clear();
        self.last_written = 0;
        self.stale = false;
        // The checkpoint holds them now.
        self.legacy.clear();
    }

    /// Its samples as a block, for reads; `None` while it has none.
    pub fn snapshot(&mut self) -> Result<Option<Arc<Block>>, StoreError> {
        if self.entries.is_empty() {
            return Ok(None);
        }
        if self.snapshot.is_none() {
            let (bytes, entries) = self.samples()?;
            let block = Block::new(Bytes::from(bytes), entries);
            self.snapshot = Some(Arc::new(block));
        }
        Ok(self.snapshot.clone())
    }

    fn failed(&self, source: std::io::Error) -> StoreError {
        StoreError::Segment {
            path: self.path.display().to_string(),
            source,
        }
    }
}

/// An entry read back from a tail's file.
struct Replay {
    sample: Option<Range<usize>>,
    checkpoint: bool,
    opened: Vec<(EpisodeKind, EpisodeRecord)>,
    closed: Vec<(EpisodeKind, EpisodeRecord)>,
    dropped: u64,
}

impl Replay {
    /// The entry whose payload is `raw[range]`, if it reads.
    fn read(raw: &[u8], range: Range<usize>) -> Option<Replay> {
        let payload = &raw[range.clone()];
        let (&flags, mut rest) = payload.split_first()?;
        let mut sample = None;
        if flags & SAMPLE != 0 {
            let len = usize::try_from(decode_varint(&mut rest).ok()?).ok()?;
            if len > rest.len() {
                return None;
            }
            let start = range.end - rest.len();
            sample = Some(start..start + len);
            rest = &rest[len..];
        }
        let episodes = TailEpisodes::decode(rest).ok()?;
        let kinded = |e: TailEpisode| Some((EpisodeKind::try_from(e.kind).ok()?, e.record?));
        Some(Replay {
            sample,
            checkpoint: flags & CHECKPOINT != 0,
            opened: episodes
                .opened
                .into_iter()
                .map(kinded)
                .collect::<Option<_>>()?,
            closed: episodes
                .closed
                .into_iter()
                .map(kinded)
                .collect::<Option<_>>()?,
            dropped: episodes.dropped,
        })
    }
}

/// The first (`fill` 0) or last (`fill` 0xff) open key under `prefix`.
fn open_bound(prefix: [u8; 5], fill: u8) -> OpenKey {
    let mut k = [fill; 17];
    k[..5].copy_from_slice(&prefix);
    k
}

/// `entry`'s payload, with `flags` besides [`SAMPLE`].
fn encode_payload(entry: &TailEntry<'_>, flags: u8) -> Vec<u8> {
    let episodes = entry.opened.len() + entry.closed.len();
    let mut out = Vec::with_capacity(entry.sample.map_or(0, <[u8]>::len) + 256 * episodes + 16);
    match entry.sample {
        Some(sample) => {
            out.push(flags | SAMPLE);
            encode_varint(sample.len() as u64, &mut out);
            out.extend_from_slice(sample);
        }
        None => out.push(flags),
    }
    let episode = |tag: u32, list: &[(EpisodeKind, EpisodeRecord)], out: &mut Vec<u8>| {
        for (kind, e) in list {
            let kind = *kind as i32;
            let len = prost::encoding::int32::encoded_len(1, &kind)
                + prost::encoding::message::encoded_len(2, e);
            prost::encoding::encode_key(tag, prost::encoding::WireType::LengthDelimited, out);
            encode_varint(len as u64, out);
            prost::encoding::int32::encode(1, &kind, out);
            prost::encoding::message::encode(2, e, out);
        }
    };
    episode(1, &entry.opened, &mut out);
    episode(2, &entry.closed, &mut out);
    if entry.dropped != 0 {
        prost::encoding::uint64::encode(3, &entry.dropped, &mut out);
    }
    out
}
