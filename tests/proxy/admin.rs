//! The admin API through HTTP, and the `keys` command as a process, against a SQLite store.

use std::process::Command;

use actix_web::http::Method;
use llm_proxy::{
    config::Secret,
    keys::{self, Lookup},
    store::{Store, UsageRecord},
    Config,
};
use serde_json::{json, Value};

use crate::common::*;

const ADMIN_TOKEN: &str = "admin-token-for-tests";

fn admin_config() -> Config {
    Config {
        admin_token: Some(Secret(ADMIN_TOKEN.into())),
        ..config_with_base("http://127.0.0.1:9")
    }
}

/// Every method on every admin path, known or not.
fn every_route() -> Vec<(Method, &'static str)> {
    let paths = [
        "/admin",
        "/admin/",
        "/admin/keys",
        "/admin/keys/key_x",
        "/admin/usage",
        "/admin/nope",
    ];
    let methods = [
        Method::GET,
        Method::POST,
        Method::PUT,
        Method::PATCH,
        Method::DELETE,
    ];
    paths
        .iter()
        .flat_map(|path| methods.iter().map(move |method| (method.clone(), *path)))
        .collect()
}

/// Sends `method path` with the given `Authorization` value and JSON body.
async fn send(
    proxy: &Proxy,
    method: Method,
    path: &str,
    authorization: Option<&str>,
    body: Option<Value>,
) -> Answer {
    let mut request = client().request(method, proxy.url(path));
    if let Some(value) = authorization {
        request = request.insert_header(("Authorization", value));
    }
    let mut response = match body {
        Some(body) => request.send_json(&body).await,
        None => request.send().await,
    }
    .expect("the proxy answers");
    let body = response.body().limit(16 << 20).await.expect("a body");
    Answer {
        status: response.status().as_u16(),
        headers: response.headers().clone(),
        body,
    }
}

/// An admin request with the right token.
async fn admin(proxy: &Proxy, method: Method, path: &str, body: Option<Value>) -> Answer {
    let bearer = format!("Bearer {ADMIN_TOKEN}");
    send(proxy, method, path, Some(&bearer), body).await
}

#[actix_web::test]
async fn every_admin_route_is_unknown_without_admin_token() {
    let accounted = start_accounted(config_with_base("http://127.0.0.1:9")).await;
    let bearer = format!("Bearer {ADMIN_TOKEN}");
    for (method, path) in every_route() {
        let answer = send(&accounted.proxy, method.clone(), path, Some(&bearer), None).await;
        assert_eq!(answer.status, 404, "{method} {path}");
        assert_eq!(
            answer.json()["error"]["type"],
            "not_found",
            "{method} {path}"
        );
    }
}

#[actix_web::test]
async fn every_admin_route_refuses_a_missing_or_wrong_token() {
    let accounted = start_accounted(admin_config()).await;
    let wrong = [
        None,
        Some("Bearer wrong-token"),
        Some("Bearer admin-token-for-test"),
        Some("Bearer admin-token-for-testsX"),
        Some("Basic YWRtaW46YWRtaW4="),
        Some(ADMIN_TOKEN),
        Some("Bearer "),
    ];
    for (method, path) in every_route() {
        for authorization in wrong {
            let answer = send(&accounted.proxy, method.clone(), path, authorization, None).await;
            let what = format!("{method} {path} with {authorization:?}");
            assert_eq!(answer.status, 401, "{what}");
            assert_eq!(answer.json()["error"]["type"], "authentication", "{what}");
            let body = String::from_utf8_lossy(&answer.body);
            assert!(!body.contains(ADMIN_TOKEN), "{what}: {body}");
        }
    }
    assert!(accounted.accounts.keyring.table().is_empty());
}

