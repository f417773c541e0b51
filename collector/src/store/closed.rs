//! Closed episodes as stored (tree `episodes`): the value holds only what
//! the key does not, with times relative to the key's and identities by
//! reference, and reads give back the whole [`EpisodeRecord`].
//!
//! A value is the byte [`MARKER`] followed by a [`CompactEpisode`]:
//!
//! - pid, start and end are the key's (the end is `ended_us`, or
//!   `last_seen_us` for a record closed without one, which `open_ended`
//!   says);
//! - `last_seen_us` is stored as the end minus it; `backend_start_us`,
//!   `xact_start_us` and `query_start_us` as themselves minus the start,
//!   zigzag varints (a few bytes instead of eight or nine);
//! - user, database, application, client address and backend type are an
//!   id in `identities` (see [`super::identities`]); a blocker's user and
//!   application likewise, its times relative to the episode's start;
//! - the query id is fixed 8 bytes (a hash's varint takes 9 or 10).
//!
//! Values written before this layout are a bare [`EpisodeRecord`] and
//! still read: no protobuf message starts with a 0 byte (field number 0
//! does not exist), so the marker tells the two apart.
//!
//! Differences are taken with wrapping arithmetic, so every `i64` round
//! trips, however far apart the times are.

use std::collections::HashMap;

use prost::Message;

use super::identities::{Identities, IdentityRecord, IdentityRef, NewIdentity};
use super::records::{BlockerRecord, EpisodeRecord, EpisodeSpan};
use super::sled::decode;
use super::StoreError;

/// The first byte of a compact value.
pub const MARKER: u8 = 0x00;

/// The tag of [`CompactEpisode`]'s `backend_start`.
pub(super) const BACKEND_START: u32 = 2;

/// A closed episode without what its key holds.
#[derive(Clone, PartialEq, prost::Message)]
struct CompactEpisode {
    /// The session's identity (absent: none, as for instance episodes).
    #[prost(uint32, optional, tag = "1")]
    identity: Option<u32>,
    /// backend_start − started ([`BACKEND_START`]).
    #[prost(sint64, optional, tag = "2")]
    backend_start: Option<i64>,
    /// xact_start − started.
    #[prost(sint64, optional, tag = "3")]
    xact_start: Option<i64>,
    /// query_start − started.
    #[prost(sint64, optional, tag = "4")]
    query_start: Option<i64>,
    /// end − last_seen.
    #[prost(sint64, tag = "5")]
    last_seen: i64,
    /// `ended_us` is absent (the key's end is `last_seen_us`).
    #[prost(bool, tag = "6")]
    open_ended: bool,
    /// The query, by reference.
    #[prost(fixed64, optional, tag = "7")]
    query_id: Option<u64>,
    /// As [`EpisodeRecord::wait_events`].
    #[prost(map = "string, uint32", tag = "8")]
    wait_events: HashMap<String, u32>,
    /// As [`EpisodeRecord::blockers`].
    #[prost(message, repeated, tag = "9")]
    blockers: Vec<CompactBlocker>,
    /// As [`EpisodeRecord::detail`].
    #[prost(string, optional, tag = "10")]
    detail: Option<String>,
    /// As [`EpisodeRecord::samples`].
    #[prost(uint32, tag = "11")]
    samples: u32,
}

/// A [`BlockerRecord`] with its identity by reference and its times
/// relative to the episode's start.
#[derive(Clone, PartialEq, prost::Message)]
struct CompactBlocker {
    /// Its pid.
    #[prost(int32, tag = "1")]
    pid: i32,
    /// backend_start − the episode's start.
    #[prost(sint64, optional, tag = "2")]
    backend_start: Option<i64>,
    /// Its user and application.
    #[prost(uint32, optional, tag = "3")]
    identity: Option<u32>,
    /// As [`BlockerRecord::state`].
    #[prost(string, optional, tag = "4")]
    state: Option<String>,
    /// As [`BlockerRecord::query_id`].
    #[prost(fixed64, optional, tag = "5")]
    query_id: Option<u64>,
    /// As [`BlockerRecord::idle_in_transaction`].
    #[prost(bool, tag = "6")]
    idle_in_transaction: bool,
    /// first_seen − the episode's start.
    #[prost(sint64, tag = "7")]
    first_seen: i64,
    /// last_seen − first_seen.
    #[prost(sint64, tag = "8")]
    last_seen: i64,
    /// As [`BlockerRecord::waiting`].
    #[prost(bool, tag = "9")]
    waiting: bool,
}

/// `t` relative to `base`.
fn rel(t: i64, base: i64) -> i64 {
    t.wrapping_sub(base)
}

