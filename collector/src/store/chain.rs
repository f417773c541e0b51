//! The delta chains of [`SledStore`]'s samples: how a sample is encoded
//! against the instance's previous one, how a stored delta is rebuilt into
//! a full sample, and where retention may cut without breaking a chain.
//! The format itself is [`super::delta`].

use pgtrail_proto::time::Micros;
use prost::bytes::Bytes;

use super::compress;
use super::delta::{Base, Encoded, Rows, Stored};
use super::keys::{self, InstanceId, Resolution};
use super::records::StoredSample;
use super::sealed::Origin;
use super::sled::SledStore;
use super::{Append, StoreError};

impl SledStore {
    /// How `a`'s sample is stored (not compressed yet), and its rows as
    /// the next sample's base: a delta against the instance's previous sample when that is
    /// in the same minute and older, else a keyframe.
    ///
    /// Rows `a` says did not change since the previous sample (when that
    /// is the base) are copied from the base, not encoded again.
    pub(super) fn encode_sample(&self, a: &Append) -> (Vec<u8>, Base) {
        let previous = {
            let chains = self.chains.lock().expect("not poisoned");
            chains
                .get(&a.instance)
                .map(|(last, base)| (*last, base.clone()))
        };
        let Some((last, base)) = previous else {
            let current = Encoded::of(a.sessions, a.processes, None, a.received);
            return (current.keyframe(&a.sample), current.into_base());
        };
        let reuse = a
            .unchanged
            .filter(|u| u.since == Some(last))
            .map(|u| (base.as_ref(), u));
        let current = Encoded::of(a.sessions, a.processes, reuse, a.received);
        if last < a.sampled_at
            && Resolution::Minute.start_of(last) == Resolution::Minute.start_of(a.sampled_at)
        {
            let current = current.into_base();
            (base.delta(last, &current, &a.sample), current)
        } else {
            (current.keyframe(&a.sample), current.into_base())
        }
    }

    /// A stored sample with all its rows decoded: a keyframe's own, a
    /// delta's rebuilt from its chain.
    pub(super) fn rebuild(
        &self,
        instance: InstanceId,
        at: Micros,
        stored: Stored,
        origin: &Origin,
    ) -> Result<StoredSample, StoreError> {
        let rows = self.chain_rows(instance, at, &stored, origin)?;
        rows.into_sample(stored.header).map_err(corrupt)
    }

    /// The rows of `stored`, the sample at `at`: a keyframe's own, a
    /// delta's applied to the rows of its chain, from its keyframe on. The
    /// chain is where `stored` was read (`origin`).
    pub(super) fn chain_rows(
        &self,
        instance: InstanceId,
        at: Micros,
        stored: &Stored,
        origin: &Origin,
    ) -> Result<Rows, StoreError> {
        let mut bases: Vec<(Micros, Stored)> = Vec::new();
        loop {
            let (last_at, last) = bases.last().map_or((at, stored), |(t, s)| (*t, s));
            if last.header.keyframe {
                break;
            }
            let base_at = match last.header.base_us {
                // A base is older: a chain that loops is broken too.
                Some(base_at) if base_at < last_at => base_at,
                _ => return Err(StoreError::BrokenChain(at, instance)),
            };
            let base = self
                .base(instance, base_at, origin)?
                .ok_or(StoreError::BrokenChain(at, instance))?;
            bases.push((base_at, parse_bytes(base)?));
        }
        let mut rows = Rows::default();
        let links = bases.iter().rev().map(|(t, s)| (*t, s));
        for (t, link) in links.chain(std::iter::once((at, stored))) {
            rows.apply(link)
                .map_err(|source| StoreError::CorruptSample {
                    at: t,
                    instance,
                    source,
                })?;
        }
        Ok(rows)
    }

    /// The time of the keyframe the first sample at or after `t` builds on:
    /// cutting there keeps every remaining chain whole.
    pub(super) fn chain_start(
        &self,
        instance: InstanceId,
        t: Micros,
    ) -> Result<Micros, StoreError> {
        let Some(first) = Self::instance_range(&self.samples, instance, t, Micros::MAX).next()
        else {
            return Ok(t);
        };
        let (k, v) = first?;
        let mut at = keys::time_of_instance_key(&k);
        let mut sample = parse(v)?.header;
        while !sample.keyframe {
            let Some(base) = sample.base_us else { break };
            let Some(v) = self.samples.get(keys::instance_time(instance, base))? else {
                break;
            };
            at = base;
            sample = parse(v)?.header;
        }
        Ok(at.min(t))
    }
}

