//! [`Store`] on sled: one `Db` per process, one tree per record kind.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, RwLock};

use pgtrail_proto::pb;
use pgtrail_proto::time::Micros;
use prost::Message;
use sled::transaction::{ConflictableTransactionError, TransactionError};
use sled::{Transactional, Tree};

use super::chain::{corrupt, parse_bytes};
use super::closed::decode_closed;
use super::compress;
use super::delta::{Base, Rows};
use super::expire::{remove_range, ALL_EPISODE_KINDS};
use super::identities::Identities;
use super::keys::{self, EpisodeKind, InstanceId, Resolution};
use super::open::{OpenRollup, OpenRollups};
use super::records::{
    EpisodeRecord, EpisodeRollup, EpisodeSpan, InstanceRecord, PeakRollup, Rollup, StoredSample,
};
use super::sealed::Block;
use super::segments::Segments;
use super::split::{head, split, Split};
use super::tail::{Tail, TailEntry};
use super::texts::TextCache;
use super::{Append, EpisodeFilter, Store, StoreError};
use prost::bytes::Bytes;

/// The layout version this build writes. Format 2 added what a build of
/// format 1 would misread: rows stored as field patches, compressed
/// samples and compact closed episodes; format 3, samples sealed a minute
/// at a time into segment files, which a build of format 2 would not see;
/// format 4, closed episodes sealed with them, and open episodes, counters
/// and the open minute's closed episodes kept in the tail's log rather
/// than in sled; format 5, episode blocks laid out by column and session
/// patches that write query ids as they are.
pub const FORMAT: u32 = 5;

/// The oldest layout this build reads: its values still decode. Opening
/// such a store marks it with [`FORMAT`], since what is written from then
/// on is of that layout.
pub const OLDEST_FORMAT: u32 = 1;

/// How much sled may cache. Not a cap on RSS (sled's own caveat), but it
/// keeps the page cache from growing with the store.
const CACHE_BYTES: u64 = 64 << 20;

/// The embedded store.
#[derive(Debug)]
pub struct SledStore {
    pub(super) db: sled::Db,
    pub(super) instances: Tree,
    pub(super) samples: Tree,
    /// Where each sealed minute of samples is in `segments`.
    pub(super) sample_blocks: Tree,
    /// The files of sealed samples.
    pub(super) segments: Segments,
    /// Per instance, the minute of samples being written.
    tails: RwLock<HashMap<InstanceId, Arc<std::sync::Mutex<Tail>>>>,
    facts: Tree,
    rollups: Tree,
    rollup_maps: Tree,
    pub(super) episodes: Tree,
    /// Where each sealed block of closed episodes is in `segments`.
    pub(super) episode_blocks: Tree,
    /// Open episodes as stores before format 4 kept them: read once.
    pub(super) open_episodes: Tree,
    queries: Tree,
    pub(super) identities: Tree,
    pub(super) meta: Tree,
    /// id → key in `instances`, so appends find the record to count in.
    instance_keys: RwLock<HashMap<InstanceId, Vec<u8>>>,
    /// Per instance, the last sample appended in order and its encoded
    /// rows: what the next sample's delta is taken against.
    pub(super) chains: std::sync::Mutex<HashMap<InstanceId, (Micros, Arc<Base>)>>,
    /// The rollups still being written.
    open: OpenRollups,
    /// The identities closed episodes refer to.
    pub(super) known_identities: Identities,
    /// Query texts written or read lately.
    texts: TextCache,
}

