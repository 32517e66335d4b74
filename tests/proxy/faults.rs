//! Hostile upstreams: absurd waits, wrong shapes, stalls, endless events, cut streams, quoted keys.

use std::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use actix_web::web::Bytes;
use futures_util::StreamExt;
use llm_proxy::Config;
use serde_json::{json, Value};

use crate::common::*;

fn streamed_with_usage(model: &str, include_usage: bool) -> Value {
    json!({"model": model, "stream": true, "stream_options": {"include_usage": include_usage},
           "messages": [{"role": "user", "content": "hi"}]})
}

/// The text of a front-door stream's content deltas, joined.
fn content_of(events: &[Value]) -> String {
    events
        .iter()
        .filter_map(|chunk| chunk["choices"][0]["delta"]["content"].as_str())
        .collect()
}

/// Opens a stream on the path route and returns it once its head is in.
async fn open_stream(proxy: &Proxy, provider: &str) -> awc::ClientResponse {
    let response = client()
        .post(proxy.url(&format!("/v1/chat/{provider}")))
        .insert_header(("X-API-Key", TEST_KEY))
        .send_body(streamed("m").to_string())
        .await
        .expect("the proxy answers");
    assert_eq!(response.status(), 200);
    response
}

/// A key with `/` in it, which a JSON encoder may write as `\/`.
const SLASH_KEY: &str = "sk-proj/abc/0123456789";
const SLASH_KEY_ESCAPED: &str = r"sk-proj\/abc\/0123456789";

// Absurd Retry-After values.

#[actix_web::test]
async fn an_absurd_retry_after_is_passed_on_without_waiting_and_the_worker_lives_on() {
    // As numbers these are waits past any clock; the date has a five-digit year, which is not
    // an HTTP-date (RFC 9110 wants four digits), so it is ignored like any malformed value and
    // the 429 is retried with the ordinary backoff.
    for (name, value, calls) in [
        ("retry-after", "1e20", 1),
        ("retry-after-ms", "1e300", 1),
        ("retry-after", "Sun, 06 Nov 99999 08:49:37 GMT", 3),
    ] {
        let mock = Mock::start(move |request| {
            if request.json()["model"] == "limited" {
                Reply::Full {
                    status: 429,
                    content_type: "application/json",
                    headers: vec![(name, value)],
                    body: Bytes::from_static(br#"{"error":{"message":"slow down"}}"#),
                }
            } else {
                Reply::json(200, fixture("openai/completion.json"))
            }
        });
        // One worker: the second request is served by the worker that handled the first.
        let proxy = start_proxy(Config {
            workers: 1,
            max_retries: 2,
            ..config_for(&mock)
        });
        let started = Instant::now();
        let answer = chat(&proxy, "openai", hi("limited")).await;
        assert_eq!(answer.status, 429, "{name}: {value}: {:?}", answer.body);
        assert_eq!(answer.header(name), Some(value), "{name} is passed on");
        assert_eq!(answer.json()["error"]["upstream_status"], 429);
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{name}: {value}: not waited for, took {:?}",
            started.elapsed()
        );
        assert_eq!(mock.requests().len(), calls, "{name}: {value}");

        let answer = chat(&proxy, "openai", hi("m")).await;
        assert_eq!(answer.status, 200, "{name}: {value}: {:?}", answer.body);
        assert_eq!(answer.json()["content"], "Hello! How can I help you today?");
    }
}

// An upstream that ignores `stream` and answers with JSON.

