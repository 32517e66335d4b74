//! Prometheus metrics: counters and histograms kept in memory, exposed by `GET /metrics`.
//!
//! Why `prometheus-client` rather than our own text: the crate gets the OpenMetrics format
//! right (types, `_total`, `_bucket`/`_sum`/`_count` and unit suffixes, `# EOF`, numbers), and
//! its counters are atomics in families that take only a shared read lock, so there is no
//! process-wide mutex and a label set that exists costs no allocation. Our histograms are
//! atomics too, encoded by the crate: its own take a write lock per observation, and the
//! unlabelled overhead histogram would make that one lock every request takes.
//!
//! Every label value comes from a bounded set of safe characters: routes and providers are
//! known at start (provider names are checked when the providers file is read), status classes
//! are five, and model names (which callers invent) are capped per provider, the rest and any
//! unsafe name folded into `other`. That bound is also what keeps the format intact: the crate
//! (0.23) writes label values as they are, unescaped (prometheus/client_rust#151). No label ever
//! carries a key, a request id or content.

use std::{
    collections::{HashMap, HashSet},
    sync::{
        atomic::{AtomicU64, Ordering::Relaxed},
        Arc, PoisonError, RwLock,
    },
    time::Duration,
};

use prometheus_client::{
    encoding::{
        text::encode, EncodeLabelSet, EncodeLabelValue, EncodeMetric, LabelValueEncoder,
        MetricEncoder, NoLabelSet,
    },
    metrics::{counter::Counter, family::Family, gauge::Gauge, MetricType, TypedMetric},
    registry::{Registry, Unit},
};

use crate::model::Usage;

/// Distinct model names kept per provider before the rest count as `other`.
pub const MAX_MODELS_PER_PROVIDER: usize = 50;

/// Histogram bucket bounds, in seconds: from sub-millisecond proxy overhead to long streams.
const BUCKETS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
    30.0, 120.0,
];

