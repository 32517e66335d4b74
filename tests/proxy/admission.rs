//! Admission: the fan-out cap, slow request bodies, keys sent only where needed, the defaults.

use std::{
    collections::HashSet,
    io::{ErrorKind, Read, Write},
    net::{SocketAddr, TcpStream},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use actix_web::web::Bytes;
use futures_util::{future::join_all, StreamExt};
use llm_proxy::Config;
use serde_json::{json, Value};
use tokio::sync::oneshot;

use crate::common::*;

/// A request's body with `fallbacks` added, for the front door.
fn with_fallbacks(model: &str, fallbacks: &[String]) -> Value {
    let mut body = hi(model);
    body["fallbacks"] = json!(fallbacks);
    body
}

/// `count` fallbacks to OpenAI, each naming its own model so the calls can be told apart.
fn fallbacks(count: usize) -> Vec<String> {
    (1..=count)
        .map(|i| format!("openai/fallback-{i}"))
        .collect()
}

/// An upstream that is always busy: every call is a retryable failure, so each target is
/// called exactly once when retries are off.
fn busy_upstream() -> Mock {
    Mock::always(503, "application/json", r#"{"error":{"message":"busy"}}"#)
}

/// Sends `request` with `body` and reads the whole answer.
async fn answer(request: awc::ClientRequest, body: impl Into<Bytes>) -> Answer {
    let mut response = request
        .insert_header(("Content-Type", "application/json"))
        .send_body(body.into())
        .await
        .expect("the proxy answers");
    let body = response.body().limit(64 << 20).await.expect("a whole body");
    Answer {
        status: response.status().as_u16(),
        headers: response.headers().clone(),
        body,
    }
}

/// The path route with `X-Fallbacks`.
async fn path_route_with(proxy: &Proxy, fallbacks: &[String]) -> Answer {
    let request = client()
        .post(proxy.url("/v1/chat/openai"))
        .insert_header(("X-API-Key", TEST_KEY))
        .insert_header(("X-Fallbacks", fallbacks.join(",")));
    answer(request, hi("m").to_string()).await
}

/// The front door with `X-Fallbacks` (left out when empty) and `body`.
async fn front_door_with(proxy: &Proxy, header: &[String], body: Value) -> Answer {
    let mut request = client()
        .post(proxy.url("/v1/chat/completions"))
        .insert_header(("Authorization", format!("Bearer {TEST_KEY}")));
    if !header.is_empty() {
        request = request.insert_header(("X-Fallbacks", header.join(",")));
    }
    answer(request, body.to_string()).await
}

fn assert_states_the_cap(message: &Value) {
    let message = message.as_str().expect("a message");
    assert!(message.contains("at most 5 fallbacks"), "{message}");
}

#[actix_web::test]
async fn six_fallbacks_on_the_path_route_are_a_400_stating_the_cap_and_call_nothing() {
    let mock = busy_upstream();
    let proxy = start_proxy(config_for(&mock));
    let answer = path_route_with(&proxy, &fallbacks(6)).await;
    assert_eq!(answer.status, 400, "{:?}", answer.body);
    let body = answer.json();
    assert_eq!(body["error"]["type"], "invalid_request", "{body}");
    assert_eq!(body["error"]["provider"], "openai", "{body}");
    assert_states_the_cap(&body["error"]["message"]);
    assert!(mock.requests().is_empty(), "no upstream call");
}

#[actix_web::test]
async fn six_fallbacks_on_the_front_door_from_any_source_are_a_400_in_openais_shape() {
    let mock = busy_upstream();
    let proxy = start_proxy(config_for(&mock));
    let six = fallbacks(6);
    let cases = [
        ("six in the body", vec![], with_fallbacks("openai/m", &six)),
        ("six in X-Fallbacks", six.clone(), hi("openai/m")),
        (
            "three in X-Fallbacks and three in the body",
            six[..3].to_vec(),
            with_fallbacks("openai/m", &six[3..]),
        ),
    ];
    for (case, header, body) in cases {
        let answer = front_door_with(&proxy, &header, body).await;
        assert_eq!(answer.status, 400, "{case}: {:?}", answer.body);
        let error = &answer.json()["error"];
        assert_eq!(error["type"], "invalid_request_error", "{case}: {error}");
        assert_eq!(error["code"], "invalid_request", "{case}: {error}");
        assert!(error.get("param").is_some(), "{case}: {error}");
        assert_states_the_cap(&error["message"]);
    }
    assert!(mock.requests().is_empty(), "no upstream call");
}

/// The models the upstream was asked for, in order.
fn models_called(mock: &Mock) -> Vec<String> {
    mock.requests()
        .iter()
        .map(|r| r.json()["model"].as_str().unwrap().to_owned())
        .collect()
}

#[actix_web::test]
async fn five_fallbacks_are_accepted_and_each_target_is_called_once() {
    let five = fallbacks(5);
    let mut expected = vec!["m".to_owned()];
    expected.extend(five.iter().map(|f| f["openai/".len()..].to_owned()));
    let cases = [
        ("the path route's X-Fallbacks", true, five.clone(), vec![]),
        ("the front door's body", false, vec![], five.clone()),
        (
            "the front door's X-Fallbacks and body together",
            false,
            five[..2].to_vec(),
            five[2..].to_vec(),
        ),
    ];
    for (case, path_route, header, body) in cases {
        let mock = busy_upstream();
        let proxy = start_proxy(Config {
            // One call per target: the count below is the fan-out, not retries.
            max_retries: 0,
            ..config_for(&mock)
        });
        let answer = if path_route {
            path_route_with(&proxy, &header).await
        } else {
            front_door_with(&proxy, &header, with_fallbacks("openai/m", &body)).await
        };
        assert_eq!(answer.status, 503, "{case}: {:?}", answer.body);
        assert_eq!(answer.header("x-proxy-attempts"), Some("6"), "{case}");
        let attempts = &answer.json()["error"]["attempts"];
        assert_eq!(
            attempts.as_array().map(Vec::len),
            Some(6),
            "{case}: {attempts}"
        );
        assert_eq!(models_called(&mock), expected, "{case}");
    }
}

/// What a raw caller got back, and how long after it had written the start of its request.
#[derive(Debug)]
struct RawAnswer {
    status: u16,
    head: String,
    body: Vec<u8>,
    after: Duration,
}

impl RawAnswer {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {self:?}"))
    }
}

/// The answer in `received`, once it is whole: a head, and as many body bytes as it declares.
fn whole_answer(received: &[u8], closed: bool) -> Option<(u16, String, Vec<u8>)> {
    let end = received.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&received[..end]).into_owned();
    let status = head.split(' ').nth(1)?.parse().ok()?;
    let length = head.lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.eq_ignore_ascii_case("content-length")
            .then(|| value.trim().parse::<usize>().ok())?
    });
    let body = &received[end + 4..];
    match length {
        Some(length) if body.len() >= length => Some((status, head, body[..length].to_vec())),
        None if closed => Some((status, head, body.to_vec())),
        _ => None,
    }
}

