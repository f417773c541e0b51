//! End to end, through the real binaries and their JSON output: a real
//! PostgreSQL, `pgtrail record` sampling it, and `pgtrail peaks`, `leaks`
//! and `at` asked about sessions the test opened, held and closed.

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use pgtrail_tests::{bin, free_port, PgServer};
use serde_json::Value;

/// A running `pgtrail record` (or any child) stopped with SIGINT on drop.
struct Running {
    child: Child,
}

impl Running {
    fn interrupt(&mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            assert!(Instant::now() < deadline, "did not stop on SIGINT");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn record(pg: &PgServer, data: &Path, port: u16) -> Running {
    let child = Command::new(bin("pgtrail"))
        .args(["record", "--pg", &pg.url(), "--interval", "200ms"])
        .args(["--host-name", "e2e-host"])
        .arg("--data")
        .arg(data)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("pgtrail record starts");
    Running { child }
}

fn pgtrail(server: &str, args: &[&str]) -> Output {
    Command::new(bin("pgtrail"))
        .args(["--server", server])
        .args(args)
        .output()
        .expect("pgtrail runs")
}

fn json(server: &str, args: &[&str]) -> Value {
    let mut all = vec!["--format", "json"];
    all.extend_from_slice(args);
    let out = pgtrail(server, &all);
    assert!(
        out.status.success(),
        "pgtrail {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON output")
}

/// Waits until the recorder answers and has stored `n` samples.
fn wait_for_samples(server: &str, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = pgtrail(server, &["--format", "json", "hosts"]);
        if out.status.success() {
            let hosts: Value = serde_json::from_slice(&out.stdout).unwrap();
            if hosts[0]["samples"].as_u64().unwrap_or(0) >= n {
                return;
            }
        }
        assert!(Instant::now() < deadline, "no samples recorded in time");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn rfc3339_micros(v: &Value) -> i64 {
    let s = v.as_str().unwrap_or_else(|| panic!("a time, got {v}"));
    chrono::DateTime::parse_from_rfc3339(s)
        .unwrap_or_else(|e| panic!("{s}: {e}"))
        .timestamp_micros()
}

fn now_micros() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as i64
}

fn sessions_named<'a>(instance: &'a Value, app: &str) -> Vec<&'a Value> {
    instance["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["application_name"] == app)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn record_answers_peaks_leaks_and_at_about_real_sessions() {
    let pg = PgServer::start_with(&[
        ("max_connections", "40"),
        ("superuser_reserved_connections", "3"),
    ])
    .expect("PostgreSQL starts");
    let data = tempfile::tempdir().unwrap();
    let port = free_port();
    let server = format!("http://127.0.0.1:{port}");
    let mut recorder = record(&pg, data.path(), port);
    wait_for_samples(&server, 2);

    // Two idle sessions, one that leaks a transaction, one busy.
    let idle_a = pg.connect("e2e-idle").await.unwrap();
    let idle_b = pg.connect("e2e-idle").await.unwrap();
    let leak = pg.connect("e2e-leak").await.unwrap();
    let busy = pg.connect("e2e-active").await.unwrap();
    leak.batch_execute("BEGIN").await.unwrap();
    let leak_pid: i32 = leak
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    let idle_since = Instant::now();
    let sleeping = tokio::spawn(async move {
        busy.batch_execute("SELECT pg_sleep(3)").await.unwrap();
        busy
    });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let moment = now_micros();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let held = idle_since.elapsed();
    leak.batch_execute("COMMIT").await.unwrap();
    let busy = sleeping.await.unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    drop((idle_a, idle_b, leak, busy));
    tokio::time::sleep(Duration::from_millis(600)).await;

    // peaks: 2 idle + 1 idle in transaction + the sleeper + the agent's
    // own session (active while it samples).
    let peaks = json(&server, &["peaks", "--since", "5m"]);
    let peaks = peaks.as_array().unwrap();
    assert_eq!(peaks.len(), 1, "{peaks:?}");
    let p = &peaks[0];
    assert_eq!(p["host"], "e2e-host");
    assert_eq!(p["port"], pg.port());
    assert_eq!(p["total"], 5, "{p}");
    assert_eq!(p["by_state"]["idle"], 2, "{p}");
    assert_eq!(p["by_state"]["idle in transaction"], 1, "{p}");
    assert_eq!(p["by_state"]["active"], 2, "{p}");
    assert_eq!(p["max_connections"], 40);
    assert_eq!(p["superuser_reserved_connections"], 3);
    assert_eq!(p["pct_used"], 12.5);
    assert_eq!(p["pct_of_user_limit"], 13.5);
    let at = rfc3339_micros(&p["at"]);
    assert!(at > moment - 3_000_000 && at < moment + 3_000_000, "{p}");

    // leaks: exactly the one transaction, as long as it was held.
    let leaks = json(&server, &["leaks", "--since", "5m", "--min", "2s"]);
    let leaks = leaks.as_array().unwrap();
    assert_eq!(leaks.len(), 1, "{leaks:?}");
    let l = &leaks[0];
    assert_eq!(l["pid"], leak_pid);
    assert_eq!(l["application_name"], "e2e-leak");
    assert_eq!(l["user"], "postgres");
    assert_eq!(l["database"], "postgres");
    assert_eq!(l["client_addr"], "127.0.0.1");
    assert_eq!(l["last_query"], "SELECT pg_backend_pid()");
    assert!(!l["ended"].is_null(), "{l}");
    let duration = l["duration_s"].as_f64().unwrap();
    assert!(
        (duration - held.as_secs_f64()).abs() < 0.3,
        "held {held:?}, reported {duration}"
    );
    let started = rfc3339_micros(&l["started"]);
    assert!(rfc3339_micros(&l["xact_start"]) <= started);
    assert!(rfc3339_micros(&l["backend_start"]) <= started);
    let none = json(&server, &["leaks", "--since", "5m", "--min", "10s"]);
    assert_eq!(none, Value::Array(vec![]));

    // at: every session as it was in the middle of it all.
    let at = json(&server, &["at", &rfc3339(moment)]);
    let inst = &at.as_array().unwrap()[0];
    assert_eq!(inst["host"], "e2e-host");
    assert_eq!(inst["port"], pg.port());
    let sampled = rfc3339_micros(&inst["sampled_at"]);
    assert!(
        sampled <= moment && sampled > moment - 1_000_000,
        "{}",
        inst["sampled_at"]
    );
    let idle = sessions_named(inst, "e2e-idle");
    assert_eq!(idle.len(), 2);
    assert!(idle.iter().all(|s| s["state"] == "idle"));
    let leaking = sessions_named(inst, "e2e-leak");
    assert_eq!(leaking.len(), 1);
    assert_eq!(leaking[0]["pid"], leak_pid);
    assert_eq!(leaking[0]["state"], "idle in transaction");
    let active = sessions_named(inst, "e2e-active");
    assert_eq!(active.len(), 1);
    assert_eq!(active[0]["state"], "active");
    assert_eq!(active[0]["wait_event"], "PgSleep");
    assert_eq!(active[0]["query"], "SELECT pg_sleep(3)");
    for s in idle.iter().chain(&leaking).chain(&active) {
        assert!(s["os_state"].is_string(), "joined with its process: {s}");
        assert!(s["rss_bytes"].as_u64().unwrap() > 0, "{s}");
        assert!(s["cpu_pct"].is_number(), "{s}");
        assert_eq!(s["backend_type"], "client backend");
    }
    let kinds: Vec<&str> = inst["processes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["kind"].as_str().unwrap())
        .collect();
    for kind in ["postmaster", "checkpointer", "walwriter", "client backend"] {
        assert!(kinds.contains(&kind), "{kind} missing from {kinds:?}");
    }
    let postmaster = inst["processes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["kind"] == "postmaster")
        .unwrap();
    assert_eq!(postmaster["pid"], pg.postmaster_pid().unwrap());

    // Mistakes are one line and lose nothing.
    let out = pgtrail(&server, &["peaks", "--host", "nosuch"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        err.trim(),
        "error: no instance on host \"nosuch\" is known; known hosts: e2e-host"
    );

    // Ctrl-C stops cleanly and the history stays.
    assert!(recorder.interrupt().success());
    let port = free_port();
    let server = format!("http://127.0.0.1:{port}");
    let _again = record(&pg, data.path(), port);
    wait_for_samples(&server, 1);
    let leaks = json(&server, &["leaks", "--since", "5m", "--min", "2s"]);
    assert_eq!(
        leaks.as_array().unwrap().len(),
        1,
        "history kept across restarts"
    );
}

/// RFC 3339 in UTC for a time in microseconds.
fn rfc3339(micros: i64) -> String {
    chrono::DateTime::from_timestamp_micros(micros)
        .unwrap()
        .to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}
