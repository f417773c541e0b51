//! The current minute and hour of an instance are kept open in memory and
//! written when they close: questions see them before they are written, a
//! clean stop writes them, and after a crash the ingestor rebuilds them
//! from the stored samples and minutes, to the same record.

mod common;

use std::sync::Arc;

use pgtrail_collector::store::{Resolution, Rollup, SledStore, Store};
use pgtrail_collector::Ingestor;
use pgtrail_proto::model::{Snapshot, IDLE_IN_TRANSACTION};
use pgtrail_proto::pb;
use pgtrail_proto::time::{Micros, SECOND};

use common::reopen_store;

/// A whole hour.
const T0: Micros = 1_790_002_800 * SECOND;
const MINUTE: Micros = 60 * SECOND;

/// Sample `i`: sessions come and go, change state, and one sits idle in
/// transaction now and then.
fn sample(i: i64) -> Snapshot {
    let mut s = Snapshot {
        instance: "5432".into(),
        seq: i as u64 + 1,
        sampled_at: T0 + i * SECOND,
        ..Default::default()
    };
    for pid in 100..120 {
        if pid % 5 == 0 && (i / 7 + pid as i64) % 2 == 0 {
            continue;
        }
        let (state, since) = match (i + pid as i64) % 13 {
            0..=2 => ("active", i - (i + pid as i64) % 13),
            3..=5 => (IDLE_IN_TRANSACTION, i - (i + pid as i64) % 13 + 3),
            _ => ("idle", i - (i + pid as i64) % 13 + 6),
        };
        s.sessions.push(pb::Session {
            pid,
            backend_type: "client backend".into(),
            backend_start_us: Some(T0 - pid as i64 * SECOND),
            user: Some(format!("user{}", pid % 3)),
            state: Some(state.into()),
            state_change_us: Some(T0 + since * SECOND),
            query_start_us: Some(T0 + since * SECOND),
            ..Default::default()
        });
    }
    s
}

async fn ingest(ingestor: &Ingestor, samples: std::ops::Range<i64>) {
    for i in samples {
        ingestor.ingest("db", &sample(i)).await.unwrap();
    }
}

/// The instance's minute rollups and its hour rollup.
fn rollups(store: &dyn Store) -> (Vec<(Micros, Rollup)>, Rollup) {
    let id = store.instances().unwrap()[0].id;
    let minutes = store
        .rollups(id, Resolution::Minute, T0, T0 + 3_599 * SECOND)
        .unwrap();
    let hour = store.rollup(id, Resolution::Hour, T0).unwrap().unwrap();
    (minutes, hour)
}

/// Records samples `0..stop`, stops (cleanly or as a crash would), opens
/// the store again and records `stop..end`.
async fn record_with_a_stop(dir: &std::path::Path, stop: i64, end: i64, crash: bool) {
    let store = Arc::new(SledStore::open(dir).unwrap());
    let ingestor = Ingestor::new(store.clone());
    ingest(&ingestor, 0..stop).await;
    if crash {
        store.discard_open();
    } else {
        ingestor.close().await.unwrap();
    }
    drop((ingestor, store));
    let store = Arc::new(reopen_store(dir));
    let ingestor = Ingestor::new(store.clone());
    ingest(&ingestor, stop..end).await;
    ingestor.close().await.unwrap();
}

#[tokio::test]
async fn open_rollups_are_answered_before_they_are_written_and_kept_at_a_clean_stop() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Arc::new(SledStore::open(dir.path()).unwrap());
        let ingestor = Ingestor::new(store.clone());
        ingest(&ingestor, 0..95).await;
        let (minutes, hour) = rollups(store.as_ref());
        let starts: Vec<Micros> = minutes.iter().map(|(t, _)| *t).collect();
        assert_eq!(starts, vec![T0, T0 + MINUTE], "the open minute is answered");
        assert_eq!((minutes[0].1.samples, minutes[1].1.samples), (60, 35));
        assert_eq!(hour.samples, 95, "the open hour has every sample");
        let peaks = store
            .peak_rollups(
                store.instances().unwrap()[0].id,
                Resolution::Minute,
                T0,
                T0 + MINUTE,
            )
            .unwrap();
        assert_eq!(peaks.len(), 2);
        assert_eq!(peaks[1].1.samples, 35);
        ingestor.close().await.unwrap();
    }
    let store = reopen_store(dir.path());
    let (minutes, hour) = rollups(&store);
    assert_eq!(minutes.iter().map(|(_, m)| m.samples).sum::<u32>(), 95);
    assert_eq!(hour.samples, 95, "written at the stop");
}

