//! The providers file's `routes` rules on the two doors: by header, model glob, prompt size,
//! key fingerprint and time window (with the clock set by the test).

use std::time::{Duration, SystemTime};

use serde_json::{json, Value};

use crate::common::*;

/// Answers every path in the format it speaks.
fn upstreams() -> Mock {
    Mock::start(|request| {
        let fixture_path = if request.path.ends_with("/messages") {
            "anthropic/message.json"
        } else {
            "openai/completion.json"
        };
        Reply::json(200, fixture(fixture_path))
    })
}

/// Two more OpenAI-format providers on the mock, `acme` and `long`, and the given rules.
fn catalog(mock: &Mock, routes: &str) -> String {
    let base = mock.base_url();
    let acme = base.replace("/v1", "/acme/v1");
    let long = base.replace("/v1", "/long/v1");
    format!(
        r#"{{"providers": {{"acme": {{"kind": "openai", "base_url": "{acme}"}},
                            "long": {{"kind": "openai", "base_url": "{long}"}}}},
             "aliases": {{"cheap": {{"provider": "openai", "model": "gpt-4o-mini"}}}},
             "routes": {routes}}}"#
    )
}

fn proxy_with(mock: &Mock, routes: &str) -> Proxy {
    start_proxy(config_with_catalog(mock, &catalog(mock, routes)))
}

async fn completions(proxy: &Proxy, headers: &[(&str, &str)], body: Value) -> Answer {
    let bearer = format!("Bearer {TEST_KEY}");
    let mut all = vec![
        ("Authorization", bearer.as_str()),
        ("Content-Type", "application/json"),
    ];
    all.extend_from_slice(headers);
    post_with(proxy, "/v1/chat/completions", &all, body.to_string()).await
}

/// The path and model of the one request the mock received since the last call.
fn last_call(mock: &Mock) -> (String, Value) {
    let request = mock.requests().pop().expect("an upstream call");
    (request.path.clone(), request.json()["model"].clone())
}

#[actix_web::test]
async fn a_tenant_header_sends_its_traffic_to_its_own_provider() {
    let mock = upstreams();
    let proxy = proxy_with(
        &mock,
        r#"[{"name": "acme-dedicated", "to": "acme/dedicated-4o",
             "match": {"header": {"name": "X-Tenant", "value": "acme"}}}]"#,
    );
    let answer = completions(&proxy, &[("x-tenant", "acme")], hi("openai/gpt-4o")).await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.header("x-proxy-rule"), Some("acme-dedicated"));
    assert_eq!(answer.header("x-proxy-provider"), Some("acme"));
    assert_eq!(
        last_call(&mock),
        ("/acme/v1/chat/completions".into(), json!("dedicated-4o"))
    );

    for other in [&[("X-Tenant", "ACME")][..], &[("X-Tenant", "globex")], &[]] {
        let answer = completions(&proxy, other, hi("openai/gpt-4o")).await;
        assert_eq!(answer.status, 200);
        assert_eq!(answer.header("x-proxy-rule"), None, "{other:?}");
        assert_eq!(
            last_call(&mock),
            ("/v1/chat/completions".into(), json!("gpt-4o")),
            "no match leaves the model as named: {other:?}"
        );
    }
}

#[actix_web::test]
async fn a_model_glob_rule_gives_a_bare_name_a_target() {
    let mock = upstreams();
    let proxy = proxy_with(
        &mock,
        r#"[{"match": {"model": "*gpt-4?"}, "to": "cheap"},
            {"match": {"model": "openai/*"}, "to": "acme/everything"}]"#,
    );
    // A bare name no provider prefix would otherwise refuse.
    let answer = completions(&proxy, &[], hi("gpt-4o")).await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    assert_eq!(answer.header("x-proxy-rule"), Some("routes[0]"));
    assert_eq!(
        last_call(&mock),
        ("/v1/chat/completions".into(), json!("gpt-4o-mini"))
    );
    let answer = completions(&proxy, &[], hi("openai/gpt-4.1")).await;
    assert_eq!(answer.header("x-proxy-rule"), Some("routes[1]"));
    assert_eq!(
        last_call(&mock),
        ("/acme/v1/chat/completions".into(), json!("everything"))
    );
    let answer = completions(&proxy, &[], hi("gemini-pro")).await;
    assert_eq!(
        answer.status, 400,
        "no rule, and a bare name is refused as before"
    );
}

#[actix_web::test]
async fn a_big_prompt_goes_to_the_long_context_target() {
    let mock = upstreams();
    let proxy = proxy_with(
        &mock,
        r#"[{"name": "long-context", "match": {"prompt_tokens_above": 1000},
             "to": "long/long-128k"}]"#,
    );
    let big = json!({"model": "openai/gpt-4o",
                     "messages": [{"role": "user", "content": "word ".repeat(1000)}]});
    let answer = completions(&proxy, &[], big).await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.header("x-proxy-rule"), Some("long-context"));
    assert_eq!(
        last_call(&mock),
        ("/long/v1/chat/completions".into(), json!("long-128k"))
    );
    let answer = completions(&proxy, &[], hi("openai/gpt-4o")).await;
    assert_eq!(answer.header("x-proxy-rule"), None);
    assert_eq!(last_call(&mock).1, json!("gpt-4o"));
}

