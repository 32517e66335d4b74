//! Test harness: a recording mock upstream, the proxy on port 0, and a client.

use std::{
    net::{SocketAddr, TcpListener},
    pin::Pin,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
    task::{Context, Poll},
    time::Duration,
};

use actix_web::{
    http::{header::HeaderMap, StatusCode},
    web::{self, Bytes},
    App, HttpRequest, HttpResponse, HttpServer,
};
use futures_util::Stream;
use llm_proxy::Config;
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};

/// One request as the mock upstream received it.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub path: String,
    /// The proxy's side of the connection: equal for requests on one pooled connection.
    pub peer: Option<SocketAddr>,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Recorded {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("the upstream body is JSON")
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }
}

/// What the mock answers.
pub enum Reply {
    /// A complete response.
    Full {
        status: u16,
        content_type: &'static str,
        headers: Vec<(&'static str, &'static str)>,
        body: Bytes,
    },
    /// A 200 `text/event-stream` whose chunks the test feeds (see [`feed`]).
    Stream(FeedBody),
    /// Never answers.
    Hang,
    /// The reply, after a wait: an upstream of some latency.
    After(Duration, Box<Reply>),
    /// A 200 stream of `count` copies of `chunk`, each made only when the server asks for
    /// it; `produced` counts the bytes made so far.
    Lazy {
        chunk: Bytes,
        count: usize,
        produced: Arc<AtomicUsize>,
    },
}

impl Reply {
    pub fn json(status: u16, body: impl Into<Bytes>) -> Self {
        Reply::Full {
            status,
            content_type: "application/json",
            headers: vec![],
            body: body.into(),
        }
    }

    /// A complete event stream, sent as the given chunks.
    pub fn sse(chunks: Vec<Bytes>) -> Self {
        let (feed, body) = feed();
        for chunk in chunks {
            feed.send(chunk);
        }
        feed.finish();
        Reply::Stream(body)
    }
}

/// A mock upstream on a loopback port. It records every request and answers with `reply`.
pub struct Mock {
    addr: SocketAddr,
    requests: Arc<Mutex<Vec<Recorded>>>,
}

impl Mock {
    pub fn start(reply: impl Fn(&Recorded) -> Reply + Send + Sync + 'static) -> Self {
        let requests = Arc::new(Mutex::new(Vec::new()));
        let recorded = requests.clone();
        let reply = Arc::new(reply);
        let app = move || {
            let recorded = recorded.clone();
            let reply = reply.clone();
            App::new()
                .app_data(web::PayloadConfig::new(64 << 20))
                .default_service(web::to(move |req: HttpRequest, body: Bytes| {
                    let request = Recorded {
                        path: req.uri().to_string(),
                        peer: req.peer_addr(),
                        headers: req.headers().clone(),
                        body,
                    };
                    recorded.lock().unwrap().push(request.clone());
                    let reply = reply(&request);
                    async move { respond(reply).await }
                }))
        };
        // Its own thread and runtime, like a real upstream. It notices at once when the proxy
        // closes a connection (no half-closed connections), which the tests rely on.
        let (started, addr) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            actix_web::rt::System::new().block_on(async move {
                let listener = TcpListener::bind("127.0.0.1:0").unwrap();
                started.send(listener.local_addr().unwrap()).unwrap();
                HttpServer::new(app)
                    .workers(1)
                    .h1_allow_half_closed(false)
                    .disable_signals()
                    .listen(listener)
                    .unwrap()
                    .run()
                    .await
            })
        });
        let addr = addr.recv().unwrap();
        Mock { addr, requests }
    }

    /// A mock that always answers with a copy of the same complete response.
    pub fn always(status: u16, content_type: &'static str, body: impl Into<Bytes>) -> Self {
        let body = body.into();
        Mock::start(move |_| Reply::Full {
            status,
            content_type,
            headers: vec![],
            body: body.clone(),
        })
    }

    /// A mock whose first request gets `body` as its stream.
    pub fn streaming(body: FeedBody) -> Self {
        let body = Mutex::new(Some(body));
        Mock::start(move |_| match body.lock().unwrap().take() {
            Some(body) => Reply::Stream(body),
            None => Reply::json(500, r#"{"error":"only one stream per mock"}"#),
        })
    }

    /// The base URL the proxy is pointed at, like `http://127.0.0.1:1234/v1`.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.requests.lock().unwrap().clone()
    }

    /// The one request the mock received; fails if it got any other number.
    pub fn only_request(&self) -> Recorded {
        let requests = self.requests();
        assert_eq!(requests.len(), 1, "upstream calls: {requests:?}");
        requests.into_iter().next().unwrap()
    }
}

