//! The spool on a real directory: order, acknowledgement, the bound, and a
//! restart.

use std::sync::Arc;

use pgtrail_proto::model::{QueryTexts, Snapshot};
use pgtrail_proto::pb;

use super::*;

fn snapshot(instance: &str, at: i64, text: &str) -> Snapshot {
    let id = pgtrail_proto::model::query_hash(text);
    let mut queries = QueryTexts::default();
    queries.insert(id, Arc::from(text));
    Snapshot {
        instance: instance.to_string(),
        seq: 0,
        sampled_at: at,
        facts: Some(pb::InstanceFacts {
            port: 5432,
            ..Default::default()
        }),
        sessions: vec![pb::Session {
            pid: 7,
            backend_type: "client backend".into(),
            query_id: Some(id),
            ..Default::default()
        }],
        processes: Vec::new(),
        queries,
        dropped_before: 0,
        blind_spots: Vec::new(),
        memory: None,
        sessions_total: None,
    }
}

fn drain(spool: &mut Spool) -> Vec<Snapshot> {
    let mut cursor = Cursor::default();
    let mut out = Vec::new();
    while let Some(s) = spool.next(&mut cursor).unwrap() {
        out.push(s.into_snapshot().unwrap());
    }
    assert!(!spool.has_next(&cursor));
    out
}

#[test]
fn delivers_oldest_first_and_forgets_what_is_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let mut spool = Spool::open(dir.path(), 1 << 20).unwrap();
    for t in 1..=5 {
        spool.push(snapshot("a", t, "SELECT 1")).unwrap();
    }
    let all = drain(&mut spool);
    let mut reader = Cursor::default();
    while spool.next(&mut reader).unwrap().is_some() {}
    assert_eq!(
        all.iter().map(|s| s.sampled_at).collect::<Vec<_>>(),
        [1, 2, 3, 4, 5]
    );
    assert_eq!(
        all.iter().map(|s| s.seq).collect::<Vec<_>>(),
        [1, 2, 3, 4, 5]
    );
    // Self-contained: the text travels with every record.
    assert_eq!(
        &*all[4].queries.values().next().unwrap().clone(),
        "SELECT 1"
    );
    assert!(spool.ack("a", 2).unwrap());
    assert!(!spool.ack("a", 2).unwrap(), "once");
    assert_eq!(spool.unacked(), 4);
    let rest: Vec<i64> = drain(&mut spool).iter().map(|s| s.sampled_at).collect();
    assert_eq!(rest, [1, 3, 4, 5]);
    for seq in [1, 3, 4, 5] {
        spool.ack("a", seq).unwrap();
    }
    assert_eq!(spool.unacked(), 0);
    assert_eq!(spool.bytes(), 0, "acknowledged segments are deleted");
    // A reader that has seen everything still sees what comes next.
    spool.push(snapshot("a", 6, "SELECT 1")).unwrap();
    assert!(spool.has_next(&reader));
    assert_eq!(
        spool
            .next(&mut reader)
            .unwrap()
            .unwrap()
            .snapshot
            .sampled_at,
        6
    );
}

#[test]
fn a_restart_resumes_the_spool_with_fresh_numbers() {
    let dir = tempfile::tempdir().unwrap();
    let mut spool = Spool::open(dir.path(), 1 << 20).unwrap();
    for t in 1..=3 {
        spool.push(snapshot("a", t, "SELECT 1")).unwrap();
    }
    spool.ack("a", 1).unwrap();
    drop(spool);
    // A torn write at the end is cut off.
    let seg = dir.path().join(segment::file_name(0));
    let mut bytes = std::fs::read(&seg).unwrap();
    bytes.extend_from_slice(&[9, 0, 0]);
    std::fs::write(&seg, bytes).unwrap();

    let mut spool = Spool::open(dir.path(), 1 << 20).unwrap();
    let resumed: Vec<(i64, u64)> = drain(&mut spool)
        .iter()
        .map(|s| (s.sampled_at, s.seq))
        .collect();
    // The acknowledgement of 1 was not written down: it is sent again and
    // the collector acknowledges it as a duplicate.
    assert_eq!(resumed, [(1, 1), (2, 2), (3, 3)]);
    spool.push(snapshot("a", 4, "SELECT 1")).unwrap();
    let last = drain(&mut spool).pop().unwrap();
    assert_eq!(last.sampled_at, 4);
    assert!(last.seq > 3, "numbers never repeat: {}", last.seq);
}

