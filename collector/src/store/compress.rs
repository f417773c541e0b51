//! Samples stored on their own in sled compressed with zstd: those that
//! come after their minute was sealed (keyframes, see [`super::sealed`]),
//! and every sample of a store written before format 3 (keyframes and
//! deltas, read with [`unpack`]). A keyframe holds every row of a sample,
//! and rows repeat each other's strings (users, databases, applications,
//! process titles, wait events), so it shrinks several times.
//!
//! A compressed value is a zero byte (which never starts a protobuf
//! record: field numbers start at 1), the uncompressed length as a
//! varint, then a zstd frame. Any other value is stored as it is, so
//! stores written before compression read the same, and a value
//! compression would not shrink is kept as it is.

use std::cell::RefCell;

use prost::bytes::Bytes;
use prost::encoding::{decode_varint, encode_varint};

use super::StoreError;

/// First byte of a compressed value.
const MARK: u8 = 0;

/// zstd's level for keyframes: rare (a late sample), so worth a strong
/// pass (about a millisecond for 200 sessions).
pub const KEYFRAME_LEVEL: i32 = 9;

/// Values shorter than this are stored as they are.
const MIN_LEN: usize = 64;

thread_local! {
    /// A compression context per thread: making one costs more than
    /// compressing a delta.
    static COMPRESSOR: RefCell<Option<zstd::bulk::Compressor<'static>>> =
        const { RefCell::new(None) };
    /// A decompression context per thread, for the same reason: reading a
    /// sample decompresses every link of its chain.
    static DECOMPRESSOR: RefCell<Option<zstd::bulk::Decompressor<'static>>> =
        const { RefCell::new(None) };
}

/// `value` as stored: compressed at `level` when that makes it smaller.
pub fn pack(value: Vec<u8>, level: i32) -> Vec<u8> {
    if value.len() < MIN_LEN {
        return value;
    }
    let frame = COMPRESSOR.with(|c| {
        let mut c = c.borrow_mut();
        let compressor = match c.as_mut() {
            Some(compressor) => compressor,
            None => c.insert(zstd::bulk::Compressor::new(level).ok()?),
        };
        compressor.set_compression_level(level).ok()?;
        compressor.compress(&value).ok()
    });
    match frame {
        Some(frame) if frame.len() + 1 + 10 < value.len() => {
            let mut out = Vec::with_capacity(frame.len() + 11);
            out.push(MARK);
            encode_varint(value.len() as u64, &mut out);
            out.extend_from_slice(&frame);
            out
        }
        _ => value,
    }
}

/// A stored value as written before [`pack`].
pub fn unpack(value: sled::IVec) -> Result<Bytes, StoreError> {
    if value.first() != Some(&MARK) {
        return Ok(Bytes::from_owner(value));
    }
    let mut rest = &value[1..];
    let len = decode_varint(&mut rest).map_err(|_| StoreError::Unpack("length"))?;
    let len = usize::try_from(len).map_err(|_| StoreError::Unpack("length"))?;
    let bytes = DECOMPRESSOR
        .with(|d| {
            let mut d = d.borrow_mut();
            let decompressor = match d.as_mut() {
                Some(decompressor) => decompressor,
                None => d.insert(zstd::bulk::Decompressor::new().ok()?),
            };
            decompressor.decompress(rest, len).ok()
        })
        .ok_or(StoreError::Unpack("frame"))?;
    if bytes.len() != len {
        return Err(StoreError::Unpack("length"));
    }
    Ok(Bytes::from(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repetitive_values_shrink_and_come_back() {
        let value: Vec<u8> = b"postgres: app_user orders 10.0.0.7(51234) idle\n"
            .repeat(200)
            .into_iter()
            .chain(1..=255)
            .collect();
        for level in [3, KEYFRAME_LEVEL] {
            let packed = pack(value.clone(), level);
            assert_eq!(packed[0], MARK);
            assert!(packed.len() * 5 < value.len(), "{} bytes", packed.len());
            assert_eq!(unpack(packed.into()).unwrap(), value);
        }
    }

    #[test]
    fn short_or_incompressible_values_are_kept_as_they_are() {
        let short = vec![8, 1, 16, 2];
        assert_eq!(pack(short.clone(), KEYFRAME_LEVEL), short);
        let mut x = 0x9e37_79b9_7f4a_7c15_u64;
        let mut noise: Vec<u8> = (0..4096)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect();
        // A stored value never starts with the mark (no protobuf does).
        noise[0] = 8;
        let kept = pack(noise.clone(), KEYFRAME_LEVEL);
        assert_eq!(kept, noise);
        assert_eq!(unpack(kept.into()).unwrap(), noise);
    }

    #[test]
    fn a_damaged_frame_is_an_error() {
        let value = b"pg_stat_activity ".repeat(100);
        let mut packed = pack(value, KEYFRAME_LEVEL);
        let n = packed.len();
        packed.truncate(n - 3);
        assert!(matches!(unpack(packed.into()), Err(StoreError::Unpack(_))));
    }
}
