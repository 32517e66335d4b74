//! `just bench` (or `cargo bench --bench bench`): what the proxy adds to a request, and what it
//! costs, next to the same load sent straight to the upstream and through nginx, in one run of
//! about seven minutes (four without the scale rows at the end).
//!
//! # What it measures
//!
//! - Added latency (p50 / p99) of a non-stream chat request: one request at a time, then open
//!   loop at a fixed 50, 500 and 1,000 req/s.
//! - The most non-stream req/s on 64 keep-alive connections (closed loop), and the proxy's CPU
//!   time per 10,000 requests over that window.
//! - Streams of 20 events 50 ms apart: the added time to first byte, and the added delay of each
//!   later event, which is what the gap before it grows by; and the proxy's CPU time per stream.
//! - The same for Anthropic through the OpenAI door (`POST /v1/chat/completions`, model
//!   `anthropic/<model>`), which translates the request and every event of the answer: streams,
//!   then non-stream latency one at a time and at 500 req/s.
//! - 1,000 streams opened at once: time to first byte, whether every one completes, and the
//!   proxy's resident memory meanwhile.
//! - A hit of the response cache (the OpenAI door with `X-Proxy-Cache: use`, the same body
//!   every time), one at a time: its latency against "under 1 ms", and its CPU time.
//! - The proxy's resident memory idle, then every 3 s through 60 s of mixed load (non-stream
//!   requests and streams, both providers), and whether it levelled off.
//! - Issue 14's scale rows (`scale.rs`), after everything else:
//!   - The proxy's CPU time per stream event, as a slope: 480 streams of 20 upstream events
//!     and 480 of 220, events 1 ms apart (asked for in the `X-Request-Id`, which the proxy
//!     passes upstream), on 16 connections opened beforehand, in two rounds of each; the
//!     slope is (CPU per long stream − CPU per short stream) / 200, so the request, its
//!     connection and the stream's start and end, which both lengths pay alike, fall out. For
//!     the translated route (against ≤ 2 µs) and for Anthropic passed through (against
//!     nginx's slope on the same streams).
//!   - 10,000 OpenAI streams at once, each of 21 events 3 s apart (a minute), on a fresh proxy
//!     with every default and a mock in a process of its own: opened 256 at a time, then
//!     held; whether every stream got every event, the time to open them all, and the proxy's
//!     RSS (peak read every 250 ms; recorded every 3 s). "Flat": of the samples while every
//!     stream was open, the last third's peak is at most the middle third's plus 5% or
//!     2 MiB, whichever is larger. nginx takes them too, on a process of its own with
//!     `worker_connections` 24,096 (the baseline's 16,384 would refuse some). Each proxy
//!     needs two descriptors a stream: under a hard limit of 20,000 a few streams fail.
//!   - Two workers (`WORKERS=2`; nginx with a master and two worker processes) on both CPUs,
//!     which the load generator and the mock share with them: the closed loop on 64
//!     connections, against the one-worker closed loop of the same run. This machine cannot
//!     give two workers two cores of their own, so beside the raw req/s ratio the figure
//!     judged is the one projected from CPU per request: 2 × one worker's / two workers'.
//! - An HTTPS upstream (a mock with a self-signed certificate, trusted by `UPSTREAM_CA_FILE`):
//!   TCP connections, full and resumed TLS handshakes against requests, beside the proxy's own
//!   counter; and HTTP/2 against HTTP/1.1 (CPU per request in a closed loop, p50 one at a
//!   time), the proxy's default first, then the other setting (llm-proxy only).
//!
//! Each figure is measured straight to the mock and through the proxy, in the same run; "added"
//! is the difference of the two percentiles. nginx (a plain `proxy_pass`, issue 14's yardstick)
//! runs beside llm-proxy on the same mock: each scenario sends its load to the mock once, then
//! through llm-proxy, then through nginx, so all three share the machine's state of the moment.
//! Scenarios nginx cannot take (the translated route, the cache, the limit check) and its 60 s
//! memory run are llm-proxy's alone. Without nginx on `PATH`, llm-proxy is measured alone and
//! the report says so. The figures are reported, never asserted: the benchmark does not fail
//! on a missed target.
//!
//! # How
//!
//! The proxy is the release binary `target/release/llm-proxy`, a separate process configured by
//! environment variables (`WORKERS=1`, `RUST_LOG=warn`, every limit at its default) and pinned alone
//! to one CPU with `taskset`. This process, the mock upstream and the load generator on one
//! current-thread tokio runtime, is pinned to another CPU. Both speak a minimal HTTP/1.1 over
//! loopback keep-alive connections, so that the proxy, not the harness, is what is measured.
//! The mock stamps every stream event with the time it was written, so each event's transit is
//! measured on its own: in an SSE comment, or, for the translated route (which drops comments),
//! inside each text delta's text, asked for by the request's `X-Request-Id`. Memory is `VmRSS` from `/proc/<pid>/status`; CPU time is
//! `utime + stime` from `/proc/<pid>/stat` (and, for the shorter latency runs, the nanosecond
//! run time in `/proc/<pid>/task/*/schedstat`). A shared machine skews every figure, so each
//! scenario also records how much of each CPU other processes took (from `/proc/stat`).
//!
//! The results are printed as one Markdown table per proxy, then issue 14's comparison, and
//! written to `target/bench/results.json`, `results-nginx.json` and `versus-nginx.json`.
//!
//! `cargo bench --bench bench -- --only nginx` (or `--only llm-proxy`) measures one of them,
//! with every scenario it can take. `-- --load-only <seconds>` starts the mock and the proxy
//! (llm-proxy, unless `--only nginx`), then runs only closed-loop
//! non-stream load for that long (with `--rate <req/s>`: open loop at that rate), to profile
//! the proxy under load: its pid is printed and written to `target/bench/proxy.pid` (see
//! `docs/benchmarks.md`).
//!
//! # Layout
//!
//! - `main.rs`: the scenarios, in the order they run.
//! - `mock.rs`: the mock upstream (OpenAI and Anthropic, JSON and SSE).
//! - `load.rs`: the requests and the load patterns (one at a time, fixed rate, closed loop,
//!   streams).
//! - `http.rs`: the minimal HTTP/1.1 both sides speak.
//! - `proxy.rs`: the proxy process: configure, start, find its port.
//! - `procfs.rs`: what /proc says: RSS, CPU time, listening port, busy CPUs.
//! - `machine.rs`: CPU pinning, other processes' share of the CPUs, the machine's description.
//! - `stats.rs`: percentiles.
//! - `report.rs`: the results, the table and the JSON.
//! - `scale.rs`: the scale rows: CPU per event, 10,000 streams, two workers.
//! - `tls.rs`: the TLS mock upstream (HTTP/1.1 and HTTP/2) and its two rows.
//! - `versus.rs`: llm-proxy beside nginx against issue 14's targets.

