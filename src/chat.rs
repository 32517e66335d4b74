//! The caller's chat request (parsed and validated, borrowing from the body) and the normalized
//! response every provider answers with.

use std::{borrow::Cow, fmt};

use actix_web::web::Bytes;
use serde::{
    de::{MapAccess, Visitor},
    Deserialize, Deserializer, Serialize,
};
use serde_json::value::RawValue;

/// One chat request, as the caller sent it to `POST /v1/chat/{provider}`.
///
/// Strings borrow from the body where they can; `fields` keeps every top-level field in the
/// order it came, raw, so translations can forward what they do not understand unchanged.
#[derive(Debug)]
pub struct ChatRequest<'a> {
    pub model: Cow<'a, str>,
    pub messages: Vec<Message<'a>>,
    pub stream: bool,
    pub max_tokens: Option<u64>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    /// `stop` as a list: a single string becomes a list of one.
    pub stop: Option<Vec<Cow<'a, str>>>,
    pub fields: Vec<(Cow<'a, str>, &'a RawValue)>,
    /// The body exactly as received.
    pub body: &'a Bytes,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    System,
    User,
    Assistant,
}

#[derive(Debug)]
pub struct Message<'a> {
    pub role: Role,
    pub content: Cow<'a, str>,
}

/// A string that borrows from the input when it has no escapes.
#[derive(Deserialize)]
struct Text<'a>(#[serde(borrow)] Cow<'a, str>);

/// The fields of an object, in order, values left raw.
struct Fields<'a>(Vec<(Cow<'a, str>, &'a RawValue)>);

impl<'de> Deserialize<'de> for Fields<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct FieldsVisitor;
        impl<'de> Visitor<'de> for FieldsVisitor {
            type Value = Fields<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut fields = Vec::with_capacity(map.size_hint().unwrap_or(8));
                while let Some((Text(key), value)) = map.next_entry::<Text, &RawValue>()? {
                    fields.push((key, value));
                }
                Ok(Fields(fields))
            }
        }
        deserializer.deserialize_map(FieldsVisitor)
    }
}

impl<'a> ChatRequest<'a> {
    /// Parses and validates a body. The error names the field that is wrong.
    pub fn parse(body: &'a Bytes) -> Result<Self, String> {
        let Fields(fields) = serde_json::from_slice(body).map_err(|e| {
            if e.is_data() {
                "the request body must be a JSON object".to_owned()
            } else {
                format!("the request body is not valid JSON: {e}")
            }
        })?;

        let mut model = None;
        let mut messages = None;
        let mut request = ChatRequest {
            model: Cow::Borrowed(""),
            messages: Vec::new(),
            stream: false,
            max_tokens: None,
            temperature: None,
            top_p: None,
            stop: None,
            fields: Vec::new(),
            body,
        };
        for (index, (name, value)) in fields.iter().enumerate() {
            let known = matches!(
                name.as_ref(),
                "model" | "messages" | "stream" | "max_tokens" | "temperature" | "top_p" | "stop"
            );
            if known && fields[..index].iter().any(|(seen, _)| seen == name) {
                return Err(format!("`{name}` appears more than once"));
            }
            let value: &'a RawValue = value;
            // An optional field sent as null counts as absent.
            if value.get() == "null" {
                continue;
            }
            match name.as_ref() {
                "model" => model = Some(parse_model(value)?),
                "messages" => messages = Some(parse_messages(value)?),
                "stream" => {
                    request.stream = serde_json::from_str(value.get())
                        .map_err(|_| "`stream` must be true or false".to_owned())?
                }
                "max_tokens" => match serde_json::from_str::<u64>(value.get()) {
                    Ok(n) if n > 0 => request.max_tokens = Some(n),
                    _ => return Err("`max_tokens` must be a positive integer".into()),
                },
                "temperature" => request.temperature = Some(parse_number("temperature", value)?),
                "top_p" => request.top_p = Some(parse_number("top_p", value)?),
                "stop" => request.stop = Some(parse_stop(value)?),
                _ => {}
            }
        }
        request.model = model.ok_or("`model` is required")?;
        request.messages = messages.ok_or("`messages` is required")?;
        request.fields = fields;
        Ok(request)
    }
}

fn parse_model(value: &RawValue) -> Result<Cow<'_, str>, String> {
    match serde_json::from_str::<Text>(value.get()) {
        Ok(Text(model)) if !model.is_empty() => Ok(model),
        _ => Err("`model` must be a non-empty string".into()),
    }
}

