//! Model groups over several mock deployments: weighted splits, sticky callers, failover,
//! ejection and readmission, and what a caller's own mistakes do not do.

use std::sync::{
    atomic::{AtomicBool, Ordering},
    Arc,
};
use std::time::Duration;

use futures_util::StreamExt;

use crate::common::*;

fn ok() -> Mock {
    Mock::always(200, "application/json", fixture("openai/completion.json"))
}

/// A providers file with one group `g` of the given strategy over the mocks, each an
/// `openai` deployment of model `m<i>` at its own base URL.
fn catalog(strategy: &str, extra: &str, mocks: &[(&Mock, f64)]) -> String {
    let deployments: Vec<String> = mocks
        .iter()
        .enumerate()
        .map(|(i, (mock, weight))| {
            format!(
                r#"{{"provider": "openai", "model": "m{i}", "base_url": "{}", "weight": {weight}}}"#,
                mock.base_url()
            )
        })
        .collect();
    format!(
        r#"{{"groups": {{"g": {{"strategy": "{strategy}"{extra}, "deployments": [{}]}}}}}}"#,
        deployments.join(",")
    )
}

#[actix_web::test]
async fn weights_split_traffic_as_configured_over_2000_requests() {
    let (a, b) = (ok(), ok());
    let proxy = start_proxy(config_with_catalog(
        &a,
        &catalog("weighted", "", &[(&a, 3.0), (&b, 1.0)]),
    ));
    for _ in 0..2000 {
        let answer = complete(&proxy, hi("g")).await;
        assert_eq!(answer.status, 200, "{:?}", answer.body);
        assert_eq!(answer.header("x-proxy-group"), Some("g"));
    }
    let on_a = a.requests().len();
    assert_eq!(on_a + b.requests().len(), 2000);
    // 1500 expected, with a standard deviation of about 19: five of them either side.
    assert!(
        (1403..=1597).contains(&on_a),
        "{on_a} of 2000 on the weight-3 arm"
    );
    assert_eq!(
        a.requests()[0].json()["model"],
        "m0",
        "each deployment's own model"
    );
}

#[actix_web::test]
async fn sticky_keeps_a_session_on_one_arm() {
    let (a, b) = (ok(), ok());
    let proxy = start_proxy(config_with_catalog(
        &a,
        &catalog(
            "weighted",
            r#", "sticky": {"header": "X-Session-Id"}"#,
            &[(&a, 1.0), (&b, 1.0)],
        ),
    ));
    let mut arms = std::collections::HashSet::new();
    for session in ["s-1", "s-2", "s-3", "s-4", "s-5", "s-6"] {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..10 {
            let answer = post_with(
                &proxy,
                "/v1/chat/completions",
                &[
                    ("Authorization", &format!("Bearer {TEST_KEY}")),
                    ("X-Session-Id", session),
                ],
                hi("g").to_string(),
            )
            .await;
            assert_eq!(answer.status, 200);
            seen.insert(answer.header("x-proxy-deployment").unwrap().to_owned());
        }
        assert_eq!(seen.len(), 1, "{session} moved between arms: {seen:?}");
        arms.extend(seen);
    }
    assert_eq!(a.requests().len() + b.requests().len(), 60);
}

#[actix_web::test]
async fn a_503_fails_over_to_the_next_deployment() {
    let down = Mock::always(
        503,
        "application/json",
        r#"{"error":{"message":"overloaded"}}"#,
    );
    let up = ok();
    let proxy = start_proxy(config_with_catalog(
        &up,
        &catalog("ordered", "", &[(&down, 1.0), (&up, 1.0)]),
    ));
    let answer = complete(&proxy, hi("g")).await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    assert_eq!(answer.header("x-proxy-deployment"), Some("openai/m1"));
    assert_eq!(answer.header("x-proxy-attempts"), Some("2"));
    assert_eq!(down.requests().len(), 1);
    assert_eq!(up.only_request().json()["model"], "m1");
}

