//! The postmaster and its children, with CPU % between samples.
//!
//! The tree keeps each process's `/proc` files open (keyed by pid; a
//! descriptor fails once its process is gone, and a pid whose start time
//! changed is a new process) and re-reads them with `pread`. Every sample
//! reads each process's `stat` (state, CPU, RSS, threads, block-IO delay)
//! and `schedstat` (its main thread's CPU time in nanoseconds, which moves
//! whenever it runs at all). `status` (context switches) and the five files
//! of [`read_details`](super::read_details) are read only when the process
//! may have run since (running or in disk wait, state, CPU ticks or
//! `schedstat` moved); otherwise the last values are reused, and they are
//! exact, since a process that did not run did not change them. Without
//! `schedstat` (a kernel without scheduler statistics) `status` is read
//! every sample and its context switches decide.
//!
//! `smaps_rollup` (about 0.4 ms per backend) is read on a slower cadence,
//! spread over the samples so that no one sample pays for every process,
//! and within a budget of reading time per sample; a process that has not
//! run and whose RSS has not moved since its last memory read is skipped
//! (its USS cannot have changed; its PSS moves only as other processes map
//! or unmap pages it shares) for up to ten cadences. Between two memory
//! reads a process carries the last PSS/USS read.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use pgtrail_proto::pb;
use pgtrail_proto::time::{from_duration, Micros};
use procfs::process::Process;

use super::files::ProcFiles;
use super::kind::kind_from_title;
use super::process::{
    details_of, read_memory, runtime_of, stat_of, switches_of, Clock, Details, Stat,
};

/// What the tree remembers of one process between samples.
#[derive(Debug, Clone)]
struct Seen {
    start: Micros,
    /// utime + stime, microseconds (from clock ticks).
    cpu: u64,
    /// The main thread's CPU time from `schedstat`, nanoseconds.
    runtime: Option<u64>,
    at: Micros,
    state: char,
    switches: (Option<u64>, Option<u64>),
    details: Details,
    /// The last PSS/USS read, if any.
    memory: Option<Memory>,
}

/// One read of `smaps_rollup`.
#[derive(Debug, Clone, Copy)]
struct Memory {
    /// PSS and USS; `None` when refused.
    value: Option<(u64, u64)>,
    /// When it was read.
    at: Micros,
    /// The process's `schedstat` runtime and RSS when it was read: while
    /// neither moves, its private memory has not changed.
    runtime: Option<u64>,
    rss: Option<u64>,
}

/// A process that has not run and whose RSS has not moved keeps its PSS/USS
/// for up to this many `pss_interval`s.
const MEMORY_MAX_AGE: i64 = 10;

/// Wall time one sample may spend reading `smaps_rollup` (at least one
/// read per sample): about 0.4 ms per PostgreSQL backend, so at a thousand
/// backends a 30 s cadence alone would cost 13 ms a sample.
const MEMORY_BUDGET: Duration = Duration::from_millis(2);

/// One process: its open files and what was read last.
#[derive(Debug)]
struct Entry {
    files: ProcFiles,
    seen: Option<Seen>,
    /// The sample that last listed it.
    pass: u64,
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
    entries: HashMap<i32, Entry>,
    pass: u64,
    /// One buffer for every read.
    buf: Vec<u8>,
    /// How often each process's memory is read, and the sample interval.
    memory_every: Option<(Micros, Micros)>,
    /// Reading time allowed for `smaps_rollup` per sample.
    memory_budget: Duration,
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
            entries: HashMap::new(),
            pass: 0,
            buf: vec![0; 4096],
            memory_every: None,
            memory_budget: MEMORY_BUDGET,
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
        self.pass += 1;
        let kids = children(postmaster);
        let mut processes = Vec::with_capacity(kids.len() + 1);
        let mut read = Vec::with_capacity(kids.len() + 1);
        for pid in std::iter::once(postmaster).chain(kids) {
            let entry = self.entries.entry(pid).or_insert_with(|| Entry {
                files: ProcFiles::kept(pid),
                seen: None,
                pass: 0,
            });
            let mut stat = stat_of(&mut entry.files, &mut self.buf);
            if stat.is_none() && entry.seen.is_some() {
                // The files were another process's, now gone: try afresh.
                *entry = Entry {
                    files: ProcFiles::kept(pid),
                    seen: None,
                    pass: 0,
                };
                stat = stat_of(&mut entry.files, &mut self.buf);
            }
            let Some(stat) = stat else {
                self.entries.remove(&pid);
                if pid == postmaster {
                    return None;
                }
                continue; // exited while we looked
            };
            if pid != postmaster && stat.ppid != postmaster {
                self.entries.remove(&pid);
                continue; // the pid was reused by something else
            }
            let start = stat.start_time_us(&self.clock);
            if entry.seen.as_ref().is_some_and(|s| s.start != start) {
                entry.seen = None; // a new process under the same pid
            }
            entry.pass = self.pass;
            let runtime = runtime_of(&mut entry.files, &mut self.buf);
            let mut p = stat.to_process(pid, &self.clock);
            if pid == postmaster {
                p.kind = pb::ProcessKind::Postmaster as i32;
            }
            processes.push(p);
            read.push((stat, runtime));
        }
        self.entries.retain(|_, e| e.pass == self.pass);

