//! A TLS upstream: a mock speaking HTTPS with a self-signed certificate the proxy trusts
//! (`UPSTREAM_CA_FILE`), HTTP/1.1 or HTTP/2 as ALPN picks, counting TCP connections, full and
//! resumed handshakes and requests; llm-proxy run against it with HTTP/2 offered and not.

use std::{
    io,
    net::SocketAddr,
    path::Path,
    sync::{
        atomic::{AtomicU64, Ordering::Relaxed},
        Arc, LazyLock,
    },
};

use serde::Serialize;
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::TcpListener,
};
use tokio_rustls::{
    rustls::{
        pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer},
        HandshakeKind, ServerConfig,
    },
    TlsAcceptor,
};

use crate::{
    http::{self, Conn},
    load::{self, Target, Via},
    mock::Provider,
    proxy::{Proxy, Subject},
    report::{thousands, yes_no},
    stats::{percentiles, Percentiles},
    versus::Row,
};

/// Requests one at a time (after as many unmeasured), and the closed loop's connections.
const ONE_AT_A_TIME: usize = 1_000;
const CONNECTIONS: usize = crate::CONNECTIONS;

/// What the mock counted while one proxy ran against it.
#[derive(Default)]
struct Counts {
    connections: AtomicU64,
    full_handshakes: AtomicU64,
    resumed_handshakes: AtomicU64,
    http1_requests: AtomicU64,
    http2_requests: AtomicU64,
}

/// One proxy's run against the TLS mock.
#[derive(Serialize)]
pub struct Side {
    /// `UPSTREAM_HTTP2` as set, or `None` for the proxy's default.
    pub upstream_http2: Option<bool>,
    /// What ALPN chose: `h2` or `http/1.1`.
    pub protocol: &'static str,
    pub one_at_a_time: Percentiles,
    pub errors: u64,
    pub rps: f64,
    pub cpu_per_request_us: f64,
    /// Seen by the mock over the whole run (warm-up, one at a time, closed loop).
    pub requests: u64,
    pub connections: u64,
    pub full_handshakes: u64,
    pub resumed_handshakes: u64,
    /// The proxy's own `llm_proxy_upstream_connections_opened_total{scheme="https"}`.
    pub proxy_connections_opened: Option<u64>,
}

#[derive(Serialize)]
pub struct TlsUpstream {
    /// The proxy with `UPSTREAM_HTTP2` unset.
    pub default: Side,
    /// The proxy with the other setting.
    pub other: Side,
}

/// Runs the proxy with its default, then with the other setting, each against a fresh mock;
/// or says why it cannot.
pub async fn tls_upstream(binary: &Path, cpu: Option<usize>) -> Result<TlsUpstream, String> {
    let default = side(binary, cpu, None).await?;
    let other = side(binary, cpu, Some(default.protocol != "h2")).await?;
    Ok(TlsUpstream { default, other })
}

async fn side(binary: &Path, cpu: Option<usize>, http2: Option<bool>) -> Result<Side, String> {
    let failed = |e: io::Error| e.to_string();
    let (addr, certificate, counts) = start_mock().map_err(failed)?;
    let dir = crate::output_dir();
    std::fs::create_dir_all(&dir).map_err(failed)?;
    let ca_file = dir.join("tls-upstream-ca.pem");
    std::fs::write(&ca_file, certificate).map_err(failed)?;
    let mut env = vec![
        ("OPENAI_BASE_URL", format!("https://{addr}/openai")),
        ("UPSTREAM_CA_FILE", ca_file.display().to_string()),
        ("DATABASE_URL", crate::proxy::fresh_database("tls.db")),
    ];
    env.extend(http2.map(|on| ("UPSTREAM_HTTP2", on.to_string())));
    let subject = Subject::LlmProxy(binary.to_owned());
    // The plain mock address is unused: every request here is OpenAI's.
    let proxy = Proxy::start_with(&subject, addr, cpu, &env)
        .await
        .map_err(failed)?;
    let target = Target::new(proxy.addr, Provider::OpenAi, Via::Proxy);
    let warm = load::one_at_a_time(&target, ONE_AT_A_TIME)
        .await
        .map_err(failed)?;
    if warm.errors > 0 {
        return Err(format!("{} failed requests through TLS", warm.errors));
    }
    let run = load::one_at_a_time(&target, ONE_AT_A_TIME)
        .await
        .map_err(failed)?;
    let throughput = load::closed_loop(&target, CONNECTIONS, crate::WARM, crate::MEASURE, || {
        proxy.cpu_time().ok()
    })
    .await
    .map_err(failed)?;
    let cpu_us = throughput
        .cpu
        .map_or(0.0, |cpu| cpu.total().as_secs_f64() * 1e6);
    let count = |of: &AtomicU64| of.load(Relaxed);
    let protocol = match count(&counts.http2_requests) > 0 {
        true => "h2",
        false => "http/1.1",
    };
    Ok(Side {
        upstream_http2: http2,
        protocol,
        one_at_a_time: percentiles(&run.latencies),
        errors: run.errors as u64 + throughput.errors,
        rps: throughput.requests as f64 / throughput.elapsed.as_secs_f64(),
        cpu_per_request_us: cpu_us / throughput.requests.max(1) as f64,
        requests: count(&counts.http1_requests) + count(&counts.http2_requests),
        connections: count(&counts.connections),
        full_handshakes: count(&counts.full_handshakes),
        resumed_handshakes: count(&counts.resumed_handshakes),
        proxy_connections_opened: connections_opened(proxy.addr).await,
    })
}

