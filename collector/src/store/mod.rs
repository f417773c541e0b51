//! The collector's history, behind an interface shaped by what the
//! collector does: append a sample with its derived records, read a window.
//! [`SledStore`] is the embedded implementation; a second backend is an
//! addition, not a rewrite.
//!
//! # Layout (sled and segment files)
//!
//! One tree per record kind; keys are big-endian (see [`keys`]) so each
//! (instance, time window) is one range scan. Samples and episodes are kept
//! beside sled in files of the store's own: what each instance is still
//! writing (its open minute, open episodes, episodes closed since the last
//! seal, counters) in its tail ([`tail`]); whole minutes sealed ([`seal`])
//! into per-day segment files of samples ([`sealed`]) and of closed
//! episodes ([`episode_blocks`], laid out by column:
//! [`episode_columns`]), see [`segments`].
//!
//! | tree            | key                                   | value              |
//! |-----------------|---------------------------------------|--------------------|
//! | `meta`          | name                                  | format, next id    |
//! | `instances`     | host `\0` instance                    | [`InstanceRecord`] |
//! | `sample_blocks` | instance u32, minute start            | where the sealed minute is ([`SampleBlock`](records::SampleBlock)) |
//! | `samples`       | instance u32, time                    | a late sample (or one written before format 3): a keyframe [`StoredSample`] |
//! | `facts`         | instance u32, time                    | `pb::InstanceFacts`|
//! | `rollups`       | instance u32, resolution u8, start    | [`Rollup`] without its maps |
//! | `rollup_maps`   | as `rollups`                          | the rollup's maps (`maxima`, `waits`, `wait_queries`), compressed |
//! | `episode_blocks`| kind u8, instance u32, minute start   | where the kind's episodes sealed with the minute are ([`SampleBlock`](records::SampleBlock)) |
//! | `episodes`      | kind u8, instance u32, ended, pid, started | an episode stored on its own (ended long before its seal, or written before format 4): [`EpisodeRecord`] without what the key holds ([`closed`]) |
//! | `open_episodes` | kind u8, instance u32, pid, started   | [`EpisodeRecord`], from stores before format 4: read at open, removed by the next seal |
//! | `identities`    | id u32                                | user, database, application, client, backend type ([`identities`]) |
//! | `queries`       | xxh3-64 of the text                   | the text (UTF-8)   |
//!
//! # Invariants
//!
//! - A sample is stored at most once per (instance, time): [`Store::append`]
//!   of a sample already stored changes nothing and reports a duplicate.
//!   What it writes to sled (rollups it closes, facts, texts; a late
//!   sample itself and the instance's counters) is one transaction, all or
//!   none, and the sample, its episode changes and its counts are one
//!   entry of its tail, written once that has committed.
//! - A tail's minute is sealed once: blocks written and synced, then
//!   indexed (with the identities they refer to and the counts moved into
//!   the instance's record) in one transaction, flushed, and only then the
//!   tail's file replaced by a checkpoint of the open episodes.
//! - A delta's chain is whole within its block (or tail): deltas are taken
//!   within a minute, and a minute is sealed once, when the next starts.
//! - Every `query_id` a stored row or episode holds has its text in
//!   `queries` (texts are written before or with their first reference).
//! - Every identity id a sealed episode holds has its record in
//!   `identities` (written with its first reference, never removed).
//! - An episode is open (in its tail) or closed (in its tail until sealed,
//!   then in a block or in `episodes`), never both.
//! - A rollup is its `rollups` value followed by its `rollup_maps` value,
//!   decoded as one message; both are written in the same transaction and
//!   expire by the same key range (`rollups` first).
//! - A minute or hour still being written is kept in memory, not
//!   rewritten in sled every sample ([`open`]); reads see it over the
//!   stored one. It is written when a later stretch of the same instance
//!   and resolution opens, when an append writes it itself, and at
//!   shutdown. After a crash the ingestor rebuilds it from the stored
//!   samples and minutes ([`crate::ingest`]).
//! - A rollup is the merge of every sample in its stretch (see
//!   [`crate::ingest::rollup`]); merging is order-independent, so a late
//!   sample folds in like any other.
//! - An hour rollup whose `longest_tracked` is set lists, per episode kind,
//!   the longest closed episodes whose end falls in the hour, and counts
//!   them all (see [`crate::ingest::longest`]).
//! - Retention removes samples (and facts superseded before the cut) older
//!   than the raw horizon, and rollups and closed episodes older than the
//!   long horizon, a block of episodes once all of them are (an hour
//!   rollup stays while an episode it lists does);
//!   open episodes and the latest facts always stay.
//! - `facts` holds an entry only where the facts changed.

