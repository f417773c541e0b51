//! `pgtrail-collector` as a user runs it: the shipped example config
//! passes `check-config`; a store another process holds is one clear error.

use std::path::Path;
use std::process::{Command, Output};

fn collector(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pgtrail-collector"))
        .args(args)
        .env_remove("PGTRAIL_COLLECTOR_CONFIG")
        .env_remove("PGTRAIL_LISTEN")
        .env_remove("PGTRAIL_DATA")
        .output()
        .expect("collector runs")
}

#[test]
fn the_example_config_is_accepted() {
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/collector.toml");
    let out = collector(&["--config", config.to_str().unwrap(), "check-config"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "config ok: listen 127.0.0.1:7070, data /var/lib/pgtrail, samples kept 7d, history kept 90d\n"
    );
}

#[test]
fn a_store_in_use_is_one_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let _held = pgtrail_collector::Collector::open(dir.path()).unwrap();
    let out = collector(&[
        "--data",
        dir.path().to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let last = err.lines().last().unwrap_or("");
    assert!(last.starts_with("error: cannot open the store"), "{err}");
}