/// The proxy's count of https connections opened, from `/metrics`.
async fn connections_opened(proxy: SocketAddr) -> Option<u64> {
    let mut conn = Conn::open(proxy).await.ok()?;
    let request = format!("GET /metrics HTTP/1.1\r\nhost: {proxy}\r\n\r\n");
    let reply = load::call(&mut conn, request.as_bytes()).await.ok()?;
    let text = String::from_utf8_lossy(&reply.body);
    text.lines()
        .find_map(|line| {
            line.strip_prefix(r#"llm_proxy_upstream_connections_opened_total{scheme="https"} "#)
        })
        .and_then(|value| value.trim().parse().ok())
}

static OPENAI_JSON: &str = include_str!("../../tests/fixtures/openai/completion.json");
static HTTP1_REPLY: LazyLock<Vec<u8>> = LazyLock::new(|| {
    format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{OPENAI_JSON}",
        OPENAI_JSON.len()
    )
    .into_bytes()
});

/// Starts the mock on this runtime: its address, its certificate in PEM, its counts. It
/// offers `h2` and `http/1.1`; the proxy's offer decides.
fn start_mock() -> io::Result<(SocketAddr, String, Arc<Counts>)> {
    let certified =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".into()]).map_err(io::Error::other)?;
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
        certified.signing_key.serialize_der(),
    ));
    let mut config = ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(vec![certified.cert.der().clone()], key)
        .map_err(io::Error::other)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    let listener = TcpListener::from_std(listener)?;
    let counts = Arc::new(Counts::default());
    let seen = counts.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let _ = stream.set_nodelay(true);
            seen.connections.fetch_add(1, Relaxed);
            tokio::spawn(serve(acceptor.clone(), stream, seen.clone()));
        }
    });
    Ok((addr, certified.cert.pem(), counts))
}

async fn serve(acceptor: TlsAcceptor, stream: tokio::net::TcpStream, counts: Arc<Counts>) {
    let Ok(tls) = acceptor.accept(stream).await else {
        return;
    };
    let connection = tls.get_ref().1;
    match connection.handshake_kind() {
        Some(HandshakeKind::Resumed) => counts.resumed_handshakes.fetch_add(1, Relaxed),
        _ => counts.full_handshakes.fetch_add(1, Relaxed),
    };
    if connection.alpn_protocol() == Some(b"h2") {
        serve_http2(tls, counts).await;
    } else {
        serve_http1(tls, counts).await;
    }
}

/// Keep-alive HTTP/1.1 with `Content-Length` bodies, which is what the proxy sends.
async fn serve_http1(mut tls: impl AsyncRead + AsyncWrite + Unpin, counts: Arc<Counts>) {
    let mut buffer = Vec::with_capacity(16 * 1024);
    let mut chunk = vec![0; 16 * 1024];
    loop {
        let head_end = loop {
            if let Some(at) = http::find(&buffer, b"\r\n\r\n") {
                break at + 4;
            }
            match tls.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buffer.extend_from_slice(&chunk[..n]),
            }
        };
        let length = content_length(&buffer[..head_end]);
        while buffer.len() < head_end + length {
            match tls.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buffer.extend_from_slice(&chunk[..n]),
            }
        }
        buffer.drain(..head_end + length);
        counts.http1_requests.fetch_add(1, Relaxed);
        if tls.write_all(&HTTP1_REPLY).await.is_err() || tls.flush().await.is_err() {
            return;
        }
    }
}

fn content_length(head: &[u8]) -> usize {
    String::from_utf8_lossy(head)
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().ok())?
        })
        .unwrap_or(0)
}