/// How a slow caller goes on after the start of its request.
#[derive(Clone, Copy)]
enum Pace {
    /// One more body byte every 100 ms.
    Trickle,
    /// Nothing more.
    Hold,
}

/// A caller on a raw TCP connection, on a thread of its own: it writes `head` and `start`, then
/// goes on at its `Pace` until the proxy answers, and reads that answer.
struct SlowSender {
    started: Option<oneshot::Receiver<()>>,
    answer: oneshot::Receiver<RawAnswer>,
}

impl SlowSender {
    fn start(proxy: SocketAddr, head: String, start: Vec<u8>, pace: Pace) -> Self {
        let (started, started_rx) = oneshot::channel();
        let (answer, answer_rx) = oneshot::channel();
        std::thread::spawn(move || {
            let mut stream = TcpStream::connect(proxy).expect("the proxy accepts");
            stream.set_nodelay(true).unwrap();
            stream.write_all(head.as_bytes()).unwrap();
            stream.write_all(&start).unwrap();
            let written = Instant::now();
            let _ = started.send(());
            stream
                .set_read_timeout(Some(Duration::from_millis(100)))
                .unwrap();
            let mut received = Vec::new();
            let mut buffer = [0; 4096];
            let (status, head, body) = loop {
                assert!(
                    written.elapsed() < Duration::from_secs(30),
                    "no answer in 30 s; so far {:?}",
                    String::from_utf8_lossy(&received)
                );
                match stream.read(&mut buffer) {
                    Ok(0) => {
                        break whole_answer(&received, true)
                            .unwrap_or_else(|| panic!("closed without an answer: {received:?}"))
                    }
                    Ok(n) => {
                        received.extend_from_slice(&buffer[..n]);
                        if let Some(whole) = whole_answer(&received, false) {
                            break whole;
                        }
                    }
                    Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                        if matches!(pace, Pace::Trickle) && received.is_empty() {
                            // The proxy may have answered and closed already: the read says.
                            let _ = stream.write_all(b" ");
                        }
                    }
                    Err(e) => panic!("reading the answer: {e}; so far {received:?}"),
                }
            };
            let after = written.elapsed();
            let _ = answer.send(RawAnswer {
                status,
                head,
                body,
                after,
            });
        });
        Self {
            started: Some(started_rx),
            answer: answer_rx,
        }
    }

    /// Resolves once the start of the request is written.
    async fn started(&mut self) {
        let started = self.started.take().expect("started is awaited once");
        started.await.expect("the slow sender connects and writes");
    }

    /// Whether the proxy has not answered yet.
    fn waiting(&mut self) -> bool {
        matches!(
            self.answer.try_recv(),
            Err(oneshot::error::TryRecvError::Empty)
        )
    }

    async fn answer(self) -> RawAnswer {
        self.answer
            .await
            .expect("the slow sender reads an answer (see its panic above)")
    }
}