impl SledStore {
    /// Opens (or creates) the store in `dir`.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(CACHE_BYTES)
            .open()?;
        let tree = |name: &str| db.open_tree(name);
        let identities = tree("identities")?;
        let known_identities = Identities::load(&identities)?;
        let store = Self {
            instances: tree("instances")?,
            samples: tree("samples")?,
            sample_blocks: tree("sample_blocks")?,
            segments: Segments::open(dir)?,
            tails: RwLock::new(HashMap::new()),
            facts: tree("facts")?,
            rollups: tree("rollups")?,
            rollup_maps: tree("rollup_maps")?,
            episodes: tree("episodes")?,
            episode_blocks: tree("episode_blocks")?,
            open_episodes: tree("open_episodes")?,
            queries: tree("queries")?,
            identities,
            meta: tree("meta")?,
            db,
            instance_keys: RwLock::new(HashMap::new()),
            chains: std::sync::Mutex::new(HashMap::new()),
            open: OpenRollups::default(),
            known_identities,
            texts: TextCache::default(),
        };
        let found = match store.meta.get("format")? {
            None => None,
            Some(v) => {
                let found = u32::from_be_bytes(v.as_ref().try_into().unwrap_or([0; 4]));
                if !(OLDEST_FORMAT..=FORMAT).contains(&found) {
                    return Err(StoreError::Format {
                        path: dir.display().to_string(),
                        found,
                        oldest: OLDEST_FORMAT,
                        newest: FORMAT,
                    });
                }
                Some(found)
            }
        };
        let mut ids = store.instance_keys.write().expect("not poisoned");
        for entry in store.instances.iter() {
            let (key, value) = entry?;
            let record = decode::<InstanceRecord>("instances", &value)?;
            ids.insert(record.id, key.to_vec());
        }
        let registered: Vec<InstanceId> = ids.keys().copied().collect();
        drop(ids);
        // Tails of format 3 hold samples alone: sealed as they are, before
        // the store is marked with a format that reads tails otherwise.
        let old_tails = found.is_some_and(|f| f < 4);
        for id in registered {
            store.open_tail(id, old_tails)?;
        }
        if found != Some(FORMAT) {
            store.meta.insert("format", &FORMAT.to_be_bytes())?;
            store.db.flush()?;
        }
        Ok(store)
    }

    fn instance_key(host: &str, instance: &str) -> Vec<u8> {
        let mut k = Vec::with_capacity(host.len() + instance.len() + 1);
        k.extend_from_slice(host.as_bytes());
        k.push(0);
        k.extend_from_slice(instance.as_bytes());
        k
    }

    pub(super) fn instance_range(
        tree: &Tree,
        id: InstanceId,
        from: Micros,
        to: Micros,
    ) -> impl DoubleEndedIterator<Item = sled::Result<(sled::IVec, sled::IVec)>> {
        tree.range(keys::instance_time(id, from)..=keys::instance_time(id, to))
    }

    /// The instance's tail, opened (from its log, after a crash) on first
    /// use.
    fn tail(&self, instance: InstanceId) -> Result<Arc<std::sync::Mutex<Tail>>, StoreError> {
        if let Some(tail) = self.tails.read().expect("not poisoned").get(&instance) {
            return Ok(tail.clone());
        }
        self.open_tail(instance, false)
    }

    /// Opens the instance's tail from its log; `old` when the log may be
    /// of format 3 (samples alone, as a block's entries).
    fn open_tail(
        &self,
        instance: InstanceId,
        old: bool,
    ) -> Result<Arc<std::sync::Mutex<Tail>>, StoreError> {
        let mut tails = self.tails.write().expect("not poisoned");
        if let Some(tail) = tails.get(&instance) {
            return Ok(tail.clone());
        }
        let mut sealed_through =
            Self::instance_range(&self.sample_blocks, instance, Micros::MIN, Micros::MAX)
                .next_back()
                .transpose()?
                .map(|(k, _)| keys::time_of_instance_key(&k));
        let mut log = self.segments.open_log(instance)?;
        if old && !log.2.is_empty() {
            sealed_through = self.seal_old_log(instance, &log.2, sealed_through)?;
            log = self.segments.replace_log(instance, Vec::new())?;
        }
        let mut legacy = Vec::new();
        for kind in ALL_EPISODE_KINDS {
            for e in self
                .open_episodes
                .scan_prefix(keys::episode_prefix(kind, instance))
            {
                legacy.push((kind, decode("open_episodes", &e?.1)?));
            }
        }
        let mut tail = Tail::new(instance, log, sealed_through, legacy)?;
        if let Some(s) = sealed_through.filter(|s| tail.minute.is_some_and(|m| m <= *s)) {
            // Sealed before a crash kept the log from being replaced.
            tail.sealed(s);
            self.restart_tail(instance, &mut tail)?;
        }
        let tail = Arc::new(std::sync::Mutex::new(tail));
        tails.insert(instance, tail.clone());
        Ok(tail)
    }

    /// Seals a format-3 tail log, `raw` (a block's entries), unless its
    /// minute was sealed already; returns the latest sealed minute.
    fn seal_old_log(
        &self,
        instance: InstanceId,
        raw: &[u8],
        sealed_through: Option<Micros>,
    ) -> Result<Option<Micros>, StoreError> {
        let (mut entries, whole) = super::sealed::entries(raw);
        entries.sort_by_key(|(t, _)| *t);
        let (Some(first), Some(last)) = (entries.first(), entries.last()) else {
            return Ok(sealed_through);
        };
        let minute = super::sealed::minute_of(first.0);
        if sealed_through.is_some_and(|s| minute <= s) {
            return Ok(sealed_through);
        }
        let frame = super::sealed::compress_block(&raw[..whole])?;
        let day = (
            super::segments::Segments::day_of(minute),
            super::segments::Holding::Samples,
        );
        let offset = self.segments.append(instance, day, &frame)?;
        let record = super::records::SampleBlock {
            offset,
            len: frame.len() as u64,
            raw_len: whole as u64,
            first_us: first.0,
            last_us: last.0,
            count: u32::try_from(entries.len()).unwrap_or(u32::MAX),
            layout: 0,
        };
        self.sample_blocks.insert(
            keys::instance_time(instance, minute),
            record.encode_to_vec(),
        )?;
        self.db.flush()?;
        Ok(Some(minute))
    }

    /// The key of the instance's record in `instances`.
    pub(super) fn instance_key_of(&self, instance: InstanceId) -> Vec<u8> {
        self.instance_keys
            .read()
            .expect("not poisoned")
            .get(&instance)
            .cloned()
            .expect("instance registered before it is written")
    }

    /// The instance's tail as a block, if it holds a sample.
    pub(super) fn tail_snapshot(
        &self,
        instance: InstanceId,
    ) -> Result<Option<Arc<Block>>, StoreError> {
        let Some(tail) = self
            .tails
            .read()
            .expect("not poisoned")
            .get(&instance)
            .cloned()
        else {
            return Ok(None);
        };
        let mut tail = tail.lock().expect("not poisoned");
        tail.snapshot()
    }

    /// A stored rollup from its head (in `rollups`, under `key`) and its
    /// maps (in `rollup_maps`).
    fn whole_rollup(&self, key: &[u8], head: &[u8]) -> Result<Rollup, StoreError> {
        let mut bytes = head.to_vec();
        if let Some(maps) = self.rollup_maps.get(key)? {
            // Stored plain before format 4.
            bytes.extend_from_slice(&compress::unpack(maps)?);
        }
        decode("rollups", &bytes)
    }

    /// Rollups starting in `[from, to]`: a stored one made from its key
    /// and head by `read`, an open one from the rollup itself by
    /// `read_open` (read instead of the stored one of the same stretch).
    fn rollup_range<T>(
        &self,
        instance: InstanceId,
        res: Resolution,
        (from, to): (Micros, Micros),
        read: impl Fn(&[u8], &[u8]) -> Result<T, StoreError>,
        read_open: impl Fn(&mut Rollup) -> Result<T, StoreError>,
    ) -> Result<Vec<(Micros, T)>, StoreError> {
        if from > to {
            return Ok(Vec::new());
        }
        // The open one first: an append that writes it to sled removes it
        // from memory afterwards, so it is always seen in one or the other.
        let open = self.open.within(instance, res, from, to);
        let mut out = Vec::new();
        for e in self
            .rollups
            .range(keys::rollup(instance, res, from)..=keys::rollup(instance, res, to))
        {
            let (k, head) = e?;
            let start = keys::time_of_rollup_key(&k);
            if open.as_ref().is_none_or(|o| o.start != start) {
                out.push((start, read(&k, &head)?));
            }
        }
        if let Some(o) = open {
            let at = out.partition_point(|(start, _)| *start < o.start);
            out.insert(at, (o.start, read_open(&mut o.rollup.lock())?));
        }
        Ok(out)
    }

    /// Writes these rollups, split as stored, in one batch per tree.
    fn write_rollups<'a>(
        &self,
        rollups: impl Iterator<Item = (InstanceId, Resolution, &'a OpenRollup)>,
    ) -> Result<(), StoreError> {
        let (mut heads, mut maps) = (sled::Batch::default(), sled::Batch::default());
        for (id, res, o) in rollups {
            let key = keys::rollup(id, res, o.start);
            let (head, rest) = split(&o.rollup.lock());
            heads.insert(key.as_slice(), head);
            maps.insert(key.as_slice(), rest);
        }
        (&self.rollups, &self.rollup_maps)
            .transaction(|(r, m)| {
                r.apply_batch(&heads)?;
                m.apply_batch(&maps)?;
                Ok::<_, ConflictableTransactionError<StoreError>>(())
            })
            .map_err(|e| match e {
                TransactionError::Abort(e) => e,
                TransactionError::Storage(e) => StoreError::Sled(e),
            })
    }
}

