//! Request ids, the access log and request metrics: one middleware around every request, which
//! writes its line and counts it when the response (for a stream: its last byte) is done.

use std::{
    pin::Pin,
    rc::Rc,
    sync::atomic::{AtomicU64, Ordering},
    task::{Context, Poll},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use actix_web::{
    body::{BodySize, BoxBody, MessageBody},
    dev::{ServiceRequest, ServiceResponse},
    http::header::{HeaderName, HeaderValue},
    middleware::Next,
    web::{self, Bytes},
    Error, HttpMessage,
};
use serde::Serialize;

use crate::upstream::{
    report::{Ending, StreamReport},
    REQUEST_ID,
};
use crate::{
    config::prices::PriceTable,
    model::cost::{self, Cost},
};
use crate::{
    config::Config,
    gateway::targets::Registry,
    keys::{self, Keyring},
    limits::RequestLimit,
    metrics,
    metrics::Metrics,
    model::Usage,
    store::UsageRecord,
};

/// What a non-stream answer cost, in USD, when its price is known.
pub const PROXY_COST: HeaderName = HeaderName::from_static("x-proxy-cost-usd");

/// The id of the request being served, in its extensions.
#[derive(Clone, Debug)]
pub struct RequestId(pub HeaderValue);

/// What a handler learned, left in the response's extensions for the log and the metrics.
#[derive(Clone, Debug, Default)]
pub struct AccessInfo {
    pub provider: Option<&'static str>,
    pub model: Option<String>,
    pub upstream_status: Option<u16>,
    pub stream: bool,
    pub attempts: u32,
    /// Time spent in upstream calls before the response was handed over.
    pub upstream_time: Duration,
    /// When the handler handed the response over.
    pub handled_at: Option<Instant>,
    /// Token counts of a non-stream answer.
    pub usage: Option<Usage>,
    /// The model a non-stream answer says answered, priced before `model`.
    pub answered_model: Option<String>,
    /// What a stream reports as it passes: its token counts, and whether the upstream broke it.
    pub stream_report: Option<Rc<StreamReport>>,
    /// The `routes` rule that chose where the request went: its name or `routes[i]`, as sent
    /// in `X-Proxy-Rule`.
    pub rule: Option<HeaderValue>,
    /// The group whose deployment answered (or was tried last), when the model named one; the
    /// deployment is `provider` and `model`.
    pub group: Option<String>,
    /// The issued key that called, by id.
    pub key_id: Option<String>,
    /// Else the keyed fingerprint of the caller's own key (with a store only).
    pub caller: Option<String>,
    /// The issued key's place among its requests in flight, held until the answer's end.
    pub admission: Option<Rc<crate::keys::Admission>>,
    /// Answered from the response cache: it cost nothing.
    pub cached: bool,
}

/// The caller's `X-Request-Id` when it is printable and at most 128 characters; else a new one.
pub fn request_id(given: Option<&HeaderValue>) -> HeaderValue {
    let usable = given.filter(|value| {
        let bytes = value.as_bytes();
        (1..=128).contains(&bytes.len()) && bytes.iter().all(|b| (0x21..=0x7e).contains(b))
    });
    match usable {
        Some(value) => value.clone(),
        None => new_request_id(),
    }
}

fn new_request_id() -> HeaderValue {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    HeaderValue::from_str(&format!("req_{nanos:016x}{n:06x}")).expect("hex is a valid header")
}

/// The route label of a path: one of a fixed few.
fn route_of(path: &str) -> &'static str {
    match path {
        "/v1/chat/completions" => "completions",
        "/v1/messages" => "messages",
        "/v1/messages/count_tokens" => "count_tokens",
        "/v1/models" => "models",
        "/healthz" => "healthz",
        "/metrics" => "metrics",
        _ if path.starts_with("/v1/chat/") => "chat",
        _ if path == "/dashboard" || path.starts_with("/dashboard/") => "dashboard",
        _ => "other",
    }
}

