//! Closed episodes sealed with the minute of samples they closed in: when
//! an instance's minute is sealed ([`super::seal`]), the episodes that
//! closed during it are compressed as one zstd frame per kind, appended to
//! the instance's episode file for the day (`<day>.eps`,
//! [`super::segments`]) and indexed in sled (tree `episode_blocks`, keyed
//! by kind, instance and the minute's start, each entry a
//! [`SampleBlock`] whose times are the first and last ends).
//!
//! The block of minute `M` holds only episodes that ended in
//! `[M − 1 min, M + 1 min)`: an episode seen last just before the minute
//! turned closes in the next one. So the episodes that ended in a window
//! are in the blocks of the minutes from the window's start to a minute
//! past its end, and one that ended at `t` is in the block of `t`'s minute
//! or of the next. Those that ended earlier (an agent that was away for a
//! while) are kept one per key in sled's `episodes`, as every episode was
//! before format 4.
//!
//! A block decompressed is its episodes in key order (by end, pid,
//! start), laid out by column ([`super::episode_columns`], index entries
//! whose `layout` is [`LAYOUT_COLUMNS`]) or, when the values do not fit
//! that layout and in blocks written before format 5, entry after entry:
//! each as the zigzag varints of its end less the one before's (from 0),
//! its pid, and its end less its start, then the value's length (varint)
//! and the value ([`super::closed`]). Kind and instance are the index
//! key's.

use std::ops::Range;

use pgtrail_proto::time::Micros;
use prost::bytes::Bytes;
use prost::encoding::{decode_varint, encode_varint};

use super::episode_columns;
use super::expire::remove_blocks;
use super::keys::{self, EpisodeKind, InstanceId};
use super::records::{EpisodeSpan, SampleBlock, LAYOUT_COLUMNS};
use super::sealed::{compress_block, minute_of, unzigzag, zigzag};
use super::segments::{Holding, Segments};
use super::sled::{decode, SledStore};
use super::{EpisodeFilter, StoreError};

/// How far an episode's end may lie from the minute it is sealed with.
pub(super) const REACH: Micros = 60_000_000;

/// A block of closed episodes, decompressed.
#[derive(Debug)]
struct EpisodeBlock {
    bytes: Bytes,
    entries: Vec<(EpisodeSpan, Range<usize>)>,
}

impl EpisodeBlock {
    /// A block's bytes, decompressed, as `layout` has them.
    fn decode(raw: Vec<u8>, layout: u32) -> Result<EpisodeBlock, StoreError> {
        match layout {
            0 => Self::decode_entries(Bytes::from(raw)),
            LAYOUT_COLUMNS => {
                let (values, entries) =
                    episode_columns::decode(&raw).ok_or(StoreError::Unpack("episode block"))?;
                Ok(EpisodeBlock {
                    bytes: Bytes::from(values),
                    entries,
                })
            }
            _ => Err(StoreError::Unpack("episode block layout")),
        }
    }

    fn decode_entries(bytes: Bytes) -> Result<EpisodeBlock, StoreError> {
        let damaged = || StoreError::Unpack("episode block");
        let mut entries = Vec::new();
        let mut rest: &[u8] = &bytes;
        let mut end: Micros = 0;
        while !rest.is_empty() {
            let mut next = || {
                decode_varint(&mut rest)
                    .map(unzigzag)
                    .map_err(|_| damaged())
            };
            end = end.wrapping_add(next()?);
            let pid = i32::try_from(next()?).map_err(|_| damaged())?;
            let lasted = next()?;
            let span = EpisodeSpan {
                pid,
                started_us: end.wrapping_sub(lasted),
                ended_us: end,
            };
            let len = decode_varint(&mut rest).map_err(|_| damaged())?;
            let len = usize::try_from(len).map_err(|_| damaged())?;
            if len > rest.len() {
                return Err(damaged());
            }
            let start = bytes.len() - rest.len();
            entries.push((span, start..start + len));
            rest = &rest[len..];
        }
        Ok(EpisodeBlock { bytes, entries })
    }
}