#[actix_web::test]
async fn a_weekend_window_follows_the_clock_the_test_sets() {
    let mock = upstreams();
    // 2026-12-05 is a Saturday; 23:30 UTC is already Sunday in Berlin.
    let saturday_night = SystemTime::UNIX_EPOCH + Duration::from_secs(1_796_428_800 + 84_600);
    let routes = r#"[{"name": "weekend", "to": "cheap",
        "match": {"time": {"days": ["sat", "sun"], "time_zone": "Europe/Berlin"}}}]"#;
    let config = |now| llm_proxy::Config {
        clock_override: Some(now),
        ..config_with_catalog(&mock, &catalog(&mock, routes))
    };
    let weekend = start_proxy(config(saturday_night));
    let answer = completions(&weekend, &[], hi("openai/gpt-4o")).await;
    assert_eq!(answer.header("x-proxy-rule"), Some("weekend"));
    assert_eq!(last_call(&mock).1, json!("gpt-4o-mini"));

    let monday_noon = saturday_night + Duration::from_secs(36 * 3600);
    let weekday = start_proxy(config(monday_noon));
    let answer = completions(&weekday, &[], hi("openai/gpt-4o")).await;
    assert_eq!(answer.header("x-proxy-rule"), None);
    assert_eq!(last_call(&mock).1, json!("gpt-4o"));
}

#[actix_web::test]
async fn a_key_fingerprint_rule_matches_the_callers_key_without_holding_it() {
    let mock = upstreams();
    // printf %s sk-test-key-0123456789 | sha256sum | cut -c1-16
    let proxy = proxy_with(
        &mock,
        r#"[{"name": "vip", "match": {"key_fingerprint": "ae9a4bb8"}, "to": "acme/vip"}]"#,
    );
    let answer = completions(&proxy, &[], hi("openai/gpt-4o")).await;
    assert_eq!(answer.header("x-proxy-rule"), Some("vip"));
    assert_eq!(last_call(&mock).1, json!("vip"));
    let other_key = [
        ("Authorization", "Bearer sk-someone-else"),
        ("Content-Type", "application/json"),
    ];
    let answer = post_with(
        &proxy,
        "/v1/chat/completions",
        &other_key,
        hi("openai/gpt-4o").to_string(),
    )
    .await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.header("x-proxy-rule"), None);
}

#[actix_web::test]
async fn the_anthropic_door_applies_rules_and_the_path_route_does_not() {
    let mock = upstreams();
    let proxy = proxy_with(
        &mock,
        r#"[{"name": "haiku", "match": {"model": "claude-*-opus*"},
             "to": "anthropic/claude-3-5-haiku-latest"}]"#,
    );
    let body = json!({"model": "claude-3-opus-latest", "max_tokens": 10,
                      "messages": [{"role": "user", "content": "hi"}]});
    let answer = post(&proxy, "/v1/messages", Some(TEST_KEY), body.to_string()).await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    assert_eq!(answer.header("x-proxy-rule"), Some("haiku"));
    assert_eq!(
        last_call(&mock),
        ("/v1/messages".into(), json!("claude-3-5-haiku-latest"))
    );

    // The path names its provider: no rule sends it elsewhere.
    let answer = chat(&proxy, "anthropic", hi("claude-3-opus-latest")).await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.header("x-proxy-rule"), None);
    assert_eq!(last_call(&mock).1, json!("claude-3-opus-latest"));
}

#[actix_web::test]
async fn a_failed_request_still_names_its_rule() {
    let mock = Mock::always(503, "application/json", r#"{"error": {"message": "down"}}"#);
    let proxy = proxy_with(
        &mock,
        r#"[{"name": "tenant", "match": {"header": {"name": "x-tenant", "value": "acme"}},
             "to": "acme/m"}]"#,
    );
    let answer = completions(&proxy, &[("X-Tenant", "acme")], hi("openai/gpt-4o")).await;
    assert_eq!(answer.status, 503);
    assert_eq!(answer.header("x-proxy-rule"), Some("tenant"));
}

#[actix_web::test]
async fn a_rule_to_nowhere_stops_the_proxy_at_start() {
    let mock = upstreams();
    let config = config_with_catalog(
        &mock,
        &catalog(&mock, r#"[{"match": {}, "to": "nobody/m"}]"#),
    );
    let err = config.validate().unwrap_err().to_string();
    assert!(err.contains("routes[0].to: \"nobody/m\""), "{err}");
}
