//! The postmaster and its children, with CPU % between samples.
//!
//! The tree remembers what it read of each process (keyed by pid and start
//! time). Every sample reads each process's `stat` and `status`; the four
//! files of [`read_details`] only when the process may have run since
//! (its context-switch counts moved, or it is running or in disk wait), and
//! `smaps_rollup` on a slower cadence, spread over the samples so that no
//! one sample pays for every process. Between two memory reads a process
//! carries the last PSS/USS read.

use std::collections::HashMap;
use std::time::Duration;

use pgtrail_proto::pb;
use pgtrail_proto::time::{from_duration, Micros};
use procfs::process::Process;

use super::kind::kind_from_title;
use super::process::{read_details, read_memory, read_stat, Clock, Details};

/// What the tree remembers of one process between samples.
#[derive(Debug, Clone)]
struct Seen {
    start: Micros,
    cpu: u64,
    at: Micros,
    state: String,
    switches: (Option<u64>, Option<u64>),
    details: Details,
    /// PSS and USS, and when they were read; `None` inside when refused.
    memory: Option<(Option<(u64, u64)>, Micros)>,
}

/// What one pass could not read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Visibility {
    /// Processes read.
    pub processes: usize,
    /// Processes whose `io`, `syscall`, `wchan` or `smaps_rollup` this OS
    /// user may not read.
    pub restricted: usize,
}

/// Samples one instance's process tree and remembers each process's CPU
/// time, so the next sample can say how busy it was in between.
#[derive(Debug)]
pub struct ProcessTree {
    clock: Clock,
    previous: HashMap<i32, Seen>,
    /// How often each process's memory is read, and the sample interval.
    memory_every: Option<(Micros, Micros)>,
    visibility: Visibility,
    /// Detail reads skipped since the tree was made (the process had not
    /// run).
    details_reused: u64,
}

impl ProcessTree {
    /// A tree reader for this host; it reads no PSS/USS until
    /// [`ProcessTree::memory_every`] says how often.
    pub fn new(clock: Clock) -> Self {
        Self {
            clock,
            previous: HashMap::new(),
            memory_every: None,
            visibility: Visibility::default(),
            details_reused: 0,
        }
    }

    /// Reads each process's PSS/USS about every `every`, for samples taken
    /// every `interval`.
    pub fn memory_every(mut self, every: Duration, interval: Duration) -> Self {
        self.memory_every = Some((from_duration(every).max(1), from_duration(interval).max(1)));
        self
    }

    /// The host's clock facts.
    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    /// What the last sample could not read.
    pub fn visibility(&self) -> Visibility {
        self.visibility
    }

    /// How many detail reads were skipped because the process had not run.
    pub fn details_reused(&self) -> u64 {
        self.details_reused
    }

