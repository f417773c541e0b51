//! The values the store keeps, as compact protobuf messages.
//!
//! Rows reuse the wire's [`pb::Session`] and [`pb::Process`], whose query
//! texts are already references (`query_id`) into the `queries` tree.

use std::collections::HashMap;

use pgtrail_proto::pb;

/// What is known of an instance (tree `instances`).
#[derive(Clone, PartialEq, prost::Message)]
pub struct InstanceRecord {
    /// The store's id for it.
    #[prost(uint32, tag = "1")]
    pub id: u32,
    /// The agent's host name.
    #[prost(string, tag = "2")]
    pub host: String,
    /// The instance's name on that host.
    #[prost(string, tag = "3")]
    pub instance: String,
    /// Samples stored (redeliveries not counted).
    #[prost(uint64, tag = "4")]
    pub samples: u64,
    /// Snapshots the agent reported dropped.
    #[prost(uint64, tag = "5")]
    pub dropped: u64,
}

/// Where a sealed minute of samples is (tree `sample_blocks`, keyed by
/// instance and the minute's start): a block of the instance's segment
/// file for the minute's day (see [`super::sealed`]).
#[derive(Clone, PartialEq, prost::Message)]
pub struct SampleBlock {
    /// Where the block starts in the file.
    #[prost(uint64, tag = "1")]
    pub offset: u64,
    /// Its length in the file (a zstd frame).
    #[prost(uint64, tag = "2")]
    pub len: u64,
    /// Its length once decompressed.
    #[prost(uint64, tag = "3")]
    pub raw_len: u64,
    /// The time of its first sample.
    #[prost(int64, tag = "4")]
    pub first_us: i64,
    /// The time of its last sample.
    #[prost(int64, tag = "5")]
    pub last_us: i64,
    /// How many samples it holds.
    #[prost(uint32, tag = "6")]
    pub count: u32,
    /// How its bytes are laid out: 0, entry after entry; for episode
    /// blocks, [`LAYOUT_COLUMNS`] (format 5), by column.
    #[prost(uint32, tag = "7")]
    pub layout: u32,
}

/// [`SampleBlock::layout`] of an episode block by column
/// ([`super::episode_columns`]).
pub const LAYOUT_COLUMNS: u32 = 1;

/// One stored sample (tree `samples`).
#[derive(Clone, PartialEq, prost::Message)]
pub struct StoredSample {
    /// Rows of pg_stat_activity.
    #[prost(message, repeated, tag = "1")]
    pub sessions: Vec<pb::Session>,
    /// The processes.
    #[prost(message, repeated, tag = "2")]
    pub processes: Vec<pb::Process>,
    /// What the agent could not see.
    #[prost(string, repeated, tag = "3")]
    pub blind_spots: Vec<String>,
    /// The agent's sequence number.
    #[prost(uint64, tag = "4")]
    pub seq: u64,
    /// Host and cgroup memory.
    #[prost(message, optional, tag = "5")]
    pub memory: Option<pb::MemoryUsage>,
    /// Sessions established so far (PG 14+).
    #[prost(uint64, optional, tag = "6")]
    pub sessions_total: Option<u64>,
    /// A full sample; otherwise a delta (see [`super::delta`]) whose rows
    /// and patches are those that changed since the sample at `base_us`.
    #[prost(bool, tag = "7")]
    pub keyframe: bool,
    /// For a delta: the sample it was taken against.
    #[prost(int64, optional, tag = "8")]
    pub base_us: Option<i64>,
    /// For a delta: pids whose session is gone.
    #[prost(int32, repeated, tag = "9")]
    pub gone_sessions: Vec<i32>,
    /// For a delta: pids whose process is gone.
    #[prost(int32, repeated, tag = "10")]
    pub gone_processes: Vec<i32>,
    /// For a delta written before format 5: sessions that changed, each
    /// as a field patch of its row in the base sample (see
    /// [`super::patch`]), query ids as differences.
    #[prost(bytes = "vec", repeated, tag = "11")]
    pub session_patches: Vec<Vec<u8>>,
    /// For a delta: processes that changed, as field patches.
    #[prost(bytes = "vec", repeated, tag = "12")]
    pub process_patches: Vec<Vec<u8>>,
    /// For a delta: sessions that changed, as field patches that write
    /// query ids as they are rather than as differences (format 5; earlier
    /// deltas have `session_patches`).
    #[prost(bytes = "vec", repeated, tag = "13")]
    pub session_id_patches: Vec<Vec<u8>>,
}

/// A count at its highest, and when it was first reached.
#[derive(Clone, Copy, PartialEq, prost::Message)]
pub struct Max {
    /// The highest count.
    #[prost(uint64, tag = "1")]
    pub value: u64,
    /// When it was first reached.
    #[prost(int64, tag = "2")]
    pub at_us: i64,
}

