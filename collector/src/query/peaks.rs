//! Connection peaks: per instance, the highest client-backend count in a
//! window, from minute rollups for whole minutes and raw samples for the
//! partial minutes at the edges (at most two minutes of samples).

use pgtrail_proto::pb;
use pgtrail_proto::time::{Micros, MINUTE};

use super::{check_window, History, QueryError};
use crate::ingest::rollup::{client_counts_of, minute_of};
use crate::store::InstanceId;

/// The best candidate so far.
#[derive(Debug, Default)]
struct Best {
    at: Micros,
    total: u32,
    by_state: std::collections::HashMap<String, u32>,
    samples: u64,
    found: bool,
}

impl Best {
    fn offer(&mut self, at: Micros, total: u32, by_state: &std::collections::HashMap<String, u32>) {
        if !self.found || total > self.total || (total == self.total && at < self.at) {
            self.found = true;
            self.at = at;
            self.total = total;
            self.by_state = by_state.clone();
        }
    }
}

impl History {
    /// Per instance in `scope`, the highest client-backend count in
    /// `window`. Instances without samples in the window are left out.
    pub fn peaks(
        &self,
        scope: &pb::Scope,
        window: &pb::Window,
    ) -> Result<Vec<pb::Peak>, QueryError> {
        check_window(window)?;
        let mut out = Vec::new();
        for r in self.resolve(scope)? {
            let best = self.peak_of(r.id, window.from_us, window.to_us)?;
            if !best.found {
                continue;
            }
            let facts = self.store.facts_at(r.id, best.at)?;
            out.push(pb::Peak {
                port: facts.as_ref().map(|f| f.port).filter(|&p| p != 0),
                at_us: best.at,
                total: best.total,
                by_state: best.by_state,
                max_connections: facts.as_ref().and_then(|f| f.max_connections),
                superuser_reserved_connections: facts
                    .as_ref()
                    .and_then(|f| f.superuser_reserved_connections),
                samples: best.samples,
                host: r.host,
                instance: r.instance,
            });
        }
        Ok(out)
    }

    fn peak_of(&self, id: InstanceId, from: Micros, to: Micros) -> Result<Best, QueryError> {
        let mut best = Best::default();
        // Whole minutes inside the window come from rollups.
        let first_whole = minute_of(from) + if minute_of(from) == from { 0 } else { MINUTE };
        let end_whole = minute_of(to.saturating_add(1)); // exclusive
        let mut raw = vec![(from, to)];
        if first_whole < end_whole {
            for (_, rollup) in self.store.minutes(id, first_whole, end_whole - MINUTE)? {
                best.samples += u64::from(rollup.samples);
                best.offer(rollup.max_at_us, rollup.max_total, &rollup.by_state_at_max);
            }
            raw = vec![(from, first_whole - 1), (end_whole, to)];
        }
        for (a, b) in raw {
            for (t, sample) in self.store.samples(id, a, b)? {
                let (total, by_state) = client_counts_of(&sample.sessions);
                best.samples += 1;
                best.offer(t, total, &by_state);
            }
        }
        Ok(best)
    }
}