fn parse_number(name: &str, value: &RawValue) -> Result<f64, String> {
    serde_json::from_str(value.get()).map_err(|_| format!("`{name}` must be a number"))
}

fn parse_stop(value: &RawValue) -> Result<Vec<Cow<'_, str>>, String> {
    if let Ok(Text(one)) = serde_json::from_str::<Text>(value.get()) {
        return Ok(vec![one]);
    }
    serde_json::from_str::<Vec<Text>>(value.get())
        .map(|all| all.into_iter().map(|Text(s)| s).collect())
        .map_err(|_| "`stop` must be a string or an array of strings".into())
}

fn parse_messages(value: &RawValue) -> Result<Vec<Message<'_>>, String> {
    let raw: Vec<&RawValue> = serde_json::from_str(value.get())
        .map_err(|_| "`messages` must be an array of messages".to_owned())?;
    if raw.is_empty() {
        return Err("`messages` must not be empty".into());
    }
    raw.into_iter()
        .enumerate()
        .map(|(i, message)| parse_message(i, message))
        .collect()
}

fn parse_message(index: usize, value: &RawValue) -> Result<Message<'_>, String> {
    #[derive(Deserialize)]
    struct RawMessage<'a> {
        #[serde(borrow)]
        role: Option<&'a RawValue>,
        #[serde(borrow)]
        content: Option<&'a RawValue>,
    }
    let message: RawMessage = serde_json::from_str(value.get())
        .map_err(|_| format!("`messages[{index}]` must be an object with `role` and `content`"))?;
    let role = message
        .role
        .ok_or_else(|| format!("`messages[{index}].role` is required"))?;
    let role = serde_json::from_str(role.get()).map_err(|_| {
        format!("`messages[{index}].role` must be one of \"system\", \"user\", \"assistant\"")
    })?;
    let content = message
        .content
        .ok_or_else(|| format!("`messages[{index}].content` is required"))?;
    let Text(content) = serde_json::from_str(content.get())
        .map_err(|_| format!("`messages[{index}].content` must be a string"))?;
    Ok(Message { role, content })
}

/// The one response shape every provider's answer becomes.
#[derive(Debug, Serialize, PartialEq)]
pub struct ChatResponse<'a> {
    pub provider: &'a str,
    pub model: Cow<'a, str>,
    pub content: Cow<'a, str>,
    /// In one vocabulary across providers: `stop`, `length`, `tool_calls`, `content_filter`,
    /// or the upstream's own value when it has no equivalent.
    pub stop_reason: Option<Cow<'a, str>>,
    /// The upstream's own stop reason, unmapped.
    pub native_stop_reason: Option<Cow<'a, str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
}

