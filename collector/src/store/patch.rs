//! Field patches: a row stored as what changed since the same pid's row
//! one sample before, field by field, on the protobuf encodings and
//! without knowing their schema.
//!
//! An encoding is a sequence of fields, each a key varint (`tag << 3 |
//! wire type`) and a payload whose extent the wire type gives: a varint
//! (0), 8 bytes (1), a length varint and that many bytes (2), or 4 bytes
//! (5); groups (3, 4) are not used and are an error. Prost writes fields
//! in tag order, the occurrences of a repeated field one after another, so
//! an encoding is a run of *groups*, the occurrences of one tag, tags
//! ascending; an encoding read that is not is an error (applying a patch
//! reads the base up to the patch's last field and copies the rest).
//!
//! A row's patch is its pid (a varint, as protobuf encodes an `int32`:
//! sign-extended to 64 bits) and then, tags ascending, one entry for every
//! group that differs between the base encoding and the new one:
//!
//! ```text
//! key     varint: tag << 3 | wire type of the new occurrences
//! n       varint: occurrences in the new encoding (0: the field is gone)
//! n payloads, each as in the encoding (a length-delimited one with its length)
//! ```
//!
//! except that when `n` is 1, the new occurrence is a varint and the base
//! has exactly one occurrence of the tag, also a varint, the payload is
//! their difference: `zigzag(new - old)` as a varint, subtracting the u64
//! values with wrapping. A counter that moved a little costs a byte or two,
//! and any varint (a negative `int32`, a timestamp) comes back exactly.
//! The caller names fields exempt from this ([`Literal`]): identifiers such
//! as a query's hash, whose differences are as random as they are and,
//! unlike them, never repeat for compression to find.
//!
//! Applying a patch walks the base's groups and the patch's entries by tag
//! and writes the merge, in tag order: for rows prost encoded, the very
//! bytes prost writes for the new row, so patches chain.

use prost::encoding::encode_varint;
use thiserror::Error;

/// Wire type of a varint.
const VARINT: u8 = 0;
/// Wire type of 8 bytes.
const FIXED64: u8 = 1;
/// Wire type of a length and that many bytes.
const LENGTH_DELIMITED: u8 = 2;
/// Wire type of 4 bytes.
const FIXED32: u8 = 5;

/// Why an encoding could not be patched, or a patch not applied.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PatchError {
    /// An encoding or a patch ends inside a field, or has a varint longer
    /// than ten bytes.
    #[error("a field is cut short")]
    Truncated,
    /// A key whose tag is 0 or does not fit in 32 bits.
    #[error("field key {0} has no valid tag")]
    Key(u64),
    /// A field of a wire type rows do not use.
    #[error("field {tag} has wire type {wire_type}, which rows do not use")]
    WireType {
        /// The field's tag.
        tag: u32,
        /// Its wire type.
        wire_type: u8,
    },
    /// A field after one of a higher tag, or the occurrences of a field
    /// apart.
    #[error("field {0} is out of tag order")]
    Order(u32),
    /// The occurrences of one field differ in wire type.
    #[error("the occurrences of field {0} differ in wire type")]
    MixedWireTypes(u32),
    /// A patch of a pid the base sample has no row of.
    #[error("a patch of pid {0} has no row to apply to")]
    NoBase(i32),
}

/// Appends to `out` the patch of the row of `pid` that turns `base` into
/// `new`, writing the fields of `literal` as they are.
pub fn write(
    pid: i32,
    base: &[u8],
    new: &[u8],
    literal: Literal,
    out: &mut Vec<u8>,
) -> Result<(), PatchError> {
    put_varint(pid as i64 as u64, out);
    let (mut old, mut now) = (Groups::new(base), Groups::new(new));
    loop {
        if skip_same(&mut old, &mut now)? {
            return Ok(());
        }
        match (old.peek_tag()?, now.peek_tag()?) {
            (None, None) => return Ok(()),
            (Some(a), Some(b)) if a == b => {
                let (a, b) = (old.take()?, now.take()?);
                if !same(old.bytes(&a), now.bytes(&b)) {
                    let base_value = old
                        .single_varint(&a)
                        .filter(|_| differenced(literal, a.tag));
                    now.entry(&b, base_value, out)?;
                }
            }
            (Some(a), b) if b.is_none_or(|b| a < b) => {
                let gone = old.take()?;
                put_varint(key(gone.tag, gone.wire_type), out);
                put_varint(0, out);
            }
            _ => {
                let added = now.take()?;
                now.entry(&added, None, out)?;
            }
        }
    }
}

