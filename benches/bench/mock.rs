//! The mock upstream: OpenAI Chat Completions and Anthropic Messages, as JSON or as SSE, on
//! 127.0.0.1 port 0.
//!
//! `POST /openai/chat/completions` and `POST /anthropic/messages` answer at once with the
//! captured answers in `tests/fixtures`; with `"stream": true` in the body they send
//! [`CHUNKS`] events [`CHUNK_INTERVAL`] apart instead, the first with the response head. Each
//! event opens with an SSE comment, `: sent_ns=<n>`, the moment it was written (see
//! [`now_ns`]), so that the client can tell how long it took to arrive.
//!
//! A stream the proxy translates into another format loses its comments, so an Anthropic
//! stream asked for with an `X-Request-Id` that starts with [`TEXT_STAMPS_ID`] (which the proxy
//! passes upstream as it is) has no comments and carries `sent_ns=<n>` inside the text of each
//! text delta instead: [`Stamps::Text`]. Its events are otherwise the same.
//!
//! An `X-Request-Id` that carries a [`StreamShape`] (`...-events-<n>-every-<ms>`) asks for a
//! stream of `n` events `ms` apart instead of the default: streams of two lengths give the cost
//! of an event as a slope, and slow ones hold thousands open. The same events, more deltas.

use std::{
    io,
    net::SocketAddr,
    sync::LazyLock,
    time::{Duration, Instant},
};

use tokio::{
    net::{TcpListener, TcpSocket},
    time::sleep_until,
};

use crate::http::{self, Conn};

/// Events in every stream.
pub const CHUNKS: usize = 20;
/// The pause between two events of a stream.
pub const CHUNK_INTERVAL: Duration = Duration::from_millis(50);
/// What opens each event, followed by its sending time in nanoseconds.
pub const STAMP: &[u8] = b": sent_ns=";
/// With [`Stamps::Text`]: what precedes the sending time inside a text delta's text.
pub const TEXT_STAMP: &[u8] = b"sent_ns=";
/// The start of an `X-Request-Id` that asks for [`Stamps::Text`].
pub const TEXT_STAMPS_ID: &str = "bench-text-stamps";
/// The text deltas of an Anthropic stream (events 2 to `CHUNKS - 4`).
pub const ANTHROPIC_TEXT_DELTAS: usize = CHUNKS - 5;
/// The events around an Anthropic stream's text deltas: the fewest a [`StreamShape`] may ask for
/// is one more.
const ANTHROPIC_FRAME_EVENTS: usize = 5;

/// How many events a stream has and how far apart they are sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StreamShape {
    pub events: usize,
    pub every: Duration,
}

impl StreamShape {
    /// The mock's default: [`CHUNKS`] events [`CHUNK_INTERVAL`] apart.
    pub const DEFAULT: StreamShape = StreamShape {
        events: CHUNKS,
        every: CHUNK_INTERVAL,
    };

    /// An `X-Request-Id` that starts with `prefix` (such as [`TEXT_STAMPS_ID`]) and asks for
    /// this shape. The proxy passes the caller's id upstream and no other caller header, so the
    /// shape travels in it.
    pub fn request_id(self, prefix: &str) -> String {
        format!(
            "{prefix}-events-{}-every-{}",
            self.events,
            self.every.as_millis()
        )
    }

    /// The shape an `X-Request-Id` asks for, if it asks for one the mock can send.
    pub fn from_request_id(id: &str) -> Option<StreamShape> {
        let number_after = |marker: &str| -> Option<u64> {
            let rest = &id[id.find(marker)? + marker.len()..];
            let digits = rest.split(|c: char| !c.is_ascii_digit()).next()?;
            digits.parse().ok()
        };
        let events = number_after("-events-")? as usize;
        let every = Duration::from_millis(number_after("-every-")?);
        (events > ANTHROPIC_FRAME_EVENTS).then_some(StreamShape { events, every })
    }
}