/// The inverse of [`rel`].
fn abs(d: i64, base: i64) -> i64 {
    base.wrapping_add(d)
}

/// The value of closed episode `e` (whose key is made from its pid, start
/// and [`EpisodeRecord::end`]); identities it refers to that are not yet
/// stored are pushed to `new`, for the same transaction to write.
pub fn encode(e: &EpisodeRecord, ids: &Identities, new: &mut Vec<NewIdentity>) -> Vec<u8> {
    let started = e.started_us;
    let identity = IdentityRef {
        user: e.user.as_deref(),
        database: e.database.as_deref(),
        application_name: e.application_name.as_deref(),
        client_addr: e.client_addr.as_deref(),
        backend_type: e.backend_type.as_deref(),
    };
    let blockers = e
        .blockers
        .iter()
        .map(|b| {
            let identity = IdentityRef {
                user: b.user.as_deref(),
                application_name: b.application_name.as_deref(),
                ..Default::default()
            };
            CompactBlocker {
                pid: b.pid,
                backend_start: b.backend_start_us.map(|t| rel(t, started)),
                identity: ids.intern(identity, new),
                state: b.state.clone(),
                query_id: b.query_id,
                idle_in_transaction: b.idle_in_transaction,
                first_seen: rel(b.first_seen_us, started),
                last_seen: rel(b.last_seen_us, b.first_seen_us),
                waiting: b.waiting,
            }
        })
        .collect();
    let compact = CompactEpisode {
        identity: ids.intern(identity, new),
        backend_start: e.backend_start_us.map(|t| rel(t, started)),
        xact_start: e.xact_start_us.map(|t| rel(t, started)),
        query_start: e.query_start_us.map(|t| rel(t, started)),
        last_seen: rel(e.end(), e.last_seen_us),
        open_ended: e.ended_us.is_none(),
        query_id: e.query_id,
        wait_events: e.wait_events.clone(),
        blockers,
        detail: e.detail.clone(),
        samples: e.samples,
    };
    let mut value = Vec::with_capacity(1 + compact.encoded_len());
    value.push(MARKER);
    compact.encode(&mut value).expect("a Vec grows");
    value
}

/// The closed episode stored under the key of `span` as `value`, in
/// either layout.
pub fn decode_closed(
    span: &EpisodeSpan,
    value: &[u8],
    ids: &Identities,
) -> Result<EpisodeRecord, StoreError> {
    let Some((&MARKER, body)) = value.split_first() else {
        return decode("episodes", value);
    };
    let c: CompactEpisode = decode("episodes", body)?;
    let started = span.started_us;
    let end = span.ended_us;
    let identity = c.identity.map(|id| ids.get(id)).transpose()?;
    let identity = identity.as_deref();
    let field = |f: fn(&IdentityRecord) -> &Option<String>| identity.and_then(|i| f(i).clone());
    let blockers = c
        .blockers
        .into_iter()
        .map(|b| {
            let identity = b.identity.map(|id| ids.get(id)).transpose()?;
            let first_seen_us = abs(b.first_seen, started);
            Ok(BlockerRecord {
                pid: b.pid,
                backend_start_us: b.backend_start.map(|d| abs(d, started)),
                user: identity.as_ref().and_then(|i| i.user.clone()),
                application_name: identity.as_ref().and_then(|i| i.application_name.clone()),
                state: b.state,
                query_id: b.query_id,
                idle_in_transaction: b.idle_in_transaction,
                first_seen_us,
                last_seen_us: abs(b.last_seen, first_seen_us),
                waiting: b.waiting,
            })
        })
        .collect::<Result<_, StoreError>>()?;
    Ok(EpisodeRecord {
        pid: span.pid,
        backend_start_us: c.backend_start.map(|d| abs(d, started)),
        user: field(|i| &i.user),
        database: field(|i| &i.database),
        application_name: field(|i| &i.application_name),
        client_addr: field(|i| &i.client_addr),
        xact_start_us: c.xact_start.map(|d| abs(d, started)),
        started_us: started,
        ended_us: (!c.open_ended).then_some(end),
        last_seen_us: rel(end, c.last_seen),
        query_id: c.query_id,
        backend_type: field(|i| &i.backend_type),
        query_start_us: c.query_start.map(|d| abs(d, started)),
        wait_events: c.wait_events,
        blockers,
        detail: c.detail,
        samples: c.samples,
    })
}

#[cfg(test)]
mod tests {
    use pgtrail_proto::time::{Micros, SECOND};

    use super::*;
    use crate::store::keys::{self, EpisodeKind};
    use crate::store::testing::{reopen, temp_store, Rng};
    use crate::store::{Append, EpisodeFilter, SledStore, Store};

