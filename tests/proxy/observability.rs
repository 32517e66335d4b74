//! Request ids, `/metrics` after known traffic, and JSON logs.

use actix_web::web::Bytes;
use serde_json::json;

use crate::common::*;

/// Every metric in docs/observability.md's table, with its type, is described, and every sample
/// is one of them: counters end in `_total`, histograms have `_bucket`, `_sum` and `_count`.
fn assert_documented_names(text: &str) {
    let documented = [
        ("llm_proxy_requests_total", "counter"),
        ("llm_proxy_requests_in_flight", "gauge"),
        ("llm_proxy_request_duration_seconds", "histogram"),
        ("llm_proxy_upstream_ttfb_seconds", "histogram"),
        ("llm_proxy_overhead_seconds", "histogram"),
        ("llm_proxy_retries_total", "counter"),
        ("llm_proxy_fallbacks_total", "counter"),
        ("llm_proxy_upstream_errors_total", "counter"),
        ("llm_proxy_tokens_total", "counter"),
        ("llm_proxy_cost_usd_total", "counter"),
        ("llm_proxy_deployment_up", "gauge"),
        ("llm_proxy_deployment_ttfb_ewma_seconds", "gauge"),
        ("llm_proxy_usage_records_dropped_total", "counter"),
        ("llm_proxy_cache_hits_total", "counter"),
        ("llm_proxy_cache_misses_total", "counter"),
        ("llm_proxy_upstream_connections_opened_total", "counter"),
    ];
    let page = include_str!("../../docs/observability.md");
    let mut samples = Vec::new();
    for (name, kind) in documented {
        assert!(
            page.contains(&format!("| `{name}` | {kind} |")),
            "{name} ({kind}) is missing from the metrics table in docs/observability.md"
        );
        // OpenMetrics names a counter's family without its `_total`.
        let family = name.strip_suffix("_total").unwrap_or(name);
        assert!(
            has_line(text, &format!("# TYPE {family} {kind}")),
            "no TYPE for {name}\n{text}"
        );
        assert!(
            text.lines()
                .any(|l| l.starts_with(&format!("# HELP {family} "))),
            "no HELP for {name}\n{text}"
        );
        match kind {
            "histogram" => {
                samples.extend(["_bucket", "_sum", "_count"].map(|s| name.to_owned() + s))
            }
            _ => samples.push(name.to_owned()),
        }
    }
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let name = line.split(['{', ' ']).next().unwrap();
        assert!(
            samples.iter().any(|s| s == name),
            "undocumented {line}\n{text}"
        );
    }
}

#[actix_web::test]
async fn a_request_id_is_echoed_sent_upstream_or_made_up() {
    let mock = Mock::always(200, "application/json", fixture("openai/completion.json"));
    let proxy = start_proxy(config_for(&mock));
    let given = client()
        .post(proxy.url("/v1/chat/openai"))
        .insert_header(("X-API-Key", TEST_KEY))
        .insert_header(("X-Request-Id", "trace-42"))
        .send_body(hi("m").to_string())
        .await
        .unwrap();
    assert_eq!(given.headers().get("x-request-id").unwrap(), "trace-42");
    assert_eq!(mock.only_request().header("x-request-id"), Some("trace-42"));

    let made_up = client()
        .post(proxy.url("/v1/chat/openai"))
        .insert_header(("X-API-Key", TEST_KEY))
        .insert_header(("X-Request-Id", "x".repeat(200)))
        .send_body(hi("m").to_string())
        .await
        .unwrap();
    let id = made_up
        .headers()
        .get("x-request-id")
        .unwrap()
        .to_str()
        .unwrap();
    assert!(id.starts_with("req_"), "{id}");
    assert_eq!(mock.requests()[1].header("x-request-id"), Some(id));

    let error = client().get(proxy.url("/nowhere")).send().await.unwrap();
    assert!(
        error.headers().contains_key("x-request-id"),
        "errors carry an id too"
    );
}

