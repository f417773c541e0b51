//! Client sessions counted by state, user, database, application and
//! client, without hashing every session's five values every second.
//!
//! Each value an instance's sessions take along a dimension gets a number
//! the first time it is seen; a sample's counts are then counted by number.
//! The numbers of the last in-order sample's sessions are kept by pid, so
//! a session that a `delta` moved over unchanged (its row is the very row
//! of the sample before, see [`pgtrail_proto::unchanged`]) takes its
//! numbers from there: only sessions that changed are looked up.
//!
//! A number names one value only within its [`Numbering`]: each
//! `Dimensions` has its own, and takes a new one when it starts over, so
//! what is kept by number elsewhere (see [`super::seen`]) knows when to
//! forget.

use std::sync::atomic::{AtomicU64, Ordering};

use foldhash::HashMap;

use pgtrail_proto::pb;
use pgtrail_proto::time::Micros;

/// The dimensions client backends are counted by.
pub const DIMENSIONS: [&str; 5] = ["state", "user", "database", "application", "client"];

/// `DIMENSIONS[STATE]` is "state".
pub const STATE: usize = 0;

/// The state name used when the agent's role may not see a session's state.
pub const UNKNOWN: &str = "unknown";

/// Values numbered per dimension before all are forgotten and numbering
/// starts over (clients that come and go from ever new addresses).
pub const MAX_VALUES: usize = 10_000;

/// The value of a session along `DIMENSIONS[d]`, borrowed from it.
pub fn dimension_str(d: usize, s: &pb::Session) -> &str {
    match d {
        0 => s.state.as_deref().unwrap_or(UNKNOWN),
        1 => s.user.as_deref().unwrap_or(UNKNOWN),
        2 => s.database.as_deref().unwrap_or(UNKNOWN),
        3 => s.application_name.as_deref().unwrap_or_default(),
        4 => s.client_addr.as_deref().unwrap_or("local"),
        _ => "",
    }
}

/// A session's value numbers, one per dimension.
type Ids = [u32; DIMENSIONS.len()];

/// Which numbering value numbers belong to: a new one, unlike any other in
/// the process, for every [`Dimensions`] and every time one starts over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Numbering(u64);

impl Default for Numbering {
    fn default() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        Self(NEXT.fetch_add(1, Ordering::Relaxed))
    }
}

/// Client sessions counted along one dimension with one value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Count<'a> {
    /// The dimension, an index into [`DIMENSIONS`].
    pub dimension: usize,
    /// The value's number along it.
    pub id: u32,
    /// The value.
    pub value: &'a str,
    /// Sessions with that value.
    pub sessions: u32,
}

/// One instance's numbered values, and its last sample's sessions.
#[derive(Debug, Default)]
pub struct Dimensions {
    /// Per dimension, the values by number.
    values: [Vec<String>; DIMENSIONS.len()],
    /// Per dimension, the numbers by value.
    ids: [HashMap<String, u32>; DIMENSIONS.len()],
    /// The client sessions of the sample counted last, (pid, numbers)
    /// sorted by pid, and when it was taken.
    last: Vec<(i32, Ids)>,
    last_at: Option<Micros>,
    /// Per dimension, sessions by number (all zero between samples).
    counts: [Vec<u32>; DIMENSIONS.len()],
    /// What the numbers above belong to.
    numbering: Numbering,
}

/// The sessions of a sample moved over unchanged from the one before it.
#[derive(Debug, Clone, Copy)]
pub struct Moved<'a> {
    /// When the sample before was taken.
    pub since: Micros,
    /// The pids of the session rows moved over, sorted.
    pub pids: &'a [i32],
}

impl Dimensions {
    /// Counts the client sessions of the sample at `at` along every
    /// dimension, the values borrowed from `self`, and says which
    /// numbering their numbers belong to. `moved` names sessions whose rows
    /// are those of the sample before (taken at `moved.since`); they are
    /// not looked up when that is the sample counted last.
    pub fn count<'a, 's>(
        &'a mut self,
        at: Micros,
        sessions: impl Iterator<Item = &'s pb::Session>,
        moved: Option<Moved<'_>>,
    ) -> (Numbering, Vec<Count<'a>>) {
        if self.values.iter().any(|v| v.len() > MAX_VALUES) {
            *self = Self::default();
        }
        let mut moved = moved
            .filter(|m| self.last_at == Some(m.since))
            .map(|m| m.pids.iter().copied().peekable());
        let last = std::mem::take(&mut self.last);
        let mut before = last.iter().peekable();
        let mut now: Vec<(i32, Ids)> = Vec::with_capacity(last.len());
        let mut touched = Vec::new();
        for s in sessions {
            let pid = s.pid;
            // Pids come in order when rows are moved over (the receiver
            // sorts them); out of order, nothing is taken from before.
            let in_order = now.last().is_none_or(|&(p, _)| p < pid);
            let unchanged = in_order
                && moved.as_mut().is_some_and(|m| {
                    while m.next_if(|&p| p < pid).is_some() {}
                    m.next_if_eq(&pid).is_some()
                });
            let mut known = None;
            if unchanged {
                while before.next_if(|(p, _)| *p < pid).is_some() {}
                known = before.next_if(|(p, _)| *p == pid).map(|(_, ids)| *ids);
            }
            if !in_order {
                moved = None;
            }
            let ids =
                known.unwrap_or_else(|| std::array::from_fn(|d| self.id(d, dimension_str(d, s))));
            for (d, &id) in ids.iter().enumerate() {
                let n = &mut self.counts[d][id as usize];
                if *n == 0 {
                    touched.push((d, id));
                }
                *n += 1;
            }
            now.push((pid, ids));
        }
        if !now.is_sorted_by_key(|&(p, _)| p) {
            now.sort_by_key(|&(p, _)| p);
        }
        self.last = now;
        self.last_at = Some(at);
        let mut counted = Vec::with_capacity(touched.len());
        for (d, id) in touched {
            let n = std::mem::take(&mut self.counts[d][id as usize]);
            counted.push((d, id, n));
        }
        let this: &'a Self = self;
        let counts = counted
            .into_iter()
            .map(|(dimension, id, sessions)| Count {
                dimension,
                id,
                value: this.values[dimension][id as usize].as_str(),
                sessions,
            })
            .collect();
        (this.numbering, counts)
    }

