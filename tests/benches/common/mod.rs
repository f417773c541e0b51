//! What the benchmarks share: CPU time and memory read from `/proc`,
//! medians, flags, and a generator of realistic snapshots.
//!
//! CPU time is user + system time in nanoseconds: for the bench's own
//! thread or process, `clock_gettime(CLOCK_THREAD_CPUTIME_ID /
//! CLOCK_PROCESS_CPUTIME_ID)`; for another process (a backend, the agent,
//! the collector, pg_activity), the kernel's `sum_exec_runtime` from
//! `/proc/PID/task/*/schedstat`: the same time that `/proc/PID/stat`
//! reports as `utime + stime`, without its 10 ms tick. [`stat_cpu_ns`]
//! reads the tick-based figure for cross-checks.
#![allow(dead_code)]

pub mod sim;

use std::fs;
use std::time::Duration;

use rustix::time::{clock_gettime, ClockId};

/// CPU time (user + system) of the calling thread, in nanoseconds.
pub fn thread_cpu_ns() -> u64 {
    timespec_ns(clock_gettime(ClockId::ThreadCPUTime))
}

/// CPU time (user + system) of this process, all threads, in nanoseconds.
pub fn self_cpu_ns() -> u64 {
    timespec_ns(clock_gettime(ClockId::ProcessCPUTime))
}

fn timespec_ns(t: rustix::time::Timespec) -> u64 {
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

/// CPU time (user + system) of every thread of process `pid`, in
/// nanoseconds; `None` when the process is gone.
pub fn process_cpu_ns(pid: i32) -> Option<u64> {
    let tasks = fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    let mut total = 0;
    for task in tasks.flatten() {
        total += schedstat(&format!("{}/schedstat", task.path().display())).unwrap_or(0);
    }
    Some(total)
}

/// CPU time of process `pid` and of all its descendants that are alive.
pub fn tree_cpu_ns(pid: i32) -> u64 {
    let mut total = process_cpu_ns(pid).unwrap_or(0);
    for child in children(pid) {
        total += tree_cpu_ns(child);
    }
    total
}

/// utime + stime of `pid` from `/proc/PID/stat`, in nanoseconds (10 ms
/// resolution), children not included.
pub fn stat_cpu_ns(pid: i32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // Fields 14 and 15 of stat; `after` starts at field 3.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) * 10_000_000) // USER_HZ is 100 on Linux
}

fn schedstat(path: &str) -> Option<u64> {
    fs::read_to_string(path)
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The children of `pid`, from `/proc/PID/task/*/children`.
pub fn children(pid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    if let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) {
        for task in tasks.flatten() {
            if let Ok(text) = fs::read_to_string(task.path().join("children")) {
                out.extend(
                    text.split_whitespace()
                        .filter_map(|p| p.parse::<i32>().ok()),
                );
            }
        }
    }
    out
}

/// (VmRSS, VmHWM) of `pid` in bytes.
pub fn rss_bytes(pid: i32) -> (u64, u64) {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
            * 1024
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// The median of `values` (the mean of the middle two for an even count);
/// 0 for none.
pub fn median(values: &[f64]) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Nanoseconds as milliseconds.
pub fn ms(ns: u64) -> f64 {
    ns as f64 / 1e6
}

/// Bytes as MiB.
pub fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// The benchmark's flags: `--quick`, and `--name value` pairs.
#[derive(Debug, Clone)]
pub struct Args {
    /// A short smoke run.
    pub quick: bool,
    pairs: Vec<(String, String)>,
}

impl Args {
    /// Reads the process's arguments. `cargo bench` adds `--bench`, which
    /// is ignored.
    pub fn parse() -> Self {
        let mut quick = false;
        let mut pairs = Vec::new();
        let mut args = std::env::args().skip(1);
        while let Some(a) = args.next() {
            match a.as_str() {
                "--quick" => quick = true,
                "--bench" => {}
                flag if flag.starts_with("--") => {
                    let value = args.next().unwrap_or_default();
                    pairs.push((flag.trim_start_matches("--").to_string(), value));
                }
                _ => {}
            }
        }
        if std::env::var_os("PGTRAIL_BENCH_QUICK").is_some() {
            quick = true;
        }
        Self { quick, pairs }
    }

    /// The value of `--name`, parsed, else `default`.
    pub fn get<T: std::str::FromStr>(&self, name: &str, default: T) -> T {
        self.pairs
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(default)
    }

    /// A comma-separated list `--name a,b,c`, else `default`.
    pub fn list<T: std::str::FromStr + Clone>(&self, name: &str, default: &[T]) -> Vec<T> {
        match self.pairs.iter().rev().find(|(n, _)| n == name) {
            Some((_, v)) => v.split(',').filter_map(|x| x.trim().parse().ok()).collect(),
            None => default.to_vec(),
        }
    }
}

/// A one-line description of the machine: CPU model, cores, memory, kernel.
pub fn machine() -> String {
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|m| m.trim_start_matches([' ', '\t', ':']).to_string())
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem = fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .unwrap_or(0);
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!(
        "{model}, {cores} cores, {:.0} GiB RAM, Linux {}",
        mem as f64 / 1024.0 / 1024.0,
        kernel.trim()
    )
}

/// Prints a markdown table.
pub fn table(header: &[&str], rows: &[Vec<String>]) {
    println!("| {} |", header.join(" | "));
    println!(
        "|{}",
        header.iter().map(|_| "---|").collect::<Vec<_>>().join("")
    );
    for r in rows {
        println!("| {} |", r.join(" | "));
    }
    println!();
}

/// Sleeps on the current thread.
pub fn pause(d: Duration) {
    std::thread::sleep(d);
}
