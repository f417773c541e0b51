//! Episodes of one kind overlapping a window, from the episodes maintained
//! at ingest: closed ones by one range scan from the window's start, plus
//! those still open.
//!
//! With a limit, the longest are chosen from the hour rollups' lists of
//! the longest episodes that ended in each hour (see
//! [`crate::ingest::longest`]): every listed one competes, and an hour
//! that ended more episodes than it lists is scanned (by key, nothing
//! decoded) only while its shortest listed one could still make the cut.
//! Only the chosen episodes are decoded.

use std::cmp::Reverse;

use pgtrail_proto::pb;
use pgtrail_proto::time::Micros;

use super::longest::Longest;
use super::{check_window, History, QueryError};
use crate::store::{
    EpisodeFilter, EpisodeKind, EpisodeRecord, EpisodeSpan, InstanceRecord, Resolution,
};

/// An episode chosen for an answer: an open one read whole, or a closed
/// one known by its span until it is fetched.
enum Chosen {
    Whole(Box<EpisodeRecord>),
    Span(EpisodeSpan),
}

/// What a question asks for: episodes of a kind that overlap a window and
/// lasted at least so long.
#[derive(Clone, Copy)]
struct Asked<'w> {
    window: &'w pb::Window,
    kind: EpisodeKind,
    min_duration: Micros,
}

impl Asked<'_> {
    /// The closed episodes that answer it.
    fn filter(&self) -> EpisodeFilter {
        EpisodeFilter {
            ended_from: self.window.from_us,
            ended_to: Micros::MAX,
            started_to: self.window.to_us,
            min_duration: self.min_duration,
        }
    }
}

/// A chosen episode with its instance and port.
type Found<'a> = (&'a InstanceRecord, Option<u32>, Chosen);

/// An hour that ended more episodes than it lists (or that lists none,
/// being older than the lists): those left out are no longer than `bound`.
struct Unlisted<'a> {
    r: &'a InstanceRecord,
    port: Option<u32>,
    start: Micros,
    bound: Micros,
    listed: Vec<EpisodeSpan>,
}

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
        let asked = Asked {
            window,
            kind,
            min_duration,
        };
        let mut chosen = Longest::new(limit);
        let mut unlisted = Vec::new();
        for r in &instances {
            let Some(port) = self.offer_open(r, asked, &mut chosen)? else {
                continue;
            };
            if limit == 0 {
                self.offer_closed(r, port, asked, &mut chosen)?;
            } else {
                self.offer_listed(r, port, asked, &mut chosen, &mut unlisted)?;
            }
        }
        let mut more = false;
        unlisted.sort_by_key(|h| Reverse(h.bound));
        for hour in unlisted {
            if !chosen.wants(hour.bound, Micros::MIN) {
                more |= hour.bound >= min_duration;
                break;
            }
            self.offer_unlisted(&hour, asked, &mut chosen)?;
        }
        more |= limit > 0 && chosen.offered() > limit as u64;
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
        let asked = Asked {
            window,
            kind,
            min_duration,
        };
        let mut chosen = Longest::new(0);
        if let Some(port) = self.offer_open(r, asked, &mut chosen)? {
            self.offer_closed(r, port, asked, &mut chosen)?;
        }
        self.finish(kind, chosen)
    }

    /// Offers `chosen` the instance's open episodes that match; returns its
    /// port, or `None` when it has no samples.
    fn offer_open<'a>(
        &self,
        r: &'a InstanceRecord,
        asked: Asked,
        chosen: &mut Longest<Found<'a>>,
    ) -> Result<Option<Option<u32>>, QueryError> {
        let Some((_, last_sample)) = self.store.sample_bounds(r.id)? else {
            return Ok(None);
        };
        let port = self.port_at(r, last_sample)?;
        let window = asked.window;
        for mut e in self.store.open_episodes(asked.kind, r.id)? {
            e.last_seen_us = e.last_seen_us.max(last_sample);
            let end = e.end();
            let duration = end - e.started_us;
            if e.started_us > window.to_us || end < window.from_us || duration < asked.min_duration
            {
                continue;
            }
            chosen.offer(duration, e.started_us, || {
                (r, port, Chosen::Whole(Box::new(e)))
            });
        }
        Ok(Some(port))
    }

    /// Offers `chosen` every closed episode that matches, read whole.
    fn offer_closed<'a>(
        &self,
        r: &'a InstanceRecord,
        port: Option<u32>,
        asked: Asked,
        chosen: &mut Longest<Found<'a>>,
    ) -> Result<(), QueryError> {
        for e in self
            .store
            .closed_episodes(asked.kind, r.id, &asked.filter())?
        {
            let duration = e.end() - e.started_us;
            chosen.offer(duration, e.started_us, || {
                (r, port, Chosen::Whole(Box::new(e)))
            });
        }
        Ok(())
    }

    /// Offers `chosen` the closed episodes the hour rollups list, and
    /// collects the hours that may hold more.
    fn offer_listed<'a>(
        &self,
        r: &'a InstanceRecord,
        port: Option<u32>,
        asked: Asked,
        chosen: &mut Longest<Found<'a>>,
        unlisted: &mut Vec<Unlisted<'a>>,
    ) -> Result<(), QueryError> {
        let filter = asked.filter();
        let first = Resolution::Hour.start_of(asked.window.from_us);
        for (start, hour) in self.store.episode_rollups(r.id, first, Micros::MAX)? {
            let list = hour
                .longest
                .into_iter()
                .find(|l| l.kind == asked.kind as i32)
                .unwrap_or_default();
            for span in list.spans.iter().filter(|s| filter.lets_through(s)) {
                chosen.offer(span.duration(), span.started_us, || {
                    (r, port, Chosen::Span(*span))
                });
            }
            if !hour.longest_tracked || list.ended > list.spans.len() as u64 {
                let bound = match list.spans.last() {
                    Some(s) if hour.longest_tracked => s.duration(),
                    _ => Micros::MAX,
                };
                // An episode that ended in an hour after the window and
                // overlaps it lasted at least from the window's end to the
                // hour's start: none left out of the list can, if shorter.
                if bound < start - asked.window.to_us {
                    continue;
                }
                unlisted.push(Unlisted {
                    r,
                    port,
                    start,
                    bound,
                    listed: list.spans,
                });
            }
        }
        Ok(())
    }

    /// Offers `chosen` the episodes of an hour that its list left out.
    fn offer_unlisted<'a>(
        &self,
        hour: &Unlisted<'a>,
        asked: Asked,
        chosen: &mut Longest<Found<'a>>,
    ) -> Result<(), QueryError> {
        let filter = EpisodeFilter {
            ended_from: hour.start.max(asked.window.from_us),
            ended_to: hour.start + Resolution::Hour.span() - 1,
            ..asked.filter()
        };
        for span in self
            .store
            .closed_episode_spans(asked.kind, hour.r.id, &filter)?
        {
            if !hour.listed.contains(&span) {
                chosen.offer(span.duration(), span.started_us, || {
                    (hour.r, hour.port, Chosen::Span(span))
                });
            }
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
