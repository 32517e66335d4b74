//! One folder per wire format, each speaking its format in both directions, and the traits
//! they implement.
//!
//! A format's `door` parses a client request in that format into the [`model`](crate::model)
//! and renders answers, stream events and errors in that format; its `upstream` builds the
//! upstream request from the model and decodes that format's answers and streams into it.
//! Adding a format is one folder here (with its `pub mod` line and `Format` variant) and its
//! line in [`crate::gateway::targets`]'s `wire_format` (plus its name in the providers file's
//! `KINDS`).

pub mod anthropic;
pub mod gemini;
pub mod openai;

use actix_web::{
    http::{
        header::{HeaderName, HeaderValue},
        Uri,
    },
    web::Bytes,
};

use crate::{
    error::ProxyError,
    model::{Request, Response, StreamEvent, Usage},
    util::sse,
};

/// Where and how to reach one configured provider, whatever its wire format.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// The `{provider}` of `/v1/chat/{provider}`, and the part before `/` in a door's model.
    pub name: &'static str,
    pub base_url: String,
    /// Without a key, a request to a provider that requires one is a 401 and goes nowhere.
    pub key_required: bool,
    /// Static headers from the providers file, sent on every request.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// The key the proxy holds for this provider (`api_key_env`), marked sensitive: sent for
    /// callers with keys the proxy issued, and then only to this endpoint.
    pub held_key: Option<HeaderValue>,
}

impl Endpoint {
    /// The URL of a path below the base URL.
    pub fn url(&self, path: &str) -> Uri {
        let base = self.base_url.trim_end_matches('/');
        format!("{base}/{}", path.trim_start_matches('/'))
            .parse()
            .expect("base URLs are validated at start")
    }
}

/// Everything `upstream::send` needs for one call: where, which headers, what body.
#[derive(Debug)]
pub struct UpstreamRequest {
    pub url: Uri,
    /// Auth, version and configured headers. `Content-Type: application/json` is always added
    /// by the sender.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub body: Bytes,
}

/// The key as it came, marked sensitive so that it is never printed (a reference count, no
/// copy).
pub fn sensitive(key: &HeaderValue) -> HeaderValue {
    let mut key = key.clone();
    key.set_sensitive(true);
    key
}

/// Builds a header value from a key, marked sensitive so that it is never printed.
pub fn secret_header(prefix: &str, key: &HeaderValue) -> HeaderValue {
    let mut bytes = Vec::with_capacity(prefix.len() + key.len());
    bytes.extend_from_slice(prefix.as_bytes());
    bytes.extend_from_slice(key.as_bytes());
    let mut value = HeaderValue::from_bytes(&bytes)
        .expect("a valid header value with an ASCII prefix is valid");
    value.set_sensitive(true);
    value
}

/// The wire formats the proxy speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// OpenAI Chat Completions, and every provider that speaks it.
    OpenAi,
    /// Anthropic Messages.
    Anthropic,
    /// Google Gemini `generateContent`.
    Gemini,
}

/// A request in an upstream's own format, to go on as it came: the door and the upstream
/// speak the same format, so the proxy reads only what it must and forwards the rest.
#[derive(Debug, Clone, Copy)]
pub struct PassThrough<'a> {
    /// The body exactly as the caller sent it.
    pub body: &'a Bytes,
    /// The body's `model`, as the caller wrote it (`provider/model`, an alias...).
    pub model: &'a str,
    pub stream: bool,
    /// The query string of the caller's request, if any (`?beta=true` from Claude Code).
    pub query: Option<&'a str>,
    /// The caller's headers of this format to pass on (`anthropic-version`, `anthropic-beta`).
    pub headers: &'a [(HeaderName, HeaderValue)],
    /// Top-level fields of the proxy's own to take out (`fallbacks`).
    pub remove: &'a [&'a str],
}

/// One upstream wire format, configured for one provider. Implementations are plain data and
/// translate with pure functions; all network I/O lives in `upstream`.
pub trait Upstream: Send + Sync {
    fn endpoint(&self) -> &Endpoint;

    fn format(&self) -> Format;

