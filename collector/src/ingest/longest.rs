//! The longest episodes that ended in each hour, kept in the hour's rollup
//! as episodes close, so "the N longest over a week" reads a few hour
//! records instead of every episode of the week.
//!
//! An hour lists at most [`LONGEST_KEPT`] episodes per kind and counts all
//! that ended in it; when it counts more than it lists, the ones left out
//! are no longer than its shortest listed one, which is what lets a reader
//! skip the hour or know it must scan it (see `query::episodes`).

use std::cmp::Reverse;

use crate::store::{EpisodeKind, EpisodeSpan, LongestEnded, Rollup};

/// How many episodes of a kind an hour lists.
pub const LONGEST_KEPT: usize = 16;

/// Notes in an hour rollup that an episode of `kind` ended in its hour.
pub fn note_ended(hour: &mut Rollup, kind: EpisodeKind, span: EpisodeSpan) {
    let kind = kind as i32;
    let list = match hour.longest.iter().position(|l| l.kind == kind) {
        Some(i) => &mut hour.longest[i],
        None => {
            hour.longest.push(LongestEnded {
                kind,
                ..Default::default()
            });
            hour.longest.last_mut().expect("just pushed")
        }
    };
    list.ended += 1;
    let rank = |s: &EpisodeSpan| (Reverse(s.duration()), s.started_us, s.pid);
    let at = list.spans.partition_point(|s| rank(s) <= rank(&span));
    if at < LONGEST_KEPT {
        list.spans.insert(at, span);
        list.spans.truncate(LONGEST_KEPT);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(pid: i32, started_us: i64, ended_us: i64) -> EpisodeSpan {
        EpisodeSpan {
            pid,
            started_us,
            ended_us,
        }
    }

    #[test]
    fn keeps_the_longest_per_kind_and_counts_all() {
        let mut hour = Rollup::default();
        let kind = EpisodeKind::IdleInTransaction;
        for i in 0..(LONGEST_KEPT as i64 + 10) {
            // Durations 0, 7, 14, ... 7 × (n - 1) µs, in a scrambled order.
            let d = (i * 11) % (LONGEST_KEPT as i64 + 10) * 7;
            note_ended(&mut hour, kind, span(i as i32, 1_000 + i, 1_000 + i + d));
        }
        note_ended(&mut hour, EpisodeKind::Idle, span(99, 0, 5));
        assert_eq!(hour.longest.len(), 2);
        let list = &hour.longest[0];
        assert_eq!(list.ended, LONGEST_KEPT as u64 + 10);
        assert_eq!(list.spans.len(), LONGEST_KEPT);
        let durations: Vec<i64> = list.spans.iter().map(|s| s.duration()).collect();
        let mut expected: Vec<i64> = (0..LONGEST_KEPT as i64 + 10).map(|d| d * 7).collect();
        expected.reverse();
        expected.truncate(LONGEST_KEPT);
        assert_eq!(durations, expected);
        assert_eq!(hour.longest[1].spans, vec![span(99, 0, 5)]);
    }

    #[test]
    fn equal_lengths_keep_the_earliest_start_first() {
        let mut hour = Rollup::default();
        let kind = EpisodeKind::SlowQuery;
        note_ended(&mut hour, kind, span(2, 20, 30));
        note_ended(&mut hour, kind, span(1, 10, 20));
        note_ended(&mut hour, kind, span(3, 0, 20));
        let pids: Vec<i32> = hour.longest[0].spans.iter().map(|s| s.pid).collect();
        assert_eq!(pids, vec![3, 1, 2]);
    }
}