/// Moves `old` and `now` past the groups they go on with byte for byte,
/// reading them once (in `now`): a row that changed mostly did in a field
/// or two. True when the two end alike.
fn skip_same(old: &mut Groups<'_>, now: &mut Groups<'_>) -> Result<bool, PatchError> {
    let (a, b) = (&old.buf[old.pos..], &now.buf[now.pos..]);
    let shared = shared_prefix(a, b);
    if shared == a.len() && shared == b.len() {
        return Ok(true);
    }
    let start = now.pos;
    now.skip_shared(start + shared)?;
    if now.pos != start {
        old.resume(old.pos + (now.pos - start), now.last);
    }
    Ok(false)
}

/// Which fields a patch writes as they are even when a difference could
/// be taken: bit `t` for tag `t` (tags from 64 up are always differenced).
/// Writer and reader must agree on it.
pub type Literal = u64;

/// Whether a single varint of field `tag` is written as a difference.
fn differenced(literal: Literal, tag: u32) -> bool {
    tag >= 64 || literal & 1 << tag == 0
}

/// The pid a patch is of, and the rest of it.
pub fn pid(patch: &[u8]) -> Result<(i32, &[u8]), PatchError> {
    let mut pos = 0;
    let pid = varint(patch, &mut pos)? as i32;
    Ok((pid, &patch[pos..]))
}

/// Appends to `out` the encoding that `fields` (a patch without its pid,
/// see [`pid`], written with the same `literal`) makes of `base`.
pub fn apply(
    base: &[u8],
    fields: &[u8],
    literal: Literal,
    out: &mut Vec<u8>,
) -> Result<(), PatchError> {
    let mut old = Groups::new(base);
    let mut pos = 0;
    let mut last = 0;
    while pos < fields.len() {
        let (tag, wire_type) = split_key(varint(fields, &mut pos)?)?;
        if tag <= last {
            return Err(PatchError::Order(tag));
        }
        last = tag;
        let n = varint(fields, &mut pos)?;
        // The base's fields before this one, as they are.
        let run = old.pos;
        old.skip_below(tag)?;
        out.extend_from_slice(&base[run..old.pos]);
        let before = match old.peek_tag()? {
            Some(t) if t == tag => Some(old.take()?),
            _ => None,
        };
        match before.and_then(|g| old.single_varint(&g)) {
            Some(value) if n == 1 && wire_type == VARINT && differenced(literal, tag) => {
                let difference = unzigzag(varint(fields, &mut pos)?);
                put_varint(key(tag, wire_type), out);
                put_varint(value.wrapping_add(difference), out);
            }
            _ => {
                for _ in 0..n {
                    let start = pos;
                    skip(fields, &mut pos, tag, wire_type)?;
                    put_varint(key(tag, wire_type), out);
                    out.extend_from_slice(&fields[start..pos]);
                }
            }
        }
    }
    // The fields after the patch's last, as they are (decoding the row
    // checks them).
    out.extend_from_slice(&base[old.pos..]);
    Ok(())
}

/// The value of the last field 1 of `row` when it is a varint (0 when it
/// is absent, as prost leaves a zero out), read up to the first higher
/// field: a row's pid, without decoding the row.
pub fn first_field(row: &[u8]) -> Result<u64, PatchError> {
    let mut pos = 0;
    let mut value = 0;
    while pos < row.len() {
        let field = Field::at(row, pos)?;
        if field.tag > 1 {
            break;
        }
        if field.wire_type == VARINT {
            value = varint(row, &mut { field.payload })?;
        }
        pos = field.end;
    }
    Ok(value)
}

/// Where one field of an encoding is.
#[derive(Debug, Clone, Copy)]
struct Field {
    tag: u32,
    wire_type: u8,
    /// Where its payload starts (after the key).
    payload: usize,
    /// Where it ends.
    end: usize,
}

