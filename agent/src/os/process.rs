//! Reading one process from `/proc/PID`, split by cost and by privilege.
//! The files are parsed by hand (no per-line allocation, no parsing of
//! fields the agent does not use); [`super::ProcessTree`] reads them through
//! kept-open descriptors, the functions here open and close them for
//! one-off reads.
//!
//! - [`read_stat`]: `stat` and `status`, readable for any process and cheap:
//!   state, ppid, CPU, RSS, threads, block-IO delay, context switches.
//! - [`read_details`]: `cmdline`, `io`, `wchan`, `syscall`, `oom_score`.
//!   `io` and `syscall` need the process's uid or CAP_SYS_PTRACE (plus
//!   CAP_DAC_READ_SEARCH), and `wchan` of another user's process reads "0";
//!   what cannot be read is `None` and the details say so (`restricted`).
//!   A sleeping process whose CPU time (`schedstat`) has not moved has not
//!   run since it was last read, so its details and context switches cannot
//!   have changed: the caller may reuse them instead of reading six more
//!   files.
//! - [`read_memory`]: PSS and USS from `smaps_rollup`, ~0.3 ms a process,
//!   so read on a slower cadence.

use std::fs;
use std::io::ErrorKind;

use pgtrail_proto::pb;
use pgtrail_proto::time::{Micros, SECOND};

use super::files::{Name, ProcFiles};

/// The host facts needed to turn `/proc` ticks and pages into time and bytes.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    /// Clock ticks per second (`sysconf(_SC_CLK_TCK)`).
    pub ticks_per_second: u64,
    /// Boot time, microseconds since the epoch.
    pub boot_time: Micros,
    /// Memory page size in bytes.
    pub page_size: u64,
    /// Whether the kernel accounts block-IO delay per task
    /// (`kernel.task_delayacct`; always on before Linux 5.14).
    pub delay_accounting: bool,
}

impl Clock {
    /// Reads the host's clock facts.
    pub fn read() -> procfs::ProcResult<Self> {
        let delay_accounting = fs::read_to_string("/proc/sys/kernel/task_delayacct")
            .map(|v| v.trim() != "0")
            .unwrap_or(true);
        Ok(Self {
            ticks_per_second: procfs::ticks_per_second().max(1),
            boot_time: procfs::boot_time_secs()? as Micros * SECOND,
            page_size: procfs::page_size(),
            delay_accounting,
        })
    }

    /// Ticks as microseconds.
    pub fn ticks_to_micros(&self, ticks: u64) -> u64 {
        ticks.saturating_mul(1_000_000) / self.ticks_per_second
    }
}

/// What [`read_details`] found: the fields that change only when the
/// process runs, and whether privilege hid some of them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Details {
    /// The process title.
    pub title: Option<String>,
    /// `io` read_bytes.
    pub read_bytes: Option<u64>,
    /// `io` write_bytes.
    pub write_bytes: Option<u64>,
    /// The kernel function it sleeps in.
    pub wchan: Option<String>,
    /// The system call it is in (number).
    pub syscall: Option<i64>,
    /// `oom_score`.
    pub oom_score: Option<i32>,
    /// True when `io` or `syscall` was refused for lack of privilege.
    pub restricted: bool,
}

impl Details {
    /// Copies the details into `p`.
    pub fn apply(&self, p: &mut pb::Process) {
        if let Some(title) = &self.title {
            p.title.clone_from(title);
        }
        p.read_bytes = self.read_bytes;
        p.write_bytes = self.write_bytes;
        p.wchan.clone_from(&self.wchan);
        p.syscall = self.syscall;
        p.oom_score = self.oom_score;
    }
}

/// What the agent takes from `/proc/PID/stat`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Stat {
    pub comm: String,
    pub state: char,
    pub ppid: i32,
    pub utime: u64,
    pub stime: u64,
    pub threads: i64,
    pub starttime: u64,
    pub rss_pages: u64,
    pub blkio_ticks: Option<u64>,
}

impl Stat {
    /// The process as the wire carries it, before details, CPU % and kind.
    pub fn to_process(&self, pid: i32, clock: &Clock) -> pb::Process {
        pb::Process {
            pid,
            ppid: self.ppid,
            title: self.comm.clone(),
            kind: pb::ProcessKind::Unspecified as i32,
            state: self.state.to_string(),
            start_time_us: self.start_time_us(clock),
            utime_us: Some(clock.ticks_to_micros(self.utime)),
            stime_us: Some(clock.ticks_to_micros(self.stime)),
            rss_bytes: Some(self.rss_pages.saturating_mul(clock.page_size)),
            threads: u32::try_from(self.threads).ok(),
            blkio_delay_us: self
                .blkio_ticks
                .filter(|_| clock.delay_accounting)
                .map(|t| clock.ticks_to_micros(t)),
            ..Default::default()
        }
    }

