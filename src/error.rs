//! `ProxyError`: every way a request can fail, and the one place that turns it into a response.

use std::fmt;

use actix_web::{
    http::{
        header::{HeaderName, HeaderValue},
        StatusCode,
    },
    web::Bytes,
    HttpResponse, ResponseError,
};
use serde::Serialize;
use serde_json::value::RawValue;

use crate::config::providers_file::MAX_FALLBACKS;

/// Upstream error bodies that are not JSON are passed on as text, cut at this many bytes.
const MAX_UPSTREAM_TEXT: usize = 64 * 1024;

/// What went wrong, split by whose fault it is: the caller's (4xx), the upstream's answer
/// (its own status), or the upstream being unreachable (502) or silent (504).
#[derive(Debug)]
pub enum ProxyError {
    /// The body is not JSON, or a field is missing or of the wrong type; the message names it.
    InvalidRequest(String),
    /// No `X-API-Key` header, or an empty one.
    MissingKey,
    /// The `{provider}` in the path is not one we know.
    UnknownProvider { name: String, known: String },
    /// No route matches the path.
    NotFound,
    /// The path exists, but not for this method.
    MethodNotAllowed,
    /// The request body is larger than `MAX_BODY_BYTES`.
    PayloadTooLarge { limit: usize },
    /// The caller took longer than `CLIENT_BODY_TIMEOUT_SECONDS` to send its body.
    BodyTimeout,
    /// More than `MAX_FALLBACKS` fallbacks in one request.
    TooManyFallbacks { given: usize },
    /// The upstream answered with a non-2xx status. `body` has the caller's key masked out.
    Upstream {
        status: StatusCode,
        body: Bytes,
        headers: Vec<(HeaderName, HeaderValue)>,
    },
    /// The upstream reported an error inside a stream it had begun with 2xx (its event's data).
    StreamEvent(Bytes),
    /// The upstream answered 2xx with a body we cannot read as its documented shape.
    BadUpstreamBody(String),
    /// The upstream could not be reached, or the connection failed: refused, reset, DNS, TLS.
    Unreachable(String),
    /// No response headers (or, in a body, no chunk) within `HTTP_TIMEOUT_SECONDS`.
    Timeout,
    /// A browser origin, method or header that CORS does not allow; the message names it.
    Forbidden(String),
    /// A key the proxy issues was presented and is not (or no longer) good: unknown,
    /// revoked, disabled, expired; or a provider that only serves such keys got another.
    KeyRejected(String),
    /// An issued key's limit (`requests_per_minute`, `tokens_per_minute`, `max_concurrent`,
    /// `budget`) turned the request away before any upstream call.
    LimitReached {
        limit: &'static str,
        retry_after_secs: u64,
        message: String,
    },
    /// The shared limits (Redis) cannot be asked, and `LIMITS_FAIL_CLOSED` refuses keys with
    /// limits until they can.
    LimitsUnavailable,
    /// `MAX_CONCURRENT_REQUESTS` are in flight already.
    Overloaded,
    /// Request bodies still arriving hold `MAX_PENDING_BODY_BYTES` already.
    BodiesOverloaded,
    /// Every upstream connection this worker may open is in use.
    PoolExhausted,
    /// Every provider and retry failed: the last failure, and the record of each attempt.
    Exhausted {
        last: Box<ProxyError>,
        attempts: Vec<Attempt>,
    },
}

