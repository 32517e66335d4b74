//! Keys the proxy issues: provider keys held by the proxy, each limit answering 429 at the right
//! request on every route, revocation on a running proxy, and usage records of each request.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use llm_proxy::{
    config::HeldKeys,
    keys,
    store::{KeyRow, UsageRecord},
    Config,
};
use serde_json::json;

use crate::common::*;

const HELD: &str = "sk-held-by-the-proxy-5f1e2d";

/// A mock answering each format's fixture on every path.
pub fn upstream() -> Mock {
    Mock::start(|request| {
        let fixture_path = if request.path.ends_with("/count_tokens") {
            return Reply::json(200, r#"{"input_tokens": 7}"#);
        } else if request.path.ends_with("/messages") {
            "anthropic/message.json"
        } else {
            "openai/completion.json"
        };
        Reply::json(200, fixture(fixture_path))
    })
}

/// OpenAI and Anthropic with a key held by the proxy.
pub fn held_config(mock: &Mock) -> Config {
    let catalog = r#"{"providers": {"openai": {"api_key_env": "OPENAI_API_KEY"},
                                    "anthropic": {"api_key_env": "OPENAI_API_KEY"}}}"#;
    Config {
        held_keys: HeldKeys(vec![("OPENAI_API_KEY".into(), HELD.into())]),
        ..config_with_catalog(mock, catalog)
    }
}

/// Issues a key with `shape` applied to a plain row, and returns its secret.
async fn issue(accounted: &Accounted, shape: impl FnOnce(&mut KeyRow)) -> String {
    issue_on(&accounted.accounts.keyring, shape).await
}

/// Issues a key on `keyring`'s store, as [`issue`] does.
pub async fn issue_on(keyring: &keys::Keyring, shape: impl FnOnce(&mut KeyRow)) -> String {
    let (secret, hash) = keys::generate().unwrap();
    let now = keys::now_ms();
    let mut row = KeyRow {
        owner: Some("a@example.com".into()),
        ..KeyRow::new(
            keys::new_id().unwrap(),
            hash,
            secret.prefix().to_owned(),
            "team-a".into(),
            now,
        )
    };
    shape(&mut row);
    keyring.store().insert_key(&row).await.unwrap();
    keyring.refresh(keys::now_ms()).await.unwrap();
    secret.expose().to_owned()
}

async fn completions_with(proxy: &Proxy, secret: &str, model: &str) -> Answer {
    post_with(
        proxy,
        "/v1/chat/completions",
        &[("Authorization", &format!("Bearer {secret}"))],
        hi(model).to_string(),
    )
    .await
}

/// Every usage record written so far.
async fn records(accounted: &Accounted) -> Vec<UsageRecord> {
    let keyring = &accounted.accounts.keyring;
    keyring.flush().await;
    let mut records = keyring
        .store()
        .usage_since(0, i64::MAX, 10_000)
        .await
        .unwrap();
    records.sort_by_key(|r| r.time_ms);
    records
}

#[actix_web::test]
async fn an_issued_key_calls_with_the_held_key_which_never_comes_back() {
    let mock = upstream();
    let accounted = start_accounted(held_config(&mock)).await;
    let secret = issue(&accounted, |_| {}).await;
    let proxy = &accounted.proxy;

    let answer = completions_with(proxy, &secret, "openai/gpt-4o-mini").await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    let sent = mock.only_request();
    assert_eq!(
        sent.header("authorization"),
        Some(format!("Bearer {HELD}").as_str())
    );
    assert!(
        !format!("{sent:?}").contains(&secret),
        "the issued key never goes upstream"
    );

    // Through the Anthropic door, the path route and the x-api-key header alike.
    let body = json!({"model": "claude-sonnet-4-5", "max_tokens": 10,
                      "messages": [{"role": "user", "content": "hi"}]});
    let answer = post(proxy, "/v1/messages", Some(&secret), body.to_string()).await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    assert_eq!(mock.requests()[1].header("x-api-key"), Some(HELD));
    let answer = chat(proxy, "openai", hi("gpt-4o-mini")).await;
    assert_eq!(
        answer.status, 401,
        "a caller's own key is refused: {:?}",
        answer.body
    );

    // The held key is in no answer, error or metric.
    let mut seen = String::new();
    for answer in [
        completions_with(proxy, &secret, "openai/gpt-4o-mini").await,
        completions_with(proxy, "sk-caller-own", "openai/gpt-4o-mini").await,
        completions_with(proxy, "lp-not-a-key-of-ours", "openai/gpt-4o-mini").await,
        post(proxy, "/v1/chat/openai", Some(&secret), "{not json").await,
    ] {
        seen.push_str(&format!("{:?} {:?}", answer.headers, answer.body));
    }
    seen.push_str(&metrics_text(proxy).await);
    assert!(!seen.contains(HELD), "{seen}");
    assert!(!seen.contains(&secret[3..]), "{seen}");
}