/// Where a stream's events carry the moment they were written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stamps {
    /// An SSE comment, [`STAMP`], opens every event: a stream the proxy passes through.
    Comment,
    /// [`TEXT_STAMP`] inside each text delta's text, no comments: an Anthropic stream the
    /// proxy translates (which drops comments and keeps the text).
    Text,
}

impl Stamps {
    /// How many stamped events a whole stream has.
    pub fn per_stream(self) -> usize {
        self.in_stream(CHUNKS)
    }

    /// How many stamped events a stream of `events` has.
    pub fn in_stream(self, events: usize) -> usize {
        match self {
            Stamps::Comment => events,
            Stamps::Text => events - ANTHROPIC_FRAME_EVENTS,
        }
    }
}

static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);

/// Nanoseconds since the first call in this process: the clock the mock stamps events with
/// and the client reads them by (both live in this process).
pub fn now_ns() -> u64 {
    ns_at(Instant::now())
}

/// An instant on the [`now_ns`] clock.
pub fn ns_at(at: Instant) -> u64 {
    at.saturating_duration_since(*EPOCH).as_nanos() as u64
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Provider {
    OpenAi,
    Anthropic,
}

impl Provider {
    pub fn name(self) -> &'static str {
        match self {
            Provider::OpenAi => "openai",
            Provider::Anthropic => "anthropic",
        }
    }
}

/// Starts the mock on this runtime and returns its address.
pub async fn start() -> io::Result<SocketAddr> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(([127, 0, 0, 1], 0).into())?;
    // Room for thousands of streams' connections arriving at once (the kernel caps it at
    // `net.core.somaxconn`).
    let listener = socket.listen(16384)?;
    let addr = listener.local_addr()?;
    now_ns();
    tokio::spawn(accept(listener));
    Ok(addr)
}

async fn accept(listener: TcpListener) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(serve(Conn::new(stream)));
            }
            Err(e) => eprintln!("mock: accept failed: {e}"),
        }
    }
}

/// Answers the requests of one keep-alive connection, one after another.
async fn serve(mut conn: Conn) {
    while let Ok(Some(head)) = conn.read_head().await {
        let mut body = Vec::new();
        if conn
            .read_body(&head, |data, _| body.extend_from_slice(data))
            .await
            .is_err()
        {
            return;
        }
        let written = match route(&head.start_line) {
            None => conn.write_all(&NOT_FOUND).await,
            Some(provider) if wants_stream(&body) => {
                let stamps = match (provider, head.text_stamps) {
                    (Provider::Anthropic, true) => Stamps::Text,
                    _ => Stamps::Comment,
                };
                let shape = head.shape.unwrap_or(StreamShape::DEFAULT);
                stream(&mut conn, provider, stamps, shape).await
            }
            Some(Provider::OpenAi) => conn.write_all(&OPENAI_JSON).await,
            Some(Provider::Anthropic) => conn.write_all(&ANTHROPIC_JSON).await,
        };
        if written.is_err() {
            return;
        }
    }
}

/// Which wire format a request line asks for.
fn route(start_line: &str) -> Option<Provider> {
    let path = start_line.split(' ').nth(1)?;
    match path {
        "/openai/chat/completions" => Some(Provider::OpenAi),
        "/anthropic/messages" => Some(Provider::Anthropic),
        _ => None,
    }
}

/// Whether the body has `"stream": true`, whatever the spacing.
fn wants_stream(body: &[u8]) -> bool {
    let Some(at) = http::find(body, b"\"stream\"") else {
        return false;
    };
    let rest = body[at + 8..].trim_ascii_start();
    rest.strip_prefix(b":")
        .is_some_and(|value| value.trim_ascii_start().starts_with(b"true"))
}

static OPENAI_JSON: LazyLock<Vec<u8>> =
    LazyLock::new(|| json_response(include_str!("../../tests/fixtures/openai/completion.json")));
static ANTHROPIC_JSON: LazyLock<Vec<u8>> =
    LazyLock::new(|| json_response(include_str!("../../tests/fixtures/anthropic/message.json")));
