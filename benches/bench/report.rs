//! The results: what each scenario found, the targets, the Markdown table and the JSON.

use std::{io, path::Path, time::Duration};

use serde::Serialize;

use crate::{
    load::{Run, StreamRun, Throughput},
    machine::{Interference, Machine, Pinning},
    mock::{self, Provider},
    scale::Scale,
    shared::LimitCheck,
    stats::{percentiles, Percentiles},
};

// The targets (issue 5). They are reported against, never asserted.
/// Added latency at 500 req/s.
const ADDED_P50_MS: f64 = 0.15;
const ADDED_P99_MS: f64 = 0.3;
const TARGET_RATE: f64 = 500.0;
/// Added to a stream's time to first byte, and to any gap between two events.
const STREAM_ADDED_MS: f64 = 0.3;
/// CPU time per non-stream request, so at least 1 s / 30 µs = 33,333 req/s on one core
/// (the issue rounds it to 30,000).
const CPU_PER_REQUEST_US: f64 = 30.0;
const MIN_REQUESTS_PER_S: f64 = 30_000.0;
const RSS_IDLE_MIB: f64 = 20.0;
const RSS_STREAMS_MIB: f64 = 100.0;
/// "Levelled off": the last third of the load run grows RSS by less than this.
const LEVELLED_GROWTH_PCT: f64 = 5.0;
/// A hit of the response cache answers within this (issue 13), p50 and p99 alike.
const CACHE_HIT_MS: f64 = 1.0;
/// Other processes' share of either CPU above which a scenario's figures are flagged.
pub const DISTURBED_PCT: f64 = 10.0;

pub const MIB: f64 = 1024.0 * 1024.0;

/// The OpenAI door, which translates for an upstream of another format.
pub const TRANSLATED_ROUTE: &str = "/v1/chat/completions";
/// The OpenAI door again, asked for the response cache.
pub const CACHE_HIT_ROUTE: &str = "/v1/chat/completions with X-Proxy-Cache: use";

#[derive(Serialize)]
pub struct Results {
    pub machine: Machine,
    pub pinning: Pinning,
    pub under_test: String,
    pub latency: Vec<Latency>,
    /// Hits of the response cache, one at a time (llm-proxy only).
    pub cache_hit: Option<Latency>,
    pub throughput: Vec<MaxThroughput>,
    pub streaming: Vec<Streaming>,
    pub concurrent_streams: ConcurrentStreams,
    /// Absent for nginx in a run that measures both (its memory run is skipped to save a
    /// minute).
    pub memory: Option<Memory>,
    /// An issued key's limit check in process and on Redis, or why it did not run.
    pub limit_check: Option<Result<LimitCheck, String>>,
    /// CPU per stream event, ten thousand streams held, two workers (`scale.rs`).
    pub scale: Scale,
    /// An HTTPS upstream, HTTP/1.1 and HTTP/2 (llm-proxy only), or why it did not run.
    pub tls_upstream: Option<Result<crate::tls::TlsUpstream, String>>,
    /// Per scenario: how much of the CPUs other processes took.
    pub interference: Vec<Interference>,
    pub duration_s: f64,
}

/// Latency of non-stream requests, one at a time (`rate` is `None`) or at a fixed rate.
#[derive(Serialize)]
pub struct Latency {
    pub provider: &'static str,
    /// The proxy's route: `/v1/chat/<provider>`, or `/v1/chat/completions` (translated).
    pub route: &'static str,
    pub rate: Option<f64>,
    pub direct: Side,
    pub proxy: Side,
    pub added_p50_ms: f64,
    pub added_p99_ms: f64,
    /// The proxy's time on a CPU per request in this run (from schedstat).
    pub proxy_cpu_per_request_us: f64,
}

#[derive(Serialize)]
pub struct Side {
    #[serde(flatten)]
    pub latency: Percentiles,
    pub errors: usize,
    pub achieved_rate: f64,
}

impl Side {
    fn new(run: &Run) -> Side {
        Side {
            latency: percentiles(&run.latencies),
            errors: run.errors,
            achieved_rate: (run.latencies.len() + run.errors) as f64
                / run.elapsed.as_secs_f64().max(1e-9),
        }
    }
}