mod http;
mod load;
mod machine;
mod mock;
mod procfs;
mod proxy;
mod report;
mod scale;
mod shared;
mod stats;
mod tls;
mod versus;

use std::{
    future::Future,
    io,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::ExitCode,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use load::{Counters, Target, Via};
use machine::{CpuUse, Interference, Machine, Pinning};
use mock::Provider;
use proxy::{Proxy, Subject};
use report::{
    ConcurrentStreams, Latency, MaxThroughput, Memory, Results, RssSample, Soak, Streaming,
    CACHE_HIT_ROUTE, TRANSLATED_ROUTE,
};

/// The binary under test; cargo builds it before a bench.
const PROXY_BINARY: &str = env!("CARGO_BIN_EXE_llm-proxy");

/// Requests in each one-at-a-time run (after as many unmeasured to warm up).
const ONE_AT_A_TIME: usize = 2_000;
/// Open-loop rates and how long each runs: 50 req/s (issue 14's light rate, where an idle
/// CPU is woken for every request) long enough for 400 samples.
const RATES: [(f64, Duration); 3] = [
    (50.0, Duration::from_secs(8)),
    (500.0, Duration::from_secs(4)),
    (1_000.0, Duration::from_secs(3)),
];
/// The rate of `RATES` the translated route runs at too (500 req/s, issue 5's).
const TRANSLATED_RATE: usize = 1;
/// Connections of the closed loop, and its unmeasured and measured parts.
const CONNECTIONS: usize = 64;
const WARM: Duration = Duration::from_millis(500);
const MEASURE: Duration = Duration::from_secs(3);
/// Streams for the time-to-first-byte and per-event figures, started this far apart (about
/// 60 open at a time).
const STREAMS: usize = 120;
const STREAM_SPACING: Duration = Duration::from_millis(16);
const CONCURRENT_STREAMS: usize = 1_000;
/// The memory run: its length, how often RSS is read, and its load.
const SOAK: Duration = Duration::from_secs(60);
const SOAK_SAMPLE_EVERY: Duration = Duration::from_secs(3);
const SOAK_CONNECTIONS: usize = 32;
const SOAK_STREAMS: usize = 64;

fn main() -> ExitCode {
    if std::env::args().any(|arg| arg == scale::MOCK_PROCESS_ARG) {
        return scale::serve_mock_process();
    }
    let options = match Options::parse(std::env::args().skip(1)) {
        Ok(options) => options,
        Err(usage) => {
            eprintln!("bench: {usage}");
            return ExitCode::from(2);
        }
    };
    // Before any thread or child: all inherit it.
    let open_files = scale::raise_open_file_limit();
    // Before pinning, which leaves this process one CPU to see.
    let machine = machine::describe();
    let pinning = machine::pin();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("bench: cannot start a runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(options, machine, pinning, open_files)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench: {e}");
            ExitCode::FAILURE
        }
    }
}

const USAGE: &str =
    "usage: bench [--only llm-proxy|nginx] [--load-only <seconds> [--rate <req/s>]]";

/// The command line: `[--only llm-proxy|nginx] [--load-only <seconds> [--rate <req/s>]]`
/// (cargo adds `--bench`).
struct Options {
    /// What is measured, in this order: llm-proxy and nginx, unless `--only` one.
    subjects: Vec<Subject>,
    load_only: Option<Duration>,
    rate: Option<f64>,
}

impl Options {
    fn parse(args: impl Iterator<Item = String>) -> Result<Options, String> {
        let llm_proxy = Subject::LlmProxy(PROXY_BINARY.into());
        let nginx = Subject::Nginx(output_dir().join("nginx"));
        let mut only = None;
        let mut options = Options {
            subjects: Vec::new(),
            load_only: None,
            rate: None,
        };
        let mut args = args.filter(|arg| arg != "--bench");
        while let Some(arg) = args.next() {
            match arg.as_str() {
                "--only" => {
                    only = match args.next().as_deref() {
                        Some("llm-proxy") => Some(llm_proxy.clone()),
                        Some("nginx") => Some(nginx.clone()),
                        _ => return Err(format!("--only takes llm-proxy or nginx; {USAGE}")),
                    }
                }
                "--nginx" => {
                    return Err(format!(
                        "--nginx is now --only nginx (a default run measures both); {USAGE}"
                    ))
                }
                "--load-only" => {
                    let seconds = args.next().unwrap_or_default();
                    let seconds = seconds
                        .parse()
                        .map_err(|_| format!("--load-only takes whole seconds, not {seconds:?}"))?;
                    options.load_only = Some(Duration::from_secs(seconds));
                }
                "--rate" => {
                    let rate = args.next().unwrap_or_default();
                    let rate = rate
                        .parse()
                        .map_err(|_| format!("--rate takes requests per second, not {rate:?}"))?;
                    options.rate = Some(rate);
                }
                _ => return Err(USAGE.into()),
            }
        }
        // A profile is of one process: llm-proxy unless told otherwise.
        options.subjects = match (only, options.load_only) {
            (Some(subject), _) => vec![subject],
            (None, Some(_)) => vec![llm_proxy],
            (None, None) => vec![llm_proxy, nginx],
        };
        Ok(options)
    }
}

