//! Durations as users write them (`reservation_ttl`, `timeouts`): never a panic, and an accepted
//! bounded duration is within its bounds.
#![no_main]
use libfuzzer_sys::fuzz_target;
use homelab::settings::{parse_bounded_duration, parse_duration, MAX_RESERVATION_TTL, MAX_TIMEOUT};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(d) = parse_duration(text) {
        assert!(d.as_secs() <= 1_000_000_000, "{text:?} gave {d:?}");
    }
    for max in [MAX_TIMEOUT, MAX_RESERVATION_TTL] {
        if let Ok(d) = parse_bounded_duration(text, max) {
            assert!(!d.is_zero() && d <= max, "{text:?} gave {d:?}");
        }
    }
    // What the provider then does with a TTL: add it to a date.
    if let Ok(d) = parse_bounded_duration(text, MAX_RESERVATION_TTL) {
        let _ = time::OffsetDateTime::now_utc() + d;
    }
});
