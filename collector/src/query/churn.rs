//! Connection churn over a window, from rollups: sessions started (the
//! server's own count where it keeps one, PG 14+), the busiest minute, and
//! the lifetimes of the sessions seen ending.

use pgtrail_proto::pb;

use super::{check_window, window, History, QueryError};
use crate::store::{Resolution, Rollup};

impl History {
    /// Churn of each instance in `scope` over `window`.
    pub fn churn(
        &self,
        scope: &pb::Scope,
        w: &pb::Window,
    ) -> Result<Vec<pb::InstanceChurn>, QueryError> {
        check_window(w)?;
        let mut out = Vec::new();
        for r in self.resolve(scope)? {
            let minutes = window::bucketed::<Rollup>(
                &*self.store,
                r.id,
                w.from_us,
                w.to_us,
                Resolution::Minute.span(),
            )?;
            if minutes.is_empty() {
                continue;
            }
            let rollup = window::merged::<Rollup>(&*self.store, r.id, w.from_us, w.to_us)?;
            out.push(pb::InstanceChurn {
                port: self.port_at(&r, w.to_us)?,
                host: r.host,
                instance: r.instance,
                minutes: minutes.len() as u32,
                sessions_started: rollup.sessions_started,
                sessions_seen: rollup.sessions_seen,
                max_per_minute: minutes
                    .iter()
                    .map(|(_, m)| crate::ingest::rollup::started(m))
                    .max()
                    .unwrap_or(0),
                lifetimes: rollup.lifetimes,
            });
        }
        Ok(out)
    }
}
