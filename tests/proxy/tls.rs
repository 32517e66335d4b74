//! TLS upstreams: a mock with a self-signed certificate the proxy is told to trust
//! (`UPSTREAM_CA_FILE`), its connections, handshakes and HTTP versions counted.

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicUsize, Ordering::Relaxed},
        Arc,
    },
};

use actix_web::web::Bytes;
use llm_proxy::{config::ca_file, Config};
use serde_json::json;
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

use crate::common::*;

/// What the TLS mock saw, counted as it happened.
#[derive(Debug, Default)]
struct Seen {
    connections: AtomicUsize,
    full_handshakes: AtomicUsize,
    resumed_handshakes: AtomicUsize,
    http1_requests: AtomicUsize,
    http2_requests: AtomicUsize,
}

/// An OpenAI-compatible upstream over TLS on 127.0.0.1, with a certificate made for this test
/// (for `127.0.0.1` and `localhost`), speaking HTTP/1.1, and HTTP/2 too when `http2` (chosen
/// by ALPN). Every request gets the captured completion.
struct TlsMock {
    addr: SocketAddr,
    /// The certificate, as `UPSTREAM_CA_FILE` would hold it.
    certificate_pem: String,
    seen: Arc<Seen>,
}

impl TlsMock {
    fn start(http2: bool) -> TlsMock {
        let certified =
            rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()])
                .unwrap();
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
            certified.signing_key.serialize_der(),
        ));
        let mut config = ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(vec![certified.cert.der().clone()], key)
            .unwrap();
        config.alpn_protocols = match http2 {
            true => vec![b"h2".to_vec(), b"http/1.1".to_vec()],
            false => vec![b"http/1.1".to_vec()],
        };
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let seen = Arc::new(Seen::default());
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let counts = seen.clone();
        // Its own thread and runtime, like a real upstream.
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let listener = TcpListener::from_std(listener).unwrap();
                while let Ok((stream, _)) = listener.accept().await {
                    counts.connections.fetch_add(1, Relaxed);
                    tokio::spawn(serve(acceptor.clone(), stream, counts.clone()));
                }
            });
        });
        TlsMock {
            addr,
            certificate_pem: certified.cert.pem(),
            seen,
        }
    }

    fn base_url(&self) -> String {
        format!("https://127.0.0.1:{}/v1", self.addr.port())
    }

    /// Settings pointing every provider here, trusting this mock's certificate as
    /// `UPSTREAM_CA_FILE` would; one worker, so that sequential requests share one pool.
    fn config(&self, http2: bool) -> Config {
        Config {
            workers: 1,
            upstream_roots: ca_file::parse(self.certificate_pem.as_bytes()).unwrap(),
            upstream_http2: http2,
            ..config_with_base(&self.base_url())
        }
    }

    fn count(&self, of: fn(&Seen) -> &AtomicUsize) -> usize {
        of(&self.seen).load(Relaxed)
    }
}

async fn serve(acceptor: TlsAcceptor, stream: tokio::net::TcpStream, seen: Arc<Seen>) {
    let Ok(tls) = acceptor.accept(stream).await else {
        return; // the proxy refused the certificate
    };
    let connection = tls.get_ref().1;
    match connection.handshake_kind() {
        Some(HandshakeKind::Resumed) => seen.resumed_handshakes.fetch_add(1, Relaxed),
        _ => seen.full_handshakes.fetch_add(1, Relaxed),
    };
    if connection.alpn_protocol() == Some(b"h2") {
        serve_http2(tls, seen).await;
    } else {
        serve_http1(tls, seen).await;
    }
}

fn completion() -> Bytes {
    fixture("openai/completion.json")
}

/// Keep-alive HTTP/1.1 with `Content-Length` bodies: enough for the proxy's requests.
async fn serve_http1(mut tls: impl AsyncRead + AsyncWrite + Unpin, seen: Arc<Seen>) {
    let mut buffer = Vec::new();
    loop {
        let head_end = loop {
            if let Some(at) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
            let mut chunk = [0; 4096];
            match tls.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buffer.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buffer[..head_end]).to_ascii_lowercase();
        let length: usize = head
            .lines()
            .find_map(|line| line.strip_prefix("content-length:"))
            .and_then(|value| value.trim().parse().ok())
            .unwrap_or(0);
        while buffer.len() < head_end + length {
            let mut chunk = [0; 4096];
            match tls.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buffer.extend_from_slice(&chunk[..n]),
            }
        }
        buffer.drain(..head_end + length);
        seen.http1_requests.fetch_add(1, Relaxed);
        let body = completion();
        let mut response = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        response.extend_from_slice(&body);
        if tls.write_all(&response).await.is_err() {
            return;
        }
    }
}