impl SledStore {
    /// Writes what an append keeps in sled, in one transaction: a late
    /// sample (with the instance's counters), texts, facts and rollups.
    /// Returns `false`, writing nothing, when the late sample is stored.
    fn write_records(
        &self,
        a: &Append,
        sample_key: &[u8; 12],
        loose: Option<&[u8]>,
        facts: Option<&[u8]>,
        rollups: &[(Resolution, Micros, Split)],
    ) -> Result<bool, StoreError> {
        let instance_key = self.instance_key_of(a.instance);
        let trees = (
            &self.samples,
            &self.facts,
            &self.rollups,
            &self.rollup_maps,
            &self.queries,
            &self.instances,
        );
        let result = trees.transaction(
            |(samples, facts_t, rollups_t, maps_t, queries, instances)| {
                if let Some(value) = loose {
                    if samples.get(sample_key)?.is_some() {
                        return Ok(false);
                    }
                    samples.insert(sample_key, value)?;
                    let Some(v) = instances.get(&instance_key)? else {
                        return Err(ConflictableTransactionError::Abort(
                            StoreError::MissingInstance(a.instance),
                        ));
                    };
                    let mut record: InstanceRecord =
                        decode("instances", &v).map_err(ConflictableTransactionError::Abort)?;
                    record.samples += 1;
                    record.dropped += a.dropped;
                    instances.insert(instance_key.as_slice(), record.encode_to_vec())?;
                }
                for (id, text) in &a.texts {
                    let key = id.to_be_bytes();
                    if queries.get(key)?.is_none() {
                        queries.insert(&key, text.as_bytes())?;
                    }
                }
                if let Some(f) = facts {
                    facts_t.insert(sample_key, f)?;
                }
                for (res, start, (head, maps)) in rollups {
                    let key = keys::rollup(a.instance, *res, *start);
                    rollups_t.insert(&key, head.as_slice())?;
                    maps_t.insert(&key, maps.as_slice())?;
                }
                Ok(true)
            },
        );
        result.map_err(|e| match e {
            TransactionError::Abort(e) => e,
            TransactionError::Storage(e) => StoreError::Sled(e),
        })
    }
}

