//! Time on the wire: microseconds since the Unix epoch, UTC.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Microseconds since the Unix epoch (UTC); the unit of every time pgtrail
/// stores or sends.
pub type Micros = i64;

/// One second in [`Micros`].
pub const SECOND: Micros = 1_000_000;

/// One minute in [`Micros`].
pub const MINUTE: Micros = 60 * SECOND;

/// The current time.
pub fn now() -> Micros {
    from_system_time(SystemTime::now())
}

/// Converts a [`SystemTime`]; times before the epoch become negative.
pub fn from_system_time(t: SystemTime) -> Micros {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_micros() as Micros,
        Err(e) => -(e.duration().as_micros() as Micros),
    }
}

/// Converts a [`Duration`], saturating at `Micros::MAX`.
pub fn from_duration(d: Duration) -> Micros {
    Micros::try_from(d.as_micros()).unwrap_or(Micros::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn converts_both_sides_of_the_epoch() {
        assert_eq!(from_system_time(UNIX_EPOCH + Duration::from_micros(5)), 5);
        assert_eq!(from_system_time(UNIX_EPOCH - Duration::from_micros(5)), -5);
        assert_eq!(from_duration(Duration::from_secs(2)), 2 * SECOND);
    }
}
