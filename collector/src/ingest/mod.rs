//! Turns arriving snapshots into stored history: the sample itself, and
//! what long-range questions need (minute rollups, episodes), maintained as
//! samples arrive so those questions never rescan raw samples.
//!
//! One writer per instance at a time (a per-instance lock), so a duplicate
//! check followed by an append cannot race with a second stream carrying
//! the same instance.

mod dimensions;
mod durable;
pub mod episodes;
pub mod instance;
pub mod longest;
mod open_set;
pub mod rollup;
mod seen;

pub use open_set::Changes;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use pgtrail_proto::intern::Decoded;
use pgtrail_proto::model::Snapshot;
use pgtrail_proto::pb;
use pgtrail_proto::received::RowBytes;
use pgtrail_proto::time::Micros;
use pgtrail_proto::unchanged::Unchanged;

use self::episodes::{SessionEpisodes, SESSION_KINDS};
use self::instance::InstanceEpisodes;
use self::rollup::{Context, Dimensions, Moved};
use self::seen::Seen;
use crate::store::{
    Append, EpisodeKind, EpisodeRecord, InstanceId, Resolution, Rollup, SharedRollup, Store,
    StoreError, StoredSample,
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
    /// Client sessions' values numbered, for counting them.
    dimensions: Dimensions,
    last_at: Micros,
    /// The stream that sent the sample at `last_at` (when it came through
    /// [`Ingestor::append_decoded`]), and that time; forgotten by any
    /// append that does not store an in-order sample, so that a
    /// duplicate's rows (which may differ) never pass for the stored ones.
    last_from: Option<(u64, Micros)>,
    facts: Option<pb::InstanceFacts>,
    /// Query texts known to be stored, so a sample passes the store only
    /// texts it may not have (bounded: forgotten all at once when full).
    stored_texts: HashSet<u64>,
    /// The current minute and hour as the last in-order sample left them,
    /// shared with the store, which keeps them open.
    rollups: Shared,
    /// What is known of their maxima (minute's, hour's).
    seen: [Seen; 2],
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

    /// Writes the open minute and hour rollups and makes everything
    /// durable: what a clean stop calls once no more snapshots come.
    pub async fn close(&self) -> Result<(), StoreError> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || store.persist_open())
            .await
            .expect("persist task panicked")
    }

    /// Returns once everything appended before the call is durable,
    /// sharing one flush with concurrent callers.
    pub async fn durable(&self) -> Result<(), StoreError> {
        self.commit.durable().await
    }

    /// Stores `snapshot` of `host` without waiting for the disk; call
    /// [`Ingestor::flush`] before acknowledging it.
    pub async fn append(&self, host: &str, snapshot: &Snapshot) -> Result<Outcome, StoreError> {
        self.append_with(host, snapshot, None, None).await
    }

    /// As [`Ingestor::append`], for a snapshot as it came out of a stream:
    /// the rows it moved over from the one before are not encoded again
    /// when that one is the instance's latest stored sample, nor are the
    /// rows `rows` holds as they came in its message.
    pub async fn append_decoded(
        &self,
        host: &str,
        decoded: &Decoded,
        rows: Option<&RowBytes>,
    ) -> Result<Outcome, StoreError> {
        self.append_with(host, &decoded.snapshot, Some(&decoded.unchanged), rows)
            .await
    }

    async fn append_with(
        &self,
        host: &str,
        snapshot: &Snapshot,
        unchanged: Option<&Unchanged>,
        rows: Option<&RowBytes>,
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
            // Store reads (after a crash, its minute folded again from its
            // samples): off the async workers, which serve every stream.
            let store = self.store.clone();
            let (host, instance) = (host.to_string(), snapshot.instance.clone());
            let state = tokio::task::spawn_blocking(move || load(&*store, &host, &instance))
                .await
                .expect("load task panicked")?;
            *guard = Some(state);
        }
        let state = guard.as_mut().expect("loaded above");
        if seals(state, snapshot.sampled_at) {
            // Sealing the minute before syncs files: milliseconds that
            // would hold up every other stream on this worker.
            let (store, id, t) = (self.store.clone(), state.id, snapshot.sampled_at);
            tokio::task::spawn_blocking(move || store.seal_before(id, t))
                .await
                .expect("seal task panicked")?;
        }
        let result = self.append_locked(state, snapshot, unchanged, rows);
        if result.is_err() {
            // The tracker may be ahead of the store: reload it next time.
            *guard = None;
        }
        result
    }

    fn append_locked(
        &self,
        state: &mut InstanceState,
        snapshot: &Snapshot,
        unchanged: Option<&Unchanged>,
        rows: Option<&RowBytes>,
    ) -> Result<Outcome, StoreError> {
        let last_from = state.last_from.take();
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
        // Only this stream's previous snapshot, stored last, is what the
        // rows were moved over from.
        let moved_from = unchanged
            .filter(|u| last_from.is_some() && last_from == u.since.map(|s| (u.stream, s)));
        let mut alone_dims;
        let (sample, next_context) = if in_order {
            let moved = moved_from.and_then(|u| {
                Some(Moved {
                    since: u.since?,
                    pids: &u.sessions,
                })
            });
            rollup::sample(snapshot, &state.context, &mut state.dimensions, moved)
        } else {
            // A late sample (an agent's spool replaying behind newer ones)
            // is stored and rolled up on its own, but not tracked.
            let alone = Context {
                user_limit: state.context.user_limit,
                ..Default::default()
            };
            alone_dims = Dimensions::default();
            rollup::sample(snapshot, &alone, &mut alone_dims, None)
        };
        let cache = std::mem::take(&mut state.rollups);
        let seen = in_order.then_some(&mut state.seen);
        let (rollups, open_rollups) = self.fold_rollups(state.id, cache, t, &sample, seen)?;
        let mut changes = Changes::default();
        if in_order {
            changes.extend(state.sessions.observe(snapshot));
            let in_force = facts.as_ref().or(state.facts.as_ref());
            changes.extend(state.instance.observe(snapshot, in_force));
        }
        let mut both = Folded {
            now: rollups,
            open: open_rollups,
        };
        self.note_ended(state.id, &mut both, &changes.closed)?;
        let texts = snapshot
            .queries
            .iter()
            .filter(|(id, _)| !state.stored_texts.contains(id))
            .map(|(id, text)| (*id, text.clone()))
            .collect();
        let dropped = snapshot.dropped_before;
        let mut append = Append {
            instance: state.id,
            sampled_at: t,
            sample: stored_sample(snapshot),
            sessions: &snapshot.sessions,
            processes: &snapshot.processes,
            unchanged: moved_from,
            received: rows,
            texts,
            facts: facts.clone(),
            rollups: both.now,
            open_rollups: both.open,
            opened: changes.opened,
            closed: changes.closed,
            dropped,
        };
        if !self.store.append(&mut append)? {
            if in_order {
                // Not expected (nothing after `last_at` is stored), but the
                // shared rollups now hold a sample the store does not:
                // fold them again from what it holds.
                state.rollups = shared(current_rollups(
                    &*self.store,
                    state.id,
                    state.last_at,
                    &state.context,
                )?);
            }
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
            state.last_from = unchanged.map(|u| (u.stream, t));
            state.rollups = append.open_rollups;
        } else {
            // A late sample may have written a cached rollup: read the
            // current ones from the store next time.
            state.rollups.clear();
        }
        Ok(Outcome::Stored)
    }

    /// The minute and hour rollups `t` falls in, with its sample folded in:
    /// kept open when the sample is in order, written now when it is late.
    /// The instance's current ones are kept in memory (`cache`), so a
    /// sample reads the store only when it starts a new minute or hour. In
    /// order, a sample that starts a new minute closes the cached one
    /// (written now) and writes the hour as it stood: stored hours then
    /// always cover whole stored minutes.
    ///
    /// In order (`seen` given: what is known of the open rollups' maxima),
    /// the sample is folded in place into the rollups the store keeps open
    /// (shared with it), so nothing is copied or encoded per sample; a late
    /// sample is folded into copies.
    fn fold_rollups(
        &self,
        id: InstanceId,
        mut cache: Shared,
        t: Micros,
        sample: &rollup::Sample<'_>,
        seen: Option<&mut [Seen; 2]>,
    ) -> Result<(Rollups, Shared), StoreError> {
        let minute_start = Resolution::Minute.start_of(t);
        let hour_start = Resolution::Hour.start_of(t);
        let new_minute = cache
            .iter()
            .any(|(r, s, _)| *r == Resolution::Minute && *s != minute_start);
        let mut current = |res: Resolution, start: Micros| -> Result<SharedRollup, StoreError> {
            let cached = cache
                .iter()
                .position(|(r, s, _)| *r == res && *s == start)
                .map(|i| cache.swap_remove(i).2);
            match cached {
                Some(r) => Ok(r),
                None => Ok(SharedRollup::new(
                    self.store.rollup(id, res, start)?.unwrap_or_default(),
                )),
            }
        };
        let minute = current(Resolution::Minute, minute_start)?;
        let hour = current(Resolution::Hour, hour_start)?;
        let Some([minute_seen, hour_seen]) = seen else {
            let (mut minute, mut hour) = (minute.get(), hour.get());
            fold(&mut minute, &mut hour, sample, [None, None]);
            let now = vec![
                (Resolution::Minute, minute_start, minute),
                (Resolution::Hour, hour_start, hour),
            ];
            return Ok((now, Vec::new()));
        };
        let mut now = Vec::new();
        {
            let (mut m, mut h) = (minute.lock(), hour.lock());
            if new_minute && h.samples > 0 {
                now.push((Resolution::Hour, hour_start, h.clone()));
            }
            let numbering = sample.numbering();
            let seen = [
                Some(minute_seen.of(&minute, numbering)),
                Some(hour_seen.of(&hour, numbering)),
            ];
            fold(&mut m, &mut h, sample, seen);
        }
        // What is left in the cache is a minute or hour this sample left.
        now.extend(
            cache
                .into_iter()
                .map(|(res, start, r)| (res, start, r.get())),
        );
        let open = vec![
            (Resolution::Minute, minute_start, minute),
            (Resolution::Hour, hour_start, hour),
        ];
        Ok((now, open))
    }

    /// Notes each closed episode in the rollup of the hour it ended in: the
    /// current hour's, or (an episode that ended before the sample that
    /// saw it end, across an hour's start) an earlier one, which is then
    /// written with the sample.
    fn note_ended(
        &self,
        id: InstanceId,
        rollups: &mut Folded,
        closed: &[(EpisodeKind, EpisodeRecord)],
    ) -> Result<(), StoreError> {
        for (kind, e) in closed {
            let span = e.span();
            let start = Resolution::Hour.start_of(span.ended_us);
            let is_hour = |res: Resolution, s: Micros| res == Resolution::Hour && s == start;
            if let Some((_, _, open)) = rollups.open.iter().find(|r| is_hour(r.0, r.1)) {
                longest::note_ended(&mut open.lock(), *kind, span);
                continue;
            }
            let rollup = if let Some(at) = rollups.now.iter().position(|r| is_hour(r.0, r.1)) {
                &mut rollups.now[at].2
            } else {
                let stored = self.store.rollup(id, Resolution::Hour, start)?;
                let stored = stored.unwrap_or_else(|| Rollup {
                    longest_tracked: true,
                    ..Default::default()
                });
                rollups.now.push((Resolution::Hour, start, stored));
                &mut rollups.now.last_mut().expect("just pushed").2
            };
            longest::note_ended(rollup, *kind, span);
        }
        Ok(())
    }
}

