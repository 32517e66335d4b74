//! JSON Schema reduced to the OpenAPI subset Gemini's `Schema` object accepts.
//!
//! Gemini reads tool `parameters` and `responseSchema` as its own `Schema` message, "a select
//! subset of an OpenAPI 3.0 schema object", and refuses a request with a field it does not
//! know (`Unknown name "additionalProperties"`), a `format` it does not take for the type
//! (`only 'enum' and 'date-time' are supported for STRING type`), a non-string `enum` value,
//! or a `required` name that is not among the `properties`. Callers write full JSON Schema
//! (MCP servers, Pydantic, zod), so [`reduce`] rewrites what has an equivalent and drops the
//! rest, by these rules:
//!
//! - **Kept** as given (when of the right JSON type): `type`, `format`, `title`, `description`,
//!   `nullable`, `enum`, `items`, `minItems`, `maxItems`, `properties`, `required`,
//!   `propertyOrdering`, `minProperties`, `maxProperties`, `minLength`, `maxLength`,
//!   `pattern`, `minimum`, `maximum`, `anyOf`. Every other keyword is **dropped**: `$schema`,
//!   `$id`, `$comment`, `$defs`, `definitions`, `additionalProperties`, `patternProperties`,
//!   `default`, `examples`, `const` (rewritten first), `not`, `if`/`then`/`else`,
//!   `exclusiveMinimum`, `multipleOf`, `uniqueItems`, `prefixItems`, ...
//! - **`$ref`** to `#/$defs/...`, `#/definitions/...` or any other `#/` pointer into the root
//!   is inlined, the referring schema's own keywords over the target's. A reference met again
//!   inside its own expansion (a recursive type) is unrolled [`MAX_RECURSION`] times, then
//!   becomes `{"type": "object"}`; so does a reference that cannot be resolved.
//! - **`type: [T, "null"]`** becomes `type: T, nullable: true`; several non-null types become
//!   an `anyOf` of one branch each; `type: "null"` alone becomes `nullable: true`.
//! - **`anyOf`/`oneOf`** (Gemini has only `anyOf`, which accepts what `oneOf` does): a
//!   `{"type": "null"}` branch is taken out as `nullable: true`, and a single branch left is
//!   merged into the schema.
//! - **`allOf`**: each branch is merged into the schema (`properties` and `required` united,
//!   the schema's own keywords first).
//! - **`const: v`** becomes `enum: [v]`. In an `enum`, a `null` becomes `nullable: true`; an
//!   enum of strings gets `type: "string"` (Gemini takes enums only for strings); an enum with
//!   other values (numbers, booleans) is dropped and its values are listed in the
//!   `description` instead, so the type the caller's code expects is kept.
//! - **`format`** is kept only where Gemini takes it: `enum`/`date-time` for strings,
//!   `float`/`double` for numbers, `int32`/`int64` for integers.
//! - **`required`** keeps only the names among `properties`; an empty `properties` map is
//!   left out (Gemini refuses one on an `OBJECT`).
//! - A schema nested deeper than [`MAX_DEPTH`], or past a budget of [`MAX_NODES`] schemas in
//!   all (a reference bomb), becomes `{"type": "object"}`: hostile input costs bounded time
//!   and stack.

use serde_json::{Map, Value};

/// How deep schemas may nest before the rest is cut to `{"type": "object"}`.
pub const MAX_DEPTH: usize = 32;

/// How many times a `$ref` is expanded inside its own expansion.
pub const MAX_RECURSION: usize = 2;

/// How many schemas one reduction visits at most, references expanded included.
pub const MAX_NODES: usize = 20_000;

/// The keywords of Gemini's `Schema` that [`reduce`] may write.
pub const KEPT: [&str; 20] = [
    "type",
    "format",
    "title",
    "description",
    "nullable",
    "enum",
    "items",
    "minItems",
    "maxItems",
    "properties",
    "required",
    "propertyOrdering",
    "minProperties",
    "maxProperties",
    "minLength",
    "maxLength",
    "pattern",
    "minimum",
    "maximum",
    "anyOf",
];