impl ProxyError {
    /// The `type` field of the JSON error body.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::InvalidRequest(_) => "invalid_request",
            Self::MissingKey => "authentication",
            Self::UnknownProvider { .. } | Self::NotFound => "not_found",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::PayloadTooLarge { .. } => "payload_too_large",
            Self::BodyTimeout => "request_timeout",
            Self::TooManyFallbacks { .. } => "invalid_request",
            Self::Upstream { .. } | Self::StreamEvent(_) => "upstream_error",
            Self::BadUpstreamBody(_) | Self::Unreachable(_) => "bad_gateway",
            Self::Timeout => "gateway_timeout",
            Self::Forbidden(_) => "forbidden",
            Self::KeyRejected(_) => "authentication",
            Self::LimitReached { .. } => "rate_limit",
            Self::Overloaded | Self::BodiesOverloaded => "overloaded",
            Self::PoolExhausted => "pool_exhausted",
            Self::LimitsUnavailable => "limits_unavailable",
            Self::Exhausted { last, .. } => last.kind(),
        }
    }

    /// The failure itself and the attempts behind it (none when there was one try or none).
    fn unwrap_attempts(&self) -> (&ProxyError, &[Attempt]) {
        match self {
            Self::Exhausted { last, attempts } => (last, attempts),
            _ => (self, &[]),
        }
    }

    /// The headers an error response carries: the upstream's rate-limit headers, or our own
    /// `Retry-After` when we turn a request away.
    fn headers(&self) -> Vec<(HeaderName, HeaderValue)> {
        match self.unwrap_attempts().0 {
            Self::Upstream { headers, .. } => headers.clone(),
            Self::Overloaded
            | Self::BodiesOverloaded
            | Self::PoolExhausted
            | Self::LimitsUnavailable => vec![(
                actix_web::http::header::RETRY_AFTER,
                HeaderValue::from_static("1"),
            )],
            Self::LimitReached {
                retry_after_secs, ..
            } => vec![(
                actix_web::http::header::RETRY_AFTER,
                HeaderValue::from(*retry_after_secs),
            )],
            _ => Vec::new(),
        }
    }

    /// The upstream's status and body, when the failure is an upstream's answer.
    fn upstream(&self) -> (Option<u16>, Option<UpstreamBody<'_>>) {
        match self {
            Self::Upstream { status, body, .. } => {
                (Some(status.as_u16()), Some(upstream_body(body)))
            }
            Self::StreamEvent(body) => (None, Some(upstream_body(body))),
            _ => (None, None),
        }
    }

    /// The JSON error body, `{"error": {...}}`, naming the provider when there is one.
    pub fn body(&self, provider: Option<&str>) -> Vec<u8> {
        let (error, attempts) = self.unwrap_attempts();
        let message = error.to_string();
        let (upstream_status, upstream) = error.upstream();
        let body = ErrorBody {
            error: ErrorFields {
                kind: error.kind(),
                message: &message,
                provider,
                upstream_status,
                upstream,
                attempts,
            },
        };
        serde_json::to_vec(&body).expect("an error body always serializes")
    }

    /// The body in OpenAI's error shape, `{"error": {"message", "type", "param", "code"}}`, for
    /// the front door: the SDKs pick their exception class from the status, and read these.
    /// An upstream's own `type`, `param` and `code` are kept when it has them.
    pub fn openai_body(&self, provider: Option<&str>) -> Vec<u8> {
        let (error, attempts) = self.unwrap_attempts();
        let message = error.to_string();
        let own = match error {
            Self::Upstream { body, .. } | Self::StreamEvent(body) => {
                serde_json::from_slice::<UpstreamEnvelope>(body).ok()
            }
            _ => None,
        };
        let own = own.map(|envelope| envelope.error);
        let kind = match error {
            Self::InvalidRequest(_)
            | Self::TooManyFallbacks { .. }
            | Self::UnknownProvider { .. }
            | Self::NotFound
            | Self::MethodNotAllowed
            | Self::PayloadTooLarge { .. }
            | Self::BodyTimeout => "invalid_request_error",
            Self::MissingKey | Self::KeyRejected(_) => "authentication_error",
            Self::LimitReached { .. } => "rate_limit_error",
            _ => "api_error",
        };
        let code = match error {
            Self::UnknownProvider { .. } => Some("model_not_found"),
            Self::LimitReached { limit, .. } => Some(*limit),
            Self::Upstream { .. } | Self::StreamEvent(_) => None,
            _ => Some(error.kind()),
        };
        let (upstream_status, upstream) = error.upstream();
        let body = OpenAiErrorBody {
            error: OpenAiError {
                message: &message,
                kind: own.as_ref().and_then(|o| o.kind.as_deref()).unwrap_or(kind),
                param: own.as_ref().and_then(|o| o.param.as_ref()),
                code: own
                    .as_ref()
                    .and_then(|o| o.code.as_ref())
                    .map(CodeValue::Upstream)
                    .or(code.map(CodeValue::Ours)),
                provider,
                upstream_status,
                upstream,
                attempts,
            },
        };
        serde_json::to_vec(&body).expect("an error body always serializes")
    }

    /// The body in Anthropic's error shape, `{"type": "error", "error": {"type", "message"}}`,
    /// for the `/v1/messages` door: the Anthropic SDKs pick their exception class from the
    /// status, and read these. An Anthropic upstream's own error type is kept.
    pub fn anthropic_body(&self, provider: Option<&str>) -> Vec<u8> {
        let (error, _) = self.unwrap_attempts();
        let message = error.to_string();
        // Only an error already in Anthropic's shape (an Anthropic upstream's) keeps its type;
        // another format's types mean other things (OpenAI's 401 is `invalid_request_error`).
        let own = match error {
            Self::Upstream { body, .. } | Self::StreamEvent(body) => {
                serde_json::from_slice::<AnthropicEnvelope>(body).ok()
            }
            _ => None,
        };
        let own = own
            .filter(|envelope| envelope.kind == "error")
            .and_then(|envelope| envelope.error.kind);
        let kind = match error {
            Self::StreamEvent(_) => "api_error",
            _ => anthropic_error_type(self.status_code()),
        };
        let (upstream_status, upstream) = error.upstream();
        let body = AnthropicErrorBody {
            kind: "error",
            error: AnthropicError {
                kind: own
                    .as_deref()
                    .filter(|own| own.ends_with("_error"))
                    .unwrap_or(kind),
                message: &message,
                provider,
                upstream_status,
                upstream,
            },
        };
        serde_json::to_vec(&body).expect("an error body always serializes")
    }

    /// The `/v1/messages` door's HTTP response for this error.
    pub fn to_anthropic_response(&self, provider: Option<&str>) -> HttpResponse {
        self.response(self.anthropic_body(provider))
    }

    /// The front door's HTTP response for this error.
    pub fn to_openai_response(&self, provider: Option<&str>) -> HttpResponse {
        self.response(self.openai_body(provider))
    }

    /// The full HTTP response for this error.
    pub fn to_response(&self, provider: Option<&str>) -> HttpResponse {
        self.response(self.body(provider))
    }

    fn response(&self, body: Vec<u8>) -> HttpResponse {
        let mut response = HttpResponse::build(self.status_code());
        for header in self.headers() {
            response.insert_header(header);
        }
        response.content_type("application/json").body(body)
    }
}

