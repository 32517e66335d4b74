//! The cost of every answer: `X-Proxy-Cost-USD` on answers, `llm_proxy_cost_usd_total` after
//! answers and streams, the shipped price table and the providers file's prices over it.

use serde_json::json;

use crate::common::*;

/// Round prices, so each figure below can be checked by hand.
const PRICES: &str = r#"{"prices": {
    "openai/gpt-4o-mini": {"input": 1, "output": 2, "cache_read": 0.5},
    "anthropic/claude-3-5-haiku": {"input": 1, "output": 2, "cache_read": 0.1, "cache_write": 1.25},
    "gemini/gemini-1.5-flash": {"input": 1, "output": 2, "cache_read": 0.25}
}}"#;

/// Answers each provider's documented call with the fixture named for it.
fn upstream(openai: &'static str, anthropic: &'static str, gemini: &'static str) -> Mock {
    Mock::start(move |request| {
        if request.path.ends_with("/chat/completions") {
            Reply::json(200, fixture(openai))
        } else if request.path.ends_with("/messages") {
            Reply::json(200, fixture(anthropic))
        } else {
            Reply::json(200, fixture(gemini))
        }
    })
}

fn cost_header(answer: &Answer) -> Option<f64> {
    answer
        .header("x-proxy-cost-usd")
        .map(|usd| usd.parse().expect("a decimal"))
}

fn assert_close(actual: Option<f64>, expected: f64) {
    let actual = actual.expect("a cost");
    assert!(
        (actual - expected).abs() < 1e-12,
        "{actual} is not {expected}"
    );
}

/// The value of the sample `name{labels}` in the metrics text.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .map(|value| value.parse().expect("a number"))
}

/// The value of `series` once it is above `floor`, or as it is after 5 s: a stream is
/// counted when its body is done, a moment after the client read its last byte.
async fn total_above(proxy: &Proxy, series: &str, floor: f64) -> Option<f64> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let total = sample(&metrics_text(proxy).await, series);
        if total.is_some_and(|usd| usd > floor) || std::time::Instant::now() > deadline {
            return total;
        }
        actix_web::rt::task::yield_now().await;
    }
}

#[actix_web::test]
async fn openai_cached_prompt_tokens_are_priced_apart_from_the_rest_of_the_prompt() {
    let mock = upstream(
        "openai/cached_completion.json",
        "anthropic/message.json",
        "gemini/generate.json",
    );
    let proxy = start_proxy(config_with_catalog(&mock, PRICES));
    // prompt_tokens 2,006 include 1,920 cached: 86 × $1 + 1,920 × $0.5 + 300 × $2, per million.
    let expected = (86.0 + 960.0 + 600.0) / 1e6;
    let front_door = complete(&proxy, hi("openai/gpt-4o-mini")).await;
    assert_eq!(front_door.status, 200);
    assert_eq!(front_door.header("x-proxy-cost-usd"), Some("0.001646"));
    let path_route = chat(&proxy, "openai", hi("gpt-4o-mini")).await;
    assert_close(cost_header(&path_route), expected);
}

#[actix_web::test]
async fn anthropic_cache_reads_and_writes_are_priced_beside_its_uncached_input() {
    let mock = upstream(
        "openai/completion.json",
        "anthropic/cached_message.json",
        "gemini/generate.json",
    );
    let proxy = start_proxy(config_with_catalog(&mock, PRICES));
    // input_tokens 21 are the uncached part: 21 × $1 + 100 × $0.1 + 188,086 × $1.25 + 393 × $2.
    let expected = (21.0 + 10.0 + 235_107.5 + 786.0) / 1e6;
    let body = json!({"model": "claude-3-5-haiku-20241022", "max_tokens": 512,
                      "messages": [{"role": "user", "content": "hi"}]});
    let door = post_with(
        &proxy,
        "/v1/messages",
        &[
            ("x-api-key", TEST_KEY),
            ("anthropic-version", "2023-06-01"),
            ("content-type", "application/json"),
        ],
        body.to_string(),
    )
    .await;
    assert_eq!(door.status, 200);
    assert_close(cost_header(&door), expected);
    // Translated to the OpenAI door, the same answer costs the same.
    let translated = complete(&proxy, hi("anthropic/claude-3-5-haiku-20241022")).await;
    assert_eq!(translated.status, 200);
    assert_close(cost_header(&translated), expected);
}

#[actix_web::test]
async fn gemini_cached_content_is_priced_at_its_cache_price() {
    let mock = upstream(
        "openai/completion.json",
        "anthropic/message.json",
        "gemini/cached.json",
    );
    let proxy = start_proxy(config_with_catalog(&mock, PRICES));
    // promptTokenCount 696,219 include 696,190 cached; the answer names gemini-1.5-flash-001,
    // which has no price, so the model asked for is priced.
    let expected = (29.0 + 696_190.0 * 0.25 + 214.0 * 2.0) / 1e6;
    let answer = chat(&proxy, "gemini", hi("gemini-1.5-flash")).await;
    assert_eq!(answer.status, 200);
    assert_close(cost_header(&answer), expected);
}

