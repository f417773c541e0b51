//! Memory around an instance: the host's total and available memory, and
//! the usage and limit of the postmaster's cgroup (v2 `memory.current` and
//! `memory.max`, v1 `memory.usage_in_bytes` and `memory.limit_in_bytes`).
//! procfs does not read cgroupfs; this does.
//!
//! [`CgroupMemory`] resolves the cgroup's directories once (per connection)
//! so that each sample reads only the files.

use std::fs;
use std::path::{Path, PathBuf};

use pgtrail_proto::pb;

/// v1 reports "no limit" as a huge page-aligned number; anything at or above
/// this is unlimited.
const V1_UNLIMITED: u64 = 1 << 62;

/// Total memory of the host, in bytes (`MemTotal` in /proc/meminfo).
pub fn host_memory_bytes() -> Option<u64> {
    let meminfo = fs::read_to_string("/proc/meminfo").ok()?;
    parse_meminfo_total(&meminfo)
}

/// Memory the host can still give without swapping, in bytes
/// (`MemAvailable` in /proc/meminfo).
pub fn host_available_bytes() -> Option<u64> {
    let meminfo = fs::read_to_string("/proc/meminfo").ok()?;
    meminfo_field(&meminfo, "MemAvailable:")
}

/// The memory limit of `pid`'s cgroup in bytes, or `None` when there is no
/// limit or it cannot be read.
pub fn cgroup_memory_limit(pid: i32) -> Option<u64> {
    CgroupMemory::of(pid)?.limit()
}

/// The memory usage now: the host's, and the cgroup's when known.
pub fn usage(cgroup: Option<&CgroupMemory>) -> pb::MemoryUsage {
    pb::MemoryUsage {
        host_available_bytes: host_available_bytes(),
        cgroup_usage_bytes: cgroup.and_then(CgroupMemory::usage),
        cgroup_limit_bytes: cgroup.and_then(CgroupMemory::limit),
    }
}

/// The memory-controller directories of one process's cgroup.
#[derive(Debug, Clone, PartialEq)]
pub struct CgroupMemory {
    /// (leaf directory, hierarchy root, usage file, limit file), one per
    /// hierarchy that has the memory controller.
    hierarchies: Vec<(PathBuf, PathBuf, &'static str, &'static str)>,
}

impl CgroupMemory {
    /// The cgroup of `pid`, from `/proc/PID/cgroup`; `None` when unreadable.
    pub fn of(pid: i32) -> Option<Self> {
        let cgroups = fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
        Some(Self::in_root(Path::new("/sys/fs/cgroup"), &cgroups))
    }

    fn in_root(root: &Path, proc_cgroup: &str) -> Self {
        let mut hierarchies = Vec::new();
        for line in proc_cgroup.lines() {
            let mut parts = line.splitn(3, ':');
            let (Some(_), Some(controllers), Some(path)) =
                (parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            let (base, usage, limit) = if controllers.is_empty() {
                (root.to_path_buf(), "memory.current", "memory.max")
            } else if controllers.split(',').any(|c| c == "memory") {
                (
                    root.join("memory"),
                    "memory.usage_in_bytes",
                    "memory.limit_in_bytes",
                )
            } else {
                continue;
            };
            let leaf = base.join(path.trim_start_matches('/'));
            hierarchies.push((leaf, base, usage, limit));
        }
        Self { hierarchies }
    }

    /// Memory charged to the cgroup, in bytes. The root cgroup has no usage
    /// file on v2; then `None`.
    pub fn usage(&self) -> Option<u64> {
        self.hierarchies
            .iter()
            .find_map(|(leaf, _, usage, _)| read_number(&leaf.join(usage)))
    }

    /// The tightest limit from the cgroup up to the root, in bytes; `None`
    /// when unlimited or unreadable.
    pub fn limit(&self) -> Option<u64> {
        let mut tightest: Option<u64> = None;
        for (leaf, base, _, file) in &self.hierarchies {
            let mut dir = leaf.clone();
            loop {
                if let Some(limit) = read_number(&dir.join(file)).filter(|&n| n < V1_UNLIMITED) {
                    tightest = Some(tightest.map_or(limit, |t| t.min(limit)));
                }
                if dir == *base || !dir.pop() {
                    break;
                }
            }
        }
        tightest
    }
}

fn parse_meminfo_total(meminfo: &str) -> Option<u64> {
    meminfo_field(meminfo, "MemTotal:")
}

fn meminfo_field(meminfo: &str, name: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with(name))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

#[cfg(test)]
fn cgroup_limit_in(root: &Path, proc_cgroup: &str) -> Option<u64> {
    CgroupMemory::in_root(root, proc_cgroup).limit()
}

/// A number in a cgroupfs file; "max" (v2 unlimited) is `None`.
fn read_number(file: &Path) -> Option<u64> {
    let text = fs::read_to_string(file).ok()?;
    text.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_total_memory() {
        assert_eq!(
            parse_meminfo_total("MemTotal:       24576000 kB\nMemFree: 1 kB\n"),
            Some(24576000 * 1024)
        );
        assert!(host_memory_bytes().unwrap() > 0);
    }

    #[test]
    fn finds_the_tightest_v2_limit_up_the_tree() {
        let root = tempfile::tempdir().unwrap();
        let leaf = root.path().join("system.slice/postgresql.service");
        fs::create_dir_all(&leaf).unwrap();
        fs::write(leaf.join("memory.max"), "max\n").unwrap();
        fs::write(root.path().join("system.slice/memory.max"), "1073741824\n").unwrap();
        let limit = cgroup_limit_in(root.path(), "0::/system.slice/postgresql.service\n");
        assert_eq!(limit, Some(1 << 30));
        assert_eq!(cgroup_limit_in(root.path(), "0::/\n"), None);
    }

    #[test]
    fn reads_a_v1_limit_and_ignores_unlimited() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("memory/pg");
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("memory.limit_in_bytes"), "536870912\n").unwrap();
        fs::write(
            root.path().join("memory/memory.limit_in_bytes"),
            "9223372036854771712\n",
        )
        .unwrap();
        let limit = cgroup_limit_in(root.path(), "4:memory:/pg\n3:cpu,cpuacct:/pg\n");
        assert_eq!(limit, Some(512 << 20));
        fs::write(dir.join("memory.usage_in_bytes"), "1048576\n").unwrap();
        let cg = CgroupMemory::in_root(root.path(), "4:memory:/pg\n");
        assert_eq!(cg.usage(), Some(1 << 20));
    }

    #[test]
    fn this_host_has_available_memory() {
        let now = usage(CgroupMemory::of(std::process::id() as i32).as_ref());
        assert!(now.host_available_bytes.unwrap() > 0);
    }
}
