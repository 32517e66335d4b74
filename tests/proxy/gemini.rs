//! Gemini through the path-routed proxy: the key in a header, generateContent bodies,
//! normalized answers, and its SSE stream passed through unchanged.

use actix_web::web::Bytes;
use serde_json::json;

use crate::common::*;

#[actix_web::test]
async fn gemini_answer_is_normalized_and_the_upstream_gets_its_own_shape() {
    let mock = Mock::always(200, "application/json", fixture("gemini/generate.json"));
    let proxy = start_proxy(config_for(&mock));
    let answer = chat(
        &proxy,
        "gemini",
        json!({"model": "gemini-1.5-flash", "max_tokens": 64, "stop": ["END"],
               "messages": [{"role": "system", "content": "Be brief."},
                            {"role": "user", "content": "Say hi"}]}),
    )
    .await;
    assert_eq!(answer.status, 200);
    assert_eq!(
        answer.json(),
        json!({
            "provider": "gemini",
            "model": "gemini-1.5-flash-002",
            "content": "Hello! How can I help you today?",
            "stop_reason": "stop",
            "native_stop_reason": "STOP",
            "usage": {"input_tokens": 4, "output_tokens": 9},
        })
    );
    let upstream = mock.only_request();
    assert_eq!(upstream.path, "/v1/models/gemini-1.5-flash:generateContent");
    assert_eq!(upstream.header("x-goog-api-key"), Some(TEST_KEY));
    assert_eq!(upstream.header("authorization"), None);
    assert_eq!(
        upstream.json(),
        json!({
            "contents": [{"role": "user", "parts": [{"text": "Say hi"}]}],
            "systemInstruction": {"parts": [{"text": "Be brief."}]},
            "generationConfig": {"maxOutputTokens": 64, "stopSequences": ["END"]},
        })
    );
}

#[actix_web::test]
async fn gemini_stream_bytes_pass_through_unchanged() {
    let sse = fixture("gemini/stream.sse");
    let chunks = split_at(&sse, &[7, 150]);
    let mock = Mock::start(move |_| Reply::sse(chunks.clone()));
    let proxy = start_proxy(config_for(&mock));
    let answer = chat(
        &proxy,
        "gemini",
        json!({"model": "gemini-1.5-flash", "stream": true,
               "messages": [{"role": "user", "content": "Say hi"}]}),
    )
    .await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.body, sse);
    assert_eq!(
        mock.only_request().path,
        "/v1/models/gemini-1.5-flash:streamGenerateContent?alt=sse"
    );
}

#[actix_web::test]
async fn gemini_errors_keep_their_status_and_body() {
    let mock = Mock::always(
        400,
        "application/json",
        Bytes::from_static(
            br#"{"error":{"code":400,"message":"API key not valid. Please pass a valid API key.","status":"INVALID_ARGUMENT"}}"#,
        ),
    );
    let proxy = start_proxy(config_for(&mock));
    let answer = chat(
        &proxy,
        "gemini",
        json!({"model": "gemini-1.5-flash", "messages": [{"role": "user", "content": "hi"}]}),
    )
    .await;
    assert_eq!(answer.status, 400);
    let body = answer.json();
    assert_eq!(body["error"]["type"], "upstream_error");
    assert_eq!(
        body["error"]["upstream"]["error"]["status"],
        "INVALID_ARGUMENT"
    );
    assert_eq!(
        body["error"]["message"],
        "upstream answered 400: API key not valid. Please pass a valid API key."
    );
}
