//! The dashboard over HTTP: off without a token, its sign-in and cookie, known traffic's totals.

use std::time::Duration;

use llm_proxy::{
    config::{HeldKeys, Secret},
    keys,
    store::KeyRow,
    Config,
};

use crate::common::*;

const DASHBOARD_TOKEN: &str = "dash-7c41d9e0b2a84f6e";
const ADMIN_TOKEN: &str = "admin-5be2a17f93c04d18";
const HELD: &str = "sk-held-by-the-proxy-9a8b7c";
const FORM: (&str, &str) = ("Content-Type", "application/x-www-form-urlencoded");

/// The fixture for `gpt-4o-mini`; OpenAI's 400 for any other model.
fn upstream() -> Mock {
    Mock::start(|request| match request.json()["model"].as_str() {
        Some("gpt-4o-mini") => Reply::json(200, fixture("openai/completion.json")),
        _ => Reply::json(
            400,
            r#"{"error": {"message": "The model does not exist", "type": "invalid_request_error",
                "param": "model", "code": "model_not_found"}}"#,
        ),
    })
}

fn with_tokens(config: Config) -> Config {
    Config {
        dashboard_token: Some(Secret(DASHBOARD_TOKEN.into())),
        admin_token: Some(Secret(ADMIN_TOKEN.into())),
        ..config
    }
}

/// A request with exactly these headers, its answer read whole. Redirects are not followed:
/// the tests look at the 303 and its cookie themselves.
async fn send(method: &str, url: String, headers: &[(&str, &str)], body: &str) -> Answer {
    let client = awc::Client::builder()
        .disable_redirects()
        .timeout(Duration::from_secs(30))
        .finish();
    let mut request = client.request(method.parse().unwrap(), url);
    for &header in headers {
        request = request.insert_header(header);
    }
    let mut response = request
        .send_body(body.to_owned())
        .await
        .expect("the proxy answers");
    let body = response.body().limit(16 << 20).await.expect("a whole body");
    Answer {
        status: response.status().as_u16(),
        headers: response.headers().clone(),
        body,
    }
}

async fn get(proxy: &Proxy, path: &str, headers: &[(&str, &str)]) -> Answer {
    send("GET", proxy.url(path), headers, "").await
}

fn text(answer: &Answer) -> &str {
    std::str::from_utf8(&answer.body).expect("UTF-8")
}