/// The middleware: gives the request its id, echoes it, and logs and counts the request when
/// its body is done.
pub async fn observe(
    request: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, Error> {
    let started = Instant::now();
    let id = request_id(request.headers().get(REQUEST_ID));
    request.extensions_mut().insert(RequestId(id.clone()));
    let method = request.method().to_string();
    let path = request.path().to_owned();
    let metrics = request.app_data::<web::Data<Metrics>>().cloned();
    let json = request
        .app_data::<web::Data<Config>>()
        .is_some_and(|config| config.log_json);
    let prices = request.app_data::<web::Data<PriceTable>>().cloned();
    let keyring = request.app_data::<web::Data<Keyring>>().cloned();
    let mut response = next.call(request).await?;
    response.headers_mut().insert(REQUEST_ID, id.clone());
    let info = response
        .response()
        .extensions()
        .get::<AccessInfo>()
        .cloned()
        .unwrap_or_default();
    // A stream's cost is known at its end, in the log; an answer's is known now.
    let answer_cost = match info.stream {
        true => None,
        false => cost_of(
            prices.as_ref().map(|p| p.get_ref()),
            &info,
            info.usage.as_ref(),
        ),
    };
    if let Some(cost) = answer_cost {
        if let Ok(value) = HeaderValue::from_str(&cost::format_usd(cost.usd)) {
            response.headers_mut().insert(PROXY_COST, value);
        }
    }
    // A body with nothing to send may never be polled: it is whole from the start.
    let empty = matches!(
        response.response().body().size(),
        BodySize::None | BodySize::Sized(0)
    );
    let record = Record {
        id,
        method,
        route: route_of(&path),
        path,
        status: response.status().as_u16(),
        info,
        started,
        first_byte: None,
        ended: empty,
        metrics,
        json,
        prices,
        answer_cost,
        keyring,
    };
    Ok(response.map_body(|_, body| Observed {
        body: BoxBody::new(body),
        record: Some(record),
    }))
}

/// What is logged and counted once a response is done.
struct Record {
    id: HeaderValue,
    method: String,
    path: String,
    route: &'static str,
    status: u16,
    info: AccessInfo,
    started: Instant,
    first_byte: Option<Instant>,
    /// Whether the body was sent to its end.
    ended: bool,
    metrics: Option<web::Data<Metrics>>,
    json: bool,
    prices: Option<web::Data<PriceTable>>,
    /// A non-stream answer's cost, as its header gave it.
    answer_cost: Option<Cost>,
    /// Where usage is charged and recorded, when the proxy has a store.
    keyring: Option<web::Data<Keyring>>,
}

/// What an answer cost: its usage priced by the table, as the model the upstream says
/// answered, else the one asked for. `None` when anything is unknown.
fn cost_of(prices: Option<&PriceTable>, info: &AccessInfo, usage: Option<&Usage>) -> Option<Cost> {
    let streamed = info.stream_report.as_ref().and_then(|s| s.answered_model());
    cost::cost_of(
        prices?,
        info.provider?,
        info.answered_model.as_deref().or(streamed.as_deref()),
        info.model.as_deref()?,
        usage?,
    )
}

impl Record {
    /// How the response ended: the stream's own failure first, then whether it was sent whole.
    fn ending(&self) -> Ending {
        let broken = self.info.stream_report.as_ref().and_then(|s| s.broken());
        match broken {
            Some(how) => how,
            None if self.ended => Ending::Whole,
            None => Ending::ClientClosed,
        }
    }

    fn finish(self) {
        let duration = self.started.elapsed();
        let outcome = self.ending().label();
        let usage = self.info.usage.or_else(|| {
            self.info
                .stream_report
                .as_ref()
                .and_then(|stream| stream.usage())
        });
        let cost = self.answer_cost.or_else(|| {
            cost_of(
                self.prices.as_ref().map(|p| p.get_ref()),
                &self.info,
                usage.as_ref(),
            )
        });
        let handled = self
            .info
            .handled_at
            .map_or(duration, |at| at.duration_since(self.started));
        if let Some(metrics) = &self.metrics {
            if self.route != "metrics" {
                metrics.finished(&metrics::Finished {
                    route: self.route,
                    provider: self.info.provider,
                    model: self.info.model.as_deref(),
                    status: self.status,
                    outcome,
                    duration,
                    upstream_time: self.info.upstream_time + duration.saturating_sub(handled),
                    usage,
                });
                if let (Some(provider), Some(cost)) = (self.info.provider, cost) {
                    metrics.cost(provider, cost.model, cost.usd);
                }
            }
        }
        if let Some(keyring) = &self.keyring {
            if USAGE_ROUTES.contains(&self.route) {
                keyring.record(self.usage_record(usage, cost, duration), keys::now_ms());
            }
        }
        if !log::log_enabled!(target: "access", log::Level::Info) {
            return;
        }
        let line = Line {
            request_id: self.id.to_str().unwrap_or("-"),
            method: &self.method,
            path: &self.path,
            route: self.route,
            provider: self.info.provider,
            model: self
                .info
                .model
                .as_deref()
                .map(|m| m.chars().take(128).collect::<String>()),
            status: self.status,
            outcome,
            upstream_status: self.info.upstream_status,
            attempts: self.info.attempts,
            stream: self.info.stream,
            duration_ms: millis(duration),
            ttfb_ms: self
                .first_byte
                .map(|at| millis(at.duration_since(self.started))),
            input_tokens: usage.map(|u| u.input_tokens),
            output_tokens: usage.map(|u| u.output_tokens),
            cost_usd: cost.map(|c| c.usd),
            rule: self.info.rule.as_ref().and_then(|rule| rule.to_str().ok()),
            group: self.info.group.as_deref(),
        };
        if self.json {
            if let Ok(json) = serde_json::to_string(&line) {
                log::info!(target: "access", "{json}");
            }
        } else {
            log::info!(target: "access", "{}", line.text());
        }
    }
}

/// The routes whose requests leave a usage record: the chat routes, never the proxy's own.
const USAGE_ROUTES: [&str; 4] = ["chat", "completions", "messages", "count_tokens"];

impl Record {
    /// The request as the store keeps it: who, where, what it cost; never content or a key.
    fn usage_record(
        &self,
        usage: Option<Usage>,
        cost: Option<Cost>,
        took: Duration,
    ) -> UsageRecord {
        let info = &self.info;
        let tokens = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        let bounded = |text: &str| text.chars().take(256).collect::<String>();
        UsageRecord {
            time_ms: keys::now_ms(),
            key_id: info.key_id.clone(),
            caller: info.caller.clone(),
            route: self.route.to_owned(),
            provider: info.provider.map(str::to_owned),
            model: info.model.as_deref().map(bounded),
            group: info.group.as_deref().map(bounded),
            deployment: match (&info.group, info.provider, &info.model) {
                (Some(_), Some(provider), Some(model)) => {
                    Some(bounded(&format!("{provider}/{model}")))
                }
                _ => None,
            },
            status: self.status,
            input_tokens: usage.map_or(0, |u| tokens(u.input_tokens)),
            output_tokens: usage.map_or(0, |u| tokens(u.output_tokens)),
            cached_tokens: usage.map_or(0, |u| tokens(u.cache_read_tokens)),
            cost_usd: match info.cached {
                true => Some(0.0),
                false => cost.map(|c| c.usd),
            },
            latency_ms: millis(took),
            ttfb_ms: self
                .first_byte
                .map(|at| millis(at.duration_since(self.started))),
            request_id: self.id.to_str().unwrap_or("-").to_owned(),
            cached: info.cached,
        }
    }
}

fn millis(duration: Duration) -> f64 {
    (duration.as_secs_f64() * 1e6).round() / 1e3
}

/// One access-log line; never a key, never message content.
#[derive(Serialize)]
struct Line<'a> {
    request_id: &'a str,
    method: &'a str,
    path: &'a str,
    route: &'static str,
    provider: Option<&'a str>,
    model: Option<String>,
    status: u16,
    outcome: &'static str,
    upstream_status: Option<u16>,
    attempts: u32,
    stream: bool,
    duration_ms: f64,
    ttfb_ms: Option<f64>,
    input_tokens: Option<u64>,
    output_tokens: Option<u64>,
    cost_usd: Option<f64>,
    rule: Option<&'a str>,
    group: Option<&'a str>,
}

