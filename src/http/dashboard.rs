//! `/dashboard`: the usage report page, behind the admin or dashboard token (bearer or cookie).

use std::sync::OnceLock;

use actix_web::{
    http::{header, StatusCode},
    web, FromRequest, HttpRequest, HttpResponse, HttpResponseBuilder,
};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::{
    config::Config,
    dashboard::{self, Range, Report},
    error::ProxyError,
    keys::{self, Keyring},
};

/// Records one page reads at most (the newest): a busy proxy writes millions in 30 days, and a
/// page load must not hold them all in memory.
pub const RECORDS_LIMIT: usize = 200_000;

/// The sign-in cookie's name.
pub const COOKIE: &str = "llm_proxy_dashboard";

/// A sign-in form is one short field: anything bigger is not one.
const SIGN_IN_BODY_LIMIT: usize = 4 * 1024;

/// What a proxy without a store answers: there is nothing to show.
const NO_STORE_PAGE: &str = concat!(
    "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">",
    "<title>llm-proxy dashboard</title></head><body><h1>llm-proxy dashboard</h1>",
    "<p>This proxy runs without a store (<code>DATABASE_URL=none</code>), so it keeps no usage ",
    "to show.</p></body></html>\n"
);

/// What a proxy whose store does not answer shows, instead of a report it cannot read.
const STORE_DOWN_PAGE: &str = concat!(
    "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">",
    "<title>llm-proxy dashboard</title></head><body><h1>llm-proxy dashboard</h1>",
    "<p>The store does not answer; see the proxy's log.</p></body></html>\n"
);

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/dashboard")
            .route(web::get().to(page))
            .default_service(web::to(wrong_method)),
    )
    .service(
        web::resource("/dashboard/sign-in")
            .app_data(web::FormConfig::default().limit(SIGN_IN_BODY_LIMIT))
            .route(web::post().to(sign_in))
            .default_service(web::to(wrong_method)),
    )
    .service(
        web::resource("/dashboard/sign-out")
            .route(web::post().to(sign_out))
            .default_service(web::to(wrong_method)),
    );
}

/// `GET /dashboard?range=1h|1d|30d`
async fn page(request: HttpRequest, config: web::Data<Config>) -> Result<HttpResponse, ProxyError> {
    let tokens = tokens(&config);
    if tokens.is_empty() {
        return Err(ProxyError::NotFound);
    }
    match presented(&request) {
        Presented::Nothing => return Ok(sign_in_page(None)),
        Presented::Bearer(token) if !tokens.iter().any(|t| same_token(token, t)) => {
            return Ok(sign_in_page(Some("wrong token")));
        }
        Presented::Cookie(value) if !tokens.iter().any(|t| cookie_matches(value, t)) => {
            // From before a restart or a token change: the browser may forget it.
            let mut response = sign_in_page(None);
            set_cookie(&mut response, &clear_cookie(&request));
            return Ok(response);
        }
        Presented::Bearer(_) | Presented::Cookie(_) => {}
    }
    let Some(keyring) = request.app_data::<web::Data<Keyring>>() else {
        return Ok(headers(StatusCode::SERVICE_UNAVAILABLE).body(NO_STORE_PAGE));
    };
    let range = web::Query::<RangeQuery>::from_query(request.query_string())
        .ok()
        .and_then(|query| query.range.as_deref().and_then(Range::parse))
        .unwrap_or_default();
    match report_page(keyring.store(), range).await {
        Ok(page) => Ok(headers(StatusCode::OK).body(page)),
        Err(e) => {
            log::warn!("dashboard: cannot read usage from the store: {e}");
            Ok(headers(StatusCode::SERVICE_UNAVAILABLE).body(STORE_DOWN_PAGE))
        }
    }
}

#[derive(Deserialize)]
struct RangeQuery {
    range: Option<String>,
}

/// The report for `range` up to now, rendered. Summing up to [`RECORDS_LIMIT`] records takes a
/// while, so it runs on the blocking pool, not on the worker that also carries streams.
async fn report_page(
    store: &crate::store::Store,
    range: Range,
) -> Result<String, Box<dyn std::error::Error>> {
    let now = keys::now_ms();
    let keys = store.list_keys().await?;
    let since = Report::reach_back_ms(range, &keys, now);
    let records = store.usage_since(since, now + 1, RECORDS_LIMIT).await?;
    let page =
        web::block(move || dashboard::render(&Report::build(&records, &keys, range, now))).await?;
    Ok(page)
}

