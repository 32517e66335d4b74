//! Checks shared by the providers file's sections: objects, known fields, provider names.

use serde_json::{Map, Value};

/// Provider names are what appears in `/v1/chat/{provider}` and before the `/` of a model.
pub fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b))
}

pub fn object<'v>(value: &'v Value, at: &str) -> Result<&'v Map<String, Value>, String> {
    value
        .as_object()
        .ok_or_else(|| format!("{at}: must be a JSON object"))
}

pub fn only_fields(fields: &Map<String, Value>, at: &str, known: &[&str]) -> Result<(), String> {
    match fields.keys().find(|key| !known.contains(&key.as_str())) {
        None => Ok(()),
        Some(unknown) => {
            let place = if at.is_empty() {
                unknown.clone()
            } else {
                format!("{at}.{unknown}")
            };
            Err(format!(
                "{place}: unknown field; expected one of {}",
                known.join(", ")
            ))
        }
    }
}