/// A stored sample as read (see [`Stored`]), its rows slices of `value`.
pub(super) fn parse(value: sled::IVec) -> Result<Stored, StoreError> {
    parse_bytes(compress::unpack(value)?)
}

/// A stored sample's value, unpacked, as read.
pub(super) fn parse_bytes(value: Bytes) -> Result<Stored, StoreError> {
    Stored::parse(value).map_err(corrupt)
}

/// A stored sample that does not decode.
pub(super) fn corrupt(source: prost::DecodeError) -> StoreError {
    StoreError::Corrupt {
        tree: "samples",
        source,
    }
}

#[cfg(test)]
mod tests {
    use pgtrail_proto::pb;
    use pgtrail_proto::time::SECOND;
    use prost::Message;

    use super::*;
    use crate::store::testing::{temp_store, Population, Rng};
    use crate::store::{PatchError, Store};

    /// A whole minute.
    const T0: Micros = 1_790_000_040 * SECOND;

    /// `s` as it reads back: a keyframe, its rows sorted by pid.
    fn whole(s: &StoredSample) -> StoredSample {
        let mut s = s.clone();
        s.sessions.sort_by_key(|r| r.pid);
        s.processes.sort_by_key(|r| r.pid);
        s.keyframe = true;
        s.base_us = None;
        s
    }

    fn session(pid: i32, state: &str) -> pb::Session {
        pb::Session {
            pid,
            backend_type: "client backend".into(),
            state: Some(state.into()),
            ..Default::default()
        }
    }

    fn process(pid: i32, utime_us: u64) -> pb::Process {
        pb::Process {
            pid,
            title: "postgres: app db 10.0.0.1(5000) idle".into(),
            utime_us: Some(utime_us),
            ..Default::default()
        }
    }

    #[test]
    fn samples_appended_with_patches_read_back_whole() {
        let (_dir, store) = temp_store();
        let instance = store.instance_id("host", "5432").unwrap();
        let mut rng = Rng(11);
        let mut backends = Population::default();
        let n = 150; // two and a half minutes
        let samples: Vec<StoredSample> = (0..n)
            .map(|i| {
                let mut s = backends.step(&mut rng);
                s.seq = i as u64;
                s
            })
            .collect();
        for (i, sample) in samples.iter().enumerate() {
            let mut append = Append {
                instance,
                sampled_at: T0 + i as Micros * SECOND,
                sample: sample.clone(),
                sessions: &sample.sessions,
                processes: &sample.processes,
                ..Default::default()
            };
            assert!(store.append(&mut append).unwrap());
        }
        // The first two minutes sealed, the third in the tail.
        assert_eq!(store.sample_blocks.len(), 2);
        assert_eq!(store.tail_snapshot(instance).unwrap().unwrap().len(), 30);
        assert!(store.samples.is_empty());
        let (mut patches, mut rows) = (0, 0);
        for entry in store
            .sample_entries(instance, Micros::MIN, Micros::MAX)
            .unwrap()
        {
            let s = StoredSample::decode(entry.unwrap().1).unwrap();
            if !s.keyframe {
                patches += s.session_id_patches.len() + s.process_patches.len();
                rows += s.sessions.len() + s.processes.len();
            }
        }
        assert!(
            patches > 500 && rows > 100,
            "{patches} patches, {rows} rows"
        );

        let all = store.samples(instance, T0, T0 + n * SECOND).unwrap();
        assert_eq!(all.len(), samples.len());
        for (i, ((at, got), want)) in all.iter().zip(&samples).enumerate() {
            assert_eq!(*at, T0 + i as Micros * SECOND);
            assert_eq!(*got, whole(want), "sample {i}");
        }
        // From the middle of a chain, and one sample at a time.
        let part = store
            .samples(instance, T0 + 75 * SECOND, T0 + 100 * SECOND)
            .unwrap();
        assert_eq!(part.len(), 26);
        for (at, got) in &part {
            assert_eq!(*got, whole(&samples[((at - T0) / SECOND) as usize]));
        }
        for (i, want) in samples.iter().enumerate() {
            let t = T0 + i as Micros * SECOND;
            let (at, got) = store.sample_at(instance, t + 1).unwrap().unwrap();
            assert_eq!((at, got), (t, whole(want)), "sample {i}");
        }
    }