/// The head of a chat request on the path route, with `framing` saying how long the body is.
fn raw_head(proxy: &Proxy, framing: &str) -> String {
    format!(
        "POST /v1/chat/openai HTTP/1.1\r\nHost: {}\r\nX-API-Key: {TEST_KEY}\r\n\
         Content-Type: application/json\r\n{framing}\r\n\r\n",
        proxy.addr
    )
}

fn assert_cut_off(answer: &RawAnswer, timeout: Duration) {
    assert_eq!(answer.status, 408, "{answer:?}");
    assert!(
        answer
            .head
            .to_ascii_lowercase()
            .contains("content-type: application/json"),
        "{answer:?}"
    );
    let error = &answer.json()["error"];
    assert_eq!(error["type"], "request_timeout", "{error}");
    assert_eq!(error["provider"], "openai", "{error}");
    // The proxy's clock started after the request's start was written.
    assert!(answer.after >= timeout, "cut off early: {answer:?}");
    assert!(
        answer.after < timeout + Duration::from_secs(20),
        "{answer:?}"
    );
}

#[actix_web::test]
async fn slow_bodies_are_cut_off_with_a_408_and_hold_no_place_among_requests_in_flight() {
    // Long beside the few milliseconds the other requests take, so they are surely served while
    // every slow sender is still sending, even on a busy machine.
    const BODY_TIMEOUT: Duration = Duration::from_secs(2);
    let mock = Mock::always(200, "application/json", fixture("openai/completion.json"));
    let proxy = start_proxy(Config {
        client_body_timeout: BODY_TIMEOUT,
        max_concurrent_requests: 4,
        ..config_for(&mock)
    });
    let head = raw_head(&proxy, "Content-Length: 1000");
    let mut slow: Vec<_> = (0..20)
        .map(|_| {
            SlowSender::start(
                proxy.addr,
                head.clone(),
                b"{\"model\":".to_vec(),
                Pace::Trickle,
            )
        })
        .collect();
    for sender in &mut slow {
        sender.started().await;
    }

    // Five times MAX_CONCURRENT_REQUESTS are still sending; four at once are served all the same.
    for _ in 0..3 {
        let served = join_all((0..4).map(|_| chat(&proxy, "openai", hi("m")))).await;
        for answer in served {
            assert_eq!(answer.status, 200, "{:?}", answer.body);
        }
    }
    assert!(
        slow.iter_mut().all(SlowSender::waiting),
        "every slow sender was still sending while the others were served"
    );

    for sender in slow {
        assert_cut_off(&sender.answer().await, BODY_TIMEOUT);
    }
    assert_eq!(
        mock.requests().len(),
        12,
        "no slow request reached the upstream"
    );
}

