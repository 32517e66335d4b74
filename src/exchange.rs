//! One request's way upstream: its targets (the provider asked for, then its fallbacks), each
//! tried with retries and backoff, and the reply in the route's shape once one answers.

use std::{
    borrow::Cow,
    rc::Rc,
    time::{Duration, Instant, SystemTime},
};

use actix_web::{
    http::{
        header::{self, HeaderName, HeaderValue},
        StatusCode,
    },
    rt::time::sleep,
    web::Bytes,
    HttpResponse,
};
use awc::Client;

use crate::{
    chat::{ChatRequest, Usage},
    completions::{self, ChunkWriter, OPENAI_ONLY_FIELDS},
    config::Config,
    error::ProxyError,
    limits::{Guards, RequestPermit, UpstreamSlots},
    metrics::Metrics,
    observe::{StreamReport, REQUEST_ID},
    providers::ChatProvider,
    retry::{self, Attempt},
    upstream::{self, Body, Relay, StreamContext, StreamErrors, Translated},
};

const PROXY_PROVIDER: HeaderName = HeaderName::from_static("x-proxy-provider");
const PROXY_MODEL: HeaderName = HeaderName::from_static("x-proxy-model");
const PROXY_ATTEMPTS: HeaderName = HeaderName::from_static("x-proxy-attempts");

/// The two ways in, which answer in different shapes.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Route {
    /// `POST /v1/chat/{provider}`: the normalized body, pass-through streams, our errors.
    Path,
    /// `POST /v1/chat/completions`: OpenAI's shapes throughout.
    FrontDoor,
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
    pub provider: &'r dyn ChatProvider,
    pub model: Cow<'r, str>,
    pub key: Result<Option<HeaderValue>, String>,
}

