//! One request's way upstream: the doors it can come through, its targets (the provider asked
//! for, then its fallbacks), each tried with retries and backoff, and the reply in the door's
//! shape once one answers: passed through when the upstream speaks the door's format,
//! translated through the model when not.

use std::{
    borrow::Cow,
    cell::OnceCell,
    pin::Pin,
    rc::Rc,
    task::{Context, Poll},
    time::{Duration, Instant, SystemTime},
};

use actix_web::{
    body::{BodySize, BoxBody, MessageBody},
    http::{
        header::{self, HeaderName, HeaderValue},
        StatusCode,
    },
    rt::time::sleep,
    web::Bytes,
    HttpResponse,
};
use awc::Client;

use serde::Serialize;

use crate::{
    config::Config,
    error::Attempt,
    error::ProxyError,
    formats::{self, anthropic, openai, Format, PassThrough, StreamEncoder, Upstream},
    gateway::health::{Clock, Deployment, InFlight, Verdict},
    gateway::retry,
    limits::{Guards, RequestPermit, UpstreamSlots},
    metrics::Metrics,
    model::{Part, Request, Response, Usage},
    upstream::{
        self, report::StreamReport, Body, Relay, StreamContext, StreamErrors, Translated,
        REQUEST_ID,
    },
};

const PROXY_PROVIDER: HeaderName = HeaderName::from_static("x-proxy-provider");
const PROXY_MODEL: HeaderName = HeaderName::from_static("x-proxy-model");
const PROXY_ATTEMPTS: HeaderName = HeaderName::from_static("x-proxy-attempts");
const PROXY_GROUP: HeaderName = HeaderName::from_static("x-proxy-group");
const PROXY_DEPLOYMENT: HeaderName = HeaderName::from_static("x-proxy-deployment");

/// The ways in, each answering in its own shapes.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Door {
    /// `POST /v1/chat/{provider}`: an OpenAI-style body, the normalized answer, pass-through
    /// streams, our errors.
    Path,
    /// `POST /v1/chat/completions`: OpenAI's shapes throughout.
    OpenAi,
    /// `POST /v1/messages`: Anthropic's shapes throughout.
    Anthropic,
}

impl Door {
    /// The wire format of the bodies that come through the door.
    pub fn format(self) -> Format {
        match self {
            Door::Path | Door::OpenAi => Format::OpenAi,
            Door::Anthropic => Format::Anthropic,
        }
    }

    /// The error response in the door's shape.
    pub fn error_response(self, error: &ProxyError, provider: Option<&str>) -> HttpResponse {
        match self {
            Door::Path => error.to_response(provider),
            Door::OpenAi => error.to_openai_response(provider),
            Door::Anthropic => error.to_anthropic_response(provider),
        }
    }

    fn stream_errors(self) -> StreamErrors {
        match self {
            Door::Path => StreamErrors::Proxy,
            Door::OpenAi => StreamErrors::OpenAi,
            Door::Anthropic => StreamErrors::Anthropic,
        }
    }

    /// The encoder of a translated stream for this door; the path route passes streams
    /// through and has none.
    fn encoder(self, model: &str, include_usage: bool) -> Option<Box<dyn StreamEncoder>> {
        match self {
            Door::Path => None,
            Door::OpenAi => Some(Box::new(openai::ChunkEncoder::new(model, include_usage))),
            Door::Anthropic => Some(Box::new(anthropic::EventEncoder::new(model))),
        }
    }
}

/// A caller's request as its door read it: the few fields every route needs, the body as it
/// came (for upstreams of the door's own format), and the request in the model, parsed once
/// and only when an upstream of another format needs it.
pub struct Incoming<'a> {
    pub door: Door,
    pub body: &'a Bytes,
    /// `model` as the caller wrote it.
    pub model: &'a str,
    pub stream: bool,
    pub include_usage: bool,
    /// The caller's query string, passed on to an upstream of the door's format.
    pub query: Option<&'a str>,
    /// The caller's headers of the door's format (`anthropic-beta`), passed on likewise.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// Top-level fields of the proxy's own, never passed on.
    pub remove: &'static [&'static str],
    parsed: OnceCell<Result<Request, String>>,
}

impl<'a> Incoming<'a> {
    pub fn new(door: Door, body: &'a Bytes, model: &'a str, stream: bool) -> Self {
        Self {
            door,
            body,
            model,
            stream,
            include_usage: false,
            query: None,
            headers: Vec::new(),
            remove: &[],
            parsed: OnceCell::new(),
        }
    }