impl fmt::Display for ProxyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::InvalidRequest(message) => f.write_str(message),
            Self::MissingKey => {
                f.write_str("missing API key: send your provider key in the X-API-Key header")
            }
            Self::UnknownProvider { name, known } => {
                write!(f, "unknown provider {name:?}; known providers: {known}")
            }
            Self::NotFound => f.write_str("no such route; try POST /v1/chat/{provider}"),
            Self::MethodNotAllowed => f.write_str("method not allowed on this route"),
            Self::PayloadTooLarge { limit } => {
                write!(f, "request body is larger than the limit of {limit} bytes")
            }
            Self::BodyTimeout => f.write_str(
                "the request body did not arrive in time (CLIENT_BODY_TIMEOUT_SECONDS)",
            ),
            Self::TooManyFallbacks { given } => write!(
                f,
                "at most {MAX_FALLBACKS} fallbacks per request (X-Fallbacks, `fallbacks` and an \
                 alias's together); this one names {given}"
            ),
            Self::Upstream { status, body, .. } => match upstream_message(body) {
                Some(message) => write!(f, "upstream answered {}: {message}", status.as_u16()),
                None => write!(f, "upstream answered {status}"),
            },
            Self::StreamEvent(body) => match upstream_message(body) {
                Some(message) => write!(f, "upstream stream failed: {message}"),
                None => f.write_str("upstream stream failed"),
            },
            Self::BadUpstreamBody(why) => write!(f, "upstream sent an unusable response: {why}"),
            Self::Unreachable(why) => write!(f, "upstream unreachable: {why}"),
            Self::Timeout => f.write_str("upstream did not answer in time"),
            Self::Forbidden(why) | Self::KeyRejected(why) => f.write_str(why),
            Self::LimitReached { message, .. } => f.write_str(message),
            Self::LimitsUnavailable => f.write_str(
                "this key's limits are shared through Redis, which cannot be reached, and the proxy \
                 refuses keys with limits meanwhile (LIMITS_FAIL_CLOSED); retry shortly",
            ),
            Self::Overloaded => f.write_str(
                "the proxy is handling as many requests as it may (MAX_CONCURRENT_REQUESTS); retry shortly",
            ),
            Self::BodiesOverloaded => f.write_str(
                "the proxy is receiving as many request bytes as it may (MAX_PENDING_BODY_BYTES); retry shortly",
            ),
            Self::PoolExhausted => f.write_str(
                "every upstream connection is in use (HTTP_MAX_CONNECTIONS); retry shortly",
            ),
            Self::Exhausted { last, .. } => last.fmt(f),
        }
    }
}