    const T0: Micros = 1_790_000_040 * SECOND;

    /// A closed episode with every field set or not, at random, and
    /// times anywhere (negative, huge, far apart).
    fn random_record(rng: &mut Rng) -> EpisodeRecord {
        let mut wait_events = HashMap::new();
        for _ in 0..rng.below(3) {
            wait_events.insert(rng.text(), rng.next() as u32);
        }
        let blockers = (0..rng.below(3))
            .map(|_| BlockerRecord {
                pid: rng.signed() as i32,
                backend_start_us: rng.maybe(Rng::signed),
                user: rng.maybe(Rng::text),
                application_name: rng.maybe(Rng::text),
                state: rng.maybe(Rng::text),
                query_id: rng.maybe(Rng::next),
                idle_in_transaction: rng.chance(50),
                first_seen_us: rng.signed(),
                last_seen_us: rng.signed(),
                waiting: rng.chance(50),
            })
            .collect();
        EpisodeRecord {
            pid: rng.signed() as i32,
            backend_start_us: rng.maybe(Rng::signed),
            user: rng.maybe(Rng::text),
            database: rng.maybe(Rng::text),
            application_name: rng.maybe(Rng::text),
            client_addr: rng.maybe(Rng::text),
            xact_start_us: rng.maybe(Rng::signed),
            started_us: rng.signed(),
            ended_us: rng.maybe(Rng::signed),
            last_seen_us: rng.signed(),
            query_id: rng.maybe(Rng::next),
            backend_type: rng.maybe(Rng::text),
            query_start_us: rng.maybe(Rng::signed),
            wait_events,
            blockers,
            detail: rng.maybe(Rng::text),
            samples: rng.next() as u32,
        }
    }

    /// An idle spell of a client backend, as the ingestor closes them.
    fn idle_spell(pid: i32, user: &str, start: Micros) -> EpisodeRecord {
        EpisodeRecord {
            pid,
            backend_start_us: Some(start - 300 * SECOND),
            user: Some(user.into()),
            database: Some("shop".into()),
            application_name: Some("checkout-api".into()),
            client_addr: Some("10.0.1.12".into()),
            started_us: start,
            ended_us: Some(start + 7_400_123),
            last_seen_us: start + 7 * SECOND,
            query_id: Some(0xdead_beef_0bad_cafe),
            backend_type: Some("client backend".into()),
            query_start_us: Some(start - 12_345),
            samples: 8,
            ..Default::default()
        }
    }

    /// Appends a sample at `t` that closes `closed`.
    fn close(store: &SledStore, t: Micros, closed: Vec<(EpisodeKind, EpisodeRecord)>) {
        let instance = store.instance_id("db", "5432").unwrap();
        let mut append = Append {
            instance,
            sampled_at: t,
            closed,
            ..Default::default()
        };
        assert!(store.append(&mut append).unwrap());
    }

    fn all(store: &SledStore, kind: EpisodeKind) -> Vec<EpisodeRecord> {
        let instance = store.instance_id("db", "5432").unwrap();
        let filter = EpisodeFilter {
            ended_from: Micros::MIN,
            ended_to: Micros::MAX,
            started_to: Micros::MAX,
            min_duration: Micros::MIN,
        };
        store.closed_episodes(kind, instance, &filter).unwrap()
    }

    #[test]
    fn every_field_set_or_not_round_trips_through_key_and_value() {
        let (_dir, store) = temp_store();
        let ids = &store.known_identities;
        let mut rng = Rng(11);
        for _ in 0..2_000 {
            let e = random_record(&mut rng);
            let key = keys::closed_episode(EpisodeKind::LockWait, 3, e.end(), e.pid, e.started_us);
            let mut new = Vec::new();
            let value = encode(&e, ids, &mut new);
            assert_eq!(value[0], MARKER);
            let span = keys::closed_episode_span(&key);
            assert_eq!(decode_closed(&span, &value, ids).unwrap(), e);
        }
    }

    #[test]
    fn a_closed_idle_spell_takes_a_fraction_of_its_protobuf() {
        let (_dir, store) = temp_store();
        let e = idle_spell(4242, "app", T0);
        let value = encode(&e, &store.known_identities, &mut Vec::new());
        let full = e.encode_to_vec().len();
        assert!(
            value.len() * 4 < full,
            "{} bytes compact, {full} as protobuf",
            value.len()
        );
    }