const TYPES: [&str; 6] = ["string", "number", "integer", "boolean", "array", "object"];

/// `schema` as a Gemini `Schema` object, by the rules of this module.
pub fn reduce(schema: &Value) -> Value {
    let mut reducer = Reducer {
        root: schema,
        budget: MAX_NODES,
        refs: Vec::new(),
    };
    Value::Object(reducer.schema(schema, 0))
}

struct Reducer<'a> {
    root: &'a Value,
    budget: usize,
    /// The references being expanded on the way to the current schema.
    refs: Vec<&'a str>,
}

fn object_type() -> Map<String, Value> {
    let mut out = Map::new();
    out.insert("type".into(), "object".into());
    out
}

impl<'a> Reducer<'a> {
    fn schema(&mut self, schema: &'a Value, depth: usize) -> Map<String, Value> {
        let Value::Object(given) = schema else {
            // `true` (anything) and other non-objects: no constraint.
            return Map::new();
        };
        if depth > MAX_DEPTH || self.budget == 0 {
            return object_type();
        }
        self.budget -= 1;
        let mut out = Map::new();
        let mut nullable = false;

        for (key, value) in given {
            match key.as_str() {
                "title" | "description" | "pattern" if value.is_string() => {
                    out.insert(key.clone(), value.clone());
                }
                "minItems" | "maxItems" | "minProperties" | "maxProperties" | "minLength"
                | "maxLength"
                    if value.is_u64() =>
                {
                    out.insert(key.clone(), value.clone());
                }
                "minimum" | "maximum" if value.is_number() => {
                    out.insert(key.clone(), value.clone());
                }
                "format" if value.is_string() => {
                    out.insert(key.clone(), value.clone());
                }
                "nullable" => nullable |= value.as_bool() == Some(true),
                "propertyOrdering" => {
                    if let Some(names) = strings(value) {
                        out.insert(key.clone(), names);
                    }
                }
                "properties" => {
                    if let Value::Object(properties) = value {
                        let reduced: Map<String, Value> = properties
                            .iter()
                            .map(|(name, property)| {
                                (
                                    name.clone(),
                                    Value::Object(self.schema(property, depth + 1)),
                                )
                            })
                            .collect();
                        if !reduced.is_empty() {
                            out.insert(key.clone(), Value::Object(reduced));
                        }
                    }
                }
                "items" if value.is_object() => {
                    let items = self.schema(value, depth + 1);
                    out.insert(key.clone(), Value::Object(items));
                }
                "required" => {
                    if let Some(names) = strings(value) {
                        out.insert(key.clone(), names);
                    }
                }
                _ => {}
            }
        }

        self.apply_type(given.get("type"), &mut out, &mut nullable);
        self.apply_enum(given, &mut out, &mut nullable);
        self.apply_any_of(given, &mut out, &mut nullable, depth);
        if let Some(Value::Array(branches)) = given.get("allOf") {
            for branch in branches {
                let branch = self.schema(branch, depth + 1);
                merge_under(&mut out, branch, &mut nullable);
            }
        }
        if let Some(Value::String(reference)) = given.get("$ref") {
            let target = self.resolve(reference, depth);
            merge_under(&mut out, target, &mut nullable);
        }

        if nullable {
            out.insert("nullable".into(), true.into());
        }
        keep_known_required(&mut out);
        keep_supported_format(&mut out);
        out
    }