/// The state of `host`'s `instance` as the store has it.
fn load(store: &dyn Store, host: &str, instance: &str) -> Result<InstanceState, StoreError> {
    let id = store.instance_id(host, instance)?;
    let open = |kinds: &[EpisodeKind]| -> Result<Vec<_>, StoreError> {
        let mut all = Vec::new();
        for &kind in kinds {
            let records = store.open_episodes(kind, id)?;
            all.extend(records.into_iter().map(|e| (kind, e)));
        }
        Ok(all)
    };
    let facts = store.facts_at(id, Micros::MAX)?;
    let context = Context {
        user_limit: facts.as_ref().and_then(user_limit),
        ..Default::default()
    };
    let last_at = store.sample_bounds(id)?.map_or(Micros::MIN, |b| b.1);
    let rollups = match last_at {
        Micros::MIN => Vec::new(),
        _ => shared(current_rollups(store, id, last_at, &context)?),
    };
    Ok(InstanceState {
        id,
        sessions: SessionEpisodes::resume(open(&SESSION_KINDS)?),
        instance: InstanceEpisodes::resume(open(&INSTANCE_KINDS)?),
        context,
        dimensions: Dimensions::default(),
        last_at,
        last_from: None,
        facts,
        stored_texts: HashSet::new(),
        rollups,
        seen: Default::default(),
    })
}

