//! Durable delivery through the real binaries: every sample the agent takes
//! reaches the collector exactly once, across a collector stopped and
//! restarted, a collector killed with SIGKILL mid-stream, and an agent
//! restarted with snapshots still in its spool; and a second agent pointed
//! at a spool in use is refused, leaving the first alone.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use pgtrail_tests::{bin, free_port, PgServer};
use serde_json::Value;

use common::{collector, Proc};

/// Where a test keeps, in `dir`, the collector's store, the agent's spool
/// and the agent's log.
fn paths(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    (dir.join("store"), dir.join("spool"), dir.join("agent.log"))
}

/// An agent sampling `pg` every 200 ms into `spool`, logging to `log`.
fn agent(pg: &PgServer, port: u16, spool: &Path, log: &Path) -> Proc {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    Proc(
        Command::new(bin("pgtrail-agent"))
            .args(["--pg", &pg.url()])
            .args(["--collector", &format!("http://127.0.0.1:{port}")])
            .args(["--interval", "200ms", "--host-name", "db-1"])
            .arg("--spool-dir")
            .arg(spool)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("agent starts"),
    )
}

fn hosts(port: u16) -> Option<Value> {
    let out = Command::new(bin("pgtrail"))
        .args(["--server", &format!("http://127.0.0.1:{port}")])
        .args(["--format", "json", "hosts"])
        .output()
        .expect("pgtrail runs");
    out.status
        .success()
        .then(|| serde_json::from_slice(&out.stdout).expect("JSON"))
}

/// Waits until the one instance has at least `n` samples stored.
fn wait_for(port: u16, n: u64) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(h) = hosts(port) {
            if h[0]["samples"].as_u64().unwrap_or(0) >= n {
                return h[0].clone();
            }
        }
        assert!(
            Instant::now() < deadline,
            "the collector did not reach {n} samples: {:?}",
            hosts(port)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A counter summed over every agent run logged in `log` (the stop line,
/// "agent stopped samples=N failures=N overruns=N dropped=N ...").
fn counted(log: &Path, name: &str) -> u64 {
    let text = std::fs::read_to_string(log).unwrap();
    let key = format!("{name}=");
    let runs: Vec<u64> = text
        .lines()
        .filter(|l| l.contains("agent stopped"))
        .map(|l| {
            let at = l.find(&key).expect("the counter in the stop line") + key.len();
            l[at..]
                .split(|c: char| !c.is_ascii_digit())
                .next()
                .unwrap()
                .parse()
                .unwrap()
        })
        .collect();
    assert!(!runs.is_empty(), "no agent stopped cleanly:\n{text}");
    runs.iter().sum()
}

/// Samples taken by every agent run logged in `log`.
fn samples_taken(log: &Path) -> u64 {
    counted(log, "samples")
}

/// Samples the agent runs logged in `log` lost or skipped, and reported.
fn losses(log: &Path) -> u64 {
    counted(log, "overruns") + counted(log, "dropped")
}

/// Asserts that every sample the agent runs logged in `log` took is stored
/// once, that nothing was dropped but what they reported lost, and that
/// nothing is left in `spool`. Waits for the collector on `port` to have
/// them all first.
fn assert_delivered_once(port: u16, log: &Path, spool: &Path) {
    let taken = samples_taken(log);
    let inst = wait_for(port, taken);
    assert_eq!(inst["samples"].as_u64().unwrap(), taken, "{inst}");
    // Nothing dropped but samples a loaded machine could not take in time
    // (counted and reported, never silent).
    assert_eq!(inst["dropped"].as_u64().unwrap(), losses(log), "{inst}");
    assert_eq!(
        segments(spool),
        0,
        "everything acknowledged leaves the spool"
    );
}

fn segments(spool: &Path) -> usize {
    std::fs::read_dir(spool)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".seg")
        })
        .count()
}

#[test]
fn every_sample_arrives_once_across_a_stopped_and_a_killed_collector() {
    let pg = PgServer::start().expect("PostgreSQL starts");
    let dir = tempfile::tempdir().unwrap();
    let (data, spool, log) = paths(dir.path());
    let port = free_port();
    let coll = collector(&data, port);
    let a = agent(&pg, port, &spool, &log);
    let before = wait_for(port, 3)["samples"].as_u64().unwrap();

    // Stopped for a while, then back.
    coll.terminate();
    std::thread::sleep(Duration::from_secs(2));
    let coll = collector(&data, port);
    let n = wait_for(port, before + 12)["samples"].as_u64().unwrap();

    // Killed mid-stream: whatever it had not acknowledged is sent again,
    // and what it had stored is not counted twice.
    coll.kill();
    std::thread::sleep(Duration::from_secs(2));
    let coll = collector(&data, port);
    wait_for(port, n + 12);

    a.terminate();
    assert_delivered_once(port, &log, &spool);
    coll.terminate();
}