#[actix_web::test]
async fn a_callers_own_key_is_refused_by_a_provider_whose_key_the_proxy_holds() {
    let mock = upstream();
    let accounted = start_accounted(held_config(&mock)).await;
    let answer = completions_with(&accounted.proxy, TEST_KEY, "openai/gpt-4o-mini").await;
    assert_eq!(answer.status, 401, "{:?}", answer.body);
    let message = answer.json()["error"]["message"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        message.contains("\"openai\"") && message.contains("issues"),
        "{message}"
    );
    assert!(mock.requests().is_empty(), "nothing goes upstream");
}

#[actix_web::test]
async fn an_issued_key_may_bring_the_key_of_a_provider_the_proxy_holds_none_for() {
    let mock = upstream();
    let accounted = start_accounted(config_for(&mock)).await;
    let secret = issue(&accounted, |_| {}).await;
    let answer = completions_with(&accounted.proxy, &secret, "openai/gpt-4o-mini").await;
    assert_eq!(answer.status, 401, "{:?}", answer.body);
    assert!(answer.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("X-API-Key-Openai"));

    let answer = post_with(
        &accounted.proxy,
        "/v1/chat/completions",
        &[
            ("Authorization", &format!("Bearer {secret}")),
            ("X-API-Key-Openai", TEST_KEY),
        ],
        hi("openai/gpt-4o-mini").to_string(),
    )
    .await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    assert_eq!(
        mock.only_request().header("authorization"),
        Some(format!("Bearer {TEST_KEY}").as_str())
    );
}

#[actix_web::test]
async fn unknown_disabled_and_expired_keys_are_refused_with_a_reason() {
    let mock = upstream();
    let accounted = start_accounted(held_config(&mock)).await;
    let disabled = issue(&accounted, |row| {
        row.name = "off".into();
        row.enabled = false;
    })
    .await;
    let expired = issue(&accounted, |row| {
        row.name = "old".into();
        row.expires_at = Some(1);
    })
    .await;
    let unknown = "lp-0000000000000000000000000000000000000000000";
    for (secret, says) in [
        (disabled.as_str(), "disabled"),
        (expired.as_str(), "expired"),
        (unknown, "unknown key"),
    ] {
        let answer = completions_with(&accounted.proxy, secret, "openai/gpt-4o-mini").await;
        assert_eq!(answer.status, 401, "{says}: {:?}", answer.body);
        let message = answer.json()["error"]["message"]
            .as_str()
            .unwrap()
            .to_owned();
        assert!(message.contains(says), "{message}");
        assert!(!message.contains(&secret[3..]), "{message}");
    }
    assert!(mock.requests().is_empty());
}

#[actix_web::test]
async fn a_revoked_key_stops_within_a_second_on_a_running_proxy() {
    let mock = upstream();
    let accounted = start_accounted(held_config(&mock)).await;
    let secret = issue(&accounted, |_| {}).await;
    let proxy = &accounted.proxy;
    assert_eq!(
        completions_with(proxy, &secret, "openai/gpt-4o-mini")
            .await
            .status,
        200
    );

    // Revoked in the store, as another instance or the `keys` command does: not through
    // this proxy, which learns of it by watching.
    let store = accounted.accounts.keyring.store();
    let mut row = store.list_keys().await.unwrap().remove(0);
    row.revoked_at = Some(keys::now_ms());
    row.updated_at = keys::now_ms();
    store.update_key(&row).await.unwrap();
    let revoked = Instant::now();
    loop {
        let answer = completions_with(proxy, &secret, "openai/gpt-4o-mini").await;
        if answer.status == 401 {
            assert!(answer.json()["error"]["message"]
                .as_str()
                .unwrap()
                .contains("revoked"));
            break;
        }
        assert_eq!(answer.status, 200);
        assert!(
            revoked.elapsed() < Duration::from_secs(1),
            "still served a second after its revocation"
        );
        actix_web::rt::time::sleep(Duration::from_millis(20)).await;
    }
}

#[actix_web::test]
async fn requests_per_minute_answer_429_with_retry_after_at_the_third_request() {
    let mock = upstream();
    let accounted = start_accounted(held_config(&mock)).await;
    let secret = issue(&accounted, |row| row.rpm = Some(2)).await;
    for _ in 0..2 {
        let answer = completions_with(&accounted.proxy, &secret, "openai/gpt-4o-mini").await;
        assert_eq!(answer.status, 200, "{:?}", answer.body);
    }
    let answer = completions_with(&accounted.proxy, &secret, "openai/gpt-4o-mini").await;
    assert_eq!(answer.status, 429, "{:?}", answer.body);
    let retry_after: u64 = answer.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    let error = &answer.json()["error"];
    assert_eq!(error["type"], "rate_limit_error");
    assert_eq!(error["code"], "requests_per_minute");
    assert!(error["message"].as_str().unwrap().contains("team-a"));
    assert_eq!(mock.requests().len(), 2, "the refused one went nowhere");
}

