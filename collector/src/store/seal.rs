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
//!    counters (samples and dropped snapshots since the last seal); then
//!    a flush.
//! 4. The tail's file replaced by a checkpoint of the open episodes.
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
            let raw = tail.sample_block();
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
        let mut episode_blocks = Vec::new();
        // In key order, so a kind's episodes are together, by end.
        for group in blocked.chunk_by(|a, b| a.0 == b.0) {
            let raw = encode_block(group.iter().map(|(_, k, v, _)| (*k, v.as_slice())));
            let bounds = (
                group[0].3,
                group[group.len() - 1].3,
                u32::try_from(group.len()).unwrap_or(u32::MAX),
            );
            let (key, record) =
                self.write_episode_block(instance, (group[0].0, minute), &raw, bounds)?;
            episode_blocks.push((key, record.encode_to_vec()));
        }

        let instance_key = self.instance_key_of(instance);
        let legacy = tail.legacy_open();
        let (samples, dropped) = (tail.len() as u64, tail.dropped());
        let trees = (
            &self.sample_blocks,
            &self.episode_blocks,
            &self.episodes,
            &self.identities,
            &self.instances,
            &self.open_episodes,
        );
        trees
            .transaction(
                |(sample_blocks, blocks, episodes, idents, instances, open)| {
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
                    for key in legacy {
                        open.remove(key.as_slice())?;
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
                },
            )
            .map_err(|e| match e {
                TransactionError::Abort(e) => e,
                TransactionError::Storage(e) => StoreError::Sled(e),
            })?;
        self.db.flush()?;
        self.known_identities.settle(&new_identities);
        tail.sealed(minute);
        self.restart_tail(instance, tail)
    }

    /// Replaces a sealed tail's file with a checkpoint of its open
    /// episodes. Until that succeeds the tail takes no entries.
    pub(super) fn restart_tail(
        &self,
        instance: InstanceId,
        tail: &mut Tail,
    ) -> Result<(), StoreError> {
        let log = self.segments.replace_log(instance, tail.checkpoint())?;
        tail.restarted(log);
        Ok(())
    }
}