        let fresh = self.read_memory_due(&processes, &read, now);
        let mut visibility = Visibility {
            processes: processes.len(),
            restricted: 0,
        };
        for (p, (stat, runtime)) in processes.iter_mut().zip(read) {
            let entry = self.entries.get_mut(&p.pid).expect("listed above");
            let cpu = p.utime_us.unwrap_or(0) + p.stime_us.unwrap_or(0);
            let before = entry.seen.take();
            if let Some(s) = &before {
                if now > s.at {
                    let pct = cpu.saturating_sub(s.cpu) as f64 * 100.0 / (now - s.at) as f64;
                    p.cpu_pct = Some(pct as f32);
                }
            }
            let mut memory = before.as_ref().and_then(|s| s.memory);
            if let Ok(i) = fresh.binary_search_by_key(&p.pid, |(pid, _)| *pid) {
                memory = Some(Memory {
                    value: fresh[i].1,
                    at: now,
                    runtime,
                    rss: p.rss_bytes,
                });
            }
            // Not running, same state, same CPU ticks: it has not run since
            // if its main thread's nanoseconds (or, without them, its
            // context switches) did not move either.
            let still = before.as_ref().is_some_and(|s| {
                !matches!(stat.state, 'R' | 'D') && s.state == stat.state && s.cpu == cpu
            });
            let (switches, details) = match before {
                Some(s) if still && runtime.is_some() && s.runtime == runtime => {
                    self.details_reused += 1;
                    (s.switches, s.details)
                }
                before => {
                    let switches = switches_of(&mut entry.files, &mut self.buf);
                    match before {
                        Some(s)
                            if still
                                && runtime.is_none()
                                && switches.0.is_some()
                                && switches == s.switches =>
                        {
                            self.details_reused += 1;
                            (switches, s.details)
                        }
                        _ => (switches, details_of(&mut entry.files, &mut self.buf)),
                    }
                }
            };
            (p.voluntary_ctxt_switches, p.nonvoluntary_ctxt_switches) = switches;
            details.apply(p);
            if p.kind != pb::ProcessKind::Postmaster as i32 {
                p.kind = kind_from_title(&p.title) as i32;
            }
            let mut restricted = details.restricted;
            if let Some(Memory { value, .. }) = memory {
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
            entry.seen = Some(Seen {
                start: p.start_time_us,
                cpu,
                runtime,
                at: now,
                state: stat.state,
                switches,
                details,
                memory,
            });
        }
        self.visibility = visibility;
        Some(processes)
    }

    /// Reads the PSS/USS of the processes due, and returns them by pid
    /// (sorted). Due are, in this order: those never read; those read
    /// longer than the cadence ago that ran or whose RSS moved since; those
    /// read longer than [`MEMORY_MAX_AGE`] cadences ago. At most the share of
    /// the tree that keeps the cost even across samples, and at most
    /// [`MEMORY_BUDGET`] of reading.
    fn read_memory_due(
        &self,
        processes: &[pb::Process],
        read: &[(Stat, Option<u64>)],
        now: Micros,
    ) -> Vec<(i32, Option<(u64, u64)>)> {
        let Some((every, interval)) = self.memory_every else {
            return Vec::new();
        };
        let stale = every - interval / 2;
        let mut due: Vec<(u8, Micros, i32)> = processes
            .iter()
            .zip(read)
            .filter_map(|(p, (_, runtime))| {
                let last = self
                    .entries
                    .get(&p.pid)
                    .and_then(|e| e.seen.as_ref())
                    .filter(|s| s.start == p.start_time_us)
                    .and_then(|s| s.memory);
                let Some(m) = last else {
                    return Some((0, Micros::MIN, p.pid));
                };
                let age = now - m.at;
                let moved = runtime.is_none() || m.runtime != *runtime || m.rss != p.rss_bytes;
                if age >= stale && moved {
                    Some((1, m.at, p.pid))
                } else if age >= MEMORY_MAX_AGE * every - interval / 2 {
                    Some((2, m.at, p.pid))
                } else {
                    None
                }
            })
            .collect();
        due.sort_unstable();
        let share = ((processes.len() as i64 * interval + every - 1) / every).max(1) as usize;
        let started = Instant::now();
        let mut fresh = Vec::new();
        for (_, _, pid) in due.into_iter().take(share) {
            if !fresh.is_empty() && started.elapsed() >= self.memory_budget {
                break;
            }
            fresh.push((pid, read_memory(pid).ok()));
        }
        fresh.sort_unstable_by_key(|(pid, _)| *pid);
        fresh
    }