impl Latency {
    pub fn new(
        provider: Provider,
        route: &'static str,
        rate: Option<f64>,
        direct: &Run,
        proxy: &Run,
        proxy_cpu: Duration,
    ) -> Latency {
        let requests = (proxy.latencies.len() + proxy.errors).max(1);
        let (direct, proxy) = (Side::new(direct), Side::new(proxy));
        Latency {
            provider: provider.name(),
            route,
            rate,
            proxy_cpu_per_request_us: proxy_cpu.as_secs_f64() * 1e6 / requests as f64,
            added_p50_ms: proxy.latency.p50_ms - direct.latency.p50_ms,
            added_p99_ms: proxy.latency.p99_ms - direct.latency.p99_ms,
            direct,
            proxy,
        }
    }
}

#[derive(Serialize)]
pub struct MaxThroughput {
    pub provider: &'static str,
    pub connections: usize,
    pub direct_rps: f64,
    pub proxy_rps: f64,
    pub direct_errors: u64,
    pub proxy_errors: u64,
    pub proxy_cpu_per_10k_s: Option<f64>,
    pub proxy_cpu_per_request_us: Option<f64>,
    /// The part of it spent in the kernel (`stime`): sockets, loopback TCP, waking the peer.
    pub proxy_kernel_per_request_us: Option<f64>,
}

impl MaxThroughput {
    pub fn new(
        provider: Provider,
        connections: usize,
        direct: &Throughput,
        proxy: &Throughput,
    ) -> MaxThroughput {
        let rate = |t: &Throughput| t.requests as f64 / t.elapsed.as_secs_f64();
        let per_request = |time: Duration| time.as_secs_f64() / proxy.requests.max(1) as f64;
        let total = proxy.cpu.map(|cpu| per_request(cpu.total()));
        MaxThroughput {
            provider: provider.name(),
            connections,
            direct_rps: rate(direct),
            proxy_rps: rate(proxy),
            direct_errors: direct.errors,
            proxy_errors: proxy.errors,
            proxy_cpu_per_10k_s: total.map(|s| s * 10_000.0),
            proxy_cpu_per_request_us: total.map(|s| s * 1e6),
            proxy_kernel_per_request_us: proxy.cpu.map(|cpu| per_request(cpu.system) * 1e6),
        }
    }
}

/// What a set of streams' callers saw.
#[derive(Serialize)]
pub struct StreamSide {
    pub first_byte: Percentiles,
    /// From the mock writing an event (after the first) to the caller reading it.
    pub event_transit: Percentiles,
    pub gap: Percentiles,
    pub completed: usize,
    pub failed: usize,
}

impl StreamSide {
    fn new(run: &StreamRun) -> StreamSide {
        StreamSide {
            first_byte: percentiles(&run.first_bytes),
            event_transit: percentiles(&run.transits),
            gap: percentiles(&run.gaps),
            completed: run.completed,
            failed: run.failed,
        }
    }
}

#[derive(Serialize)]
pub struct Streaming {
    pub provider: &'static str,
    /// The proxy's route: `/v1/chat/<provider>` (passed through), or `/v1/chat/completions`
    /// (translated event by event).
    pub route: &'static str,
    pub streams: usize,
    pub spacing_ms: f64,
    pub direct: StreamSide,
    pub proxy: StreamSide,
    /// The proxy's time on a CPU (schedstat) over the proxied run, per stream started, and
    /// that divided by the upstream's events per stream (so it includes each stream's request).
    pub proxy_cpu_per_stream_us: f64,
    pub proxy_cpu_per_event_us: f64,
}

impl Streaming {
    pub fn new(
        provider: Provider,
        route: &'static str,
        streams: usize,
        spacing: Duration,
        direct: &StreamRun,
        proxy: &StreamRun,
        proxy_cpu: Duration,
    ) -> Streaming {
        let per_stream = proxy_cpu.as_secs_f64() * 1e6 / streams.max(1) as f64;
        Streaming {
            provider: provider.name(),
            route,
            streams,
            spacing_ms: spacing.as_secs_f64() * 1e3,
            direct: StreamSide::new(direct),
            proxy: StreamSide::new(proxy),
            proxy_cpu_per_stream_us: per_stream,
            proxy_cpu_per_event_us: per_stream / mock::CHUNKS as f64,
        }
    }
}

