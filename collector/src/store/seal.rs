//! Sealing an instance's minute, once its next minute starts: what its
//! tail ([`super::tail`]) gathered goes where it is kept for good.
//!
//! 1. The minute's samples, as one block, to the day's sample file
//!    ([`super::sealed`]).
//! 2. The episodes that closed during it, a block per kind, to the day's
//!    episode file ([`super::episode_blocks`]); one that ended too long
//!    before the minute to belong to its block, on its own to sled's
//!    `episodes`.
//! 3. One sled transaction: the blocks' index entries, those episodes,
//!    the identities they are first to refer to, and the instance's
//!    counters (samples and dropped snapshots since the last seal). From
//!    its commit on, the tail no longer holds the minute.
//! 4. A sled flush, then the tail's file replaced by a checkpoint of the
//!    open episodes (retried by the next append if either fails; the tail
//!    takes no entries meanwhile); then the open episodes a store before
//!    format 4 kept in sled are removed, the checkpoint holding them.
//!
//! A crash before 3 leaves bytes nothing refers to at the end of the
//! files, and the tail as it was: the minute is sealed again. A crash
//! between 3 and 4 leaves the old file, whose minute opening finds
//! sealed: its samples, closed episodes and counts are dropped, its open
//! episodes kept, and the file replaced then.

use pgtrail_proto::time::Micros;
use prost::Message;
use sled::transaction::{ConflictableTransactionError, TransactionError};
use sled::Transactional;

use super::closed;
use super::episode_blocks::{encode_block, within_reach};
use super::identities;
use super::keys::{self, EpisodeKind, InstanceId};
use super::records::{InstanceRecord, SampleBlock};
use super::sealed::compress_block;
use super::segments::{Holding, Segments};
use super::sled::{decode, SledStore};
use super::tail::{ClosedKey, Tail};
use super::StoreError;

/// A closed episode on its way to a block: kind, key, value, end.
type Sealing<'a> = (EpisodeKind, &'a ClosedKey, Vec<u8>, Micros);

impl SledStore {
    /// Seals the minute `tail` holds and starts the tail over.
    pub(super) fn seal(&self, instance: InstanceId, tail: &mut Tail) -> Result<(), StoreError> {
        let Some(minute) = tail.minute else {
            return Ok(());
        };
        let day = Segments::day_of(minute);
        let mut sample_block = None;
        if let Some((first_us, last_us)) = tail.bounds() {
            let raw = tail.sample_block()?;
            let frame = compress_block(&raw)?;
            let offset = self
                .segments
                .append(instance, (day, Holding::Samples), &frame)?;
            let record = SampleBlock {
                offset,
                len: frame.len() as u64,
                raw_len: raw.len() as u64,
                first_us,
                last_us,
                count: u32::try_from(tail.len()).unwrap_or(u32::MAX),
                layout: 0,
            };
            sample_block = Some(record.encode_to_vec());
        }

        let mut new_identities = Vec::new();
        let (mut blocked, mut loose): (Vec<Sealing<'_>>, Vec<Sealing<'_>>) =
            (Vec::new(), Vec::new());
        for (key, (kind, e)) in tail.closed() {
            let value = closed::encode(e, &self.known_identities, &mut new_identities);
            let end = e.end();
            let to = if within_reach(minute, end) {
                &mut blocked
            } else {
                &mut loose
            };
            to.push((*kind, key, value, end));
        }
        // In key order, so a kind's episodes are together, by end.
        let blocks: Vec<_> = blocked
            .chunk_by(|a, b| a.0 == b.0)
            .map(|group| {
                let episodes: Vec<_> = group
                    .iter()
                    .map(|(_, k, v, _)| (keys::closed_episode_span(*k), v.as_slice()))
                    .collect();
                let block = encode_block(&episodes);
                let count = u32::try_from(group.len()).unwrap_or(u32::MAX);
                (
                    group[0].0,
                    block,
                    group[0].3,
                    group[group.len() - 1].3,
                    count,
                )
            })
            .collect();
        let episode_blocks: Vec<_> = self
            .write_episode_blocks(instance, minute, &blocks)?
            .into_iter()
            .map(|(key, record)| (key, record.encode_to_vec()))
            .collect();

        let instance_key = self.instance_key_of(instance);
        let (samples, dropped) = (tail.len() as u64, tail.dropped());
        let trees = (
            &self.sample_blocks,
            &self.episode_blocks,
            &self.episodes,
            &self.identities,
            &self.instances,
        );
        trees
            .transaction(|(sample_blocks, blocks, episodes, idents, instances)| {
                if let Some(record) = &sample_block {
                    sample_blocks
                        .insert(&keys::instance_time(instance, minute), record.as_slice())?;
                }
                for (key, record) in &episode_blocks {
                    blocks.insert(key, record.as_slice())?;
                }
                for (_, key, value, _) in &loose {
                    episodes.insert(key.as_slice(), value.as_slice())?;
                }
                for (id, identity) in &new_identities {
                    idents.insert(&identities::key(*id), identity.as_slice())?;
                }
                let Some(v) = instances.get(&instance_key)? else {
                    return Err(ConflictableTransactionError::Abort(
                        StoreError::MissingInstance(instance),
                    ));
                };
                let mut record: InstanceRecord =
                    decode("instances", &v).map_err(ConflictableTransactionError::Abort)?;
                record.samples += samples;
                record.dropped += dropped;
                instances.insert(instance_key.as_slice(), record.encode_to_vec())?;
                Ok(())
            })
            .map_err(|e| match e {
                TransactionError::Abort(e) => e,
                TransactionError::Storage(e) => StoreError::Sled(e),
            })?;
        // Committed: whatever fails from here, the minute is sealed.
        tail.sealed(minute);
        self.known_identities.settle(&new_identities);
        self.restart_tail(instance, tail)
    }

