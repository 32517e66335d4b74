//! The response cache: asked for per request or per group, never across tenants, never for
//! errors, bypassed on the caller's `Cache-Control`, and free when it answers. Streams are
//! recorded as they pass and replayed byte for byte, in the door's format; a stream too big,
//! left by its caller or broken upstream is not kept.

use std::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use actix_web::web::Bytes;
use futures_util::StreamExt;
use llm_proxy::Config;
use serde_json::{json, Value};

use crate::common::*;

fn ok() -> Mock {
    Mock::always(200, "application/json", fixture("openai/completion.json"))
}

async fn ask(proxy: &Proxy, key: &str, extra: &[(&str, &str)], model: &str) -> Answer {
    let bearer = format!("Bearer {key}");
    let mut headers = vec![("Authorization", bearer.as_str())];
    headers.extend_from_slice(extra);
    post_with(
        proxy,
        "/v1/chat/completions",
        &headers,
        hi(model).to_string(),
    )
    .await
}

const USE: (&str, &str) = ("X-Proxy-Cache", "use");

#[actix_web::test]
async fn a_second_identical_request_is_answered_from_the_cache() {
    let mock = ok();
    let proxy = start_proxy(config_for(&mock));
    let first = ask(&proxy, TEST_KEY, &[USE], "openai/gpt-4o-mini").await;
    assert_eq!(first.status, 200, "{:?}", first.body);
    assert_eq!(first.header("x-proxy-cache"), Some("MISS"));
    let second = ask(&proxy, TEST_KEY, &[USE], "openai/gpt-4o-mini").await;
    assert_eq!(second.status, 200);
    assert_eq!(second.header("x-proxy-cache"), Some("HIT"));
    assert_eq!(second.body, first.body);
    assert_eq!(second.header("x-proxy-provider"), Some("openai"));
    assert_eq!(second.header("x-proxy-cost-usd"), Some("0"));
    assert_eq!(mock.requests().len(), 1, "the hit went nowhere");

    // Another body is another request.
    let other = post_with(
        &proxy,
        "/v1/chat/completions",
        &[("Authorization", &format!("Bearer {TEST_KEY}")), USE],
        json!({"model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": "bye"}]})
            .to_string(),
    )
    .await;
    assert_eq!(other.header("x-proxy-cache"), Some("MISS"));
    let metrics = metrics_text(&proxy).await;
    assert!(
        has_line(&metrics, "llm_proxy_cache_hits_total 1"),
        "{metrics}"
    );
    assert!(
        has_line(&metrics, "llm_proxy_cache_misses_total 2"),
        "{metrics}"
    );
}

#[actix_web::test]
async fn one_tenant_is_never_served_anothers_answer() {
    let mock = ok();
    let proxy = start_proxy(config_for(&mock));
    let mine = ask(&proxy, "sk-tenant-one", &[USE], "openai/gpt-4o-mini").await;
    assert_eq!(mine.header("x-proxy-cache"), Some("MISS"));
    let theirs = ask(&proxy, "sk-tenant-two", &[USE], "openai/gpt-4o-mini").await;
    assert_eq!(theirs.header("x-proxy-cache"), Some("MISS"));
    assert_eq!(mock.requests().len(), 2);
    let mine_again = ask(&proxy, "sk-tenant-one", &[USE], "openai/gpt-4o-mini").await;
    assert_eq!(mine_again.header("x-proxy-cache"), Some("HIT"));
}

#[actix_web::test]
async fn without_asking_nothing_is_cached_and_no_cache_bypasses_it() {
    let mock = ok();
    let proxy = start_proxy(config_for(&mock));
    for _ in 0..2 {
        let answer = ask(&proxy, TEST_KEY, &[], "openai/gpt-4o-mini").await;
        assert_eq!(answer.header("x-proxy-cache"), None);
    }
    assert_eq!(mock.requests().len(), 2);
    ask(&proxy, TEST_KEY, &[USE], "openai/gpt-4o-mini").await;
    for directive in ["no-cache", "no-store", "max-age=0, no-store"] {
        let answer = ask(
            &proxy,
            TEST_KEY,
            &[USE, ("Cache-Control", directive)],
            "openai/gpt-4o-mini",
        )
        .await;
        assert_eq!(
            answer.header("x-proxy-cache"),
            Some("BYPASS"),
            "{directive}"
        );
    }
    assert_eq!(mock.requests().len(), 6, "every bypass went upstream");
}