#[actix_web::test]
async fn tokens_per_minute_refuse_once_the_answers_tokens_fill_the_minute() {
    let mock = upstream();
    let accounted = start_accounted(held_config(&mock)).await;
    // Each answer of the fixture is 28 tokens: two fill 50 and more.
    let secret = issue(&accounted, |row| row.tpm = Some(50)).await;
    for _ in 0..2 {
        let answer = completions_with(&accounted.proxy, &secret, "openai/gpt-4o-mini").await;
        assert_eq!(answer.status, 200, "{:?}", answer.body);
        accounted.accounts.keyring.flush().await;
    }
    let answer = completions_with(&accounted.proxy, &secret, "openai/gpt-4o-mini").await;
    assert_eq!(answer.status, 429, "{:?}", answer.body);
    assert_eq!(answer.json()["error"]["code"], "tokens_per_minute");
    assert!(answer.header("retry-after").is_some());
}

#[actix_web::test]
async fn max_concurrent_counts_an_open_stream_until_its_end() {
    let (feed, body) = feed();
    let mock = Mock::streaming(body);
    let accounted = start_accounted(held_config(&mock)).await;
    let secret = issue(&accounted, |row| row.max_concurrent = Some(1)).await;
    feed.send("data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"},\"finish_reason\":null}]}\n\n");
    let mut stream = client()
        .post(accounted.proxy.url("/v1/chat/completions"))
        .insert_header(("Authorization", format!("Bearer {secret}")))
        .send_body(streamed("openai/gpt-4o-mini").to_string())
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    assert!(stream.next().await.unwrap().is_ok());

    let answer = completions_with(&accounted.proxy, &secret, "openai/gpt-4o-mini").await;
    assert_eq!(answer.status, 429, "{:?}", answer.body);
    assert_eq!(answer.json()["error"]["code"], "max_concurrent");

    feed.send("data: [DONE]\n\n");
    feed.finish();
    read_to_end(&mut stream).await;
    drop(stream);
    // The slot frees as the stream's body ends; the next request may take it.
    let freed = Instant::now();
    loop {
        let answer = completions_with(&accounted.proxy, &secret, "openai/gpt-4o-mini").await;
        if answer.json()["error"]["code"] != "max_concurrent" {
            break;
        }
        assert!(
            freed.elapsed() < Duration::from_secs(2),
            "the slot never freed"
        );
        actix_web::rt::time::sleep(Duration::from_millis(10)).await;
    }
}

#[actix_web::test]
async fn a_spent_budget_refuses_every_route() {
    let mock = upstream();
    let accounted = start_accounted(held_config(&mock)).await;
    // One fixture answer costs $0.00000825 at gpt-4o-mini's price: the first one spends it.
    let secret = issue(&accounted, |row| {
        row.budget_usd = Some(0.000005);
        row.budget_period = Some("month".into());
    })
    .await;
    let proxy = &accounted.proxy;
    let answer = completions_with(proxy, &secret, "openai/gpt-4o-mini").await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    accounted.accounts.keyring.flush().await;

    let anthropic = json!({"model": "claude-sonnet-4-5", "max_tokens": 10,
                           "messages": [{"role": "user", "content": "hi"}]});
    let refused = [
        completions_with(proxy, &secret, "openai/gpt-4o-mini").await,
        post(
            proxy,
            "/v1/chat/openai",
            Some(&secret),
            hi("gpt-4o-mini").to_string(),
        )
        .await,
        post(proxy, "/v1/messages", Some(&secret), anthropic.to_string()).await,
        post(
            proxy,
            "/v1/messages/count_tokens",
            Some(&secret),
            anthropic.to_string(),
        )
        .await,
    ];
    for answer in refused {
        assert_eq!(answer.status, 429, "{:?}", answer.body);
        let body = answer.json();
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains("budget"), "{message}");
        assert!(answer.header("retry-after").is_some());
    }
    assert_eq!(mock.requests().len(), 1);
}

#[actix_web::test]
async fn a_key_limited_to_some_models_is_refused_others() {
    let mock = upstream();
    let accounted = start_accounted(held_config(&mock)).await;
    let secret = issue(&accounted, |row| row.models = vec!["anthropic/*".into()]).await;
    let answer = completions_with(&accounted.proxy, &secret, "openai/gpt-4o-mini").await;
    assert_eq!(answer.status, 403, "{:?}", answer.body);
    assert!(answer.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("anthropic/*"));
    // A bare Claude model on the Anthropic door is anthropic/<model>.
    let body = json!({"model": "claude-sonnet-4-5", "max_tokens": 10,
                      "messages": [{"role": "user", "content": "hi"}]});
    let answer = post(
        &accounted.proxy,
        "/v1/messages",
        Some(&secret),
        body.to_string(),
    )
    .await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
}

