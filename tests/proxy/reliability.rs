//! Faults: retries and their waits, fallbacks and their keys, admission limits, in-band
//! failures, heartbeats, and a slow reader.

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

fn with_retries(mock: &Mock, retries: u32) -> Config {
    Config {
        max_retries: retries,
        ..config_for(mock)
    }
}

/// A mock that answers its calls in turn with `replies` (the last one repeats).
fn in_turn(replies: Vec<fn() -> Reply>) -> Mock {
    let calls = AtomicUsize::new(0);
    Mock::start(move |_| {
        let call = calls.fetch_add(1, Ordering::SeqCst);
        replies[call.min(replies.len() - 1)]()
    })
}

fn status(status: u16, headers: Vec<(&'static str, &'static str)>) -> Reply {
    Reply::Full {
        status,
        content_type: "application/json",
        headers,
        body: Bytes::from(format!(r#"{{"error":{{"message":"status {status}"}}}}"#)),
    }
}

fn completion() -> Reply {
    Reply::json(200, fixture("openai/completion.json"))
}

fn message() -> Reply {
    Reply::json(200, fixture("anthropic/message.json"))
}

#[actix_web::test]
async fn a_429_then_success_waits_as_long_as_the_upstream_asked() {
    let mock = in_turn(vec![
        || status(429, vec![("retry-after-ms", "400")]),
        completion,
    ]);
    let proxy = start_proxy(with_retries(&mock, 2));
    let started = Instant::now();
    let answer = chat(&proxy, "openai", hi("m")).await;
    let waited = started.elapsed();
    assert_eq!(answer.status, 200);
    assert_eq!(answer.header("x-proxy-attempts"), Some("2"));
    assert_eq!(mock.requests().len(), 2);
    assert!(waited >= Duration::from_millis(400), "waited {waited:?}");
}

#[actix_web::test]
async fn a_529_twice_then_success_is_one_answer_after_three_calls() {
    let mock = in_turn(vec![
        || status(529, vec![]),
        || status(529, vec![]),
        message,
    ]);
    let proxy = start_proxy(with_retries(&mock, 2));
    let answer = chat(&proxy, "anthropic", hi("c")).await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.json()["provider"], "anthropic");
    assert_eq!(answer.header("x-proxy-attempts"), Some("3"));
    assert_eq!(answer.header("x-proxy-provider"), Some("anthropic"));
    assert_eq!(answer.header("x-proxy-model"), Some("c"));
    assert_eq!(mock.requests().len(), 3);
}

#[actix_web::test]
async fn a_spent_retry_budget_answers_the_last_failure_and_lists_each_attempt() {
    let mock = in_turn(vec![|| status(503, vec![("retry-after", "0")])]);
    let proxy = start_proxy(with_retries(&mock, 2));
    let answer = chat(&proxy, "openai", hi("m")).await;
    assert_eq!(answer.status, 503);
    assert_eq!(answer.header("retry-after"), Some("0"));
    assert_eq!(answer.header("x-proxy-attempts"), Some("3"));
    let error = &answer.json()["error"];
    assert_eq!(error["upstream_status"], 503);
    assert_eq!(
        error["attempts"],
        json!([
            {"provider": "openai", "model": "m", "status": 503},
            {"provider": "openai", "model": "m", "status": 503},
            {"provider": "openai", "model": "m", "status": 503},
        ])
    );
    assert_eq!(mock.requests().len(), 3);
}

#[actix_web::test]
async fn a_401_is_never_retried() {
    let mock = in_turn(vec![|| status(401, vec![]), completion]);
    let proxy = start_proxy(with_retries(&mock, 2));
    let answer = chat(&proxy, "openai", hi("m")).await;
    assert_eq!(answer.status, 401);
    assert_eq!(mock.requests().len(), 1);
}

#[actix_web::test]
async fn x_max_retries_lowers_the_maximum_but_never_raises_it() {
    let mock = in_turn(vec![|| status(500, vec![])]);
    let proxy = start_proxy(with_retries(&mock, 1));
    for (asked, calls) in [("0", 1), ("5", 2)] {
        let before = mock.requests().len();
        let answer = client()
            .post(proxy.url("/v1/chat/openai"))
            .insert_header(("X-API-Key", TEST_KEY))
            .insert_header(("X-Max-Retries", asked))
            .send_body(hi("m").to_string())
            .await
            .unwrap();
        assert_eq!(answer.status(), 500);
        assert_eq!(
            mock.requests().len() - before,
            calls,
            "X-Max-Retries: {asked}"
        );
    }
    let answer = client()
        .post(proxy.url("/v1/chat/openai"))
        .insert_header(("X-API-Key", TEST_KEY))
        .insert_header(("X-Max-Retries", "many"))
        .send_body(hi("m").to_string())
        .await
        .unwrap();
    assert_eq!(answer.status(), 400);
}

#[actix_web::test]
async fn a_retry_after_past_the_maximum_wait_is_answered_at_once() {
    let mock = in_turn(vec![
        || status(429, vec![("retry-after", "60")]),
        completion,
    ]);
    let proxy = start_proxy(with_retries(&mock, 2));
    let started = Instant::now();
    let answer = chat(&proxy, "openai", hi("m")).await;
    assert_eq!(answer.status, 429);
    assert_eq!(answer.header("retry-after"), Some("60"));
    assert_eq!(mock.requests().len(), 1);
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[actix_web::test]
async fn a_refused_connection_falls_back_to_a_second_provider() {
    let mock = Mock::start(|_| message());
    let proxy = start_proxy(Config {
        openai_base_url: refused_base_url(),
        max_retries: 1,
        ..config_for(&mock)
    });
    let answer = client()
        .post(proxy.url("/v1/chat/openai"))
        .insert_header(("X-API-Key", TEST_KEY))
        .insert_header(("X-API-Key-Anthropic", "sk-ant-fallback"))
        .insert_header(("X-Fallbacks", "anthropic/claude-3-5-haiku-20241022"))
        .send_body(hi("gpt-4o-mini").to_string())
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    assert_eq!(
        answer.headers().get("x-proxy-provider").unwrap(),
        "anthropic"
    );
    assert_eq!(
        answer.headers().get("x-proxy-model").unwrap(),
        "claude-3-5-haiku-20241022"
    );
    assert_eq!(answer.headers().get("x-proxy-attempts").unwrap(), "3");
    let mut answer = answer;
    let body: Value = answer.json().await.unwrap();
    assert_eq!(body["provider"], "anthropic");
    let upstream = mock.only_request();
    assert_eq!(upstream.header("x-api-key"), Some("sk-ant-fallback"));
    assert_eq!(upstream.json()["model"], "claude-3-5-haiku-20241022");
}

#[actix_web::test]
async fn a_fallback_without_its_key_is_skipped_and_the_error_says_so() {
    let mock = in_turn(vec![|| status(503, vec![])]);
    let proxy = start_proxy(config_for(&mock));
    let answer = client()
        .post(proxy.url("/v1/chat/completions"))
        .insert_header(("Authorization", format!("Bearer {TEST_KEY}")))
        .insert_header(("X-Fallbacks", "gemini/gemini-1.5-flash"))
        .send_body(
            json!({"model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}],
                          "fallbacks": ["anthropic/claude-3-5-haiku-20241022"]})
            .to_string(),
        )
        .await;
    let mut answer = answer.unwrap();
    assert_eq!(answer.status(), 503);
    let body: Value = answer.json().await.unwrap();
    let attempts = &body["error"]["attempts"];
    assert_eq!(
        attempts[0],
        json!({"provider": "openai", "model": "gpt-4o-mini", "status": 503})
    );
    assert_eq!(attempts[1]["provider"], "gemini");
    assert_eq!(
        attempts[1]["failure"],
        "skipped: no key (send it in X-API-Key-Gemini)"
    );
    assert_eq!(attempts[2]["provider"], "anthropic");
    assert!(!body.to_string().contains(TEST_KEY));
    let upstream = mock.only_request();
    assert!(
        upstream.json().get("fallbacks").is_none(),
        "our field never goes upstream"
    );
}

#[actix_web::test]
async fn an_alias_declares_its_own_fallbacks() {
    let mock = Mock::start(|request| {
        if request.path.ends_with("/messages") {
            status(529, vec![])
        } else {
            completion()
        }
    });
    let catalog = r#"{"aliases": {"smart": {"provider": "anthropic", "model": "claude-x",
                       "fallbacks": ["openai/gpt-4o"]}}}"#;
    let proxy = start_proxy(config_with_catalog(&mock, catalog));
    let answer = client()
        .post(proxy.url("/v1/chat/completions"))
        .insert_header(("Authorization", format!("Bearer {TEST_KEY}")))
        .insert_header(("X-API-Key-OpenAI", "sk-openai"))
        .send_body(hi("smart").to_string())
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    assert_eq!(answer.headers().get("x-proxy-provider").unwrap(), "openai");
    let mut answer = answer;
    let body: Value = answer.json().await.unwrap();
    assert_eq!(
        body["model"], "gpt-4o-mini-2024-07-18",
        "the front door's model says who answered"
    );
    let requests = mock.requests();
    assert_eq!(
        requests[1].header("authorization"),
        Some("Bearer sk-openai")
    );
}