    #[test]
    fn deltas_of_full_rows_only_read_as_before() {
        // Stored as before patches existed: each changed row in full.
        let (_dir, store) = temp_store();
        let key = |i: i64| keys::instance_time(1, T0 + i * SECOND);
        let keyframe = StoredSample {
            sessions: vec![session(1, "idle"), session(2, "idle")],
            processes: vec![process(1, 10), process(2, 20)],
            keyframe: true,
            ..Default::default()
        };
        let first = StoredSample {
            sessions: vec![session(2, "active"), session(3, "active")],
            processes: vec![process(2, 25), process(3, 0)],
            base_us: Some(T0),
            gone_sessions: vec![1],
            gone_processes: vec![1],
            seq: 1,
            ..Default::default()
        };
        let second = StoredSample {
            processes: vec![process(3, 5)],
            base_us: Some(T0 + SECOND),
            seq: 2,
            ..Default::default()
        };
        for (i, s) in [&keyframe, &first, &second].into_iter().enumerate() {
            store
                .samples
                .insert(key(i as i64), s.encode_to_vec())
                .unwrap();
        }
        let want = [
            keyframe.clone(),
            StoredSample {
                sessions: vec![session(2, "active"), session(3, "active")],
                processes: vec![process(2, 25), process(3, 0)],
                seq: 1,
                keyframe: true,
                ..Default::default()
            },
            StoredSample {
                sessions: vec![session(2, "active"), session(3, "active")],
                processes: vec![process(2, 25), process(3, 5)],
                seq: 2,
                keyframe: true,
                ..Default::default()
            },
        ];
        let all = store.samples(1, T0, T0 + 10 * SECOND).unwrap();
        let got: Vec<StoredSample> = all.into_iter().map(|(_, s)| s).collect();
        assert_eq!(got, want);
        let (_, last) = store.sample_at(1, T0 + 9 * SECOND).unwrap().unwrap();
        assert_eq!(last, want[2]);
    }

    #[test]
    fn a_patch_that_does_not_apply_is_an_error() {
        let (_dir, store) = temp_store();
        let keyframe = StoredSample {
            sessions: vec![session(1, "idle")],
            keyframe: true,
            ..Default::default()
        };
        // A patch of pid 2, which the keyframe does not have.
        let delta = StoredSample {
            session_patches: vec![vec![2, 0x7a, 1, 6, b'a', b'c', b't', b'i', b'v', b'e']],
            base_us: Some(T0),
            ..Default::default()
        };
        store
            .samples
            .insert(keys::instance_time(1, T0), keyframe.encode_to_vec())
            .unwrap();
        store
            .samples
            .insert(keys::instance_time(1, T0 + SECOND), delta.encode_to_vec())
            .unwrap();
        let is_corrupt = |e: StoreError| matches!(e, StoreError::CorruptSample { at, instance: 1, source: PatchError::NoBase(2) } if at == T0 + SECOND);
        assert!(is_corrupt(store.sample_at(1, T0 + SECOND).unwrap_err()));
        assert!(is_corrupt(store.samples(1, T0, T0 + SECOND).unwrap_err()));
        assert!(is_corrupt(
            store.samples(1, T0 + SECOND, T0 + SECOND).unwrap_err()
        ));
        // As pid 1's patch it applies.
        let mut fixed = delta.clone();
        fixed.session_patches[0][0] = 1;
        store
            .samples
            .insert(keys::instance_time(1, T0 + SECOND), fixed.encode_to_vec())
            .unwrap();
        let (_, got) = store.sample_at(1, T0 + SECOND).unwrap().unwrap();
        assert_eq!(got.sessions, vec![session(1, "active")]);
    }
}
