//! Memory: the largest processes at the window's end (from the sample at
//! or before it), the highest totals over the window (from rollups), and
//! the facts the worst-case estimate needs.

use std::collections::HashMap;

use pgtrail_proto::pb;

use super::{check_window, window, History, QueryError};
use crate::store::Rollup;

impl History {
    /// Memory of each instance in `scope`: `top` processes by RSS at the
    /// end of `w`, totals over `w`.
    pub fn mem(
        &self,
        scope: &pb::Scope,
        w: &pb::Window,
        top: usize,
    ) -> Result<Vec<pb::InstanceMemory>, QueryError> {
        check_window(w)?;
        let mut out = Vec::new();
        for r in self.resolve(scope)? {
            let Some((sampled_at, sample)) = self.store.sample_at(r.id, w.to_us)? else {
                continue;
            };
            let rollup = window::merged::<Rollup>(&*self.store, r.id, w.from_us, w.to_us)?;
            let sessions: HashMap<i32, &pb::Session> =
                sample.sessions.iter().map(|s| (s.pid, s)).collect();
            let mut procs: Vec<&pb::Process> = sample.processes.iter().collect();
            procs.sort_by(|a, b| b.rss_bytes.cmp(&a.rss_bytes).then(a.pid.cmp(&b.pid)));
            procs.truncate(top);
            let texts = self.store.query_texts(
                &mut procs
                    .iter()
                    .filter_map(|p| sessions.get(&p.pid).and_then(|s| s.query_id)),
            )?;
            let top = procs
                .into_iter()
                .map(|p| {
                    let s = sessions.get(&p.pid);
                    pb::ProcessMemory {
                        pid: p.pid,
                        kind: p.kind,
                        user: s.and_then(|s| s.user.clone()),
                        database: s.and_then(|s| s.database.clone()),
                        application_name: s.and_then(|s| s.application_name.clone()),
                        rss_bytes: p.rss_bytes,
                        pss_bytes: p.pss_bytes,
                        uss_bytes: p.uss_bytes,
                        query: s
                            .and_then(|s| s.query_id)
                            .and_then(|id| texts.get(&id).cloned()),
                        state: s.and_then(|s| s.state.clone()),
                    }
                })
                .collect();
            let rss = rollup.rss_total.unwrap_or_default();
            out.push(pb::InstanceMemory {
                port: self.port_at(&r, sampled_at)?,
                facts: self.store.facts_at(r.id, sampled_at)?,
                host: r.host,
                instance: r.instance,
                sampled_at_us: sampled_at,
                top,
                max_rss_total_bytes: rss.value,
                max_rss_total_at_us: rss.at_us,
                max_pss_total_bytes: rollup.pss_total.map(|m| m.value),
                peak_connections: rollup.max_total,
                memory: sample.memory,
            });
        }
        Ok(out)
    }
}
