//! The wall clock, read in one place, and instants written for people.
//!
//! The protocol crate never reads the clock (its functions take `now_ms`); this shell reads
//! it here and passes the value in.

use std::time::{SystemTime, UNIX_EPOCH};

use time::format_description::BorrowedFormatItem;
use time::macros::format_description;
use time::OffsetDateTime;

/// `2026-12-07 13:40:05 UTC`.
const UTC: &[BorrowedFormatItem<'static>] =
    format_description!("[year]-[month]-[day] [hour]:[minute]:[second] UTC");

/// Milliseconds since the Unix epoch, now (0 if the clock is before the epoch).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// An instant (ms since the Unix epoch) for people, to the second, in UTC:
/// `2026-12-07 13:40:05 UTC`. An instant after the year 9999 (a peer may send any
/// number) is written as the number: `18446744073709551615 ms after the Unix epoch`.
pub fn utc(ms: u64) -> String {
    i64::try_from(ms / 1000)
        .ok()
        .and_then(|secs| OffsetDateTime::from_unix_timestamp(secs).ok())
        .and_then(|t| t.format(UTC).ok())
        .unwrap_or_else(|| format!("{ms} ms after the Unix epoch"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instants_are_written_to_the_second_in_utc() {
        assert_eq!(utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc(1_796_650_805_999), "2026-12-07 13:40:05 UTC");
        assert_eq!(utc(253_402_300_799_000), "9999-12-31 23:59:59 UTC");
        // Out of the calendar's range: no panic, the number itself.
        assert_eq!(
            utc(u64::MAX),
            "18446744073709551615 ms after the Unix epoch"
        );
        assert_eq!(
            utc(253_402_300_800_000),
            "253402300800000 ms after the Unix epoch"
        );
    }

    #[test]
    fn now_is_after_2023() {
        assert!(now_ms() > 1_700_000_000_000);
    }
}
