//! Prometheus metrics: counters and histograms kept in memory, rendered by `GET /metrics`.
//!
//! Every label value comes from a bounded set: routes and providers are known at start, status
//! classes are five, and model names (which callers invent) are capped per provider, the rest
//! folded into `other`. No label ever carries a key, a request id or content.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Write,
    sync::Mutex,
    time::Duration,
};

use crate::chat::Usage;

/// Distinct model names kept per provider before the rest count as `other`.
pub const MAX_MODELS_PER_PROVIDER: usize = 50;

/// Histogram bucket bounds, in seconds: from sub-millisecond proxy overhead to long streams.
const BUCKETS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
    30.0, 120.0,
];

#[derive(Debug, Default, Clone)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

impl Histogram {
    fn observe(&mut self, value: Duration) {
        let seconds = value.as_secs_f64();
        if let Some(bucket) = BUCKETS.iter().position(|bound| seconds <= *bound) {
            self.counts[bucket] += 1;
        }
        self.count += 1;
        self.sum += seconds;
    }
}

/// Everything one finished request tells the metrics.
#[derive(Debug, Clone, Default)]
pub struct Finished<'a> {
    pub route: &'static str,
    pub provider: Option<&'a str>,
    pub model: Option<&'a str>,
    pub status: u16,
    /// How the response ended: `ok`, `client_closed`, `upstream_cut` or `timeout`.
    pub outcome: &'static str,
    pub duration: Duration,
    /// Time spent waiting on upstreams; the rest is the proxy's own overhead.
    pub upstream_time: Duration,
    pub usage: Option<Usage>,
}