impl Line<'_> {
    /// The human-readable form: `key=value` pairs, the model escaped so it cannot forge lines.
    fn text(&self) -> String {
        let or_dash = |value: Option<String>| value.unwrap_or_else(|| "-".into());
        format!(
            "{} {} request_id={} provider={} model={} status={} outcome={} upstream_status={} \
             attempts={} stream={} duration_ms={} ttfb_ms={} input_tokens={} output_tokens={} \
             cost_usd={}{}{}",
            self.method,
            self.path,
            self.request_id,
            self.provider.unwrap_or("-"),
            or_dash(
                self.model
                    .as_ref()
                    .map(|m| m.chars().flat_map(char::escape_debug).collect())
            ),
            self.status,
            self.outcome,
            or_dash(self.upstream_status.map(|s| s.to_string())),
            self.attempts,
            self.stream,
            self.duration_ms,
            or_dash(self.ttfb_ms.map(|t| t.to_string())),
            or_dash(self.input_tokens.map(|t| t.to_string())),
            or_dash(self.output_tokens.map(|t| t.to_string())),
            or_dash(self.cost_usd.map(cost::format_usd)),
            // Only on requests a rule routed, so every other line stays as it was.
            self.rule.map_or(String::new(), |rule| format!(
                " rule={}",
                rule.chars()
                    .flat_map(char::escape_debug)
                    .collect::<String>()
            )),
            // Only on requests to a group, likewise.
            self.group.map_or(String::new(), |group| format!(
                " group={}",
                group
                    .chars()
                    .flat_map(char::escape_debug)
                    .collect::<String>()
            )),
        )
    }
}