    /// `type`: one known type, a list with `"null"` (nullable), or several (`anyOf`).
    fn apply_type(
        &mut self,
        given: Option<&Value>,
        out: &mut Map<String, Value>,
        nullable: &mut bool,
    ) {
        let mut types: Vec<&str> = Vec::new();
        match given {
            Some(Value::String(name)) => types.push(name),
            Some(Value::Array(names)) => types.extend(names.iter().filter_map(Value::as_str)),
            _ => return,
        }
        let mut known: Vec<String> = Vec::new();
        for name in types {
            let name = name.to_ascii_lowercase();
            if name == "null" {
                *nullable = true;
            } else if TYPES.contains(&name.as_str()) && !known.contains(&name) {
                known.push(name);
            }
        }
        match known.len() {
            0 => {}
            1 => {
                out.insert("type".into(), known.remove(0).into());
            }
            _ => {
                let branches = known
                    .into_iter()
                    .map(|name| {
                        let mut branch = Map::new();
                        branch.insert("type".into(), name.into());
                        Value::Object(branch)
                    })
                    .collect();
                out.insert("anyOf".into(), Value::Array(branches));
            }
        }
    }

    /// `enum` (or `const`): strings stay an enum, other values move to the description.
    fn apply_enum(
        &mut self,
        given: &Map<String, Value>,
        out: &mut Map<String, Value>,
        nullable: &mut bool,
    ) {
        let values: Vec<&Value> = match (given.get("enum"), given.get("const")) {
            (Some(Value::Array(values)), _) => values.iter().collect(),
            (None, Some(value)) => vec![value],
            _ => return,
        };
        let mut kept: Vec<&Value> = Vec::with_capacity(values.len());
        for value in values {
            if value.is_null() {
                *nullable = true;
            } else {
                kept.push(value);
            }
        }
        if kept.is_empty() {
            return;
        }
        let is_string = |value: &&Value| value.is_string();
        let typed_as_string = out.get("type").is_none_or(|t| t == "string");
        if kept.iter().all(is_string) && typed_as_string {
            out.insert("type".into(), "string".into());
            out.insert(
                "enum".into(),
                Value::Array(kept.into_iter().cloned().collect()),
            );
            return;
        }
        let listed: Vec<String> = kept.iter().map(|value| value.to_string()).collect();
        let note = format!("One of: {}.", listed.join(", "));
        let description = match out.get("description").and_then(Value::as_str) {
            Some(description) if !description.is_empty() => format!("{description}\n{note}"),
            _ => note,
        };
        out.insert("description".into(), description.into());
    }

    /// `anyOf` and `oneOf` as one `anyOf`, its null branch taken out as `nullable`.
    fn apply_any_of(
        &mut self,
        given: &'a Map<String, Value>,
        out: &mut Map<String, Value>,
        nullable: &mut bool,
        depth: usize,
    ) {
        let branches: Vec<&'a Value> = ["anyOf", "oneOf"]
            .iter()
            .filter_map(|key| given.get(*key).and_then(Value::as_array))
            .flatten()
            .collect();
        if branches.is_empty() {
            return;
        }
        let mut reduced: Vec<Map<String, Value>> = Vec::with_capacity(branches.len());
        for branch in branches {
            let mut branch = self.schema(branch, depth + 1);
            if branch.len() == 1 && branch.get("nullable") == Some(&Value::Bool(true)) {
                *nullable = true;
                continue;
            }
            if branch.remove("nullable") == Some(Value::Bool(true)) {
                *nullable = true;
            }
            reduced.push(branch);
        }
        match reduced.len() {
            0 => {}
            1 => {
                let only = reduced.remove(0);
                merge_under(out, only, nullable);
            }
            _ => {
                // A `type` list's branches and these cannot both be said: these are the
                // finer ones.
                out.remove("type");
                let branches = reduced.into_iter().map(Value::Object).collect();
                out.insert("anyOf".into(), Value::Array(branches));
            }
        }
    }

    /// The reduced target of a `$ref`, or `{"type": "object"}` when it cannot be had.
    fn resolve(&mut self, reference: &'a str, depth: usize) -> Map<String, Value> {
        let repeats = self.refs.iter().filter(|r| **r == reference).count();
        if repeats > MAX_RECURSION {
            return object_type();
        }
        let Some(target) = reference
            .strip_prefix('#')
            .and_then(|pointer| self.root.pointer(pointer))
        else {
            return object_type();
        };
        self.refs.push(reference);
        let reduced = self.schema(target, depth + 1);
        self.refs.pop();
        reduced
    }
}