/// One provider, straight to the mock and through the proxy by one route.
struct Pair {
    provider: Provider,
    /// The proxy's route: `/v1/chat/<provider>`, or [`TRANSLATED_ROUTE`].
    route: &'static str,
    direct: Target,
    proxy: Target,
}

impl Pair {
    fn new(provider: Provider, mock: std::net::SocketAddr, proxy: &Proxy) -> Pair {
        Pair {
            provider,
            route: match provider {
                Provider::OpenAi => "/v1/chat/openai",
                Provider::Anthropic => "/v1/chat/anthropic",
            },
            direct: Target::new(mock, provider, Via::Direct),
            proxy: Target::new(proxy.addr, provider, Via::Proxy),
        }
    }

    /// Anthropic through the OpenAI door, translated both ways.
    fn translated(mock: std::net::SocketAddr, proxy: &Proxy) -> Pair {
        Pair {
            provider: Provider::Anthropic,
            route: TRANSLATED_ROUTE,
            direct: Target::translated(mock, Via::Direct),
            proxy: Target::translated(proxy.addr, Via::Proxy),
        }
    }

    /// OpenAI through the OpenAI door with the response cache asked for: all but the first
    /// request are hits.
    fn cached(mock: std::net::SocketAddr, proxy: &Proxy) -> Pair {
        Pair {
            provider: Provider::OpenAi,
            route: CACHE_HIT_ROUTE,
            direct: Target::cached(mock, Via::Direct),
            proxy: Target::cached(proxy.addr, Via::Proxy),
        }
    }

    /// How the scenarios name it.
    fn name(&self) -> String {
        if self.route == TRANSLATED_ROUTE || self.route == CACHE_HIT_ROUTE {
            format!("{} via {}", self.provider.name(), self.route)
        } else {
            self.provider.name().to_owned()
        }
    }
}

/// One proxy under test, started against the mock, with its ways in.
struct Under {
    subject: Subject,
    proxy: Proxy,
    /// How the report names it.
    name: String,
    /// Its resident memory before the first request.
    idle_rss: u64,
    /// OpenAI and Anthropic, each on its own path.
    pairs: [Pair; 2],
    /// Anthropic through the OpenAI door (llm-proxy only: nginx has no OpenAI door).
    translated: Option<Pair>,
}

impl Under {
    async fn start(subject: &Subject, mock: SocketAddr, cpu: Option<usize>) -> io::Result<Under> {
        let proxy = Proxy::start(subject, mock, cpu).await?;
        let name = match subject {
            Subject::LlmProxy(binary) => format!("llm-proxy ({})", binary.display()),
            Subject::Nginx(_) => "nginx (baseline: plain proxy_pass)".to_owned(),
        };
        eprintln!(
            "bench: {name}, pid {}, on {}; mock on {mock}",
            proxy.pid, proxy.addr
        );
        let idle_rss = proxy.rss()?;
        let pairs = [
            Pair::new(Provider::OpenAi, mock, &proxy),
            Pair::new(Provider::Anthropic, mock, &proxy),
        ];
        let translated = match subject {
            Subject::LlmProxy(_) => Some(Pair::translated(mock, &proxy)),
            Subject::Nginx(_) => None,
        };
        Ok(Under {
            subject: subject.clone(),
            proxy,
            name,
            idle_rss,
            pairs,
            translated,
        })
    }

    fn is_llm_proxy(&self) -> bool {
        matches!(self.subject, Subject::LlmProxy(_))
    }
}

/// One way through one proxy; a scenario sends the same load to the mock once and then
/// through each of its ways.
struct Way<'a> {
    pair: &'a Pair,
    proxy: &'a Proxy,
}

/// Which of a proxy's ways a scenario takes, if it has it.
type Pick = for<'a> fn(&'a Under) -> Option<&'a Pair>;

/// The way `pick` chooses through each proxy that has it.
fn ways_of(unders: &[Under], pick: Pick) -> Vec<Way<'_>> {
    unders
        .iter()
        .filter_map(|under| {
            pick(under).map(|pair| Way {
                pair,
                proxy: &under.proxy,
            })
        })
        .collect()
}

/// Which proxy each of [`ways_of`]'s results belongs to: the i-th way is the i-th proxy that has
/// it.
fn owners(unders: &[Under], pick: Pick) -> Vec<usize> {
    (0..unders.len())
        .filter(|&i| pick(&unders[i]).is_some())
        .collect()
}

/// What the scenarios found for one proxy.
#[derive(Default)]
struct Found {
    latency: Vec<Latency>,
    cache_hit: Option<Latency>,
    throughput: Vec<MaxThroughput>,
    streaming: Vec<Streaming>,
    concurrent: Option<ConcurrentStreams>,
    soak: Option<Soak>,
    scale: scale::Scale,
}

