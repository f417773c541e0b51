//! `pgtrail` as a user runs it, without a collector: every mistake is one
//! line on stderr and a non-zero exit, never a panic.

use std::process::{Command, Output};

fn pgtrail(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pgtrail"))
        .args(args)
        .env_remove("PGTRAIL_SERVER")
        .env_remove("PGTRAIL_PG")
        .output()
        .expect("pgtrail runs")
}

/// The single line a failing command printed.
fn error_line(o: &Output) -> String {
    assert!(!o.status.success(), "expected a failure");
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert!(!err.contains("panicked"), "{err}");
    err.trim_end().to_string()
}

#[test]
fn an_unreachable_collector_says_where_and_what_to_do() {
    let out = pgtrail(&["--server", "http://127.0.0.1:1", "hosts"]);
    let err = error_line(&out);
    assert!(
        err.starts_with("error: cannot reach the pgtrail collector at http://127.0.0.1:1"),
        "{err}"
    );
    assert!(err.contains("pgtrail record"), "{err}");
}

#[test]
fn a_bad_time_is_refused_before_asking_anyone() {
    let err = error_line(&pgtrail(&[
        "--server",
        "http://127.0.0.1:1",
        "at",
        "teatime",
    ]));
    assert!(err.starts_with("error: invalid time \"teatime\""), "{err}");
    let err = error_line(&pgtrail(&["peaks", "--since", "forever"]));
    assert!(
        err.starts_with("error: invalid duration \"forever\""),
        "{err}"
    );
    let err = error_line(&pgtrail(&["peaks", "--from", "11:00", "--to", "10:00"]));
    assert!(err.contains("window is empty"), "{err}");
}

#[test]
fn a_bad_server_url_is_named() {
    let err = error_line(&pgtrail(&["--server", "localhost:7070", "hosts"]));
    assert!(err.contains("invalid --server \"localhost:7070\""), "{err}");
}

#[test]
fn record_refuses_a_bad_connection_string() {
    let err = error_line(&pgtrail(&["record", "--pg", "postgresql://u:pw@h:port/db"]));
    assert!(err.starts_with("error: invalid connection string"), "{err}");
    assert!(!err.contains(":pw@"), "{err}");
}

#[test]
fn record_refuses_an_unreachable_server() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("store");
    let out = pgtrail(&[
        "record",
        "--pg",
        "postgresql://postgres@127.0.0.1:1/postgres",
        "--data",
        data.to_str().unwrap(),
    ]);
    let err = error_line(&out);
    assert!(
        err.starts_with("error: cannot connect to instance 1"),
        "{err}"
    );
    assert!(!data.exists(), "nothing created for a server never reached");
}

#[test]
fn record_refuses_a_zero_interval() {
    let err = error_line(&pgtrail(&[
        "record",
        "--pg",
        "postgresql://u@h/db",
        "--interval",
        "0s",
    ]));
    assert!(
        err.starts_with("error: --interval 0s is too short"),
        "{err}"
    );
}
