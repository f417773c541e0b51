//! Assembling a window from the coarsest pieces that fit: hour rollups for
//! whole hours, minute rollups for whole minutes, and raw samples (each
//! folded into a one-sample rollup) for the partial minutes at the edges.
//! A window longer than [`EXACT_UP_TO`] is widened to whole minutes, so it
//! reads no raw samples at all: a week costs 168 hour records and up to
//! 118 minute records per instance, however many samples it holds.

use pgtrail_proto::time::Micros;

use crate::ingest::rollup::{merge, sample_rollup, Context};
use crate::store::{InstanceId, Resolution, Rollup, Store, StoreError};

/// Windows up to this long are read exactly, raw samples at the edges
/// included; longer ones are widened to whole minutes.
pub const EXACT_UP_TO: Micros = 3_600_000_000;

/// The pieces of `[from, to]` for one instance, each with its start,
/// using rollups no coarser than `coarsest`.
pub fn pieces(
    store: &dyn Store,
    id: InstanceId,
    from: Micros,
    to: Micros,
    coarsest: Resolution,
) -> Result<Vec<(Micros, Rollup)>, StoreError> {
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

/// The window's pieces merged into one rollup.
pub fn merged(
    store: &dyn Store,
    id: InstanceId,
    from: Micros,
    to: Micros,
) -> Result<Rollup, StoreError> {
    let mut all = Rollup::default();
    for (_, piece) in pieces(store, id, from, to, Resolution::Hour)? {
        merge(&mut all, &piece);
    }
    Ok(all)
}

/// The window's pieces merged per bucket of `bucket` µs (a multiple of a
/// minute), oldest first.
pub fn bucketed(
    store: &dyn Store,
    id: InstanceId,
    from: Micros,
    to: Micros,
    bucket: Micros,
) -> Result<Vec<(Micros, Rollup)>, StoreError> {
    let coarsest = if bucket % Resolution::Hour.span() == 0 {
        Resolution::Hour
    } else {
        Resolution::Minute
    };
    let mut out: Vec<(Micros, Rollup)> = Vec::new();
    for (t, piece) in pieces(store, id, from, to, coarsest)? {
        let start = t - t.rem_euclid(bucket);
        match out.last_mut() {
            Some((s, r)) if *s == start => merge(r, &piece),
            _ => {
                let mut r = Rollup::default();
                merge(&mut r, &piece);
                out.push((start, r));
            }
        }
    }
    Ok(out)
}

fn cover(
    store: &dyn Store,
    id: InstanceId,
    from: Micros,
    to: Micros,
    resolutions: &[Resolution],
    out: &mut Vec<(Micros, Rollup)>,
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
    out.extend(store.rollups(id, res, first_whole, end_whole - span)?);
    cover(store, id, from, first_whole - 1, finer, out)?;
    cover(store, id, end_whole, to, finer, out)
}

fn raw(
    store: &dyn Store,
    id: InstanceId,
    from: Micros,
    to: Micros,
    out: &mut Vec<(Micros, Rollup)>,
) -> Result<(), StoreError> {
    let facts = store.facts_at(id, to)?;
    let mut context = Context {
        user_limit: facts.as_ref().and_then(crate::ingest::user_limit),
        ..Default::default()
    };
    for (t, sample) in store.samples(id, from, to)? {
        let snapshot = pgtrail_proto::model::Snapshot {
            sampled_at: t,
            sessions: sample.sessions,
            processes: sample.processes,
            sessions_total: sample.sessions_total,
            ..Default::default()
        };
        let (rollup, next) = sample_rollup(&snapshot, &context);
        context = next;
        out.push((t, rollup));
    }
    Ok(())
}
