//! The Anthropic-compatible door, `POST /v1/messages`: Anthropic's own requests passed on byte
//! for byte, any other upstream's translated (Claude Code's request to OpenAI among them), and
//! answers, streams and errors in Anthropic's shapes whatever the upstream.

use actix_web::web::Bytes;
use futures_util::StreamExt;
use serde_json::{json, Value};

use crate::common::*;

const VERSION: &str = "2023-06-01";

/// A Messages request for `model`, as the Anthropic SDKs write one.
fn hello(model: &str) -> Value {
    json!({"model": model, "max_tokens": 256,
           "messages": [{"role": "user", "content": "Say hi"}]})
}

/// POSTs a Messages request to `path` with the key in `x-api-key` and an `anthropic-version`,
/// as the Anthropic SDKs send it.
async fn messages(proxy: &Proxy, path: &str, body: impl Into<Bytes>) -> Answer {
    post_with(
        proxy,
        path,
        &[
            ("x-api-key", TEST_KEY),
            ("anthropic-version", VERSION),
            ("content-type", "application/json"),
        ],
        body,
    )
    .await
}

/// Claude Code's recorded request (tests/sdk/record_claude_code.py), sent as it was: to its
/// target (`/v1/messages?beta=true`), with its headers.
async fn as_claude_code(proxy: &Proxy) -> Answer {
    let recorded: Value =
        serde_json::from_slice(&fixture("anthropic/claude_code_request.headers.json")).unwrap();
    let headers: Vec<(&str, &str)> = recorded["headers"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(name, value)| (name.as_str(), value.as_str().unwrap()))
        .collect();
    post_with(
        proxy,
        recorded["target"].as_str().unwrap(),
        &headers,
        fixture("anthropic/claude_code_request.json"),
    )
    .await
}

/// The events of an Anthropic stream as (name, data), pings left out; each event's data
/// names its own type.
fn events(body: &[u8]) -> Vec<(String, Value)> {
    let text = std::str::from_utf8(body).expect("UTF-8 events");
    let mut events = Vec::new();
    for event in text.split("\n\n").filter(|event| !event.trim().is_empty()) {
        let mut name = "";
        let mut data = String::new();
        for line in event.lines() {
            if let Some(value) = line.strip_prefix("event: ") {
                name = value;
            } else if let Some(value) = line.strip_prefix("data: ") {
                data.push_str(value);
            }
        }
        let data: Value = serde_json::from_str(&data).unwrap_or_else(|e| panic!("{e}: {event:?}"));
        assert_eq!(data["type"], name, "{event}");
        if name != "ping" {
            events.push((name.to_owned(), data));
        }
    }
    events
}

fn names(events: &[(String, Value)]) -> Vec<&str> {
    events.iter().map(|(name, _)| name.as_str()).collect()
}

/// An error body's Anthropic type and message, checked for Anthropic's shape.
fn anthropic_error(body: &Value) -> (&str, &str) {
    assert_eq!(body["type"], "error", "{body}");
    let kind = body["error"]["type"].as_str().expect("error.type");
    let message = body["error"]["message"].as_str().expect("error.message");
    (kind, message)
}

/// The data of the `event: error` a failed stream ends with.
fn trailing_error(received: &[u8]) -> Value {
    let text = String::from_utf8_lossy(received);
    let (_, event) = text
        .rsplit_once("event: error\ndata: ")
        .unwrap_or_else(|| panic!("no error event: {text}"));
    assert!(
        event.ends_with("\n\n"),
        "the error event is whole: {event:?}"
    );
    serde_json::from_str(event.trim_end()).unwrap()
}