mod chain;
mod closed;
mod compress;
mod delta;
mod episode_blocks;
mod episode_columns;
mod expire;
mod identities;
mod keys;
mod open;
mod patch;
mod records;
mod seal;
mod sealed;
mod segments;
mod sled;
mod split;
mod tail;
#[cfg(test)]
mod testing;
mod texts;

pub use self::compress::unpack;
pub use self::keys::{EpisodeKind, InstanceId, Resolution};
pub use self::open::SharedRollup;
pub use self::patch::PatchError;
pub use self::records::{
    BlockerRecord, EpisodeRecord, EpisodeRollup, EpisodeSpan, InstanceRecord, LongestEnded, Max,
    PeakRollup, Rollup, StoredSample,
};
pub use self::sled::SledStore;

use std::collections::HashMap;

use pgtrail_proto::pb;
use pgtrail_proto::received::RowBytes;
use pgtrail_proto::time::Micros;
use pgtrail_proto::unchanged::Unchanged;
use thiserror::Error;

/// The store failed.
#[derive(Debug, Error)]
pub enum StoreError {
    /// The embedded database failed.
    #[error("storage failed")]
    Sled(#[from] ::sled::Error),
    /// A stored value could not be decoded: the store is damaged or from an
    /// incompatible version.
    #[error("stored value in tree {tree} is damaged")]
    Corrupt {
        /// Which tree.
        tree: &'static str,
        /// The decoder's error.
        #[source]
        source: prost::DecodeError,
    },
    /// A delta sample whose base is missing: the store is damaged.
    #[error("sample at {0} of instance {1} refers to a missing base sample")]
    BrokenChain(Micros, InstanceId),
    /// A delta sample whose changes do not apply to its base: the store is
    /// damaged.
    #[error("sample at {at} of instance {instance} is damaged")]
    CorruptSample {
        /// The sample's time.
        at: Micros,
        /// Its instance.
        instance: InstanceId,
        /// Why its changes do not apply.
        #[source]
        source: PatchError,
    },
    /// A compressed stored sample that does not decompress: the store is
    /// damaged.
    #[error("a compressed sample is damaged: its {0} does not read")]
    Unpack(&'static str),
    /// A closed episode refers to an identity that is not stored: the
    /// store is damaged.
    #[error("a stored episode refers to identity {0}, which is not stored")]
    MissingIdentity(u32),
    /// A key of the wrong shape: the store is damaged.
    #[error("a key in tree {0} is damaged")]
    DamagedKey(&'static str),
    /// An instance id without its record: the store is damaged.
    #[error("instance {0} is registered but has no record")]
    MissingInstance(InstanceId),
    /// A segment file (sealed samples) could not be written or read.
    #[error("segment file {path} failed")]
    Segment {
        /// Which file.
        path: String,
        /// What the system said.
        #[source]
        source: std::io::Error,
    },
    /// The store was written by an incompatible version of pgtrail.
    #[error(
        "the store at {path} has format {found}; this pgtrail reads formats {oldest} to {newest}"
    )]
    Format {
        /// Where.
        path: String,
        /// The format found.
        found: u32,
        /// The oldest format this build reads.
        oldest: u32,
        /// The format this build writes, the newest it reads.
        newest: u32,
    },
}

/// Everything one sample writes, applied atomically.
#[derive(Debug, Default)]
pub struct Append<'a> {
    /// The instance.
    pub instance: InstanceId,
    /// The sample's time.
    pub sampled_at: Micros,
    /// The sample but its rows: their fields there are not read.
    pub sample: StoredSample,
    /// The sample's sessions.
    pub sessions: &'a [pb::Session],
    /// The sample's processes.
    pub processes: &'a [pb::Process],
    /// Rows that are, in value, the rows of the same pids in the
    /// instance's sample at `since` (the store may reuse its encoding of
    /// them when it still keeps that sample's rows). The caller sets it
    /// only when the sample at `since` it stored last is the very one the
    /// rows were moved over from.
    pub unchanged: Option<&'a Unchanged>,
    /// The encodings of rows as they came in the sample's message (each
    /// decodes to the row of its pid): stored as they are.
    pub received: Option<&'a RowBytes>,
    /// Query texts the sample refers to (written when absent).
    pub texts: Vec<(u64, std::sync::Arc<str>)>,
    /// The facts, when they differ from the latest stored.
    pub facts: Option<pb::InstanceFacts>,
    /// Rollups to write now (stretches that are over, or that a late
    /// sample changed), already merged with what was stored.
    pub rollups: Vec<(Resolution, Micros, Rollup)>,
    /// The rollups of the stretches the sample opens or continues (the
    /// instance's current minute and hour), with it folded in: kept open
    /// in memory, shared with the ingestor, written when their stretch
    /// closes or the store persists them (see [`open`]).
    pub open_rollups: Vec<(Resolution, Micros, SharedRollup)>,
    /// Episodes open now, written (or rewritten) in the open set.
    pub opened: Vec<(EpisodeKind, EpisodeRecord)>,
    /// Episodes that ended (removed from the open set).
    pub closed: Vec<(EpisodeKind, EpisodeRecord)>,
    /// Snapshots the agent dropped just before this one.
    pub dropped: u64,
}

