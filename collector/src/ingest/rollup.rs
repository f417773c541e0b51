//! Rollups: what long-range questions need, folded in as samples arrive, so
//! a question over days reads one record a minute (or an hour) instead of
//! every sample.
//!
//! [`sample_rollup`] turns one sample (with what the previous sample of its
//! instance left in [`Context`]) into a rollup of one sample; [`merge`]
//! combines rollups. Merging is commutative and associative, so a rollup is
//! the same whatever order its samples arrive in, and a question's window
//! can be assembled from hour, minute and raw-sample pieces alike.

use std::collections::HashMap;

use foldhash::{HashMap as FastMap, HashMapExt};

use pgtrail_proto::model::{Snapshot, CLIENT_BACKEND};
use pgtrail_proto::pb;
use pgtrail_proto::time::{Micros, SECOND};

use super::dimensions::{Count, Numbering, STATE};
pub use super::dimensions::{Dimensions, Moved, DIMENSIONS, UNKNOWN};
use super::seen::Seen;
use crate::store::{Max, PeakRollup, Rollup, StoredSample};

/// A gap between samples longer than this is an outage, not covered time.
pub const MAX_GAP: Micros = 10 * SECOND;

/// Upper bounds of the lifetime buckets (the last bucket is open).
pub const LIFETIME_BOUNDS: [Micros; 4] = [SECOND, 10 * SECOND, 60 * SECOND, 3600 * SECOND];

/// The application_name of the agent's own session, left out of wait
/// statistics (it is always active, sampling).
pub const AGENT_APPLICATION: &str = "pgtrail-agent";

/// What the previous sample of an instance left behind.
#[derive(Debug, Default, Clone)]
pub struct Context {
    /// When it was taken.
    pub at: Option<Micros>,
    /// Its client sessions, (pid, backend_start), sorted.
    pub sessions: Vec<(i32, Option<Micros>)>,
    /// Its sessions counter (PG 14+).
    pub sessions_total: Option<u64>,
    /// max_connections − superuser_reserved_connections in force.
    pub user_limit: Option<u32>,
}

/// The key of a (dimension, value) maximum.
pub fn maxima_key(dimension: &str, value: &str) -> String {
    let mut key = String::new();
    push_maxima_key(&mut key, dimension, value);
    key
}

fn push_maxima_key(out: &mut String, dimension: &str, value: &str) {
    out.push_str(dimension);
    out.push('\t');
    out.push_str(value);
}

/// Appends the wait event of session `s` ("type:event", or "CPU") to
/// `out`: no allocation once `out` is large enough.
pub fn write_wait_key(out: &mut String, s: &pb::Session) {
    push_wait_key(out, s.wait_event_type.as_deref(), s.wait_event.as_deref());
}

fn push_wait_key(out: &mut String, kind: Option<&str>, event: Option<&str>) {
    match (kind, event) {
        (Some(t), Some(e)) => {
            out.push_str(t);
            out.push(':');
            out.push_str(e);
        }
        (Some(t), None) => out.push_str(t),
        _ => out.push_str("CPU"),
    }
}

/// Appends `n` as 16 lowercase hex digits, as `{n:016x}` writes it
/// (which costs a formatter call per active session and sample).
fn push_hex(out: &mut String, n: u64) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for shift in (0..16).rev() {
        out.push(char::from(DIGITS[(n >> (4 * shift) & 0xf) as usize]));
    }
}

/// An active session's wait event type, wait event and query.
type ActiveIn<'a> = (Option<&'a str>, Option<&'a str>, Option<u64>);

/// What one sample adds to a rollup, its values still borrowed from the
/// snapshot: folding it in ([`Sample::fold_into`]) owns a key only when
/// the rollup has not seen it, so a minute's rollup takes a sample without
/// building a rollup of it first.
#[derive(Debug)]
pub struct Sample<'a> {
    at: Micros,
    /// Client sessions.
    total: u32,
    /// Client sessions by (dimension, value).
    counts: Vec<Count<'a>>,
    /// What the values' numbers in `counts` belong to.
    numbering: Numbering,
    covered_us: Micros,
    above_80_us: Micros,
    above_95_us: Micros,
    sessions_seen: u64,
    sessions_started: Option<u64>,
    lifetimes: [u64; LIFETIME_BOUNDS.len() + 1],
    /// Active sessions by wait event and query.
    waits: FastMap<ActiveIn<'a>, u64>,
    /// Active sessions by wait event (type, event): `waits` summed over
    /// queries, so a rollup's `waits` is looked up once per event.
    events: FastMap<(Option<&'a str>, Option<&'a str>), u64>,
    rss_total: u64,
    pss_total: Option<u64>,
    autovacuum_workers: u32,
}

