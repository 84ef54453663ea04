//! Timestamps as Celery writes and reads them.

use chrono::{DateTime, NaiveDateTime, Utc};

/// Parse a header datetime (`eta`, `expires`): ISO 8601, with or without an offset; a
/// value without an offset is UTC, as Celery's worker reads it.
pub fn parse_iso(text: &str) -> Option<DateTime<Utc>> {
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Some(t.with_timezone(&Utc));
    }
    ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f"]
        .iter()
        .find_map(|format| NaiveDateTime::parse_from_str(text, format).ok())
        .map(|naive| naive.and_utc())
}

/// Format as Python's `datetime.isoformat()` of an aware UTC value: microseconds and
/// `+00:00`, which every Python version's `fromisoformat` accepts.
pub fn to_iso(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%S%.6f+00:00").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_celery_forms() {
        let with_offset = parse_iso("2026-11-24T09:48:43.365997+00:00").unwrap();
        let zulu = parse_iso("2026-11-24T09:48:43.365997Z").unwrap();
        let naive = parse_iso("2026-11-24T09:48:43.365997").unwrap();
        assert_eq!(with_offset, zulu);
        assert_eq!(with_offset, naive);
        assert_eq!(to_iso(with_offset), "2026-11-24T09:48:43.365997+00:00");
        assert!(parse_iso("tomorrow").is_none());
    }
}
