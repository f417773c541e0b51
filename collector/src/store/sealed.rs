//! Samples sealed a minute at a time. A sample is first stored on its own
//! in sled (tree `samples`, "loose"), so it is durable when acknowledged
//! and the minute it belongs to can still grow. Once an instance's next
//! minute starts, the minute before is whole: its samples (keyframe and
//! deltas, [`super::delta`]) are put together in time order, compressed as
//! one zstd frame and appended to the instance's segment file
//! ([`super::segments`]); then one sled transaction records where the
//! block is (tree `sample_blocks`) and removes the loose samples.
//! Compressed together, a minute of samples takes about half the bytes of
//! its samples compressed one by one, and sled no longer holds them.
//!
//! A delta's base is always in its own minute and a minute is sealed at
//! most once, so every chain is whole within one block or among loose
//! samples. A sample that arrives after its minute was sealed stays loose
//! (it is a keyframe); reads merge loose and sealed samples in time order.
//!
//! A block decompressed is: the number of samples (varint), then per
//! sample its time as the zigzag varint of the difference from the one
//! before (from 0 for the first), the value's length (varint) and the
//! value (a `StoredSample` as [`super::delta`] writes it).

use std::ops::Range;
use std::sync::Arc;

use pgtrail_proto::time::Micros;
use prost::bytes::Bytes;
use prost::encoding::{decode_varint, encode_varint};
use prost::Message;
use sled::transaction::TransactionError;
use sled::Transactional;

use super::compress;
use super::keys::{self, InstanceId, Resolution};
use super::records::SampleBlock;
use super::segments::Segments;
use super::sled::{decode, SledStore};
use super::StoreError;

/// zstd's level for a sealed minute: a few milliseconds of one core per
/// instance and minute.
const LEVEL: i32 = 9;

/// How many minutes one append seals at most, so a backlog of loose
/// samples (a store written before sealing) is worked off a few minutes per
/// sample rather than holding one append up.
const AT_ONCE: usize = 4;

/// A sealed minute, decompressed: its samples' times and values.
#[derive(Debug)]
pub(super) struct Block {
    bytes: Bytes,
    entries: Vec<(Micros, Range<usize>)>,
}

impl Block {
    /// `entries`, in time order, put together.
    fn encode(entries: &[(Micros, Bytes)]) -> Vec<u8> {
        let len: usize = entries.iter().map(|(_, v)| v.len() + 8).sum();
        let mut out = Vec::with_capacity(len + 4);
        encode_varint(entries.len() as u64, &mut out);
        let mut prev = 0;
        for (t, value) in entries {
            encode_varint(zigzag(t - prev), &mut out);
            encode_varint(value.len() as u64, &mut out);
            out.extend_from_slice(value);
            prev = *t;
        }
        out
    }

    fn decode(bytes: Bytes) -> Result<Block, StoreError> {
        let damaged = || StoreError::Unpack("sealed block");
        let mut rest: &[u8] = &bytes;
        let count = decode_varint(&mut rest).map_err(|_| damaged())?;
        let mut entries = Vec::with_capacity(count.min(4096) as usize);
        let mut t = 0;
        for _ in 0..count {
            t += unzigzag(decode_varint(&mut rest).map_err(|_| damaged())?);
            let len = decode_varint(&mut rest).map_err(|_| damaged())?;
            let len = usize::try_from(len).map_err(|_| damaged())?;
            let start = bytes.len() - rest.len();
            if len > rest.len() {
                return Err(damaged());
            }
            rest = &rest[len..];
            entries.push((t, start..start + len));
        }
        Ok(Block { bytes, entries })
    }

    /// The value of the sample at `t`.
    pub(super) fn get(&self, t: Micros) -> Option<Bytes> {
        let i = self.entries.binary_search_by_key(&t, |e| e.0).ok()?;
        Some(self.value(i))
    }

    fn value(&self, i: usize) -> Bytes {
        self.bytes.slice(self.entries[i].1.clone())
    }

