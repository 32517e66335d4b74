//! JSON helpers for bodies that pass on mostly as they came.

use std::{fmt, io::Write};

use serde::{
    de::{MapAccess, Visitor},
    Deserialize, Deserializer, Serialize,
};
use serde_json::value::RawValue;

/// The top-level fields of a JSON object, in order, their values left raw.
pub struct RawFields<'a>(pub Vec<(std::borrow::Cow<'a, str>, &'a RawValue)>);

impl<'de> Deserialize<'de> for RawFields<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        struct Key<'a>(#[serde(borrow)] std::borrow::Cow<'a, str>);
        struct FieldsVisitor;
        impl<'de> Visitor<'de> for FieldsVisitor {
            type Value = RawFields<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut fields = Vec::with_capacity(map.size_hint().unwrap_or(8));
                while let Some((Key(key), value)) = map.next_entry::<Key, &RawValue>()? {
                    fields.push((key, value));
                }
                Ok(RawFields(fields))
            }
        }
        deserializer.deserialize_map(FieldsVisitor)
    }
}

/// Writes a JSON object one field at a time, so raw values can be copied in unparsed.
pub struct JsonObject<'w> {
    out: &'w mut Vec<u8>,
    empty: bool,
}

impl<'w> JsonObject<'w> {
    pub fn new(out: &'w mut Vec<u8>) -> Self {
        out.push(b'{');
        Self { out, empty: true }
    }

    /// Writes one field. Fails only when `value` cannot be serialized (a map with non-string
    /// keys), which the caller reports naming the field.
    pub fn field(&mut self, name: &str, value: &impl Serialize) -> serde_json::Result<()> {
        if !self.empty {
            self.out.push(b',');
        }
        self.empty = false;
        serde_json::to_writer(&mut *self.out, name)?;
        self.out.write_all(b":").map_err(serde_json::Error::io)?;
        serde_json::to_writer(&mut *self.out, value)
    }

    pub fn end(self) {
        self.out.push(b'}');
    }
}

/// A JSON object with `set` fields replaced (in place, or added at the end) and `remove`
/// fields taken out; every other field is copied as it came, in order. `None` when `body` is
/// not a JSON object.
pub fn rewrite_object(
    body: &[u8],
    set: &[(&str, serde_json::Value)],
    remove: &[&str],
) -> Option<Vec<u8>> {
    let RawFields(fields) = serde_json::from_slice(body).ok()?;
    let mut out = Vec::with_capacity(body.len() + 64);
    let mut object = JsonObject::new(&mut out);
    let mut written = vec![false; set.len()];
    for (name, value) in &fields {
        if remove.contains(&name.as_ref()) {
            continue;
        }
        match set.iter().position(|(n, _)| n == name) {
            Some(at) if !written[at] => {
                written[at] = true;
                object.field(name, &set[at].1).ok()?;
            }
            // A repeated field that is set appears once.
            Some(_) => {}
            None => object.field(name, value).ok()?,
        }
    }
    for (at, (name, value)) in set.iter().enumerate() {
        if !written[at] {
            object.field(name, value).ok()?;
        }
    }
    object.end();
    Some(out)
}

/// Whether the JSON object `body` has a top-level field named in `names`. The bytes are
/// searched first, so a body without the word costs no parse (the hot path: a pass-through body
/// almost never holds the proxy's own fields); a key spelled with escapes is not found. A body
/// that is not an object says yes, so the rewrite that follows reports it.
pub fn has_top_level_key(body: &[u8], names: &[&str]) -> bool {
    let mentioned = names
        .iter()
        .any(|name| memchr::memmem::find(body, name.as_bytes()).is_some());
    if !mentioned {
        return false;
    }
    match serde_json::from_slice::<RawFields>(body) {
        Ok(RawFields(fields)) => fields
            .iter()
            .any(|(name, _)| names.contains(&name.as_ref())),
        Err(_) => true,
    }
}

/// Any JSON value a few levels deep whose object keys and strings are often the words a
/// format uses (`keys`, `words`), so that parsers of outside input meet their own shapes in
/// property tests, not only noise.
#[cfg(test)]
pub fn arbitrary_json(
    keys: &'static [&'static str],
    words: &'static [&'static str],
) -> impl proptest::strategy::Strategy<Value = serde_json::Value> {
    use proptest::prelude::*;
    use serde_json::Value;
    let key = prop_oneof![
        proptest::sample::select(keys).prop_map(str::to_owned),
        "[a-z_]{1,8}",
    ];
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| serde_json::json!(f)),
        proptest::sample::select(words).prop_map(Value::from),
        ".{0,12}".prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 48, 6, move |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::from),
            proptest::collection::vec((key.clone(), inner), 0..6)
                .prop_map(|pairs| Value::Object(pairs.into_iter().collect())),
        ]
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rewrite_replaces_in_place_removes_and_keeps_the_rest_as_it_came() {
        let body = br#"{"model":"openai/gpt","x":{"a" : 1},"fallbacks":["b"],"stream":true}"#;
        let out = rewrite_object(body, &[("model", "gpt".into())], &["fallbacks"]).unwrap();
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            r#"{"model":"gpt","x":{"a" : 1},"stream":true}"#
        );
        let added = rewrite_object(b"{}", &[("max_tokens", 5.into())], &[]).unwrap();
        assert_eq!(added, br#"{"max_tokens":5}"#);
        assert!(rewrite_object(b"[1]", &[], &[]).is_none());
    }

    #[test]
    fn only_top_level_keys_count() {
        let names = ["fallbacks"];
        assert!(has_top_level_key(
            br#"{"model":"m","fallbacks":["a"]}"#,
            &names
        ));
        assert!(!has_top_level_key(
            br#"{"model":"m","messages":[{"content":"fallbacks"}]}"#,
            &names
        ));
        assert!(!has_top_level_key(br#"{"model":"m"}"#, &names));
        assert!(!has_top_level_key(br#"{"model":"m"}"#, &[]));
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic_a_rewrite(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256)) {
            let _ = rewrite_object(&bytes, &[("model", "m".into())], &["x"]);
        }
    }
}