#[actix_web::test]
async fn a_stream_cut_after_it_began_is_not_retried() {
    let (feed, body) = feed();
    let mock = Mock::streaming(body);
    let proxy = start_proxy(with_retries(&mock, 2));
    feed.send("data: {\"n\":1}\n\n");
    let mut response = client()
        .post(proxy.url("/v1/chat/openai"))
        .insert_header(("X-API-Key", TEST_KEY))
        .send_body(
            json!({"model": "m", "stream": true, "messages": [{"role": "user", "content": "hi"}]})
                .to_string(),
        )
        .await
        .unwrap();
    assert_eq!(
        response.next().await.unwrap().unwrap(),
        "data: {\"n\":1}\n\n"
    );
    feed.fail();
    let mut rest = Vec::new();
    while let Some(chunk) = response.next().await {
        rest.extend_from_slice(&chunk.unwrap());
    }
    assert!(String::from_utf8(rest)
        .unwrap()
        .starts_with("event: error\n"));
    assert_eq!(mock.requests().len(), 1);
}

#[actix_web::test]
async fn a_200_whose_first_event_is_an_error_is_retried_before_any_byte_is_sent() {
    fn overloaded() -> Reply {
        Reply::sse(vec![Bytes::from_static(
            b"event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n",
        )])
    }
    fn healthy() -> Reply {
        Reply::sse(vec![fixture("anthropic/stream.sse")])
    }
    let mock = in_turn(vec![overloaded, healthy]);
    let proxy = start_proxy(with_retries(&mock, 2));
    let answer = chat(
        &proxy,
        "anthropic",
        json!({"model": "c", "stream": true, "messages": [{"role": "user", "content": "hi"}]}),
    )
    .await;
    assert_eq!(answer.status, 200);
    assert_eq!(
        answer.body,
        fixture("anthropic/stream.sse"),
        "the stream is the healthy one, unchanged"
    );
    assert_eq!(answer.header("x-proxy-attempts"), Some("2"));
    assert_eq!(mock.requests().len(), 2);
}