#[actix_web::test]
async fn metrics_count_known_traffic() {
    let mock = Mock::start(|request| {
        if request.path.ends_with("/messages") {
            Reply::sse(vec![fixture("anthropic/stream.sse")])
        } else if request.json()["model"] == "limited" {
            Reply::json(429, r#"{"error":{"message":"slow down"}}"#)
        } else {
            Reply::json(200, fixture("openai/completion.json"))
        }
    });
    let proxy = start_proxy(config_for(&mock));
    for _ in 0..2 {
        assert_eq!(chat(&proxy, "openai", hi("gpt-4o-mini")).await.status, 200);
    }
    assert_eq!(chat(&proxy, "openai", hi("limited")).await.status, 429);
    let stream = json!({"model": "claude-3-5-haiku-20241022", "stream": true,
                        "messages": [{"role": "user", "content": "hi"}]});
    let streamed = chat(&proxy, "anthropic", stream).await;
    assert_eq!(
        streamed.body,
        fixture("anthropic/stream.sse"),
        "counting changes no byte"
    );
    assert_eq!(
        complete(&proxy, hi("gemini/x")).await.status,
        502,
        "no gemini mock route"
    );
    assert_eq!(
        post(&proxy, "/v1/chat/openai", None, "{}").await.status,
        401
    );

    let text = metrics_with(
        &proxy,
        r#"llm_proxy_requests_total{route="chat",provider="openai",status="4xx",outcome="ok"} 2"#,
    )
    .await;
    for line in [
        r#"llm_proxy_requests_total{route="chat",provider="openai",status="2xx",outcome="ok"} 2"#,
        r#"llm_proxy_requests_total{route="chat",provider="openai",status="4xx",outcome="ok"} 2"#,
        r#"llm_proxy_requests_total{route="chat",provider="anthropic",status="2xx",outcome="ok"} 1"#,
        r#"llm_proxy_requests_total{route="completions",provider="gemini",status="5xx",outcome="ok"} 1"#,
        "llm_proxy_requests_in_flight 0",
        r#"llm_proxy_request_duration_seconds_count{provider="openai"} 4"#,
        r#"llm_proxy_upstream_ttfb_seconds_count{provider="openai"} 3"#,
        r#"llm_proxy_upstream_errors_total{provider="openai",status="429"} 1"#,
        r#"llm_proxy_tokens_total{provider="openai",model="gpt-4o-mini",direction="input"} 38"#,
        r#"llm_proxy_tokens_total{provider="openai",model="gpt-4o-mini",direction="output"} 18"#,
        r#"llm_proxy_tokens_total{provider="anthropic",model="claude-3-5-haiku-20241022",direction="input"} 25"#,
        r#"llm_proxy_tokens_total{provider="anthropic",model="claude-3-5-haiku-20241022",direction="output"} 15"#,
    ] {
        assert!(has_line(&text, line), "missing {line}\n{text}");
    }
    assert!(text.contains("llm_proxy_overhead_seconds_count"));
    assert_documented_names(&text);
    assert!(!text.contains(TEST_KEY));
    assert!(!text.contains("req_"), "no request id in any label");
}

#[actix_web::test]
async fn retries_and_fallbacks_are_counted() {
    let mock = Mock::start(|request| {
        if request.path.ends_with("/messages") {
            Reply::json(200, fixture("anthropic/message.json"))
        } else {
            Reply::Full {
                status: 503,
                content_type: "application/json",
                headers: vec![("retry-after", "0")],
                body: Bytes::from_static(br#"{"error":{"message":"down"}}"#),
            }
        }
    });
    let proxy = start_proxy(llm_proxy::Config {
        max_retries: 1,
        ..config_for(&mock)
    });
    let answer = client()
        .post(proxy.url("/v1/chat/openai"))
        .insert_header(("X-API-Key", TEST_KEY))
        .insert_header(("X-API-Key-Anthropic", "sk-ant"))
        .insert_header(("X-Fallbacks", "anthropic/claude-x"))
        .send_body(hi("m").to_string())
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    let text = metrics_with(
        &proxy,
        r#"llm_proxy_requests_total{route="chat",provider="anthropic",status="2xx",outcome="ok"} 1"#,
    )
    .await;
    for line in [
        r#"llm_proxy_retries_total{provider="openai"} 1"#,
        r#"llm_proxy_fallbacks_total{provider="anthropic"} 1"#,
        r#"llm_proxy_upstream_errors_total{provider="openai",status="503"} 2"#,
        r#"llm_proxy_requests_total{route="chat",provider="anthropic",status="2xx",outcome="ok"} 1"#,
    ] {
        assert!(has_line(&text, line), "missing {line}\n{text}");
    }
}