    #[test]
    fn stored_episodes_read_back_whole_after_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let mut rng = Rng(5);
        let mut written = Vec::new();
        {
            let store = SledStore::open(dir.path()).unwrap();
            for i in 0..50 {
                let mut e = random_record(&mut rng);
                e.started_us = T0 - 100 * SECOND;
                e.ended_us = Some(T0 + i * SECOND);
                written.push(e.clone());
                close(&store, T0 + i * SECOND, vec![(EpisodeKind::SlowQuery, e)]);
            }
            assert_eq!(all(&store, EpisodeKind::SlowQuery), written);
        }
        let store = reopen(dir.path());
        assert_eq!(all(&store, EpisodeKind::SlowQuery), written);
        let instance = store.instance_id("db", "5432").unwrap();
        for e in &written {
            let read = store.closed_episode(EpisodeKind::SlowQuery, instance, &e.span());
            assert_eq!(read.unwrap().as_ref(), Some(e));
        }
    }

    #[test]
    fn values_written_as_whole_protobuf_still_read() {
        let (_dir, store) = temp_store();
        let instance = store.instance_id("db", "5432").unwrap();
        let mut rng = Rng(9);
        let mut old = random_record(&mut rng);
        old.started_us = T0 - SECOND;
        old.ended_us = Some(T0);
        let key = keys::closed_episode(
            EpisodeKind::Idle,
            instance,
            old.end(),
            old.pid,
            old.started_us,
        );
        store
            .episodes
            .insert(key, old.encode_to_vec().as_slice())
            .unwrap();
        let new = idle_spell(77, "app", T0 + 10 * SECOND);
        close(
            &store,
            T0 + 20 * SECOND,
            vec![(EpisodeKind::Idle, new.clone())],
        );
        assert_eq!(all(&store, EpisodeKind::Idle), vec![old.clone(), new]);
        let read = store.closed_episode(EpisodeKind::Idle, instance, &old.span());
        assert_eq!(read.unwrap(), Some(old));
    }

    #[test]
    fn an_identity_is_stored_once_and_shared_by_its_episodes() {
        let dir = tempfile::tempdir().unwrap();
        let users = ["app", "app_ro", "batch"];
        let mut expected = Vec::new();
        {
            let store = SledStore::open(dir.path()).unwrap();
            for i in 0..30 {
                let t = T0 + i * 10 * SECOND;
                let e = idle_spell(100 + i as i32, users[i as usize % 3], t);
                expected.push(e.clone());
                close(&store, t + 9 * SECOND, vec![(EpisodeKind::Idle, e)]);
            }
            assert_eq!(store.identities.len(), 3);
        }
        let store = reopen(dir.path());
        let t = T0 + 1_000 * SECOND;
        let e = idle_spell(999, "batch", t);
        expected.push(e.clone());
        close(&store, t + 9 * SECOND, vec![(EpisodeKind::Idle, e)]);
        assert_eq!(store.identities.len(), 3, "reused after a reopen");
        let e = idle_spell(1000, "reporting", t + SECOND);
        expected.push(e.clone());
        close(&store, t + 10 * SECOND, vec![(EpisodeKind::Idle, e)]);
        assert_eq!(
            store.identities.len(),
            3,
            "written when its minute is sealed"
        );
        assert_eq!(all(&store, EpisodeKind::Idle), expected);
        close(&store, t + 70 * SECOND, Vec::new());
        assert_eq!(store.identities.len(), 4);
        assert_eq!(all(&store, EpisodeKind::Idle), expected);
    }

    #[test]
    fn retention_keeps_the_identities_of_the_episodes_it_keeps() {
        let (_dir, store) = temp_store();
        let instance = store.instance_id("db", "5432").unwrap();
        let day = 86_400 * SECOND;
        let old = idle_spell(1, "app", T0 - 100 * day);
        let kept = idle_spell(2, "app", T0);
        close(
            &store,
            T0 - 100 * day + 10 * SECOND,
            vec![(EpisodeKind::Idle, old)],
        );
        close(
            &store,
            T0 + 10 * SECOND,
            vec![(EpisodeKind::Idle, kept.clone())],
        );
        assert!(store.expire(instance, T0 - 7 * day, T0 - 90 * day).unwrap() > 0);
        assert_eq!(all(&store, EpisodeKind::Idle), vec![kept.clone()]);
        assert_eq!(store.identities.len(), 1);
        // Still referred to by what comes next.
        let next = idle_spell(3, "app", T0 + 20 * SECOND);
        close(
            &store,
            T0 + 30 * SECOND,
            vec![(EpisodeKind::Idle, next.clone())],
        );
        assert_eq!(all(&store, EpisodeKind::Idle), vec![kept, next]);
        assert_eq!(store.identities.len(), 1);
    }
}
