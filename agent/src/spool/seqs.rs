//! Per-instance sequence numbers that stay unique across agent restarts.
//!
//! The collector acknowledges by (instance, seq), so a restarted agent must
//! never hand out a number its spool may still hold. Numbers are reserved
//! in blocks of [`BLOCK`]: the file `seqs` records, per instance, the first
//! number not yet reserved, and is rewritten (write, fsync, rename) only
//! when a block runs out. A restart resumes at the recorded number, so at
//! worst a block's unused numbers are skipped: sequence numbers increase
//! but may jump, and gaps are counted by `dropped_before`, not by `seq`.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use super::SpoolError;

/// Numbers reserved at a time.
pub const BLOCK: u64 = 1000;

/// The sequence counters of every instance.
#[derive(Debug)]
pub struct Sequences {
    path: PathBuf,
    /// instance → (next to hand out, first not reserved).
    counters: HashMap<String, (u64, u64)>,
}

impl Sequences {
    /// Loads `dir/seqs` (none yet is fine). `floor` gives, per instance, a
    /// number already used (the highest in the spool), which the counter
    /// must pass.
    pub fn load(dir: &Path, floor: &HashMap<String, u64>) -> Result<Self, SpoolError> {
        let path = dir.join("seqs");
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(SpoolError::io("read", &path, e)),
        };
        let mut counters: HashMap<String, (u64, u64)> = HashMap::new();
        for line in text.lines() {
            if let Some((name, n)) = line.rsplit_once(' ') {
                if let Ok(n) = n.parse::<u64>() {
                    counters.insert(name.to_string(), (n, n));
                }
            }
        }
        for (name, &used) in floor {
            let c = counters.entry(name.clone()).or_insert((0, 0));
            if c.0 <= used {
                *c = (used + 1, used + 1);
            }
        }
        Ok(Self { path, counters })
    }

    /// The next number for `instance` (from 1), reserving a new block first
    /// when needed.
    pub fn next(&mut self, instance: &str) -> Result<u64, SpoolError> {
        let (next, reserved) = self.counters.get(instance).copied().unwrap_or((1, 1));
        let next = next.max(1);
        if next >= reserved {
            self.counters
                .insert(instance.to_string(), (next, next + BLOCK));
            self.save()?;
        }
        let c = self.counters.get_mut(instance).expect("just set");
        c.0 = next + 1;
        Ok(next)
    }

    fn save(&self) -> Result<(), SpoolError> {
        let mut names: Vec<_> = self.counters.iter().collect();
        names.sort();
        let text: String = names
            .into_iter()
            .map(|(name, (_, reserved))| format!("{name} {reserved}\n"))
            .collect();
        let tmp = self.path.with_extension("tmp");
        let write = || -> std::io::Result<()> {
            let mut f = File::create(&tmp)?;
            f.write_all(text.as_bytes())?;
            f.sync_all()?;
            fs::rename(&tmp, &self.path)
        };
        write().map_err(|e| SpoolError::io("write", &self.path, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_never_repeat_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = Sequences::load(dir.path(), &HashMap::new()).unwrap();
        assert_eq!(a.next("main").unwrap(), 1);
        assert_eq!(a.next("main").unwrap(), 2);
        assert_eq!(a.next("other").unwrap(), 1);
        drop(a);
        let mut b = Sequences::load(dir.path(), &HashMap::new()).unwrap();
        let n = b.next("main").unwrap();
        assert!(n > 2, "{n}");
        // The spool's own records push the counter further.
        let floor = HashMap::from([("main".to_string(), 5000)]);
        let mut c = Sequences::load(dir.path(), &floor).unwrap();
        assert_eq!(c.next("main").unwrap(), 5001);
    }
}
