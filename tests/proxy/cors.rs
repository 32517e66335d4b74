//! Browser access: preflights answered by the proxy itself, and the headers that let a page
//! from an allowed origin read answers, errors and streams.

use actix_web::http::Method;
use futures_util::StreamExt;
use llm_proxy::Config;
use serde_json::json;

use crate::common::*;

const PAGE: &str = "http://localhost:3000";

fn allowing(mock: &Mock, origins: &[&str]) -> Config {
    Config {
        cors_allow_origins: origins.iter().map(|o| o.to_string()).collect(),
        ..config_for(mock)
    }
}

/// A browser's preflight for a POST to the chat route with `headers`, read whole.
async fn preflight(proxy: &Proxy, origin: &str, headers: &str) -> Answer {
    let mut response = client()
        .request(Method::OPTIONS, proxy.url("/v1/chat/openai"))
        .insert_header(("Origin", origin))
        .insert_header(("Access-Control-Request-Method", "POST"))
        .insert_header(("Access-Control-Request-Headers", headers))
        .send()
        .await
        .expect("the proxy answers");
    let body = response.body().await.expect("a whole body");
    Answer {
        status: response.status().as_u16(),
        headers: response.headers().clone(),
        body,
    }
}

/// A chat POST as a page at `origin` sends it, read whole.
async fn chat_from(proxy: &Proxy, origin: &str, key: Option<&str>) -> Answer {
    let mut request = client()
        .post(proxy.url("/v1/chat/openai"))
        .insert_header(("Origin", origin))
        .insert_header(("Content-Type", "application/json"));
    if let Some(key) = key {
        request = request.insert_header(("X-API-Key", key));
    }
    let mut response = request
        .send_body(
            json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]})
                .to_string(),
        )
        .await
        .expect("the proxy answers");
    let body = response.body().await.expect("a whole body");
    Answer {
        status: response.status().as_u16(),
        headers: response.headers().clone(),
        body,
    }
}

fn exposed(answer: &Answer) -> Vec<String> {
    answer
        .header("access-control-expose-headers")
        .expect("Access-Control-Expose-Headers")
        .split(',')
        .map(|name| name.trim().to_ascii_lowercase())
        .collect()
}

fn assert_no_cors_headers(answer: &Answer) {
    let cors: Vec<_> = answer
        .headers
        .keys()
        .filter(|name| name.as_str().starts_with("access-control-"))
        .collect();
    assert!(cors.is_empty(), "CORS headers: {cors:?}");
}

#[actix_web::test]
async fn a_preflight_from_an_allowed_origin_is_answered_without_reaching_the_upstream() {
    let mock = Mock::always(200, "application/json", fixture("openai/completion.json"));
    let proxy = start_proxy(allowing(&mock, &["https://other.example", PAGE]));

    let answer = preflight(&proxy, PAGE, "content-type,x-api-key,x-api-key-anthropic").await;
    assert_eq!(answer.status, 204, "{:?}", answer.body);
    assert_eq!(answer.header("access-control-allow-origin"), Some(PAGE));
    assert_eq!(
        answer.header("access-control-allow-methods"),
        Some("GET, POST, OPTIONS")
    );
    assert_eq!(
        answer.header("access-control-allow-headers"),
        Some("content-type, x-api-key, x-api-key-anthropic")
    );
    assert_eq!(answer.header("access-control-max-age"), Some("600"));
    assert_eq!(answer.header("vary"), Some("Origin"));
    assert!(answer.body.is_empty());
    assert!(mock.requests().is_empty(), "{:?}", mock.requests());
}

#[actix_web::test]
async fn a_preflight_may_ask_for_every_documented_request_header() {
    let mock = Mock::always(200, "application/json", fixture("openai/completion.json"));
    let proxy = start_proxy(allowing(&mock, &[PAGE]));
    let asked = "authorization,content-type,x-api-key,x-api-key-gemini,x-fallbacks,\
                 x-max-retries,x-request-id";
    let answer = preflight(&proxy, PAGE, asked).await;
    assert_eq!(answer.status, 204, "{:?}", answer.body);
    let allowed: Vec<_> = answer
        .header("access-control-allow-headers")
        .unwrap()
        .split(", ")
        .collect();
    assert_eq!(allowed, asked.split(',').collect::<Vec<_>>());
}

