//! Episodes of one kind overlapping a window, from the episodes maintained
//! at ingest: closed ones by one range scan from the window's start, plus
//! those still open. With a limit, each instance's longest come from the
//! store's index by length, the fleet's longest are kept (see
//! [`Longest`]), and only those are decoded.

use pgtrail_proto::pb;
use pgtrail_proto::time::Micros;

use super::longest::Longest;
use super::{check_window, History, QueryError};
use crate::store::{EpisodeFilter, EpisodeKind, EpisodeRecord, EpisodeSpan, InstanceRecord};

/// An episode chosen for an answer: an open one read whole, or a closed
/// one known by its span until it is fetched.
enum Chosen {
    Whole(Box<EpisodeRecord>),
    Span(EpisodeSpan),
}

/// A chosen episode with its instance and port.
type Found<'a> = (&'a InstanceRecord, Option<u32>, Chosen);

impl History {
    /// Episodes of `kind` in `scope` that overlap `window` and lasted at
    /// least `min_duration`; with a `limit`, only that many, the longest
    /// (the earliest start among equals). An episode still open lasts
    /// until the instance's latest sample. Ordered by start; says whether
    /// more matched than the limit let through.
    pub fn episodes(
        &self,
        scope: &pb::Scope,
        window: &pb::Window,
        kind: EpisodeKind,
        min_duration: Micros,
        limit: u32,
    ) -> Result<pb::EpisodesResponse, QueryError> {
        check_window(window)?;
        let instances = self.resolve(scope)?;
        let limit = limit as usize;
        let mut chosen = Longest::new(limit);
        for r in &instances {
            self.choose(r, window, kind, min_duration, &mut chosen)?;
        }
        let more = limit > 0 && chosen.offered() > limit as u64;
        let mut episodes = self.finish(kind, chosen)?;
        episodes.sort_by(|a, b| {
            (a.started_us, &a.host, &a.instance, a.pid).cmp(&(
                b.started_us,
                &b.host,
                &b.instance,
                b.pid,
            ))
        });
        Ok(pb::EpisodesResponse { episodes, more })
    }

    /// Every one of one instance's episodes of `kind` overlapping `window`.
    pub(crate) fn episodes_of(
        &self,
        r: &InstanceRecord,
        window: &pb::Window,
        kind: EpisodeKind,
        min_duration: Micros,
    ) -> Result<Vec<pb::Episode>, QueryError> {
        let mut chosen = Longest::new(0);
        self.choose(r, window, kind, min_duration, &mut chosen)?;
        self.finish(kind, chosen)
    }

    /// Offers `chosen` one instance's episodes of `kind` that overlap
    /// `window` and lasted at least `min_duration`: with a limit, only that
    /// instance's longest (one more than the limit, so the caller can tell
    /// whether there were more), from the store's index by length.
    fn choose<'a>(
        &self,
        r: &'a InstanceRecord,
        window: &pb::Window,
        kind: EpisodeKind,
        min_duration: Micros,
        chosen: &mut Longest<Found<'a>>,
    ) -> Result<(), QueryError> {
        let Some((_, last_sample)) = self.store.sample_bounds(r.id)? else {
            return Ok(());
        };
        let port = self.port_at(r, last_sample)?;
        let filter = EpisodeFilter {
            ended_from: window.from_us,
            started_to: window.to_us,
            min_duration,
        };
        if chosen.limit() == 0 {
            for e in self.store.closed_episodes(kind, r.id, &filter)? {
                let duration = e.ended_us.unwrap_or(e.last_seen_us) - e.started_us;
                chosen.offer(duration, e.started_us, || {
                    (r, port, Chosen::Whole(Box::new(e)))
                });
            }
        } else {
            let n = chosen.limit() + 1;
            for span in self.store.longest_closed_episodes(kind, r.id, &filter, n)? {
                chosen.offer(span.duration(), span.started_us, || {
                    (r, port, Chosen::Span(span))
                });
            }
        }
        for mut e in self.store.open_episodes(kind, r.id)? {
            e.last_seen_us = e.last_seen_us.max(last_sample);
            let end = e.ended_us.unwrap_or(e.last_seen_us);
            let duration = end - e.started_us;
            if e.started_us > window.to_us || end < window.from_us || duration < min_duration {
                continue;
            }
            chosen.offer(duration, e.started_us, || {
                (r, port, Chosen::Whole(Box::new(e)))
            });
        }
        Ok(())
    }

    /// The chosen episodes as the wire has them: closed ones fetched,
    /// texts looked up.
    fn finish(
        &self,
        kind: EpisodeKind,
        chosen: Longest<Found<'_>>,
    ) -> Result<Vec<pb::Episode>, QueryError> {
        let mut found = Vec::new();
        for (r, port, c) in chosen.into_longest_first() {
            let record = match c {
                Chosen::Whole(e) => Some(*e),
                Chosen::Span(span) => self.store.closed_episode(kind, r.id, &span)?,
            };
            // An episode expired since its span was read is left out.
            found.extend(record.map(|e| (r, port, e)));
        }
        let texts = self
            .store
            .query_texts(&mut found.iter().flat_map(|(_, _, e)| {
                e.query_id
                    .into_iter()
                    .chain(e.blockers.iter().filter_map(|b| b.query_id))
            }))?;
        Ok(found
            .into_iter()
            .map(|(r, port, e)| episode(r, port, kind, e, &texts))
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