async fn respond(reply: Reply) -> HttpResponse {
    match reply {
        Reply::Full {
            status,
            content_type,
            headers,
            body,
        } => {
            let mut response = HttpResponse::build(StatusCode::from_u16(status).unwrap());
            for header in headers {
                response.insert_header(header);
            }
            response.content_type(content_type).body(body)
        }
        Reply::Stream(body) => HttpResponse::Ok()
            .content_type("text/event-stream")
            .streaming(body),
        Reply::Hang => std::future::pending().await,
        Reply::After(wait, reply) => {
            actix_web::rt::time::sleep(wait).await;
            Box::pin(respond(*reply)).await
        }
        Reply::Lazy {
            chunk,
            count,
            produced,
        } => HttpResponse::Ok()
            .content_type("text/event-stream")
            .streaming(futures_util::stream::iter((0..count).map(move |_| {
                produced.fetch_add(chunk.len(), Ordering::Relaxed);
                Ok::<_, std::io::Error>(chunk.clone())
            }))),
    }
}

/// The test's end of a mock stream: send chunks when the test decides, fail it, finish it,
/// and learn when the mock's side was dropped (the proxy closed the connection).
pub struct Feed {
    chunks: mpsc::UnboundedSender<Result<Bytes, std::io::Error>>,
    dropped: Option<oneshot::Receiver<()>>,
}

/// The mock's end: the response body.
pub struct FeedBody {
    chunks: mpsc::UnboundedReceiver<Result<Bytes, std::io::Error>>,
    _dropped: oneshot::Sender<()>,
}

pub fn feed() -> (Feed, FeedBody) {
    let (chunks, receiver) = mpsc::unbounded_channel();
    let (dropped_tx, dropped_rx) = oneshot::channel();
    (
        Feed {
            chunks,
            dropped: Some(dropped_rx),
        },
        FeedBody {
            chunks: receiver,
            _dropped: dropped_tx,
        },
    )
}

impl Feed {
    pub fn send(&self, chunk: impl Into<Bytes>) {
        // The body may already be gone (the proxy hung up); tests assert on that separately.
        let _ = self.chunks.send(Ok(chunk.into()));
    }

    /// Breaks the connection mid-body: the mock's server drops it without a clean end.
    pub fn fail(&self) {
        let _ = self
            .chunks
            .send(Err(std::io::Error::other("mock upstream failure")));
    }

    /// Ends the body cleanly.
    pub fn finish(self) {}

    /// Resolves when the mock's response body has been dropped, within `limit`.
    pub async fn dropped_within(&mut self, limit: Duration) -> bool {
        let dropped = self.dropped.take().expect("dropped_within is called once");
        tokio::time::timeout(limit, dropped).await.is_ok()
    }
}

impl Stream for FeedBody {
    type Item = Result<Bytes, std::io::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.chunks.poll_recv(cx)
    }
}

/// The proxy, running on a loopback port in this test's runtime.
#[derive(Clone)]
pub struct Proxy {
    pub addr: SocketAddr,
}

impl Proxy {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }
}

/// Settings that point every provider at `mock`, with short timeouts and
/// [`test_workers`] workers.
pub fn config_for(mock: &Mock) -> Config {
    config_with_base(&mock.base_url())
}