/// The strings of an array, as an array; `None` when `value` is not an array.
fn strings(value: &Value) -> Option<Value> {
    let values = value.as_array()?;
    Some(Value::Array(
        values.iter().filter(|v| v.is_string()).cloned().collect(),
    ))
}

/// Merges `base` into `out`, whose own keywords win; `properties` and `required` are united.
fn merge_under(out: &mut Map<String, Value>, base: Map<String, Value>, nullable: &mut bool) {
    for (key, value) in base {
        match (key.as_str(), out.get_mut(&key), value) {
            ("nullable", _, value) => *nullable |= value == Value::Bool(true),
            ("properties", Some(Value::Object(mine)), Value::Object(theirs)) => {
                for (name, property) in theirs {
                    mine.entry(name).or_insert(property);
                }
            }
            ("required", Some(Value::Array(mine)), Value::Array(theirs)) => {
                for name in theirs {
                    if !mine.contains(&name) {
                        mine.push(name);
                    }
                }
            }
            (_, Some(_), _) => {}
            (_, None, value) => {
                out.insert(key, value);
            }
        }
    }
}

/// `required` without the names `properties` does not have; left out when none remain.
fn keep_known_required(out: &mut Map<String, Value>) {
    let Some(Value::Array(required)) = out.remove("required") else {
        return;
    };
    let Some(Value::Object(properties)) = out.get("properties") else {
        return;
    };
    let mut known: Vec<Value> = Vec::with_capacity(required.len());
    for name in required {
        if name.as_str().is_some_and(|n| properties.contains_key(n)) && !known.contains(&name) {
            known.push(name);
        }
    }
    if !known.is_empty() {
        out.insert("required".into(), Value::Array(known));
    }
}

