//! The load: the requests a caller sends (to the mock directly, or to the proxy), and the ways
//! of sending them: one at a time, open loop at a fixed rate, closed loop on N connections,
//! and streams.

use std::{
    io,
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use tokio::{sync::mpsc, task::JoinHandle, time::sleep_until};

use crate::{
    http::{self, Conn},
    mock::{self, Provider, Stamps},
    procfs::CpuTime,
};

/// Where a request goes: straight to the mock, or through the proxy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Via {
    Direct,
    Proxy,
}

/// One provider reached one way, with its requests built once.
#[derive(Clone)]
pub struct Target {
    pub addr: SocketAddr,
    pub via: Via,
    /// Where the events of its streams carry their sending time.
    pub stamps: Stamps,
    json: Arc<[u8]>,
    stream: Arc<[u8]>,
}

impl Target {
    pub fn new(addr: SocketAddr, provider: Provider, via: Via) -> Target {
        Target {
            addr,
            via,
            stamps: Stamps::Comment,
            json: request(addr, provider, via, false).into(),
            stream: request(addr, provider, via, true).into(),
        }
    }

    /// Anthropic through the OpenAI door, which the proxy translates both ways: through the
    /// proxy, `POST /v1/chat/completions` for `anthropic/<model>`; direct, the same Anthropic
    /// request as [`Target::new`]'s (the proxy's translation of that body is byte for byte the
    /// same). Both carry an `X-Request-Id` that asks the mock for [`Stamps::Text`].
    pub fn translated(addr: SocketAddr, via: Via) -> Target {
        Target {
            addr,
            via,
            stamps: Stamps::Text,
            json: translated_request(addr, via, false).into(),
            stream: translated_request(addr, via, true).into(),
        }
    }

