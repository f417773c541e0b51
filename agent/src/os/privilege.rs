//! What this OS user may read of another user's `/proc/PID`: its uid and
//! the two capabilities that matter, so the agent can say once what would
//! let it see the fields it cannot.
//!
//! `io`, `syscall` and `smaps_rollup` need the process's uid or
//! CAP_SYS_PTRACE; `io` and `syscall` also need CAP_DAC_READ_SEARCH when
//! the files' mode keeps other users out. `wchan` of such a process reads
//! "0".

use std::fs;

/// CAP_DAC_READ_SEARCH's bit in the capability sets.
const CAP_DAC_READ_SEARCH: u32 = 2;
/// CAP_SYS_PTRACE's bit in the capability sets.
const CAP_SYS_PTRACE: u32 = 19;

/// This process's uid and effective capabilities.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcAccess {
    /// The effective uid.
    pub uid: u32,
    /// Whether CAP_SYS_PTRACE is effective.
    pub sys_ptrace: bool,
    /// Whether CAP_DAC_READ_SEARCH is effective.
    pub dac_read_search: bool,
}

impl ProcAccess {
    /// Reads `/proc/self/status`; `None` when it cannot.
    pub fn of_self() -> Option<Self> {
        let status = fs::read_to_string("/proc/self/status").ok()?;
        Self::parse(&status)
    }

    fn parse(status: &str) -> Option<Self> {
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .map(str::trim)
        };
        let uid = field("Uid:")?.split_whitespace().nth(1)?.parse().ok()?;
        let caps = u64::from_str_radix(field("CapEff:")?, 16).ok()?;
        let has = |bit: u32| caps & (1 << bit) != 0;
        Some(Self {
            uid,
            sys_ptrace: has(CAP_SYS_PTRACE),
            dac_read_search: has(CAP_DAC_READ_SEARCH),
        })
    }
}

/// The plain words for processes whose restricted fields this agent could
/// not read: which fields, and what would allow them.
pub fn proc_access_advice(restricted: usize, processes: usize) -> String {
    let who = match ProcAccess::of_self() {
        Some(a) => {
            let mut missing = Vec::new();
            if !a.sys_ptrace {
                missing.push("CAP_SYS_PTRACE");
            }
            if !a.dac_read_search {
                missing.push("CAP_DAC_READ_SEARCH");
            }
            if missing.is_empty() {
                format!(" by uid {}", a.uid)
            } else {
                format!(" by uid {} without {}", a.uid, missing.join(" or "))
            }
        }
        None => String::new(),
    };
    format!(
        "io, syscall, wchan and smaps (PSS/USS) of {restricted} of {processes} processes are unreadable{who}: \
         run the agent as the server's OS user (postgres), or give it CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_uid_and_capabilities() {
        let status = "Name:\tx\nUid:\t1\t1\t1\t1\nCapEff:\t0000000000080004\n";
        let a = ProcAccess::parse(status).unwrap();
        assert_eq!(a.uid, 1);
        assert!(a.sys_ptrace && a.dac_read_search);
        let b = ProcAccess::parse("Uid:\t5\t5\t5\t5\nCapEff:\t0000000000000000\n").unwrap();
        assert!(!b.sys_ptrace && !b.dac_read_search);
        assert!(ProcAccess::of_self().is_some());
    }

    #[test]
    fn advice_names_both_remedies() {
        let text = proc_access_advice(3, 7);
        assert!(text.contains("3 of 7"), "{text}");
        assert!(
            text.contains("postgres") && text.contains("CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH")
        );
    }
}