impl std::error::Error for ProxyError {}

impl ResponseError for ProxyError {
    fn status_code(&self) -> StatusCode {
        match self {
            Self::InvalidRequest(_) | Self::TooManyFallbacks { .. } => StatusCode::BAD_REQUEST,
            Self::MissingKey => StatusCode::UNAUTHORIZED,
            Self::UnknownProvider { .. } | Self::NotFound => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            Self::Upstream { status, .. } => *status,
            Self::StreamEvent(_) | Self::BadUpstreamBody(_) | Self::Unreachable(_) => {
                StatusCode::BAD_GATEWAY
            }
            Self::Timeout => StatusCode::GATEWAY_TIMEOUT,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::KeyRejected(_) => StatusCode::UNAUTHORIZED,
            Self::LimitReached { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::Overloaded
            | Self::BodiesOverloaded
            | Self::PoolExhausted
            | Self::LimitsUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            Self::Exhausted { last, .. } => last.status_code(),
        }
    }

    /// Errors raised outside a provider's route (unknown paths, wrong methods).
    fn error_response(&self) -> HttpResponse {
        self.to_response(None)
    }
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: ErrorFields<'a>,
}

#[derive(Serialize)]
struct ErrorFields<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    message: &'a str,
    provider: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    upstream_status: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    upstream: Option<UpstreamBody<'a>>,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    attempts: &'a [Attempt],
}

#[derive(Serialize)]
struct OpenAiErrorBody<'a> {
    error: OpenAiError<'a>,
}

#[derive(Serialize)]
struct OpenAiError<'a> {
    message: &'a str,
    #[serde(rename = "type")]
    kind: &'a str,
    param: Option<&'a serde_json::Value>,
    code: Option<CodeValue<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    provider: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    upstream_status: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    upstream: Option<UpstreamBody<'a>>,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    attempts: &'a [Attempt],
}

#[derive(Serialize)]
#[serde(untagged)]
enum CodeValue<'a> {
    Upstream(&'a serde_json::Value),
    Ours(&'a str),
}

/// Anthropic's error types by status, as its API documents them.
fn anthropic_error_type(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 | 405 | 408 | 422 => "invalid_request_error",
        401 => "authentication_error",
        402 => "billing_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        504 => "timeout_error",
        503 | 529 => "overloaded_error",
        _ => "api_error",
    }
}

#[derive(Serialize)]
struct AnthropicErrorBody<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    error: AnthropicError<'a>,
}

#[derive(Serialize)]
struct AnthropicError<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    provider: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    upstream_status: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    upstream: Option<UpstreamBody<'a>>,
}

/// Anthropic's error body: `{"type": "error", "error": {"type", "message"}}`.
#[derive(serde::Deserialize)]
struct AnthropicEnvelope {
    #[serde(rename = "type")]
    kind: String,
    error: UpstreamError,
}

/// The `error` object most providers answer with; each field may be missing.
#[derive(serde::Deserialize)]
struct UpstreamEnvelope {
    error: UpstreamError,
}

