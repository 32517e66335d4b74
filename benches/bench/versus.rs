//! llm-proxy beside nginx, measured in the same run on the same load: issue 14's targets, each
//! with both figures, their ratio or difference, and whether it was met.

use std::{io, path::Path};

use serde::Serialize;

use crate::{
    report::{
        interference_summary, markdown, thousands, yes_no, Latency, MaxThroughput, Results,
        Streaming, TRANSLATED_ROUTE,
    },
    scale::{self, EventSlope},
    stats::Percentiles,
};

// Issue 14's targets. They are reported against, never asserted.
/// llm-proxy's CPU time per non-stream request (closed loop) against nginx's, at most.
const CPU_RATIO: f64 = 1.2;
/// llm-proxy's req/s on one core against nginx's, at least.
const THROUGHPUT_RATIO: f64 = 0.85;
/// The open-loop rates, and how far llm-proxy's added p50 and p99 may each be above nginx's.
const RATES: [f64; 2] = [50.0, 500.0];
const LATENCY_MS: f64 = 0.05;
/// How far a stream's added time to first byte, and its added delay per event, may be above
/// nginx's (p50 and p99 each).
const STREAM_MS: f64 = 0.05;
/// A translated stream's CPU time per event, at most.
const TRANSLATED_EVENT_US: f64 = 2.0;
/// Streams open at once (`scale::MANY_STREAMS`), with the RSS they may take.
const MANY_STREAMS: f64 = scale::MANY_STREAMS as f64;
const MANY_STREAMS_RSS_MIB: f64 = 150.0;
/// Two workers' throughput on two cores against one worker's on one, at least.
const TWO_WORKERS_SCALE: f64 = 1.8;

/// One target: llm-proxy's figure, nginx's, the two compared, and the verdict.
#[derive(Serialize)]
pub struct Row {
    pub measure: String,
    pub llm_proxy: String,
    pub nginx: String,
    /// llm-proxy's figure against nginx's: a ratio, or a difference in ms.
    pub versus: String,
    pub target: String,
    /// "yes", "no", "yes / no" (p50 / p99), or why it is not measured.
    pub met: String,
    /// One entry per figure judged (two for a p50 / p99 row); empty when not measured.
    pub verdicts: Vec<bool>,
}

impl Row {
    fn not_measured(measure: String, llm_proxy: String, target: String, why: String) -> Row {
        Row {
            measure,
            llm_proxy,
            nginx: String::new(),
            versus: String::new(),
            target,
            met: why,
            verdicts: Vec::new(),
        }
    }
}

