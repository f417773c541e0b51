//! What the end-to-end tests share: a `pgtrail record` run over a
//! throwaway server, a `pgtrail-collector` to stream to, the CLI's JSON
//! answers, and the path of a built example.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use pgtrail_tests::{bin, free_port, PgServer};
use serde_json::Value;

/// A running `pgtrail record`, stopped with SIGINT (or killed) on drop.
pub struct Recorder {
    child: Child,
    /// Its `--server` URL.
    pub server: String,
}

impl Recorder {
    /// Records `pg` every 200 ms into `data`, as host `host`, and waits
    /// until it has stored two samples.
    pub fn start(pg: &PgServer, data: &Path, host: &str) -> Recorder {
        let port = free_port();
        let mut record = Command::new(bin("pgtrail"));
        record
            .args(["record", "--pg", &pg.url(), "--interval", "200ms"])
            .args(["--host-name", host]);
        let child = serve(record, data, port);
        let recorder = Recorder {
            child,
            server: format!("http://127.0.0.1:{port}"),
        };
        recorder.wait_for_samples(2);
        recorder
    }

    /// Waits until the recorder answers and has stored `n` samples.
    pub fn wait_for_samples(&self, n: u64) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let out = self.run(&["--format", "json", "hosts"]);
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

    /// Waits for a few more samples, so the last moments are stored.
    pub fn settle(&self) {
        let now = self.samples();
        self.wait_for_samples(now + 3);
    }

    /// Samples stored so far.
    pub fn samples(&self) -> u64 {
        let hosts = self.json(&["hosts"]);
        hosts[0]["samples"].as_u64().unwrap_or(0)
    }

    /// Runs `pgtrail --server URL ARGS`.
    pub fn run(&self, args: &[&str]) -> Output {
        Command::new(bin("pgtrail"))
            .args(["--server", &self.server])
            .args(args)
            .output()
            .expect("pgtrail runs")
    }

    /// Runs `pgtrail --format json ARGS` and parses its answer.
    pub fn json(&self, args: &[&str]) -> Value {
        let mut all = vec!["--format", "json"];
        all.extend_from_slice(args);
        let out = self.run(&all);
        assert!(
            out.status.success(),
            "pgtrail {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("JSON output")
    }

    /// Runs `pgtrail ARGS` (a table) and returns stdout.
    pub fn table(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "pgtrail {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Stops it with SIGINT; true when it exited cleanly.
    pub fn interrupt(&mut self) -> bool {
        let _ = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status.success();
            }
            assert!(Instant::now() < deadline, "did not stop on SIGINT");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Runs `cmd --data DATA --listen 127.0.0.1:PORT` with its output
/// discarded: how `pgtrail record` and `pgtrail-collector` are started to
/// keep a store in `data` and answer on `port`.
fn serve(mut cmd: Command, data: &Path, port: u16) -> Child {
    cmd.arg("--data")
        .arg(data)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("{} starts: {e}", cmd.get_program().to_string_lossy()))
}

/// A child process, killed on drop.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Proc {
    /// SIGTERM, then waits up to 10 s for the exit (SIGKILL after that: a
    /// collector draining its agents' streams may not end on its own).
    pub fn terminate(mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILL, then waits.
    pub fn kill(mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A `pgtrail-collector` keeping its store in `data` and listening on
/// `127.0.0.1:port`, killed on drop.
pub fn collector(data: &Path, port: u16) -> Proc {
    Proc(serve(Command::new(bin("pgtrail-collector")), data, port))
}

/// `target/<profile>/examples/NAME`, built by `cargo build --examples`.
pub fn example(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile = exe.parent().and_then(|d| d.parent()).unwrap();
    let path = profile.join("examples").join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --workspace --examples`",
        path.display()
    );
    path
}

/// Parses an RFC 3339 time from the CLI's JSON into µs.
pub fn micros(v: &Value) -> i64 {
    let s = v.as_str().unwrap_or_else(|| panic!("a time, got {v}"));
    chrono::DateTime::parse_from_rfc3339(s)
        .unwrap_or_else(|e| panic!("{s}: {e}"))
        .timestamp_micros()
}

/// RFC 3339 in UTC for a time in µs.
pub fn rfc3339(micros: i64) -> String {
    chrono::DateTime::from_timestamp_micros(micros)
        .unwrap()
        .to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

/// Now, in µs.
pub fn now_micros() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as i64
}

/// The rows of a JSON array answer.
pub fn rows(v: &Value) -> &Vec<Value> {
    v.as_array().unwrap_or_else(|| panic!("an array, got {v}"))
}
