//! Retry policy, as pure functions: what is retried, how long to wait, and the record of each
//! attempt that the caller sees when everything failed.

use std::{
    cell::Cell,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use actix_web::http::{header::HeaderMap, StatusCode};

use crate::error::ProxyError;

/// Whether an upstream status is worth another try: timeouts, rate limits, overload, and
/// server errors that are usually passing. Every other 4xx is the caller's to fix.
pub fn is_retryable_status(status: StatusCode) -> bool {
    matches!(status.as_u16(), 408 | 429 | 500 | 502 | 503 | 504 | 529)
}

/// Whether a failure before any byte reached the caller is worth another try.
pub fn is_retryable(error: &ProxyError) -> bool {
    match error {
        ProxyError::Upstream { status, .. } => is_retryable_status(*status),
        ProxyError::Unreachable(_) | ProxyError::Timeout | ProxyError::StreamEvent(_) => true,
        // An unusable 2xx body will be just as unusable the next time.
        _ => false,
    }
}

/// How long the upstream asks us to wait: `retry-after-ms`, else `retry-after` in seconds or as
/// an HTTP date. `now` is the current time, for dates. A wait too long to represent is
/// `Duration::MAX` (callers compare it with the longest wait they accept); negative, non-finite
/// and malformed values are ignored.
pub fn retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    if let Some(ms) = header_str(headers, "retry-after-ms") {
        if let Some(wait) = parse_seconds(ms, 1e-3) {
            return Some(wait);
        }
    }
    let value = header_str(headers, "retry-after")?.trim();
    if let Some(wait) = parse_seconds(value, 1.0) {
        return Some(wait);
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// A non-negative decimal number of `unit` seconds, saturating at `Duration::MAX`.
fn parse_seconds(value: &str, unit: f64) -> Option<Duration> {
    let number = value.trim().parse::<f64>().ok()?;
    if !number.is_finite() || number < 0.0 {
        return None;
    }
    Some(Duration::try_from_secs_f64(number * unit).unwrap_or(Duration::MAX))
}

fn header_str<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers.get(name)?.to_str().ok()
}

/// The wait before retry number `retry` (0 for the first retry): exponential backoff from
/// `base` with full jitter, so that callers who failed together do not retry together. Computed
/// in whole nanoseconds, saturating: no setting can make it overflow.
pub fn backoff(base: Duration, retry: u32, random: f64) -> Duration {
    let base = u64::try_from(base.as_nanos()).unwrap_or(u64::MAX);
    let ceiling = base.saturating_mul(1 << retry.min(16));
    // An f64 in [0, 1] times a u64 stays within u64 (the cast saturates).
    Duration::from_nanos((ceiling as f64 * random.clamp(0.0, 1.0)) as u64)
}

/// A number in [0, 1) for jitter: xorshift, seeded per worker thread from the clock. Jitter
/// needs spread, not secrecy.
pub fn random() -> f64 {
    thread_local! {
        static STATE: Cell<u64> = Cell::new(
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0x9e37_79b9_7f4a_7c15, |d| d.as_nanos() as u64)
                | 1,
        );
    }
    STATE.with(|state| {
        let mut x = state.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        state.set(x);
        (x >> 11) as f64 / (1u64 << 53) as f64
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::http::header::{HeaderName, HeaderValue};

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(
                HeaderName::from_static(name),
                HeaderValue::from_static(value),
            );
        }
        map
    }

    #[test]
    fn retryable_statuses_are_exactly_the_passing_ones() {
        for status in [408, 429, 500, 502, 503, 504, 529] {
            assert!(
                is_retryable_status(StatusCode::from_u16(status).unwrap()),
                "{status}"
            );
        }
        for status in [400, 401, 403, 404, 409, 413, 422, 501] {
            assert!(
                !is_retryable_status(StatusCode::from_u16(status).unwrap()),
                "{status}"
            );
        }
    }

    #[test]
    fn failures_are_retryable_unless_the_body_was_unusable() {
        assert!(is_retryable(&ProxyError::Timeout));
        assert!(is_retryable(&ProxyError::Unreachable("reset".into())));
        assert!(!is_retryable(&ProxyError::BadUpstreamBody("x".into())));
        assert!(!is_retryable(&ProxyError::InvalidRequest("x".into())));
    }

    #[test]
    fn retry_after_reads_milliseconds_seconds_and_dates() {
        let now = UNIX_EPOCH + Duration::from_secs(784_111_777); // Sun, 06 Nov 1994 08:49:37 GMT
        assert_eq!(
            retry_after(&headers(&[("retry-after-ms", "1500")]), now),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(
            retry_after(&headers(&[("retry-after", "20")]), now),
            Some(Duration::from_secs(20))
        );
        assert_eq!(
            retry_after(
                &headers(&[("retry-after", "Sun, 06 Nov 1994 08:49:47 GMT")]),
                now
            ),
            Some(Duration::from_secs(10))
        );
        assert_eq!(
            retry_after(
                &headers(&[("retry-after", "Sun, 06 Nov 1994 08:00:00 GMT")]),
                now
            ),
            Some(Duration::ZERO),
            "a date in the past means now"
        );
        assert_eq!(
            retry_after(
                &headers(&[("retry-after-ms", "250"), ("retry-after", "9")]),
                now
            ),
            Some(Duration::from_millis(250)),
            "the finer one wins"
        );
        assert_eq!(retry_after(&headers(&[("retry-after", "soon")]), now), None);
        assert_eq!(retry_after(&headers(&[]), now), None);
    }

    #[test]
    fn every_http_date_form_is_read() {
        let now = UNIX_EPOCH + Duration::from_secs(784_111_777); // Sun, 06 Nov 1994 08:49:37 GMT
        for date in [
            "Sun, 06 Nov 1994 08:49:47 GMT",
            "Sunday, 06-Nov-94 08:49:47 GMT",
            "Sun Nov  6 08:49:47 1994",
        ] {
            assert_eq!(
                retry_after(&headers(&[("retry-after", date)]), now),
                Some(Duration::from_secs(10)),
                "{date}"
            );
        }
    }

    #[test]
    fn absurd_waits_saturate_or_are_ignored_and_never_panic() {
        let now = SystemTime::now();
        for (name, value, expected) in [
            ("retry-after", "1e20", Some(Duration::MAX)),
            ("retry-after-ms", "1e300", Some(Duration::MAX)),
            ("retry-after", "18446744073709551616", Some(Duration::MAX)),
            ("retry-after", "-5", None),
            ("retry-after", "NaN", None),
            ("retry-after", "inf", None),
            ("retry-after-ms", "-inf", None),
            ("retry-after", "Sun, 06 Nov 99999 08:49:37 GMT", None),
            ("retry-after", "Sun, 06 Nov 0000 08:49:37 GMT", None),
        ] {
            let wait = retry_after(&headers(&[(name, value)]), now);
            assert_eq!(wait, expected, "{name}: {value:?}");
        }
        let far = retry_after(
            &headers(&[("retry-after", "Fri, 31 Dec 9999 23:59:59 GMT")]),
            now,
        );
        assert!(
            far.unwrap() > Duration::from_secs(7000 * 365 * 86_400),
            "{far:?}"
        );
    }

    #[test]
    fn backoff_never_overflows() {
        let huge = Duration::MAX;
        assert_eq!(backoff(huge, 0, 0.0), Duration::ZERO);
        assert!(backoff(huge, u32::MAX, 1.0) >= Duration::from_secs(500 * 365 * 86_400));
        assert!(backoff(Duration::from_secs(31_536_000), 16, 1.0) > Duration::ZERO);
    }

    proptest::proptest! {
        #[test]
        fn retry_after_never_panics_on_any_header(
            name in proptest::sample::select(vec!["retry-after", "retry-after-ms"]),
            value in "[ -~]{0,40}",
            now in 0u64..u64::from(u32::MAX) * 4,
        ) {
            let mut map = HeaderMap::new();
            if let Ok(value) = HeaderValue::from_str(&value) {
                map.insert(HeaderName::from_static(name), value);
            }
            let _ = retry_after(&map, UNIX_EPOCH + Duration::from_secs(now));
        }

        #[test]
        fn whole_seconds_are_read_exactly(seconds in 0u64..10_000_000) {
            let mut map = HeaderMap::new();
            map.insert(HeaderName::from_static("retry-after"), HeaderValue::from(seconds));
            proptest::prop_assert_eq!(
                retry_after(&map, SystemTime::now()),
                Some(Duration::from_secs(seconds))
            );
        }

        #[test]
        fn backoff_stays_under_its_ceiling(base_ms in 0u64..u64::MAX / 1_000_000, retry: u32, random: f64) {
            let base = Duration::from_millis(base_ms);
            let wait = backoff(base, retry, random);
            let ceiling = base.saturating_mul(1 << retry.min(16));
            proptest::prop_assert!(wait <= ceiling.max(Duration::from_nanos(1)) || ceiling == Duration::MAX);
        }
    }

    #[test]
    fn backoff_grows_exponentially_under_full_jitter() {
        let base = Duration::from_millis(200);
        assert_eq!(backoff(base, 0, 1.0), Duration::from_millis(200));
        assert_eq!(backoff(base, 1, 1.0), Duration::from_millis(400));
        assert_eq!(backoff(base, 3, 0.5), Duration::from_millis(800));
        assert_eq!(backoff(base, 2, 0.0), Duration::ZERO);
    }

    #[test]
    fn random_numbers_stay_in_range_and_vary() {
        let numbers: Vec<f64> = (0..1000).map(|_| random()).collect();
        assert!(numbers.iter().all(|n| (0.0..1.0).contains(n)));
        let mean = numbers.iter().sum::<f64>() / numbers.len() as f64;
        assert!((0.4..0.6).contains(&mean), "{mean}");
    }
}
