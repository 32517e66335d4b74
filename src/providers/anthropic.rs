//! Anthropic Messages: system messages move to `system`, `stop` becomes `stop_sequences`, and
//! `max_tokens` (which Anthropic requires) gets a default.

use std::{borrow::Cow, io::Write};

use actix_web::{
    http::{
        header::{HeaderName, HeaderValue},
        Uri,
    },
    web::Bytes,
};
use serde::{Deserialize, Serialize};

use super::{bad_body, endpoint, secret_header, ChatProvider, UpstreamRequest};
use crate::{
    chat::{ChatRequest, ChatResponse, Role, Usage},
    config::Config,
    error::ProxyError,
};

pub const NAME: &str = "anthropic";

const API_KEY: HeaderName = HeaderName::from_static("x-api-key");
const VERSION: HeaderName = HeaderName::from_static("anthropic-version");

pub struct Anthropic {
    url: Uri,
    version: HeaderValue,
    default_max_tokens: u64,
}

impl Anthropic {
    pub fn new(config: &Config) -> Self {
        Self {
            url: endpoint(&config.anthropic_base_url, "messages"),
            version: HeaderValue::from_str(&config.anthropic_version)
                .expect("ANTHROPIC_VERSION is validated at start"),
            default_max_tokens: config.anthropic_default_max_tokens,
        }
    }
}

impl ChatProvider for Anthropic {
    fn name(&self) -> &'static str {
        NAME
    }

    fn translate_request(
        &self,
        request: &ChatRequest<'_>,
        key: &HeaderValue,
    ) -> Result<UpstreamRequest, ProxyError> {
        Ok(UpstreamRequest {
            url: self.url.clone(),
            headers: vec![
                (API_KEY, secret_header("", key)),
                (VERSION, self.version.clone()),
            ],
            body: translate_body(request, self.default_max_tokens)?,
        })
    }

    fn translate_response<'a>(
        &self,
        body: &'a [u8],
        requested_model: &'a str,
    ) -> Result<ChatResponse<'a>, ProxyError> {
        let message: MessageResponse =
            serde_json::from_slice(body).map_err(|e| bad_body(NAME, e))?;
        let mut texts = message
            .content
            .into_iter()
            .filter(|block| block.kind == "text")
            .filter_map(|block| block.text);
        // One text block is the common case: borrow it rather than copy.
        let content = match (texts.next(), texts.next()) {
            (None, _) => Cow::Borrowed(""),
            (Some(only), None) => only,
            (Some(first), Some(second)) => {
                let mut all = first.into_owned();
                all.push_str(&second);
                texts.for_each(|text| all.push_str(&text));
                Cow::Owned(all)
            }
        };
        Ok(ChatResponse {
            provider: NAME,
            model: message.model.unwrap_or(Cow::Borrowed(requested_model)),
            content,
            stop_reason: message.stop_reason.clone().map(normalize_stop_reason),
            native_stop_reason: message.stop_reason,
            usage: message.usage.map(|u| Usage {
                input_tokens: u.input_tokens,
                output_tokens: u.output_tokens,
            }),
        })
    }
}

/// Anthropic's stop reasons in the shared vocabulary; unknown ones pass through as they came.
pub fn normalize_stop_reason(reason: Cow<'_, str>) -> Cow<'_, str> {
    match reason.as_ref() {
        "end_turn" | "stop_sequence" => "stop".into(),
        "max_tokens" => "length".into(),
        "tool_use" => "tool_calls".into(),
        "refusal" => "content_filter".into(),
        _ => reason,
    }
}

/// Writes the Messages API body: fields in the caller's order, with ours changed in place.
fn translate_body(request: &ChatRequest<'_>, default_max_tokens: u64) -> Result<Bytes, ProxyError> {
    let system: Vec<&str> = request
        .messages
        .iter()
        .filter(|m| m.role == Role::System)
        .map(|m| m.content.as_ref())
        .collect();
    let has = |name: &str| request.fields.iter().any(|(k, _)| k == name);
    if !system.is_empty() && has("system") {
        return Err(ProxyError::InvalidRequest(
            "send the system prompt either as `system` messages or as a top-level `system`, not both"
                .into(),
        ));
    }
    if request.stop.is_some() && has("stop_sequences") {
        return Err(ProxyError::InvalidRequest(
            "send either `stop` or `stop_sequences`, not both".into(),
        ));
    }

    let mut out = Vec::with_capacity(request.body.len() + 64);
    let mut object = JsonObject::new(&mut out);
    for (name, value) in &request.fields {
        match name.as_ref() {
            "messages" => object.field("messages", &ConversationMessages(request))?,
            "max_tokens" => {
                let max_tokens = request.max_tokens.unwrap_or(default_max_tokens);
                object.field("max_tokens", &max_tokens)?
            }
            "stop" => {
                if let Some(stop) = &request.stop {
                    object.field("stop_sequences", stop)?
                }
            }
            // Known optional fields sent as null are absent; Anthropic rejects the nulls.
            "stream" | "temperature" | "top_p" if value.get() == "null" => {}
            _ => object.field(name, value)?,
        }
    }
    if request.max_tokens.is_none() && !has("max_tokens") {
        object.field("max_tokens", &default_max_tokens)?;
    }
    if !system.is_empty() {
        object.field("system", &system.join("\n\n"))?;
    }
    object.end();
    Ok(Bytes::from(out))
}

/// The non-system messages, as Anthropic's `[{"role", "content"}]`.
struct ConversationMessages<'r, 'a>(&'r ChatRequest<'a>);

impl Serialize for ConversationMessages<'_, '_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Turn<'a> {
            role: Role,
            content: &'a str,
        }
        serializer.collect_seq(
            self.0
                .messages
                .iter()
                .filter(|m| m.role != Role::System)
                .map(|m| Turn {
                    role: m.role,
                    content: &m.content,
                }),
        )
    }
}