impl Field {
    /// The field of `buf` that starts at `at`.
    #[inline(always)]
    fn at(buf: &[u8], at: usize) -> Result<Self, PatchError> {
        let mut pos = at;
        let (tag, wire_type) = split_key(varint(buf, &mut pos)?)?;
        let payload = pos;
        skip(buf, &mut pos, tag, wire_type)?;
        Ok(Self {
            tag,
            wire_type,
            payload,
            end: pos,
        })
    }
}

/// The occurrences of one tag, one after another in an encoding.
#[derive(Debug, Clone, Copy)]
struct Group {
    tag: u32,
    /// The first occurrence's wire type.
    wire_type: u8,
    /// Whether other occurrences have another.
    mixed: bool,
    count: u64,
    /// Where the first occurrence's payload starts.
    payload: usize,
    /// Where the occurrences start and end, keys included.
    start: usize,
    end: usize,
}

/// An encoding's groups, in order.
struct Groups<'a> {
    buf: &'a [u8],
    /// Where the next group starts.
    pos: usize,
    /// The tag of the last group taken.
    last: u32,
    /// The key at `pos` once read: tag, wire type, where the payload starts.
    key: Option<(u32, u8, usize)>,
}

impl<'a> Groups<'a> {
    fn new(encoding: &'a [u8]) -> Self {
        Self {
            buf: encoding,
            pos: 0,
            last: 0,
            key: None,
        }
    }

    /// Goes on from `pos`, after a group of tag `last`.
    fn resume(&mut self, pos: usize, last: u32) {
        (self.pos, self.last, self.key) = (pos, last, None);
    }

    /// The key at `pos`.
    #[inline(always)]
    fn key(&mut self) -> Result<Option<(u32, u8, usize)>, PatchError> {
        if self.key.is_none() && self.pos < self.buf.len() {
            let mut at = self.pos;
            let (tag, wire_type) = split_key(varint(self.buf, &mut at)?)?;
            self.key = Some((tag, wire_type, at));
        }
        Ok(self.key)
    }

    /// The tag of the next group.
    #[inline(always)]
    fn peek_tag(&mut self) -> Result<Option<u32>, PatchError> {
        Ok(self.key()?.map(|(tag, _, _)| tag))
    }

    /// Takes the next group; there must be one ([`Groups::peek_tag`]).
    fn take(&mut self) -> Result<Group, PatchError> {
        let (tag, wire_type, payload) = self.key()?.ok_or(PatchError::Truncated)?;
        if tag <= self.last {
            return Err(PatchError::Order(tag));
        }
        let mut end = payload;
        skip(self.buf, &mut end, tag, wire_type)?;
        let mut group = Group {
            tag,
            wire_type,
            mixed: false,
            count: 1,
            payload,
            start: self.pos,
            end,
        };
        self.key = None;
        while group.end < self.buf.len() {
            let mut at = group.end;
            let (next, next_wire_type) = split_key(varint(self.buf, &mut at)?)?;
            if next != tag {
                self.key = Some((next, next_wire_type, at));
                break;
            }
            skip(self.buf, &mut at, next, next_wire_type)?;
            group.mixed |= next_wire_type != wire_type;
            group.count += 1;
            group.end = at;
        }
        (self.pos, self.last) = (group.end, tag);
        Ok(group)
    }

    /// Takes the fields of tags below `tag`.
    fn skip_below(&mut self, tag: u32) -> Result<(), PatchError> {
        while let Some((t, wire_type, mut at)) = self.key()? {
            if t >= tag {
                break;
            }
            if t < self.last {
                return Err(PatchError::Order(t));
            }
            skip(self.buf, &mut at, t, wire_type)?;
            self.resume(at, t);
        }
        Ok(())
    }

    /// Takes the groups that lie, with the key after them, before
    /// `shared`: another encoding with the same bytes from here on up to
    /// there has the same groups there.
    fn skip_shared(&mut self, shared: usize) -> Result<(), PatchError> {
        let (mut pos, mut previous) = (self.pos, self.last);
        while pos < shared {
            let mut at = pos;
            let (tag, wire_type) = split_key(varint(self.buf, &mut at)?)?;
            if at > shared {
                break;
            }
            if tag != previous {
                if tag < previous {
                    return Err(PatchError::Order(tag));
                }
                // A group ends at `pos`, in both.
                self.resume(pos, previous);
            }
            skip(self.buf, &mut at, tag, wire_type)?;
            (pos, previous) = (at, tag);
        }
        Ok(())
    }