#[actix_web::test]
async fn past_the_concurrency_limit_a_request_gets_a_fast_503() {
    let (feed, body) = feed();
    let mock = Mock::streaming(body);
    let proxy = start_proxy(Config {
        max_concurrent_requests: 1,
        ..config_for(&mock)
    });
    feed.send("data: {}\n\n");
    let mut held = client()
        .post(proxy.url("/v1/chat/openai"))
        .insert_header(("X-API-Key", TEST_KEY))
        .send_body(
            json!({"model": "m", "stream": true, "messages": [{"role": "user", "content": "hi"}]})
                .to_string(),
        )
        .await
        .unwrap();
    held.next().await.unwrap().unwrap();

    let turned_away = chat(&proxy, "openai", hi("m")).await;
    assert_eq!(turned_away.status, 503);
    assert_eq!(turned_away.header("retry-after"), Some("1"));
    assert_eq!(turned_away.json()["error"]["type"], "overloaded");
    assert_eq!(mock.requests().len(), 1);

    // The held stream's end frees its place.
    feed.finish();
    while held.next().await.is_some() {}
    drop(held);
    let health = client().get(proxy.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200, "health checks are never turned away");
}

/// A stream that holds its upstream connection until `feed` is dropped.
async fn hold_a_connection(proxy: &Proxy, feed: &Feed) -> awc::ClientResponse {
    feed.send("data: {}\n\n");
    let mut held = client()
        .post(proxy.url("/v1/chat/anthropic"))
        .insert_header(("X-API-Key", TEST_KEY))
        .send_body(
            json!({"model": "m", "stream": true, "messages": [{"role": "user", "content": "hi"}]})
                .to_string(),
        )
        .await
        .unwrap();
    held.next().await.unwrap().unwrap();
    held
}