    /// The start time, microseconds since the epoch.
    pub fn start_time_us(&self, clock: &Clock) -> Micros {
        clock.boot_time + clock.ticks_to_micros(self.starttime) as Micros
    }
}

/// Parses `/proc/PID/stat`. The command name may hold spaces and
/// parentheses, so the fields start after the last `)`.
pub(super) fn parse_stat(raw: &[u8]) -> Option<Stat> {
    let open = raw.iter().position(|&b| b == b'(')?;
    let close = raw.iter().rposition(|&b| b == b')')?;
    if close < open {
        return None;
    }
    let rest = std::str::from_utf8(&raw[close + 1..]).ok()?;
    let mut stat = Stat {
        comm: String::from_utf8_lossy(&raw[open + 1..close]).into_owned(),
        state: '?',
        ppid: 0,
        utime: 0,
        stime: 0,
        threads: 0,
        starttime: 0,
        rss_pages: 0,
        blkio_ticks: None,
    };
    let mut last = 0;
    // Field numbers as in proc(5): the state is the third.
    for (field, value) in (3..).zip(rest.split_ascii_whitespace()) {
        last = field;
        match field {
            3 => stat.state = value.chars().next()?,
            4 => stat.ppid = value.parse().ok()?,
            14 => stat.utime = value.parse().ok()?,
            15 => stat.stime = value.parse().ok()?,
            20 => stat.threads = value.parse().ok()?,
            22 => stat.starttime = value.parse().ok()?,
            24 => stat.rss_pages = value.parse().ok()?,
            42 => {
                stat.blkio_ticks = value.parse().ok();
                break;
            }
            _ => {}
        }
    }
    (last >= 24).then_some(stat)
}

/// The CPU time of a process's main thread in nanoseconds, from
/// `/proc/PID/schedstat`; it moves whenever the thread runs at all, even
/// for less than a clock tick. `None` when the kernel keeps no scheduler
/// statistics (all zeros).
pub(super) fn parse_schedstat(raw: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(raw).ok()?;
    let ns: u64 = text.split_ascii_whitespace().next()?.parse().ok()?;
    (ns > 0).then_some(ns)
}

/// The voluntary and non-voluntary context switches in `/proc/PID/status`.
pub(super) fn parse_switches(raw: &[u8]) -> (Option<u64>, Option<u64>) {
    let text = String::from_utf8_lossy(raw);
    let (mut voluntary, mut nonvoluntary) = (None, None);
    // They are the last lines of the file.
    for line in text.lines().rev() {
        if let Some(v) = line.strip_prefix("voluntary_ctxt_switches:") {
            voluntary = v.trim().parse().ok();
        } else if let Some(v) = line.strip_prefix("nonvoluntary_ctxt_switches:") {
            nonvoluntary = v.trim().parse().ok();
        }
        if voluntary.is_some() && nonvoluntary.is_some() {
            break;
        }
    }
    (voluntary, nonvoluntary)
}

/// Reads `stat` through `files`; `None` when the process is gone.
pub(super) fn stat_of(files: &mut ProcFiles, buf: &mut Vec<u8>) -> Option<Stat> {
    let n = files.read(Name::Stat, buf).ok()?;
    parse_stat(&buf[..n])
}

/// Reads the context switches from `status` through `files`.
pub(super) fn switches_of(files: &mut ProcFiles, buf: &mut Vec<u8>) -> (Option<u64>, Option<u64>) {
    match files.read(Name::Status, buf) {
        Ok(n) => parse_switches(&buf[..n]),
        Err(_) => (None, None),
    }
}

/// Reads the main thread's CPU nanoseconds from `schedstat` through `files`.
pub(super) fn runtime_of(files: &mut ProcFiles, buf: &mut Vec<u8>) -> Option<u64> {
    let n = files.read(Name::Schedstat, buf).ok()?;
    parse_schedstat(&buf[..n])
}