#[actix_web::test]
async fn bodies_still_arriving_share_a_byte_budget_and_past_it_a_request_gets_a_fast_503() {
    const BODY_TIMEOUT: Duration = Duration::from_secs(3);
    let mock = Mock::always(200, "application/json", fixture("openai/completion.json"));
    let proxy = start_proxy(Config {
        max_body_bytes: 1000,
        max_pending_body_bytes: 2000,
        client_body_timeout: BODY_TIMEOUT,
        ..config_for(&mock)
    });
    // A chunked body declares no length, so nothing refuses it before it arrives: each slow
    // sender sends a chunk of MAX_BODY_BYTES, never the last chunk, and holds.
    let head = raw_head(&proxy, "Transfer-Encoding: chunked");
    let chunk = format!("{:x}\r\n{}\r\n", 1000, " ".repeat(1000)).into_bytes();
    let mut slow: Vec<_> = (0..2)
        .map(|_| SlowSender::start(proxy.addr, head.clone(), chunk.clone(), Pace::Hold))
        .collect();
    for sender in &mut slow {
        sender.started().await;
    }

    // Nothing tells when the proxy has read what the slow senders wrote; until it has, a
    // request still fits, so ask again until one is turned away (bounded by their timeout).
    let turned_away = loop {
        let answer = chat(&proxy, "openai", hi("m")).await;
        if answer.status != 200 {
            break answer;
        }
        assert!(
            slow.iter_mut().all(SlowSender::waiting),
            "a slow sender was answered before the bytes it sent held the budget"
        );
        actix_web::rt::time::sleep(Duration::from_millis(10)).await;
    };
    let served_before = mock.requests().len();
    assert_eq!(turned_away.status, 503, "{:?}", turned_away.body);
    assert_eq!(turned_away.header("retry-after"), Some("1"));
    let error = &turned_away.json()["error"];
    assert_eq!(error["type"], "overloaded", "{error}");
    assert!(
        error["message"]
            .as_str()
            .is_some_and(|m| m.contains("MAX_PENDING_BODY_BYTES")),
        "{error}"
    );

    for sender in slow {
        assert_cut_off(&sender.answer().await, BODY_TIMEOUT);
    }
    let answer = chat(&proxy, "openai", hi("m")).await;
    assert_eq!(
        answer.status, 200,
        "the bytes of bodies cut off are free again: {:?}",
        answer.body
    );
    assert_eq!(
        mock.requests().len(),
        served_before + 1,
        "the request turned away never reached the upstream"
    );
}

#[actix_web::test]
async fn a_wrong_method_on_a_providers_path_names_the_provider_and_an_unknown_one_none() {
    let mock = Mock::always(200, "application/json", fixture("openai/completion.json"));
    let catalog = format!(
        r#"{{"providers": {{"groq": {{"kind": "openai", "base_url": "{}"}}}}}}"#,
        mock.base_url()
    );
    let proxy = start_proxy(config_with_catalog(&mock, &catalog));
    for (path, provider) in [
        ("/v1/chat/openai", json!("openai")),
        ("/v1/chat/anthropic", json!("anthropic")),
        ("/v1/chat/groq", json!("groq")),
        ("/v1/chat/unknownthing", Value::Null),
    ] {
        let mut response = client().get(proxy.url(path)).send().await.unwrap();
        assert_eq!(response.status(), 405, "GET {path}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(
            body["error"]["type"], "method_not_allowed",
            "GET {path}: {body}"
        );
        assert_eq!(body["error"]["provider"], provider, "GET {path}: {body}");
    }
    // The metrics name the provider too, as for every other request on its path.
    let line =
        r#"llm_proxy_requests_total{route="chat",provider="groq",status="4xx",outcome="ok"} 1"#;
    let text = metrics_with(&proxy, line).await;
    assert!(has_line(&text, line), "{text}");
    assert!(mock.requests().is_empty());
}

