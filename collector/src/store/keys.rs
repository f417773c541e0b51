//! Big-endian keys, so that sled's byte order is (instance, time) order and
//! every time window of an instance is one range scan.
//!
//! Times are [`Micros`] with the sign bit flipped, so negative times (which
//! no sample has, but a malformed range may ask for) still sort first.

use pgtrail_proto::time::Micros;

use super::records::EpisodeSpan;

/// The id the store gives an instance; the first four bytes of its keys.
pub type InstanceId = u32;

/// Kinds of episode; the first byte of episode keys is the wire enum's
/// value.
pub use pgtrail_proto::pb::EpisodeKind;

/// How much time one rollup covers; the byte after the instance in rollup
/// keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Resolution {
    /// One minute.
    Minute = 1,
    /// One hour.
    Hour = 2,
}

impl Resolution {
    /// Both, finest first.
    pub const ALL: [Resolution; 2] = [Resolution::Minute, Resolution::Hour];

    /// Its length.
    pub fn span(self) -> Micros {
        match self {
            Resolution::Minute => 60_000_000,
            Resolution::Hour => 3_600_000_000,
        }
    }

    /// The start of the stretch `t` falls in.
    pub fn start_of(self, t: Micros) -> Micros {
        t - t.rem_euclid(self.span())
    }
}

/// A time as 8 bytes that sort like the time.
pub fn time_bytes(t: Micros) -> [u8; 8] {
    ((t as u64) ^ (1 << 63)).to_be_bytes()
}

/// The inverse of [`time_bytes`].
pub fn time_from(bytes: &[u8]) -> Micros {
    let mut b = [0u8; 8];
    b.copy_from_slice(&bytes[..8]);
    (u64::from_be_bytes(b) ^ (1 << 63)) as Micros
}

/// `[instance][time]`: samples, facts and minute rollups.
pub fn instance_time(id: InstanceId, t: Micros) -> [u8; 12] {
    let mut k = [0u8; 12];
    k[..4].copy_from_slice(&id.to_be_bytes());
    k[4..].copy_from_slice(&time_bytes(t));
    k
}

/// The time of an `[instance][time]` key.
pub fn time_of_instance_key(key: &[u8]) -> Micros {
    time_from(&key[4..12])
}

/// `[instance][resolution][time]`: rollups.
pub fn rollup(id: InstanceId, res: Resolution, t: Micros) -> [u8; 13] {
    let mut k = [0u8; 13];
    k[..4].copy_from_slice(&id.to_be_bytes());
    k[4] = res as u8;
    k[5..].copy_from_slice(&time_bytes(t));
    k
}

/// The time of a rollup key.
pub fn time_of_rollup_key(key: &[u8]) -> Micros {
    time_from(&key[5..13])
}

/// `[kind][instance][ended][pid][started]`: closed episodes, in the order
/// they ended, so "episodes that ended after T" is one range scan.
pub fn closed_episode(
    kind: EpisodeKind,
    id: InstanceId,
    ended: Micros,
    pid: i32,
    started: Micros,
) -> [u8; 25] {
    let mut k = [0u8; 25];
    k[0] = kind as i32 as u8;
    k[1..5].copy_from_slice(&id.to_be_bytes());
    k[5..13].copy_from_slice(&time_bytes(ended));
    k[13..17].copy_from_slice(&(pid as u32).to_be_bytes());
    k[17..].copy_from_slice(&time_bytes(started));
    k
}

/// Which closed episode a key is for: its pid, start and end.
pub fn closed_episode_span(key: &[u8]) -> EpisodeSpan {
    EpisodeSpan {
        pid: u32::from_be_bytes(key[13..17].try_into().expect("4 bytes")) as i32,
        started_us: time_from(&key[17..25]),
        ended_us: time_from(&key[5..13]),
    }
}

/// `[kind][instance]`: the prefix of an instance's episodes of one kind.
pub fn episode_prefix(kind: EpisodeKind, id: InstanceId) -> [u8; 5] {
    let mut k = [0u8; 5];
    k[0] = kind as i32 as u8;
    k[1..].copy_from_slice(&id.to_be_bytes());
    k
}

/// `[kind][instance][minute]`: the block of an instance's episodes of one
/// kind sealed with a minute ([`super::episode_blocks`]).
pub fn episode_block(kind: EpisodeKind, id: InstanceId, minute: Micros) -> [u8; 13] {
    let mut k = [0u8; 13];
    k[..5].copy_from_slice(&episode_prefix(kind, id));
    k[5..].copy_from_slice(&time_bytes(minute));
    k
}

/// `[kind][instance][pid][started]`: open episodes.
pub fn open_episode(kind: EpisodeKind, id: InstanceId, pid: i32, started: Micros) -> [u8; 17] {
    let mut k = [0u8; 17];
    k[..5].copy_from_slice(&episode_prefix(kind, id));
    k[5..9].copy_from_slice(&(pid as u32).to_be_bytes());
    k[9..].copy_from_slice(&time_bytes(started));
    k
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_sort_by_instance_then_time() {
        let mut keys = [
            instance_time(2, 5),
            instance_time(1, 1_700_000_000_000_000),
            instance_time(1, -3),
            instance_time(1, 7),
        ];
        keys.sort();
        let decoded: Vec<(u32, Micros)> = keys
            .iter()
            .map(|k| {
                (
                    u32::from_be_bytes(k[..4].try_into().unwrap()),
                    time_of_instance_key(k),
                )
            })
            .collect();
        assert_eq!(
            decoded,
            vec![(1, -3), (1, 7), (1, 1_700_000_000_000_000), (2, 5)]
        );
    }

    #[test]
    fn times_round_trip() {
        for t in [i64::MIN, -1, 0, 1, 1_700_000_000_123_456, i64::MAX] {
            assert_eq!(time_from(&time_bytes(t)), t);
        }
    }

    #[test]
    fn closed_episodes_sort_by_end_within_kind_and_instance() {
        let a = closed_episode(EpisodeKind::IdleInTransaction, 1, 100, 9, 50);
        let b = closed_episode(EpisodeKind::IdleInTransaction, 1, 200, 1, 10);
        let c = closed_episode(EpisodeKind::IdleInTransaction, 2, 10, 1, 5);
        assert!(a < b && b < c);
        assert!(a.starts_with(&episode_prefix(EpisodeKind::IdleInTransaction, 1)));
        let span = closed_episode_span(&b);
        assert_eq!((span.pid, span.started_us, span.ended_us), (1, 10, 200));
    }
}