    /// OpenAI on the path route for a caller with a key the proxy issued, bringing its own
    /// OpenAI key in `X-API-Key-OpenAI`. Non-stream only.
    pub fn issued(addr: SocketAddr, secret: &str) -> Target {
        let body = r#"{"model":"gpt-4o-mini","messages":[{"role":"system","content":"Be brief."},{"role":"user","content":"Say hello"}]}"#;
        let json: Arc<[u8]> = format!(
            "POST /v1/chat/openai HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\n\
             x-api-key: {secret}\r\nx-api-key-openai: sk-bench\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
        .into();
        Target {
            addr,
            via: Via::Proxy,
            stamps: Stamps::Comment,
            stream: json.clone(),
            json,
        }
    }

    /// The response cache: through the proxy, the OpenAI door with `X-Proxy-Cache: use` and
    /// the same body every time, so every request after the first is a hit; direct, the same
    /// OpenAI request as [`Target::new`]'s, which the mock answers as it answers any.
    pub fn cached(addr: SocketAddr, via: Via) -> Target {
        let (json, stream) = match via {
            Via::Direct => (
                request(addr, Provider::OpenAi, via, false),
                request(addr, Provider::OpenAi, via, true),
            ),
            Via::Proxy => (cached_request(addr, false), cached_request(addr, true)),
        };
        Target {
            addr,
            via,
            stamps: Stamps::Comment,
            json: json.into(),
            stream: stream.into(),
        }
    }

    pub fn request(&self, stream: bool) -> Arc<[u8]> {
        if stream {
            self.stream.clone()
        } else {
            self.json.clone()
        }
    }
}

/// The bytes of one request. Through the proxy: the caller's chat body with `X-API-Key`.
/// Direct: what the proxy would send upstream for it (the same body for OpenAI, the translated
/// one for Anthropic), with the provider's auth headers.
fn request(addr: SocketAddr, provider: Provider, via: Via, stream: bool) -> Vec<u8> {
    let stream_field = if stream { r#","stream":true"# } else { "" };
    let (path, auth, body) = match (via, provider) {
        (Via::Proxy, _) => {
            let model = match provider {
                Provider::OpenAi => "gpt-4o-mini",
                Provider::Anthropic => "claude-3-5-haiku-20241022",
            };
            (
                format!("/v1/chat/{}", provider.name()),
                "x-api-key: sk-bench\r\n",
                format!(
                    r#"{{"model":"{model}","messages":[{{"role":"system","content":"Be brief."}},{{"role":"user","content":"Say hello"}}]{stream_field}}}"#
                ),
            )
        }
        (Via::Direct, Provider::OpenAi) => (
            "/openai/chat/completions".to_owned(),
            "authorization: Bearer sk-bench\r\n",
            format!(
                r#"{{"model":"gpt-4o-mini","messages":[{{"role":"system","content":"Be brief."}},{{"role":"user","content":"Say hello"}}]{stream_field}}}"#
            ),
        ),
        (Via::Direct, Provider::Anthropic) => (
            "/anthropic/messages".to_owned(),
            "x-api-key: sk-bench\r\nanthropic-version: 2023-06-01\r\n",
            format!(
                r#"{{"model":"claude-3-5-haiku-20241022","system":"Be brief.","messages":[{{"role":"user","content":"Say hello"}}],"max_tokens":1024{stream_field}}}"#
            ),
        ),
    };
    format!(
        "POST {path} HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\n{auth}\
         content-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// The bytes of one [`Target::translated`] request.
fn translated_request(addr: SocketAddr, via: Via, stream: bool) -> Vec<u8> {
    let stream_field = if stream { r#","stream":true"# } else { "" };
    let (path, auth, body) = match via {
        Via::Proxy => (
            "/v1/chat/completions",
            "authorization: Bearer sk-bench\r\n",
            format!(
                r#"{{"model":"anthropic/claude-3-5-haiku-20241022","messages":[{{"role":"system","content":"Be brief."}},{{"role":"user","content":"Say hello"}}]{stream_field}}}"#
            ),
        ),
        Via::Direct => (
            "/anthropic/messages",
            "x-api-key: sk-bench\r\nanthropic-version: 2023-06-01\r\n",
            format!(
                r#"{{"model":"claude-3-5-haiku-20241022","system":"Be brief.","messages":[{{"role":"user","content":"Say hello"}}],"max_tokens":1024{stream_field}}}"#
            ),
        ),
    };
    format!(
        "POST {path} HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\n{auth}\
         x-request-id: {}\r\ncontent-length: {}\r\n\r\n{body}",
        mock::TEXT_STAMPS_ID,
        body.len()
    )
    .into_bytes()
}

/// The bytes of one [`Target::cached`] request through the proxy.
fn cached_request(addr: SocketAddr, stream: bool) -> Vec<u8> {
    let stream_field = if stream { r#","stream":true"# } else { "" };
    let body = format!(
        r#"{{"model":"openai/gpt-4o-mini","messages":[{{"role":"system","content":"Be brief."}},{{"role":"user","content":"Say hello"}}]{stream_field}}}"#
    );
    format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\n\
         authorization: Bearer sk-bench\r\nx-proxy-cache: use\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// A non-stream answer.
pub struct Reply {
    pub status: u16,
    pub body: Vec<u8>,
}

/// Sends one request on `conn` and reads the whole answer.
pub async fn call(conn: &mut Conn, request: &[u8]) -> io::Result<Reply> {
    conn.write_all(request).await?;
    let head = conn
        .read_head()
        .await?
        .ok_or(io::ErrorKind::UnexpectedEof)?;
    let mut body = Vec::new();
    conn.read_body(&head, |data, _| body.extend_from_slice(data))
        .await?;
    Ok(Reply {
        status: head.status(),
        body,
    })
}

/// What one stream's caller saw.
#[derive(Default)]
pub struct StreamTimes {
    pub status: u16,
    /// From writing the request to the first byte of the body (the first event).
    pub first_byte: Duration,
    /// For every event after the first: from the mock writing it to the caller reading it.
    pub transits: Vec<Duration>,
    /// Between the arrivals of two events.
    pub gaps: Vec<Duration>,
    /// Stamped events read, and how many a whole stream has.
    pub events: usize,
    pub expected: usize,
}

impl StreamTimes {
    pub fn complete(&self) -> bool {
        self.status == 200 && self.events == self.expected
    }
}

/// Sends one stream request and times its events by the stamps the mock put in them, where
/// `stamps` says. With [`Stamps::Comment`] every event is stamped and the first, which comes
/// with the head, is timed only as the first byte; with [`Stamps::Text`] only the text deltas
/// are, none of them first, and each is timed.
pub async fn call_stream(
    conn: &mut Conn,
    request: &[u8],
    stamps: Stamps,
) -> io::Result<StreamTimes> {
    call_stream_of(conn, request, stamps, stamps.per_stream()).await
}

/// As [`call_stream`], for a stream of `expected` stamped events.
pub async fn call_stream_of(
    conn: &mut Conn,
    request: &[u8],
    stamps: Stamps,
    expected: usize,
) -> io::Result<StreamTimes> {
    let sent = Instant::now();
    conn.write_all(request).await?;
    let head = conn
        .read_head()
        .await?
        .ok_or(io::ErrorKind::UnexpectedEof)?;
    read_stream(conn, &head, sent, stamps, expected).await
}

/// The body of a stream whose `head` is read, for a request written at `sent`.
pub async fn read_stream(
    conn: &mut Conn,
    head: &http::Head,
    sent: Instant,
    stamps: Stamps,
    expected: usize,
) -> io::Result<StreamTimes> {
    let mut times = StreamTimes {
        status: head.status(),
        expected,
        ..StreamTimes::default()
    };
    let find_stamp = match stamps {
        Stamps::Comment => next_stamp,
        Stamps::Text => next_text_stamp,
    };
    let timed_from = match stamps {
        Stamps::Comment => 1,
        Stamps::Text => 0,
    };
    let mut seen = Vec::new();
    let mut scanned = 0;
    let mut last_arrival = None;
    conn.read_body(head, |data, arrived| {
        if seen.is_empty() {
            times.first_byte = arrived - sent;
        }
        seen.extend_from_slice(data);
        while let Some((sent_ns, next)) = find_stamp(&seen, scanned) {
            scanned = next;
            if times.events >= timed_from {
                let transit = mock::ns_at(arrived).saturating_sub(sent_ns);
                times.transits.push(Duration::from_nanos(transit));
            }
            if let Some(previous) = last_arrival.replace(arrived) {
                times.gaps.push(arrived - previous);
            }
            times.events += 1;
        }
    })
    .await?;
    Ok(times)
}

/// The first whole stamp at or after `from`: its value, and where to look for the next.
fn next_stamp(seen: &[u8], from: usize) -> Option<(u64, usize)> {
    let at = from + http::find(&seen[from..], mock::STAMP)?;
    let digits_at = at + mock::STAMP.len();
    let end = digits_at + seen[digits_at..].iter().position(|&b| b == b'\n')?;
    let value = std::str::from_utf8(&seen[digits_at..end])
        .ok()?
        .parse()
        .ok()?;
    Some((value, end))
}

/// As [`next_stamp`], for a [`mock::TEXT_STAMP`] inside a text: its digits end at the first
/// byte that is not one.
fn next_text_stamp(seen: &[u8], from: usize) -> Option<(u64, usize)> {
    let at = from + http::find(&seen[from..], mock::TEXT_STAMP)?;
    let digits_at = at + mock::TEXT_STAMP.len();
    let end = digits_at + seen[digits_at..].iter().position(|b| !b.is_ascii_digit())?;
    let value = std::str::from_utf8(&seen[digits_at..end])
        .ok()?
        .parse()
        .ok()?;
    Some((value, end))
}

/// Latencies of the requests that succeeded, and how many did not.
#[derive(Default)]
pub struct Run {
    pub latencies: Vec<Duration>,
    pub errors: usize,
    pub elapsed: Duration,
}

/// `count` requests, one after another on one connection.
pub async fn one_at_a_time(target: &Target, count: usize) -> io::Result<Run> {
    let mut conn = Conn::open(target.addr).await?;
    let request = target.request(false);
    let mut run = Run::default();
    let start = Instant::now();
    for _ in 0..count {
        let sent = Instant::now();
        let reply = call(&mut conn, &request).await?;
        record(&mut run, sent.elapsed(), reply.status == 200);
    }
    run.elapsed = start.elapsed();
    Ok(run)
}

/// Open loop: request `i` is sent at `start + i / rate` whether or not earlier ones have
/// answered, on an idle connection from a pool (a new one when all are busy). Latency runs
/// from the moment a request is sent to its last byte.
pub async fn fixed_rate(target: &Target, rate: f64, duration: Duration) -> io::Result<Run> {
    let count = (rate * duration.as_secs_f64()) as usize;
    let interval = Duration::from_secs_f64(1.0 / rate);
    let mut idle = open_many(target.addr, 16).await?;
    let (give_back, mut returned) = mpsc::unbounded_channel::<Conn>();
    let mut requests = Vec::with_capacity(count);
    let start = tokio::time::Instant::now();
    for i in 0..count {
        sleep_until(start + interval.mul_f64(i as f64)).await;
        while let Ok(conn) = returned.try_recv() {
            idle.push(conn);
        }
        let (conn, addr) = (idle.pop(), target.addr);
        let (request, give_back) = (target.request(false), give_back.clone());
        requests.push(tokio::spawn(async move {
            let sent = Instant::now();
            let mut conn = match conn {
                Some(conn) => conn,
                None => Conn::open(addr).await?,
            };
            let reply = call(&mut conn, &request).await?;
            let latency = sent.elapsed();
            let _ = give_back.send(conn);
            io::Result::Ok((latency, reply.status == 200))
        }));
    }
    let mut run = Run::default();
    for request in requests {
        match request.await? {
            Ok((latency, ok)) => record(&mut run, latency, ok),
            Err(_) => run.errors += 1,
        }
    }
    run.elapsed = start.elapsed();
    Ok(run)
}

fn record(run: &mut Run, latency: Duration, ok: bool) {
    if ok {
        run.latencies.push(latency);
    } else {
        run.errors += 1;
    }
}

pub async fn open_many(addr: SocketAddr, count: usize) -> io::Result<Vec<Conn>> {
    let mut conns = Vec::with_capacity(count);
    for _ in 0..count {
        conns.push(Conn::open(addr).await?);
    }
    Ok(conns)
}

/// Requests (or streams) finished and failed so far by a set of looping workers.
#[derive(Clone, Default)]
pub struct Counters {
    pub done: Arc<AtomicU64>,
    pub failed: Arc<AtomicU64>,
}

impl Counters {
    pub fn done(&self) -> u64 {
        self.done.load(Ordering::Relaxed)
    }

    pub fn failed(&self) -> u64 {
        self.failed.load(Ordering::Relaxed)
    }
}

/// Closed loop: `connections` workers, each sending its next request as soon as the last one
/// answered, until `stop` is set. With `stream`, each request is a whole stream.
pub async fn spawn_workers(
    target: &Target,
    connections: usize,
    stream: bool,
    stop: &Arc<AtomicBool>,
    counters: &Counters,
) -> io::Result<Vec<JoinHandle<()>>> {
    let mut workers = Vec::with_capacity(connections);
    for mut conn in open_many(target.addr, connections).await? {
        let (request, stop, counters) = (target.request(stream), stop.clone(), counters.clone());
        let (addr, stamps) = (target.addr, target.stamps);
        workers.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let ok = if stream {
                    call_stream(&mut conn, &request, stamps)
                        .await
                        .is_ok_and(|times| times.complete())
                } else {
                    call(&mut conn, &request)
                        .await
                        .is_ok_and(|reply| reply.status == 200)
                };
                let counter = if ok { &counters.done } else { &counters.failed };
                counter.fetch_add(1, Ordering::Relaxed);
                if !ok {
                    // A broken connection cannot carry the next request.
                    match Conn::open(addr).await {
                        Ok(fresh) => conn = fresh,
                        Err(_) => return,
                    }
                }
            }
        }));
    }
    Ok(workers)
}

/// Requests per second over a window of a closed loop, and the proxy's CPU time in it.
pub struct Throughput {
    pub requests: u64,
    pub errors: u64,
    pub elapsed: Duration,
    pub cpu: Option<CpuTime>,
}

/// Runs a closed loop on `connections` connections: `warm` unmeasured, then `measure`, reading
/// `cpu_time` (the proxy's CPU time so far, if measured) at both ends of the window.
pub async fn closed_loop(
    target: &Target,
    connections: usize,
    warm: Duration,
    measure: Duration,
    cpu_time: impl Fn() -> Option<CpuTime>,
) -> io::Result<Throughput> {
    let stop = Arc::new(AtomicBool::new(false));
    let counters = Counters::default();
    let workers = spawn_workers(target, connections, false, &stop, &counters).await?;
    tokio::time::sleep(warm).await;
    let (done, failed, cpu, start) = (
        counters.done(),
        counters.failed(),
        cpu_time(),
        Instant::now(),
    );
    tokio::time::sleep(measure).await;
    let elapsed = start.elapsed();
    let throughput = Throughput {
        requests: counters.done() - done,
        errors: counters.failed() - failed,
        elapsed,
        cpu: cpu_time()
            .zip(cpu)
            .map(|(after, before)| after.since(before)),
    };
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        worker.await?;
    }
    Ok(throughput)
}

/// What a set of streams' callers saw, all events pooled.
#[derive(Default)]
pub struct StreamRun {
    pub first_bytes: Vec<Duration>,
    pub transits: Vec<Duration>,
    pub gaps: Vec<Duration>,
    pub completed: usize,
    pub failed: usize,
}

/// Opens `count` connections, then starts one stream on each, `spacing` apart (all at once
/// when zero), and waits for every one to end.
pub async fn streams(target: &Target, count: usize, spacing: Duration) -> io::Result<StreamRun> {
    let conns = open_many(target.addr, count).await?;
    let start = tokio::time::Instant::now();
    let mut streams = Vec::with_capacity(count);
    for (i, mut conn) in conns.into_iter().enumerate() {
        if !spacing.is_zero() {
            sleep_until(start + spacing * i as u32).await;
        }
        let (request, stamps) = (target.request(true), target.stamps);
        streams.push(tokio::spawn(async move {
            call_stream(&mut conn, &request, stamps).await
        }));
    }
    let mut run = StreamRun::default();
    for stream in streams {
        match stream.await? {
            Ok(times) if times.complete() => {
                run.completed += 1;
                run.first_bytes.push(times.first_byte);
                run.transits.extend(times.transits);
                run.gaps.extend(times.gaps);
            }
            _ => run.failed += 1,
        }
    }
    Ok(run)
}