async fn run(
    options: Options,
    machine: Machine,
    pinning: Pinning,
    open_files: u64,
) -> io::Result<()> {
    eprintln!("bench: {}; up to {open_files} open files", pinning.note);
    let mock = mock::start().await?;
    let mut unders = Vec::new();
    // Why nginx is not beside llm-proxy in a default run, when it is not.
    let mut no_baseline = None;
    for subject in &options.subjects {
        let baseline = matches!(subject, Subject::Nginx(_)) && options.subjects.len() > 1;
        if baseline && !proxy::nginx_on_path() {
            no_baseline = Some(
                "nginx is not on PATH (Debian: apt-get install nginx-light): llm-proxy alone, \
                 no comparison"
                    .to_owned(),
            );
            continue;
        }
        match Under::start(subject, mock, pinning.proxy_cpu).await {
            Ok(under) => unders.push(under),
            Err(e) if baseline => {
                no_baseline = Some(format!(
                    "nginx did not start ({e}): llm-proxy alone, no comparison"
                ));
            }
            Err(e) => return Err(e),
        }
    }
    if let Some(why) = &no_baseline {
        eprintln!("bench: {why}");
    }
    for under in &unders {
        check_answers(&under.pairs, &under.subject).await?;
        if let Some(pair) = &under.translated {
            check_translated(pair).await?;
        }
    }
    if let Some(duration) = options.load_only {
        let under = &unders[0];
        return load_for_profiling(&under.pairs, &under.proxy, duration, options.rate).await;
    }

    let pids: Vec<u32> = unders.iter().map(|under| under.proxy.pid).collect();
    let mut steps = Steps::new(&pids, &pinning);
    let mut found: Vec<Found> = unders.iter().map(|_| Found::default()).collect();
    let providers: [Pick; 2] = [|under| Some(&under.pairs[0]), |under| Some(&under.pairs[1])];
    let translated: Pick = |under| under.translated.as_ref();

    for pick in providers {
        let ways = ways_of(&unders, pick);
        let what = format!("one at a time, {}", ways[0].pair.name());
        let results = steps.run(what, one_at_a_time(&ways)).await?;
        for (i, result) in owners(&unders, pick).into_iter().zip(results) {
            found[i].latency.push(result);
        }
    }
    for (rate, duration) in RATES {
        for pick in providers {
            let ways = ways_of(&unders, pick);
            let what = format!("{rate} req/s, {}", ways[0].pair.name());
            let results = steps.run(what, at_rate(&ways, rate, duration)).await?;
            for (i, result) in owners(&unders, pick).into_iter().zip(results) {
                found[i].latency.push(result);
            }
        }
    }
    for pick in providers {
        let ways = ways_of(&unders, pick);
        let what = format!(
            "closed loop, {CONNECTIONS} connections, {}",
            ways[0].pair.name()
        );
        let results = steps.run(what, max_throughput(&ways)).await?;
        for (i, result) in owners(&unders, pick).into_iter().zip(results) {
            found[i].throughput.push(result);
        }
    }
    // Right after the closed loop, whose connections the proxy keeps pooled for 15 s: the
    // streams below need fewer, so none waits on a new upstream connection.
    for pick in providers.into_iter().chain([translated]) {
        let ways = ways_of(&unders, pick);
        let Some(first) = ways.first() else { continue };
        let what = format!("{STREAMS} streams, {}", first.pair.name());
        let results = steps.run(what, streams(&ways)).await?;
        for (i, result) in owners(&unders, pick).into_iter().zip(results) {
            found[i].streaming.push(result);
        }
    }
    // The translated route's non-stream twin, after its streams (which, like the others, want
    // the pool the closed loop left).
    let ways_translated = ways_of(&unders, translated);
    if let Some(first) = ways_translated.first() {
        let what = format!("one at a time, {}", first.pair.name());
        let results = steps.run(what, one_at_a_time(&ways_translated)).await?;
        let (rate, duration) = RATES[TRANSLATED_RATE];
        let what = format!("{rate} req/s, {}", first.pair.name());
        let at_rate = steps
            .run(what, at_rate(&ways_translated, rate, duration))
            .await?;
        for (i, result) in owners(&unders, translated).into_iter().zip(results) {
            found[i].latency.push(result);
        }
        for (i, result) in owners(&unders, translated).into_iter().zip(at_rate) {
            found[i].latency.push(result);
        }
    }
    // nginx has no cache.
    for (under, found) in unders.iter().zip(&mut found) {
        if under.is_llm_proxy() {
            let pair = Pair::cached(mock, &under.proxy);
            let what = format!("one at a time, cache hits, {}", pair.name());
            found.cache_hit = Some(steps.run(what, cache_hits(&pair, &under.proxy)).await?);
        }
    }
    // The memory run is llm-proxy's; nginx's only when it is measured alone, to keep the
    // default run short.
    for (under, found) in unders.iter().zip(&mut found) {
        if under.is_llm_proxy() || unders.len() == 1 {
            let what = format!("{} s of mixed load, {}", SOAK.as_secs(), under.name);
            found.soak = Some(steps.run(what, soak(&under.pairs, &under.proxy)).await?);
        }
    }
    let what = format!("{CONCURRENT_STREAMS} streams at once, openai");
    let concurrent = steps
        .run(what, concurrent_streams(&ways_of(&unders, providers[0])))
        .await?;
    for (found, result) in found.iter_mut().zip(concurrent) {
        found.concurrent = Some(result);
    }

    // Last, on proxies of its own: what counting an issued key's limit in Redis adds.
    let mut limit_check = None;
    for under in &unders {
        if let Subject::LlmProxy(binary) = &under.subject {
            eprintln!("bench: an issued key's limit check, in process and on Redis");
            limit_check = Some(shared::limit_check(binary, mock, pinning.proxy_cpu).await);
        }
    }
    // After every figure above, so that none of them sees what these leave behind (ten
    // thousand pooled upstream connections, TIME_WAIT sockets).
    scale_scenarios(&unders, &mut found, &mut steps, mock, &pinning, open_files).await?;

    // On proxies of its own too: an HTTPS upstream, with HTTP/2 offered and not.
    let mut tls_upstream = None;
    for under in &unders {
        if let Subject::LlmProxy(binary) = &under.subject {
            eprintln!("bench: a TLS upstream, HTTP/1.1 and HTTP/2");
            tls_upstream = Some(tls::tls_upstream(binary, pinning.proxy_cpu).await);
        }
    }

    let duration_s = steps.started.elapsed().as_secs_f64();
    let mut all = Vec::new();
    for (under, found) in unders.iter().zip(found) {
        let concurrent = found
            .concurrent
            .ok_or_else(|| io::Error::other("no concurrent-streams run"))?;
        let memory = found
            .soak
            .map(|soak| Memory::new(under.idle_rss, concurrent.proxy_peak_rss_mib, soak));
        all.push(Results {
            machine: machine.clone(),
            pinning: pinning.clone(),
            under_test: under.name.clone(),
            latency: found.latency,
            cache_hit: found.cache_hit,
            throughput: found.throughput,
            streaming: found.streaming,
            concurrent_streams: concurrent,
            memory,
            limit_check: if under.is_llm_proxy() {
                limit_check.take()
            } else {
                None
            },
            scale: found.scale,
            tls_upstream: if under.is_llm_proxy() {
                tls_upstream.take()
            } else {
                None
            },
            interference: steps.interference.clone(),
            duration_s,
        });
    }
    for (under, results) in unders.iter().zip(&all) {
        println!("{}\n", report::table(results));
        let path = output_dir().join(match under.subject {
            Subject::LlmProxy(_) => "results.json",
            Subject::Nginx(_) => "results-nginx.json",
        });
        report::write_json(&path, results)?;
        eprintln!("bench: results written to {}", path.display());
    }
    let of = |llm: bool| {
        unders
            .iter()
            .zip(&all)
            .find(|(under, _)| under.is_llm_proxy() == llm)
            .map(|(_, results)| results)
    };
    match (of(true), of(false)) {
        (Some(llm_proxy), Some(nginx)) => {
            let rows = versus::rows(llm_proxy, nginx);
            println!("{}", versus::table(&rows, llm_proxy));
            let path = output_dir().join("versus-nginx.json");
            versus::write_json(&path, &rows)?;
            eprintln!("bench: the comparison written to {}", path.display());
        }
        (Some(_), None) => {
            if let Some(why) = &no_baseline {
                println!("No comparison with nginx (issue 14's targets): {why}.");
            }
        }
        _ => {}
    }
    Ok(())
}