#[actix_web::test]
async fn a_preflight_from_another_origin_is_forbidden_naming_it() {
    let mock = Mock::always(200, "application/json", fixture("openai/completion.json"));
    let proxy = start_proxy(allowing(&mock, &[PAGE]));

    let answer = preflight(&proxy, "http://evil.example", "content-type,x-api-key").await;
    assert_eq!(answer.status, 403);
    assert_no_cors_headers(&answer);
    let error = &answer.json()["error"];
    assert_eq!(error["type"], "forbidden");
    assert_eq!(error["provider"], serde_json::Value::Null);
    let message = error["message"].as_str().unwrap();
    assert!(message.contains("http://evil.example"), "{message}");
    assert!(mock.requests().is_empty());
}

#[actix_web::test]
async fn a_preflight_asking_for_a_header_not_allowed_is_forbidden_naming_it() {
    let mock = Mock::always(200, "application/json", fixture("openai/completion.json"));
    let proxy = start_proxy(allowing(&mock, &[PAGE]));

    let answer = preflight(&proxy, PAGE, "content-type,x-api-key,x-debug-token").await;
    assert_eq!(answer.status, 403);
    let error = &answer.json()["error"];
    assert_eq!(error["type"], "forbidden");
    let message = error["message"].as_str().unwrap();
    assert!(message.contains("x-debug-token"), "{message}");
    assert!(mock.requests().is_empty());
}

#[actix_web::test]
async fn a_star_allows_any_origin() {
    let mock = Mock::always(200, "application/json", fixture("openai/completion.json"));
    let proxy = start_proxy(allowing(&mock, &["*"]));

    let answer = preflight(&proxy, "https://anywhere.example:8443", "x-api-key").await;
    assert_eq!(answer.status, 204, "{:?}", answer.body);
    assert_eq!(answer.header("access-control-allow-origin"), Some("*"));
    assert_eq!(
        answer.header("access-control-allow-headers"),
        Some("x-api-key")
    );

    let answer = chat_from(&proxy, "https://anywhere.example:8443", Some(TEST_KEY)).await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.header("access-control-allow-origin"), Some("*"));
}

#[actix_web::test]
async fn cors_is_off_by_default() {
    let mock = Mock::always(200, "application/json", fixture("openai/completion.json"));
    let proxy = start_proxy(config_for(&mock));

    // OPTIONS is routed like any other method: the chat route does not take it.
    let answer = preflight(&proxy, PAGE, "content-type,x-api-key").await;
    assert_eq!(answer.status, 405);
    assert_no_cors_headers(&answer);
    assert_eq!(answer.header("vary"), None);

    let answer = chat_from(&proxy, PAGE, Some(TEST_KEY)).await;
    assert_eq!(answer.status, 200);
    assert_no_cors_headers(&answer);
    assert_eq!(answer.header("vary"), None);
    assert_eq!(mock.requests().len(), 1);
}

#[actix_web::test]
async fn a_chat_answer_to_an_allowed_origin_exposes_the_proxy_headers() {
    let mock = Mock::start(|_| Reply::Full {
        status: 200,
        content_type: "application/json",
        headers: vec![
            ("x-ratelimit-remaining-requests", "41"),
            ("x-request-id", "req_upstream_1"),
        ],
        body: fixture("openai/completion.json"),
    });
    let proxy = start_proxy(allowing(&mock, &[PAGE]));

    let answer = chat_from(&proxy, PAGE, Some(TEST_KEY)).await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    assert_eq!(answer.json()["provider"], "openai");
    assert_eq!(answer.header("access-control-allow-origin"), Some(PAGE));
    assert_eq!(answer.header("vary"), Some("Origin"));
    let exposed = exposed(&answer);
    // Every header of ours that the answer carries is one a page may read.
    for name in [
        "x-proxy-provider",
        "x-proxy-model",
        "x-proxy-attempts",
        "x-ratelimit-remaining-requests",
        "x-request-id",
    ] {
        assert!(answer.headers.contains_key(name), "{name} is sent");
        assert!(exposed.contains(&name.to_owned()), "{name} in {exposed:?}");
    }
    for name in [
        "retry-after",
        "x-upstream-request-id",
        "anthropic-ratelimit-tokens-remaining",
    ] {
        assert!(exposed.contains(&name.to_owned()), "{name} in {exposed:?}");
    }
}