    /// Runs once per call when the request came in another format (or through the path
    /// route): builds the upstream call for `model` from the request, mapping the caller's key
    /// (when there is one) onto this provider's auth. Fails only on what this provider cannot
    /// express, with a 400 that names the field and the provider.
    fn translate_request(
        &self,
        request: &Request,
        model: &str,
        key: Option<&HeaderValue>,
    ) -> Result<UpstreamRequest, ProxyError>;

    /// Runs once per call when the door speaks this format: the body as it came, with only
    /// `model` replaced by `model` (and the proxy's own fields removed) when needed. The
    /// default refuses: a format without a door never receives its own shape.
    fn pass_through(
        &self,
        request: &PassThrough<'_>,
        model: &str,
        key: Option<&HeaderValue>,
    ) -> Result<UpstreamRequest, ProxyError> {
        let _ = (request, model, key);
        Err(ProxyError::InvalidRequest(format!(
            "{} takes no requests in its own format here",
            self.endpoint().name
        )))
    }

    /// Runs on a 2xx answer to a non-streaming call: the upstream body in the model. Fails
    /// with a 502 when the body is not the format's documented shape. `requested_model` is
    /// used when the upstream does not name its model.
    fn translate_response(
        &self,
        body: &[u8],
        requested_model: &str,
    ) -> Result<Response, ProxyError>;

    /// Runs when a stream from this upstream is translated for a door of another format.
    fn stream_decoder(&self) -> Box<dyn StreamDecoder>;
}

/// Turns one format's stream events into the model's, one event at a time.
pub trait StreamDecoder {
    /// Runs for each complete upstream event, in order, as soon as it has arrived; pushes the
    /// events it stands for (often none, sometimes several). An error ends the stream: an
    /// in-band error event is `ProxyError::StreamEvent` with the event's data.
    fn event(
        &mut self,
        event: &sse::Event<'_>,
        out: &mut Vec<StreamEvent>,
    ) -> Result<(), ProxyError>;

    /// Runs once when the upstream's body has ended cleanly, after its last event: fails when
    /// the stream ended before its format's terminal event, so that a truncated answer ends
    /// with an error event instead of looking complete. The default accepts any end.
    fn end(&mut self, out: &mut Vec<StreamEvent>) -> Result<(), ProxyError> {
        let _ = out;
        Ok(())
    }
}

/// Renders the model's stream events in a door's format, incrementally: each event is written
/// as soon as it is given, holding back nothing but what the format needs to say at its end.
pub trait StreamEncoder {
    /// Runs for each event the decoder emitted, in order.
    fn event(&mut self, event: StreamEvent, out: &mut Vec<u8>);

    /// Runs once after the upstream's stream ended cleanly: the format's closing events.
    fn finish(&mut self, out: &mut Vec<u8>);

    /// Runs at most once, instead of `finish`, when the stream breaks after it began: the
    /// format's error event for `error`, already redacted.
    fn error(&mut self, error: &ProxyError, provider: &str, out: &mut Vec<u8>);

    /// The token counts seen so far, for the access log and the metrics.
    fn usage(&self) -> Option<Usage>;

    /// What to send during a long silence so idle-timeout proxies keep the stream open.
    /// The default is an SSE comment, which every client ignores.
    fn keep_alive(&self) -> &'static [u8] {
        b": keep-alive\n\n"
    }
}

/// The error for a 2xx body that does not have the shape a format documents.
pub fn bad_body(provider: &str, why: impl std::fmt::Display) -> ProxyError {
    ProxyError::BadUpstreamBody(format!("{provider} response {why}"))
}

/// The error for what a target format cannot express: a 400 that names the field and the
/// provider, so a client (Claude Code among them) can drop the feature and retry.
pub fn unsupported(provider: &str, field: &str, why: impl std::fmt::Display) -> ProxyError {
    ProxyError::InvalidRequest(format!("`{field}` cannot be sent to {provider}: {why}"))
}

/// The error for a translated stream that ended without its format's terminal event, so that a
/// truncated answer ends with an error event instead of looking complete.
pub fn ended_early(provider: &str, terminal: &str) -> ProxyError {
    ProxyError::Unreachable(format!(
        "the {provider} stream ended before its {terminal}; the answer is incomplete"
    ))
}
