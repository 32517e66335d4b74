//! Anthropic Messages: system messages move to `system`, `stop` becomes `stop_sequences`,
//! `max_tokens` (which Anthropic requires) gets a default, images become image blocks; and its
//! stream events become `chat.completion.chunk`s for the front door.

use std::borrow::Cow;

use actix_web::{
    http::{
        header::{HeaderName, HeaderValue},
        Uri,
    },
    web::Bytes,
};
use serde::{Deserialize, Serialize};

use super::{bad_body, secret_header, ChatProvider, Endpoint, UpstreamRequest};
use crate::{
    chat::{ChatRequest, ChatResponse, Content, Image, JsonObject, Part, Role, Usage},
    completions::{ChunkWriter, StreamTranslator},
    config::Config,
    error::ProxyError,
    sse,
};

const API_KEY: HeaderName = HeaderName::from_static("x-api-key");
const VERSION: HeaderName = HeaderName::from_static("anthropic-version");

pub struct Anthropic {
    endpoint: Endpoint,
    url: Uri,
    version: HeaderValue,
    default_max_tokens: u64,
}

impl Anthropic {
    pub fn new(endpoint: Endpoint, config: &Config) -> Self {
        Self {
            url: endpoint.url("messages"),
            endpoint,
            version: HeaderValue::from_str(&config.anthropic_version)
                .expect("ANTHROPIC_VERSION is validated at start"),
            default_max_tokens: config.anthropic_default_max_tokens,
        }
    }
}

impl ChatProvider for Anthropic {
    fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    fn translate_request(
        &self,
        request: &ChatRequest<'_>,
        model: &str,
        key: Option<&HeaderValue>,
    ) -> Result<UpstreamRequest, ProxyError> {
        let mut headers = Vec::with_capacity(2);
        if let Some(key) = key {
            headers.push((API_KEY, secret_header("", key)));
        }
        headers.push((VERSION, self.version.clone()));
        Ok(UpstreamRequest {
            url: self.url.clone(),
            headers,
            body: translate_body(request, model, self.default_max_tokens)?,
        })
    }

    fn stream_translator(&self) -> Option<Box<dyn StreamTranslator>> {
        Some(Box::new(StreamEvents::default()))
    }

    fn translate_response<'a>(
        &self,
        body: &'a [u8],
        requested_model: &'a str,
    ) -> Result<ChatResponse<'a>, ProxyError> {
        let name = self.endpoint.name;
        let message: MessageResponse =
            serde_json::from_slice(body).map_err(|e| bad_body(name, e))?;
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
            provider: name,
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
fn translate_body(
    request: &ChatRequest<'_>,
    model: &str,
    default_max_tokens: u64,
) -> Result<Bytes, ProxyError> {
    let mut system = Vec::new();
    for (index, message) in request.messages.iter().enumerate() {
        if message.role == Role::System {
            if message.content.has_images() {
                return Err(ProxyError::InvalidRequest(format!(
                    "`messages[{index}].content`: a system message can hold only text"
                )));
            }
            system.push(message.content.text());
        }
    }
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
            "model" => object.field("model", &model)?,
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
            // OpenAI's spellings of what was translated above (or is the proxy's to honour).
            "max_completion_tokens" | "stream_options" => {}
            _ => object.field(name, value)?,
        }
    }
    if !has("max_tokens") {
        object.field(
            "max_tokens",
            &request.max_tokens.unwrap_or(default_max_tokens),
        )?;
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
            content: Blocks<'a>,
        }
        serializer.collect_seq(
            self.0
                .messages
                .iter()
                .filter(|m| m.role != Role::System)
                .map(|m| Turn {
                    role: m.role,
                    content: Blocks(&m.content),
                }),
        )
    }
}

/// A message's content: a string stays a string; parts become text and image blocks.
struct Blocks<'c>(&'c Content<'c>);

