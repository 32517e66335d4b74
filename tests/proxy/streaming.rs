//! Streams: bytes pass through unchanged and at once; failures after the start become an SSE
//! error event; a caller hanging up closes the upstream.

use std::time::Duration;

use actix_web::web::Bytes;
use futures_util::StreamExt;
use serde_json::{json, Value};

use crate::common::*;

fn stream_body(model: &str) -> String {
    json!({"model": model, "messages": [{"role": "user", "content": "Say hi"}], "stream": true})
        .to_string()
}

/// Opens a stream through the proxy and returns the response once its headers are in.
async fn open_stream(proxy: &Proxy, provider: &str) -> awc::ClientResponse {
    client()
        .post(proxy.url(&format!("/v1/chat/{provider}")))
        .insert_header(("X-API-Key", TEST_KEY))
        .send_body(stream_body("m"))
        .await
        .expect("the proxy answers")
}

/// The single `event: error` event at the end of `stream`, parsed.
fn trailing_error_event(stream: &[u8]) -> Value {
    let text = std::str::from_utf8(stream).unwrap();
    let at = text
        .rfind("event: error\ndata: ")
        .unwrap_or_else(|| panic!("an error event in {text:?}"));
    assert_eq!(text.matches("event: error").count(), 1, "{text}");
    assert!(
        at == 0 || text[..at].ends_with("\n\n"),
        "the error event starts after a blank line: {text:?}"
    );
    let data = &text[at + "event: error\ndata: ".len()..];
    assert!(data.ends_with("\n\n"), "{text:?}");
    serde_json::from_str(data.trim_end()).unwrap()
}

async fn stream_passes_through_unchanged(provider: &str, fixture_path: &str) {
    let sse = fixture(fixture_path);
    // Cut mid-line, mid-event and inside multi-byte UTF-8 characters.
    let emoji = sse.windows(4).position(|w| w == "👋".as_bytes()).unwrap();
    let chunks = split_at(&sse, &[1, 17, emoji + 2, emoji + 3, sse.len() - 3]);
    let mock = Mock::start(move |_| Reply::sse(chunks.clone()));
    let proxy = start_proxy(config_for(&mock));

    let mut response = open_stream(&proxy, provider).await;
    assert_eq!(response.status(), 200);
    let headers = response.headers();
    assert_eq!(headers.get("content-type").unwrap(), "text/event-stream");
    assert_eq!(headers.get("cache-control").unwrap(), "no-cache");
    assert_eq!(headers.get("x-accel-buffering").unwrap(), "no");
    let received = read_to_end(&mut response).await;
    assert_eq!(Bytes::from(received), sse, "the stream is byte-identical");
    assert_eq!(mock.only_request().json()["stream"], true);
}

#[actix_web::test]
async fn openai_stream_bytes_pass_through_unchanged() {
    stream_passes_through_unchanged("openai", "openai/stream.sse").await;
}

#[actix_web::test]
async fn anthropic_stream_bytes_pass_through_unchanged() {
    stream_passes_through_unchanged("anthropic", "anthropic/stream.sse").await;
}

#[actix_web::test]
async fn first_chunk_arrives_while_the_upstream_holds_back_the_rest() {
    let (feed, body) = feed();
    let mock = Mock::streaming(body);
    let proxy = start_proxy(config_for(&mock));
    let first = "data: {\"choices\":[{\"delta\":{\"content\":\"Hi\"}}]}\n\n";
    feed.send(first);

    let mut response = open_stream(&proxy, "openai").await;
    let chunk = response.next().await.unwrap().unwrap();
    assert_eq!(
        chunk, first,
        "the first chunk came before the upstream finished"
    );

    feed.send("data: [DONE]\n\n");
    feed.finish();
    assert_eq!(read_to_end(&mut response).await, b"data: [DONE]\n\n");
}

