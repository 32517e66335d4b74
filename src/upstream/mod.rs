//! The only awc code: the pooled client, sending a request, reading the answer, relaying a
//! stream as it came or translating it event by event (a format's decoder, a door's encoder).

pub mod http1_head;
pub mod report;

use std::{
    convert::Infallible,
    future::Future,
    io,
    pin::Pin,
    rc::Rc,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use actix_service::Service;
use actix_tls::connect::{
    ConnectError, ConnectInfo, Connection, Connector as TcpConnector, Resolver,
};
use actix_web::{
    http::{
        header::{
            HeaderMap, HeaderName, HeaderValue, CONTENT_LENGTH, CONTENT_TYPE, TRANSFER_ENCODING,
        },
        StatusCode, Uri, Version,
    },
    rt::{
        net::{ActixStream, Ready, TcpStream},
        time::{sleep, Instant, Sleep},
    },
    web::{Bytes, BytesMut},
};
use awc::{
    error::{PayloadError, SendRequestError},
    Client, ClientResponse, Connector,
};
use futures_util::{future::LocalBoxFuture, ready, Stream, StreamExt, TryFutureExt};
use rustls::{ClientConfig, RootCertStore};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use self::report::{Ending, StreamReport};
use crate::{
    config::Config,
    error::ProxyError,
    formats::{StreamDecoder, StreamEncoder, UpstreamRequest},
    limits::Guards,
    metrics::UpstreamConnections,
    model::{StreamEvent, Usage},
    upstream::http1_head::ResponseHeads,
    util::sse,
};

/// Our request id header, sent upstream with every call.
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// How long an idle pooled connection is kept when keep-alive is on.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// The TLS configuration of every upstream connection, built once for the process and shared
/// by the workers' clients, so that a session one worker saved can be resumed by another
/// (rustls keeps resumption data in the config, in memory). As awc builds its own: the webpki
/// roots, no client certificate; plus `UPSTREAM_CA_FILE`'s roots, and ALPN by
/// `UPSTREAM_HTTP2`.
pub fn tls_config(config: &Config) -> Arc<ClientConfig> {
    let mut roots: RootCertStore = actix_tls::connect::rustls_0_23::webpki_roots_cert_store();
    // Checked when the file was read (`config::ca_file`): none is ignored here.
    roots.add_parsable_certificates(config.upstream_roots.iter().cloned());
    let mut tls = ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = match config.upstream_http2 {
        true => vec![b"h2".to_vec(), b"http/1.1".to_vec()],
        false => vec![b"http/1.1".to_vec()],
    };
    Arc::new(tls)
}

/// Builds one worker's client. awc's `Client` is `!Send`, so each worker builds its own; its
/// connection pool is shared by every request on that worker. `tls` is [`tls_config`]'s, and
/// every connection the pool opens counts in `opened`.
pub fn client(config: &Config, tls: &Arc<ClientConfig>, opened: &UpstreamConnections) -> Client {
    // awc has no cap on idle connections, only an idle timeout: 0 turns pooling off, any
    // other value keeps idle connections for `KEEP_ALIVE`.
    let keep_alive = if config.http_max_keepalive_connections == 0 {
        Duration::ZERO
    } else {
        KEEP_ALIVE
    };
    let connector = Connector::new()
        .rustls_0_23(Arc::clone(tls))
        .connector(UpstreamConnector {
            tcp: TcpConnector::new(Resolver::default()).service(),
            opened: opened.clone(),
        })
        .timeout(config.connect_timeout)
        .handshake_timeout(config.connect_timeout)
        // No limit in awc, which would queue without a bound: `limits::UpstreamSlots` holds a
        // slot for as long as awc holds the connection, and waits a bounded time for one.
        .limit(0)
        .conn_keep_alive(keep_alive);
    Client::builder()
        .connector(connector)
        // Timeouts are applied per request below; awc's 5 s default would cut long answers.
        .disable_timeout()
        .disable_redirects()
        .add_default_header((
            actix_web::http::header::USER_AGENT,
            concat!("llm-proxy/", env!("CARGO_PKG_VERSION")),
        ))
        .finish()
}

/// `HTTP_MAX_CONNECTIONS` split across workers, each of which has its own pool; zero (no
/// limit) stays zero.
pub fn connections_per_worker(config: &Config) -> usize {
    match config.http_max_connections {
        0 => 0,
        max => max.div_ceil(config.workers).max(1),
    }
}

/// Sends the request and waits for the response headers, at most `wait`.
pub async fn send(
    client: &Client,
    request: UpstreamRequest,
    wait: Duration,
) -> Result<ClientResponse, ProxyError> {
    let mut builder = client
        .post(request.url)
        .insert_header((CONTENT_TYPE, HeaderValue::from_static("application/json")))
        .timeout(wait);
    for header in request.headers {
        builder = builder.insert_header(header);
    }
    builder.send_body(request.body).await.map_err(send_error)
}

fn send_error(error: SendRequestError) -> ProxyError {
    match error {
        SendRequestError::Timeout
        | SendRequestError::Connect(awc::error::ConnectError::Timeout) => ProxyError::Timeout,
        other => ProxyError::Unreachable(other.to_string()),
    }
}

/// Reads a whole response body, failing past `limit` bytes or after `idle` without a chunk.
pub async fn read_body(
    response: ClientResponse,
    limit: usize,
    idle: Duration,
) -> Result<Bytes, ProxyError> {
    let mut body = Body::new(response, idle);
    // The first chunk is often the whole body: keep it as it is, copy only when a second comes.
    let mut first: Option<Bytes> = None;
    let mut joined = BytesMut::new();
    let mut length = 0;
    while let Some(chunk) = body.next().await {
        let chunk = chunk?;
        length += chunk.len();
        if length > limit {
            return Err(ProxyError::BadUpstreamBody(format!(
                "body is larger than MAX_RESPONSE_BYTES ({limit} bytes)"
            )));
        }
        match first.take() {
            None if joined.is_empty() => first = Some(chunk),
            previous => {
                joined.extend_from_slice(&previous.unwrap_or_default());
                joined.extend_from_slice(&chunk);
            }
        }
    }
    Ok(first.unwrap_or_else(|| joined.freeze()))
}

/// Whether a response header is one the caller should see: rate limits and request ids.
pub fn is_passed_on(name: &HeaderName) -> bool {
    let name = name.as_str();
    name == "retry-after"
        || name == "retry-after-ms"
        || name == "x-request-id"
        || name == "request-id"
        || name.starts_with("x-ratelimit-")
        || name.starts_with("anthropic-ratelimit-")
}

/// The headers of an upstream response that are passed on to the caller. The upstream's
/// `x-request-id` becomes `x-upstream-request-id`: `X-Request-Id` is the proxy's own.
pub fn passed_on_headers(headers: &HeaderMap) -> Vec<(HeaderName, HeaderValue)> {
    const UPSTREAM_REQUEST_ID: HeaderName = HeaderName::from_static("x-upstream-request-id");
    headers
        .iter()
        .filter(|(name, _)| is_passed_on(name))
        .map(|(name, value)| match name.as_str() {
            "x-request-id" => (UPSTREAM_REQUEST_ID, value.clone()),
            _ => (name.clone(), value.clone()),
        })
        .collect()
}

/// Whether a response's `Content-Type` is `text/event-stream` (any case, any parameters).
pub fn is_event_stream(headers: &HeaderMap) -> bool {
    headers
        .get(CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split(';').next())
        .is_some_and(|essence| essence.trim().eq_ignore_ascii_case("text/event-stream"))
}

/// A response that awc reads as empty although it has a body: HTTP/1.1 without
/// `Content-Length` or `Transfer-Encoding`, ended by closing the connection (RFC 9112 §6.3).
/// Over plain TCP [`UpstreamSocket`] lets awc read such bodies to the end; under TLS it cannot
/// reach the bytes, so the body is refused rather than taken as empty.
pub fn is_unreadable_close_delimited(
    version: Version,
    status: StatusCode,
    headers: &HeaderMap,
    tls: bool,
) -> bool {
    tls && crate::upstream::http1_head::status_has_body(status.as_u16())
        && version == Version::HTTP_11
        && !headers.contains_key(CONTENT_LENGTH)
        && !headers.contains_key(TRANSFER_ENCODING)
}

/// `now + after`, saturating instead of overflowing (settings are bounded at start; this is
/// the second line of defence).
fn deadline(after: Duration) -> Instant {
    const FAR: Duration = Duration::from_secs(365 * 24 * 3600);
    let now = Instant::now();
    now.checked_add(after)
        .or_else(|| now.checked_add(FAR))
        .unwrap_or(now)
}

/// The upstream's body, chunk by chunk as it arrives, ending in an error when the upstream
/// fails or goes silent for `idle` (the clock restarts with every chunk). Fused: once it has
/// ended or failed it only answers `None`, because awc's payload panics when polled again after
/// its end (the peek for a stream's first event may reach the end of a short body before the
/// relay polls it).
pub struct Body {
    upstream: ClientResponse,
    idle: Duration,
    deadline: Pin<Box<Sleep>>,
    close_delimited: bool,
    ended: bool,
}

impl Body {
    pub fn new(upstream: ClientResponse, idle: Duration) -> Self {
        Self {
            close_delimited: is_close_delimited(upstream.version(), upstream.headers()),
            upstream,
            idle,
            deadline: Box::pin(actix_web::rt::time::sleep_until(deadline(idle))),
            ended: false,
        }
    }
}

impl Stream for Body {
    type Item = Result<Bytes, ProxyError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.ended {
            return Poll::Ready(None);
        }
        let next = match this.upstream.poll_next_unpin(cx) {
            Poll::Ready(Some(Ok(chunk))) => {
                this.deadline.as_mut().reset(deadline(this.idle));
                return Poll::Ready(Some(Ok(chunk)));
            }
            Poll::Ready(Some(Err(e))) if is_normal_end(&e, this.close_delimited) => None,
            Poll::Ready(Some(Err(e))) => Some(Err(body_error(e))),
            Poll::Ready(None) => None,
            Poll::Pending => match this.deadline.as_mut().poll(cx) {
                Poll::Ready(()) => Some(Err(ProxyError::Timeout)),
                Poll::Pending => return Poll::Pending,
            },
        };
        this.ended = true;
        Poll::Ready(next)
    }
}