/// Issue 14's scale rows (`scale.rs`): the per-event slope of the pass-through and translated
/// streams, ten thousand streams held for a minute (llm-proxy as it runs, nginx on a process of
/// its own with room for them), and two workers on both CPUs.
async fn scale_scenarios(
    unders: &[Under],
    found: &mut [Found],
    steps: &mut Steps<'_>,
    mock: SocketAddr,
    pinning: &Pinning,
    open_files: u64,
) -> io::Result<()> {
    let passed_through: Pick = |under| Some(&under.pairs[1]);
    let translated: Pick = |under| under.translated.as_ref();
    for pick in [passed_through, translated] {
        let ways = ways_of(unders, pick);
        let Some(first) = ways.first() else { continue };
        let what = format!(
            "CPU per event: streams of {} and {} events, {}",
            scale::SHORT_EVENTS,
            scale::LONG_EVENTS,
            first.pair.name()
        );
        let slopes = steps.run(what, scale::event_slopes(&ways)).await?;
        for (i, slope) in owners(unders, pick).into_iter().zip(slopes) {
            found[i].scale.event_slopes.push(slope);
        }
    }
    for (under, found) in unders.iter().zip(found.iter_mut()) {
        let what = format!(
            "{} streams at once for a minute, {}",
            scale::MANY_STREAMS,
            under.name
        );
        let many = match scale::MockProcess::start() {
            Ok(mock) => {
                match scale::proxy_for_many(&under.subject, mock.addr, pinning.proxy_cpu).await {
                    Ok(proxy) => {
                        let run = async { Ok(scale::many_streams(&proxy, open_files).await) };
                        steps.run_beside(&[proxy.pid], false, what, run).await?
                    }
                    Err(e) => Err(format!("the proxy did not start: {e}")),
                }
            }
            Err(e) => Err(format!("the mock process did not start: {e}")),
        };
        found.scale.many_streams = Some(many);
    }
    for (under, found) in unders.iter().zip(found.iter_mut()) {
        let (one, two) = (
            scale::start_workers(&under.subject, mock, pinning, 1).await,
            scale::start_workers(&under.subject, mock, pinning, 2).await,
        );
        let two = match (one, two) {
            (Ok(one), Ok(two)) => {
                let what = format!("one worker, then two, closed loop, {}", under.name);
                let mut pids = procfs::children(two.pid);
                pids.extend([one.pid, two.pid]);
                let run = async { Ok(scale::two_workers(&one, &two, pinning).await) };
                steps.run_beside(&pids, true, what, run).await?
            }
            (Err(e), _) | (_, Err(e)) => Err(format!("the proxies did not start: {e}")),
        };
        found.scale.two_workers = Some(two);
    }
    Ok(())
}

/// Runs the scenarios one after another, saying what runs, and notes how much of the CPUs
/// other processes took during each.
struct Steps<'a> {
    started: Instant,
    /// The proxies' pids: their own CPU time is not interference.
    proxies: &'a [u32],
    pinning: &'a Pinning,
    interference: Vec<Interference>,
}

