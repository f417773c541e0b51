//! Episodes of one kind overlapping a window, from the episodes maintained
//! at ingest: closed ones by one range scan from the window's start, plus
//! those still open.

use pgtrail_proto::pb;
use pgtrail_proto::time::Micros;

use super::{check_window, History, QueryError};
use crate::store::{EpisodeKind, EpisodeRecord, InstanceRecord};

impl History {
    /// Episodes of `kind` in `scope` that overlap `window` and lasted at
    /// least `min_duration`. An episode still open lasts until the
    /// instance's latest sample. Ordered by start.
    pub fn episodes(
        &self,
        scope: &pb::Scope,
        window: &pb::Window,
        kind: EpisodeKind,
        min_duration: Micros,
    ) -> Result<Vec<pb::Episode>, QueryError> {
        check_window(window)?;
        let mut out = Vec::new();
        for r in self.resolve(scope)? {
            out.extend(self.episodes_of(&r, window, kind, min_duration)?);
        }
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

    /// One instance's episodes of `kind` overlapping `window`.
    pub(crate) fn episodes_of(
        &self,
        r: &InstanceRecord,
        window: &pb::Window,
        kind: EpisodeKind,
        min_duration: Micros,
    ) -> Result<Vec<pb::Episode>, QueryError> {
        let Some((_, last_sample)) = self.store.sample_bounds(r.id)? else {
            return Ok(Vec::new());
        };
        let port = self.port_at(r, last_sample)?;
        let closed = self.store.closed_episodes(kind, r.id, window.from_us)?;
        let open = self
            .store
            .open_episodes(kind, r.id)?
            .into_iter()
            .map(|mut e| {
                e.last_seen_us = e.last_seen_us.max(last_sample);
                e
            });
        let mut found = Vec::new();
        for e in closed.into_iter().chain(open) {
            let end = e.ended_us.unwrap_or(e.last_seen_us);
            if e.started_us > window.to_us || end < window.from_us {
                continue;
            }
            if end - e.started_us < min_duration {
                continue;
            }
            found.push(e);
        }
        let texts = self.store.query_texts(&mut found.iter().flat_map(|e| {
            e.query_id
                .into_iter()
                .chain(e.blockers.iter().filter_map(|b| b.query_id))
        }))?;
        Ok(found
            .into_iter()
            .map(|e| episode(r, port, kind, e, &texts))
            .collect())
    }
}

fn episode(
    r: &InstanceRecord,
    port: Option<u32>,
    kind: EpisodeKind,
    e: EpisodeRecord,
    texts: &std::collections::HashMap<u64, String>,
) -> pb::Episode {
    let text = |id: Option<u64>| id.and_then(|id| texts.get(&id).cloned());
    pb::Episode {
        host: r.host.clone(),
        instance: r.instance.clone(),
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
        last_query: text(e.query_id),
        kind: kind as i32,
        backend_type: e.backend_type,
        query_start_us: e.query_start_us,
        wait_events: e.wait_events,
        blockers: e
            .blockers
            .into_iter()
            .map(|b| pb::Blocker {
                pid: b.pid,
                backend_start_us: b.backend_start_us,
                user: b.user,
                application_name: b.application_name,
                state: b.state,
                query: text(b.query_id),
                idle_in_transaction: b.idle_in_transaction,
                first_seen_us: b.first_seen_us,
                last_seen_us: b.last_seen_us,
                waiting: b.waiting,
            })
            .collect(),
        detail: e.detail,
        samples: e.samples,
    }
}
