//! End to end, through the real binaries and their JSON output: a real
//! PostgreSQL, `pgtrail record` sampling it, and `pgtrail peaks`, `leaks`
//! and `at` asked about sessions the test opened, held and closed.

mod common;

use std::time::{Duration, Instant};

use common::{micros as rfc3339_micros, now_micros, rfc3339, Recorder};
use pgtrail_tests::PgServer;
use serde_json::Value;

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
    let mut recorder = Recorder::start(&pg, data.path(), "e2e-host");

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
    // own session (active while it samples). Over the last minutes the
    // first sample with five sessions may come before they all settled
    // (a backend still starting, the leak not yet in its transaction), so
    // the states are asked of a window inside the settled stretch.
    let peaks = recorder.json(&["peaks", "--since", "5m"]);
    let peaks = peaks.as_array().unwrap();
    assert_eq!(peaks.len(), 1, "{peaks:?}");
    assert_eq!(peaks[0]["total"], 5, "{}", peaks[0]);
    let settled = recorder.json(&[
        "peaks",
        "--from",
        &rfc3339(moment - 1_000_000),
        "--to",
        &rfc3339(moment + 1_000_000),
    ]);
    let settled = settled.as_array().unwrap();
    assert_eq!(settled.len(), 1, "{settled:?}");
    let p = &settled[0];
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
    assert!(at >= moment - 1_000_000 && at <= moment + 1_000_000, "{p}");

    // leaks: exactly the one transaction, as long as it was held.
    let leaks = recorder.json(&["leaks", "--since", "5m", "--min", "2s"]);
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
    let none = recorder.json(&["leaks", "--since", "5m", "--min", "10s"]);
    assert_eq!(none, Value::Array(vec![]));

    // at: every session as it was in the middle of it all.
    let at = recorder.json(&["at", &rfc3339(moment)]);
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
    let out = recorder.run(&["peaks", "--host", "nosuch"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        err.trim(),
        "error: no instance on host \"nosuch\" is known; known hosts: e2e-host"
    );

    // Ctrl-C stops cleanly and the history stays.
    assert!(recorder.interrupt());
    let again = Recorder::start(&pg, data.path(), "e2e-host");
    let leaks = again.json(&["leaks", "--since", "5m", "--min", "2s"]);
    assert_eq!(
        leaks.as_array().unwrap().len(),
        1,
        "history kept across restarts"
    );
}