impl SledStore {
    /// Forgets the open rollups without writing them, as a crash would:
    /// for tests of what the ingestor rebuilds.
    #[doc(hidden)]
    pub fn discard_open(&self) {
        self.open.discard();
    }
}

impl Drop for SledStore {
    fn drop(&mut self) {
        if let Err(e) = self.persist_open() {
            tracing::warn!(error = %e, "could not write the open rollups at close");
        }
    }
}

/// A closed episode as read: its stored value, or the record itself while
/// its tail holds it.
enum ClosedValue {
    Stored(Bytes),
    Whole(Box<EpisodeRecord>),
}

impl SledStore {
    /// Every closed episode `filter` lets through, with what is stored of
    /// it, in the order they ended: those on their own in sled, those in
    /// sealed blocks and those in the tail.
    fn scan_closed(
        &self,
        kind: EpisodeKind,
        instance: InstanceId,
        filter: &EpisodeFilter,
    ) -> Result<Vec<(EpisodeSpan, ClosedValue)>, StoreError> {
        // The tail first: a seal between the reads moves its episodes into
        // what is read next, so they are read twice (and kept once), never
        // missed.
        let mut out = Vec::new();
        let tail = self.tail(instance)?;
        let tail = tail.lock().expect("not poisoned");
        for (key, (k, e)) in tail.closed() {
            let span = keys::closed_episode_span(key);
            if *k == kind && filter.lets_through(&span) {
                out.push((span, ClosedValue::Whole(Box::new(e.clone()))));
            }
        }
        drop(tail);
        let prefix = keys::episode_prefix(kind, instance);
        // A key shorter than the full key sorts before every full key that
        // extends it.
        let mut start = prefix.to_vec();
        start.extend_from_slice(&keys::time_bytes(filter.ended_from));
        for entry in self.episodes.range(start..) {
            let (key, value) = entry?;
            if !key.starts_with(&prefix) {
                break;
            }
            let span = keys::closed_episode_span(&key);
            if span.ended_us > filter.ended_to {
                break;
            }
            if filter.lets_through(&span) {
                out.push((span, ClosedValue::Stored(Bytes::copy_from_slice(&value))));
            }
        }
        for (span, value) in self.sealed_episodes(kind, instance, filter)? {
            out.push((span, ClosedValue::Stored(value)));
        }
        // Key order: end, then pid as the key holds it, then start.
        out.sort_by_key(|(s, _)| (s.ended_us, s.pid as u32, s.started_us));
        out.dedup_by_key(|(s, _)| *s);
        Ok(out)
    }

    /// The record of a closed episode as read.
    fn closed_record(
        &self,
        span: &EpisodeSpan,
        value: ClosedValue,
    ) -> Result<EpisodeRecord, StoreError> {
        match value {
            ClosedValue::Stored(v) => decode_closed(span, &v, &self.known_identities),
            ClosedValue::Whole(e) => Ok(*e),
        }
    }
}

pub(super) fn decode<M: Message + Default>(
    tree: &'static str,
    bytes: &[u8],
) -> Result<M, StoreError> {
    M::decode(bytes).map_err(|source| StoreError::Corrupt { tree, source })
}

