//! What a key is made of when created or changed (one set of rules for the admin API and the
//! `keys` command), and those changes on the store.

use jiff::Timestamp;
use serde_json::{Map, Value};

use super::{generate, new_id, parse_budget, Budget, KeyRow, Secret};
use crate::store::{Store, StoreError};

/// The fields a key spec may have, in the order errors list them.
pub const FIELDS: [&str; 10] = [
    "name",
    "owner",
    "models",
    "rpm",
    "tpm",
    "max_concurrent",
    "budget",
    "expires_at",
    "metadata",
    "enabled",
];

/// Longest name or owner, in characters.
pub const MAX_NAME_CHARS: usize = 128;
/// Most model globs a key may have, and the longest one.
pub const MAX_MODELS: usize = 64;
pub const MAX_MODEL_CHARS: usize = 256;
/// Most metadata entries, the longest key, and the longest string value.
pub const MAX_METADATA_ENTRIES: usize = 32;
pub const MAX_METADATA_KEY_CHARS: usize = 64;
pub const MAX_METADATA_VALUE_CHARS: usize = 1024;
/// Highest requests or tokens per minute and requests in flight: far above any real limit,
/// low enough that no counter overflows.
pub const MAX_LIMIT: i64 = 1_000_000_000;
/// Highest budget in USD, for the same reason.
pub const MAX_BUDGET_USD: f64 = 1e9;

/// A field of a spec that may also be cleared: `None` leaves it as it is, `Some(None)` clears
/// it (JSON `null`), `Some(Some(v))` sets it.
pub type Clearable<T> = Option<Option<T>>;

/// What a request says about a key. Every field is optional: on create only `name` is
/// required (the rest default to no limit), on update only what is given changes.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct KeySpec {
    pub name: Option<String>,
    pub owner: Clearable<String>,
    /// Replaces the whole list; empty: any model.
    pub models: Option<Vec<String>>,
    pub rpm: Clearable<i64>,
    pub tpm: Clearable<i64>,
    pub max_concurrent: Clearable<i64>,
    pub budget: Clearable<Budget>,
    /// Unix ms.
    pub expires_at: Clearable<i64>,
    /// Replaces the whole map.
    pub metadata: Option<Map<String, Value>>,
    pub enabled: Option<bool>,
}

/// A spec that does not hold: the field (as named in JSON) and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecError {
    pub field: String,
    pub problem: String,
}

impl SpecError {
    fn new(field: &str, problem: impl Into<String>) -> Self {
        Self {
            field: field.to_owned(),
            problem: problem.into(),
        }
    }
}

impl std::fmt::Display for SpecError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.problem)
    }
}

impl std::error::Error for SpecError {}

impl KeySpec {
    /// A spec from a JSON body: an object whose fields are among [`FIELDS`].
    pub fn from_json(body: &[u8]) -> Result<KeySpec, SpecError> {
        let value: Value = serde_json::from_slice(body)
            .map_err(|e| SpecError::new("body", format!("is not JSON: {e}")))?;
        KeySpec::from_value(&value)
    }

    /// A spec from a JSON value; every error names its field.
    pub fn from_value(value: &Value) -> Result<KeySpec, SpecError> {
        let Value::Object(fields) = value else {
            return Err(SpecError::new(
                "body",
                format!("must be a JSON object, not {}", kind(value)),
            ));
        };
        let mut spec = KeySpec::default();
        for (field, value) in fields {
            spec.set(field, value)?;
        }
        Ok(spec)
    }

