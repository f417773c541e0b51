//! A block of closed episodes laid out by column, as sealed minutes store
//! them since format 5 ([`super::episode_blocks`]).
//!
//! The episodes of one kind that closed in one minute resemble each other
//! field by field far more than one episode's fields resemble each other:
//! the ends are close, pids recur, values share their fields' shapes. So
//! a block keeps each field of every episode together, in this order:
//!
//! ```text
//! count    varint: episodes
//! table    varint: fields the values use; then, tags ascending, one varint
//!          each: tag << 4 | wire type << 1 | repeated
//! ends     count zigzag varints: end − the end before (from 0)
//! pids     count zigzag varints
//! lasted   count zigzag varints: end − start
//! heads    count bytes: each value's first byte (its marker)
//! masks    count varints: bit t set when the value has field t
//! fields   for each field of the table in turn, for every value that has
//!          it: its occurrences (varint) when the field is repeated, then
//!          each occurrence's payload as protobuf writes it
//! ```
//!
//! with one exception: a value's [`BACKEND_START`] field (the session's
//! start, which a value holds relative to the episode's) is kept as the
//! absolute time, 8 bytes little-endian: every episode of a session then
//! carries the same 8 bytes, which compress to almost nothing.
//!
//! A value is rebuilt as its head byte and its fields in tag order, each
//! as key and payload. [`encode`] decodes what it wrote and gives up when
//! that is not byte for byte the input (a value that is not such a
//! message: fields out of tag order, tags above 63, a wire type that
//! varies); the block is then written entry after entry.

use std::ops::Range;

use pgtrail_proto::time::Micros;
use prost::encoding::{decode_varint, encode_varint};

use super::closed::BACKEND_START;
use super::records::EpisodeSpan;
use super::sealed::{unzigzag, zigzag};

/// Wire types, as protobuf numbers them.
const VARINT: u8 = 0;
const FIXED64: u8 = 1;
const LENGTH_DELIMITED: u8 = 2;
const FIXED32: u8 = 5;

/// The highest tag a value may use (its bit in a mask).
const MAX_TAG: u32 = 63;

/// A field of the block's table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Field {
    tag: u32,
    wire_type: u8,
    repeated: bool,
}

impl Field {
    /// Whether this field is the one kept as an absolute time.
    fn absolute(&self) -> bool {
        self.tag == BACKEND_START && self.wire_type == VARINT
    }
}

/// One field occurrence of a value: its tag, wire type and payload.
struct Occurrence<'a> {
    tag: u32,
    wire_type: u8,
    payload: &'a [u8],
}

/// The bytes of a block of `episodes` (spans and values, in key order)
/// by column, or `None` when a value does not fit the layout.
pub(super) fn encode(episodes: &[(EpisodeSpan, &[u8])]) -> Option<Vec<u8>> {
    let mut parsed = Vec::with_capacity(episodes.len());
    let mut table: Vec<Field> = Vec::new();
    for (_, value) in episodes {
        let (_, body) = value.split_first()?;
        let fields = occurrences(body)?;
        for (i, f) in fields.iter().enumerate() {
            let again = i > 0 && fields[i - 1].tag == f.tag;
            match table.iter_mut().find(|t| t.tag == f.tag) {
                Some(t) if t.wire_type != f.wire_type => return None,
                Some(t) => t.repeated |= again,
                None => table.push(Field {
                    tag: f.tag,
                    wire_type: f.wire_type,
                    repeated: again,
                }),
            }
        }
        parsed.push(fields);
    }
    table.sort_by_key(|f| f.tag);

    let mut out = Vec::new();
    encode_varint(episodes.len() as u64, &mut out);
    encode_varint(table.len() as u64, &mut out);
    for f in &table {
        let wire = u64::from(f.tag) << 4 | u64::from(f.wire_type) << 1 | u64::from(f.repeated);
        encode_varint(wire, &mut out);
    }
    let mut end: Micros = 0;
    for (span, _) in episodes {
        encode_varint(zigzag(span.ended_us.wrapping_sub(end)), &mut out);
        end = span.ended_us;
    }
    for (span, _) in episodes {
        encode_varint(zigzag(i64::from(span.pid)), &mut out);
    }
    for (span, _) in episodes {
        encode_varint(
            zigzag(span.ended_us.wrapping_sub(span.started_us)),
            &mut out,
        );
    }
    out.extend(episodes.iter().map(|(_, value)| value[0]));
    for fields in &parsed {
        let mask = fields.iter().fold(0u64, |m, f| m | 1 << f.tag);
        encode_varint(mask, &mut out);
    }
    for field in &table {
        for ((span, _), fields) in episodes.iter().zip(&parsed) {
            let mine: Vec<_> = fields.iter().filter(|f| f.tag == field.tag).collect();
            if mine.is_empty() {
                continue;
            }
            if field.repeated {
                encode_varint(mine.len() as u64, &mut out);
            }
            for f in mine {
                if field.absolute() {
                    let relative = unzigzag(decode_varint(&mut &f.payload[..]).ok()?);
                    let at = span.started_us.wrapping_add(relative);
                    out.extend_from_slice(&at.to_le_bytes());
                } else {
                    out.extend_from_slice(f.payload);
                }
            }
        }
    }
    // What does not read back as it was written is not written this way.
    let (values, entries) = decode(&out)?;
    let same = entries.len() == episodes.len()
        && entries
            .iter()
            .zip(episodes)
            .all(|((span, range), (s, v))| span == s && values[range.clone()] == **v);
    same.then_some(out)
}