#[derive(Deserialize)]
struct SignIn {
    token: String,
}

/// `POST /dashboard/sign-in` with the form field `token`: a cookie and back to the page, or
/// the form again.
async fn sign_in(
    request: HttpRequest,
    payload: web::Payload,
    config: web::Data<Config>,
) -> Result<HttpResponse, ProxyError> {
    let tokens = tokens(&config);
    if tokens.is_empty() {
        return Err(ProxyError::NotFound);
    }
    // Read only once the dashboard is known to be on, so a proxy without it says 404 to any body.
    let form = web::Form::<SignIn>::from_request(&request, &mut payload.into_inner())
        .await
        .map_err(|e| ProxyError::InvalidRequest(format!("the sign-in form: {e}")))?;
    let Some(token) = tokens.iter().find(|t| same_token(&form.token, t)) else {
        return Ok(sign_in_page(Some("wrong token")));
    };
    let Ok(value) = cookie_value(token) else {
        log::error!("dashboard: the OS random source failed; cannot sign in");
        return Ok(headers(StatusCode::INTERNAL_SERVER_ERROR).finish());
    };
    let mut response = headers(StatusCode::SEE_OTHER)
        .insert_header((header::LOCATION, "/dashboard"))
        .finish();
    let cookie = format!(
        "{COOKIE}={value}; Path=/dashboard; HttpOnly; SameSite=Strict{}",
        secure(&request)
    );
    set_cookie(&mut response, &cookie);
    Ok(response)
}

/// `POST /dashboard/sign-out`: the cookie cleared, and back to the page (its sign-in form).
async fn sign_out(
    request: HttpRequest,
    config: web::Data<Config>,
) -> Result<HttpResponse, ProxyError> {
    if tokens(&config).is_empty() {
        return Err(ProxyError::NotFound);
    }
    let mut response = headers(StatusCode::SEE_OTHER)
        .insert_header((header::LOCATION, "/dashboard"))
        .finish();
    set_cookie(&mut response, &clear_cookie(&request));
    Ok(response)
}

/// A known dashboard path with the wrong method; a 404 like every other path when it is off.
async fn wrong_method(config: web::Data<Config>) -> Result<HttpResponse, ProxyError> {
    match tokens(&config).is_empty() {
        true => Err(ProxyError::NotFound),
        false => Err(ProxyError::MethodNotAllowed),
    }
}

/// The tokens that open the dashboard; none means it is off.
fn tokens(config: &Config) -> Vec<&str> {
    [&config.admin_token, &config.dashboard_token]
        .into_iter()
        .flatten()
        .map(|secret| secret.0.as_str())
        .collect()
}

/// What a request brings to get in. A bearer token wins over a cookie: a script that sends one
/// means it.
enum Presented<'a> {
    Nothing,
    Bearer(&'a str),
    Cookie(&'a str),
}

fn presented(request: &HttpRequest) -> Presented<'_> {
    let bearer = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| {
            let (scheme, token) = value.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        });
    if let Some(token) = bearer {
        return Presented::Bearer(token);
    }
    let cookie = request
        .headers()
        .get_all(header::COOKIE)
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .find_map(|pair| {
            let (name, value) = pair.trim().split_once('=')?;
            (name == COOKIE && !value.is_empty()).then_some(value)
        });
    cookie.map_or(Presented::Nothing, Presented::Cookie)
}

/// Compares in constant time. Both sides are hashed first, so neither the time nor the
/// comparison's length tells how long the token is.
fn same_token(presented: &str, expected: &str) -> bool {
    let presented = Sha256::digest(presented.as_bytes());
    let expected = Sha256::digest(expected.as_bytes());
    presented.as_slice().ct_eq(expected.as_slice()).into()
}

fn cookie_matches(presented: &str, token: &str) -> bool {
    cookie_value(token).is_ok_and(|expected| presented.as_bytes().ct_eq(expected.as_bytes()).into())
}

/// The cookie for a token: hex SHA-256 of a secret drawn once per process and the token. It
/// is not the token, so a leaked cookie does not open the admin API or outlive a restart, and
/// it cannot be made without the secret.
fn cookie_value(token: &str) -> Result<String, getrandom::Error> {
    let digest = Sha256::new()
        .chain_update(session_secret()?)
        .chain_update(token.as_bytes())
        .finalize();
    Ok(digest.iter().map(|byte| format!("{byte:02x}")).collect())
}

