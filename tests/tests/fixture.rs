//! The fixtures themselves: a [`PgServer`] really starts, honours its
//! settings, answers on its URL, survives a restart with its data, and is
//! gone, process and files, once dropped.

use std::path::Path;
use std::time::{Duration, Instant};

use pgtrail_tests::{bin, free_port, PgServer};

/// Whether a process is alive: `/proc/PID` exists and it is not a zombie
/// waiting for a parent that may never reap it.
fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // pid (comm) STATE ...; comm may hold spaces and parentheses.
        Ok(stat) => stat
            .rsplit_once(") ")
            .and_then(|(_, rest)| rest.chars().next())
            .is_some_and(|state| state != 'Z' && state != 'X'),
        Err(_) => false,
    }
}

fn wait_until_gone(pid: i32) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while alive(pid) {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    true
}

async fn setting(pg: &PgServer, name: &str) -> String {
    let client = pg.connect("fixture-test").await.expect("connects");
    client
        .query_one("SELECT current_setting($1)", &[&name])
        .await
        .expect("current_setting")
        .get(0)
}

#[tokio::test]
async fn a_server_starts_with_its_settings_and_answers_on_its_url() {
    let pg = PgServer::start_with(&[("max_connections", "37"), ("work_mem", "5MB")])
        .expect("PostgreSQL starts");

    assert_ne!(pg.port(), 0);
    assert_eq!(
        pg.url(),
        format!("postgresql://postgres@127.0.0.1:{}/postgres", pg.port())
    );
    assert!(pg.data_dir().join("PG_VERSION").is_file());
    assert!(pg.bin_dir().join("initdb").is_file());
    assert!(pg.bin_dir().join("pg_ctl").is_file());

    assert_eq!(setting(&pg, "max_connections").await, "37");
    assert_eq!(setting(&pg, "work_mem").await, "5MB");
    assert_eq!(setting(&pg, "port").await, pg.port().to_string());
    assert_eq!(setting(&pg, "listen_addresses").await, "127.0.0.1");
    assert_eq!(setting(&pg, "fsync").await, "off");

    let client = pg.connect("fixture-app").await.unwrap();
    let row = client
        .query_one(
            "SELECT current_user::text, current_database()::text, \
                    current_setting('application_name'), \
                    current_setting('server_encoding')",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "postgres");
    assert_eq!(row.get::<_, String>(1), "postgres");
    assert_eq!(row.get::<_, String>(2), "fixture-app");
    assert_eq!(row.get::<_, String>(3), "UTF8");
}

#[tokio::test]
async fn default_settings_are_postgres_defaults() {
    let pg = PgServer::start().expect("PostgreSQL starts");
    assert_eq!(setting(&pg, "max_connections").await, "100");
}

#[tokio::test]
async fn execute_runs_a_batch_as_superuser() {
    let pg = PgServer::start().expect("PostgreSQL starts");
    pg.execute("CREATE TABLE t (x int); INSERT INTO t VALUES (1), (2), (3)")
        .await
        .expect("batch runs");
    pg.execute("CREATE ROLE app LOGIN CONNECTION LIMIT 5")
        .await
        .expect("superuser can create roles");
    let client = pg.connect("fixture-test").await.unwrap();
    let sum: i64 = client
        .query_one("SELECT sum(x) FROM t", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(sum, 6);

    let err = pg.execute("SELECT * FROM no_such_table").await.unwrap_err();
    assert!(format!("{err:#}").contains("no_such_table"), "{err:#}");
}

#[tokio::test]
async fn the_postmaster_is_live_and_gone_after_drop() {
    let pg = PgServer::start().expect("PostgreSQL starts");
    let pid = pg.postmaster_pid().expect("postmaster.pid");
    assert!(pid > 0);
    assert!(Path::new(&format!("/proc/{pid}")).exists());
    assert!(alive(pid), "postmaster {pid} is running");
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap();
    assert!(
        exe.starts_with(pg.bin_dir()) || exe.ends_with("postgres"),
        "{pid} runs {}",
        exe.display()
    );

    // A session whose backend dies with the server.
    let client = pg.connect("fixture-test").await.unwrap();
    let backend: i32 = client
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    assert!(alive(backend));

    let dir = pg.data_dir().parent().unwrap().to_path_buf();
    let port = pg.port();
    drop(pg);

    assert!(wait_until_gone(pid), "postmaster {pid} survived the drop");
    assert!(
        wait_until_gone(backend),
        "backend {backend} survived the drop"
    );
    assert!(!dir.exists(), "{} was not removed", dir.display());
    assert!(client.simple_query("SELECT 1").await.is_err());
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "something still listens on {port}"
    );
}

#[tokio::test]
async fn restart_keeps_the_port_and_the_data() {
    let pg = PgServer::start_with(&[("max_connections", "21")]).expect("PostgreSQL starts");
    pg.execute("CREATE TABLE kept (x int); INSERT INTO kept VALUES (42)")
        .await
        .unwrap();
    let before = pg.postmaster_pid().unwrap();
    let port = pg.port();

    pg.restart().expect("restarts");

    let after = pg.postmaster_pid().unwrap();
    assert_ne!(before, after, "a new postmaster");
    assert!(
        wait_until_gone(before),
        "the old postmaster {before} is gone"
    );
    assert!(alive(after));
    assert_eq!(pg.port(), port);
    assert_eq!(setting(&pg, "max_connections").await, "21");
    let client = pg.connect("fixture-test").await.unwrap();
    let x: i32 = client
        .query_one("SELECT x FROM kept", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(x, 42);
}

#[test]
fn servers_side_by_side_get_their_own_ports_and_dirs() {
    let a = PgServer::start().expect("first starts");
    let b = PgServer::start().expect("second starts");
    assert_ne!(a.port(), b.port());
    assert_ne!(a.data_dir(), b.data_dir());
    assert_ne!(a.postmaster_pid().unwrap(), b.postmaster_pid().unwrap());
}

#[test]
fn settings_that_postgres_refuses_fail_the_start_with_its_log() {
    let err = PgServer::start_with(&[("max_connections", "not-a-number")])
        .expect_err("PostgreSQL refuses the setting");
    let text = format!("{err:#}");
    assert!(text.contains("max_connections"), "{text}");
}

#[test]
fn free_ports_have_no_server() {
    let port = free_port();
    assert_ne!(port, 0);
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());
}

#[test]
#[should_panic(expected = "cargo build --workspace --bins")]
fn a_missing_binary_says_how_to_build_it() {
    bin("pgtrail-no-such-binary");
}