/// Everything one finished request tells the metrics.
#[derive(Debug, Clone, Default)]
pub struct Finished<'a> {
    pub route: &'static str,
    pub provider: Option<&'static str>,
    pub model: Option<&'a str>,
    pub status: u16,
    /// How the request ended: `ok`, `client_closed`, `upstream_cut` or `timeout`.
    pub outcome: &'static str,
    pub duration: Duration,
    /// Time spent waiting on upstreams; the rest is the proxy's own overhead.
    pub upstream_time: Duration,
    pub usage: Option<Usage>,
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: &'static str,
    provider: &'static str,
    status: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProviderLabels {
    provider: &'static str,
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamErrorLabels {
    provider: &'static str,
    status: UpstreamStatus,
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TokenLabels {
    provider: &'static str,
    model: &'static str,
    direction: &'static str,
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CostLabels {
    provider: &'static str,
    model: &'static str,
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SchemeLabels {
    scheme: &'static str,
}

/// Upstream connections opened, by scheme: every worker's connector holds a handle and counts
/// each new TCP connection once, so requests on a pooled connection cost nothing here. With
/// pooling working, it grows with the connections a load needs, not with its requests.
#[derive(Clone, Debug, Default)]
pub struct UpstreamConnections {
    http: Counter,
    https: Counter,
}

impl UpstreamConnections {
    /// A new connection to an upstream; `tls` for `https://` (its TLS handshake comes next).
    pub fn opened(&self, tls: bool) {
        match tls {
            true => self.https.inc(),
            false => self.http.inc(),
        };
    }
}

/// What a failed upstream call counts under: the status it answered with, or how it failed.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
enum UpstreamStatus {
    Code(u16),
    Failure(&'static str),
}

impl EncodeLabelValue for UpstreamStatus {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        match self {
            Self::Code(code) => code.encode(encoder),
            Self::Failure(kind) => kind.encode(encoder),
        }
    }
}

/// The process's metrics, shared by every worker.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    in_flight: Gauge,
    duration: Family<ProviderLabels, Histogram>,
    upstream_ttfb: Family<ProviderLabels, Histogram>,
    overhead: Histogram,
    retries: Family<ProviderLabels, Counter>,
    fallbacks: Family<ProviderLabels, Counter>,
    upstream_errors: Family<UpstreamErrorLabels, Counter>,
    tokens: Family<TokenLabels, Counter>,
    cost: Family<CostLabels, Counter<f64, AtomicU64>>,
    models: Models,
    cache_hits: Counter,
    cache_misses: Counter,
    upstream_connections: UpstreamConnections,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new(Counter::default())
    }
}

impl Metrics {
    /// The metrics, with the store's count of usage records it had to drop (the usage sink
    /// holds the other handle).
    pub fn new(usage_dropped: Counter) -> Self {
        let mut metrics = Self {
            registry: Registry::default(),
            requests: Family::default(),
            in_flight: Gauge::default(),
            duration: Family::default(),
            upstream_ttfb: Family::default(),
            overhead: Histogram::default(),
            retries: Family::default(),
            fallbacks: Family::default(),
            upstream_errors: Family::default(),
            tokens: Family::default(),
            cost: Family::default(),
            models: Models::default(),
            cache_hits: Counter::default(),
            cache_misses: Counter::default(),
            upstream_connections: UpstreamConnections::default(),
        };
        // The registry holds clones: each metric shares its values with the handle kept here.
        // Counters are registered without `_total` and histograms without their unit, which
        // the encoder appends. The encoder ends each help text with a period.
        let registry = &mut metrics.registry;
        registry.register(
            "llm_proxy_requests",
            "Requests by route, provider, status class and outcome",
            metrics.requests.clone(),
        );
        registry.register(
            "llm_proxy_requests_in_flight",
            "Chat requests in flight, streams until they end",
            metrics.in_flight.clone(),
        );
        registry.register_with_unit(
            "llm_proxy_request_duration",
            "Whole request time, by provider (streams: until the last byte)",
            Unit::Seconds,
            metrics.duration.clone(),
        );
        registry.register_with_unit(
            "llm_proxy_upstream_ttfb",
            "Time from sending to an upstream until its response headers, by provider",
            Unit::Seconds,
            metrics.upstream_ttfb.clone(),
        );
        registry.register_with_unit(
            "llm_proxy_overhead",
            "Time a request spent outside upstream calls: the proxy's own overhead",
            Unit::Seconds,
            metrics.overhead.clone(),
        );
        registry.register(
            "llm_proxy_retries",
            "Retries, by the provider retried",
            metrics.retries.clone(),
        );
        registry.register(
            "llm_proxy_fallbacks",
            "Moves to a fallback, by the provider fallen back to",
            metrics.fallbacks.clone(),
        );
        registry.register(
            "llm_proxy_upstream_errors",
            "Failed upstream calls, by provider and status (or timeout, connection, error_event)",
            metrics.upstream_errors.clone(),
        );
        registry.register(
            "llm_proxy_tokens",
            "Tokens reported by upstreams, by provider, model and direction",
            metrics.tokens.clone(),
        );
        registry.register(
            "llm_proxy_cost_usd",
            "Cost of answers in USD by the price table, by provider and the price entry's model",
            metrics.cost.clone(),
        );
        registry.register(
            "llm_proxy_cache_hits",
            "Requests answered from the response cache",
            metrics.cache_hits.clone(),
        );
        registry.register(
            "llm_proxy_cache_misses",
            "Requests that asked for the cache and went upstream",
            metrics.cache_misses.clone(),
        );
        // Both series exist from the start, at 0, so a rate over them has a beginning.
        let connections = Family::<SchemeLabels, Counter>::default();
        // One statement each: `get_or_create`'s guard holds the family's lock until the
        // statement ends, and a second creation in the same one would wait on it forever.
        let http = connections
            .get_or_create(&SchemeLabels { scheme: "http" })
            .clone();
        let https = connections
            .get_or_create(&SchemeLabels { scheme: "https" })
            .clone();
        metrics.upstream_connections = UpstreamConnections { http, https };
        registry.register(
            "llm_proxy_upstream_connections_opened",
            "Upstream TCP connections opened, by scheme (https ones each begin with a TLS handshake)",
            connections,
        );
        registry.register(
            "llm_proxy_usage_records_dropped",
            "Usage records not stored because the store was too slow or down and the buffer full",
            usage_dropped,
        );
        metrics
    }
}

impl Metrics {
    /// Adds Redis's health: whether it answers, and how many calls to it failed.
    pub fn register_redis(&mut self, redis: &crate::cluster::RedisMetrics) {
        self.registry.register(
            "llm_proxy_redis_up",
            "Whether Redis (REDIS_URL) answers: 1, or 0 while the cache misses and limits count per instance",
            redis.up.clone(),
        );
        self.registry.register(
            "llm_proxy_redis_errors",
            "Calls to Redis that failed or took longer than REDIS_TIMEOUT_MS",
            redis.errors.clone(),
        );
    }

    /// The handle every worker's upstream connector counts new connections on.
    pub fn upstream_connections(&self) -> UpstreamConnections {
        self.upstream_connections.clone()
    }

    /// A request answered from the cache, or one that asked for it and missed.
    pub fn cache(&self, hit: bool) {
        match hit {
            true => self.cache_hits.inc(),
            false => self.cache_misses.inc(),
        };
    }

    /// A request has ended (for a stream: when the stream ended).
    pub fn finished(&self, request: &Finished<'_>) {
        let provider = request.provider.unwrap_or("none");
        self.requests
            .get_or_create(&RequestLabels {
                route: request.route,
                provider,
                status: status_class(request.status),
                outcome: request.outcome,
            })
            .inc();
        if request.provider.is_some() {
            self.duration
                .get_or_create(&ProviderLabels { provider })
                .observe(request.duration);
            self.overhead
                .observe(request.duration.saturating_sub(request.upstream_time));
        }
        if let (Some(usage), Some(model)) = (request.usage, request.model) {
            let model = self.models.bounded(provider, model);
            for (direction, tokens) in [
                ("input", usage.input_tokens),
                ("output", usage.output_tokens),
            ] {
                self.tokens
                    .get_or_create(&TokenLabels {
                        provider,
                        model,
                        direction,
                    })
                    .inc_by(tokens);
            }
        }
    }

    /// An answer with a known cost: `model` is the price table's own name for it, so the
    /// labels are bounded by the table, not by what callers send.
    pub fn cost(&self, provider: &'static str, model: &'static str, usd: f64) {
        self.cost
            .get_or_create(&CostLabels { provider, model })
            .inc_by(usd);
    }

    /// An upstream answered with its headers this long after the call began.
    pub fn upstream_first_byte(&self, provider: &'static str, after: Duration) {
        self.upstream_ttfb
            .get_or_create(&ProviderLabels { provider })
            .observe(after);
    }

    pub fn retry(&self, provider: &'static str) {
        self.retries
            .get_or_create(&ProviderLabels { provider })
            .inc();
    }

    pub fn fallback(&self, provider: &'static str) {
        self.fallbacks
            .get_or_create(&ProviderLabels { provider })
            .inc();
    }

    /// A failed upstream call: `error_event` for an in-band error in a 2xx stream, else the
    /// status it answered with, else how it failed (`timeout`, `connection`); any other failure
    /// text counts as `other`.
    pub fn upstream_error(
        &self,
        provider: &'static str,
        status: Option<u16>,
        failure: Option<&str>,
    ) {
        let status = match (status, failure) {
            (_, Some("error event")) => UpstreamStatus::Failure("error_event"),
            (Some(code), _) => UpstreamStatus::Code(code),
            (None, Some("timeout")) => UpstreamStatus::Failure("timeout"),
            (None, Some("connection")) => UpstreamStatus::Failure("connection"),
            (None, _) => UpstreamStatus::Failure("other"),
        };
        self.upstream_errors
            .get_or_create(&UpstreamErrorLabels { provider, status })
            .inc();
    }

    /// The OpenMetrics text, with the in-flight gauge set at the moment of the scrape.
    pub fn render(&self, in_flight: usize) -> String {
        self.in_flight
            .set(i64::try_from(in_flight).unwrap_or(i64::MAX));
        let mut out = String::with_capacity(8192);
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}

/// One group's deployment as the health gauges show it.
pub struct DeploymentRow<'a> {
    pub group: &'a str,
    /// `provider/model`.
    pub deployment: &'a str,
    pub up: bool,
    /// The peak-EWMA of its time to first byte, once measured.
    pub ttfb_ewma: Option<f64>,
}

/// The deployment gauges (`llm_proxy_deployment_up`, `llm_proxy_deployment_ttfb_ewma_seconds`)
/// as OpenMetrics families, read from the health state at the moment of the scrape; to go
/// before the text's `# EOF`. Both families are described even without groups.
pub fn deployment_families<'a>(rows: impl Iterator<Item = DeploymentRow<'a>> + Clone) -> String {
    use std::fmt::Write;
    // Operators name groups and models: escaped as OpenMetrics label values are.
    let escape = |value: &str| {
        value
            .replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace('\n', "\\n")
    };
    let mut out = String::new();
    out.push_str(
        "# HELP llm_proxy_deployment_up Whether a group's deployment takes requests (0 while ejected).\n\
         # TYPE llm_proxy_deployment_up gauge\n",
    );
    for row in rows.clone() {
        let _ = writeln!(
            out,
            "llm_proxy_deployment_up{{group=\"{}\",deployment=\"{}\"}} {}",
            escape(row.group),
            escape(row.deployment),
            u8::from(row.up)
        );
    }
    out.push_str(
        "# HELP llm_proxy_deployment_ttfb_ewma_seconds Peak-EWMA of a deployment's time to first byte.\n\
         # TYPE llm_proxy_deployment_ttfb_ewma_seconds gauge\n\
         # UNIT llm_proxy_deployment_ttfb_ewma_seconds seconds\n",
    );
    for row in rows {
        if let Some(seconds) = row.ttfb_ewma {
            let _ = writeln!(
                out,
                "llm_proxy_deployment_ttfb_ewma_seconds{{group=\"{}\",deployment=\"{}\"}} {seconds}",
                escape(row.group),
                escape(row.deployment),
            );
        }
    }
    out
}

fn status_class(status: u16) -> &'static str {
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

/// The model names each provider has counted under their own name.
#[derive(Debug, Default)]
struct Models(RwLock<HashMap<&'static str, HashSet<&'static str>>>);

impl Models {
    /// The model as a label value: itself while the provider has fewer than the cap, else
    /// `other`. Label values are also kept to a safe alphabet, so a caller's text cannot break
    /// the format. A name already seen costs a shared read lock and no allocation.
    fn bounded(&self, provider: &'static str, model: &str) -> &'static str {
        let safe = model.len() <= 128
            && model
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.:/@".contains(&b));
        if !safe {
            return "other";
        }
        let lookup = |known: &HashMap<&'static str, HashSet<&'static str>>| {
            let names = known.get(provider)?;
            match names.get(model) {
                Some(name) => Some(*name),
                None if names.len() >= MAX_MODELS_PER_PROVIDER => Some("other"),
                None => None,
            }
        };
        if let Some(name) = lookup(&self.0.read().unwrap_or_else(PoisonError::into_inner)) {
            return name;
        }
        let mut known = self.0.write().unwrap_or_else(PoisonError::into_inner);
        // Another worker may have added it, or filled the provider's last place, meanwhile.
        if let Some(name) = lookup(&known) {
            return name;
        }
        // Leaked on purpose, so label sets are plain `&'static str` and cost no reference count:
        // at most MAX_MODELS_PER_PROVIDER names of at most 128 bytes per provider, once per
        // `Metrics`, and a process has one.
        let name: &'static str = Box::leak(model.into());
        known.entry(provider).or_default().insert(name);
        name
    }
}

/// A histogram over [`BUCKETS`] made of atomics: observing takes no lock. A scrape reads the
/// buckets one by one, so it may see an observation in its bucket but not yet in the sum; the
/// count is the buckets' total, so `+Inf` and `_count` always agree.
#[derive(Clone, Debug, Default)]
struct Histogram(Arc<HistogramCells>);

#[derive(Debug, Default)]
struct HistogramCells {
    /// Per bucket, not cumulative; the last one is `+Inf`.
    counts: [AtomicU64; BUCKETS.len() + 1],
    /// The sum of observations in seconds, as `f64` bits.
    sum: AtomicU64,
}

impl Histogram {
    fn observe(&self, value: Duration) {
        let seconds = value.as_secs_f64();
        let bucket = BUCKETS
            .iter()
            .position(|bound| seconds <= *bound)
            .unwrap_or(BUCKETS.len());
        self.0.counts[bucket].fetch_add(1, Relaxed);
        // The closure always returns `Some`, so the update always succeeds.
        let _ = self.0.sum.fetch_update(Relaxed, Relaxed, |bits| {
            Some((f64::from_bits(bits) + seconds).to_bits())
        });
    }
}

impl TypedMetric for Histogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for Histogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        // The encoder writes an upper bound of `f64::MAX` as `+Inf`.
        let mut buckets = [(f64::MAX, 0); BUCKETS.len() + 1];
        for ((bucket, bound), count) in buckets
            .iter_mut()
            .zip(BUCKETS.iter().chain([f64::MAX].iter()))
            .zip(&self.0.counts)
        {
            *bucket = (*bound, count.load(Relaxed));
        }
        let count = buckets.iter().map(|(_, count)| count).sum();
        let sum = f64::from_bits(self.0.sum.load(Relaxed));
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    fn finished(model: &str) -> Finished<'_> {
        Finished {
            route: "chat",
            provider: Some("openai"),
            model: Some(model),
            status: 200,
            outcome: "ok",
            duration: Duration::from_millis(30),
            upstream_time: Duration::from_millis(29),
            usage: Some(Usage {
                input_tokens: 10,
                output_tokens: 3,
                ..Usage::default()
            }),
        }
    }

    /// Whether every line is a comment (`# HELP`, `# TYPE`, `# UNIT`, `# EOF`) or one sample:
    /// a name, optional `{label="value",...}` with safe values, a space and a number.
    fn is_well_formed(text: &str) -> bool {
        let sample = |line: &str| {
            let Some((series, value)) = line.rsplit_once(' ') else {
                return false;
            };
            let (name, labels) = match series.split_once('{') {
                Some((name, rest)) => match rest.strip_suffix('}') {
                    Some(labels) => (name, Some(labels)),
                    None => return false,
                },
                None => (series, None),
            };
            let labels_ok = labels.is_none_or(|labels| {
                labels.split(',').all(|pair| {
                    pair.split_once("=\"").is_some_and(|(key, value)| {
                        key.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
                            && value.strip_suffix('"').is_some_and(|value| {
                                !value.contains(['"', '\\', '\n', '{', '}', ','])
                            })
                    })
                })
            });
            name.starts_with("llm_proxy_")
                && name.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
                && labels_ok
                && value.parse::<f64>().is_ok()
        };
        text.ends_with("# EOF\n")
            && text
                .lines()
                .all(|line| line.starts_with("# ") || sample(line))
    }

    #[test]
    fn counters_and_histograms_render_in_the_openmetrics_text_format() {
        let metrics = Metrics::default();
        metrics.finished(&finished("gpt-4o-mini"));
        metrics.finished(&Finished {
            status: 429,
            usage: None,
            ..finished("gpt-4o-mini")
        });
        metrics.finished(&Finished {
            route: "models",
            provider: None,
            model: None,
            usage: None,
            ..finished("")
        });
        metrics.retry("openai");
        metrics.fallback("anthropic");
        metrics.upstream_error("openai", Some(429), None);
        metrics.upstream_error("openai", None, Some("timeout"));
        metrics.upstream_error("openai", None, Some("not a \"kind\" we know"));
        metrics.upstream_error("anthropic", Some(200), Some("error event"));
        metrics.upstream_first_byte("openai", Duration::from_millis(20));
        let text = metrics.render(3);
        for line in [
            "# HELP llm_proxy_requests Requests by route, provider, status class and outcome.",
            "# TYPE llm_proxy_requests counter",
            r#"llm_proxy_requests_total{route="chat",provider="openai",status="2xx",outcome="ok"} 1"#,
            r#"llm_proxy_requests_total{route="chat",provider="openai",status="4xx",outcome="ok"} 1"#,
            r#"llm_proxy_requests_total{route="models",provider="none",status="2xx",outcome="ok"} 1"#,
            "# TYPE llm_proxy_requests_in_flight gauge",
            "llm_proxy_requests_in_flight 3",
            "# TYPE llm_proxy_request_duration_seconds histogram",
            "# UNIT llm_proxy_request_duration_seconds seconds",
            r#"llm_proxy_request_duration_seconds_bucket{le="0.05",provider="openai"} 2"#,
            r#"llm_proxy_request_duration_seconds_bucket{le="0.025",provider="openai"} 0"#,
            r#"llm_proxy_request_duration_seconds_bucket{le="+Inf",provider="openai"} 2"#,
            r#"llm_proxy_request_duration_seconds_count{provider="openai"} 2"#,
            r#"llm_proxy_request_duration_seconds_sum{provider="openai"} 0.06"#,
            r#"llm_proxy_upstream_ttfb_seconds_count{provider="openai"} 1"#,
            r#"llm_proxy_overhead_seconds_bucket{le="0.001"} 2"#,
            r#"llm_proxy_overhead_seconds_bucket{le="0.0005"} 0"#,
            r#"llm_proxy_overhead_seconds_bucket{le="120.0"} 2"#,
            "llm_proxy_overhead_seconds_count 2",
            "# TYPE llm_proxy_retries counter",
            r#"llm_proxy_retries_total{provider="openai"} 1"#,
            r#"llm_proxy_fallbacks_total{provider="anthropic"} 1"#,
            r#"llm_proxy_upstream_errors_total{provider="openai",status="429"} 1"#,
            r#"llm_proxy_upstream_errors_total{provider="openai",status="timeout"} 1"#,
            r#"llm_proxy_upstream_errors_total{provider="openai",status="other"} 1"#,
            r#"llm_proxy_upstream_errors_total{provider="anthropic",status="error_event"} 1"#,
            r#"llm_proxy_tokens_total{provider="openai",model="gpt-4o-mini",direction="input"} 10"#,
            r#"llm_proxy_tokens_total{provider="openai",model="gpt-4o-mini",direction="output"} 3"#,
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line}\n{text}");
        }
        assert!(
            !text.contains("duration_seconds_count{provider=\"none\"}"),
            "no provider, no duration\n{text}"
        );
        assert!(is_well_formed(&text), "{text}");
    }

    #[test]
    fn invented_model_names_are_capped_and_unsafe_ones_folded() {
        let metrics = Metrics::default();
        // Unsafe names first, while the cap would still let them in under their own name.
        metrics.finished(&finished("evil\"} 1\nfake_metric{"));
        metrics.finished(&finished("back\\slash"));
        metrics.finished(&finished(&"m".repeat(129)));
        for n in 0..MAX_MODELS_PER_PROVIDER + 20 {
            metrics.finished(&finished(&format!("model-{n}")));
        }
        // Already known: still counts under its own name once the cap is reached.
        metrics.finished(&finished("model-0"));
        // Another provider has its own cap.
        metrics.finished(&Finished {
            provider: Some("anthropic"),
            ..finished("model-99")
        });
        let text = metrics.render(0);
        let models: BTreeSet<_> = text
            .lines()
            .filter(|l| {
                l.starts_with("llm_proxy_tokens_total{provider=\"openai\"") && l.contains("input")
            })
            .map(|l| {
                l.split("model=\"")
                    .nth(1)
                    .unwrap()
                    .split('"')
                    .next()
                    .unwrap()
                    .to_owned()
            })
            .collect();
        assert_eq!(models.len(), MAX_MODELS_PER_PROVIDER + 1);
        assert!(models.contains("other"));
        assert!(!text.contains("fake_metric"));
        assert!(!text.contains("evil"));
        assert!(!text.contains('\\'));
        for line in [
            r#"llm_proxy_tokens_total{provider="openai",model="other",direction="input"} 230"#,
            r#"llm_proxy_tokens_total{provider="openai",model="model-0",direction="input"} 20"#,
            r#"llm_proxy_tokens_total{provider="anthropic",model="model-99",direction="input"} 10"#,
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line}\n{text}");
        }
        assert!(is_well_formed(&text), "{text}");
    }

    #[test]
    fn counting_from_many_threads_at_once_loses_no_increment() {
        const THREADS: usize = 8;
        const EACH: usize = 2_000;
        let metrics = Metrics::default();
        let model_names: Vec<String> = (0..MAX_MODELS_PER_PROVIDER * 2)
            .map(|n| format!("model-{n}"))
            .collect();
        std::thread::scope(|scope| {
            for thread in 0..THREADS {
                let (metrics, model_names) = (&metrics, &model_names);
                scope.spawn(move || {
                    for n in 0..EACH {
                        // Every thread walks all the names, so new label sets and new models
                        // race with counting on existing ones.
                        let model = &model_names[(n + thread) % model_names.len()];
                        metrics.finished(&finished(model));
                        metrics.retry("openai");
                        metrics.upstream_first_byte("openai", Duration::from_millis(1));
                        metrics.upstream_error("openai", Some(503), None);
                    }
                });
            }
        });
        let total = THREADS * EACH;
        let text = metrics.render(0);
        for line in [
            format!(
                r#"llm_proxy_requests_total{{route="chat",provider="openai",status="2xx",outcome="ok"}} {total}"#
            ),
            format!(r#"llm_proxy_request_duration_seconds_count{{provider="openai"}} {total}"#),
            format!(
                r#"llm_proxy_request_duration_seconds_bucket{{le="+Inf",provider="openai"}} {total}"#
            ),
            format!(r#"llm_proxy_upstream_ttfb_seconds_count{{provider="openai"}} {total}"#),
            format!("llm_proxy_overhead_seconds_count {total}"),
            format!(r#"llm_proxy_retries_total{{provider="openai"}} {total}"#),
            format!(r#"llm_proxy_upstream_errors_total{{provider="openai",status="503"}} {total}"#),
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line}\n{text}");
        }
        let sum: f64 = text
            .lines()
            .find_map(|l| {
                l.strip_prefix(r#"llm_proxy_request_duration_seconds_sum{provider="openai"} "#)
            })
            .unwrap()
            .parse()
            .unwrap();
        assert!((sum - 0.03 * total as f64).abs() < 1e-6, "{sum}");
        let (mut models, mut input) = (0, 0);
        for line in text.lines().filter(|l| {
            l.starts_with("llm_proxy_tokens_total{provider=\"openai\"") && l.contains("input")
        }) {
            models += 1;
            input += line.rsplit_once(' ').unwrap().1.parse::<usize>().unwrap();
        }
        assert_eq!(models, MAX_MODELS_PER_PROVIDER + 1, "{text}");
        assert_eq!(input, 10 * total);
    }
}
