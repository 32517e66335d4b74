//! The OpenAI-compatible front door, `POST /v1/chat/completions`: provider/model and aliases,
//! OpenAI's shapes for answers, streams and errors, whatever the upstream's wire format.

use std::time::Duration;

use actix_web::web::Bytes;
use futures_util::StreamExt;
use serde_json::{json, Value};

use crate::common::*;

fn hi(model: &str) -> Value {
    json!({"model": model, "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Say hi"},
    ]})
}

fn streamed(model: &str) -> Value {
    json!({"model": model, "stream": true, "stream_options": {"include_usage": true},
           "messages": [{"role": "user", "content": "Say hi"}]})
}

/// A mock that answers each wire format's non-stream path with its fixture.
fn fixtures_mock() -> Mock {
    Mock::start(|request| {
        let fixture_path = if request.path.ends_with("/messages") {
            "anthropic/message.json"
        } else if request.path.contains(":generateContent") {
            "gemini/generate.json"
        } else {
            "openai/completion.json"
        };
        Reply::json(200, fixture(fixture_path))
    })
}

/// The chunks of a front-door stream, checked for OpenAI's framing, without `[DONE]`.
fn chunks(body: &[u8]) -> Vec<Value> {
    let mut events = sse_data(body);
    assert_eq!(
        events.pop(),
        Some(json!("[DONE]")),
        "the stream ends with [DONE]"
    );
    for chunk in &events {
        assert_eq!(chunk["object"], "chat.completion.chunk", "{chunk}");
        assert_eq!(chunk["id"], events[0]["id"]);
    }
    events
}

fn content_of(chunks: &[Value]) -> String {
    chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect()
}

#[actix_web::test]
async fn an_openai_completion_passes_through_with_the_model_part_sent_upstream() {
    let mock = fixtures_mock();
    let proxy = start_proxy(config_for(&mock));
    let answer = complete(&proxy, hi("openai/gpt-4o-mini")).await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.body, fixture("openai/completion.json"));
    let upstream = mock.only_request();
    assert_eq!(upstream.path, "/v1/chat/completions");
    assert_eq!(upstream.json()["model"], "gpt-4o-mini");
    assert_eq!(upstream.json()["messages"], hi("x")["messages"]);
    assert_eq!(
        upstream.header("authorization"),
        Some(format!("Bearer {TEST_KEY}").as_str())
    );
}

