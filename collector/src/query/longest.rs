//! Keeping the longest few of a stream of episodes without holding the
//! rest: a bounded min-heap on (duration, earlier start). It merges the
//! longest episodes of each instance into the fleet's longest.

use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;

use pgtrail_proto::time::Micros;

/// The `limit` longest items offered so far (all of them when `limit` is
/// 0), and how many were offered.
#[derive(Debug)]
pub struct Longest<T> {
    limit: usize,
    kept: BinaryHeap<Reverse<Ranked<T>>>,
    offered: u64,
}

/// An item with what ranks it: longer first, then earlier start.
#[derive(Debug)]
struct Ranked<T> {
    duration: Micros,
    started: Micros,
    item: T,
}

impl<T> Ranked<T> {
    fn rank(&self) -> (Micros, Reverse<Micros>) {
        (self.duration, Reverse(self.started))
    }
}

impl<T> PartialEq for Ranked<T> {
    fn eq(&self, other: &Self) -> bool {
        self.rank() == other.rank()
    }
}

impl<T> Eq for Ranked<T> {}

impl<T> PartialOrd for Ranked<T> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl<T> Ord for Ranked<T> {
    fn cmp(&self, other: &Self) -> Ordering {
        self.rank().cmp(&other.rank())
    }
}

impl<T> Longest<T> {
    /// Keeps at most `limit` items; 0 keeps every one.
    pub fn new(limit: usize) -> Self {
        Self {
            limit,
            kept: BinaryHeap::new(),
            offered: 0,
        }
    }

    /// Whether an item of this duration and start would be kept now: a
    /// caller can skip building items that would not.
    pub fn wants(&self, duration: Micros, started: Micros) -> bool {
        if self.limit == 0 || self.kept.len() < self.limit {
            return true;
        }
        let least = &self.kept.peek().expect("full, so not empty").0;
        (duration, Reverse(started)) > least.rank()
    }

    /// Counts an item that matched and keeps it if it ranks among the
    /// `limit` longest. `item` is only called when it does.
    pub fn offer(&mut self, duration: Micros, started: Micros, item: impl FnOnce() -> T) {
        self.offered += 1;
        if !self.wants(duration, started) {
            return;
        }
        self.kept.push(Reverse(Ranked {
            duration,
            started,
            item: item(),
        }));
        if self.limit != 0 && self.kept.len() > self.limit {
            self.kept.pop();
        }
    }

    /// How many items were offered.
    pub fn offered(&self) -> u64 {
        self.offered
    }

    /// The kept items, longest first.
    pub fn into_longest_first(self) -> Vec<T> {
        let mut ranked: Vec<Ranked<T>> = self.kept.into_iter().map(|r| r.0).collect();
        ranked.sort_by(|a, b| b.cmp(a));
        ranked.into_iter().map(|r| r.item).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_longest_and_earliest_on_ties() {
        let mut l = Longest::new(3);
        for (d, s, name) in [
            (5, 0, "a"),
            (9, 1, "b"),
            (1, 2, "c"),
            (9, 0, "d"),
            (5, 3, "e"),
            (7, 4, "f"),
        ] {
            l.offer(d, s, || name);
        }
        assert_eq!(l.offered(), 6);
        assert!(!l.wants(7, 5), "a later 7 does not beat the kept 7");
        assert!(l.wants(8, 9));
        assert_eq!(l.into_longest_first(), vec!["d", "b", "f"]);
    }

    #[test]
    fn no_limit_keeps_everything() {
        let mut l = Longest::new(0);
        for i in 0..100 {
            l.offer(i % 7, i, || i);
        }
        let all = l.into_longest_first();
        assert_eq!(all.len(), 100);
        assert_eq!(all[0], 6, "longest first, earliest start among equals");
    }
}