#[actix_web::test]
async fn a_claude_model_reaches_anthropic_byte_for_byte_with_the_callers_query_and_headers() {
    let stream = fixture("anthropic/stream.sse");
    let chunks = split_at(&stream, &[5, 100, 101, 600]);
    let mock = Mock::start(move |request| match request.json()["stream"] == true {
        true => Reply::sse(chunks.clone()),
        false => Reply::json(200, fixture("anthropic/message.json")),
    });
    let proxy = start_proxy(llm_proxy::Config {
        anthropic_version: "2099-01-01".into(),
        ..config_for(&mock)
    });
    // Spacing, field order and fields no serializer of ours would write: only bytes passed on
    // unchanged arrive like this.
    let sent = r#"{ "max_tokens" : 64, "model": "claude-sonnet-4-5",
        "messages": [ {"role": "user", "content": [{"type": "text", "text": "Say hi",
        "cache_control": {"type": "ephemeral"}}]} ], "service_tier": "auto",
        "context_management": {"edits": []}, "x_future_field": [1, 2.50, null] }"#;
    let beta = "claude-code-20250219,interleaved-thinking-2025-05-14";
    let answer = post_with(
        &proxy,
        "/v1/messages?beta=true",
        &[
            ("x-api-key", TEST_KEY),
            ("anthropic-version", VERSION),
            ("anthropic-beta", beta),
        ],
        sent,
    )
    .await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    assert_eq!(answer.body, fixture("anthropic/message.json"));
    let upstream = mock.only_request();
    assert_eq!(upstream.path, "/v1/messages?beta=true");
    assert_eq!(upstream.body, sent.as_bytes());
    assert_eq!(upstream.header("x-api-key"), Some(TEST_KEY));
    assert_eq!(
        upstream.header("anthropic-version"),
        Some(VERSION),
        "the caller's version over the configured one"
    );
    assert_eq!(upstream.header("anthropic-beta"), Some(beta));
    assert_eq!(upstream.header("authorization"), None);

    // Streamed, with the key as a bearer token and no version of the caller's.
    let sent = r#"{"model":"claude-3-5-haiku-latest","stream":true,"max_tokens":64,"messages":[{"role":"user","content":"Hola"}]}"#;
    let bearer = format!("Bearer {TEST_KEY}");
    let answer = post_with(
        &proxy,
        "/v1/messages",
        &[("authorization", bearer.as_str())],
        sent,
    )
    .await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    assert_eq!(answer.header("content-type"), Some("text/event-stream"));
    assert_eq!(answer.body, stream);
    let upstream = &mock.requests()[1];
    assert_eq!(upstream.path, "/v1/messages");
    assert_eq!(upstream.body, sent.as_bytes());
    assert_eq!(upstream.header("x-api-key"), Some(TEST_KEY));
    assert_eq!(upstream.header("authorization"), None);
    assert_eq!(upstream.header("anthropic-version"), Some("2099-01-01"));
}

#[actix_web::test]
async fn an_anthropic_prefixed_model_reaches_anthropic_with_only_the_model_replaced() {
    let mock = Mock::always(200, "application/json", fixture("anthropic/message.json"));
    let proxy = start_proxy(config_for(&mock));
    let mut body = hello("anthropic/claude-sonnet-4-5");
    body["metadata"] = json!({"user_id": "user-4711"});
    body["thinking"] = json!({"type": "enabled", "budget_tokens": 2048});
    let sent = body.to_string();
    let answer = messages(&proxy, "/v1/messages", sent.clone()).await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    assert_eq!(answer.body, fixture("anthropic/message.json"));
    let expected = sent.replace(
        r#""model":"anthropic/claude-sonnet-4-5""#,
        r#""model":"claude-sonnet-4-5""#,
    );
    assert_ne!(expected, sent);
    assert_eq!(mock.only_request().body, expected.as_bytes());
}