impl Serialize for Blocks<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        #[serde(tag = "type", rename_all = "lowercase")]
        enum Block<'a> {
            Text { text: &'a str },
            Image { source: Source<'a> },
        }
        #[derive(Serialize)]
        #[serde(tag = "type", rename_all = "lowercase")]
        enum Source<'a> {
            Base64 { media_type: &'a str, data: &'a str },
            Url { url: &'a str },
        }
        match self.0 {
            Content::Text(text) => serializer.serialize_str(text),
            Content::Parts(parts) => serializer.collect_seq(parts.iter().map(|part| match part {
                Part::Text(text) => Block::Text { text },
                Part::Image(Image::Base64 { media_type, data }) => Block::Image {
                    source: Source::Base64 { media_type, data },
                },
                Part::Image(Image::Url { url, .. }) => Block::Image {
                    source: Source::Url { url },
                },
            })),
        }
    }
}

/// Anthropic's stream events as `chat.completion.chunk`s: `message_start` gives the model,
/// input tokens and the role chunk; text deltas become content; `message_delta` gives the
/// finish reason and output tokens; an `error` event ends the stream with an error, and so
/// does an end without `message_stop`.
#[derive(Default)]
struct StreamEvents {
    stopped: bool,
}

impl StreamTranslator for StreamEvents {
    fn event(&mut self, event: &sse::Event<'_>, out: &mut ChunkWriter) -> Result<(), ProxyError> {
        #[derive(Deserialize)]
        #[serde(tag = "type", rename_all = "snake_case")]
        enum Event<'a> {
            MessageStart {
                #[serde(borrow)]
                message: Start<'a>,
            },
            ContentBlockDelta {
                #[serde(borrow)]
                delta: Delta<'a>,
            },
            MessageDelta {
                #[serde(borrow)]
                delta: Stop<'a>,
                usage: Option<Output>,
            },
            MessageStop,
            Error,
            #[serde(other)]
            Other,
        }
        #[derive(Deserialize)]
        struct Start<'a> {
            #[serde(borrow)]
            model: Option<Cow<'a, str>>,
            usage: Option<Input>,
        }
        #[derive(Deserialize)]
        struct Input {
            input_tokens: u64,
        }
        #[derive(Deserialize)]
        struct Output {
            output_tokens: u64,
        }
        #[derive(Deserialize)]
        struct Delta<'a> {
            #[serde(borrow)]
            text: Option<Cow<'a, str>>,
        }
        #[derive(Deserialize)]
        struct Stop<'a> {
            #[serde(borrow)]
            stop_reason: Option<Cow<'a, str>>,
        }

        let parsed: Event = serde_json::from_str(&event.data)
            .map_err(|e| ProxyError::BadUpstreamBody(format!("anthropic stream event {e}")))?;
        match parsed {
            Event::MessageStart { message } => {
                if let Some(model) = &message.model {
                    out.set_model(model);
                }
                if let Some(usage) = message.usage {
                    out.input_tokens(usage.input_tokens);
                }
                out.start();
            }
            Event::ContentBlockDelta { delta } => {
                // Only text deltas have `text`; thinking and tool-input deltas are not content.
                if let Some(text) = delta.text {
                    out.content(&text);
                }
            }
            Event::MessageDelta { delta, usage } => {
                if let Some(usage) = usage {
                    out.output_tokens(usage.output_tokens);
                }
                if let Some(reason) = delta.stop_reason {
                    out.finish(&normalize_stop_reason(reason));
                }
            }
            Event::MessageStop => self.stopped = true,
            Event::Error => {
                return Err(ProxyError::StreamEvent(Bytes::copy_from_slice(
                    event.data.as_bytes(),
                )))
            }
            Event::Other => {}
        }
        Ok(())
    }

    fn end(&mut self) -> Result<(), ProxyError> {
        if self.stopped {
            return Ok(());
        }
        Err(crate::completions::ended_early(
            "anthropic",
            "message_stop event",
        ))
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
        let endpoint = Endpoint {
            name: "anthropic",
            base_url: "http://upstream.test/v1".into(),
            key_required: true,
            headers: vec![],
        };
        Anthropic::new(endpoint, &Config::default())
    }

    fn translate(body: Value) -> Result<(UpstreamRequest, Value), ProxyError> {
        let body = Bytes::from(body.to_string());
        let request = ChatRequest::parse(&body).unwrap();
        let key = HeaderValue::from_static("sk-ant-test");
        let upstream = provider().translate_request(&request, &request.model, Some(&key))?;
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
    fn max_completion_tokens_becomes_max_tokens() {
        let messages = json!([{"role": "user", "content": "hi"}]);
        let (_, sent) = translate(json!({"model": "c", "messages": messages,
            "max_completion_tokens": 64, "stream_options": {"include_usage": true}}))
        .unwrap();
        assert_eq!(sent["max_tokens"], 64);
        assert!(sent.get("max_completion_tokens").is_none());
        assert!(sent.get("stream_options").is_none());
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
            .translate_request(&request, "c", Some(&HeaderValue::from_static("k")))
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
    fn image_parts_become_image_blocks() {
        let (_, sent) = translate(json!({
            "model": "c",
            "messages": [{"role": "user", "content": [
                {"type": "text", "text": "What is this?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
                {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
            ]}],
        }))
        .unwrap();
        assert_eq!(
            sent["messages"][0]["content"],
            json!([
                {"type": "text", "text": "What is this?"},
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}},
                {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
            ])
        );
    }

    #[test]
    fn the_front_door_model_replaces_the_callers() {
        let body = Bytes::from_static(
            br#"{"model":"anthropic/claude-x","messages":[{"role":"user","content":"hi"}]}"#,
        );
        let request = ChatRequest::parse(&body).unwrap();
        let upstream = provider()
            .translate_request(&request, "claude-x", None)
            .unwrap();
        let sent: Value = serde_json::from_slice(&upstream.body).unwrap();
        assert_eq!(sent["model"], "claude-x");
        assert_eq!(
            upstream.headers.len(),
            1,
            "only the version header without a key"
        );
    }

    #[test]
    fn a_stream_becomes_chat_completion_chunks() {
        let stream = include_bytes!("../../tests/fixtures/anthropic/stream.sse");
        let (text, chunks) = crate::completions::translate_whole_stream(
            provider().stream_translator().unwrap(),
            stream,
        );
        let deltas: Vec<_> = chunks
            .iter()
            .map(|c| c["choices"][0]["delta"].clone())
            .collect();
        assert_eq!(
            deltas[..4],
            [
                json!({"role": "assistant", "content": ""}),
                json!({"content": "¡Hola"}),
                json!({"content": "! 👋 ¿Qué tal?"}),
                json!({}),
            ]
        );
        assert_eq!(chunks[3]["choices"][0]["finish_reason"], "stop");
        assert_eq!(chunks[0]["model"], "claude-3-5-haiku-20241022");
        assert_eq!(
            chunks[4]["usage"],
            json!({"prompt_tokens": 25, "completion_tokens": 15, "total_tokens": 40})
        );
        assert!(text.ends_with("data: [DONE]\n\n"));
    }

    #[test]
    fn a_stream_without_message_stop_is_incomplete() {
        let stream = include_bytes!("../../tests/fixtures/anthropic/stream.sse");
        let text = std::str::from_utf8(stream).unwrap();
        let cut = &text[..text.find("event: message_stop").unwrap()];
        let mut translator = provider().stream_translator().unwrap();
        let mut out = ChunkWriter::new("m", false);
        sse::Parser::default()
            .feed(cut.as_bytes(), |event| translator.event(&event, &mut out))
            .unwrap();
        let err = translator.end().unwrap_err();
        assert!(err.to_string().contains("message_stop"), "{err}");
        let mut whole = provider().stream_translator().unwrap();
        sse::Parser::default()
            .feed(stream, |event| whole.event(&event, &mut out))
            .unwrap();
        assert!(whole.end().is_ok());
    }

    #[test]
    fn an_error_event_ends_the_stream_with_its_data() {
        let mut translator = provider().stream_translator().unwrap();
        let mut out = ChunkWriter::new("m", false);
        let event = sse::Event {
            name: Some("error"),
            data: r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#
                .into(),
        };
        let err = translator.event(&event, &mut out).unwrap_err();
        assert!(matches!(err, ProxyError::StreamEvent(_)));
        assert_eq!(err.to_string(), "upstream stream failed: Overloaded");
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