    /// Sets one field from its JSON value, checking it.
    pub fn set(&mut self, field: &str, value: &Value) -> Result<(), SpecError> {
        let error = |problem: String| SpecError::new(field, problem);
        match field {
            "name" => {
                let name = text(value, MAX_NAME_CHARS).map_err(error)?;
                self.name = Some(name);
            }
            "owner" => {
                self.owner = Some(nullable(value, |v| text(v, MAX_NAME_CHARS)).map_err(error)?)
            }
            "models" => self.models = Some(models(value).map_err(error)?),
            "rpm" => self.rpm = Some(nullable(value, limit).map_err(error)?),
            "tpm" => self.tpm = Some(nullable(value, limit).map_err(error)?),
            "max_concurrent" => self.max_concurrent = Some(nullable(value, limit).map_err(error)?),
            "budget" => self.budget = Some(budget(value).map_err(error)?),
            "expires_at" => self.expires_at = Some(nullable(value, time).map_err(error)?),
            "metadata" => self.metadata = Some(metadata(value).map_err(error)?),
            "enabled" => match value {
                Value::Bool(enabled) => self.enabled = Some(*enabled),
                other => return Err(error(format!("must be true or false, not {}", kind(other)))),
            },
            _ => {
                // An empty name would make an error that names no field.
                let shown = if field.is_empty() { "\"\"" } else { field };
                return Err(SpecError::new(
                    &shorten(shown, 64),
                    format!("is not a field of a key (known: {})", FIELDS.join(", ")),
                ));
            }
        }
        Ok(())
    }

    /// Writes what the spec sets into `row`; fields it does not mention stay as they are.
    pub fn apply(&self, row: &mut KeyRow) {
        if let Some(name) = &self.name {
            row.name.clone_from(name);
        }
        if let Some(owner) = &self.owner {
            row.owner.clone_from(owner);
        }
        if let Some(models) = &self.models {
            row.models.clone_from(models);
        }
        if let Some(rpm) = self.rpm {
            row.rpm = rpm;
        }
        if let Some(tpm) = self.tpm {
            row.tpm = tpm;
        }
        if let Some(max_concurrent) = self.max_concurrent {
            row.max_concurrent = max_concurrent;
        }
        if let Some(budget) = self.budget {
            row.budget_usd = budget.map(|b| b.usd);
            row.budget_period = budget.map(|b| b.period.as_str().to_owned());
        }
        if let Some(expires_at) = self.expires_at {
            row.expires_at = expires_at;
        }
        if let Some(metadata) = &self.metadata {
            row.metadata.clone_from(metadata);
        }
        if let Some(enabled) = self.enabled {
            row.enabled = enabled;
        }
    }
}

/// Why creating or changing a key failed.
#[derive(Debug)]
pub enum ChangeError {
    /// The spec does not hold (or lacks a name on create).
    Invalid(SpecError),
    /// No key has this id.
    NotFound,
    /// The key is revoked, which is final: it can no longer change.
    Revoked,
    /// The OS gave no random bytes for the secret or the id.
    Random(getrandom::Error),
    Store(StoreError),
}