    /// The index of the first sample at or after `t`.
    fn first_from(&self, t: Micros) -> usize {
        self.entries.partition_point(|e| e.0 < t)
    }
}

/// Where a stored sample was read: where the bases of its chain are.
#[derive(Debug, Clone)]
pub(super) enum Origin {
    /// On its own in sled.
    Loose,
    /// In this sealed block.
    Sealed(Arc<Block>),
}

impl SledStore {
    /// Seals the instance's whole minutes of loose samples before `before`
    /// (a minute's start) that are not sealed yet, oldest first and at most
    /// [`AT_ONCE`]; returns whether some are left for the next call.
    pub(super) fn seal_before(
        &self,
        instance: InstanceId,
        before: Micros,
    ) -> Result<bool, StoreError> {
        let mut sealed = 0;
        let mut minute: Option<(Micros, Vec<(sled::IVec, Micros, Bytes)>)> = None;
        for entry in Self::instance_range(&self.samples, instance, Micros::MIN, before.saturating_sub(1)) {
            let (k, v) = entry?;
            let at = keys::time_of_instance_key(&k);
            let start = minute_of(at);
            if minute.as_ref().is_some_and(|(m, _)| *m != start) {
                if sealed == AT_ONCE {
                    return Ok(true);
                }
                let (m, samples) = minute.take().expect("checked");
                sealed += usize::from(self.seal_minute(instance, m, samples)?);
            }
            let value = compress::unpack(v)?;
            minute
                .get_or_insert_with(|| (start, Vec::new()))
                .1
                .push((k, at, value));
        }
        if let Some((m, samples)) = minute {
            if sealed == AT_ONCE {
                return Ok(true);
            }
            self.seal_minute(instance, m, samples)?;
        }
        Ok(false)
    }

    /// Seals one minute's loose samples unless the minute has a block
    /// already (they came late and stay loose); returns whether it did.
    fn seal_minute(
        &self,
        instance: InstanceId,
        minute: Micros,
        samples: Vec<(sled::IVec, Micros, Bytes)>,
    ) -> Result<bool, StoreError> {
        let key = keys::instance_time(instance, minute);
        if self.sample_blocks.contains_key(key)? {
            return Ok(false);
        }
        let entries: Vec<(Micros, Bytes)> =
            samples.iter().map(|(_, t, v)| (*t, v.clone())).collect();
        let raw = Block::encode(&entries);
        let frame = compress_block(&raw)?;
        let offset = self
            .segments
            .append(instance, Segments::day_of(minute), &frame)?;
        let record = SampleBlock {
            offset,
            len: frame.len() as u64,
            raw_len: raw.len() as u64,
            first_us: entries.first().map_or(minute, |e| e.0),
            last_us: entries.last().map_or(minute, |e| e.0),
            count: entries.len() as u32,
        }
        .encode_to_vec();
        let trees = (&self.samples, &self.sample_blocks);
        trees
            .transaction(|(loose, blocks)| {
                blocks.insert(&key, record.as_slice())?;
                for (k, _, _) in &samples {
                    loose.remove(k)?;
                }
                Ok(())
            })
            .map_err(|e: TransactionError<StoreError>| match e {
                TransactionError::Abort(e) => e,
                TransactionError::Storage(e) => StoreError::Sled(e),
            })?;
        Ok(true)
    }

    /// The sealed block of the minute starting at `minute`, as indexed by
    /// `record`.
    fn read_block(
        &self,
        instance: InstanceId,
        minute: Micros,
        record: &SampleBlock,
    ) -> Result<Arc<Block>, StoreError> {
        let len = usize::try_from(record.len).map_err(|_| StoreError::Unpack("sealed block"))?;
        let frame = self
            .segments
            .read(instance, Segments::day_of(minute), record.offset, len)?;
        let raw_len =
            usize::try_from(record.raw_len).map_err(|_| StoreError::Unpack("sealed block"))?;
        let raw = zstd::bulk::decompress(&frame, raw_len)
            .map_err(|_| StoreError::Unpack("sealed block"))?;
        Ok(Arc::new(Block::decode(Bytes::from(raw))?))
    }