/// How much of a stream is read, at most, looking for its first event.
const PEEK_LIMIT: usize = 64 * 1024;

/// Reads a stream up to its first whole event, before anything is sent to the caller: an
/// upstream that answers 200 and then reports an error at once (as overloaded providers do)
/// has failed in a way that can still be retried. Returns the bytes read, to be sent first.
/// A stream whose first `PEEK_LIMIT` bytes hold no whole event did not begin with an error.
pub async fn peek_first_event(body: &mut Body) -> Result<Bytes, ProxyError> {
    let mut read = BytesMut::new();
    let mut parser = sse::Parser::default();
    while read.len() < PEEK_LIMIT {
        let Some(chunk) = body.next().await else {
            break;
        };
        let chunk = chunk?;
        read.extend_from_slice(&chunk);
        let mut first = None;
        // Stop at the first event: `Err` here only means "seen one".
        let _ = parser.feed(&chunk, |event| {
            let error = is_error_event(&event).then(|| Bytes::from(event.data.into_owned()));
            first = Some(error);
            Err(())
        });
        match first {
            Some(Some(error)) => return Err(ProxyError::StreamEvent(error)),
            Some(None) => return Ok(read.freeze()),
            None => {}
        }
    }
    Ok(read.freeze())
}

/// An SSE `error` event (Anthropic), or data that is an `{"error": ...}` object (OpenAI,
/// Gemini).
pub fn is_error_event(event: &sse::Event<'_>) -> bool {
    #[derive(serde::Deserialize)]
    struct Probe {
        #[allow(dead_code)]
        error: serde::de::IgnoredAny,
    }
    event.name == Some("error") || serde_json::from_str::<Probe>(&event.data).is_ok()
}