#[actix_web::test]
async fn the_admin_api_without_a_store_says_so() {
    let proxy = start_proxy(admin_config());
    let answer = admin(&proxy, Method::GET, "/admin/keys", None).await;
    assert_eq!(answer.status, 503);
    let message = answer.json()["error"]["message"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(message.contains("DATABASE_URL=none"), "{message}");
    // The token is still checked first.
    let answer = send(&proxy, Method::GET, "/admin/keys", None, None).await;
    assert_eq!(answer.status, 401);
}

#[actix_web::test]
async fn keys_are_created_listed_shown_updated_and_revoked() {
    let accounted = start_accounted(admin_config()).await;
    let proxy = &accounted.proxy;
    let keyring = &accounted.accounts.keyring;

    let created = admin(
        proxy,
        Method::POST,
        "/admin/keys",
        Some(
            json!({"name": "ci", "owner": "team-a", "models": ["openai/*"],
                    "rpm": 60, "budget": "20/month", "metadata": {"env": "ci"}}),
        ),
    )
    .await;
    assert_eq!(created.status, 201, "{:?}", created.body);
    let created = created.json();
    let secret = created["key"].as_str().unwrap().to_owned();
    let id = created["id"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("lp-") && secret.len() >= 46, "{secret}");
    assert_eq!(created["prefix"], secret[..8]);
    assert_eq!(created["budget"], "20/month");
    assert_eq!(created["status"], "active");
    let hash = keys::hash_hex(&secret);
    assert!(!created.to_string().contains(&hash), "no hash in {created}");

    // This instance sees the key at once, without waiting for its poll.
    let Lookup::Found(key) = keyring.lookup(&secret, keys::now_ms()) else {
        panic!("the new key is found at once");
    };
    assert_eq!(key.row.id, id);

    let list = admin(proxy, Method::GET, "/admin/keys", None).await;
    assert_eq!(list.status, 200);
    let shown = admin(proxy, Method::GET, &format!("/admin/keys/{id}"), None).await;
    assert_eq!(shown.status, 200);
    for answer in [&list, &shown] {
        let body = String::from_utf8_lossy(&answer.body);
        assert!(!body.contains(&secret), "{body}");
        assert!(!body.contains(&hash), "{body}");
        assert!(!body.contains("\"key\""), "{body}");
        assert!(body.contains(&secret[..8]), "the prefix is shown: {body}");
    }
    assert_eq!(list.json()["keys"][0]["name"], "ci");
    assert_eq!(shown.json()["owner"], "team-a");

    let updated = admin(
        proxy,
        Method::PATCH,
        &format!("/admin/keys/{id}"),
        Some(json!({"rpm": null, "enabled": false, "name": "ci-2"})),
    )
    .await;
    assert_eq!(updated.status, 200, "{:?}", updated.body);
    let updated = updated.json();
    assert_eq!(
        (&updated["name"], &updated["rpm"], &updated["status"]),
        (&json!("ci-2"), &Value::Null, &json!("disabled"))
    );
    assert_eq!(
        updated["owner"], "team-a",
        "what the patch leaves out stays"
    );
    assert!(!updated.to_string().contains(&secret));
    assert!(matches!(
        keyring.lookup(&secret, keys::now_ms()),
        Lookup::Disabled(_)
    ));

    let revoked = admin(proxy, Method::DELETE, &format!("/admin/keys/{id}"), None).await;
    assert_eq!(revoked.status, 200);
    assert_eq!(revoked.json()["status"], "revoked");
    assert!(matches!(
        keyring.lookup(&secret, keys::now_ms()),
        Lookup::Revoked(_)
    ));
    // The row stays, so its usage remains attributable, and it can no longer change.
    let row = keyring.store().get_key(&id).await.unwrap().unwrap();
    assert!(row.revoked_at.is_some());
    let again = admin(
        proxy,
        Method::PATCH,
        &format!("/admin/keys/{id}"),
        Some(json!({"enabled": true})),
    )
    .await;
    assert_eq!(again.status, 409);
}

#[actix_web::test]
async fn bad_requests_name_what_is_wrong() {
    let accounted = start_accounted(admin_config()).await;
    let proxy = &accounted.proxy;
    for (body, says) in [
        (json!({"owner": "x"}), "name: is required"),
        (
            json!({"name": "ci", "colour": "red"}),
            "colour: is not a field",
        ),
        (
            json!({"name": "ci", "rpm": -1}),
            "rpm: must be a whole number",
        ),
        (
            json!({"name": "ci", "budget": "3/year"}),
            "budget: the budget's period",
        ),
    ] {
        let answer = admin(proxy, Method::POST, "/admin/keys", Some(body.clone())).await;
        assert_eq!(answer.status, 400, "{body}");
        let error = &answer.json()["error"];
        assert_eq!(error["type"], "invalid_request");
        assert!(error["message"].as_str().unwrap().contains(says), "{error}");
    }
    let missing = admin(proxy, Method::GET, "/admin/keys/key_missing", None).await;
    assert_eq!(missing.status, 404);
    let missing = admin(proxy, Method::DELETE, "/admin/keys/key_missing", None).await;
    assert_eq!(missing.status, 404);

    let huge = json!({"name": "x".repeat(70 * 1024)});
    let answer = admin(proxy, Method::POST, "/admin/keys", Some(huge)).await;
    assert_eq!(answer.status, 413);
    assert_eq!(answer.json()["error"]["type"], "payload_too_large");

    for query in [
        "since=yesterday",
        "by=colour",
        "colour=red",
        "since=10&until=5",
    ] {
        let answer = admin(proxy, Method::GET, &format!("/admin/usage?{query}"), None).await;
        assert_eq!(answer.status, 400, "{query}");
    }
    assert!(accounted.accounts.keyring.table().is_empty());
}

fn record(
    key_id: Option<&str>,
    provider: &str,
    model: &str,
    status: u16,
    cost: f64,
) -> UsageRecord {
    UsageRecord {
        time_ms: keys::now_ms(),
        key_id: key_id.map(String::from),
        caller: None,
        route: "chat_completions".into(),
        provider: Some(provider.into()),
        model: Some(model.into()),
        group: None,
        deployment: Some(format!("{provider}/{model}")),
        status,
        input_tokens: 10,
        output_tokens: 5,
        cached_tokens: 2,
        cost_usd: Some(cost),
        latency_ms: 12.0,
        ttfb_ms: Some(3.0),
        request_id: "req".into(),
        cached: false,
    }
}

#[actix_web::test]
async fn usage_is_summed_over_a_range_and_by_group() {
    let accounted = start_accounted(admin_config()).await;
    let proxy = &accounted.proxy;
    let keyring = &accounted.accounts.keyring;
    let created = admin(
        proxy,
        Method::POST,
        "/admin/keys",
        Some(json!({"name": "ci"})),
    )
    .await;
    let id = created.json()["id"].as_str().unwrap().to_owned();
    let now = keys::now_ms();
    for r in [
        record(Some(&id), "openai", "gpt-4o", 200, 0.5),
        record(Some(&id), "openai", "gpt-4o-mini", 200, 0.25),
        record(Some(&id), "anthropic", "claude", 429, 0.0),
        record(None, "openai", "gpt-4o", 200, 1.0),
    ] {
        keyring.record(r, now);
    }
    keyring.flush().await;

    let all = admin(proxy, Method::GET, "/admin/usage", None).await;
    assert_eq!(all.status, 200, "{:?}", all.body);
    let all = all.json();
    assert_eq!(all["truncated"], false);
    assert_eq!(
        all["totals"],
        json!({"requests": 4, "input_tokens": 40, "output_tokens": 20, "cached_tokens": 8,
               "cost_usd": 1.75, "errors": 1})
    );

    let by_provider = admin(proxy, Method::GET, "/admin/usage?by=provider", None).await;
    let groups = by_provider.json()["groups"].clone();
    assert_eq!(groups[0]["group"], "openai");
    assert_eq!(groups[0]["requests"], 3);
    assert_eq!(groups[0]["cost_usd"], 1.75);
    assert_eq!(groups[1]["group"], "anthropic");
    assert_eq!(groups[1]["errors"], 1);

    let by_key = admin(proxy, Method::GET, "/admin/usage?by=key", None).await;
    let groups = by_key.json()["groups"].clone();
    assert_eq!(
        (&groups[0]["group"], &groups[0]["name"]),
        (&json!(id), &json!("ci"))
    );
    assert_eq!(groups[0]["requests"], 3);
    assert_eq!(groups[1]["group"], Value::Null);

    let by_status = admin(proxy, Method::GET, "/admin/usage?by=status", None).await;
    assert_eq!(by_status.json()["groups"][1]["group"], "429");

    // A range that ends before the records holds none of them; unix ms and RFC 3339 both do.
    let path = format!("/admin/usage?since=0&until={}", now - 60_000);
    let before = admin(proxy, Method::GET, &path, None).await;
    assert_eq!(before.json()["totals"]["requests"], 0);
    let rfc = admin(
        proxy,
        Method::GET,
        "/admin/usage?since=2000-01-01T00:00:00Z&by=model",
        None,
    )
    .await;
    assert_eq!(rfc.json()["totals"]["requests"], 4);
}

/// The binary's `keys` command against the SQLite file at `url`, in a directory of its own
/// (no `.env`): its exit code, stdout and stderr.
fn keys_command(url: &str, args: &[&str]) -> (i32, String, String) {
    let dir = temp_dir("keys-cli");
    let output = Command::new(env!("CARGO_BIN_EXE_llm-proxy"))
        .env_clear()
        .current_dir(&dir.0)
        .env("DATABASE_URL", url)
        .arg("keys")
        .args(args)
        .output()
        .expect("the binary runs");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[actix_web::test]
async fn the_keys_command_creates_lists_and_revokes() {
    let dir = temp_dir("keys-cli-db");
    let url = format!("sqlite://{}", dir.0.join("keys.db").display());

    let (code, out, err) = keys_command(
        &url,
        &[
            "create",
            "--name",
            "ci",
            "--budget-usd",
            "20/month",
            "--models",
            "openai/*",
        ],
    );
    assert_eq!(code, 0, "{err}");
    let secret = out
        .split_whitespace()
        .find(|word| word.starts_with("lp-"))
        .unwrap_or_else(|| panic!("a secret in {out}"))
        .to_owned();
    assert!(out.contains("only time"), "{out}");

    let (code, out, err) = keys_command(&url, &["list"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("ci") && out.contains("20/month"), "{out}");
    assert!(!out.contains(&secret), "{out}");
    assert!(!out.contains(&keys::hash_hex(&secret)), "{out}");

    let store = Store::open(&url).await.unwrap();
    let row = store.list_keys().await.unwrap().remove(0);
    assert_eq!(row.hash, keys::hash_hex(&secret));
    assert_eq!(row.models, ["openai/*"]);

    let (code, out, err) = keys_command(&url, &["show", &row.id]);
    assert_eq!(code, 0, "{err}");
    assert!(
        !out.contains(&secret) && out.contains("\"name\": \"ci\""),
        "{out}"
    );

    let (code, _, err) = keys_command(&url, &["revoke", &row.id]);
    assert_eq!(code, 0, "{err}");
    let row = store.get_key(&row.id).await.unwrap().unwrap();
    assert!(row.revoked_at.is_some());

    let (code, out, _) = keys_command(&url, &["--help"]);
    assert_eq!(code, 0);
    assert!(out.contains("llm-proxy keys create"), "{out}");
}

#[actix_web::test]
async fn a_running_proxy_sees_a_key_the_command_made_and_revoked_within_a_second() {
    let accounted = start_accounted(config_with_base("http://127.0.0.1:9")).await;
    let keyring = &accounted.accounts.keyring;
    let (code, out, err) = keys_command(&accounted.database_url, &["create", "--name", "ops"]);
    assert_eq!(code, 0, "{err}");
    let secret = out
        .split_whitespace()
        .find(|word| word.starts_with("lp-"))
        .unwrap_or_else(|| panic!("a secret in {out}"))
        .to_owned();
    let found = async {
        loop {
            if let Lookup::Found(key) = keyring.lookup(&secret, keys::now_ms()) {
                return key;
            }
            actix_web::rt::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    };
    let key = tokio::time::timeout(std::time::Duration::from_secs(1), found)
        .await
        .expect("the key works within 1 s");

    let (code, _, err) = keys_command(&accounted.database_url, &["revoke", &key.row.id]);
    assert_eq!(code, 0, "{err}");
    let revoked = async {
        while !matches!(keyring.lookup(&secret, keys::now_ms()), Lookup::Revoked(_)) {
            actix_web::rt::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(1), revoked)
        .await
        .expect("the key stops within 1 s");
}

#[test]
fn the_keys_command_refuses_bad_flags_with_exit_code_2() {
    let dir = temp_dir("keys-cli-bad");
    let url = format!("sqlite://{}", dir.0.join("keys.db").display());
    for (args, says) in [
        (&["create", "--name", "ci", "--rpm", "lots"][..], "--rpm"),
        (&["create", "--bogus", "1"][..], "unknown flag \"--bogus\""),
        (&["create", "--owner", "x"][..], "--name: is required"),
        (
            &["create", "--name", "ci", "--budget-usd", "1/year"][..],
            "--budget-usd",
        ),
        (&["frobnicate"][..], "not a command"),
        (&[][..], "name a command"),
    ] {
        let (code, _, err) = keys_command(&url, args);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(err.contains(says), "{args:?}: {err}");
    }
}
