//! Issue 14's scale rows: CPU per stream event, 10,000 streams held a minute, two workers.

use std::{
    io,
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use serde::Serialize;
use tokio::{sync::Semaphore, time::timeout};

use crate::{
    http::Conn,
    load::{self, Target, Via},
    machine::Pinning,
    mock::{self, Provider, Stamps, StreamShape},
    procfs,
    proxy::{Placement, Proxy, Subject},
    report::{thousands, yes_no, MIB},
    stats::{percentiles, Percentiles},
    Way,
};

/// The two stream lengths of the slope, in upstream events, and how far apart their events
/// are sent: close, so that the long streams take seconds, not minutes, yet each event is its
/// own read and write in the proxy, as a model's tokens are.
pub const SHORT_EVENTS: usize = 20;
pub const LONG_EVENTS: usize = 220;
const SLOPE_EVERY: Duration = Duration::from_millis(1);
/// Streams of each length: this many connections, each running its streams one after another,
/// in two rounds (short, long, short, long) so that a drift of the machine falls on both.
const SLOPE_CONNECTIONS: usize = 16;
const SLOPE_STREAMS_PER_ROUND: usize = 15;
const SLOPE_ROUNDS: usize = 2;

/// Streams held open at once, each of this many events this far apart (a minute in all), and
/// how often the proxy's RSS is recorded meanwhile (its peak is read every [`PEAK_EVERY`]).
pub const MANY_STREAMS: usize = 10_000;
const MANY_EVENTS: usize = 21;
const MANY_EVERY: Duration = Duration::from_secs(3);
const SAMPLE_EVERY: Duration = Duration::from_secs(3);
const PEAK_EVERY: Duration = Duration::from_millis(250);
/// Streams being opened (connected, request sent, head not yet back) at any one moment: the
/// rest wait their turn, so the listen backlogs (capped by `net.core.somaxconn`) never
/// overflow into SYN retries, and the opening time is the proxy's pace, not the kernel's
/// retry timer.
const OPENING_AT_ONCE: usize = 256;
/// How long a stream may take to get its response head once it is its turn; a proxy out of
/// descriptors leaves connections unaccepted, and they must fail, not hang the run.
const OPEN_WITHIN: Duration = Duration::from_secs(30);
/// "Flat": the last third of the hold's samples peaks no higher than the middle third's peak
/// plus the larger of these.
pub const FLAT_PCT: f64 = 5.0;
pub const FLAT_MIB: f64 = 2.0;
/// Open files this process needs per stream held: its connection to the proxy (the mock's end
/// of the proxy's connection is in [`MockProcess`]).
const FILES_PER_STREAM: u64 = 1;
const FILES_SPARE: u64 = 1_024;
/// The argument that makes this binary a mock upstream alone ([`serve_mock_process`]).
pub const MOCK_PROCESS_ARG: &str = "--mock-process";

/// Every scale figure of one proxy.
#[derive(Default, Serialize)]
pub struct Scale {
    pub event_slopes: Vec<EventSlope>,
    /// The ten thousand streams, or why they did not run.
    pub many_streams: Option<Result<ManyStreams, String>>,
    /// Two workers on both CPUs, or why they did not run.
    pub two_workers: Option<Result<TwoWorkers, String>>,
}

/// The proxy's CPU time per stream at two lengths on one route, and the slope between them:
/// the cost of one more event, with the request, the connection and the stream's start and end
/// left out because both lengths pay them alike.
#[derive(Serialize)]
pub struct EventSlope {
    pub provider: &'static str,
    pub route: &'static str,
    /// Streams of each length.
    pub streams: usize,
    pub event_every_ms: f64,
    pub short_events: usize,
    pub long_events: usize,
    /// The proxy's time on a CPU (schedstat, all threads) per stream.
    pub short_cpu_per_stream_us: f64,
    pub long_cpu_per_stream_us: f64,
    pub cpu_per_event_us: f64,
    /// Streams that ended with a status other than 200 or without every stamped event.
    pub failed: usize,
}

/// The proxy's CPU per stream of `SHORT_EVENTS` and of `LONG_EVENTS` through each way (the
/// mock is not measured: only the proxy's CPU is).
pub async fn event_slopes(ways: &[Way<'_>]) -> io::Result<Vec<EventSlope>> {
    let mut slopes = Vec::new();
    for Way { pair, proxy } in ways {
        let target = &pair.proxy;
        let prefix = match target.stamps {
            Stamps::Text => mock::TEXT_STAMPS_ID,
            Stamps::Comment => "bench",
        };
        let (mut short, mut long) = (Tally::default(), Tally::default());
        for _ in 0..SLOPE_ROUNDS {
            short.add(streams_of(target, proxy, SHORT_EVENTS, prefix).await?);
            long.add(streams_of(target, proxy, LONG_EVENTS, prefix).await?);
        }
        let (short_us, long_us) = (short.per_stream_us(), long.per_stream_us());
        slopes.push(EventSlope {
            provider: pair.provider.name(),
            route: pair.route,
            streams: short.streams,
            event_every_ms: SLOPE_EVERY.as_secs_f64() * 1e3,
            short_events: SHORT_EVENTS,
            long_events: LONG_EVENTS,
            short_cpu_per_stream_us: short_us,
            long_cpu_per_stream_us: long_us,
            cpu_per_event_us: (long_us - short_us) / (LONG_EVENTS - SHORT_EVENTS) as f64,
            failed: short.failed + long.failed,
        });
    }
    Ok(slopes)
}

/// Streams run and failed, and the proxy's CPU time over them.
#[derive(Default)]
struct Tally {
    streams: usize,
    failed: usize,
    cpu: Duration,
}

impl Tally {
    fn add(&mut self, other: Tally) {
        self.streams += other.streams;
        self.failed += other.failed;
        self.cpu += other.cpu;
    }

    fn per_stream_us(&self) -> f64 {
        self.cpu.as_secs_f64() * 1e6 / self.streams.max(1) as f64
    }
}

/// One round: `SLOPE_CONNECTIONS` connections (opened before the proxy's clock starts), each
/// running `SLOPE_STREAMS_PER_ROUND` streams of `events` one after another.
async fn streams_of(
    target: &Target,
    proxy: &Proxy,
    events: usize,
    prefix: &str,
) -> io::Result<Tally> {
    let shape = StreamShape {
        events,
        every: SLOPE_EVERY,
    };
    let request: Arc<[u8]> =
        with_request_id(&target.request(true), &shape.request_id(prefix)).into();
    let (stamps, expected) = (target.stamps, target.stamps.in_stream(events));
    let conns = load::open_many(target.addr, SLOPE_CONNECTIONS).await?;
    let before = proxy.run_time()?;
    let mut workers = Vec::new();
    for mut conn in conns {
        let request = request.clone();
        workers.push(tokio::spawn(async move {
            let mut failed = 0;
            for _ in 0..SLOPE_STREAMS_PER_ROUND {
                let times = load::call_stream_of(&mut conn, &request, stamps, expected).await;
                if !times.is_ok_and(|times| times.complete()) {
                    failed += 1;
                    conn = Conn::open(conn_addr(&request)?).await.ok()?;
                }
            }
            Some(failed)
        }));
    }
    let mut failed = 0;
    for worker in workers {
        // A connection that could not be opened again lost the rest of its streams.
        failed += worker.await?.unwrap_or(SLOPE_STREAMS_PER_ROUND);
    }
    Ok(Tally {
        streams: SLOPE_CONNECTIONS * SLOPE_STREAMS_PER_ROUND,
        failed,
        cpu: proxy.run_time()?.saturating_sub(before),
    })
}

/// The address in a request's `host` header (which [`Target`] always sets to where it goes).
fn conn_addr(request: &[u8]) -> Option<std::net::SocketAddr> {
    let text = std::str::from_utf8(request).ok()?;
    let host = text.lines().find_map(|line| line.strip_prefix("host: "))?;
    host.trim().parse().ok()
}

/// `request` with its `X-Request-Id` (if any) replaced by `id`.
fn with_request_id(request: &[u8], id: &str) -> Vec<u8> {
    let text = String::from_utf8_lossy(request);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines: Vec<String> = head
        .split("\r\n")
        .filter(|line| !line.to_ascii_lowercase().starts_with("x-request-id:"))
        .map(str::to_owned)
        .collect();
    lines.insert(1, format!("x-request-id: {id}"));
    format!("{}\r\n\r\n{body}", lines.join("\r\n")).into_bytes()
}

/// One RSS reading of the ten-thousand-stream run.
#[derive(Serialize)]
pub struct HoldSample {
    pub t_s: f64,
    pub rss_mib: f64,
    /// Streams open at that moment (head received, end not yet).
    pub open: usize,
    /// Whether every stream was open: the samples "flat" is judged on.
    pub in_hold: bool,
}

/// Ten thousand streams through the proxy at once, each a minute long.
#[derive(Serialize)]
pub struct ManyStreams {
    pub provider: &'static str,
    pub streams: usize,
    pub events_per_stream: usize,
    pub event_every_s: f64,
    /// Streams that ended with status 200 and every event.
    pub completed: usize,
    pub failed: usize,
    /// The first few distinct reasons streams failed.
    pub failures: Vec<String>,
    /// From the first connection to the last stream's response head.
    pub open_all_s: f64,
    /// Per stream, from its connect to its first event (waiting for its turn left out).
    pub first_byte: Percentiles,
    pub rss_before_mib: f64,
    /// The highest RSS read (every 250 ms) from the first connection to the last stream's end.
    pub peak_rss_mib: f64,
    /// (peak − before) / streams: what one open stream costs.
    pub rss_per_stream_kib: f64,
    pub samples: Vec<HoldSample>,
    pub flat: Flatness,
    /// RSS 1 s after the last stream ended.
    pub rss_after_mib: f64,
    /// The most descriptors the proxy held at a sample, and its limit (`Max open files` in
    /// `/proc/<pid>/limits`): each stream holds two.
    pub proxy_open_files_peak: usize,
    pub proxy_open_file_limit: Option<u64>,
}

/// "Flat": the hold's samples (every stream open) in thirds, the last third's peak against the
/// middle third's plus the larger of [`FLAT_PCT`] and [`FLAT_MIB`].
#[derive(Serialize)]
pub struct Flatness {
    pub middle_third_max_mib: f64,
    pub last_third_max_mib: f64,
    pub allowed_mib: f64,
    pub flat: bool,
}

impl Flatness {
    fn of(samples: &[HoldSample]) -> Flatness {
        let hold: Vec<f64> = samples
            .iter()
            .filter(|s| s.in_hold)
            .map(|s| s.rss_mib)
            .collect();
        let third = hold.len() / 3;
        let max = |part: &[f64]| part.iter().copied().fold(0.0, f64::max);
        let middle = max(&hold[third..hold.len() - third]);
        let last = max(&hold[hold.len() - third..]);
        let allowed = middle + (middle * FLAT_PCT / 100.0).max(FLAT_MIB);
        Flatness {
            middle_third_max_mib: middle,
            last_third_max_mib: last,
            allowed_mib: allowed,
            // Fewer than three samples of the hold cannot show a trend.
            flat: third > 0 && last <= allowed,
        }
    }
}

/// Raises this process's limit on open files as far as it may (and its hard limit to 65,536
/// when it may raise that, as root), so that its side of [`MANY_STREAMS`] fits whatever the
/// shell's `ulimit -n`; the proxies it starts inherit it. Returns the soft limit now in force.
pub fn raise_open_file_limit() -> libc::rlim_t {
    const WANTED: libc::rlim_t = 65_536;
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed to them.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return 0;
    }
    let wanted = libc::rlimit {
        rlim_cur: limit.rlim_max.max(WANTED),
        rlim_max: limit.rlim_max.max(WANTED),
    };
    let at_hard = libc::rlimit {
        rlim_cur: limit.rlim_max,
        rlim_max: limit.rlim_max,
    };
    for attempt in [wanted, at_hard] {
        // SAFETY: as above.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &attempt) } == 0 {
            return attempt.rlim_cur;
        }
    }
    limit.rlim_cur
}

