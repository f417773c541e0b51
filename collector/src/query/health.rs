//! Process-tree integrity over a window: missing auxiliary processes,
//! autovacuum at its limit, restarts, and time near the connection limit.

use pgtrail_proto::pb;

use super::{check_window, window, History, QueryError};
use crate::store::{EpisodeKind, Rollup};

impl History {
    /// Health of each instance in `scope` over `window`.
    pub fn health(
        &self,
        scope: &pb::Scope,
        w: &pb::Window,
    ) -> Result<Vec<pb::InstanceHealth>, QueryError> {
        check_window(w)?;
        let mut out = Vec::new();
        for r in self.resolve(scope)? {
            let rollup = window::merged::<Rollup>(&*self.store, r.id, w.from_us, w.to_us)?;
            let mut episodes = Vec::new();
            for kind in [
                EpisodeKind::AuxMissing,
                EpisodeKind::AutovacuumSaturated,
                EpisodeKind::Restart,
            ] {
                episodes.extend(self.episodes_of(&r, w, kind, 0)?);
            }
            episodes.sort_by_key(|e| e.started_us);
            out.push(pb::InstanceHealth {
                port: self.port_at(&r, w.to_us)?,
                facts: self.store.facts_at(r.id, w.to_us)?,
                host: r.host,
                instance: r.instance,
                episodes,
                above_80_us: rollup.above_80_us,
                above_95_us: rollup.above_95_us,
                covered_us: rollup.covered_us,
                max_autovacuum_workers: rollup.autovacuum_workers,
            });
        }
        Ok(out)
    }
}
