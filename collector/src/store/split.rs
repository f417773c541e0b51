//! Splitting an encoded protobuf message in two by field, so the fields
//! most questions read can be stored apart from the bulky ones. Protobuf
//! decodes the concatenation of two encodings as one message (maps and
//! repeated fields join, scalars appear once), so the halves rejoin by
//! concatenation. A [`Rollup`] is stored so: its head in tree `rollups`,
//! its maps in `rollup_maps`, compressed ([`super::compress`]; the maps
//! repeat user, database and application names and wait events, and
//! shrink about threefold).

use prost::encoding::{decode_key, skip_field, DecodeContext};
use prost::{DecodeError, Message};

use super::compress;
use super::records::Rollup;

/// zstd's level for a rollup's maps: written once a minute per instance.
const MAPS_LEVEL: i32 = 3;

/// The fields of a [`Rollup`] kept in `rollup_maps` rather than
/// `rollups`: the per-dimension maxima and the wait-event counts, most of
/// a rollup's bytes and read by few questions.
const ROLLUP_MAPS: [u32; 3] = [5, 13, 14];

/// A rollup split as stored: its head (tree `rollups`) and its maps (tree
/// `rollup_maps`, as [`compress::pack`] leaves them).
pub type Split = (Vec<u8>, Vec<u8>);

/// `r` split as stored.
pub fn split(r: &Rollup) -> Split {
    let (head, maps) =
        split_fields(&r.encode_to_vec(), &ROLLUP_MAPS).expect("a message just encoded splits");
    (head, compress::pack(maps, MAPS_LEVEL))
}

/// The head of `r` as stored, without encoding its maps (an open hour's
/// can be tens of kilobytes, and `peaks` and `leaks` read only heads):
/// the maps (the fields of [`ROLLUP_MAPS`]) are set aside meanwhile.
pub fn head(r: &mut Rollup) -> Vec<u8> {
    let maxima = std::mem::take(&mut r.maxima);
    let waits = std::mem::take(&mut r.waits);
    let wait_queries = std::mem::take(&mut r.wait_queries);
    let head = r.encode_to_vec();
    r.maxima = maxima;
    r.waits = waits;
    r.wait_queries = wait_queries;
    head
}

/// `bytes` (an encoded message) as the fields whose tag is not in `apart`,
/// and the fields whose tag is, each in its original order.
pub fn split_fields(bytes: &[u8], apart: &[u32]) -> Result<(Vec<u8>, Vec<u8>), DecodeError> {
    let mut kept = Vec::with_capacity(bytes.len());
    let mut moved = Vec::new();
    let mut rest = bytes;
    while !rest.is_empty() {
        let before = rest;
        let (tag, wire_type) = decode_key(&mut rest)?;
        skip_field(wire_type, tag, &mut rest, DecodeContext::default())?;
        let field = &before[..before.len() - rest.len()];
        if apart.contains(&tag) {
            moved.extend_from_slice(field);
        } else {
            kept.extend_from_slice(field);
        }
    }
    Ok((kept, moved))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Max, PeakRollup};

    /// A rollup with a head and every map.
    fn rollup() -> Rollup {
        let mut r = Rollup {
            samples: 3,
            max_total: 7,
            max_at_us: -5,
            lifetimes: vec![1, 2, 3],
            ..Default::default()
        };
        r.by_state_at_max.insert("idle".into(), 4);
        r.maxima
            .insert("user\tapp".into(), Max { value: 2, at_us: 9 });
        r.waits.insert("CPU".into(), 11);
        r.wait_queries.insert("CPU\t0".into(), 12);
        r
    }

    #[test]
    fn the_halves_rejoin_into_the_message() {
        let r = rollup();
        let bytes = r.encode_to_vec();
        let (head, maps) = split_fields(&bytes, &ROLLUP_MAPS).unwrap();
        let mut joined = head.clone();
        joined.extend_from_slice(&maps);
        assert_eq!(Rollup::decode(joined.as_slice()).unwrap(), r);
        let head_only = Rollup::decode(head.as_slice()).unwrap();
        assert!(head_only.maxima.is_empty() && head_only.waits.is_empty());
        assert_eq!(head_only.lifetimes, vec![1, 2, 3]);
        assert_eq!(
            PeakRollup::decode(head.as_slice()).unwrap(),
            PeakRollup::from(r)
        );
        assert!(split_fields(&bytes[..bytes.len() - 1], &[5]).is_err());
    }

    #[test]
    fn a_head_read_alone_is_the_stored_head() {
        let mut r = rollup();
        let before = r.clone();
        assert_eq!(head(&mut r), split(&r).0);
        assert_eq!(r, before, "the maps are put back");
    }

    #[test]
    fn stored_maps_are_compressed_and_rejoin_once_unpacked() {
        let mut r = rollup();
        for i in 0..200u64 {
            r.maxima
                .insert(format!("user{i}\tcheckout-api"), Max { value: i, at_us: 9 });
        }
        let (head, maps) = split(&r);
        let plain = split_fields(&r.encode_to_vec(), &ROLLUP_MAPS).unwrap().1;
        assert!(
            maps.len() * 3 < plain.len(),
            "{} of {} bytes",
            maps.len(),
            plain.len()
        );
        let mut joined = head;
        joined.extend_from_slice(&compress::unpack(maps.into()).unwrap());
        assert_eq!(Rollup::decode(joined.as_slice()).unwrap(), r);
    }
}