    /// The number of `value` along dimension `d`.
    fn id(&mut self, d: usize, value: &str) -> u32 {
        if let Some(&id) = self.ids[d].get(value) {
            return id;
        }
        let id = self.values[d].len() as u32;
        self.values[d].push(value.to_string());
        self.ids[d].insert(value.to_string(), id);
        self.counts[d].push(0);
        id
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(pid: i32, state: &str, user: &str) -> pb::Session {
        pb::Session {
            pid,
            state: Some(state.into()),
            user: Some(user.into()),
            ..Default::default()
        }
    }

    fn sorted((_, counts): (Numbering, Vec<Count<'_>>)) -> Vec<(usize, String, u32)> {
        let mut counts: Vec<_> = counts
            .into_iter()
            .map(|c| (c.dimension, c.value.to_string(), c.sessions))
            .collect();
        counts.sort();
        counts
    }

    #[test]
    fn counts_every_dimension() {
        let mut dims = Dimensions::default();
        let sessions = [
            session(1, "idle", "app"),
            session(2, "active", "app"),
            session(3, "idle", "batch"),
        ];
        let counts = sorted(dims.count(10, sessions.iter(), None));
        assert!(counts.contains(&(STATE, "idle".into(), 2)));
        assert!(counts.contains(&(STATE, "active".into(), 1)));
        assert!(counts.contains(&(1, "app".into(), 2)));
        assert!(counts.contains(&(1, "batch".into(), 1)));
        assert!(counts.contains(&(2, UNKNOWN.into(), 3)));
        assert!(counts.contains(&(3, String::new(), 3)));
        assert!(counts.contains(&(4, "local".into(), 3)));
        assert_eq!(counts.len(), 7, "{counts:?}");
    }

    #[test]
    fn a_moved_session_counts_as_it_was_counted_before() {
        let mut dims = Dimensions::default();
        let first = [session(1, "idle", "app"), session(2, "active", "app")];
        dims.count(10, first.iter(), None);
        // Rows moved over are the rows before: counting them from before
        // must give what counting them anew gives.
        let second = [
            session(1, "idle", "app"),
            session(2, "idle", "app"),
            session(5, "active", "batch"),
        ];
        let moved = Moved {
            since: 10,
            pids: &[1],
        };
        let reused = sorted(dims.count(20, second.iter(), Some(moved)));
        let anew = sorted(Dimensions::default().count(20, second.iter(), None));
        assert_eq!(reused, anew);
    }

    #[test]
    fn numbers_are_taken_from_before_only_for_the_sample_counted_last() {
        let mut dims = Dimensions::default();
        dims.count(10, [session(1, "idle", "app")].iter(), None);
        // A sample that says its session 1 is unchanged since 5 (not the
        // sample counted last, at 10): its values are looked up, so its
        // state counts as what it is, not as what session 1 was at 10.
        let moved = Moved {
            since: 5,
            pids: &[1],
        };
        let counts = sorted(dims.count(20, [session(1, "active", "app")].iter(), Some(moved)));
        assert!(counts.contains(&(STATE, "active".into(), 1)), "{counts:?}");
        assert!(!counts.iter().any(|c| c.1 == "idle"), "{counts:?}");
    }

    #[test]
    fn starts_over_when_a_dimension_has_too_many_values() {
        let mut dims = Dimensions::default();
        let first = dims.numbering;
        for i in 0..=MAX_VALUES {
            let mut s = session(1, "idle", "app");
            s.client_addr = Some(format!("10.1.{}.{}", i / 256, i % 256));
            let (numbering, _) = dims.count(i as Micros, [s].iter(), None);
            assert_eq!(numbering, first, "one numbering until it starts over");
        }
        assert!(dims.values[4].len() > MAX_VALUES);
        let (numbering, _) = dims.count(1 << 40, [session(1, "idle", "app")].iter(), None);
        assert_ne!(numbering, first, "numbers now name other values");
        assert_ne!(numbering, Dimensions::default().numbering);
        assert_eq!(dims.values[4].len(), 1, "forgotten, then the one value");
    }
}
