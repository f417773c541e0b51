//! Several instances per agent: a server that is down or restarting does
//! not disturb the others, a server that comes back is picked up again, and
//! its restart shows in the data (new postmaster pid and start time).

use std::collections::HashMap;
use std::time::Duration;

use pgtrail_agent::{AgentBuilder, InstanceConfig};
use pgtrail_proto::model::Snapshot;
use pgtrail_tests::{free_port, PgServer};
use tokio::sync::mpsc::Receiver;

/// Collects snapshots by instance until `done` says enough (30 s at most).
async fn collect(
    rx: &mut Receiver<Snapshot>,
    seen: &mut HashMap<String, Vec<Snapshot>>,
    done: impl Fn(&HashMap<String, Vec<Snapshot>>) -> bool,
) {
    let wait = async {
        while !done(seen) {
            let s = rx.recv().await.expect("the agent samples");
            seen.entry(s.instance.clone()).or_default().push(s);
        }
    };
    tokio::time::timeout(Duration::from_secs(60), wait)
        .await
        .expect("the expected snapshots within 60 s");
}

fn postmaster(s: &Snapshot) -> (i32, i64) {
    let f = s.facts.as_ref().expect("facts");
    (
        f.postmaster_pid.expect("a local postmaster"),
        f.postmaster_start_us,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_server_restarting_or_down_leaves_the_others_alone() {
    let a = PgServer::start().expect("PostgreSQL a starts");
    let b = PgServer::start().expect("PostgreSQL b starts");
    let ghost = format!("postgresql://postgres@127.0.0.1:{}/postgres", free_port());
    let (agent, mut rx) = AgentBuilder::new()
        .instance(InstanceConfig::parse(Some("a"), &a.url()).unwrap())
        .instance(InstanceConfig::parse(Some("b"), &b.url()).unwrap())
        .instance(InstanceConfig::parse(Some("ghost"), &ghost).unwrap())
        .interval(Duration::from_millis(200))
        .spawn()
        .unwrap();
    let mut seen: HashMap<String, Vec<Snapshot>> = HashMap::new();
    collect(&mut rx, &mut seen, |s| {
        s.get("a").map_or(0, Vec::len) >= 3 && s.get("b").map_or(0, Vec::len) >= 3
    })
    .await;
    let before = postmaster(seen["b"].last().unwrap());
    assert_eq!(before.0, b.postmaster_pid().unwrap());
    let a_before = seen["a"].len();

    // Restart b (fast shutdown, then start): down for a moment.
    let restarting = tokio::task::spawn_blocking(move || {
        b.restart().expect("b restarts");
        b
    });
    let b = restarting.await.unwrap();
    let new_pid = b.postmaster_pid().unwrap();
    collect(&mut rx, &mut seen, |s| {
        s["b"].iter().any(|x| postmaster(x).0 == new_pid) && s["a"].len() >= a_before + 10
    })
    .await;
    let stats = agent.stats();
    agent.shutdown().await;

    // b came back, and its restart is in the data.
    let after = seen["b"]
        .iter()
        .find(|x| postmaster(x).0 == new_pid)
        .unwrap();
    let (pid, started) = postmaster(after);
    assert_ne!(pid, before.0);
    assert!(started > before.1, "a new start time");
    assert_eq!(after.processes[0].pid, new_pid, "the new postmaster's tree");
    assert!(after.processes.len() >= 5, "{:?}", after.processes);
    // a was sampled all along: no hole while b was down.
    let times: Vec<i64> = seen["a"].iter().map(|s| s.sampled_at).collect();
    let widest = times.windows(2).map(|w| w[1] - w[0]).max().unwrap();
    assert!(widest < 2_000_000, "a was not sampled for {widest} µs");
    assert!(seen["a"].windows(2).all(|w| w[1].seq == w[0].seq + 1));
    // The server that never answered yields no snapshot, only failures.
    assert!(!seen.contains_key("ghost"));
    assert!(stats.failures > 0);
    drop(a);
}
