//! What an open rollup's (dimension, value) maxima already hold, kept by
//! value number, so that folding a sample into it looks a maximum up (a
//! key built and hashed) only when the sample's count may beat it: in
//! steady state almost none does.
//!
//! Invariant: when [`Seen::get`] gives `x` for a value, the rollup it was
//! taken [`Seen::of`] holds that value's maximum, and it is `x` or better
//! (higher, or as high and earlier). It stays true as the rollup is folded
//! into, since a rollup's maxima only ever get better; what is kept is
//! forgotten when the rollup or the numbering is another, as numbers then
//! name other values or the rollup other samples. So a count that `x`
//! beats would have been left out anyway, and skipping it changes nothing.

use super::dimensions::{Numbering, DIMENSIONS};
use crate::store::{Max, SharedRollup};

/// Maxima known to be held by one open rollup, by value number.
#[derive(Debug, Default)]
pub struct Seen {
    /// The rollup and the numbering these are known for.
    of: Option<(SharedRollup, Numbering)>,
    /// Per dimension, by value number, a maximum the rollup holds for that
    /// value or a better one (`None`: not known).
    maxima: [Vec<Option<Max>>; DIMENSIONS.len()],
}

impl Seen {
    /// What is known of `rollup`'s maxima by numbers of `numbering`:
    /// nothing when either differs from the last call's. The caller folds
    /// into `rollup` itself (and only in-order samples, into the rollup in
    /// place), noting what it leaves there.
    pub fn of(&mut self, rollup: &SharedRollup, numbering: Numbering) -> &mut Self {
        let same = self
            .of
            .as_ref()
            .is_some_and(|(r, n)| r.is(rollup) && *n == numbering);
        if !same {
            self.maxima.iter_mut().for_each(Vec::clear);
            self.of = Some((rollup.clone(), numbering));
        }
        self
    }

    /// A maximum the rollup holds for value `id` of dimension `d`, or a
    /// better one, if known.
    pub fn get(&self, d: usize, id: u32) -> Option<&Max> {
        self.maxima[d].get(id as usize)?.as_ref()
    }

    /// Notes that the rollup holds `max` for value `id` of dimension `d`.
    pub fn note(&mut self, d: usize, id: u32, max: Max) {
        let known = &mut self.maxima[d];
        let i = id as usize;
        if known.len() <= i {
            known.resize(i + 1, None);
        }
        known[i] = Some(max);
    }
}

#[cfg(test)]
mod tests {
    use pgtrail_proto::model::{Snapshot, CLIENT_BACKEND};
    use pgtrail_proto::pb;

    use super::*;
    use crate::ingest::dimensions::{Dimensions, MAX_VALUES};
    use crate::ingest::rollup::{sample, Context};
    use crate::store::Rollup;

    /// A snapshot at `t` of `n` sessions per (user, client address).
    fn snap(t: i64, groups: &[(&str, &str, usize)]) -> Snapshot {
        let mut sessions = Vec::new();
        for &(user, addr, n) in groups {
            for _ in 0..n {
                sessions.push(pb::Session {
                    pid: sessions.len() as i32 + 1,
                    backend_type: CLIENT_BACKEND.into(),
                    state: Some("idle".into()),
                    user: Some(user.into()),
                    client_addr: Some(addr.into()),
                    ..Default::default()
                });
            }
        }
        Snapshot {
            sampled_at: t,
            sessions,
            ..Default::default()
        }
    }

    #[test]
    fn folding_with_what_is_seen_is_folding_without() {
        let crowd: Vec<String> = (0..=MAX_VALUES).map(|i| format!("10.{i}")).collect();
        let mut many: Vec<(&str, &str, usize)> = vec![("a", "x", 1)];
        many.extend(crowd.iter().map(|addr| ("a", addr.as_str(), 1)));
        let snaps = [
            snap(1, &[("a", "x", 3)]),
            snap(2, &[("a", "x", 2)]),
            // A new rollup: what the last one held says nothing of it.
            snap(3, &[("a", "x", 3)]),
            snap(4, &[("a", "x", 3)]),
            // Too many client addresses: numbering starts over with the
            // next sample, where number 0 is "b" and "y", no longer "a"
            // and "x".
            snap(5, &many),
            snap(6, &[("b", "y", 2)]),
            snap(7, &[("b", "x", 4), ("a", "y", 1)]),
        ];
        let mut dims = Dimensions::default();
        let mut seen = Seen::default();
        let (mut shared, mut plain) = (SharedRollup::default(), Rollup::default());
        let mut ctx = Context::default();
        for s in &snaps {
            if s.sampled_at == 3 {
                (shared, plain) = (SharedRollup::default(), Rollup::default());
            }
            let (sample, next) = sample(s, &ctx, &mut dims, None);
            sample.fold_into(&mut plain, None);
            let known = seen.of(&shared, sample.numbering());
            sample.fold_into(&mut shared.lock(), Some(known));
            // (Not `assert_eq!`: the rollup at 5 has ten thousand maxima.)
            assert!(*shared.lock() == plain, "differ at {}", s.sampled_at);
            ctx = next;
        }
        let r = shared.lock();
        let max = |key: &str| r.maxima[key];
        assert_eq!(max("user\tb"), Max { value: 4, at_us: 7 });
        assert_eq!(max("client\ty"), Max { value: 2, at_us: 6 });
        assert_eq!(max("client\tx"), Max { value: 4, at_us: 7 });
    }
}
