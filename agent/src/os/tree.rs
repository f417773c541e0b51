//! The postmaster and its children, with CPU % between samples.
//!
//! The tree keeps each process's `/proc` files open (keyed by pid; a
//! descriptor fails once its process is gone, and a pid whose start time
//! changed is a new process) and re-reads them with `pread`. Every sample
//! reads each process's `schedstat` (its main thread's CPU time in
//! nanoseconds, which moves whenever it runs at all). A process that was
//! asleep (`S`) with a single thread at its last read, and whose
//! `schedstat` has not moved since, has not run: its row is the last one
//! again, with 0 % CPU, and none of its other files are read. What such a
//! process shows is exact, since its state, CPU, threads, context
//! switches, title, `io`, `wchan` and `syscall` change only when it runs,
//! with two exceptions: its RSS can shrink as the kernel reclaims its
//! pages, and it can be woken and wait for a CPU (`R`) without having run
//! yet. So its `stat` is read anyway once every [`STAT_MAX_AGE`] (spread
//! over the samples by pid), which bounds how late a reclaimed RSS shows;
//! a process caught waiting for a CPU that has not run since the last
//! sample shows `S` until it runs (its first slice, a few milliseconds
//! later on a host that is not saturated).
//!
//! Every other process (the postmaster, one that ran, is running or in disk
//! wait, stopped, a zombie, or has more threads, whose main thread's
//! `schedstat` tells nothing of the others) has its `stat` read (state,
//! CPU, RSS, threads, block-IO delay). `status` (context switches) and the
//! five files of [`read_details`](super::read_details) are read only when it
//! may have run since (running or in disk wait, state, CPU ticks or
//! `schedstat` moved); otherwise the last values are reused. Without
//! `schedstat` (a kernel without scheduler statistics) `stat` and `status`
//! are read every sample and the context switches decide.
//!
//! `smaps_rollup` is read on a slower cadence of its own ([`smaps`](super::smaps)).

use std::collections::HashMap;
use std::time::Duration;

use pgtrail_proto::pb;
use pgtrail_proto::time::{from_duration, Micros};

use super::children::Children;
use super::files::{Name, ProcFiles};
use super::kind::kind_from_title;
use super::process::{details_of, runtime_of, stat_of, switches_of, Clock, Details, Stat};
use super::smaps::{Memory, MemoryCadence};

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
    threads: Option<u32>,
    switches: (Option<u64>, Option<u64>),
    details: Details,
    /// The last PSS/USS read, if any.
    memory: Option<Memory>,
    /// The row as last built (before the sampler joins kinds from
    /// sessions), handed out again while the process does not run.
    row: pb::Process,
}

/// A process that has not run has its `stat` read anyway at least this
/// often (in samples: this over the interval, at least every sample).
const STAT_MAX_AGE: Duration = Duration::from_secs(5);

/// One process: its open files and what was read last.
#[derive(Debug)]
struct Entry {
    files: ProcFiles,
    seen: Option<Seen>,
    /// The sample that last listed it.
    pass: u64,
}

impl Entry {
    fn new(pid: i32) -> Self {
        Self {
            files: ProcFiles::kept(pid),
            seen: None,
            pass: 0,
        }
    }
}

/// How one process was read this sample.
#[derive(Debug)]
struct Read {
    /// `stat`, or `None` when the process had not run and its last row
    /// stands.
    stat: Option<Stat>,
    runtime: Option<u64>,
    /// The last memory read, from before this sample.
    memory: Option<Memory>,
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
    /// The postmaster's children, and the list they are read into.
    children: Children,
    kids: Vec<i32>,
    /// The sample interval.
    interval: Micros,
    /// A process that has not run has its `stat` read every this many
    /// samples.
    stat_every: u64,
    /// When each process's memory is read.
    memory: MemoryCadence,
    visibility: Visibility,
    /// Detail reads skipped since the tree was made (the process had not
    /// run).
    details_reused: u64,
    /// `stat` reads skipped since the tree was made (the process had not
    /// run).
    stats_reused: u64,
}

impl ProcessTree {
    /// A tree reader for this host, for samples taken every second; it
    /// reads no PSS/USS until [`ProcessTree::memory_every`] says how often.
    pub fn new(clock: Clock) -> Self {
        Self {
            clock,
            entries: HashMap::new(),
            pass: 0,
            buf: vec![0; 4096],
            children: Children::default(),
            kids: Vec::new(),
            interval: 0,
            stat_every: 1,
            memory: MemoryCadence::default(),
            visibility: Visibility::default(),
            details_reused: 0,
            stats_reused: 0,
        }
        .interval(crate::config::DEFAULT_INTERVAL)
    }

