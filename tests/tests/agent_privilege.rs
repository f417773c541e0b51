//! Least privilege: the agent works with a role that has only `pg_monitor`;
//! without it, and as an OS user other than the server's, it says what it
//! cannot see (in its data and once in its log) and stores those fields as
//! unknown rather than as facts.

mod common;

use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::Duration;

use pgtrail_agent::{AgentBuilder, InstanceConfig};
use pgtrail_proto::model::Snapshot;
use pgtrail_tests::PgServer;

use common::example;

/// The first snapshot in which the session `app` is seen, by `role`.
async fn sample_as(pg: &PgServer, role: &str, app: &str) -> Snapshot {
    let url = format!("postgresql://{role}@127.0.0.1:{}/postgres", pg.port());
    let (agent, mut rx) = AgentBuilder::new()
        .instance(InstanceConfig::parse(Some("main"), &url).unwrap())
        .interval(Duration::from_millis(200))
        .spawn()
        .unwrap();
    let wait = async {
        loop {
            let s = rx.recv().await.expect("the agent samples");
            if s.sessions
                .iter()
                .any(|x| x.application_name.as_deref() == Some(app))
            {
                return s;
            }
        }
    };
    let s = tokio::time::timeout(Duration::from_secs(30), wait)
        .await
        .expect("a snapshot within 30 s");
    agent.shutdown().await;
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_monitor_is_enough_and_its_absence_is_said() {
    let pg = PgServer::start().expect("PostgreSQL starts");
    pg.execute("CREATE ROLE watcher LOGIN IN ROLE pg_monitor")
        .await
        .unwrap();
    pg.execute("CREATE ROLE outsider LOGIN").await.unwrap();
    let other = pg.connect("someone-else").await.unwrap();
    let busy = tokio::spawn(async move { other.batch_execute("SELECT pg_sleep(60)").await });

    // With pg_monitor: every session in full, nothing unseen.
    let s = sample_as(&pg, "watcher", "someone-else").await;
    let theirs = s
        .sessions
        .iter()
        .find(|x| x.application_name.as_deref() == Some("someone-else"))
        .unwrap();
    assert!(!theirs.insufficient_privilege);
    assert_eq!(theirs.state.as_deref(), Some("active"));
    assert_eq!(&**s.query_of(theirs).unwrap(), "SELECT pg_sleep(60)");
    assert!(s.facts.as_ref().unwrap().system_identifier.is_some());
    assert!(
        !s.blind_spots.iter().any(|b| b.contains("pg_monitor")),
        "{:?}",
        s.blind_spots
    );

    // Without: the other user's session is marked, its state and query
    // unknown, and the snapshot says why and how to mend it.
    let s = sample_as(&pg, "outsider", "someone-else").await;
    let theirs = s
        .sessions
        .iter()
        .find(|x| x.application_name.as_deref() == Some("someone-else"))
        .unwrap();
    assert!(theirs.insufficient_privilege, "{theirs:?}");
    assert_eq!(theirs.state, None, "{theirs:?}");
    assert_eq!(theirs.query_id, None, "{theirs:?}");
    assert_eq!(theirs.wait_event, None, "{theirs:?}");
    // Hidden rows do not hide what /proc tells: the process kinds still
    // come from the titles.
    let kinds: Vec<i32> = s.processes.iter().map(|p| p.kind).collect();
    assert!(
        kinds.contains(&(pgtrail_proto::pb::ProcessKind::Checkpointer as i32)),
        "{kinds:?}"
    );
    let theirs_proc = s.processes.iter().find(|p| p.pid == theirs.pid).unwrap();
    assert_eq!(
        theirs_proc.kind,
        pgtrail_proto::pb::ProcessKind::ClientBackend as i32
    );
    let spot = s
        .blind_spots
        .iter()
        .find(|b| b.contains("pg_monitor"))
        .unwrap_or_else(|| panic!("no blind spot names pg_monitor: {:?}", s.blind_spots));
    assert!(
        spot.contains("outsider") && spot.contains("GRANT pg_monitor"),
        "{spot}"
    );
    busy.abort();
}

fn effective_uid() -> u32 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    line.split_whitespace().nth(2).unwrap().parse().unwrap()
}

/// A uid other than ours and the server's (`daemon`, else 1).
fn another_uid() -> u32 {
    std::fs::read_to_string("/etc/passwd")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("daemon:"))
        .and_then(|l| l.split(':').nth(2)?.parse().ok())
        .unwrap_or(1)
}

#[test]
fn another_os_user_sees_unknowns_and_is_told_what_would_allow_them() {
    if effective_uid() != 0 {
        eprintln!("skipped: needs root to run the agent as another user");
        return;
    }
    // The server runs as `nobody`; the embedding example runs as `daemon`,
    // with no capability.
    let pg = PgServer::start().expect("PostgreSQL starts");
    let out = Command::new(example("embed"))
        .args([pg.url().as_str(), "2", "200ms"])
        .uid(another_uid())
        .gid(another_uid())
        .output()
        .expect("the example runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let processes: Vec<&str> = stdout.lines().filter(|l| l.starts_with("  pid=")).collect();
    assert!(processes.len() >= 10, "{stdout}");
    for line in &processes {
        // Unknown, not 0 or empty.
        for field in ["wchan=?", "syscall=?", "pss=?", "uss=?", "read=?"] {
            assert!(line.contains(field), "{field} missing in {line}");
        }
        // What any user may read is still there.
        assert!(
            !line.contains("rss=?") && !line.contains("ctxt=?/"),
            "{line}"
        );
    }
    let advice: Vec<&str> = stdout
        .lines()
        .filter(|l| l.contains("blind spot: io, syscall"))
        .collect();
    assert_eq!(advice.len(), 2, "in every snapshot: {stdout}");
    assert!(
        advice[0].contains("run the agent as the server's OS user (postgres)")
            && advice[0].contains("CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH"),
        "{}",
        advice[0]
    );
    // Said once in the log, not once per sample.
    assert_eq!(
        stderr
            .matches("CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH")
            .count(),
        1,
        "{stderr}"
    );
}