/// Which closed episodes to read.
#[derive(Debug, Clone, Copy)]
pub struct EpisodeFilter {
    /// Ended at or after this.
    pub ended_from: Micros,
    /// Ended at or before this.
    pub ended_to: Micros,
    /// Started at or before this.
    pub started_to: Micros,
    /// Lasted at least this long.
    pub min_duration: Micros,
}

impl EpisodeFilter {
    /// Whether the closed episode at `span` passes.
    pub fn lets_through(&self, span: &EpisodeSpan) -> bool {
        (self.ended_from..=self.ended_to).contains(&span.ended_us)
            && span.started_us <= self.started_to
            && span.duration() >= self.min_duration
    }
}

/// The collector's history.
pub trait Store: Send + Sync + 'static {
    /// The id of (host, instance), registering it when new.
    fn instance_id(&self, host: &str, instance: &str) -> Result<InstanceId, StoreError>;
    /// Every known instance.
    fn instances(&self) -> Result<Vec<InstanceRecord>, StoreError>;
    /// Writes a sample and its derived records (in the order the module's
    /// invariants give). Returns `false` when the sample was already
    /// stored: nothing is written, but for a late sample's episode
    /// changes, written again as they were. The store may take the
    /// episodes (`opened`, `closed`) into its keeping, leaving those lists
    /// empty.
    fn append(&self, append: &mut Append) -> Result<bool, StoreError>;
    /// Seals `instance`'s minute when a sample at `t` would start a new
    /// one: the part of [`Store::append`] that waits for the disk (sled's
    /// flush, the tail's new file), for a caller to run where blocking is
    /// fine. An append that comes without it seals by itself.
    fn seal_before(&self, instance: InstanceId, t: Micros) -> Result<(), StoreError>;
    /// Whether a sample of `instance` at `t` is stored.
    fn has_sample(&self, instance: InstanceId, t: Micros) -> Result<bool, StoreError>;
    /// Makes everything appended so far durable (blocks on the disk: call
    /// it from a blocking task). Open rollups stay in memory.
    fn flush(&self) -> Result<(), StoreError>;
    /// Writes the open rollups as they stand (they stay open) and flushes:
    /// what a clean shutdown calls last.
    fn persist_open(&self) -> Result<(), StoreError>;
    /// The first and last sample times.
    fn sample_bounds(&self, instance: InstanceId) -> Result<Option<(Micros, Micros)>, StoreError>;
    /// The sample at or just before `t`, with all its rows (however it is
    /// stored).
    fn sample_at(
        &self,
        instance: InstanceId,
        t: Micros,
    ) -> Result<Option<(Micros, StoredSample)>, StoreError>;
    /// Samples in `[from, to]`, oldest first, each with all its rows.
    fn samples(
        &self,
        instance: InstanceId,
        from: Micros,
        to: Micros,
    ) -> Result<Vec<(Micros, StoredSample)>, StoreError>;
    /// The rollup of the stretch starting at `start`.
    fn rollup(
        &self,
        instance: InstanceId,
        res: Resolution,
        start: Micros,
    ) -> Result<Option<Rollup>, StoreError>;
    /// Rollups of stretches starting in `[from, to]`, oldest first.
    fn rollups(
        &self,
        instance: InstanceId,
        res: Resolution,
        from: Micros,
        to: Micros,
    ) -> Result<Vec<(Micros, Rollup)>, StoreError>;
    /// As [`Store::rollups`], decoding only what [`PeakRollup`] holds.
    fn peak_rollups(
        &self,
        instance: InstanceId,
        res: Resolution,
        from: Micros,
        to: Micros,
    ) -> Result<Vec<(Micros, PeakRollup)>, StoreError>;
    /// As [`Store::rollups`] of hours, decoding only what
    /// [`EpisodeRollup`] holds.
    fn episode_rollups(
        &self,
        instance: InstanceId,
        from: Micros,
        to: Micros,
    ) -> Result<Vec<(Micros, EpisodeRollup)>, StoreError>;
    /// The facts in force at `t` (the latest at or before it, else the
    /// first after it).
    fn facts_at(
        &self,
        instance: InstanceId,
        t: Micros,
    ) -> Result<Option<pb::InstanceFacts>, StoreError>;
    /// Closed episodes that `filter` lets through, in the order they
    /// ended.
    fn closed_episodes(
        &self,
        kind: EpisodeKind,
        instance: InstanceId,
        filter: &EpisodeFilter,
    ) -> Result<Vec<EpisodeRecord>, StoreError>;
    /// As [`Store::closed_episodes`], only where each one is: chosen by
    /// key, none decoded.
    fn closed_episode_spans(
        &self,
        kind: EpisodeKind,
        instance: InstanceId,
        filter: &EpisodeFilter,
    ) -> Result<Vec<EpisodeSpan>, StoreError>;
    /// The closed episode of this span, if still stored.
    fn closed_episode(
        &self,
        kind: EpisodeKind,
        instance: InstanceId,
        span: &EpisodeSpan,
    ) -> Result<Option<EpisodeRecord>, StoreError>;
    /// Episodes still open.
    fn open_episodes(
        &self,
        kind: EpisodeKind,
        instance: InstanceId,
    ) -> Result<Vec<EpisodeRecord>, StoreError>;
    /// Removes what is older than the horizons: samples before
    /// `raw_before`; rollups and closed episodes before `kept_before`.
    /// Works in small batches, so ingest is never stalled for long.
    fn expire(
        &self,
        instance: InstanceId,
        raw_before: Micros,
        kept_before: Micros,
    ) -> Result<u64, StoreError>;
    /// Bytes the store takes on disk.
    fn size_on_disk(&self) -> Result<u64, StoreError>;
    /// The texts of these query ids (unknown ids are left out).
    fn query_texts(
        &self,
        ids: &mut dyn Iterator<Item = u64>,
    ) -> Result<HashMap<u64, String>, StoreError>;
}
