//! Anthropic through the proxy: auth and version headers, the Messages body, normalized answers.

use serde_json::json;

use crate::common::*;

#[actix_web::test]
async fn anthropic_message_is_normalized() {
    let mock = Mock::always(200, "application/json", fixture("anthropic/message.json"));
    let proxy = start_proxy(config_for(&mock));
    let answer = chat(
        &proxy,
        "anthropic",
        json!({"model": "claude-3-5-haiku-latest", "messages": [{"role": "user", "content": "Say hi"}]}),
    )
    .await;
    assert_eq!(answer.status, 200);
    assert_eq!(
        answer.json(),
        json!({
            "provider": "anthropic",
            "model": "claude-3-5-haiku-20241022",
            "content": "Hello! How can I help you today?",
            "stop_reason": "stop",
            "native_stop_reason": "end_turn",
            "usage": {"input_tokens": 12, "output_tokens": 10},
        })
    );
}

#[actix_web::test]
async fn anthropic_upstream_gets_x_api_key_and_the_version_header() {
    let mock = Mock::always(200, "application/json", fixture("anthropic/message.json"));
    let proxy = start_proxy(llm_proxy::Config {
        anthropic_version: "2024-10-22".into(),
        ..config_for(&mock)
    });
    chat(
        &proxy,
        "anthropic",
        json!({"model": "c", "messages": [{"role": "user", "content": "hi"}]}),
    )
    .await;
    let upstream = mock.only_request();
    assert_eq!(upstream.path, "/v1/messages");
    assert_eq!(upstream.header("x-api-key"), Some(TEST_KEY));
    assert_eq!(upstream.header("anthropic-version"), Some("2024-10-22"));
    assert_eq!(upstream.header("authorization"), None);
    assert_eq!(upstream.header("content-type"), Some("application/json"));
}

#[actix_web::test]
async fn anthropic_system_messages_move_to_top_level_and_stop_becomes_stop_sequences() {
    let mock = Mock::always(200, "application/json", fixture("anthropic/message.json"));
    let proxy = start_proxy(llm_proxy::Config {
        anthropic_default_max_tokens: 333,
        ..config_for(&mock)
    });
    let answer = chat(
        &proxy,
        "anthropic",
        json!({
            "model": "claude-3-5-haiku-latest",
            "messages": [
                {"role": "system", "content": "You are helpful."},
                {"role": "system", "content": "Answer in French."},
                {"role": "user", "content": "Say hi"},
            ],
            "stop": "END",
            "temperature": 0.2,
            "top_k": 40,
        }),
    )
    .await;
    assert_eq!(answer.status, 200);
    assert_eq!(
        mock.only_request().json(),
        json!({
            "model": "claude-3-5-haiku-latest",
            "messages": [{"role": "user", "content": "Say hi"}],
            "stop_sequences": ["END"],
            "temperature": 0.2,
            "top_k": 40,
            "max_tokens": 333,
            "system": "You are helpful.\n\nAnswer in French.",
        })
    );
}

#[actix_web::test]
async fn anthropic_max_tokens_given_by_the_caller_is_kept() {
    let mock = Mock::always(200, "application/json", fixture("anthropic/message.json"));
    let proxy = start_proxy(config_for(&mock));
    chat(
        &proxy,
        "anthropic",
        json!({"model": "c", "max_tokens": 12, "messages": [{"role": "user", "content": "hi"}]}),
    )
    .await;
    assert_eq!(mock.only_request().json()["max_tokens"], 12);
}

#[actix_web::test]
async fn anthropic_stop_reasons_are_mapped_with_the_native_one_beside() {
    for (native, normal) in [
        ("max_tokens", "length"),
        ("tool_use", "tool_calls"),
        ("refusal", "content_filter"),
    ] {
        let message = json!({
            "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-3-5-haiku-20241022",
            "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
            "stop_reason": native, "stop_sequence": null,
            "usage": {"input_tokens": 1, "output_tokens": 2},
        });
        let mock = Mock::always(200, "application/json", message.to_string());
        let proxy = start_proxy(config_for(&mock));
        let answer = chat(
            &proxy,
            "anthropic",
            json!({"model": "c", "messages": [{"role": "user", "content": "hi"}]}),
        )
        .await;
        let body = answer.json();
        assert_eq!(body["stop_reason"], normal);
        assert_eq!(body["native_stop_reason"], native);
        assert_eq!(body["content"], "ab");
    }
}