    /// The stored value of the sample at exactly `t`, loose or sealed.
    pub(super) fn stored_at(
        &self,
        instance: InstanceId,
        t: Micros,
    ) -> Result<Option<Bytes>, StoreError> {
        if let Some(v) = self.samples.get(keys::instance_time(instance, t))? {
            return compress::unpack(v).map(Some);
        }
        let minute = minute_of(t);
        let Some(v) = self.sample_blocks.get(keys::instance_time(instance, minute))? else {
            return Ok(None);
        };
        let record = decode::<SampleBlock>("sample_blocks", &v)?;
        Ok(self.read_block(instance, minute, &record)?.get(t))
    }

    /// The base a chain read from `origin` refers to.
    pub(super) fn base(
        &self,
        instance: InstanceId,
        at: Micros,
        origin: &Origin,
    ) -> Result<Option<Bytes>, StoreError> {
        match origin {
            Origin::Loose => self
                .samples
                .get(keys::instance_time(instance, at))?
                .map(compress::unpack)
                .transpose(),
            Origin::Sealed(block) => Ok(block.get(at)),
        }
    }

    /// The last stored sample at or before `t`, loose or sealed.
    pub(super) fn last_at_or_before(
        &self,
        instance: InstanceId,
        t: Micros,
    ) -> Result<Option<(Micros, Bytes, Origin)>, StoreError> {
        let loose = match Self::instance_range(&self.samples, instance, Micros::MIN, t).next_back() {
            Some(entry) => {
                let (k, v) = entry?;
                Some((keys::time_of_instance_key(&k), v))
            }
            None => None,
        };
        let after = loose.as_ref().map_or(Micros::MIN, |(at, _)| *at);
        // A minute before the loose sample's holds nothing newer.
        let minutes = Self::instance_range(&self.sample_blocks, instance, minute_of(after), t);
        for entry in minutes.rev() {
            let (k, v) = entry?;
            let record = decode::<SampleBlock>("sample_blocks", &v)?;
            if record.last_us <= after {
                break;
            }
            if record.first_us > t {
                continue;
            }
            let block = self.read_block(instance, keys::time_of_instance_key(&k), &record)?;
            // Samples at or before `t` are those before `i`; the first is.
            let i = block.first_from(t.saturating_add(1));
            let (at, _) = block.entries[i - 1];
            if at <= after {
                break;
            }
            let value = block.value(i - 1);
            return Ok(Some((at, value, Origin::Sealed(block))));
        }
        loose
            .map(|(at, v)| Ok((at, compress::unpack(v)?, Origin::Loose)))
            .transpose()
    }

    /// The times of the instance's first and last sealed samples.
    pub(super) fn sealed_bounds(
        &self,
        instance: InstanceId,
    ) -> Result<Option<(Micros, Micros)>, StoreError> {
        let mut range = Self::instance_range(&self.sample_blocks, instance, Micros::MIN, Micros::MAX);
        let Some(first) = range.next() else {
            return Ok(None);
        };
        let first = decode::<SampleBlock>("sample_blocks", &first?.1)?;
        let last = match range.next_back() {
            Some(last) => decode::<SampleBlock>("sample_blocks", &last?.1)?,
            None => first.clone(),
        };
        Ok(Some((first.first_us, last.last_us)))
    }