pub fn config_with_base(base: &str) -> Config {
    Config {
        workers: test_workers(),
        openai_base_url: base.to_owned(),
        anthropic_base_url: base.to_owned(),
        gemini_base_url: base.to_owned(),
        ollama_base_url: base.to_owned(),
        http_timeout: Duration::from_secs(10),
        // Retries are tested on purpose in `reliability`; elsewhere one call is one call.
        max_retries: 0,
        retry_base: Duration::from_millis(10),
        ..Config::default()
    }
}

/// The proxy's workers in tests: `LLM_PROXY_TEST_WORKERS`, else 1. CI also runs the suite with
/// 2, as production runs; a test whose meaning needs one worker (a per-worker pool, say) sets
/// `workers: 1` itself and says why.
pub fn test_workers() -> usize {
    match std::env::var("LLM_PROXY_TEST_WORKERS") {
        Ok(value) => value
            .parse()
            .unwrap_or_else(|_| panic!("LLM_PROXY_TEST_WORKERS={value:?} is not a number")),
        Err(_) => 1,
    }
}

/// Settings for `mock` with a providers file's text applied.
pub fn config_with_catalog(mock: &Mock, catalog: &str) -> Config {
    Config {
        catalog: llm_proxy::config::providers_file::Catalog::parse(catalog)
            .expect("a valid providers file"),
        ..config_for(mock)
    }
}

pub fn start_proxy(config: Config) -> Proxy {
    config.validate().expect("a valid test configuration");
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server = llm_proxy::http::server::build(config, None, listener).unwrap();
    actix_web::rt::spawn(server);
    Proxy { addr }
}

/// A client with a timeout long enough for any test, so a bug fails a test rather than
/// hanging it.
pub fn client() -> awc::Client {
    awc::Client::builder()
        .timeout(Duration::from_secs(30))
        .finish()
}

/// A reply the proxy gave, with its body read whole.
pub struct Answer {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Answer {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }
}

/// A response's whole body, within 30 s: awc's request timeout bounds only the wait for the
/// head, so a bug that never ends a body fails the test instead of hanging it.
async fn read_whole<S>(response: &mut awc::ClientResponse<S>) -> Bytes
where
    S: Stream<Item = Result<Bytes, awc::error::PayloadError>> + Unpin,
{
    let body = response.body().limit(64 << 20);
    tokio::time::timeout(Duration::from_secs(30), body)
        .await
        .expect("the whole body within 30 s")
        .expect("a whole body")
}

/// POSTs `body` to `path` with the given key, and reads the whole answer.
pub async fn post(proxy: &Proxy, path: &str, key: Option<&str>, body: impl Into<Bytes>) -> Answer {
    let mut request = client().post(proxy.url(path));
    if let Some(key) = key {
        request = request.insert_header(("X-API-Key", key));
    }
    let mut response = request
        .insert_header(("Content-Type", "application/json"))
        .send_body(body.into())
        .await
        .expect("the proxy answers");
    let body = read_whole(&mut response).await;
    Answer {
        status: response.status().as_u16(),
        headers: response.headers().clone(),
        body,
    }
}