impl std::fmt::Display for ChangeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ChangeError::Invalid(e) => e.fmt(f),
            ChangeError::NotFound => f.write_str("no key has this id"),
            ChangeError::Revoked => f.write_str("the key is revoked, which is final"),
            ChangeError::Random(e) => write!(f, "no random bytes for a new key: {e}"),
            ChangeError::Store(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for ChangeError {}

impl From<StoreError> for ChangeError {
    fn from(e: StoreError) -> Self {
        ChangeError::Store(e)
    }
}

/// Makes a key from `spec` (which must name it) and stores it: only the secret's hash and its
/// first characters are kept, so the returned secret is the one chance to see it.
pub async fn create(
    store: &Store,
    spec: &KeySpec,
    now: i64,
) -> Result<(KeyRow, Secret), ChangeError> {
    let Some(name) = &spec.name else {
        return Err(ChangeError::Invalid(SpecError::new(
            "name",
            "is required to create a key",
        )));
    };
    let (secret, hash) = generate().map_err(ChangeError::Random)?;
    let id = new_id().map_err(ChangeError::Random)?;
    let mut row = KeyRow::new(id, hash, secret.prefix().to_owned(), name.clone(), now);
    spec.apply(&mut row);
    store.insert_key(&row).await?;
    Ok((row, secret))
}

/// Changes what `patch` sets on the key `id` and returns the row as stored.
pub async fn update(
    store: &Store,
    id: &str,
    patch: &KeySpec,
    now: i64,
) -> Result<KeyRow, ChangeError> {
    let mut row = store.get_key(id).await?.ok_or(ChangeError::NotFound)?;
    if row.revoked_at.is_some() {
        return Err(ChangeError::Revoked);
    }
    patch.apply(&mut row);
    row.updated_at = now;
    write(store, &row).await?;
    Ok(row)
}

/// Revokes the key `id`: it stops working, and its row stays so its usage remains
/// attributable. Revoking a revoked key changes nothing and answers its row.
pub async fn revoke(store: &Store, id: &str, now: i64) -> Result<KeyRow, ChangeError> {
    let mut row = store.get_key(id).await?.ok_or(ChangeError::NotFound)?;
    if row.revoked_at.is_none() {
        row.revoked_at = Some(now);
        row.updated_at = now;
        write(store, &row).await?;
    }
    Ok(row)
}

async fn write(store: &Store, row: &KeyRow) -> Result<(), ChangeError> {
    // The key may have been deleted from the database between the read and the write.
    if store.update_key(row).await? {
        Ok(())
    } else {
        Err(ChangeError::NotFound)
    }
}

/// A key as shown to an administrator: every field but the hash (the secret itself is never
/// stored), times as RFC 3339, the budget as written (`"20/month"`), and its state at `now`.
pub fn key_json(row: &KeyRow, now: i64) -> Value {
    let status = if row.revoked_at.is_some() {
        "revoked"
    } else if !row.enabled {
        "disabled"
    } else if row.expires_at.is_some_and(|at| at <= now) {
        "expired"
    } else {
        "active"
    };
    serde_json::json!({
        "id": row.id,
        "prefix": row.prefix,
        "name": row.name,
        "owner": row.owner,
        "models": row.models,
        "rpm": row.rpm,
        "tpm": row.tpm,
        "max_concurrent": row.max_concurrent,
        "budget": Budget::of(row).map(|b| b.to_string()),
        "expires_at": row.expires_at.map(rfc3339),
        "metadata": row.metadata,
        "enabled": row.enabled,
        "status": status,
        "created_at": rfc3339(row.created_at),
        "updated_at": rfc3339(row.updated_at),
        "revoked_at": row.revoked_at.map(rfc3339),
    })
}

/// Unix ms as RFC 3339 in UTC; a time outside jiff's years is written as its number.
pub fn rfc3339(ms: i64) -> String {
    Timestamp::from_millisecond(ms).map_or_else(|_| ms.to_string(), |t| t.to_string())
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The first `max` characters of `text`, marked when cut: error messages stay bounded.
fn shorten(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_owned(),
    }
}

/// `null` as `None`, anything else through `parse`.
fn nullable<T>(
    value: &Value,
    parse: impl FnOnce(&Value) -> Result<T, String>,
) -> Result<Option<T>, String> {
    match value {
        Value::Null => Ok(None),
        value => parse(value).map(Some),
    }
}

/// A string of 1 to `max` characters with something besides blanks and no control characters
/// (names end up in tables and log lines).
fn text(value: &Value, max: usize) -> Result<String, String> {
    let Value::String(text) = value else {
        return Err(format!("must be a string, not {}", kind(value)));
    };
    if text.trim().is_empty() {
        return Err("must not be empty".into());
    }
    if text.chars().count() > max {
        return Err(format!("must be at most {max} characters"));
    }
    if text.chars().any(char::is_control) {
        return Err("must not contain control characters".into());
    }
    Ok(text.clone())
}

fn models(value: &Value) -> Result<Vec<String>, String> {
    let globs = match value {
        // No list at all: any model, as an empty one.
        Value::Null => return Ok(Vec::new()),
        Value::Array(globs) => globs,
        other => return Err(format!("must be an array of globs, not {}", kind(other))),
    };
    if globs.len() > MAX_MODELS {
        return Err(format!("must have at most {MAX_MODELS} globs"));
    }
    globs
        .iter()
        .enumerate()
        .map(|(at, glob)| text(glob, MAX_MODEL_CHARS).map_err(|e| format!("glob {at} {e}")))
        .collect()
}

fn limit(value: &Value) -> Result<i64, String> {
    match value.as_i64() {
        Some(n) if (0..=MAX_LIMIT).contains(&n) => Ok(n),
        _ if value.is_number() => Err(format!(
            "must be a whole number from 0 to {MAX_LIMIT}, not {value}"
        )),
        _ => Err(format!(
            "must be a whole number or null, not {}",
            kind(value)
        )),
    }
}

fn budget(value: &Value) -> Result<Option<Budget>, String> {
    let text = match value {
        Value::Null => return Ok(None),
        Value::String(text) if text.trim().eq_ignore_ascii_case("none") => return Ok(None),
        Value::String(text) => text,
        other => {
            return Err(format!(
                "must be a string such as \"20/month\", or \"none\", not {}",
                kind(other)
            ))
        }
    };
    if text.len() > 64 {
        return Err("is too long for a budget such as \"20/month\"".into());
    }
    let budget = parse_budget(text).map_err(|e| e.to_string())?;
    if budget.usd > MAX_BUDGET_USD {
        return Err(format!("must be at most {MAX_BUDGET_USD} USD"));
    }
    Ok(Some(budget))
}

fn time(value: &Value) -> Result<i64, String> {
    let Value::String(text) = value else {
        return Err(format!(
            "must be an RFC 3339 time such as \"2030-01-31T00:00:00Z\", or null, not {}",
            kind(value)
        ));
    };
    text.parse::<Timestamp>()
        .map(|t| t.as_millisecond())
        .map_err(|e| format!("{:?} is not an RFC 3339 time: {e}", shorten(text, 64)))
}

fn metadata(value: &Value) -> Result<Map<String, Value>, String> {
    let entries = match value {
        Value::Null => return Ok(Map::new()),
        Value::Object(entries) => entries,
        other => return Err(format!("must be an object, not {}", kind(other))),
    };
    if entries.len() > MAX_METADATA_ENTRIES {
        return Err(format!("must have at most {MAX_METADATA_ENTRIES} entries"));
    }
    for (key, value) in entries {
        if key.is_empty() || key.chars().count() > MAX_METADATA_KEY_CHARS {
            return Err(format!(
                "key {:?} must be 1 to {MAX_METADATA_KEY_CHARS} characters",
                shorten(key, MAX_METADATA_KEY_CHARS)
            ));
        }
        let fits = match value {
            Value::String(text) => text.chars().count() <= MAX_METADATA_VALUE_CHARS,
            Value::Number(_) | Value::Bool(_) => true,
            _ => false,
        };
        if !fits {
            return Err(format!(
                "{key:?} must be a string of at most {MAX_METADATA_VALUE_CHARS} characters, \
                 a number or a boolean"
            ));
        }
    }
    Ok(entries.clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::Period;
    use crate::store::test_db;
    use proptest::prelude::*;
    use serde_json::json;

    fn error(body: Value) -> SpecError {
        KeySpec::from_value(&body).expect_err("refused")
    }

    #[test]
    fn a_full_spec_parses_and_applies_to_a_row() {
        let spec = KeySpec::from_json(
            br#"{"name": "ci", "owner": "team-a", "models": ["openai/*", "fast"],
                 "rpm": 60, "tpm": 10000, "max_concurrent": 4, "budget": "20/month",
                 "expires_at": "2030-01-31T00:00:00Z", "metadata": {"env": "prod", "n": 1},
                 "enabled": false}"#,
        )
        .unwrap();
        let mut row = blank_row();
        spec.apply(&mut row);
        assert_eq!(row.name, "ci");
        assert_eq!(row.owner.as_deref(), Some("team-a"));
        assert_eq!(row.models, ["openai/*", "fast"]);
        assert_eq!(
            (row.rpm, row.tpm, row.max_concurrent),
            (Some(60), Some(10000), Some(4))
        );
        assert_eq!(row.budget_usd, Some(20.0));
        assert_eq!(row.budget_period.as_deref(), Some("month"));
        assert_eq!(row.expires_at, Some(1_896_048_000_000));
        assert_eq!(row.metadata["env"], "prod");
        assert!(!row.enabled);

        // null and "none" clear; what a patch leaves out stays.
        let patch =
            KeySpec::from_value(&json!({"owner": null, "budget": "none", "rpm": null})).unwrap();
        patch.apply(&mut row);
        assert_eq!((row.owner, row.rpm, row.budget_usd), (None, None, None));
        assert_eq!(row.budget_period, None);
        assert_eq!(row.tpm, Some(10000));
        assert_eq!(row.name, "ci");
    }

    #[test]
    fn a_budget_without_a_period_is_a_total_one() {
        let spec = KeySpec::from_value(&json!({"budget": "5"})).unwrap();
        assert_eq!(
            spec.budget,
            Some(Some(Budget {
                usd: 5.0,
                period: Period::Total
            }))
        );
    }

    #[test]
    fn every_error_names_its_field_and_what_is_wrong() {
        let long = "x".repeat(MAX_NAME_CHARS + 1);
        let many: Vec<String> = (0..=MAX_MODELS).map(|i| format!("m{i}")).collect();
        let big: Map<String, Value> = (0..=MAX_METADATA_ENTRIES)
            .map(|i| (format!("k{i}"), json!(i)))
            .collect();
        for (body, field, says) in [
            (json!({"name": 5}), "name", "must be a string"),
            (json!({"name": "  "}), "name", "must not be empty"),
            (json!({"name": long}), "name", "at most 128"),
            (json!({"name": "a\nb"}), "name", "control"),
            (json!({"name": null}), "name", "not null"),
            (json!({"owner": []}), "owner", "not an array"),
            (json!({"models": "openai/*"}), "models", "array of globs"),
            (json!({"models": many}), "models", "at most 64"),
            (
                json!({"models": ["ok", 3]}),
                "models",
                "glob 1 must be a string",
            ),
            (
                json!({"models": ["y".repeat(257)]}),
                "models",
                "at most 256",
            ),
            (json!({"rpm": -1}), "rpm", "from 0 to"),
            (json!({"tpm": 1.5}), "tpm", "whole number"),
            (
                json!({"max_concurrent": "4"}),
                "max_concurrent",
                "not a string",
            ),
            (json!({"rpm": MAX_LIMIT + 1}), "rpm", "from 0 to"),
            (json!({"budget": 20}), "budget", "such as \"20/month\""),
            (json!({"budget": "20/year"}), "budget", "period \"year\""),
            (json!({"budget": "-1/day"}), "budget", "negative"),
            (json!({"budget": "1e12/day"}), "budget", "at most"),
            (json!({"expires_at": "tomorrow"}), "expires_at", "RFC 3339"),
            (json!({"expires_at": 17}), "expires_at", "RFC 3339"),
            (json!({"metadata": ["a"]}), "metadata", "must be an object"),
            (json!({"metadata": big}), "metadata", "at most 32"),
            (
                json!({"metadata": {"a": {"b": 1}}}),
                "metadata",
                "\"a\" must be a string",
            ),
            (json!({"metadata": {"": 1}}), "metadata", "1 to 64"),
            (
                json!({"metadata": {"a": "v".repeat(1025)}}),
                "metadata",
                "at most 1024",
            ),
            (json!({"enabled": "yes"}), "enabled", "true or false"),
            (json!({"colour": "red"}), "colour", "not a field of a key"),
            (json!([1]), "body", "JSON object"),
        ] {
            let error = error(body.clone());
            assert_eq!(error.field, field, "{body}");
            assert!(error.problem.contains(says), "{body}: {error}");
        }
        let error = KeySpec::from_json(b"{").unwrap_err();
        assert_eq!(error.field, "body");
        assert!(error.problem.contains("not JSON"));
    }

    #[test]
    fn an_unknown_fields_name_is_cut_in_the_error() {
        let field = "f".repeat(10_000);
        let error = error(json!({ field: 1 }));
        assert!(error.field.chars().count() <= 65, "{}", error.field.len());
    }

    #[actix_web::test]
    async fn create_update_and_revoke_keep_the_row_and_never_the_secret() {
        let db = test_db::sqlite().await;
        let spec = KeySpec::from_value(&json!({"name": "ci", "budget": "2/day"})).unwrap();
        let (row, secret) = create(&db.store, &spec, 1_000).await.unwrap();
        assert_eq!(row.hash, crate::keys::hash_hex(secret.expose()));
        assert_eq!(row.prefix, secret.prefix());
        assert!(row.id.starts_with("key_"));
        assert_eq!(db.store.get_key(&row.id).await.unwrap(), Some(row.clone()));
        let shown = key_json(&row, 1_000).to_string();
        assert!(!shown.contains(secret.expose()) && !shown.contains(&row.hash));
        assert!(shown.contains("\"budget\":\"2/day\""), "{shown}");

        let patch = KeySpec::from_value(&json!({"rpm": 5, "enabled": false})).unwrap();
        let changed = update(&db.store, &row.id, &patch, 2_000).await.unwrap();
        assert_eq!(
            (changed.rpm, changed.enabled, changed.updated_at),
            (Some(5), false, 2_000)
        );
        assert_eq!(changed.created_at, 1_000);
        assert_eq!(key_json(&changed, 2_000)["status"], "disabled");

        let revoked = revoke(&db.store, &row.id, 3_000).await.unwrap();
        assert_eq!(revoked.revoked_at, Some(3_000));
        let again = revoke(&db.store, &row.id, 4_000).await.unwrap();
        assert_eq!(again.revoked_at, Some(3_000), "the first revocation stays");
        assert!(matches!(
            update(&db.store, &row.id, &patch, 5_000).await,
            Err(ChangeError::Revoked)
        ));
        assert_eq!(
            db.store.list_keys().await.unwrap().len(),
            1,
            "the row stays"
        );

        assert!(matches!(
            create(&db.store, &KeySpec::default(), 0).await,
            Err(ChangeError::Invalid(SpecError { field, .. })) if field == "name"
        ));
        assert!(matches!(
            revoke(&db.store, "key_nope", 0).await,
            Err(ChangeError::NotFound)
        ));
    }

    fn any_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<f64>().prop_map(Value::from),
            ".{0,40}".prop_map(Value::String),
        ];
        leaf.prop_recursive(3, 64, 8, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
                proptest::collection::vec(
                    (
                        prop_oneof![
                            proptest::sample::select(FIELDS.to_vec()).prop_map(String::from),
                            ".{0,12}"
                        ],
                        inner
                    ),
                    0..8
                )
                .prop_map(|entries| Value::Object(entries.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn any_json_is_taken_or_refused_with_a_field_without_panicking(value in any_json()) {
            match KeySpec::from_value(&value) {
                Ok(spec) => {
                    let mut row = blank_row();
                    spec.apply(&mut row);
                }
                Err(error) => {
                    prop_assert!(!error.field.is_empty());
                    prop_assert!(!error.problem.is_empty());
                }
            }
        }

        #[test]
        fn any_bytes_are_taken_or_refused_without_panicking(
            body in proptest::collection::vec(any::<u8>(), 0..128)
        ) {
            let _ = KeySpec::from_json(&body);
        }
    }

    fn blank_row() -> KeyRow {
        KeyRow::new("key_p".into(), String::new(), String::new(), "p".into(), 0)
    }
}
