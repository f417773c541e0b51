//! Group commit: many appends, one disk flush.
//!
//! Every snapshot must be durable before it is acknowledged, but a flush
//! (fsync) per snapshot would cap ingest at the disk's sync rate. Instead
//! each writer takes a ticket after its append and waits until a flush that
//! began after its ticket has finished. Whoever finds no flush running
//! becomes the flusher for everyone waiting, so under load one fsync
//! covers every append that arrived while the previous one ran.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::{watch, Mutex};

use crate::store::{Store, StoreError};

/// Coordinates flushes of one store.
pub struct GroupCommit {
    store: Arc<dyn Store>,
    /// Tickets handed out.
    requested: AtomicU64,
    /// The highest ticket covered by a finished flush.
    completed: watch::Sender<u64>,
    /// Held by the writer that is flushing.
    flushing: Mutex<()>,
}

impl GroupCommit {
    /// Group commit over `store`.
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self {
            store,
            requested: AtomicU64::new(0),
            completed: watch::Sender::new(0),
            flushing: Mutex::new(()),
        }
    }

    /// Returns once everything appended before the call is durable.
    pub async fn durable(&self) -> Result<(), StoreError> {
        let ticket = self.requested.fetch_add(1, Ordering::SeqCst) + 1;
        let mut done = self.completed.subscribe();
        loop {
            if *done.borrow_and_update() >= ticket {
                return Ok(());
            }
            if let Ok(guard) = self.flushing.try_lock() {
                // Every ticket up to here was taken after its append.
                let upto = self.requested.load(Ordering::SeqCst);
                let store = self.store.clone();
                let flushed = tokio::task::spawn_blocking(move || store.flush())
                    .await
                    .expect("flush task panicked");
                // Free the flusher's place before announcing the flush: a
                // writer that found it taken waits for this announcement.
                drop(guard);
                if let Err(e) = flushed {
                    // Wake the writers waiting on this flush: each tries
                    // its own rather than wait for one that may not come.
                    self.completed.send_modify(|_| {});
                    return Err(e);
                }
                self.completed.send_modify(|c| *c = (*c).max(upto));
                continue;
            }
            // Someone else is flushing; it may not cover this ticket, so
            // look again when it ends (it announces after letting go).
            if done.changed().await.is_err() {
                return Ok(()); // unreachable: the sender lives in self
            }
        }
    }

    /// Flushes now, whatever is pending.
    pub async fn flush(&self) -> Result<(), StoreError> {
        self.durable().await
    }
}

impl std::fmt::Debug for GroupCommit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupCommit")
            .field("requested", &self.requested)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::store::SledStore;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_writer_gets_through_when_many_wait_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(SledStore::open(dir.path()).unwrap());
        let commit = Arc::new(GroupCommit::new(store));
        let writers: Vec<_> = (0..8)
            .map(|_| {
                let commit = commit.clone();
                tokio::spawn(async move {
                    for _ in 0..200 {
                        commit.durable().await.unwrap();
                    }
                })
            })
            .collect();
        let all = async {
            for w in writers {
                w.await.unwrap();
            }
        };
        tokio::time::timeout(Duration::from_secs(60), all)
            .await
            .expect("a writer waits for a flush announcement that never comes");
        assert_eq!(*commit.completed.borrow(), 8 * 200);
    }
}
