//! Splitting an encoded protobuf message in two by field, so the fields
//! most questions read can be stored apart from the bulky ones. Protobuf
//! decodes the concatenation of two encodings as one message (maps and
//! repeated fields join, scalars appear once), so the halves rejoin by
//! concatenation.

use prost::encoding::{decode_key, skip_field, DecodeContext};
use prost::DecodeError;

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
    use prost::Message;

    use super::*;
    use crate::store::{Max, PeakRollup, Rollup};

    #[test]
    fn the_halves_rejoin_into_the_message() {
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
        let bytes = r.encode_to_vec();
        let (head, maps) = split_fields(&bytes, &[5, 13, 14]).unwrap();
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
}
