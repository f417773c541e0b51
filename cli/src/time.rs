//! Times and windows as users type them: RFC 3339, `HH:MM[:SS]` (today,
//! local time), `YYYY-MM-DD HH:MM[:SS]` (local), `now`, or a duration ago
//! such as `10m`, `2h`, `7d`.

use std::time::Duration;

use chrono::{DateTime, Local, NaiveDate, NaiveDateTime, NaiveTime, TimeZone, Utc};
use pgtrail_proto::time::{from_duration, Micros};
use thiserror::Error;

/// A time or duration the user typed could not be read.
#[derive(Debug, Error, PartialEq)]
pub enum TimeError {
    /// Not a time.
    #[error("invalid time {0:?}: expected RFC 3339 (2026-01-20T03:12:00Z), HH:MM[:SS] (today), YYYY-MM-DD HH:MM[:SS], now, or a duration ago such as 10m, 2h, 7d")]
    Time(String),
    /// Not a duration.
    #[error("invalid duration {0:?}: expected e.g. 30s, 10m, 2h, 7d")]
    Duration(String),
    /// The window ends before it starts.
    #[error("the window is empty: --from {from} is after --to {to}")]
    Reversed {
        /// The start as typed.
        from: String,
        /// The end as typed.
        to: String,
    },
}

/// Parses a duration such as `30s`, `10m`, `1h30m`, `7d`.
pub fn parse_duration(s: &str) -> Result<Duration, TimeError> {
    humantime::parse_duration(s.trim()).map_err(|_| TimeError::Duration(s.to_string()))
}

/// Parses a time relative to `now`.
pub fn parse_time(s: &str, now: DateTime<Local>) -> Result<Micros, TimeError> {
    let t = s.trim();
    let bad = || TimeError::Time(s.to_string());
    if t.eq_ignore_ascii_case("now") {
        return Ok(now.timestamp_micros());
    }
    if let Ok(dt) = DateTime::parse_from_rfc3339(t) {
        return Ok(dt.timestamp_micros());
    }
    for format in [
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%d %H:%M",
        "%Y-%m-%dT%H:%M:%S%.f",
    ] {
        if let Ok(naive) = NaiveDateTime::parse_from_str(t, format) {
            return local(naive).ok_or_else(bad);
        }
    }
    if let Ok(date) = NaiveDate::parse_from_str(t, "%Y-%m-%d") {
        return local(date.and_time(NaiveTime::MIN)).ok_or_else(bad);
    }
    for format in ["%H:%M:%S%.f", "%H:%M"] {
        if let Ok(time) = NaiveTime::parse_from_str(t, format) {
            return local(now.date_naive().and_time(time)).ok_or_else(bad);
        }
    }
    if let Ok(ago) = humantime::parse_duration(t) {
        return Ok(now.timestamp_micros() - from_duration(ago));
    }
    Err(bad())
}

fn local(naive: NaiveDateTime) -> Option<Micros> {
    Local
        .from_local_datetime(&naive)
        .earliest()
        .map(|dt| dt.timestamp_micros())
}

/// A window `[from, to]` from `--since` or `--from`/`--to`; `--since`
/// falls back to `default_since` when nothing is given.
pub fn window(
    since: Option<&str>,
    from: Option<&str>,
    to: Option<&str>,
    default_since: Duration,
    now: DateTime<Local>,
) -> Result<(Micros, Micros), TimeError> {
    let end = match to {
        Some(t) => parse_time(t, now)?,
        None => now.timestamp_micros(),
    };
    let start = match (since, from) {
        (_, Some(f)) => parse_time(f, now)?,
        (Some(s), None) => now.timestamp_micros() - from_duration(parse_duration(s)?),
        (None, None) => end - from_duration(default_since),
    };
    if start > end {
        return Err(TimeError::Reversed {
            from: from.or(since).unwrap_or("").to_string(),
            to: to.unwrap_or("now").to_string(),
        });
    }
    Ok((start, end))
}

/// RFC 3339 in UTC with microseconds, as JSON shows times.
pub fn rfc3339(t: Micros) -> String {
    match Utc.timestamp_micros(t).single() {
        Some(dt) => dt.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        None => t.to_string(),
    }
}

/// Local `YYYY-MM-DD HH:MM:SS`, as tables show times.
pub fn local_display(rfc3339: &str) -> Option<String> {
    let dt = DateTime::parse_from_rfc3339(rfc3339).ok()?;
    Some(
        dt.with_timezone(&Local)
            .format("%Y-%m-%d %H:%M:%S")
            .to_string(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> DateTime<Local> {
        Local.with_ymd_and_hms(2026, 1, 20, 12, 0, 0).unwrap()
    }

    #[test]
    fn reads_every_form() {
        let n = now();
        let utc = parse_time("2026-01-20T03:12:00Z", n).unwrap();
        assert_eq!(rfc3339(utc), "2026-01-20T03:12:00.000000Z");
        let today = parse_time("03:12", n).unwrap();
        assert_eq!(
            today,
            local(n.date_naive().and_hms_opt(3, 12, 0).unwrap()).unwrap()
        );
        let with_secs = parse_time("03:12:30", n).unwrap();
        assert_eq!(with_secs - today, 30_000_000);
        assert_eq!(
            parse_time("10m", n).unwrap(),
            n.timestamp_micros() - 600_000_000
        );
        assert_eq!(
            parse_time("7d", n).unwrap(),
            n.timestamp_micros() - 7 * 86_400_000_000
        );
        assert_eq!(parse_time("now", n).unwrap(), n.timestamp_micros());
        assert!(parse_time("2026-01-20 03:12", n).is_ok());
    }

    #[test]
    fn rejects_nonsense_with_a_hint() {
        let err = parse_time("yesterday-ish", now()).unwrap_err();
        assert!(err.to_string().contains("RFC 3339"));
        assert!(parse_time("25:99", now()).is_err());
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn windows_default_and_refuse_reversal() {
        let n = now();
        let (a, b) = window(None, None, None, Duration::from_secs(3600), n).unwrap();
        assert_eq!(b - a, 3_600_000_000);
        let (a, _) = window(Some("2h"), None, None, Duration::from_secs(1), n).unwrap();
        assert_eq!(n.timestamp_micros() - a, 7_200_000_000);
        let err = window(
            None,
            Some("11:00"),
            Some("10:00"),
            Duration::from_secs(1),
            n,
        );
        assert!(matches!(err, Err(TimeError::Reversed { .. })));
    }
}