/// How a stream tells its caller that it broke after it began.
#[derive(Clone, Copy, Debug)]
pub enum StreamErrors {
    /// `event: error` with our JSON error body (the path-routed route).
    Proxy,
    /// `data: {"error": {...}}` in OpenAI's shape, which the OpenAI SDKs raise (front door).
    OpenAi,
    /// `event: error` with Anthropic's error body, which the Anthropic SDKs raise
    /// (`/v1/messages`).
    Anthropic,
}

/// What a stream relayed to the caller needs besides its bytes: who it is from, the request it
/// answers (for log lines), where to report its usage and how it ended, the key to mask in
/// upstream errors, and what it keeps alive until it ends.
pub struct StreamContext {
    pub provider: &'static str,
    pub request_id: HeaderValue,
    pub report: Rc<StreamReport>,
    pub key: Option<HeaderValue>,
    /// `MAX_EVENT_BYTES`: the most of one event held while it arrives.
    pub max_event_bytes: usize,
    pub guards: Guards,
}

impl StreamContext {
    /// Notes how the stream ended and logs it; the error comes back redacted, to be told.
    fn broken(&self, error: ProxyError) -> ProxyError {
        let error = error.redacted(self.key.as_ref());
        self.report.end(match error {
            ProxyError::Timeout => Ending::Timeout,
            _ => Ending::UpstreamCut,
        });
        log::warn!(
            "request_id={} {} stream cut: {error}",
            self.request_id.to_str().unwrap_or("-"),
            self.provider
        );
        error
    }

    /// The event that reports `error`, starting after a blank line whatever came before (the
    /// last two bytes passed on are `tail`).
    fn cut(&self, errors: StreamErrors, error: ProxyError, tail: [u8; 2]) -> Bytes {
        let error = self.broken(error);
        let mut event = Vec::with_capacity(256);
        event.extend_from_slice(separator_after(tail));
        match errors {
            StreamErrors::Proxy => {
                event.extend_from_slice(b"event: error\ndata: ");
                event.extend_from_slice(&error.body(Some(self.provider)));
            }
            StreamErrors::OpenAi => {
                event.extend_from_slice(b"data: ");
                event.extend_from_slice(&error.openai_body(Some(self.provider)));
            }
            StreamErrors::Anthropic => {
                event.extend_from_slice(b"event: error\ndata: ");
                event.extend_from_slice(&error.anthropic_body(Some(self.provider)));
            }
        }
        event.extend_from_slice(b"\n\n");
        Bytes::from(event)
    }
}

/// A `: keep-alive` comment every `every` of silence, for idle-timeout load balancers.
struct Heartbeat {
    every: Duration,
    next: Pin<Box<Sleep>>,
}

impl Heartbeat {
    /// `None` when `every` is zero: heartbeats are off.
    fn new(every: Duration) -> Option<Self> {
        (!every.is_zero()).then(|| Self {
            every,
            next: Box::pin(sleep(every)),
        })
    }

    fn reset(&mut self) {
        self.next.as_mut().reset(deadline(self.every));
    }

    /// Ready when a heartbeat is due; the clock then starts again.
    fn poll_due(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        ready!(self.next.as_mut().poll(cx));
        self.reset();
        Poll::Ready(())
    }
}

const KEEP_ALIVE_COMMENT: &[u8] = b": keep-alive\n\n";

/// The upstream's body as the caller's stream: every chunk passed on as it arrives, unchanged.
///
/// If the upstream fails or goes silent after the stream began, one error event is appended
/// and the stream ends, so the caller never mistakes a cut stream for a finished one. Dropping
/// the relay (the caller left) drops the upstream connection.
pub struct Relay {
    body: Body,
    /// Bytes read before the stream was committed to, sent first.
    first: Option<Bytes>,
    errors: StreamErrors,
    heartbeat: Option<Heartbeat>,
    /// The last two bytes passed on, to end a half-written event before our error event.
    tail: [u8; 2],
    /// Reads the token counts the stream carries, beside the bytes, without changing them.
    usage: UsageScanner,
    done: bool,
    context: StreamContext,
}

impl Relay {
    pub fn new(
        body: Body,
        first: Bytes,
        errors: StreamErrors,
        heartbeat: Duration,
        context: StreamContext,
    ) -> Self {
        let mut relay = Self {
            body,
            first: None,
            errors,
            heartbeat: Heartbeat::new(heartbeat),
            tail: *b"\n\n",
            usage: UsageScanner::new(context.report.clone(), context.max_event_bytes),
            done: false,
            context,
        };
        if !first.is_empty() {
            relay.passing(&first);
            relay.first = Some(first);
        }
        relay
    }