#[test]
fn a_second_agent_cannot_open_a_spool_in_use() {
    let dir = tempfile::tempdir().unwrap();
    let mut first = Spool::open(dir.path(), 1 << 20).unwrap();
    first.push(snapshot("a", 1, "SELECT 1")).unwrap();
    let err = Spool::open(dir.path(), 1 << 20).unwrap_err();
    assert!(matches!(err, SpoolError::InUse { .. }), "{err:?}");
    assert!(err.to_string().contains("in use by another agent"), "{err}");
    // The refused open touched nothing: the first still has its record.
    assert_eq!(drain(&mut first).len(), 1);
    drop(first);
    let mut again = Spool::open(dir.path(), 1 << 20).unwrap();
    assert_eq!(drain(&mut again).len(), 1);
}

#[test]
fn a_full_spool_drops_the_oldest_and_reports_it() {
    let dir = tempfile::tempdir().unwrap();
    let max = 64 << 10;
    let mut spool = Spool::open(dir.path(), max).unwrap();
    let text = "x".repeat(1000);
    let mut lost = 0;
    for t in 1..=200 {
        let instance = if t % 2 == 0 { "a" } else { "b" };
        let evicted = spool.push(snapshot(instance, t, &text)).unwrap();
        lost += evicted.snapshots;
        assert!(spool.bytes() <= max, "{} > {max}", spool.bytes());
    }
    let kept = drain(&mut spool);
    assert!(lost > 0);
    assert_eq!(kept.len() as u64 + lost, 200);
    // The newest survive, in order.
    assert_eq!(kept.last().unwrap().sampled_at, 200);
    assert!(kept.windows(2).all(|w| w[0].sampled_at < w[1].sampled_at));
    // Every loss is reported on the instance's next kept snapshot.
    let reported: u64 = kept.iter().map(|s| s.dropped_before).sum();
    let pending: u64 = spool.dropped.values().sum();
    assert_eq!(reported + pending, lost);
    assert!(reported > 0);
}

#[test]
fn a_record_held_in_memory_and_one_read_from_disk_are_the_same() {
    let dir = tempfile::tempdir().unwrap();
    let mut spool = Spool::open(dir.path(), 1 << 20).unwrap();
    let mut taken = snapshot("a", 1, "SELECT 1");
    taken.processes.push(pb::Process {
        pid: 7,
        title: "postgres: a".into(),
        ..Default::default()
    });
    spool.push(taken.clone()).unwrap();
    let held = drain(&mut spool);
    // A new stream starts over: the record was handed out, so it is read
    // from its segment.
    let read = drain(&mut spool);
    taken.seq = 1;
    assert_eq!(held, [taken.clone()]);
    assert_eq!(read, [taken]);
}

#[test]
fn the_newest_segment_is_emptied_when_acknowledged_and_written_on() {
    let dir = tempfile::tempdir().unwrap();
    let files = || std::fs::read_dir(dir.path()).unwrap().count();
    let mut spool = Spool::open(dir.path(), 1 << 20).unwrap();
    let mut reader = Cursor::default();
    for t in 1..=3 {
        spool.push(snapshot("a", t, "SELECT 1")).unwrap();
        let sent = spool.next(&mut reader).unwrap().unwrap();
        assert_eq!(sent.snapshot.sampled_at, t);
        assert!(spool.ack("a", sent.snapshot.seq).unwrap());
        assert_eq!((spool.bytes(), spool.unacked()), (0, 0));
        // One segment file (emptied), `seqs` and `lock`.
        assert_eq!(files(), 3);
    }
    assert!(!spool.has_next(&reader));
    // As a killed agent leaves it.
    drop(spool);
    let seg = dir.path().join(segment::file_name(0));
    assert_eq!(std::fs::metadata(&seg).unwrap().len(), 0);
    let mut spool = Spool::open(dir.path(), 1 << 20).unwrap();
    assert_eq!(spool.unacked(), 0);
    assert!(!seg.exists(), "an empty segment is deleted at a restart");
    // A stopping agent deletes it.
    spool.push(snapshot("a", 4, "SELECT 1")).unwrap();
    let sent = spool.next(&mut Cursor::default()).unwrap().unwrap();
    spool.ack("a", sent.snapshot.seq).unwrap();
    assert_eq!(files(), 3);
    spool.close().unwrap();
    // The lock file stays: removing a file others may have open to lock
    // would let two agents lock two different files of the same name.
    assert_eq!(files(), 2, "only `seqs` and `lock` are left");
}