#[actix_web::test]
async fn errors_are_never_cached() {
    let calls = Arc::new(AtomicUsize::new(0));
    let mock = {
        let calls = calls.clone();
        Mock::start(move |_| match calls.fetch_add(1, Ordering::SeqCst) {
            0 => Reply::json(503, r#"{"error":{"message":"overloaded"}}"#),
            _ => Reply::json(200, fixture("openai/completion.json")),
        })
    };
    let proxy = start_proxy(config_for(&mock));
    let failed = ask(&proxy, TEST_KEY, &[USE], "openai/gpt-4o-mini").await;
    assert_eq!(failed.status, 503);
    let answered = ask(&proxy, TEST_KEY, &[USE], "openai/gpt-4o-mini").await;
    assert_eq!(answered.status, 200);
    assert_eq!(answered.header("x-proxy-cache"), Some("MISS"));
    let again = ask(&proxy, TEST_KEY, &[USE], "openai/gpt-4o-mini").await;
    assert_eq!(again.header("x-proxy-cache"), Some("HIT"));
}

#[actix_web::test]
async fn a_group_with_a_cache_caches_without_being_asked() {
    let mock = ok();
    let catalog = r#"{"groups": {"cached": {"cache": {"ttl_seconds": 60},
        "deployments": [{"provider": "openai", "model": "gpt-4o-mini"}]}}}"#;
    let proxy = start_proxy(config_with_catalog(&mock, catalog));
    assert_eq!(
        ask(&proxy, TEST_KEY, &[], "cached")
            .await
            .header("x-proxy-cache"),
        Some("MISS")
    );
    let hit = ask(&proxy, TEST_KEY, &[], "cached").await;
    assert_eq!(hit.header("x-proxy-cache"), Some("HIT"));
    assert_eq!(hit.header("x-proxy-group"), Some("cached"));
    assert_eq!(mock.requests().len(), 1);
}

#[actix_web::test]
async fn a_hit_costs_nothing_and_its_usage_record_says_cached() {
    let mock = ok();
    let accounted = start_accounted(config_for(&mock)).await;
    for _ in 0..2 {
        ask(&accounted.proxy, TEST_KEY, &[USE], "openai/gpt-4o-mini").await;
    }
    let keyring = &accounted.accounts.keyring;
    keyring.flush().await;
    let mut records = keyring.store().usage_since(0, i64::MAX, 10).await.unwrap();
    records.sort_by_key(|r| r.time_ms);
    assert_eq!(records.len(), 2);
    assert!(!records[0].cached && records[0].cost_usd.unwrap() > 0.0);
    assert!(records[1].cached, "{records:?}");
    assert_eq!(records[1].cost_usd, Some(0.0));
}

/// The headers each door's callers send: the OpenAI door's bearer token, the path route's
/// `X-API-Key`, Anthropic's `x-api-key` and version.
fn door_headers(path: &str, key: &'static str) -> Vec<(&'static str, String)> {
    match path {
        "/v1/chat/completions" => vec![("Authorization", format!("Bearer {key}"))],
        "/v1/messages" => vec![
            ("x-api-key", key.to_owned()),
            ("anthropic-version", "2023-06-01".to_owned()),
        ],
        _ => vec![("X-API-Key", key.to_owned())],
    }
}

/// A stream request to `path` with the cache asked for, read to its end.
async fn stream(proxy: &Proxy, path: &str, key: &'static str, body: &Value) -> Answer {
    let headers = door_headers(path, key);
    let mut headers: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
    headers.push(USE);
    post_with(proxy, path, &headers, body.to_string()).await
}

/// Opens the same stream request and returns once its head is in, for a caller that reads
/// what it likes.
async fn open(proxy: &Proxy, path: &str, body: &Value) -> awc::ClientResponse {
    let mut request = client().post(proxy.url(path));
    for header in door_headers(path, TEST_KEY) {
        request = request.insert_header(header);
    }
    request
        .insert_header(USE)
        .send_body(body.to_string())
        .await
        .expect("the proxy answers")
}

/// Every event of an SSE body as (event name, data as JSON; `[DONE]` as a string), failing on
/// anything that is not whole events.
fn events(body: &[u8]) -> Vec<(Option<String>, Value)> {
    let text = std::str::from_utf8(body).expect("UTF-8 events");
    assert!(text.ends_with("\n\n"), "the stream ends with a whole event");
    let mut events = Vec::new();
    for event in text.split("\n\n").filter(|event| !event.is_empty()) {
        let mut name = None;
        let mut data = String::new();
        for line in event.lines().filter(|line| !line.starts_with(':')) {
            if let Some(value) = line.strip_prefix("event: ") {
                name = Some(value.to_owned());
            } else if let Some(value) = line.strip_prefix("data: ") {
                data.push_str(value);
            } else {
                panic!("not an SSE line: {line:?}");
            }
        }
        let data = serde_json::from_str(&data).unwrap_or(Value::String(data));
        events.push((name, data));
    }
    events
}

