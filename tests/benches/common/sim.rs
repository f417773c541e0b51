//! Realistic snapshots of one instance, without a server: what an agent
//! would send for 200 client backends (about 70 % idle, 10 % idle in
//! transaction, 20 % active, a few waiting on a lock) plus the auxiliary
//! processes, evolving over time.
//!
//! Churn per second of simulated time: each session redraws its state with
//! probability 0.1 (so about 20 of 200 change state each second, and an
//! active one picks a new query from a pool of 400 texts, popular ones more
//! often); each session ends with probability 1/600 (a 10-minute mean
//! lifetime) and is replaced by a new backend with a new pid. Active
//! processes accumulate CPU, context switches and IO every second; idle
//! ones do not move. Deterministic for a given seed.

use std::sync::Arc;

use pgtrail_proto::model::{query_hash, Snapshot, CLIENT_BACKEND};
use pgtrail_proto::pb::{self, ProcessKind};
use pgtrail_proto::time::{Micros, SECOND};

/// A small deterministic generator (splitmix64).
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed ^ 0x9e37_79b9_7f4a_7c15)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in [0, n).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Idle,
    IdleInTransaction,
    Active,
    LockWait,
}

const USERS: [&str; 4] = ["app", "app_ro", "reporting", "batch"];
const DATABASES: [&str; 3] = ["shop", "billing", "analytics"];
const APPS: [&str; 6] = [
    "checkout-api",
    "catalog-api",
    "billing-worker",
    "reports",
    "psql",
    "sidekiq",
];
const TABLES: [&str; 12] = [
    "orders",
    "order_items",
    "customers",
    "products",
    "invoices",
    "payments",
    "carts",
    "inventory",
    "shipments",
    "sessions",
    "audit_log",
    "coupons",
];

const AUX: [(&str, &str); 5] = [
    ("checkpointer", "postgres: checkpointer "),
    ("background writer", "postgres: background writer "),
    ("walwriter", "postgres: walwriter "),
    ("autovacuum launcher", "postgres: autovacuum launcher "),
    (
        "logical replication launcher",
        "postgres: logical replication launcher ",
    ),
];

#[derive(Debug, Clone)]
struct Slot {
    state: State,
    session: pb::Session,
    process: pb::Process,
}

/// One simulated instance.
#[derive(Debug, Clone)]
pub struct Sim {
    instance: String,
    rng: Rng,
    t: Micros,
    seq: u64,
    next_pid: i32,
    postmaster: pb::Process,
    aux: Vec<(pb::Session, pb::Process)>,
    slots: Vec<Slot>,
    texts: Vec<(u64, Arc<str>)>,
    text_of: std::collections::HashMap<u64, Arc<str>>,
    facts: pb::InstanceFacts,
    sessions_total: u64,
}

