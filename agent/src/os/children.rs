//! Listing the postmaster's children every sample.
//!
//! The kernel lists a task's children in `/proc/PID/task/TID/children`
//! (CONFIG_PROC_CHILDREN), one file per thread. The postmaster is
//! single-threaded, so [`Children`] keeps its main thread's file open and
//! re-reads it with `pread` (about a sixth of the cost of listing the task
//! directory and opening each thread's file). The kept file of a parent
//! that is gone reads as empty, so an empty read is done again from a fresh
//! open. A parent with more than one thread is listed thread by thread, and
//! without the files every process's parent is scanned.

use std::fs::File;
use std::os::unix::fs::FileExt;

/// Lists one parent's children, keeping its main thread's `children` file
/// open between samples.
#[derive(Debug, Default)]
pub(super) struct Children {
    /// The parent whose file is open, and the file.
    kept: Option<(i32, File)>,
    buf: Vec<u8>,
}

impl Children {
    /// The children of `parent` into `out` (cleared first). `threads` is
    /// the parent's thread count when known: only a parent known to be
    /// single-threaded is read through the kept file.
    pub(super) fn list(&mut self, parent: i32, threads: Option<u32>, out: &mut Vec<i32>) {
        out.clear();
        if threads == Some(1) && self.read_kept(parent, out) {
            return;
        }
        self.kept = None;
        list_tasks(parent, out);
    }

    /// Reads the main thread's file; false when it cannot be read.
    fn read_kept(&mut self, parent: i32, out: &mut Vec<i32>) -> bool {
        if self.kept.as_ref().is_none_or(|(pid, _)| *pid != parent) {
            match File::open(format!("/proc/{parent}/task/{parent}/children")) {
                Ok(file) => self.kept = Some((parent, file)),
                Err(_) => return false,
            }
        }
        let Some((_, file)) = &self.kept else {
            return false;
        };
        if self.buf.len() < 4096 {
            self.buf.resize(4096, 0);
        }
        let mut len = 0;
        loop {
            match file.read_at(&mut self.buf[len..], len as u64) {
                Ok(0) => break,
                Ok(n) => len += n,
                Err(_) => {
                    // The parent is gone (the caller finds out from its
                    // own files).
                    self.kept = None;
                    return false;
                }
            }
            if len == self.buf.len() {
                self.buf.resize(self.buf.len() * 2, 0);
            }
        }
        parse_pids(&self.buf[..len], out);
        if out.is_empty() {
            // A parent that is gone reads as childless: open afresh (a
            // postmaster always has children).
            self.kept = None;
            return false;
        }
        true
    }
}

/// Appends the pids in `raw` (decimal, separated by spaces) to `out`.
fn parse_pids(raw: &[u8], out: &mut Vec<i32>) {
    let mut pid: Option<i32> = None;
    for &b in raw {
        if b.is_ascii_digit() {
            let digit = i32::from(b - b'0');
            pid = pid
                .unwrap_or(0)
                .checked_mul(10)
                .and_then(|p| p.checked_add(digit));
            if pid.is_none() {
                return; // not a pid: the file is not what we expect
            }
        } else if let Some(p) = pid.take() {
            out.push(p);
        }
    }
    out.extend(pid);
}

/// The children of every thread of `parent`, or by scanning when the
/// kernel has no `children` files.
fn list_tasks(parent: i32, out: &mut Vec<i32>) {
    let listed = procfs::process::Process::new(parent).and_then(|p| {
        let mut pids = Vec::new();
        for task in p.tasks()? {
            pids.extend(task?.children()?);
        }
        Ok(pids)
    });
    match listed {
        Ok(pids) => out.extend(pids.into_iter().filter_map(|p| i32::try_from(p).ok())),
        Err(_) => out.extend(scan_children(parent)),
    }
}

/// The children of `parent` found by reading every process's parent.
pub(super) fn scan_children(parent: i32) -> Vec<i32> {
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

    fn sleeper() -> std::process::Child {
        Command::new("sleep").arg("30").spawn().unwrap()
    }

    #[test]
    fn scanning_agrees_with_the_children_file() {
        let mut child = sleeper();
        let me = std::process::id() as i32;
        let scanned = scan_children(me);
        let mut listed = Vec::new();
        list_tasks(me, &mut listed);
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(scanned.contains(&(child.id() as i32)));
        assert!(listed.contains(&(child.id() as i32)));
    }

    #[test]
    fn the_kept_file_follows_children_coming_and_going() {
        // A single-threaded parent of its own: `sh` with two sleepers.
        let mut parent = Command::new("sh")
            .args(["-c", "sleep 30 & sleep 30 & wait"])
            .spawn()
            .unwrap();
        let pid = parent.id() as i32;
        let mut children = Children::default();
        let mut out = Vec::new();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while out.len() < 2 && std::time::Instant::now() < deadline {
            children.list(pid, Some(1), &mut out);
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        assert!(children.kept.is_some(), "read through the kept file");
        let mut scanned = scan_children(pid);
        scanned.sort_unstable();
        let mut first = out.clone();
        first.sort_unstable();
        assert_eq!(first, scanned);
        assert_eq!(first.len(), 2);

        // One child gone: the same descriptor reads the new list.
        Command::new("kill")
            .arg(first[0].to_string())
            .status()
            .unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while out.contains(&first[0]) && std::time::Instant::now() < deadline {
            children.list(pid, Some(1), &mut out);
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        assert_eq!(out, vec![first[1]]);

        // The parent gone: nothing, and the file let go.
        parent.kill().unwrap();
        parent.wait().unwrap();
        children.list(pid, Some(1), &mut out);
        assert!(out.is_empty(), "{out:?}");
        assert!(children.kept.is_none());
        Command::new("kill")
            .arg(first[1].to_string())
            .status()
            .unwrap();
    }

    #[test]
    fn pids_parse() {
        let mut out = vec![7];
        parse_pids(b"12 345 6789 ", &mut out);
        assert_eq!(out, vec![7, 12, 345, 6789]);
        out.clear();
        parse_pids(b"", &mut out);
        assert!(out.is_empty());
        parse_pids(b"42", &mut out);
        assert_eq!(out, vec![42]);
    }
}