#[actix_web::test]
async fn repeated_5xx_eject_a_deployment_until_a_probe_succeeds() {
    let failing = Arc::new(AtomicBool::new(true));
    let flaky = {
        let failing = failing.clone();
        Mock::start(move |_| match failing.load(Ordering::SeqCst) {
            true => Reply::json(500, r#"{"error":{"message":"boom"}}"#),
            false => Reply::json(200, fixture("openai/completion.json")),
        })
    };
    let steady = ok();
    let proxy = start_proxy(config_with_catalog(
        &steady,
        &catalog("ordered", "", &[(&flaky, 1.0), (&steady, 1.0)]),
    ));
    for _ in 0..3 {
        let answer = complete(&proxy, hi("g")).await;
        assert_eq!(answer.header("x-proxy-deployment"), Some("openai/m1"));
    }
    assert_eq!(flaky.requests().len(), 3);
    // Ejected: the next requests go straight to the other deployment.
    for _ in 0..3 {
        let answer = complete(&proxy, hi("g")).await;
        assert_eq!(answer.header("x-proxy-attempts"), Some("1"));
    }
    assert_eq!(flaky.requests().len(), 3);
    let text = metrics_text(&proxy).await;
    assert!(
        has_line(
            &text,
            r#"llm_proxy_deployment_up{group="g",deployment="openai/m0"} 0"#
        ),
        "{text}"
    );
    assert!(has_line(
        &text,
        r#"llm_proxy_deployment_up{group="g",deployment="openai/m1"} 1"#
    ));
    assert!(text
        .contains(r#"llm_proxy_deployment_ttfb_ewma_seconds{group="g",deployment="openai/m1"} "#));
    // It recovers; after the first backoff (1 s) one request probes it and readmits it.
    failing.store(false, Ordering::SeqCst);
    actix_web::rt::time::sleep(Duration::from_millis(1100)).await;
    let answer = complete(&proxy, hi("g")).await;
    assert_eq!(answer.header("x-proxy-deployment"), Some("openai/m0"));
    assert_eq!(flaky.requests().len(), 4);
    let text = metrics_text(&proxy).await;
    assert!(has_line(
        &text,
        r#"llm_proxy_deployment_up{group="g",deployment="openai/m0"} 1"#
    ));
}

#[actix_web::test]
async fn a_callers_401_ejects_nothing() {
    let refusing = Mock::always(
        401,
        "application/json",
        r#"{"error":{"message":"bad key"}}"#,
    );
    let other = ok();
    let proxy = start_proxy(config_with_catalog(
        &other,
        &catalog("ordered", "", &[(&refusing, 1.0), (&other, 1.0)]),
    ));
    for _ in 0..6 {
        let answer = complete(&proxy, hi("g")).await;
        assert_eq!(
            answer.status, 401,
            "the caller's key is the caller's to fix"
        );
    }
    assert_eq!(refusing.requests().len(), 6, "never ejected");
    assert!(other.requests().is_empty());
    let text = metrics_text(&proxy).await;
    assert!(has_line(
        &text,
        r#"llm_proxy_deployment_up{group="g",deployment="openai/m0"} 1"#
    ));
}

#[actix_web::test]
async fn a_deployment_of_another_provider_needs_its_own_key() {
    let (a, b) = (ok(), ok());
    // `anthropic` first: the caller's plain key is for it; `openai` needs X-API-Key-Openai.
    let text = format!(
        r#"{{"groups": {{"g": {{"strategy": "ordered", "deployments": [
             {{"provider": "anthropic", "model": "c", "base_url": "{}"}},
             {{"provider": "openai", "model": "m", "base_url": "{}"}}]}}}}}}"#,
        a.base_url(),
        b.base_url()
    );
    let down = Mock::always(503, "application/json", "{}");
    let text = text.replacen(&a.base_url(), &down.base_url(), 1);
    let proxy = start_proxy(config_with_catalog(&a, &text));
    let answer = complete(&proxy, hi("g")).await;
    assert_eq!(
        answer.status, 503,
        "no key for openai: skipped, not sent the caller's"
    );
    assert!(b.requests().is_empty());
    let answer = post_with(
        &proxy,
        "/v1/chat/completions",
        &[
            ("Authorization", &format!("Bearer {TEST_KEY}")),
            ("X-API-Key-Openai", "sk-openai-own"),
        ],
        hi("g").to_string(),
    )
    .await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    assert_eq!(
        b.only_request().header("authorization"),
        Some("Bearer sk-openai-own")
    );
}

