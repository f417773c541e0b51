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
}

/// Connection counts over one minute (tree `minutes`).
#[derive(Clone, PartialEq, prost::Message)]
pub struct MinuteRollup {
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
    /// The highest count of each state on its own.
    #[prost(map = "string, uint32", tag = "5")]
    pub state_max: HashMap<String, u32>,
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
}
