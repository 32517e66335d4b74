//! Errors: the caller's mistakes (4xx, checked in order, before any upstream call), the
//! upstream's answers (its status and body), and the upstream unreachable (502) or silent (504).

use std::time::Duration;

use actix_web::web::Bytes;
use serde_json::{json, Value};

use crate::common::*;

fn assert_error(answer: &Answer, status: u16, kind: &str, provider: Value) -> Value {
    assert_eq!(answer.status, status, "{:?}", answer.body);
    assert_eq!(answer.header("content-type"), Some("application/json"));
    let body = answer.json();
    assert_eq!(body["error"]["type"], kind, "{body}");
    assert_eq!(body["error"]["provider"], provider, "{body}");
    assert!(body["error"]["message"]
        .as_str()
        .is_some_and(|m| !m.is_empty()));
    assert!(!String::from_utf8_lossy(&answer.body).contains(TEST_KEY));
    body
}

#[actix_web::test]
async fn healthz_answers_ok() {
    let proxy = start_proxy(config_with_base(&refused_base_url()));
    let answer = client()
        .get(proxy.url("/healthz"))
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await;
    assert_eq!(answer.unwrap(), json!({"status": "ok"}));
}

#[actix_web::test]
async fn an_unknown_provider_is_404_naming_the_known_ones_and_calls_nothing() {
    let mock = Mock::always(200, "application/json", fixture("openai/completion.json"));
    let proxy = start_proxy(config_for(&mock));
    let answer = chat(&proxy, "mistery", hi("m")).await;
    let body = assert_error(&answer, 404, "not_found", Value::Null);
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("mistery") && message.contains("anthropic, gemini, ollama, openai"),
        "{message}"
    );
    assert!(mock.requests().is_empty());
}

#[actix_web::test]
async fn a_declared_provider_has_its_own_path_and_near_misses_are_unknown() {
    let mock = Mock::always(200, "application/json", fixture("openai/completion.json"));
    let base = mock.base_url();
    let catalog = format!(
        r#"{{"providers": {{"local.vllm-2": {{"kind": "openai", "base_url": "{base}"}}}}}}"#
    );
    let proxy = start_proxy(config_with_catalog(&mock, &catalog));
    let answer = chat(&proxy, "local.vllm-2", hi("m")).await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    assert_eq!(answer.json()["provider"], "local.vllm-2");
    for near_miss in ["local", "localXvllm-2", "local.vllm-2x", "LOCAL.VLLM-2"] {
        let answer = chat(&proxy, near_miss, hi("m")).await;
        let body = assert_error(&answer, 404, "not_found", Value::Null);
        assert!(body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("local.vllm-2"));
    }
    let response = client()
        .get(proxy.url("/v1/chat/local.vllm-2"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 405);
    assert_eq!(mock.requests().len(), 1);
}

#[actix_web::test]
async fn a_missing_or_empty_key_is_401_and_calls_nothing() {
    let mock = Mock::always(200, "application/json", fixture("openai/completion.json"));
    let proxy = start_proxy(config_for(&mock));
    let missing = post(&proxy, "/v1/chat/openai", None, hi("m").to_string()).await;
    assert_error(&missing, 401, "authentication", json!("openai"));
    let empty = post(&proxy, "/v1/chat/anthropic", Some(""), hi("m").to_string()).await;
    assert_error(&empty, 401, "authentication", json!("anthropic"));
    let blank = post(&proxy, "/v1/chat/openai", Some("   "), hi("m").to_string()).await;
    assert_error(&blank, 401, "authentication", json!("openai"));
    assert!(mock.requests().is_empty());
}

#[actix_web::test]
async fn checks_run_in_order_provider_key_size_shape() {
    let proxy = start_proxy(llm_proxy::Config {
        max_body_bytes: 100,
        ..config_with_base(&refused_base_url())
    });
    let too_large_and_invalid = "x".repeat(200);
    // Unknown provider beats a missing key.
    let answer = post(&proxy, "/v1/chat/nope", None, too_large_and_invalid.clone()).await;
    assert_eq!(answer.status, 404);
    // A missing key beats a body that is too large.
    let answer = post(
        &proxy,
        "/v1/chat/openai",
        None,
        too_large_and_invalid.clone(),
    )
    .await;
    assert_eq!(answer.status, 401);
    // A body that is too large beats one that is invalid.
    let answer = post(
        &proxy,
        "/v1/chat/openai",
        Some(TEST_KEY),
        too_large_and_invalid,
    )
    .await;
    assert_error(&answer, 413, "payload_too_large", json!("openai"));
    let answer = post(&proxy, "/v1/chat/openai", Some(TEST_KEY), "x").await;
    assert_error(&answer, 400, "invalid_request", json!("openai"));
}

#[actix_web::test]
async fn a_body_over_the_limit_is_413_even_without_a_content_length() {
    let mock = Mock::always(200, "application/json", fixture("openai/completion.json"));
    let proxy = start_proxy(llm_proxy::Config {
        max_body_bytes: 1000,
        ..config_for(&mock)
    });
    let big = json!({"model": "m", "messages": [{"role": "user", "content": "y".repeat(2000)}]});
    let chunks = futures_util::stream::iter(
        split_at(&Bytes::from(big.to_string()), &[500, 1000, 1500])
            .into_iter()
            .map(Ok::<_, std::io::Error>),
    );
    let mut response = client()
        .post(proxy.url("/v1/chat/openai"))
        .insert_header(("X-API-Key", TEST_KEY))
        .send_stream(chunks)
        .await
        .unwrap();
    assert_eq!(response.status(), 413);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["type"], "payload_too_large");
    assert!(mock.requests().is_empty());
}