#[actix_web::test]
async fn a_client_disconnect_closes_the_upstream_connection() {
    let (mut feed, body) = feed();
    let mock = Mock::streaming(body);
    let proxy = start_proxy(config_for(&mock));
    feed.send("data: {}\n\n");

    let mut response = open_stream(&proxy, "openai").await;
    response.next().await.unwrap().unwrap();
    drop(response);

    // The upstream is still sending nothing: only the proxy hanging up can drop the body.
    assert!(
        feed.dropped_within(Duration::from_secs(5)).await,
        "the proxy closed its upstream connection when the client left"
    );
}

#[actix_web::test]
async fn an_upstream_reset_mid_stream_appends_a_bad_gateway_error_event() {
    let (feed, body) = feed();
    let mock = Mock::streaming(body);
    let proxy = start_proxy(config_for(&mock));
    feed.send("data: {\"n\":1}\n\n");

    let mut response = open_stream(&proxy, "anthropic").await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.next().await.unwrap().unwrap(),
        "data: {\"n\":1}\n\n"
    );
    // Half an event, then the connection breaks.
    feed.send("data: {\"n\":");
    assert_eq!(response.next().await.unwrap().unwrap(), "data: {\"n\":");
    feed.fail();
    let received = read_to_end(&mut response).await;
    let event = trailing_error_event(&received);
    assert_eq!(event["error"]["type"], "bad_gateway");
    assert_eq!(event["error"]["provider"], "anthropic");
    assert!(!String::from_utf8_lossy(&received).contains(TEST_KEY));
}

#[actix_web::test]
async fn an_upstream_silent_mid_stream_appends_a_gateway_timeout_error_event() {
    let (feed, body) = feed();
    let mock = Mock::streaming(body);
    let proxy = start_proxy(llm_proxy::Config {
        http_timeout: Duration::from_millis(300),
        ..config_for(&mock)
    });
    feed.send("data: {\"n\":1}\n\n");

    let mut response = open_stream(&proxy, "openai").await;
    let received = read_to_end(&mut response).await;
    assert!(received.starts_with(b"data: {\"n\":1}\n\n"));
    let event = trailing_error_event(&received);
    assert_eq!(event["error"]["type"], "gateway_timeout");
    assert_eq!(event["error"]["provider"], "openai");
    drop(feed);
}

#[actix_web::test]
async fn a_long_healthy_stream_outlives_the_timeout() {
    let (feed, body) = feed();
    let mock = Mock::streaming(body);
    let proxy = start_proxy(llm_proxy::Config {
        http_timeout: Duration::from_millis(400),
        ..config_for(&mock)
    });
    actix_web::rt::spawn(async move {
        // Ten chunks 100 ms apart: a second in all, each gap well inside the timeout.
        for n in 0..10 {
            feed.send(format!("data: {{\"n\":{n}}}\n\n"));
            actix_web::rt::time::sleep(Duration::from_millis(100)).await;
        }
        feed.send("data: [DONE]\n\n");
    });

    let mut response = open_stream(&proxy, "openai").await;
    let received = String::from_utf8(read_to_end(&mut response).await).unwrap();
    assert!(received.ends_with("data: [DONE]\n\n"), "{received}");
    assert!(!received.contains("event: error"), "{received}");
    assert_eq!(received.matches("data: {\"n\":").count(), 10);
}

#[actix_web::test]
async fn a_stream_request_answered_with_an_error_status_gets_a_json_error() {
    let mock = Mock::start(|_| Reply::Full {
        status: 429,
        content_type: "application/json",
        headers: vec![("retry-after", "7")],
        body: Bytes::from_static(
            br#"{"error":{"message":"Rate limit reached","type":"requests"}}"#,
        ),
    });
    let proxy = start_proxy(config_for(&mock));
    let answer = post(&proxy, "/v1/chat/openai", Some(TEST_KEY), stream_body("m")).await;
    assert_eq!(answer.status, 429);
    assert_eq!(answer.header("content-type"), Some("application/json"));
    assert_eq!(answer.header("retry-after"), Some("7"));
    let error = answer.json();
    assert_eq!(error["error"]["type"], "upstream_error");
    assert_eq!(error["error"]["upstream_status"], 429);
    assert_eq!(
        error["error"]["upstream"]["error"]["message"],
        "Rate limit reached"
    );
}