    /// With the request already parsed (the path route validates every body up front).
    pub fn with_request(mut self, request: Request) -> Self {
        self.parsed = OnceCell::from(Ok(request));
        self
    }

    /// The request in the model, parsed by the door's format on first use.
    pub fn request(&self) -> Result<&Request, ProxyError> {
        let parsed = self.parsed.get_or_init(|| match self.door.format() {
            Format::Anthropic => anthropic::door::parse(self.body),
            _ => openai::door::parse(self.body),
        });
        parsed
            .as_ref()
            .map_err(|why| ProxyError::InvalidRequest(why.clone()))
    }
}

/// What one worker shares with every request it serves.
pub struct State<'s> {
    pub config: &'s Config,
    pub client: &'s Client,
    pub slots: &'s UpstreamSlots,
    pub metrics: &'s Metrics,
    /// Sent upstream as `X-Request-Id`, and named in every log line about the request.
    pub request_id: &'s HeaderValue,
}

/// One provider and model to try, with the key for it, or why it cannot be tried.
pub struct Target<'r> {
    pub upstream: &'r dyn Upstream,
    pub model: Cow<'r, str>,
    pub key: Result<Option<HeaderValue>, String>,
    /// A group's deployment: its attempts count toward its health and latency.
    pub tracked: Option<Tracked<'r>>,
}

/// A group's deployment, as a target sees it.
#[derive(Clone, Copy)]
pub struct Tracked<'r> {
    pub group: &'r str,
    /// `provider/model`.
    pub deployment: &'r str,
    pub health: &'r Deployment,
    pub clock: &'r Clock,
}

/// What the access log learns: who answered, after how many upstream calls.
#[derive(Debug, Default)]
pub struct Outcome {
    pub provider: Option<&'static str>,
    pub model: Option<String>,
    /// The group of the last deployment tried, when the model named a group.
    pub group: Option<String>,
    pub upstream_status: Option<u16>,
    pub attempts: u32,
    /// Time spent in upstream calls before the reply was handed over.
    pub upstream_time: Duration,
    /// The last attempt's time to its answer's head.
    pub first_byte: Option<Duration>,
    /// A non-stream answer's token counts.
    pub usage: Option<Usage>,
    /// The model a non-stream answer says answered (it may be a dated snapshot of the one
    /// asked for), which is priced first.
    pub answered_model: Option<String>,
    /// A stream's token counts and ending, filled in as it passes.
    pub stream_report: Option<Rc<StreamReport>>,
    /// The passed-on headers (rate limits, request ids) of the last upstream answer, for an
    /// error made from it: a 502 for an unusable 2xx still tells the caller its rate limits.
    pub upstream_headers: Vec<(HeaderName, HeaderValue)>,
}

/// A failed try, and whether another may be made: nothing once a 2xx head has arrived (the
/// upstream may have billed for the answer) except an in-band error as a stream's first event.
struct Failed {
    error: ProxyError,
    retry: bool,
}

impl From<ProxyError> for Failed {
    fn from(error: ProxyError) -> Self {
        Self {
            retry: retry::is_retryable(&error),
            error,
        }
    }
}

impl Failed {
    fn no_retry(error: ProxyError) -> Self {
        Self {
            error,
            retry: false,
        }
    }
}

