//! Retention on a real sled store: old samples go after the raw horizon,
//! old rollups and episodes after the long one, and recent data stays.

use std::time::Duration;

use pgtrail_collector::{Collector, Retention};
use pgtrail_proto::model::{query_hash, Snapshot, IDLE_IN_TRANSACTION};
use pgtrail_proto::pb;
use pgtrail_proto::time::{Micros, SECOND};

const DAY: Micros = 86_400 * SECOND;
const HOUR: Micros = 3_600 * SECOND;
/// A fixed "now", on a whole hour.
const NOW: Micros = 1_790_000_000 * SECOND - (1_790_000_000 * SECOND) % HOUR;

fn snapshot(seq: u64, t: Micros, state: &str, since: Micros) -> Snapshot {
    let mut s = Snapshot {
        instance: "5432".into(),
        seq,
        sampled_at: t,
        ..Default::default()
    };
    let id = query_hash("select 1");
    s.queries.insert(id, "select 1".into());
    s.sessions.push(pb::Session {
        pid: 100,
        backend_type: "client backend".into(),
        backend_start_us: Some(since - 10 * SECOND),
        state: Some(state.into()),
        state_change_us: Some(since),
        query_start_us: Some(since - SECOND),
        query_id: Some(id),
        ..Default::default()
    });
    s
}

/// An idle-in-transaction spell of a few samples starting at `t`.
async fn spell(collector: &Collector, seq: &mut u64, t: Micros) {
    for i in 0..3 {
        *seq += 1;
        let s = snapshot(*seq, t + i * SECOND, IDLE_IN_TRANSACTION, t);
        collector.ingestor().ingest("db-1", &s).await.unwrap();
    }
    *seq += 1;
    let mut s = snapshot(*seq, t + 3 * SECOND, "idle", t + 2_500_000);
    s.sessions[0].query_start_us = Some(t + 2_500_000);
    collector.ingestor().ingest("db-1", &s).await.unwrap();
}

fn window(from: Micros, to: Micros) -> pb::Window {
    pb::Window {
        from_us: from,
        to_us: to,
    }
}

#[tokio::test]
async fn old_data_goes_and_recent_data_stays() {
    let dir = tempfile::tempdir().unwrap();
    let collector = Collector::open(dir.path()).unwrap();
    let mut seq = 0;
    let ancient = NOW - 100 * DAY; // past both horizons
    let old = NOW - 10 * DAY; // past the raw horizon only
    let recent = NOW - HOUR; // within both
    for t in [ancient, old, recent] {
        spell(&collector, &mut seq, t).await;
    }
    let history = collector.history();
    let all = pb::Scope::default();
    // Every episode, and the ten longest (chosen from the hour rollups'
    // lists): both see the same episodes come and go.
    let leaks = |from, to| {
        let [all, longest] = [0, 10].map(|limit| {
            history
                .episodes(
                    &all,
                    &window(from, to),
                    pb::EpisodeKind::IdleInTransaction,
                    0,
                    limit,
                )
                .unwrap()
                .episodes
                .len()
        });
        assert_eq!(all, longest);
        all
    };
    let peaks = |from: Micros| {
        history
            .peaks(
                &all,
                &window(from, from + HOUR - 1),
                pb::Dimension::Unspecified,
                0,
            )
            .unwrap()
            .len()
    };
    let sample_at = |t| {
        history
            .at(&all, t)
            .unwrap()
            .first()
            .map(|i| i.sampled_at_us)
    };
    assert_eq!(leaks(ancient - DAY, NOW), 3);
    assert_eq!(sample_at(ancient + 10 * SECOND), Some(ancient + 3 * SECOND));

    let retention = Retention {
        samples: Duration::from_secs(7 * 86_400),
        history: Duration::from_secs(90 * 86_400),
        every: Duration::from_secs(600),
    };
    let removed = retention.expire(&*collector.store(), NOW).unwrap();
    assert!(removed > 0);

    // Raw samples: only the recent ones remain.
    assert_eq!(sample_at(ancient + 10 * SECOND), None);
    assert_eq!(
        sample_at(old + 10 * SECOND),
        None,
        "10 days old: past the raw horizon"
    );
    assert_eq!(sample_at(recent + 10 * SECOND), Some(recent + 3 * SECOND));
    // Rollups and episodes: the 10-day-old ones remain, the 100-day-old go.
    assert_eq!(peaks(ancient - ancient % HOUR), 0);
    assert_eq!(peaks(old - old % HOUR), 1, "rollups outlive raw samples");
    assert_eq!(peaks(recent - recent % HOUR), 1);
    assert_eq!(leaks(ancient - DAY, ancient + DAY), 0);
    assert_eq!(leaks(old - DAY, NOW), 2);

    // Nothing left to remove a second time.
    assert_eq!(retention.expire(&*collector.store(), NOW).unwrap(), 0);
}

#[tokio::test]
async fn an_hour_rollup_stays_while_an_episode_it_lists_does() {
    let dir = tempfile::tempdir().unwrap();
    let collector = Collector::open(dir.path()).unwrap();
    let mut seq = 0;
    let now = NOW + 30 * 60 * SECOND; // mid-hour
                                      // Ends 10 minutes after the long horizon's cut, in the cut's hour.
    let edge = now - 90 * DAY + 10 * 60 * SECOND;
    spell(&collector, &mut seq, edge).await;
    spell(&collector, &mut seq, now - HOUR).await;
    let retention = Retention {
        samples: Duration::from_secs(7 * 86_400),
        history: Duration::from_secs(90 * 86_400),
        every: Duration::from_secs(600),
    };
    retention.expire(&*collector.store(), now).unwrap();
    let count = |limit| {
        collector
            .history()
            .episodes(
                &pb::Scope::default(),
                &window(now - 91 * DAY, now),
                pb::EpisodeKind::IdleInTransaction,
                0,
                limit,
            )
            .unwrap()
            .episodes
            .len()
    };
    assert_eq!((count(0), count(10)), (2, 2));
}