/// OpenAI's chunks, ending with `[DONE]`.
fn assert_openai_chunks(body: &[u8]) {
    let events = events(body);
    let (last, chunks) = events.split_last().expect("events");
    assert_eq!(last.1, "[DONE]", "{events:?}");
    for (name, chunk) in chunks {
        assert_eq!(*name, None);
        assert_eq!(chunk["object"], "chat.completion.chunk", "{chunk}");
    }
}

/// Anthropic's events, each named as its data's type, from `message_start` to `message_stop`.
fn assert_anthropic_events(body: &[u8]) {
    let events = events(body);
    for (name, data) in &events {
        assert_eq!(name.as_deref(), data["type"].as_str(), "{data}");
    }
    assert_eq!(events[0].1["type"], "message_start");
    assert_eq!(events.last().unwrap().1["type"], "message_stop");
}

/// Streams `body` to `path` twice: the first a miss that went upstream, the second a hit
/// that did not, byte for byte the first, as an event stream. Returns the replay.
async fn replayed(mock: &Mock, proxy: &Proxy, path: &str, body: Value) -> Bytes {
    let first = stream(proxy, path, TEST_KEY, &body).await;
    assert_eq!(first.status, 200, "{:?}", first.body);
    assert_eq!(first.header("x-proxy-cache"), Some("MISS"));
    let second = stream(proxy, path, TEST_KEY, &body).await;
    assert_eq!(second.status, 200);
    assert_eq!(second.header("x-proxy-cache"), Some("HIT"));
    assert_eq!(second.header("content-type"), Some("text/event-stream"));
    assert_eq!(second.header("x-proxy-cost-usd"), Some("0"));
    assert_eq!(
        second.header("x-proxy-provider"),
        first.header("x-proxy-provider")
    );
    assert_eq!(
        second.header("x-proxy-model"),
        first.header("x-proxy-model")
    );
    assert_eq!(
        second.body, first.body,
        "the replay is the stream as it was sent"
    );
    assert_eq!(mock.requests().len(), 1, "the hit went nowhere");
    second.body
}

/// A mock that streams `fixture` in a few chunks to every request.
fn streams(fixture_path: &'static str) -> Mock {
    let sse = fixture(fixture_path);
    let chunks = split_at(&sse, &[7, sse.len() / 2]);
    Mock::start(move |_| Reply::sse(chunks.clone()))
}

#[actix_web::test]
async fn a_path_routed_stream_is_replayed_byte_for_byte() {
    let mock = streams("openai/stream.sse");
    let proxy = start_proxy(config_for(&mock));
    let replay = replayed(&mock, &proxy, "/v1/chat/openai", streamed("gpt-4o-mini")).await;
    assert_eq!(replay, fixture("openai/stream.sse"));
    assert_openai_chunks(&replay);
}

#[actix_web::test]
async fn an_openai_door_stream_is_replayed_byte_for_byte() {
    let mock = streams("openai/parallel_tool_calls.sse");
    let proxy = start_proxy(config_for(&mock));
    let replay = replayed(
        &mock,
        &proxy,
        "/v1/chat/completions",
        streamed("openai/gpt-4o"),
    )
    .await;
    assert_eq!(replay, fixture("openai/parallel_tool_calls.sse"));
    assert_openai_chunks(&replay);
}

#[actix_web::test]
async fn an_anthropic_door_stream_is_replayed_byte_for_byte() {
    let mock = streams("anthropic/tool_use_stream.sse");
    let proxy = start_proxy(config_for(&mock));
    let body = json!({"model": "claude-sonnet-4-5", "max_tokens": 256, "stream": true,
                      "messages": [{"role": "user", "content": "hi"}]});
    let replay = replayed(&mock, &proxy, "/v1/messages", body).await;
    assert_eq!(replay, fixture("anthropic/tool_use_stream.sse"));
    assert_anthropic_events(&replay);
}

