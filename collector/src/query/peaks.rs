//! Connection peaks: per instance (and per dimension value, or per bucket),
//! the highest client-backend count and when it was first reached, from
//! the window's rollups (see [`super::window`]). Without a dimension only
//! the peak fields of each rollup are decoded ([`PeakRollup`]).

use std::collections::HashMap;

use pgtrail_proto::pb::{self, Dimension};
use pgtrail_proto::time::{Micros, MINUTE};

use super::fan_out::fan_out;
use super::window;
use super::{check_window, History, QueryError};
use crate::store::{InstanceRecord, Max, PeakRollup, Rollup};

/// One peak before it becomes a [`pb::Peak`]: the dimension's value, the
/// count, when, and the states at that moment.
type Entry = (Option<String>, u32, i64, HashMap<String, u32>);

/// A rollup's per-"dimension\tvalue" maxima.
type Maxima = HashMap<String, Max>;

/// A merged rollup as its peak fields and its maxima.
fn split(
    bucket: Option<Micros>,
    mut rollup: Rollup,
) -> (Option<Micros>, PeakRollup, Option<Maxima>) {
    let maxima = std::mem::take(&mut rollup.maxima);
    (bucket, rollup.into(), Some(maxima))
}

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
        let peaks = fan_out(self.resolve(scope)?, |r| {
            self.peaks_in(&r, window, by, bucket_us)
        })?;
        Ok(peaks.into_iter().flatten().collect())
    }

    /// One instance's peaks in `window`.
    fn peaks_in(
        &self,
        r: &InstanceRecord,
        window: &pb::Window,
        by: Dimension,
        bucket_us: i64,
    ) -> Result<Vec<pb::Peak>, QueryError> {
        let (from, to) = (window.from_us, window.to_us);
        let pieces: Vec<(Option<Micros>, PeakRollup, Option<Maxima>)> =
            match (dimension_name(by).is_some(), bucket_us > 0) {
                (false, false) => {
                    let all = window::merged::<PeakRollup>(&*self.store, r.id, from, to)?;
                    vec![(None, all, None)]
                }
                (false, true) => {
                    window::bucketed::<PeakRollup>(&*self.store, r.id, from, to, bucket_us)?
                        .into_iter()
                        .map(|(start, peak)| (Some(start), peak, None))
                        .collect()
                }
                (true, false) => {
                    let all = window::merged::<Rollup>(&*self.store, r.id, from, to)?;
                    vec![split(None, all)]
                }
                (true, true) => {
                    window::bucketed::<Rollup>(&*self.store, r.id, from, to, bucket_us)?
                        .into_iter()
                        .map(|(start, rollup)| split(Some(start), rollup))
                        .collect()
                }
            };
        let mut out = Vec::new();
        for (bucket, peak, maxima) in pieces {
            if peak.samples == 0 {
                continue;
            }
            out.extend(self.peaks_of(r, &peak, maxima.as_ref(), by, bucket)?);
        }
        Ok(out)
    }

    fn peaks_of(
        &self,
        r: &InstanceRecord,
        peak: &PeakRollup,
        maxima: Option<&Maxima>,
        by: Dimension,
        bucket: Option<i64>,
    ) -> Result<Vec<pb::Peak>, QueryError> {
        let entries: Vec<Entry> = match (dimension_name(by), maxima) {
            (Some(name), Some(maxima)) => {
                let prefix = format!("{name}\t");
                let mut values: Vec<_> = maxima
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
            _ => vec![(
                None,
                peak.max_total,
                peak.max_at_us,
                peak.by_state_at_max.clone(),
            )],
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
                samples: u64::from(peak.samples),
                value,
                bucket_start_us: bucket,
            });
        }
        Ok(out)
    }
}