    /// The stored samples of `instance` in `[from, to]`, loose and sealed,
    /// in time order.
    pub(super) fn sample_entries(&self, instance: InstanceId, from: Micros, to: Micros) -> Entries<'_> {
        Entries {
            store: self,
            instance,
            from,
            to,
            loose: Box::new(Self::instance_range(&self.samples, instance, from, to)),
            next_loose: None,
            minutes: Box::new(Self::instance_range(
                &self.sample_blocks,
                instance,
                minute_of(from),
                to,
            )),
            block: None,
            done: false,
        }
    }

    /// Removes the instance's sealed minutes that start before `before`
    /// (a minute's start) and the segment files left with none; returns
    /// how many samples they held.
    pub(super) fn expire_sealed(
        &self,
        instance: InstanceId,
        before: Micros,
    ) -> Result<u64, StoreError> {
        let mut removed = 0;
        let mut batch = sled::Batch::default();
        for entry in Self::instance_range(&self.sample_blocks, instance, Micros::MIN, before.saturating_sub(1)) {
            let (k, v) = entry?;
            removed += u64::from(decode::<SampleBlock>("sample_blocks", &v)?.count);
            batch.remove(k);
        }
        self.sample_blocks.apply_batch(batch)?;
        // Nothing may refer to a file when it goes.
        self.sample_blocks.flush()?;
        self.segments
            .remove_before(instance, Segments::day_of(before))?;
        Ok(removed)
    }
}

/// A range of one of sled's trees.
type KeyValues<'a> = Box<dyn Iterator<Item = sled::Result<(sled::IVec, sled::IVec)>> + 'a>;

/// Loose and sealed samples of one instance in a time window, merged in
/// time order (see [`SledStore::sample_entries`]).
pub(super) struct Entries<'a> {
    store: &'a SledStore,
    instance: InstanceId,
    from: Micros,
    to: Micros,
    loose: KeyValues<'a>,
    next_loose: Option<(Micros, sled::IVec)>,
    minutes: KeyValues<'a>,
    /// The block being read and the index of its next sample.
    block: Option<(Arc<Block>, usize)>,
    done: bool,
}

impl Entries<'_> {
    /// Makes `next_loose` the next loose sample, if any is left.
    fn fill_loose(&mut self) -> Result<(), StoreError> {
        if self.next_loose.is_none() {
            if let Some(entry) = self.loose.next() {
                let (k, v) = entry?;
                self.next_loose = Some((keys::time_of_instance_key(&k), v));
            }
        }
        Ok(())
    }

    /// Makes `block` a block with a sample left in the window, if any.
    fn fill_block(&mut self) -> Result<(), StoreError> {
        loop {
            if let Some((block, i)) = &self.block {
                if *i < block.entries.len() && block.entries[*i].0 <= self.to {
                    return Ok(());
                }
            }
            self.block = None;
            let Some(entry) = self.minutes.next() else {
                return Ok(());
            };
            let (k, v) = entry?;
            let record = decode::<SampleBlock>("sample_blocks", &v)?;
            if record.last_us < self.from {
                continue;
            }
            let minute = keys::time_of_instance_key(&k);
            let block = self.store.read_block(self.instance, minute, &record)?;
            let i = block.first_from(self.from);
            self.block = Some((block, i));
        }
    }

    fn step(&mut self) -> Result<Option<(Micros, Bytes, Origin)>, StoreError> {
        self.fill_loose()?;
        self.fill_block()?;
        let sealed_at = self.block.as_ref().map(|(b, i)| b.entries[*i].0);
        let loose_at = self.next_loose.as_ref().map(|(t, _)| *t);
        match (loose_at, sealed_at) {
            (None, None) => Ok(None),
            (Some(l), s) if s.is_none_or(|s| l < s) => {
                let (at, v) = self.next_loose.take().expect("peeked");
                Ok(Some((at, compress::unpack(v)?, Origin::Loose)))
            }
            _ => {
                let (block, i) = self.block.as_mut().expect("peeked");
                let at = block.entries[*i].0;
                let value = block.value(*i);
                *i += 1;
                Ok(Some((at, value, Origin::Sealed(block.clone()))))
            }
        }
    }
}

impl Iterator for Entries<'_> {
    type Item = Result<(Micros, Bytes, Origin), StoreError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let step = self.step().transpose();
        if !matches!(step, Some(Ok(_))) {
            self.done = true;
        }
        step
    }
}

