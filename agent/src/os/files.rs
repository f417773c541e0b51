//! Kept-open `/proc/PID/*` files, re-read with `pread`.
//!
//! Opening and closing a `/proc` file costs more than rendering it (path
//! lookup, dentry and file setup and teardown): `stat` costs about 12 µs
//! opened, read and closed against 4 µs re-read through a kept-open
//! descriptor, `schedstat` 6.5 µs against 0.75 µs. [`ProcFiles`] opens each
//! file of one process on first use and keeps it open for the life of the
//! process; a descriptor keeps referring to the process it was opened for,
//! so once that process is gone reads fail (`ESRCH`) even if its pid is
//! reused, and the caller drops the files.
//!
//! Descriptors are counted against `RLIMIT_NOFILE` for the whole process:
//! when the kept files would pass three quarters of the soft limit, the soft
//! limit is raised once to the hard limit; past that budget, files are
//! opened, read and closed as before.

use std::fs::File;
use std::io::{self, ErrorKind};
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};

/// The `/proc/PID` files the agent reads, each kept open separately.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Name {
    Stat,
    Schedstat,
    Status,
    Io,
    Wchan,
    Syscall,
    Cmdline,
    OomScore,
}

impl Name {
    const ALL: usize = 8;

    fn file(self) -> &'static str {
        match self {
            Name::Stat => "stat",
            Name::Schedstat => "schedstat",
            Name::Status => "status",
            Name::Io => "io",
            Name::Wchan => "wchan",
            Name::Syscall => "syscall",
            Name::Cmdline => "cmdline",
            Name::OomScore => "oom_score",
        }
    }
}

/// One file's state.
#[derive(Debug, Default)]
enum Slot {
    /// Not opened yet, or not kept (over the descriptor budget).
    #[default]
    Closed,
    Open(Kept),
    /// Opening was refused for lack of privilege; not tried again for
    /// this process.
    Refused,
}

/// The files of one process.
#[derive(Debug)]
pub(super) struct ProcFiles {
    pid: i32,
    keep: bool,
    slots: [Slot; Name::ALL],
}

impl ProcFiles {
    /// Files of `pid` that are kept open between reads.
    pub(super) fn kept(pid: i32) -> Self {
        Self {
            pid,
            keep: true,
            slots: Default::default(),
        }
    }

    /// Files of `pid` that are opened, read and closed each time (one-off
    /// reads).
    pub(super) fn transient(pid: i32) -> Self {
        Self {
            keep: false,
            ..Self::kept(pid)
        }
    }

    /// Whether `name` is read through a descriptor kept since an earlier
    /// read (so it is the same process's as then).
    pub(super) fn is_open(&self, name: Name) -> bool {
        matches!(self.slots[name as usize], Slot::Open(_))
    }

    /// How many descriptors are held.
    #[cfg(test)]
    pub(super) fn open_count(&self) -> usize {
        self.slots
            .iter()
            .filter(|s| matches!(s, Slot::Open(_)))
            .count()
    }

    /// Reads the whole of `name` into `buf` and returns its length. Errors
    /// are the kernel's: `NotFound`/`ESRCH` when the process is gone (or the
    /// kernel lacks the file), `PermissionDenied` when refused.
    pub(super) fn read(&mut self, name: Name, buf: &mut Vec<u8>) -> io::Result<usize> {
        let slot = &mut self.slots[name as usize];
        match slot {
            Slot::Open(kept) => return read_all_at(&kept.file, buf),
            Slot::Refused => return Err(ErrorKind::PermissionDenied.into()),
            Slot::Closed => {}
        }
        let file = match File::open(format!("/proc/{}/{}", self.pid, name.file())) {
            Ok(file) => file,
            Err(e) => {
                if e.kind() == ErrorKind::PermissionDenied {
                    *slot = Slot::Refused;
                }
                return Err(e);
            }
        };
        let n = read_all_at(&file, buf)?;
        if self.keep {
            if let Some(kept) = Kept::new(file) {
                *slot = Slot::Open(kept);
            }
        }
        Ok(n)
    }
}

