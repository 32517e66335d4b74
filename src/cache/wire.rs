//! A cached answer as bytes in Redis, and back. Redis is outside input: `decode` checks every
//! length, status and header, and takes anything else as a miss.
//!
//! The layout, integers little-endian: `LPC1`, the expiry (unix ms, i64), the status (u16),
//! the header count (u16), each header as its name's length (u16), name, value's length (u32)
//! and value, then the body to the end.

use std::time::Duration;

use actix_web::{
    http::header::{HeaderName, HeaderValue},
    http::StatusCode,
    web::Bytes,
};

use super::Cached;

const MAGIC: &[u8; 4] = b"LPC1";

/// `answer`, stored at `now` (unix ms), as bytes.
pub fn encode(answer: &Cached, now: i64) -> Vec<u8> {
    let headers: usize = answer
        .headers
        .iter()
        .map(|(name, value)| 6 + name.as_str().len() + value.len())
        .sum();
    let mut out = Vec::with_capacity(16 + headers + answer.body.len());
    let ttl = i64::try_from(answer.ttl.as_millis()).unwrap_or(i64::MAX);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&now.saturating_add(ttl).to_le_bytes());
    out.extend_from_slice(&answer.status.as_u16().to_le_bytes());
    let count = u16::try_from(answer.headers.len()).unwrap_or(u16::MAX);
    out.extend_from_slice(&count.to_le_bytes());
    for (name, value) in answer.headers.iter().take(usize::from(count)) {
        let name = name.as_str().as_bytes();
        out.extend_from_slice(&(name.len() as u16).to_le_bytes());
        out.extend_from_slice(name);
        out.extend_from_slice(&(value.len() as u32).to_le_bytes());
        out.extend_from_slice(value.as_bytes());
    }
    out.extend_from_slice(&answer.body);
    out
}

/// The answer in `bytes`, with the time it has left at `now`; `None` if the bytes are not a
/// whole answer, or it has expired.
pub fn decode(bytes: &[u8], now: i64) -> Option<Cached> {
    let mut rest = bytes.strip_prefix(MAGIC)?;
    let expires = i64::from_le_bytes(take(&mut rest, 8)?.try_into().ok()?);
    let status = u16::from_le_bytes(take(&mut rest, 2)?.try_into().ok()?);
    let status = StatusCode::from_u16(status).ok()?;
    let count = u16::from_le_bytes(take(&mut rest, 2)?.try_into().ok()?);
    let mut headers = Vec::with_capacity(usize::from(count.min(64)));
    for _ in 0..count {
        let length = u16::from_le_bytes(take(&mut rest, 2)?.try_into().ok()?);
        let name = HeaderName::from_bytes(take(&mut rest, usize::from(length))?).ok()?;
        let length = u32::from_le_bytes(take(&mut rest, 4)?.try_into().ok()?);
        let value = take(&mut rest, usize::try_from(length).ok()?)?;
        headers.push((name, HeaderValue::from_bytes(value).ok()?));
    }
    let left = expires.checked_sub(now).filter(|left| *left > 0)?;
    Some(Cached {
        status,
        headers,
        body: Bytes::copy_from_slice(rest),
        ttl: Duration::from_millis(u64::try_from(left).ok()?),
    })
}

/// The next `n` bytes of `rest`, moving past them.
fn take<'a>(rest: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
    if rest.len() < n {
        return None;
    }
    let (head, tail) = rest.split_at(n);
    *rest = tail;
    Some(head)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer() -> Cached {
        Cached {
            status: StatusCode::OK,
            headers: vec![
                (
                    HeaderName::from_static("content-type"),
                    HeaderValue::from_static("application/json"),
                ),
                (
                    HeaderName::from_static("x-proxy-provider"),
                    HeaderValue::from_static("openai"),
                ),
            ],
            body: Bytes::from_static(br#"{"id":"chatcmpl-1"}"#),
            ttl: Duration::from_secs(60),
        }
    }

    #[test]
    fn an_answer_round_trips_with_the_time_it_has_left() {
        let bytes = encode(&answer(), 1_000);
        let back = decode(&bytes, 11_000).expect("decodes");
        assert_eq!(back.status, StatusCode::OK);
        assert_eq!(back.headers, answer().headers);
        assert_eq!(back.body, answer().body);
        assert_eq!(back.ttl, Duration::from_secs(50));
        assert!(decode(&bytes, 61_000).is_none(), "expired");
    }

    #[test]
    fn anything_cut_short_or_foreign_is_a_miss() {
        let bytes = encode(&answer(), 0);
        let header_end = bytes.len() - answer().body.len();
        for cut in 0..header_end {
            assert!(decode(&bytes[..cut], 0).is_none(), "cut at {cut}");
        }
        assert!(decode(b"{\"not\":\"ours\"}", 0).is_none());
    }

    proptest::proptest! {
        #[test]
        fn any_bytes_decode_without_panicking(
            bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..300),
            now in proptest::num::i64::ANY,
        ) {
            let _ = decode(&bytes, now);
            let mut ours = MAGIC.to_vec();
            ours.extend_from_slice(&bytes);
            let _ = decode(&ours, now);
        }

        #[test]
        fn any_body_round_trips(body in proptest::collection::vec(proptest::num::u8::ANY, 0..300)) {
            let stored = Cached { body: Bytes::from(body.clone()), ..answer() };
            let back = decode(&encode(&stored, 0), 0).expect("decodes");
            proptest::prop_assert_eq!(&back.body[..], &body[..]);
        }
    }
}