#[actix_web::test]
async fn an_anthropic_answer_becomes_a_chat_completion() {
    let mock = fixtures_mock();
    let proxy = start_proxy(config_for(&mock));
    let answer = complete(&proxy, hi("anthropic/claude-3-5-haiku-latest")).await;
    assert_eq!(answer.status, 200);
    let body = answer.json();
    assert!(body["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["model"], "claude-3-5-haiku-20241022");
    assert_eq!(body["choices"][0]["message"]["role"], "assistant");
    assert_eq!(
        body["choices"][0]["message"]["content"],
        "Hello! How can I help you today?"
    );
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
    assert_eq!(
        body["usage"],
        json!({"prompt_tokens": 12, "completion_tokens": 10, "total_tokens": 22})
    );
    let upstream = mock.only_request();
    assert_eq!(upstream.path, "/v1/messages");
    assert_eq!(upstream.header("x-api-key"), Some(TEST_KEY));
    assert_eq!(upstream.json()["model"], "claude-3-5-haiku-latest");
    assert_eq!(upstream.json()["system"], "Be brief.");
}

#[actix_web::test]
async fn a_gemini_answer_becomes_a_chat_completion_and_the_key_stays_out_of_the_url() {
    let mock = fixtures_mock();
    let proxy = start_proxy(config_for(&mock));
    let answer = complete(&proxy, hi("gemini/gemini-1.5-flash")).await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    let body = answer.json();
    assert_eq!(body["model"], "gemini-1.5-flash-002");
    assert_eq!(
        body["choices"][0]["message"]["content"],
        "Hello! How can I help you today?"
    );
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
    assert_eq!(body["usage"]["total_tokens"], 13);
    let upstream = mock.only_request();
    assert_eq!(upstream.path, "/v1/models/gemini-1.5-flash:generateContent");
    assert_eq!(upstream.header("x-goog-api-key"), Some(TEST_KEY));
    assert!(!upstream.path.contains(TEST_KEY));
    assert_eq!(
        upstream.json()["systemInstruction"],
        json!({"parts": [{"text": "Be brief."}]})
    );
    assert_eq!(
        upstream.json()["contents"],
        json!([{"role": "user", "parts": [{"text": "Say hi"}]}])
    );
}

#[actix_web::test]
async fn an_anthropic_stream_is_translated_into_chunks_with_usage() {
    let sse = fixture("anthropic/stream.sse");
    let mock = Mock::start(move |_| Reply::sse(vec![sse.clone()]));
    let proxy = start_proxy(config_for(&mock));
    let answer = complete(&proxy, streamed("anthropic/claude-3-5-haiku-latest")).await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.header("content-type"), Some("text/event-stream"));
    let chunks = chunks(&answer.body);
    assert_eq!(
        chunks[0]["choices"][0]["delta"],
        json!({"role": "assistant", "content": ""})
    );
    assert_eq!(chunks[0]["model"], "claude-3-5-haiku-20241022");
    assert_eq!(content_of(&chunks), "¡Hola! 👋 ¿Qué tal?");
    let finish = &chunks[chunks.len() - 2];
    assert_eq!(finish["choices"][0]["finish_reason"], "stop");
    let usage = chunks.last().unwrap();
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(
        usage["usage"],
        json!({"prompt_tokens": 25, "completion_tokens": 15, "total_tokens": 40})
    );
    let sent = mock.only_request().json();
    assert_eq!(sent["stream"], true);
    assert!(
        sent.get("stream_options").is_none(),
        "OpenAI-only fields are dropped"
    );
}

#[actix_web::test]
async fn a_gemini_stream_split_at_every_byte_comes_out_whole() {
    let sse = fixture("gemini/stream.sse");
    let bytes: Vec<Bytes> = (0..sse.len()).map(|i| sse.slice(i..i + 1)).collect();
    let mock = Mock::start(move |_| Reply::sse(bytes.clone()));
    let proxy = start_proxy(config_for(&mock));
    let answer = complete(&proxy, streamed("gemini/gemini-1.5-flash")).await;
    assert_eq!(answer.status, 200);
    let chunks = chunks(&answer.body);
    assert_eq!(content_of(&chunks), "¡Hola! 👋 ¿Qué tal?");
    assert_eq!(
        chunks[chunks.len() - 2]["choices"][0]["finish_reason"],
        "stop"
    );
    assert_eq!(chunks.last().unwrap()["usage"]["completion_tokens"], 12);
    assert_eq!(
        mock.only_request().path,
        "/v1/models/gemini-1.5-flash:streamGenerateContent?alt=sse"
    );
}

#[actix_web::test]
async fn an_openai_stream_passes_through_byte_for_byte() {
    let sse = fixture("openai/stream.sse");
    let chunks_sent = split_at(&sse, &[10, 200]);
    let mock = Mock::start(move |_| Reply::sse(chunks_sent.clone()));
    let proxy = start_proxy(config_for(&mock));
    let answer = complete(&proxy, streamed("openai/gpt-4o-mini")).await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.body, sse);
    let sent = mock.only_request().json();
    assert_eq!(sent["model"], "gpt-4o-mini");
    assert_eq!(sent["stream_options"], json!({"include_usage": true}));
}

#[actix_web::test]
async fn each_translated_event_reaches_the_client_while_the_upstream_holds_the_rest() {
    let (feed, body) = feed();
    let mock = Mock::streaming(body);
    let proxy = start_proxy(config_for(&mock));
    feed.send("event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"model\":\"claude-x\",\"usage\":{\"input_tokens\":3}}}\n\n");
    let mut response = client()
        .post(proxy.url("/v1/chat/completions"))
        .insert_header(("Authorization", format!("Bearer {TEST_KEY}")))
        .send_body(streamed("anthropic/claude-x").to_string())
        .await
        .unwrap();
    let role = response.next().await.unwrap().unwrap();
    assert_eq!(
        sse_data(&role)[0]["choices"][0]["delta"]["role"],
        "assistant"
    );

    // Half an event first: nothing may come out until it is whole.
    feed.send("event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,");
    feed.send("\"delta\":{\"type\":\"text_delta\",\"text\":\"Hi\"}}\n\n");
    let content = response.next().await.unwrap().unwrap();
    assert_eq!(
        sse_data(&content)[0]["choices"][0]["delta"],
        json!({"content": "Hi"})
    );

    feed.send("event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"max_tokens\"},\"usage\":{\"output_tokens\":1}}\n\nevent: message_stop\ndata: {\"type\":\"message_stop\"}\n\n");
    feed.finish();
    let mut rest = Vec::new();
    while let Some(chunk) = response.next().await {
        rest.extend_from_slice(&chunk.unwrap());
    }
    let rest = sse_data(&rest);
    assert_eq!(rest[0]["choices"][0]["finish_reason"], "length");
    assert_eq!(rest[1]["usage"]["prompt_tokens"], 3);
    assert_eq!(rest[2], "[DONE]");
}

