//! Memory limits around an instance: the host's total memory and the
//! memory limit of the postmaster's cgroup (v2 `memory.max`, v1
//! `memory.limit_in_bytes`). procfs does not read cgroupfs; this does.

use std::fs;
use std::path::Path;

/// v1 reports "no limit" as a huge page-aligned number; anything at or above
/// this is unlimited.
const V1_UNLIMITED: u64 = 1 << 62;

/// Total memory of the host, in bytes (`MemTotal` in /proc/meminfo).
pub fn host_memory_bytes() -> Option<u64> {
    let meminfo = fs::read_to_string("/proc/meminfo").ok()?;
    parse_meminfo_total(&meminfo)
}

/// The memory limit of `pid`'s cgroup in bytes, or `None` when there is no
/// limit or it cannot be read.
pub fn cgroup_memory_limit(pid: i32) -> Option<u64> {
    let cgroups = fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    cgroup_limit_in(Path::new("/sys/fs/cgroup"), &cgroups)
}

fn parse_meminfo_total(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Walks from the process's cgroup up to the root and returns the tightest
/// limit on the way.
fn cgroup_limit_in(root: &Path, proc_cgroup: &str) -> Option<u64> {
    let mut tightest: Option<u64> = None;
    for line in proc_cgroup.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(_), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let (base, file) = if controllers.is_empty() {
            (root.to_path_buf(), "memory.max")
        } else if controllers.split(',').any(|c| c == "memory") {
            (root.join("memory"), "memory.limit_in_bytes")
        } else {
            continue;
        };
        let mut dir = base.join(path.trim_start_matches('/'));
        loop {
            if let Some(limit) = read_limit(&dir.join(file)) {
                tightest = Some(tightest.map_or(limit, |t| t.min(limit)));
            }
            if dir == base || !dir.pop() {
                break;
            }
        }
    }
    tightest
}

fn read_limit(file: &Path) -> Option<u64> {
    let text = fs::read_to_string(file).ok()?;
    let text = text.trim();
    if text == "max" {
        return None;
    }
    text.parse().ok().filter(|&n| n < V1_UNLIMITED)
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
    }
}