#[actix_web::test]
async fn a_json_answer_to_a_stream_request_is_a_502_on_the_path_route_and_the_worker_lives_on() {
    let mock = Mock::start(|_| Reply::Full {
        status: 200,
        content_type: "application/json",
        headers: vec![
            ("x-ratelimit-remaining-requests", "499"),
            ("x-request-id", "req_upstream_7"),
        ],
        body: fixture("openai/completion.json"),
    });
    // One worker, so the request after the 502 is served where the 502 was made.
    let proxy = start_proxy(Config {
        workers: 1,
        max_retries: 2,
        ..config_for(&mock)
    });
    let answer = chat(&proxy, "openai", streamed("gpt-4o-mini")).await;
    assert_eq!(answer.status, 502, "{:?}", answer.body);
    assert_eq!(answer.header("content-type"), Some("application/json"));
    let error = &answer.json()["error"];
    assert_eq!(error["type"], "bad_gateway", "{error}");
    assert_eq!(error["provider"], "openai");
    let message = error["message"].as_str().unwrap();
    assert!(
        message.contains("application/json") && message.contains("text/event-stream"),
        "names what came and what was expected: {message}"
    );
    assert_eq!(answer.header("x-ratelimit-remaining-requests"), Some("499"));
    assert_eq!(
        answer.header("x-upstream-request-id"),
        Some("req_upstream_7")
    );
    assert_ne!(answer.header("x-request-id"), Some("req_upstream_7"));
    assert_eq!(mock.requests().len(), 1, "a 2xx answer is not retried");

    let answer = chat(&proxy, "openai", hi("gpt-4o-mini")).await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    assert_eq!(answer.json()["content"], "Hello! How can I help you today?");
    assert_eq!(mock.requests().len(), 2);
}

#[actix_web::test]
async fn a_json_answer_to_a_stream_request_becomes_a_chunk_stream_on_the_front_door() {
    for (model, answer_fixture, prompt_tokens, completion_tokens) in [
        ("openai/gpt-4o-mini", "openai/completion.json", 19, 9),
        ("anthropic/claude-x", "anthropic/message.json", 12, 10),
    ] {
        for include_usage in [true, false] {
            let mock = Mock::always(200, "application/json", fixture(answer_fixture));
            let proxy = start_proxy(Config {
                max_retries: 2,
                ..config_for(&mock)
            });
            let answer = complete(&proxy, streamed_with_usage(model, include_usage)).await;
            let case = format!("{model}, include_usage {include_usage}");
            assert_eq!(answer.status, 200, "{case}: {:?}", answer.body);
            assert_eq!(
                answer.header("content-type"),
                Some("text/event-stream"),
                "{case}"
            );
            assert!(answer.body.ends_with(b"data: [DONE]\n\n"), "{case}");
            let mut events = sse_data(&answer.body);
            assert_eq!(events.pop(), Some(json!("[DONE]")), "{case}");
            for chunk in &events {
                assert_eq!(chunk["object"], "chat.completion.chunk", "{case}: {chunk}");
                assert_eq!(chunk["id"], events[0]["id"], "{case}: one id throughout");
                assert!(chunk.get("error").is_none(), "{case}: {chunk}");
            }
            assert_eq!(
                content_of(&events),
                "Hello! How can I help you today?",
                "{case}"
            );
            let finishes: Vec<_> = events
                .iter()
                .filter_map(|chunk| chunk["choices"][0]["finish_reason"].as_str())
                .collect();
            assert_eq!(finishes, ["stop"], "{case}");
            let usage: Vec<_> = events.iter().filter(|c| !c["usage"].is_null()).collect();
            if include_usage {
                assert_eq!(usage.len(), 1, "{case}: {events:?}");
                assert_eq!(usage[0], events.last().unwrap(), "{case}: usage comes last");
                assert_eq!(usage[0]["choices"], json!([]), "{case}");
                assert_eq!(usage[0]["usage"]["prompt_tokens"], prompt_tokens, "{case}");
                assert_eq!(
                    usage[0]["usage"]["completion_tokens"], completion_tokens,
                    "{case}"
                );
                assert_eq!(
                    usage[0]["usage"]["total_tokens"],
                    prompt_tokens + completion_tokens,
                    "{case}"
                );
            } else {
                assert!(usage.is_empty(), "{case}: {events:?}");
            }
            assert_eq!(mock.requests().len(), 1, "{case}");
        }
    }
}