/// Reads `cmdline`, `io`, `wchan`, `syscall` and `oom_score` through
/// `files`.
pub(super) fn details_of(files: &mut ProcFiles, buf: &mut Vec<u8>) -> Details {
    let mut restricted = false;
    let mut read = |name: Name, buf: &mut Vec<u8>| match files.read(name, buf) {
        Ok(n) => Some(n),
        Err(e) => {
            restricted |= e.kind() == ErrorKind::PermissionDenied;
            None
        }
    };
    let title = read(Name::Cmdline, buf).and_then(|n| title_of(&buf[..n]));
    let (read_bytes, write_bytes) = match read(Name::Io, buf) {
        Some(n) => {
            let text = String::from_utf8_lossy(&buf[..n]);
            let field = |name: &str| {
                text.lines()
                    .find_map(|l| l.strip_prefix(name)?.trim().parse::<u64>().ok())
            };
            (field("read_bytes:"), field("write_bytes:"))
        }
        None => (None, None),
    };
    let syscall_read = read(Name::Syscall, buf);
    let syscall = syscall_read.and_then(|n| parse_syscall(&buf[..n]));
    let oom_score = read(Name::OomScore, buf)
        .and_then(|n| String::from_utf8_lossy(&buf[..n]).trim().parse().ok());
    // "0" means running, or (for a process we may not trace) hidden; when
    // `syscall` was refused, the wchan of a sleeper is hidden too.
    let wchan = read(Name::Wchan, buf)
        .map(|n| String::from_utf8_lossy(&buf[..n]).trim().to_string())
        .filter(|w| !w.is_empty() && w != "0" && syscall_read.is_some());
    Details {
        title,
        read_bytes,
        write_bytes,
        wchan,
        syscall,
        oom_score,
        restricted,
    }
}

/// Reads `/proc/PID/stat` and `status`. Returns `None` when the process is
/// gone. The title is `comm` until [`read_details`] gives the full one;
/// `cpu_pct` and `kind` are left for the caller.
pub fn read_stat(pid: i32, clock: &Clock) -> Option<pb::Process> {
    let mut files = ProcFiles::transient(pid);
    let mut buf = Vec::new();
    let mut p = stat_of(&mut files, &mut buf)?.to_process(pid, clock);
    (p.voluntary_ctxt_switches, p.nonvoluntary_ctxt_switches) = switches_of(&mut files, &mut buf);
    Some(p)
}

/// Reads `cmdline`, `io`, `wchan`, `syscall` and `oom_score` of `pid`.
pub fn read_details(pid: i32) -> Details {
    details_of(&mut ProcFiles::transient(pid), &mut Vec::new())
}

/// PSS and USS (`Private_Clean + Private_Dirty`) of `pid` in bytes, from
/// `smaps_rollup`. `Err(true)` when refused for lack of privilege,
/// `Err(false)` when the process is gone or the kernel lacks the file.
pub fn read_memory(pid: i32) -> Result<(u64, u64), bool> {
    let text = fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .map_err(|e| e.kind() == ErrorKind::PermissionDenied)?;
    let kb = |name: &str| {
        text.lines().find_map(|l| {
            l.strip_prefix(name)?
                .trim()
                .strip_suffix("kB")?
                .trim()
                .parse::<u64>()
                .ok()
        })
    };
    let pss = kb("Pss:").ok_or(false)?;
    let uss = kb("Private_Clean:").unwrap_or(0) + kb("Private_Dirty:").unwrap_or(0);
    Ok((pss * 1024, uss * 1024))
}

/// Reads everything about `pid` but its memory: [`read_stat`] plus
/// [`read_details`]. Returns `None` when the process is gone.
pub fn read_process(pid: i32, clock: &Clock) -> Option<pb::Process> {
    let mut files = ProcFiles::transient(pid);
    let mut buf = Vec::new();
    let mut p = stat_of(&mut files, &mut buf)?.to_process(pid, clock);
    (p.voluntary_ctxt_switches, p.nonvoluntary_ctxt_switches) = switches_of(&mut files, &mut buf);
    details_of(&mut files, &mut buf).apply(&mut p);
    Some(p)
}

