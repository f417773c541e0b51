//! Turns arriving snapshots into stored history: the sample itself, and
//! what long-range questions need (minute rollups, episodes), maintained as
//! samples arrive so those questions never rescan raw samples.
//!
//! One writer per instance at a time (a per-instance lock), so a duplicate
//! check followed by an append cannot race with a second stream carrying
//! the same instance.

pub mod episodes;
pub mod rollup;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use pgtrail_proto::model::Snapshot;
use pgtrail_proto::pb;
use pgtrail_proto::time::Micros;

use self::episodes::EpisodeTracker;
use crate::store::{Append, EpisodeKind, InstanceId, Store, StoreError, StoredSample};

/// What became of a snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Stored now.
    Stored,
    /// Already stored: a redelivery, counted once.
    Duplicate,
}

/// What the ingestor keeps per instance between samples.
#[derive(Debug)]
struct InstanceState {
    id: InstanceId,
    tracker: EpisodeTracker,
    last_at: Micros,
    facts: Option<pb::InstanceFacts>,
}

/// One instance's state behind its writer lock; `None` until loaded.
type Slot = Arc<tokio::sync::Mutex<Option<InstanceState>>>;

/// Stores snapshots with their derived records.
pub struct Ingestor {
    store: Arc<dyn Store>,
    /// (host, instance) → its slot.
    states: Mutex<HashMap<(String, String), Slot>>,
}

impl std::fmt::Debug for Ingestor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ingestor").finish_non_exhaustive()
    }
}

impl Ingestor {
    /// An ingestor writing into `store`.
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self {
            store,
            states: Mutex::new(HashMap::new()),
        }
    }

    /// Stores `snapshot` of `host` and makes it durable before returning.
    pub async fn ingest(&self, host: &str, snapshot: &Snapshot) -> Result<Outcome, StoreError> {
        let outcome = self.append(host, snapshot).await?;
        if outcome == Outcome::Stored {
            self.flush().await?;
        }
        Ok(outcome)
    }

    /// Makes everything appended so far durable.
    pub async fn flush(&self) -> Result<(), StoreError> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || store.flush())
            .await
            .expect("flush task panicked")
    }

    /// Stores `snapshot` of `host` without waiting for the disk; call
    /// [`Ingestor::flush`] before acknowledging it.
    pub async fn append(&self, host: &str, snapshot: &Snapshot) -> Result<Outcome, StoreError> {
        let slot = {
            let mut states = self.states.lock().expect("not poisoned");
            states
                .entry((host.to_string(), snapshot.instance.clone()))
                .or_default()
                .clone()
        };
        let mut guard = slot.lock().await;
        if guard.is_none() {
            *guard = Some(self.load(host, &snapshot.instance)?);
        }
        let state = guard.as_mut().expect("loaded above");
        let result = self.append_locked(state, snapshot);
        if result.is_err() {
            // The tracker may be ahead of the store: reload it next time.
            *guard = None;
        }
        result
    }

    fn load(&self, host: &str, instance: &str) -> Result<InstanceState, StoreError> {
        let id = self.store.instance_id(host, instance)?;
        let open = self
            .store
            .open_episodes(EpisodeKind::IdleInTransaction, id)?;
        Ok(InstanceState {
            id,
            tracker: EpisodeTracker::resume(open),
            last_at: self.store.sample_bounds(id)?.map_or(Micros::MIN, |b| b.1),
            facts: self.store.facts_at(id, Micros::MAX)?,
        })
    }

    fn append_locked(
        &self,
        state: &mut InstanceState,
        snapshot: &Snapshot,
    ) -> Result<Outcome, StoreError> {
        let t = snapshot.sampled_at;
        if self.store.has_sample(state.id, t)? {
            return Ok(Outcome::Duplicate);
        }
        let (total, by_state) = rollup::client_counts(snapshot);
        let minute = rollup::minute_of(t);
        let mut rollup = self.store.minute(state.id, minute)?.unwrap_or_default();
        rollup::fold(&mut rollup, t, total, &by_state);

        let facts = snapshot
            .facts
            .as_ref()
            .filter(|f| state.facts.as_ref() != Some(*f))
            .cloned();
        // Episodes need samples in order; a late one (an agent's spool
        // replaying behind newer samples) is stored but not tracked.
        let changes = if t > state.last_at {
            state.tracker.observe(snapshot)
        } else {
            Default::default()
        };
        let kind = EpisodeKind::IdleInTransaction;
        let append = Append {
            instance: state.id,
            sampled_at: t,
            sample: StoredSample {
                sessions: snapshot.sessions.clone(),
                processes: snapshot.processes.clone(),
                blind_spots: snapshot.blind_spots.clone(),
                seq: snapshot.seq,
                memory: snapshot.memory,
            },
            texts: snapshot
                .queries
                .iter()
                .map(|(id, text)| (*id, text.clone()))
                .collect(),
            facts: facts.clone(),
            minute: Some((minute, rollup)),
            opened: changes.opened.into_iter().map(|e| (kind, e)).collect(),
            closed: changes.closed.into_iter().map(|e| (kind, e)).collect(),
            dropped: snapshot.dropped_before,
        };
        if !self.store.append(&append)? {
            return Ok(Outcome::Duplicate);
        }
        if facts.is_some() {
            state.facts = facts;
        }
        state.last_at = state.last_at.max(t);
        Ok(Outcome::Stored)
    }
}
