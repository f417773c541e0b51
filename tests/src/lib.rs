//! Fixtures for pgtrail's end-to-end tests: throwaway PostgreSQL servers
//! ([`PgServer`]), the workspace's built binaries ([`bin`]) and free ports.
#![warn(missing_docs)]

mod pg;

use std::net::TcpListener;
use std::path::PathBuf;

pub use pg::PgServer;

/// The path of a workspace binary (`pgtrail`, `pgtrail-agent`,
/// `pgtrail-collector`) built beside the running test.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> → target/<profile>/<name>
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>/deps");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --workspace --bins` (scripts/test does)",
        path.display()
    );
    path
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}
