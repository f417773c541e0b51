//! `pgtrail-agent` as a user runs it: the shipped example config passes
//! `check-config`, and mistakes are one clear line with a non-zero exit.

use std::path::Path;
use std::process::{Command, Output};

fn agent(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pgtrail-agent"))
        .args(args)
        .env_remove("PGTRAIL_AGENT_CONFIG")
        .env_remove("PGTRAIL_COLLECTOR")
        .output()
        .expect("agent runs")
}

fn deploy(file: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(file)
        .display()
        .to_string()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn the_example_config_is_accepted() {
    let out = agent(&["--config", &deploy("agent.toml"), "check-config"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("1 instance(s) (main)"), "{stdout}");
}

#[test]
fn a_typo_in_the_config_names_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agent.toml");
    std::fs::write(&path, "interval = '1s'\ncolector = 'http://x:7070'\n").unwrap();
    let out = agent(&["--config", path.to_str().unwrap(), "check-config"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with("error: ") && err.contains("line 2") && err.contains("colector"),
        "{err}"
    );
}

#[test]
fn a_bad_connection_string_is_one_line_without_the_password() {
    let out = agent(&[
        "--pg",
        "postgresql://me:hunter2@db:notaport/x",
        "check-config",
    ]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("invalid connection string"), "{err}");
    assert!(!err.contains("hunter2"), "{err}");
}

#[test]
fn no_instance_is_an_error_that_says_how_to_mend_it() {
    let out = agent(&["check-config"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("--pg URL"), "{}", stderr(&out));
}