    /// The bytes of `group`, one of these groups.
    fn bytes(&self, group: &Group) -> &'a [u8] {
        &self.buf[group.start..group.end]
    }

    /// The value of `group`'s only occurrence, when it is one varint.
    fn single_varint(&self, group: &Group) -> Option<u64> {
        if group.count != 1 || group.wire_type != VARINT {
            return None;
        }
        // Read once already: it ends.
        varint(self.buf, &mut { group.payload }).ok()
    }

    /// Appends the entry of `new`, one of these groups, which differs from
    /// the base's group of the same tag (`base_value`: that group's value
    /// when it is one varint).
    fn entry(
        &self,
        new: &Group,
        base_value: Option<u64>,
        out: &mut Vec<u8>,
    ) -> Result<(), PatchError> {
        if new.mixed {
            return Err(PatchError::MixedWireTypes(new.tag));
        }
        put_varint(key(new.tag, new.wire_type), out);
        put_varint(new.count, out);
        match (base_value, self.single_varint(new)) {
            (Some(old), Some(value)) => put_varint(zigzag(value.wrapping_sub(old)), out),
            _ => {
                let mut pos = new.start;
                while pos < new.end {
                    let field = Field::at(self.buf, pos)?;
                    out.extend_from_slice(&self.buf[field.payload..field.end]);
                    pos = field.end;
                }
            }
        }
        Ok(())
    }
}

/// Moves `pos` past a payload of `wire_type` in `buf`.
#[inline(always)]
fn skip(buf: &[u8], pos: &mut usize, tag: u32, wire_type: u8) -> Result<(), PatchError> {
    let len = match wire_type {
        // A varint ends at its first byte below 0x80, ten bytes on at most.
        VARINT => {
            let mut len = 0;
            loop {
                let byte = *buf.get(*pos + len).ok_or(PatchError::Truncated)?;
                len += 1;
                if byte < 0x80 {
                    break len;
                }
                if len == 10 {
                    return Err(PatchError::Truncated);
                }
            }
        }
        FIXED64 => 8,
        LENGTH_DELIMITED => {
            usize::try_from(varint(buf, pos)?).map_err(|_| PatchError::Truncated)?
        }
        FIXED32 => 4,
        _ => return Err(PatchError::WireType { tag, wire_type }),
    };
    if len > buf.len() - *pos {
        return Err(PatchError::Truncated);
    }
    *pos += len;
    Ok(())
}

/// The varint of `buf` at `pos`, moving `pos` past it.
#[inline(always)]
fn varint(buf: &[u8], pos: &mut usize) -> Result<u64, PatchError> {
    // Keys, lengths and most values are one byte.
    if let Some(&byte) = buf.get(*pos).filter(|&&b| b < 0x80) {
        *pos += 1;
        return Ok(u64::from(byte));
    }
    let mut value = 0;
    let mut at = *pos;
    for shift in (0..64).step_by(7) {
        let byte = *buf.get(at).ok_or(PatchError::Truncated)?;
        at += 1;
        value |= u64::from(byte & 0x7f) << shift;
        if byte < 0x80 {
            // The tenth byte holds the 64th bit only.
            if shift == 63 && byte > 1 {
                break;
            }
            *pos = at;
            return Ok(value);
        }
    }
    Err(PatchError::Truncated)
}

/// Whether two fields' bytes are equal. Fields are a few bytes long: a
/// loop here is cheaper than a call to `memcmp` for each.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && shared_prefix(a, b) == a.len()
}

/// How many bytes `a` and `b` start with alike.
fn shared_prefix(a: &[u8], b: &[u8]) -> usize {
    let len = a.len().min(b.len());
    let word = |s: &[u8], i: usize| {
        s.get(i..i + 8)
            .map(|w| u64::from_ne_bytes(w.try_into().expect("8 bytes")))
    };
    let mut i = 0;
    while i + 8 <= len && word(a, i) == word(b, i) {
        i += 8;
    }
    while i < len && a[i] == b[i] {
        i += 1;
    }
    i
}