/// What `snapshot` adds to a rollup (with what the previous sample of its
/// instance left in `ctx`), and the context it leaves for the next. Its
/// sessions are counted with `dims` (see [`Dimensions::count`]: `moved`
/// names the sessions moved over unchanged from the sample before), which
/// the sample borrows its values from.
pub fn sample<'a>(
    snapshot: &'a Snapshot,
    ctx: &Context,
    dims: &'a mut Dimensions,
    moved: Option<Moved<'_>>,
) -> (Sample<'a>, Context) {
    let t = snapshot.sampled_at;
    let clients = || {
        snapshot
            .sessions
            .iter()
            .filter(|s| s.backend_type == CLIENT_BACKEND)
    };
    // Count by borrowed values: a key is owned only by a rollup new to it.
    let (numbering, counts) = dims.count(t, clients(), moved);
    let mut now: Vec<(i32, Option<Micros>)> =
        clients().map(|s| (s.pid, s.backend_start_us)).collect();
    let total = now.len() as u32;
    if !now.is_sorted() {
        now.sort_unstable();
    }
    now.dedup();
    let mut sample = Sample {
        at: t,
        total,
        counts,
        numbering,
        covered_us: 0,
        above_80_us: 0,
        above_95_us: 0,
        sessions_seen: 0,
        sessions_started: None,
        lifetimes: [0; LIFETIME_BOUNDS.len() + 1],
        waits: FastMap::new(),
        events: FastMap::new(),
        rss_total: 0,
        pss_total: None,
        autovacuum_workers: 0,
    };

    // Time covered, and time near the connection limit.
    let gap = ctx.at.map(|p| t - p).filter(|g| (1..=MAX_GAP).contains(g));
    if let Some(gap) = gap {
        sample.covered_us = gap;
        if let Some(limit) = ctx.user_limit.filter(|&l| l > 0) {
            let used = f64::from(total) / f64::from(limit);
            if used > 0.80 {
                sample.above_80_us = gap;
            }
            if used > 0.95 {
                sample.above_95_us = gap;
            }
        }
    }

    // Churn: sessions that appeared and ended since the previous sample.
    if let Some(prev_at) = ctx.at {
        for change in sorted_difference(&ctx.sessions, &now) {
            match change {
                Churn::Appeared => sample.sessions_seen += 1,
                Churn::Ended(Some(start)) => {
                    let lived = prev_at - start;
                    let bucket = LIFETIME_BOUNDS
                        .iter()
                        .position(|&b| lived < b)
                        .unwrap_or(LIFETIME_BOUNDS.len());
                    sample.lifetimes[bucket] += 1;
                }
                Churn::Ended(None) => {}
            }
        }
        if let (Some(before), Some(after)) = (ctx.sessions_total, snapshot.sessions_total) {
            sample.sessions_started = Some(after.saturating_sub(before));
        }
    }

    // Wait events of active sessions (the agent's own left out).
    for s in &snapshot.sessions {
        if s.state.as_deref() != Some("active")
            || s.application_name.as_deref() == Some(AGENT_APPLICATION)
        {
            continue;
        }
        let event = (s.wait_event_type.as_deref(), s.wait_event.as_deref());
        *sample
            .waits
            .entry((event.0, event.1, s.query_id))
            .or_insert(0) += 1;
    }
    for (&(kind, event, _), &n) in &sample.waits {
        *sample.events.entry((kind, event)).or_insert(0) += n;
    }

    // Memory and autovacuum.
    for p in &snapshot.processes {
        sample.rss_total += p.rss_bytes.unwrap_or(0);
        if let Some(pss) = p.pss_bytes {
            *sample.pss_total.get_or_insert(0) += pss;
        }
        if p.kind == pb::ProcessKind::AutovacuumWorker as i32 {
            sample.autovacuum_workers += 1;
        }
    }

    let next = Context {
        at: Some(t),
        sessions: now,
        sessions_total: snapshot.sessions_total,
        user_limit: ctx.user_limit,
    };
    (sample, next)
}

/// A session that appeared, or ended (with its backend_start).
enum Churn {
    Appeared,
    Ended(Option<Micros>),
}