/// POSTs `body` to `path` with exactly the given headers (no key unless one is among them),
/// and reads the whole answer.
pub async fn post_with(
    proxy: &Proxy,
    path: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Answer {
    let mut request = client().post(proxy.url(path));
    for &header in headers {
        request = request.insert_header(header);
    }
    let mut response = request
        .send_body(body.into())
        .await
        .expect("the proxy answers");
    let body = read_whole(&mut response).await;
    Answer {
        status: response.status().as_u16(),
        headers: response.headers().clone(),
        body,
    }
}

/// POSTs an OpenAI request to the front door with the key as a bearer token, as the SDKs do.
pub async fn complete(proxy: &Proxy, body: Value) -> Answer {
    let mut response = client()
        .post(proxy.url("/v1/chat/completions"))
        .insert_header(("Authorization", format!("Bearer {TEST_KEY}")))
        .send_body(body.to_string())
        .await
        .expect("the proxy answers");
    let body = read_whole(&mut response).await;
    Answer {
        status: response.status().as_u16(),
        headers: response.headers().clone(),
        body,
    }
}

/// The `data:` payloads of an SSE body, parsed as JSON (`[DONE]` as a JSON string).
pub fn sse_data(body: &[u8]) -> Vec<Value> {
    std::str::from_utf8(body)
        .expect("UTF-8 events")
        .split("\n\n")
        .filter_map(|event| event.strip_prefix("data: "))
        .map(|data| serde_json::from_str(data).unwrap_or_else(|_| Value::String(data.into())))
        .collect()
}

/// POSTs a JSON chat body to `/v1/chat/{provider}` with the key `sk-test-key`.
pub async fn chat(proxy: &Proxy, provider: &str, body: Value) -> Answer {
    post(
        proxy,
        &format!("/v1/chat/{provider}"),
        Some(TEST_KEY),
        body.to_string(),
    )
    .await
}

/// `GET /metrics`, checked for the OpenMetrics content type and its `# EOF`.
pub async fn metrics_text(proxy: &Proxy) -> String {
    let mut response = client().get(proxy.url("/metrics")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers().get("content-type").unwrap(),
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
    let text = String::from_utf8(response.body().await.unwrap().to_vec()).unwrap();
    assert!(text.ends_with("# EOF\n"), "{text}");
    text
}

pub fn has_line(text: &str, line: &str) -> bool {
    text.lines().any(|l| l == line)
}

/// The metrics once `line` is in them: a request is counted when its body is done, which may
/// be a moment after the client has read the last byte.
pub async fn metrics_with(proxy: &Proxy, line: &str) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let text = metrics_text(proxy).await;
        if has_line(&text, line) || std::time::Instant::now() > deadline {
            return text;
        }
        actix_web::rt::task::yield_now().await;
    }
}

pub const TEST_KEY: &str = "sk-test-key-0123456789";

/// A fixture file's bytes, from `tests/fixtures`.
pub fn fixture(path: &str) -> Bytes {
    let full = format!("{}/tests/fixtures/{path}", env!("CARGO_MANIFEST_DIR"));
    Bytes::from(std::fs::read(&full).unwrap_or_else(|e| panic!("{full}: {e}")))
}

/// Splits bytes into chunks at the given offsets: for sending one stream in awkward pieces.
pub fn split_at(bytes: &Bytes, offsets: &[usize]) -> Vec<Bytes> {
    let mut chunks = Vec::new();
    let mut start = 0;
    for &offset in offsets.iter().chain(std::iter::once(&bytes.len())) {
        chunks.push(bytes.slice(start..offset));
        start = offset;
    }
    chunks
}

/// An upstream that speaks raw bytes: for each connection it reads one request, writes
/// `response` as given, and closes. For framing the mock server would never produce.
pub fn raw_upstream(response: &'static [u8]) -> String {
    raw_upstream_in_parts(vec![response.to_vec()], Duration::ZERO)
}

/// Like [`raw_upstream`], with the response written in `parts`, one TCP write each and `pause`
/// between them, before the connection closes: a body arriving in pieces, even a split head.
pub fn raw_upstream_in_parts(parts: Vec<Vec<u8>>, pause: Duration) -> String {
    use std::io::Write;

    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            // Each part its own segment, rather than coalesced while the next pause runs.
            let _ = stream.set_nodelay(true);
            read_request(&stream);
            for (i, part) in parts.iter().enumerate() {
                if i > 0 {
                    std::thread::sleep(pause);
                }
                let _ = stream.write_all(part);
            }
        }
    });
    format!("http://{addr}/v1")
}