    /// Notes a chunk on its way to the caller.
    fn passing(&mut self, chunk: &[u8]) {
        self.remember_tail(chunk);
        self.usage.scan(chunk);
    }

    fn remember_tail(&mut self, chunk: &[u8]) {
        match chunk {
            [] => {}
            [only] => self.tail = [self.tail[1], *only],
            [.., a, b] => self.tail = [*a, *b],
        }
    }
}

impl Stream for Relay {
    type Item = Result<Bytes, Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if let Some(first) = this.first.take() {
            return Poll::Ready(Some(Ok(first)));
        }
        if this.done {
            return Poll::Ready(None);
        }
        match this.body.poll_next_unpin(cx) {
            Poll::Ready(Some(Ok(chunk))) => {
                this.passing(&chunk);
                if let Some(heartbeat) = &mut this.heartbeat {
                    heartbeat.reset();
                }
                Poll::Ready(Some(Ok(chunk)))
            }
            Poll::Ready(Some(Err(error))) => {
                this.done = true;
                let event = this.context.cut(this.errors, error, this.tail);
                Poll::Ready(Some(Ok(event)))
            }
            Poll::Ready(None) => {
                this.done = true;
                Poll::Ready(None)
            }
            Poll::Pending => {
                let Some(heartbeat) = &mut this.heartbeat else {
                    return Poll::Pending;
                };
                ready!(heartbeat.poll_due(cx));
                // A comment may only go between events: never inside one the upstream is
                // still writing.
                if separator_after(this.tail).is_empty() {
                    Poll::Ready(Some(Ok(Bytes::from_static(KEEP_ALIVE_COMMENT))))
                } else {
                    // Poll again so the new heartbeat deadline registers its wake-up.
                    cx.waker().wake_by_ref();
                    Poll::Pending
                }
            }
        }
    }
}

/// An upstream stream of another wire format, translated event by event as each arrives:
/// the upstream format's decoder turns its events into the model's, and the door's encoder
/// writes them in the door's format.
pub struct Translated {
    body: Body,
    first: Option<Bytes>,
    parser: sse::Parser,
    decoder: Box<dyn StreamDecoder>,
    encoder: Box<dyn StreamEncoder>,
    /// The model's events of the upstream events just parsed; empty between reads.
    events: Vec<StreamEvent>,
    out: Vec<u8>,
    heartbeat: Option<Heartbeat>,
    done: bool,
    context: StreamContext,
}

impl Translated {
    pub fn new(
        body: Body,
        first: Bytes,
        decoder: Box<dyn StreamDecoder>,
        encoder: Box<dyn StreamEncoder>,
        heartbeat: Duration,
        context: StreamContext,
    ) -> Self {
        Self {
            body,
            first: Some(first),
            parser: sse::Parser::with_limit(context.max_event_bytes),
            decoder,
            encoder,
            events: Vec::new(),
            out: Vec::with_capacity(512),
            heartbeat: Heartbeat::new(heartbeat),
            done: false,
            context,
        }
    }

    /// Hands the token counts seen so far to the access log and the metrics.
    fn report_usage(&self) {
        if let Some(usage) = self.encoder.usage() {
            self.context.report.usage_seen(&usage);
        }
    }

    /// What was written for the caller so far, as one chunk. Copied, so that `out` keeps its
    /// capacity: an event's writes then grow nothing.
    fn take_out(&mut self) -> Bytes {
        let chunk = Bytes::copy_from_slice(&self.out);
        self.out.clear();
        chunk
    }

    fn fail(&mut self, error: ProxyError) -> Bytes {
        self.report_usage();
        self.done = true;
        // Events decoded before the failure are still told; the encoder writes whole events,
        // so its error event follows them directly.
        self.encode();
        let error = self.context.broken(error);
        self.encoder
            .error(&error, self.context.provider, &mut self.out);
        self.take_out()
    }

    fn encode(&mut self) {
        for event in self.events.drain(..) {
            if let StreamEvent::Start {
                model: Some(model), ..
            } = &event
            {
                self.context.report.model_seen(model);
            }
            self.encoder.event(event, &mut self.out);
        }
    }

    fn feed(&mut self, chunk: &[u8]) -> Result<(), ProxyError> {
        let (decoder, events) = (&mut self.decoder, &mut self.events);
        let fed = self
            .parser
            .feed(chunk, |event| decoder.event(&event, events));
        self.encode();
        fed?;
        // The parser dropped an event and reads no more: the caller must not get a stream
        // that silently lacks it.
        if self.parser.overflowed() {
            return Err(ProxyError::BadUpstreamBody(format!(
                "an upstream event is longer than {} bytes (MAX_EVENT_BYTES)",
                self.context.max_event_bytes
            )));
        }
        Ok(())
    }

    /// The upstream's body ended: its last event, then the decoder's check that the stream
    /// was complete (a stream cut before its terminal event must not look finished).
    fn end(&mut self) -> Result<(), ProxyError> {
        let (decoder, events) = (&mut self.decoder, &mut self.events);
        let finished = self
            .parser
            .finish(|event| decoder.event(&event, events))
            .and_then(|()| self.decoder.end(&mut self.events));
        self.encode();
        finished?;
        self.done = true;
        self.report_usage();
        self.encoder.finish(&mut self.out);
        Ok(())
    }
}

