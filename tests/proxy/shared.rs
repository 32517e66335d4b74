//! Two proxies sharing one store and one real Redis (Debian's `redis-server`, started on a
//! loopback port by each test): limits, budgets, the cache and ejections hold across both; a
//! Redis that goes away leaves both serving, and its return shares them again.
//!
//! These need `redis-server` on the PATH, so they are ignored by a bare `cargo test`; `.ci/run`
//! installs it and runs them with `cargo test -- --ignored`.

use std::{
    net::TcpListener,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use llm_proxy::Config;

use crate::{
    common::*,
    keys::{held_config, issue_on, upstream},
};

/// A `redis-server` of the test's own on a free loopback port, with nothing saved to disk;
/// stopped on drop.
struct RedisServer {
    port: u16,
    child: Option<Child>,
}

impl RedisServer {
    fn start() -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut server = RedisServer { port, child: None };
        server.restart();
        server
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Starts it again on the same port, empty, as a Redis without persistence restarts.
    fn restart(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server on the PATH (Debian's redis-server; .ci/run installs it)");
        self.child = Some(child);
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "redis-server never listened"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Two proxies, A and B, on one SQLite store and one Redis.
struct Pair {
    a: Proxy,
    b: Proxy,
    accounts: [llm_proxy::http::server::Accounts; 2],
    _dir: TempDirGuard,
}

impl Pair {
    /// Issues a key with `shape` applied, known to both at once.
    async fn issue(&self, shape: impl FnOnce(&mut llm_proxy::store::KeyRow)) -> String {
        let secret = issue_on(&self.accounts[0].keyring, shape).await;
        self.accounts[1]
            .keyring
            .refresh(llm_proxy::keys::now_ms())
            .await
            .unwrap();
        secret
    }
}

async fn pair(config: Config, redis: &RedisServer) -> Pair {
    let dir = temp_dir("shared");
    let config = Config {
        database_url: Some(format!("sqlite://{}", dir.0.join("llm-proxy.db").display())),
        redis_url: Some(llm_proxy::config::Secret(redis.url())),
        ..config
    };
    let (a, accounts_a) = start_on_store(config.clone()).await;
    let (b, accounts_b) = start_on_store(config).await;
    wait_for_line(&a, "llm_proxy_redis_up 1").await;
    wait_for_line(&b, "llm_proxy_redis_up 1").await;
    Pair {
        a,
        b,
        accounts: [accounts_a, accounts_b],
        _dir: dir,
    }
}

/// Asks `answer` every 20 ms until it gives something, for up to 5 s: what another instance
/// did reaches this one a moment later (a write to Redis, a watcher's tick).
async fn eventually<T, F: std::future::Future<Output = Option<T>>>(
    what: &str,
    mut answer: impl FnMut() -> F,
) -> T {
    let started = Instant::now();
    loop {
        if let Some(found) = answer().await {
            return found;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{what}: not within 5 s"
        );
        actix_web::rt::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits for `line` in `proxy`'s metrics.
async fn wait_for_line(proxy: &Proxy, line: &str) {
    let found = || async { has_line(&metrics_text(proxy).await, line).then_some(()) };
    eventually(&format!("{line:?} in the metrics"), found).await;
}

/// Asks with `ask` until the answer is a cache hit.
async fn hit<F: std::future::Future<Output = Answer>>(mut ask: impl FnMut() -> F) -> Answer {
    let hit = || {
        let answer = ask();
        async { Some(answer.await).filter(|a| a.header("x-proxy-cache") == Some("HIT")) }
    };
    eventually("a hit on B", hit).await
}

async fn chat(proxy: &Proxy, secret: &str, extra: &[(&str, &str)]) -> Answer {
    chat_to(proxy, secret, "openai/gpt-4o-mini", extra).await
}

async fn chat_to(proxy: &Proxy, secret: &str, model: &str, extra: &[(&str, &str)]) -> Answer {
    chat_body(proxy, secret, hi(model), extra).await
}

async fn chat_body(
    proxy: &Proxy,
    secret: &str,
    body: serde_json::Value,
    extra: &[(&str, &str)],
) -> Answer {
    let bearer = format!("Bearer {secret}");
    let mut headers = vec![("Authorization", bearer.as_str())];
    headers.extend_from_slice(extra);
    post_with(proxy, "/v1/chat/completions", &headers, body.to_string()).await
}

/// The statuses of `count` requests of `secret`, sent through A and B in turn.
async fn in_turn(pair: &Pair, secret: &str, count: usize) -> Vec<u16> {
    let mut statuses = Vec::new();
    for i in 0..count {
        let proxy = if i % 2 == 0 { &pair.a } else { &pair.b };
        statuses.push(chat(proxy, secret, &[]).await.status);
    }
    statuses
}

fn count(statuses: &[u16], status: u16) -> usize {
    statuses.iter().filter(|&&s| s == status).count()
}

#[actix_web::test]
#[ignore = "needs redis-server: .ci/run installs it and runs the ignored tests"]
async fn requests_per_minute_hold_across_two_instances() {
    let redis = RedisServer::start();
    let mock = upstream();
    let pair = pair(held_config(&mock), &redis).await;
    let secret = pair.issue(|row| row.rpm = Some(4)).await;
    let statuses = in_turn(&pair, &secret, 8).await;
    assert_eq!(statuses[..4], [200; 4], "{statuses:?}");
    assert_eq!(statuses[4..], [429; 4], "{statuses:?}");
    let refused = chat(&pair.b, &secret, &[]).await;
    assert_eq!(refused.json()["error"]["code"], "requests_per_minute");
    assert!(refused.header("retry-after").is_some());
    assert_eq!(mock.requests().len(), 4);
}

#[actix_web::test]
#[ignore = "needs redis-server: .ci/run installs it and runs the ignored tests"]
async fn tokens_and_budgets_charged_on_one_instance_refuse_on_the_other() {
    let redis = RedisServer::start();
    let mock = upstream();
    let pair = pair(held_config(&mock), &redis).await;
    // Each answer of the fixture is 28 tokens at gpt-4o-mini's price.
    let tokens = pair.issue(|row| row.tpm = Some(20)).await;
    let budget = pair
        .issue(|row| {
            row.budget_usd = Some(0.000_001);
            row.budget_period = Some("day".into());
        })
        .await;
    for secret in [&tokens, &budget] {
        assert_eq!(chat(&pair.a, secret, &[]).await.status, 200);
    }
    for (secret, code) in [(&tokens, "tokens_per_minute"), (&budget, "budget")] {
        // The charge goes to Redis as the answer ends, without holding the answer back.
        let refused =
            || async { Some(chat(&pair.b, secret, &[]).await).filter(|a| a.status == 429) };
        let answer = eventually(&format!("{code} refusing on B"), refused).await;
        assert_eq!(answer.json()["error"]["code"], code);
    }
}

#[actix_web::test]
#[ignore = "needs redis-server: .ci/run installs it and runs the ignored tests"]
async fn requests_in_flight_count_across_instances_and_free_as_they_end() {
    let redis = RedisServer::start();
    let mock = Mock::start(|_| {
        Reply::After(
            Duration::from_millis(600),
            Box::new(Reply::json(200, fixture("openai/completion.json"))),
        )
    });
    let pair = pair(held_config(&mock), &redis).await;
    let secret = pair.issue(|row| row.max_concurrent = Some(1)).await;
    let slow = {
        let (a, secret) = (pair.a.clone(), secret.clone());
        actix_web::rt::spawn(async move { chat(&a, &secret, &[]).await.status })
    };
    while mock.requests().is_empty() {
        actix_web::rt::time::sleep(Duration::from_millis(10)).await;
    }
    let refused = chat(&pair.b, &secret, &[]).await;
    assert_eq!(refused.status, 429, "{:?}", refused.body);
    assert_eq!(refused.json()["error"]["code"], "max_concurrent");
    assert_eq!(slow.await.unwrap(), 200);
    // A's release reaches Redis as its answer ends.
    let freed = || async { (chat(&pair.b, &secret, &[]).await.status == 200).then_some(()) };
    eventually("the slot freed on B", freed).await;
}

#[actix_web::test]
#[ignore = "needs redis-server: .ci/run installs it and runs the ignored tests"]
async fn an_answer_cached_through_one_instance_is_a_hit_through_the_other_for_its_tenant_only() {
    let redis = RedisServer::start();
    let mock = upstream();
    let pair = pair(held_config(&mock), &redis).await;
    let tenant = pair.issue(|_| {}).await;
    let other = pair.issue(|_| {}).await;
    let cache = [("X-Proxy-Cache", "use")];
    let first = chat(&pair.a, &tenant, &cache).await;
    assert_eq!(first.header("x-proxy-cache"), Some("MISS"));
    // The entry goes to Redis as the answer is given.
    let hit = hit(|| chat(&pair.b, &tenant, &cache)).await;
    assert_eq!(hit.body, first.body);
    let misses_before = mock.requests().len();
    let another = chat(&pair.b, &other, &cache).await;
    assert_eq!(another.header("x-proxy-cache"), Some("MISS"));
    assert_eq!(
        mock.requests().len(),
        misses_before + 1,
        "another tenant went upstream"
    );
}

#[actix_web::test]
#[ignore = "needs redis-server: .ci/run installs it and runs the ignored tests"]
async fn a_stream_cached_through_one_instance_is_replayed_whole_through_the_other() {
    let redis = RedisServer::start();
    let sse = fixture("openai/stream.sse");
    let mock = Mock::start(move |_| Reply::sse(vec![sse.clone()]));
    let pair = pair(config_for(&mock), &redis).await;
    let ask = |proxy: &Proxy| {
        let proxy = proxy.clone();
        async move {
            chat_body(
                &proxy,
                TEST_KEY,
                streamed("openai/gpt-4o-mini"),
                &[("X-Proxy-Cache", "use")],
            )
            .await
        }
    };
    let first = ask(&pair.a).await;
    assert_eq!(first.header("x-proxy-cache"), Some("MISS"));
    let hit = hit(|| ask(&pair.b)).await;
    assert_eq!(hit.header("content-type"), Some("text/event-stream"));
    assert_eq!(hit.body, first.body, "the same bytes as the live stream");
    assert_eq!(mock.requests().len(), 1);
}

#[actix_web::test]
#[ignore = "needs redis-server: .ci/run installs it and runs the ignored tests"]
async fn a_deployment_ejected_by_one_instance_is_out_on_the_other() {
    let redis = RedisServer::start();
    let failing = Mock::always(500, "application/json", r#"{"error":{"message":"down"}}"#);
    let healthy = Mock::always(200, "application/json", fixture("openai/completion.json"));
    let catalog = format!(
        r#"{{"groups": {{"g": {{"strategy": "ordered", "deployments": [
            {{"provider": "openai", "model": "failing", "base_url": "{}"}},
            {{"provider": "openai", "model": "healthy", "base_url": "{}"}}]}}}}}}"#,
        failing.base_url(),
        healthy.base_url()
    );
    let pair = pair(config_with_catalog(&healthy, &catalog), &redis).await;
    for _ in 0..3 {
        assert_eq!(
            chat_to(&pair.a, TEST_KEY, "g", &[]).await.status,
            200,
            "failed over to the healthy one"
        );
    }
    wait_for_line(
        &pair.b,
        r#"llm_proxy_deployment_up{group="g",deployment="openai/failing"} 0"#,
    )
    .await;
    let failed_before = failing.requests().len();
    assert_eq!(chat_to(&pair.b, TEST_KEY, "g", &[]).await.status, 200);
    assert_eq!(
        failing.requests().len(),
        failed_before,
        "B skipped the ejected deployment"
    );
}