/// An upstream that speaks raw bytes and then falls silent: for each connection it reads one
/// request, writes `response`, and holds the connection open, sending nothing more, until the
/// proxy closes it. For a body that stalls after its head. Also returns how many requests it
/// has read.
pub fn stalling_upstream(response: &'static [u8]) -> (String, Arc<AtomicUsize>) {
    use std::io::{Read, Write};

    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let requests = Arc::new(AtomicUsize::new(0));
    let counted = requests.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let counted = counted.clone();
            // A thread per connection: one held open must not keep the next from being heard.
            std::thread::spawn(move || {
                let mut reader = read_request(&stream);
                counted.fetch_add(1, Ordering::SeqCst);
                let _ = stream.write_all(response);
                // Returns when the proxy hangs up (or, which it must not, sends more).
                let _ = reader.read(&mut [0; 1]);
            });
        }
    });
    (format!("http://{addr}/v1"), requests)
}

/// Reads one request, head and `Content-Length` body, from a raw connection. Returns the
/// reader, which may hold bytes read past the request.
fn read_request(stream: &std::net::TcpStream) -> std::io::BufReader<std::net::TcpStream> {
    use std::io::{BufRead, BufReader, Read};

    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut length = 0;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse().unwrap();
            }
        }
    }
    let mut body = vec![0; length];
    let _ = reader.read_exact(&mut body);
    reader
}

/// A loopback address where nothing listens: connecting is refused.
pub fn refused_base_url() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    format!("http://{addr}/v1")
}

/// A one-message chat body for `model`.
pub fn hi(model: &str) -> Value {
    serde_json::json!({"model": model, "messages": [{"role": "user", "content": "hi"}]})
}

/// The same, streamed.
pub fn streamed(model: &str) -> Value {
    serde_json::json!({"model": model, "stream": true, "messages": [{"role": "user", "content": "hi"}]})
}

/// Reads a streamed answer to its end, failing if it does not end cleanly.
pub async fn read_to_end(response: &mut awc::ClientResponse) -> Vec<u8> {
    use futures_util::StreamExt;
    let mut all = Vec::new();
    while let Some(chunk) = response.next().await {
        all.extend_from_slice(&chunk.expect("the proxy's stream ends cleanly"));
    }
    all
}

/// A proxy with a store: keys it issues, limits, usage records, on a fresh SQLite file that
/// is removed when the returned value drops.
pub struct Accounted {
    pub proxy: Proxy,
    pub accounts: llm_proxy::http::server::Accounts,
    /// For tests that open the same store from outside, as the `keys` command does.
    #[allow(dead_code)]
    pub database_url: String,
    _dir: TempDirGuard,
}

pub struct TempDirGuard(pub std::path::PathBuf);

impl Drop for TempDirGuard {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A fresh directory under the system's temp dir, removed on drop.
pub fn temp_dir(what: &str) -> TempDirGuard {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "llm-proxy-test-{what}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    TempDirGuard(dir)
}

/// `config` with a store of its own (its `database_url` is set to a new SQLite file).
pub async fn start_accounted(config: Config) -> Accounted {
    let dir = temp_dir("store");
    let database_url = format!("sqlite://{}", dir.0.join("llm-proxy.db").display());
    let config = Config {
        database_url: Some(database_url.clone()),
        ..config
    };
    let (proxy, accounts) = start_on_store(config).await;
    Accounted {
        proxy,
        accounts,
        database_url,
        _dir: dir,
    }
}

/// `config` on the store its `database_url` names, which other proxies may share; with Redis
/// when its `redis_url` is set.
pub async fn start_on_store(config: Config) -> (Proxy, llm_proxy::http::server::Accounts) {
    config.validate().expect("a valid test configuration");
    let database_url = config.database_url.clone().expect("a database_url");
    let redis = llm_proxy::cluster::Redis::from_config(&config).expect("a valid REDIS_URL");
    let accounts = llm_proxy::http::server::Accounts::open(&database_url, redis)
        .await
        .expect("a store");
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server = llm_proxy::http::server::build(config, Some(&accounts), listener).unwrap();
    actix_web::rt::spawn(server);
    (Proxy { addr }, accounts)
}