/// A block's values one after the other, and each episode's span and
/// where its value lies in them.
pub(super) type Decoded = (Vec<u8>, Vec<(EpisodeSpan, Range<usize>)>);

/// The values of a block by column; `None` when the bytes are not such a
/// block.
pub(super) fn decode(raw: &[u8]) -> Option<Decoded> {
    let mut rest = raw;
    let count = usize::try_from(decode_varint(&mut rest).ok()?).ok()?;
    // Every episode takes at least four bytes: end, pid, lasted, head.
    if count > rest.len() / 4 {
        return None;
    }
    // Tags ascending, each at most once: at most 63 fields.
    let fields = usize::try_from(decode_varint(&mut rest).ok()?).ok()?;
    if fields > MAX_TAG as usize {
        return None;
    }
    let mut table: Vec<Field> = Vec::with_capacity(fields);
    for _ in 0..fields {
        let wire = decode_varint(&mut rest).ok()?;
        let after = table.last().map_or(0, |f| f.tag);
        let tag = u32::try_from(wire >> 4)
            .ok()
            .filter(|t| (after + 1..=MAX_TAG).contains(t))?;
        table.push(Field {
            tag,
            wire_type: ((wire >> 1) & 7) as u8,
            repeated: wire & 1 == 1,
        });
    }
    let mut spans = Vec::with_capacity(count);
    let mut end: Micros = 0;
    for _ in 0..count {
        end = end.wrapping_add(unzigzag(decode_varint(&mut rest).ok()?));
        spans.push(EpisodeSpan {
            pid: 0,
            started_us: 0,
            ended_us: end,
        });
    }
    for span in &mut spans {
        span.pid = i32::try_from(unzigzag(decode_varint(&mut rest).ok()?)).ok()?;
    }
    for span in &mut spans {
        span.started_us = span
            .ended_us
            .wrapping_sub(unzigzag(decode_varint(&mut rest).ok()?));
    }
    let heads = take(&mut rest, count)?;
    let mut masks = Vec::with_capacity(count);
    for _ in 0..count {
        masks.push(decode_varint(&mut rest).ok()?);
    }
    // Each field's column, in the table's order.
    let mut columns: Vec<Vec<Vec<&[u8]>>> = Vec::with_capacity(table.len());
    for field in &table {
        let mut column = Vec::new();
        for &mask in &masks {
            if mask & 1 << field.tag == 0 {
                continue;
            }
            let n = if field.repeated {
                usize::try_from(decode_varint(&mut rest).ok()?).ok()?
            } else {
                1
            };
            if n > rest.len() {
                return None;
            }
            let mut payloads = Vec::with_capacity(n);
            for _ in 0..n {
                let len = if field.absolute() {
                    8
                } else {
                    payload_len(field.wire_type, rest)?
                };
                payloads.push(take(&mut rest, len)?);
            }
            column.push(payloads);
        }
        columns.push(column);
    }
    if !rest.is_empty() || masks.iter().any(|m| m & !known(&table) != 0) {
        return None;
    }

    let mut values = Vec::with_capacity(raw.len() * 2);
    let mut entries = Vec::with_capacity(count);
    let mut next = vec![0usize; table.len()];
    for ((span, &head), &mask) in spans.iter().zip(heads).zip(&masks) {
        let start = values.len();
        values.push(head);
        for (i, field) in table.iter().enumerate() {
            if mask & 1 << field.tag == 0 {
                continue;
            }
            for payload in &columns[i][next[i]] {
                encode_varint(
                    u64::from(field.tag) << 3 | u64::from(field.wire_type),
                    &mut values,
                );
                if field.absolute() {
                    let at = Micros::from_le_bytes((*payload).try_into().ok()?);
                    encode_varint(zigzag(at.wrapping_sub(span.started_us)), &mut values);
                } else {
                    values.extend_from_slice(payload);
                }
            }
            next[i] += 1;
        }
        entries.push((*span, start..values.len()));
    }
    Some((values, entries))
}

