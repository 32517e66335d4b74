//! The stored rows the dashboard reads: a key and one request's usage record.

// moves to store/ at merge: the store owns these rows; until then they live here, exactly as
// the design gives them, so swapping in `crate::store::{KeyRow, UsageRecord}` is one line.

/// A key the proxy issued, as stored (never its secret: only a hash and a prefix).
#[derive(Clone, Debug, PartialEq)]
pub struct KeyRow {
    /// `key_` and 16 base62 characters, made by `keys/`.
    pub id: String,
    /// Hex SHA-256 of the secret; unique.
    pub hash: String,
    /// The secret's first 8 characters (`lp-AbCdE`), to recognise it.
    pub prefix: String,
    pub name: String,
    pub owner: Option<String>,
    /// Globs; empty means any model.
    pub models: Vec<String>,
    pub rpm: Option<i64>,
    pub tpm: Option<i64>,
    pub max_concurrent: Option<i64>,
    pub budget_usd: Option<f64>,
    /// `day`, `week`, `month` or `total`.
    pub budget_period: Option<String>,
    /// Unix milliseconds.
    pub expires_at: Option<i64>,
    pub metadata: serde_json::Map<String, serde_json::Value>,
    pub enabled: bool,
    pub created_at: i64,
    pub updated_at: i64,
    pub revoked_at: Option<i64>,
}

/// One request's usage: never content, never a key.
#[derive(Clone, Debug, PartialEq)]
pub struct UsageRecord {
    /// Unix milliseconds.
    pub time_ms: i64,
    /// An issued key's id.
    pub key_id: Option<String>,
    /// Else a caller-supplied key's keyed fingerprint (12 hex).
    pub caller: Option<String>,
    /// `chat` (the path route), `chat_completions`, `messages`, `count_tokens`.
    pub route: String,
    pub provider: Option<String>,
    pub model: Option<String>,
    /// The group the request named, if any.
    pub group: Option<String>,
    /// `provider/model` that answered.
    pub deployment: Option<String>,
    pub status: u16,
    pub input_tokens: i64,
    pub output_tokens: i64,
    pub cached_tokens: i64,
    /// `None` when the price is unknown.
    pub cost_usd: Option<f64>,
    pub latency_ms: f64,
    pub ttfb_ms: Option<f64>,
    pub request_id: String,
    /// Answered from the cache (issue 13); the column is kept.
    pub cached: bool,
}
