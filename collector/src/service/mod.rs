//! The gRPC face of the collector: [`IngestService`] for agents and
//! [`HistoryService`] for the CLI.

mod history;
mod ingest;

pub use history::HistoryService;
pub use ingest::IngestService;

/// The largest message accepted, in bytes. A snapshot of 10,000 sessions
/// with fresh 1 KiB query texts is about 12 MiB.
pub const MAX_MESSAGE_BYTES: usize = 64 << 20;