/// Every target of issue 14, in its order: those the benchmark can measure from `llm_proxy`'s
/// and `nginx`'s results of the same run, and a row saying why for each it cannot yet.
pub fn rows(llm_proxy: &Results, nginx: &Results) -> Vec<Row> {
    let mut rows = Vec::new();
    let providers: Vec<&str> = llm_proxy.throughput.iter().map(|t| t.provider).collect();
    for &provider in &providers {
        let (Some(ours), Some(theirs)) =
            (throughput(llm_proxy, provider), throughput(nginx, provider))
        else {
            continue;
        };
        if let (Some(ours_us), Some(theirs_us)) = (
            ours.proxy_cpu_per_request_us,
            theirs.proxy_cpu_per_request_us,
        ) {
            let ratio = ours_us / theirs_us;
            rows.push(Row {
                measure: format!("CPU per non-stream request (closed loop), {provider}"),
                llm_proxy: format!("{ours_us:.1} µs"),
                nginx: format!("{theirs_us:.1} µs"),
                versus: format!("{ratio:.2}×"),
                target: format!("≤ {CPU_RATIO}×"),
                met: yes_no(ratio <= CPU_RATIO).into(),
                verdicts: vec![ratio <= CPU_RATIO],
            });
        }
        let ratio = ours.proxy_rps / theirs.proxy_rps;
        rows.push(Row {
            measure: format!(
                "Req/s at {} connections, one core, {provider}",
                ours.connections
            ),
            llm_proxy: thousands(ours.proxy_rps),
            nginx: thousands(theirs.proxy_rps),
            versus: format!("{ratio:.2}×"),
            target: format!("≥ {THROUGHPUT_RATIO}×"),
            met: yes_no(ratio >= THROUGHPUT_RATIO).into(),
            verdicts: vec![ratio >= THROUGHPUT_RATIO],
        });
    }
    for rate in RATES {
        for &provider in &providers {
            let (Some(ours), Some(theirs)) = (
                latency(llm_proxy, provider, rate),
                latency(nginx, provider, rate),
            ) else {
                continue;
            };
            rows.push(within(
                format!(
                    "Added latency p50 / p99 at {} req/s, {provider}",
                    thousands(rate)
                ),
                (ours.added_p50_ms, ours.added_p99_ms),
                (theirs.added_p50_ms, theirs.added_p99_ms),
                LATENCY_MS,
            ));
        }
    }
    for &provider in &providers {
        let (Some(ours), Some(theirs)) =
            (streaming(llm_proxy, provider), streaming(nginx, provider))
        else {
            continue;
        };
        let added = |s: &Streaming, side: fn(&crate::report::StreamSide) -> &Percentiles| {
            let (proxy, direct) = (side(&s.proxy), side(&s.direct));
            (proxy.p50_ms - direct.p50_ms, proxy.p99_ms - direct.p99_ms)
        };
        rows.push(within(
            format!("Stream: added time to first byte p50 / p99, {provider}"),
            added(ours, |side| &side.first_byte),
            added(theirs, |side| &side.first_byte),
            STREAM_MS,
        ));
        rows.push(within(
            format!("Stream: added delay per event p50 / p99, {provider}"),
            added(ours, |side| &side.event_transit),
            added(theirs, |side| &side.event_transit),
            STREAM_MS,
        ));
    }
    rows.extend(event_rows(llm_proxy, nginx));
    rows.push(many_streams_row(llm_proxy, nginx));
    rows.extend(crate::tls::versus_rows(llm_proxy.tls_upstream.as_ref()));
    rows.push(two_workers_row(llm_proxy, nginx));
    rows
}

/// A p50 / p99 row of added times: llm-proxy's within `ms` of nginx's, each.
fn within(measure: String, ours: (f64, f64), theirs: (f64, f64), ms: f64) -> Row {
    let difference = (ours.0 - theirs.0, ours.1 - theirs.1);
    let verdicts = vec![difference.0 <= ms, difference.1 <= ms];
    Row {
        measure,
        llm_proxy: signed_ms(ours),
        nginx: signed_ms(theirs),
        versus: signed_ms(difference),
        target: format!("≤ +{ms} / ≤ +{ms} ms"),
        met: format!("{} / {}", yes_no(verdicts[0]), yes_no(verdicts[1])),
        verdicts,
    }
}