    /// How many descriptors the tree holds open.
    #[cfg(test)]
    fn open_files(&self) -> usize {
        self.entries.values().map(|e| e.files.open_count()).sum()
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
        // spawn() returns before exec has set up the child's arguments.
        std::thread::sleep(std::time::Duration::from_millis(100));
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
        tree.memory_budget = std::time::Duration::from_secs(60);
        let now = pgtrail_proto::time::now();
        let find = |ps: Vec<pb::Process>| ps.into_iter().find(|p| p.pid == child.id() as i32);
        let first = find(tree.sample(me, now).unwrap()).expect("child listed");
        let reused = tree.details_reused();
        // Half the tree's memory is read per sample, least recently read
        // first: the child within two samples, then carried one more.
        let samples: Vec<pb::Process> = (1..=2)
            .map(|i| find(tree.sample(me, now + i * 1_000_000).unwrap()).expect("child listed"))
            .collect();
        child.kill().unwrap();
        child.wait().unwrap();

        assert!(
            first.syscall.is_some() && first.wchan.is_some(),
            "{first:?}"
        );
        assert!(tree.details_reused() > reused, "the sleeper was read again");
        let later = &samples[0];
        assert_eq!(later.syscall, first.syscall);
        assert_eq!(later.title, "sleep 30");
        let (read, carried) = if first.pss_bytes.is_some() {
            (&first, later)
        } else {
            (&samples[0], &samples[1])
        };
        assert!(read.pss_bytes.is_some() && read.uss_bytes.is_some());
        // Carried from the read until the cadence comes round.
        assert_eq!(carried.pss_bytes, read.pss_bytes);
        assert_eq!(tree.visibility().restricted, 0);
    }

    #[test]
    fn memory_of_a_process_that_did_not_move_is_kept_up_to_the_maximum_age() {
        let mut child = Command::new("sleep").arg("30").spawn().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(100));
        let pid = child.id() as i32;
        let me = std::process::id() as i32;
        let second = std::time::Duration::from_secs(1);
        // Every process is due every sample, as far as the share goes.
        let mut tree = ProcessTree::new(Clock::read().unwrap()).memory_every(second, second);
        tree.memory_budget = std::time::Duration::from_secs(60);
        let t = pgtrail_proto::time::now();
        let read_at = |tree: &ProcessTree| {
            let seen = tree.entries[&pid].seen.as_ref().unwrap();
            seen.memory.unwrap().at
        };
        tree.sample(me, t).unwrap();
        assert_eq!(read_at(&tree), t);
        // The sleeper did not run: kept although the cadence came round.
        tree.sample(me, t + 5_000_000).unwrap();
        assert_eq!(read_at(&tree), t);
        // Until the maximum age.
        let old = t + MEMORY_MAX_AGE * 1_000_000;
        tree.sample(me, old).unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
        assert_eq!(read_at(&tree), old);
    }

    #[test]
    fn files_of_a_finished_process_are_closed() {
        let mut child = Command::new("sleep").arg("30").spawn().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(100));
        let me = std::process::id() as i32;
        let mut tree = ProcessTree::new(Clock::read().unwrap());
        let now = pgtrail_proto::time::now();
        tree.sample(me, now).unwrap();
        let with_child = tree.open_files();
        assert!(tree.entries.contains_key(&(child.id() as i32)));
        child.kill().unwrap();
        child.wait().unwrap();
        let after = tree.sample(me, now + 1_000_000).unwrap();
        assert!(after.iter().all(|p| p.pid != child.id() as i32));
        assert!(!tree.entries.contains_key(&(child.id() as i32)));
        assert!(
            tree.open_files() < with_child,
            "{} -> {}",
            with_child,
            tree.open_files()
        );
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