impl<'a> Steps<'a> {
    fn new(proxies: &'a [u32], pinning: &'a Pinning) -> Self {
        Steps {
            started: Instant::now(),
            proxies,
            pinning,
            interference: Vec::new(),
        }
    }

    async fn run<T>(
        &mut self,
        what: String,
        scenario: impl Future<Output = io::Result<T>>,
    ) -> io::Result<T> {
        self.run_beside(&[], false, what, scenario).await
    }

    /// As [`Steps::run`], with `also` (processes of a proxy the scenario started) counted as
    /// the proxies' own time rather than interference; with `spread` (a proxy on every CPU),
    /// other processes' share is of all CPUs together, as for an unpinned run.
    async fn run_beside<T>(
        &mut self,
        also: &[u32],
        spread: bool,
        what: String,
        scenario: impl Future<Output = io::Result<T>>,
    ) -> io::Result<T> {
        let at = self.started.elapsed().as_secs_f64();
        eprintln!("bench: [{at:>3.0} s] {what}");
        let pids: Vec<u32> = self.proxies.iter().chain(also).copied().collect();
        let spread_pinning = Pinning {
            proxy_cpu: None,
            load_cpu: None,
            note: String::new(),
        };
        let pinning = if spread {
            &spread_pinning
        } else {
            self.pinning
        };
        let before = CpuUse::read(&pids);
        let result = scenario.await?;
        let after = CpuUse::read(&pids);
        let interference = Interference::between(what, &before, &after, pinning);
        if interference
            .others_on_proxy_cpu_pct
            .max(interference.others_on_load_cpu_pct)
            > report::DISTURBED_PCT
        {
            eprintln!(
                "bench:         other processes used {:.0}% of the proxy's CPU and {:.0}% of the load's",
                interference.others_on_proxy_cpu_pct, interference.others_on_load_cpu_pct
            );
        }
        self.interference.push(interference);
        Ok(result)
    }
}

