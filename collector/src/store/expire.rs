//! Removing old records from sled, which has no TTL: time-ordered key
//! ranges deleted in small batches, so writers are never held up long.

use sled::Tree;

use super::keys::EpisodeKind;
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