impl Store for SledStore {
    fn instance_id(&self, host: &str, instance: &str) -> Result<InstanceId, StoreError> {
        let key = Self::instance_key(host, instance);
        loop {
            if let Some(v) = self.instances.get(&key)? {
                return Ok(decode::<InstanceRecord>("instances", &v)?.id);
            }
            let next = self
                .meta
                .update_and_fetch("next_instance_id", |old| {
                    let n = old
                        .and_then(|o| o.try_into().ok())
                        .map_or(1, u32::from_be_bytes);
                    Some((n + 1).to_be_bytes().to_vec())
                })?
                .expect("just set");
            let id = u32::from_be_bytes(next.as_ref().try_into().expect("4 bytes")) - 1;
            let record = InstanceRecord {
                id,
                host: host.to_string(),
                instance: instance.to_string(),
                samples: 0,
                dropped: 0,
            };
            let won = self
                .instances
                .compare_and_swap(&key, None as Option<&[u8]>, Some(record.encode_to_vec()))?
                .is_ok();
            if won {
                self.instance_keys
                    .write()
                    .expect("not poisoned")
                    .insert(id, key);
                return Ok(id);
            }
        }
    }

    fn instances(&self) -> Result<Vec<InstanceRecord>, StoreError> {
        let mut out = Vec::new();
        for entry in self.instances.iter() {
            let (key, value) = entry?;
            let id = decode::<InstanceRecord>("instances", &value)?.id;
            // What the tail counted since its last seal, read under its lock
            // with the record, so no seal falls between the two.
            let tail = self.tail(id)?;
            let tail = tail.lock().expect("not poisoned");
            let Some(value) = self.instances.get(&key)? else {
                continue;
            };
            let mut record: InstanceRecord = decode("instances", &value)?;
            record.samples += tail.len() as u64;
            record.dropped += tail.dropped();
            out.push(record);
        }
        Ok(out)
    }

    fn append(&self, a: &mut Append) -> Result<bool, StoreError> {
        let tail = self.tail(a.instance)?;
        let mut tail = tail.lock().expect("not poisoned");
        if tail.is_stale() {
            self.restart_tail(a.instance, &mut tail)?;
        }
        // A sample of a minute before the tail's (or sealed) is late: stored
        // on its own in `samples`.
        let minute = Resolution::Minute.start_of(a.sampled_at);
        let late = tail.sealed_through.is_some_and(|s| minute <= s)
            || tail.minute.is_some_and(|m| minute < m);
        if !late {
            if tail.has(a.sampled_at) {
                return Ok(false);
            }
            if tail.minute.is_some_and(|m| minute > m) {
                self.seal(a.instance, &mut tail)?;
            }
        }
        let sample_key = keys::instance_time(a.instance, a.sampled_at);
        let (sample, rows) = self.encode_sample(a);
        let (loose, in_tail) = if late {
            (Some(compress::pack(sample, compress::KEYFRAME_LEVEL)), None)
        } else {
            (None, Some(sample))
        };
        let episodes = !(a.opened.is_empty() && a.closed.is_empty());
        let entry = TailEntry {
            at: a.sampled_at,
            sample: in_tail.as_deref(),
            opened: std::mem::take(&mut a.opened),
            closed: std::mem::take(&mut a.closed),
            dropped: if late { 0 } else { a.dropped },
        };
        let mut entry = Some(entry);
        if late && episodes {
            // Before the sample: its episodes are what matters more, and
            // written twice they are the same.
            tail.push(entry.take().expect("not pushed yet"))?;
        }
        let facts = a.facts.as_ref().map(Message::encode_to_vec);
        let writing: Vec<(Resolution, Micros)> = a
            .rollups
            .iter()
            .map(|(res, start, _)| (*res, *start))
            .collect();
        let opening: Vec<(Resolution, OpenRollup)> = a
            .open_rollups
            .iter()
            .map(|(res, start, r)| {
                let rollup = r.clone();
                (
                    *res,
                    OpenRollup {
                        start: *start,
                        rollup,
                    },
                )
            })
            .collect();
        let opening_at: Vec<_> = opening.iter().map(|(res, o)| (*res, o.start)).collect();
        // Written now: the append's own, and the open ones it closes.
        let rollups: Vec<(Resolution, Micros, Split)> = a
            .rollups
            .iter()
            .map(|(res, start, r)| (*res, *start, split(r)))
            .chain(
                self.open
                    .closed_by(a.instance, &opening_at, &writing)
                    .into_iter()
                    .map(|(res, o)| (res, o.start, split(&o.rollup.lock()))),
            )
            .collect();
        let stored =
            if loose.is_some() || !a.texts.is_empty() || facts.is_some() || !rollups.is_empty() {
                self.write_records(a, &sample_key, loose.as_deref(), facts.as_deref(), &rollups)?
            } else {
                true
            };
        if stored {
            if let Some(entry) = entry.filter(|_| !late) {
                tail.push(entry)?;
            }
            drop(tail);
            if !a.texts.is_empty() {
                self.texts.put(a.texts.iter().map(|(id, text)| (*id, text)));
            }
            let mut chains = self.chains.lock().expect("not poisoned");
            let newer = chains
                .get(&a.instance)
                .is_none_or(|(last, _)| a.sampled_at > *last);
            if newer {
                chains.insert(a.instance, (a.sampled_at, Arc::new(rows)));
            }
            drop(chains);
            let written: Vec<_> = rollups
                .iter()
                .map(|(res, start, _)| (*res, *start))
                .collect();
            self.open.settle(a.instance, &written, opening);
        }
        Ok(stored)
    }