#[actix_web::test]
async fn a_full_upstream_pool_is_a_503_once_the_pool_timeout_has_passed() {
    let (feed, body) = feed();
    let mock = Mock::streaming(body);
    let proxy = start_proxy(Config {
        workers: 1,
        http_max_connections: 1,
        http_pool_timeout: Duration::from_millis(300),
        ..config_for(&mock)
    });
    let _held = hold_a_connection(&proxy, &feed).await;
    let started = Instant::now();
    let turned_away = chat(&proxy, "openai", hi("m")).await;
    let waited = started.elapsed();
    assert_eq!(turned_away.status, 503);
    assert_eq!(turned_away.header("retry-after"), Some("1"));
    assert_eq!(turned_away.json()["error"]["type"], "pool_exhausted");
    assert!(waited >= Duration::from_millis(300), "waited {waited:?}");
    assert!(waited < Duration::from_secs(5), "never a hang: {waited:?}");
    assert_eq!(
        mock.requests().len(),
        1,
        "the second request never went upstream"
    );
    drop(feed);
}

#[actix_web::test]
async fn a_request_waits_for_a_connection_freed_within_the_pool_timeout() {
    let (feed, body) = feed();
    let mock = Mock::start({
        let body = std::sync::Mutex::new(Some(body));
        move |_| match body.lock().unwrap().take() {
            Some(body) => Reply::Stream(body),
            None => completion(),
        }
    });
    let proxy = start_proxy(Config {
        workers: 1,
        http_max_connections: 1,
        http_pool_timeout: Duration::from_secs(20),
        ..config_for(&mock)
    });
    let mut held = hold_a_connection(&proxy, &feed).await;
    let waiting = chat(&proxy, "openai", hi("m"));
    let release = async {
        actix_web::rt::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(
            mock.requests().len(),
            1,
            "the waiting request has not gone upstream yet"
        );
        feed.finish();
        while held.next().await.is_some() {}
    };
    let (answer, ()) = futures_util::future::join(waiting, release).await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    assert_eq!(mock.requests().len(), 2);
}

#[actix_web::test]
async fn a_silent_translated_stream_gets_keep_alive_comments() {
    let (feed, body) = feed();
    let mock = Mock::streaming(body);
    let proxy = start_proxy(Config {
        sse_heartbeat: Duration::from_millis(100),
        ..config_for(&mock)
    });
    feed.send("event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"model\":\"c\"}}\n\n");
    let mut response = client()
        .post(proxy.url("/v1/chat/completions"))
        .insert_header(("Authorization", format!("Bearer {TEST_KEY}")))
        .send_body(json!({"model": "anthropic/c", "stream": true, "messages": [{"role": "user", "content": "hi"}]}).to_string())
        .await
        .unwrap();
    response.next().await.unwrap().unwrap();
    let beat = response.next().await.unwrap().unwrap();
    assert_eq!(beat, ": keep-alive\n\n");
    drop(feed);
}

#[actix_web::test]
async fn pass_through_streams_get_no_heartbeat_unless_configured() {
    for (every, expect_beat) in [(Duration::ZERO, false), (Duration::from_millis(100), true)] {
        let (feed, body) = feed();
        let mock = Mock::streaming(body);
        let proxy = start_proxy(Config {
            passthrough_heartbeat: every,
            sse_heartbeat: Duration::from_millis(100),
            ..config_for(&mock)
        });
        feed.send("data: {\"n\":1}\n\n");
        let mut response = client()
            .post(proxy.url("/v1/chat/openai"))
            .insert_header(("X-API-Key", TEST_KEY))
            .send_body(json!({"model": "m", "stream": true, "messages": [{"role": "user", "content": "hi"}]}).to_string())
            .await
            .unwrap();
        response.next().await.unwrap().unwrap();
        let next = actix_web::rt::time::timeout(Duration::from_millis(600), response.next()).await;
        match next {
            Ok(Some(Ok(beat))) => {
                assert!(expect_beat, "no heartbeat unless configured, got {beat:?}");
                assert_eq!(beat, ": keep-alive\n\n");
            }
            Err(_) => assert!(!expect_beat, "a heartbeat within 600 ms"),
            other => panic!("unexpected {other:?}"),
        }
        drop(feed);
    }
}