/// A stream event's CPU time, as the slope between streams of two lengths on one route (see
/// `scale.rs`): the translated route against its own target, with nginx's pass-through slope
/// beside for scale; the pass-through route against nginx's, judged as issue 14 judges CPU per
/// request (at most [`CPU_RATIO`] of nginx's).
fn event_rows(llm_proxy: &Results, nginx: &Results) -> Vec<Row> {
    fn slope(results: &Results, translated: bool) -> Option<&EventSlope> {
        results
            .scale
            .event_slopes
            .iter()
            .find(|s| (s.route == TRANSLATED_ROUTE) == translated)
    }
    let figure = |s: &EventSlope| {
        format!(
            "{:.2} µs ({:.0} → {:.0} µs per stream of {} → {})",
            s.cpu_per_event_us,
            s.short_cpu_per_stream_us,
            s.long_cpu_per_stream_us,
            s.short_events,
            s.long_events
        )
    };
    let failed = |s: &EventSlope| {
        if s.failed > 0 {
            format!(" ({} streams failed)", s.failed)
        } else {
            String::new()
        }
    };
    let mut rows = Vec::new();
    let theirs = slope(nginx, false);
    if let Some(ours) = slope(llm_proxy, true) {
        let met = ours.cpu_per_event_us <= TRANSLATED_EVENT_US && ours.failed == 0;
        rows.push(Row {
            measure: format!(
                "Translated stream (OpenAI door, {} upstream): CPU per event (slope)",
                ours.provider
            ),
            llm_proxy: figure(ours),
            nginx: theirs.map_or_else(String::new, |t| {
                format!("(passes through: {:.2} µs)", t.cpu_per_event_us)
            }),
            // What translating adds to an event, beside passing the same events through.
            versus: slope(llm_proxy, false).map_or_else(String::new, |passed| {
                format!(
                    "{:+.2} µs over passing through",
                    ours.cpu_per_event_us - passed.cpu_per_event_us
                )
            }),
            target: format!("≤ {TRANSLATED_EVENT_US} µs"),
            met: format!("{}{}", yes_no(met), failed(ours)),
            verdicts: vec![met],
        });
    }
    if let (Some(ours), Some(theirs)) = (slope(llm_proxy, false), theirs) {
        let ratio = ours.cpu_per_event_us / theirs.cpu_per_event_us;
        let met = ratio <= CPU_RATIO && ours.failed == 0;
        rows.push(Row {
            measure: format!(
                "Stream passed through ({}): CPU per event (slope)",
                ours.provider
            ),
            llm_proxy: figure(ours),
            nginx: figure(theirs),
            versus: format!("{ratio:.2}×"),
            target: format!("≤ {CPU_RATIO}×"),
            met: format!("{}{}", yes_no(met), failed(ours)),
            verdicts: vec![met],
        });
    }
    rows
}

/// Ten thousand streams held open for a minute (`scale.rs`): all complete with every event,
/// peak RSS, and flat (the hold's last third no higher than its middle third, within
/// [`scale::FLAT_PCT`] or [`scale::FLAT_MIB`]).
fn many_streams_row(llm_proxy: &Results, nginx: &Results) -> Row {
    let measure = format!(
        "{} streams at once: all complete, RSS, flat over a 60 s soak",
        thousands(MANY_STREAMS)
    );
    let target = format!("all; ≤ {MANY_STREAMS_RSS_MIB} MiB; flat");
    let figure = |results: &Results| {
        match &results.scale.many_streams {
        Some(Ok(m)) => format!(
            "{} / {} complete; peak {:.1} MiB; last third {:.1} against {:.1} MiB; opened in {:.1} s",
            m.completed,
            m.streams,
            m.peak_rss_mib,
            m.flat.last_third_max_mib,
            m.flat.middle_third_max_mib,
            m.open_all_s
        ),
        Some(Err(why)) => format!("not run: {why}"),
        None => "not run".into(),
    }
    };
    let Some(Ok(ours)) = &llm_proxy.scale.many_streams else {
        return Row::not_measured(measure, figure(llm_proxy), target, "not run".into());
    };
    let verdicts = vec![
        ours.completed == ours.streams,
        ours.peak_rss_mib <= MANY_STREAMS_RSS_MIB,
        ours.flat.flat,
    ];
    let versus = match &nginx.scale.many_streams {
        Some(Ok(theirs)) => format!("peak RSS {:.2}×", ours.peak_rss_mib / theirs.peak_rss_mib),
        _ => String::new(),
    };
    let met: Vec<&str> = verdicts.iter().map(|&v| yes_no(v)).collect();
    Row {
        measure,
        llm_proxy: figure(llm_proxy),
        nginx: figure(nginx),
        versus,
        target,
        met: met.join(" / "),
        verdicts,
    }
}

