//! The fleet path, through the real binaries: `pgtrail-agent` streams over
//! gRPC to `pgtrail-collector`, which keeps going when the collector is
//! killed and restarted, and the CLI reads it all back.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use pgtrail_tests::{bin, free_port, PgServer};
use serde_json::Value;

use common::{collector, Proc};

fn hosts(server: &str) -> Option<Value> {
    let out = Command::new(bin("pgtrail"))
        .args(["--server", server, "--format", "json", "hosts"])
        .output()
        .expect("pgtrail runs");
    out.status
        .success()
        .then(|| serde_json::from_slice(&out.stdout).expect("JSON"))
}

/// Waits until the collector has `n` samples of the one instance.
fn wait_for(server: &str, n: u64) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(h) = hosts(server) {
            if h[0]["samples"].as_u64().unwrap_or(0) >= n {
                return h;
            }
        }
        assert!(
            Instant::now() < deadline,
            "collector did not reach {n} samples"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn the_agent_streams_to_the_collector_and_survives_its_restart() {
    let pg = PgServer::start().expect("PostgreSQL starts");
    let data = tempfile::tempdir().unwrap();
    let port = free_port();
    let server = format!("http://127.0.0.1:{port}");
    let mut coll = collector(data.path(), port);
    let _agent = Proc(
        Command::new(bin("pgtrail-agent"))
            .args(["--pg", &pg.url(), "--collector", &server])
            .args(["--interval", "200ms", "--host-name", "db-fleet-1"])
            .arg("--spool-dir")
            .arg(data.path().join("spool"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("agent starts"),
    );
    let h = wait_for(&server, 3);
    let inst = &h[0];
    assert_eq!(inst["host"], "db-fleet-1");
    assert_eq!(inst["instance"], pg.port().to_string());
    assert_eq!(inst["port"], pg.port());
    assert!(inst["version"]
        .as_str()
        .unwrap()
        .starts_with(char::is_numeric));
    assert_eq!(inst["max_connections"], 100);
    assert!(inst["system_identifier"].is_string());

    // Kill the collector mid-stream; samples taken meanwhile wait in the
    // agent's queue and arrive after the restart.
    coll.kill();
    let before = inst["samples"].as_u64().unwrap();
    std::thread::sleep(Duration::from_secs(2));
    coll = collector(data.path(), port);
    let h = wait_for(&server, before + 12);
    let inst = &h[0];
    let first =
        chrono::DateTime::parse_from_rfc3339(inst["first_sample"].as_str().unwrap()).unwrap();
    let last = chrono::DateTime::parse_from_rfc3339(inst["last_sample"].as_str().unwrap()).unwrap();
    let span = (last - first).num_milliseconds() as f64 / 1000.0;
    let samples = inst["samples"].as_u64().unwrap() as f64;
    // Every 200 ms across the outage: no hole of two seconds.
    assert!(
        samples >= span / 0.2 * 0.8,
        "{samples} samples over {span} s: the outage left a gap"
    );
    assert_eq!(inst["dropped"], 0);
    drop(coll);
}