#[derive(serde::Deserialize)]
struct UpstreamError {
    #[serde(rename = "type")]
    kind: Option<String>,
    param: Option<serde_json::Value>,
    code: Option<serde_json::Value>,
}

/// An upstream error body as we pass it on: its JSON as it came, or its text.
#[derive(Serialize)]
#[serde(untagged)]
enum UpstreamBody<'a> {
    Json(&'a RawValue),
    Text(&'a str),
}

fn upstream_body(body: &[u8]) -> UpstreamBody<'_> {
    if let Ok(json) = serde_json::from_slice::<&RawValue>(body) {
        return UpstreamBody::Json(json);
    }
    let text = match std::str::from_utf8(body) {
        Ok(text) => text,
        // Cut at the last whole character; a lossy copy is not worth it for an error body.
        Err(e) => std::str::from_utf8(&body[..e.valid_up_to()]).unwrap_or_default(),
    };
    UpstreamBody::Text(truncate(text, MAX_UPSTREAM_TEXT))
}

/// The upstream's own explanation, where it uses the `{"error": {"message": ...}}` shape that
/// OpenAI, Anthropic and most others share.
fn upstream_message(body: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Envelope {
        error: Inner,
    }
    #[derive(serde::Deserialize)]
    struct Inner {
        message: String,
    }
    let envelope: Envelope = serde_json::from_slice(body).ok()?;
    Some(truncate(&envelope.error.message, 1024).to_owned())
}