    fn seal_before(&self, instance: InstanceId, t: Micros) -> Result<(), StoreError> {
        let tail = self.tail(instance)?;
        let mut tail = tail.lock().expect("not poisoned");
        if tail.is_stale() {
            self.restart_tail(instance, &mut tail)?;
        }
        let minute = Resolution::Minute.start_of(t);
        if tail.minute.is_some_and(|m| minute > m) {
            self.seal(instance, &mut tail)?;
        }
        Ok(())
    }

    fn has_sample(&self, instance: InstanceId, t: Micros) -> Result<bool, StoreError> {
        Ok(self.stored_at(instance, t)?.is_some())
    }

    fn flush(&self) -> Result<(), StoreError> {
        self.db.flush()?;
        let tails: Vec<_> = self
            .tails
            .read()
            .expect("not poisoned")
            .values()
            .cloned()
            .collect();
        for tail in tails {
            // Written only now, after sled's flush: an entry never reaches
            // the disk before what its append wrote to sled.
            let Some((file, path)) = tail.lock().expect("not poisoned").write_pending()? else {
                continue;
            };
            file.sync_data().map_err(|source| StoreError::Segment {
                path: path.display().to_string(),
                source,
            })?;
        }
        Ok(())
    }

    fn persist_open(&self) -> Result<(), StoreError> {
        let open = self.open.all();
        self.write_rollups(open.iter().map(|(id, res, o)| (*id, *res, o)))?;
        self.flush()
    }

    fn sample_bounds(&self, instance: InstanceId) -> Result<Option<(Micros, Micros)>, StoreError> {
        let mut range = Self::instance_range(&self.samples, instance, Micros::MIN, Micros::MAX);
        let loose = match range.next() {
            None => None,
            Some(first) => {
                let first = keys::time_of_instance_key(&first?.0);
                let last = match range.next_back() {
                    Some(last) => keys::time_of_instance_key(&last?.0),
                    None => first,
                };
                Some((first, last))
            }
        };
        Ok(match (loose, self.sealed_bounds(instance)?) {
            (Some(a), Some(b)) => Some((a.0.min(b.0), a.1.max(b.1))),
            (a, b) => a.or(b),
        })
    }

    fn sample_at(
        &self,
        instance: InstanceId,
        t: Micros,
    ) -> Result<Option<(Micros, StoredSample)>, StoreError> {
        match self.last_at_or_before(instance, t)? {
            None => Ok(None),
            Some((at, value, origin)) => {
                let stored = parse_bytes(value)?;
                Ok(Some((at, self.rebuild(instance, at, stored, &origin)?)))
            }
        }
    }

    fn samples(
        &self,
        instance: InstanceId,
        from: Micros,
        to: Micros,
    ) -> Result<Vec<(Micros, StoredSample)>, StoreError> {
        if from > to {
            return Ok(Vec::new());
        }
        let mut out = Vec::new();
        let mut running: Option<(Micros, Rows)> = None;
        for entry in self.sample_entries(instance, from, to)? {
            let (at, value, origin) = entry?;
            let stored = parse_bytes(value)?;
            let mut rows = match running.take() {
                Some((prev, mut rows))
                    if stored.header.keyframe || stored.header.base_us == Some(prev) =>
                {
                    rows.apply(&stored)
                        .map_err(|source| StoreError::CorruptSample {
                            at,
                            instance,
                            source,
                        })?;
                    rows
                }
                _ => self.chain_rows(instance, at, &stored, &origin)?,
            };
            let sample = rows.fill(stored.header).map_err(corrupt)?;
            running = Some((at, rows));
            out.push((at, sample));
        }
        Ok(out)
    }

    fn rollup(
        &self,
        instance: InstanceId,
        res: Resolution,
        start: Micros,
    ) -> Result<Option<Rollup>, StoreError> {
        let key = keys::rollup(instance, res, start);
        if let Some(o) = self.open.within(instance, res, start, start) {
            return Ok(Some(o.rollup.get()));
        }
        match self.rollups.get(key)? {
            None => Ok(None),
            Some(head) => self.whole_rollup(&key, &head).map(Some),
        }
    }

