//! What the agent reads of a real server's processes and sessions: the
//! strace-level `/proc` detail (wchan, syscall, context switches, threads,
//! oom_score, PSS/USS, block-IO delay), the memory around the instance,
//! normalized query texts, and the columns of the server's version.

use std::time::Duration;

use pgtrail_agent::os::syscall_name;
use pgtrail_agent::{AgentBuilder, InstanceConfig};
use pgtrail_proto::model::Snapshot;
use pgtrail_proto::pb;
use pgtrail_tests::PgServer;
use tokio::sync::mpsc::Receiver;

/// Waits (up to 30 s) for a snapshot that satisfies `pred`.
async fn until(rx: &mut Receiver<Snapshot>, pred: impl Fn(&Snapshot) -> bool) -> Snapshot {
    let wait = async {
        loop {
            let s = rx.recv().await.expect("the agent runs");
            if pred(&s) {
                return s;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(30), wait)
        .await
        .expect("a matching snapshot within 30 s")
}

fn agent(pg: &PgServer) -> AgentBuilder {
    let every = Duration::from_millis(200);
    AgentBuilder::new()
        .instance(InstanceConfig::parse(Some("main"), &pg.url()).unwrap())
        .interval(every)
        .pss_interval(every)
}

/// The pid of the session whose application_name is `app`.
fn pid_of(s: &Snapshot, app: &str) -> Option<i32> {
    s.sessions
        .iter()
        .find(|x| x.application_name.as_deref() == Some(app))
        .map(|x| x.pid)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sleeping_backend_shows_what_strace_would() {
    let pg = PgServer::start().expect("PostgreSQL starts");
    let sleeper = pg.connect("sleeper").await.unwrap();
    let sleeping = tokio::spawn(async move { sleeper.batch_execute("SELECT pg_sleep(60)").await });
    let (agent, mut rx) = agent(&pg).spawn().unwrap();
    let s = until(&mut rx, |s| {
        let Some(pid) = pid_of(s, "sleeper") else {
            return false;
        };
        s.processes
            .iter()
            .any(|p| p.pid == pid && p.syscall.is_some() && p.pss_bytes.is_some())
    })
    .await;
    agent.shutdown().await;
    sleeping.abort();

    let pid = pid_of(&s, "sleeper").unwrap();
    let p = s.processes.iter().find(|p| p.pid == pid).unwrap();
    assert_eq!(p.kind, pb::ProcessKind::ClientBackend as i32);
    assert_eq!(p.state, "S");
    // pg_sleep waits on its latch: epoll on Linux (poll where it lacks it).
    let name = syscall_name(p.syscall.unwrap()).unwrap_or("?");
    assert!(
        ["epoll_wait", "epoll_pwait", "epoll_pwait2", "poll", "ppoll"].contains(&name),
        "syscall {name}: {p:?}"
    );
    assert!(p.wchan.as_deref().is_some_and(|w| !w.is_empty()), "{p:?}");
    assert!(p.voluntary_ctxt_switches.unwrap() > 0, "{p:?}");
    assert!(p.nonvoluntary_ctxt_switches.is_some());
    assert_eq!(p.threads, Some(1));
    assert!(p.oom_score.is_some());
    let (pss, uss, rss) = (
        p.pss_bytes.unwrap(),
        p.uss_bytes.unwrap(),
        p.rss_bytes.unwrap(),
    );
    assert!(
        0 < uss && uss <= pss && pss <= rss,
        "uss {uss} pss {pss} rss {rss}"
    );
    assert!(p.read_bytes.is_some() && p.write_bytes.is_some());
    // Block-IO delay only where the kernel accounts it; never a made-up 0.
    let accounting = std::fs::read_to_string("/proc/sys/kernel/task_delayacct")
        .map_or(true, |v| v.trim() != "0");
    assert_eq!(p.blkio_delay_us.is_some(), accounting, "{p:?}");
    // Every process of the tree has the detail, the postmaster included.
    assert!(s
        .processes
        .iter()
        .all(|p| p.threads.is_some() && p.oom_score.is_some()));
    let pm = &s.processes[0];
    assert_eq!(pm.kind, pb::ProcessKind::Postmaster as i32);
    assert_eq!(pm.pid, pg.postmaster_pid().unwrap());
    assert!(pm.pss_bytes.is_some() && pm.syscall.is_some(), "{pm:?}");
    // The session says the same from PostgreSQL's side.
    let session = s.sessions.iter().find(|x| x.pid == pid).unwrap();
    assert_eq!(session.wait_event.as_deref(), Some("PgSleep"));

    let memory = s.memory.expect("memory every sample");
    assert!(memory.host_available_bytes.unwrap() > 0);
    if let Some(limit) = memory.cgroup_limit_bytes {
        assert!(memory.cgroup_usage_bytes.unwrap() <= limit);
    }
    assert!(s.blind_spots.is_empty(), "{:?}", s.blind_spots);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn normalized_texts_keep_no_literals() {
    let pg = PgServer::start().expect("PostgreSQL starts");
    let client = pg.connect("secretive").await.unwrap();
    let running = tokio::spawn(async move {
        client
            .batch_execute("SELECT pg_sleep(60), 'hunter2' AS password, 4111111111111111 AS card")
            .await
    });
    let (agent, mut rx) = agent(&pg).normalize_queries(true).spawn().unwrap();
    let s = until(&mut rx, |s| {
        s.sessions.iter().any(|x| {
            x.application_name.as_deref() == Some("secretive")
                && x.state.as_deref() == Some("active")
        })
    })
    .await;
    agent.shutdown().await;
    running.abort();

    let session = s
        .sessions
        .iter()
        .find(|x| x.application_name.as_deref() == Some("secretive"))
        .unwrap();
    let text = s.query_of(session).expect("a text");
    assert_eq!(&**text, "SELECT pg_sleep($1), $2 AS password, $3 AS card");
    assert!(s.queries.values().all(|t| !t.contains("hunter2")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn columns_and_processes_follow_the_server_version() {
    let pg = PgServer::start().expect("PostgreSQL starts");
    let client = pg.connect("probe").await.unwrap();
    let version: i32 = client
        .query_one("SELECT current_setting('server_version_num')::int4", &[])
        .await
        .unwrap()
        .get(0);
    if version >= 140000 {
        pg.execute("ALTER SYSTEM SET compute_query_id = on")
            .await
            .unwrap();
        pg.execute("SELECT pg_reload_conf()").await.unwrap();
    }
    let (agent, mut rx) = agent(&pg).spawn().unwrap();
    // The agent's own session is active while it samples: with
    // compute_query_id it has a query_id (PG 14+).
    let s = until(&mut rx, |s| {
        s.processes.len() >= 5
            && (version < 140000
                || s.sessions.iter().any(|x| {
                    x.application_name.as_deref() == Some("pgtrail-agent")
                        && x.pg_query_id.is_some()
                }))
    })
    .await;
    agent.shutdown().await;

    let facts = s.facts.as_ref().unwrap();
    assert_eq!(facts.version_num as i32, version);
    if version < 140000 {
        assert!(s.sessions.iter().all(|x| x.pg_query_id.is_none()));
    }
    let kinds: Vec<pb::ProcessKind> = s
        .processes
        .iter()
        .map(|p| pb::ProcessKind::try_from(p.kind).unwrap())
        .collect();
    assert!(kinds.contains(&pb::ProcessKind::Checkpointer), "{kinds:?}");
    assert!(kinds.contains(&pb::ProcessKind::Walwriter), "{kinds:?}");
    // The statistics collector process exists only before PostgreSQL 15.
    assert_eq!(
        kinds.contains(&pb::ProcessKind::StatsCollector),
        version < 150000,
        "version {version}: {kinds:?}"
    );
    // Every process is a child of the postmaster, and has a kind.
    assert!(kinds.iter().all(|k| *k != pb::ProcessKind::Unspecified));
}
