//! The `llm-proxy` binary as a process: configuration errors, the access log, graceful stop.

use std::{
    io::{BufRead, BufReader},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{
        atomic::{AtomicUsize, Ordering},
        mpsc::{self, Receiver},
    },
    time::Duration,
};

use futures_util::StreamExt;
use serde_json::json;

use crate::common::*;

/// The binary, started with only the given variables (no `.env`: it runs in a temp dir).
struct Process {
    child: Child,
    lines: Receiver<String>,
    seen: Vec<String>,
}

impl Process {
    fn start(vars: &[(&str, &str)]) -> Self {
        Self::start_with_dotenv(vars, None)
    }

    /// Starts the binary in a fresh directory of its own, holding `dotenv` as `.env` if given.
    fn start_with_dotenv(vars: &[(&str, &str)], dotenv: Option<&str>) -> Self {
        static RUNS: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "llm-proxy-test-{}-{}",
            std::process::id(),
            RUNS.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        if let Some(dotenv) = dotenv {
            std::fs::write(dir.join(".env"), dotenv).unwrap();
        }
        let mut command = Command::new(env!("CARGO_BIN_EXE_llm-proxy"));
        command
            .env_clear()
            .current_dir(&dir)
            .env("RUST_LOG", "info")
            .env("HOST", "127.0.0.1")
            .env("PORT", "0")
            .env("WORKERS", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (name, value) in vars {
            command.env(name, value);
        }
        let mut child = command.spawn().expect("the binary starts");
        let stderr = child.stderr.take().unwrap();
        let (send, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if send.send(line).is_err() {
                    return;
                }
            }
        });
        Process {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits for a stderr line containing `text`, and returns it.
    fn wait_for_line(&mut self, text: &str) -> String {
        loop {
            let line = self
                .lines
                .recv_timeout(Duration::from_secs(20))
                .unwrap_or_else(|_| panic!("no line with {text:?} in {:#?}", self.seen));
            self.seen.push(line.clone());
            if line.contains(text) {
                return line;
            }
        }
    }

    /// The address from the "listening on" line.
    fn address(&mut self) -> String {
        let line = self.wait_for_line("listening on http://");
        let at = line.find("http://").unwrap();
        line[at..].split_whitespace().next().unwrap().to_owned()
    }

    fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([name, &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits for the process to exit, at most `limit`.
    fn exit_within(mut self, limit: Duration) -> (ExitStatus, Vec<String>) {
        let (send, exited) = mpsc::channel();
        let pid = self.child.id().to_string();
        let mut child = self.child;
        std::thread::spawn(move || send.send(child.wait().unwrap()));
        let status = exited.recv_timeout(limit).unwrap_or_else(|_| {
            // Not left running past the failed test.
            let _ = Command::new("kill").args(["-KILL", &pid]).status();
            panic!(
                "the process did not exit in time; its lines: {:#?}",
                self.seen
            )
        });
        self.seen.extend(self.lines.try_iter());
        // The reader thread may still be draining; take what is left once it ends.
        self.seen.extend(self.lines.iter());
        (status, self.seen)
    }
}

#[test]
fn an_invalid_variable_stops_the_process_naming_it() {
    for (name, value) in [
        ("PORT", "eighty"),
        ("HTTP_TIMEOUT_SECONDS", "0"),
        ("OPENAI_BASE_URL", "ftp://example.com"),
        ("MAX_BODY_BYTES", "-1"),
        // Far past any use: later arithmetic on them could overflow, or nothing could work.
        ("HTTP_TIMEOUT_SECONDS", "18446744073709551615"),
        ("RETRY_BASE_MS", "18446744073709551615"),
        ("WORKERS", "100000"),
        ("CLIENT_BODY_TIMEOUT_SECONDS", "0"),
        // Less than the default MAX_BODY_BYTES: no body could ever arrive whole.
        ("MAX_PENDING_BODY_BYTES", "10"),
    ] {
        let process = Process::start(&[(name, value)]);
        let (status, lines) = process.exit_within(Duration::from_secs(20));
        assert_eq!(status.code(), Some(2), "{name}={value}: {lines:?}");
        assert!(
            lines.iter().any(|l| l.contains(name)),
            "{name}={value}: {lines:?}"
        );
    }
}

/// actix-server panics past 512 workers ("Workers must not exceed 512"): the limit is checked
/// first, so the process stops with the variable named instead.
#[test]
fn a_worker_count_actix_cannot_run_stops_the_process_naming_it() {
    let process = Process::start(&[("WORKERS", "513")]);
    let (status, lines) = process.exit_within(Duration::from_secs(20));
    assert_eq!(status.code(), Some(2), "{lines:?}");
    assert!(
        lines
            .iter()
            .any(|l| l.contains("invalid configuration") && l.contains("WORKERS")),
        "{lines:?}"
    );
}

#[test]
fn a_bad_providers_file_stops_the_process_naming_file_and_field() {
    let dir = std::env::temp_dir().join(format!("llm-proxy-catalog-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("providers.json");
    std::fs::write(
        &file,
        r#"{"providers": {"groq": {"kind": "openai", "base_url": "groq.com"}}}"#,
    )
    .unwrap();
    let process = Process::start(&[("PROVIDERS_FILE", file.to_str().unwrap())]);
    let (status, lines) = process.exit_within(Duration::from_secs(20));
    assert_eq!(status.code(), Some(2), "{lines:?}");
    let line = lines.join("\n");
    assert!(line.contains("providers.json"), "{line}");
    assert!(line.contains("providers.groq.base_url"), "{line}");
}

#[test]
fn an_unusable_upstream_ca_file_stops_the_process_naming_the_variable() {
    let dir = std::env::temp_dir().join(format!("llm-proxy-ca-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let empty = dir.join("empty.pem");
    std::fs::write(&empty, "").unwrap();
    let not_a_certificate = dir.join("garbage.pem");
    std::fs::write(
        &not_a_certificate,
        "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let missing = dir.join("missing.pem");
    for file in [&empty, &not_a_certificate, &missing] {
        let process = Process::start(&[("UPSTREAM_CA_FILE", file.to_str().unwrap())]);
        let (status, lines) = process.exit_within(Duration::from_secs(20));
        assert_eq!(status.code(), Some(2), "{}: {lines:?}", file.display());
        let line = lines.join("\n");
        assert!(line.contains("UPSTREAM_CA_FILE"), "{line}");
        assert!(line.contains(file.to_str().unwrap()), "{line}");
    }
}

#[test]
fn a_malformed_dotenv_stops_the_process() {
    let process = Process::start_with_dotenv(&[], Some("PORT=8000\nTHIS LINE IS NOT A VARIABLE\n"));
    let (status, lines) = process.exit_within(Duration::from_secs(20));
    assert_eq!(status.code(), Some(2), "{lines:?}");
    assert!(lines.iter().any(|l| l.contains(".env")), "{lines:?}");
}

#[actix_web::test]
async fn the_dotenv_file_is_read() {
    let mock = Mock::always(200, "application/json", fixture("openai/completion.json"));
    let dotenv = format!("OPENAI_BASE_URL={}\n", mock.base_url());
    let mut process = Process::start_with_dotenv(&[], Some(&dotenv));
    let base = process.address();
    let response = client()
        .post(format!("{base}/v1/chat/openai"))
        .insert_header(("X-API-Key", TEST_KEY))
        .send_body(r#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#)
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(mock.requests().len(), 1);
    process.signal("-TERM");
    assert!(process.exit_within(Duration::from_secs(20)).0.success());
}

#[actix_web::test]
async fn the_access_log_has_one_line_per_request_and_no_key_or_content() {
    let mock = Mock::always(200, "application/json", fixture("openai/completion.json"));
    let mut process = Process::start(&[("OPENAI_BASE_URL", &mock.base_url())]);
    let base = process.address();
    let secret_content = "my secret question";
    let response = client()
        .post(format!("{base}/v1/chat/openai"))
        .insert_header(("X-API-Key", TEST_KEY))
        .send_body(json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": secret_content}]}).to_string())
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let line = process.wait_for_line("/v1/chat/openai");
    for field in [
        "POST /v1/chat/openai",
        "provider=openai",
        "model=gpt-4o-mini",
        "status=200",
        "upstream_status=200",
        "stream=false",
        "duration_ms=",
        // data/prices.json: 19 × $0.15 + 9 × $0.60 per million.
        "cost_usd=0.00000825",
    ] {
        assert!(line.contains(field), "{field} in {line}");
    }
    process.signal("-TERM");
    let (status, lines) = process.exit_within(Duration::from_secs(20));
    assert!(status.success());
    for line in &lines {
        assert!(!line.contains(TEST_KEY), "the key leaked: {line}");
        assert!(!line.contains(secret_content), "content leaked: {line}");
    }
}

#[actix_web::test]
async fn json_logs_are_one_object_per_line_with_the_request_fields() {
    let mock = Mock::always(200, "application/json", fixture("openai/completion.json"));
    let mut process = Process::start(&[
        ("OPENAI_BASE_URL", &mock.base_url()),
        ("LOG_FORMAT", "json"),
    ]);
    let base = process.address();
    let response = client()
        .post(format!("{base}/v1/chat/openai"))
        .insert_header(("X-API-Key", TEST_KEY))
        .insert_header(("X-Request-Id", "trace-json-1"))
        .send_body(r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"my secret"}]}"#)
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let line = process.wait_for_line("trace-json-1");
    let record: serde_json::Value = serde_json::from_str(&line).expect("a JSON line");
    for (field, value) in [
        ("level", json!("INFO")),
        ("request_id", json!("trace-json-1")),
        ("route", json!("chat")),
        ("provider", json!("openai")),
        ("model", json!("gpt-4o-mini")),
        ("status", json!(200)),
        ("upstream_status", json!(200)),
        ("attempts", json!(1)),
        ("input_tokens", json!(19)),
        ("output_tokens", json!(9)),
    ] {
        assert_eq!(record[field], value, "{field} in {line}");
    }
    let cost = record["cost_usd"].as_f64().expect("a cost");
    assert!((cost - 8.25e-6).abs() < 1e-12, "{line}");
    assert!(record["timestamp"].is_string());
    assert!(record["duration_ms"].is_number() && record["ttfb_ms"].is_number());
    process.signal("-TERM");
    let (status, lines) = process.exit_within(Duration::from_secs(20));
    assert!(status.success());
    for line in lines.iter().filter(|l| !l.is_empty()) {
        serde_json::from_str::<serde_json::Value>(line)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(
            !line.contains(TEST_KEY) && !line.contains("my secret"),
            "{line}"
        );
    }
}

#[actix_web::test]
async fn a_streams_access_line_has_its_cost_once_it_ends() {
    let mock = Mock::start(|_| Reply::sse(vec![fixture("anthropic/stream.sse")]));
    let mut process = Process::start(&[("ANTHROPIC_BASE_URL", &mock.base_url())]);
    let base = process.address();
    let mut response = client()
        .post(format!("{base}/v1/chat/anthropic"))
        .insert_header(("X-API-Key", TEST_KEY))
        .send_body(streamed("claude-3-5-haiku-20241022").to_string())
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.headers().get("x-proxy-cost-usd").is_none());
    read_to_end(&mut response).await;
    let line = process.wait_for_line("/v1/chat/anthropic");
    // data/prices.json: 25 × $0.80 + 15 × $4 per million, the counts the stream carried.
    for field in [
        "stream=true",
        "input_tokens=25",
        "output_tokens=15",
        "cost_usd=0.00008",
    ] {
        assert!(line.contains(field), "{field} in {line}");
    }
    process.signal("-TERM");
    assert!(process.exit_within(Duration::from_secs(20)).0.success());
}

/// Runs the binary, with `vars` too, in front of a stream the upstream cuts after one event,
/// asked for as `X-Request-Id: trace-cut-1`; returns the warning about the cut and the access
/// line, in that order.
async fn lines_about_a_cut_stream(vars: &[(&str, &str)]) -> (String, String) {
    let (feed, body) = feed();
    let mock = Mock::streaming(body);
    let base_url = mock.base_url();
    let mut all = vec![("OPENAI_BASE_URL", base_url.as_str())];
    all.extend_from_slice(vars);
    let mut process = Process::start(&all);
    let base = process.address();
    feed.send("data: {\"n\":1}\n\n");
    let mut response = client()
        .post(format!("{base}/v1/chat/openai"))
        .insert_header(("X-API-Key", TEST_KEY))
        .insert_header(("X-Request-Id", "trace-cut-1"))
        .send_body(r#"{"model":"m","stream":true,"messages":[{"role":"user","content":"hi"}]}"#)
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.next().await.unwrap().unwrap(),
        "data: {\"n\":1}\n\n"
    );
    feed.fail();
    let mut rest = Vec::new();
    while let Some(chunk) = response.next().await {
        rest.extend_from_slice(&chunk.unwrap());
    }
    assert!(rest.starts_with(b"event: error\n"), "{rest:?}");
    drop(response);
    let cut = process.wait_for_line("stream cut");
    let access = process.wait_for_line("/v1/chat/openai");
    process.signal("-TERM");
    assert!(process.exit_within(Duration::from_secs(20)).0.success());
    (cut, access)
}

#[actix_web::test]
async fn a_cut_streams_warning_carries_its_request_id_and_its_access_line_the_outcome() {
    let (cut, access) = lines_about_a_cut_stream(&[]).await;
    assert!(cut.contains("WARN"), "{cut}");
    assert!(cut.contains("request_id=trace-cut-1"), "{cut}");
    assert!(access.contains("request_id=trace-cut-1"), "{access}");
    assert!(access.contains("status=200"), "{access}");
    assert!(access.contains("outcome=upstream_cut"), "{access}");
}

#[actix_web::test]
async fn in_json_logs_a_cut_streams_request_id_is_a_field_of_its_own() {
    let (cut, access) = lines_about_a_cut_stream(&[("LOG_FORMAT", "json")]).await;
    let cut: serde_json::Value = serde_json::from_str(&cut).expect("a JSON line");
    assert_eq!(cut["level"], "WARN", "{cut}");
    assert_eq!(cut["request_id"], "trace-cut-1", "{cut}");
    let message = cut["message"].as_str().expect("a message");
    assert!(message.starts_with("openai stream cut: "), "{cut}");
    assert!(!message.contains("request_id="), "{cut}");
    let access: serde_json::Value = serde_json::from_str(&access).expect("a JSON line");
    assert_eq!(access["request_id"], "trace-cut-1", "{access}");
    assert_eq!(access["status"], 200, "{access}");
    assert_eq!(access["outcome"], "upstream_cut", "{access}");
}

/// A stream in flight when the signal comes is finished, then the process exits 0.
async fn a_signal_lets_a_stream_in_flight_finish(signal: &str, name: &str) {
    let (feed, body) = feed();
    let mock = Mock::streaming(body);
    let mut process = Process::start(&[
        ("OPENAI_BASE_URL", &mock.base_url()),
        ("SHUTDOWN_TIMEOUT_SECONDS", "15"),
    ]);
    let base = process.address();
    feed.send("data: {\"n\":1}\n\n");
    let mut response = client()
        .post(format!("{base}/v1/chat/openai"))
        .insert_header(("X-API-Key", TEST_KEY))
        .send_body(r#"{"model":"m","stream":true,"messages":[{"role":"user","content":"hi"}]}"#)
        .await
        .unwrap();
    assert_eq!(
        response.next().await.unwrap().unwrap(),
        "data: {\"n\":1}\n\n"
    );

    process.signal(signal);
    process.wait_for_line(&format!("{name} received"));
    feed.send("data: [DONE]\n\n");
    feed.finish();
    let mut rest = Vec::new();
    while let Some(chunk) = response.next().await {
        rest.extend_from_slice(&chunk.expect("the stream finishes cleanly"));
    }
    assert_eq!(rest, b"data: [DONE]\n\n");
    drop(response);

    let (status, lines) = process.exit_within(Duration::from_secs(20));
    assert_eq!(status.code(), Some(0), "{lines:#?}");
}

#[actix_web::test]
async fn sigterm_lets_a_stream_in_flight_finish_then_exits_zero() {
    a_signal_lets_a_stream_in_flight_finish("-TERM", "SIGTERM").await;
}

#[actix_web::test]
async fn sigint_lets_a_stream_in_flight_finish_then_exits_zero() {
    a_signal_lets_a_stream_in_flight_finish("-INT", "SIGINT").await;
}

#[actix_web::test]
async fn a_second_signal_exits_at_once() {
    let (feed, body) = feed();
    let mock = Mock::streaming(body);
    let mut process = Process::start(&[
        ("OPENAI_BASE_URL", &mock.base_url()),
        ("SHUTDOWN_TIMEOUT_SECONDS", "600"),
    ]);
    let base = process.address();
    feed.send("data: {\"n\":1}\n\n");
    let mut response = client()
        .post(format!("{base}/v1/chat/openai"))
        .insert_header(("X-API-Key", TEST_KEY))
        .send_body(r#"{"model":"m","stream":true,"messages":[{"role":"user","content":"hi"}]}"#)
        .await
        .unwrap();
    response.next().await.unwrap().unwrap();

    process.signal("-INT");
    process.wait_for_line("SIGINT received");
    process.signal("-INT");
    // Far sooner than the 600 s grace period the stream would otherwise get.
    let (status, lines) = process.exit_within(Duration::from_secs(20));
    assert_eq!(status.code(), Some(130), "{lines:#?}");
    drop(feed);
}

/// The proxy's resident memory, from /proc.
fn resident_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/<pid>/status")
}

#[actix_web::test]
#[ignore = "holds 1,000 streams open; run by .ci/run"]
async fn a_thousand_streams_held_open_keep_memory_bounded() {
    const STREAMS: usize = 1000;
    let feeds = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let held = feeds.clone();
    let mock = Mock::start(move |_| {
        let (feed, body) = feed();
        feed.send("data: {\"n\":1}\n\n");
        held.lock().unwrap().push(feed);
        Reply::Stream(body)
    });
    let mut process = Process::start(&[
        ("OPENAI_BASE_URL", &mock.base_url()),
        ("HTTP_MAX_CONNECTIONS", "2000"),
        ("MAX_CONCURRENT_REQUESTS", "2000"),
        ("RUST_LOG", "warn,llm_proxy=info"),
    ]);
    let base = process.address();
    let idle = resident_kib(process.child.id());

    let client = awc::Client::builder()
        .connector(awc::Connector::new().limit(0))
        .timeout(Duration::from_secs(60))
        .finish();
    let opened = (0..STREAMS).map(|_| {
        let request = client
            .post(format!("{base}/v1/chat/openai"))
            .insert_header(("X-API-Key", TEST_KEY))
            .send_body(
                r#"{"model":"m","stream":true,"messages":[{"role":"user","content":"hi"}]}"#,
            );
        async move {
            let mut response = request.await.expect("a stream opens");
            assert_eq!(response.status(), 200);
            let first = response.next().await.unwrap().unwrap();
            assert_eq!(first, "data: {\"n\":1}\n\n");
            response
        }
    });
    let streams = futures_util::future::join_all(opened).await;
    assert_eq!(streams.len(), STREAMS);
    assert_eq!(
        feeds.lock().unwrap().len(),
        STREAMS,
        "every stream reached the upstream"
    );
    let open = resident_kib(process.child.id());
    eprintln!("resident memory: {idle} KiB idle, {open} KiB with {STREAMS} open streams");
    assert!(open < 100 * 1024, "{open} KiB with {STREAMS} streams open");

    drop(streams);
    feeds.lock().unwrap().clear();
    process.signal("-TERM");
    let (status, _) = process.exit_within(Duration::from_secs(30));
    assert!(status.success());
}

#[actix_web::test]
async fn the_access_line_names_the_group_and_the_deployment_that_answered() {
    let mock = Mock::always(200, "application/json", fixture("openai/completion.json"));
    let dir = std::env::temp_dir().join(format!("llm-proxy-group-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("providers.json");
    let catalog = format!(
        r#"{{"groups": {{"chat": {{"deployments": [
            {{"provider": "openai", "model": "gpt-4o-mini", "base_url": "{}"}}]}}}}}}"#,
        mock.base_url()
    );
    std::fs::write(&file, catalog).unwrap();
    let mut process = Process::start(&[("PROVIDERS_FILE", file.to_str().unwrap())]);
    let base = process.address();
    let response = client()
        .post(format!("{base}/v1/chat/completions"))
        .insert_header(("Authorization", format!("Bearer {TEST_KEY}")))
        .send_body(hi("chat").to_string())
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let line = process.wait_for_line("/v1/chat/completions");
    for field in ["provider=openai", "model=gpt-4o-mini", "group=chat"] {
        assert!(line.contains(field), "{field} in {line}");
    }
    process.signal("-TERM");
    assert!(process.exit_within(Duration::from_secs(20)).0.success());
}

#[test]
fn holding_a_key_without_a_store_to_issue_keys_refuses_to_start() {
    let dir = temp_dir("relay");
    let file = dir.0.join("providers.json");
    std::fs::write(
        &file,
        r#"{"providers": {"openai": {"api_key_env": "TEAM_KEY"}}}"#,
    )
    .unwrap();
    let process = Process::start(&[
        ("PROVIDERS_FILE", file.to_str().unwrap()),
        ("TEAM_KEY", "sk-team-held-4c1d"),
        ("DATABASE_URL", "none"),
    ]);
    let (status, lines) = process.exit_within(Duration::from_secs(20));
    assert_eq!(status.code(), Some(2), "{lines:?}");
    let all = lines.join("\n");
    assert!(all.contains("open relay"), "{all}");
    assert!(!all.contains("sk-team-held-4c1d"), "{all}");
}

#[actix_web::test]
async fn held_and_issued_keys_appear_in_no_log_line() {
    const HELD: &str = "sk-team-held-9a8b7c";
    let mock = Mock::start(|request| match request.json()["model"].as_str() {
        Some("fails") => Reply::json(500, r#"{"error":{"message":"boom"}}"#),
        _ => Reply::json(200, fixture("openai/completion.json")),
    });
    let dir = temp_dir("held-logs");
    let file = dir.0.join("providers.json");
    std::fs::write(
        &file,
        r#"{"providers": {"openai": {"api_key_env": "TEAM_KEY"}}}"#,
    )
    .unwrap();
    let database = format!("sqlite://{}", dir.0.join("llm-proxy.db").display());
    let mut process = Process::start(&[
        ("PROVIDERS_FILE", file.to_str().unwrap()),
        ("TEAM_KEY", HELD),
        ("DATABASE_URL", &database),
        ("OPENAI_BASE_URL", &mock.base_url()),
        ("RUST_LOG", "debug"),
        ("MAX_RETRIES", "0"),
    ]);
    let base = process.address();

    // A key issued beside the running proxy, as the `keys` command does.
    let store = llm_proxy::store::Store::open(&database).await.unwrap();
    let (secret, hash) = llm_proxy::keys::generate().unwrap();
    let now = llm_proxy::keys::now_ms();
    store
        .insert_key(&llm_proxy::store::KeyRow::new(
            llm_proxy::keys::new_id().unwrap(),
            hash,
            secret.prefix().to_owned(),
            "logs".into(),
            now,
        ))
        .await
        .unwrap();
    let secret = secret.expose().to_owned();
    let send = |model: &'static str, key: String| {
        let url = format!("{base}/v1/chat/completions");
        async move {
            client()
                .post(url)
                .insert_header(("Authorization", format!("Bearer {key}")))
                .send_body(
                    json!({"model": model, "messages": [{"role": "user", "content": "hi"}]})
                        .to_string(),
                )
                .await
                .map_or(0, |response| response.status().as_u16())
        }
    };
    let mut served = false;
    for _ in 0..100 {
        if send("openai/gpt-4o-mini", secret.clone()).await == 200 {
            served = true;
            break;
        }
        actix_web::rt::time::sleep(Duration::from_millis(20)).await;
    }
    if !served {
        process.signal("-TERM");
        let (_, lines) = process.exit_within(Duration::from_secs(20));
        panic!("the issued key was never served: {lines:#?}");
    }
    assert_eq!(send("openai/fails", secret.clone()).await, 500);
    assert_eq!(send("openai/gpt-4o-mini", TEST_KEY.into()).await, 401);
    assert_eq!(send("openai/gpt-4o-mini", "lp-unknown".into()).await, 401);

    process.signal("-TERM");
    let (_, lines) = process.exit_within(Duration::from_secs(20));
    let all = lines.join("\n");
    assert!(all.contains("access"), "the requests were logged: {all}");
    assert!(!all.contains(HELD), "{all}");
    assert!(!all.contains(&secret[3..]), "{all}");
    assert!(!all.contains(TEST_KEY), "{all}");
}