#[actix_web::test]
async fn bad_bodies_are_400_naming_the_field() {
    let mock = Mock::always(200, "application/json", fixture("openai/completion.json"));
    let proxy = start_proxy(config_for(&mock));
    let cases = [
        ("{", "not valid JSON"),
        (
            r#"{"messages":[{"role":"user","content":"hi"}]}"#,
            "`model`",
        ),
        (r#"{"model":"m","messages":[]}"#, "`messages`"),
        (
            r#"{"model":"m","messages":[{"role":"robot","content":"hi"}]}"#,
            "`messages[0].role`",
        ),
        (
            r#"{"model":"m","messages":[{"role":"user","content":[{"type":"video","url":"x"}]}]}"#,
            "`messages[0].content[0]`",
        ),
        (
            r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"max_tokens":0}"#,
            "`max_tokens`",
        ),
        (
            r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"stream":"yes"}"#,
            "`stream`",
        ),
        (
            r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"stop":5}"#,
            "`stop`",
        ),
    ];
    for (body, field) in cases {
        let answer = post(&proxy, "/v1/chat/openai", Some(TEST_KEY), body).await;
        let error = assert_error(&answer, 400, "invalid_request", json!("openai"));
        let message = error["error"]["message"].as_str().unwrap();
        assert!(message.contains(field), "{body}: {message}");
    }
    assert!(mock.requests().is_empty());
}

#[actix_web::test]
async fn unknown_routes_and_wrong_methods_get_json_errors() {
    let proxy = start_proxy(config_with_base(&refused_base_url()));
    let answer = post(&proxy, "/v2/nothing", Some(TEST_KEY), "{}").await;
    assert_error(&answer, 404, "not_found", Value::Null);
    let mut response = client()
        .get(proxy.url("/v1/chat/openai"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 405);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["type"], "method_not_allowed");
    let response = client().post(proxy.url("/healthz")).send().await.unwrap();
    assert_eq!(response.status(), 405);
}