/// Everything long-range questions need from one stretch of samples (a
/// minute or an hour; tree `rollups`). Merging two rollups gives the
/// rollup of both stretches, in any order.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Rollup {
    /// Samples folded in.
    #[prost(uint32, tag = "1")]
    pub samples: u32,
    /// The highest client-backend count.
    #[prost(uint32, tag = "2")]
    pub max_total: u32,
    /// When it was first reached.
    #[prost(int64, tag = "3")]
    pub max_at_us: i64,
    /// Client backends by state at that moment.
    #[prost(map = "string, uint32", tag = "4")]
    pub by_state_at_max: HashMap<String, u32>,
    /// Per "dimension\tvalue", the highest client-backend count.
    #[prost(map = "string, message", tag = "5")]
    pub maxima: HashMap<String, Max>,
    /// Time covered by samples, in µs (each sample covers the gap since the
    /// previous one, at most [`crate::ingest::rollup::MAX_GAP`]).
    #[prost(int64, tag = "6")]
    pub covered_us: i64,
    /// Time above 80 % of the non-superuser connection limit.
    #[prost(int64, tag = "7")]
    pub above_80_us: i64,
    /// Time above 95 % of it.
    #[prost(int64, tag = "8")]
    pub above_95_us: i64,
    /// Client sessions first seen (a new pid and backend_start).
    #[prost(uint64, tag = "9")]
    pub sessions_seen: u64,
    /// Sessions established per the server's counter (PG 14+).
    #[prost(uint64, optional, tag = "10")]
    pub sessions_started: Option<u64>,
    /// The most sessions started in one minute.
    #[prost(uint64, tag = "11")]
    pub max_started_per_minute: u64,
    /// Sessions seen ending, by lifetime: < 1 s, < 10 s, < 1 min, < 1 h, more.
    #[prost(uint64, repeated, tag = "12")]
    pub lifetimes: Vec<u64>,
    /// Active-session samples per wait event ("type:event", or "CPU").
    #[prost(map = "string, uint64", tag = "13")]
    pub waits: HashMap<String, u64>,
    /// Active-session samples per "wait event\tquery id (hex)".
    #[prost(map = "string, uint64", tag = "14")]
    pub wait_queries: HashMap<String, u64>,
    /// The highest RSS summed over the instance's processes.
    #[prost(message, optional, tag = "15")]
    pub rss_total: Option<Max>,
    /// The highest PSS summed over the processes that had it.
    #[prost(message, optional, tag = "16")]
    pub pss_total: Option<Max>,
    /// The most autovacuum workers at once.
    #[prost(uint32, tag = "17")]
    pub autovacuum_workers: u32,
    /// Hour rollups only: per episode kind, the longest episodes that
    /// ended in the hour (by their end, whichever sample closed them).
    /// Kept by the ingestor as episodes close; [`merge`] leaves it alone.
    ///
    /// [`merge`]: crate::ingest::rollup::merge
    #[prost(message, repeated, tag = "18")]
    pub longest: Vec<LongestEnded>,
    /// Whether `longest` saw every episode that ended in the hour (not so
    /// for hours stored before it was kept).
    #[prost(bool, tag = "19")]
    pub longest_tracked: bool,
}

/// The longest episodes of one kind that ended in an hour.
#[derive(Clone, PartialEq, prost::Message)]
pub struct LongestEnded {
    /// The kind (`pb::EpisodeKind`).
    #[prost(int32, tag = "1")]
    pub kind: i32,
    /// How many ended in the hour.
    #[prost(uint64, tag = "2")]
    pub ended: u64,
    /// The longest of them, longest first (the earliest start among
    /// equals); every one when `ended` is no more than their number.
    #[prost(message, repeated, tag = "3")]
    pub spans: Vec<EpisodeSpan>,
}

/// The part of a stored hour [`Rollup`] that choosing the longest episodes
/// reads, under the same tags.
#[derive(Clone, PartialEq, prost::Message)]
pub struct EpisodeRollup {
    /// As [`Rollup::longest`].
    #[prost(message, repeated, tag = "18")]
    pub longest: Vec<LongestEnded>,
    /// As [`Rollup::longest_tracked`].
    #[prost(bool, tag = "19")]
    pub longest_tracked: bool,
}

/// The part of a stored [`Rollup`] that plain `peaks` reads: its first
/// four fields, under the same tags. Decoding a stored rollup as this skips
/// the rest (the per-dimension maxima and the wait-event maps are most of
/// its bytes), so a week of peaks decodes a few bytes per stretch.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PeakRollup {
    /// Samples folded in.
    #[prost(uint32, tag = "1")]
    pub samples: u32,
    /// The highest client-backend count.
    #[prost(uint32, tag = "2")]
    pub max_total: u32,
    /// When it was first reached.
    #[prost(int64, tag = "3")]
    pub max_at_us: i64,
    /// Client backends by state at that moment.
    #[prost(map = "string, uint32", tag = "4")]
    pub by_state_at_max: HashMap<String, u32>,
}