#[actix_web::test]
async fn claude_codes_request_reaches_openai_as_chat_completions_and_streams_back_as_anthropic_events(
) {
    let mock = Mock::start(|_| Reply::sse(vec![fixture("openai/stream.sse")]));
    let proxy = start_proxy(config_for(&mock));
    let answer = as_claude_code(&proxy).await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);

    let upstream = mock.only_request();
    assert_eq!(upstream.path, "/v1/chat/completions");
    assert_eq!(
        upstream.header("authorization"),
        Some("Bearer sk-ant-api03-test")
    );
    assert_eq!(upstream.header("anthropic-beta"), None);
    let sent = upstream.json();
    let asked: Value =
        serde_json::from_slice(&fixture("anthropic/claude_code_request.json")).unwrap();
    assert_eq!(sent["model"], "gpt-4o-mini");
    assert_eq!(sent["stream"], true);
    assert_eq!(sent["stream_options"], json!({"include_usage": true}));

    let messages = sent["messages"].as_array().unwrap();
    let roles: Vec<&str> = messages
        .iter()
        .map(|message| message["role"].as_str().unwrap())
        .collect();
    assert_eq!(roles, ["system", "user", "system", "assistant", "tool"]);
    let system_text: String = messages
        .iter()
        .filter(|message| message["role"] == "system")
        .map(|message| {
            message["content"]
                .as_str()
                .expect("system text as a string")
        })
        .collect::<Vec<_>>()
        .join("\n");
    for block in asked["system"].as_array().unwrap() {
        let text = block["text"].as_str().unwrap();
        assert!(
            messages[0]["content"].as_str().unwrap().contains(text),
            "the system prompt leads: {text:?}"
        );
    }
    let mid_conversation = asked["messages"][1]["content"].as_str().unwrap();
    assert!(system_text.contains(mid_conversation), "{system_text}");
    let tool_use = &asked["messages"][2]["content"][0];
    let call = &messages[3]["tool_calls"][0];
    assert_eq!(call["id"], tool_use["id"]);
    assert_eq!(call["type"], "function");
    assert_eq!(call["function"]["name"], "Bash");
    let arguments = call["function"]["arguments"].as_str().unwrap();
    assert_eq!(
        serde_json::from_str::<Value>(arguments).unwrap(),
        tool_use["input"]
    );
    assert_eq!(
        messages[4],
        json!({"role": "tool", "tool_call_id": tool_use["id"], "content": "hello"})
    );
    let tools = sent["tools"].as_array().unwrap();
    let asked_tools = asked["tools"].as_array().unwrap();
    assert_eq!(tools.len(), asked_tools.len());
    for (tool, asked) in tools.iter().zip(asked_tools) {
        assert_eq!(tool["type"], "function");
        assert_eq!(tool["function"]["name"], asked["name"]);
        assert_eq!(
            tool["function"].get("description"),
            asked.get("description")
        );
        assert_eq!(tool["function"]["parameters"], asked["input_schema"]);
    }

    assert_eq!(answer.header("content-type"), Some("text/event-stream"));
    let events = events(&answer.body);
    assert_eq!(
        names(&events),
        [
            "message_start",
            "content_block_start",
            "content_block_delta",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop"
        ]
    );
    let message = &events[0].1["message"];
    assert!(
        message["id"].as_str().unwrap().starts_with("msg_"),
        "{message}"
    );
    assert_eq!(message["type"], "message");
    assert_eq!(message["role"], "assistant");
    assert_eq!(message["model"], "gpt-4o-mini-2024-07-18");
    assert_eq!(message["content"], json!([]));
    assert!(
        message["usage"]["input_tokens"].is_u64() && message["usage"]["output_tokens"].is_u64(),
        "{message}"
    );
    assert_eq!(
        events[1].1,
        json!({"type": "content_block_start", "index": 0,
               "content_block": {"type": "text", "text": ""}})
    );
    let text: String = events[2..4]
        .iter()
        .map(|(_, data)| {
            assert_eq!(data["index"], 0);
            assert_eq!(data["delta"]["type"], "text_delta");
            data["delta"]["text"].as_str().unwrap()
        })
        .collect();
    assert_eq!(text, "¡Hola! 👋 ¿Qué tal?");
    assert_eq!(events[4].1["index"], 0);
    let delta = &events[5].1;
    assert_eq!(delta["delta"]["stop_reason"], "end_turn");
    assert!(delta["usage"]["output_tokens"].is_u64(), "{delta}");
}