#[actix_web::test]
#[ignore = "needs redis-server: .ci/run installs it and runs the ignored tests"]
async fn without_redis_both_serve_and_count_per_instance_until_it_returns() {
    let mut redis = RedisServer::start();
    let mock = upstream();
    let pair = pair(held_config(&mock), &redis).await;
    let cached = [("X-Proxy-Cache", "use")];
    let caller = pair.issue(|_| {}).await;
    redis.stop();
    // The first calls after the stop find it gone; every answer is still given.
    for _ in 0..4 {
        assert_eq!(chat(&pair.a, &caller, &cached).await.status, 200);
    }
    wait_for_line(&pair.a, "llm_proxy_redis_up 0").await;
    let metrics = metrics_text(&pair.a).await;
    assert!(
        !has_line(&metrics, "llm_proxy_redis_errors_total 0"),
        "{metrics}"
    );

    // Limits fall back to each instance's own count: 2 a minute on each.
    let secret = pair.issue(|row| row.rpm = Some(2)).await;
    let statuses = in_turn(&pair, &secret, 6).await;
    assert_eq!(count(&statuses, 200), 4, "{statuses:?}");

    redis.restart();
    wait_for_line(&pair.a, "llm_proxy_redis_up 1").await;
    wait_for_line(&pair.b, "llm_proxy_redis_up 1").await;
    let shared = pair.issue(|row| row.rpm = Some(2)).await;
    let statuses = in_turn(&pair, &shared, 6).await;
    assert_eq!(count(&statuses, 200), 2, "shared again: {statuses:?}");
}