#[actix_web::test]
async fn an_error_to_an_allowed_origin_is_readable_too() {
    let mock = Mock::always(200, "application/json", fixture("openai/completion.json"));
    let proxy = start_proxy(allowing(&mock, &[PAGE]));

    let answer = chat_from(&proxy, PAGE, None).await;
    assert_eq!(answer.status, 401);
    assert_eq!(answer.json()["error"]["type"], "authentication");
    assert_eq!(answer.header("access-control-allow-origin"), Some(PAGE));
    assert!(answer.header("access-control-expose-headers").is_some());
    assert!(mock.requests().is_empty());
}

#[actix_web::test]
async fn an_answer_to_another_origin_is_served_without_cors_headers() {
    let mock = Mock::always(200, "application/json", fixture("openai/completion.json"));
    let proxy = start_proxy(allowing(&mock, &[PAGE]));

    // Served as usual: it is the browser that keeps the page from reading it.
    let answer = chat_from(&proxy, "http://evil.example", Some(TEST_KEY)).await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.json()["provider"], "openai");
    assert_no_cors_headers(&answer);
    assert_eq!(answer.header("vary"), Some("Origin"));
}

#[actix_web::test]
async fn a_stream_to_an_allowed_origin_exposes_the_headers_and_keeps_streaming() {
    let (feed, body) = feed();
    let mock = Mock::streaming(body);
    let proxy = start_proxy(allowing(&mock, &[PAGE]));

    feed.send("data: {\"n\":1}\n\n");
    let mut response = client()
        .post(proxy.url("/v1/chat/openai"))
        .insert_header(("Origin", PAGE))
        .insert_header(("X-API-Key", TEST_KEY))
        .send_body(r#"{"model":"m","stream":true,"messages":[{"role":"user","content":"hi"}]}"#)
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let headers = response.headers();
    assert_eq!(headers.get("content-type").unwrap(), "text/event-stream");
    assert_eq!(headers.get("access-control-allow-origin").unwrap(), PAGE);
    assert_eq!(headers.get("vary").unwrap(), "Origin");
    let exposed = headers
        .get("access-control-expose-headers")
        .unwrap()
        .to_str()
        .unwrap();
    assert!(exposed.contains("X-Proxy-Provider"), "{exposed}");

    // Each event arrives while the upstream is still open: nothing waits for the end.
    assert_eq!(
        response.next().await.unwrap().unwrap(),
        "data: {\"n\":1}\n\n"
    );
    feed.send("data: {\"n\":2}\n\n");
    assert_eq!(
        response.next().await.unwrap().unwrap(),
        "data: {\"n\":2}\n\n"
    );
    feed.send("data: [DONE]\n\n");
    feed.finish();
    let mut rest = Vec::new();
    while let Some(chunk) = response.next().await {
        rest.extend_from_slice(&chunk.unwrap());
    }
    assert_eq!(rest, b"data: [DONE]\n\n");
}

#[actix_web::test]
async fn options_without_a_requested_method_is_not_a_preflight() {
    let mock = Mock::always(200, "application/json", fixture("openai/completion.json"));
    let proxy = start_proxy(allowing(&mock, &[PAGE]));

    let mut response = client()
        .request(Method::OPTIONS, proxy.url("/v1/chat/openai"))
        .insert_header(("Origin", PAGE))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 405);
    // An ordinary answer, readable by the page like any other.
    assert_eq!(
        response
            .headers()
            .get("access-control-allow-origin")
            .unwrap(),
        PAGE
    );
    let body = response.body().await.unwrap();
    let error: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(error["error"]["type"], "method_not_allowed");
}