#[actix_web::test]
async fn models_lists_the_groups() {
    let mock = ok();
    let proxy = start_proxy(config_with_catalog(
        &mock,
        &catalog("ordered", "", &[(&mock, 1.0)]),
    ));
    let mut response = client().get(proxy.url("/v1/models")).send().await.unwrap();
    let list: serde_json::Value = response.json().await.unwrap();
    let ids: Vec<_> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_owned())
        .collect();
    assert!(ids.contains(&"g".to_owned()), "{ids:?}");
}

#[actix_web::test]
async fn an_alias_answers_as_a_one_deployment_group() {
    let mock = ok();
    let proxy = start_proxy(config_with_catalog(
        &mock,
        r#"{"aliases": {"fast": {"provider": "openai", "model": "gpt-4o-mini"}}}"#,
    ));
    let answer = complete(&proxy, hi("fast")).await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.header("x-proxy-group"), Some("fast"));
    assert_eq!(
        answer.header("x-proxy-deployment"),
        Some("openai/gpt-4o-mini")
    );
    assert_eq!(mock.only_request().json()["model"], "gpt-4o-mini");
    let mut response = client().get(proxy.url("/v1/models")).send().await.unwrap();
    let list: serde_json::Value = response.json().await.unwrap();
    let fast = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["id"] == "fast")
        .count();
    assert_eq!(fast, 1, "listed once, as the alias it is");
}

#[actix_web::test]
async fn latency_moves_traffic_to_the_faster_deployment_and_back_when_they_swap() {
    let swapped = Arc::new(AtomicBool::new(false));
    let mock = |fast_first: bool| {
        let swapped = swapped.clone();
        Mock::start(move |_| {
            let fast = fast_first != swapped.load(Ordering::SeqCst);
            let wait = Duration::from_millis(if fast { 20 } else { 200 });
            Reply::After(
                wait,
                Box::new(Reply::json(200, fixture("openai/completion.json"))),
            )
        })
    };
    let (fast, slow) = (mock(true), mock(false));
    let proxy = start_proxy(config_with_catalog(
        &fast,
        &catalog("latency", "", &[(&slow, 1.0), (&fast, 1.0)]),
    ));
    let run = |expected: &'static str| {
        let proxy = &proxy;
        async move {
            let mut on_expected = 0;
            for _ in 0..200 {
                let answer = complete(proxy, hi("g")).await;
                assert_eq!(answer.status, 200);
                on_expected += usize::from(answer.header("x-proxy-deployment") == Some(expected));
            }
            on_expected
        }
    };
    let first = run("openai/m1").await;
    assert!(first >= 180, "{first} of 200 on the 20 ms deployment");
    swapped.store(true, Ordering::SeqCst);
    let second = run("openai/m0").await;
    assert!(second >= 180, "{second} of 200 after the swap");
}