#[actix_web::test]
async fn an_error_event_mid_stream_becomes_an_openai_error_chunk() {
    let mock = Mock::start(|_| {
        Reply::sse(vec![Bytes::from_static(
            b"event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"model\":\"c\"}}\n\n\
              event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n",
        )])
    });
    let proxy = start_proxy(config_for(&mock));
    let answer = complete(&proxy, streamed("anthropic/c")).await;
    let events = sse_data(&answer.body);
    let error = &events.last().unwrap()["error"];
    assert_eq!(error["type"], "overloaded_error");
    assert_eq!(error["message"], "upstream stream failed: Overloaded");
    assert!(
        !events.contains(&json!("[DONE]")),
        "a failed stream does not claim to be done"
    );
}

#[actix_web::test]
async fn an_upstream_cut_mid_stream_becomes_an_openai_error_chunk() {
    let (feed, body) = feed();
    let mock = Mock::streaming(body);
    let proxy = start_proxy(llm_proxy::Config {
        http_timeout: Duration::from_millis(300),
        ..config_for(&mock)
    });
    feed.send("data: {\"candidates\":[{\"content\":{\"parts\":[{\"text\":\"Hi\"}]}}]}\r\n\r\n");
    let answer = complete(&proxy, streamed("gemini/gemini-1.5-flash")).await;
    let events = sse_data(&answer.body);
    assert_eq!(events[1]["choices"][0]["delta"]["content"], "Hi");
    let error = &events.last().unwrap()["error"];
    assert_eq!(error["code"], "gateway_timeout");
    assert_eq!(error["provider"], "gemini");
    drop(feed);
}

#[actix_web::test]
async fn an_alias_names_provider_and_model_on_both_routes() {
    let mock = fixtures_mock();
    let groq = mock.base_url().replace("/v1", "/groq/v1");
    let catalog = format!(
        r#"{{"providers": {{"groq": {{"kind": "openai", "base_url": "{groq}"}}}},
             "aliases": {{"fast": {{"provider": "groq", "model": "llama-3.1-8b-instant"}},
                         "smart": {{"provider": "anthropic", "model": "claude-3-5-sonnet-latest"}}}}}}"#
    );
    let proxy = start_proxy(config_with_catalog(&mock, &catalog));

    let answer = complete(&proxy, hi("fast")).await;
    assert_eq!(answer.status, 200);
    let answer = complete(&proxy, hi("smart")).await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.json()["object"], "chat.completion");
    let answer = chat(&proxy, "groq", hi("fast")).await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.json()["provider"], "groq");
    let answer = chat(&proxy, "openai", hi("fast")).await;
    assert_eq!(
        answer.status, 400,
        "an alias of another provider on the path route"
    );

    let requests = mock.requests();
    assert_eq!(requests.len(), 3);
    assert_eq!(requests[0].path, "/groq/v1/chat/completions");
    assert_eq!(requests[0].json()["model"], "llama-3.1-8b-instant");
    assert_eq!(requests[1].path, "/v1/messages");
    assert_eq!(requests[1].json()["model"], "claude-3-5-sonnet-latest");
    assert_eq!(requests[2].json()["model"], "llama-3.1-8b-instant");
}

#[actix_web::test]
async fn a_declared_provider_gets_its_headers_and_a_model_split_at_the_first_slash() {
    let mock = fixtures_mock();
    let base = mock.base_url().replace("/v1", "/api/v1");
    let catalog = format!(
        r#"{{"providers": {{"openrouter": {{"kind": "openai", "base_url": "{base}",
             "headers": {{"HTTP-Referer": "https://app.example", "X-Title": "app"}}}}}}}}"#
    );
    let proxy = start_proxy(config_with_catalog(&mock, &catalog));
    let answer = complete(&proxy, hi("openrouter/meta-llama/llama-3.1-70b-instruct")).await;
    assert_eq!(answer.status, 200);
    let upstream = mock.only_request();
    assert_eq!(upstream.path, "/api/v1/chat/completions");
    assert_eq!(
        upstream.json()["model"],
        "meta-llama/llama-3.1-70b-instruct"
    );
    assert_eq!(upstream.header("http-referer"), Some("https://app.example"));
    assert_eq!(upstream.header("x-title"), Some("app"));
}

#[actix_web::test]
async fn ollama_needs_no_key_and_a_key_may_come_as_x_api_key() {
    let mock = fixtures_mock();
    let proxy = start_proxy(config_for(&mock));
    let response = client()
        .post(proxy.url("/v1/chat/completions"))
        .send_body(hi("ollama/llama3.2").to_string())
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let answer = post(&proxy, "/v1/chat/ollama", None, hi("llama3.2").to_string()).await;
    assert_eq!(answer.status, 200);
    let response = client()
        .post(proxy.url("/v1/chat/completions"))
        .insert_header(("X-API-Key", TEST_KEY))
        .send_body(hi("anthropic/c").to_string())
        .await
        .unwrap();
    assert_eq!(response.status(), 200);

    let requests = mock.requests();
    assert_eq!(requests[0].header("authorization"), None);
    assert_eq!(requests[1].header("authorization"), None);
    assert_eq!(requests[2].header("x-api-key"), Some(TEST_KEY));
}

