//! Connection peaks: per instance (and per dimension value, or per bucket),
//! the highest client-backend count and when it was first reached, from
//! the window's rollups (see [`super::window`]).

use std::collections::HashMap;

use pgtrail_proto::pb::{self, Dimension};
use pgtrail_proto::time::MINUTE;

use super::window;
use super::{check_window, History, QueryError};
use crate::store::{InstanceRecord, Rollup};

/// One peak before it becomes a [`pb::Peak`]: the dimension's value, the
/// count, when, and the states at that moment.
type Entry = (Option<String>, u32, i64, HashMap<String, u32>);

/// The name a dimension has in rollup keys.
fn dimension_name(d: Dimension) -> Option<&'static str> {
    match d {
        Dimension::Unspecified => None,
        Dimension::State => Some("state"),
        Dimension::User => Some("user"),
        Dimension::Database => Some("database"),
        Dimension::Application => Some("application"),
        Dimension::Client => Some("client"),
    }
}

impl History {
    /// Per instance in `scope`, the highest client-backend count in
    /// `window`; per value of `by` when given; per bucket of `bucket_us`
    /// when positive. Instances without samples in the window are left out.
    pub fn peaks(
        &self,
        scope: &pb::Scope,
        window: &pb::Window,
        by: Dimension,
        bucket_us: i64,
    ) -> Result<Vec<pb::Peak>, QueryError> {
        check_window(window)?;
        if bucket_us < 0 || (bucket_us > 0 && bucket_us % MINUTE != 0) {
            return Err(QueryError::BadBucket);
        }
        let mut out = Vec::new();
        for r in self.resolve(scope)? {
            let (from, to) = (window.from_us, window.to_us);
            let pieces = if bucket_us > 0 {
                window::bucketed(&*self.store, r.id, from, to, bucket_us)?
                    .into_iter()
                    .map(|(start, rollup)| (Some(start), rollup))
                    .collect()
            } else {
                vec![(None, window::merged(&*self.store, r.id, from, to)?)]
            };
            for (bucket, rollup) in pieces {
                if rollup.samples == 0 {
                    continue;
                }
                out.extend(self.peaks_of(&r, &rollup, by, bucket)?);
            }
        }
        Ok(out)
    }

    fn peaks_of(
        &self,
        r: &InstanceRecord,
        rollup: &Rollup,
        by: Dimension,
        bucket: Option<i64>,
    ) -> Result<Vec<pb::Peak>, QueryError> {
        let entries: Vec<Entry> = match dimension_name(by) {
            None => vec![(
                None,
                rollup.max_total,
                rollup.max_at_us,
                rollup.by_state_at_max.clone(),
            )],
            Some(name) => {
                let prefix = format!("{name}\t");
                let mut values: Vec<_> = rollup
                    .maxima
                    .iter()
                    .filter_map(|(k, m)| {
                        let value = k.strip_prefix(&prefix)?;
                        Some((
                            Some(value.to_string()),
                            m.value as u32,
                            m.at_us,
                            Default::default(),
                        ))
                    })
                    .collect();
                values.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
                values
            }
        };
        let mut out = Vec::new();
        for (value, total, at, by_state) in entries {
            let facts = self.store.facts_at(r.id, at)?;
            out.push(pb::Peak {
                host: r.host.clone(),
                instance: r.instance.clone(),
                port: facts.as_ref().map(|f| f.port).filter(|&p| p != 0),
                at_us: at,
                total,
                by_state,
                max_connections: facts.as_ref().and_then(|f| f.max_connections),
                superuser_reserved_connections: facts
                    .as_ref()
                    .and_then(|f| f.superuser_reserved_connections),
                samples: u64::from(rollup.samples),
                value,
                bucket_start_us: bucket,
            });
        }
        Ok(out)
    }
}