/// A response body that notes its first byte and, once done or dropped, logs and counts.
struct Observed {
    body: BoxBody,
    record: Option<Record>,
}

impl MessageBody for Observed {
    type Error = Box<dyn std::error::Error>;

    fn size(&self) -> BodySize {
        self.body.size()
    }

    fn poll_next(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Bytes, Self::Error>>> {
        let this = &mut *self;
        let next = Pin::new(&mut this.body).poll_next(cx);
        if let Some(record) = &mut this.record {
            match &next {
                Poll::Ready(Some(Ok(_))) => {
                    record.first_byte.get_or_insert_with(Instant::now);
                }
                Poll::Ready(None) => record.ended = true,
                _ => {}
            }
        }
        next
    }
}

impl Drop for Observed {
    fn drop(&mut self) {
        if let Some(record) = self.record.take() {
            record.finish();
        }
    }
}

/// `GET /metrics`
pub async fn metrics(
    metrics: web::Data<Metrics>,
    limit: web::Data<RequestLimit>,
    registry: web::Data<Registry>,
) -> actix_web::HttpResponse {
    let mut text = metrics.render(limit.in_flight());
    let rows = registry.groups().iter().flat_map(|group| {
        group
            .labels
            .iter()
            .zip(&group.health.deployments)
            .map(|(label, health)| metrics::DeploymentRow {
                group: &group.decl.name,
                deployment: label,
                up: health.is_up(),
                ttfb_ewma: health.ttfb_ewma(),
            })
    });
    let at = text.rfind("# EOF").unwrap_or(text.len());
    text.insert_str(at, &metrics::deployment_families(rows));
    actix_web::HttpResponse::Ok()
        .content_type("application/openmetrics-text; version=1.0.0; charset=utf-8")
        .body(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_callers_printable_id_is_kept_and_anything_else_replaced() {
        let given = HeaderValue::from_static("trace-abc_123");
        assert_eq!(request_id(Some(&given)), given);
        for bad in ["", "has space", &"x".repeat(129)] {
            let value = HeaderValue::from_str(bad).unwrap();
            let id = request_id(Some(&value));
            assert_ne!(id, value, "{bad:?}");
            assert!(id.to_str().unwrap().starts_with("req_"));
        }
        assert_ne!(request_id(None), request_id(None), "new ids differ");
    }

    #[test]
    fn the_text_line_names_a_rule_only_when_one_matched() {
        let line = |rule| Line {
            request_id: "req_1",
            method: "POST",
            path: "/v1/chat/completions",
            route: "completions",
            provider: Some("openai"),
            model: Some("gpt-4o".into()),
            status: 200,
            outcome: "ok",
            upstream_status: Some(200),
            attempts: 1,
            stream: false,
            duration_ms: 1.0,
            ttfb_ms: None,
            input_tokens: None,
            output_tokens: None,
            cost_usd: None,
            rule,
            group: None,
        };
        assert!(line(None).text().ends_with("output_tokens=- cost_usd=-"));
        assert!(line(Some("weekend"))
            .text()
            .ends_with("output_tokens=- cost_usd=- rule=weekend"));
        let grouped = Line {
            group: Some("chat"),
            ..line(Some("weekend"))
        };
        assert!(grouped.text().ends_with(" rule=weekend group=chat"));
        assert_eq!(serde_json::to_value(grouped).unwrap()["group"], "chat");
        let json = serde_json::to_value(line(None)).unwrap();
        assert_eq!(json["rule"], serde_json::Value::Null);
    }

    #[test]
    fn routes_are_a_bounded_set() {
        assert_eq!(route_of("/v1/chat/completions"), "completions");
        assert_eq!(route_of("/v1/messages"), "messages");
        assert_eq!(route_of("/v1/messages/count_tokens"), "count_tokens");
        assert_eq!(route_of("/v1/chat/openai"), "chat");
        assert_eq!(route_of("/v1/chat/anything-a-caller-sends"), "chat");
        assert_eq!(route_of("/dashboard/sign-in"), "dashboard");
        assert_eq!(route_of("/dashboards"), "other");
        assert_eq!(route_of("/wp-admin"), "other");
    }

    proptest::proptest! {
        #[test]
        fn any_request_id_header_is_kept_or_replaced_by_a_valid_one(
            given in proptest::collection::vec(proptest::num::u8::ANY, 0..200),
        ) {
            if let Ok(value) = HeaderValue::from_bytes(&given) {
                let id = request_id(Some(&value));
                proptest::prop_assert!((1..=128).contains(&id.len()));
                proptest::prop_assert!(id.as_bytes().iter().all(|b| (0x21..=0x7e).contains(b)));
            }
        }
    }
}