#[derive(Debug, Serialize, PartialEq, Eq, Clone, Copy)]
pub struct Usage {
    pub input_tokens: u64,
    pub output_tokens: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<ChatRequest<'static>, String> {
        let body: &'static Bytes = Box::leak(Box::new(Bytes::from(json.to_owned())));
        ChatRequest::parse(body)
    }

    const HI: &str = r#"[{"role":"user","content":"hi"}]"#;

    #[test]
    fn a_full_request_parses() {
        let request = parse(
            r#"{"model":"m","messages":[{"role":"system","content":"be brief"},
                {"role":"user","content":"hi"}],"stream":true,"max_tokens":5,
                "temperature":0.2,"top_p":1,"stop":["x","y"],"seed":7}"#,
        )
        .unwrap();
        assert_eq!(request.model, "m");
        assert_eq!(request.messages.len(), 2);
        assert_eq!(request.messages[0].role, Role::System);
        assert_eq!(request.messages[1].content, "hi");
        assert!(request.stream);
        assert_eq!(request.max_tokens, Some(5));
        assert_eq!(request.temperature, Some(0.2));
        assert_eq!(request.top_p, Some(1.0));
        assert_eq!(request.stop, Some(vec!["x".into(), "y".into()]));
        let names: Vec<_> = request.fields.iter().map(|(k, _)| k.as_ref()).collect();
        assert_eq!(
            names,
            [
                "model",
                "messages",
                "stream",
                "max_tokens",
                "temperature",
                "top_p",
                "stop",
                "seed"
            ]
        );
    }

    #[test]
    fn strings_without_escapes_borrow_from_the_body() {
        let request = parse(&format!(r#"{{"model":"m","messages":{HI}}}"#)).unwrap();
        assert!(matches!(request.model, Cow::Borrowed(_)));
        assert!(matches!(request.messages[0].content, Cow::Borrowed(_)));
        let escaped =
            parse(r#"{"model":"m","messages":[{"role":"user","content":"a\nb"}]}"#).unwrap();
        assert_eq!(escaped.messages[0].content, "a\nb");
    }

    #[test]
    fn a_single_stop_string_becomes_a_list() {
        let request = parse(&format!(r#"{{"model":"m","messages":{HI},"stop":"END"}}"#)).unwrap();
        assert_eq!(request.stop, Some(vec!["END".into()]));
    }

    #[test]
    fn null_optional_fields_count_as_absent() {
        let request = parse(&format!(
            r#"{{"model":"m","messages":{HI},"stream":null,"max_tokens":null,"temperature":null,"top_p":null,"stop":null}}"#
        ))
        .unwrap();
        assert!(!request.stream);
        assert_eq!(request.max_tokens, None);
        assert_eq!(request.temperature, None);
        assert_eq!(request.stop, None);
    }

    #[test]
    fn each_bad_input_names_what_is_wrong() {
        let cases = [
            ("not json", "not valid JSON"),
            ("[1,2]", "must be a JSON object"),
            (
                r#"{"messages":[{"role":"user","content":"hi"}]}"#,
                "`model` is required",
            ),
            (
                r#"{"model":null,"messages":[{"role":"user","content":"hi"}]}"#,
                "`model` is required",
            ),
            (
                r#"{"model":"","messages":[{"role":"user","content":"hi"}]}"#,
                "`model` must be a non-empty string",
            ),
            (
                r#"{"model":5,"messages":[{"role":"user","content":"hi"}]}"#,
                "`model` must be a non-empty string",
            ),
            (r#"{"model":"m"}"#, "`messages` is required"),
            (
                r#"{"model":"m","messages":[]}"#,
                "`messages` must not be empty",
            ),
            (
                r#"{"model":"m","messages":"hi"}"#,
                "`messages` must be an array",
            ),
            (
                r#"{"model":"m","messages":[1]}"#,
                "`messages[0]` must be an object",
            ),
            (
                r#"{"model":"m","messages":[{"content":"hi"}]}"#,
                "`messages[0].role` is required",
            ),
            (
                r#"{"model":"m","messages":[{"role":"user","content":"a"},{"role":"bot","content":"hi"}]}"#,
                "`messages[1].role` must be one of",
            ),
            (
                r#"{"model":"m","messages":[{"role":"user"}]}"#,
                "`messages[0].content` is required",
            ),
            (
                r#"{"model":"m","messages":[{"role":"user","content":[{"type":"text","text":"hi"}]}]}"#,
                "`messages[0].content` must be a string",
            ),
            (
                r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"stream":"yes"}"#,
                "`stream` must be true or false",
            ),
            (
                r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"max_tokens":0}"#,
                "`max_tokens` must be a positive integer",
            ),
            (
                r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"max_tokens":-3}"#,
                "`max_tokens` must be a positive integer",
            ),
            (
                r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"max_tokens":1.5}"#,
                "`max_tokens` must be a positive integer",
            ),
            (
                r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"temperature":"hot"}"#,
                "`temperature` must be a number",
            ),
            (
                r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"top_p":[]}"#,
                "`top_p` must be a number",
            ),
            (
                r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"stop":[1]}"#,
                "`stop` must be a string or an array of strings",
            ),
            (
                r#"{"model":"a","model":"b","messages":[{"role":"user","content":"hi"}]}"#,
                "`model` appears more than once",
            ),
        ];
        for (body, expected) in cases {
            let err = parse(body).unwrap_err();
            assert!(
                err.contains(expected),
                "{body}: got {err:?}, want {expected:?}"
            );
        }
    }

    #[test]
    fn usage_is_left_out_of_the_response_when_absent() {
        let response = ChatResponse {
            provider: "openai",
            model: "m".into(),
            content: "hi".into(),
            stop_reason: None,
            native_stop_reason: None,
            usage: None,
        };
        assert_eq!(
            serde_json::to_string(&response).unwrap(),
            r#"{"provider":"openai","model":"m","content":"hi","stop_reason":null,"native_stop_reason":null}"#
        );
    }
}
