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
            if let Ok(_guard) = self.flushing.try_lock() {
                // Every ticket up to here was taken after its append.
                let upto = self.requested.load(Ordering::SeqCst);
                let store = self.store.clone();
                tokio::task::spawn_blocking(move || store.flush())
                    .await
                    .expect("flush task panicked")?;
                self.completed.send_modify(|c| *c = (*c).max(upto));
                continue;
            }
            // Someone else is flushing; it may not cover this ticket, so
            // look again when it ends.
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