/// The sessions of `after` not in `before` and those of `before` not in
/// `after`, both sorted.
fn sorted_difference<'a>(
    before: &'a [(i32, Option<Micros>)],
    after: &'a [(i32, Option<Micros>)],
) -> impl Iterator<Item = Churn> + 'a {
    let (mut i, mut j) = (0, 0);
    std::iter::from_fn(move || loop {
        match (before.get(i), after.get(j)) {
            (Some(b), Some(a)) if b == a => {
                i += 1;
                j += 1;
            }
            (Some(b), Some(a)) if b < a => {
                i += 1;
                return Some(Churn::Ended(b.1));
            }
            (Some(b), None) => {
                i += 1;
                return Some(Churn::Ended(b.1));
            }
            (_, Some(_)) => {
                j += 1;
                return Some(Churn::Appeared);
            }
            (None, None) => return None,
        }
    })
}

impl Sample<'_> {
    /// What the numbers of this sample's values belong to.
    pub fn numbering(&self) -> Numbering {
        self.numbering
    }

    /// Folds this sample into `r`, as [`merge`] would fold its rollup.
    /// `seen`, when given, is what is known of `r`'s maxima ([`Seen::of`]
    /// `r` and this sample's numbering): a count it says cannot beat the
    /// maximum `r` holds is not looked up, and what is looked up is noted
    /// there.
    pub fn fold_into(&self, r: &mut Rollup, mut seen: Option<&mut Seen>) {
        let t = self.at;
        if r.samples == 0
            || self.total > r.max_total
            || (self.total == r.max_total && t < r.max_at_us)
        {
            r.max_total = self.total;
            r.max_at_us = t;
            r.by_state_at_max.clear();
            for c in &self.counts {
                if c.dimension == STATE {
                    r.by_state_at_max.insert(c.value.to_string(), c.sessions);
                }
            }
        }
        r.samples += 1;
        let mut key = String::with_capacity(64);
        for c in &self.counts {
            let max = Max {
                value: u64::from(c.sessions),
                at_us: t,
            };
            let known = seen.as_deref().and_then(|s| s.get(c.dimension, c.id));
            if known.is_some_and(|x| better(x, &max)) {
                // What `r` holds is as good as `x`, so better than `max`.
                continue;
            }
            key.clear();
            push_maxima_key(&mut key, DIMENSIONS[c.dimension], c.value);
            let held = match r.maxima.get_mut(key.as_str()) {
                Some(x) => {
                    if !better(x, &max) {
                        *x = max;
                    }
                    *x
                }
                None => {
                    r.maxima.insert(key.clone(), max);
                    max
                }
            };
            if let Some(s) = seen.as_deref_mut() {
                s.note(c.dimension, c.id, held);
            }
        }
        r.covered_us += self.covered_us;
        r.above_80_us += self.above_80_us;
        r.above_95_us += self.above_95_us;
        r.sessions_seen += self.sessions_seen;
        r.sessions_started = add_started(r.sessions_started, self.sessions_started);
        let started = self.sessions_started.unwrap_or(self.sessions_seen);
        r.max_started_per_minute = r.max_started_per_minute.max(started);
        add_lifetimes(&mut r.lifetimes, &self.lifetimes);
        for (&(kind, event, query), &n) in &self.waits {
            let Some(q) = query else { continue };
            key.clear();
            push_wait_key(&mut key, kind, event);
            key.push('\t');
            push_hex(&mut key, q);
            add_count(&mut r.wait_queries, &key, n);
        }
        for (&(kind, event), &n) in &self.events {
            key.clear();
            push_wait_key(&mut key, kind, event);
            add_count(&mut r.waits, &key, n);
        }
        let at = |value| Some(Max { value, at_us: t });
        merge_max(&mut r.rss_total, &at(self.rss_total));
        merge_max(&mut r.pss_total, &self.pss_total.and_then(at));
        r.autovacuum_workers = r.autovacuum_workers.max(self.autovacuum_workers);
    }

    /// This sample's rollup on its own.
    pub fn rollup(&self) -> Rollup {
        let mut r = Rollup::default();
        self.fold_into(&mut r, None);
        r
    }
}

/// The rollup of one sample, and the context it leaves for the next.
pub fn sample_rollup(snapshot: &Snapshot, ctx: &Context) -> (Rollup, Context) {
    let mut dims = Dimensions::default();
    let (sample, next) = sample(snapshot, ctx, &mut dims, None);
    (sample.rollup(), next)
}

