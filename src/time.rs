//! Timestamps as Dockhand writes them: RFC 3339, UTC, milliseconds.

use chrono::{SecondsFormat, TimeZone, Utc};

/// Now, as `2026-11-22T10:29:43.123Z`.
pub fn now() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// The time a Redis stream entry was added, read from its id (`<ms>-<seq>`).
pub fn from_stream_id(id: &str) -> Option<String> {
    let ms: i64 = id.split('-').next()?.parse().ok()?;
    let t = Utc.timestamp_millis_opt(ms).single()?;
    Some(t.to_rfc3339_opts(SecondsFormat::Millis, true))
}

#[cfg(test)]
mod tests {
    #[test]
    fn stream_ids_carry_their_time() {
        assert_eq!(
            super::from_stream_id("1700000000123-4").unwrap(),
            "2023-11-14T22:13:20.123Z"
        );
        assert!(super::from_stream_id("abc").is_none());
        assert!(super::now().ends_with('Z'));
    }
}