/// The number in `<span data-total="name">`.
fn total<'a>(page: &'a str, name: &str) -> &'a str {
    let marker = format!(r#"data-total="{name}">"#);
    let start = page.find(&marker).unwrap_or_else(|| panic!("no {marker}")) + marker.len();
    let len = page[start..].find('<').expect("the span ends");
    &page[start..start + len]
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

fn assert_is_sign_in_page(answer: &Answer) {
    assert_eq!(answer.status, 401);
    assert_eq!(
        answer.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    assert!(
        text(answer).contains(r#"<form method="post" action="/dashboard/sign-in">"#),
        "{}",
        text(answer)
    );
}

/// The `name=value` of a `Set-Cookie`, and its attributes.
fn cookie(answer: &Answer) -> (&str, &str) {
    let set = answer.header("set-cookie").expect("a Set-Cookie");
    set.split_once(';').unwrap_or((set, ""))
}

#[actix_web::test]
async fn the_dashboard_is_off_and_not_found_without_a_token() {
    let mock = upstream();
    let accounted = start_accounted(config_for(&mock)).await;
    let proxy = &accounted.proxy;
    assert_eq!(get(proxy, "/dashboard", &[]).await.status, 404);
    let sign_in = send("POST", proxy.url("/dashboard/sign-in"), &[FORM], "token=x").await;
    assert_eq!(sign_in.status, 404);
    assert_eq!(
        send("POST", proxy.url("/dashboard"), &[], "").await.status,
        404
    );
}

#[actix_web::test]
async fn without_credentials_or_with_wrong_ones_the_answer_is_the_sign_in_page() {
    let mock = upstream();
    let accounted = start_accounted(with_tokens(config_for(&mock))).await;
    let proxy = &accounted.proxy;

    let none = get(proxy, "/dashboard", &[]).await;
    assert_is_sign_in_page(&none);
    assert!(!text(&none).contains("wrong token"));
    let policy = none.header("content-security-policy").unwrap();
    assert!(policy.starts_with("default-src 'none'"), "{policy}");
    assert!(policy.ends_with("; frame-ancestors 'none'"), "{policy}");
    assert_eq!(none.header("x-content-type-options"), Some("nosniff"));
    assert_eq!(none.header("cache-control"), Some("no-store"));
    assert_eq!(none.header("referrer-policy"), Some("no-referrer"));

    let wrong = get(proxy, "/dashboard", &[("Authorization", &bearer("nope"))]).await;
    assert_is_sign_in_page(&wrong);
    assert!(text(&wrong).contains("wrong token"));

    // A cookie this process did not make, for example one holding the token itself.
    let forged = format!("llm_proxy_dashboard={DASHBOARD_TOKEN}");
    let stale = get(proxy, "/dashboard", &[("Cookie", &forged)]).await;
    assert_is_sign_in_page(&stale);
    assert!(cookie(&stale).1.contains("Max-Age=0"), "it is cleared");
}

#[actix_web::test]
async fn signing_in_through_the_form_sets_a_cookie_that_opens_the_page() {
    let mock = upstream();
    let accounted = start_accounted(with_tokens(config_for(&mock))).await;
    let proxy = &accounted.proxy;
    let sign_in = |body: String, headers: Vec<(&'static str, &'static str)>| {
        let url = proxy.url("/dashboard/sign-in");
        async move {
            let mut all = vec![FORM];
            all.extend(headers);
            send("POST", url, &all, &body).await
        }
    };

    let wrong = sign_in("token=nope".into(), vec![]).await;
    assert_is_sign_in_page(&wrong);
    assert!(text(&wrong).contains("wrong token"));
    assert!(wrong.header("set-cookie").is_none());

    let signed_in = sign_in(format!("token={DASHBOARD_TOKEN}"), vec![]).await;
    assert_eq!(signed_in.status, 303, "{:?}", signed_in.body);
    assert_eq!(signed_in.header("location"), Some("/dashboard"));
    let (pair, attributes) = cookie(&signed_in);
    assert!(pair.starts_with("llm_proxy_dashboard="), "{pair}");
    assert!(
        !pair.contains(DASHBOARD_TOKEN),
        "the cookie is not the token"
    );
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/dashboard"] {
        assert!(attributes.contains(attribute), "{attributes}");
    }
    assert!(!attributes.contains("Secure"), "plain http: {attributes}");

    let page = get(proxy, "/dashboard?range=1h", &[("Cookie", pair)]).await;
    assert_eq!(page.status, 200, "{}", text(&page));
    assert_eq!(total(text(&page), "requests"), "0");
    assert!(text(&page).contains(r#"<a href="?range=1h" aria-current="page">"#));

    // Behind a proxy that terminates TLS, the cookie is for https only.
    let behind_tls = sign_in(
        format!("token={DASHBOARD_TOKEN}"),
        vec![("X-Forwarded-Proto", "https")],
    )
    .await;
    assert!(cookie(&behind_tls).1.contains("Secure"));

    let signed_out = send(
        "POST",
        proxy.url("/dashboard/sign-out"),
        &[("Cookie", pair)],
        "",
    )
    .await;
    assert_eq!(signed_out.status, 303);
    assert_eq!(
        cookie(&signed_out),
        (
            "llm_proxy_dashboard=",
            " Path=/dashboard; Max-Age=0; HttpOnly; SameSite=Strict"
        )
    );
}

#[actix_web::test]
async fn the_admin_token_opens_the_dashboard_and_the_dashboard_token_opens_no_admin_route() {
    let mock = upstream();
    let accounted = start_accounted(with_tokens(config_for(&mock))).await;
    let proxy = &accounted.proxy;
    let admin = get(
        proxy,
        "/dashboard",
        &[("Authorization", &bearer(ADMIN_TOKEN))],
    )
    .await;
    assert_eq!(admin.status, 200);
    let dashboard = bearer(DASHBOARD_TOKEN);
    for (method, path) in [
        ("GET", "/admin/keys"),
        ("POST", "/admin/keys"),
        ("GET", "/admin/usage"),
    ] {
        let answer = send(
            method,
            proxy.url(path),
            &[("Authorization", &dashboard)],
            "{}",
        )
        .await;
        // The admin API is on (ADMIN_TOKEN is set): the dashboard's token is not its token.
        assert_eq!(answer.status, 401, "{method} {path}");
    }
}

#[actix_web::test]
async fn without_a_store_the_dashboard_says_it_has_none() {
    let mock = upstream();
    let proxy = start_proxy(with_tokens(config_for(&mock)));
    let answer = get(
        &proxy,
        "/dashboard",
        &[("Authorization", &bearer(DASHBOARD_TOKEN))],
    )
    .await;
    assert_eq!(answer.status, 503);
    assert!(
        text(&answer).contains("DATABASE_URL=none"),
        "{}",
        text(&answer)
    );
}

#[actix_web::test]
async fn after_known_traffic_the_page_shows_its_totals() {
    let mock = upstream();
    let accounted = start_accounted(with_tokens(config_for(&mock))).await;
    let proxy = &accounted.proxy;
    for model in ["gpt-4o-mini"; 5].into_iter().chain(["gpt-nope"; 2]) {
        let answer = complete(proxy, hi(&format!("openai/{model}"))).await;
        assert_eq!(
            answer.status,
            if model == "gpt-4o-mini" { 200 } else { 400 }
        );
    }
    accounted.accounts.keyring.flush().await;

    let answer = get(
        proxy,
        "/dashboard",
        &[("Authorization", &bearer(DASHBOARD_TOKEN))],
    )
    .await;
    assert_eq!(answer.status, 200);
    let page = text(&answer);
    // The fixture: 19 tokens in and 9 out, $0.00000825 at the shipped price, five times.
    assert_eq!(total(page, "requests"), "7");
    assert_eq!(total(page, "errors"), "2");
    assert_eq!(total(page, "error_rate"), "28.6");
    assert_eq!(total(page, "input_tokens"), "95");
    assert_eq!(total(page, "output_tokens"), "45");
    assert_eq!(total(page, "tokens"), "140");
    assert_eq!(total(page, "cost_usd"), "0.000041");
}

#[actix_web::test]
async fn the_page_shows_no_key_secret_key_hash_or_held_provider_key() {
    let mock = upstream();
    let catalog = r#"{"providers": {"openai": {"api_key_env": "OPENAI_API_KEY"}}}"#;
    let config = Config {
        held_keys: HeldKeys(vec![("OPENAI_API_KEY".into(), HELD.into())]),
        ..with_tokens(config_with_catalog(&mock, catalog))
    };
    let accounted = start_accounted(config).await;
    let (secret, hash) = keys::generate().unwrap();
    let now = keys::now_ms();
    let row = KeyRow {
        owner: Some("a@example.com".into()),
        budget_usd: Some(10.0),
        budget_period: Some("month".into()),
        ..KeyRow::new(
            keys::new_id().unwrap(),
            hash.clone(),
            secret.prefix().to_owned(),
            "team-a".into(),
            now,
        )
    };
    let keyring = &accounted.accounts.keyring;
    keyring.store().insert_key(&row).await.unwrap();
    keyring.refresh(keys::now_ms()).await.unwrap();
    let answer = post_with(
        &accounted.proxy,
        "/v1/chat/completions",
        &[("Authorization", &bearer(secret.expose()))],
        hi("openai/gpt-4o-mini").to_string(),
    )
    .await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    keyring.flush().await;

    let auth = bearer(DASHBOARD_TOKEN);
    let answer = get(&accounted.proxy, "/dashboard", &[("Authorization", &auth)]).await;
    let page = text(&answer);
    assert!(page.contains(r#"data-key="team-a""#), "{page}");
    assert_eq!(total(page, "requests"), "1");
    for hidden in [
        secret.expose(),
        hash.as_str(),
        HELD,
        DASHBOARD_TOKEN,
        ADMIN_TOKEN,
    ] {
        assert!(!page.contains(hidden), "the page shows {hidden}");
    }
}
