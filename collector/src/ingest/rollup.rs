//! Per-minute connection rollups, folded in as samples arrive, so questions
//! over days read one record a minute instead of sixty samples.

use std::collections::HashMap;

use pgtrail_proto::model::{Snapshot, CLIENT_BACKEND};
use pgtrail_proto::pb;
use pgtrail_proto::time::{Micros, MINUTE};

use crate::store::MinuteRollup;

/// The state name used when the agent's role may not see a session's state.
pub const UNKNOWN_STATE: &str = "unknown";

/// The start of the minute `t` falls in.
pub fn minute_of(t: Micros) -> Micros {
    t - t.rem_euclid(MINUTE)
}

/// Client backends of a snapshot by state.
pub fn client_counts(snapshot: &Snapshot) -> (u32, HashMap<String, u32>) {
    client_counts_of(&snapshot.sessions)
}

/// Client backends among `sessions` by state: the sessions
/// pg_stat_activity shows with `backend_type = 'client backend'`.
pub fn client_counts_of(sessions: &[pb::Session]) -> (u32, HashMap<String, u32>) {
    let mut by_state = HashMap::new();
    let mut total = 0;
    for s in sessions.iter().filter(|s| s.backend_type == CLIENT_BACKEND) {
        total += 1;
        let state = s.state.as_deref().unwrap_or(UNKNOWN_STATE);
        *by_state.entry(state.to_string()).or_insert(0) += 1;
    }
    (total, by_state)
}

/// Folds one sample's counts into a minute's rollup. The peak is the
/// highest total; on a tie the earlier moment wins, so the fold does not
/// depend on arrival order.
pub fn fold(rollup: &mut MinuteRollup, at: Micros, total: u32, by_state: &HashMap<String, u32>) {
    let better = rollup.samples == 0
        || total > rollup.max_total
        || (total == rollup.max_total && at < rollup.max_at_us);
    if better {
        rollup.max_total = total;
        rollup.max_at_us = at;
        rollup.by_state_at_max = by_state.clone();
    }
    for (state, n) in by_state {
        let max = rollup.state_max.entry(state.clone()).or_insert(0);
        *max = (*max).max(*n);
    }
    rollup.samples += 1;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn states(pairs: &[(&str, u32)]) -> HashMap<String, u32> {
        pairs.iter().map(|(s, n)| (s.to_string(), *n)).collect()
    }

    #[test]
    fn minutes_start_on_the_minute() {
        assert_eq!(minute_of(125 * 1_000_000), 120 * 1_000_000);
        assert_eq!(minute_of(120 * 1_000_000), 120 * 1_000_000);
        assert_eq!(minute_of(-1), -MINUTE);
    }

    #[test]
    fn keeps_the_first_highest_peak_and_per_state_maxima() {
        let mut r = MinuteRollup::default();
        fold(&mut r, 10, 3, &states(&[("idle", 3)]));
        fold(&mut r, 20, 5, &states(&[("idle", 2), ("active", 3)]));
        fold(&mut r, 30, 5, &states(&[("idle", 5)]));
        fold(&mut r, 5, 1, &states(&[("active", 1)]));
        assert_eq!(r.samples, 4);
        assert_eq!((r.max_total, r.max_at_us), (5, 20));
        assert_eq!(r.by_state_at_max, states(&[("idle", 2), ("active", 3)]));
        assert_eq!(r.state_max, states(&[("idle", 5), ("active", 3)]));
    }

    #[test]
    fn order_of_arrival_does_not_matter() {
        let mut a = MinuteRollup::default();
        let mut b = MinuteRollup::default();
        let s = states(&[("idle", 4)]);
        fold(&mut a, 10, 4, &s);
        fold(&mut a, 20, 4, &s);
        fold(&mut b, 20, 4, &s);
        fold(&mut b, 10, 4, &s);
        assert_eq!(a, b);
    }
}
