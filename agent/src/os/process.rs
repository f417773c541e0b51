//! Reading one process from `/proc/PID`, split by cost and by privilege.
//!
//! - [`read_stat`]: `stat` and `status`, readable for any process and cheap:
//!   state, ppid, CPU, RSS, threads, block-IO delay, context switches.
//! - [`read_details`]: `cmdline`, `io`, `wchan`, `syscall`, `oom_score`.
//!   `io` and `syscall` need the process's uid or CAP_SYS_PTRACE (plus
//!   CAP_DAC_READ_SEARCH), and `wchan` of another user's process reads "0";
//!   what cannot be read is `None` and the details say so (`restricted`).
//!   A sleeping process whose context-switch counts have not moved has not
//!   run since it was last read, so its details cannot have changed: the
//!   caller may reuse them instead of reading four more files.
//! - [`read_memory`]: PSS and USS from `smaps_rollup`, ~0.4 ms a process,
//!   so read on a slower cadence.

use std::fs;
use std::io::ErrorKind;

use pgtrail_proto::pb;
use pgtrail_proto::time::{Micros, SECOND};
use procfs::process::Process;

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

/// Reads `/proc/PID/stat` and `status`. Returns `None` when the process is
/// gone. The title is `comm` until [`read_details`] gives the full one;
/// `cpu_pct` and `kind` are left for the caller.
pub fn read_stat(pid: i32, clock: &Clock) -> Option<pb::Process> {
    let proc = Process::new(pid).ok()?;
    let stat = proc.stat().ok()?;
    let status = proc.status().ok();
    Some(pb::Process {
        pid,
        ppid: stat.ppid,
        title: stat.comm.clone(),
        kind: pb::ProcessKind::Unspecified as i32,
        state: stat.state.to_string(),
        start_time_us: clock.boot_time + clock.ticks_to_micros(stat.starttime) as Micros,
        utime_us: Some(clock.ticks_to_micros(stat.utime)),
        stime_us: Some(clock.ticks_to_micros(stat.stime)),
        rss_bytes: Some(stat.rss.saturating_mul(clock.page_size)),
        threads: u32::try_from(stat.num_threads).ok(),
        blkio_delay_us: stat
            .delayacct_blkio_ticks
            .filter(|_| clock.delay_accounting)
            .map(|t| clock.ticks_to_micros(t)),
        voluntary_ctxt_switches: status.as_ref().and_then(|s| s.voluntary_ctxt_switches),
        nonvoluntary_ctxt_switches: status.as_ref().and_then(|s| s.nonvoluntary_ctxt_switches),
        ..Default::default()
    })
}

/// Reads `cmdline`, `io`, `wchan`, `syscall` and `oom_score` of `pid`.
pub fn read_details(pid: i32) -> Details {
    let dir = format!("/proc/{pid}");
    let mut restricted = false;
    let mut read = |name: &str| match fs::read(format!("{dir}/{name}")) {
        Ok(bytes) => Some(bytes),
        Err(e) => {
            restricted |= e.kind() == ErrorKind::PermissionDenied;
            None
        }
    };
    let title = read("cmdline").and_then(|raw| title_of(&raw));
    let io = read("io").map(|raw| String::from_utf8_lossy(&raw).into_owned());
    let field = |name: &str| {
        io.as_deref()?
            .lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse::<u64>().ok())
    };
    let (read_bytes, write_bytes) = (field("read_bytes:"), field("write_bytes:"));
    let syscall_raw = read("syscall");
    let syscall = syscall_raw.as_deref().and_then(parse_syscall);
    let oom_score =
        read("oom_score").and_then(|raw| String::from_utf8_lossy(&raw).trim().parse().ok());
    // "0" means running, or (for a process we may not trace) hidden; when
    // `syscall` was refused, the wchan of a sleeper is hidden too.
    let wchan = read("wchan")
        .map(|raw| String::from_utf8_lossy(&raw).trim().to_string())
        .filter(|w| !w.is_empty() && w != "0" && syscall_raw.is_some());
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
    let mut p = read_stat(pid, clock)?;
    read_details(pid).apply(&mut p);
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
    fn a_missing_process_is_none() {
        let clock = Clock::read().unwrap();
        assert!(read_process(i32::MAX, &clock).is_none());
        assert_eq!(read_memory(i32::MAX), Err(false));
    }
}