/// The name of a row's provider, with the route when the proxy translates.
pub fn label(provider: &str, route: &str) -> String {
    if route == TRANSLATED_ROUTE {
        format!("{provider} via {route} (translated)")
    } else {
        provider.to_owned()
    }
}

#[derive(Serialize)]
pub struct ConcurrentStreams {
    pub provider: &'static str,
    pub streams: usize,
    pub direct: StreamSide,
    pub proxy: StreamSide,
    pub proxy_peak_rss_mib: f64,
}

impl ConcurrentStreams {
    pub fn new(
        provider: Provider,
        streams: usize,
        direct: &StreamRun,
        proxy: &StreamRun,
        proxy_peak_rss: u64,
    ) -> ConcurrentStreams {
        ConcurrentStreams {
            provider: provider.name(),
            streams,
            direct: StreamSide::new(direct),
            proxy: StreamSide::new(proxy),
            proxy_peak_rss_mib: proxy_peak_rss as f64 / MIB,
        }
    }
}

#[derive(Serialize)]
pub struct RssSample {
    pub t_s: f64,
    pub rss_mib: f64,
}

impl RssSample {
    pub fn new(t_s: f64, rss: u64) -> RssSample {
        RssSample {
            t_s,
            rss_mib: rss as f64 / MIB,
        }
    }
}

/// The memory run: its load, and the proxy's RSS through it and after.
#[derive(Serialize)]
pub struct Soak {
    pub seconds: f64,
    pub connections: usize,
    pub streams: usize,
    pub requests: u64,
    pub streams_completed: u64,
    pub failed: u64,
    pub proxy_cpu_s: f64,
    pub samples: Vec<RssSample>,
    pub idle_after_mib: f64,
}

#[derive(Serialize)]
pub struct Memory {
    pub idle_mib: f64,
    pub with_1000_streams_mib: f64,
    pub after_load_mib: f64,
    /// Growth from the start of the last third of the load run to its highest reading.
    pub last_third_growth_pct: f64,
    pub levelled_off: bool,
    pub load: Soak,
}

impl Memory {
    pub fn new(idle: u64, with_1000_streams_mib: f64, load: Soak) -> Memory {
        let samples = &load.samples;
        let last_third = &samples[samples.len() * 2 / 3..];
        let from = last_third.first().map_or(0.0, |s| s.rss_mib);
        let peak = last_third.iter().map(|s| s.rss_mib).fold(from, f64::max);
        let growth = (peak - from) / from.max(f64::MIN_POSITIVE) * 100.0;
        Memory {
            idle_mib: idle as f64 / MIB,
            with_1000_streams_mib,
            after_load_mib: samples.last().map_or(0.0, |s| s.rss_mib),
            last_third_growth_pct: growth,
            levelled_off: growth < LEVELLED_GROWTH_PCT,
            load,
        }
    }
}

/// The results as one Markdown table: direct beside through the proxy, the difference, the
/// target and whether it was met; with the machine above it and any failures below.
pub fn table(results: &Results) -> String {
    let mut rows: Vec<[String; 6]> = Vec::new();
    for latency in &results.latency {
        rows.push(latency_row(latency));
    }
    if let Some(hit) = &results.cache_hit {
        rows.extend(cache_hit_rows(hit));
    }
    for max in &results.throughput {
        rows.extend(throughput_rows(max));
    }
    for streaming in &results.streaming {
        rows.extend(streaming_rows(streaming));
    }
    rows.extend(concurrent_rows(&results.concurrent_streams));
    if let Some(memory) = &results.memory {
        rows.extend(memory_rows(memory));
    }
    rows.extend(limit_check_rows(results.limit_check.as_ref()));
    rows.extend(crate::scale::rows(&results.scale));
    if results.tls_upstream.is_some() {
        rows.extend(crate::tls::table_rows(results.tls_upstream.as_ref()));
    }

    let m = &results.machine;
    let mut out = format!(
        "Benchmark of {}: {} CPUs ({}), Linux {}, {}\n{}\n{}\n\n",
        results.under_test,
        m.cpus,
        m.cpu_model,
        m.kernel,
        m.rustc,
        results.pinning.note,
        interference_summary(&results.interference)
    );
    out.push_str(&markdown(
        ["Measure", "Direct", "Via proxy", "Added", "Target", "Met"],
        &rows,
    ));
    for failure in failures(results) {
        out.push_str(&format!("\nNOTE: {failure}"));
    }
    out
}