/// Tries each target in order, each up to `1 + max_retries` times, until one answers.
///
/// Retried: failures before any byte reached the caller that may pass (see
/// [`retry::is_retryable`]), as long as no 2xx head has arrived. A target is left for the next
/// when its retries are spent, or when the upstream asks to wait longer than
/// `RETRY_MAX_WAIT_SECONDS`. Any other failure is answered at once. Only a group's
/// deployments share anything between requests: each attempt on one reports to its health
/// and latency state (see [`crate::gateway::health`] for why a caller's own 4xx never counts).
pub async fn run(
    state: &State<'_>,
    incoming: &Incoming<'_>,
    targets: &[Target<'_>],
    max_retries: u32,
    permit: RequestPermit,
    outcome: &mut Outcome,
) -> Result<HttpResponse, ProxyError> {
    let config = state.config;
    let mut permit = Some(permit);
    let mut attempts = Vec::new();
    let mut last = None;
    for (index, target) in targets.iter().enumerate() {
        let endpoint = target.upstream.endpoint();
        let key = match &target.key {
            Ok(key) => key.as_ref(),
            Err(why) => {
                attempts.push(Attempt::skipped(endpoint.name, &target.model, why.clone()));
                continue;
            }
        };
        if index > 0 {
            state.metrics.fallback(endpoint.name);
        }
        for retry in 0..=max_retries {
            if retry > 0 {
                state.metrics.retry(endpoint.name);
            }
            outcome.attempts += 1;
            outcome.provider = Some(endpoint.name);
            outcome.model = Some(target.model.clone().into_owned());
            outcome.group = target.tracked.map(|tracked| tracked.group.to_owned());
            outcome.upstream_headers.clear();
            outcome.first_byte = None;
            // Counted in flight until the answer's last byte (a stream's end) or the failure.
            let in_flight = target.tracked.map(|t| t.health.start(t.clock.now()));
            let result = try_once(state, incoming, target, key, &mut permit, outcome).await;
            if let Some(tracked) = target.tracked {
                let held_key = endpoint.held_key.is_some();
                report(tracked, &result, outcome.first_byte, held_key);
            }
            let Failed {
                error,
                retry: retryable,
            } = match result {
                Ok(mut response) => {
                    if let Some(in_flight) = in_flight {
                        response = holding(response, in_flight);
                    }
                    label(
                        &mut response,
                        endpoint.name,
                        &target.model,
                        outcome.attempts,
                    );
                    if let Some(tracked) = target.tracked {
                        label_deployment(&mut response, tracked);
                    }
                    return Ok(response);
                }
                Err(failed) => {
                    drop(in_flight);
                    failed
                }
            };
            let error = error.redacted(key);
            let attempt = Attempt::failed(endpoint.name, &target.model, &error);
            if retry::is_retryable(&error) || attempt.status.is_some() {
                state.metrics.upstream_error(
                    endpoint.name,
                    attempt.status,
                    attempt.failure.as_deref(),
                );
            }
            attempts.push(attempt);
            if !retryable {
                return Err(exhausted(error, attempts));
            }
            let asked = match &error {
                ProxyError::Upstream { headers, .. } => {
                    let headers = headers.iter().cloned().collect();
                    retry::retry_after(&headers, SystemTime::now())
                }
                _ => None,
            };
            if retry == max_retries || asked.is_some_and(|wait| wait > config.retry_max_wait) {
                last = Some(error);
                break;
            }
            let wait = asked
                .unwrap_or_else(|| retry::backoff(config.retry_base, retry, retry::random()))
                .min(config.retry_max_wait);
            log::info!(
                "request_id={} {} failed ({error}); retrying in {} ms",
                state.request_id.to_str().unwrap_or("-"),
                endpoint.name,
                wait.as_millis()
            );
            last = Some(error);
            sleep(wait).await;
        }
    }
    Err(match last {
        Some(last) => exhausted(last, attempts),
        // Every target was skipped: only fallbacks can be, so the primary had a key... unless
        // the caller named no usable target at all.
        None => ProxyError::Exhausted {
            last: Box::new(ProxyError::MissingKey),
            attempts,
        },
    })
}

/// A streamed answer keeps its attempt in flight until its body ends, so `least_busy` counts
/// open streams; a whole body is written at once and needs no guard.
fn holding(response: HttpResponse, in_flight: InFlight) -> HttpResponse {
    if !matches!(response.body().size(), BodySize::Stream) {
        return response;
    }
    response.map_body(|_, body| BoxBody::new(Holding { body, in_flight }))
}

/// A body and the in-flight count it holds until it is dropped.
struct Holding {
    body: BoxBody,
    #[allow(dead_code)] // held for its `Drop`
    in_flight: InFlight,
}

impl MessageBody for Holding {
    type Error = <BoxBody as MessageBody>::Error;

    fn size(&self) -> BodySize {
        self.body.size()
    }

    fn poll_next(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Bytes, Self::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_next(cx)
    }
}

/// The error for a request that is over: its last failure, with every attempt when there was
/// more than one.
fn exhausted(last: ProxyError, attempts: Vec<Attempt>) -> ProxyError {
    if attempts.len() <= 1 {
        return last;
    }
    ProxyError::Exhausted {
        last: Box::new(last),
        attempts,
    }
}

/// Who answered and after how many upstream calls, on every reply.
pub fn label(response: &mut HttpResponse, provider: &str, model: &str, attempts: u32) {
    let headers = response.headers_mut();
    if let Ok(value) = HeaderValue::from_str(provider) {
        headers.insert(PROXY_PROVIDER, value);
    }
    if let Ok(value) = HeaderValue::from_str(model) {
        headers.insert(PROXY_MODEL, value);
    }
    headers.insert(PROXY_ATTEMPTS, HeaderValue::from(attempts));
}

/// What an attempt on a group's deployment says about its health, and its time to first byte
/// when it answered 2xx (a fast error must not make a failing deployment look fast).
fn report(
    tracked: Tracked<'_>,
    result: &Result<HttpResponse, Failed>,
    first_byte: Option<Duration>,
    held_key: bool,
) {
    let now = tracked.clock.now();
    let verdict = match result {
        Ok(_) => {
            if let Some(ttfb) = first_byte {
                tracked.health.sample_ttfb(ttfb, now);
            }
            Verdict::Success
        }
        Err(failed) => Verdict::of(&failed.error, held_key),
    };
    tracked.health.record(verdict, now);
}

/// Which group and deployment answered.
fn label_deployment(response: &mut HttpResponse, tracked: Tracked<'_>) {
    let headers = response.headers_mut();
    if let Ok(value) = HeaderValue::from_str(tracked.group) {
        headers.insert(PROXY_GROUP, value);
    }
    if let Ok(value) = HeaderValue::from_str(tracked.deployment) {
        headers.insert(PROXY_DEPLOYMENT, value);
    }
}

/// The upstream call for one target: the body as it came when the upstream speaks the door's
/// format, else the request in the model translated into the upstream's.
fn upstream_request(
    incoming: &Incoming<'_>,
    target: &Target<'_>,
    key: Option<&HeaderValue>,
) -> Result<formats::UpstreamRequest, ProxyError> {
    let upstream = target.upstream;
    if upstream.format() == incoming.door.format() {
        let pass = PassThrough {
            body: incoming.body,
            model: incoming.model,
            stream: incoming.stream,
            query: incoming.query,
            headers: &incoming.headers,
            remove: incoming.remove,
        };
        return upstream.pass_through(&pass, &target.model, key);
    }
    let request = incoming.request()?;
    if let Some(field) = request.unportable.first() {
        return Err(formats::unsupported(
            upstream.endpoint().name,
            field,
            format!(
                "only {} upstreams can take it",
                match incoming.door.format() {
                    Format::Anthropic => "Anthropic",
                    _ => "OpenAI-format",
                }
            ),
        ));
    }
    upstream.translate_request(request, &target.model, key)
}

/// One call to one upstream. Fails without having sent the caller anything.
async fn try_once(
    state: &State<'_>,
    incoming: &Incoming<'_>,
    target: &Target<'_>,
    key: Option<&HeaderValue>,
    permit: &mut Option<RequestPermit>,
    outcome: &mut Outcome,
) -> Result<HttpResponse, Failed> {
    let config = state.config;
    let upstream = target.upstream;
    let endpoint = upstream.endpoint();
    let model = target.model.as_ref();
    let door = incoming.door;
    let same_format = upstream.format() == door.format();
    let mut upstream_request = upstream_request(incoming, target, key)?;
    let tls = upstream_request.url.scheme_str() == Some("https");
    upstream_request
        .headers
        .extend(endpoint.headers.iter().cloned());
    upstream_request
        .headers
        .push((REQUEST_ID, state.request_id.clone()));
    let slot = state.slots.acquire().await?;
    let sent = Instant::now();
    let response = upstream::send(state.client, upstream_request, config.http_timeout).await;
    let response = response.inspect_err(|_| outcome.upstream_time += sent.elapsed())?;
    outcome.first_byte = Some(sent.elapsed());
    state
        .metrics
        .upstream_first_byte(endpoint.name, sent.elapsed());
    let status = response.status();
    outcome.upstream_status = Some(status.as_u16());
    let passed_on = upstream::passed_on_headers(response.headers());

    if !status.is_success() {
        let body = upstream::read_body(response, config.max_response_bytes, config.http_timeout)
            .await
            .inspect_err(|_| outcome.upstream_time += sent.elapsed())?;
        outcome.upstream_time += sent.elapsed();
        return Err(ProxyError::Upstream {
            status,
            body,
            headers: passed_on,
        }
        .into());
    }
    // Kept for any error made from this answer below; the reply takes copies (each a
    // reference count), so no list is built twice.
    outcome.upstream_headers = passed_on;
    // From here on a 2xx head has arrived: the upstream may already be generating (and billing)
    // the answer, so no failure but an in-band error event is retried.
    if upstream::is_unreadable_close_delimited(response.version(), status, response.headers(), tls)
    {
        outcome.upstream_time += sent.elapsed();
        return Err(Failed::no_retry(ProxyError::BadUpstreamBody(
            "the body is delimited by the connection closing (HTTP/1.1 without Content-Length), \
             which the proxy cannot read over TLS"
                .into(),
        )));
    }

    let mut reply = HttpResponse::build(StatusCode::OK);
    for (name, value) in &outcome.upstream_headers {
        reply.insert_header((name.clone(), value.clone()));
    }
    if incoming.stream && !upstream::is_event_stream(response.headers()) {
        let body = whole_answer_as_stream(state, incoming, target, response).await;
        outcome.upstream_time += sent.elapsed();
        let (body, usage) = body.map_err(Failed::no_retry)?;
        outcome.usage = usage;
        return Ok(reply
            .insert_header((
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/event-stream"),
            ))
            .insert_header((header::CACHE_CONTROL, HeaderValue::from_static("no-cache")))
            .body(body));
    }
    if incoming.stream {
        let mut body = Body::new(response, config.http_timeout);
        let first = upstream::peek_first_event(&mut body).await;
        outcome.upstream_time += sent.elapsed();
        let first = first.map_err(|error| match error {
            ProxyError::StreamEvent(_) => Failed::from(error),
            other => Failed::no_retry(other),
        })?;
        let report = Rc::new(StreamReport::default());
        outcome.stream_report = Some(report.clone());
        reply
            .insert_header((
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/event-stream"),
            ))
            .insert_header((header::CACHE_CONTROL, HeaderValue::from_static("no-cache")))
            .insert_header(("x-accel-buffering", HeaderValue::from_static("no")));
        let context = StreamContext {
            provider: endpoint.name,
            request_id: state.request_id.clone(),
            report,
            key: key.cloned(),
            max_event_bytes: config.max_event_bytes,
            guards: Guards {
                request: permit.take(),
                upstream: Some(slot),
            },
        };
        // The path route passes every stream through; a door passes through its own format
        // and translates any other.
        let encoder = match same_format {
            true => None,
            false => door.encoder(model, incoming.include_usage),
        };
        return Ok(match encoder {
            Some(encoder) => reply.streaming(Translated::new(
                body,
                first,
                upstream.stream_decoder(),
                encoder,
                config.sse_heartbeat,
                context,
            )),
            None => reply.streaming(Relay::new(
                body,
                first,
                door.stream_errors(),
                config.passthrough_heartbeat,
                context,
            )),
        });
    }

    let body = upstream::read_body(response, config.max_response_bytes, config.http_timeout).await;
    outcome.upstream_time += sent.elapsed();
    let body = body.map_err(Failed::no_retry)?;
    drop(slot);
    // Every answer is checked to be the provider's documented shape, even one passed on as
    // it came: an HTML page or a cut body is a 502 on every route.
    let answer = upstream
        .translate_response(&body, model)
        .map_err(Failed::no_retry)?;
    outcome.usage = answer.usage;
    outcome.answered_model = Some(answer.model.clone());
    let json = match door {
        // In the door's own format already: passed on as it came.
        Door::OpenAi | Door::Anthropic if same_format => body,
        Door::Path => Bytes::from(normalized(endpoint.name, &answer)),
        Door::OpenAi => Bytes::from(openai::door::completion(&answer)),
        Door::Anthropic => Bytes::from(anthropic::door::message(&answer)),
    };
    Ok(reply.content_type("application/json").body(json))
}

/// The path route's answer: one shape whatever the provider.
pub fn normalized(provider: &str, answer: &Response) -> Vec<u8> {
    #[derive(Serialize)]
    struct Normalized<'a> {
        provider: &'a str,
        model: &'a str,
        content: Cow<'a, str>,
        #[serde(skip_serializing_if = "Vec::is_empty")]
        tool_calls: Vec<Call<'a>>,
        #[serde(skip_serializing_if = "Option::is_none")]
        reasoning: Option<String>,
        stop_reason: Option<&'a str>,
        native_stop_reason: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        usage: Option<Usage>,
    }
    #[derive(Serialize)]
    struct Call<'a> {
        id: &'a str,
        name: &'a str,
        /// JSON when the model wrote valid JSON, else its text as a string.
        arguments: Arguments<'a>,
    }
    #[derive(Serialize)]
    #[serde(untagged)]
    enum Arguments<'a> {
        Json(&'a serde_json::value::RawValue),
        Text(&'a str),
    }
    let tool_calls = answer
        .tool_calls()
        .map(|call| Call {
            id: &call.id,
            name: &call.name,
            arguments: match serde_json::from_str(&call.arguments) {
                Ok(json) => Arguments::Json(json),
                Err(_) => Arguments::Text(&call.arguments),
            },
        })
        .collect();
    let body = Normalized {
        provider,
        model: &answer.model,
        // One text part, the common answer, is borrowed rather than copied.
        content: match answer.content.as_slice() {
            [Part::Text { text, .. }] => Cow::Borrowed(text),
            _ => Cow::Owned(answer.text()),
        },
        tool_calls,
        reasoning: answer.reasoning(),
        stop_reason: answer.stop_reason.as_ref().map(|reason| reason.as_str()),
        native_stop_reason: answer.native_stop_reason.as_deref(),
        usage: answer.usage,
    };
    serde_json::to_vec(&body).expect("a normalized answer always serializes")
}

