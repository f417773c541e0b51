//! The bookkeeping every episode tracker shares: which episodes are open,
//! which of them the store has, and what a sample changed.
//!
//! An episode is written to the store's open set once it has lasted its
//! kind's floor (and again when it gains something worth keeping, such as
//! a new blocker), and moved to the closed episodes when a sample no longer
//! sees it. Those below the floor when they end are never written.

use foldhash::HashMap;

use pgtrail_proto::time::Micros;

use crate::store::{EpisodeKind, EpisodeRecord};

/// Identifies an open episode: kind, pid, backend_start and the moment
/// that identifies the condition.
pub type Key = (EpisodeKind, i32, Option<Micros>, Micros);

/// What one sample changed, for the store.
#[derive(Debug, Default, PartialEq)]
pub struct Changes {
    /// Episodes to write to the open set (new, or changed).
    pub opened: Vec<(EpisodeKind, EpisodeRecord)>,
    /// Episodes that ended, with `ended_us` set.
    pub closed: Vec<(EpisodeKind, EpisodeRecord)>,
}

impl Changes {
    /// Adds `other`'s changes to these.
    pub fn extend(&mut self, other: Changes) {
        append(&mut self.opened, other.opened);
        append(&mut self.closed, other.closed);
    }
}

/// Adds `b` to `a`, moving no record when `a` is empty.
fn append<T>(a: &mut Vec<T>, b: Vec<T>) {
    if a.is_empty() {
        *a = b;
    } else {
        a.extend(b);
    }
}

#[derive(Debug)]
struct Open {
    record: EpisodeRecord,
    stored: bool,
    changed: bool,
    seen: bool,
}

/// Open episodes.
#[derive(Debug, Default)]
pub struct OpenSet {
    open: HashMap<Key, Open>,
}

impl OpenSet {
    /// The set the store had open; `ident` gives each record's identifying
    /// moment.
    pub fn resume(
        records: Vec<(EpisodeKind, EpisodeRecord)>,
        ident: impl Fn(EpisodeKind, &EpisodeRecord) -> Micros,
    ) -> Self {
        let open = records
            .into_iter()
            .map(|(kind, record)| {
                let key = (
                    kind,
                    record.pid,
                    record.backend_start_us,
                    ident(kind, &record),
                );
                let open = Open {
                    record,
                    stored: true,
                    changed: false,
                    seen: false,
                };
                (key, open)
            })
            .collect();
        Self { open }
    }

    /// The open episodes.
    pub fn records(&self) -> impl Iterator<Item = (EpisodeKind, &EpisodeRecord)> {
        self.open.iter().map(|(k, o)| (k.0, &o.record))
    }

    /// Notes that this sample (at `now`) sees `key`, creating the episode
    /// with `make` when new. Returns it for the caller to update.
    pub fn see(
        &mut self,
        key: Key,
        now: Micros,
        make: impl FnOnce() -> EpisodeRecord,
    ) -> &mut EpisodeRecord {
        let open = self.open.entry(key).or_insert_with(|| Open {
            record: make(),
            stored: false,
            changed: false,
            seen: false,
        });
        if !open.seen {
            open.seen = true;
            open.record.samples += 1;
        }
        open.record.last_seen_us = now;
        &mut open.record
    }

    /// Asks for `key` to be rewritten in the store at the end of the sample.
    pub fn mark_changed(&mut self, key: &Key) {
        if let Some(open) = self.open.get_mut(key) {
            open.changed = true;
        }
    }

    /// Ends the sample: episodes not seen in it are closed (`ended` says
    /// when), and returns what the store must write.
    pub fn close_unseen(
        &mut self,
        now: Micros,
        floor: impl Fn(EpisodeKind) -> Micros,
        ended: impl Fn(EpisodeKind, &EpisodeRecord, Micros) -> Micros,
    ) -> Changes {
        let mut changes = Changes::default();
        for (key, mut open) in self.open.extract_if(|_, o| !o.seen) {
            let end = ended(key.0, &open.record, now);
            open.record.ended_us = Some(end);
            if open.stored || end - open.record.started_us >= floor(key.0) {
                changes.closed.push((key.0, open.record));
            }
        }
        for (key, open) in self.open.iter_mut() {
            let lasted = open.record.last_seen_us - open.record.started_us;
            let due = !open.stored && lasted >= floor(key.0);
            if due || (open.stored && open.changed) {
                open.stored = true;
                changes.opened.push((key.0, open.record.clone()));
            }
            open.seen = false;
            open.changed = false;
        }
        changes
            .closed
            .sort_by_key(|(k, e)| (e.started_us, e.pid, *k as i32));
        changes
            .opened
            .sort_by_key(|(k, e)| (e.started_us, e.pid, *k as i32));
        changes
    }
}