impl Stream for Translated {
    type Item = Result<Bytes, Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        // Keep reading until the events so far make output: a read may end mid-event.
        while !this.done {
            let fed = if let Some(first) = this.first.take() {
                this.feed(&first)
            } else {
                match this.body.poll_next_unpin(cx) {
                    Poll::Ready(Some(Ok(chunk))) => {
                        if let Some(heartbeat) = &mut this.heartbeat {
                            heartbeat.reset();
                        }
                        this.feed(&chunk)
                    }
                    Poll::Ready(Some(Err(error))) => Err(error),
                    Poll::Ready(None) => this.end(),
                    Poll::Pending => {
                        let Some(heartbeat) = &mut this.heartbeat else {
                            return Poll::Pending;
                        };
                        ready!(heartbeat.poll_due(cx));
                        // Encoders write whole events: a keep-alive never lands inside one.
                        let keep_alive = this.encoder.keep_alive();
                        return Poll::Ready(Some(Ok(Bytes::from_static(keep_alive))));
                    }
                }
            };
            if let Err(error) = fed {
                return Poll::Ready(Some(Ok(this.fail(error))));
            }
            if !this.out.is_empty() {
                return Poll::Ready(Some(Ok(this.take_out())));
            }
        }
        if !this.out.is_empty() {
            return Poll::Ready(Some(Ok(this.take_out())));
        }
        Poll::Ready(None)
    }
}

/// Finds the token counts in a pass-through stream: OpenAI's `usage` chunk, Anthropic's
/// `message_start` and `message_delta`, Gemini's `usageMetadata`. Only events that mention
/// usage are parsed; the bytes themselves are never changed or held.
struct UsageScanner {
    parser: sse::Parser,
    usage: Rc<StreamReport>,
}

impl UsageScanner {
    /// Scanning stops (the bytes still flow) at an event longer than `max_event_bytes`.
    fn new(usage: Rc<StreamReport>, max_event_bytes: usize) -> Self {
        Self {
            parser: sse::Parser::with_limit(max_event_bytes),
            usage,
        }
    }

    fn scan(&mut self, chunk: &[u8]) {
        let usage = &self.usage;
        let _ = self.parser.feed(chunk, |event| {
            if event.data.contains("sage") {
                record_usage(&event.data, usage);
            }
            Ok::<_, Infallible>(())
        });
    }
}

fn record_usage(data: &str, into: &StreamReport) {
    #[derive(serde::Deserialize)]
    struct Probe {
        usage: Option<Counts>,
        message: Option<Message>,
        #[serde(rename = "usageMetadata")]
        usage_metadata: Option<GeminiCounts>,
        /// OpenAI's chunks name the model that answered, and Gemini's `modelVersion`.
        model: Option<String>,
        #[serde(rename = "modelVersion")]
        model_version: Option<String>,
    }
    #[derive(serde::Deserialize)]
    struct Message {
        usage: Option<Counts>,
        model: Option<String>,
    }
    #[derive(serde::Deserialize)]
    struct Counts {
        prompt_tokens: Option<u64>,
        completion_tokens: Option<u64>,
        prompt_tokens_details: Option<PromptDetails>,
        completion_tokens_details: Option<CompletionDetails>,
        input_tokens: Option<u64>,
        output_tokens: Option<u64>,
        #[serde(default)]
        cache_read_input_tokens: u64,
        #[serde(default)]
        cache_creation_input_tokens: u64,
    }
    #[derive(serde::Deserialize)]
    struct PromptDetails {
        #[serde(default)]
        cached_tokens: u64,
    }
    #[derive(serde::Deserialize)]
    struct CompletionDetails {
        #[serde(default)]
        reasoning_tokens: u64,
    }
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct GeminiCounts {
        prompt_token_count: Option<u64>,
        candidates_token_count: Option<u64>,
        #[serde(default)]
        thoughts_token_count: u64,
        #[serde(default)]
        cached_content_token_count: u64,
    }
    let Ok(probe) = serde_json::from_str::<Probe>(data) else {
        return;
    };
    let message_model = probe.message.as_ref().and_then(|m| m.model.as_deref());
    let named = probe.model.as_deref().or(probe.model_version.as_deref());
    if let Some(model) = named.or(message_model) {
        into.model_seen(model);
    }
    // The counts by the rule of `model::Usage`: input counts every prompt token, cached
    // ones too (Anthropic reports those apart), output every generated one, thoughts too
    // (Gemini reports those apart). A count an event leaves out stays as seen before.
    for counts in [probe.usage, probe.message.and_then(|m| m.usage)]
        .into_iter()
        .flatten()
    {
        let anthropic_input = counts.input_tokens.map(|uncached| {
            uncached + counts.cache_read_input_tokens + counts.cache_creation_input_tokens
        });
        let openai_cached = counts.prompt_tokens_details.map_or(0, |d| d.cached_tokens);
        into.usage_seen(&Usage {
            input_tokens: counts.prompt_tokens.or(anthropic_input).unwrap_or(0),
            output_tokens: counts
                .completion_tokens
                .or(counts.output_tokens)
                .unwrap_or(0),
            cache_read_tokens: openai_cached + counts.cache_read_input_tokens,
            cache_write_tokens: counts.cache_creation_input_tokens,
            reasoning_tokens: counts
                .completion_tokens_details
                .map_or(0, |d| d.reasoning_tokens),
        });
    }
    if let Some(counts) = probe.usage_metadata {
        into.usage_seen(&Usage {
            input_tokens: counts.prompt_token_count.unwrap_or(0),
            output_tokens: counts
                .candidates_token_count
                .map_or(0, |output| output + counts.thoughts_token_count),
            cache_read_tokens: counts.cached_content_token_count,
            reasoning_tokens: counts.thoughts_token_count,
            ..Usage::default()
        });
    }
}