/// Two workers on both CPUs against one alone on one (`scale.rs`). This machine's load
/// generator shares those CPUs, so the raw req/s ratio is shown but the verdict is on the
/// projection from CPU per request: 2 × one worker's over two workers', what two workers would
/// do with two cores to themselves.
fn two_workers_row(llm_proxy: &Results, nginx: &Results) -> Row {
    let measure = "Two workers on two cores, against one worker on one (judged: projected from \
                   CPU per request)"
        .to_owned();
    let target = format!("≥ {TWO_WORKERS_SCALE}× (projected)");
    let figure = |results: &Results| match &results.scale.two_workers {
        Some(Ok(t)) => format!(
            "projected {:.2}× ({:.1} → {:.1} µs per request); raw {:.2}× ({} → {} req/s)",
            t.projected_ratio,
            t.one_worker_cpu_per_request_us,
            t.two_workers_cpu_per_request_us,
            t.raw_ratio,
            thousands(t.one_worker_rps),
            thousands(t.two_workers_rps)
        ),
        Some(Err(why)) => format!("not run: {why}"),
        None => "not run".into(),
    };
    let Some(Ok(ours)) = &llm_proxy.scale.two_workers else {
        return Row::not_measured(measure, figure(llm_proxy), target, "not run".into());
    };
    let met = ours.projected_ratio >= TWO_WORKERS_SCALE && ours.errors == 0;
    let versus = match &nginx.scale.two_workers {
        Some(Ok(theirs)) => format!(
            "projected {:.2}× vs {:.2}×",
            ours.projected_ratio, theirs.projected_ratio
        ),
        _ => String::new(),
    };
    Row {
        measure,
        llm_proxy: figure(llm_proxy),
        nginx: figure(nginx),
        versus,
        target,
        met: yes_no(met).into(),
        verdicts: vec![met],
    }
}

fn throughput<'a>(results: &'a Results, provider: &str) -> Option<&'a MaxThroughput> {
    results.throughput.iter().find(|t| t.provider == provider)
}

/// The provider's own path route (not the translated one) at `rate`.
fn latency<'a>(results: &'a Results, provider: &str, rate: f64) -> Option<&'a Latency> {
    results
        .latency
        .iter()
        .find(|l| l.provider == provider && l.route != TRANSLATED_ROUTE && l.rate == Some(rate))
}

/// The provider's stream passed through on its own path route.
fn streaming<'a>(results: &'a Results, provider: &str) -> Option<&'a Streaming> {
    results
        .streaming
        .iter()
        .find(|s| s.provider == provider && s.route != TRANSLATED_ROUTE)
}

fn signed_ms((p50, p99): (f64, f64)) -> String {
    format!("{p50:+.3} / {p99:+.3} ms")
}

/// The comparison as a Markdown table, with how many targets were met and how quiet the
/// machine was.
pub fn table(rows: &[Row], llm_proxy: &Results) -> String {
    let verdicts: Vec<bool> = rows.iter().flat_map(|r| r.verdicts.clone()).collect();
    let met = verdicts.iter().filter(|&&v| v).count();
    let unmeasured = rows.iter().filter(|r| r.verdicts.is_empty()).count();
    let cells: Vec<[String; 6]> = rows
        .iter()
        .map(|r| {
            [
                r.measure.clone(),
                r.llm_proxy.clone(),
                r.nginx.clone(),
                r.versus.clone(),
                r.target.clone(),
                r.met.clone(),
            ]
        })
        .collect();
    format!(
        "Issue 14: llm-proxy beside nginx, same mock, same load, same run\n{}\n\n{}\n\
         Met {met} of {} figures judged; {unmeasured} targets not measured yet.",
        interference_summary(&llm_proxy.interference),
        markdown(
            [
                "Measure (issue 14)",
                "llm-proxy",
                "nginx",
                "llm-proxy vs nginx",
                "Target",
                "Met"
            ],
            &cells
        ),
        verdicts.len()
    )
}

pub fn write_json(path: &Path, rows: &[Row]) -> io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let json = serde_json::to_string_pretty(rows).map_err(io::Error::other)?;
    std::fs::write(path, json + "\n")
}