#[actix_web::test]
async fn an_upstream_429_keeps_its_status_body_and_rate_limit_headers() {
    let mock = Mock::start(|_| {
        Reply::Full {
        status: 429,
        content_type: "application/json",
        headers: vec![
            ("retry-after", "20"),
            ("x-ratelimit-remaining-tokens", "0"),
            ("anthropic-ratelimit-requests-reset", "2026-11-22T04:00:00Z"),
            ("request-id", "req_abc"),
        ],
        body: Bytes::from_static(
            br#"{"type":"error","error":{"type":"rate_limit_error","message":"Number of requests has exceeded your rate limit"}}"#,
        ),
    }
    });
    let proxy = start_proxy(config_for(&mock));
    let answer = chat(&proxy, "anthropic", hi("c")).await;
    let body = assert_error(&answer, 429, "upstream_error", json!("anthropic"));
    assert_eq!(body["error"]["upstream_status"], 429);
    assert_eq!(
        body["error"]["upstream"]["error"]["type"],
        "rate_limit_error"
    );
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("exceeded your rate limit"));
    assert_eq!(answer.header("retry-after"), Some("20"));
    assert_eq!(answer.header("x-ratelimit-remaining-tokens"), Some("0"));
    assert_eq!(
        answer.header("anthropic-ratelimit-requests-reset"),
        Some("2026-11-22T04:00:00Z")
    );
    assert_eq!(answer.header("request-id"), Some("req_abc"));
}

#[actix_web::test]
async fn an_upstream_529_with_a_text_body_is_passed_on_as_text() {
    let mock = Mock::always(529, "text/plain", "Overloaded");
    let proxy = start_proxy(config_for(&mock));
    let answer = chat(&proxy, "anthropic", hi("c")).await;
    let body = assert_error(&answer, 529, "upstream_error", json!("anthropic"));
    assert_eq!(body["error"]["upstream"], "Overloaded");
}

#[actix_web::test]
async fn an_upstream_error_that_quotes_the_key_has_it_masked() {
    let quoted = format!(
        r#"{{"error":{{"message":"Incorrect API key provided: {TEST_KEY}.","type":"invalid_request_error","code":"invalid_api_key"}}}}"#
    );
    let mock = Mock::always(401, "application/json", quoted);
    let proxy = start_proxy(config_for(&mock));
    let answer = chat(&proxy, "openai", hi("m")).await;
    let body = assert_error(&answer, 401, "upstream_error", json!("openai"));
    assert_eq!(
        body["error"]["upstream"]["error"]["message"],
        "Incorrect API key provided: [redacted]."
    );
}

#[actix_web::test]
async fn a_refused_connection_is_502() {
    let proxy = start_proxy(config_with_base(&refused_base_url()));
    let answer = chat(&proxy, "openai", hi("m")).await;
    let body = assert_error(&answer, 502, "bad_gateway", json!("openai"));
    assert!(body["error"].get("upstream_status").is_none());
}

#[actix_web::test]
async fn an_upstream_that_never_answers_is_504() {
    let mock = Mock::start(|_| Reply::Hang);
    let proxy = start_proxy(llm_proxy::Config {
        http_timeout: Duration::from_millis(300),
        ..config_for(&mock)
    });
    let answer = chat(&proxy, "anthropic", hi("c")).await;
    assert_error(&answer, 504, "gateway_timeout", json!("anthropic"));
    let stream =
        json!({"model": "m", "stream": true, "messages": [{"role": "user", "content": "hi"}]});
    let answer = chat(&proxy, "openai", stream).await;
    assert_error(&answer, 504, "gateway_timeout", json!("openai"));
}

