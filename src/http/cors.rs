//! Browser access (CORS): preflight answers, and the headers that let a page read a response.
//!
//! Off while `CORS_ALLOW_ORIGINS` is empty: no CORS headers, and `OPTIONS` is routed like any
//! other method. On, it answers preflights itself (they never reach a handler or an upstream)
//! and adds headers to the app's responses without touching their bodies, so streams stream.
//!
//! Why not `actix-cors`: it can allow a fixed list of request headers or every header, but not
//! the open-ended family `X-API-Key-<Provider>` that fallbacks use; and it refuses a preflight
//! with a plain-text 400, where ours is a 403 in the proxy's JSON error shape naming the origin,
//! method or header refused. What is left is small: an origin match, a header check, and four
//! response headers.

use std::{borrow::Cow, fmt};

use actix_web::{
    body::{EitherBody, MessageBody},
    dev::{ServiceRequest, ServiceResponse},
    http::{
        header::{self, HeaderMap, HeaderValue},
        Method,
    },
    middleware::Next,
    web, Error, HttpResponse,
};

use crate::{config::Config, error::ProxyError};

/// The methods a page may use; every route is one of these.
const ALLOW_METHODS: &str = "GET, POST, OPTIONS";
/// How long a browser may cache a preflight answer, in seconds.
const MAX_AGE: &str = "600";
/// Request headers a page may send (lowercase), besides `X-API-Key-<Provider>`.
const ALLOWED_HEADERS: [&str; 11] = [
    "x-api-key",
    "authorization",
    "content-type",
    "x-request-id",
    "x-fallbacks",
    "x-max-retries",
    "x-proxy-cache",
    "cache-control",
    // What Anthropic's SDK sends from a browser, for `/v1/messages`.
    "anthropic-version",
    "anthropic-beta",
    "anthropic-dangerous-direct-browser-access",
];
/// A fallback's key: `X-API-Key-Anthropic` and so on, for any provider name.
const PROVIDER_KEY_PREFIX: &str = "x-api-key-";
/// How the allowed request headers are named in a refusal.
const ALLOWED_HEADERS_TEXT: &str = "X-API-Key, X-API-Key-<Provider>, Authorization, \
                                    Content-Type, X-Request-Id, X-Fallbacks, X-Max-Retries, \
                                    X-Proxy-Cache, Cache-Control, Anthropic-Version, Anthropic-Beta, \
                                    Anthropic-Dangerous-Direct-Browser-Access";
/// The response headers a page may read: ours, and the upstream's that we pass on (request ids
/// and rate limits; see `upstream::is_passed_on`). Browsers do not expand wildcards in this
/// list when a request carries credentials, so every name is spelled out.
const EXPOSE_HEADERS: &str = "X-Request-Id, X-Proxy-Provider, X-Proxy-Model, X-Proxy-Attempts, \
     X-Proxy-Cost-USD, X-Proxy-Cache, X-Proxy-Group, X-Proxy-Deployment, X-Proxy-Rule, \
     Retry-After, Retry-After-Ms, Request-Id, X-Upstream-Request-Id, \
     X-RateLimit-Limit-Requests, X-RateLimit-Limit-Tokens, X-RateLimit-Remaining-Requests, \
     X-RateLimit-Remaining-Tokens, X-RateLimit-Reset-Requests, X-RateLimit-Reset-Tokens, \
     Anthropic-RateLimit-Requests-Limit, Anthropic-RateLimit-Requests-Remaining, \
     Anthropic-RateLimit-Requests-Reset, Anthropic-RateLimit-Tokens-Limit, \
     Anthropic-RateLimit-Tokens-Remaining, Anthropic-RateLimit-Tokens-Reset";

/// The CORS middleware for `App::wrap(from_fn(cors::handle))`.
pub async fn handle<B: MessageBody>(
    request: ServiceRequest,
    next: Next<B>,
) -> Result<ServiceResponse<EitherBody<B>>, Error> {
    let allowed = match request.app_data::<web::Data<Config>>() {
        Some(config) if !config.cors_allow_origins.is_empty() => &config.cors_allow_origins,
        _ => return Ok(next.call(request).await?.map_into_left_body()),
    };
    let Some(origin) = request.headers().get(header::ORIGIN) else {
        return pass_on(request, next, None).await;
    };
    let allow_origin = allow_origin(allowed, origin);

    if request.method() == Method::OPTIONS {
        if let Some(method) = request.headers().get(header::ACCESS_CONTROL_REQUEST_METHOD) {
            let asked_headers = request
                .headers()
                .get(header::ACCESS_CONTROL_REQUEST_HEADERS);
            let response = match preflight(allow_origin, origin, method, asked_headers) {
                Ok(allowed) => allowed.response(),
                Err(refusal) => refusal.response(),
            };
            return Ok(request.into_response(response).map_into_right_body());
        }
    }
    pass_on(request, next, allow_origin).await
}