/// What must come between the bytes passed on (ending in `tail`) and an event of ours, so that
/// ours starts after a blank line: a half-written event is ended rather than extended.
fn separator_after(tail: [u8; 2]) -> &'static [u8] {
    match tail {
        [b'\n', b'\n'] | [b'\r', b'\r'] => b"",
        [_, b'\n'] | [_, b'\r'] => b"\n",
        _ => b"\n\n",
    }
}

/// Connects to upstreams: plain TCP from actix-tls, then [`UpstreamSocket`] on top, each new
/// connection counted in `opened`. awc calls it only when its pool has no idle connection.
#[derive(Clone)]
struct UpstreamConnector<S> {
    tcp: S,
    opened: UpstreamConnections,
}

impl<S> Service<ConnectInfo<Uri>> for UpstreamConnector<S>
where
    S: Service<ConnectInfo<Uri>, Response = Connection<Uri, TcpStream>, Error = ConnectError>,
    S::Future: 'static,
{
    type Response = Connection<Uri, UpstreamSocket>;
    type Error = ConnectError;
    // Boxed to carry the counter along: one allocation per new connection, none per request.
    type Future = LocalBoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.tcp.poll_ready(cx)
    }

    fn call(&self, request: ConnectInfo<Uri>) -> Self::Future {
        let opened = self.opened.clone();
        Box::pin(
            self.tcp
                .call(request)
                .map_ok(move |connection| UpstreamSocket::wrap(connection, &opened)),
        )
    }
}

/// An upstream TCP socket with three changes:
///
/// - `TCP_NODELAY` is on: small SSE writes must not wait on Nagle's algorithm and delayed ACKs.
/// - End of file is an `UnexpectedEof` error. awc ends a response body as if complete when the
///   connection closes mid-body, which would pass a cut stream off as a finished one; with this,
///   a cut body is an error. The body that the close itself delimits (HTTP/1.0 without a length)
///   is told apart by [`is_close_delimited`].
/// - On plain `http://` connections, each response head is looked at before awc reads it
///   ([`ResponseHeads`]): an HTTP/1.1 response with neither `Content-Length` nor
///   `Transfer-Encoding`, which awc would read as empty, is marked HTTP/1.0, so that its body
///   is read to the close, as RFC 9112 §6.3 says. Under `https://`, awc's TLS runs on top of
///   this socket, which sees only ciphertext, so it leaves those bytes alone: a close-delimited
///   HTTPS answer is not fixed here.
#[derive(Debug)]
pub struct UpstreamSocket {
    stream: TcpStream,
    /// `None` under TLS.
    heads: Option<ResponseHeads>,
}

impl UpstreamSocket {
    fn wrap(
        connection: Connection<Uri, TcpStream>,
        opened: &UpstreamConnections,
    ) -> Connection<Uri, UpstreamSocket> {
        let tls = matches!(connection.request().scheme_str(), Some("https" | "wss"));
        opened.opened(tls);
        let (stream, connection) = connection.replace_io(());
        if let Err(e) = stream.set_nodelay(true) {
            log::debug!("could not set TCP_NODELAY on an upstream connection: {e}");
        }
        let heads = (!tls).then(ResponseHeads::default);
        connection.replace_io(UpstreamSocket { stream, heads }).1
    }

    /// Notes that request bytes went out: the next bytes read start a response.
    fn wrote(&mut self, written: &Poll<io::Result<usize>>) {
        if let (Some(heads), Poll::Ready(Ok(1..))) = (&mut self.heads, written) {
            heads.request_sent();
        }
    }
}

