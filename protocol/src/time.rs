//! Timestamps as Celery writes and reads them.

use std::time::Duration;

use chrono::{DateTime, Datelike, NaiveDateTime, Utc};

/// The longest delay or wait the host plans with: a year, far beyond any real task and
/// far from the clocks' limits, so adding it to "now" never overflows.
pub const FOREVER: Duration = Duration::from_secs(365 * 24 * 3600);

/// Seconds from outside the process (a header, a flag, a guest, a manifest) as a
/// `Duration`, clamped to [`FOREVER`]; `None` if negative or not a number.
pub fn seconds(value: f64) -> Option<Duration> {
    if value.is_nan() || value < 0.0 {
        return None;
    }
    Some(Duration::try_from_secs_f64(value).unwrap_or(FOREVER).min(FOREVER))
}

/// The time `value` seconds from now (see [`seconds`]).
pub fn from_now(value: f64) -> Option<DateTime<Utc>> {
    let delay = chrono::Duration::from_std(seconds(value)?).ok()?;
    Utc::now().checked_add_signed(delay)
}

/// Parse a header datetime (`eta`, `expires`): ISO 8601, with or without an offset; a
/// value without an offset is UTC, as Celery's worker reads it.
pub fn parse_iso(text: &str) -> Option<DateTime<Utc>> {
    let parsed = DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .ok()
        .or_else(|| {
            ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f"]
                .iter()
                .find_map(|format| NaiveDateTime::parse_from_str(text, format).ok())
                .map(|naive| naive.and_utc())
        });
    // Python's datetime holds years 1 to 9999 only; chrono reads "-2026-…" or "+12026-…"
    // too, which `to_iso` could not write back in a form this reads (found by fuzzing).
    parsed.filter(|t| (1..=9999).contains(&t.year()))
}

/// Format as Python's `datetime.isoformat()` of an aware UTC value: microseconds and
/// `+00:00`, which every Python version's `fromisoformat` accepts.
pub fn to_iso(t: DateTime<Utc>) -> String {
    // The same text as the format "%Y-%m-%dT%H:%M:%S%.6f+00:00", without parsing a
    // format string for every result.
    t.to_rfc3339_opts(chrono::SecondsFormat::Micros, false)
}

/// Seconds since the epoch, as Python's `time.time()`.
pub fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn years_python_cannot_hold_are_not_dates() {
        assert_eq!(parse_iso("-2026-11-25T10:00:00"), None);
        assert_eq!(parse_iso("+12026-11-25T10:00:00"), None);
        let last = parse_iso("9999-12-31T23:59:59").unwrap();
        assert_eq!(parse_iso(&to_iso(last)), Some(last));
    }

    #[test]
    fn parses_celery_forms() {
        let with_offset = parse_iso("2026-11-24T09:48:43.365997+00:00").unwrap();
        let zulu = parse_iso("2026-11-24T09:48:43.365997Z").unwrap();
        let naive = parse_iso("2026-11-24T09:48:43.365997").unwrap();
        assert_eq!(with_offset, zulu);
        assert_eq!(with_offset, naive);
        assert_eq!(to_iso(with_offset), "2026-11-24T09:48:43.365997+00:00");
        let whole_second = DateTime::parse_from_rfc3339("2026-11-24T09:48:43Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(to_iso(whole_second), "2026-11-24T09:48:43.000000+00:00");
        assert!(parse_iso("tomorrow").is_none());
    }

    #[test]
    fn outside_seconds_never_overflow() {
        assert_eq!(seconds(1.5), Some(Duration::from_millis(1500)));
        assert_eq!(seconds(1e300), Some(FOREVER));
        assert_eq!(seconds(f64::INFINITY), Some(FOREVER));
        assert_eq!(seconds(f64::NAN), None);
        assert_eq!(seconds(-1.0), None);
        assert!(from_now(1e300).is_some());
        assert!(from_now(f64::NAN).is_none());
    }
}