/// A mock that answers each wire format's non-stream path with its fixture; an OpenAI-format
/// request for the model `gpt-4o-mini` gets a 503.
fn every_format_upstream() -> Mock {
    Mock::start(|request| {
        let fixture_path = if request.path.ends_with("/messages") {
            "anthropic/message.json"
        } else if request.path.contains(":generateContent") {
            "gemini/generate.json"
        } else if request.json()["model"] == "gpt-4o-mini" {
            return Reply::json(503, r#"{"error":{"message":"busy"}}"#);
        } else {
            "openai/completion.json"
        };
        Reply::json(200, fixture(fixture_path))
    })
}

/// No header, path or body of `request` carries `key`, and no header that carries keys is there.
fn assert_keyless(request: &Recorded, key: &str) {
    for name in ["authorization", "x-api-key", "x-goog-api-key"] {
        assert_eq!(request.header(name), None, "{name} on {request:?}");
    }
    for (name, value) in &request.headers {
        assert!(
            !String::from_utf8_lossy(value.as_bytes()).contains(key),
            "the key is in {name}: {request:?}"
        );
    }
    assert!(!request.path.contains(key), "{request:?}");
    assert!(!String::from_utf8_lossy(&request.body).contains(key));
}

#[actix_web::test]
async fn a_bearer_token_sent_to_the_front_door_never_reaches_ollama() {
    let mock = every_format_upstream();
    let proxy = start_proxy(config_for(&mock));
    let answer = complete(&proxy, hi("ollama/llama3.2")).await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    assert_keyless(&mock.only_request(), TEST_KEY);
}

#[actix_web::test]
async fn a_provider_declared_keyless_never_receives_the_callers_key_on_either_route() {
    let mock = every_format_upstream();
    let base = mock.base_url();
    let catalog = format!(
        r#"{{"providers": {{
            "local-openai": {{"kind": "openai", "base_url": "{base}", "key_required": false}},
            "local-anthropic": {{"kind": "anthropic", "base_url": "{base}", "key_required": false}},
            "local-gemini": {{"kind": "gemini", "base_url": "{base}", "key_required": false}}
        }}}}"#
    );
    let proxy = start_proxy(config_with_catalog(&mock, &catalog));
    for name in ["local-openai", "local-anthropic", "local-gemini"] {
        let on_path = chat(&proxy, name, hi("m")).await;
        assert_eq!(on_path.status, 200, "{name}: {:?}", on_path.body);
        let as_x_api_key = client()
            .post(proxy.url("/v1/chat/completions"))
            .insert_header(("X-API-Key", TEST_KEY));
        let as_x_api_key = answer(as_x_api_key, hi(&format!("{name}/m")).to_string()).await;
        assert_eq!(as_x_api_key.status, 200, "{name}: {:?}", as_x_api_key.body);
        let as_bearer = complete(&proxy, hi(&format!("{name}/m"))).await;
        assert_eq!(as_bearer.status, 200, "{name}: {:?}", as_bearer.body);
    }
    let requests = mock.requests();
    assert_eq!(requests.len(), 9);
    for request in &requests {
        assert_keyless(request, TEST_KEY);
    }
}

#[actix_web::test]
async fn a_provider_declared_to_need_a_key_gets_it_as_a_bearer_token_on_both_routes() {
    let mock = every_format_upstream();
    let catalog = format!(
        r#"{{"providers": {{"groq": {{"kind": "openai", "base_url": "{}", "key_required": true}}}}}}"#,
        mock.base_url()
    );
    let proxy = start_proxy(config_with_catalog(&mock, &catalog));
    assert_eq!(chat(&proxy, "groq", hi("m")).await.status, 200);
    assert_eq!(complete(&proxy, hi("groq/m")).await.status, 200);
    let requests = mock.requests();
    assert_eq!(requests.len(), 2);
    for request in &requests {
        let expected = format!("Bearer {TEST_KEY}");
        assert_eq!(request.header("authorization"), Some(expected.as_str()));
    }
}

#[actix_web::test]
async fn a_fallback_to_a_keyless_provider_gets_no_key_even_when_one_is_sent_for_it() {
    let mock = every_format_upstream();
    let catalog = format!(
        r#"{{"providers": {{"local": {{"kind": "openai", "base_url": "{}", "key_required": false}}}}}}"#,
        mock.base_url()
    );
    let proxy = start_proxy(config_with_catalog(&mock, &catalog));
    let on_path = client()
        .post(proxy.url("/v1/chat/openai"))
        .insert_header(("X-API-Key", TEST_KEY))
        .insert_header(("X-Fallbacks", "ollama/llama3.2"))
        .insert_header(("X-API-Key-Ollama", "sk-meant-for-ollama"));
    let on_path = answer(on_path, hi("gpt-4o-mini").to_string()).await;
    assert_eq!(on_path.status, 200, "{:?}", on_path.body);
    assert_eq!(on_path.header("x-proxy-provider"), Some("ollama"));
    let on_front_door = client()
        .post(proxy.url("/v1/chat/completions"))
        .insert_header(("Authorization", format!("Bearer {TEST_KEY}")))
        .insert_header(("X-API-Key-Local", "sk-meant-for-local"));
    let body = with_fallbacks("openai/gpt-4o-mini", &["local/llama".to_owned()]);
    let on_front_door = answer(on_front_door, body.to_string()).await;
    assert_eq!(on_front_door.status, 200, "{:?}", on_front_door.body);
    assert_eq!(on_front_door.header("x-proxy-provider"), Some("local"));

    let requests = mock.requests();
    assert_eq!(requests.len(), 4);
    let expected = format!("Bearer {TEST_KEY}");
    for (primary, fallback, fallback_key) in [
        (&requests[0], &requests[1], "sk-meant-for-ollama"),
        (&requests[2], &requests[3], "sk-meant-for-local"),
    ] {
        assert_eq!(primary.header("authorization"), Some(expected.as_str()));
        assert_keyless(fallback, TEST_KEY);
        assert_keyless(fallback, fallback_key);
    }
}