/// The issued key's limit check: the in-process figure in the first column, Redis's in the
/// second, and what Redis adds.
fn limit_check_rows(check: Option<&Result<LimitCheck, String>>) -> Vec<[String; 6]> {
    let check = match check {
        None => return Vec::new(),
        Some(Err(why)) => {
            let skipped = format!("skipped: {why}");
            return vec![[
                "Issued key's limit check on Redis".to_owned(),
                skipped,
                String::new(),
                String::new(),
                String::new(),
                String::new(),
            ]];
        }
        Some(Ok(check)) => check,
    };
    let (here, redis) = (&check.in_process, &check.on_redis);
    let cpu = |side: &crate::shared::Side| format!("{:.1} µs", side.proxy_cpu_per_request_us);
    vec![
        [
            "Issued key's rpm check, one at a time, p50 / p99: in process, then on Redis"
                .to_owned(),
            p50_p99(&here.latency),
            p50_p99(&redis.latency),
            added(
                redis.latency.p50_ms - here.latency.p50_ms,
                redis.latency.p99_ms - here.latency.p99_ms,
            ),
            String::new(),
            String::new(),
        ],
        [
            "Issued key's rpm check, proxy CPU per request: in process, then on Redis".to_owned(),
            cpu(here),
            cpu(redis),
            format!(
                "{:+.1} µs",
                redis.proxy_cpu_per_request_us - here.proxy_cpu_per_request_us
            ),
            String::new(),
            String::new(),
        ],
    ]
}

fn latency_row(l: &Latency) -> [String; 6] {
    let when = match l.rate {
        None => "one at a time".to_owned(),
        Some(rate) => format!("at {} req/s", thousands(rate)),
    };
    let (target, met) = if l.rate == Some(TARGET_RATE) {
        (
            format!("≤ {ADDED_P50_MS} / ≤ {ADDED_P99_MS} ms"),
            format!(
                "{} / {}",
                yes_no(l.added_p50_ms <= ADDED_P50_MS),
                yes_no(l.added_p99_ms <= ADDED_P99_MS)
            ),
        )
    } else {
        (String::new(), String::new())
    };
    [
        format!("Latency p50 / p99, {when}, {}", label(l.provider, l.route)),
        p50_p99(&l.direct.latency),
        p50_p99(&l.proxy.latency),
        added(l.added_p50_ms, l.added_p99_ms),
        target,
        met,
    ]
}

/// A cache hit's whole latency (not what it adds: it replaces the upstream call), beside the
/// upstream's own answer to the same request; and its CPU time.
fn cache_hit_rows(l: &Latency) -> Vec<[String; 6]> {
    vec![
        [
            format!("Cache hit latency p50 / p99, one at a time, {}", l.route),
            p50_p99(&l.direct.latency),
            p50_p99(&l.proxy.latency),
            added(l.added_p50_ms, l.added_p99_ms),
            format!("< {CACHE_HIT_MS} / < {CACHE_HIT_MS} ms"),
            format!(
                "{} / {}",
                yes_no(l.proxy.latency.p50_ms < CACHE_HIT_MS),
                yes_no(l.proxy.latency.p99_ms < CACHE_HIT_MS)
            ),
        ],
        [
            "Proxy CPU time per cache hit (schedstat)".to_owned(),
            "—".into(),
            format!("{:.1} µs", l.proxy_cpu_per_request_us),
            String::new(),
            String::new(),
            String::new(),
        ],
    ]
}