/// Serves the request as usual, then adds `Vary: Origin` and, for an allowed origin, the
/// headers that let the page read the response. Only headers: the body passes untouched.
async fn pass_on<B: MessageBody>(
    request: ServiceRequest,
    next: Next<B>,
    allow_origin: Option<HeaderValue>,
) -> Result<ServiceResponse<EitherBody<B>>, Error> {
    // Handlers turn their errors into responses, so `next` fails only on a bug; such an error
    // goes on without CORS headers. (Answering it here would need a clone of the request taken
    // before routing, and actix's routing panics on a shared request.)
    let mut response = next.call(request).await?.map_into_left_body();
    let headers = response.headers_mut();
    vary_on_origin(headers);
    if let Some(allow_origin) = allow_origin {
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, allow_origin);
        headers.insert(
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static(EXPOSE_HEADERS),
        );
    }
    Ok(response)
}

/// Whether the answer depends on the caller's `Origin` is something caches must know: with CORS
/// on, it always does (allowed, refused, or none at all), so every response says so.
fn vary_on_origin(headers: &mut HeaderMap) {
    headers.append(header::VARY, HeaderValue::from_static("Origin"));
}

/// The `Access-Control-Allow-Origin` an origin gets: `*` when any is allowed, else the origin
/// itself when it is one of `allowed`; `None` when it may not call.
fn allow_origin(allowed: &[String], origin: &HeaderValue) -> Option<HeaderValue> {
    if allowed.iter().any(|allowed| allowed == "*") {
        return Some(HeaderValue::from_static("*"));
    }
    // Browsers send scheme and host in lowercase; the configuration may not be.
    allowed
        .iter()
        .any(|allowed| allowed.as_bytes().eq_ignore_ascii_case(origin.as_bytes()))
        .then(|| origin.clone())
}

/// Whether a page may send a request header of this name.
fn is_allowed_header(name: &str) -> bool {
    let name_bytes = name.as_bytes();
    let prefix = PROVIDER_KEY_PREFIX.len();
    if name_bytes.len() > prefix
        && name_bytes[..prefix].eq_ignore_ascii_case(PROVIDER_KEY_PREFIX.as_bytes())
    {
        return name_bytes[prefix..]
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(b));
    }
    ALLOWED_HEADERS
        .iter()
        .any(|allowed| allowed.eq_ignore_ascii_case(name))
}

/// The `Access-Control-Allow-Headers` answer to an `Access-Control-Request-Headers` list: the
/// asked names, when every one is allowed (browsers do not expand `X-API-Key-*`, so each
/// provider's key header is named back as asked), or the first one that is not.
fn allow_headers(asked: &str) -> Result<String, &str> {
    let mut names = Vec::new();
    for name in asked.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        if !is_allowed_header(name) {
            return Err(name);
        }
        names.push(name);
    }
    Ok(names.join(", "))
}

/// What an allowed preflight is answered with.
#[derive(Debug, PartialEq, Eq)]
struct Preflight {
    allow_origin: HeaderValue,
    /// `None` when the preflight asked for no headers.
    allow_headers: Option<String>,
}

/// Why a preflight is refused; its text is the message of the 403.
#[derive(Debug, PartialEq, Eq)]
enum Refusal<'r> {
    Origin(Cow<'r, str>),
    Method(Cow<'r, str>),
    Header(Cow<'r, str>),
}

/// Decides a preflight: the origin must be allowed, then the method, then each asked header.
fn preflight<'r>(
    allow_origin: Option<HeaderValue>,
    origin: &'r HeaderValue,
    method: &'r HeaderValue,
    asked_headers: Option<&'r HeaderValue>,
) -> Result<Preflight, Refusal<'r>> {
    let allow_origin =
        allow_origin.ok_or_else(|| Refusal::Origin(String::from_utf8_lossy(origin.as_bytes())))?;
    if !matches!(method.as_bytes(), b"GET" | b"POST" | b"OPTIONS") {
        return Err(Refusal::Method(String::from_utf8_lossy(method.as_bytes())));
    }
    let allow_headers = match asked_headers {
        None => None,
        Some(asked) => {
            // Header names are ASCII tokens; a value that is not ASCII cannot name one.
            let asked = asked
                .to_str()
                .map_err(|_| Refusal::Header(String::from_utf8_lossy(asked.as_bytes())))?;
            let names = allow_headers(asked).map_err(|name| Refusal::Header(name.into()))?;
            (!names.is_empty()).then_some(names)
        }
    };
    Ok(Preflight {
        allow_origin,
        allow_headers,
    })
}