// A 2xx head, then a body that stalls.

#[actix_web::test]
async fn a_2xx_answer_whose_body_stalls_after_its_head_is_a_504_and_not_retried() {
    for (path, model) in [
        ("/v1/chat/openai", "m"),
        ("/v1/chat/completions", "openai/m"),
    ] {
        let (base, requests) = stalling_upstream(
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 100000\r\n\r\n{\"choices\":[",
        );
        let proxy = start_proxy(Config {
            max_retries: 2,
            http_timeout: Duration::from_millis(300),
            ..config_with_base(&base)
        });
        let started = Instant::now();
        let answer = post(&proxy, path, Some(TEST_KEY), hi(model).to_string()).await;
        assert_eq!(answer.status, 504, "{path}: {:?}", answer.body);
        let error = &answer.json()["error"];
        match path {
            "/v1/chat/openai" => assert_eq!(error["type"], "gateway_timeout", "{error}"),
            _ => assert_eq!(error["code"], "gateway_timeout", "{error}"),
        }
        assert_eq!(
            requests.load(Ordering::SeqCst),
            1,
            "{path}: the upstream may be generating the answer already"
        );
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{path}: {:?}",
            started.elapsed()
        );
    }
}

// The upstream's headers on a 502 made from its unusable 2xx answer.

#[actix_web::test]
async fn a_502_made_from_an_unusable_2xx_answer_carries_its_rate_limit_and_request_id_headers() {
    let html = "<html><body>Service under maintenance</body></html>";
    let truncated_completion = r#"{"id":"chatcmpl-1","choices":[{"message":{"content":"Hel"#;
    let truncated_message = r#"{"type":"message","content":[{"type":"text","text":"Hel"#;
    for (path, model, content_type, body) in [
        ("/v1/chat/openai", "m", "text/html", html),
        (
            "/v1/chat/openai",
            "m",
            "application/json",
            truncated_completion,
        ),
        (
            "/v1/chat/openai",
            "m",
            "application/json",
            r#"{"object":"chat.completion"}"#,
        ),
        ("/v1/chat/completions", "anthropic/c", "text/html", html),
        (
            "/v1/chat/completions",
            "anthropic/c",
            "application/json",
            truncated_message,
        ),
        (
            "/v1/chat/completions",
            "anthropic/c",
            "application/json",
            r#"{"type":"message"}"#,
        ),
    ] {
        let mock = Mock::start(move |_| Reply::Full {
            status: 200,
            content_type,
            headers: vec![
                ("x-ratelimit-remaining-requests", "499"),
                ("x-ratelimit-reset-tokens", "6m0s"),
                ("x-request-id", "req_upstream_7"),
                ("request-id", "req_upstream_8"),
            ],
            body: Bytes::from_static(body.as_bytes()),
        });
        let proxy = start_proxy(config_for(&mock));
        let answer = post(&proxy, path, Some(TEST_KEY), hi(model).to_string()).await;
        let case = format!("{path} {content_type} {body}");
        assert_eq!(answer.status, 502, "{case}: {:?}", answer.body);
        let error = &answer.json()["error"];
        match path {
            "/v1/chat/openai" => assert_eq!(error["type"], "bad_gateway", "{case}: {error}"),
            _ => assert_eq!(error["code"], "bad_gateway", "{case}: {error}"),
        }
        for (name, value) in [
            ("x-ratelimit-remaining-requests", "499"),
            ("x-ratelimit-reset-tokens", "6m0s"),
            ("x-upstream-request-id", "req_upstream_7"),
            ("request-id", "req_upstream_8"),
        ] {
            assert_eq!(answer.header(name), Some(value), "{case}: {name}");
        }
        let own_id = answer.header("x-request-id").unwrap();
        assert!(
            own_id.starts_with("req_") && own_id != "req_upstream_7",
            "{own_id}"
        );
    }
}