impl Sim {
    /// An instance named `instance` with `sessions` client backends, whose
    /// first sample is at `start`.
    pub fn new(seed: u64, instance: &str, start: Micros, sessions: usize) -> Self {
        let mut rng = Rng::new(seed);
        let texts = query_pool(&mut rng, 400);
        let pm_pid = 1000 + rng.below(1000) as i32;
        let pm_start = start - 30 * 24 * 3600 * SECOND;
        let postmaster = pb::Process {
            pid: pm_pid,
            ppid: 1,
            title: "/usr/lib/postgresql/15/bin/postgres -D /var/lib/postgresql/15/main".into(),
            kind: ProcessKind::Postmaster as i32,
            state: "S".into(),
            start_time_us: pm_start,
            utime_us: Some(12_000_000),
            stime_us: Some(8_000_000),
            cpu_pct: Some(0.0),
            rss_bytes: Some(30 << 20),
            pss_bytes: Some(12 << 20),
            uss_bytes: Some(2 << 20),
            read_bytes: Some(1 << 30),
            write_bytes: Some(1 << 28),
            wchan: Some("do_select".into()),
            syscall: Some(270),
            voluntary_ctxt_switches: Some(50_000),
            nonvoluntary_ctxt_switches: Some(400),
            blkio_delay_us: Some(0),
            threads: Some(1),
            oom_score: Some(0),
        };
        let aux = AUX
            .iter()
            .enumerate()
            .map(|(i, (bt, title))| {
                let pid = pm_pid + 1 + i as i32;
                let session = pb::Session {
                    pid,
                    backend_type: (*bt).into(),
                    backend_start_us: Some(pm_start),
                    wait_event_type: Some("Activity".into()),
                    wait_event: Some("CheckpointerMain".into()),
                    ..Default::default()
                };
                let process = pb::Process {
                    pid,
                    ppid: pm_pid,
                    title: (*title).into(),
                    kind: ProcessKind::from_backend_type(bt) as i32,
                    state: "S".into(),
                    start_time_us: pm_start,
                    utime_us: Some(1_000_000),
                    stime_us: Some(500_000),
                    cpu_pct: Some(0.0),
                    rss_bytes: Some(140 << 20),
                    pss_bytes: Some(20 << 20),
                    uss_bytes: Some(1 << 20),
                    read_bytes: Some(0),
                    write_bytes: Some(1 << 30),
                    wchan: Some("do_epoll_wait".into()),
                    syscall: Some(232),
                    voluntary_ctxt_switches: Some(100_000),
                    nonvoluntary_ctxt_switches: Some(100),
                    blkio_delay_us: Some(0),
                    threads: Some(1),
                    oom_score: Some(0),
                };
                (session, process)
            })
            .collect();
        let facts = pb::InstanceFacts {
            port: 5432,
            system_identifier: Some(7_300_000_000_000_000_000 + seed),
            version_num: 150_010,
            version: "PostgreSQL 15.10".into(),
            data_directory: Some("/var/lib/postgresql/15/main".into()),
            postmaster_pid: Some(pm_pid),
            postmaster_start_us: pm_start,
            max_connections: Some(300),
            superuser_reserved_connections: Some(3),
            work_mem_bytes: Some(4 << 20),
            hash_mem_multiplier: Some(2.0),
            max_parallel_workers_per_gather: Some(2),
            autovacuum_max_workers: Some(3),
            autovacuum: Some(true),
            archive_mode: Some("off".into()),
            host_memory_bytes: Some(32 << 30),
            cgroup_memory_limit_bytes: None,
            shared_buffers_bytes: Some(8 << 30),
        };
        let mut sim = Self {
            instance: instance.to_string(),
            rng,
            t: start - SECOND,
            seq: 0,
            next_pid: pm_pid + 100,
            postmaster,
            aux,
            slots: Vec::with_capacity(sessions),
            text_of: texts.iter().cloned().collect(),
            texts,
            facts,
            sessions_total: 0,
        };
        for _ in 0..sessions {
            let started = start - sim.rng.below(3600) as Micros * SECOND;
            let slot = sim.new_slot(started);
            sim.slots.push(slot);
        }
        sim
    }

    /// The time of the latest snapshot.
    pub fn now(&self) -> Micros {
        self.t
    }

    /// Advances `dt` (whole seconds; churn scales with it) and returns the
    /// snapshot of that moment.
    pub fn step(&mut self, dt: Micros) -> Snapshot {
        let secs = (dt / SECOND).max(1) as i32;
        self.t += dt;
        let p_redraw = 1.0 - 0.9f64.powi(secs);
        let p_end = 1.0 - (1.0 - 1.0 / 600.0f64).powi(secs);
        for i in 0..self.slots.len() {
            let r = self.rng.unit();
            if r < p_end {
                let started = self.t - self.rng.below(dt as u64) as Micros;
                self.slots[i] = self.new_slot(started);
            } else if r < p_end + p_redraw {
                let state = self.draw_state();
                self.enter(i, state, secs);
            }
            self.tick(i, secs);
        }
        self.lock_waits();
        for (_, p) in &mut self.aux {
            if self.rng.unit() < 0.3 {
                *p.utime_us.get_or_insert(0) += 10_000;
                *p.voluntary_ctxt_switches.get_or_insert(0) += 10;
            }
        }
        self.seq += 1;
        self.snapshot()
    }

    fn snapshot(&self) -> Snapshot {
        let mut sessions = Vec::with_capacity(self.slots.len() + self.aux.len());
        let mut processes = Vec::with_capacity(self.slots.len() + self.aux.len() + 1);
        processes.push(self.postmaster.clone());
        for (s, p) in &self.aux {
            sessions.push(s.clone());
            processes.push(p.clone());
        }
        let mut queries = pgtrail_proto::model::QueryTexts::default();
        for slot in &self.slots {
            if let Some(id) = slot.session.query_id {
                if let Some(text) = self.text_of.get(&id) {
                    queries.insert(id, text.clone());
                }
            }
            sessions.push(slot.session.clone());
            processes.push(slot.process.clone());
        }
        Snapshot {
            instance: self.instance.clone(),
            seq: self.seq,
            sampled_at: self.t,
            facts: Some(self.facts.clone()),
            sessions,
            processes,
            queries,
            dropped_before: 0,
            blind_spots: Vec::new(),
            memory: Some(pb::MemoryUsage {
                host_available_bytes: Some((20 << 30) + self.rng.clone().below(1 << 20)),
                cgroup_usage_bytes: None,
                cgroup_limit_bytes: None,
            }),
            sessions_total: Some(self.sessions_total),
        }
    }