#[actix_web::test]
async fn an_openai_tool_call_stream_reaches_claude_code_as_tool_use_blocks() {
    let mock = Mock::start(|_| Reply::sse(vec![fixture("openai/parallel_tool_calls.sse")]));
    let proxy = start_proxy(config_for(&mock));
    let answer = as_claude_code(&proxy).await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    let events = events(&answer.body);
    assert_eq!(
        names(&events),
        [
            "message_start",
            "content_block_start",
            "content_block_delta",
            "content_block_delta",
            "content_block_stop",
            "content_block_start",
            "content_block_delta",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop"
        ]
    );
    let calls = [
        (
            "call_3ZkXjVwYq1Lm8Rb2Tn5Pc7Ua",
            json!({"location": "Paris, France"}),
        ),
        (
            "call_8WbNc2QsYd4Fh6Jk0Lm1Pr3T",
            json!({"location": "Bogotá, Colombia"}),
        ),
    ];
    for (index, (id, input)) in calls.into_iter().enumerate() {
        let start = events
            .iter()
            .find(|(name, data)| name == "content_block_start" && data["index"] == index)
            .unwrap();
        assert_eq!(
            start.1["content_block"],
            json!({"type": "tool_use", "id": id, "name": "get_weather", "input": {}})
        );
        let partial_json: String = events
            .iter()
            .filter(|(name, data)| name == "content_block_delta" && data["index"] == index)
            .map(|(_, data)| {
                assert_eq!(data["delta"]["type"], "input_json_delta");
                data["delta"]["partial_json"].as_str().unwrap()
            })
            .collect();
        assert_eq!(serde_json::from_str::<Value>(&partial_json).unwrap(), input);
    }
    let delta = &events[9].1;
    assert_eq!(delta["delta"]["stop_reason"], "tool_use");
    assert_eq!(delta["usage"]["input_tokens"], 86);
    assert_eq!(delta["usage"]["output_tokens"], 52);
}

#[actix_web::test]
async fn a_gemini_answer_reaches_the_anthropic_door_as_a_message() {
    let mock = Mock::start(|request| match request.json().get("tools") {
        Some(_) => Reply::json(200, fixture("gemini/function_call.json")),
        None => Reply::json(200, fixture("gemini/generate.json")),
    });
    let proxy = start_proxy(config_for(&mock));
    let answer = messages(
        &proxy,
        "/v1/messages",
        hello("gemini/gemini-2.5-flash").to_string(),
    )
    .await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    let upstream = mock.only_request();
    assert_eq!(upstream.path, "/v1/models/gemini-2.5-flash:generateContent");
    assert_eq!(upstream.header("x-goog-api-key"), Some(TEST_KEY));
    let message = answer.json();
    assert!(
        message["id"].as_str().unwrap().starts_with("msg_"),
        "{message}"
    );
    assert_eq!(message["type"], "message");
    assert_eq!(message["role"], "assistant");
    assert_eq!(message["model"], "gemini-1.5-flash-002");
    assert_eq!(
        message["content"],
        json!([{"type": "text", "text": "Hello! How can I help you today?"}])
    );
    assert_eq!(message["stop_reason"], "end_turn");
    assert_eq!(message["usage"]["input_tokens"], 4);
    assert_eq!(message["usage"]["output_tokens"], 9);

    let mut body = hello("gemini/gemini-2.5-flash");
    body["tools"] = json!([{"name": "find_theaters", "description": "Theaters showing a movie",
        "input_schema": {"type": "object", "properties": {
            "movie": {"type": "string"}, "location": {"type": "string"}}}}]);
    let answer = messages(&proxy, "/v1/messages", body.to_string()).await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    let message = answer.json();
    assert_eq!(message["stop_reason"], "tool_use");
    let block = &message["content"][0];
    assert_eq!(block["type"], "tool_use");
    assert!(!block["id"].as_str().unwrap().is_empty(), "{block}");
    assert_eq!(block["name"], "find_theaters");
    assert_eq!(
        block["input"],
        json!({"movie": "Barbie", "location": "Mountain View, CA"})
    );
}

