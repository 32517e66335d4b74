//! The admin API under `/admin/`: issued keys (create, list, show, change, revoke) and usage
//! totals, for callers that present `ADMIN_TOKEN`.

use std::collections::HashMap;
use std::fmt;

use actix_web::{
    http::{header, StatusCode},
    web, HttpRequest, HttpResponse, ResponseError,
};
use futures_util::StreamExt;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::{
    config::Config,
    keys::{self, spec, ChangeError, KeySpec, Keyring},
    store::{StoreError, UsageRecord},
};

/// The largest request body the admin API reads: a key spec is far smaller.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// Usage records one `GET /admin/usage` sums at most (the newest in its range); the answer
/// says when the range held more.
pub const USAGE_ROW_LIMIT: usize = 100_000;

/// The range `GET /admin/usage` covers when it names no `since`.
const DEFAULT_USAGE_RANGE_MS: i64 = 24 * 60 * 60 * 1000;

/// Registers `/admin/...`. Call it only when `ADMIN_TOKEN` is set: without it the admin API
/// does not exist, and its paths are as unknown as any other.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::scope("/admin")
            .service(
                web::resource("/keys")
                    .route(web::post().to(create_key))
                    .route(web::get().to(list_keys))
                    .default_service(web::to(method_not_allowed)),
            )
            .service(
                web::resource("/keys/{id}")
                    .route(web::get().to(show_key))
                    .route(web::patch().to(update_key))
                    .route(web::delete().to(revoke_key))
                    .default_service(web::to(method_not_allowed)),
            )
            .service(
                web::resource("/usage")
                    .route(web::get().to(usage))
                    .default_service(web::to(method_not_allowed)),
            )
            .default_service(web::to(not_found)),
    );
}

/// An admin API failure, answered as `{"error": {"message": ..., "type": ...}}`. Messages
/// never carry a token or a secret.
#[derive(Debug)]
pub struct AdminError {
    status: StatusCode,
    kind: &'static str,
    message: String,
}

impl AdminError {
    fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            kind,
            message: message.into(),
        }
    }

    fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request", message)
    }

    fn store(e: &StoreError) -> Self {
        log::warn!("admin API: the store failed: {e}");
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "store_unavailable",
            format!("the store failed: {e}"),
        )
    }
}

impl fmt::Display for AdminError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl ResponseError for AdminError {
    fn status_code(&self) -> StatusCode {
        self.status
    }

    fn error_response(&self) -> HttpResponse {
        let mut response = HttpResponse::build(self.status);
        if self.status == StatusCode::UNAUTHORIZED {
            response.insert_header((header::WWW_AUTHENTICATE, "Bearer"));
        }
        response.json(json!({"error": {"message": self.message, "type": self.kind}}))
    }
}

impl From<ChangeError> for AdminError {
    fn from(e: ChangeError) -> Self {
        match &e {
            ChangeError::Invalid(_) => Self::invalid(e.to_string()),
            ChangeError::NotFound => Self::new(StatusCode::NOT_FOUND, "not_found", e.to_string()),
            ChangeError::Revoked => Self::new(StatusCode::CONFLICT, "conflict", e.to_string()),
            ChangeError::Random(_) => {
                Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
            }
            ChangeError::Store(store) => Self::store(store),
        }
    }
}

/// The keyring, for a caller that presented the admin token: a missing or wrong token is a
/// 401 before anything else is looked at, and a proxy without a store answers 503.
fn authorize(request: &HttpRequest) -> Result<web::Data<Keyring>, AdminError> {
    let expected = request
        .app_data::<web::Data<Config>>()
        .and_then(|config| config.admin_token.clone());
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(bearer);
    let (Some(expected), Some(presented)) = (expected, presented) else {
        return Err(AdminError::new(
            StatusCode::UNAUTHORIZED,
            "authentication",
            "the admin API needs Authorization: Bearer <ADMIN_TOKEN>",
        ));
    };
    if !same_token(presented.as_bytes(), expected.0.as_bytes()) {
        return Err(AdminError::new(
            StatusCode::UNAUTHORIZED,
            "authentication",
            "the admin token presented is not ADMIN_TOKEN",
        ));
    }
    request
        .app_data::<web::Data<Keyring>>()
        .cloned()
        .ok_or_else(|| {
            AdminError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "store_unavailable",
                "this proxy runs without a store (DATABASE_URL=none), so it has no keys or \
                 usage to administer",
            )
        })
}

