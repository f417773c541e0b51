//! Samples sealed a minute at a time. An instance's samples are written
//! to its tail ([`super::tail`]) as they come; once its next minute
//! starts, the minute before is whole: its samples (keyframes and deltas,
//! [`super::delta`]) are compressed together as one zstd frame, appended
//! to the instance's segment file for the day ([`super::segments`]), and
//! sled records where the block is (tree `sample_blocks`, keyed by
//! instance and the minute's start). Compressed together, a minute of
//! samples takes about half the bytes of its samples compressed one by
//! one.
//!
//! A delta's base is always in its own minute and a minute is sealed once,
//! so every chain is whole within one block. A sample that comes after its
//! minute was sealed is stored on its own in sled's `samples` (a
//! keyframe), as are the samples of stores written before sealing; reads
//! merge the three in time order.
//!
//! A block decompressed is its samples one after the other, each as its
//! time (the zigzag varint of the difference from the one before, from 0
//! for the first), the value's length (varint) and the value (a
//! `StoredSample` as [`super::delta`] writes it). Sealing is
//! [`super::seal`]'s.

use std::ops::Range;
use std::sync::Arc;

use pgtrail_proto::time::Micros;
use prost::bytes::Bytes;
use prost::encoding::{decode_varint, encode_varint};

use super::compress;
use super::expire::remove_blocks;
use super::keys::{self, InstanceId, Resolution};
use super::records::SampleBlock;
use super::segments::{Holding, Segments};
use super::sled::{decode, SledStore};
use super::StoreError;

/// zstd's level for a sealed minute: under a millisecond of one core per
/// instance and minute at 200 sessions. Level 9 stores a minute of
/// samples about 6 % smaller at four times the CPU, which ingest (one seal
/// per instance and minute) feels more than the disk does.
const LEVEL: i32 = 3;

/// A sealed minute, decompressed: its samples' times and values.
#[derive(Debug)]
pub(super) struct Block {
    bytes: Bytes,
    entries: Vec<(Micros, Range<usize>)>,
}

impl Block {
    /// A block of `bytes` whose samples are at `entries`, in time order.
    pub(super) fn new(bytes: Bytes, entries: Vec<(Micros, Range<usize>)>) -> Block {
        Block { bytes, entries }
    }

    /// A sealed block's bytes, read.
    fn decode(bytes: Bytes) -> Result<Block, StoreError> {
        let (mut entries, whole) = entries(&bytes);
        if whole != bytes.len() {
            return Err(StoreError::Unpack("sealed block"));
        }
        entries.sort_by_key(|(t, _)| *t);
        Ok(Block { bytes, entries })
    }

    /// How many samples it holds.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.entries.len()
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
    /// The sealed block of the minute starting at `minute`, as indexed by
    /// `record`.
    fn read_block(
        &self,
        instance: InstanceId,
        minute: Micros,
        record: &SampleBlock,
    ) -> Result<Arc<Block>, StoreError> {
        if record.layout != 0 {
            return Err(StoreError::Unpack("sealed block layout"));
        }
        let len = usize::try_from(record.len).map_err(|_| StoreError::Unpack("sealed block"))?;
        let at = (Segments::day_of(minute), Holding::Samples);
        let frame = self.segments.read(instance, at, record.offset, len)?;
        let raw_len =
            usize::try_from(record.raw_len).map_err(|_| StoreError::Unpack("sealed block"))?;
        let raw = zstd::bulk::decompress(&frame, raw_len)
            .map_err(|_| StoreError::Unpack("sealed block"))?;
        Ok(Arc::new(Block::decode(Bytes::from(raw))?))
    }