fn throughput_rows(t: &MaxThroughput) -> Vec<[String; 6]> {
    let mut rows = vec![[
        format!("Max req/s, {} connections, {}", t.connections, t.provider),
        thousands(t.direct_rps),
        thousands(t.proxy_rps),
        format!("{:.2}× direct", t.proxy_rps / t.direct_rps),
        format!("≥ {}", thousands(MIN_REQUESTS_PER_S)),
        yes_no(t.proxy_rps >= MIN_REQUESTS_PER_S).into(),
    ]];
    if let (Some(per_10k), Some(per_request), Some(kernel)) = (
        t.proxy_cpu_per_10k_s,
        t.proxy_cpu_per_request_us,
        t.proxy_kernel_per_request_us,
    ) {
        rows.push([
            format!("Proxy CPU time per 10,000 requests, {}", t.provider),
            "—".into(),
            format!("{per_10k:.3} s ({per_request:.1} µs each, {kernel:.1} in the kernel)"),
            String::new(),
            format!("≤ {:.2} s", CPU_PER_REQUEST_US * 1e-6 * 10_000.0),
            yes_no(per_request <= CPU_PER_REQUEST_US).into(),
        ]);
    }
    rows
}

fn streaming_rows(s: &Streaming) -> Vec<[String; 6]> {
    let what = format!("{} streams, {}", s.streams, label(s.provider, s.route));
    vec![
        stream_row(
            format!("Stream time to first byte p50 / p99, {what}"),
            &s.direct.first_byte,
            &s.proxy.first_byte,
        ),
        stream_row(
            format!("Stream event delay p50 / p99 (adds to each gap), {what}"),
            &s.direct.event_transit,
            &s.proxy.event_transit,
        ),
        [
            format!(
                "Proxy CPU time per stream (per upstream event, of {}), {what}",
                mock::CHUNKS
            ),
            "—".into(),
            format!(
                "{:.0} µs ({:.1} µs)",
                s.proxy_cpu_per_stream_us, s.proxy_cpu_per_event_us
            ),
            String::new(),
            String::new(),
            String::new(),
        ],
    ]
}

fn stream_row(measure: String, direct: &Percentiles, proxy: &Percentiles) -> [String; 6] {
    let (added_p50, added_p99) = (proxy.p50_ms - direct.p50_ms, proxy.p99_ms - direct.p99_ms);
    [
        measure,
        p50_p99(direct),
        p50_p99(proxy),
        added(added_p50, added_p99),
        format!("≤ +{STREAM_ADDED_MS} ms"),
        format!(
            "{} / {}",
            yes_no(added_p50 <= STREAM_ADDED_MS),
            yes_no(added_p99 <= STREAM_ADDED_MS)
        ),
    ]
}

fn concurrent_rows(c: &ConcurrentStreams) -> Vec<[String; 6]> {
    let (direct, proxy) = (&c.direct.first_byte, &c.proxy.first_byte);
    let completed = |side: &StreamSide| format!("{} / {}", side.completed, c.streams);
    vec![
        [
            format!(
                "{} streams at once: time to first byte p50 / p99, {}",
                thousands(c.streams as f64),
                c.provider
            ),
            p50_p99(direct),
            p50_p99(proxy),
            added(proxy.p50_ms - direct.p50_ms, proxy.p99_ms - direct.p99_ms),
            String::new(),
            String::new(),
        ],
        [
            format!("{} streams at once: completed", thousands(c.streams as f64)),
            completed(&c.direct),
            completed(&c.proxy),
            String::new(),
            "all".into(),
            yes_no(c.proxy.completed == c.streams).into(),
        ],
    ]
}

fn memory_rows(m: &Memory) -> Vec<[String; 6]> {
    let rss = |measure: &str, mib: f64, target: Option<f64>| -> [String; 6] {
        [
            measure.to_owned(),
            "—".into(),
            format!("{mib:.1} MiB"),
            String::new(),
            target.map_or_else(String::new, |t| format!("≤ {t} MiB")),
            target.map_or_else(String::new, |t| yes_no(mib <= t).into()),
        ]
    };
    let load = &m.load;
    vec![
        rss(
            "Proxy RSS idle (fresh start)",
            m.idle_mib,
            Some(RSS_IDLE_MIB),
        ),
        rss(
            "Proxy RSS with 1,000 streams open (peak)",
            m.with_1000_streams_mib,
            Some(RSS_STREAMS_MIB),
        ),
        rss(
            &format!(
                "Proxy RSS after {:.0} s of load ({} connections + {} streams)",
                load.seconds, load.connections, load.streams
            ),
            m.after_load_mib,
            None,
        ),
        [
            format!("RSS levelled off (last third grows < {LEVELLED_GROWTH_PCT}%)"),
            "—".into(),
            format!("{:+.1}% in the last third", m.last_third_growth_pct),
            String::new(),
            "flat".into(),
            yes_no(m.levelled_off).into(),
        ],
        rss("Proxy RSS idle after the load", load.idle_after_mib, None),
    ]
}