#[actix_web::test]
async fn a_translated_stream_is_replayed_in_the_doors_format() {
    // The OpenAI door before an Anthropic upstream: the replay is OpenAI's chunks.
    let mock = streams("anthropic/stream.sse");
    let proxy = start_proxy(config_for(&mock));
    let mut body = streamed("anthropic/claude-3-5-haiku-latest");
    body["stream_options"] = json!({"include_usage": true});
    let replay = replayed(&mock, &proxy, "/v1/chat/completions", body).await;
    assert_openai_chunks(&replay);
    let text: String = events(&replay)
        .iter()
        .filter_map(|(_, chunk)| chunk["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, "¡Hola! 👋 ¿Qué tal?");

    // The Anthropic door before an OpenAI upstream: Anthropic's events.
    let mock = streams("openai/stream.sse");
    let proxy = start_proxy(config_for(&mock));
    let body = json!({"model": "openai/gpt-4o-mini", "max_tokens": 256, "stream": true,
                      "messages": [{"role": "user", "content": "hi"}]});
    let replay = replayed(&mock, &proxy, "/v1/messages", body).await;
    assert_anthropic_events(&replay);
}

#[actix_web::test]
async fn a_stream_over_the_entry_bound_passes_whole_and_is_not_kept() {
    let small = fixture("openai/stream.sse");
    let big = fixture("openai/parallel_tool_calls.sse");
    assert!(small.len() <= 2048 && big.len() > 2048);
    let (small_chunks, big_chunks) = (split_at(&small, &[100]), split_at(&big, &[100, 2000]));
    let mock = Mock::start(move |request| match request.json()["model"] == "big" {
        true => Reply::sse(big_chunks.clone()),
        false => Reply::sse(small_chunks.clone()),
    });
    // An entry may be an eighth of the cache: 2 KiB.
    let config = Config {
        cache_max_bytes: 16 * 1024,
        ..config_for(&mock)
    };
    let proxy = start_proxy(config);
    for _ in 0..2 {
        let answer = stream(&proxy, "/v1/chat/openai", TEST_KEY, &streamed("big")).await;
        assert_eq!(answer.header("x-proxy-cache"), Some("MISS"));
        assert_eq!(answer.body, big, "recording stopped, the stream did not");
    }
    assert_eq!(mock.requests().len(), 2, "the big stream was not kept");
    // Within the bound, the same proxy keeps one.
    stream(&proxy, "/v1/chat/openai", TEST_KEY, &streamed("small")).await;
    let hit = stream(&proxy, "/v1/chat/openai", TEST_KEY, &streamed("small")).await;
    assert_eq!(hit.header("x-proxy-cache"), Some("HIT"));
    assert_eq!(hit.body, small);
}

/// A mock whose first request gets the stream the test feeds, and every later one `fixture`
/// whole.
fn first_fed_then(fixture_path: &'static str) -> (Feed, Mock) {
    let (feed, body) = feed();
    let body = Mutex::new(Some(body));
    let mock = Mock::start(move |_| match body.lock().unwrap().take() {
        Some(body) => Reply::Stream(body),
        None => Reply::sse(vec![fixture(fixture_path)]),
    });
    (feed, mock)
}

#[actix_web::test]
async fn a_stream_its_caller_left_is_not_kept() {
    let sse = fixture("openai/stream.sse");
    let (mut feed, mock) = first_fed_then("openai/stream.sse");
    let proxy = start_proxy(config_for(&mock));
    let body = streamed("openai/gpt-4o-mini");
    feed.send(sse.slice(..sse.len() / 2));
    let mut response = open(&proxy, "/v1/chat/completions", &body).await;
    assert_eq!(response.headers().get("x-proxy-cache").unwrap(), "MISS");
    response.next().await.unwrap().unwrap();
    drop(response);
    assert!(feed.dropped_within(Duration::from_secs(5)).await);

    let whole = stream(&proxy, "/v1/chat/completions", TEST_KEY, &body).await;
    assert_eq!(
        whole.header("x-proxy-cache"),
        Some("MISS"),
        "half a stream was not kept"
    );
    assert_eq!(whole.body, sse);
    let hit = stream(&proxy, "/v1/chat/completions", TEST_KEY, &body).await;
    assert_eq!(hit.header("x-proxy-cache"), Some("HIT"));
    assert_eq!(hit.body, sse);
    assert_eq!(mock.requests().len(), 2);
}

#[actix_web::test]
async fn a_stream_the_upstream_broke_is_not_kept() {
    let sse = fixture("anthropic/stream.sse");
    let (feed, mock) = first_fed_then("anthropic/stream.sse");
    let proxy = start_proxy(config_for(&mock));
    // Translated for the OpenAI door: the decoder and the connection both can break it.
    let body = streamed("anthropic/claude-3-5-haiku-latest");
    feed.send(sse.slice(..sse.len() / 2));
    let mut response = open(&proxy, "/v1/chat/completions", &body).await;
    response.next().await.unwrap().unwrap();
    feed.fail();
    let cut = read_to_end(&mut response).await;
    assert!(
        String::from_utf8_lossy(&cut).contains("\"error\""),
        "the caller was told: {cut:?}"
    );

    let whole = stream(&proxy, "/v1/chat/completions", TEST_KEY, &body).await;
    assert_eq!(
        whole.header("x-proxy-cache"),
        Some("MISS"),
        "a cut stream was not kept"
    );
    assert_openai_chunks(&whole.body);
    let hit = stream(&proxy, "/v1/chat/completions", TEST_KEY, &body).await;
    assert_eq!(hit.header("x-proxy-cache"), Some("HIT"));
    assert_eq!(hit.body, whole.body);
}

#[actix_web::test]
async fn a_passed_through_stream_that_ends_in_an_error_event_is_not_kept() {
    // Anthropic's overload error mid-stream, passed through to the Anthropic door as it came.
    let start = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"type\":\"message\",\"role\":\"assistant\",\"content\":[],\"model\":\"claude-x\",\"usage\":{\"input_tokens\":3,\"output_tokens\":1}}}\n\n";
    let errored = [
        Bytes::from_static(start.as_bytes()),
        fixture("anthropic/error.sse"),
    ];
    let mock = Mock::start(move |_| Reply::sse(errored.to_vec()));
    let proxy = start_proxy(config_for(&mock));
    let body = json!({"model": "claude-x", "max_tokens": 256, "stream": true,
                      "messages": [{"role": "user", "content": "hi"}]});
    for _ in 0..2 {
        let answer = stream(&proxy, "/v1/messages", TEST_KEY, &body).await;
        assert_eq!(answer.status, 200);
        assert_eq!(answer.header("x-proxy-cache"), Some("MISS"));
        assert!(String::from_utf8_lossy(&answer.body).contains("overloaded_error"));
    }
    assert_eq!(mock.requests().len(), 2);
}

#[actix_web::test]
async fn one_tenant_is_never_served_anothers_stream() {
    let mock = streams("openai/stream.sse");
    let proxy = start_proxy(config_for(&mock));
    let body = streamed("openai/gpt-4o-mini");
    for path in ["/v1/chat/completions", "/v1/chat/openai"] {
        let body = match path {
            "/v1/chat/openai" => streamed("gpt-4o-mini"),
            _ => body.clone(),
        };
        let mine = stream(&proxy, path, "sk-tenant-one", &body).await;
        assert_eq!(mine.header("x-proxy-cache"), Some("MISS"));
        let theirs = stream(&proxy, path, "sk-tenant-two", &body).await;
        assert_eq!(theirs.header("x-proxy-cache"), Some("MISS"), "{path}");
        let mine_again = stream(&proxy, path, "sk-tenant-one", &body).await;
        assert_eq!(mine_again.header("x-proxy-cache"), Some("HIT"));
    }
    assert_eq!(mock.requests().len(), 4);
}

#[actix_web::test]
async fn a_stream_hit_costs_nothing_and_its_miss_is_counted_as_before() {
    let mock = streams("openai/parallel_tool_calls.sse");
    let accounted = start_accounted(config_for(&mock)).await;
    let mut body = streamed("openai/gpt-4o");
    body["stream_options"] = json!({"include_usage": true});
    replayed(&mock, &accounted.proxy, "/v1/chat/completions", body).await;
    let keyring = &accounted.accounts.keyring;
    keyring.flush().await;
    let mut records = keyring.store().usage_since(0, i64::MAX, 10).await.unwrap();
    records.sort_by_key(|r| r.time_ms);
    assert_eq!(records.len(), 2, "{records:?}");
    // The stream's usage chunk: 86 prompt and 52 completion tokens of gpt-4o, $0.000735.
    let miss = &records[0];
    assert!(!miss.cached);
    assert_eq!((miss.input_tokens, miss.output_tokens), (86, 52));
    assert!((miss.cost_usd.unwrap() - 0.000735).abs() < 1e-9, "{miss:?}");
    let hit = &records[1];
    assert!(hit.cached, "{records:?}");
    assert_eq!(hit.cost_usd, Some(0.0));
    assert_eq!((hit.input_tokens, hit.output_tokens), (0, 0));
    let metrics = metrics_text(&accounted.proxy).await;
    assert!(
        has_line(&metrics, "llm_proxy_cache_hits_total 1"),
        "{metrics}"
    );
}