/// The minute and hour of the instance's latest sample (at `last_at`),
/// as stored when they cover every sample of that minute (the store
/// persisted them at shutdown, or still has them open), else rebuilt:
/// after a crash the open ones were lost, so the minute is folded
/// again from its samples and the hour from its stored minutes. Its
/// list of longest episodes is then no longer known to be complete.
fn current_rollups(
    store: &dyn Store,
    id: InstanceId,
    last_at: Micros,
    context: &Context,
) -> Result<Vec<(Resolution, Micros, Rollup)>, StoreError> {
    let minute_start = Resolution::Minute.start_of(last_at);
    let hour_start = Resolution::Hour.start_of(last_at);
    let samples = store.samples(id, minute_start, last_at)?;
    let minute = store.rollup(id, Resolution::Minute, minute_start)?;
    let hour = store.rollup(id, Resolution::Hour, hour_start)?;
    if let Some(minute) = minute.filter(|m| m.samples as usize == samples.len()) {
        return Ok(vec![
            (Resolution::Minute, minute_start, minute),
            (Resolution::Hour, hour_start, hour.unwrap_or_default()),
        ]);
    }
    let mut minute = Rollup::default();
    // The sample before the minute says what its first one continues.
    let mut context = match store.sample_at(id, minute_start - 1)? {
        Some((t, sample)) => rollup::stored_sample_rollup(t, sample, context).1,
        None => context.clone(),
    };
    let mut dims = Dimensions::default();
    for (t, sample) in samples {
        let snapshot = rollup::stored_snapshot(t, sample);
        let (sample, next) = rollup::sample(&snapshot, &context, &mut dims, None);
        rollup::fold_into_minute(&mut minute, &sample, None);
        context = next;
    }
    let mut rebuilt = Rollup::default();
    for (_, m) in store.rollups(id, Resolution::Minute, hour_start, minute_start - 1)? {
        rollup::merge(&mut rebuilt, &m);
    }
    rollup::merge(&mut rebuilt, &minute);
    if let Some(stored) = hour {
        rebuilt.longest = stored.longest;
    }
    rebuilt.longest_tracked = false;
    Ok(vec![
        (Resolution::Minute, minute_start, minute),
        (Resolution::Hour, hour_start, rebuilt),
    ])
}