static NOT_FOUND: LazyLock<Vec<u8>> =
    LazyLock::new(|| b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n".to_vec());

fn json_response(body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

const STREAM_HEAD: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\
    cache-control: no-cache\r\ntransfer-encoding: chunked\r\n\r\n";

/// Sends one stream: the head with the first event at once (no timer, which could add a
/// millisecond), then an event every `shape.every`, each stamped just before it is written.
/// Event `i` is due at `start + i * every`, so a late timer does not push the rest back.
async fn stream(
    conn: &mut Conn,
    provider: Provider,
    stamps: Stamps,
    shape: StreamShape,
) -> io::Result<()> {
    let start = tokio::time::Instant::now();
    let count = shape.events;
    for index in 0..count {
        if index > 0 {
            sleep_until(start + shape.every * index as u32).await;
        }
        let mut out = Vec::with_capacity(512);
        if index == 0 {
            out.extend_from_slice(STREAM_HEAD);
        }
        let event = event(provider, index, count, now_ns(), stamps);
        out.extend_from_slice(&http::chunk(&event));
        if index + 1 == count {
            out.extend_from_slice(b"0\r\n\r\n");
        }
        conn.write_all(&out).await?;
    }
    Ok(())
}

/// Event `index` of a stream of `count` in `provider`'s format, stamped with `sent_ns`
/// where `stamps` says.
fn event(provider: Provider, index: usize, count: usize, sent_ns: u64, stamps: Stamps) -> Vec<u8> {
    if stamps == Stamps::Text {
        return format!("{}\n\n", anthropic_event(index, count, Some(sent_ns))).into_bytes();
    }
    let body = match provider {
        Provider::OpenAi => openai_event(index, count),
        Provider::Anthropic => anthropic_event(index, count, None),
    };
    let mut event = STAMP.to_vec();
    event.extend_from_slice(format!("{sent_ns}\n{body}\n\n").as_bytes());
    event
}

/// A role chunk, content chunks, a finish chunk, then `[DONE]`.
fn openai_event(index: usize, count: usize) -> String {
    const HEAD: &str = r#"{"id":"chatcmpl-bench","object":"chat.completion.chunk","created":1741569952,"model":"gpt-4o-mini-2024-07-18","system_fingerprint":"fp_06737a9306","choices":[{"index":0,"delta":"#;
    match index {
        0 => format!(
            r#"data: {HEAD}{{"role":"assistant","content":""}},"logprobs":null,"finish_reason":null}}]}}"#
        ),
        i if i == count - 1 => "data: [DONE]".to_owned(),
        i if i == count - 2 => {
            format!(r#"data: {HEAD}{{}},"logprobs":null,"finish_reason":"stop"}}]}}"#)
        }
        i => format!(
            r#"data: {HEAD}{{"content":"token{i} "}},"logprobs":null,"finish_reason":null}}]}}"#
        ),
    }
}

/// `message_start`, `content_block_start`, deltas, `content_block_stop`, `message_delta`,
/// `message_stop`; with `text_stamp`, each delta's text carries it after its token.
fn anthropic_event(index: usize, count: usize, text_stamp: Option<u64>) -> String {
    match index {
        0 => r#"event: message_start
data: {"type":"message_start","message":{"id":"msg_bench","type":"message","role":"assistant","content":[],"model":"claude-3-5-haiku-20241022","stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":25,"output_tokens":1}}}"#.to_owned(),
        1 => r#"event: content_block_start
data: {"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#.to_owned(),
        i if i == count - 3 => r#"event: content_block_stop
data: {"type":"content_block_stop","index":0}"#.to_owned(),
        i if i == count - 2 => r#"event: message_delta
data: {"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},"usage":{"output_tokens":15}}"#.to_owned(),
        i if i == count - 1 => r#"event: message_stop
data: {"type":"message_stop"}"#.to_owned(),
        i => {
            let stamp = match text_stamp {
                Some(sent_ns) => format!("sent_ns={sent_ns} "),
                None => String::new(),
            };
            format!(
                r#"event: content_block_delta
data: {{"type":"content_block_delta","index":0,"delta":{{"type":"text_delta","text":"token{i} {stamp}"}}}}"#
            )
        }
    }
}
