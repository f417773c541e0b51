//! Idle-in-transaction episodes overlapping a window, from the episodes
//! maintained at ingest.

use pgtrail_proto::pb;
use pgtrail_proto::time::Micros;

use super::{check_window, History, QueryError};
use crate::store::{EpisodeKind, EpisodeRecord};

impl History {
    /// Idle-in-transaction episodes in `scope` that overlap `window` and
    /// lasted at least `min_duration`. An episode still open lasts until the
    /// instance's latest sample. Ordered by start.
    pub fn leaks(
        &self,
        scope: &pb::Scope,
        window: &pb::Window,
        min_duration: Micros,
    ) -> Result<Vec<pb::Episode>, QueryError> {
        check_window(window)?;
        let kind = EpisodeKind::IdleInTransaction;
        let mut found: Vec<(pb::Episode, Option<u64>)> = Vec::new();
        for r in self.resolve(scope)? {
            let Some((_, last_sample)) = self.store.sample_bounds(r.id)? else {
                continue;
            };
            let port = self.port_at(&r, last_sample)?;
            let closed = self.store.closed_episodes(kind, r.id, window.from_us)?;
            let open = self
                .store
                .open_episodes(kind, r.id)?
                .into_iter()
                .map(|mut e| {
                    e.last_seen_us = e.last_seen_us.max(last_sample);
                    e
                });
            for e in closed.into_iter().chain(open) {
                let end = e.ended_us.unwrap_or(e.last_seen_us);
                if e.started_us > window.to_us || end < window.from_us {
                    continue;
                }
                if end - e.started_us < min_duration {
                    continue;
                }
                let query_id = e.query_id;
                found.push((episode(&r.host, &r.instance, port, e), query_id));
            }
        }
        let texts = self
            .store
            .query_texts(&mut found.iter().filter_map(|(_, id)| *id))?;
        let mut out: Vec<pb::Episode> = found
            .into_iter()
            .map(|(mut e, id)| {
                e.last_query = id.and_then(|id| texts.get(&id).cloned());
                e
            })
            .collect();
        out.sort_by(|a, b| {
            (a.started_us, &a.host, &a.instance, a.pid).cmp(&(
                b.started_us,
                &b.host,
                &b.instance,
                b.pid,
            ))
        });
        Ok(out)
    }
}

fn episode(host: &str, instance: &str, port: Option<u32>, e: EpisodeRecord) -> pb::Episode {
    pb::Episode {
        host: host.to_string(),
        instance: instance.to_string(),
        port,
        pid: e.pid,
        backend_start_us: e.backend_start_us,
        user: e.user,
        database: e.database,
        application_name: e.application_name,
        client_addr: e.client_addr,
        xact_start_us: e.xact_start_us,
        started_us: e.started_us,
        ended_us: e.ended_us,
        last_seen_us: e.last_seen_us,
        last_query: None,
    }
}
