//! Who is calling: a key this proxy issued (found in memory, with its limits), or a caller who
//! brings their own provider keys.

use std::{rc::Rc, sync::Arc};

use actix_web::{http::header, HttpRequest};

use crate::{
    error::ProxyError,
    keys::{self, Admission, Denial, Key, Keyring, Lookup},
};

/// The caller of one request.
#[derive(Clone, Default)]
pub enum Caller {
    /// A key the proxy issued. Provider keys come from the proxy (`api_key_env`), or from
    /// `X-API-Key-<Provider>`; the issued key itself never leaves the proxy.
    Issued(Arc<Key>),
    /// The caller's own provider keys, as ever.
    #[default]
    Own,
}

impl Caller {
    pub fn key(&self) -> Option<&Key> {
        match self {
            Self::Issued(key) => Some(key),
            Self::Own => None,
        }
    }
}

/// The credentials a caller may present: `X-API-Key` (`x-api-key` is the same header) and
/// `Authorization: Bearer`.
fn presented(request: &HttpRequest) -> impl Iterator<Item = &str> {
    let headers = request.headers();
    let api_key = headers.get("x-api-key").and_then(|v| v.to_str().ok());
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    api_key.into_iter().chain(bearer).map(str::trim)
}

/// Finds the caller's issued key, if they present one (`lp-...`), and refuses one that is not
/// good. Anything else is the caller's own key, as before keys existed.
pub fn identify(
    request: &HttpRequest,
    keyring: Option<&Keyring>,
    now: i64,
) -> Result<Caller, ProxyError> {
    let Some(secret) = presented(request).find(|key| keys::looks_issued(key)) else {
        return Ok(Caller::Own);
    };
    let Some(keyring) = keyring else {
        return Err(ProxyError::KeyRejected(
            "this proxy issues no keys (it runs without a store, DATABASE_URL=none); send your \
             provider key instead"
                .into(),
        ));
    };
    let refused = |key: &Key, why: &str| {
        ProxyError::KeyRejected(format!(
            "key {:?} ({}...) {why}",
            key.row.name, key.row.prefix
        ))
    };
    match keyring.lookup(secret, now) {
        Lookup::Found(key) => Ok(Caller::Issued(key)),
        Lookup::Unknown => Err(ProxyError::KeyRejected(
            "unknown key: this proxy issued no key like the one presented".into(),
        )),
        Lookup::Revoked(key) => Err(refused(&key, "was revoked")),
        Lookup::Disabled(key) => Err(refused(&key, "is disabled")),
        Lookup::Expired(key) => Err(refused(&key, "has expired")),
    }
}

/// An issued key's checks before any upstream call: the model is one it may use, and its
/// limits have room. The admission holds its place among the key's requests in flight until
/// the answer's last byte.
pub async fn admit(
    keyring: &Keyring,
    key: &Key,
    names: &[&str],
    now: i64,
) -> Result<Rc<Admission>, ProxyError> {
    if !names.iter().any(|name| key.allows_model(name)) {
        return Err(ProxyError::Forbidden(format!(
            "key {:?} may not use model {:?}; it may use {}",
            key.row.name,
            names.first().copied().unwrap_or_default(),
            key.row.models.join(", ")
        )));
    }
    match keyring.admit(&key.row, now).await {
        Ok(admission) => Ok(Rc::new(admission)),
        Err(Denial::SharedLimitsDown) => Err(ProxyError::LimitsUnavailable),
        Err(Denial::Limit(refusal)) => Err(ProxyError::LimitReached {
            limit: refusal.limit,
            // Whole seconds, rounded up: a client that waits this long finds room.
            retry_after_secs: refusal.retry_after.as_millis().div_ceil(1000).max(1) as u64,
            message: refusal.message,
        }),
    }
}