#[actix_web::test]
async fn errors_of_the_callers_making_come_in_anthropics_shape() {
    let mock = Mock::always(200, "application/json", fixture("anthropic/message.json"));
    let proxy = start_proxy(config_for(&mock));

    let no_key = post_with(
        &proxy,
        "/v1/messages",
        &[("anthropic-version", VERSION)],
        hello("claude-sonnet-4-5").to_string(),
    )
    .await;
    assert_eq!(no_key.status, 401);
    assert_eq!(anthropic_error(&no_key.json()).0, "authentication_error");

    let unknown = messages(&proxy, "/v1/messages", hello("nobody/m").to_string()).await;
    assert_eq!(unknown.status, 404);
    let body = unknown.json();
    let (kind, message) = anthropic_error(&body);
    assert_eq!(kind, "not_found_error");
    assert!(message.contains("nobody"), "{message}");

    let not_json = messages(
        &proxy,
        "/v1/messages",
        r#"{"model": "claude-x", "messages": ["#,
    )
    .await;
    assert_eq!(not_json.status, 400);
    let body = not_json.json();
    let (kind, message) = anthropic_error(&body);
    assert_eq!(kind, "invalid_request_error");
    assert!(message.contains("not valid JSON"), "{message}");

    let mut wrong_model = hello("claude-x");
    wrong_model["model"] = json!(7);
    let answer = messages(&proxy, "/v1/messages", wrong_model.to_string()).await;
    assert_eq!(answer.status, 400);
    let body = answer.json();
    let (kind, message) = anthropic_error(&body);
    assert_eq!(kind, "invalid_request_error");
    assert!(message.contains("`model`"), "{message}");

    // A body bound for another format is read whole, and a wrong field is named.
    let mut wrong_field = hello("openai/gpt-4o-mini");
    wrong_field["max_tokens"] = json!("many");
    let answer = messages(&proxy, "/v1/messages", wrong_field.to_string()).await;
    assert_eq!(answer.status, 400);
    let body = answer.json();
    let (kind, message) = anthropic_error(&body);
    assert_eq!(kind, "invalid_request_error");
    assert!(message.contains("`max_tokens`"), "{message}");

    for path in ["/v1/messages", "/v1/messages/count_tokens"] {
        let mut response = client().get(proxy.url(path)).send().await.unwrap();
        assert_eq!(response.status(), 405, "{path}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(anthropic_error(&body).0, "invalid_request_error", "{path}");
    }
    assert!(mock.requests().is_empty(), "nothing went upstream");
}

#[actix_web::test]
async fn an_upstream_429_is_a_rate_limit_error_with_its_retry_after() {
    let mock = Mock::start(|_| {
        Reply::Full {
        status: 429,
        content_type: "application/json",
        headers: vec![("retry-after", "7")],
        body: Bytes::from_static(
            br#"{"error":{"message":"Rate limit reached for gpt-4o-mini","type":"requests","param":null,"code":"rate_limit_exceeded"}}"#,
        ),
    }
    });
    let proxy = start_proxy(config_for(&mock));
    let answer = messages(
        &proxy,
        "/v1/messages",
        hello("openai/gpt-4o-mini").to_string(),
    )
    .await;
    assert_eq!(answer.status, 429);
    assert_eq!(answer.header("retry-after"), Some("7"));
    let body = answer.json();
    let (kind, message) = anthropic_error(&body);
    assert_eq!(
        kind, "rate_limit_error",
        "OpenAI's own type means nothing here"
    );
    assert!(message.contains("Rate limit reached"), "{message}");
}

#[actix_web::test]
async fn anthropics_own_529_keeps_its_overloaded_error() {
    // The body Anthropic sends as its error event, here as a whole answer.
    let event = String::from_utf8(fixture("anthropic/error.sse").to_vec()).unwrap();
    let error = event
        .trim()
        .strip_prefix("event: error\ndata: ")
        .unwrap()
        .to_owned();
    let mock = Mock::always(529, "application/json", error);
    let proxy = start_proxy(config_for(&mock));
    let answer = messages(
        &proxy,
        "/v1/messages",
        hello("claude-sonnet-4-5").to_string(),
    )
    .await;
    assert_eq!(answer.status, 529);
    let body = answer.json();
    let (kind, message) = anthropic_error(&body);
    assert_eq!(kind, "overloaded_error");
    assert!(message.contains("Overloaded"), "{message}");
}

#[actix_web::test]
async fn an_anthropic_stream_broken_after_it_began_ends_with_an_anthropic_error_event() {
    let (feed, body) = feed();
    let mock = Mock::streaming(body);
    let proxy = start_proxy(config_for(&mock));
    let start = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"type\":\"message\",\"role\":\"assistant\",\"content\":[],\"model\":\"claude-x\",\"usage\":{\"input_tokens\":3,\"output_tokens\":1}}}\n\n";
    feed.send(start);
    let mut stream = hello("claude-x");
    stream["stream"] = json!(true);
    let mut response = client()
        .post(proxy.url("/v1/messages"))
        .insert_header(("x-api-key", TEST_KEY))
        .send_body(stream.to_string())
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.next().await.unwrap().unwrap(), start);
    // Half an event, then the connection breaks.
    let half = "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",";
    feed.send(half);
    assert_eq!(response.next().await.unwrap().unwrap(), half);
    feed.fail();
    let received = read_to_end(&mut response).await;
    let error = trailing_error(&received);
    let (kind, _) = anthropic_error(&error);
    assert_eq!(kind, "api_error");
    assert!(!String::from_utf8_lossy(&received).contains(TEST_KEY));
}