fn session_secret() -> Result<&'static [u8; 32], getrandom::Error> {
    static SECRET: OnceLock<[u8; 32]> = OnceLock::new();
    if let Some(secret) = SECRET.get() {
        return Ok(secret);
    }
    let mut fresh = [0; 32];
    getrandom::fill(&mut fresh)?;
    Ok(SECRET.get_or_init(|| fresh))
}

fn clear_cookie(request: &HttpRequest) -> String {
    format!(
        "{COOKIE}=; Path=/dashboard; Max-Age=0; HttpOnly; SameSite=Strict{}",
        secure(request)
    )
}

/// `; Secure` when the page came over https, directly or through a proxy that says so.
fn secure(request: &HttpRequest) -> &'static str {
    let https = request.connection_info().scheme() == "https"
        || request
            .headers()
            .get("x-forwarded-proto")
            .is_some_and(|proto| proto.as_bytes().eq_ignore_ascii_case(b"https"));
    if https {
        "; Secure"
    } else {
        ""
    }
}

fn set_cookie(response: &mut HttpResponse, cookie: &str) {
    if let Ok(value) = header::HeaderValue::from_str(cookie) {
        response.headers_mut().append(header::SET_COOKIE, value);
    }
}

/// The sign-in page, as a 401.
fn sign_in_page(error: Option<&str>) -> HttpResponse {
    headers(StatusCode::UNAUTHORIZED)
        .insert_header((
            header::WWW_AUTHENTICATE,
            r#"Bearer realm="llm-proxy dashboard""#,
        ))
        .body(dashboard::render_sign_in(error))
}

/// Every dashboard answer's headers: an HTML page that no one frames, sniffs, caches or is
/// told the address of.
fn headers(status: StatusCode) -> HttpResponseBuilder {
    static POLICY: OnceLock<String> = OnceLock::new();
    let policy = POLICY.get_or_init(|| {
        format!(
            "{}; frame-ancestors 'none'",
            dashboard::content_security_policy()
        )
    });
    let mut response = HttpResponse::build(status);
    response
        .content_type("text/html; charset=utf-8")
        .insert_header((header::CONTENT_SECURITY_POLICY, policy.as_str()))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .insert_header((header::REFERRER_POLICY, "no-referrer"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::test::TestRequest;

    #[test]
    fn tokens_compare_equal_only_when_they_are() {
        assert!(same_token("dash-token", "dash-token"));
        assert!(!same_token("dash-token", "dash-tokem"));
        assert!(!same_token("dash", "dash-token"));
        assert!(!same_token("", "dash-token"));
    }

    #[test]
    fn the_cookie_is_not_the_token_and_names_only_its_own_token() {
        let value = cookie_value("dash-token").unwrap();
        assert_eq!(value.len(), 64);
        assert!(!value.contains("dash-token"));
        assert!(cookie_matches(&value, "dash-token"));
        assert!(!cookie_matches(&value, "admin-token"));
        assert!(!cookie_matches("dash-token", "dash-token"));
    }

    #[test]
    fn a_bearer_token_wins_over_the_cookie() {
        let request = TestRequest::default()
            .insert_header(("Authorization", "Bearer abc"))
            .insert_header(("Cookie", format!("other=1; {COOKIE}=def")))
            .to_http_request();
        assert!(matches!(presented(&request), Presented::Bearer("abc")));
        let request = TestRequest::default()
            .insert_header(("Cookie", format!("other=1; {COOKIE}=def")))
            .to_http_request();
        assert!(matches!(presented(&request), Presented::Cookie("def")));
        let request = TestRequest::default()
            .insert_header(("Authorization", "Basic abc"))
            .to_http_request();
        assert!(matches!(presented(&request), Presented::Nothing));
    }

    #[test]
    fn the_cookie_is_secure_behind_an_https_proxy() {
        let plain = TestRequest::default().to_http_request();
        assert_eq!(secure(&plain), "");
        let forwarded = TestRequest::default()
            .insert_header(("X-Forwarded-Proto", "https"))
            .to_http_request();
        assert_eq!(secure(&forwarded), "; Secure");
    }
}