#[actix_web::test]
async fn an_unusable_2xx_answer_from_an_openai_upstream_is_a_502_on_the_front_door_too() {
    for (content_type, body) in [
        (
            "text/html",
            "<html><body>Service under maintenance</body></html>",
        ),
        (
            "application/json",
            r#"{"id":"chatcmpl-1","choices":[{"message":{"content":"Hel"#,
        ),
        ("application/json", r#"{"object":"chat.completion"}"#),
    ] {
        let mock = Mock::start(move |_| Reply::Full {
            status: 200,
            content_type,
            headers: vec![
                ("x-ratelimit-remaining-requests", "499"),
                ("x-request-id", "req_upstream_7"),
            ],
            body: Bytes::from_static(body.as_bytes()),
        });
        let proxy = start_proxy(config_for(&mock));
        let answer = complete(&proxy, hi("openai/m")).await;
        assert_eq!(
            answer.status, 502,
            "{content_type} {body}: {:?}",
            answer.body
        );
        assert_eq!(answer.json()["error"]["code"], "bad_gateway");
        assert_eq!(answer.header("x-ratelimit-remaining-requests"), Some("499"));
        assert_eq!(
            answer.header("x-upstream-request-id"),
            Some("req_upstream_7")
        );
    }
}

// Translated streams that end before their terminal event.

#[actix_web::test]
async fn a_translated_stream_that_ends_without_its_terminal_event_ends_with_an_error_not_done() {
    let anthropic = fixture("anthropic/stream.sse");
    let stop = anthropic
        .windows(b"event: message_stop".len())
        .position(|w| w == b"event: message_stop")
        .unwrap();
    let gemini = fixture("gemini/stream.sse");
    // Gemini ends its events with CRLF line ends.
    let first_event = gemini.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    for (model, stream, provider, terminal, text) in [
        (
            "anthropic/claude-x",
            anthropic.slice(..stop),
            "anthropic",
            "message_stop",
            "¡Hola! 👋 ¿Qué tal?",
        ),
        (
            "gemini/gemini-1.5-flash",
            gemini.slice(..first_event),
            "gemini",
            "finishReason",
            "¡Hola",
        ),
    ] {
        // The body ends cleanly: only the events say the answer is incomplete.
        let mock = Mock::start(move |_| Reply::sse(vec![stream.clone()]));
        let proxy = start_proxy(config_for(&mock));
        let answer = complete(&proxy, streamed_with_usage(model, true)).await;
        assert_eq!(answer.status, 200, "{model}: {:?}", answer.body);
        let body = String::from_utf8(answer.body.to_vec()).unwrap();
        assert!(!body.contains("[DONE]"), "{model}: {body}");
        let events = sse_data(&answer.body);
        assert_eq!(content_of(&events), text, "{model}: what came is passed on");
        let (last, before) = events.split_last().unwrap();
        assert!(before.iter().all(|e| e.get("error").is_none()), "{body}");
        let error = &last["error"];
        assert_eq!(error["code"], "bad_gateway", "{model}: {last}");
        assert_eq!(error["provider"], provider, "{model}: {last}");
        assert!(
            error["message"].as_str().unwrap().contains(terminal),
            "{model}: names what is missing: {last}"
        );
        assert!(body.ends_with("\n\n"), "{model}: {body:?}");
    }
}

#[actix_web::test]
async fn a_complete_translated_stream_still_ends_with_done_and_no_error() {
    for (model, stream, text) in [
        (
            "anthropic/claude-x",
            "anthropic/stream.sse",
            "¡Hola! 👋 ¿Qué tal?",
        ),
        (
            "gemini/gemini-1.5-flash",
            "gemini/stream.sse",
            "¡Hola! 👋 ¿Qué tal?",
        ),
    ] {
        let sse = fixture(stream);
        let mock = Mock::start(move |_| Reply::sse(vec![sse.clone()]));
        let proxy = start_proxy(config_for(&mock));
        let answer = complete(&proxy, streamed_with_usage(model, true)).await;
        assert_eq!(answer.status, 200, "{model}: {:?}", answer.body);
        assert!(answer.body.ends_with(b"data: [DONE]\n\n"), "{model}");
        let mut events = sse_data(&answer.body);
        assert_eq!(events.pop(), Some(json!("[DONE]")));
        assert!(
            events.iter().all(|e| e.get("error").is_none()),
            "{events:?}"
        );
        assert_eq!(content_of(&events), text, "{model}");
    }
}

// One event that never ends: 50 MiB of one SSE line, made in 64 KiB pieces only as they are
// asked for.

const ENDLESS_PIECE: usize = 64 * 1024;
const ENDLESS_PIECES: usize = 800;

/// Far more than the proxy needs to read 50 MiB, far less than a parser that rescans what it
/// holds with every read takes (a minute and more).
const ENDLESS_DEADLINE: Duration = Duration::from_secs(30);

/// `work`, or a failure once `limit` has passed. The client's timeout bounds only the wait for
/// a response's head (awc leaves the body unbounded), and a proxy crawling through a stream
/// must fail the test rather than stall it.
async fn within<T>(limit: Duration, work: impl std::future::Future<Output = T>) -> T {
    actix_web::rt::time::timeout(limit, work)
        .await
        .unwrap_or_else(|_| panic!("not done within {limit:?}"))
}

fn endless_piece() -> Bytes {
    let mut piece = b"data: ".to_vec();
    piece.resize(ENDLESS_PIECE, b'x');
    Bytes::from(piece)
}

fn endless_event_mock() -> (Mock, Arc<AtomicUsize>) {
    let produced = Arc::new(AtomicUsize::new(0));
    let counter = produced.clone();
    let mock = Mock::start(move |_| Reply::Lazy {
        chunk: endless_piece(),
        count: ENDLESS_PIECES,
        produced: counter.clone(),
    });
    (mock, produced)
}

#[actix_web::test]
async fn an_event_that_never_ends_passes_through_the_path_route_byte_for_byte() {
    let (mock, _produced) = endless_event_mock();
    let proxy = start_proxy(config_for(&mock));
    let piece = endless_piece();
    let mut response = open_stream(&proxy, "anthropic").await;
    let mut received = 0;
    within(ENDLESS_DEADLINE, async {
        while let Some(chunk) = response.next().await {
            let mut chunk = &chunk.expect("the proxy's stream ends cleanly")[..];
            // Every byte checked against what the upstream sent at that offset.
            while !chunk.is_empty() {
                let at = received % piece.len();
                let n = chunk.len().min(piece.len() - at);
                assert!(
                    chunk[..n] == piece[at..at + n],
                    "a byte changed near offset {received}"
                );
                received += n;
                chunk = &chunk[n..];
            }
        }
    })
    .await;
    assert_eq!(received, ENDLESS_PIECE * ENDLESS_PIECES);
}

#[actix_web::test]
async fn an_event_that_never_ends_is_refused_on_the_front_door_once_past_max_event_bytes() {
    let (mock, produced) = endless_event_mock();
    let proxy = start_proxy(config_for(&mock));
    let started = Instant::now();
    let answer = within(
        ENDLESS_DEADLINE,
        complete(&proxy, streamed("anthropic/claude-x")),
    )
    .await;
    let took = started.elapsed();
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    let body = String::from_utf8(answer.body.to_vec()).unwrap();
    assert!(!body.contains("[DONE]"), "{body}");
    let events = sse_data(&answer.body);
    let error = &events.last().unwrap()["error"];
    assert_eq!(error["code"], "bad_gateway", "{error}");
    assert_eq!(error["provider"], "anthropic", "{error}");
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("MAX_EVENT_BYTES"),
        "{error}"
    );
    // The 50 MiB were not read to their end: the proxy gave up at the bound and hung up.
    assert!(took < Duration::from_secs(15), "took {took:?}");
    let made = produced.load(Ordering::Relaxed);
    assert!(
        made < ENDLESS_PIECE * ENDLESS_PIECES / 2,
        "the upstream made {made} bytes"
    );
}

