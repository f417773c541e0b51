//! Choosing episodes on a real sled store: with a limit the longest are
//! returned (closed and open, across instances), ordered by start, saying
//! whether more matched; the window and the minimum duration still apply.

use pgtrail_collector::store::Resolution;
use pgtrail_collector::Collector;
use pgtrail_proto::model::{Snapshot, IDLE_IN_TRANSACTION};
use pgtrail_proto::pb;
use pgtrail_proto::time::{Micros, SECOND};

/// A fixed start, on a whole hour.
const T: Micros = 1_790_000_000 * SECOND - (1_790_000_000 * SECOND) % (3_600 * SECOND);
/// The last sample of the first test's instances.
const LAST: Micros = T + 60 * SECOND;

/// A session idle in transaction from `start` ms after `T` for `len` ms
/// (to the end of the recording when `len` is 0), idle before and after.
struct Spell {
    pid: i32,
    start: i64,
    len: i64,
}

/// Records one instance of `host` sampled every second from `from` to `to`
/// seconds after `T`.
async fn record(collector: &Collector, host: &str, from: i64, to: i64, spells: &[Spell]) {
    const MS: Micros = 1_000;
    for (seq, s) in (from..=to).enumerate() {
        let t = T + s * SECOND;
        let mut snapshot = Snapshot {
            instance: "5432".into(),
            seq: seq as u64 + 1,
            sampled_at: t,
            ..Default::default()
        };
        for spell in spells {
            let start = T + spell.start * MS;
            let end = (spell.len > 0).then(|| start + spell.len * MS);
            let (state, since) = match end {
                _ if t < start => ("idle", T + (from - 1) * SECOND),
                Some(end) if t >= end => ("idle", end),
                _ => (IDLE_IN_TRANSACTION, start),
            };
            snapshot.sessions.push(pb::Session {
                pid: spell.pid,
                backend_type: "client backend".into(),
                backend_start_us: Some(T - 3_600 * SECOND),
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
    record(&collector, "db-1", 0, 60, &[
        Spell { pid: 101, start: 2_000, len: 3_000 },
        Spell { pid: 102, start: 10_000, len: 8_000 },
        Spell { pid: 103, start: 25_000, len: 5_000 },
    ])
    .await;
    #[rustfmt::skip]
    record(&collector, "db-2", 0, 60, &[
        Spell { pid: 201, start: 5_000, len: 6_000 },
        Spell { pid: 202, start: 40_000, len: 0 }, // still open: 20 s so far
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

/// Every episode of the whole recording, and the answer for each limit.
fn check_limits(collector: &Collector, what: &str) {
    let window = (T - 3_600 * SECOND, T + 3_600 * SECOND);
    let all = collector
        .history()
        .episodes(
            &pb::Scope::default(),
            &pb::Window {
                from_us: window.0,
                to_us: window.1,
            },
            pb::EpisodeKind::IdleInTransaction,
            2 * SECOND,
            0,
        )
        .unwrap()
        .episodes;
    assert_eq!(all.len(), 40, "{what}: every spell of 2 s or more");
    let mut ranked: Vec<&pb::Episode> = all.iter().collect();
    ranked.sort_by_key(|e| {
        let end = e.ended_us.unwrap_or(e.last_seen_us);
        (std::cmp::Reverse(end - e.started_us), e.started_us)
    });
    for limit in [1, 5, 16, 17, 30, 40, 100] {
        let mut expected: Vec<&pb::Episode> = ranked.iter().take(limit).copied().collect();
        expected.sort_by_key(|e| (e.started_us, e.pid));
        let expected: Vec<i32> = expected.iter().map(|e| e.pid).collect();
        let (pids, more) = leaks(collector, window.0, window.1, 2 * SECOND, limit as u32);
        assert_eq!(pids, expected, "{what}: limit {limit}");
        assert_eq!(more, limit < 40, "{what}: limit {limit}");
    }
}

#[tokio::test]
async fn hours_with_more_episodes_than_they_list_are_read_whole() {
    let dir = tempfile::tempdir().unwrap();
    let collector = Collector::open(dir.path()).unwrap();
    // 48 spells around the start of hour T, each ending half a second
    // before a sample (so the first ones end in the hour before the sample
    // that sees them end); 8 of them shorter than the 2 s asked for.
    let spells: Vec<Spell> = (0..48)
        .map(|i| match i {
            // The longest, ending at T - 0.5 s: the sample at T sees it end.
            20 => Spell {
                pid: 320,
                start: -60_000,
                len: 59_500,
            },
            _ => Spell {
                pid: 300 + i,
                start: -90_000 + 4_000 * i as i64,
                len: if i % 6 == 5 {
                    1_500
                } else {
                    2_500 + (i as i64 * 7 % 40) * 1_000
                },
            },
        })
        .collect();
    record(&collector, "db-3", -100, 160, &spells).await;
    check_limits(&collector, "as recorded");

    // As a store written before hours listed their longest episodes.
    let store = collector.store();
    let id = store.instance_id("db-3", "5432").unwrap();
    let hour = 3_600 * SECOND;
    let untracked = pgtrail_collector::store::Rollup {
        samples: 1,
        ..Default::default()
    };
    let written = store
        .append(&mut pgtrail_collector::store::Append {
            instance: id,
            sampled_at: T + 170 * SECOND,
            rollups: vec![
                (Resolution::Hour, T - hour, untracked.clone()),
                (Resolution::Hour, T, untracked),
            ],
            ..Default::default()
        })
        .unwrap();
    assert!(written);
    check_limits(&collector, "without lists");
}
