//! Choosing episodes on a real sled store: with a limit the longest are
//! returned (closed and open, across instances), ordered by start, saying
//! whether more matched; the window and the minimum duration still apply.

use pgtrail_collector::Collector;
use pgtrail_proto::model::{Snapshot, IDLE_IN_TRANSACTION};
use pgtrail_proto::pb;
use pgtrail_proto::time::{Micros, SECOND};

/// A fixed start, on a whole hour.
const T: Micros = 1_790_000_000 * SECOND - (1_790_000_000 * SECOND) % (3_600 * SECOND);
/// The last sample of every instance.
const LAST: Micros = T + 60 * SECOND;

/// A session idle in transaction from `start` for `len` seconds (to the
/// end of the recording when `len` is 0), idle afterwards.
struct Spell {
    pid: i32,
    start: i64,
    len: i64,
}

/// Records one instance of `host` sampled every second from `T` to `LAST`.
async fn record(collector: &Collector, host: &str, spells: &[Spell]) {
    for (seq, s) in (0..=60).enumerate() {
        let t = T + s * SECOND;
        let mut snapshot = Snapshot {
            instance: "5432".into(),
            seq: seq as u64 + 1,
            sampled_at: t,
            ..Default::default()
        };
        for spell in spells {
            let start = T + spell.start * SECOND;
            let end = (spell.len > 0).then(|| start + spell.len * SECOND);
            let (state, since) = match end {
                _ if t < start => ("idle", T - SECOND),
                Some(end) if t >= end => ("idle", end),
                _ => (IDLE_IN_TRANSACTION, start),
            };
            snapshot.sessions.push(pb::Session {
                pid: spell.pid,
                backend_type: "client backend".into(),
                backend_start_us: Some(T - 60 * SECOND),
                state: Some(state.into()),
                state_change_us: Some(since),
                // The statement that ends a spell starts as it ends.
                query_start_us: Some(if state == "idle" {
                    since
                } else {
                    since - SECOND
                }),
                ..Default::default()
            });
        }
        collector.ingestor().ingest(host, &snapshot).await.unwrap();
    }
}

fn leaks(
    collector: &Collector,
    from: Micros,
    to: Micros,
    min: Micros,
    limit: u32,
) -> (Vec<i32>, bool) {
    let answer = collector
        .history()
        .episodes(
            &pb::Scope::default(),
            &pb::Window {
                from_us: from,
                to_us: to,
            },
            pb::EpisodeKind::IdleInTransaction,
            min,
            limit,
        )
        .unwrap();
    let pids = answer.episodes.iter().map(|e| e.pid).collect();
    (pids, answer.more)
}

#[tokio::test]
async fn a_limit_keeps_the_longest_episodes_of_the_fleet() {
    let dir = tempfile::tempdir().unwrap();
    let collector = Collector::open(dir.path()).unwrap();
    #[rustfmt::skip]
    record(&collector, "db-1", &[
        Spell { pid: 101, start: 2, len: 3 },
        Spell { pid: 102, start: 10, len: 8 },
        Spell { pid: 103, start: 25, len: 5 },
    ])
    .await;
    #[rustfmt::skip]
    record(&collector, "db-2", &[
        Spell { pid: 201, start: 5, len: 6 },
        Spell { pid: 202, start: 40, len: 0 }, // still open: 20 s so far
    ])
    .await;

    assert_eq!(
        leaks(&collector, T, LAST, 0, 0),
        (vec![101, 201, 102, 103, 202], false),
        "no limit: every episode, by start"
    );
    assert_eq!(
        leaks(&collector, T, LAST, 0, 5),
        (vec![101, 201, 102, 103, 202], false),
        "a limit as large as the answer cuts nothing"
    );
    assert_eq!(
        leaks(&collector, T, LAST, 0, 2),
        (vec![102, 202], true),
        "the two longest (the open one included), by start, and more matched"
    );
    assert_eq!(
        leaks(&collector, T, LAST, 4 * SECOND, 3),
        (vec![201, 102, 202], true),
        "the minimum applies before the limit"
    );
    assert_eq!(
        leaks(&collector, T, T + 20 * SECOND, 0, 1),
        (vec![102], true),
        "only episodes overlapping the window compete"
    );
    let durations: Vec<Micros> = collector
        .history()
        .episodes(
            &pb::Scope::default(),
            &pb::Window {
                from_us: T,
                to_us: LAST,
            },
            pb::EpisodeKind::IdleInTransaction,
            0,
            2,
        )
        .unwrap()
        .episodes
        .iter()
        .map(|e| e.ended_us.unwrap_or(e.last_seen_us) - e.started_us)
        .collect();
    assert_eq!(durations, vec![8 * SECOND, 20 * SECOND]);
}