/// Appends `value` as a varint, as prost's `encode_varint` does, the one
/// byte of most keys, counts and differences without a call.
#[inline(always)]
fn put_varint(value: u64, out: &mut Vec<u8>) {
    if value < 0x80 {
        out.push(value as u8);
    } else {
        encode_varint(value, out);
    }
}

fn key(tag: u32, wire_type: u8) -> u64 {
    u64::from(tag) << 3 | u64::from(wire_type)
}

#[inline(always)]
fn split_key(key: u64) -> Result<(u32, u8), PatchError> {
    match u32::try_from(key >> 3) {
        Ok(tag) if tag > 0 => Ok((tag, (key & 7) as u8)),
        _ => Err(PatchError::Key(key)),
    }
}

fn zigzag(difference: u64) -> u64 {
    let d = difference as i64;
    ((d << 1) ^ (d >> 63)) as u64
}

fn unzigzag(z: u64) -> u64 {
    (z >> 1) ^ (z & 1).wrapping_neg()
}

#[cfg(test)]
mod tests {
    use pgtrail_proto::pb;
    use prost::Message;

    use super::*;
    use crate::store::testing::{process, session, Rng};
    use crate::store::StoredSample;

    #[test]
    fn fields_are_the_same_only_when_every_byte_is() {
        let long = b"0123456789abcdef-";
        assert!(same(b"", b""));
        assert!(same(long, long));
        assert!(!same(b"abc", b"ab"), "a prefix is not the field");
        assert!(!same(b"ab", b"abc"));
        let mut late = *long;
        late[16] = b'+';
        assert!(!same(long, &late), "a difference past the first words");
        let mut early = *long;
        early[3] = b'x';
        assert!(!same(long, &early));
    }

    /// Each field of `b`, with the odds given in percent, else `a`'s.
    fn mix<M: Message + Default>(a: &M, b: &M, rng: &mut Rng, percent: u64) -> M {
        let mut fields = Vec::new();
        let (ea, eb) = (a.encode_to_vec(), b.encode_to_vec());
        let (mut ga, mut gb) = (Groups::new(&ea), Groups::new(&eb));
        loop {
            let (ta, tb) = (ga.peek_tag().unwrap(), gb.peek_tag().unwrap());
            let tag = match (ta, tb) {
                (None, None) => break,
                (Some(x), Some(y)) => x.min(y),
                (Some(x), None) | (None, Some(x)) => x,
            };
            let from_a = (ta == Some(tag)).then(|| ga.take().unwrap());
            let from_b = (tb == Some(tag)).then(|| gb.take().unwrap());
            let pick = if rng.chance(percent) {
                from_b.map(|g| gb.bytes(&g))
            } else {
                from_a.map(|g| ga.bytes(&g))
            };
            fields.extend_from_slice(pick.unwrap_or_default());
        }
        M::decode(fields.as_slice()).unwrap()
    }

    /// Patches `base` into `new` and back, checking the decoded row and the
    /// bytes; returns the patch's length.
    fn round_trip<M: Message + Default + PartialEq + std::fmt::Debug>(
        pid: i32,
        base: &M,
        new: &M,
    ) -> usize {
        round_trip_with(pid, base, new, 0)
    }

    /// As [`round_trip`], with the fields of `literal` written as they are.
    fn round_trip_with<M: Message + Default + PartialEq + std::fmt::Debug>(
        pid: i32,
        base: &M,
        new: &M,
        literal: Literal,
    ) -> usize {
        let (b, n) = (base.encode_to_vec(), new.encode_to_vec());
        let mut patch = Vec::new();
        write(pid, &b, &n, literal, &mut patch).unwrap();
        let (got_pid, fields) = self::pid(&patch).unwrap();
        assert_eq!(got_pid, pid);
        let mut out = Vec::new();
        apply(&b, fields, literal, &mut out).unwrap();
        assert_eq!(M::decode(out.as_slice()).unwrap(), *new);
        assert_eq!(out, n, "the bytes prost writes");
        patch.len()
    }