/// Writes a JSON object one field at a time, so raw values can be copied in unparsed.
struct JsonObject<'w> {
    out: &'w mut Vec<u8>,
    empty: bool,
}

impl<'w> JsonObject<'w> {
    fn new(out: &'w mut Vec<u8>) -> Self {
        out.push(b'{');
        Self { out, empty: true }
    }

    fn field(&mut self, name: &str, value: &impl Serialize) -> Result<(), ProxyError> {
        if !self.empty {
            self.out.push(b',');
        }
        self.empty = false;
        let write = |out: &mut Vec<u8>| -> serde_json::Result<()> {
            serde_json::to_writer(&mut *out, name)?;
            out.write_all(b":").map_err(serde_json::Error::io)?;
            serde_json::to_writer(&mut *out, value)
        };
        write(self.out).map_err(|e| ProxyError::InvalidRequest(format!("`{name}`: {e}")))
    }

    fn end(self) {
        self.out.push(b'}');
    }
}

#[derive(Deserialize)]
struct MessageResponse<'a> {
    #[serde(borrow)]
    model: Option<Cow<'a, str>>,
    #[serde(borrow)]
    content: Vec<ContentBlock<'a>>,
    #[serde(borrow)]
    stop_reason: Option<Cow<'a, str>>,
    usage: Option<MessageUsage>,
}