    fn draw_state(&mut self) -> State {
        let r = self.rng.unit();
        if r < 0.70 {
            State::Idle
        } else if r < 0.80 {
            State::IdleInTransaction
        } else if r < 0.985 {
            State::Active
        } else {
            State::LockWait
        }
    }

    fn new_slot(&mut self, started: Micros) -> Slot {
        self.next_pid += 1 + self.rng.below(3) as i32;
        if self.next_pid > 4_000_000 {
            self.next_pid = self.postmaster.pid + 100;
        }
        self.sessions_total += 1;
        let pid = self.next_pid;
        let user = USERS[self.rng.below(USERS.len() as u64) as usize];
        let db = DATABASES[self.rng.below(DATABASES.len() as u64) as usize];
        let app = APPS[self.rng.below(APPS.len() as u64) as usize];
        let addr = format!("10.0.{}.{}", self.rng.below(4), 10 + self.rng.below(10));
        let port = 30_000 + self.rng.below(30_000) as i32;
        let session = pb::Session {
            pid,
            backend_type: CLIENT_BACKEND.into(),
            backend_start_us: Some(started),
            database: Some(db.into()),
            user: Some(user.into()),
            application_name: Some(app.into()),
            client_addr: Some(addr.clone()),
            client_hostname: None,
            client_port: Some(port),
            state_change_us: Some(started),
            state: Some("idle".into()),
            wait_event_type: Some("Client".into()),
            wait_event: Some("ClientRead".into()),
            ..Default::default()
        };
        let process = pb::Process {
            pid,
            ppid: self.postmaster.pid,
            title: format!("postgres: {user} {db} {addr}({port}) idle"),
            kind: ProcessKind::ClientBackend as i32,
            state: "S".into(),
            start_time_us: started,
            utime_us: Some(10_000),
            stime_us: Some(10_000),
            cpu_pct: Some(0.0),
            rss_bytes: Some((12 << 20) + self.rng.below(8 << 20)),
            pss_bytes: Some(3 << 20),
            uss_bytes: Some(1 << 20),
            read_bytes: Some(0),
            write_bytes: Some(0),
            wchan: Some("do_epoll_wait".into()),
            syscall: Some(232),
            voluntary_ctxt_switches: Some(20),
            nonvoluntary_ctxt_switches: Some(1),
            blkio_delay_us: Some(0),
            threads: Some(1),
            oom_score: Some(1),
        };
        let mut slot = Slot {
            state: State::Idle,
            session,
            process,
        };
        let state = self.draw_state();
        self.enter_slot(&mut slot, state, started);
        slot
    }

    fn enter(&mut self, i: usize, state: State, secs: i32) {
        let at = self.t - self.rng.below(secs as u64 * SECOND as u64) as Micros;
        let mut slot = self.slots[i].clone();
        self.enter_slot(&mut slot, state, at);
        self.slots[i] = slot;
    }

    /// Moves a session into `state` at `at`, as PostgreSQL would report it.
    fn enter_slot(&mut self, slot: &mut Slot, state: State, at: Micros) {
        let s = &mut slot.session;
        let p = &mut slot.process;
        let prefix = p.title.rsplit_once(' ').map_or("", |(a, _)| a).to_string();
        match state {
            State::Idle => {
                s.state = Some("idle".into());
                s.xact_start_us = None;
                s.backend_xid = None;
                s.backend_xmin = None;
                s.wait_event_type = Some("Client".into());
                s.wait_event = Some("ClientRead".into());
                s.blocking_pids.clear();
                p.title = format!("{prefix} idle");
                p.state = "S".into();
                p.wchan = Some("do_epoll_wait".into());
                p.syscall = Some(232);
            }
            State::IdleInTransaction => {
                s.state = Some("idle in transaction".into());
                s.xact_start_us.get_or_insert(at - SECOND);
                s.backend_xid = Some(700_000 + self.rng.below(100_000) as u32);
                s.wait_event_type = Some("Client".into());
                s.wait_event = Some("ClientRead".into());
                s.blocking_pids.clear();
                p.title = format!("{prefix} idle in transaction");
                p.state = "S".into();
                p.wchan = Some("do_epoll_wait".into());
                p.syscall = Some(232);
            }
            State::Active | State::LockWait => {
                let text = self.pick_text();
                s.state = Some("active".into());
                s.query_id = Some(text);
                s.pg_query_id = Some(text as i64 >> 1);
                s.query_start_us = Some(at);
                if s.xact_start_us.is_none() || self.rng.unit() < 0.8 {
                    s.xact_start_us = Some(at);
                }
                s.backend_xmin = Some(700_000 + self.rng.below(100_000) as u32);
                if state == State::LockWait {
                    s.wait_event_type = Some("Lock".into());
                    s.wait_event = Some("transactionid".into());
                    p.title = format!("{prefix} UPDATE waiting");
                    p.wchan = Some("do_epoll_wait".into());
                    p.state = "S".into();
                } else {
                    let r = self.rng.unit();
                    let (wt, we, ps, wchan) = if r < 0.6 {
                        (None, None, "R", None)
                    } else if r < 0.85 {
                        (Some("IO"), Some("DataFileRead"), "D", Some("io_schedule"))
                    } else {
                        (
                            Some("LWLock"),
                            Some("BufferMapping"),
                            "S",
                            Some("futex_wait_queue"),
                        )
                    };
                    s.wait_event_type = wt.map(Into::into);
                    s.wait_event = we.map(Into::into);
                    s.blocking_pids.clear();
                    p.title = format!("{prefix} SELECT");
                    p.state = ps.into();
                    p.wchan = wchan.map(Into::into);
                    p.syscall = if ps == "R" { None } else { Some(17) };
                }
            }
        }
        s.state_change_us = Some(at);
        slot.state = state;
    }

