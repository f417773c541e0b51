//! Reading one process from `/proc/PID`.

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
}

impl Clock {
    /// Reads the host's clock facts.
    pub fn read() -> procfs::ProcResult<Self> {
        Ok(Self {
            ticks_per_second: procfs::ticks_per_second().max(1),
            boot_time: procfs::boot_time_secs()? as Micros * SECOND,
            page_size: procfs::page_size(),
        })
    }

    /// Ticks as microseconds.
    pub fn ticks_to_micros(&self, ticks: u64) -> u64 {
        ticks.saturating_mul(1_000_000) / self.ticks_per_second
    }
}

/// Reads `/proc/PID`: stat (state, ppid, CPU times, start time, RSS,
/// threads), cmdline (the title), io and wchan. Returns `None` when the
/// process is gone. `cpu_pct` and `kind` are left for the caller.
pub fn read_process(pid: i32, clock: &Clock) -> Option<pb::Process> {
    let proc = Process::new(pid).ok()?;
    let stat = proc.stat().ok()?;
    let title = proc
        .cmdline()
        .ok()
        .map(|args| args.join(" ").trim().to_string())
        .filter(|t| !t.is_empty())
        .unwrap_or_else(|| stat.comm.clone());
    let io = proc.io().ok();
    let wchan = proc
        .wchan()
        .ok()
        .map(|w| w.trim().to_string())
        // "0" means running, or (for another user's process) hidden.
        .filter(|w| !w.is_empty() && w != "0");
    Some(pb::Process {
        pid,
        ppid: stat.ppid,
        title,
        kind: pb::ProcessKind::Unspecified as i32,
        state: stat.state.to_string(),
        start_time_us: clock.boot_time + clock.ticks_to_micros(stat.starttime) as Micros,
        utime_us: Some(clock.ticks_to_micros(stat.utime)),
        stime_us: Some(clock.ticks_to_micros(stat.stime)),
        cpu_pct: None,
        rss_bytes: Some(stat.rss.saturating_mul(clock.page_size)),
        read_bytes: io.as_ref().map(|io| io.read_bytes),
        write_bytes: io.as_ref().map(|io| io.write_bytes),
        wchan,
        threads: u32::try_from(stat.num_threads).ok(),
        ..Default::default()
    })
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
        // Our own io file is readable.
        assert!(me.read_bytes.is_some());
    }

    #[test]
    fn a_missing_process_is_none() {
        let clock = Clock::read().unwrap();
        assert!(read_process(i32::MAX, &clock).is_none());
    }
}