#[derive(Deserialize)]
struct ContentBlock<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(borrow)]
    text: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct MessageUsage {
    #[serde(default)]
    input_tokens: u64,
    #[serde(default)]
    output_tokens: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn provider() -> Anthropic {
        Anthropic::new(&Config {
            anthropic_base_url: "http://upstream.test/v1".into(),
            anthropic_default_max_tokens: 1024,
            ..Config::default()
        })
    }

    fn translate(body: Value) -> Result<(UpstreamRequest, Value), ProxyError> {
        let body = Bytes::from(body.to_string());
        let request = ChatRequest::parse(&body).unwrap();
        let upstream =
            provider().translate_request(&request, &HeaderValue::from_static("sk-ant-test"))?;
        let sent = serde_json::from_slice(&upstream.body).unwrap();
        Ok((upstream, sent))
    }

    #[test]
    fn auth_maps_to_x_api_key_and_version() {
        let (upstream, _) =
            translate(json!({"model": "claude", "messages": [{"role": "user", "content": "hi"}]}))
                .unwrap();
        assert_eq!(upstream.url, "http://upstream.test/v1/messages");
        assert_eq!(upstream.headers[0].0, "x-api-key");
        assert_eq!(upstream.headers[0].1, "sk-ant-test");
        assert!(upstream.headers[0].1.is_sensitive());
        assert_eq!(upstream.headers[1].0, "anthropic-version");
        assert_eq!(upstream.headers[1].1, "2023-06-01");
    }

    #[test]
    fn system_messages_move_to_top_level_joined_by_a_blank_line() {
        let (_, sent) = translate(json!({
            "model": "claude",
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "hi"},
                {"role": "system", "content": "Be kind."},
                {"role": "assistant", "content": "hello"},
            ],
        }))
        .unwrap();
        assert_eq!(sent["system"], "Be brief.\n\nBe kind.");
        assert_eq!(
            sent["messages"],
            json!([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}])
        );
    }

    #[test]
    fn max_tokens_defaults_when_absent_or_null_and_is_kept_when_given() {
        let messages = json!([{"role": "user", "content": "hi"}]);
        let (_, sent) = translate(json!({"model": "c", "messages": messages})).unwrap();
        assert_eq!(sent["max_tokens"], 1024);
        let (_, sent) =
            translate(json!({"model": "c", "messages": messages, "max_tokens": null})).unwrap();
        assert_eq!(sent["max_tokens"], 1024);
        let (_, sent) =
            translate(json!({"model": "c", "messages": messages, "max_tokens": 7})).unwrap();
        assert_eq!(sent["max_tokens"], 7);
    }

    #[test]
    fn stop_becomes_stop_sequences() {
        let messages = json!([{"role": "user", "content": "hi"}]);
        let (_, sent) =
            translate(json!({"model": "c", "messages": messages, "stop": "END"})).unwrap();
        assert_eq!(sent["stop_sequences"], json!(["END"]));
        assert!(sent.get("stop").is_none());
        let (_, sent) =
            translate(json!({"model": "c", "messages": messages, "stop": ["a", "b"]})).unwrap();
        assert_eq!(sent["stop_sequences"], json!(["a", "b"]));
    }

    #[test]
    fn other_fields_pass_in_order_and_nulls_of_known_fields_are_dropped() {
        let body = Bytes::from_static(
            br#"{"metadata":{"user_id":"u1"},"model":"c","temperature":null,"messages":[{"role":"user","content":"hi"}],"top_k":5,"stream":true}"#,
        );
        let request = ChatRequest::parse(&body).unwrap();
        let upstream = provider()
            .translate_request(&request, &HeaderValue::from_static("k"))
            .unwrap();
        assert_eq!(
            std::str::from_utf8(&upstream.body).unwrap(),
            r#"{"metadata":{"user_id":"u1"},"model":"c","messages":[{"role":"user","content":"hi"}],"top_k":5,"stream":true,"max_tokens":1024}"#
        );
    }

    #[test]
    fn a_system_prompt_in_both_places_is_refused() {
        let err = translate(json!({
            "model": "c", "system": "a",
            "messages": [{"role": "system", "content": "b"}, {"role": "user", "content": "hi"}],
        }))
        .unwrap_err();
        assert!(matches!(err, ProxyError::InvalidRequest(_)));
    }

    #[test]
    fn a_message_is_normalized() {
        let body = include_bytes!("../../tests/fixtures/anthropic/message.json");
        let response = provider().translate_response(body, "claude").unwrap();
        assert_eq!(
            response,
            ChatResponse {
                provider: "anthropic",
                model: "claude-3-5-haiku-20241022".into(),
                content: "Hello! How can I help you today?".into(),
                stop_reason: Some("stop".into()),
                native_stop_reason: Some("end_turn".into()),
                usage: Some(Usage {
                    input_tokens: 12,
                    output_tokens: 10
                }),
            }
        );
    }

    #[test]
    fn text_blocks_are_concatenated_in_order_and_others_skipped() {
        let body = br#"{"model":"c","content":[{"type":"text","text":"a"},
            {"type":"tool_use","id":"t","name":"f","input":{}},{"type":"text","text":"b"},
            {"type":"text","text":"c"}],"stop_reason":"tool_use","usage":{"input_tokens":1,"output_tokens":2}}"#;
        let response = provider().translate_response(body, "c").unwrap();
        assert_eq!(response.content, "abc");
        assert_eq!(response.stop_reason.as_deref(), Some("tool_calls"));
    }

    #[test]
    fn stop_reasons_map_to_the_shared_vocabulary() {
        for (native, normal) in [
            ("end_turn", "stop"),
            ("stop_sequence", "stop"),
            ("max_tokens", "length"),
            ("tool_use", "tool_calls"),
            ("refusal", "content_filter"),
            ("pause_turn", "pause_turn"),
        ] {
            assert_eq!(normalize_stop_reason(native.into()), normal);
        }
    }

    #[test]
    fn bodies_without_content_are_bad_gateway() {
        for body in [&b"{}"[..], b"[]", b"not json", br#"{"content":null}"#] {
            let err = provider().translate_response(body, "c").unwrap_err();
            assert!(matches!(err, ProxyError::BadUpstreamBody(_)), "{err:?}");
        }
    }
}