#[actix_web::test]
async fn errors_have_openais_shape_and_the_upstreams_status() {
    let mock = Mock::start(|_| {
        Reply::Full {
        status: 429,
        content_type: "application/json",
        headers: vec![("retry-after", "3")],
        body: Bytes::from_static(
            br#"{"type":"error","error":{"type":"rate_limit_error","message":"Number of requests has exceeded your rate limit"}}"#,
        ),
    }
    });
    let proxy = start_proxy(config_for(&mock));

    let answer = complete(&proxy, hi("anthropic/c")).await;
    assert_eq!(answer.status, 429);
    assert_eq!(answer.header("retry-after"), Some("3"));
    let error = &answer.json()["error"];
    assert_eq!(error["type"], "rate_limit_error");
    assert!(error["message"]
        .as_str()
        .unwrap()
        .contains("exceeded your rate limit"));
    assert!(error.get("param").is_some() && error.get("code").is_some());

    let missing_key = client()
        .post(proxy.url("/v1/chat/completions"))
        .send_body(hi("openai/m").to_string())
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    assert_eq!(missing_key["error"]["type"], "authentication_error");

    let unknown = complete(&proxy, hi("nobody/m")).await;
    assert_eq!(unknown.status, 404);
    assert_eq!(unknown.json()["error"]["code"], "model_not_found");
    let no_slash = complete(&proxy, hi("gpt-4o")).await;
    assert_eq!(no_slash.status, 400);
    assert_eq!(no_slash.json()["error"]["type"], "invalid_request_error");
    let bad_part = complete(
        &proxy,
        json!({"model": "gemini/g", "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "data:image/tiff;base64,AAAA"}}]}]}),
    )
    .await;
    assert_eq!(bad_part.status, 400);
    let message = bad_part.json()["error"]["message"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        message.contains("`messages[0].content[0]`") && message.contains("image/tiff"),
        "{message}"
    );
    assert_eq!(
        mock.requests().len(),
        1,
        "only the first request went upstream"
    );
}

#[actix_web::test]
async fn an_image_reaches_anthropic_and_gemini_in_their_own_shapes() {
    let mock = fixtures_mock();
    let proxy = start_proxy(config_for(&mock));
    let message = json!([{"role": "user", "content": [
        {"type": "text", "text": "What is in this image?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgoAAAANSUhEUg=="}},
        {"type": "image_url", "image_url": {"url": "https://example.com/photo.jpg"}},
    ]}]);
    for model in [
        "anthropic/claude-3-5-sonnet-latest",
        "gemini/gemini-1.5-pro",
    ] {
        let answer = complete(&proxy, json!({"model": model, "messages": message})).await;
        assert_eq!(answer.status, 200, "{model}: {:?}", answer.body);
    }
    let requests = mock.requests();
    assert_eq!(
        requests[0].json()["messages"][0]["content"],
        json!([
            {"type": "text", "text": "What is in this image?"},
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgoAAAANSUhEUg=="}},
            {"type": "image", "source": {"type": "url", "url": "https://example.com/photo.jpg"}},
        ])
    );
    assert_eq!(
        requests[1].json()["contents"][0]["parts"],
        json!([
            {"text": "What is in this image?"},
            {"inline_data": {"mime_type": "image/png", "data": "iVBORw0KGgoAAAANSUhEUg=="}},
            {"file_data": {"mime_type": "image/jpeg", "file_uri": "https://example.com/photo.jpg"}},
        ])
    );
}

#[actix_web::test]
async fn models_lists_the_aliases_and_the_providers() {
    let mock = fixtures_mock();
    let catalog = r#"{"aliases": {"fast": {"provider": "openai", "model": "gpt-4o-mini"}}}"#;
    let proxy = start_proxy(config_with_catalog(&mock, catalog));
    let list: Value = client()
        .get(proxy.url("/v1/models"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["object"], "list");
    let ids: Vec<_> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        ids,
        ["fast", "anthropic/*", "gemini/*", "ollama/*", "openai/*"]
    );
}

#[actix_web::test]
async fn a_wrong_method_on_the_front_door_answers_in_openais_shape() {
    let proxy = start_proxy(config_with_base(&refused_base_url()));
    let mut response = client()
        .get(proxy.url("/v1/chat/completions"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 405);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["type"], "invalid_request_error");
    assert_eq!(body["error"]["code"], "method_not_allowed");
}
