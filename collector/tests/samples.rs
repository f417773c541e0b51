//! Samples stored as keyframes and deltas come back exactly as they went
//! in, from any moment, across minutes, out-of-order arrivals and expiry.

mod common;

use pgtrail_collector::store::StoredSample;
use pgtrail_collector::Collector;
use pgtrail_proto::model::Snapshot;
use pgtrail_proto::pb;
use pgtrail_proto::time::{Micros, SECOND};

use common::reopen_collector;

/// A whole minute, so the run crosses minute boundaries predictably.
const T0: Micros = 1_790_000_040 * SECOND;

/// Sample `i` of an instance whose sessions come, go and change state.
fn sample(i: i64) -> Snapshot {
    let mut s = Snapshot {
        instance: "5432".into(),
        seq: i as u64 + 1,
        sampled_at: T0 + i * SECOND,
        ..Default::default()
    };
    for pid in 100..130 {
        // Every seventh session comes and goes; the rest change state now
        // and then.
        if pid % 7 == 0 && (i / 5 + pid as i64) % 2 == 0 {
            continue;
        }
        let state = if (i + pid as i64) % 11 == 0 {
            "active"
        } else {
            "idle"
        };
        s.sessions.push(pb::Session {
            pid,
            backend_type: "client backend".into(),
            backend_start_us: Some(T0 - pid as i64),
            state: Some(state.into()),
            ..Default::default()
        });
        s.processes.push(pb::Process {
            pid,
            ppid: 1,
            rss_bytes: Some(1000 + if state == "active" { i as u64 } else { 0 }),
            ..Default::default()
        });
    }
    s
}

fn rows(s: &Snapshot) -> (Vec<pb::Session>, Vec<pb::Process>) {
    (s.sessions.clone(), s.processes.clone())
}

fn stored_rows(s: &StoredSample) -> (Vec<pb::Session>, Vec<pb::Process>) {
    (s.sessions.clone(), s.processes.clone())
}

#[tokio::test]
async fn every_sample_comes_back_whole() {
    let dir = tempfile::tempdir().unwrap();
    let collector = Collector::open(dir.path()).unwrap();
    let ingestor = collector.ingestor();
    let n = 150; // two and a half minutes
    for i in 0..n {
        if i == 70 {
            continue; // arrives late, below
        }
        ingestor.ingest("db", &sample(i)).await.unwrap();
    }
    ingestor.ingest("db", &sample(70)).await.unwrap();
    let store = collector.store();
    let id = store.instances().unwrap()[0].id;

    for i in 0..n {
        let t = T0 + i * SECOND;
        let (at, got) = store.sample_at(id, t + 500_000).unwrap().unwrap();
        assert_eq!(at, t);
        assert_eq!(stored_rows(&got), rows(&sample(i)), "sample {i}");
        assert!(got.keyframe);
    }
    let all = store
        .samples(id, T0 + 3 * SECOND, T0 + 140 * SECOND)
        .unwrap();
    assert_eq!(all.len(), 138);
    for (t, got) in &all {
        let i = (t - T0) / SECOND;
        assert_eq!(stored_rows(got), rows(&sample(i)), "sample {i} in a range");
    }

    // Expiry in the middle of a minute keeps the chains after it whole.
    let removed = store.expire(id, T0 + 90 * SECOND, T0).unwrap();
    assert!(removed > 0);
    assert!(store.sample_at(id, T0 + 10 * SECOND).unwrap().is_none());
    for i in 90..n {
        let (_, got) = store.sample_at(id, T0 + i * SECOND).unwrap().unwrap();
        assert_eq!(
            stored_rows(&got),
            rows(&sample(i)),
            "sample {i} after expiry"
        );
    }
}

#[tokio::test]
async fn long_windows_are_widened_to_whole_minutes() {
    let dir = tempfile::tempdir().unwrap();
    let collector = Collector::open(dir.path()).unwrap();
    // 30 sessions 10 s into a minute, 20 at its end.
    collector
        .ingestor()
        .ingest("db", &sample(10))
        .await
        .unwrap();
    let mut later = sample(59);
    later.sessions.truncate(20);
    collector.ingestor().ingest("db", &later).await.unwrap();
    let peak = |from: Micros, to: Micros| {
        let w = pb::Window {
            from_us: from,
            to_us: to,
        };
        let peaks = collector
            .history()
            .peaks(&pb::Scope::default(), &w, pb::Dimension::Unspecified, 0)
            .unwrap();
        peaks.first().map(|p| p.total)
    };
    let first = sample(10).sessions.len() as u32;
    // Under an hour: exact, so the first sample is outside.
    assert_eq!(peak(T0 + 20 * SECOND, T0 + 1800 * SECOND), Some(20));
    // Longer: the window starts at its minute, and the first sample counts.
    assert_eq!(peak(T0 + 20 * SECOND, T0 + 7200 * SECOND), Some(first));
}

#[tokio::test]
async fn owned_snapshots_in_any_row_order_come_back_whole_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let by_pid = |(mut s, mut p): (Vec<pb::Session>, Vec<pb::Process>)| {
        s.sort_by_key(|s| s.pid);
        p.sort_by_key(|p| p.pid);
        (s, p)
    };
    let reversed = |i: i64| {
        let mut s = sample(i);
        s.sessions.reverse();
        s.processes.reverse();
        s
    };
    for (from, to) in [(0, 40), (40, 75)] {
        let collector = reopen_collector(dir.path());
        let ingestor = collector.ingestor();
        for i in from..to {
            ingestor.append("db", &reversed(i)).await.unwrap();
        }
        ingestor.flush().await.unwrap();
    }
    let collector = reopen_collector(dir.path());
    let store = collector.store();
    let id = store.instances().unwrap()[0].id;
    assert_eq!(store.instances().unwrap()[0].samples, 75);
    for i in 0..75 {
        let (at, got) = store.sample_at(id, T0 + i * SECOND).unwrap().unwrap();
        assert_eq!(at, T0 + i * SECOND);
        assert_eq!(by_pid(stored_rows(&got)), rows(&sample(i)), "sample {i}");
        assert_eq!(got.seq, i as u64 + 1);
    }
}
