//! One issued key as the database keeps it: never the secret, only its hash.

// moves to store/ at merge

/// A key's row. Times are unix milliseconds.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyRow {
    /// `"key_"` and 16 base62 characters, made by [`super::new_id`].
    pub id: String,
    /// Lowercase hex SHA-256 of the secret ([`super::hash_hex`]), unique.
    pub hash: String,
    /// The secret's first 8 characters (`"lp-AbCdE"`), so a person can recognise it.
    pub prefix: String,
    pub name: String,
    pub owner: Option<String>,
    /// Globs over model names ([`crate::util::glob`]); empty allows any model.
    pub models: Vec<String>,
    pub rpm: Option<i64>,
    pub tpm: Option<i64>,
    pub max_concurrent: Option<i64>,
    pub budget_usd: Option<f64>,
    /// `"day"`, `"week"`, `"month"` or `"total"`.
    pub budget_period: Option<String>,
    pub expires_at: Option<i64>,
    pub metadata: serde_json::Map<String, serde_json::Value>,
    pub enabled: bool,
    pub created_at: i64,
    pub updated_at: i64,
    pub revoked_at: Option<i64>,
}