#[derive(Debug, Default)]
struct Inner {
    requests: BTreeMap<(&'static str, String, &'static str, &'static str), u64>,
    duration: BTreeMap<String, Histogram>,
    upstream_ttfb: BTreeMap<String, Histogram>,
    overhead: Histogram,
    retries: BTreeMap<String, u64>,
    fallbacks: BTreeMap<String, u64>,
    upstream_errors: BTreeMap<(String, String), u64>,
    tokens: BTreeMap<(String, String, &'static str), u64>,
    models: BTreeMap<String, BTreeSet<String>>,
}

/// The process's metrics, shared by every worker.
#[derive(Debug, Default)]
pub struct Metrics {
    inner: Mutex<Inner>,
}

impl Metrics {
    fn with<R>(&self, f: impl FnOnce(&mut Inner) -> R) -> R {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut inner)
    }

    /// A request has ended (for a stream: when the stream ended).
    pub fn finished(&self, request: &Finished<'_>) {
        let provider = request.provider.unwrap_or("none").to_owned();
        self.with(|inner| {
            let class = status_class(request.status);
            *inner
                .requests
                .entry((request.route, provider.clone(), class, request.outcome))
                .or_default() += 1;
            if request.provider.is_some() {
                inner
                    .duration
                    .entry(provider.clone())
                    .or_default()
                    .observe(request.duration);
                inner
                    .overhead
                    .observe(request.duration.saturating_sub(request.upstream_time));
            }
            if let (Some(usage), Some(model)) = (request.usage, request.model) {
                let model = bounded_model(&mut inner.models, &provider, model);
                for (direction, tokens) in [
                    ("input", usage.input_tokens),
                    ("output", usage.output_tokens),
                ] {
                    *inner
                        .tokens
                        .entry((provider.clone(), model.clone(), direction))
                        .or_default() += tokens;
                }
            }
        });
    }

    /// An upstream answered with its headers this long after the call began.
    pub fn upstream_first_byte(&self, provider: &str, after: Duration) {
        self.with(|inner| {
            inner
                .upstream_ttfb
                .entry(provider.to_owned())
                .or_default()
                .observe(after)
        });
    }

    pub fn retry(&self, provider: &str) {
        self.with(|inner| *inner.retries.entry(provider.to_owned()).or_default() += 1);
    }

    pub fn fallback(&self, provider: &str) {
        self.with(|inner| *inner.fallbacks.entry(provider.to_owned()).or_default() += 1);
    }

    /// A failed upstream call: its status, or the kind of failure (`timeout`, `connection`).
    pub fn upstream_error(&self, provider: &str, status: &str) {
        self.with(|inner| {
            *inner
                .upstream_errors
                .entry((provider.to_owned(), status.to_owned()))
                .or_default() += 1
        });
    }

    /// The text format, with the in-flight gauge read at the moment of the scrape.
    pub fn render(&self, in_flight: usize) -> String {
        let mut out = String::with_capacity(4096);
        self.with(|inner| {
            header(&mut out, "llm_proxy_requests_total", "counter", "Requests by route, provider and status class.");
            for ((route, provider, class, outcome), count) in &inner.requests {
                let _ = writeln!(
                    out,
                    "llm_proxy_requests_total{{route=\"{route}\",provider=\"{provider}\",status=\"{class}\",outcome=\"{outcome}\"}} {count}"
                );
            }
            header(&mut out, "llm_proxy_requests_in_flight", "gauge", "Chat requests in flight, streams until they end.");
            let _ = writeln!(out, "llm_proxy_requests_in_flight {in_flight}");
            header(&mut out, "llm_proxy_request_duration_seconds", "histogram", "Whole request time, by provider (streams: until the last byte).");
            for (provider, histogram) in &inner.duration {
                histogram_lines(&mut out, "llm_proxy_request_duration_seconds", &format!("provider=\"{provider}\""), histogram);
            }
            header(&mut out, "llm_proxy_upstream_ttfb_seconds", "histogram", "Time from sending to an upstream until its response headers, by provider.");
            for (provider, histogram) in &inner.upstream_ttfb {
                histogram_lines(&mut out, "llm_proxy_upstream_ttfb_seconds", &format!("provider=\"{provider}\""), histogram);
            }
            header(&mut out, "llm_proxy_overhead_seconds", "histogram", "Time a request spent outside upstream calls: the proxy's own overhead.");
            histogram_lines(&mut out, "llm_proxy_overhead_seconds", "", &inner.overhead);
            header(&mut out, "llm_proxy_retries_total", "counter", "Retries, by the provider retried.");
            for (provider, count) in &inner.retries {
                let _ = writeln!(out, "llm_proxy_retries_total{{provider=\"{provider}\"}} {count}");
            }
            header(&mut out, "llm_proxy_fallbacks_total", "counter", "Moves to a fallback, by the provider fallen back to.");
            for (provider, count) in &inner.fallbacks {
                let _ = writeln!(out, "llm_proxy_fallbacks_total{{provider=\"{provider}\"}} {count}");
            }
            header(&mut out, "llm_proxy_upstream_errors_total", "counter", "Failed upstream calls, by provider and status (or timeout, connection).");
            for ((provider, status), count) in &inner.upstream_errors {
                let _ = writeln!(out, "llm_proxy_upstream_errors_total{{provider=\"{provider}\",status=\"{status}\"}} {count}");
            }
            header(&mut out, "llm_proxy_tokens_total", "counter", "Tokens reported by upstreams, by provider, model and direction.");
            for ((provider, model, direction), count) in &inner.tokens {
                let _ = writeln!(out, "llm_proxy_tokens_total{{provider=\"{provider}\",model=\"{model}\",direction=\"{direction}\"}} {count}");
            }
        });
        out
    }
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

fn histogram_lines(out: &mut String, name: &str, labels: &str, histogram: &Histogram) {
    let sep = if labels.is_empty() { "" } else { "," };
    let mut cumulative = 0;
    for (bound, count) in BUCKETS.iter().zip(histogram.counts) {
        cumulative += count;
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels}{sep}le=\"{bound}\"}} {cumulative}"
        );
    }
    let _ = writeln!(
        out,
        "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}",
        histogram.count
    );
    let braces = if labels.is_empty() {
        String::new()
    } else {
        format!("{{{labels}}}")
    };
    let _ = writeln!(out, "{name}_sum{braces} {}", histogram.sum);
    let _ = writeln!(out, "{name}_count{braces} {}", histogram.count);
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

/// The model as a label value: itself while the provider has fewer than the cap, else `other`.
/// Label values are also kept to a safe alphabet, so a caller's text cannot break the format.
fn bounded_model(
    models: &mut BTreeMap<String, BTreeSet<String>>,
    provider: &str,
    model: &str,
) -> String {
    let safe = model.len() <= 128
        && model
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:/@".contains(&b));
    if !safe {
        return "other".into();
    }
    let known = models.entry(provider.to_owned()).or_default();
    if known.contains(model) || known.len() < MAX_MODELS_PER_PROVIDER {
        known.insert(model.to_owned());
        model.to_owned()
    } else {
        "other".into()
    }
}

#[cfg(test)]
mod tests {
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
            }),
        }
    }

    #[test]
    fn counters_and_histograms_render_in_the_text_format() {
        let metrics = Metrics::default();
        metrics.finished(&finished("gpt-4o-mini"));
        metrics.finished(&Finished {
            status: 429,
            usage: None,
            ..finished("gpt-4o-mini")
        });
        metrics.retry("openai");
        metrics.fallback("anthropic");
        metrics.upstream_error("openai", "429");
        metrics.upstream_first_byte("openai", Duration::from_millis(20));
        let text = metrics.render(3);
        for line in [
            r#"llm_proxy_requests_total{route="chat",provider="openai",status="2xx",outcome="ok"} 1"#,
            r#"llm_proxy_requests_total{route="chat",provider="openai",status="4xx",outcome="ok"} 1"#,
            "llm_proxy_requests_in_flight 3",
            r#"llm_proxy_request_duration_seconds_bucket{provider="openai",le="0.05"} 2"#,
            r#"llm_proxy_request_duration_seconds_bucket{provider="openai",le="0.025"} 0"#,
            r#"llm_proxy_request_duration_seconds_count{provider="openai"} 2"#,
            r#"llm_proxy_upstream_ttfb_seconds_count{provider="openai"} 1"#,
            r#"llm_proxy_overhead_seconds_bucket{le="0.001"} 2"#,
            "llm_proxy_overhead_seconds_count 2",
            r#"llm_proxy_retries_total{provider="openai"} 1"#,
            r#"llm_proxy_fallbacks_total{provider="anthropic"} 1"#,
            r#"llm_proxy_upstream_errors_total{provider="openai",status="429"} 1"#,
            r#"llm_proxy_tokens_total{provider="openai",model="gpt-4o-mini",direction="input"} 10"#,
            r#"llm_proxy_tokens_total{provider="openai",model="gpt-4o-mini",direction="output"} 3"#,
            "# TYPE llm_proxy_request_duration_seconds histogram",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line}\n{text}");
        }
    }

    #[test]
    fn invented_model_names_are_capped_and_unsafe_ones_folded() {
        let metrics = Metrics::default();
        for n in 0..MAX_MODELS_PER_PROVIDER + 20 {
            metrics.finished(&finished(&format!("model-{n}")));
        }
        metrics.finished(&finished("evil\"} 1\nfake_metric{"));
        let text = metrics.render(0);
        let models: BTreeSet<_> = text
            .lines()
            .filter(|l| l.starts_with("llm_proxy_tokens_total") && l.contains("input"))
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
        assert!(
            text.contains(r#"model="other",direction="input"} 210"#),
            "{text}"
        );
    }
}