/// What the access log learns: who answered, after how many upstream calls.
#[derive(Debug, Default)]
pub struct Outcome {
    pub provider: Option<&'static str>,
    pub model: Option<String>,
    pub upstream_status: Option<u16>,
    pub attempts: u32,
    /// Time spent in upstream calls before the reply was handed over.
    pub upstream_time: Duration,
    /// A non-stream answer's token counts.
    pub usage: Option<Usage>,
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
/// `RETRY_MAX_WAIT_SECONDS`. Any other failure is answered at once. Nothing here is shared
/// between requests: one caller's failures never change how another's requests are treated.
pub async fn run(
    route: Route,
    state: &State<'_>,
    chat: &ChatRequest<'_>,
    targets: &[Target<'_>],
    max_retries: u32,
    permit: RequestPermit,
    outcome: &mut Outcome,
) -> Result<HttpResponse, ProxyError> {
    let config = state.config;
    let mut permit = Some(permit);
    let mut attempts = Vec::new();
    let mut last = None;
    // OpenAI's own fields go only to upstreams that speak OpenAI; copied once, when needed.
    let mut stripped = None;
    for (index, target) in targets.iter().enumerate() {
        let endpoint = target.provider.endpoint();
        let key = match &target.key {
            Ok(key) => key.as_ref(),
            Err(why) => {
                attempts.push(Attempt::skipped(endpoint.name, &target.model, why.clone()));
                continue;
            }
        };
        let request = if route == Route::FrontDoor && !target.provider.speaks_openai() {
            stripped.get_or_insert_with(|| {
                let mut copy = chat.clone();
                copy.remove_fields(&OPENAI_ONLY_FIELDS);
                copy
            })
        } else {
            chat
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
            outcome.upstream_headers.clear();
            let result = try_once(route, state, request, target, key, &mut permit, outcome).await;
            let Failed {
                error,
                retry: retryable,
            } = match result {
                Ok(mut response) => {
                    label(
                        &mut response,
                        endpoint.name,
                        &target.model,
                        outcome.attempts,
                    );
                    return Ok(response);
                }
                Err(failed) => failed,
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

/// One call to one upstream. Fails without having sent the caller anything.
async fn try_once(
    route: Route,
    state: &State<'_>,
    chat: &ChatRequest<'_>,
    target: &Target<'_>,
    key: Option<&HeaderValue>,
    permit: &mut Option<RequestPermit>,
    outcome: &mut Outcome,
) -> Result<HttpResponse, Failed> {
    let config = state.config;
    let provider = target.provider;
    let endpoint = provider.endpoint();
    let model = target.model.as_ref();
    let mut upstream_request = provider.translate_request(chat, model, key)?;
    let tls = upstream_request.url.scheme_str() == Some("https");
    upstream_request
        .headers
        .extend(endpoint.headers.iter().cloned());
    upstream_request
        .headers
        .push((REQUEST_ID, state.request_id.clone()));
    let slot = state.slots.acquire().await?;
    let sent = Instant::now();
    let upstream = upstream::send(state.client, upstream_request, config.http_timeout).await;
    let upstream = upstream.inspect_err(|_| outcome.upstream_time += sent.elapsed())?;
    state
        .metrics
        .upstream_first_byte(endpoint.name, sent.elapsed());
    let status = upstream.status();
    outcome.upstream_status = Some(status.as_u16());
    let passed_on = upstream::passed_on_headers(upstream.headers());

    if !status.is_success() {
        let body = upstream::read_body(upstream, config.max_response_bytes, config.http_timeout)
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
    if upstream::is_unreadable_close_delimited(upstream.version(), status, upstream.headers(), tls)
    {
        outcome.upstream_time += sent.elapsed();
        return Err(Failed::no_retry(ProxyError::BadUpstreamBody(
            "the body is delimited by the connection closing (HTTP/1.1 without Content-Length), \
             which the proxy cannot read over TLS"
                .into(),
        )));
    }

    let mut response = HttpResponse::build(StatusCode::OK);
    for (name, value) in &outcome.upstream_headers {
        response.insert_header((name.clone(), value.clone()));
    }
    if chat.stream && !upstream::is_event_stream(upstream.headers()) {
        let body = whole_answer_as_stream(route, state, chat, target, upstream).await;
        outcome.upstream_time += sent.elapsed();
        let (body, usage) = body.map_err(Failed::no_retry)?;
        outcome.usage = usage;
        return Ok(response
            .insert_header((
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/event-stream"),
            ))
            .insert_header((header::CACHE_CONTROL, HeaderValue::from_static("no-cache")))
            .body(body));
    }
    if chat.stream {
        let mut body = Body::new(upstream, config.http_timeout);
        let first = upstream::peek_first_event(&mut body).await;
        outcome.upstream_time += sent.elapsed();
        let first = first.map_err(|error| match error {
            ProxyError::StreamEvent(_) => Failed::from(error),
            other => Failed::no_retry(other),
        })?;
        let report = Rc::new(StreamReport::default());
        outcome.stream_report = Some(report.clone());
        response
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
        let translator = match route {
            Route::FrontDoor => provider.stream_translator(),
            Route::Path => None,
        };
        return Ok(match (route, translator) {
            (_, Some(translator)) => {
                let writer = ChunkWriter::new(model, chat.include_usage);
                response.streaming(Translated::new(
                    body,
                    first,
                    translator,
                    writer,
                    config.sse_heartbeat,
                    context,
                ))
            }
            (Route::Path, None) => response.streaming(Relay::new(
                body,
                first,
                StreamErrors::Proxy,
                config.passthrough_heartbeat,
                context,
            )),
            (Route::FrontDoor, None) => response.streaming(Relay::new(
                body,
                first,
                StreamErrors::OpenAi,
                config.passthrough_heartbeat,
                context,
            )),
        });
    }

    let body = upstream::read_body(upstream, config.max_response_bytes, config.http_timeout).await;
    outcome.upstream_time += sent.elapsed();
    let body = body.map_err(Failed::no_retry)?;
    drop(slot);
    // Every answer is checked to be the provider's documented shape, even one passed on as
    // it came: an HTML page or a cut body is a 502 on both routes.
    let normalized = provider
        .translate_response(&body, model)
        .map_err(Failed::no_retry)?;
    outcome.usage = normalized.usage;
    let json = match route {
        // Already a chat.completion: passed on as it came, tool calls and all.
        Route::FrontDoor if provider.speaks_openai() => body.clone(),
        Route::FrontDoor => Bytes::from(completions::completion_body(&normalized)),
        Route::Path => Bytes::from(
            serde_json::to_vec(&normalized)
                .map_err(|e| Failed::no_retry(ProxyError::BadUpstreamBody(e.to_string())))?,
        ),
    };
    Ok(response.content_type("application/json").body(json))
}

/// A 2xx answer to a stream request that is not an event stream: an upstream that ignored
/// `stream` and sent the whole answer as JSON. The front door can still give the caller the
/// stream it asked for, made from the answer; the path route passes the upstream's own stream
/// format through, which this is not, so it is a 502 naming what came.
async fn whole_answer_as_stream(
    route: Route,
    state: &State<'_>,
    chat: &ChatRequest<'_>,
    target: &Target<'_>,
    upstream: awc::ClientResponse,
) -> Result<(Bytes, Option<Usage>), ProxyError> {
    let config = state.config;
    let content_type = upstream.headers().get(header::CONTENT_TYPE).map_or_else(
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
    if route == Route::Path {
        return Err(not_a_stream());
    }
    let body =
        upstream::read_body(upstream, config.max_response_bytes, config.http_timeout).await?;
    let provider = target.provider;
    if provider.speaks_openai() {
        let stream = completions::stream_of_completion(&body, chat.include_usage)
            .ok_or_else(not_a_stream)?;
        return Ok((Bytes::from(stream), completions::usage_of(&body)));
    }
    let normalized = provider
        .translate_response(&body, &target.model)
        .map_err(|_| not_a_stream())?;
    let stream = completions::stream_of_response(&normalized, chat.include_usage);
    Ok((Bytes::from(stream), normalized.usage))
}