/// Reads a whole `/proc` file from offset 0. A `/proc` file renders in one
/// read when the buffer is big enough, so a short read is the end; a full
/// buffer is grown and the rest read.
fn read_all_at(file: &File, buf: &mut Vec<u8>) -> io::Result<usize> {
    if buf.len() < 512 {
        buf.resize(4096, 0);
    }
    let mut len = 0;
    loop {
        let n = file.read_at(&mut buf[len..], len as u64)?;
        len += n;
        if n == 0 || len < buf.len() {
            return Ok(len);
        }
        buf.resize(buf.len() * 2, 0);
    }
}

/// A descriptor counted against the budget while it is open.
#[derive(Debug)]
struct Kept {
    file: File,
}

impl Kept {
    /// Keeps `file` if the budget allows; else `None` (and `file` closes).
    fn new(file: File) -> Option<Self> {
        reserve().then_some(Self { file })
    }
}

impl Drop for Kept {
    fn drop(&mut self) {
        KEPT.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Descriptors kept open by every tree in this process.
static KEPT: AtomicUsize = AtomicUsize::new(0);
/// How many may be kept: three quarters of the soft `RLIMIT_NOFILE`, the
/// rest left to the program (sockets, the spool, the host's own files).
static BUDGET: OnceLock<AtomicUsize> = OnceLock::new();
/// Whether the soft limit was raised (done at most once).
static RAISED: Mutex<bool> = Mutex::new(false);

fn share_of(soft: Option<u64>) -> usize {
    // `None` is RLIM_INFINITY.
    let soft = usize::try_from(soft.unwrap_or(1 << 20)).unwrap_or(usize::MAX);
    soft - soft / 4
}

fn budget() -> &'static AtomicUsize {
    BUDGET.get_or_init(|| {
        let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile);
        AtomicUsize::new(share_of(limit.current))
    })
}

/// Takes one descriptor from the budget, raising the soft limit to the hard
/// one the first time the budget runs out.
fn reserve() -> bool {
    let kept = KEPT.fetch_add(1, Ordering::Relaxed) + 1;
    if kept <= budget().load(Ordering::Relaxed) {
        return true;
    }
    let mut raised = RAISED.lock().unwrap_or_else(|e| e.into_inner());
    if !*raised {
        *raised = true;
        use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
        let limit = getrlimit(Resource::Nofile);
        if limit.current.is_some() && limit.current != limit.maximum {
            let wanted = Rlimit {
                current: limit.maximum,
                maximum: limit.maximum,
            };
            if setrlimit(Resource::Nofile, wanted).is_ok() {
                budget().store(share_of(limit.maximum), Ordering::Relaxed);
            }
        }
    }
    drop(raised);
    if kept <= budget().load(Ordering::Relaxed) {
        true
    } else {
        KEPT.fetch_sub(1, Ordering::Relaxed);
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rereads_a_kept_file_and_fails_once_the_process_is_gone() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let mut files = ProcFiles::kept(child.id() as i32);
        let mut buf = Vec::new();
        let n = files.read(Name::Stat, &mut buf).unwrap();
        assert!(buf[..n].starts_with(format!("{} (sleep)", child.id()).as_bytes()));
        assert_eq!(files.open_count(), 1);
        let again = files.read(Name::Stat, &mut buf).unwrap();
        assert!(again > 0);
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(files.read(Name::Stat, &mut buf).is_err());
    }

    #[test]
    fn a_long_file_is_read_whole() {
        let mut buf = vec![0; 512];
        let mut files = ProcFiles::transient(std::process::id() as i32);
        let n = files.read(Name::Status, &mut buf).unwrap();
        assert!(n > 512, "{n}");
        assert!(std::str::from_utf8(&buf[..n])
            .unwrap()
            .contains("nonvoluntary_ctxt_switches:"));
        assert_eq!(files.open_count(), 0);
    }
}