/// Sessions started in a rollup: the server's count when it has one, else
/// those seen.
pub fn started(r: &Rollup) -> u64 {
    r.sessions_started.unwrap_or(r.sessions_seen)
}

/// Sessions started in two stretches: the server's counts add up; where
/// one has none, the other's stands.
fn add_started(a: Option<u64>, b: Option<u64>) -> Option<u64> {
    match (a, b) {
        (Some(x), Some(y)) => Some(x + y),
        (x, y) => x.or(y),
    }
}

/// Adds lifetime bucket counts `b` to `a`.
fn add_lifetimes(a: &mut Vec<u64>, b: &[u64]) {
    if a.len() < b.len() {
        a.resize(b.len(), 0);
    }
    for (x, n) in a.iter_mut().zip(b) {
        *x += n;
    }
}

fn merge_max(a: &mut Option<Max>, b: &Option<Max>) {
    if let Some(b) = b {
        match a {
            Some(x) if better(x, b) => {}
            _ => *a = Some(*b),
        }
    }
}

/// Whether `a` should stay over `b`: higher, or as high and earlier.
fn better(a: &Max, b: &Max) -> bool {
    a.value > b.value || (a.value == b.value && a.at_us <= b.at_us)
}

/// Folds `b` into `a`. Counters add up; maxima keep the highest (earliest
/// on a tie). `max_started_per_minute` keeps the highest of the two: fold a
/// sample into a minute with [`fold_into_minute`] to count it within the
/// minute.
pub fn merge(a: &mut Rollup, b: &Rollup) {
    if b.samples == 0 {
        return;
    }
    fold_peak(
        a.samples,
        (&mut a.max_total, &mut a.max_at_us, &mut a.by_state_at_max),
        (b.max_total, b.max_at_us, &b.by_state_at_max),
    );
    a.samples += b.samples;
    for (k, m) in &b.maxima {
        match a.maxima.get_mut(k) {
            Some(x) if better(x, m) => {}
            Some(x) => *x = *m,
            None => {
                a.maxima.insert(k.clone(), *m);
            }
        }
    }
    a.covered_us += b.covered_us;
    a.above_80_us += b.above_80_us;
    a.above_95_us += b.above_95_us;
    a.sessions_seen += b.sessions_seen;
    a.sessions_started = add_started(a.sessions_started, b.sessions_started);
    a.max_started_per_minute = a.max_started_per_minute.max(b.max_started_per_minute);
    add_lifetimes(&mut a.lifetimes, &b.lifetimes);
    add_counts(&mut a.waits, &b.waits);
    add_counts(&mut a.wait_queries, &b.wait_queries);
    merge_max(&mut a.rss_total, &b.rss_total);
    merge_max(&mut a.pss_total, &b.pss_total);
    a.autovacuum_workers = a.autovacuum_workers.max(b.autovacuum_workers);
}

/// Folds `b` into `a` as [`merge`] does, for the fields `peaks` reads.
pub fn merge_peak(a: &mut PeakRollup, b: &PeakRollup) {
    if b.samples == 0 {
        return;
    }
    fold_peak(
        a.samples,
        (&mut a.max_total, &mut a.max_at_us, &mut a.by_state_at_max),
        (b.max_total, b.max_at_us, &b.by_state_at_max),
    );
    a.samples += b.samples;
}

/// The peak (count, moment, states) of a stretch of `a_samples` samples
/// gives way to `b`'s when it is empty, or `b` is higher, or as high and
/// earlier.
fn fold_peak(
    a_samples: u32,
    a: (&mut u32, &mut i64, &mut HashMap<String, u32>),
    b: (u32, i64, &HashMap<String, u32>),
) {
    if a_samples == 0 || b.0 > *a.0 || (b.0 == *a.0 && b.1 < *a.1) {
        *a.0 = b.0;
        *a.1 = b.1;
        *a.2 = b.2.clone();
    }
}

/// A stored sample (with all its rows) taken at `t` as the snapshot
/// [`sample`] reads.
pub fn stored_snapshot(t: Micros, sample: StoredSample) -> Snapshot {
    Snapshot {
        sampled_at: t,
        sessions: sample.sessions,
        processes: sample.processes,
        sessions_total: sample.sessions_total,
        ..Default::default()
    }
}

