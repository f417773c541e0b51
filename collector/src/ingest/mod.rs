//! Turns arriving snapshots into stored history: the sample itself, and
//! what long-range questions need (minute rollups, episodes), maintained as
//! samples arrive so those questions never rescan raw samples.
//!
//! One writer per instance at a time (a per-instance lock), so a duplicate
//! check followed by an append cannot race with a second stream carrying
//! the same instance.

mod durable;
pub mod episodes;
pub mod instance;
pub mod longest;
mod open_set;
pub mod rollup;

pub use open_set::Changes;

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use pgtrail_proto::model::Snapshot;
use pgtrail_proto::pb;
use pgtrail_proto::time::Micros;

use self::episodes::{SessionEpisodes, SESSION_KINDS};
use self::instance::InstanceEpisodes;
use self::rollup::Context;
use crate::store::{
    Append, EpisodeKind, EpisodeRecord, InstanceId, Resolution, Rollup, Store, StoreError,
    StoredSample,
};

/// Instance-level episode kinds (the others are per session).
const INSTANCE_KINDS: [EpisodeKind; 2] =
    [EpisodeKind::AuxMissing, EpisodeKind::AutovacuumSaturated];

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
    sessions: SessionEpisodes,
    instance: InstanceEpisodes,
    context: Context,
    last_at: Micros,
    facts: Option<pb::InstanceFacts>,
    /// Query texts known to be stored, so a sample passes the store only
    /// texts it may not have (bounded: forgotten all at once when full).
    stored_texts: HashSet<u64>,
    /// The rollups the last in-order sample wrote, as stored.
    rollups: Vec<(Resolution, Micros, Rollup)>,
}

/// How many stored text ids an instance remembers.
const MAX_KNOWN_TEXTS: usize = 100_000;

/// One instance's state behind its writer lock; `None` until loaded.
type Slot = Arc<tokio::sync::Mutex<Option<InstanceState>>>;