    fn rollups(
        &self,
        instance: InstanceId,
        res: Resolution,
        from: Micros,
        to: Micros,
    ) -> Result<Vec<(Micros, Rollup)>, StoreError> {
        self.rollup_range(
            instance,
            res,
            (from, to),
            |k, head| self.whole_rollup(k, head),
            |open| Ok(open.clone()),
        )
    }

    fn peak_rollups(
        &self,
        instance: InstanceId,
        res: Resolution,
        from: Micros,
        to: Micros,
    ) -> Result<Vec<(Micros, PeakRollup)>, StoreError> {
        self.rollup_range(
            instance,
            res,
            (from, to),
            |_, head| decode("rollups", head),
            |open| decode("rollups", &head(open)),
        )
    }

    fn episode_rollups(
        &self,
        instance: InstanceId,
        from: Micros,
        to: Micros,
    ) -> Result<Vec<(Micros, EpisodeRollup)>, StoreError> {
        self.rollup_range(
            instance,
            Resolution::Hour,
            (from, to),
            |_, head| decode("rollups", head),
            |open| decode("rollups", &head(open)),
        )
    }

    fn facts_at(
        &self,
        instance: InstanceId,
        t: Micros,
    ) -> Result<Option<pb::InstanceFacts>, StoreError> {
        let before = Self::instance_range(&self.facts, instance, Micros::MIN, t).next_back();
        let entry = match before {
            Some(e) => Some(e),
            None => Self::instance_range(&self.facts, instance, t, Micros::MAX).next(),
        };
        entry.map(|e| decode("facts", &e?.1)).transpose()
    }

    fn closed_episodes(
        &self,
        kind: EpisodeKind,
        instance: InstanceId,
        filter: &EpisodeFilter,
    ) -> Result<Vec<EpisodeRecord>, StoreError> {
        self.scan_closed(kind, instance, filter)?
            .into_iter()
            .map(|(span, value)| self.closed_record(&span, value))
            .collect()
    }

    fn closed_episode_spans(
        &self,
        kind: EpisodeKind,
        instance: InstanceId,
        filter: &EpisodeFilter,
    ) -> Result<Vec<EpisodeSpan>, StoreError> {
        Ok(self
            .scan_closed(kind, instance, filter)?
            .into_iter()
            .map(|(span, _)| span)
            .collect())
    }

    fn closed_episode(
        &self,
        kind: EpisodeKind,
        instance: InstanceId,
        span: &EpisodeSpan,
    ) -> Result<Option<EpisodeRecord>, StoreError> {
        let key = keys::closed_episode(kind, instance, span.ended_us, span.pid, span.started_us);
        // The tail first, as in `scan_closed`.
        let tail = self.tail(instance)?;
        let whole = tail.lock().expect("not poisoned").closed_at(&key).cloned();
        let value = match whole {
            Some(e) => Some(ClosedValue::Whole(Box::new(e))),
            None => match self.episodes.get(key)? {
                Some(v) => Some(ClosedValue::Stored(Bytes::copy_from_slice(&v))),
                None => self
                    .sealed_episode(kind, instance, span)?
                    .map(ClosedValue::Stored),
            },
        };
        value.map(|v| self.closed_record(span, v)).transpose()
    }

    fn open_episodes(
        &self,
        kind: EpisodeKind,
        instance: InstanceId,
    ) -> Result<Vec<EpisodeRecord>, StoreError> {
        let tail = self.tail(instance)?;
        let tail = tail.lock().expect("not poisoned");
        Ok(tail.open(kind).cloned().collect())
    }

    fn expire(
        &self,
        instance: InstanceId,
        raw_before: Micros,
        kept_before: Micros,
    ) -> Result<u64, StoreError> {
        let mut removed = 0;
        let first = keys::instance_time(instance, Micros::MIN);
        // Whole sealed minutes; loose samples at a keyframe, so every chain
        // left is whole.
        removed += self.expire_sealed(instance, Resolution::Minute.start_of(raw_before))?;
        let cut = self.chain_start(instance, raw_before)?;
        removed += remove_range(&self.samples, first, keys::instance_time(instance, cut))?;
        // Facts: keep the latest one before the cut, it is still in force.
        let last_kept = Self::instance_range(&self.facts, instance, Micros::MIN, raw_before - 1)
            .next_back()
            .transpose()?
            .map(|(k, _)| k);
        if let Some(last) = last_kept {
            removed += remove_range(&self.facts, first, last)?;
        }
        for res in Resolution::ALL {
            // An hour rollup lists the episodes that ended in it: it stays
            // while any of them does.
            let cut = match res {
                Resolution::Hour => res.start_of(kept_before),
                Resolution::Minute => kept_before,
            };
            let from = keys::rollup(instance, res, Micros::MIN);
            let to = keys::rollup(instance, res, cut);
            removed += remove_range(&self.rollups, from, to)?;
            removed += remove_range(&self.rollup_maps, from, to)?;
        }
        for kind in ALL_EPISODE_KINDS {
            let prefix = keys::episode_prefix(kind, instance);
            let mut from = prefix.to_vec();
            from.extend_from_slice(&keys::time_bytes(Micros::MIN));
            let mut to = prefix.to_vec();
            to.extend_from_slice(&keys::time_bytes(kept_before));
            removed += remove_range(&self.episodes, from, to)?;
        }
        removed += self.expire_episode_blocks(instance, kept_before)?;
        Ok(removed)
    }

