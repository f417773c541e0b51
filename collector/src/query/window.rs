//! Assembling a window from the coarsest pieces that fit: hour rollups for
//! whole hours, minute rollups for whole minutes, and raw samples (each
//! folded into a one-sample rollup) for the partial minutes at the edges.
//! A window longer than [`EXACT_UP_TO`] is widened to whole minutes, so it
//! reads no raw samples at all: a week costs 168 hour records and up to
//! 118 minute records per instance, however many samples it holds.
//!
//! A window is assembled as whole [`Rollup`]s, or as a [`Piece`] that
//! decodes only the fields a question reads ([`PeakRollup`] for `peaks`).

use pgtrail_proto::time::Micros;

use crate::ingest::rollup::{merge, merge_peak, stored_sample_rollup, Context};
use crate::store::{InstanceId, PeakRollup, Resolution, Rollup, Store, StoreError};

/// Windows up to this long are read exactly, raw samples at the edges
/// included; longer ones are widened to whole minutes.
pub const EXACT_UP_TO: Micros = 3_600_000_000;

/// What a window is assembled from: a rollup, or the part of one a
/// question reads.
pub trait Piece: Default + Sized {
    /// The stored rollups of `res` starting in `[from, to]`.
    fn read(
        store: &dyn Store,
        id: InstanceId,
        res: Resolution,
        from: Micros,
        to: Micros,
    ) -> Result<Vec<(Micros, Self)>, StoreError>;
    /// The piece of one raw sample, from its rollup.
    fn of_sample(rollup: Rollup) -> Self;
    /// Folds `other` in (order-independent, as [`merge`]).
    fn merge(&mut self, other: &Self);
}

impl Piece for Rollup {
    fn read(
        store: &dyn Store,
        id: InstanceId,
        res: Resolution,
        from: Micros,
        to: Micros,
    ) -> Result<Vec<(Micros, Self)>, StoreError> {
        store.rollups(id, res, from, to)
    }

    fn of_sample(rollup: Rollup) -> Self {
        rollup
    }

    fn merge(&mut self, other: &Self) {
        merge(self, other);
    }
}

impl Piece for PeakRollup {
    fn read(
        store: &dyn Store,
        id: InstanceId,
        res: Resolution,
        from: Micros,
        to: Micros,
    ) -> Result<Vec<(Micros, Self)>, StoreError> {
        store.peak_rollups(id, res, from, to)
    }

    fn of_sample(rollup: Rollup) -> Self {
        rollup.into()
    }

    fn merge(&mut self, other: &Self) {
        merge_peak(self, other);
    }
}

/// The pieces of `[from, to]` for one instance, each with its start,
/// using rollups no coarser than `coarsest`.
pub fn pieces<P: Piece>(
    store: &dyn Store,
    id: InstanceId,
    from: Micros,
    to: Micros,
    coarsest: Resolution,
) -> Result<Vec<(Micros, P)>, StoreError> {
    let mut out = Vec::new();
    let (from, to) = if to - from > EXACT_UP_TO {
        let minute = Resolution::Minute;
        (
            minute.start_of(from),
            minute.start_of(to) + minute.span() - 1,
        )
    } else {
        (from, to)
    };
    let resolutions: Vec<Resolution> = Resolution::ALL
        .into_iter()
        .rev()
        .filter(|r| r.span() <= coarsest.span())
        .collect();
    cover(store, id, from, to, &resolutions, &mut out)?;
    out.sort_by_key(|(t, _)| *t);
    Ok(out)
}

/// The window's pieces merged into one.
pub fn merged<P: Piece>(
    store: &dyn Store,
    id: InstanceId,
    from: Micros,
    to: Micros,
) -> Result<P, StoreError> {
    let mut all = P::default();
    for (_, piece) in pieces::<P>(store, id, from, to, Resolution::Hour)? {
        all.merge(&piece);
    }
    Ok(all)
}

/// The window's pieces merged per bucket of `bucket` µs (a multiple of a
/// minute), oldest first.
pub fn bucketed<P: Piece>(
    store: &dyn Store,
    id: InstanceId,
    from: Micros,
    to: Micros,
    bucket: Micros,
) -> Result<Vec<(Micros, P)>, StoreError> {
    let coarsest = if bucket % Resolution::Hour.span() == 0 {
        Resolution::Hour
    } else {
        Resolution::Minute
    };
    let mut out: Vec<(Micros, P)> = Vec::new();
    for (t, piece) in pieces::<P>(store, id, from, to, coarsest)? {
        let start = t - t.rem_euclid(bucket);
        match out.last_mut() {
            Some((s, r)) if *s == start => r.merge(&piece),
            _ => {
                let mut r = P::default();
                r.merge(&piece);
                out.push((start, r));
            }
        }
    }
    Ok(out)
}

fn cover<P: Piece>(
    store: &dyn Store,
    id: InstanceId,
    from: Micros,
    to: Micros,
    resolutions: &[Resolution],
    out: &mut Vec<(Micros, P)>,
) -> Result<(), StoreError> {
    if from > to {
        return Ok(());
    }
    let Some((&res, finer)) = resolutions.split_first() else {
        return raw(store, id, from, to, out);
    };
    let span = res.span();
    let first_whole = res.start_of(from) + if res.start_of(from) == from { 0 } else { span };
    let end_whole = res.start_of(to.saturating_add(1)); // exclusive
    if first_whole >= end_whole {
        return cover(store, id, from, to, finer, out);
    }
    out.extend(P::read(store, id, res, first_whole, end_whole - span)?);
    cover(store, id, from, first_whole - 1, finer, out)?;
    cover(store, id, end_whole, to, finer, out)
}

fn raw<P: Piece>(
    store: &dyn Store,
    id: InstanceId,
    from: Micros,
    to: Micros,
    out: &mut Vec<(Micros, P)>,
) -> Result<(), StoreError> {
    let facts = store.facts_at(id, to)?;
    let mut context = Context {
        user_limit: facts.as_ref().and_then(crate::ingest::user_limit),
        ..Default::default()
    };
    for (t, sample) in store.samples(id, from, to)? {
        let (rollup, next) = stored_sample_rollup(t, sample, &context);
        context = next;
        out.push((t, P::of_sample(rollup)));
    }
    Ok(())
}