/// [`MANY_STREAMS`] OpenAI streams through `proxy` on its path route, each of [`MANY_EVENTS`]
/// events [`MANY_EVERY`] apart, opened [`OPENING_AT_ONCE`] at a time and then all held open
/// for the rest of their minute, while the proxy's RSS is read; every event of every stream
/// is checked. `Err` says why it could not run at all.
pub async fn many_streams(proxy: &Proxy, open_files: u64) -> Result<ManyStreams, String> {
    let needed = MANY_STREAMS as u64 * FILES_PER_STREAM + FILES_SPARE;
    if open_files < needed {
        return Err(format!(
            "this process may open {open_files} files and needs {needed}: run it as root or \
             after `ulimit -n 65536`"
        ));
    }
    let target = Target::new(proxy.addr, Provider::OpenAi, Via::Proxy);
    let shape = StreamShape {
        events: MANY_EVENTS,
        every: MANY_EVERY,
    };
    let request: Arc<[u8]> =
        with_request_id(&target.request(true), &shape.request_id("bench")).into();
    let expected = Stamps::Comment.in_stream(MANY_EVENTS);
    let rss_before = proxy.rss().map_err(|e| e.to_string())?;
    let opening = Arc::new(Semaphore::new(OPENING_AT_ONCE));
    // Streams whose head came back 200, those that never got that far, and opened ones that
    // have ended: the hold is from when every stream is one or the other until one ends.
    let (opened, open_failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let ended = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let mut streams = Vec::with_capacity(MANY_STREAMS);
    for _ in 0..MANY_STREAMS {
        let (opening, opened, ended) = (opening.clone(), opened.clone(), ended.clone());
        let (request, addr) = (request.clone(), target.addr);
        let open_failed = open_failed.clone();
        streams.push(tokio::spawn(async move {
            let opening_phase = async {
                let turn = opening.acquire_owned().await.map_err(io::Error::other)?;
                let sent = Instant::now();
                let mut conn = Conn::open(addr).await?;
                conn.write_all(&request).await?;
                let head = conn
                    .read_head()
                    .await?
                    .ok_or(io::ErrorKind::UnexpectedEof)?;
                io::Result::Ok((turn, sent, conn, head))
            };
            let (turn, sent, mut conn, head) = match timeout(OPEN_WITHIN, opening_phase).await {
                Ok(Ok(opened)) => opened,
                Ok(Err(e)) => {
                    open_failed.fetch_add(1, Ordering::Relaxed);
                    return Err(e);
                }
                Err(_) => {
                    open_failed.fetch_add(1, Ordering::Relaxed);
                    return Err(io::Error::other(format!(
                        "no response head within {} s",
                        OPEN_WITHIN.as_secs()
                    )));
                }
            };
            let opened_at = Instant::now();
            drop(turn);
            if head.status() != 200 {
                open_failed.fetch_add(1, Ordering::Relaxed);
                return Err(io::Error::other(format!("status {}", head.status())));
            }
            opened.fetch_add(1, Ordering::Relaxed);
            let rest = load::read_stream(&mut conn, &head, sent, Stamps::Comment, expected);
            let times = timeout(MANY_EVERY * MANY_EVENTS as u32 + OPEN_WITHIN, rest).await;
            ended.fetch_add(1, Ordering::Relaxed);
            match times {
                Ok(times) => Ok((opened_at, times?)),
                Err(_) => Err(io::Error::other("the stream did not end in time")),
            }
        }));
    }
    let done = AtomicBool::new(false);
    let watch = async {
        let mut samples = Vec::new();
        let (mut peak, mut files_peak) = (0, 0);
        let mut next_sample = start;
        while !done.load(Ordering::Relaxed) {
            let rss = proxy.rss().unwrap_or(0);
            peak = peak.max(rss);
            if Instant::now() >= next_sample {
                let (ok, failed) = (
                    opened.load(Ordering::Relaxed),
                    open_failed.load(Ordering::Relaxed),
                );
                let closed = ended.load(Ordering::Relaxed);
                files_peak = files_peak.max(procfs::open_files(proxy.pid));
                samples.push(HoldSample {
                    t_s: start.elapsed().as_secs_f64(),
                    rss_mib: rss as f64 / MIB,
                    open: ok - closed,
                    in_hold: ok + failed == MANY_STREAMS && closed == 0,
                });
                next_sample += SAMPLE_EVERY;
            }
            tokio::time::sleep(PEAK_EVERY).await;
        }
        (samples, peak, files_peak)
    };
    let all_ended = async {
        let mut results = Vec::with_capacity(MANY_STREAMS);
        for stream in streams {
            results.push(stream.await.map_err(io::Error::other).and_then(|r| r));
        }
        done.store(true, Ordering::Relaxed);
        results
    };
    let (results, (samples, peak, files_peak)) = tokio::join!(all_ended, watch);
    let (mut completed, mut failures, mut first_bytes, mut last_open) =
        (0, Vec::new(), Vec::new(), start);
    for result in &results {
        match result {
            Ok((opened_at, times)) if times.complete() => {
                completed += 1;
                first_bytes.push(times.first_byte);
                last_open = last_open.max(*opened_at);
            }
            Ok((_, times)) => note(
                &mut failures,
                format!(
                    "status {} after {} of {} events",
                    times.status, times.events, expected
                ),
            ),
            Err(e) => note(&mut failures, e.to_string()),
        }
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let flat = Flatness::of(&samples);
    Ok(ManyStreams {
        provider: Provider::OpenAi.name(),
        streams: MANY_STREAMS,
        events_per_stream: MANY_EVENTS,
        event_every_s: MANY_EVERY.as_secs_f64(),
        completed,
        failed: MANY_STREAMS - completed,
        failures,
        open_all_s: (last_open - start).as_secs_f64(),
        first_byte: percentiles(&first_bytes),
        rss_before_mib: rss_before as f64 / MIB,
        peak_rss_mib: peak as f64 / MIB,
        rss_per_stream_kib: peak.saturating_sub(rss_before) as f64 / 1024.0 / MANY_STREAMS as f64,
        samples,
        flat,
        rss_after_mib: proxy.rss().unwrap_or(0) as f64 / MIB,
        proxy_open_files_peak: files_peak,
        proxy_open_file_limit: procfs::open_file_limit(proxy.pid),
    })
}

/// Keeps the first few distinct failure reasons.
fn note(failures: &mut Vec<String>, why: String) {
    if failures.len() < 5 && !failures.contains(&why) {
        failures.push(why);
    }
}

/// The proxy for [`many_streams`], on a mock of its own (a [`MockProcess`]) and alone on
/// `cpu`: llm-proxy with every setting at its default; nginx with room for twice
/// [`MANY_STREAMS`] connections (the baseline's 16,384 would refuse some).
pub async fn proxy_for_many(
    subject: &Subject,
    mock: std::net::SocketAddr,
    cpu: Option<usize>,
) -> io::Result<Proxy> {
    let placement = Placement {
        nginx_connections: 2 * MANY_STREAMS + 4_096,
        ..Placement::one_worker(cpu)
    };
    let (subject, env) = match subject {
        Subject::Nginx(dir) => (Subject::Nginx(dir.join("many")), Vec::new()),
        Subject::LlmProxy(binary) => (
            Subject::LlmProxy(binary.clone()),
            vec![("DATABASE_URL", crate::proxy::fresh_database("many.db"))],
        ),
    };
    Proxy::start_placed(&subject, mock, &placement, &env).await
}

/// The mock upstream in a process of its own (this binary with [`MOCK_PROCESS_ARG`]), on this
/// process's CPU: ten thousand streams' upstream ends would not fit in this process's open
/// files beside their callers' ends when the hard limit is 20,000. Killed when dropped; it
/// also ends when its stdin closes, should this process die first.
pub struct MockProcess {
    child: std::process::Child,
    pub addr: std::net::SocketAddr,
}

impl MockProcess {
    pub fn start() -> io::Result<MockProcess> {
        use std::io::BufRead;
        let mut child = std::process::Command::new(std::env::current_exe()?)
            .arg(MOCK_PROCESS_ARG)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()?;
        let mut line = String::new();
        if let Some(stdout) = child.stdout.take() {
            std::io::BufReader::new(stdout).read_line(&mut line)?;
        }
        match line.trim().parse() {
            Ok(addr) => Ok(MockProcess { child, addr }),
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                Err(io::Error::other(format!("the mock process said {line:?}")))
            }
        }
    }
}

impl Drop for MockProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// [`MOCK_PROCESS_ARG`]: serves the mock, prints its address, and runs until stdin closes.
pub fn serve_mock_process() -> std::process::ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("bench mock: cannot start a runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let served = runtime.block_on(async {
        let addr = mock::start().await?;
        println!("{addr}");
        let stdin_closed = tokio::task::spawn_blocking(|| {
            let _ = io::copy(&mut io::stdin(), &mut io::sink());
        });
        stdin_closed.await.map_err(io::Error::other)
    });
    match served {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench mock: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Two workers on both CPUs (which the load generator and the mock share with them) against
/// one worker alone on the proxy's CPU, each a fresh process, their closed loops alternated in
/// [`SCALING_ROUNDS`] so that both see the machine in the same state.
#[derive(Serialize)]
pub struct TwoWorkers {
    pub provider: &'static str,
    pub connections: usize,
    /// The CPUs the two workers may use (`taskset -c`); the one worker has the proxy's.
    pub cpus: String,
    pub one_worker_rps: f64,
    pub one_worker_cpu_per_request_us: f64,
    pub two_workers_rps: f64,
    pub two_workers_cpu_per_request_us: f64,
    /// Failed requests of either.
    pub errors: u64,
    /// Two workers' req/s over one worker's, as measured: the load generator's share of the
    /// CPUs is in it.
    pub raw_ratio: f64,
    /// What two workers would do with two cores to themselves: 2 × one worker's CPU per request
    /// over two workers' (the figure judged).
    pub projected_ratio: f64,
}

/// Closed loops of each of the two proxies, one after the other, this many times.
const SCALING_ROUNDS: usize = 2;
/// The closed loop's connections (as the one-core run's).
const SCALING_CONNECTIONS: usize = crate::CONNECTIONS;

/// A fresh `subject` with `workers` workers: one alone on the proxy's CPU, as every other
/// scenario has it, or more on every CPU the run has (llm-proxy with `WORKERS`, nginx with a
/// master and worker processes; each in a directory or database of its own).
pub async fn start_workers(
    subject: &Subject,
    mock: std::net::SocketAddr,
    pinning: &Pinning,
    workers: usize,
) -> io::Result<Proxy> {
    let placement = match workers {
        1 => Placement::one_worker(pinning.proxy_cpu),
        workers => Placement {
            cpus: all_cpus(pinning),
            workers,
            ..Placement::one_worker(None)
        },
    };
    let name = format!("workers-{workers}");
    let (subject, env) = match subject {
        Subject::Nginx(dir) => (Subject::Nginx(dir.join(&name)), Vec::new()),
        Subject::LlmProxy(binary) => (
            Subject::LlmProxy(binary.clone()),
            vec![(
                "DATABASE_URL",
                crate::proxy::fresh_database(&format!("{name}.db")),
            )],
        ),
    };
    Proxy::start_placed(&subject, mock, &placement, &env).await
}

/// The proxy's CPU and the load's: every CPU the run pinned anything to.
fn all_cpus(pinning: &Pinning) -> Vec<usize> {
    pinning
        .proxy_cpu
        .into_iter()
        .chain(pinning.load_cpu)
        .collect()
}

/// Requests answered and failed, and the CPU time and wall time they took.
#[derive(Default)]
struct Loops {
    requests: u64,
    errors: u64,
    cpu: Duration,
    elapsed: Duration,
}

impl Loops {
    fn rps(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    fn cpu_per_request_us(&self) -> f64 {
        self.cpu.as_secs_f64() * 1e6 / self.requests.max(1) as f64
    }
}

/// `one` (one worker) and `two` (two workers, from [`start_workers`]), warmed as every proxy
/// is, then their closed loops alternated; nginx's CPU time is its workers' and its master's
/// together.
pub async fn two_workers(
    one: &Proxy,
    two: &Proxy,
    pinning: &Pinning,
) -> Result<TwoWorkers, String> {
    let failed = |e: io::Error| e.to_string();
    let targets = [one, two].map(|proxy| Target::new(proxy.addr, Provider::OpenAi, Via::Proxy));
    for target in &targets {
        let warm = load::one_at_a_time(target, crate::ONE_AT_A_TIME)
            .await
            .map_err(failed)?;
        if warm.errors > 0 {
            return Err(format!("{} failed requests while warming up", warm.errors));
        }
    }
    let mut loops = [Loops::default(), Loops::default()];
    for _ in 0..SCALING_ROUNDS {
        for ((proxy, target), sum) in [one, two].iter().zip(&targets).zip(&mut loops) {
            let run = load::closed_loop(
                target,
                SCALING_CONNECTIONS,
                crate::WARM,
                crate::MEASURE,
                || proxy.tree_cpu_time().ok(),
            )
            .await
            .map_err(failed)?;
            sum.requests += run.requests;
            sum.errors += run.errors;
            sum.elapsed += run.elapsed;
            sum.cpu += run.cpu.ok_or("no CPU time")?.total();
        }
    }
    let [one, two] = loops;
    let list: Vec<String> = all_cpus(pinning).iter().map(usize::to_string).collect();
    Ok(TwoWorkers {
        provider: Provider::OpenAi.name(),
        connections: SCALING_CONNECTIONS,
        cpus: if list.is_empty() {
            "all".into()
        } else {
            list.join(",")
        },
        one_worker_rps: one.rps(),
        one_worker_cpu_per_request_us: one.cpu_per_request_us(),
        two_workers_rps: two.rps(),
        two_workers_cpu_per_request_us: two.cpu_per_request_us(),
        errors: one.errors + two.errors,
        raw_ratio: two.rps() / one.rps(),
        projected_ratio: 2.0 * one.cpu_per_request_us() / two.cpu_per_request_us(),
    })
}

/// The per-proxy table's rows for these figures (the targets are judged in `versus.rs`).
pub fn rows(scale: &Scale) -> Vec<[String; 6]> {
    let mut rows = Vec::new();
    for s in &scale.event_slopes {
        rows.push([
            format!(
                "Proxy CPU per stream event (slope, {} and {} events {} ms apart, {} streams each), {}",
                s.short_events,
                s.long_events,
                s.event_every_ms,
                s.streams,
                crate::report::label(s.provider, s.route)
            ),
            "—".into(),
            format!(
                "{:.2} µs ({:.0} → {:.0} µs per stream)",
                s.cpu_per_event_us, s.short_cpu_per_stream_us, s.long_cpu_per_stream_us
            ),
            String::new(),
            String::new(),
            if s.failed > 0 {
                format!("{} streams failed", s.failed)
            } else {
                String::new()
            },
        ]);
    }
    match &scale.many_streams {
        Some(Ok(m)) => {
            rows.push([
                format!(
                    "{} streams at once for {:.0} s: completed (every event); opened in",
                    thousands(m.streams as f64),
                    m.event_every_s * (m.events_per_stream - 1) as f64
                ),
                "—".into(),
                format!("{} / {}; {:.1} s", m.completed, m.streams, m.open_all_s),
                String::new(),
                "all".into(),
                yes_no(m.completed == m.streams).into(),
            ]);
            rows.push([
                format!(
                    "{} streams at once: proxy's open files (peak of limit); why streams failed",
                    thousands(m.streams as f64)
                ),
                "—".into(),
                format!(
                    "{} of {}; {}",
                    m.proxy_open_files_peak,
                    m.proxy_open_file_limit
                        .map_or_else(|| "?".to_owned(), |l| l.to_string()),
                    if m.failures.is_empty() {
                        "none failed".to_owned()
                    } else {
                        m.failures.join("; ")
                    }
                ),
                String::new(),
                String::new(),
                String::new(),
            ]);
            rows.push([
                format!(
                    "{} streams at once: proxy RSS before / peak / after",
                    thousands(m.streams as f64)
                ),
                "—".into(),
                format!(
                    "{:.1} / {:.1} / {:.1} MiB ({:.1} KiB per stream)",
                    m.rss_before_mib, m.peak_rss_mib, m.rss_after_mib, m.rss_per_stream_kib
                ),
                String::new(),
                String::new(),
                String::new(),
            ]);
            rows.push([
                format!(
                    "{} streams held: RSS flat (last third's peak ≤ middle third's + {FLAT_PCT}% or {FLAT_MIB} MiB)",
                    thousands(m.streams as f64)
                ),
                "—".into(),
                format!(
                    "{:.1} against {:.1} MiB (allowed {:.1})",
                    m.flat.last_third_max_mib, m.flat.middle_third_max_mib, m.flat.allowed_mib
                ),
                String::new(),
                "flat".into(),
                yes_no(m.flat.flat).into(),
            ]);
        }
        Some(Err(why)) => rows.push(skipped(
            format!("{} streams at once", thousands(MANY_STREAMS as f64)),
            why,
        )),
        None => {}
    }
    match &scale.two_workers {
        Some(Ok(t)) => rows.push([
            format!(
                "Two workers on CPUs {} against one alone, {} connections, {}: req/s; CPU per request",
                t.cpus, t.connections, t.provider
            ),
            format!(
                "{}; {:.1} µs",
                thousands(t.one_worker_rps),
                t.one_worker_cpu_per_request_us
            ),
            format!(
                "{}; {:.1} µs",
                thousands(t.two_workers_rps),
                t.two_workers_cpu_per_request_us
            ),
            format!("raw {:.2}×, projected {:.2}×", t.raw_ratio, t.projected_ratio),
            String::new(),
            String::new(),
        ]),
        Some(Err(why)) => rows.push(skipped("Two workers".into(), why)),
        None => {}
    }
    rows
}

fn skipped(measure: String, why: &str) -> [String; 6] {
    [
        measure,
        format!("not run: {why}"),
        String::new(),
        String::new(),
        String::new(),
        String::new(),
    ]
}
