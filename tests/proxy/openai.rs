//! OpenAI through the proxy: auth mapping, the body forwarded as given, normalized answers.

use actix_web::web::Bytes;
use llm_proxy::Config;
use serde_json::json;

use crate::common::*;

#[actix_web::test]
async fn openai_completion_is_normalized() {
    let mock = Mock::always(200, "application/json", fixture("openai/completion.json"));
    let proxy = start_proxy(config_for(&mock));
    let answer = chat(
        &proxy,
        "openai",
        json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Say hi"}]}),
    )
    .await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.header("content-type"), Some("application/json"));
    assert_eq!(
        answer.json(),
        json!({
            "provider": "openai",
            "model": "gpt-4o-mini-2024-07-18",
            "content": "Hello! How can I help you today?",
            "stop_reason": "stop",
            "native_stop_reason": "stop",
            "usage": {"input_tokens": 19, "output_tokens": 9},
        })
    );
}

#[actix_web::test]
async fn openai_upstream_gets_a_bearer_token_and_the_body_byte_for_byte() {
    let mock = Mock::always(200, "application/json", fixture("openai/completion.json"));
    let proxy = start_proxy(config_for(&mock));
    // Field order, spacing and unknown fields must all survive.
    let body = r#"{"temperature": 0.2, "model":"gpt-4o-mini","messages":[{"role":"system","content":"You are helpful"},{"role":"user","content":"Say hi","name":"ann"}],"logit_bias":{"50256":-100},"max_tokens":256,"stop":null}"#;
    let answer = client()
        .post(proxy.url("/v1/chat/openai"))
        .insert_header(("X-API-Key", TEST_KEY))
        .insert_header(("X-Custom-Header", "not for the upstream"))
        // What curl -d sends: the proxy reads JSON whatever the type says.
        .insert_header(("Content-Type", "application/x-www-form-urlencoded"))
        .send_body(body)
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);

    let upstream = mock.only_request();
    assert_eq!(upstream.path, "/v1/chat/completions");
    assert_eq!(upstream.body, Bytes::from_static(body.as_bytes()));
    assert_eq!(
        upstream.header("authorization"),
        Some(format!("Bearer {TEST_KEY}").as_str())
    );
    assert_eq!(upstream.header("content-type"), Some("application/json"));
    assert_eq!(
        upstream.header("x-api-key"),
        None,
        "the caller's header is not forwarded"
    );
    assert_eq!(upstream.header("x-custom-header"), None);
}

#[actix_web::test]
async fn a_base_url_with_a_trailing_slash_works() {
    let mock = Mock::always(200, "application/json", fixture("openai/completion.json"));
    let proxy = start_proxy(config_with_base(&format!("{}/", mock.base_url())));
    let answer = chat(
        &proxy,
        "openai",
        json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]}),
    )
    .await;
    assert_eq!(answer.status, 200);
    assert_eq!(mock.only_request().path, "/v1/chat/completions");
}

#[actix_web::test]
async fn a_five_mib_completion_passes() {
    let content = "x".repeat(5 * 1024 * 1024);
    let completion = json!({
        "model": "gpt-4o-mini",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                     "finish_reason": "length"}],
    });
    let mock = Mock::always(200, "application/json", completion.to_string());
    let proxy = start_proxy(config_for(&mock));
    let answer = chat(
        &proxy,
        "openai",
        json!({"model": "m", "messages": [{"role": "user", "content": "long"}]}),
    )
    .await;
    assert_eq!(answer.status, 200);
    let body = answer.json();
    assert_eq!(body["content"].as_str().unwrap().len(), content.len());
    assert_eq!(body["stop_reason"], "length");
    assert!(
        body.get("usage").is_none(),
        "no usage from the upstream, none in the answer"
    );
}

#[actix_web::test]
async fn rate_limit_and_request_id_headers_are_copied_onto_a_success() {
    let mock = Mock::start(|_| Reply::Full {
        status: 200,
        content_type: "application/json",
        headers: vec![
            ("x-ratelimit-remaining-requests", "99"),
            ("x-request-id", "req_123"),
            ("openai-organization", "org-secret"),
        ],
        body: fixture("openai/completion.json"),
    });
    let proxy = start_proxy(config_for(&mock));
    let answer = chat(
        &proxy,
        "openai",
        json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]}),
    )
    .await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.header("x-ratelimit-remaining-requests"), Some("99"));
    // X-Request-Id is the proxy's own; the upstream's is passed on under another name.
    assert_eq!(answer.header("x-upstream-request-id"), Some("req_123"));
    assert_ne!(answer.header("x-request-id"), Some("req_123"));
    assert_eq!(answer.header("openai-organization"), None);
}

#[actix_web::test]
async fn the_upstream_connection_is_reused_across_requests() {
    let mock = Mock::always(200, "application/json", fixture("openai/completion.json"));
    let proxy = start_proxy(Config {
        // Each worker has its own upstream pool, and each call comes on a new connection that
        // either worker may take: with two workers, two pooled upstream connections.
        workers: 1,
        ..config_for(&mock)
    });
    for _ in 0..3 {
        let answer = chat(
            &proxy,
            "openai",
            json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]}),
        )
        .await;
        assert_eq!(answer.status, 200);
    }
    let peers: std::collections::HashSet<_> =
        mock.requests().iter().map(|r| r.peer.unwrap()).collect();
    assert_eq!(
        peers.len(),
        1,
        "one pooled connection served every call: {peers:?}"
    );
}

#[actix_web::test]
async fn streams_and_answers_in_turn_share_one_upstream_connection() {
    // Each response head on a kept-alive connection is looked at in turn (chunked streams,
    // sized answers): none is taken for close-delimited, so the connection stays pooled.
    let mock = Mock::start(|request| {
        if request.json()["stream"] == true {
            Reply::sse(vec![fixture("openai/stream.sse")])
        } else {
            Reply::json(200, fixture("openai/completion.json"))
        }
    });
    let proxy = start_proxy(Config {
        // Each worker has its own upstream pool, and each call comes on a new connection that
        // either worker may take: with two workers, two pooled upstream connections.
        workers: 1,
        ..config_for(&mock)
    });
    for stream in [true, false, true, false] {
        let body = json!({"model": "m", "stream": stream,
                          "messages": [{"role": "user", "content": "hi"}]});
        let answer = chat(&proxy, "openai", body).await;
        assert_eq!(answer.status, 200);
        if stream {
            assert_eq!(answer.body, fixture("openai/stream.sse"));
        }
    }
    let peers: std::collections::HashSet<_> =
        mock.requests().iter().map(|r| r.peer.unwrap()).collect();
    assert_eq!(peers.len(), 1, "one pooled connection: {peers:?}");
}