impl Preflight {
    fn response(self) -> HttpResponse {
        let mut response = HttpResponse::NoContent();
        response
            .insert_header((header::ACCESS_CONTROL_ALLOW_ORIGIN, self.allow_origin))
            .insert_header((
                header::ACCESS_CONTROL_ALLOW_METHODS,
                HeaderValue::from_static(ALLOW_METHODS),
            ))
            .insert_header((
                header::ACCESS_CONTROL_MAX_AGE,
                HeaderValue::from_static(MAX_AGE),
            ))
            .insert_header((header::VARY, HeaderValue::from_static("Origin")));
        if let Some(names) = self.allow_headers {
            response.insert_header((header::ACCESS_CONTROL_ALLOW_HEADERS, names));
        }
        response.finish()
    }
}

impl fmt::Display for Refusal<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Origin(origin) => write!(
                f,
                "origin {origin:?} may not call this proxy from a browser (CORS_ALLOW_ORIGINS)"
            ),
            Self::Method(method) => write!(
                f,
                "method {method:?} is not allowed from a browser; allowed: {ALLOW_METHODS}"
            ),
            Self::Header(name) => write!(
                f,
                "header {name:?} is not allowed from a browser; allowed: {ALLOWED_HEADERS_TEXT}"
            ),
        }
    }
}