    /// For samples taken every `interval`.
    pub fn interval(mut self, interval: Duration) -> Self {
        self.interval = from_duration(interval).max(1);
        self.stat_every = (from_duration(STAT_MAX_AGE) / self.interval).max(1) as u64;
        self
    }

    /// Reads each process's PSS/USS about every `every`.
    pub fn memory_every(mut self, every: Duration) -> Self {
        self.memory.every = Some(from_duration(every).max(1));
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

    /// How many `stat` reads were skipped because the process had not run.
    pub fn stats_reused(&self) -> u64 {
        self.stats_reused
    }

    /// Reads the postmaster `postmaster` and every process whose parent it
    /// is. Returns `None` when the postmaster is gone.
    pub fn sample(&mut self, postmaster: i32, now: Micros) -> Option<Vec<pb::Process>> {
        self.pass += 1;
        let threads = self
            .entries
            .get(&postmaster)
            .and_then(|e| e.seen.as_ref())
            .and_then(|s| s.threads);
        let mut kids = std::mem::take(&mut self.kids);
        self.children.list(postmaster, threads, &mut kids);
        let mut processes = Vec::with_capacity(kids.len() + 1);
        let mut reads = Vec::with_capacity(kids.len() + 1);
        for &pid in std::iter::once(&postmaster).chain(&kids) {
            let entry = self.entries.entry(pid).or_insert_with(|| Entry::new(pid));
            // A sleeper that has not run since its last read: its last row
            // stands, unless its turn for a `stat` read came.
            let due = pid == postmaster || (self.pass + pid as u64).is_multiple_of(self.stat_every);
            let mut runtime = None;
            if let Some(seen) = entry
                .seen
                .as_ref()
                .filter(|s| !due && s.state == 'S' && s.threads == Some(1) && s.runtime.is_some())
            {
                // Only through a descriptor kept since: it cannot be another
                // process's under the same pid.
                if entry.files.is_open(Name::Schedstat) {
                    let now_runtime = runtime_of(&mut entry.files, &mut self.buf);
                    if now_runtime == seen.runtime {
                        entry.pass = self.pass;
                        processes.push(seen.row.clone());
                        reads.push(Read {
                            stat: None,
                            runtime: seen.runtime,
                            memory: seen.memory,
                        });
                        continue;
                    }
                    runtime = Some(now_runtime);
                }
            }
            let mut stat = stat_of(&mut entry.files, &mut self.buf);
            if stat.is_none() && entry.seen.is_some() {
                // The files were another process's, now gone: try afresh.
                *entry = Entry::new(pid);
                runtime = None;
                stat = stat_of(&mut entry.files, &mut self.buf);
            }
            let Some(stat) = stat else {
                self.entries.remove(&pid);
                if pid == postmaster {
                    self.kids = kids;
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
            let runtime = runtime.unwrap_or_else(|| runtime_of(&mut entry.files, &mut self.buf));
            let mut p = stat.to_process(pid, &self.clock);
            if pid == postmaster {
                p.kind = pb::ProcessKind::Postmaster as i32;
            }
            processes.push(p);
            reads.push(Read {
                stat: Some(stat),
                runtime,
                memory: entry.seen.as_ref().and_then(|s| s.memory),
            });
        }
        self.kids = kids;
        self.entries.retain(|_, e| e.pass == self.pass);

        let last = reads.iter().map(|r| (r.memory, r.runtime));
        let fresh = self.memory.read_due(self.interval, &processes, last, now);
        let mut visibility = Visibility {
            processes: processes.len(),
            restricted: 0,
        };
        for (p, read) in processes.iter_mut().zip(reads) {
            let entry = self.entries.get_mut(&p.pid).expect("listed above");
            let memory = match fresh.binary_search_by_key(&p.pid, |(pid, _)| *pid) {
                Ok(i) => Some(Memory {
                    value: fresh[i].1,
                    at: now,
                    runtime: read.runtime,
                    rss: p.rss_bytes,
                }),
                Err(_) => read.memory,
            };
            let restricted = match read.stat {
                None => {
                    let seen = entry.seen.as_mut().expect("read before");
                    self.stats_reused += 1;
                    self.details_reused += 1;
                    p.cpu_pct = (now > seen.at).then_some(0.0);
                    let mut restricted = seen.details.restricted;
                    if let Some(m) = memory.filter(|m| m.at == now) {
                        m.apply(p);
                        m.apply(&mut seen.row);
                    }
                    restricted |= memory.is_some_and(|m| m.value.is_none());
                    seen.at = now;
                    seen.memory = memory;
                    restricted
                }
                Some(stat) => {
                    let before = entry.seen.take();
                    let done = complete(
                        &mut entry.files,
                        &mut self.buf,
                        p,
                        &stat,
                        read.runtime,
                        now,
                        before,
                    );
                    self.details_reused += u64::from(done.reused);
                    let mut restricted = done.seen.details.restricted;
                    if let Some(m) = &memory {
                        restricted |= m.apply(p);
                    }
                    entry.seen = Some(Seen {
                        runtime: read.runtime,
                        memory,
                        row: p.clone(),
                        ..done.seen
                    });
                    restricted
                }
            };
            if restricted {
                visibility.restricted += 1;
            }
        }
        self.visibility = visibility;
        Some(processes)
    }

    /// How many descriptors the tree holds open.
    #[cfg(test)]
    fn open_files(&self) -> usize {
        self.entries.values().map(|e| e.files.open_count()).sum()
    }
}

/// What [`complete`] gives.
struct Completed {
    /// What to remember of the process (its runtime, memory and row are
    /// the caller's to fill in).
    seen: Seen,
    /// Whether the details were reused rather than read.
    reused: bool,
}

/// Completes the row `p` of a process whose `stat` was read (and whose
/// `schedstat` reads `p`'s runtime): its CPU % since `before`, context
/// switches and details (read again only if it may have run since), and
/// kind.
fn complete(
    files: &mut ProcFiles,
    buf: &mut Vec<u8>,
    p: &mut pb::Process,
    stat: &Stat,
    runtime: Option<u64>,
    now: Micros,
    before: Option<Seen>,
) -> Completed {
    let cpu = p.utime_us.unwrap_or(0) + p.stime_us.unwrap_or(0);
    if let Some(s) = &before {
        if now > s.at {
            let pct = cpu.saturating_sub(s.cpu) as f64 * 100.0 / (now - s.at) as f64;
            p.cpu_pct = Some(pct as f32);
        }
    }
    // Not running, same state, same CPU ticks: it has not run since if its
    // main thread's nanoseconds (or, without them, its context switches)
    // did not move either.
    let still = before
        .as_ref()
        .is_some_and(|s| !matches!(stat.state, 'R' | 'D') && s.state == stat.state && s.cpu == cpu);
    let mut reused = true;
    let (switches, details) = match before {
        Some(s) if still && runtime.is_some() && s.runtime == runtime => (s.switches, s.details),
        before => {
            let switches = switches_of(files, buf);
            match before {
                Some(s)
                    if still
                        && runtime.is_none()
                        && switches.0.is_some()
                        && switches == s.switches =>
                {
                    (switches, s.details)
                }
                _ => {
                    reused = false;
                    (switches, details_of(files, buf))
                }
            }
        }
    };
    (p.voluntary_ctxt_switches, p.nonvoluntary_ctxt_switches) = switches;
    details.apply(p);
    if p.kind != pb::ProcessKind::Postmaster as i32 {
        p.kind = kind_from_title(&p.title) as i32;
    }
    Completed {
        seen: Seen {
            start: p.start_time_us,
            cpu,
            runtime,
            at: now,
            state: stat.state,
            threads: p.threads,
            switches,
            details,
            memory: None,
            row: pb::Process::default(),
        },
        reused,
    }
}

#[cfg(test)]
mod tests {
    use super::super::smaps::MEMORY_MAX_AGE;
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
        let mut tree = ProcessTree::new(Clock::read().unwrap())
            .interval(second)
            .memory_every(2 * second);
        tree.memory.budget = std::time::Duration::from_secs(60);
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
        let mut tree = ProcessTree::new(Clock::read().unwrap())
            .interval(second)
            .memory_every(second);
        tree.memory.budget = std::time::Duration::from_secs(60);
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
    /// `sh` running `script` with its children, standing in for a
    /// postmaster: the tree then holds only the shell and its children.
    struct Shell {
        sh: std::process::Child,
        kids: Vec<i32>,
    }

    impl Shell {
        fn start(script: &str, kids: usize) -> Self {
            let sh = Command::new("sh").args(["-c", script]).spawn().unwrap();
            let pid = sh.id() as i32;
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
            let mut found = Vec::new();
            while found.len() < kids && std::time::Instant::now() < deadline {
                std::thread::sleep(std::time::Duration::from_millis(20));
                found = super::super::children::scan_children(pid);
            }
            assert_eq!(found.len(), kids, "the shell's children started");
            // Let them exec and settle.
            std::thread::sleep(std::time::Duration::from_millis(200));
            Self { sh, kids: found }
        }

        fn pid(&self) -> i32 {
            self.sh.id() as i32
        }

        fn signal(&self, pid: i32, signal: &str) {
            let ok = Command::new("kill")
                .args([signal, &pid.to_string()])
                .status()
                .unwrap();
            assert!(ok.success());
        }
    }

    impl Drop for Shell {
        fn drop(&mut self) {
            for &kid in &self.kids {
                let _ = Command::new("kill")
                    .args(["-KILL", &kid.to_string()])
                    .status();
            }
            let _ = self.sh.kill();
            let _ = self.sh.wait();
        }
    }

    fn row(processes: &[pb::Process], pid: i32) -> pb::Process {
        processes
            .iter()
            .find(|p| p.pid == pid)
            .cloned()
            .expect("listed")
    }

    #[test]
    fn a_sleeper_keeps_its_row_without_stat_until_its_turn() {
        let shell = Shell::start("sleep 30 & wait", 1);
        let kid = shell.kids[0];
        let second = std::time::Duration::from_secs(1);
        let mut tree = ProcessTree::new(Clock::read().unwrap()).interval(second);
        assert_eq!(tree.stat_every, 5, "STAT_MAX_AGE over the interval");
        let t = pgtrail_proto::time::now();
        let first = row(&tree.sample(shell.pid(), t).unwrap(), kid);
        assert_eq!(tree.stats_reused(), 0, "everything is read the first time");
        let mut due = 0;
        for i in 1..=10 {
            let pass = tree.pass + 1;
            due += u64::from((pass + kid as u64).is_multiple_of(5));
            let now = t + i * 1_000_000;
            let later = row(&tree.sample(shell.pid(), now).unwrap(), kid);
            assert_eq!(later.cpu_pct, Some(0.0));
            assert_eq!(
                pb::Process {
                    cpu_pct: first.cpu_pct,
                    ..later
                },
                first
            );
            assert_eq!(tree.entries[&kid].seen.as_ref().unwrap().at, now);
        }
        // Two of ten samples read its stat (its turn), the rest did not;
        // the shell, standing in for the postmaster, is read every time.
        assert_eq!(due, 2);
        assert_eq!(tree.stats_reused(), 10 - due);
        assert_eq!(tree.details_reused(), 10 + 10, "neither ran");
    }

    #[test]
    fn a_process_that_runs_is_read_every_sample() {
        let shell = Shell::start("while :; do :; done & wait", 1);
        let kid = shell.kids[0];
        let mut tree = ProcessTree::new(Clock::read().unwrap());
        tree.stat_every = u64::MAX; // never for its turn
        let t = pgtrail_proto::time::now();
        let mut last = row(&tree.sample(shell.pid(), t).unwrap(), kid);
        for i in 1..=3 {
            std::thread::sleep(std::time::Duration::from_millis(100));
            let p = row(&tree.sample(shell.pid(), t + i * 100_000).unwrap(), kid);
            let cpu = |p: &pb::Process| p.utime_us.unwrap() + p.stime_us.unwrap();
            assert!(cpu(&p) >= cpu(&last), "{p:?}");
            assert!(p.cpu_pct.is_some());
            last = p;
        }
        assert_eq!(tree.stats_reused(), 0);
    }

    #[test]
    fn stopping_and_continuing_a_sleeper_shows() {
        let shell = Shell::start("sleep 30 & wait", 1);
        let kid = shell.kids[0];
        let mut tree = ProcessTree::new(Clock::read().unwrap());
        tree.stat_every = u64::MAX; // never for its turn
        let t = pgtrail_proto::time::now();
        let state = |tree: &mut ProcessTree, i: i64| {
            let processes = tree.sample(shell.pid(), t + i * 1_000_000).unwrap();
            row(&processes, kid).state
        };
        assert_eq!(state(&mut tree, 0), "S");
        assert_eq!(state(&mut tree, 1), "S");
        assert_eq!(tree.stats_reused(), 1);
        // Stopping takes the process itself to run: its schedstat moves.
        shell.signal(kid, "-STOP");
        std::thread::sleep(std::time::Duration::from_millis(100));
        assert_eq!(state(&mut tree, 2), "T");
        // A stopped process is read every sample, so it is seen continue.
        shell.signal(kid, "-CONT");
        std::thread::sleep(std::time::Duration::from_millis(100));
        assert_eq!(state(&mut tree, 3), "S");
        assert_eq!(tree.stats_reused(), 1);
        assert_eq!(state(&mut tree, 4), "S");
        assert_eq!(tree.stats_reused(), 2);
    }
}