#[actix_web::test]
async fn a_translated_stream_broken_after_it_began_ends_with_an_anthropic_error_event() {
    let (feed, body) = feed();
    let mock = Mock::streaming(body);
    let proxy = start_proxy(config_for(&mock));
    let sse = String::from_utf8(fixture("openai/stream.sse").to_vec()).unwrap();
    let chunks: Vec<&str> = sse.split_inclusive("\n\n").collect();
    feed.send(chunks[0].to_owned());
    let mut stream = hello("openai/gpt-4o-mini");
    stream["stream"] = json!(true);
    let mut response = client()
        .post(proxy.url("/v1/messages"))
        .insert_header(("x-api-key", TEST_KEY))
        .send_body(stream.to_string())
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    feed.send(chunks[1].to_owned());
    let first = response.next().await.unwrap().unwrap();
    assert!(
        String::from_utf8_lossy(&first).contains("message_start"),
        "{first:?}"
    );
    feed.fail();
    let received = read_to_end(&mut response).await;
    let error = trailing_error(&received);
    let (kind, _) = anthropic_error(&error);
    assert!(kind.ends_with("_error"), "{error}");
    assert!(
        !String::from_utf8_lossy(&received).contains("message_stop"),
        "a broken stream does not claim to be done"
    );
}

#[actix_web::test]
async fn what_an_openai_model_cannot_express_is_a_400_naming_the_field_and_provider() {
    let mock = Mock::start(|request| match request.path.ends_with("/messages") {
        true => Reply::json(200, fixture("anthropic/message.json")),
        false => Reply::json(200, fixture("openai/completion.json")),
    });
    let proxy = start_proxy(config_for(&mock));
    let mut body = hello("openai/gpt-4o-mini");
    body["tools"] = json!([{"type": "web_search_20250305", "name": "web_search", "max_uses": 5}]);
    let answer = messages(&proxy, "/v1/messages", body.to_string()).await;
    assert_eq!(answer.status, 400, "{:?}", answer.body);
    let error = answer.json();
    let (kind, message) = anthropic_error(&error);
    assert_eq!(kind, "invalid_request_error");
    assert!(
        message.contains("tools[0]")
            && message.contains("web_search_20250305")
            && message.contains("openai"),
        "{message}"
    );
    assert!(mock.requests().is_empty(), "nothing goes upstream");

    // Anthropic runs its server tools itself.
    body["model"] = json!("claude-sonnet-4-5");
    let answer = messages(&proxy, "/v1/messages", body.to_string()).await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    assert_eq!(mock.only_request().json()["tools"], body["tools"]);
}

