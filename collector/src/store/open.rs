//! Rollups still being written: the current minute and hour of each
//! instance change with every sample, and rewriting them in sled every
//! second was most of what the store wrote (an hour rollup is tens of
//! kilobytes). [`SledStore`](super::SledStore) keeps them here instead,
//! shared with the ingestor, which folds each in-order sample into them in
//! place: nothing is encoded per sample. One is encoded when a read asks
//! for it and written when its stretch closes (an append opens a later one
//! for the same instance and resolution, or hands it over to be written
//! now) or when the store persists what is open
//! ([`Store::persist_open`](super::Store::persist_open), at shutdown).
//! Reads see these over what sled holds; a read may see a sample folded
//! in a moment before the sample itself is committed.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use pgtrail_proto::time::Micros;

use super::keys::{InstanceId, Resolution};
use super::Rollup;

/// A rollup still being folded, shared by the ingestor and the store.
#[derive(Debug, Clone, Default)]
pub struct SharedRollup(Arc<Mutex<Rollup>>);

impl SharedRollup {
    /// `rollup`, to be shared.
    pub fn new(rollup: Rollup) -> Self {
        Self(Arc::new(Mutex::new(rollup)))
    }

    /// The rollup, for reading or folding into.
    pub fn lock(&self) -> MutexGuard<'_, Rollup> {
        self.0.lock().expect("not poisoned")
    }

    /// A copy of the rollup as it stands.
    pub fn get(&self) -> Rollup {
        self.lock().clone()
    }

    /// Whether `other` shares this very rollup (not merely an equal one).
    pub fn is(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

/// One open rollup: its stretch's start and the rollup.
#[derive(Debug, Clone)]
pub struct OpenRollup {
    /// The stretch's start.
    pub start: Micros,
    /// The rollup, shared with the ingestor.
    pub rollup: SharedRollup,
}

/// Per instance and resolution, the rollup being written.
#[derive(Debug, Default)]
pub struct OpenRollups(Mutex<HashMap<(InstanceId, Resolution), OpenRollup>>);

impl OpenRollups {
    /// The open rollup of `instance` at `res` starting in `[from, to]`.
    pub fn within(
        &self,
        instance: InstanceId,
        res: Resolution,
        from: Micros,
        to: Micros,
    ) -> Option<OpenRollup> {
        let open = self.0.lock().expect("not poisoned");
        open.get(&(instance, res))
            .filter(|o| (from..=to).contains(&o.start))
            .cloned()
    }

    /// The open rollups of `instance` that an append opening `opening`
    /// (resolution, start) and writing `writing` closes: those at the same
    /// resolution with another start, unless the append writes them itself.
    pub fn closed_by(
        &self,
        instance: InstanceId,
        opening: &[(Resolution, Micros)],
        writing: &[(Resolution, Micros)],
    ) -> Vec<(Resolution, OpenRollup)> {
        let open = self.0.lock().expect("not poisoned");
        opening
            .iter()
            .filter_map(|&(res, start)| {
                let o = open.get(&(instance, res))?;
                let superseded = o.start != start && !writing.contains(&(res, o.start));
                superseded.then(|| (res, o.clone()))
            })
            .collect()
    }

    /// After an append is stored: the rollups it wrote are no longer open,
    /// the ones it opened are.
    pub fn settle(
        &self,
        instance: InstanceId,
        written: &[(Resolution, Micros)],
        opened: Vec<(Resolution, OpenRollup)>,
    ) {
        let mut open = self.0.lock().expect("not poisoned");
        for &(res, start) in written {
            if open.get(&(instance, res)).is_some_and(|o| o.start == start) {
                open.remove(&(instance, res));
            }
        }
        for (res, o) in opened {
            open.insert((instance, res), o);
        }
    }

    /// Forgets every open rollup.
    pub fn discard(&self) {
        self.0.lock().expect("not poisoned").clear();
    }

    /// Every open rollup.
    pub fn all(&self) -> Vec<(InstanceId, Resolution, OpenRollup)> {
        let open = self.0.lock().expect("not poisoned");
        open.iter()
            .map(|(&(id, res), o)| (id, res, o.clone()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(start: Micros) -> OpenRollup {
        OpenRollup {
            start,
            rollup: SharedRollup::default(),
        }
    }

    #[test]
    fn a_later_stretch_closes_the_open_one_unless_the_append_writes_it() {
        let rollups = OpenRollups::default();
        let m = Resolution::Minute;
        rollups.settle(7, &[], vec![(m, open(60))]);
        assert!(rollups.closed_by(7, &[(m, 60)], &[]).is_empty());
        let closed = rollups.closed_by(7, &[(m, 120)], &[]);
        assert_eq!(closed.len(), 1);
        assert_eq!(closed[0].1.start, 60);
        assert!(rollups.closed_by(7, &[(m, 120)], &[(m, 60)]).is_empty());
        assert!(rollups.closed_by(8, &[(m, 120)], &[]).is_empty());
    }

    #[test]
    fn settling_removes_what_was_written_and_keeps_what_opened() {
        let rollups = OpenRollups::default();
        let (m, h) = (Resolution::Minute, Resolution::Hour);
        rollups.settle(7, &[], vec![(m, open(60)), (h, open(0))]);
        rollups.settle(7, &[(m, 60)], vec![]);
        assert!(rollups.within(7, m, 0, i64::MAX).is_none());
        assert_eq!(rollups.within(7, h, 0, 0).map(|o| o.start), Some(0));
        assert!(rollups.within(7, h, 1, 10).is_none(), "outside the range");
        // Writing an older stretch leaves the open one alone.
        rollups.settle(7, &[(h, -3_600)], vec![]);
        assert_eq!(rollups.all().len(), 1);
    }
}