/// Every way in answers as expected before anything is timed (llm-proxy with its normalized
/// shape, nginx with the upstream's); this also warms both sides.
async fn check_answers(pairs: &[Pair], subject: &Subject) -> io::Result<()> {
    for pair in pairs {
        let mut conn = http::Conn::open(pair.proxy.addr).await?;
        let reply = load::call(&mut conn, &pair.proxy.request(false)).await?;
        let normalized = format!(r#"{{"provider":"{}""#, pair.provider.name());
        let expected = match subject {
            Subject::LlmProxy(_) => normalized.as_bytes(),
            Subject::Nginx(_) => b"{",
        };
        if reply.status != 200 || !reply.body.starts_with(expected) {
            return Err(io::Error::other(format!(
                "the proxy answered {} {}",
                reply.status,
                String::from_utf8_lossy(&reply.body)
            )));
        }
        for target in [&pair.direct, &pair.proxy] {
            let mut conn = http::Conn::open(target.addr).await?;
            let times = load::call_stream(&mut conn, &target.request(true), target.stamps).await?;
            if !times.complete() {
                return Err(io::Error::other(format!(
                    "a {:?} {} stream ended with status {} after {} events",
                    target.via,
                    pair.provider.name(),
                    times.status,
                    times.events
                )));
            }
            let run = load::one_at_a_time(target, ONE_AT_A_TIME).await?;
            if run.errors > 0 {
                return Err(io::Error::other(format!(
                    "{} failed requests while warming up",
                    run.errors
                )));
            }
        }
    }
    Ok(())
}

/// The translated route answers in OpenAI's shapes, its stream translated from a valid
/// Anthropic stream (the mock's, with its stamps in the text) without an error; then both
/// ways of it are warmed as [`check_answers`] warms the others.
async fn check_translated(pair: &Pair) -> io::Result<()> {
    let wrong = |what: &str, body: &[u8]| {
        io::Error::other(format!(
            "through {}, {what}: {}",
            pair.route,
            String::from_utf8_lossy(body)
        ))
    };
    let mut conn = http::Conn::open(pair.proxy.addr).await?;
    let reply = load::call(&mut conn, &pair.proxy.request(false)).await?;
    let answer: serde_json::Value = serde_json::from_slice(&reply.body)
        .map_err(|_| wrong("an answer that is not JSON", &reply.body))?;
    if reply.status != 200
        || answer["object"] != "chat.completion"
        || !answer["choices"][0]["message"]["content"].is_string()
    {
        return Err(wrong("not a chat.completion", &reply.body));
    }
    let reply = load::call(&mut conn, &pair.proxy.request(true)).await?;
    if reply.status != 200 {
        return Err(wrong(&format!("status {}", reply.status), &reply.body));
    }
    let text = String::from_utf8_lossy(&reply.body);
    let events: Vec<&str> = text.split_terminator("\n\n").collect();
    let Some((&"data: [DONE]", chunks)) = events.split_last() else {
        return Err(wrong("a stream that does not end in [DONE]", &reply.body));
    };
    let mut content = String::new();
    let mut finish = Vec::new();
    for event in chunks {
        let chunk: serde_json::Value = event
            .strip_prefix("data: ")
            .and_then(|data| serde_json::from_str(data).ok())
            .ok_or_else(|| wrong(&format!("an event that is not a chunk: {event:?}"), b""))?;
        if chunk["object"] != "chat.completion.chunk" {
            return Err(wrong(&format!("not a chat.completion.chunk: {event}"), b""));
        }
        let choice = &chunk["choices"][0];
        content.push_str(choice["delta"]["content"].as_str().unwrap_or_default());
        if let Some(reason) = choice["finish_reason"].as_str() {
            finish.push(reason.to_owned());
        }
    }
    let stamps = content.matches("sent_ns=").count();
    if stamps != mock::ANTHROPIC_TEXT_DELTAS || finish != ["stop"] {
        return Err(wrong(
            &format!("{stamps} stamps in the text and finish reasons {finish:?}"),
            &reply.body,
        ));
    }
    for target in [&pair.direct, &pair.proxy] {
        let mut conn = http::Conn::open(target.addr).await?;
        let times = load::call_stream(&mut conn, &target.request(true), target.stamps).await?;
        if !times.complete() {
            return Err(io::Error::other(format!(
                "a {:?} {} stream ended with status {} after {} stamped events",
                target.via,
                pair.name(),
                times.status,
                times.events
            )));
        }
        let run = load::one_at_a_time(target, ONE_AT_A_TIME).await?;
        if run.errors > 0 {
            return Err(io::Error::other(format!(
                "{} failed requests while warming up",
                run.errors
            )));
        }
    }
    Ok(())
}

/// The same requests one at a time to the mock, then through each way.
async fn one_at_a_time(ways: &[Way<'_>]) -> io::Result<Vec<Latency>> {
    let direct = load::one_at_a_time(&ways[0].pair.direct, ONE_AT_A_TIME).await?;
    let mut results = Vec::new();
    for Way { pair, proxy } in ways {
        let (via_proxy, cpu) =
            on_proxy_cpu(proxy, load::one_at_a_time(&pair.proxy, ONE_AT_A_TIME)).await?;
        results.push(Latency::new(
            pair.provider,
            pair.route,
            None,
            &direct,
            &via_proxy,
            cpu,
        ));
    }
    Ok(results)
}

/// A hit of the response cache, one at a time: the first request (the miss that fills the
/// cache) and as many as are measured go unmeasured first; then the proxy's count of hits says
/// every measured request was one.
async fn cache_hits(pair: &Pair, proxy: &Proxy) -> io::Result<Latency> {
    let warm = load::one_at_a_time(&pair.proxy, ONE_AT_A_TIME).await?;
    if warm.errors > 0 {
        return Err(io::Error::other(format!(
            "{} failed cache requests while warming up",
            warm.errors
        )));
    }
    let hits_before = cache_hits_counted(proxy).await?;
    let latency = one_at_a_time(&[Way { pair, proxy }])
        .await?
        .pop()
        .ok_or_else(|| io::Error::other("no cache-hit run"))?;
    let hits = cache_hits_counted(proxy).await? - hits_before;
    if hits != ONE_AT_A_TIME as u64 {
        return Err(io::Error::other(format!(
            "{hits} of {ONE_AT_A_TIME} measured cache requests were hits"
        )));
    }
    Ok(latency)
}

/// `llm_proxy_cache_hits_total`, from the proxy's `/metrics`.
async fn cache_hits_counted(proxy: &Proxy) -> io::Result<u64> {
    let mut conn = http::Conn::open(proxy.addr).await?;
    let request = format!(
        "GET /metrics HTTP/1.1\r\nhost: {}\r\ncontent-length: 0\r\n\r\n",
        proxy.addr
    );
    let reply = load::call(&mut conn, request.as_bytes()).await?;
    let text = String::from_utf8_lossy(&reply.body);
    text.lines()
        .find_map(|line| line.strip_prefix("llm_proxy_cache_hits_total "))
        .and_then(|count| count.trim().parse().ok())
        .ok_or_else(|| io::Error::other("no llm_proxy_cache_hits_total in /metrics"))
}

/// The same open-loop load to the mock, then through each way.
async fn at_rate(ways: &[Way<'_>], rate: f64, duration: Duration) -> io::Result<Vec<Latency>> {
    let direct = load::fixed_rate(&ways[0].pair.direct, rate, duration).await?;
    let mut results = Vec::new();
    for Way { pair, proxy } in ways {
        let (via_proxy, cpu) =
            on_proxy_cpu(proxy, load::fixed_rate(&pair.proxy, rate, duration)).await?;
        results.push(Latency::new(
            pair.provider,
            pair.route,
            Some(rate),
            &direct,
            &via_proxy,
            cpu,
        ));
    }
    Ok(results)
}

/// Runs `load` and returns what it did with the proxy's time on a CPU meanwhile.
async fn on_proxy_cpu<T>(
    proxy: &Proxy,
    load: impl Future<Output = io::Result<T>>,
) -> io::Result<(T, Duration)> {
    let before = proxy.run_time()?;
    let done = load.await?;
    Ok((done, proxy.run_time()?.saturating_sub(before)))
}

/// The same closed loop on the mock, then through each way, with the proxy's CPU time.
async fn max_throughput(ways: &[Way<'_>]) -> io::Result<Vec<MaxThroughput>> {
    let direct =
        load::closed_loop(&ways[0].pair.direct, CONNECTIONS, WARM, MEASURE, || None).await?;
    let mut results = Vec::new();
    for Way { pair, proxy } in ways {
        let via_proxy = load::closed_loop(&pair.proxy, CONNECTIONS, WARM, MEASURE, || {
            proxy.cpu_time().ok()
        })
        .await?;
        results.push(MaxThroughput::new(
            pair.provider,
            CONNECTIONS,
            &direct,
            &via_proxy,
        ));
    }
    Ok(results)
}

/// All streams opened at once, to the mock and then through each way, while the proxy's RSS
/// is read every 50 ms.
async fn concurrent_streams(ways: &[Way<'_>]) -> io::Result<Vec<ConcurrentStreams>> {
    let direct = load::streams(&ways[0].pair.direct, CONCURRENT_STREAMS, Duration::ZERO).await?;
    let mut results = Vec::new();
    for Way { pair, proxy } in ways {
        let done = AtomicBool::new(false);
        let (via_proxy, peak) = tokio::join!(
            async {
                let run = load::streams(&pair.proxy, CONCURRENT_STREAMS, Duration::ZERO).await;
                done.store(true, Ordering::Relaxed);
                run
            },
            peak_rss(proxy, &done)
        );
        results.push(ConcurrentStreams::new(
            pair.provider,
            CONCURRENT_STREAMS,
            &direct,
            &via_proxy?,
            peak,
        ));
    }
    Ok(results)
}

/// The highest RSS read every 50 ms until `done`.
async fn peak_rss(proxy: &Proxy, done: &AtomicBool) -> u64 {
    let mut peak = 0;
    while !done.load(Ordering::Relaxed) {
        peak = peak.max(proxy.rss().unwrap_or(0));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    peak
}

/// The same streams to the mock, then through each way.
async fn streams(ways: &[Way<'_>]) -> io::Result<Vec<Streaming>> {
    let direct = load::streams(&ways[0].pair.direct, STREAMS, STREAM_SPACING).await?;
    let mut results = Vec::new();
    for Way { pair, proxy } in ways {
        let (via_proxy, cpu) =
            on_proxy_cpu(proxy, load::streams(&pair.proxy, STREAMS, STREAM_SPACING)).await?;
        results.push(Streaming::new(
            pair.provider,
            pair.route,
            STREAMS,
            STREAM_SPACING,
            &direct,
            &via_proxy,
            cpu,
        ));
    }
    Ok(results)
}

/// `SOAK` of closed-loop load through the proxy, non-stream requests and streams of both
/// providers, reading its RSS every `SOAK_SAMPLE_EVERY`; then its RSS once idle again.
async fn soak(pairs: &[Pair], proxy: &Proxy) -> io::Result<Soak> {
    let stop = Arc::new(AtomicBool::new(false));
    let (requests, streams) = (Counters::default(), Counters::default());
    let mut workers = Vec::new();
    for pair in pairs {
        let share = SOAK_CONNECTIONS / pairs.len();
        workers.extend(load::spawn_workers(&pair.proxy, share, false, &stop, &requests).await?);
        let share = SOAK_STREAMS / pairs.len();
        workers.extend(load::spawn_workers(&pair.proxy, share, true, &stop, &streams).await?);
    }
    let start = tokio::time::Instant::now();
    let cpu_before = proxy.cpu_time()?;
    let mut samples = vec![RssSample::new(0.0, proxy.rss()?)];
    let ticks = (SOAK.as_secs_f64() / SOAK_SAMPLE_EVERY.as_secs_f64()).round() as u32;
    for tick in 1..=ticks {
        tokio::time::sleep_until(start + SOAK_SAMPLE_EVERY * tick).await;
        samples.push(RssSample::new(start.elapsed().as_secs_f64(), proxy.rss()?));
    }
    let cpu = proxy.cpu_time()?.since(cpu_before);
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        worker.await?;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    Ok(Soak {
        seconds: SOAK.as_secs_f64(),
        connections: SOAK_CONNECTIONS,
        streams: SOAK_STREAMS,
        requests: requests.done(),
        streams_completed: streams.done(),
        failed: requests.failed() + streams.failed(),
        proxy_cpu_s: cpu.total().as_secs_f64(),
        samples,
        idle_after_mib: proxy.rss()? as f64 / report::MIB,
    })
}

/// `--load-only`: load for `duration` and nothing measured but its rate and the proxy's CPU
/// time, with the proxy's pid published for a profiler. Closed loop on both providers, or
/// with `--rate`, open loop at that rate on OpenAI.
async fn load_for_profiling(
    pairs: &[Pair],
    proxy: &Proxy,
    duration: Duration,
    rate: Option<f64>,
) -> io::Result<()> {
    let dir = output_dir();
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("proxy.pid"), proxy.pid.to_string())?;
    println!("proxy pid {}", proxy.pid);
    let cpu_before = proxy.cpu_time()?;
    let (requests, failed) = match rate {
        Some(rate) => {
            let run = load::fixed_rate(&pairs[0].proxy, rate, duration).await?;
            let latency = stats::percentiles(&run.latencies);
            println!(
                "latency p50 {:.3} ms, p99 {:.3} ms",
                latency.p50_ms, latency.p99_ms
            );
            (run.latencies.len() as u64, run.errors as u64)
        }
        None => {
            let counters = closed_loop_on_all(pairs, duration).await?;
            (counters.done(), counters.failed())
        }
    };
    let cpu = proxy.cpu_time()?.since(cpu_before);
    let per_request = |time: Duration| time.as_secs_f64() * 1e6 / requests.max(1) as f64;
    println!(
        "{requests} requests in {} s ({:.0} req/s), {failed} failed; proxy CPU {:.1} µs per \
         request ({:.1} user, {:.1} kernel)",
        duration.as_secs(),
        requests as f64 / duration.as_secs_f64(),
        per_request(cpu.total()),
        per_request(cpu.user),
        per_request(cpu.system),
    );
    Ok(())
}

/// `CONNECTIONS` closed-loop connections through the proxy, shared by the providers, for
/// `duration`.
async fn closed_loop_on_all(pairs: &[Pair], duration: Duration) -> io::Result<Counters> {
    let stop = Arc::new(AtomicBool::new(false));
    let counters = Counters::default();
    let mut workers = Vec::new();
    for pair in pairs {
        let share = CONNECTIONS / pairs.len();
        workers.extend(load::spawn_workers(&pair.proxy, share, false, &stop, &counters).await?);
    }
    tokio::time::sleep(duration).await;
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        worker.await?;
    }
    Ok(counters)
}

/// `target/bench`, next to the profile directory the proxy binary is in.
fn output_dir() -> PathBuf {
    Path::new(PROXY_BINARY)
        .parent()
        .and_then(Path::parent)
        .unwrap_or(Path::new("target"))
        .join("bench")
}