    /// The stored value of the sample at exactly `t`: loose, in the tail
    /// or sealed.
    pub(super) fn stored_at(
        &self,
        instance: InstanceId,
        t: Micros,
    ) -> Result<Option<Bytes>, StoreError> {
        if let Some(v) = self.samples.get(keys::instance_time(instance, t))? {
            return compress::unpack(v).map(Some);
        }
        if let Some(block) = self.tail_snapshot(instance)? {
            if let Some(v) = block.get(t) {
                return Ok(Some(v));
            }
        }
        let minute = minute_of(t);
        let Some(v) = self
            .sample_blocks
            .get(keys::instance_time(instance, minute))?
        else {
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
        let loose = match Self::instance_range(&self.samples, instance, Micros::MIN, t).next_back()
        {
            Some(entry) => {
                let (k, v) = entry?;
                Some((keys::time_of_instance_key(&k), v))
            }
            None => None,
        };
        let after = loose.as_ref().map_or(Micros::MIN, |(at, _)| *at);
        // The tail's minute is after every sealed one.
        if let Some(block) = self.tail_snapshot(instance)? {
            let i = block.first_from(t.saturating_add(1));
            if i > 0 && block.entries[i - 1].0 > after {
                let (at, value) = (block.entries[i - 1].0, block.value(i - 1));
                return Ok(Some((at, value, Origin::Sealed(block))));
            }
        }
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

    /// The times of the instance's first and last samples, sealed or in
    /// its tail.
    pub(super) fn sealed_bounds(
        &self,
        instance: InstanceId,
    ) -> Result<Option<(Micros, Micros)>, StoreError> {
        let mut range =
            Self::instance_range(&self.sample_blocks, instance, Micros::MIN, Micros::MAX);
        let sealed = match range.next() {
            None => None,
            Some(first) => {
                let first = decode::<SampleBlock>("sample_blocks", &first?.1)?;
                let last = match range.next_back() {
                    Some(last) => decode::<SampleBlock>("sample_blocks", &last?.1)?,
                    None => first.clone(),
                };
                Some((first.first_us, last.last_us))
            }
        };
        let tail = self
            .tail_snapshot(instance)?
            .map(|b| (b.entries[0].0, b.entries[b.entries.len() - 1].0));
        Ok(match (sealed, tail) {
            (Some(a), Some(b)) => Some((a.0.min(b.0), a.1.max(b.1))),
            (a, b) => a.or(b),
        })
    }

    /// The stored samples of `instance` in `[from, to]`, loose and sealed,
    /// in time order.
    pub(super) fn sample_entries(
        &self,
        instance: InstanceId,
        from: Micros,
        to: Micros,
    ) -> Result<Entries<'_>, StoreError> {
        Ok(Entries {
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
            tail: self.tail_snapshot(instance)?,
            block: None,
            done: false,
        })
    }

    /// Removes the instance's sealed minutes that start before `before`
    /// (a minute's start) and the segment files left with none; returns
    /// how many samples they held.
    pub(super) fn expire_sealed(
        &self,
        instance: InstanceId,
        before: Micros,
    ) -> Result<u64, StoreError> {
        let range = (
            keys::instance_time(instance, Micros::MIN).to_vec(),
            keys::instance_time(instance, before.saturating_sub(1)).to_vec(),
        );
        let removed = remove_blocks(&self.sample_blocks, "sample_blocks", [range])?;
        self.segments
            .remove_before(instance, (Segments::day_of(before), Holding::Samples))?;
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
    /// The tail, read after the sealed minutes.
    tail: Option<Arc<Block>>,
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
            let block = match self.minutes.next() {
                Some(entry) => {
                    let (k, v) = entry?;
                    let record = decode::<SampleBlock>("sample_blocks", &v)?;
                    if record.last_us < self.from {
                        continue;
                    }
                    let minute = keys::time_of_instance_key(&k);
                    self.store.read_block(self.instance, minute, &record)?
                }
                None => match self.tail.take() {
                    Some(block) => block,
                    None => return Ok(()),
                },
            };
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
pub(super) fn compress_block(raw: &[u8]) -> Result<Vec<u8>, StoreError> {
    let compress = || -> std::io::Result<Vec<u8>> {
        let mut compressor = zstd::bulk::Compressor::new(LEVEL)?;
        compressor.include_checksum(true)?;
        compressor.compress(raw)
    };
    compress().map_err(|_| StoreError::Unpack("sealed block"))
}

/// Appends the sample at `t`, its `value`, to `out` as a block's entry;
/// `prev` is the time of the entry before it (0 for the first).
pub(super) fn encode_entry(out: &mut Vec<u8>, prev: Micros, t: Micros, value: &[u8]) {
    encode_varint(zigzag(t.wrapping_sub(prev)), out);
    encode_varint(value.len() as u64, out);
    out.extend_from_slice(value);
}

/// The entries of a block's bytes in the order written, and how many of
/// the bytes they take: an entry cut short at the end is left out.
pub(super) fn entries(bytes: &[u8]) -> (Vec<(Micros, Range<usize>)>, usize) {
    let mut entries = Vec::new();
    let (mut rest, mut t, mut whole) = (bytes, 0i64, 0);
    while !rest.is_empty() {
        let Ok(delta) = decode_varint(&mut rest) else {
            break;
        };
        let Ok(len) = decode_varint(&mut rest) else {
            break;
        };
        let Ok(len) = usize::try_from(len) else { break };
        if len > rest.len() {
            break;
        }
        t = t.wrapping_add(unzigzag(delta));
        let start = bytes.len() - rest.len();
        rest = &rest[len..];
        whole = start + len;
        entries.push((t, start..whole));
    }
    (entries, whole)
}

/// The start of the minute `t` falls in; the earliest time for one that
/// has no minute start before it.
pub(super) fn minute_of(t: Micros) -> Micros {
    t.checked_sub(t.rem_euclid(Resolution::Minute.span()))
        .unwrap_or(Micros::MIN)
}

pub(super) fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

pub(super) fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

#[cfg(test)]
mod tests {
    use pgtrail_proto::time::SECOND;
    use prost::Message;

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
            let mut append = Append {
                instance,
                sampled_at: T0 + s * SECOND,
                sample: (*sample).clone(),
                sessions: &sample.sessions,
                processes: &sample.processes,
                ..Default::default()
            };
            assert!(store.append(&mut append).unwrap(), "stored at {s} s");
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
        let samples = population(152);
        let at: Vec<(i64, &StoredSample)> = (0..150).map(|i| (i, &samples[i as usize])).collect();
        append(&store, id, &at);
        assert_eq!(store.sample_blocks.len(), 2);
        // Half a second into the first, sealed, minute; then into the
        // second: both kept on their own.
        for (i, s) in [(150, 30), (151, 90)] {
            let mut late = Append {
                instance: id,
                sampled_at: T0 + s * SECOND + SECOND / 2,
                sample: samples[i].clone(),
                sessions: &samples[i].sessions,
                processes: &samples[i].processes,
                ..Default::default()
            };
            assert!(store.append(&mut late).unwrap());
            assert!(!store.append(&mut late).unwrap(), "stored twice");
        }
        assert_eq!(store.sample_blocks.len(), 2);
        assert_eq!(store.samples.len(), 2);
        assert_eq!(store.tail_snapshot(id).unwrap().unwrap().len(), 30);

        let got = times(&store, id);
        assert_eq!(got.len(), 152);
        assert!(got.windows(2).all(|w| w[0] < w[1]), "not in time order");
        let late = T0 + 30 * SECOND + SECOND / 2;
        let (at, sample) = store.sample_at(id, late + 1).unwrap().unwrap();
        assert_eq!((at, sample.seq), (late, 150));
        let (at, sample) = store.sample_at(id, late - 1).unwrap().unwrap();
        assert_eq!((at, sample.seq), (T0 + 30 * SECOND, 30));
        let (at, sample) = store.sample_at(id, T0 + 59 * SECOND + 1).unwrap().unwrap();
        assert_eq!((at, sample.seq), (T0 + 59 * SECOND, 59));
        let (at, sample) = store.sample_at(id, T0 + 130 * SECOND).unwrap().unwrap();
        assert_eq!((at, sample.seq), (T0 + 130 * SECOND, 130));
        for t in [T0 + 59 * SECOND, late, T0 + 149 * SECOND] {
            assert!(store.has_sample(id, t).unwrap());
        }
        assert!(!store.has_sample(id, T0 + 59 * SECOND + 1).unwrap());
        assert_eq!(
            store.sample_bounds(id).unwrap(),
            Some((T0, T0 + 149 * SECOND))
        );

        // The next minute seals the third.
        append(&store, id, &[(180, &samples[0])]);
        assert_eq!(store.sample_blocks.len(), 3);
        assert_eq!(times(&store, id).len(), 153);
    }

    #[test]
    fn the_tail_outlives_a_crash_and_a_torn_write() {
        let (dir, store) = temp_store();
        let id = store.instance_id("host", "5432").unwrap();
        let samples = population(31);
        let at: Vec<(i64, &StoredSample)> = (0..30).map(|i| (i, &samples[i as usize])).collect();
        append(&store, id, &at);
        store.flush().unwrap();
        let before = store.samples(id, Micros::MIN, Micros::MAX).unwrap();
        assert_eq!(before.len(), 30);
        drop(store);
        // The start of a sample the crash cut short.
        let log = dir
            .path()
            .join("segments")
            .join(id.to_string())
            .join("open.log");
        let mut bytes = std::fs::read(&log).unwrap();
        let whole = bytes.len();
        bytes.extend_from_slice(&[2, 200, 1, 8]);
        std::fs::write(&log, &bytes).unwrap();

        let store = reopen(dir.path());
        assert_eq!(store.samples(id, Micros::MIN, Micros::MAX).unwrap(), before);
        assert_eq!(std::fs::metadata(&log).unwrap().len(), whole as u64);
        append(&store, id, &[(30, &samples[30]), (60, &samples[0])]);
        assert_eq!(store.sample_blocks.len(), 1);
        let all = store.samples(id, Micros::MIN, Micros::MAX).unwrap();
        assert_eq!(all.len(), 32);
        assert_eq!(all[..30], before[..]);
        assert_eq!(all[30].1.seq, 30);
    }

    #[test]
    fn samples_stored_on_their_own_by_an_older_build_read_with_sealed_ones() {
        let (dir, store) = temp_store();
        let id = store.instance_id("host", "5432").unwrap();
        let samples = population(3);
        // Three minutes of one keyframe each, as a format-2 build wrote them.
        for (i, sample) in samples.iter().enumerate() {
            let mut stored = sample.clone();
            stored.keyframe = true;
            let key = keys::instance_time(id, T0 + i as i64 * 60 * SECOND);
            store.samples.insert(key, stored.encode_to_vec()).unwrap();
        }
        let before = store.samples(id, Micros::MIN, Micros::MAX).unwrap();
        drop(store);
        let store = reopen(dir.path());
        append(&store, id, &[(180, &samples[0]), (240, &samples[1])]);
        let all = store.samples(id, Micros::MIN, Micros::MAX).unwrap();
        assert_eq!(all.len(), 5);
        assert_eq!(all[..3], before[..]);
        assert_eq!(store.sample_blocks.len(), 1);
    }

    #[test]
    fn retention_removes_sealed_minutes_and_emptied_files() {
        let (dir, store) = temp_store();
        let id = store.instance_id("host", "5432").unwrap();
        let samples = population(1);
        // A sample every ten minutes for two days.
        let at: Vec<(i64, &StoredSample)> = (0..288).map(|i| (i * 600, &samples[0])).collect();
        append(&store, id, &at);
        let files = || {
            let dir = std::fs::read_dir(dir.path().join("segments").join(id.to_string())).unwrap();
            dir.filter(|f| {
                f.as_ref()
                    .unwrap()
                    .path()
                    .extension()
                    .is_some_and(|e| e == "seg")
            })
            .count()
        };
        assert_eq!(files(), 3, "the days the samples fell on");
        let second_day = (Segments::day_of(T0) + 1) * DAY;
        let cut = second_day + 3_600 * SECOND;
        store.expire(id, cut, T0).unwrap();
        assert_eq!(files(), 2);
        let left = times(&store, id);
        assert!(
            left[0] >= Resolution::Minute.start_of(cut),
            "{} left",
            left.len()
        );
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
        store
            .segments
            .append(id, (day, Holding::Samples), b"written, never indexed")
            .unwrap();
        append(&store, id, &[(60, &samples[2])]);
        let (at, got) = store.sample_at(id, T0 + SECOND).unwrap().unwrap();
        assert_eq!((at, got.seq), (T0 + SECOND, 1));

        let path = dir
            .path()
            .join("segments")
            .join(id.to_string())
            .join(format!("{day}.seg"));
        let mut bytes = std::fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        std::fs::write(&path, bytes).unwrap();
        let err = store.samples(id, T0, T0 + SECOND).unwrap_err();
        assert!(matches!(err, StoreError::Unpack(_)), "{err}");
        // The loose minute still reads.
        assert_eq!(
            store
                .samples(id, T0 + 60 * SECOND, Micros::MAX)
                .unwrap()
                .len(),
            1
        );
    }
}