/// Stores snapshots with their derived records.
pub struct Ingestor {
    store: Arc<dyn Store>,
    /// (host, instance) → its slot.
    states: Mutex<HashMap<(String, String), Slot>>,
    commit: durable::GroupCommit,
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
            commit: durable::GroupCommit::new(store.clone()),
            store,
            states: Mutex::new(HashMap::new()),
        }
    }

    /// Stores `snapshot` of `host` and makes it durable before returning.
    /// Concurrent calls share flushes (group commit).
    pub async fn ingest(&self, host: &str, snapshot: &Snapshot) -> Result<Outcome, StoreError> {
        let outcome = self.append(host, snapshot).await?;
        if outcome == Outcome::Stored {
            self.commit.durable().await?;
        }
        Ok(outcome)
    }

    /// Makes everything appended so far durable.
    pub async fn flush(&self) -> Result<(), StoreError> {
        self.commit.flush().await
    }

    /// Returns once everything appended before the call is durable,
    /// sharing one flush with concurrent callers.
    pub async fn durable(&self) -> Result<(), StoreError> {
        self.commit.durable().await
    }

    /// Stores `snapshot` of `host` without waiting for the disk; call
    /// [`Ingestor::flush`] before acknowledging it.
    pub async fn append(&self, host: &str, snapshot: &Snapshot) -> Result<Outcome, StoreError> {
        self.append_snapshot(host, Cow::Borrowed(snapshot)).await
    }

    /// As [`Ingestor::append`], moving the snapshot's rows into the stored
    /// sample instead of copying them.
    pub async fn append_owned(
        &self,
        host: &str,
        snapshot: Snapshot,
    ) -> Result<Outcome, StoreError> {
        self.append_snapshot(host, Cow::Owned(snapshot)).await
    }

    async fn append_snapshot(
        &self,
        host: &str,
        snapshot: Cow<'_, Snapshot>,
    ) -> Result<Outcome, StoreError> {
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
        let open = |kinds: &[EpisodeKind]| -> Result<Vec<_>, StoreError> {
            let mut all = Vec::new();
            for &kind in kinds {
                let records = self.store.open_episodes(kind, id)?;
                all.extend(records.into_iter().map(|e| (kind, e)));
            }
            Ok(all)
        };
        let facts = self.store.facts_at(id, Micros::MAX)?;
        Ok(InstanceState {
            id,
            sessions: SessionEpisodes::resume(open(&SESSION_KINDS)?),
            instance: InstanceEpisodes::resume(open(&INSTANCE_KINDS)?),
            context: Context {
                user_limit: facts.as_ref().and_then(user_limit),
                ..Default::default()
            },
            last_at: self.store.sample_bounds(id)?.map_or(Micros::MIN, |b| b.1),
            facts,
            stored_texts: HashSet::new(),
            rollups: Vec::new(),
        })
    }

    fn append_locked(
        &self,
        state: &mut InstanceState,
        owned: Cow<'_, Snapshot>,
    ) -> Result<Outcome, StoreError> {
        let snapshot = owned.as_ref();
        let t = snapshot.sampled_at;
        // Nothing newer than the instance's latest sample is stored yet, so
        // only a sample at or before it needs looking up.
        if t <= state.last_at && self.store.has_sample(state.id, t)? {
            return Ok(Outcome::Duplicate);
        }
        let facts = snapshot
            .facts
            .as_ref()
            .filter(|f| state.facts.as_ref() != Some(*f))
            .cloned();
        if let Some(f) = &facts {
            state.context.user_limit = user_limit(f);
        }
        let in_order = t > state.last_at;
        let (sample_rollup, next_context) = if in_order {
            rollup::sample_rollup(snapshot, &state.context)
        } else {
            // A late sample (an agent's spool replaying behind newer ones)
            // is stored and rolled up on its own, but not tracked.
            let alone = Context {
                user_limit: state.context.user_limit,
                ..Default::default()
            };
            rollup::sample_rollup(snapshot, &alone)
        };
        let cache = std::mem::take(&mut state.rollups);
        let mut rollups = self.fold_rollups(state.id, cache, t, &sample_rollup)?;
        let mut changes = Changes::default();
        if in_order {
            changes.extend(state.sessions.observe(snapshot));
            let in_force = facts.as_ref().or(state.facts.as_ref());
            changes.extend(state.instance.observe(snapshot, in_force));
        }
        self.note_ended(state.id, &mut rollups, &changes.closed)?;
        let texts = snapshot
            .queries
            .iter()
            .filter(|(id, _)| !state.stored_texts.contains(id))
            .map(|(id, text)| (*id, text.clone()))
            .collect();
        let dropped = snapshot.dropped_before;
        let append = Append {
            instance: state.id,
            sampled_at: t,
            sample: stored_sample(owned),
            texts,
            facts: facts.clone(),
            rollups,
            opened: changes.opened,
            closed: changes.closed,
            dropped,
        };
        if !self.store.append(&append)? {
            return Ok(Outcome::Duplicate);
        }
        if facts.is_some() {
            state.facts = facts;
        }
        if state.stored_texts.len() + append.texts.len() > MAX_KNOWN_TEXTS {
            state.stored_texts.clear();
        }
        state
            .stored_texts
            .extend(append.texts.iter().map(|(id, _)| *id));
        if in_order {
            state.context = next_context;
            state.last_at = t;
            state.rollups = append.rollups;
        } else {
            // A late sample may have rewritten a cached rollup.
            state.rollups.clear();
        }
        Ok(Outcome::Stored)
    }

    /// The minute and hour rollups `t` falls in, with its sample folded in.
    /// The minute and hour rollups `t` falls in, with its sample folded in.
    /// The instance's current ones are kept in memory (`cache`), so a
    /// sample reads the store only when it starts a new minute or hour.
    fn fold_rollups(
        &self,
        id: InstanceId,
        mut cache: Vec<(Resolution, Micros, Rollup)>,
        t: Micros,
        sample: &Rollup,
    ) -> Result<Vec<(Resolution, Micros, Rollup)>, StoreError> {
        let mut current = |res: Resolution| -> Result<(Micros, Rollup), StoreError> {
            let start = res.start_of(t);
            let cached = cache
                .iter()
                .position(|(r, s, _)| *r == res && *s == start)
                .map(|i| cache.swap_remove(i).2);
            let rollup = match cached {
                Some(r) => r,
                None => self.store.rollup(id, res, start)?.unwrap_or_default(),
            };
            Ok((start, rollup))
        };
        let (minute_start, mut minute) = current(Resolution::Minute)?;
        rollup::fold_into_minute(&mut minute, sample);
        let (hour_start, mut hour) = current(Resolution::Hour)?;
        if hour.samples == 0 {
            // A new hour: its list of longest episodes starts complete.
            hour.longest_tracked = true;
        }
        rollup::merge(&mut hour, sample);
        hour.max_started_per_minute = hour
            .max_started_per_minute
            .max(minute.max_started_per_minute);
        Ok(vec![
            (Resolution::Minute, minute_start, minute),
            (Resolution::Hour, hour_start, hour),
        ])
    }

    /// Notes each closed episode in the rollup of the hour it ended in: the
    /// current hour's, or (an episode that ended before the sample that
    /// saw it end, across an hour's start) an earlier one, added to
    /// `rollups` so it is written with the sample.
    fn note_ended(
        &self,
        id: InstanceId,
        rollups: &mut Vec<(Resolution, Micros, Rollup)>,
        closed: &[(EpisodeKind, EpisodeRecord)],
    ) -> Result<(), StoreError> {
        for (kind, e) in closed {
            let span = e.span();
            let start = Resolution::Hour.start_of(span.ended_us);
            let at = rollups
                .iter()
                .position(|(r, s, _)| *r == Resolution::Hour && *s == start);
            let at = match at {
                Some(at) => at,
                None => {
                    let hour = self.store.rollup(id, Resolution::Hour, start)?;
                    let hour = hour.unwrap_or_else(|| Rollup {
                        longest_tracked: true,
                        ..Default::default()
                    });
                    rollups.push((Resolution::Hour, start, hour));
                    rollups.len() - 1
                }
            };
            longest::note_ended(&mut rollups[at].2, *kind, span);
        }
        Ok(())
    }
}

/// The snapshot as a sample to store, its rows moved when it is owned.
fn stored_sample(snapshot: Cow<'_, Snapshot>) -> StoredSample {
    let mut sample = StoredSample {
        blind_spots: snapshot.blind_spots.clone(),
        seq: snapshot.seq,
        memory: snapshot.memory,
        sessions_total: snapshot.sessions_total,
        keyframe: true,
        ..Default::default()
    };
    match snapshot {
        Cow::Owned(s) => {
            sample.sessions = s.sessions;
            sample.processes = s.processes;
        }
        Cow::Borrowed(s) => {
            sample.sessions = s.sessions.clone();
            sample.processes = s.processes.clone();
        }
    }
    sample
}

/// max_connections − superuser_reserved_connections.
pub fn user_limit(f: &pb::InstanceFacts) -> Option<u32> {
    Some(
        f.max_connections?
            .saturating_sub(f.superuser_reserved_connections.unwrap_or(0)),
    )
}