/// `format` only where Gemini takes it for the schema's type.
fn keep_supported_format(out: &mut Map<String, Value>) {
    let Some(format) = out.get("format").and_then(Value::as_str) else {
        return;
    };
    let supported = match out.get("type").and_then(Value::as_str) {
        Some("string") => ["enum", "date-time"].contains(&format),
        Some("number") => ["float", "double"].contains(&format),
        Some("integer") => ["int32", "int64"].contains(&format),
        _ => false,
    };
    if !supported {
        out.remove("format");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    #[test]
    fn supported_keywords_are_kept() {
        let schema = json!({
            "type": "object",
            "title": "Meeting",
            "description": "A meeting.",
            "properties": {
                "attendees": {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": 9},
                "when": {"type": "string", "format": "date-time", "pattern": "^2"},
                "room": {"type": "integer", "minimum": 1, "maximum": 99, "format": "int32"},
                "topic": {"type": "string", "minLength": 1, "maxLength": 80},
            },
            "required": ["attendees", "when"],
            "propertyOrdering": ["attendees", "when"],
            "minProperties": 1,
        });
        assert_eq!(reduce(&schema), schema);
    }

    #[test]
    fn unknown_keywords_are_dropped() {
        let schema = json!({
            "$schema": "http://json-schema.org/draft-07/schema#",
            "$id": "https://example.com/s",
            "$comment": "internal",
            "type": "object",
            "additionalProperties": false,
            "properties": {"a": {"type": "string", "default": "x", "examples": ["y"], "not": {}}},
            "patternProperties": {"^x": {}},
        });
        assert_eq!(
            reduce(&schema),
            json!({"type": "object", "properties": {"a": {"type": "string"}}})
        );
    }

    #[test]
    fn refs_are_inlined_with_the_referring_keywords_on_top() {
        let schema = json!({
            "type": "object",
            "properties": {
                "home": {"$ref": "#/$defs/Address", "description": "Where they live."},
                "work": {"$ref": "#/definitions/Address"},
            },
            "$defs": {"Address": {"type": "object", "description": "An address.",
                                  "properties": {"city": {"type": "string"}}}},
            "definitions": {"Address": {"type": "object", "properties": {"zip": {"type": "string"}}}},
        });
        assert_eq!(
            reduce(&schema),
            json!({"type": "object", "properties": {
                "home": {"type": "object", "description": "Where they live.",
                         "properties": {"city": {"type": "string"}}},
                "work": {"type": "object", "properties": {"zip": {"type": "string"}}},
            }})
        );
    }

    #[test]
    fn a_recursive_ref_is_unrolled_then_becomes_an_object() {
        let schema = json!({
            "$ref": "#/$defs/Node",
            "$defs": {"Node": {"type": "object", "properties": {
                "children": {"type": "array", "items": {"$ref": "#/$defs/Node"}}}}},
        });
        let reduced = reduce(&schema);
        let mut node = &reduced;
        for _ in 0..=MAX_RECURSION {
            assert_eq!(node["type"], "object");
            node = &node["properties"]["children"]["items"];
        }
        assert_eq!(node, &json!({"type": "object"}));
    }

    #[test]
    fn an_unresolvable_ref_becomes_an_object() {
        for reference in [
            "#/$defs/Missing",
            "https://example.com/schema.json",
            "#broken",
        ] {
            assert_eq!(
                reduce(&json!({"$ref": reference})),
                json!({"type": "object"}),
                "{reference}"
            );
        }
    }

    #[test]
    fn a_type_list_with_null_becomes_nullable() {
        assert_eq!(
            reduce(&json!({"type": ["string", "null"]})),
            json!({"type": "string", "nullable": true})
        );
        assert_eq!(reduce(&json!({"type": "null"})), json!({"nullable": true}));
        assert_eq!(
            reduce(&json!({"type": ["integer", "string"]})),
            json!({"anyOf": [{"type": "integer"}, {"type": "string"}]})
        );
    }

    #[test]
    fn an_any_of_with_a_null_branch_becomes_nullable() {
        assert_eq!(
            reduce(&json!({"anyOf": [{"type": "string"}, {"type": "null"}], "description": "d"})),
            json!({"type": "string", "description": "d", "nullable": true})
        );
        assert_eq!(
            reduce(&json!({"oneOf": [{"type": "string"}, {"type": "integer"}, {"type": "null"}]})),
            json!({"anyOf": [{"type": "string"}, {"type": "integer"}], "nullable": true})
        );
    }

    #[test]
    fn all_of_branches_are_merged() {
        assert_eq!(
            reduce(
                &json!({"allOf": [{"$ref": "#/$defs/A"}], "description": "mine",
                           "$defs": {"A": {"type": "string", "description": "theirs"}}})
            ),
            json!({"type": "string", "description": "mine"})
        );
        assert_eq!(
            reduce(&json!({"allOf": [
                {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]},
                {"properties": {"b": {"type": "number"}}, "required": ["b"]},
            ]})),
            json!({"type": "object",
                   "properties": {"a": {"type": "string"}, "b": {"type": "number"}},
                   "required": ["a", "b"]})
        );
    }

    #[test]
    fn const_becomes_a_one_value_enum() {
        assert_eq!(
            reduce(&json!({"const": "fixed"})),
            json!({"type": "string", "enum": ["fixed"]})
        );
    }

    #[test]
    fn enums_of_strings_stay_and_others_move_to_the_description() {
        assert_eq!(
            reduce(&json!({"enum": ["a", "b", null]})),
            json!({"type": "string", "enum": ["a", "b"], "nullable": true})
        );
        assert_eq!(
            reduce(&json!({"type": "integer", "enum": [1, 2], "description": "Level."})),
            json!({"type": "integer", "description": "Level.\nOne of: 1, 2."})
        );
        assert_eq!(
            reduce(&json!({"const": true})),
            json!({"description": "One of: true."})
        );
    }

    #[test]
    fn unsupported_formats_are_dropped() {
        assert_eq!(
            reduce(&json!({"type": "string", "format": "uri"})),
            json!({"type": "string"})
        );
        assert_eq!(
            reduce(&json!({"type": "number", "format": "double"})),
            json!({"type": "number", "format": "double"})
        );
        assert_eq!(reduce(&json!({"format": "int64"})), json!({}));
    }

    #[test]
    fn required_keeps_only_known_properties_and_empty_properties_go() {
        assert_eq!(
            reduce(
                &json!({"type": "object", "properties": {"a": {"type": "string"}},
                           "required": ["a", "ghost", "a", 3]})
            ),
            json!({"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]})
        );
        assert_eq!(
            reduce(&json!({"type": "object", "properties": {}, "required": ["a"]})),
            json!({"type": "object"})
        );
    }

    #[test]
    fn values_of_the_wrong_json_type_are_dropped() {
        assert_eq!(
            reduce(
                &json!({"type": 3, "description": 4, "minItems": -1, "items": [{}],
                           "properties": [], "nullable": "yes"})
            ),
            json!({})
        );
        assert_eq!(reduce(&json!(true)), json!({}));
    }

    #[test]
    fn deep_nesting_is_cut() {
        let mut schema = json!({"type": "string"});
        for _ in 0..200 {
            schema = json!({"type": "array", "items": schema});
        }
        let reduced = reduce(&schema);
        let mut depth = 0;
        let mut node = &reduced;
        while let Some(items) = node.get("items") {
            node = items;
            depth += 1;
        }
        assert_eq!(depth, MAX_DEPTH + 1);
        assert_eq!(node, &json!({"type": "object"}));
    }

    #[test]
    fn a_reference_bomb_is_bounded() {
        // Each level refers to the next twice: 2^40 schemas if expanded in full.
        let mut defs = Map::new();
        for level in 0..40 {
            let next = format!("#/$defs/L{}", level + 1);
            defs.insert(
                format!("L{level}"),
                json!({"type": "object", "properties": {"a": {"$ref": next}, "b": {"$ref": next}}}),
            );
        }
        defs.insert("L40".into(), json!({"type": "string"}));
        let schema = json!({"$ref": "#/$defs/L0", "$defs": defs});
        let reduced = reduce(&schema);
        assert_eq!(reduced["type"], "object");
    }

    /// Every keyword at a schema position of `schema` is one Gemini knows.
    fn only_kept_keywords(schema: &Value) -> bool {
        let Value::Object(map) = schema else {
            return false;
        };
        map.iter().all(|(key, value)| {
            KEPT.contains(&key.as_str())
                && match key.as_str() {
                    "properties" => value
                        .as_object()
                        .is_some_and(|p| p.values().all(only_kept_keywords)),
                    "items" => only_kept_keywords(value),
                    "anyOf" => value
                        .as_array()
                        .is_some_and(|b| b.iter().all(only_kept_keywords)),
                    _ => true,
                }
        })
    }

    fn arbitrary_json() -> impl Strategy<Value = Value> {
        let keys = prop::sample::select(vec![
            "type",
            "properties",
            "items",
            "anyOf",
            "oneOf",
            "allOf",
            "$ref",
            "$defs",
            "definitions",
            "const",
            "enum",
            "required",
            "format",
            "nullable",
            "additionalProperties",
            "default",
            "a",
            "b",
        ]);
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            prop::sample::select(vec![
                "string",
                "object",
                "null",
                "array",
                "#/$defs/a",
                "#/$defs/b",
                "#",
                "#/properties/a",
                "date-time",
                "uri",
            ])
            .prop_map(Value::from),
        ];
        leaf.prop_recursive(8, 128, 6, move |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::vec((keys.clone(), inner), 0..6).prop_map(|fields| {
                    Value::Object(fields.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
                }),
            ]
        })
    }

    proptest! {
        #[test]
        fn arbitrary_schemas_reduce_to_known_keywords_only(schema in arbitrary_json()) {
            let reduced = reduce(&schema);
            prop_assert!(only_kept_keywords(&reduced), "{reduced}");
        }
    }
}