#[actix_web::test]
#[ignore = "needs redis-server: .ci/run installs it and runs the ignored tests"]
async fn limits_fail_closed_refuses_keys_with_limits_while_redis_is_down() {
    let mut redis = RedisServer::start();
    let mock = upstream();
    let config = Config {
        limits_fail_closed: true,
        ..held_config(&mock)
    };
    let pair = pair(config, &redis).await;
    let limited = pair.issue(|row| row.rpm = Some(100)).await;
    let free = pair.issue(|_| {}).await;
    assert_eq!(chat(&pair.a, &limited, &[]).await.status, 200);
    redis.stop();
    let refused = || async { Some(chat(&pair.a, &limited, &[]).await).filter(|a| a.status != 200) };
    let refused = eventually("a refusal without Redis", refused).await;
    assert_eq!(refused.status, 503, "{:?}", refused.body);
    assert_eq!(refused.json()["error"]["code"], "limits_unavailable");
    assert_eq!(refused.header("retry-after"), Some("1"));
    assert_eq!(
        chat(&pair.a, &free, &[]).await.status,
        200,
        "no limits, nothing to share"
    );
}

#[actix_web::test]
async fn a_proxy_whose_redis_is_down_at_start_serves_all_the_same() {
    // Nothing listens on this port: the proxy starts, serves, and says Redis is down.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mock = upstream();
    let config = Config {
        redis_url: Some(llm_proxy::config::Secret(format!(
            "redis://127.0.0.1:{port}/"
        ))),
        ..config_for(&mock)
    };
    let proxy = start_proxy(config);
    let answer = chat(&proxy, TEST_KEY, &[("X-Proxy-Cache", "use")]).await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    assert_eq!(answer.header("x-proxy-cache"), Some("MISS"));
    let metrics = metrics_text(&proxy).await;
    assert!(has_line(&metrics, "llm_proxy_redis_up 0"), "{metrics}");
    // Both of Redis's series are described, and documented.
    let page = include_str!("../../docs/observability.md");
    for (family, kind, name) in [
        ("llm_proxy_redis_up", "gauge", "llm_proxy_redis_up"),
        (
            "llm_proxy_redis_errors",
            "counter",
            "llm_proxy_redis_errors_total",
        ),
    ] {
        assert!(
            has_line(&metrics, &format!("# TYPE {family} {kind}")),
            "{metrics}"
        );
        assert!(
            page.contains(&format!("| `{name}` | {kind} |")),
            "{name} undocumented"
        );
    }
}