/// A 2xx answer to a stream request that is not an event stream: an upstream that ignored
/// `stream` and sent the whole answer as JSON. A door can still give the caller the stream it
/// asked for, made from the answer; the path route passes the upstream's own stream format
/// through, which this is not, so it is a 502 naming what came.
async fn whole_answer_as_stream(
    state: &State<'_>,
    incoming: &Incoming<'_>,
    target: &Target<'_>,
    response: awc::ClientResponse,
) -> Result<(Bytes, Option<Usage>), ProxyError> {
    let config = state.config;
    let content_type = response.headers().get(header::CONTENT_TYPE).map_or_else(
        || "no Content-Type".to_owned(),
        |value| {
            String::from_utf8_lossy(value.as_bytes())
                .chars()
                .take(100)
                .collect()
        },
    );
    let not_a_stream = || {
        ProxyError::BadUpstreamBody(format!(
            "a stream was asked for, but the upstream answered {content_type}, not \
             text/event-stream"
        ))
    };
    let Some(mut encoder) = incoming.door.encoder(&target.model, incoming.include_usage) else {
        return Err(not_a_stream());
    };
    let body =
        upstream::read_body(response, config.max_response_bytes, config.http_timeout).await?;
    let answer = target
        .upstream
        .translate_response(&body, &target.model)
        .map_err(|_| not_a_stream())?;
    let mut out = Vec::with_capacity(body.len() + 256);
    for event in answer.events() {
        encoder.event(event, &mut out);
    }
    encoder.finish(&mut out);
    Ok((Bytes::from(out), answer.usage))
}