    fn size_on_disk(&self) -> Result<u64, StoreError> {
        Ok(self.db.size_on_disk()? + self.segments.bytes()?)
    }

    fn query_texts(
        &self,
        ids: &mut dyn Iterator<Item = u64>,
    ) -> Result<HashMap<u64, String>, StoreError> {
        let (mut out, missing) = self.texts.get(ids);
        let mut read = Vec::new();
        for id in missing {
            if let Some(text) = self.queries.get(id.to_be_bytes())? {
                read.push((id, Arc::<str>::from(String::from_utf8_lossy(&text))));
            }
        }
        if !read.is_empty() {
            self.texts.put(read.iter().map(|(id, text)| (*id, text)));
        }
        out.extend(read.into_iter().map(|(id, text)| (id, text.to_string())));
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::super::testing::{reopen, temp_store};
    use super::*;

    fn marked(store: &SledStore) -> u32 {
        let v = store.meta.get("format").unwrap().unwrap();
        u32::from_be_bytes(v.as_ref().try_into().unwrap())
    }

    #[test]
    fn an_older_layout_is_read_and_marked_a_newer_one_refused() {
        let (dir, store) = temp_store();
        assert_eq!(marked(&store), FORMAT);
        let instance = store.instance_id("host", "5432").unwrap();
        store
            .meta
            .insert("format", &OLDEST_FORMAT.to_be_bytes())
            .unwrap();
        drop(store);
        // A store of the oldest layout opens, keeps what it holds, and is
        // marked as written by this build.
        let store = reopen(dir.path());
        assert_eq!(marked(&store), FORMAT);
        assert_eq!(store.instance_id("host", "5432").unwrap(), instance);
        store
            .meta
            .insert("format", &(FORMAT + 1).to_be_bytes())
            .unwrap();
        drop(store);
        // One of a newer layout is refused, and left as it was.
        let refused = (0..200)
            .find_map(|_| match SledStore::open(dir.path()) {
                Err(e @ StoreError::Format { .. }) => Some(e),
                _ => {
                    std::thread::sleep(std::time::Duration::from_millis(25));
                    None
                }
            })
            .expect("a format error");
        assert_eq!(
            refused.to_string(),
            format!(
                "the store at {} has format {}; this pgtrail reads formats {OLDEST_FORMAT} to {FORMAT}",
                dir.path().display(),
                FORMAT + 1
            )
        );
        let db = (0..200)
            .find_map(|_| {
                let db = sled::open(dir.path()).ok();
                if db.is_none() {
                    std::thread::sleep(std::time::Duration::from_millis(25));
                }
                db
            })
            .expect("the store opens once let go of");
        let v = db
            .open_tree("meta")
            .unwrap()
            .get("format")
            .unwrap()
            .unwrap();
        assert_eq!(v.as_ref(), (FORMAT + 1).to_be_bytes());
    }

    #[test]
    fn texts_written_with_a_sample_read_back_from_memory_and_from_sled() {
        let (_dir, mut store) = temp_store();
        let instance = store.instance_id("host", "5432").unwrap();
        let (one, two): (Arc<str>, Arc<str>) = ("SELECT 1".into(), "SELECT 2".into());
        let mut append = Append {
            instance,
            sampled_at: 1_000_000,
            texts: vec![(1, one), (2, two)],
            ..Default::default()
        };
        assert!(store.append(&mut append).unwrap());
        let ask = |store: &SledStore| {
            let mut texts: Vec<_> = store
                .query_texts(&mut [2, 3, 1, 2].into_iter())
                .unwrap()
                .into_iter()
                .collect();
            texts.sort();
            texts
        };
        let expected = vec![(1, "SELECT 1".to_string()), (2, "SELECT 2".to_string())];
        assert_eq!(ask(&store), expected, "from memory");
        store.texts = TextCache::default();
        assert_eq!(ask(&store), expected, "from sled");
        assert_eq!(ask(&store), expected, "from memory again");
    }
}