#[actix_web::test]
async fn count_tokens_goes_to_anthropics_counter_and_its_answer_comes_back_as_it_came() {
    let counted = r#"{"input_tokens": 2095}"#;
    let mock = Mock::always(200, "application/json", counted);
    let proxy = start_proxy(config_for(&mock));
    let sent = r#"{"model": "claude-sonnet-4-5", "messages": [{"role": "user", "content": "Hello, world"}]}"#;
    let beta = "token-counting-2024-11-01";
    let answer = post_with(
        &proxy,
        "/v1/messages/count_tokens?beta=true",
        &[
            ("x-api-key", TEST_KEY),
            ("anthropic-version", VERSION),
            ("anthropic-beta", beta),
        ],
        sent,
    )
    .await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    assert_eq!(answer.body, counted.as_bytes());
    let upstream = mock.only_request();
    assert_eq!(upstream.path, "/v1/messages/count_tokens?beta=true");
    assert_eq!(upstream.body, sent.as_bytes());
    assert_eq!(upstream.header("x-api-key"), Some(TEST_KEY));
    assert_eq!(upstream.header("anthropic-version"), Some(VERSION));
    assert_eq!(upstream.header("anthropic-beta"), Some(beta));

    let sent = json!({"model": "anthropic/claude-sonnet-4-5",
                      "messages": [{"role": "user", "content": "Hello, world"}]})
    .to_string();
    let answer = messages(&proxy, "/v1/messages/count_tokens", sent.clone()).await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    let upstream = &mock.requests()[1];
    assert_eq!(upstream.path, "/v1/messages/count_tokens");
    assert_eq!(
        upstream.body,
        sent.replace("anthropic/claude", "claude").as_bytes()
    );
}

#[actix_web::test]
async fn count_tokens_for_an_openai_model_is_a_400_saying_it_is_only_for_anthropic_format() {
    let mock = Mock::always(200, "application/json", r#"{"input_tokens": 1}"#);
    let proxy = start_proxy(config_for(&mock));
    let sent = json!({"model": "openai/gpt-4o-mini",
                      "messages": [{"role": "user", "content": "Hello, world"}]});
    let answer = messages(&proxy, "/v1/messages/count_tokens", sent.to_string()).await;
    assert_eq!(answer.status, 400, "{:?}", answer.body);
    let body = answer.json();
    let (kind, message) = anthropic_error(&body);
    assert_eq!(kind, "invalid_request_error");
    assert!(
        message.contains("count_tokens") && message.contains("Anthropic-format"),
        "{message}"
    );
    assert!(mock.requests().is_empty(), "nothing goes upstream");
}

#[actix_web::test]
async fn count_tokens_follows_rules_and_groups_to_an_anthropic_deployment() {
    let mock = Mock::always(200, "application/json", r#"{"input_tokens": 7}"#);
    let proxy = start_proxy(config_with_catalog(
        &mock,
        r#"{"groups": {"team": {"strategy": "ordered", "deployments": [
                {"provider": "openai", "model": "gpt-4o-mini"},
                {"provider": "anthropic", "model": "claude-sonnet-4-5"}]}},
            "routes": [{"name": "opus-to-team", "match": {"model": "claude-3-opus*"},
                        "to": "team"}]}"#,
    ));
    for (model, rule) in [
        ("team", None),
        ("claude-3-opus-latest", Some("opus-to-team")),
    ] {
        let sent = json!({"model": model, "messages": [{"role": "user", "content": "Hi"}]});
        let answer = messages(&proxy, "/v1/messages/count_tokens", sent.to_string()).await;
        assert_eq!(answer.status, 200, "{model}: {:?}", answer.body);
        assert_eq!(answer.header("x-proxy-rule"), rule);
        let upstream = mock.requests().pop().unwrap();
        assert_eq!(upstream.path, "/v1/messages/count_tokens");
        assert_eq!(upstream.json()["model"], "claude-sonnet-4-5", "{model}");
    }

    let only_openai = start_proxy(config_with_catalog(
        &mock,
        r#"{"groups": {"gpts": {"deployments": [{"provider": "openai", "model": "gpt-4o"}]}}}"#,
    ));
    let sent = json!({"model": "gpts", "messages": [{"role": "user", "content": "Hi"}]});
    let answer = messages(&only_openai, "/v1/messages/count_tokens", sent.to_string()).await;
    assert_eq!(answer.status, 400, "{:?}", answer.body);
    let body = answer.json();
    let (_, message) = anthropic_error(&body);
    assert!(message.contains("\"gpts\""), "{message}");
}