    /// What a second (or `secs`) of life does to a process's counters, in
    /// the units `/proc` has them: CPU time in clock ticks (10 ms at
    /// USER_HZ 100), IO in pages. CPU % is what the agent works out from
    /// the ticks and the time between its reads, which is never exactly
    /// the interval (a few milliseconds either way).
    fn tick(&mut self, i: usize, secs: i32) {
        const TICK: u64 = 10_000;
        let busy = matches!(self.slots[i].state, State::Active);
        let ticks = self.rng.below(40) * secs as u64;
        let (user, system) = (ticks - ticks / 8, ticks / 8);
        let elapsed = (secs as u64 * 1_000_000 + self.rng.below(10_000)).saturating_sub(5_000);
        let r = ticks * TICK;
        let p = &mut self.slots[i].process;
        if busy {
            *p.utime_us.get_or_insert(0) += user * TICK;
            *p.stime_us.get_or_insert(0) += system * TICK;
            p.cpu_pct = Some((r as f64 * 100.0 / elapsed as f64) as f32);
            *p.voluntary_ctxt_switches.get_or_insert(0) += 5 + r / 10_000;
            *p.nonvoluntary_ctxt_switches.get_or_insert(0) += r / 100_000;
            *p.read_bytes.get_or_insert(0) += (r * 8) & !0xfff;
            *p.rss_bytes.get_or_insert(0) += r & 0xf000;
        } else {
            p.cpu_pct = Some(0.0);
        }
    }

    /// Points every lock waiter at an idle-in-transaction session.
    fn lock_waits(&mut self) {
        let holder = self
            .slots
            .iter()
            .find(|s| s.state == State::IdleInTransaction)
            .map(|s| s.session.pid);
        for slot in &mut self.slots {
            if slot.state == State::LockWait {
                slot.session.blocking_pids = holder.into_iter().collect();
            }
        }
    }

    /// A query id, popular texts more often (a cubic skew over the pool).
    fn pick_text(&mut self) -> u64 {
        let u = self.rng.unit();
        let i = ((u * u * u) * self.texts.len() as f64) as usize;
        self.texts[i.min(self.texts.len() - 1)].0
    }
}

/// `n` query texts, 60 to 400 characters, shaped like an application's.
fn query_pool(rng: &mut Rng, n: usize) -> Vec<(u64, Arc<str>)> {
    (0..n)
        .map(|i| {
            let t = TABLES[rng.below(TABLES.len() as u64) as usize];
            let u = TABLES[rng.below(TABLES.len() as u64) as usize];
            let text = match i % 4 {
                0 => format!("SELECT {t}.id, {t}.created_at, {t}.status, {t}.amount FROM {t} WHERE {t}.customer_id = $1 AND {t}.status = ANY($2) ORDER BY {t}.created_at DESC LIMIT 50 /* q{i} */"),
                1 => format!("UPDATE {t} SET status = $1, updated_at = now() WHERE id = $2 /* q{i} */"),
                2 => format!("INSERT INTO {t} (customer_id, status, amount, created_at) VALUES ($1, $2, $3, now()) RETURNING id /* q{i} */"),
                _ => format!("SELECT date_trunc('hour', a.created_at) AS h, count(*), sum(b.amount) FROM {t} a JOIN {u} b ON b.{t}_id = a.id WHERE a.created_at > now() - interval '1 day' GROUP BY 1 ORDER BY 1 /* q{i} */"),
            };
            (query_hash(&text), Arc::from(text))
        })
        .collect()
}