/// Failed requests or streams anywhere (they are left out of the percentiles, so they must
/// be seen), and scenarios that other processes disturbed.
fn failures(results: &Results) -> Vec<String> {
    let mut failures = Vec::new();
    for l in &results.latency {
        for (side, errors) in [("direct", l.direct.errors), ("proxy", l.proxy.errors)] {
            if errors > 0 {
                failures.push(format!(
                    "{errors} failed {side} requests ({})",
                    label(l.provider, l.route)
                ));
            }
        }
    }
    if let Some(hit) = results.cache_hit.as_ref().filter(|l| l.proxy.errors > 0) {
        failures.push(format!("{} failed cache hits", hit.proxy.errors));
    }
    for t in &results.throughput {
        if t.direct_errors + t.proxy_errors > 0 {
            failures.push(format!(
                "closed loop {}: {} failed direct, {} failed through the proxy",
                t.provider, t.direct_errors, t.proxy_errors
            ));
        }
    }
    for s in &results.streaming {
        if s.direct.failed + s.proxy.failed > 0 {
            failures.push(format!(
                "streams {}: {} failed direct, {} through the proxy",
                label(s.provider, s.route),
                s.direct.failed,
                s.proxy.failed
            ));
        }
    }
    if let Some(memory) = results.memory.as_ref().filter(|m| m.load.failed > 0) {
        failures.push(format!(
            "{} failed requests or streams in the load run",
            memory.load.failed
        ));
    }
    let disturbed = results
        .interference
        .iter()
        .filter(|i| i.others_on_proxy_cpu_pct.max(i.others_on_load_cpu_pct) > DISTURBED_PCT)
        .count();
    if disturbed > 0 {
        failures.push(format!(
            "other processes took more than {DISTURBED_PCT}% of a CPU in {disturbed} of {} \
             scenarios: those figures are skewed; rerun on a quiet machine",
            results.interference.len()
        ));
    }
    failures
}

/// The worst share of either CPU that other processes took in any one scenario.
pub fn interference_summary(steps: &[Interference]) -> String {
    let worst = steps.iter().max_by(|a, b| {
        let key = |i: &Interference| i.others_on_proxy_cpu_pct.max(i.others_on_load_cpu_pct);
        key(a).total_cmp(&key(b))
    });
    match worst {
        Some(w) => format!(
            "Other processes took at most {:.1}% of the proxy's CPU and {:.1}% of the load's in \
             any scenario (worst: {}); hypervisor steal {:.1}%.",
            w.others_on_proxy_cpu_pct, w.others_on_load_cpu_pct, w.scenario, w.steal_pct
        ),
        None => String::new(),
    }
}

pub fn markdown(header: [&str; 6], rows: &[[String; 6]]) -> String {
    let mut widths = header.map(|h| h.chars().count());
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: [&str; 6]| -> String {
        let padded: Vec<String> = cells
            .iter()
            .zip(widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        format!("| {} |\n", padded.join(" | "))
    };
    let mut out = line(header);
    out.push_str(&line(
        widths.map(|w| "-".repeat(w)).each_ref().map(|s| s.as_str()),
    ));
    for row in rows {
        out.push_str(&line(row.each_ref().map(|s| s.as_str())));
    }
    out
}

pub fn p50_p99(p: &Percentiles) -> String {
    format!("{:.3} / {:.3} ms", p.p50_ms, p.p99_ms)
}

fn added(p50_ms: f64, p99_ms: f64) -> String {
    format!("{p50_ms:+.3} / {p99_ms:+.3} ms")
}

pub fn yes_no(met: bool) -> &'static str {
    if met {
        "yes"
    } else {
        "no"
    }
}

/// `12345.6` as `12,346`.
pub fn thousands(value: f64) -> String {
    let digits = format!("{:.0}", value.max(0.0));
    let mut out = String::new();
    for (i, digit) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

pub fn write_json(path: &Path, results: &Results) -> io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let json = serde_json::to_string_pretty(results).map_err(io::Error::other)?;
    std::fs::write(path, json + "\n")
}