#[actix_web::test]
async fn cost_picks_the_cheapest_deployment_that_can_serve_the_request() {
    let (small, no_tools, middle, dear) = (ok(), ok(), ok(), ok());
    let text = format!(
        r#"{{"groups": {{"g": {{"strategy": "cost", "deployments": [
             {{"provider": "openai", "model": "dear", "base_url": "{}",
               "price": {{"input": 5, "output": 15}}}},
             {{"provider": "openai", "model": "small", "base_url": "{}", "context": 1000,
               "price": {{"input": 0.01, "output": 0.01}}}},
             {{"provider": "openai", "model": "no-tools", "base_url": "{}",
               "capabilities": ["images", "json_schema"],
               "price": {{"input": 0.02, "output": 0.02}}}},
             {{"provider": "openai", "model": "middle", "base_url": "{}",
               "price": {{"input": 0.5, "output": 1.5}}}}]}}}}}}"#,
        dear.base_url(),
        small.base_url(),
        no_tools.base_url(),
        middle.base_url()
    );
    let proxy = start_proxy(config_with_catalog(&dear, &text));
    let deployment = |body: serde_json::Value| {
        let proxy = &proxy;
        async move {
            let answer = complete(proxy, body).await;
            assert_eq!(answer.status, 200, "{:?}", answer.body);
            answer.header("x-proxy-deployment").unwrap().to_owned()
        }
    };
    assert_eq!(deployment(hi("g")).await, "openai/small");
    let long = serde_json::json!({"model": "g",
        "messages": [{"role": "user", "content": "x".repeat(8000)}]});
    assert_eq!(
        deployment(long).await,
        "openai/no-tools",
        "too long for `small`"
    );
    let tools = serde_json::json!({"model": "g",
        "messages": [{"role": "user", "content": "x".repeat(8000)}],
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]});
    assert_eq!(
        deployment(tools).await,
        "openai/middle",
        "`no-tools` lacks tools"
    );
    assert!(dear.requests().is_empty());
}

#[actix_web::test]
async fn cost_prices_deployments_without_their_own_price_by_the_shipped_table() {
    // No `price` in the file: gpt-4o costs 2.5/10 per million tokens by data/prices.json,
    // gpt-4o-mini 0.15/0.6, claude-haiku-4-5 1/5; a model the table lacks ranks last.
    let (dear, cheap, middle, unknown) = (ok(), ok(), ok(), ok());
    let text = format!(
        r#"{{"groups": {{"g": {{"strategy": "cost", "deployments": [
             {{"provider": "openai", "model": "gpt-4o", "base_url": "{}"}},
             {{"provider": "openai", "model": "not-in-the-table", "base_url": "{}"}},
             {{"provider": "openai", "model": "gpt-4o-mini", "base_url": "{}"}},
             {{"provider": "openai", "model": "gpt-4.1", "base_url": "{}"}}]}}}}}}"#,
        dear.base_url(),
        unknown.base_url(),
        cheap.base_url(),
        middle.base_url()
    );
    let proxy = start_proxy(config_with_catalog(&dear, &text));
    let answer = complete(&proxy, hi("g")).await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    assert_eq!(
        answer.header("x-proxy-deployment"),
        Some("openai/gpt-4o-mini")
    );
    assert_eq!(cheap.requests().len(), 1);
    assert!(dear.requests().is_empty() && unknown.requests().is_empty());
}

#[actix_web::test]
async fn least_busy_counts_an_open_stream_until_its_end() {
    let (feed, body) = feed();
    let streaming = Mock::streaming(body);
    let other = ok();
    let proxy = start_proxy(config_with_catalog(
        &other,
        &catalog("least_busy", "", &[(&streaming, 1.0), (&other, 1.0)]),
    ));

    // Both idle: the first in order takes the stream, which then stays open.
    feed.send(
        "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\
         \"model\":\"m0\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"},\
         \"finish_reason\":null}]}\n\n",
    );
    let mut response = client()
        .post(proxy.url("/v1/chat/completions"))
        .insert_header(("Authorization", format!("Bearer {TEST_KEY}")))
        .send_body(streamed("g").to_string())
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers().get("x-proxy-deployment").unwrap(),
        "openai/m0"
    );
    assert!(response
        .next()
        .await
        .unwrap()
        .unwrap()
        .starts_with(b"data: "));

    // Its head and first event are long in, but the stream is still in flight.
    for _ in 0..5 {
        let answer = complete(&proxy, hi("g")).await;
        assert_eq!(answer.status, 200, "{:?}", answer.body);
        assert_eq!(answer.header("x-proxy-deployment"), Some("openai/m1"));
    }
    assert_eq!(other.requests().len(), 5);
    assert_eq!(streaming.requests().len(), 1, "none tried the busy one");

    feed.send("data: [DONE]\n\n");
    feed.finish();
    let rest = read_to_end(&mut response).await;
    assert!(rest.ends_with(b"data: [DONE]\n\n"), "{rest:?}");
}
