//! The postmaster and its children, with CPU % between samples.

use std::collections::HashMap;

use pgtrail_proto::pb;
use pgtrail_proto::time::Micros;
use procfs::process::Process;

use super::kind::kind_from_title;
use super::process::{read_process, Clock};

/// Samples one instance's process tree and remembers each process's CPU
/// time, so the next sample can say how busy it was in between.
#[derive(Debug)]
pub struct ProcessTree {
    clock: Clock,
    /// pid → (start time, utime + stime in µs, when read).
    previous: HashMap<i32, (Micros, u64, Micros)>,
}

impl ProcessTree {
    /// A tree reader for this host.
    pub fn new(clock: Clock) -> Self {
        Self {
            clock,
            previous: HashMap::new(),
        }
    }

    /// The host's clock facts.
    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    /// Reads the postmaster `postmaster` and every process whose parent it
    /// is. Returns `None` when the postmaster is gone.
    pub fn sample(&mut self, postmaster: i32, now: Micros) -> Option<Vec<pb::Process>> {
        let mut root = read_process(postmaster, &self.clock)?;
        root.kind = pb::ProcessKind::Postmaster as i32;
        let mut processes = vec![root];
        for pid in children(postmaster) {
            let Some(mut p) = read_process(pid, &self.clock) else {
                continue; // exited while we looked
            };
            if p.ppid != postmaster {
                continue; // the pid was reused by something else
            }
            p.kind = kind_from_title(&p.title) as i32;
            processes.push(p);
        }
        let mut current = HashMap::with_capacity(processes.len());
        for p in &mut processes {
            let cpu = p.utime_us.unwrap_or(0) + p.stime_us.unwrap_or(0);
            if let Some(&(start, before, then)) = self.previous.get(&p.pid) {
                if start == p.start_time_us && now > then {
                    let pct = cpu.saturating_sub(before) as f64 * 100.0 / (now - then) as f64;
                    p.cpu_pct = Some(pct as f32);
                }
            }
            current.insert(p.pid, (p.start_time_us, cpu, now));
        }
        self.previous = current;
        Some(processes)
    }
}

/// The children of `parent`: from `/proc/PID/task/*/children` when the
/// kernel has it (CONFIG_PROC_CHILDREN), else by scanning every process's
/// parent.
fn children(parent: i32) -> Vec<i32> {
    let listed = Process::new(parent).and_then(|p| {
        let mut pids = Vec::new();
        for task in p.tasks()? {
            pids.extend(task?.children()?);
        }
        Ok(pids)
    });
    match listed {
        Ok(pids) => pids
            .into_iter()
            .filter_map(|p| i32::try_from(p).ok())
            .collect(),
        Err(_) => scan_children(parent),
    }
}

fn scan_children(parent: i32) -> Vec<i32> {
    let Ok(all) = procfs::process::all_processes() else {
        return Vec::new();
    };
    all.filter_map(Result::ok)
        .filter_map(|p| p.stat().ok())
        .filter(|s| s.ppid == parent)
        .map(|s| s.pid)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    #[test]
    fn finds_children_and_their_cpu() {
        let mut child = Command::new("sleep").arg("30").spawn().unwrap();
        let me = std::process::id() as i32;
        let mut tree = ProcessTree::new(Clock::read().unwrap());
        let now = pgtrail_proto::time::now();
        let first = tree.sample(me, now).unwrap();
        let second = tree.sample(me, now + 1_000_000).unwrap();
        child.kill().unwrap();
        child.wait().unwrap();

        assert_eq!(first[0].pid, me);
        assert_eq!(first[0].kind, pb::ProcessKind::Postmaster as i32);
        let sleeper = second
            .iter()
            .find(|p| p.pid == child.id() as i32)
            .expect("child listed");
        assert_eq!(sleeper.ppid, me);
        assert_eq!(sleeper.title, "sleep 30");
        assert!(first.iter().all(|p| p.cpu_pct.is_none()));
        assert!(sleeper.cpu_pct.is_some(), "second sample knows CPU %");
    }

    #[test]
    fn scanning_agrees_with_the_children_file() {
        let mut child = Command::new("sleep").arg("30").spawn().unwrap();
        let me = std::process::id() as i32;
        let scanned = scan_children(me);
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(scanned.contains(&(child.id() as i32)));
    }
}