impl AsyncRead for UpstreamSocket {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let stream = &mut this.stream;
        match &mut this.heads {
            Some(heads) => {
                ready!(heads.poll_read(buf, |buf| Pin::new(&mut *stream).poll_read(cx, buf)))?
            }
            None => ready!(Pin::new(stream).poll_read(cx, buf))?,
        }
        if buf.filled().len() == before && buf.remaining() > 0 {
            let closed = io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "upstream closed the connection",
            );
            return Poll::Ready(Err(closed));
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for UpstreamSocket {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let written = Pin::new(&mut self.stream).poll_write(cx, buf);
        self.wrote(&written);
        written
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let written = Pin::new(&mut self.stream).poll_write_vectored(cx, bufs);
        self.wrote(&written);
        written
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

impl ActixStream for UpstreamSocket {
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<Ready>> {
        if self.heads.as_ref().is_some_and(ResponseHeads::has_ready) {
            return Poll::Ready(Ok(Ready::READABLE));
        }
        ActixStream::poll_read_ready(&self.stream, cx)
    }

    fn poll_write_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<Ready>> {
        ActixStream::poll_write_ready(&self.stream, cx)
    }
}

/// Whether a response body ends when the connection closes: HTTP/1.0 without
/// `Content-Length`. Only then is [`UpstreamSocket`]'s end-of-file error the body's normal end.
/// (awc reads an HTTP/1.1 body with neither length nor chunking as empty; on plain connections
/// [`UpstreamSocket`] marks such a response HTTP/1.0 before awc reads it, so it lands here.)
pub fn is_close_delimited(version: Version, headers: &HeaderMap) -> bool {
    version == Version::HTTP_10 && !headers.contains_key(CONTENT_LENGTH)
}

/// Whether a body read error is the normal end of a close-delimited body.
fn is_normal_end(error: &PayloadError, close_delimited: bool) -> bool {
    close_delimited && is_closed(error)
}

/// Whether a body read error is the connection closing (see [`UpstreamSocket`]).
fn is_closed(error: &PayloadError) -> bool {
    match error {
        PayloadError::Io(e) | PayloadError::Incomplete(Some(e)) => {
            e.kind() == io::ErrorKind::UnexpectedEof
        }
        _ => false,
    }
}

/// The error for a body that failed part way.
fn body_error(error: PayloadError) -> ProxyError {
    if is_closed(&error) {
        ProxyError::Unreachable("the connection closed before the response was complete".into())
    } else {
        ProxyError::Unreachable(format!("the response broke off: {error}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[actix_web::test]
    async fn upstream_sockets_have_nagle_off() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let uri: Uri = format!("http://{}/", listener.local_addr().unwrap())
            .parse()
            .unwrap();
        let connector = UpstreamConnector {
            tcp: TcpConnector::new(Resolver::default()).service(),
            opened: UpstreamConnections::default(),
        };
        let connection = connector.call(ConnectInfo::new(uri)).await.unwrap();
        assert!(connection.io_ref().stream.nodelay().unwrap());
    }

    #[actix_web::test]
    async fn response_heads_are_watched_on_plain_connections_only() {
        // The TCP connector ignores the scheme; for https, awc puts TLS on top of the socket.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let connector = UpstreamConnector {
            tcp: TcpConnector::new(Resolver::default()).service(),
            opened: UpstreamConnections::default(),
        };
        for (scheme, watched) in [("http", true), ("https", false)] {
            let uri: Uri = format!("{scheme}://{addr}/").parse().unwrap();
            let connection = connector.call(ConnectInfo::new(uri)).await.unwrap();
            assert_eq!(connection.io_ref().heads.is_some(), watched, "{scheme}");
        }
    }

    /// awc hands each chunk of a body out as a slice of its read buffer, so where the chunks
    /// lie shows which buffer a stream is read through: the same 8 KiB one, reused, however
    /// long the stream (vendor/awc/PATCHES.md; unpatched, a new 32 KiB one every 30 KiB).
    #[actix_web::test]
    async fn a_long_stream_is_read_through_one_small_buffer() {
        use std::io::{BufRead, BufReader, Write};

        const EVENTS: usize = 2_000;
        let event = format!("data: {}\n\n", "x".repeat(250));
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/", listener.local_addr().unwrap());
        // Each event is written once the one before it was read, so each arrives in a read
        // of its own, as a slow upstream's do.
        let (read_one, next) = std::sync::mpsc::channel::<()>();
        let chunk = format!("{:x}\r\n{event}\r\n", event.len());
        let upstream = std::thread::spawn(move || {
            let (socket, _) = listener.accept().unwrap();
            let mut request = BufReader::new(&socket);
            let mut line = String::new();
            while request.read_line(&mut line).unwrap() > 2 {
                line.clear();
            }
            let mut socket = &socket;
            socket
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
                .unwrap();
            for () in std::iter::once(()).chain(next.iter()).take(EVENTS) {
                socket.write_all(chunk.as_bytes()).unwrap();
            }
            socket.write_all(b"0\r\n\r\n").unwrap();
        });

        let config = Config::default();
        let client = client(
            &config,
            &tls_config(&config),
            &UpstreamConnections::default(),
        );
        let response = client.get(url).send().await.unwrap();
        let mut body = Body::new(response, Duration::from_secs(10));
        let mut starts = Vec::with_capacity(EVENTS);
        while let Some(chunk) = body.next().await {
            let chunk = chunk.unwrap();
            assert_eq!(chunk, event.as_bytes());
            starts.push(chunk.as_ptr() as usize);
            let _ = read_one.send(());
        }
        upstream.join().unwrap();
        assert_eq!(starts.len(), EVENTS);
        // The first buffer is kept by the response's headers, which share it; past it, every
        // chunk lies in the one buffer that follows, and within a page's length of its front
        // (reads go back to the front, rather than paging in the rest of the buffer).
        let later = &starts[100..];
        let span = later.iter().max().unwrap() - later.iter().min().unwrap();
        assert!(span < 4 * 1024, "chunks spread over {span} bytes");
    }

    #[test]
    fn token_counts_are_read_from_each_providers_stream() {
        for (stream, input, output) in [
            (&include_bytes!("../../tests/fixtures/anthropic/stream.sse")[..], 25, 15),
            (&include_bytes!("../../tests/fixtures/gemini/stream.sse")[..], 4, 12),
            // Thoughts count as output, as everywhere else (`model::Usage`).
            (
                &include_bytes!("../../tests/fixtures/gemini/thinking_stream.sse")[..],
                12,
                14 + 1236,
            ),
            // Cached prompt tokens count as input.
            (
                &b"event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":5,\"cache_read_input_tokens\":100,\"cache_creation_input_tokens\":20,\"output_tokens\":1}}}\n\n"[..],
                125,
                1,
            ),
            (
                &b"data: {\"choices\":[],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":3}}\n\ndata: [DONE]\n\n"[..],
                9,
                3,
            ),
        ] {
            let usage = Rc::new(StreamReport::default());
            let mut scanner = UsageScanner::new(usage.clone(), sse::MAX_EVENT_BYTES);
            for chunk in stream.chunks(7) {
                scanner.scan(chunk);
            }
            let seen = usage.usage().unwrap();
            assert_eq!((seen.input_tokens, seen.output_tokens), (input, output));
        }
    }

    #[test]
    fn cached_and_reasoning_counts_are_kept_from_pass_through_streams() {
        for (stream, expected) in [
            (
                &b"data: {\"choices\":[],\"usage\":{\"prompt_tokens\":2006,\"completion_tokens\":300,\"prompt_tokens_details\":{\"cached_tokens\":1920},\"completion_tokens_details\":{\"reasoning_tokens\":64}}}\n\ndata: [DONE]\n\n"[..],
                Usage {
                    input_tokens: 2006,
                    output_tokens: 300,
                    cache_read_tokens: 1920,
                    reasoning_tokens: 64,
                    ..Usage::default()
                },
            ),
            (
                &b"event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":5,\"cache_read_input_tokens\":100,\"cache_creation_input_tokens\":20,\"output_tokens\":1}}}\n\nevent: message_delta\ndata: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":42}}\n\n"[..],
                Usage {
                    input_tokens: 125,
                    output_tokens: 42,
                    cache_read_tokens: 100,
                    cache_write_tokens: 20,
                    ..Usage::default()
                },
            ),
            (
                &b"data: {\"usageMetadata\":{\"promptTokenCount\":700,\"candidatesTokenCount\":10,\"thoughtsTokenCount\":5,\"cachedContentTokenCount\":600}}\n\n"[..],
                Usage {
                    input_tokens: 700,
                    output_tokens: 15,
                    cache_read_tokens: 600,
                    reasoning_tokens: 5,
                    ..Usage::default()
                },
            ),
        ] {
            let usage = Rc::new(StreamReport::default());
            let mut scanner = UsageScanner::new(usage.clone(), sse::MAX_EVENT_BYTES);
            scanner.scan(stream);
            assert_eq!(usage.usage(), Some(expected));
        }
    }

    #[test]
    fn the_model_a_pass_through_stream_names_is_kept_for_its_price() {
        for (stream, model) in [
            (&b"data: {\"model\":\"gpt-4o-mini-2024-07-18\",\"choices\":[],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":3}}\n\n"[..], "gpt-4o-mini-2024-07-18"),
            (&include_bytes!("../../tests/fixtures/anthropic/stream.sse")[..], "claude-3-5-haiku-20241022"),
            (&b"data: {\"usageMetadata\":{\"promptTokenCount\":7},\"modelVersion\":\"gemini-2.5-flash\"}\n\n"[..], "gemini-2.5-flash"),
        ] {
            let usage = Rc::new(StreamReport::default());
            let mut scanner = UsageScanner::new(usage.clone(), sse::MAX_EVENT_BYTES);
            scanner.scan(stream);
            assert_eq!(usage.answered_model().as_deref(), Some(model));
        }
    }

    #[test]
    fn our_error_event_always_starts_after_a_blank_line() {
        assert_eq!(separator_after(*b"\n\n"), b"");
        assert_eq!(separator_after(*b"\r\r"), b"");
        assert_eq!(separator_after(*b"}\n"), b"\n");
        assert_eq!(separator_after(*b"\n\r"), b"\n");
        assert_eq!(separator_after(*b"ab"), b"\n\n");
    }

    #[test]
    fn only_https_http_1_1_bodies_without_any_length_are_refused_as_unreadable() {
        let ok = StatusCode::OK;
        let none = HeaderMap::new();
        let v11 = Version::HTTP_11;
        assert!(is_unreadable_close_delimited(v11, ok, &none, true));
        assert!(
            !is_unreadable_close_delimited(v11, ok, &none, false),
            "plain TCP reads it"
        );
        assert!(!is_unreadable_close_delimited(
            Version::HTTP_2,
            ok,
            &none,
            true
        ));
        assert!(!is_unreadable_close_delimited(
            Version::HTTP_10,
            ok,
            &none,
            true
        ));
        for status in [StatusCode::NO_CONTENT, StatusCode::NOT_MODIFIED] {
            assert!(
                !is_unreadable_close_delimited(v11, status, &none, true),
                "{status}"
            );
        }
        for (name, value) in [(CONTENT_LENGTH, "0"), (TRANSFER_ENCODING, "chunked")] {
            let mut headers = HeaderMap::new();
            headers.insert(name, HeaderValue::from_static(value));
            assert!(!is_unreadable_close_delimited(v11, ok, &headers, true));
        }
    }

    #[test]
    fn only_http_1_0_bodies_without_a_length_end_at_the_close() {
        let mut headers = HeaderMap::new();
        assert!(is_close_delimited(Version::HTTP_10, &headers));
        assert!(!is_close_delimited(Version::HTTP_11, &headers));
        headers.insert(CONTENT_LENGTH, HeaderValue::from_static("5"));
        assert!(!is_close_delimited(Version::HTTP_10, &headers));
    }

    #[test]
    fn rate_limit_and_request_id_headers_are_passed_on() {
        for name in [
            "retry-after",
            "x-ratelimit-remaining-requests",
            "anthropic-ratelimit-tokens-reset",
            "x-request-id",
            "request-id",
        ] {
            assert!(is_passed_on(&HeaderName::from_static(name)), "{name}");
        }
        for name in [
            "set-cookie",
            "content-length",
            "openai-organization",
            "server",
        ] {
            assert!(!is_passed_on(&HeaderName::from_static(name)), "{name}");
        }
    }
}