    /// Reads the postmaster `postmaster` and every process whose parent it
    /// is. Returns `None` when the postmaster is gone.
    pub fn sample(&mut self, postmaster: i32, now: Micros) -> Option<Vec<pb::Process>> {
        let mut root = read_stat(postmaster, &self.clock)?;
        root.kind = pb::ProcessKind::Postmaster as i32;
        let mut processes = vec![root];
        for pid in children(postmaster) {
            let Some(p) = read_stat(pid, &self.clock) else {
                continue; // exited while we looked
            };
            if p.ppid != postmaster {
                continue; // the pid was reused by something else
            }
            processes.push(p);
        }
        let due = self.memory_due(&processes, now);
        let mut current = HashMap::with_capacity(processes.len());
        let mut visibility = Visibility {
            processes: processes.len(),
            restricted: 0,
        };
        for p in &mut processes {
            let cpu = p.utime_us.unwrap_or(0) + p.stime_us.unwrap_or(0);
            let switches = (p.voluntary_ctxt_switches, p.nonvoluntary_ctxt_switches);
            let before = self
                .previous
                .remove(&p.pid)
                .filter(|s| s.start == p.start_time_us);
            if let Some(s) = &before {
                if now > s.at {
                    let pct = cpu.saturating_sub(s.cpu) as f64 * 100.0 / (now - s.at) as f64;
                    p.cpu_pct = Some(pct as f32);
                }
            }
            let details = match &before {
                Some(s) if !ran_since(s, &p.state, switches) => {
                    self.details_reused += 1;
                    s.details.clone()
                }
                _ => read_details(p.pid),
            };
            details.apply(p);
            if p.kind != pb::ProcessKind::Postmaster as i32 {
                p.kind = kind_from_title(&p.title) as i32;
            }
            let mut memory = before.as_ref().and_then(|s| s.memory);
            if due.contains(&p.pid) {
                memory = Some((read_memory(p.pid).map_err(|_| ()).ok(), now));
            }
            let mut restricted = details.restricted;
            if let Some((value, _)) = memory {
                match value {
                    Some((pss, uss)) => {
                        p.pss_bytes = Some(pss);
                        p.uss_bytes = Some(uss);
                    }
                    None => restricted = true,
                }
            }
            if restricted {
                visibility.restricted += 1;
            }
            current.insert(
                p.pid,
                Seen {
                    start: p.start_time_us,
                    cpu,
                    at: now,
                    state: p.state.clone(),
                    switches,
                    details,
                    memory,
                },
            );
        }
        self.previous = current;
        self.visibility = visibility;
        Some(processes)
    }

    /// The pids whose memory this sample reads: those never read or read
    /// longer than the cadence ago, least recently read first, at most the
    /// share of the tree that keeps the cost even across samples.
    fn memory_due(&self, processes: &[pb::Process], now: Micros) -> Vec<i32> {
        let Some((every, interval)) = self.memory_every else {
            return Vec::new();
        };
        let mut due: Vec<(Micros, i32)> = processes
            .iter()
            .filter_map(|p| {
                let last = self
                    .previous
                    .get(&p.pid)
                    .filter(|s| s.start == p.start_time_us)
                    .and_then(|s| s.memory)
                    .map_or(Micros::MIN, |(_, at)| at);
                (last == Micros::MIN || now - last >= every - interval / 2).then_some((last, p.pid))
            })
            .collect();
        due.sort_unstable();
        let share = ((processes.len() as i64 * interval + every - 1) / every).max(1) as usize;
        due.into_iter().take(share).map(|(_, pid)| pid).collect()
    }
}

/// Whether a process may have run since it was last read: it is running or
/// in disk wait, its state changed, or it switched context (a sleeper that
/// woke and slept again switched at least once). Unknown counts as yes.
fn ran_since(seen: &Seen, state: &str, switches: (Option<u64>, Option<u64>)) -> bool {
    matches!(state, "R" | "D")
        || seen.state != state
        || switches.0.is_none()
        || switches != seen.switches
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
    fn a_sleeper_is_read_once_and_memory_follows_the_cadence() {
        let mut child = Command::new("sleep").arg("30").spawn().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(100));
        let me = std::process::id() as i32;
        let second = std::time::Duration::from_secs(1);
        let mut tree = ProcessTree::new(Clock::read().unwrap()).memory_every(2 * second, second);
        let now = pgtrail_proto::time::now();
        let find = |ps: Vec<pb::Process>| ps.into_iter().find(|p| p.pid == child.id() as i32);
        let first = find(tree.sample(me, now).unwrap()).expect("child listed");
        let reused = tree.details_reused();
        let later = find(tree.sample(me, now + 1_000_000).unwrap()).expect("child listed");
        child.kill().unwrap();
        child.wait().unwrap();

        assert!(
            first.syscall.is_some() && first.wchan.is_some(),
            "{first:?}"
        );
        assert!(first.pss_bytes.is_some() && first.uss_bytes.is_some());
        assert!(tree.details_reused() > reused, "the sleeper was read again");
        assert_eq!(later.syscall, first.syscall);
        assert_eq!(later.title, "sleep 30");
        // Carried from the first read until the cadence comes round.
        assert_eq!(later.pss_bytes, first.pss_bytes);
        assert_eq!(tree.visibility().restricted, 0);
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