impl Refusal<'_> {
    /// A 403 in the proxy's error shape. No `Access-Control-Allow-Origin`: the browser fails
    /// the preflight either way, and the message is for whoever reads the network log.
    fn response(&self) -> HttpResponse {
        let mut response = ProxyError::Forbidden(self.to_string()).to_response(None);
        response
            .headers_mut()
            .insert(header::VARY, HeaderValue::from_static("Origin"));
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origins(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    fn value(text: &'static str) -> HeaderValue {
        HeaderValue::from_static(text)
    }

    #[test]
    fn a_listed_origin_is_allowed_as_itself() {
        let allowed = origins(&["http://localhost:3000", "https://app.example"]);
        assert_eq!(
            allow_origin(&allowed, &value("https://app.example")),
            Some(value("https://app.example"))
        );
        assert_eq!(
            allow_origin(&allowed, &value("http://localhost:3000")),
            Some(value("http://localhost:3000"))
        );
    }

    #[test]
    fn an_origin_must_match_exactly_scheme_host_and_port() {
        let allowed = origins(&["http://localhost:3000"]);
        for other in [
            "http://localhost:3001",
            "https://localhost:3000",
            "http://localhost",
            "http://localhost:3000.evil.example",
            "http://evil.example",
            "null",
            "",
        ] {
            assert_eq!(
                allow_origin(&allowed, &HeaderValue::from_str(other).unwrap()),
                None,
                "{other}"
            );
        }
    }

    #[test]
    fn origins_compare_without_regard_to_case_and_echo_what_the_browser_sent() {
        let allowed = origins(&["https://App.Example"]);
        assert_eq!(
            allow_origin(&allowed, &value("https://app.example")),
            Some(value("https://app.example"))
        );
    }

    #[test]
    fn a_star_allows_any_origin_as_a_star() {
        for allowed in [origins(&["*"]), origins(&["https://app.example", "*"])] {
            assert_eq!(
                allow_origin(&allowed, &value("http://anything.example:1234")),
                Some(value("*"))
            );
            assert_eq!(allow_origin(&allowed, &value("null")), Some(value("*")));
        }
    }

    #[test]
    fn the_listed_request_headers_are_allowed_in_any_case() {
        for name in [
            "X-API-Key",
            "x-api-key",
            "Authorization",
            "content-type",
            "X-Request-Id",
            "x-fallbacks",
            "X-Max-Retries",
        ] {
            assert!(is_allowed_header(name), "{name}");
        }
    }

    #[test]
    fn any_provider_key_header_is_allowed_but_not_the_bare_prefix() {
        for name in [
            "X-API-Key-Anthropic",
            "x-api-key-gemini",
            "x-api-key-my-groq",
        ] {
            assert!(is_allowed_header(name), "{name}");
        }
        for name in [
            "x-api-key-",
            "x-api-key-a b",
            "x-api-key-é",
            "x-api-ké",
            "x-api-keys",
            "x-api",
            "cookie",
            "x-custom",
        ] {
            assert!(!is_allowed_header(name), "{name}");
        }
    }

    #[test]
    fn asked_headers_are_named_back_when_all_are_allowed() {
        assert_eq!(
            allow_headers("content-type,x-api-key,x-api-key-anthropic"),
            Ok("content-type, x-api-key, x-api-key-anthropic".to_owned())
        );
        assert_eq!(
            allow_headers(" X-API-Key , ,Authorization,"),
            Ok("X-API-Key, Authorization".to_owned())
        );
        assert_eq!(allow_headers(""), Ok(String::new()));
    }

    #[test]
    fn the_first_header_not_allowed_is_named() {
        assert_eq!(
            allow_headers("content-type,x-custom,x-other"),
            Err("x-custom")
        );
    }

    #[test]
    fn a_preflight_from_an_allowed_origin_is_answered() {
        let origin = value("http://localhost:3000");
        let (post, get) = (value("POST"), value("GET"));
        let asked = value("content-type,x-api-key");
        let decided = preflight(Some(origin.clone()), &origin, &post, Some(&asked));
        assert_eq!(
            decided,
            Ok(Preflight {
                allow_origin: origin.clone(),
                allow_headers: Some("content-type, x-api-key".into()),
            })
        );
        let without_headers = preflight(Some(origin.clone()), &origin, &get, None);
        assert_eq!(without_headers.unwrap().allow_headers, None);
    }

    #[test]
    fn a_preflight_is_refused_for_its_origin_then_method_then_header() {
        let origin = value("http://evil.example");
        let (put, post) = (value("PUT"), value("POST"));
        let (custom, key_and_custom) = (value("x-custom"), value("x-api-key,x-custom"));
        let refused = preflight(None, &origin, &put, Some(&custom));
        assert_eq!(refused, Err(Refusal::Origin("http://evil.example".into())));
        let ok = Some(origin.clone());
        let refused = preflight(ok.clone(), &origin, &put, Some(&custom));
        assert_eq!(refused, Err(Refusal::Method("PUT".into())));
        let refused = preflight(ok, &origin, &post, Some(&key_and_custom));
        assert_eq!(refused, Err(Refusal::Header("x-custom".into())));
    }

    #[test]
    fn a_refusal_message_names_what_was_refused() {
        let message = Refusal::Origin("http://evil.example".into()).to_string();
        assert!(message.contains("\"http://evil.example\""), "{message}");
        assert!(message.contains("CORS_ALLOW_ORIGINS"), "{message}");
        let message = Refusal::Header("x-custom".into()).to_string();
        assert!(message.contains("\"x-custom\""), "{message}");
        assert!(message.contains("X-API-Key-<Provider>"), "{message}");
    }

    #[test]
    fn the_exposed_headers_include_every_header_the_proxy_passes_on() {
        let exposed: Vec<_> = EXPOSE_HEADERS.split(", ").collect();
        for name in [
            "X-Request-Id",
            "X-Proxy-Provider",
            "X-Proxy-Model",
            "X-Proxy-Attempts",
            "Retry-After",
            "X-RateLimit-Remaining-Tokens",
            "Anthropic-RateLimit-Tokens-Reset",
        ] {
            assert!(exposed.contains(&name), "{name}");
        }
        for name in &exposed {
            let name = header::HeaderName::from_bytes(name.as_bytes()).unwrap();
            let ours = name.as_str().starts_with("x-proxy-")
                || name == "x-upstream-request-id"
                || name == "x-request-id";
            assert!(
                ours || crate::upstream::is_passed_on(&name),
                "{name} is exposed but never sent"
            );
        }
        assert!(HeaderValue::from_str(EXPOSE_HEADERS).is_ok());
    }

    proptest::proptest! {
        #[test]
        fn any_preflight_is_answered_or_refused_without_panicking(
            origin in proptest::collection::vec(32u8..=126, 0..40),
            method in proptest::collection::vec(32u8..=126, 0..10),
            asked in proptest::collection::vec(proptest::num::u8::ANY, 0..80),
        ) {
            let origin = HeaderValue::from_bytes(&origin).unwrap_or(value("null"));
            let method = HeaderValue::from_bytes(&method).unwrap_or(value("POST"));
            let asked = HeaderValue::from_bytes(&asked).ok();
            let allowed = origins(&["http://localhost:3000"]);
            let decided = preflight(allow_origin(&allowed, &origin), &origin, &method, asked.as_ref());
            if let Err(refusal) = decided {
                proptest::prop_assert!(!refusal.to_string().is_empty());
            }
        }
    }
}
