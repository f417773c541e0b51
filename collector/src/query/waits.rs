//! Wait events over a window, active-session-history style: how many
//! active-session samples each wait event (or CPU) had, and the queries
//! seen most in each, from rollups.

use std::collections::HashMap;

use pgtrail_proto::pb;

use super::{check_window, window, History, QueryError};
use crate::store::Rollup;

impl History {
    /// Wait events per instance in `scope` over `window`, most sampled
    /// first, each with its `top` queries.
    pub fn waits(
        &self,
        scope: &pb::Scope,
        w: &pb::Window,
        top: usize,
    ) -> Result<Vec<pb::WaitSummary>, QueryError> {
        check_window(w)?;
        let mut out = Vec::new();
        for r in self.resolve(scope)? {
            let rollup = window::merged::<Rollup>(&*self.store, r.id, w.from_us, w.to_us)?;
            let total: u64 = rollup.waits.values().sum();
            let port = self.port_at(&r, w.to_us)?;
            let mut queries: HashMap<&str, Vec<(u64, u64)>> = HashMap::new();
            for (key, n) in &rollup.wait_queries {
                if let Some((event, id)) = key.split_once('\t') {
                    if let Ok(id) = u64::from_str_radix(id, 16) {
                        queries.entry(event).or_default().push((id, *n));
                    }
                }
            }
            let mut events: Vec<(&String, &u64)> = rollup.waits.iter().collect();
            events.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
            for (event, samples) in events {
                let mut top_queries = queries.remove(event.as_str()).unwrap_or_default();
                top_queries.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
                top_queries.truncate(top);
                let texts = self
                    .store
                    .query_texts(&mut top_queries.iter().map(|(id, _)| *id))?;
                let (event_type, name) = match event.split_once(':') {
                    Some((t, e)) => (t.to_string(), e.to_string()),
                    None => (event.clone(), String::new()),
                };
                out.push(pb::WaitSummary {
                    host: r.host.clone(),
                    instance: r.instance.clone(),
                    port,
                    event_type,
                    event: name,
                    samples: *samples,
                    total_samples: total,
                    top_queries: top_queries
                        .into_iter()
                        .filter_map(|(id, n)| {
                            Some(pb::QueryCount {
                                query: texts.get(&id)?.clone(),
                                samples: n,
                            })
                        })
                        .collect(),
                });
            }
        }
        Ok(out)
    }
}