/// The mask of every field in `table`.
fn known(table: &[Field]) -> u64 {
    table.iter().fold(0, |m, f| m | 1 << f.tag)
}

/// The first `n` bytes of `rest`, which it then starts after.
fn take<'a>(rest: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
    if n > rest.len() {
        return None;
    }
    let (head, tail) = rest.split_at(n);
    *rest = tail;
    Some(head)
}

/// How long the payload of a field of `wire_type` at the start of `bytes`
/// is (a length-delimited one with its length).
fn payload_len(wire_type: u8, bytes: &[u8]) -> Option<usize> {
    match wire_type {
        VARINT => bytes.iter().position(|b| b & 0x80 == 0).map(|i| i + 1),
        FIXED64 => Some(8),
        FIXED32 => Some(4),
        LENGTH_DELIMITED => {
            let mut rest = bytes;
            let len = usize::try_from(decode_varint(&mut rest).ok()?).ok()?;
            (len <= rest.len()).then(|| bytes.len() - rest.len() + len)
        }
        _ => None,
    }
}

/// The fields of a protobuf message, in the order written; `None` when it
/// does not parse or uses a tag above [`MAX_TAG`].
fn occurrences(mut body: &[u8]) -> Option<Vec<Occurrence<'_>>> {
    let mut out = Vec::new();
    while !body.is_empty() {
        let key = decode_varint(&mut body).ok()?;
        let tag = u32::try_from(key >> 3)
            .ok()
            .filter(|t| (1..=MAX_TAG).contains(t))?;
        let wire_type = (key & 7) as u8;
        let len = payload_len(wire_type, body)?;
        let payload = take(&mut body, len)?;
        out.push(Occurrence {
            tag,
            wire_type,
            payload,
        });
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::closed;
    use crate::store::identities::Identities;
    use crate::store::records::EpisodeRecord;
    use crate::store::testing::Rng;

    /// Episodes as sessions close them: a few sessions, each with several
    /// episodes in the minute, values as the store encodes them.
    fn episodes(rng: &mut Rng, n: usize) -> Vec<(EpisodeSpan, Vec<u8>)> {
        let ids = Identities::default();
        let minute = 1_700_000_000_000_000i64;
        let mut out: Vec<_> = (0..n)
            .map(|i| {
                let pid = 1000 + (i % 17) as i32;
                let ended = minute + rng.below(60_000_000) as i64;
                let started = ended - rng.below(5_000_000) as i64;
                let mut wait_events = std::collections::HashMap::new();
                if rng.chance(30) {
                    wait_events.insert("Lock:transactionid".to_string(), 1 + rng.below(9) as u32);
                    wait_events.insert("IO:DataFileRead".to_string(), rng.below(3) as u32);
                }
                let e = EpisodeRecord {
                    pid,
                    backend_start_us: Some(minute - 3_600_000_000 + i64::from(pid)),
                    started_us: started,
                    ended_us: Some(ended),
                    last_seen_us: ended - 1_000_000,
                    user: Some("app".into()),
                    database: Some("shop".into()),
                    query_id: rng.maybe(|r| r.below(40).wrapping_mul(0x9e37_79b9_7f4a_7c15)),
                    query_start_us: rng.maybe(|r| started - r.below(1000) as i64),
                    wait_events,
                    samples: 1 + rng.below(5) as u32,
                    ..Default::default()
                };
                let span = EpisodeSpan {
                    pid,
                    started_us: started,
                    ended_us: ended,
                };
                (span, closed::encode(&e, &ids, &mut Vec::new()))
            })
            .collect();
        out.sort_by_key(|(s, _)| (s.ended_us, s.pid as u32, s.started_us));
        out
    }

    fn borrowed(episodes: &[(EpisodeSpan, Vec<u8>)]) -> Vec<(EpisodeSpan, &[u8])> {
        episodes.iter().map(|(s, v)| (*s, v.as_slice())).collect()
    }

    #[test]
    fn stored_values_round_trip_and_compress_better_than_entries() {
        let episodes = episodes(&mut Rng(5), 900);
        let input = borrowed(&episodes);
        let columns = encode(&input).expect("stored values fit the layout");
        let (values, entries) = decode(&columns).unwrap();
        let read: Vec<_> = entries
            .iter()
            .map(|(s, r)| (*s, values[r.clone()].to_vec()))
            .collect();
        assert_eq!(read, episodes);

        let rows = super::super::episode_blocks::encode_entries(input.iter().copied());
        let size = |raw: &[u8]| zstd::bulk::compress(raw, 9).unwrap().len();
        assert!(
            size(&columns) * 10 < size(&rows) * 9,
            "by column {} bytes, by entry {}",
            size(&columns),
            size(&rows)
        );
    }

    #[test]
    fn values_that_do_not_fit_are_declined_and_damage_never_panics() {
        let span = EpisodeSpan {
            pid: i32::MIN,
            started_us: i64::MAX,
            ended_us: i64::MIN,
        };
        // Out of tag order, a tag above 63, a wire type that varies, a
        // truncated field, an empty value.
        let misfits: [&[&[u8]]; 5] = [
            &[&[0, 0x10, 1, 0x08, 1]],
            &[&[0, 0x80, 0x04, 1]],
            &[&[0, 0x08, 1], &[0, 0x09, 1, 2, 3, 4, 5, 6, 7, 8]],
            &[&[0, 0x12, 5, 1]],
            &[&[]],
        ];
        for values in misfits {
            let input: Vec<_> = values.iter().map(|v| (span, *v)).collect();
            assert_eq!(encode(&input), None, "{values:?}");
        }

        let episodes = episodes(&mut Rng(9), 50);
        let raw = encode(&borrowed(&episodes)).unwrap();
        for cut in 0..raw.len() {
            assert!(decode(&raw[..cut]).is_none(), "cut at {cut}");
        }
        let mut extended = raw.clone();
        extended.push(0);
        assert!(decode(&extended).is_none());
        // A table whose tags repeat, and a length past the end.
        assert!(decode(&[1, 2, 0x20, 0x20, 0, 0, 0, 0, 0]).is_none());
        assert!(decode(&[1, 1, 0x24, 0, 0, 0, 0, 0x04, 0xff, 0xff, 0xff, 0xff, 0x0f]).is_none());
    }

    #[test]
    fn spans_at_the_edges_of_their_types_round_trip() {
        let mut rng = Rng(3);
        let mut episodes: Vec<(EpisodeSpan, Vec<u8>)> = (0..300)
            .map(|_| {
                let span = EpisodeSpan {
                    pid: rng.signed() as i32,
                    started_us: rng.signed(),
                    ended_us: rng.signed(),
                };
                // A backend_start relative to the start, as large as it goes.
                let mut value = vec![0, 0x10];
                encode_varint(zigzag(rng.signed()), &mut value);
                (span, value)
            })
            .collect();
        episodes.sort_by_key(|(s, _)| (s.ended_us, s.pid as u32, s.started_us));
        let raw = encode(&borrowed(&episodes)).expect("fits");
        let (values, entries) = decode(&raw).unwrap();
        for ((span, range), (s, v)) in entries.iter().zip(&episodes) {
            assert_eq!((span, &values[range.clone()]), (s, v.as_slice()));
        }
    }
}