    #[test]
    fn random_sessions_and_processes_round_trip() {
        let mut rng = Rng(42);
        for i in 0..3000 {
            let pid = rng.signed() as i32;
            let percent = [0, 5, 30, 100][i % 4];
            let a = session(&mut rng, pid);
            let other = session(&mut rng, pid);
            let b = mix(&a, &other, &mut rng, percent);
            round_trip(pid, &a, &b);
            round_trip(pid, &b, &a);
            let literal = rng.next();
            round_trip_with(pid, &a, &b, literal);
            round_trip_with(pid, &b, &a, literal);
            let a = process(&mut rng, pid);
            let other = process(&mut rng, pid);
            let b = mix(&a, &other, &mut rng, percent);
            round_trip(pid, &a, &b);
            round_trip(pid, &b, &a);
        }
    }

    #[test]
    fn literal_fields_are_written_as_they_are() {
        let base = pb::Session {
            pid: 9,
            query_id: Some(0x1234_5678_9abc_def0),
            pg_query_id: Some(-42),
            ..Default::default()
        };
        let new = pb::Session {
            query_id: Some(0x1234_5678_9abc_def1),
            pg_query_id: Some(-43),
            ..base.clone()
        };
        // As differences, one byte each; as they are, the whole varints.
        let differenced = round_trip(9, &base, &new);
        let literal = round_trip_with(9, &base, &new, 1 << 18 | 1 << 19);
        let whole = |v: u64| prost::encoding::encoded_len_varint(v);
        assert_eq!(
            literal - differenced,
            whole(0x1234_5678_9abc_def1) + whole(-43i64 as u64) - 2
        );
        // A patch read with another mask than it was written with is not
        // the new row.
        let (b, n) = (base.encode_to_vec(), new.encode_to_vec());
        let mut patch = Vec::new();
        write(9, &b, &n, 1 << 18, &mut patch).unwrap();
        let mut out = Vec::new();
        apply(&b, self::pid(&patch).unwrap().1, 0, &mut out).unwrap();
        assert_ne!(out, n);
    }

    #[test]
    fn fields_set_cleared_and_changed_round_trip() {
        let base = pb::Session {
            pid: 7,
            backend_type: "client backend".into(),
            state: Some("idle".into()),
            client_port: Some(-3),
            blocking_pids: vec![10, 11],
            query_start_us: Some(1_790_000_000_000_000),
            ..Default::default()
        };
        let cases = [
            pb::Session::default(),
            pb::Session {
                pid: 7,
                ..Default::default()
            },
            pb::Session {
                state: Some("active".into()),
                wait_event: Some("ClientRead".into()),
                ..base.clone()
            },
            pb::Session {
                client_port: Some(5432),
                blocking_pids: vec![10, 11, -12],
                ..base.clone()
            },
            pb::Session {
                client_port: None,
                blocking_pids: vec![],
                query_start_us: Some(-1),
                insufficient_privilege: true,
                ..base.clone()
            },
            pb::Session {
                state: Some(String::new()),
                backend_type: String::new(),
                ..base.clone()
            },
        ];
        for case in &cases {
            round_trip(7, &base, case);
            round_trip(7, case, &base);
            round_trip(-7, case, case);
        }
    }

    #[test]
    fn repeated_fields_grow_shrink_and_change() {
        // A message with unpacked repeated fields (strings, messages) as
        // well as packed ones.
        let sample = |spots: &[&str], pids: &[i32], seq: u64| StoredSample {
            blind_spots: spots.iter().map(|s| s.to_string()).collect(),
            sessions: pids
                .iter()
                .map(|&pid| pb::Session {
                    pid,
                    ..Default::default()
                })
                .collect(),
            gone_sessions: pids.to_vec(),
            seq,
            ..Default::default()
        };
        let steps = [
            sample(&[], &[], 0),
            sample(&["io"], &[1], 1),
            sample(&["io", "cpu"], &[1, 2], 1),
            sample(&["io", "cpu", "mem"], &[1, 2, 3], 300),
            sample(&["cpu"], &[2], 300),
            sample(&["cpu", "io"], &[2, 1], 2),
            sample(&[], &[], 2),
        ];
        for a in &steps {
            for b in &steps {
                round_trip(0, a, b);
            }
        }
    }