#[test]
fn a_restarted_agent_resumes_its_spool() {
    let pg = PgServer::start().expect("PostgreSQL starts");
    let dir = tempfile::tempdir().unwrap();
    let (data, spool, log) = paths(dir.path());
    let port = free_port();

    // No collector yet: the first run's samples wait in the spool.
    let a = agent(&pg, port, &spool, &log);
    std::thread::sleep(Duration::from_secs(2));
    a.terminate();
    let first_run = samples_taken(&log);
    assert!(first_run >= 3, "{first_run}");
    assert!(
        segments(&spool) > 0,
        "the first run left its samples on disk"
    );

    let coll = collector(&data, port);
    let a = agent(&pg, port, &spool, &log);
    let inst = wait_for(port, first_run + 5);
    // The spooled samples came first: the history starts at the first run.
    let first =
        chrono::DateTime::parse_from_rfc3339(inst["first_sample"].as_str().unwrap()).unwrap();
    let last = chrono::DateTime::parse_from_rfc3339(inst["last_sample"].as_str().unwrap()).unwrap();
    assert!((last - first).num_milliseconds() >= 2000, "{inst}");
    a.terminate();

    assert!(samples_taken(&log) > first_run);
    assert_delivered_once(port, &log, &spool);
    coll.terminate();
}

#[test]
fn a_full_spool_reports_its_losses() {
    let pg = PgServer::start().expect("PostgreSQL starts");
    let dir = tempfile::tempdir().unwrap();
    let (data, spool, log) = paths(dir.path());
    let port = free_port();
    // The smallest spool holds a few dozen samples of an idle server.
    let config = dir.path().join("agent.toml");
    std::fs::write(&config, "spool_max_bytes = 65536\n").unwrap();
    let mut cmd = Command::new(bin("pgtrail-agent"));
    cmd.arg("--config").arg(&config);
    let log_file = std::fs::File::create(&log).unwrap();
    let a = Proc(
        cmd.args(["--pg", &pg.url()])
            .args(["--collector", &format!("http://127.0.0.1:{port}")])
            .args(["--interval", "50ms", "--host-name", "db-1"])
            .arg("--spool-dir")
            .arg(&spool)
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .unwrap(),
    );
    // Long enough to overflow it.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !std::fs::read_to_string(&log)
        .unwrap()
        .contains("spool full")
    {
        assert!(Instant::now() < deadline, "the spool never filled");
        std::thread::sleep(Duration::from_millis(200));
    }
    let coll = collector(&data, port);
    wait_for(port, 1);
    a.terminate();
    let taken = samples_taken(&log);
    let inst = hosts(port).unwrap()[0].clone();
    let stored = inst["samples"].as_u64().unwrap();
    let dropped = inst["dropped"].as_u64().unwrap();
    // Every sample is either stored or counted as dropped (a sample that
    // overran its interval is counted as dropped without being taken).
    assert!(dropped > 0 && stored < taken, "{inst}");
    assert!(
        stored + dropped >= taken,
        "{stored} + {dropped} < {taken}: {inst}"
    );
    coll.terminate();
}

#[test]
fn a_second_agent_on_the_same_spool_is_refused() {
    let pg = PgServer::start().expect("PostgreSQL starts");
    let dir = tempfile::tempdir().unwrap();
    let (_, spool, log) = paths(dir.path());
    // No collector: the first agent spools what it takes.
    let first = agent(&pg, free_port(), &spool, &log);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !spool.exists() || segments(&spool) == 0 {
        assert!(Instant::now() < deadline, "the first agent never spooled");
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut second = Proc(
        Command::new(bin("pgtrail-agent"))
            .args(["--pg", &pg.url()])
            .args(["--collector", "http://127.0.0.1:9"])
            .args(["--host-name", "db-2"])
            .arg("--spool-dir")
            .arg(&spool)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = second.0.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "the second agent kept running");
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut second.0.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(!status.success());
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("in use by another agent"), "{stderr}");
    // The first agent was left alone: still running, its spool whole.
    let mut first = first;
    assert!(
        first.0.try_wait().unwrap().is_none(),
        "the first agent died"
    );
    first.terminate();
    assert!(samples_taken(&log) > 0);
    assert!(segments(&spool) > 0, "the spooled samples are still there");
}
