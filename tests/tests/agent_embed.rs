//! The embedding example (`agent/examples/embed.rs`) runs against a real
//! server and prints what it receives in-process: snapshots with the
//! strace-level detail of every process, and normalized query texts.

mod common;

use std::process::Command;

use pgtrail_tests::PgServer;

use common::example;

#[test]
fn the_embedding_example_receives_snapshots_in_process() {
    let pg = PgServer::start().expect("PostgreSQL starts");
    let out = Command::new(example("embed"))
        .args([pg.url().as_str(), "2", "200ms"])
        .output()
        .expect("the example runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summaries: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("instance embedded seq "))
        .collect();
    assert_eq!(summaries.len(), 2, "{stdout}");
    assert!(
        summaries[1].starts_with("instance embedded seq 2:"),
        "{stdout}"
    );
    assert!(stdout.contains("stopped after 2 samples"), "{stdout}");
    let postmaster = format!("  pid={} kind=postmaster ", pg.postmaster_pid().unwrap());
    let line = stdout
        .lines()
        .find(|l| l.starts_with(&postmaster))
        .unwrap_or_else(|| panic!("no postmaster line: {stdout}"));
    // The tests' user can read the server's /proc: a named syscall, PSS.
    assert!(
        !line.contains("syscall=?") && !line.contains("pss=?"),
        "{line}"
    );
    assert!(stdout.contains("kind=checkpointer"), "{stdout}");
    // Texts arrive normalized: the agent's own query shows placeholders.
    assert!(
        stdout.contains("CASE WHEN wait_event_type = $1 THEN"),
        "{stdout}"
    );
}