/// [`sample_rollup`] of a stored sample (with all its rows) taken at `t`.
pub fn stored_sample_rollup(t: Micros, sample: StoredSample, ctx: &Context) -> (Rollup, Context) {
    sample_rollup(&stored_snapshot(t, sample), ctx)
}

/// Folds a sample into its minute's rollup: as [`Sample::fold_into`], and
/// the minute's sessions-started count is its own total.
pub fn fold_into_minute(minute: &mut Rollup, sample: &Sample<'_>, seen: Option<&mut Seen>) {
    sample.fold_into(minute, seen);
    minute.max_started_per_minute = started(minute);
}

fn add_counts(a: &mut HashMap<String, u64>, b: &HashMap<String, u64>) {
    for (k, n) in b {
        add_count(a, k, *n);
    }
}

/// Adds `n` to `key`'s count, owning the key only when new to `counts`.
fn add_count(counts: &mut HashMap<String, u64>, key: &str, n: u64) {
    match counts.get_mut(key) {
        Some(m) => *m += n,
        None => {
            counts.insert(key.to_string(), n);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(pid: i32, state: &str, app: &str) -> pb::Session {
        pb::Session {
            pid,
            backend_type: CLIENT_BACKEND.into(),
            backend_start_us: Some(1_000),
            state: Some(state.into()),
            application_name: Some(app.into()),
            ..Default::default()
        }
    }

    fn snap(t: Micros, sessions: Vec<pb::Session>) -> Snapshot {
        Snapshot {
            instance: "i".into(),
            sampled_at: t,
            sessions,
            ..Default::default()
        }
    }

    #[test]
    fn hex_digits_are_those_format_writes() {
        for n in [0, 9, 0xabc, u64::MAX, 0x0123_4567_89ab_cdef] {
            let mut s = String::new();
            push_hex(&mut s, n);
            assert_eq!(s, format!("{n:016x}"));
        }
    }

    #[test]
    fn counts_one_sample() {
        let s = snap(
            5 * SECOND,
            vec![
                session(1, "idle", "web"),
                session(2, "active", "web"),
                session(3, "idle", "batch"),
            ],
        );
        let (r, ctx) = sample_rollup(&s, &Context::default());
        assert_eq!((r.max_total, r.max_at_us), (3, 5 * SECOND));
        assert_eq!(r.by_state_at_max["idle"], 2);
        assert_eq!(r.maxima[&maxima_key("application", "web")].value, 2);
        assert_eq!(r.waits["CPU"], 1);
        assert_eq!(r.covered_us, 0, "a first sample covers nothing yet");
        assert_eq!(ctx.sessions.len(), 3);
    }

    #[test]
    fn tracks_churn_and_time_near_the_limit() {
        let ctx = Context {
            user_limit: Some(2),
            ..Default::default()
        };
        let (_, ctx) = sample_rollup(&snap(SECOND, vec![session(1, "idle", "a")]), &ctx);
        let mut second = session(2, "idle", "a");
        second.backend_start_us = Some(SECOND + 500_000);
        let mut third = session(3, "idle", "a");
        third.backend_start_us = Some(SECOND + 600_000);
        let (r, _) = sample_rollup(&snap(2 * SECOND, vec![second, third]), &ctx);
        assert_eq!(r.covered_us, SECOND);
        assert_eq!(r.above_80_us, SECOND, "2 of 2 is above 80 %");
        assert_eq!(r.above_95_us, SECOND);
        assert_eq!(r.sessions_seen, 2);
        // Session 1 started at 1 ms and was last seen at 1 s: < 1 s bucket.
        assert_eq!(r.lifetimes, vec![1, 0, 0, 0, 0]);
        assert_eq!(r.max_started_per_minute, 2);
    }

    #[test]
    fn merging_is_order_independent() {
        let a = sample_rollup(
            &snap(10, vec![session(1, "idle", "x")]),
            &Context::default(),
        )
        .0;
        let b = sample_rollup(
            &snap(20, vec![session(1, "idle", "x"), session(2, "active", "y")]),
            &Context::default(),
        )
        .0;
        let c = sample_rollup(
            &snap(30, vec![session(2, "active", "y")]),
            &Context::default(),
        )
        .0;
        let mut ab = Rollup::default();
        for r in [&a, &b, &c] {
            merge(&mut ab, r);
        }
        let mut ba = Rollup::default();
        for r in [&c, &b, &a] {
            merge(&mut ba, r);
        }
        assert_eq!(ab, ba);
        assert_eq!((ab.max_total, ab.max_at_us, ab.samples), (2, 20, 3));
        assert_eq!(
            ab.maxima[&maxima_key("state", "active")],
            Max {
                value: 1,
                at_us: 20
            }
        );
        assert_eq!(ab.waits["CPU"], 2);
    }

    #[test]
    fn folding_samples_equals_merging_their_rollups() {
        let mut waiting = session(4, "active", "y");
        waiting.wait_event_type = Some("Lock".into());
        waiting.wait_event = Some("tuple".into());
        waiting.query_id = Some(9);
        let mut gone = session(1, "idle", "x");
        gone.backend_start_us = Some(2 * SECOND);
        let snaps = [
            snap(3 * SECOND, vec![gone, session(2, "active", "y")]),
            snap(4 * SECOND, vec![session(2, "idle", "y"), waiting.clone()]),
            snap(5 * SECOND, vec![session(3, "active", "z"), waiting]),
        ];
        let (mut folded, mut merged) = (Rollup::default(), Rollup::default());
        let mut ctx = Context::default();
        let mut dims = Dimensions::default();
        for s in &snaps {
            let (sample, next) = sample(s, &ctx, &mut dims, None);
            sample.fold_into(&mut folded, None);
            merge(&mut merged, &sample.rollup());
            ctx = next;
        }
        assert_eq!(folded, merged);
        assert_eq!(folded.samples, 3);
        assert_eq!(folded.sessions_seen, 2, "pids 4 and 3 appeared");
        assert_eq!(
            folded.lifetimes,
            vec![0, 2, 0, 0, 0],
            "pids 1 and 2 lived 1 to 10 s"
        );
        assert_eq!(folded.waits["Lock:tuple"], 2);
        assert_eq!(folded.wait_queries[&format!("Lock:tuple\t{:016x}", 9)], 2);
        assert_eq!(folded.maxima[&maxima_key("application", "y")].value, 2);
    }

    #[test]
    fn the_peak_view_merges_and_decodes_as_the_whole_rollup() {
        use prost::Message;
        let rollups: Vec<Rollup> = [
            (10, vec![session(1, "idle", "x")]),
            (20, vec![session(1, "idle", "x"), session(2, "active", "y")]),
            (30, vec![session(3, "active", "y"), session(4, "idle", "y")]),
            (40, vec![]),
        ]
        .into_iter()
        .map(|(t, rows)| sample_rollup(&snap(t, rows), &Context::default()).0)
        .collect();
        for order in [[0, 1, 2, 3], [3, 2, 1, 0], [2, 0, 3, 1]] {
            let mut whole = Rollup::default();
            let mut peak = PeakRollup::default();
            for i in order {
                merge(&mut whole, &rollups[i]);
                merge_peak(&mut peak, &PeakRollup::from(rollups[i].clone()));
            }
            assert_eq!(
                (peak.max_total, peak.max_at_us),
                (2, 20),
                "earliest of the ties"
            );
            let decoded = PeakRollup::decode(whole.encode_to_vec().as_slice()).unwrap();
            assert_eq!(decoded, PeakRollup::from(whole.clone()));
            assert_eq!(peak, decoded);
        }
    }

    #[test]
    fn counts_values_that_share_a_key_together() {
        let mut a = session(1, "active", "web");
        a.user = None;
        a.wait_event = Some("x".into());
        a.query_id = Some(7);
        let mut b = session(2, "active", "web");
        b.user = Some(UNKNOWN.into());
        b.query_id = Some(7);
        let mut c = session(3, "active", "");
        c.application_name = None;
        c.wait_event_type = Some("Lock".into());
        c.wait_event = Some("tuple".into());
        let mut d = session(4, "active", "batch");
        d.wait_event_type = Some("Lock:tuple".into());
        let (r, _) = sample_rollup(&snap(10, vec![a, b, c, d]), &Context::default());
        assert_eq!(r.maxima[&maxima_key("user", UNKNOWN)].value, 4);
        assert_eq!(r.maxima[&maxima_key("application", "")].value, 1);
        assert_eq!(r.maxima[&maxima_key("state", "active")].value, 4);
        assert_eq!(r.by_state_at_max["active"], 4);
        assert_eq!(r.waits["CPU"], 2, "no wait event type is CPU");
        assert_eq!(r.waits["Lock:tuple"], 2);
        assert_eq!(r.wait_queries[&format!("CPU\t{:016x}", 7)], 2);
        assert_eq!(r.wait_queries.len(), 1);
    }
}