/// `raw` as one zstd frame with a checksum, so damage reads as damage.
fn compress_block(raw: &[u8]) -> Result<Vec<u8>, StoreError> {
    let compress = || -> std::io::Result<Vec<u8>> {
        let mut compressor = zstd::bulk::Compressor::new(LEVEL)?;
        compressor.include_checksum(true)?;
        compressor.compress(raw)
    };
    compress().map_err(|_| StoreError::Unpack("sealed block"))
}

/// The start of the minute `t` falls in; the earliest time for one that
/// has no minute start before it.
fn minute_of(t: Micros) -> Micros {
    t.checked_sub(t.rem_euclid(Resolution::Minute.span()))
        .unwrap_or(Micros::MIN)
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

#[cfg(test)]
mod tests {
    use pgtrail_proto::time::SECOND;

    use super::*;
    use crate::store::records::StoredSample;
    use crate::store::segments::DAY;
    use crate::store::testing::{reopen, temp_store, Population, Rng};
    use crate::store::{Append, Store};

    /// A whole minute, late in a day.
    const T0: Micros = 1_790_000_040 * SECOND;

    /// Appends `samples` at the given offsets from `T0` in seconds.
    fn append(store: &SledStore, instance: InstanceId, at: &[(i64, &StoredSample)]) {
        for (s, sample) in at {
            let append = Append {
                instance,
                sampled_at: T0 + s * SECOND,
                sample: (*sample).clone(),
                ..Default::default()
            };
            assert!(store.append(&append).unwrap(), "stored at {s} s");
        }
    }

    fn population(n: usize) -> Vec<StoredSample> {
        let (mut rng, mut backends) = (Rng(5), Population::default());
        (0..n)
            .map(|i| {
                let mut s = backends.step(&mut rng);
                s.seq = i as u64;
                s
            })
            .collect()
    }

    fn times(store: &SledStore, instance: InstanceId) -> Vec<Micros> {
        store
            .samples(instance, Micros::MIN, Micros::MAX)
            .unwrap()
            .into_iter()
            .map(|(t, _)| t)
            .collect()
    }

    #[test]
    fn a_late_sample_stays_loose_and_reads_in_time_order() {
        let (_dir, store) = temp_store();
        let id = store.instance_id("host", "5432").unwrap();
        let samples = population(151);
        let at: Vec<(i64, &StoredSample)> = (0..150).map(|i| (i, &samples[i as usize])).collect();
        append(&store, id, &at);
        assert_eq!(store.sample_blocks.len(), 2);
        // Half a second into the first, sealed, minute: kept on its own.
        let late = Append {
            instance: id,
            sampled_at: T0 + 30 * SECOND + SECOND / 2,
            sample: samples[150].clone(),
            ..Default::default()
        };
        assert!(store.append(&late).unwrap());
        assert_eq!(store.sample_blocks.len(), 2);
        assert_eq!(store.samples.len(), 31);

        let got = times(&store, id);
        assert_eq!(got.len(), 151);
        assert!(got.windows(2).all(|w| w[0] < w[1]), "not in time order");
        let (at, sample) = store.sample_at(id, late.sampled_at + 1).unwrap().unwrap();
        assert_eq!((at, sample.seq), (late.sampled_at, 150));
        let (at, sample) = store.sample_at(id, late.sampled_at - 1).unwrap().unwrap();
        assert_eq!((at, sample.seq), (T0 + 30 * SECOND, 30));
        let (at, sample) = store.sample_at(id, T0 + 59 * SECOND + 1).unwrap().unwrap();
        assert_eq!((at, sample.seq), (T0 + 59 * SECOND, 59));
        assert!(store.has_sample(id, T0 + 59 * SECOND).unwrap());
        assert!(store.has_sample(id, late.sampled_at).unwrap());
        assert!(!store.has_sample(id, T0 + 59 * SECOND + 1).unwrap());
        assert_eq!(
            store.sample_bounds(id).unwrap(),
            Some((T0, T0 + 149 * SECOND))
        );

        // The next minute seals the third; the late sample stays loose.
        append(&store, id, &[(180, &samples[0])]);
        assert_eq!(store.sample_blocks.len(), 3);
        assert_eq!(store.samples.len(), 2);
        assert_eq!(times(&store, id).len(), 152);
    }

    #[test]
    fn loose_minutes_left_from_before_are_sealed_a_few_per_append() {
        let (dir, store) = temp_store();
        let id = store.instance_id("host", "5432").unwrap();
        let samples = population(10);
        // Ten minutes of one keyframe each, stored as a format-2 build did.
        for (i, sample) in samples.iter().enumerate() {
            let mut stored = sample.clone();
            stored.keyframe = true;
            let key = keys::instance_time(id, T0 + i as i64 * 60 * SECOND);
            store.samples.insert(key, stored.encode_to_vec()).unwrap();
        }
        let before = store.samples(id, Micros::MIN, Micros::MAX).unwrap();
        drop(store);
        let store = reopen(dir.path());
        let next = &samples[0];
        append(&store, id, &[(600, next)]);
        assert_eq!(store.sample_blocks.len(), AT_ONCE);
        append(&store, id, &[(601, next)]);
        assert_eq!(store.sample_blocks.len(), 2 * AT_ONCE);
        append(&store, id, &[(602, next)]);
        assert_eq!(store.sample_blocks.len(), 10);
        assert_eq!(store.samples.len(), 3);
        let after = store.samples(id, Micros::MIN, T0 + 599 * SECOND).unwrap();
        assert_eq!(after, before);
    }

    #[test]
    fn retention_removes_sealed_minutes_and_emptied_files() {
        let (dir, store) = temp_store();
        let id = store.instance_id("host", "5432").unwrap();
        let samples = population(1);
        // A sample every ten minutes for two days.
        let at: Vec<(i64, &StoredSample)> = (0..288).map(|i| (i * 600, &samples[0])).collect();
        append(&store, id, &at);
        let files = || std::fs::read_dir(dir.path().join("segments").join(id.to_string())).unwrap().count();
        assert_eq!(files(), 3, "the days the samples fell on");
        let second_day = (Segments::day_of(T0) + 1) * DAY;
        let cut = second_day + 3_600 * SECOND;
        store.expire(id, cut, T0).unwrap();
        assert_eq!(files(), 2);
        let left = times(&store, id);
        assert!(left[0] >= Resolution::Minute.start_of(cut), "{} left", left.len());
        assert!(left[0] < cut + 600 * SECOND);
        assert_eq!(*left.last().unwrap(), T0 + 287 * 600 * SECOND);
    }

    #[test]
    fn bytes_nothing_refers_to_are_never_read_and_damage_is_an_error() {
        let (dir, store) = temp_store();
        let id = store.instance_id("host", "5432").unwrap();
        let samples = population(3);
        append(&store, id, &[(0, &samples[0]), (1, &samples[1])]);
        // A block written before a crash that kept sled from indexing it.
        let day = Segments::day_of(T0);
        store.segments.append(id, day, b"written, never indexed").unwrap();
        append(&store, id, &[(60, &samples[2])]);
        let (at, got) = store.sample_at(id, T0 + SECOND).unwrap().unwrap();
        assert_eq!((at, got.seq), (T0 + SECOND, 1));

        let path = dir.path().join("segments").join(id.to_string()).join(format!("{day}.seg"));
        let mut bytes = std::fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        std::fs::write(&path, bytes).unwrap();
        let err = store.samples(id, T0, T0 + SECOND).unwrap_err();
        assert!(matches!(err, StoreError::Unpack(_)), "{err}");
        // The loose minute still reads.
        assert_eq!(store.samples(id, T0 + 60 * SECOND, Micros::MAX).unwrap().len(), 1);
    }
}