impl From<Rollup> for PeakRollup {
    fn from(r: Rollup) -> Self {
        Self {
            samples: r.samples,
            max_total: r.max_total,
            max_at_us: r.max_at_us,
            by_state_at_max: r.by_state_at_max,
        }
    }
}

/// Where a closed episode sits in time: enough to rank it and to fetch it.
#[derive(Clone, Copy, PartialEq, Eq, prost::Message)]
pub struct EpisodeSpan {
    /// The session's pid.
    #[prost(int32, tag = "1")]
    pub pid: i32,
    /// When it started.
    #[prost(int64, tag = "2")]
    pub started_us: i64,
    /// When it ended.
    #[prost(int64, tag = "3")]
    pub ended_us: i64,
}

impl EpisodeSpan {
    /// How long it lasted.
    pub fn duration(&self) -> i64 {
        self.ended_us - self.started_us
    }
}

/// An episode: a stretch a session spent in one condition (trees
/// `episodes` and `open_episodes`).
#[derive(Clone, PartialEq, prost::Message)]
pub struct EpisodeRecord {
    /// Backend pid.
    #[prost(int32, tag = "1")]
    pub pid: i32,
    /// backend_start.
    #[prost(int64, optional, tag = "2")]
    pub backend_start_us: Option<i64>,
    /// usename.
    #[prost(string, optional, tag = "3")]
    pub user: Option<String>,
    /// datname.
    #[prost(string, optional, tag = "4")]
    pub database: Option<String>,
    /// application_name.
    #[prost(string, optional, tag = "5")]
    pub application_name: Option<String>,
    /// client_addr.
    #[prost(string, optional, tag = "6")]
    pub client_addr: Option<String>,
    /// xact_start.
    #[prost(int64, optional, tag = "7")]
    pub xact_start_us: Option<i64>,
    /// When the condition began.
    #[prost(int64, tag = "8")]
    pub started_us: i64,
    /// When it ended; absent while open.
    #[prost(int64, optional, tag = "9")]
    pub ended_us: Option<i64>,
    /// The last sample that saw it.
    #[prost(int64, tag = "10")]
    pub last_seen_us: i64,
    /// The session's query text, by reference.
    #[prost(uint64, optional, tag = "11")]
    pub query_id: Option<u64>,
    /// backend_type.
    #[prost(string, optional, tag = "12")]
    pub backend_type: Option<String>,
    /// query_start of the statement involved.
    #[prost(int64, optional, tag = "13")]
    pub query_start_us: Option<i64>,
    /// Samples per wait event seen during it.
    #[prost(map = "string, uint32", tag = "14")]
    pub wait_events: HashMap<String, u32>,
    /// Sessions that blocked it (lock waits).
    #[prost(message, repeated, tag = "15")]
    pub blockers: Vec<BlockerRecord>,
    /// For instance-level episodes: what it is about.
    #[prost(string, optional, tag = "16")]
    pub detail: Option<String>,
    /// Samples that saw it.
    #[prost(uint32, tag = "17")]
    pub samples: u32,
}

impl EpisodeRecord {
    /// When it ended, or was last seen while open.
    pub fn end(&self) -> i64 {
        self.ended_us.unwrap_or(self.last_seen_us)
    }

    /// Where it sits in time.
    pub fn span(&self) -> EpisodeSpan {
        EpisodeSpan {
            pid: self.pid,
            started_us: self.started_us,
            ended_us: self.end(),
        }
    }
}

/// A session that blocked a lock wait.
#[derive(Clone, PartialEq, prost::Message)]
pub struct BlockerRecord {
    /// Its pid.
    #[prost(int32, tag = "1")]
    pub pid: i32,
    /// Its backend_start.
    #[prost(int64, optional, tag = "2")]
    pub backend_start_us: Option<i64>,
    /// usename.
    #[prost(string, optional, tag = "3")]
    pub user: Option<String>,
    /// application_name.
    #[prost(string, optional, tag = "4")]
    pub application_name: Option<String>,
    /// Its state when first seen blocking.
    #[prost(string, optional, tag = "5")]
    pub state: Option<String>,
    /// Its query when first seen blocking, by reference.
    #[prost(uint64, optional, tag = "6")]
    pub query_id: Option<u64>,
    /// Seen idle in transaction while blocking.
    #[prost(bool, tag = "7")]
    pub idle_in_transaction: bool,
    /// First sample that saw it blocking.
    #[prost(int64, tag = "8")]
    pub first_seen_us: i64,
    /// Last sample that saw it blocking.
    #[prost(int64, tag = "9")]
    pub last_seen_us: i64,
    /// Seen waiting on a lock itself while blocking.
    #[prost(bool, tag = "10")]
    pub waiting: bool,
}