    #[test]
    fn a_counter_only_change_is_a_few_bytes() {
        let mut rng = Rng(1);
        let mut base = process(&mut rng, 4242);
        base.utime_us = Some(12_345_678);
        base.stime_us = Some(2_345_678);
        base.voluntary_ctxt_switches = Some(987_654);
        base.cpu_pct = Some(12.5);
        let mut new = base.clone();
        new.utime_us = Some(12_355_678);
        new.stime_us = Some(2_345_600);
        new.voluntary_ctxt_switches = Some(987_700);
        new.cpu_pct = Some(13.0);
        let patch = round_trip(4242, &base, &new);
        // pid 2, utime 2 + 3, stime 2 + 2, switches 2 + 1, cpu_pct 2 + 4.
        assert!(patch <= 21, "{patch} bytes");
        assert!(
            patch * 4 < base.encoded_len(),
            "{patch} of {}",
            base.encoded_len()
        );
        let same = round_trip(4242, &base, &base);
        assert_eq!(same, 2, "only the pid");
    }

    #[test]
    fn a_varint_difference_wraps_both_ways() {
        for (old, new) in [(0, u64::MAX), (u64::MAX, 0), (5, 3), (1 << 63, 1)] {
            let d = zigzag(new.wrapping_sub(old));
            assert_eq!(old.wrapping_add(unzigzag(d)), new);
        }
        assert_eq!(zigzag(1), 2);
        assert_eq!(zigzag(u64::MAX), 1, "-1 is one byte");
    }

    #[test]
    fn damaged_input_is_an_error_not_a_panic() {
        let row = pb::Session {
            pid: 3,
            state: Some("idle".into()),
            blocking_pids: vec![1, 2],
            ..Default::default()
        }
        .encode_to_vec();
        let other = pb::Session {
            pid: 3,
            state: Some("active".into()),
            ..Default::default()
        }
        .encode_to_vec();
        let mut patch = Vec::new();
        write(3, &row, &other, 0, &mut patch).unwrap();
        let (_, fields) = pid(&patch).unwrap();
        let mut out = Vec::new();
        // Cut anywhere, an error or (cut between fields) another row.
        for cut in 0..fields.len() {
            let _ = apply(&row, &fields[..cut], 0, &mut out);
        }
        for cut in 0..row.len() {
            let _ = apply(&row[..cut], fields, 0, &mut out);
        }
        let short = &row[..row.len() - 1];
        assert_eq!(
            apply(short, fields, 0, &mut out),
            Err(PatchError::Truncated)
        );
        assert_eq!(
            write(3, short, &other, 0, &mut out),
            Err(PatchError::Truncated)
        );
        let group = [0x0b, 0x0c];
        assert_eq!(
            apply(&group, &[0x10, 0], 0, &mut out),
            Err(PatchError::WireType {
                tag: 1,
                wire_type: 3
            })
        );
        assert_eq!(
            write(1, &group, &row, 0, &mut out),
            Err(PatchError::WireType {
                tag: 1,
                wire_type: 3
            })
        );
        // Fields out of order, a repeated entry, a zero tag.
        let mut swapped = other[2..].to_vec();
        swapped.extend_from_slice(&other[..2]);
        assert_eq!(
            write(3, &swapped, &row, 0, &mut out),
            Err(PatchError::Order(1))
        );
        assert_eq!(
            apply(&row, &[0x78, 0, 0x78, 0], 0, &mut out),
            Err(PatchError::Order(15))
        );
        assert_eq!(
            apply(&row, &[0x00, 0], 0, &mut out),
            Err(PatchError::Key(0))
        );
        assert_eq!(
            apply(&row, &[0x7a, 1, 5, b'x'], 0, &mut out),
            Err(PatchError::Truncated)
        );
        assert_eq!(pid(&[0x80]), Err(PatchError::Truncated));
    }

    #[test]
    fn the_first_field_is_the_pid() {
        let mut rng = Rng(9);
        for pid in [0, 1, -1, i32::MAX, i32::MIN, 31_337] {
            let s = session(&mut rng, pid).encode_to_vec();
            let p = process(&mut rng, pid).encode_to_vec();
            assert_eq!(first_field(&s).unwrap() as i32, pid);
            assert_eq!(first_field(&p).unwrap() as i32, pid);
        }
    }
}
