//! Removing old records from sled, which has no TTL: time-ordered key
//! ranges deleted in small batches, so writers are never held up long.

use sled::Tree;

use super::keys::EpisodeKind;
use super::records::SampleBlock;
use super::sled::decode;
use super::StoreError;

/// Every episode kind there is.
pub(super) const ALL_EPISODE_KINDS: [EpisodeKind; 7] = [
    EpisodeKind::IdleInTransaction,
    EpisodeKind::SlowQuery,
    EpisodeKind::LockWait,
    EpisodeKind::Idle,
    EpisodeKind::AuxMissing,
    EpisodeKind::AutovacuumSaturated,
    EpisodeKind::Restart,
];

/// How many keys one batch removes before letting writers in.
const EXPIRE_BATCH: usize = 512;

/// Removes the keys in `[from, to)` in batches.
pub(super) fn remove_range(
    tree: &Tree,
    from: impl AsRef<[u8]>,
    to: impl AsRef<[u8]>,
) -> Result<u64, StoreError> {
    let (from, to) = (from.as_ref().to_vec(), to.as_ref().to_vec());
    let mut removed = 0;
    loop {
        let keys: Vec<sled::IVec> = tree
            .range(from.clone()..to.clone())
            .keys()
            .take(EXPIRE_BATCH)
            .collect::<Result<_, _>>()?;
        if keys.is_empty() {
            return Ok(removed);
        }
        let mut batch = sled::Batch::default();
        for k in &keys {
            batch.remove(k);
        }
        tree.apply_batch(batch)?;
        removed += keys.len() as u64;
        std::thread::yield_now();
    }
}

/// Removes the index entries of sealed blocks in `tree` (`name`) within
/// the inclusive key `ranges`, in one batch, flushed before it returns (a
/// file may go only once nothing refers to it); returns how many records
/// the blocks held.
pub(super) fn remove_blocks(
    tree: &Tree,
    name: &'static str,
    ranges: impl IntoIterator<Item = (Vec<u8>, Vec<u8>)>,
) -> Result<u64, StoreError> {
    let mut removed = 0;
    let mut batch = sled::Batch::default();
    for (from, to) in ranges {
        for entry in tree.range(from..=to) {
            let (k, v) = entry?;
            removed += u64::from(decode::<SampleBlock>(name, &v)?.count);
            batch.remove(k);
        }
    }
    if removed > 0 {
        tree.apply_batch(batch)?;
        tree.flush()?;
    }
    Ok(removed)
}
