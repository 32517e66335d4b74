//! The response cache: asked for per request or per group, never across tenants, never for
//! errors, bypassed on the caller's `Cache-Control`, and free when it answers.

use std::sync::{
    atomic::{AtomicUsize, Ordering},
    Arc,
};

use serde_json::json;

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
async fn streams_are_not_cached_yet() {
    let mock = Mock::start(|_| Reply::sse(vec![fixture("openai/parallel_tool_calls.sse")]));
    let proxy = start_proxy(config_for(&mock));
    for _ in 0..2 {
        let answer = post_with(
            &proxy,
            "/v1/chat/completions",
            &[("Authorization", &format!("Bearer {TEST_KEY}")), USE],
            streamed("openai/gpt-4o").to_string(),
        )
        .await;
        assert_eq!(answer.status, 200);
        assert_eq!(answer.header("x-proxy-cache"), Some("BYPASS"));
    }
    assert_eq!(mock.requests().len(), 2);
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