/// The longest prefix of `text` of at most `max` bytes that ends on a character boundary.
fn truncate(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// Replaces every occurrence of `secret` in `body` with `[redacted]`: an upstream that quotes
/// the caller's key back in an error must not make us echo it. The key is also found in the
/// forms a JSON encoder may have written it in (`\/` for `/`, `\u00XX` for characters such as
/// `<`, `>`, `&`, `+` and `=`), so escaping cannot smuggle it past. Linear in the body's length
/// for each form.
pub fn redact(body: Bytes, secret: &[u8]) -> Bytes {
    const MASK: &[u8] = b"[redacted]";
    if secret.is_empty() {
        return body;
    }
    let mut body = body;
    for form in secret_forms(secret) {
        let finder = memchr::memmem::Finder::new(&form);
        if finder.find(&body).is_none() {
            continue;
        }
        let mut out = Vec::with_capacity(body.len());
        let mut rest = &body[..];
        while let Some(at) = finder.find(rest) {
            out.extend_from_slice(&rest[..at]);
            out.extend_from_slice(MASK);
            rest = &rest[at + form.len()..];
        }
        out.extend_from_slice(rest);
        body = Bytes::from(out);
    }
    body
}

/// The key as it is, and as JSON encoders may escape it: standard escaping, `/` as `\/`, and
/// every character outside `[A-Za-z0-9._-]` as `\u00xx` or `\u00XX` (Go's encoder escapes `<`,
/// `>` and `&`; others escape more). Forms identical to an earlier one are skipped.
fn secret_forms(secret: &[u8]) -> Vec<Vec<u8>> {
    let plain = |b: u8| b.is_ascii_alphanumeric() || b"._-".contains(&b);
    let escape_with = |escape: &dyn Fn(u8, &mut Vec<u8>)| {
        let mut form = Vec::with_capacity(secret.len() * 2);
        for &b in secret {
            escape(b, &mut form);
        }
        form
    };
    let standard = |b: u8, out: &mut Vec<u8>| match b {
        b'"' => out.extend_from_slice(b"\\\""),
        b'\\' => out.extend_from_slice(b"\\\\"),
        _ => out.push(b),
    };
    let mut forms = vec![secret.to_vec()];
    for form in [
        escape_with(&standard),
        escape_with(&|b, out| match b {
            b'/' => out.extend_from_slice(b"\\/"),
            _ => standard(b, out),
        }),
        escape_with(&|b, out| match b {
            _ if plain(b) || b >= 0x80 => out.push(b),
            _ => out.extend_from_slice(format!("\\u{b:04x}").as_bytes()),
        }),
        escape_with(&|b, out| match b {
            _ if plain(b) || b >= 0x80 => out.push(b),
            _ => out.extend_from_slice(format!("\\u{b:04X}").as_bytes()),
        }),
    ] {
        if !forms.contains(&form) {
            forms.push(form);
        }
    }
    forms
}

impl ProxyError {
    /// The same error with `key` masked out of any upstream body it carries.
    pub fn redacted(self, key: Option<&HeaderValue>) -> Self {
        let Some(key) = key else {
            return self;
        };
        match self {
            Self::Upstream {
                status,
                body,
                headers,
            } => Self::Upstream {
                status,
                body: redact(body, key.as_bytes()),
                headers,
            },
            Self::StreamEvent(body) => Self::StreamEvent(redact(body, key.as_bytes())),
            Self::Exhausted { last, attempts } => Self::Exhausted {
                last: Box::new(last.redacted(Some(key))),
                attempts,
            },
            other => other,
        }
    }
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

    fn json(error: &ProxyError, provider: Option<&str>) -> serde_json::Value {
        serde_json::from_slice(&error.body(provider)).unwrap()
    }

    #[test]
    fn each_error_has_its_status_and_type() {
        let cases = [
            (
                ProxyError::InvalidRequest("x".into()),
                400,
                "invalid_request",
            ),
            (ProxyError::MissingKey, 401, "authentication"),
            (ProxyError::NotFound, 404, "not_found"),
            (ProxyError::MethodNotAllowed, 405, "method_not_allowed"),
            (
                ProxyError::PayloadTooLarge { limit: 1 },
                413,
                "payload_too_large",
            ),
            (ProxyError::BadUpstreamBody("x".into()), 502, "bad_gateway"),
            (ProxyError::Unreachable("x".into()), 502, "bad_gateway"),
            (ProxyError::Timeout, 504, "gateway_timeout"),
            (ProxyError::Forbidden("x".into()), 403, "forbidden"),
            (ProxyError::Overloaded, 503, "overloaded"),
            (ProxyError::BodiesOverloaded, 503, "overloaded"),
            (ProxyError::BodyTimeout, 408, "request_timeout"),
            (
                ProxyError::TooManyFallbacks { given: 9 },
                400,
                "invalid_request",
            ),
            (ProxyError::PoolExhausted, 503, "pool_exhausted"),
            (ProxyError::LimitsUnavailable, 503, "limits_unavailable"),
        ];
        for (error, status, kind) in cases {
            assert_eq!(error.status_code().as_u16(), status, "{error:?}");
            assert_eq!(json(&error, None)["error"]["type"], kind);
        }
    }

    #[test]
    fn upstream_errors_keep_their_status_and_json_body() {
        let error = ProxyError::Upstream {
            status: StatusCode::TOO_MANY_REQUESTS,
            body: Bytes::from_static(br#"{"error":{"message":"slow down","type":"rate_limit"}}"#),
            headers: vec![],
        };
        assert_eq!(error.status_code(), StatusCode::TOO_MANY_REQUESTS);
        let body = json(&error, Some("openai"));
        assert_eq!(body["error"]["type"], "upstream_error");
        assert_eq!(body["error"]["provider"], "openai");
        assert_eq!(body["error"]["upstream_status"], 429);
        assert_eq!(body["error"]["upstream"]["error"]["message"], "slow down");
        assert_eq!(body["error"]["message"], "upstream answered 429: slow down");
    }

    #[test]
    fn non_json_upstream_bodies_become_text_cut_at_64_kib() {
        let error = ProxyError::Upstream {
            status: StatusCode::BAD_GATEWAY,
            body: Bytes::from("é".repeat(40_000)),
            headers: vec![],
        };
        let text = json(&error, None)["error"]["upstream"]
            .as_str()
            .unwrap()
            .to_owned();
        assert_eq!(text.len(), MAX_UPSTREAM_TEXT);
        assert!(text.chars().all(|c| c == 'é'));
    }

    fn openai_json(error: &ProxyError, provider: Option<&str>) -> serde_json::Value {
        serde_json::from_slice(&error.openai_body(provider)).unwrap()
    }

    #[test]
    fn front_door_errors_have_openais_shape() {
        let body = openai_json(&ProxyError::MissingKey, None);
        let error = &body["error"];
        assert_eq!(error["type"], "authentication_error");
        assert_eq!(error["code"], "authentication");
        assert!(error["param"].is_null());
        assert!(error["message"].as_str().unwrap().contains("X-API-Key"));
        let body = openai_json(
            &ProxyError::UnknownProvider {
                name: "x".into(),
                known: "openai".into(),
            },
            None,
        );
        assert_eq!(body["error"]["code"], "model_not_found");
        assert_eq!(body["error"]["type"], "invalid_request_error");
    }

    #[test]
    fn front_door_upstream_errors_keep_the_upstreams_type_param_and_code() {
        let error = ProxyError::Upstream {
            status: StatusCode::TOO_MANY_REQUESTS,
            body: Bytes::from_static(
                br#"{"error":{"message":"Rate limit reached","type":"requests","param":null,"code":"rate_limit_exceeded"}}"#,
            ),
            headers: vec![],
        };
        let body = openai_json(&error, Some("groq"));
        assert_eq!(body["error"]["type"], "requests");
        assert_eq!(body["error"]["code"], "rate_limit_exceeded");
        assert_eq!(body["error"]["provider"], "groq");
        assert_eq!(body["error"]["upstream_status"], 429);
        let anthropic = ProxyError::Upstream {
            status: StatusCode::UNAUTHORIZED,
            body: Bytes::from_static(
                br#"{"type":"error","error":{"type":"authentication_error","message":"invalid x-api-key"}}"#,
            ),
            headers: vec![],
        };
        let body = openai_json(&anthropic, Some("anthropic"));
        assert_eq!(body["error"]["type"], "authentication_error");
        assert!(body["error"]["code"].is_null());
        assert_eq!(
            body["error"]["message"],
            "upstream answered 401: invalid x-api-key"
        );
    }

    #[test]
    fn an_exhausted_request_answers_as_its_last_failure_and_lists_the_attempts() {
        let last = ProxyError::Upstream {
            status: StatusCode::SERVICE_UNAVAILABLE,
            body: Bytes::from_static(br#"{"error":{"message":"down"}}"#),
            headers: vec![(
                actix_web::http::header::RETRY_AFTER,
                HeaderValue::from_static("2"),
            )],
        };
        let attempts = vec![
            Attempt::failed("openai", "a", &ProxyError::Timeout),
            Attempt::skipped("gemini", "b", "no key: send X-API-Key-Gemini".into()),
            Attempt::failed("anthropic", "c", &last),
        ];
        let error = ProxyError::Exhausted {
            last: Box::new(last),
            attempts,
        };
        assert_eq!(error.status_code(), StatusCode::SERVICE_UNAVAILABLE);
        let body = json(&error, Some("anthropic"));
        assert_eq!(body["error"]["type"], "upstream_error");
        assert_eq!(body["error"]["upstream_status"], 503);
        assert_eq!(body["error"]["upstream"]["error"]["message"], "down");
        assert_eq!(body["error"]["attempts"][0]["failure"], "timeout");
        assert_eq!(
            body["error"]["attempts"][1]["failure"],
            "no key: send X-API-Key-Gemini"
        );
        assert_eq!(body["error"]["attempts"][2]["status"], 503);
        let openai = openai_json(&error, Some("anthropic"));
        assert_eq!(openai["error"]["attempts"].as_array().unwrap().len(), 3);
        let response = error.to_response(None);
        assert_eq!(response.headers().get("retry-after").unwrap(), "2");
    }

    #[test]
    fn turned_away_requests_are_told_when_to_come_back() {
        let response = ProxyError::Overloaded.to_response(None);
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers().get("retry-after").unwrap(), "1");
    }

    #[test]
    fn non_upstream_errors_have_no_upstream_fields() {
        let body = json(&ProxyError::MissingKey, Some("anthropic"));
        assert_eq!(body["error"]["provider"], "anthropic");
        assert!(body["error"].get("upstream_status").is_none());
        assert!(body["error"].get("upstream").is_none());
    }

    #[test]
    fn redact_finds_the_key_in_json_escaped_forms() {
        let key = br#"sk/a+b=c<d>&"e\f"#;
        let escaped = serde_json::to_string(std::str::from_utf8(key).unwrap()).unwrap();
        let bodies = [
            format!(r#"{{"message":{escaped}}}"#),
            r#"{"message":"sk\/a+b=c<d>&\"e\\f"}"#.to_owned(),
            r#"{"message":"sk\u002fa\u002bb\u003dc\u003cd\u003e\u0026\u0022e\u005cf"}"#.to_owned(),
            r#"{"message":"sk\u002Fa\u002Bb\u003Dc\u003Cd\u003E\u0026\u0022e\u005Cf"}"#.to_owned(),
        ];
        for body in bodies {
            let masked = redact(Bytes::from(body.clone()), key);
            assert_eq!(&masked[..], br#"{"message":"[redacted]"}"#, "{body}");
        }
    }

    #[test]
    fn stream_events_and_upstream_errors_are_redacted_as_they_are_made() {
        let key = HeaderValue::from_static("sk-secret");
        let event = ProxyError::StreamEvent(Bytes::from_static(
            br#"{"error":{"message":"bad key sk-secret"}}"#,
        ));
        let masked = event.redacted(Some(&key));
        assert_eq!(
            masked.to_string(),
            "upstream stream failed: bad key [redacted]"
        );
        assert!(!String::from_utf8_lossy(&masked.body(None)).contains("sk-secret"));
    }

    proptest::proptest! {
        /// Keys are drawn from characters `[redacted]` lacks, so the mask cannot form one.
        #[test]
        fn no_occurrence_of_the_key_survives_masking_raw_or_json_escaped(
            key in r#"sk-[A-Z0-9+/=<>&"\\]{1,24}"#,
            pieces in proptest::collection::vec("[ -~]{0,16}", 0..8),
        ) {
            let raw = pieces.join(&key);
            let json = serde_json::to_string(&raw).unwrap();
            let escaped = serde_json::to_string(&key).unwrap();
            let escaped = &escaped[1..escaped.len() - 1];
            for body in [raw.clone(), json, raw.replace('/', "\\/")] {
                let masked = redact(Bytes::from(body.clone()), key.as_bytes());
                proptest::prop_assert!(memchr::memmem::find(&masked, key.as_bytes()).is_none(), "{body}");
                proptest::prop_assert!(memchr::memmem::find(&masked, escaped.as_bytes()).is_none(), "{body}");
            }
        }

        #[test]
        fn masking_leaves_bodies_without_the_key_unchanged(
            key in "sk-[a-z0-9]{8,24}",
            body in proptest::collection::vec(proptest::num::u8::ANY, 0..512),
        ) {
            proptest::prop_assume!(memchr::memmem::find(&body, key.as_bytes()).is_none());
            let masked = redact(Bytes::from(body.clone()), key.as_bytes());
            proptest::prop_assert_eq!(&masked[..], &body[..]);
        }
    }

    #[test]
    fn a_large_body_of_near_misses_is_searched_in_linear_time_and_left_unchanged() {
        // Many near-misses of a long key: a naive search does O(body × key) comparisons, 2e9
        // here; memchr's memmem is linear by construction.
        let key = format!("sk-{}", "a".repeat(200));
        let body = format!("sk-{}b", "a".repeat(199)).repeat(50_000);
        let masked = redact(Bytes::from(body.clone()), key.as_bytes());
        assert_eq!(masked.len(), body.len());
    }

    #[test]
    fn redact_masks_every_occurrence_of_the_key() {
        let body = Bytes::from_static(b"key sk-123 and sk-123 again");
        assert_eq!(
            &redact(body, b"sk-123")[..],
            b"key [redacted] and [redacted] again"
        );
        let clean = Bytes::from_static(b"nothing here");
        assert_eq!(&redact(clean, b"sk-123")[..], b"nothing here");
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
        let event = Attempt::failed(
            "openai",
            "gpt",
            &ProxyError::StreamEvent(Default::default()),
        );
        assert_eq!(
            (event.status, event.failure.as_deref()),
            (Some(200), Some("error event"))
        );
    }
}