// An in-band error that quotes the caller's key.

#[actix_web::test]
async fn an_error_as_a_streams_first_event_that_quotes_the_key_is_a_502_with_it_masked() {
    let anthropic_error = |quoted: &str| {
        format!(
            "event: error\ndata: {{\"type\":\"error\",\"error\":{{\"type\":\"authentication_error\",\"message\":\"invalid x-api-key: {quoted}\"}}}}\n\n"
        )
    };
    let openai_error = |quoted: &str| {
        format!(
            "data: {{\"error\":{{\"message\":\"Incorrect API key provided: {quoted}.\",\"type\":\"invalid_request_error\",\"code\":\"invalid_api_key\"}}}}\n\n"
        )
    };
    for (provider, key, event) in [
        ("anthropic", TEST_KEY, anthropic_error(TEST_KEY)),
        ("openai", TEST_KEY, openai_error(TEST_KEY)),
        ("anthropic", SLASH_KEY, anthropic_error(SLASH_KEY_ESCAPED)),
        ("openai", SLASH_KEY, openai_error(SLASH_KEY_ESCAPED)),
    ] {
        let event = Bytes::from(event);
        let mock = Mock::start(move |_| Reply::sse(vec![event.clone()]));
        let proxy = start_proxy(Config {
            max_retries: 0,
            ..config_for(&mock)
        });
        let path = format!("/v1/chat/{provider}");
        let answer = post(&proxy, &path, Some(key), streamed("m").to_string()).await;
        let body = String::from_utf8(answer.body.to_vec()).unwrap();
        let case = format!("{provider} with {key}");
        assert_eq!(answer.status, 502, "{case}: {body}");
        assert_eq!(answer.json()["error"]["type"], "upstream_error", "{case}");
        assert!(body.contains("[redacted]"), "{case}: {body}");
        assert!(
            !body.contains(key) && !body.contains(SLASH_KEY_ESCAPED),
            "{case}: {body}"
        );
        let sent = mock.only_request();
        let sent_key = match provider {
            "anthropic" => sent.header("x-api-key"),
            _ => sent
                .header("authorization")
                .and_then(|value| value.strip_prefix("Bearer ")),
        };
        assert_eq!(
            sent_key,
            Some(key),
            "{case}: the key quoted is the one sent"
        );
    }
}

