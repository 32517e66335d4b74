//! The Grafana dashboard in docs/grafana: importable, and querying only what `/metrics` shows.

use std::collections::BTreeSet;

use llm_proxy::Config;
use serde_json::Value;

use crate::common::*;

const DASHBOARD: &str = include_str!("../../docs/grafana/llm-proxy.json");

/// Every PromQL text in the dashboard: each panel target's `expr` and each template
/// variable's query, wherever they are nested (rows may hold panels).
fn queries(value: &Value, found: &mut Vec<String>) {
    match value {
        Value::Object(fields) => {
            for (name, field) in fields {
                match (name.as_str(), field) {
                    ("expr" | "definition", Value::String(text)) => found.push(text.clone()),
                    ("query", Value::String(text)) => found.push(text.clone()),
                    _ => queries(field, found),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|item| queries(item, found)),
        _ => {}
    }
}

/// The series names a query uses: every word that starts with `llm_proxy_`, as written (a
/// histogram's `_bucket`, `_sum` or `_count` included), so each can be looked up exactly.
fn series_names(query: &str) -> BTreeSet<String> {
    let word = |c: char| c.is_ascii_alphanumeric() || c == '_';
    query
        .split(|c: char| !word(c))
        .filter(|token| token.starts_with("llm_proxy_"))
        .map(str::to_owned)
        .collect()
}

fn dashboard() -> Value {
    serde_json::from_str(DASHBOARD).expect("docs/grafana/llm-proxy.json is JSON")
}

#[test]
fn the_dashboard_is_an_importable_grafana_dashboard_over_one_prometheus_input() {
    let dashboard = dashboard();
    assert_eq!(dashboard["schemaVersion"], 39);
    assert_eq!(dashboard["uid"], "llm-proxy");
    let inputs = dashboard["__inputs"].as_array().unwrap();
    assert_eq!(inputs.len(), 1);
    assert_eq!(inputs[0]["name"], "DS_PROMETHEUS");
    assert_eq!(inputs[0]["pluginId"], "prometheus");
    let panels = dashboard["panels"].as_array().unwrap();
    let mut ids = BTreeSet::new();
    for panel in panels {
        let title = panel["title"].as_str().unwrap();
        assert!(
            ids.insert(panel["id"].as_u64().unwrap()),
            "{title}: its id twice"
        );
        for field in ["h", "w", "x", "y"] {
            assert!(
                panel["gridPos"][field].is_u64(),
                "{title}: no gridPos.{field}"
            );
        }
        if panel["type"] == "row" {
            continue;
        }
        assert_eq!(panel["datasource"]["uid"], "${DS_PROMETHEUS}", "{title}");
        let targets = panel["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{title}: no query");
        let mut refs = BTreeSet::new();
        for target in targets {
            assert_eq!(target["datasource"]["uid"], "${DS_PROMETHEUS}", "{title}");
            assert!(
                refs.insert(target["refId"].as_str().unwrap()),
                "{title}: a refId twice"
            );
            assert!(target["expr"].is_string(), "{title}: a target without expr");
        }
    }
}

#[actix_web::test]
async fn every_metric_the_grafana_dashboard_queries_is_in_metrics_after_traffic() {
    let mut used = BTreeSet::new();
    let mut found = Vec::new();
    queries(&dashboard(), &mut found);
    for query in &found {
        used.extend(series_names(query));
    }
    // The extraction itself: every family the proxy has, in the form the dashboard queries.
    for family in [
        "llm_proxy_requests_total",
        "llm_proxy_requests_in_flight",
        "llm_proxy_request_duration_seconds_bucket",
        "llm_proxy_request_duration_seconds_sum",
        "llm_proxy_request_duration_seconds_count",
        "llm_proxy_upstream_ttfb_seconds_bucket",
        "llm_proxy_overhead_seconds_bucket",
        "llm_proxy_retries_total",
        "llm_proxy_fallbacks_total",
        "llm_proxy_upstream_errors_total",
        "llm_proxy_tokens_total",
        "llm_proxy_cost_usd_total",
        "llm_proxy_deployment_up",
        "llm_proxy_deployment_ttfb_ewma_seconds",
        "llm_proxy_usage_records_dropped_total",
    ] {
        assert!(
            used.contains(family),
            "the dashboard does not query {family}: {used:?}"
        );
    }

    // One request through a group whose first deployment is down: retried once, then the
    // next deployment answers, with a priced model. That makes every family show a sample.
    let down = Mock::always(
        503,
        "application/json",
        r#"{"error":{"message":"overloaded"}}"#,
    );
    let up = Mock::always(200, "application/json", fixture("openai/completion.json"));
    let catalog = format!(
        r#"{{"prices": {{"openai/gpt-4o-mini": {{"input": 1, "output": 2}}}},
            "groups": {{"g": {{"strategy": "ordered", "deployments": [
                {{"provider": "openai", "model": "m0", "base_url": "{}"}},
                {{"provider": "openai", "model": "m1", "base_url": "{}"}}]}}}}}}"#,
        down.base_url(),
        up.base_url()
    );
    let proxy = start_proxy(Config {
        max_retries: 1,
        ..config_with_catalog(&up, &catalog)
    });
    let answer = complete(&proxy, hi("g")).await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    assert_eq!(answer.header("x-proxy-attempts"), Some("3"));

    // A request is counted when its body is done, a moment after the client read it.
    let shown = |text: &str, name: &str| {
        text.lines()
            .any(|line| !line.starts_with('#') && line.split(['{', ' ']).next() == Some(name))
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let text = loop {
        let text = metrics_text(&proxy).await;
        if used.iter().all(|name| shown(&text, name)) || std::time::Instant::now() > deadline {
            break text;
        }
        actix_web::rt::task::yield_now().await;
    };
    let missing: Vec<&String> = used.iter().filter(|name| !shown(&text, name)).collect();
    assert!(
        missing.is_empty(),
        "queried by docs/grafana/llm-proxy.json, not in /metrics: {missing:?}\n{text}"
    );
}

#[test]
fn series_names_are_read_whole_from_promql() {
    let names = series_names(
        r#"histogram_quantile(0.95, sum by (le) (rate(llm_proxy_overhead_seconds_bucket{a="llm_proxy_x"}[5m]))) / llm_proxy_requests_total"#,
    );
    // A label value that happens to look like a name is picked up too: stricter, never looser.
    assert_eq!(
        names.into_iter().collect::<Vec<_>>(),
        [
            "llm_proxy_overhead_seconds_bucket",
            "llm_proxy_requests_total",
            "llm_proxy_x"
        ]
    );
}