#[tokio::test]
async fn after_a_crash_the_open_rollups_are_rebuilt_from_what_was_stored() {
    // Stopped mid-minute and mid-hour, then continued into the next hour.
    let (clean, crashed) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    record_with_a_stop(clean.path(), 1_000, 1_150, false).await;
    record_with_a_stop(crashed.path(), 1_000, 1_150, true).await;
    let clean = reopen_store(clean.path());
    let crashed = reopen_store(crashed.path());
    let (clean_minutes, clean_hour) = rollups(&clean);
    let (crashed_minutes, mut crashed_hour) = rollups(&crashed);
    assert_eq!(clean_minutes.len(), 20);
    assert_eq!(crashed_minutes.len(), 20);
    for (a, b) in clean_minutes.iter().zip(&crashed_minutes) {
        assert!(a == b, "the minute at {} differs after the crash", a.0);
    }
    assert_eq!(clean_hour.samples, 1_150);
    assert!(clean_hour.longest_tracked);
    assert!(
        !crashed_hour.longest_tracked,
        "episodes that ended in the lost stretch may be missing from its list"
    );
    crashed_hour.longest_tracked = true;
    crashed_hour.longest = clean_hour.longest.clone();
    assert!(
        crashed_hour == clean_hour,
        "the hour differs after the crash"
    );

    // A crash in the first minute of an hour, with nothing of that hour
    // written yet.
    let (clean_dir, crashed_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    record_with_a_stop(clean_dir.path(), 30, 70, false).await;
    record_with_a_stop(crashed_dir.path(), 30, 70, true).await;
    let (a, b) = (
        rollups(&reopen_store(clean_dir.path())),
        rollups(&reopen_store(crashed_dir.path())),
    );
    assert!(
        a.0 == b.0,
        "minutes differ after a crash in the first minute"
    );
    assert_eq!((a.1.samples, b.1.samples), (70, 70));
}

/// A snapshot at `T0 + i` seconds of `n` sessions per (user, client
/// address): of every three, one waits on a lock running one of two
/// queries, one waits on what is also written "Lock:tuple" (its type
/// alone), one is idle.
fn crowd_sample(i: i64, groups: &[(&str, &str, usize)]) -> Snapshot {
    let mut s = Snapshot {
        instance: "5432".into(),
        seq: i as u64 + 1,
        sampled_at: T0 + i * SECOND,
        ..Default::default()
    };
    for &(user, addr, n) in groups {
        for _ in 0..n {
            let k = s.sessions.len();
            let (state, kind, event, query) = match k % 3 {
                0 => ("active", Some("Lock"), Some("tuple"), Some(k as u64 % 2)),
                1 => ("active", Some("Lock:tuple"), None, None),
                _ => ("idle", None, None, None),
            };
            s.sessions.push(pb::Session {
                pid: 100 + k as i32,
                backend_type: "client backend".into(),
                backend_start_us: Some(T0 - SECOND),
                user: Some(user.into()),
                client_addr: Some(addr.into()),
                state: Some(state.into()),
                wait_event_type: kind.map(Into::into),
                wait_event: event.map(Into::into),
                query_id: query,
                ..Default::default()
            });
        }
    }
    s
}

#[tokio::test]
async fn maxima_and_waits_are_those_of_the_samples_renumbered_late_or_twice() {
    use pgtrail_collector::ingest::rollup::{merge, sample_rollup, Context};

    // Enough client addresses at 1 that the ingestor numbers values anew
    // from 2 on, where the first numbers name other values than before.
    let addrs: Vec<String> = (0..10_001).map(|k| format!("10.{k}")).collect();
    let mut crowd = vec![("big", "local", 5)];
    crowd.extend(addrs.iter().map(|a| ("big", a.as_str(), 1)));
    let sent = [
        crowd_sample(0, &[("big", "local", 5)]),
        crowd_sample(1, &crowd),
        crowd_sample(2, &[("small", "elsewhere", 2)]),
        crowd_sample(4, &[("small", "local", 3)]),
        // Late, then again.
        crowd_sample(3, &[("big", "local", 1), ("late", "local", 7)]),
        crowd_sample(3, &[("big", "local", 1), ("late", "local", 7)]),
        crowd_sample(5, &[("small", "local", 1), ("late", "x", 1)]),
        crowd_sample(61, &[("big", "local", 2)]),
        crowd_sample(62, &[("small", "local", 4), ("big", "local", 1)]),
    ];
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SledStore::open(dir.path()).unwrap());
    let ingestor = Ingestor::new(store.clone());
    for s in &sent {
        ingestor.ingest("db", s).await.unwrap();
    }
    ingestor.close().await.unwrap();

    // Each sample's own rollup: its maxima and waits need no sample before.
    let expected = |from: Micros, to: Micros| {
        let mut r = Rollup::default();
        for s in sent.iter().take(5).chain(&sent[6..]) {
            if (from..=to).contains(&s.sampled_at) {
                merge(&mut r, &sample_rollup(s, &Context::default()).0);
            }
        }
        r
    };
    let (minutes, hour) = rollups(store.as_ref());
    assert_eq!(minutes.len(), 2);
    let wanted = [
        (minutes[0].1.clone(), expected(T0, T0 + MINUTE - 1)),
        (minutes[1].1.clone(), expected(T0 + MINUTE, T0 + 2 * MINUTE)),
        (hour, expected(T0, T0 + 3_599 * SECOND)),
    ];
    for (i, (got, want)) in wanted.iter().enumerate() {
        let peak = |r: &Rollup| {
            (
                r.samples,
                r.max_total,
                r.max_at_us,
                r.by_state_at_max.clone(),
            )
        };
        assert_eq!(peak(got), peak(want), "rollup {i}");
        assert!(got.maxima == want.maxima, "maxima of rollup {i}");
        assert_eq!(got.waits, want.waits, "rollup {i}");
        assert_eq!(got.wait_queries, want.wait_queries, "rollup {i}");
    }
    let first = &wanted[0].0;
    assert_eq!(first.samples, 6);
    assert_eq!(first.maxima["user\tsmall"].value, 3);
    assert_eq!(first.maxima["client\telsewhere"].value, 2);
    assert_eq!(first.maxima["user\tlate"].value, 7);
    // Two of every three sessions, at 0, 1, 2, 4, 3 and 5.
    assert_eq!(first.waits["Lock:tuple"], 4 + 6_671 + 2 + 2 + 6 + 2);
}