#[actix_web::test]
async fn an_error_event_mid_stream_that_quotes_the_key_is_masked_in_the_error_chunk() {
    for (key, quoted) in [(TEST_KEY, TEST_KEY), (SLASH_KEY, SLASH_KEY_ESCAPED)] {
        let stream = Bytes::from(format!(
            "event: message_start\ndata: {{\"type\":\"message_start\",\"message\":{{\"model\":\"claude-x\"}}}}\n\n\
             event: content_block_delta\ndata: {{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{{\"type\":\"text_delta\",\"text\":\"Hi\"}}}}\n\n\
             event: error\ndata: {{\"type\":\"error\",\"error\":{{\"type\":\"permission_error\",\"message\":\"key {quoted} was revoked\"}}}}\n\n"
        ));
        let mock = Mock::start(move |_| Reply::sse(vec![stream.clone()]));
        let proxy = start_proxy(config_for(&mock));
        let answer = post(
            &proxy,
            "/v1/chat/completions",
            Some(key),
            streamed("anthropic/claude-x").to_string(),
        )
        .await;
        let body = String::from_utf8(answer.body.to_vec()).unwrap();
        assert_eq!(answer.status, 200, "{key}: {body}");
        assert!(
            !body.contains(key) && !body.contains(quoted),
            "{key}: {body}"
        );
        assert!(!body.contains("[DONE]"), "{key}: {body}");
        let events = sse_data(&answer.body);
        assert_eq!(content_of(&events), "Hi", "{key}");
        let error = &events.last().unwrap()["error"];
        assert_eq!(error["type"], "permission_error", "{key}: {error}");
        assert_eq!(
            error["message"], "upstream stream failed: key [redacted] was revoked",
            "{key}: {error}"
        );
        assert_eq!(mock.only_request().header("x-api-key"), Some(key));
    }
}