/// The bytes stream `n` of the load test is made of: its first event, which names it, then the
/// rest, which the test sends once every stream is open.
fn load_stream(n: usize) -> (String, String) {
    (
        format!("data: {{\"stream\":{n},\"n\":0}}\n\n"),
        format!(
            "data: {{\"stream\":{n},\"n\":1}}\n\ndata: {{\"stream\":{n},\"n\":2}}\n\ndata: [DONE]\n\n"
        ),
    )
}

#[actix_web::test]
#[ignore = "holds 2,000 streams open; run by .ci/run"]
async fn the_default_settings_carry_two_thousand_streams_at_once() {
    const STREAMS: usize = 2000;
    // Each stream holds four sockets in this process: the caller's, the proxy's two, the mock's.
    llm_proxy::http::server::raise_open_file_limit().expect("the open file limit can be raised");
    let feeds = Arc::new(Mutex::new(Vec::new()));
    let held = feeds.clone();
    let mock = Mock::start(move |_| {
        let (feed, body) = feed();
        let mut held = held.lock().unwrap();
        feed.send(load_stream(held.len()).0);
        held.push(feed);
        Reply::Stream(body)
    });
    let base = mock.base_url();
    let proxy = start_proxy(Config {
        workers: 2,
        openai_base_url: base.clone(),
        anthropic_base_url: base.clone(),
        gemini_base_url: base.clone(),
        ollama_base_url: base,
        ..Config::default()
    });

    let client = awc::Client::builder()
        .connector(
            awc::Connector::new()
                .limit(0)
                .timeout(Duration::from_secs(60)),
        )
        .timeout(Duration::from_secs(180))
        .finish();
    let opened = (0..STREAMS).map(|_| {
        let request = client
            .post(proxy.url("/v1/chat/openai"))
            .insert_header(("X-API-Key", TEST_KEY))
            .send_body(
                r#"{"model":"m","stream":true,"messages":[{"role":"user","content":"hi"}]}"#,
            );
        async move {
            let mut response = request.await.expect("a stream opens");
            if response.status() != 200 {
                let body = response.body().await;
                panic!("{}: {body:?}", response.status());
            }
            let mut first = Vec::new();
            while !first.ends_with(b"\n\n") {
                let chunk = response.next().await.expect("a first event");
                first.extend_from_slice(&chunk.expect("the first event arrives"));
            }
            (response, first)
        }
    });
    let streams = join_all(opened).await;
    let open = feeds.lock().unwrap().len();
    assert_eq!(open, STREAMS, "every stream is open upstream at once");

    for (n, feed) in std::mem::take(&mut *feeds.lock().unwrap())
        .into_iter()
        .enumerate()
    {
        feed.send(load_stream(n).1);
        feed.finish();
    }
    let finished = streams.into_iter().map(|(mut response, first)| async move {
        let first = String::from_utf8(first).unwrap();
        let n: usize = serde_json::from_str::<Value>(first.trim().trim_start_matches("data: "))
            .unwrap()["stream"]
            .as_u64()
            .unwrap() as usize;
        let mut whole = first.into_bytes();
        while let Some(chunk) = response.next().await {
            whole.extend_from_slice(&chunk.expect("the stream finishes cleanly"));
        }
        let (first, rest) = load_stream(n);
        assert_eq!(
            String::from_utf8_lossy(&whole),
            first + &rest,
            "stream {n} whole"
        );
        n
    });
    let seen: HashSet<usize> = join_all(finished).await.into_iter().collect();
    assert_eq!(seen.len(), STREAMS, "each caller got its own stream");
    assert_eq!(mock.requests().len(), STREAMS);
}