#[actix_web::test]
async fn a_slow_reader_holds_back_the_upstream_instead_of_filling_memory() {
    let produced = Arc::new(AtomicUsize::new(0));
    let counter = produced.clone();
    // 1 GiB on offer, made only as fast as it is read.
    let mock = Mock::start(move |_| Reply::Lazy {
        chunk: Bytes::from(vec![b'x'; 64 * 1024]),
        count: 16 * 1024,
        produced: counter.clone(),
    });
    let proxy = start_proxy(config_for(&mock));
    let mut response = client()
        .post(proxy.url("/v1/chat/openai"))
        .insert_header(("X-API-Key", TEST_KEY))
        .send_body(
            json!({"model": "m", "stream": true, "messages": [{"role": "user", "content": "hi"}]})
                .to_string(),
        )
        .await
        .unwrap();
    let mut read = 0;
    while read < 1024 * 1024 {
        read += response.next().await.unwrap().unwrap().len();
    }
    // The reader stalls; give the upstream every chance to run ahead.
    actix_web::rt::time::sleep(Duration::from_secs(1)).await;
    let ahead = produced.load(Ordering::Relaxed) - read;
    // Only socket buffers (a few tens of MiB at most on loopback) may hold what was made.
    assert!(
        ahead < 64 * 1024 * 1024,
        "the upstream ran {ahead} bytes ahead of the reader"
    );
    drop(response);
}

/// A listener whose accept queue is full: connecting to it hangs, as to a host that drops SYNs.
fn unanswered_base_url() -> (String, Vec<std::net::TcpStream>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let mut held = Vec::new();
    while let Ok(stream) = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
        held.push(stream);
        assert!(held.len() < 10_000, "the accept queue never filled");
    }
    std::mem::forget(listener);
    (format!("http://{addr}/v1"), held)
}

#[actix_web::test]
async fn connecting_is_bounded_by_its_own_timeout() {
    let (base, _held) = unanswered_base_url();
    let proxy = start_proxy(Config {
        connect_timeout: Duration::from_millis(300),
        http_timeout: Duration::from_secs(30),
        ..config_with_base(&base)
    });
    let started = Instant::now();
    let answer = chat(&proxy, "openai", hi("m")).await;
    assert_eq!(answer.status, 504, "{:?}", answer.body);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}

#[actix_web::test]
async fn a_flood_of_malformed_requests_does_not_stop_valid_ones() {
    let mock = Mock::start(|_| completion());
    let proxy = start_proxy(Config {
        max_body_bytes: 1024,
        ..config_for(&mock)
    });
    let bad_bodies: [&[u8]; 5] = [
        b"{",
        b"not json at all",
        br#"{"model": 1}"#,
        br#"{"model":"m","messages":[{"role":"robot","content":"x"}]}"#,
        &[b'x'; 4096],
    ];
    let flood = (0..400).map(|i| {
        let url = proxy.url("/v1/chat/openai");
        let body = Bytes::from_static(bad_bodies[i % bad_bodies.len()]);
        async move {
            let response = client()
                .post(url)
                .insert_header(("X-API-Key", TEST_KEY))
                .send_body(body)
                .await
                .unwrap();
            response.status().as_u16()
        }
    });
    let valid = (0..40).map(|_| async { chat(&proxy, "openai", hi("m")).await.status });
    let (bad, good) = futures_util::future::join(
        futures_util::future::join_all(flood),
        futures_util::future::join_all(valid),
    )
    .await;
    assert!(bad.iter().all(|s| *s == 400 || *s == 413), "{bad:?}");
    assert!(good.iter().all(|s| *s == 200), "{good:?}");
    assert_eq!(
        mock.requests().len(),
        40,
        "malformed requests never reach the upstream"
    );
}

#[actix_web::test]
async fn one_callers_failures_never_change_how_anothers_requests_are_treated() {
    // The upstream rate-limits one key and serves the other.
    let mock = Mock::start(|request| {
        if request.header("authorization") == Some("Bearer sk-limited") {
            status(429, vec![])
        } else {
            completion()
        }
    });
    let proxy = start_proxy(with_retries(&mock, 1));
    for _ in 0..5 {
        let answer = post(
            &proxy,
            "/v1/chat/openai",
            Some("sk-limited"),
            hi("m").to_string(),
        )
        .await;
        assert_eq!(answer.status, 429);
        assert_eq!(answer.header("x-proxy-attempts"), Some("2"));
    }
    let answer = post(
        &proxy,
        "/v1/chat/openai",
        Some("sk-fine"),
        hi("m").to_string(),
    )
    .await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.header("x-proxy-attempts"), Some("1"));
    assert_eq!(
        mock.requests().len(),
        11,
        "no cooldown, no circuit opened by another key"
    );
}