/// `POST /v1/messages/count_tokens` to an Anthropic upstream: one call, its answer as it came.
pub async fn count_tokens(
    state: &State<'_>,
    incoming: &Incoming<'_>,
    upstream: &dyn Upstream,
    model: &str,
    key: Option<&HeaderValue>,
    outcome: &mut Outcome,
) -> Result<HttpResponse, ProxyError> {
    let config = state.config;
    let endpoint = upstream.endpoint();
    let pass = PassThrough {
        body: incoming.body,
        model: incoming.model,
        stream: false,
        query: None,
        headers: &incoming.headers,
        remove: incoming.remove,
    };
    let mut call = upstream.pass_through(&pass, model, key)?;
    let url = match incoming.query {
        Some(query) => endpoint.url(&format!("messages/count_tokens?{query}")),
        None => endpoint.url("messages/count_tokens"),
    };
    call.url = url;
    call.headers.extend(endpoint.headers.iter().cloned());
    call.headers.push((REQUEST_ID, state.request_id.clone()));
    outcome.attempts = 1;
    outcome.provider = Some(endpoint.name);
    outcome.model = Some(model.to_owned());
    let _slot = state.slots.acquire().await?;
    let sent = Instant::now();
    let result = async {
        let response = upstream::send(state.client, call, config.http_timeout).await?;
        let status = response.status();
        outcome.upstream_status = Some(status.as_u16());
        let headers = upstream::passed_on_headers(response.headers());
        let body =
            upstream::read_body(response, config.max_response_bytes, config.http_timeout).await?;
        if !status.is_success() {
            return Err(ProxyError::Upstream {
                status,
                body,
                headers,
            });
        }
        let mut reply = HttpResponse::Ok();
        for header in headers {
            reply.insert_header(header);
        }
        Ok(reply.content_type("application/json").body(body))
    }
    .await;
    outcome.upstream_time += sent.elapsed();
    result.map_err(|error| error.redacted(key))
}