    /// Replaces a sealed tail's file with a checkpoint of its open
    /// episodes, once sled has the seal on disk; then removes the open
    /// episodes sled kept before format 4, which the checkpoint holds now.
    /// Until that succeeds the tail takes no entries.
    pub(super) fn restart_tail(
        &self,
        instance: InstanceId,
        tail: &mut Tail,
    ) -> Result<(), StoreError> {
        self.db.flush()?;
        let legacy = tail.legacy_open().to_vec();
        let log = self.segments.replace_log(instance, tail.checkpoint())?;
        tail.restarted(log);
        if !legacy.is_empty() {
            let mut batch = sled::Batch::default();
            for key in legacy {
                batch.remove(key.as_slice());
            }
            self.open_episodes.apply_batch(batch)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use pgtrail_proto::time::SECOND;
    use prost::Message;

    use super::*;
    use crate::store::records::{EpisodeRecord, StoredSample};
    use crate::store::sealed::encode_entry;
    use crate::store::testing::{reopen, temp_store, Population, Rng};
    use crate::store::{Append, EpisodeFilter, Store};

    /// A whole minute.
    const T0: Micros = 1_790_000_040 * SECOND;

    use EpisodeKind::{Idle, IdleInTransaction as Iit, LockWait, SlowQuery};

    fn episode(pid: i32, started: Micros, ended: Option<Micros>) -> EpisodeRecord {
        EpisodeRecord {
            pid,
            backend_start_us: Some(started - 60 * SECOND),
            user: Some(format!("user{}", pid % 3)),
            database: Some("shop".into()),
            started_us: started,
            ended_us: ended,
            last_seen_us: ended.unwrap_or(started),
            query_id: Some(pid as u64),
            samples: 3,
            ..Default::default()
        }
    }

    /// What one sample changes: at `s` seconds from `T0`.
    #[derive(Default)]
    struct Step {
        s: f64,
        opened: Vec<(EpisodeKind, EpisodeRecord)>,
        closed: Vec<(EpisodeKind, EpisodeRecord)>,
        dropped: u64,
    }

    fn at(s: f64) -> Micros {
        T0 + (s * SECOND as f64) as Micros
    }

    fn append(store: &SledStore, step: Step) {
        let instance = store.instance_id("db", "5432").unwrap();
        let mut rng = Rng(step.s.to_bits());
        let sample = Population::default().step(&mut rng);
        let mut append = Append {
            instance,
            sampled_at: at(step.s),
            sessions: &sample.sessions,
            processes: &sample.processes,
            sample: sample.clone(),
            opened: step.opened,
            closed: step.closed,
            dropped: step.dropped,
            ..Default::default()
        };
        assert!(store.append(&mut append).unwrap(), "stored at {} s", step.s);
    }

    /// A sample at `s` that changes no episode.
    fn tick(store: &SledStore, s: f64) {
        append(
            store,
            Step {
                s,
                ..Default::default()
            },
        );
    }

    const EVERYTHING: EpisodeFilter = EpisodeFilter {
        ended_from: Micros::MIN,
        ended_to: Micros::MAX,
        started_to: Micros::MAX,
        min_duration: Micros::MIN,
    };

    fn closed(store: &SledStore, kind: EpisodeKind, filter: &EpisodeFilter) -> Vec<i32> {
        let instance = store.instance_id("db", "5432").unwrap();
        let found = store.closed_episodes(kind, instance, filter).unwrap();
        let spans = store.closed_episode_spans(kind, instance, filter).unwrap();
        assert_eq!(
            spans,
            found.iter().map(EpisodeRecord::span).collect::<Vec<_>>()
        );
        for e in &found {
            let one = store.closed_episode(kind, instance, &e.span()).unwrap();
            assert_eq!(one.as_ref(), Some(e), "pid {} read by its span", e.pid);
        }
        found.iter().map(|e| e.pid).collect()
    }

    fn open(store: &SledStore, kind: EpisodeKind) -> Vec<i32> {
        let instance = store.instance_id("db", "5432").unwrap();
        let mut pids: Vec<i32> = store
            .open_episodes(kind, instance)
            .unwrap()
            .iter()
            .map(|e| e.pid)
            .collect();
        pids.sort();
        pids
    }

    fn counters(store: &SledStore) -> (u64, u64) {
        let r = &store.instances().unwrap()[0];
        (r.samples, r.dropped)
    }

    /// Everything the store answers about episodes and counters.
    fn answers(store: &SledStore) -> HashMap<String, Vec<i32>> {
        let mut out = HashMap::new();
        for kind in [Idle, Iit, LockWait, SlowQuery] {
            out.insert(format!("closed {kind:?}"), closed(store, kind, &EVERYTHING));
            out.insert(format!("open {kind:?}"), open(store, kind));
        }
        let (samples, dropped) = counters(store);
        out.insert("counters".into(), vec![samples as i32, dropped as i32]);
        out
    }

    /// Two minutes and a bit: episodes open, change and close, one closes
    /// in the minute after it ended, one long after.
    fn two_minutes(store: &SledStore) {
        append(
            store,
            Step {
                s: 0.0,
                opened: vec![
                    (Iit, episode(1, at(-10.0), None)),
                    (Idle, episode(2, at(-5.0), None)),
                ],
                ..Default::default()
            },
        );
        append(
            store,
            Step {
                s: 1.0,
                opened: vec![(LockWait, episode(3, at(0.5), None))],
                closed: vec![(Idle, episode(2, at(-5.0), Some(at(1.0))))],
                dropped: 2,
            },
        );
        append(
            store,
            Step {
                s: 59.0,
                closed: vec![(SlowQuery, episode(4, at(30.0), Some(at(59.0))))],
                ..Default::default()
            },
        );
        // Seals the first minute.
        append(
            store,
            Step {
                s: 60.0,
                closed: vec![
                    (Idle, episode(5, at(50.0), Some(at(59.5)))),
                    (Idle, episode(6, at(-900.0), Some(at(-600.0)))),
                ],
                ..Default::default()
            },
        );
        // Seals the second, then closes one in the tail.
        append(
            store,
            Step {
                s: 120.0,
                closed: vec![(LockWait, episode(3, at(0.5), Some(at(119.0))))],
                dropped: 1,
                ..Default::default()
            },
        );
    }

    #[test]
    fn episodes_move_from_the_tail_to_blocks_and_outlive_a_reopen() {
        let (dir, store) = temp_store();
        two_minutes(&store);
        // Minute one: a block each of idle spells and slow queries; minute
        // two: the spell that ended a moment before it, in its block; the
        // one that ended ten minutes before, on its own in sled.
        assert_eq!(store.episode_blocks.len(), 3);
        assert_eq!(store.episodes.len(), 1);
        assert!(store.open_episodes.is_empty());
        let answers_before = answers(&store);
        assert_eq!(
            answers_before["closed Idle"],
            [6, 2, 5],
            "in the order they ended"
        );
        assert_eq!(answers_before["closed SlowQuery"], [4]);
        assert_eq!(answers_before["closed LockWait"], [3], "from the tail");
        assert_eq!(answers_before["open IdleInTransaction"], [1]);
        assert_eq!(answers_before["open LockWait"], Vec::<i32>::new());
        assert_eq!(answers_before["counters"], [5, 3]);
        let window = EpisodeFilter {
            ended_from: at(59.2),
            ended_to: at(60.0),
            ..EVERYTHING
        };
        assert_eq!(closed(&store, Idle, &window), [5]);

        store.flush().unwrap();
        drop(store);
        let store = reopen(dir.path());
        assert_eq!(answers(&store), answers_before);
        // And once more sealed, from the checkpoint the seal left.
        tick(&store, 180.0);
        store.flush().unwrap();
        drop(store);
        let store = reopen(dir.path());
        let mut expected = answers_before;
        expected.insert("counters".into(), vec![6, 3]);
        assert_eq!(answers(&store), expected);

        // Retention takes blocks and emptied files of episodes by their end.
        let instance = store.instance_id("db", "5432").unwrap();
        store.expire(instance, 0, at(61.0)).unwrap();
        assert_eq!(
            closed(&store, Idle, &EVERYTHING),
            [5],
            "ended within a minute of the cut"
        );
        assert_eq!(closed(&store, SlowQuery, &EVERYTHING), Vec::<i32>::new());
        store
            .expire(instance, 0, at(200.0) + 2 * super::super::segments::DAY)
            .unwrap();
        assert!(store.episode_blocks.is_empty());
        let files = std::fs::read_dir(dir.path().join("segments").join(instance.to_string()))
            .unwrap()
            .filter(|f| {
                f.as_ref()
                    .unwrap()
                    .path()
                    .extension()
                    .is_some_and(|e| e == "eps")
            })
            .count();
        assert_eq!(files, 0);
    }

    #[test]
    fn the_minute_reads_back_from_its_file_and_what_is_not_written_yet() {
        let (_dir, store) = temp_store();
        let instance = store.instance_id("db", "5432").unwrap();
        // Each sample as `tick` appends it.
        let sample = |s: f64| Population::default().step(&mut Rng(s.to_bits()));
        let read = |store: &SledStore| -> Vec<(Micros, Vec<i32>)> {
            let samples = store.samples(instance, Micros::MIN, Micros::MAX).unwrap();
            samples
                .into_iter()
                .map(|(t, s)| (t, s.sessions.iter().map(|s| s.pid).collect()))
                .collect()
        };
        let expected = |seconds: &[f64]| -> Vec<(Micros, Vec<i32>)> {
            let pids = |s: f64| sample(s).sessions.iter().map(|s| s.pid).collect();
            seconds.iter().map(|&s| (at(s), pids(s))).collect()
        };
        for s in [0.0, 1.0, 2.0] {
            tick(&store, s);
        }
        store.flush().unwrap();
        // In the file now; the next two only in memory.
        for s in [3.0, 4.0] {
            tick(&store, s);
        }
        let minute = expected(&[0.0, 1.0, 2.0, 3.0, 4.0]);
        assert_eq!(read(&store), minute);
        let sessions = |t: Micros| {
            let (_, stored) = store.sample_at(instance, t).unwrap().unwrap();
            stored.sessions
        };
        assert_eq!(sessions(at(1.0)), sample(1.0).sessions, "from the file");
        assert_eq!(sessions(at(4.0)), sample(4.0).sessions, "not written yet");
        // Sealed: the block holds the whole minute.
        tick(&store, 60.0);
        assert_eq!(store.sample_blocks.len(), 1);
        let mut all = minute;
        all.extend(expected(&[60.0]));
        assert_eq!(read(&store), all);
    }

    #[test]
    fn a_minute_sealed_ahead_of_the_next_sample_is_stored_once() {
        let (_dir, store) = temp_store();
        let instance = store.instance_id("db", "5432").unwrap();
        tick(&store, 0.0);
        tick(&store, 1.0);
        store.seal_before(instance, at(30.0)).unwrap();
        assert!(
            store.sample_blocks.is_empty(),
            "the same minute: nothing sealed"
        );
        store.seal_before(instance, at(60.0)).unwrap();
        assert_eq!(
            store.sample_blocks.len(),
            1,
            "sealed before the sample came"
        );
        tick(&store, 60.0);
        assert_eq!(store.sample_blocks.len(), 1, "the append found it sealed");
        let times: Vec<Micros> = store
            .samples(instance, Micros::MIN, Micros::MAX)
            .unwrap()
            .into_iter()
            .map(|(t, _)| t)
            .collect();
        assert_eq!(times, [at(0.0), at(1.0), at(60.0)]);
    }

    #[test]
    fn a_crash_between_the_seal_and_the_new_log_loses_and_repeats_nothing() {
        let (dir, store) = temp_store();
        let instance = store.instance_id("db", "5432").unwrap();
        append(
            &store,
            Step {
                s: 0.0,
                opened: vec![(Iit, episode(1, at(-10.0), None))],
                closed: vec![(Idle, episode(2, at(-5.0), Some(at(0.0))))],
                dropped: 4,
            },
        );
        tick(&store, 1.0);
        store.flush().unwrap();
        let log = dir
            .path()
            .join("segments")
            .join(instance.to_string())
            .join("open.log");
        let before_seal = std::fs::read(&log).unwrap();
        let minute_one = answers(&store);
        tick(&store, 60.0);
        store.flush().unwrap();
        drop(store);
        // The log as it was when the crash came: sealed, not yet replaced.
        std::fs::write(&log, before_seal).unwrap();
        let store = reopen(dir.path());
        assert_eq!(answers(&store), minute_one);
        assert_eq!(
            store
                .samples(instance, Micros::MIN, Micros::MAX)
                .unwrap()
                .len(),
            2
        );
        assert_ne!(
            std::fs::read(&log).unwrap().len(),
            0,
            "replaced by a checkpoint"
        );
        drop(store);
        let store = reopen(dir.path());
        assert_eq!(answers(&store), minute_one);
    }

    #[test]
    fn a_tail_entry_that_does_not_read_is_cut_off_with_what_follows() {
        let (dir, store) = temp_store();
        let instance = store.instance_id("db", "5432").unwrap();
        two_minutes(&store);
        store.flush().unwrap();
        let expected = answers(&store);
        drop(store);
        let log = dir
            .path()
            .join("segments")
            .join(instance.to_string())
            .join("open.log");
        let whole = std::fs::read(&log).unwrap();
        // Zeros a power loss left after the last entry synced.
        let mut bytes = whole.clone();
        bytes.extend_from_slice(&[0; 64]);
        std::fs::write(&log, bytes).unwrap();
        let store = reopen(dir.path());
        assert_eq!(answers(&store), expected);
        assert_eq!(std::fs::read(&log).unwrap(), whole);
    }

    #[test]
    fn open_episodes_an_older_build_kept_in_sled_move_to_the_tail() {
        let (dir, store) = temp_store();
        let instance = store.instance_id("db", "5432").unwrap();
        let e = episode(7, at(-30.0), None);
        let key = keys::open_episode(Iit, instance, e.pid, e.started_us);
        store.open_episodes.insert(key, e.encode_to_vec()).unwrap();
        drop(store);
        let store = reopen(dir.path());
        assert_eq!(open(&store, Iit), [7]);
        tick(&store, 0.0);
        tick(&store, 60.0);
        assert!(store.open_episodes.is_empty(), "removed by the seal");
        drop(store);
        let store = reopen(dir.path());
        assert_eq!(open(&store, Iit), [7], "kept by the checkpoint");
    }

    #[test]
    fn a_tail_log_of_format_3_is_sealed_as_it_is() {
        let (dir, store) = temp_store();
        let instance = store.instance_id("db", "5432").unwrap();
        store.meta.insert("format", &3u32.to_be_bytes()).unwrap();
        drop(store);
        // Three keyframes of one minute, as a format-3 tail held them.
        let (mut rng, mut backends) = (Rng(3), Population::default());
        let samples: Vec<StoredSample> = (0..3).map(|_| backends.step(&mut rng)).collect();
        let mut raw = Vec::new();
        let mut prev = 0;
        for (i, sample) in samples.iter().enumerate() {
            let t = at(i as f64);
            encode_entry(&mut raw, prev, t, &sample.encode_to_vec());
            prev = t;
        }
        let log = dir
            .path()
            .join("segments")
            .join(instance.to_string())
            .join("open.log");
        std::fs::create_dir_all(log.parent().unwrap()).unwrap();
        std::fs::write(&log, raw).unwrap();
        let store = reopen(dir.path());
        assert_eq!(store.sample_blocks.len(), 1);
        let read = store.samples(instance, Micros::MIN, Micros::MAX).unwrap();
        assert_eq!(
            read.iter().map(|(t, _)| *t).collect::<Vec<_>>(),
            [at(0.0), at(1.0), at(2.0)]
        );
        assert_eq!(read[2].1.sessions, samples[2].sessions);
        // The rest of that minute comes late; the next is a tail's again.
        tick(&store, 3.0);
        tick(&store, 60.0);
        assert_eq!(store.samples.len(), 1);
        assert_eq!(
            store
                .samples(instance, Micros::MIN, Micros::MAX)
                .unwrap()
                .len(),
            5
        );
    }
}