#[actix_web::test]
async fn the_shipped_table_prices_a_dated_model_by_its_undated_name() {
    let mock = upstream(
        "openai/completion.json",
        "anthropic/message.json",
        "gemini/generate.json",
    );
    let proxy = start_proxy(config_for(&mock));
    // data/prices.json: claude-3-5-haiku at $0.80 in, $4 out; the answer used 12 in, 10 out.
    let answer = chat(&proxy, "anthropic", hi("claude-3-5-haiku-20241022")).await;
    assert_close(cost_header(&answer), (12.0 * 0.8 + 10.0 * 4.0) / 1e6);
}

#[actix_web::test]
async fn an_unknown_model_has_no_cost_header_and_no_cost_sample() {
    let answer = String::from_utf8(fixture("openai/completion.json").to_vec())
        .unwrap()
        .replace("gpt-4o-mini-2024-07-18", "house-model-7");
    let mock = Mock::always(200, "application/json", answer);
    let proxy = start_proxy(config_for(&mock));
    let answer = chat(&proxy, "openai", hi("house-model-7")).await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.header("x-proxy-cost-usd"), None, "unknown, not 0");
    let text = metrics_with(
        &proxy,
        r#"llm_proxy_tokens_total{provider="openai",model="house-model-7",direction="input"} 19"#,
    )
    .await;
    assert!(!text.contains("llm_proxy_cost_usd_total{"), "{text}");
}

#[actix_web::test]
async fn a_price_in_the_providers_file_wins_over_the_shipped_one() {
    let mock = upstream(
        "openai/completion.json",
        "anthropic/message.json",
        "gemini/generate.json",
    );
    let shipped = start_proxy(config_for(&mock));
    let overridden = start_proxy(config_with_catalog(&mock, PRICES));
    // 19 in, 9 out: the shipped $0.15 / $0.60, then the file's $1 / $2.
    let before = chat(&shipped, "openai", hi("gpt-4o-mini")).await;
    assert_close(cost_header(&before), (19.0 * 0.15 + 9.0 * 0.6) / 1e6);
    let after = chat(&overridden, "openai", hi("gpt-4o-mini")).await;
    assert_close(cost_header(&after), (19.0 + 18.0) / 1e6);
}

#[actix_web::test]
async fn costs_are_counted_after_answers_and_streams_under_the_price_entrys_model() {
    let mock = Mock::start(|request| {
        if request.path.ends_with("/messages") {
            Reply::sse(vec![fixture("anthropic/stream.sse")])
        } else {
            Reply::json(200, fixture("openai/completion.json"))
        }
    });
    let proxy = start_proxy(config_with_catalog(&mock, PRICES));
    // A non-stream answer: 19 × $1 + 9 × $2, under the entry's name, not the dated one.
    let answer = chat(&proxy, "openai", hi("gpt-4o-mini-2024-07-18")).await;
    assert_eq!(answer.status, 200);
    let openai = r#"llm_proxy_cost_usd_total{provider="openai",model="gpt-4o-mini"}"#;
    assert_close(total_above(&proxy, openai, 0.0).await, 37.0 / 1e6);

    // A stream passed through (25 in, 15 out), then the same stream translated.
    let anthropic = r#"llm_proxy_cost_usd_total{provider="anthropic",model="claude-3-5-haiku"}"#;
    let passed = chat(&proxy, "anthropic", streamed("claude-3-5-haiku-20241022")).await;
    assert_eq!(passed.status, 200);
    assert_eq!(
        passed.header("x-proxy-cost-usd"),
        None,
        "a stream's cost is in the log"
    );
    assert_close(total_above(&proxy, anthropic, 0.0).await, 55.0 / 1e6);

    let translated = complete(&proxy, streamed("anthropic/claude-3-5-haiku-20241022")).await;
    assert_eq!(translated.status, 200);
    assert_close(
        total_above(&proxy, anthropic, 56.0 / 1e6).await,
        110.0 / 1e6,
    );
}

#[actix_web::test]
async fn a_stream_is_priced_as_the_model_it_says_answered() {
    let mock = Mock::start(|_| Reply::sse(vec![fixture("anthropic/stream.sse")]));
    let proxy = start_proxy(config_with_catalog(&mock, PRICES));
    // Asked as a name with no price; the stream's message_start names claude-3-5-haiku-20241022.
    let passed = chat(&proxy, "anthropic", streamed("house-haiku")).await;
    assert_eq!(passed.status, 200);
    let anthropic = r#"llm_proxy_cost_usd_total{provider="anthropic",model="claude-3-5-haiku"}"#;
    assert_close(total_above(&proxy, anthropic, 0.0).await, 55.0 / 1e6);

    let translated = complete(&proxy, streamed("anthropic/house-haiku")).await;
    assert_eq!(translated.status, 200);
    assert_close(
        total_above(&proxy, anthropic, 56.0 / 1e6).await,
        110.0 / 1e6,
    );
}