// How each ending is counted.

fn requests_line(outcome: &str) -> String {
    format!(
        r#"llm_proxy_requests_total{{route="chat",provider="openai",status="2xx",outcome="{outcome}"}}"#
    )
}

/// The `llm_proxy_requests_total` line for the path route to OpenAI with a 2xx status and
/// `outcome`, once it has counted `count`; fails naming the whole exposition if it never does.
async fn assert_counted(proxy: &Proxy, outcome: &str, count: u32) {
    let line = format!("{} {count}", requests_line(outcome));
    let text = metrics_with(proxy, &line).await;
    assert!(has_line(&text, &line), "missing {line}\n{text}");
    let others: Vec<_> = text
        .lines()
        .filter(|l| l.starts_with("llm_proxy_requests_total{") && !l.starts_with(&line))
        .collect();
    assert!(others.is_empty(), "only {line} was counted: {others:?}");
}

#[actix_web::test]
async fn a_stream_reset_after_its_start_is_counted_as_upstream_cut() {
    let (feed, body) = feed();
    let mock = Mock::streaming(body);
    let proxy = start_proxy(config_for(&mock));
    feed.send("data: {\"n\":1}\n\n");
    let mut response = open_stream(&proxy, "openai").await;
    assert_eq!(
        response.next().await.unwrap().unwrap(),
        "data: {\"n\":1}\n\n"
    );
    feed.fail();
    let rest = String::from_utf8(read_to_end(&mut response).await).unwrap();
    assert!(rest.starts_with("event: error\n"), "{rest}");
    assert_counted(&proxy, "upstream_cut", 1).await;
}

#[actix_web::test]
async fn a_stream_gone_silent_past_the_timeout_is_counted_as_timeout() {
    let (feed, body) = feed();
    let mock = Mock::streaming(body);
    let proxy = start_proxy(Config {
        http_timeout: Duration::from_millis(300),
        ..config_for(&mock)
    });
    feed.send("data: {\"n\":1}\n\n");
    let mut response = open_stream(&proxy, "openai").await;
    let received = String::from_utf8(read_to_end(&mut response).await).unwrap();
    assert!(received.contains("gateway_timeout"), "{received}");
    assert_counted(&proxy, "timeout", 1).await;
    drop(feed);
}

#[actix_web::test]
async fn a_stream_the_client_dropped_midway_is_counted_as_client_closed() {
    let (mut feed, body) = feed();
    let mock = Mock::streaming(body);
    let proxy = start_proxy(config_for(&mock));
    feed.send("data: {\"n\":1}\n\n");
    let mut response = open_stream(&proxy, "openai").await;
    response.next().await.unwrap().unwrap();
    drop(response);
    assert!(
        feed.dropped_within(Duration::from_secs(5)).await,
        "the proxy let go of the upstream when the client left"
    );
    assert_counted(&proxy, "client_closed", 1).await;
}

#[actix_web::test]
async fn a_whole_answer_is_counted_as_ok() {
    let mock = Mock::start(|request| {
        if request.json()["stream"] == true {
            Reply::sse(vec![fixture("openai/stream.sse")])
        } else {
            Reply::json(200, fixture("openai/completion.json"))
        }
    });
    let proxy = start_proxy(config_for(&mock));
    let stream = chat(&proxy, "openai", streamed("m")).await;
    assert_eq!(stream.body, fixture("openai/stream.sse"));
    assert_eq!(chat(&proxy, "openai", hi("m")).await.status, 200);
    assert_counted(&proxy, "ok", 2).await;
}