#[actix_web::test]
async fn a_2xx_body_that_is_not_the_documented_shape_is_502() {
    for (content_type, body) in [
        ("text/html", "<html>maintenance</html>"),
        ("application/json", r#"{"object":"chat.completion"}"#),
        ("application/json", r#"{"choices":[]}"#),
    ] {
        let mock = Mock::always(200, content_type, body);
        let proxy = start_proxy(config_for(&mock));
        let answer = chat(&proxy, "openai", hi("m")).await;
        assert_error(&answer, 502, "bad_gateway", json!("openai"));
    }
    let mock = Mock::always(200, "application/json", r#"{"type":"message"}"#);
    let proxy = start_proxy(config_for(&mock));
    let answer = chat(&proxy, "anthropic", hi("c")).await;
    assert_error(&answer, 502, "bad_gateway", json!("anthropic"));
}

#[actix_web::test]
async fn an_upstream_body_over_max_response_bytes_is_502() {
    let mock = Mock::always(200, "application/json", fixture("openai/completion.json"));
    let proxy = start_proxy(llm_proxy::Config {
        max_response_bytes: 100,
        ..config_for(&mock)
    });
    let answer = chat(&proxy, "openai", hi("m")).await;
    let body = assert_error(&answer, 502, "bad_gateway", json!("openai"));
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("MAX_RESPONSE_BYTES"));
}

#[actix_web::test]
async fn a_body_cut_short_of_its_content_length_is_502() {
    let base = raw_upstream(
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 500\r\n\r\n{\"choices\":[",
    );
    let proxy = start_proxy(config_with_base(&base));
    let answer = chat(&proxy, "openai", hi("m")).await;
    assert_error(&answer, 502, "bad_gateway", json!("openai"));
}

#[actix_web::test]
async fn an_http_1_0_body_delimited_by_the_connection_closing_is_complete() {
    let base = raw_upstream(
        b"HTTP/1.0 200 OK\r\ncontent-type: application/json\r\n\r\n{\"model\":\"m-1\",\"choices\":[{\"message\":{\"content\":\"closed\"},\"finish_reason\":\"stop\"}]}",
    );
    let proxy = start_proxy(config_with_base(&base));
    let answer = chat(&proxy, "openai", hi("m")).await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    assert_eq!(answer.json()["content"], "closed");

    let stream =
        json!({"model": "m", "stream": true, "messages": [{"role": "user", "content": "hi"}]});
    let base = raw_upstream(
        b"HTTP/1.0 200 OK\r\ncontent-type: text/event-stream\r\n\r\ndata: {}\n\ndata: [DONE]\n\n",
    );
    let proxy = start_proxy(config_with_base(&base));
    let answer = chat(&proxy, "openai", stream).await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.body, "data: {}\n\ndata: [DONE]\n\n");
}

/// `body` after an HTTP/1.1 head with neither `Content-Length` nor `Transfer-Encoding`: the
/// body ends when the connection closes (RFC 9112 §6.3), as some OpenAI-compatible servers do.
fn close_delimited(content_type: &str, body: &[u8]) -> Vec<u8> {
    let mut response =
        format!("HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\n\r\n").into_bytes();
    response.extend_from_slice(body);
    response
}

fn close_delimited_upstream(content_type: &str, body: &[u8]) -> String {
    raw_upstream_in_parts(vec![close_delimited(content_type, body)], Duration::ZERO)
}

#[actix_web::test]
async fn an_http_1_1_answer_delimited_by_the_connection_closing_is_complete_in_every_format() {
    for (provider, answer) in [
        ("openai", "openai/completion.json"),
        ("anthropic", "anthropic/message.json"),
        ("gemini", "gemini/generate.json"),
    ] {
        let base = close_delimited_upstream("application/json", &fixture(answer));
        let proxy = start_proxy(config_with_base(&base));
        let answer = chat(&proxy, provider, hi("m")).await;
        assert_eq!(answer.status, 200, "{provider}: {:?}", answer.body);
        assert_eq!(answer.json()["content"], "Hello! How can I help you today?");
    }
}

#[actix_web::test]
async fn an_http_1_1_stream_delimited_by_the_connection_closing_passes_through_byte_for_byte() {
    for (provider, stream) in [
        ("openai", "openai/stream.sse"),
        ("anthropic", "anthropic/stream.sse"),
        ("gemini", "gemini/stream.sse"),
    ] {
        let sse = fixture(stream);
        let base = close_delimited_upstream("text/event-stream", &sse);
        let proxy = start_proxy(config_with_base(&base));
        let answer = chat(&proxy, provider, streamed("m")).await;
        assert_eq!(answer.status, 200, "{provider}: {:?}", answer.body);
        assert_eq!(answer.body, sse, "{provider}");
    }
}

#[actix_web::test]
async fn answers_delimited_by_the_connection_closing_are_complete_on_the_front_door() {
    for (model, answer) in [
        ("openai/m", "openai/completion.json"),
        ("anthropic/m", "anthropic/message.json"),
        ("gemini/m", "gemini/generate.json"),
    ] {
        let base = close_delimited_upstream("application/json", &fixture(answer));
        let proxy = start_proxy(config_with_base(&base));
        let answer = complete(&proxy, hi(model)).await;
        assert_eq!(answer.status, 200, "{model}: {:?}", answer.body);
        assert_eq!(
            answer.json()["choices"][0]["message"]["content"],
            "Hello! How can I help you today?"
        );
    }
}

#[actix_web::test]
async fn an_anthropic_stream_delimited_by_the_connection_closing_is_translated_whole() {
    let base = close_delimited_upstream("text/event-stream", &fixture("anthropic/stream.sse"));
    let proxy = start_proxy(config_with_base(&base));
    let answer = complete(&proxy, streamed("anthropic/claude-3-5-haiku-latest")).await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    let events = sse_data(&answer.body);
    let text: String = events
        .iter()
        .filter_map(|chunk| chunk["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, "¡Hola! 👋 ¿Qué tal?");
    assert_eq!(events.last(), Some(&json!("[DONE]")));
    assert!(answer.body.ends_with(b"data: [DONE]\n\n"));
}

#[actix_web::test]
async fn a_close_delimited_stream_written_in_pieces_with_pauses_arrives_whole() {
    let sse = fixture("openai/stream.sse");
    let response = close_delimited("text/event-stream", &sse);
    // The head in pieces too, its blank line split: held back until whole, then marked.
    let head_end = response.len() - sse.len();
    let mut parts: Vec<Vec<u8>> = [0..3, 3..20, 20..head_end - 1, head_end - 1..head_end + 5]
        .into_iter()
        .map(|range| response[range].to_vec())
        .collect();
    parts.extend(response[head_end + 5..].chunks(40).map(<[u8]>::to_vec));
    let base = raw_upstream_in_parts(parts, Duration::from_millis(5));
    let proxy = start_proxy(config_with_base(&base));
    let answer = chat(&proxy, "openai", streamed("m")).await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    assert_eq!(answer.body, sse);
}

#[actix_web::test]
async fn interim_responses_before_the_answer_are_skipped() {
    let answer = fixture("openai/completion.json");
    let length = format!(
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n",
        answer.len()
    );
    for head in [
        length.into_bytes(),
        close_delimited("application/json", b""),
    ] {
        let mut response =
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>; rel=preload\r\n\r\n"
                .to_vec();
        response.extend_from_slice(&head);
        response.extend_from_slice(&answer);
        let base = raw_upstream_in_parts(vec![response], Duration::ZERO);
        let proxy = start_proxy(config_with_base(&base));
        let answer = chat(&proxy, "openai", hi("m")).await;
        assert_eq!(answer.status, 200, "{:?}", answer.body);
        assert_eq!(answer.json()["content"], "Hello! How can I help you today?");
    }
}

#[actix_web::test]
async fn a_chunked_stream_cut_between_chunks_ends_with_an_error_event() {
    // Two whole chunks, then the connection closes without the terminating zero-size chunk.
    let base = raw_upstream(
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n\
          a\r\ndata: {}\n\n\r\n",
    );
    let proxy = start_proxy(config_with_base(&base));
    let stream =
        json!({"model": "m", "stream": true, "messages": [{"role": "user", "content": "hi"}]});
    let answer = chat(&proxy, "openai", stream).await;
    assert_eq!(answer.status, 200);
    let text = String::from_utf8(answer.body.to_vec()).unwrap();
    assert!(
        text.starts_with("data: {}\n\nevent: error\ndata: "),
        "{text:?}"
    );
    let data: Value =
        serde_json::from_str(text["data: {}\n\nevent: error\ndata: ".len()..].trim_end()).unwrap();
    assert_eq!(data["error"]["type"], "bad_gateway");
}