/// The bytes of a block of `episodes` (spans and values, in key order),
/// and their layout: by column when the values fit, else entry after entry.
pub(super) fn encode_block(episodes: &[(EpisodeSpan, &[u8])]) -> (Vec<u8>, u32) {
    match episode_columns::encode(episodes) {
        Some(raw) => (raw, LAYOUT_COLUMNS),
        None => (encode_entries(episodes.iter().copied()), 0),
    }
}

/// The bytes of a block of `episodes` entry after entry.
pub(super) fn encode_entries<'a>(
    episodes: impl Iterator<Item = (EpisodeSpan, &'a [u8])>,
) -> Vec<u8> {
    let mut out = Vec::new();
    let mut end: Micros = 0;
    for (span, value) in episodes {
        encode_varint(zigzag(span.ended_us.wrapping_sub(end)), &mut out);
        encode_varint(zigzag(i64::from(span.pid)), &mut out);
        encode_varint(
            zigzag(span.ended_us.wrapping_sub(span.started_us)),
            &mut out,
        );
        end = span.ended_us;
        encode_varint(value.len() as u64, &mut out);
        out.extend_from_slice(value);
    }
    out
}

/// A block of one kind to write: its kind, its bytes and their layout,
/// its first and last end, and how many episodes it holds.
pub(super) type EpisodeBlockBytes = (EpisodeKind, (Vec<u8>, u32), Micros, Micros, u32);

/// Whether an episode that ended at `end` is sealed with minute `minute`.
pub(super) fn within_reach(minute: Micros, end: Micros) -> bool {
    (minute.saturating_sub(REACH)..minute.saturating_add(REACH)).contains(&end)
}

impl SledStore {
    /// Writes the blocks of episodes sealed with `minute`, one per kind
    /// ([`EpisodeBlockBytes`]), to the day's episode file in one write;
    /// returns their index keys and records, for the seal's transaction.
    pub(super) fn write_episode_blocks(
        &self,
        instance: InstanceId,
        minute: Micros,
        blocks: &[EpisodeBlockBytes],
    ) -> Result<Vec<([u8; 13], SampleBlock)>, StoreError> {
        if blocks.is_empty() {
            return Ok(Vec::new());
        }
        let mut frames = Vec::new();
        let mut placed = Vec::with_capacity(blocks.len());
        for (kind, (raw, layout), first, last, count) in blocks {
            let frame = compress_block(raw)?;
            let record = SampleBlock {
                offset: frames.len() as u64,
                len: frame.len() as u64,
                raw_len: raw.len() as u64,
                first_us: *first,
                last_us: *last,
                count: *count,
                layout: *layout,
            };
            frames.extend_from_slice(&frame);
            placed.push((keys::episode_block(*kind, instance, minute), record));
        }
        let at = (Segments::day_of(minute), Holding::Episodes);
        let offset = self.segments.append(instance, at, &frames)?;
        for (_, record) in &mut placed {
            record.offset += offset;
        }
        Ok(placed)
    }

    fn read_episode_block(
        &self,
        instance: InstanceId,
        minute: Micros,
        record: &SampleBlock,
    ) -> Result<EpisodeBlock, StoreError> {
        let damaged = || StoreError::Unpack("episode block");
        let len = usize::try_from(record.len).map_err(|_| damaged())?;
        let at = (Segments::day_of(minute), Holding::Episodes);
        let frame = self.segments.read(instance, at, record.offset, len)?;
        let raw_len = usize::try_from(record.raw_len).map_err(|_| damaged())?;
        let raw = zstd::bulk::decompress(&frame, raw_len).map_err(|_| damaged())?;
        EpisodeBlock::decode(raw, record.layout)
    }

