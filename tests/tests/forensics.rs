//! Every forensic question, end to end: the situation is created in a
//! real PostgreSQL while `pgtrail record` samples it, then the real CLI is
//! asked and its JSON (or table) answer checked.

mod common;

use std::time::{Duration, Instant};

use common::{micros, rows, Recorder};
use pgtrail_tests::PgServer;
use serde_json::Value;

fn app<'a>(list: &'a [Value], name: &str) -> Vec<&'a Value> {
    list.iter()
        .filter(|r| r["application_name"] == name)
        .collect()
}

/// Locks, slow queries, idle connections, wait events, peaks by
/// application and per bucket, leak summaries, memory and the process tree,
/// all from one recorded stretch of a busy server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_questions() {
    let pg = PgServer::start_with(&[("max_connections", "30"), ("work_mem", "1GB")])
        .expect("PostgreSQL starts");
    pg.execute("CREATE TABLE t (id int PRIMARY KEY, v int); INSERT INTO t VALUES (1, 0);")
        .await
        .unwrap();
    let data = tempfile::tempdir().unwrap();
    let rec = Recorder::start(&pg, data.path(), "db-forensics");

    // An idle connection that stays idle; a holder idle in transaction with
    // a row lock; two waiters behind it; a long pg_sleep.
    let idle = pg.connect("f-idle").await.unwrap();
    idle.batch_execute("SELECT 1").await.unwrap();
    let holder = pg.connect("f-holder").await.unwrap();
    holder.batch_execute("BEGIN").await.unwrap();
    holder
        .batch_execute("UPDATE t SET v = 1 WHERE id = 1")
        .await
        .unwrap();
    let holder_pid: i32 = holder
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    let mut waiters = Vec::new();
    for name in ["f-waiter-a", "f-waiter-b"] {
        let c = pg.connect(name).await.unwrap();
        let pid: i32 = c
            .query_one("SELECT pg_backend_pid()", &[])
            .await
            .unwrap()
            .get(0);
        waiters.push((
            pid,
            tokio::spawn(async move {
                c.batch_execute("UPDATE t SET v = 2 WHERE id = 1")
                    .await
                    .unwrap();
                c
            }),
        ));
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let sleeper = pg.connect("f-sleep").await.unwrap();
    let sleep_started = Instant::now();
    let sleeping = tokio::spawn(async move {
        sleeper.batch_execute("SELECT pg_sleep(2.5)").await.unwrap();
        sleeper
    });
    tokio::time::sleep(Duration::from_millis(2500)).await;
    holder.batch_execute("COMMIT").await.unwrap();
    let mut held = Vec::new();
    for (pid, w) in waiters {
        held.push((pid, w.await.unwrap()));
    }
    let sleeper = sleeping.await.unwrap();
    let slept = sleep_started.elapsed();
    // Keep the idle connection idle past the idle floor (5 s).
    tokio::time::sleep(Duration::from_millis(3500)).await;
    rec.settle();

    // locks: both waits, the holder flagged idle in transaction.
    let locks = rec.json(&["locks", "--since", "5m"]);
    let locks = rows(&locks);
    assert_eq!(locks.len(), 2, "{locks:#?}");
    for (pid, _) in &held {
        let wait = locks
            .iter()
            .find(|l| l["pid"] == *pid)
            .expect("each waiter");
        assert!(wait["duration_s"].as_f64().unwrap() >= 1.5, "{wait}");
        assert!(!wait["ended"].is_null());
        assert_eq!(wait["query"], "UPDATE t SET v = 2 WHERE id = 1");
    }
    let first = locks
        .iter()
        .find(|l| l["application_name"] == "f-waiter-a")
        .unwrap();
    let blocker = &first["blockers"][0];
    assert_eq!(blocker["pid"], holder_pid);
    assert_eq!(blocker["idle_in_transaction"], true);
    assert_eq!(blocker["application_name"], "f-holder");
    assert_eq!(blocker["query"], "SELECT pg_backend_pid()");
    assert_eq!(first["blocked_by_idle_in_transaction"], true);
    let tree = rec.table(&["locks", "--since", "5m"]);
    let root = tree
        .lines()
        .find(|l| l.starts_with(&format!("pid {holder_pid} ")))
        .unwrap_or_else(|| panic!("the holder is a root:\n{tree}"));
    assert!(root.contains("[IDLE IN TRANSACTION]"), "{tree}");
    assert!(tree.contains("└─ pid "), "{tree}");

    // slow: the pg_sleep, with its wait event.
    let slow = rec.json(&["slow", "--since", "5m", "--min", "2s"]);
    let slow = rows(&slow);
    let sleep = app(slow, "f-sleep");
    assert_eq!(sleep.len(), 1, "{slow:#?}");
    assert_eq!(sleep[0]["query"], "SELECT pg_sleep(2.5)");
    let d = sleep[0]["duration_s"].as_f64().unwrap();
    assert!(
        (d - slept.as_secs_f64()).abs() < 0.4,
        "slept {slept:?}, reported {d}"
    );
    assert!(sleep[0]["wait_events"]["Timeout:PgSleep"].as_u64().unwrap() >= 5);

    // --limit: the longest of them, and a note on stderr that more matched.
    let every = rec.run(&[
        "--format", "json", "slow", "--since", "5m", "--min", "1s", "--limit", "0",
    ]);
    assert!(every.status.success());
    assert!(
        every.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&every.stderr)
    );
    let every: serde_json::Value = serde_json::from_slice(&every.stdout).unwrap();
    let every = rows(&every);
    assert!(
        every.len() >= 3,
        "the two lock waits and the sleep: {every:#?}"
    );
    let longest = every
        .iter()
        .map(|e| e["duration_s"].as_f64().unwrap())
        .fold(0.0, f64::max);
    let one = rec.run(&[
        "--format", "json", "slow", "--since", "5m", "--min", "1s", "--limit", "1",
    ]);
    assert!(one.status.success());
    assert_eq!(
        String::from_utf8_lossy(&one.stderr).trim(),
        "note: the 1 longest episodes; more matched (--limit 0 shows all)"
    );
    let one: serde_json::Value = serde_json::from_slice(&one.stdout).unwrap();
    let one = rows(&one);
    assert_eq!(one.len(), 1, "{one:#?}");
    assert_eq!(one[0]["duration_s"].as_f64().unwrap(), longest);

    // idle: the connection that did nothing.
    let idle_rows = rec.json(&["idle", "--since", "5m", "--min", "5s"]);
    let idle_rows = rows(&idle_rows);
    let quiet = app(idle_rows, "f-idle");
    assert_eq!(quiet.len(), 1, "{idle_rows:#?}");
    assert!(quiet[0]["ended"].is_null(), "still idle");
    assert!(quiet[0]["duration_s"].as_f64().unwrap() >= 5.0);
    assert_eq!(quiet[0]["last_query"], "SELECT 1");

    // waits: the lock waits and the sleep, with their queries.
    let waits = rec.json(&["waits", "--since", "5m"]);
    let waits = rows(&waits);
    let lock = waits
        .iter()
        .find(|w| w["event_type"] == "Lock")
        .unwrap_or_else(|| panic!("a Lock wait: {waits:#?}"));
    assert!(lock["samples"].as_u64().unwrap() >= 10, "{lock}");
    assert_eq!(
        lock["top_queries"][0]["query"],
        "UPDATE t SET v = 2 WHERE id = 1"
    );
    let timeout = waits
        .iter()
        .find(|w| w["event"] == "PgSleep")
        .expect("the sleep");
    assert_eq!(timeout["top_queries"][0]["query"], "SELECT pg_sleep(2.5)");

    // peaks by application and per minute.
    let by_app = rec.json(&["peaks", "--since", "5m", "--by", "application"]);
    let by_app = rows(&by_app);
    for name in ["f-idle", "f-holder", "f-waiter-a", "f-waiter-b", "f-sleep"] {
        let row = by_app
            .iter()
            .find(|r| r["application"] == name)
            .expect(name);
        assert_eq!(row["total"], 1, "{row}");
    }
    let buckets = rec.json(&["peaks", "--since", "5m", "--bucket", "1m"]);
    let buckets = rows(&buckets);
    assert!(!buckets.is_empty());
    let best = buckets
        .iter()
        .map(|b| b["total"].as_u64().unwrap())
        .max()
        .unwrap();
    // 5 sessions + the agent's own.
    assert_eq!(best, 6, "{buckets:#?}");
    for b in buckets {
        assert_eq!(micros(&b["bucket"]) % 60_000_000, 0);
    }

    // leaks summed up by application: the holder's one episode.
    let grouped = rec.json(&[
        "leaks",
        "--since",
        "5m",
        "--min",
        "1s",
        "--group-by",
        "application",
    ]);
    let grouped = rows(&grouped);
    let h = grouped
        .iter()
        .find(|g| g["application_name"] == "f-holder")
        .unwrap();
    assert_eq!(h["episodes"], 1);
    assert!(h["longest_s"].as_f64().unwrap() >= 2.0);

    // mem: top processes and the worst case with work_mem = 1GB.
    let mem = rec.json(&["mem", "--since", "5m", "--top", "3"]);
    let m = &rows(&mem)[0];
    assert_eq!(rows(&m["top"]).len(), 3);
    assert!(m["top"][0]["rss_bytes"].as_u64().unwrap() > 0);
    assert_eq!(m["work_mem_bytes"], 1u64 << 30);
    let expected = (1u64 << 30) as f64
        * m["hash_mem_multiplier"].as_f64().unwrap()
        * 3.0
        * (1.0 + m["max_parallel_workers_per_gather"].as_f64().unwrap())
        * 30.0;
    assert_eq!(m["worst_case_bytes"].as_f64().unwrap(), expected);
    assert_eq!(m["exceeds_limit"], true, "{m}");
    assert!(m["max_rss_total_bytes"].as_u64().unwrap() > 0);

    // ps: the tree under the postmaster.
    let ps = rec.table(&["ps"]);
    let pm = pg.postmaster_pid().unwrap();
    assert!(ps.contains(&format!("postgres({pm})─┬─postgres(")), "{ps}");
    assert!(ps.contains("checkpointer"), "{ps}");
    assert!(
        ps.contains("client backend postgres postgres 127.0.0.1 idle"),
        "{ps}"
    );
    let ps_rows = rec.json(&["ps"]);
    let kinds: Vec<&str> = rows(&ps_rows)
        .iter()
        .map(|p| p["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds[0], "postmaster");
    assert!(kinds.contains(&"walwriter"));
    drop((idle, holder, held, sleeper));
}

/// A burst of short connections is churn a pooler would remove.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn churn_of_short_connections() {
    let pg = PgServer::start().expect("PostgreSQL starts");
    let data = tempfile::tempdir().unwrap();
    let rec = Recorder::start(&pg, data.path(), "db-churn");
    let watcher = pg.connect("f-version").await.unwrap();
    let version: i32 = watcher
        .query_one("SELECT current_setting('server_version_num')::int4", &[])
        .await
        .unwrap()
        .get(0);
    // The server counts a session when its backend has exited, which can
    // lag behind the client's disconnect on a busy machine: wait for it.
    let counted = || async {
        let n: i64 = watcher
            .query_one(
                "SELECT coalesce(sum(sessions), 0)::int8 FROM pg_stat_database",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        n
    };
    let before = if version >= 140000 {
        counted().await
    } else {
        0
    };
    for _ in 0..60 {
        let c = pg.connect("f-burst").await.unwrap();
        c.batch_execute("SELECT 1").await.unwrap();
    }
    if version >= 140000 {
        let deadline = Instant::now() + Duration::from_secs(20);
        while counted().await < before + 60 {
            assert!(
                Instant::now() < deadline,
                "the server never counted the burst"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    rec.settle();
    let churn = rec.json(&["churn", "--since", "5m"]);
    let c = &rows(&churn)[0];
    if version < 140000 {
        // Before 14 the server keeps no session count, and connections
        // this short fall between samples: churn can only count what it saw.
        assert_eq!(c["counted_by_server"], false, "{c}");
        assert!(c["sessions_started"].as_u64().unwrap() < 60, "{c}");
        return;
    }
    assert_eq!(
        c["counted_by_server"], true,
        "PostgreSQL 14+ counts sessions"
    );
    assert!(c["sessions_started"].as_u64().unwrap() >= 60, "{c}");
    assert!(c["max_per_minute"].as_u64().unwrap() >= 30, "{c}");
    assert!(c["short_lived_pct"].as_f64().unwrap() >= 90.0, "{c}");
    let hint = c["hint"].as_str().unwrap();
    assert!(
        hint.contains("pooler") && !hint.starts_with("no sign"),
        "{hint}"
    );
}

/// Time at the connection limit, then a backend killed with SIGKILL,
/// which makes the postmaster reset every child: a crash restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_sees_the_connection_limit_and_a_crash_restart() {
    // A non-superuser limit of 10 - 3 = 7 connections.
    let pg = PgServer::start_with(&[
        ("max_connections", "10"),
        ("superuser_reserved_connections", "3"),
    ])
    .expect("PostgreSQL starts");
    let data = tempfile::tempdir().unwrap();
    let rec = Recorder::start(&pg, data.path(), "db-crash");
    let ok = rec.json(&["health", "--since", "5m"]);
    assert_eq!(rows(&ok)[0]["verdict"], "ok", "{ok}");

    // The agent's session and 6 more: 7 of 7, above 95 %.
    let mut full = Vec::new();
    for _ in 0..6 {
        full.push(pg.connect("f-full").await.unwrap());
    }
    let at_limit = Instant::now();
    tokio::time::sleep(Duration::from_millis(2000)).await;
    drop(full);
    let held = at_limit.elapsed().as_secs_f64();
    rec.settle();
    let health = rec.json(&["health", "--since", "5m"]);
    let h = &rows(&health)[0];
    let above_95 = h["above_95_pct_s"].as_f64().unwrap();
    assert!(above_95 >= 1.4 && above_95 <= held + 0.5, "{h:#}");
    assert!(h["above_80_pct_s"].as_f64().unwrap() >= above_95);
    assert!(h["verdict"]
        .as_str()
        .unwrap()
        .contains("near the connection limit"));

    let victim = pg.connect("f-victim").await.unwrap();
    let pid: i32 = victim
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    let status = std::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let before = rec.samples();
    rec.wait_for_samples(before + 5);
    let health = rec.json(&["health", "--since", "5m"]);
    let h = &rows(&health)[0];
    assert_eq!(h["crash_restarts"], 1, "{h:#}");
    assert_ne!(h["verdict"], "ok");
    let events = rows(&h["events"]);
    assert!(
        events.iter().any(|e| e["detail"] == "crash restart"),
        "{events:#?}"
    );
    let table = rec.table(&["health", "--since", "5m"]);
    assert!(table.contains("crash restart"), "{table}");
}

/// Autovacuum workers at autovacuum_max_workers for a while.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_sees_autovacuum_at_its_limit() {
    let pg = PgServer::start_with(&[
        ("autovacuum_max_workers", "1"),
        ("autovacuum_naptime", "1s"),
        ("autovacuum_vacuum_cost_delay", "100ms"),
        ("autovacuum_vacuum_cost_limit", "1"),
    ])
    .expect("PostgreSQL starts");
    pg.execute(
        "CREATE TABLE big (id int, pad text) WITH (autovacuum_vacuum_threshold = 1, autovacuum_vacuum_scale_factor = 0);
         INSERT INTO big SELECT g, repeat('x', 200) FROM generate_series(1, 50000) g;
         DELETE FROM big;",
    )
    .await
    .unwrap();
    let data = tempfile::tempdir().unwrap();
    let rec = Recorder::start(&pg, data.path(), "db-vacuum");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let health = rec.json(&["health", "--since", "5m"]);
        let h = &rows(&health)[0];
        if h["autovacuum_saturated_s"].as_f64().unwrap_or(0.0) >= 1.0 {
            assert_eq!(h["max_autovacuum_workers_seen"], 1);
            assert_eq!(h["autovacuum_max_workers"], 1);
            assert!(
                h["verdict"]
                    .as_str()
                    .unwrap()
                    .contains("autovacuum saturated"),
                "{h}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "autovacuum never seen busy: {h:#}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}