#[actix_web::test]
async fn every_request_leaves_a_usage_record_without_content_or_keys() {
    let mock = upstream();
    let accounted = start_accounted(config_for(&mock)).await;
    let proxy = &accounted.proxy;
    let answer = completions_with(proxy, TEST_KEY, "openai/gpt-4o-mini").await;
    assert_eq!(answer.status, 200);
    let request_id = answer.header("x-request-id").unwrap().to_owned();
    let answer = completions_with(proxy, "sk-another-caller", "openai/gpt-4o-mini").await;
    assert_eq!(answer.status, 200);
    let records = records(&accounted).await;
    assert_eq!(records.len(), 2, "{records:?}");
    let first = &records[0];
    assert_eq!(first.route, "completions");
    assert_eq!(first.provider.as_deref(), Some("openai"));
    assert_eq!(first.model.as_deref(), Some("gpt-4o-mini"));
    assert_eq!(first.status, 200);
    assert_eq!((first.input_tokens, first.output_tokens), (19, 9));
    assert!((first.cost_usd.unwrap() - 0.00000825).abs() < 1e-12);
    assert!(first.ttfb_ms.is_some() && first.latency_ms > 0.0);
    assert_eq!(first.request_id, request_id);
    let fingerprint = first.caller.clone().unwrap();
    assert_eq!(fingerprint.len(), 12);
    assert_ne!(records[1].caller.as_deref(), Some(fingerprint.as_str()));
    let all = format!("{records:?}");
    assert!(!all.contains(TEST_KEY) && !all.contains("Hello"), "{all}");
}

#[actix_web::test]
async fn a_429_on_a_held_key_ejects_the_deployment_as_a_spent_quota() {
    let limited = Mock::always(
        429,
        "application/json",
        r#"{"error":{"message":"Rate limit reached","type":"requests"}}"#,
    );
    let ok = upstream();
    let catalog = format!(
        r#"{{"groups": {{"g": {{"strategy": "ordered", "deployments": [
            {{"provider": "openai", "model": "m0", "base_url": "{}", "api_key_env": "OPENAI_API_KEY"}},
            {{"provider": "openai", "model": "m1", "base_url": "{}", "api_key_env": "OPENAI_API_KEY"}}]}}}}}}"#,
        limited.base_url(),
        ok.base_url()
    );
    let config = Config {
        held_keys: HeldKeys(vec![("OPENAI_API_KEY".into(), HELD.into())]),
        ..config_with_catalog(&ok, &catalog)
    };
    let accounted = start_accounted(config).await;
    let secret = issue(&accounted, |_| {}).await;
    for _ in 0..6 {
        let answer = completions_with(&accounted.proxy, &secret, "g").await;
        assert_eq!(answer.status, 200, "{:?}", answer.body);
        assert_eq!(answer.header("x-proxy-deployment"), Some("openai/m1"));
    }
    assert_eq!(
        limited.requests().len(),
        3,
        "ejected after three 429s on the proxy's own key"
    );
}

#[actix_web::test]
async fn a_streams_usage_is_charged_to_the_budget_when_it_ends() {
    let mock = Mock::start(|_| Reply::sse(vec![fixture("openai/parallel_tool_calls.sse")]));
    let accounted = start_accounted(held_config(&mock)).await;
    // The stream's usage chunk: 86 prompt and 52 completion tokens of gpt-4o, $0.000735.
    let secret = issue(&accounted, |row| {
        row.budget_usd = Some(0.0005);
        row.budget_period = Some("day".into());
    })
    .await;
    let body = json!({"model": "openai/gpt-4o", "stream": true,
                      "stream_options": {"include_usage": true},
                      "messages": [{"role": "user", "content": "hi"}]});
    let answer = post_with(
        &accounted.proxy,
        "/v1/chat/completions",
        &[("Authorization", &format!("Bearer {secret}"))],
        body.to_string(),
    )
    .await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    accounted.accounts.keyring.flush().await;
    let spent = records(&accounted).await;
    assert_eq!(spent.len(), 1);
    assert!(
        (spent[0].cost_usd.unwrap() - 0.000735).abs() < 1e-9,
        "{spent:?}"
    );

    let answer = completions_with(&accounted.proxy, &secret, "openai/gpt-4o-mini").await;
    assert_eq!(answer.status, 429, "{:?}", answer.body);
    assert_eq!(answer.json()["error"]["code"], "budget");
}