/// Whether storing a sample at `t` starts a new minute of the instance,
/// which seals the one before.
fn seals(state: &InstanceState, t: Micros) -> bool {
    state.last_at != Micros::MIN
        && Resolution::Minute.start_of(t) > Resolution::Minute.start_of(state.last_at)
}

/// Rollups by resolution and start.
type Rollups = Vec<(Resolution, Micros, Rollup)>;

/// Open rollups by resolution and start.
type Shared = Vec<(Resolution, Micros, SharedRollup)>;

/// Rollups to share with the store.
fn shared(rollups: Rollups) -> Shared {
    rollups
        .into_iter()
        .map(|(res, start, r)| (res, start, SharedRollup::new(r)))
        .collect()
}

/// Folds a sample into its minute's rollup and its hour's, with what is
/// known of their maxima (see [`rollup::Sample::fold_into`]).
fn fold(
    minute: &mut Rollup,
    hour: &mut Rollup,
    sample: &rollup::Sample<'_>,
    [minute_seen, hour_seen]: [Option<&mut Seen>; 2],
) {
    rollup::fold_into_minute(minute, sample, minute_seen);
    if hour.samples == 0 {
        // A new hour: its list of longest episodes starts complete.
        hour.longest_tracked = true;
    }
    sample.fold_into(hour, hour_seen);
    hour.max_started_per_minute = hour
        .max_started_per_minute
        .max(minute.max_started_per_minute);
}

/// A sample's rollups: those written with it and those it leaves open.
struct Folded {
    now: Rollups,
    open: Shared,
}

/// The snapshot as a sample to store, but its rows (`Append` borrows them).
fn stored_sample(snapshot: &Snapshot) -> StoredSample {
    StoredSample {
        blind_spots: snapshot.blind_spots.clone(),
        seq: snapshot.seq,
        memory: snapshot.memory,
        sessions_total: snapshot.sessions_total,
        keyframe: true,
        ..Default::default()
    }
}

/// max_connections − superuser_reserved_connections.
pub fn user_limit(f: &pb::InstanceFacts) -> Option<u32> {
    Some(
        f.max_connections?
            .saturating_sub(f.superuser_reserved_connections.unwrap_or(0)),
    )
}