async fn serve_http2(tls: impl AsyncRead + AsyncWrite + Unpin, seen: Arc<Seen>) {
    let Ok(mut connection) = h2::server::handshake(tls).await else {
        return;
    };
    while let Some(Ok((request, mut respond))) = connection.accept().await {
        seen.http2_requests.fetch_add(1, Relaxed);
        // The connection is driven by `accept`; each request answers on a task of its own.
        tokio::spawn(async move {
            let mut body = request.into_body();
            while let Some(Ok(chunk)) = body.data().await {
                let _ = body.flow_control().release_capacity(chunk.len());
            }
            let completion = completion();
            let response = http::Response::builder()
                .status(200)
                .header("content-type", "application/json")
                .header("content-length", completion.len())
                .body(())
                .unwrap();
            if let Ok(mut send) = respond.send_response(response, false) {
                let _ = send.send_data(completion, true);
            }
        });
    }
}

fn hello() -> serde_json::Value {
    json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hello"}]})
}

#[actix_web::test]
async fn a_chat_reaches_an_https_upstream_trusted_through_the_ca_file() {
    let mock = TlsMock::start(false);
    let proxy = start_proxy(mock.config(false));
    let answer = chat(&proxy, "openai", hello()).await;
    assert_eq!(
        answer.status,
        200,
        "{}",
        String::from_utf8_lossy(&answer.body)
    );
    assert_eq!(answer.json()["provider"], "openai");
    assert_eq!(mock.count(|s| &s.http1_requests), 1);
}

#[actix_web::test]
async fn an_upstream_certificate_nobody_trusts_is_a_502() {
    let mock = TlsMock::start(false);
    let proxy = start_proxy(Config {
        upstream_roots: Vec::new(),
        ..mock.config(false)
    });
    let answer = chat(&proxy, "openai", hello()).await;
    assert_eq!(
        answer.status,
        502,
        "{}",
        String::from_utf8_lossy(&answer.body)
    );
    assert_eq!(mock.count(|s| &s.full_handshakes), 0);
    assert_eq!(mock.count(|s| &s.http1_requests), 0);
}

#[actix_web::test]
async fn sequential_requests_share_one_connection_and_one_handshake() {
    let mock = TlsMock::start(false);
    let proxy = start_proxy(mock.config(false));
    for _ in 0..5 {
        assert_eq!(chat(&proxy, "openai", hello()).await.status, 200);
    }
    assert_eq!(mock.count(|s| &s.http1_requests), 5);
    assert_eq!(mock.count(|s| &s.connections), 1);
    assert_eq!(mock.count(|s| &s.full_handshakes), 1);
    let line = r#"llm_proxy_upstream_connections_opened_total{scheme="https"} 1"#;
    let text = metrics_with(&proxy, line).await;
    assert!(has_line(&text, line), "{text}");
    assert!(has_line(
        &text,
        r#"llm_proxy_upstream_connections_opened_total{scheme="http"} 0"#
    ));
}

/// With keep-alive off every request opens a connection; the session the first one saved is
/// resumed by the next ones, so only the first handshake is a full one.
#[actix_web::test]
async fn a_new_connection_resumes_the_tls_session_of_an_earlier_one() {
    let mock = TlsMock::start(false);
    let proxy = start_proxy(Config {
        http_max_keepalive_connections: 0,
        ..mock.config(false)
    });
    for _ in 0..3 {
        assert_eq!(chat(&proxy, "openai", hello()).await.status, 200);
    }
    assert_eq!(mock.count(|s| &s.connections), 3);
    assert_eq!(mock.count(|s| &s.full_handshakes), 1);
    assert_eq!(mock.count(|s| &s.resumed_handshakes), 2);
    let line = r#"llm_proxy_upstream_connections_opened_total{scheme="https"} 3"#;
    assert!(has_line(&metrics_with(&proxy, line).await, line));
}

#[actix_web::test]
async fn http2_is_used_when_offered_and_the_upstream_picks_it() {
    let mock = TlsMock::start(true);
    let proxy = start_proxy(mock.config(true));
    for _ in 0..3 {
        let answer = chat(&proxy, "openai", hello()).await;
        assert_eq!(
            answer.status,
            200,
            "{}",
            String::from_utf8_lossy(&answer.body)
        );
    }
    assert_eq!(mock.count(|s| &s.http2_requests), 3);
    assert_eq!(mock.count(|s| &s.http1_requests), 0);
    assert_eq!(mock.count(|s| &s.connections), 1);
}

#[actix_web::test]
async fn only_http1_is_offered_when_http2_is_off_even_to_an_upstream_that_speaks_it() {
    let mock = TlsMock::start(true);
    let proxy = start_proxy(mock.config(false));
    assert_eq!(chat(&proxy, "openai", hello()).await.status, 200);
    assert_eq!(mock.count(|s| &s.http1_requests), 1);
    assert_eq!(mock.count(|s| &s.http2_requests), 0);
}
