//! Retry policy, as pure functions: what is retried, how long to wait, and the record of each
//! attempt that the caller sees when everything failed.

use std::{
    cell::Cell,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use actix_web::http::{header::HeaderMap, StatusCode};
use serde::Serialize;

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
/// an HTTP date. `now` is the current time, for dates.
pub fn retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    if let Some(ms) = header_str(headers, "retry-after-ms") {
        if let Ok(ms) = ms.trim().parse::<f64>() {
            if ms.is_finite() && ms >= 0.0 {
                return Some(Duration::from_secs_f64(ms / 1000.0));
            }
        }
    }
    let value = header_str(headers, "retry-after")?.trim();
    if let Ok(seconds) = value.parse::<f64>() {
        return (seconds.is_finite() && seconds >= 0.0).then(|| Duration::from_secs_f64(seconds));
    }
    let at = parse_http_date(value)?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

fn header_str<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers.get(name)?.to_str().ok()
}

/// Parses an IMF-fixdate, `Sun, 06 Nov 1994 08:49:37 GMT`, the form RFC 9110 requires senders
/// to use.
fn parse_http_date(value: &str) -> Option<SystemTime> {
    let mut words = value.split_whitespace();
    let _weekday = words.next()?;
    let day: u64 = words.next()?.parse().ok()?;
    let month = match words.next()? {
        "Jan" => 1,
        "Feb" => 2,
        "Mar" => 3,
        "Apr" => 4,
        "May" => 5,
        "Jun" => 6,
        "Jul" => 7,
        "Aug" => 8,
        "Sep" => 9,
        "Oct" => 10,
        "Nov" => 11,
        "Dec" => 12,
        _ => return None,
    };
    let year: u64 = words.next()?.parse().ok()?;
    let mut clock = words.next()?.split(':').map(|n| n.parse::<u64>().ok());
    let (hour, minute, second) = (clock.next()??, clock.next()??, clock.next()??);
    if words.next()? != "GMT" || !(1..=31).contains(&day) || hour > 23 || minute > 59 {
        return None;
    }
    let days = days_from_civil(year, month, day)?;
    let seconds = days * 86_400 + hour * 3_600 + minute * 60 + second.min(60);
    Some(UNIX_EPOCH + Duration::from_secs(seconds))
}

/// Days from 1970-01-01 to a date of the proleptic Gregorian calendar (Howard Hinnant's
/// algorithm), for dates from 1970 on.
fn days_from_civil(year: u64, month: u64, day: u64) -> Option<u64> {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year / 400;
    let year_of_era = year - era * 400;
    let month_index = (month + 9) % 12;
    let day_of_year = (153 * month_index + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    (era * 146_097 + day_of_era).checked_sub(719_468)
}

/// The wait before retry number `retry` (0 for the first retry): exponential backoff from
/// `base` with full jitter, so that callers who failed together do not retry together.
pub fn backoff(base: Duration, retry: u32, random: f64) -> Duration {
    let ceiling = base.saturating_mul(2u32.saturating_pow(retry.min(16)));
    ceiling.mul_f64(random.clamp(0.0, 1.0))
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

/// One try at one provider, as the caller is told about it. Never holds a key.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Attempt {
    pub provider: String,
    pub model: String,
    /// The upstream's status, when it answered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// What went wrong when it did not answer, or why it was not tried.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure: Option<String>,
}

impl Attempt {
    pub fn failed(provider: &str, model: &str, error: &ProxyError) -> Self {
        let (status, failure) = match error {
            ProxyError::Upstream { status, .. } => (Some(status.as_u16()), None),
            ProxyError::Timeout => (None, Some("timeout".to_owned())),
            ProxyError::Unreachable(_) => (None, Some("connection".to_owned())),
            ProxyError::StreamEvent(_) => (Some(200), Some("error event".to_owned())),
            other => (None, Some(other.kind().to_owned())),
        };
        Self {
            provider: provider.to_owned(),
            model: model.to_owned(),
            status,
            failure,
        }
    }

    pub fn skipped(provider: &str, model: &str, why: String) -> Self {
        Self {
            provider: provider.to_owned(),
            model: model.to_owned(),
            status: None,
            failure: Some(why),
        }
    }
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
    fn http_dates_convert_exactly() {
        let at = parse_http_date("Thu, 01 Jan 1970 00:00:00 GMT").unwrap();
        assert_eq!(at, UNIX_EPOCH);
        let at = parse_http_date("Sun, 22 Nov 2026 04:00:00 GMT").unwrap();
        assert_eq!(
            at.duration_since(UNIX_EPOCH).unwrap().as_secs(),
            1_795_320_000
        );
        assert_eq!(parse_http_date("Sunday, 06-Nov-94 08:49:37 GMT"), None);
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

    #[test]
    fn attempts_say_what_happened_without_a_key() {
        let error = ProxyError::Upstream {
            status: StatusCode::TOO_MANY_REQUESTS,
            body: Default::default(),
            headers: vec![],
        };
        let attempt = Attempt::failed("openai", "gpt", &error);
        assert_eq!(
            serde_json::to_value(&attempt).unwrap(),
            serde_json::json!({"provider": "openai", "model": "gpt", "status": 429})
        );
        let attempt = Attempt::failed("openai", "gpt", &ProxyError::Timeout);
        assert_eq!(attempt.failure.as_deref(), Some("timeout"));
    }
}
