//! What the collector's integration tests share: opening a store again
//! in the same process, once the previous one has let go of it.

// Each test file uses only some of these.
#![allow(dead_code)]

use std::path::Path;
use std::time::Duration;

use pgtrail_collector::store::SledStore;
use pgtrail_collector::Collector;

/// Runs `open` until it succeeds, for up to five seconds, then once more
/// and panics with its error.
///
/// A store dropped in this process still holds its directory for a
/// moment: sled's background threads release the lock after the drop.
fn when_free<T, E: std::fmt::Debug>(open: impl Fn() -> Result<T, E>) -> T {
    for _ in 0..200 {
        if let Ok(opened) = open() {
            return opened;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    open().unwrap()
}

/// Opens the store in `dir`, waiting for a previous one in this process
/// to let go of it.
pub fn reopen_store(dir: &Path) -> SledStore {
    when_free(|| SledStore::open(dir))
}

/// Opens the collector on `dir`, waiting for a previous one in this
/// process to let go of its store.
pub fn reopen_collector(dir: &Path) -> Collector {
    when_free(|| Collector::open(dir))
}
