//! Pseudo-random rows for the store's tests: every field of
//! [`pb::Session`] and [`pb::Process`] set or not, with values that reach
//! the edges of their types (negative, zero, huge), from a seed, and
//! backends that come, go and run from one sample to the next.

use std::collections::BTreeMap;

use pgtrail_proto::pb;

use super::records::StoredSample;

/// A deterministic pseudo-random sequence (SplitMix64).
pub struct Rng(pub u64);

impl Rng {
    /// The next value.
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A value in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// True with the odds given in percent.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    /// `Some` of a value, seven times in ten.
    pub fn maybe<T>(&mut self, value: impl FnOnce(&mut Self) -> T) -> Option<T> {
        self.chance(70).then(|| value(self))
    }

    /// A short text, empty or not ASCII at times.
    pub fn text(&mut self) -> String {
        [
            "",
            "idle",
            "active",
            "idle in transaction",
            "ClientRead",
            "é✓",
        ][self.below(6) as usize]
            .repeat(1 + self.below(3) as usize)
    }

    /// A value that is negative, huge, zero or plain, in turn at random.
    pub fn signed(&mut self) -> i64 {
        match self.below(4) {
            0 => -(self.below(1000) as i64),
            1 => self.next() as i64,
            2 => 0,
            _ => self.below(1 << 40) as i64,
        }
    }
}

/// A session of `pid` with every other field at random.
pub fn session(rng: &mut Rng, pid: i32) -> pb::Session {
    pb::Session {
        pid,
        backend_type: rng.text(),
        backend_start_us: rng.maybe(Rng::signed),
        database: rng.maybe(Rng::text),
        user: rng.maybe(Rng::text),
        application_name: rng.maybe(Rng::text),
        client_addr: rng.maybe(Rng::text),
        client_hostname: rng.maybe(Rng::text),
        client_port: rng.maybe(|r| r.signed() as i32),
        xact_start_us: rng.maybe(Rng::signed),
        query_start_us: rng.maybe(Rng::signed),
        state_change_us: rng.maybe(Rng::signed),
        wait_event_type: rng.maybe(Rng::text),
        wait_event: rng.maybe(Rng::text),
        state: rng.maybe(Rng::text),
        backend_xid: rng.maybe(|r| r.next() as u32),
        backend_xmin: rng.maybe(|r| r.next() as u32),
        query_id: rng.maybe(Rng::next),
        pg_query_id: rng.maybe(Rng::signed),
        leader_pid: rng.maybe(|r| r.signed() as i32),
        blocking_pids: (0..rng.below(4)).map(|_| rng.signed() as i32).collect(),
        insufficient_privilege: rng.chance(10),
    }
}

/// A process of `pid` with every other field at random.
pub fn process(rng: &mut Rng, pid: i32) -> pb::Process {
    pb::Process {
        pid,
        ppid: rng.signed() as i32,
        title: rng.text(),
        kind: rng.below(20) as i32,
        state: rng.text(),
        start_time_us: rng.signed(),
        utime_us: rng.maybe(Rng::next),
        stime_us: rng.maybe(Rng::next),
        cpu_pct: rng.maybe(|r| r.below(10_000) as f32 / 7.0),
        rss_bytes: rng.maybe(Rng::next),
        pss_bytes: rng.maybe(Rng::next),
        uss_bytes: rng.maybe(Rng::next),
        read_bytes: rng.maybe(Rng::next),
        write_bytes: rng.maybe(Rng::next),
        wchan: rng.maybe(Rng::text),
        syscall: rng.maybe(Rng::signed),
        voluntary_ctxt_switches: rng.maybe(Rng::next),
        nonvoluntary_ctxt_switches: rng.maybe(Rng::next),
        blkio_delay_us: rng.maybe(Rng::next),
        threads: rng.maybe(|r| r.below(64) as u32),
        oom_score: rng.maybe(|r| r.signed() as i32),
    }
}

/// Moves `p`'s counters a little, as a second of an active backend does.
pub fn tick(rng: &mut Rng, p: &mut pb::Process) {
    let mut up = |v: &mut Option<u64>, by: u64| {
        *v = Some(v.unwrap_or(0).wrapping_add(rng.below(by)));
    };
    up(&mut p.utime_us, 20_000);
    up(&mut p.stime_us, 5_000);
    up(&mut p.read_bytes, 1 << 20);
    up(&mut p.voluntary_ctxt_switches, 100);
    up(&mut p.nonvoluntary_ctxt_switches, 10);
    p.cpu_pct = Some(rng.below(1000) as f32 / 10.0);
}

/// Up to 40 backends, each a session and its process.
#[derive(Debug, Default)]
pub struct Population {
    sessions: BTreeMap<i32, pb::Session>,
    processes: BTreeMap<i32, pb::Process>,
}

impl Population {
    /// The next sample, a keyframe: a few backends come or go, a few
    /// change in every field, about a third run (counters move, the state
    /// and blocking pids now and then), the rest stay as they were.
    pub fn step(&mut self, rng: &mut Rng) -> StoredSample {
        for pid in 0..40 {
            let here = self.sessions.contains_key(&pid);
            match rng.below(20) {
                0 if here => {
                    self.sessions.remove(&pid);
                    self.processes.remove(&pid);
                }
                0 | 1 => {
                    self.sessions.insert(pid, session(rng, pid));
                    self.processes.insert(pid, process(rng, pid));
                }
                2..=8 if here => {
                    tick(rng, self.processes.get_mut(&pid).expect("paired"));
                    if rng.chance(30) {
                        let s = self.sessions.get_mut(&pid).expect("here");
                        s.state = rng.maybe(Rng::text);
                        s.query_start_us = rng.maybe(Rng::signed);
                        s.blocking_pids.truncate(rng.below(3) as usize);
                        if rng.chance(50) {
                            s.blocking_pids.push(rng.signed() as i32);
                        }
                    }
                }
                _ => {}
            }
        }
        StoredSample {
            sessions: self.sessions.values().cloned().collect(),
            processes: self.processes.values().cloned().collect(),
            keyframe: true,
            ..Default::default()
        }
    }
}

/// A store in a directory of its own, removed when the guard drops.
pub fn temp_store() -> (tempfile::TempDir, super::SledStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = super::SledStore::open(dir.path()).unwrap();
    (dir, store)
}

/// Opens the store in `dir` again once the previous one has let go of it:
/// sled's background threads release a dropped store's lock a moment
/// later.
pub fn reopen(dir: &std::path::Path) -> super::SledStore {
    for _ in 0..200 {
        match super::SledStore::open(dir) {
            Ok(store) => return store,
            Err(_) => std::thread::sleep(std::time::Duration::from_millis(25)),
        }
    }
    super::SledStore::open(dir).unwrap()
}