/// The title from a raw `cmdline` (NUL-separated arguments).
fn title_of(raw: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(raw);
    let title = text
        .split('\0')
        .filter(|a| !a.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    let title = title.trim();
    (!title.is_empty()).then(|| title.to_string())
}

/// The syscall number from `/proc/PID/syscall`: "NR args..." while in a
/// system call; "-1 sp pc" when blocked outside one and "running" when on a
/// CPU, both `None`.
fn parse_syscall(raw: &[u8]) -> Option<i64> {
    let text = std::str::from_utf8(raw).ok()?;
    let nr: i64 = text.split_whitespace().next()?.parse().ok()?;
    (nr >= 0).then_some(nr)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let clock = Clock::read().unwrap();
        let me = read_process(std::process::id() as i32, &clock).unwrap();
        assert_eq!(me.pid, std::process::id() as i32);
        assert!(me.rss_bytes.unwrap() > 0);
        assert!(me.start_time_us > clock.boot_time);
        assert!(me.start_time_us <= pgtrail_proto::time::now());
        assert!(me.threads.unwrap() >= 1);
        assert!(me.voluntary_ctxt_switches.is_some());
        assert!(me.oom_score.is_some());
        // Our own io file is readable.
        assert!(me.read_bytes.is_some());
        let (pss, uss) = read_memory(me.pid).unwrap();
        assert!(pss > 0 && uss > 0 && uss <= pss);
    }

    #[test]
    fn a_sleeping_child_shows_its_syscall() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(100));
        let d = read_details(child.id() as i32);
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(!d.restricted);
        let name = d.syscall.and_then(crate::os::syscall_name);
        assert!(
            matches!(name, Some("clock_nanosleep" | "nanosleep")),
            "{d:?}"
        );
        assert!(d.wchan.is_some(), "{d:?}");
        assert_eq!(d.title.as_deref(), Some("sleep 30"));
    }

    #[test]
    fn syscall_lines_parse() {
        assert_eq!(
            parse_syscall(b"232 0x3 0x7f 0x20 0x0 0x0 0x0 0x7ff 0x7f"),
            Some(232)
        );
        assert_eq!(parse_syscall(b"running\n"), None);
        assert_eq!(parse_syscall(b"-1 0x7ffd 0x7fda\n"), None);
    }

    #[test]
    fn stat_parses_after_the_last_parenthesis() {
        let raw = b"4242 (postgres: a) (b) c) S 17 4242 4242 0 -1 4194560 100 0 0 0 \
            250 75 0 0 20 0 1 0 123456 220000000 3000 18446744073709551615 1 1 0 0 0 0 0 \
            4096 0 0 0 0 17 1 0 0 9 0 0 0 0 0 0 0 0 0 0\n";
        let stat = parse_stat(raw).unwrap();
        assert_eq!(stat.comm, "postgres: a) (b) c");
        assert_eq!(stat.state, 'S');
        assert_eq!(stat.ppid, 17);
        assert_eq!((stat.utime, stat.stime), (250, 75));
        assert_eq!(stat.threads, 1);
        assert_eq!(stat.starttime, 123456);
        assert_eq!(stat.rss_pages, 3000);
        assert_eq!(stat.blkio_ticks, Some(9));
        assert_eq!(parse_stat(b"1 (x) S 0 0"), None, "truncated");
        assert_eq!(parse_stat(b"garbage"), None);
    }

    #[test]
    fn stat_agrees_with_procfs() {
        let me = std::process::id() as i32;
        let raw = fs::read(format!("/proc/{me}/stat")).unwrap();
        let ours = parse_stat(&raw).unwrap();
        let theirs = procfs::process::Process::myself().unwrap().stat().unwrap();
        assert_eq!(ours.comm, theirs.comm);
        assert_eq!(ours.ppid, theirs.ppid);
        assert_eq!(ours.starttime, theirs.starttime);
        assert_eq!(ours.blkio_ticks, theirs.delayacct_blkio_ticks);
    }

    #[test]
    fn status_and_schedstat_parse() {
        let status = b"Name:\tx\nThreads:\t1\nvoluntary_ctxt_switches:\t67\nnonvoluntary_ctxt_switches:\t21\n";
        assert_eq!(parse_switches(status), (Some(67), Some(21)));
        assert_eq!(parse_switches(b"Name:\tx\n"), (None, None));
        assert_eq!(parse_schedstat(b"27609622 12478261 88\n"), Some(27609622));
        assert_eq!(parse_schedstat(b"0 0 0\n"), None);
    }

    #[test]
    fn a_missing_process_is_none() {
        let clock = Clock::read().unwrap();
        assert!(read_process(i32::MAX, &clock).is_none());
        assert_eq!(read_memory(i32::MAX), Err(false));
    }
}