    /// The sealed episodes of `kind` that `filter` lets through, with
    /// their stored values, in no particular order.
    pub(super) fn sealed_episodes(
        &self,
        kind: EpisodeKind,
        instance: InstanceId,
        filter: &EpisodeFilter,
    ) -> Result<Vec<(EpisodeSpan, Bytes)>, StoreError> {
        let from = keys::episode_block(kind, instance, minute_of(filter.ended_from));
        let to = keys::episode_block(kind, instance, filter.ended_to.saturating_add(REACH));
        let mut out = Vec::new();
        for entry in self.episode_blocks.range(from..=to) {
            let (k, v) = entry?;
            let record = decode::<SampleBlock>("episode_blocks", &v)?;
            if record.last_us < filter.ended_from || record.first_us > filter.ended_to {
                continue;
            }
            let block = self.read_episode_block(instance, keys::time_from(&k[5..13]), &record)?;
            for (span, range) in block.entries {
                if filter.lets_through(&span) {
                    out.push((span, block.bytes.slice(range)));
                }
            }
        }
        Ok(out)
    }

    /// The stored value of the sealed episode of `kind` at `span`.
    pub(super) fn sealed_episode(
        &self,
        kind: EpisodeKind,
        instance: InstanceId,
        span: &EpisodeSpan,
    ) -> Result<Option<Bytes>, StoreError> {
        let minute = minute_of(span.ended_us);
        for minute in [minute, minute.saturating_add(REACH)] {
            let Some(v) = self
                .episode_blocks
                .get(keys::episode_block(kind, instance, minute))?
            else {
                continue;
            };
            let record = decode::<SampleBlock>("episode_blocks", &v)?;
            if !(record.first_us..=record.last_us).contains(&span.ended_us) {
                continue;
            }
            let block = self.read_episode_block(instance, minute, &record)?;
            if let Some((_, range)) = block.entries.iter().find(|(s, _)| s == span) {
                return Ok(Some(block.bytes.slice(range.clone())));
            }
        }
        Ok(None)
    }

    /// Removes the instance's episode blocks whose every episode ended
    /// before `before`, and the episode files left with none; returns how
    /// many episodes they held.
    pub(super) fn expire_episode_blocks(
        &self,
        instance: InstanceId,
        before: Micros,
    ) -> Result<u64, StoreError> {
        // A block's episodes ended before its minute's end.
        let last = before.saturating_sub(REACH);
        let ranges = super::expire::ALL_EPISODE_KINDS.map(|kind| {
            let from = keys::episode_block(kind, instance, Micros::MIN);
            (
                from.to_vec(),
                keys::episode_block(kind, instance, last).to_vec(),
            )
        });
        let removed = remove_blocks(&self.episode_blocks, "episode_blocks", ranges)?;
        // A day's blocks all ended before the next day's start.
        let day = (Segments::day_of(before), Holding::Episodes);
        self.segments.remove_before(instance, day)?;
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::testing::Rng;

    #[test]
    fn spans_and_values_round_trip_through_a_block_at_the_edges_of_their_types() {
        let mut rng = Rng(21);
        let mut episodes: Vec<(EpisodeSpan, Vec<u8>)> = (0..500)
            .map(|i| {
                let span = EpisodeSpan {
                    pid: rng.signed() as i32,
                    started_us: rng.signed(),
                    ended_us: if i % 7 == 0 {
                        i64::MIN + i
                    } else {
                        rng.signed()
                    },
                };
                (span, rng.text().into_bytes())
            })
            .collect();
        episodes.push((
            EpisodeSpan {
                pid: i32::MIN,
                started_us: i64::MAX,
                ended_us: i64::MIN,
            },
            Vec::new(),
        ));
        episodes.sort_by_key(|(s, _)| (s.ended_us, s.pid as u32, s.started_us));
        let raw = encode_entries(episodes.iter().map(|(s, v)| (*s, v.as_slice())));
        let block = EpisodeBlock::decode(raw.clone(), 0).unwrap();
        let read: Vec<(EpisodeSpan, Vec<u8>)> = block
            .entries
            .iter()
            .map(|(s, r)| (*s, block.bytes[r.clone()].to_vec()))
            .collect();
        assert_eq!(read, episodes);
        // Cut short, it is damage, never a panic.
        for cut in [1, raw.len() / 2, raw.len() - 1] {
            let cut = EpisodeBlock::decode(raw[..cut].to_vec(), 0);
            assert!(matches!(cut, Err(StoreError::Unpack(_))));
        }
    }
}