/// The token of an `Authorization: Bearer <token>` value (the scheme in any case).
fn bearer(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// Compares digests instead of the tokens, so the time taken says nothing about how many
/// leading bytes of a guess were right, nor about the token's length.
fn same_token(presented: &[u8], expected: &[u8]) -> bool {
    let presented = Sha256::digest(presented);
    let expected = Sha256::digest(expected);
    presented
        .iter()
        .zip(expected.iter())
        .fold(0u8, |differ, (a, b)| differ | (a ^ b))
        == 0
}

/// The request body, at most [`MAX_BODY_BYTES`].
async fn read_body(mut payload: web::Payload) -> Result<Vec<u8>, AdminError> {
    let mut body = Vec::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| AdminError::invalid(format!("reading the body: {e}")))?;
        if body.len() + chunk.len() > MAX_BODY_BYTES {
            return Err(AdminError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                format!("the body is larger than {MAX_BODY_BYTES} bytes"),
            ));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// Lets this instance see a change at once rather than at its next poll; other instances see
/// it within [`keys::WATCH_EVERY`]. The change is stored already, so a failure here is only
/// logged: the poll catches up.
async fn see_change(keyring: &Keyring) {
    if let Err(e) = keyring.refresh(keys::now_ms()).await {
        log::warn!("admin API: the change is stored, but rereading the keys failed: {e}");
    }
}

fn path_id(request: &HttpRequest) -> &str {
    request.match_info().get("id").unwrap_or_default()
}

async fn create_key(
    request: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, AdminError> {
    let keyring = authorize(&request)?;
    let spec = KeySpec::from_json(&read_body(payload).await?)
        .map_err(|e| AdminError::invalid(e.to_string()))?;
    let now = keys::now_ms();
    let (row, secret) = spec::create(keyring.store(), &spec, now).await?;
    see_change(&keyring).await;
    log::info!("admin API: created key {} ({})", row.id, row.name);
    let mut shown = spec::key_json(&row, now);
    shown["key"] = secret.expose().into();
    Ok(HttpResponse::Created().json(shown))
}

async fn list_keys(request: HttpRequest) -> Result<HttpResponse, AdminError> {
    let keyring = authorize(&request)?;
    let rows = keyring
        .store()
        .list_keys()
        .await
        .map_err(|e| AdminError::store(&e))?;
    let now = keys::now_ms();
    let keys: Vec<Value> = rows.iter().map(|row| spec::key_json(row, now)).collect();
    Ok(HttpResponse::Ok().json(json!({ "keys": keys })))
}

async fn show_key(request: HttpRequest) -> Result<HttpResponse, AdminError> {
    let keyring = authorize(&request)?;
    let row = keyring
        .store()
        .get_key(path_id(&request))
        .await
        .map_err(|e| AdminError::store(&e))?
        .ok_or(ChangeError::NotFound)?;
    Ok(HttpResponse::Ok().json(spec::key_json(&row, keys::now_ms())))
}

async fn update_key(
    request: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, AdminError> {
    let keyring = authorize(&request)?;
    let patch = KeySpec::from_json(&read_body(payload).await?)
        .map_err(|e| AdminError::invalid(e.to_string()))?;
    let now = keys::now_ms();
    let row = spec::update(keyring.store(), path_id(&request), &patch, now).await?;
    see_change(&keyring).await;
    log::info!("admin API: updated key {} ({})", row.id, row.name);
    Ok(HttpResponse::Ok().json(spec::key_json(&row, now)))
}

async fn revoke_key(request: HttpRequest) -> Result<HttpResponse, AdminError> {
    let keyring = authorize(&request)?;
    let now = keys::now_ms();
    let row = spec::revoke(keyring.store(), path_id(&request), now).await?;
    see_change(&keyring).await;
    log::info!("admin API: revoked key {} ({})", row.id, row.name);
    Ok(HttpResponse::Ok().json(spec::key_json(&row, now)))
}

/// What `GET /admin/usage` groups by.
#[derive(Clone, Copy, PartialEq, Eq)]
enum GroupBy {
    Provider,
    Model,
    Key,
    Status,
}

impl GroupBy {
    const NAMES: &'static str = "provider, model, key or status";

    fn parse(name: &str) -> Option<GroupBy> {
        match name {
            "provider" => Some(GroupBy::Provider),
            "model" => Some(GroupBy::Model),
            "key" => Some(GroupBy::Key),
            "status" => Some(GroupBy::Status),
            _ => None,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            GroupBy::Provider => "provider",
            GroupBy::Model => "model",
            GroupBy::Key => "key",
            GroupBy::Status => "status",
        }
    }

    /// The group a record falls in; `None` when the record does not say (no provider, say).
    fn of(self, record: &UsageRecord) -> Option<String> {
        match self {
            GroupBy::Provider => record.provider.clone(),
            GroupBy::Model => record.model.clone(),
            // A caller's own key is known by its fingerprint only.
            GroupBy::Key => record
                .key_id
                .clone()
                .or_else(|| record.caller.as_ref().map(|fp| format!("caller:{fp}"))),
            GroupBy::Status => Some(record.status.to_string()),
        }
    }
}

/// Sums of a set of usage records.
#[derive(Default)]
struct Totals {
    requests: u64,
    input_tokens: i64,
    output_tokens: i64,
    cached_tokens: i64,
    cost_usd: f64,
    /// Records of status 400 and above.
    errors: u64,
}

impl Totals {
    fn add(&mut self, record: &UsageRecord) {
        self.requests += 1;
        self.input_tokens = self.input_tokens.saturating_add(record.input_tokens);
        self.output_tokens = self.output_tokens.saturating_add(record.output_tokens);
        self.cached_tokens = self.cached_tokens.saturating_add(record.cached_tokens);
        self.cost_usd += record.cost_usd.unwrap_or(0.0);
        if record.status >= 400 {
            self.errors += 1;
        }
    }

    fn to_json(&self) -> Value {
        json!({
            "requests": self.requests,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "cached_tokens": self.cached_tokens,
            "cost_usd": self.cost_usd,
            "errors": self.errors,
        })
    }
}

/// A `since`/`until` value: RFC 3339, or unix milliseconds.
fn parse_time(name: &str, text: &str) -> Result<i64, AdminError> {
    if let Ok(ms) = text.parse::<i64>() {
        return Ok(ms);
    }
    text.parse::<jiff::Timestamp>()
        .map(|t| t.as_millisecond())
        .map_err(|_| {
            AdminError::invalid(format!(
                "{name}: must be an RFC 3339 time (2030-01-31T00:00:00Z) or unix milliseconds"
            ))
        })
}

/// `GET /admin/usage?since=&until=&by=`: totals over `[since, until)` (by default the last 24
/// hours), and per group when `by` is given.
async fn usage(request: HttpRequest) -> Result<HttpResponse, AdminError> {
    let keyring = authorize(&request)?;
    // Read here rather than by an extractor, so a caller without the token learns nothing.
    let query = web::Query::<HashMap<String, String>>::from_query(request.query_string())
        .map_err(|e| AdminError::invalid(format!("the query string: {e}")))?;
    if let Some(unknown) = query
        .keys()
        .find(|name| !["since", "until", "by"].contains(&name.as_str()))
    {
        return Err(AdminError::invalid(format!(
            "{:?} is not a parameter of /admin/usage (known: since, until, by)",
            unknown.chars().take(64).collect::<String>()
        )));
    }
    let until = match query.get("until") {
        Some(text) => parse_time("until", text)?,
        // Exclusive: a record written this millisecond counts.
        None => keys::now_ms().saturating_add(1),
    };
    let since = match query.get("since") {
        Some(text) => parse_time("since", text)?,
        None => until.saturating_sub(DEFAULT_USAGE_RANGE_MS),
    };
    if since > until {
        return Err(AdminError::invalid("since: must not be later than until"));
    }
    let by = match query.get("by") {
        None => None,
        Some(name) => Some(GroupBy::parse(name).ok_or_else(|| {
            AdminError::invalid(format!("by: must be one of {}", GroupBy::NAMES))
        })?),
    };

    let records = keyring
        .store()
        .usage_since(since, until, USAGE_ROW_LIMIT)
        .await
        .map_err(|e| AdminError::store(&e))?;
    let mut totals = Totals::default();
    let mut groups: HashMap<Option<String>, Totals> = HashMap::new();
    for record in &records {
        totals.add(record);
        if let Some(by) = by {
            groups.entry(by.of(record)).or_default().add(record);
        }
    }
    let mut groups: Vec<_> = groups.into_iter().collect();
    groups.sort_by(|(a_name, a), (b_name, b)| {
        b.requests.cmp(&a.requests).then_with(|| a_name.cmp(b_name))
    });
    let table = keyring.table();
    let groups: Vec<Value> = groups
        .into_iter()
        .map(|(group, sums)| {
            let mut shown = sums.to_json();
            if by == Some(GroupBy::Key) {
                let name = group.as_deref().and_then(|id| table.get(id));
                shown["name"] = name.map(|key| key.row.name.clone()).into();
            }
            shown["group"] = group.into();
            shown
        })
        .collect();

    let truncated = records.len() >= USAGE_ROW_LIMIT;
    let mut answer = json!({
        "since": spec::rfc3339(since),
        "until": spec::rfc3339(until),
        "by": by.map(GroupBy::as_str),
        "records": records.len(),
        "truncated": truncated,
        "totals": totals.to_json(),
        "groups": groups,
    });
    if truncated {
        answer["message"] = format!(
            "the range holds more than {USAGE_ROW_LIMIT} records: only the newest \
             {USAGE_ROW_LIMIT} were summed; ask for a shorter range"
        )
        .into();
    }
    Ok(HttpResponse::Ok().json(answer))
}

/// Unknown paths under `/admin/` ask for the token too, so they reveal nothing to a caller
/// without it.
async fn not_found(request: HttpRequest) -> Result<HttpResponse, AdminError> {
    authorize(&request)?;
    Err(AdminError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        "no admin route at this path",
    ))
}

async fn method_not_allowed(request: HttpRequest) -> Result<HttpResponse, AdminError> {
    authorize(&request)?;
    Err(AdminError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{} is not allowed on this admin route", request.method()),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_bearer_token_is_taken() {
        assert_eq!(bearer("Bearer abc"), Some("abc"));
        assert_eq!(bearer("bearer  abc "), Some("abc"));
        assert_eq!(bearer("Basic abc"), None);
        assert_eq!(bearer("Bearer "), None);
        assert_eq!(bearer("abc"), None);
    }

    #[test]
    fn tokens_match_only_when_equal() {
        assert!(same_token(b"s3cret", b"s3cret"));
        assert!(!same_token(b"s3cret", b"s3cre"));
        assert!(!same_token(b"", b"s3cret"));
        assert!(!same_token(b"S3cret", b"s3cret"));
    }

    #[test]
    fn times_are_rfc3339_or_unix_ms() {
        assert_eq!(
            parse_time("since", "1700000000000").unwrap(),
            1_700_000_000_000
        );
        assert_eq!(
            parse_time("since", "2023-11-14T22:13:20Z").unwrap(),
            1_700_000_000_000
        );
        let error = parse_time("until", "yesterday").unwrap_err();
        assert!(error.message.starts_with("until:"), "{error}");
    }
}