async fn serve_http2(
    tls: impl AsyncRead + AsyncWrite + Unpin + Send + 'static,
    counts: Arc<Counts>,
) {
    let Ok(mut connection) = h2::server::handshake(tls).await else {
        return;
    };
    while let Some(Ok((request, mut respond))) = connection.accept().await {
        counts.http2_requests.fetch_add(1, Relaxed);
        // `accept` drives the connection; each request answers on a task of its own.
        tokio::spawn(async move {
            let mut body = request.into_body();
            while let Some(Ok(data)) = body.data().await {
                let _ = body.flow_control().release_capacity(data.len());
            }
            let Ok(response) = ::http::Response::builder()
                .status(200)
                .header("content-type", "application/json")
                .header("content-length", OPENAI_JSON.len())
                .body(())
            else {
                return;
            };
            if let Ok(mut send) = respond.send_response(response, false) {
                let _ = send.send_data(bytes_of(OPENAI_JSON), true);
            }
        });
    }
}

fn bytes_of(text: &'static str) -> actix_web::web::Bytes {
    actix_web::web::Bytes::from_static(text.as_bytes())
}

/// Issue 14's two TLS rows: a handshake per new connection only, and HTTP/2 against HTTP/1.1
/// with the faster one the default. nginx does not take this scenario.
pub fn versus_rows(tls: Option<&Result<TlsUpstream, String>>) -> Vec<Row> {
    let handshakes =
        "TLS upstream: handshakes per new connection (connections and sessions reused)";
    let versions = "HTTP/2 to an upstream that offers it, against HTTP/1.1";
    let tls = match tls {
        Some(Ok(tls)) => tls,
        other => {
            let why = match other {
                Some(Err(why)) => format!("not measured: {why}"),
                _ => "not measured: no TLS run".to_owned(),
            };
            return [handshakes, versions]
                .map(|measure| Row {
                    measure: measure.to_owned(),
                    llm_proxy: String::new(),
                    nginx: "—".into(),
                    versus: String::new(),
                    target: String::new(),
                    met: why.clone(),
                    verdicts: Vec::new(),
                })
                .into();
        }
    };
    let mut rows = Vec::new();
    for side in [&tls.default, &tls.other] {
        let handshaken = side.full_handshakes + side.resumed_handshakes;
        let met = handshaken == side.connections
            && side.connections <= CONNECTIONS as u64
            && side.proxy_connections_opened == Some(side.connections);
        rows.push(Row {
            measure: format!("{handshakes}, {}", side.protocol),
            llm_proxy: format!(
                "{} requests, {} connections, {} handshakes ({} full, {} resumed), proxy counter {}",
                thousands(side.requests as f64),
                side.connections,
                handshaken,
                side.full_handshakes,
                side.resumed_handshakes,
                side.proxy_connections_opened
                    .map_or("—".to_owned(), |n| n.to_string())
            ),
            nginx: "—".into(),
            versus: String::new(),
            target: format!("handshakes = connections ≤ {CONNECTIONS} = the counter"),
            met: yes_no(met).into(),
            verdicts: vec![met],
        });
    }
    let (h2, h1) = match tls.default.protocol {
        "h2" => (&tls.default, &tls.other),
        _ => (&tls.other, &tls.default),
    };
    let describe = |side: &Side| {
        format!(
            "{}: {:.1} µs CPU/request, {} req/s, p50 {:.3} ms",
            side.protocol,
            side.cpu_per_request_us,
            thousands(side.rps),
            side.one_at_a_time.p50_ms
        )
    };
    // Faster: less CPU per request on the one core the proxy has, which is what bounds its
    // req/s; the one-at-a-time p50 is shown beside.
    let faster = if h2.cpu_per_request_us < h1.cpu_per_request_us {
        h2
    } else {
        h1
    };
    let met = faster.protocol == tls.default.protocol;
    rows.push(Row {
        measure: versions.to_owned(),
        llm_proxy: format!("{}; {}", describe(h2), describe(h1)),
        nginx: "—".into(),
        versus: format!(
            "h2 / http/1.1 CPU: {:.2}×",
            h2.cpu_per_request_us / h1.cpu_per_request_us.max(f64::MIN_POSITIVE)
        ),
        target: format!(
            "the faster is the default (default: {})",
            tls.default.protocol
        ),
        met: yes_no(met).into(),
        verdicts: vec![met],
    });
    rows
}

/// The same rows for llm-proxy's own table: measure, figure, and the verdict.
pub fn table_rows(tls: Option<&Result<TlsUpstream, String>>) -> Vec<[String; 6]> {
    versus_rows(tls)
        .into_iter()
        .map(|row| {
            [
                row.measure,
                row.llm_proxy,
                String::new(),
                row.versus,
                row.target,
                row.met,
            ]
        })
        .collect()
}
