//! Google Gemini `generateContent`: messages become `contents` (the assistant is `model`),
//! system messages `systemInstruction`, sampling settings `generationConfig`; the key goes in
//! `x-goog-api-key`, never in the URL where logs would keep it.

use std::borrow::Cow;

use actix_web::{
    http::header::{HeaderName, HeaderValue},
    web::Bytes,
};
use serde::{Deserialize, Serialize};
use serde_json::{value::RawValue, Map, Value};

use super::{bad_body, secret_header, ChatProvider, Endpoint, UpstreamRequest};
use crate::{
    chat::{ChatRequest, ChatResponse, Content, Image, JsonObject, Part, Role, Usage},
    completions::{ChunkWriter, StreamTranslator},
    error::ProxyError,
    sse,
};

const API_KEY: HeaderName = HeaderName::from_static("x-goog-api-key");

/// The fields this translation consumes; every other top-level field is forwarded as given
/// (`safetySettings`, `tools`, ...).
const TRANSLATED: [&str; 9] = [
    "model",
    "messages",
    "stream",
    "max_tokens",
    "max_completion_tokens",
    "stream_options",
    "temperature",
    "top_p",
    "stop",
];

pub struct Gemini {
    endpoint: Endpoint,
}

impl Gemini {
    pub fn new(endpoint: Endpoint) -> Self {
        Self { endpoint }
    }
}

impl ChatProvider for Gemini {
    fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    fn translate_request(
        &self,
        request: &ChatRequest<'_>,
        model: &str,
        key: Option<&HeaderValue>,
    ) -> Result<UpstreamRequest, ProxyError> {
        // The model becomes part of the URL path: only a plain name may get there.
        let model = model.strip_prefix("models/").unwrap_or(model);
        let plain = |b: u8| b.is_ascii_alphanumeric() || b"-_.".contains(&b);
        if model.is_empty() || !model.bytes().all(plain) {
            return Err(ProxyError::InvalidRequest(format!(
                "`model` {model:?} is not a Gemini model name (letters, digits, `-`, `_`, `.`)"
            )));
        }
        let path = if request.stream {
            format!("models/{model}:streamGenerateContent?alt=sse")
        } else {
            format!("models/{model}:generateContent")
        };
        Ok(UpstreamRequest {
            url: self.endpoint.url(&path),
            headers: key
                .map(|key| (API_KEY, secret_header("", key)))
                .into_iter()
                .collect(),
            body: translate_body(request)?,
        })
    }

    fn translate_response<'a>(
        &self,
        body: &'a [u8],
        requested_model: &'a str,
    ) -> Result<ChatResponse<'a>, ProxyError> {
        let name = self.endpoint.name;
        let response: Generated = serde_json::from_slice(body).map_err(|e| bad_body(name, e))?;
        let (content, native_stop_reason) = match response.candidates.into_iter().next() {
            Some(mut candidate) => {
                let reason = candidate.finish_reason.take();
                (candidate.text(), reason)
            }
            // A blocked prompt has no candidates, only the reason it was blocked.
            None => match response.prompt_feedback.and_then(|f| f.block_reason) {
                Some(reason) => (Cow::Borrowed(""), Some(reason)),
                None => return Err(bad_body(name, "has no candidates")),
            },
        };
        let blocked = content.is_empty() && native_stop_reason.is_some();
        Ok(ChatResponse {
            provider: name,
            model: response
                .model_version
                .unwrap_or(Cow::Borrowed(requested_model)),
            content,
            stop_reason: native_stop_reason
                .clone()
                .map(|reason| normalize_stop_reason(reason, blocked)),
            native_stop_reason,
            usage: response.usage_metadata.map(Usage::from),
        })
    }

    fn stream_translator(&self) -> Option<Box<dyn StreamTranslator>> {
        Some(Box::new(StreamEvents::default()))
    }
}

/// Gemini's finish reasons in the shared vocabulary; unknown ones pass through as they came.
/// `blocked` marks a prompt refused before any candidate, whatever its reason.
pub fn normalize_stop_reason(reason: Cow<'_, str>, blocked: bool) -> Cow<'_, str> {
    match reason.as_ref() {
        "STOP" => "stop".into(),
        "MAX_TOKENS" => "length".into(),
        "SAFETY" | "RECITATION" | "BLOCKLIST" | "PROHIBITED_CONTENT" | "SPII" => {
            "content_filter".into()
        }
        _ if blocked => "content_filter".into(),
        _ => reason,
    }
}

/// Writes the `generateContent` body: our fields translated, the caller's others as given.
fn translate_body(request: &ChatRequest<'_>) -> Result<Bytes, ProxyError> {
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
    let mut out = Vec::with_capacity(request.body.len() + 128);
    let mut object = JsonObject::new(&mut out);
    object.field("contents", &Contents(request))?;
    if !system.is_empty() {
        let text = system.join("\n\n");
        object.field(
            "systemInstruction",
            &serde_json::json!({"parts": [{"text": text}]}),
        )?;
    }
    let config = generation_config(request)?;
    if !config.is_empty() {
        object.field("generationConfig", &config)?;
    }
    for (name, value) in &request.fields {
        if !TRANSLATED.contains(&name.as_ref()) && name != "generationConfig" {
            object.field(name, value)?;
        }
    }
    object.end();
    Ok(Bytes::from(out))
}

/// The caller's own `generationConfig`, if any, with ours set on top.
fn generation_config(request: &ChatRequest<'_>) -> Result<Map<String, Value>, ProxyError> {
    let given = request
        .fields
        .iter()
        .find(|(name, _)| name == "generationConfig")
        .map(|(_, value)| *value);
    let mut config: Map<String, Value> = match given {
        Some(raw) => serde_json::from_str(raw.get()).map_err(|_| {
            ProxyError::InvalidRequest("`generationConfig` must be an object".into())
        })?,
        None => Map::new(),
    };
    if let Some(max_tokens) = request.max_tokens {
        config.insert("maxOutputTokens".into(), max_tokens.into());
    }
    if let Some(temperature) = request.temperature {
        config.insert("temperature".into(), temperature.into());
    }
    if let Some(top_p) = request.top_p {
        config.insert("topP".into(), top_p.into());
    }
    if let Some(stop) = &request.stop {
        config.insert(
            "stopSequences".into(),
            stop.iter().map(|s| s.as_ref()).collect(),
        );
    }
    Ok(config)
}

/// The non-system messages as `contents`: `[{"role": "user"|"model", "parts": [...]}]`.
struct Contents<'r, 'a>(&'r ChatRequest<'a>);

impl Serialize for Contents<'_, '_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Turn<'a> {
            role: &'static str,
            parts: Parts<'a>,
        }
        serializer.collect_seq(
            self.0
                .messages
                .iter()
                .filter(|m| m.role != Role::System)
                .map(|m| Turn {
                    role: if m.role == Role::Assistant {
                        "model"
                    } else {
                        "user"
                    },
                    parts: Parts(&m.content),
                }),
        )
    }
}

/// A message's content as Gemini parts: text, `inline_data` or `file_data`.
struct Parts<'c>(&'c Content<'c>);

impl Serialize for Parts<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        enum GeminiPart<'a> {
            Text(&'a str),
            InlineData {
                mime_type: &'a str,
                data: &'a str,
            },
            FileData {
                mime_type: &'a str,
                file_uri: &'a str,
            },
        }
        /// Serializes as `{"text": ...}` or `{"inline_data": {...}}`: one key per part.
        struct One<'a>(GeminiPart<'a>);
        impl Serialize for One<'_> {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                use serde::ser::SerializeMap;
                let mut map = serializer.serialize_map(Some(1))?;
                match &self.0 {
                    GeminiPart::Text(text) => map.serialize_entry("text", text)?,
                    GeminiPart::InlineData { mime_type, data } => map.serialize_entry(
                        "inline_data",
                        &serde_json::json!({"mime_type": mime_type, "data": data}),
                    )?,
                    GeminiPart::FileData {
                        mime_type,
                        file_uri,
                    } => map.serialize_entry(
                        "file_data",
                        &serde_json::json!({"mime_type": mime_type, "file_uri": file_uri}),
                    )?,
                }
                map.end()
            }
        }
        fn part<'p>(part: &'p Part<'p>) -> One<'p> {
            One(match part {
                Part::Text(text) => GeminiPart::Text(text),
                Part::Image(Image::Base64 { media_type, data }) => GeminiPart::InlineData {
                    mime_type: media_type,
                    data,
                },
                Part::Image(Image::Url { url, media_type }) => GeminiPart::FileData {
                    mime_type: media_type,
                    file_uri: url,
                },
            })
        }
        match self.0 {
            Content::Text(text) => serializer.collect_seq([One(GeminiPart::Text(text))]),
            Content::Parts(parts) => serializer.collect_seq(parts.iter().map(part)),
        }
    }
}

/// A `GenerateContentResponse`: the whole answer, or one event of a stream.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Generated<'a> {
    #[serde(default, borrow)]
    candidates: Vec<Candidate<'a>>,
    #[serde(borrow)]
    prompt_feedback: Option<PromptFeedback<'a>>,
    usage_metadata: Option<UsageMetadata>,
    #[serde(borrow)]
    model_version: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Candidate<'a> {
    #[serde(borrow)]
    content: Option<CandidateContent<'a>>,
    #[serde(borrow)]
    finish_reason: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct CandidateContent<'a> {
    #[serde(default, borrow)]
    parts: Vec<ResponsePart<'a>>,
}

#[derive(Deserialize)]
struct ResponsePart<'a> {
    #[serde(borrow)]
    text: Option<Cow<'a, str>>,
    /// Thinking models mark their thoughts; they are not the answer.
    #[serde(default)]
    thought: bool,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PromptFeedback<'a> {
    #[serde(borrow)]
    block_reason: Option<Cow<'a, str>>,
}

#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "camelCase")]
struct UsageMetadata {
    #[serde(default)]
    prompt_token_count: u64,
    #[serde(default)]
    candidates_token_count: u64,
}

impl From<UsageMetadata> for Usage {
    fn from(usage: UsageMetadata) -> Self {
        Usage {
            input_tokens: usage.prompt_token_count,
            output_tokens: usage.candidates_token_count,
        }
    }
}

impl<'a> Candidate<'a> {
    /// The answer's text parts, concatenated; borrowed when there is one.
    fn text(self) -> Cow<'a, str> {
        let mut texts = self
            .content
            .into_iter()
            .flat_map(|content| content.parts)
            .filter(|part| !part.thought)
            .filter_map(|part| part.text);
        match (texts.next(), texts.next()) {
            (None, _) => Cow::Borrowed(""),
            (Some(only), None) => only,
            (Some(first), Some(second)) => {
                let mut all = first.into_owned();
                all.push_str(&second);
                texts.for_each(|text| all.push_str(&text));
                Cow::Owned(all)
            }
        }
    }
}

/// Gemini's stream (`alt=sse`): every event is a `GenerateContentResponse` with the next
/// piece of text; the last has the finish reason and the usage. A stream that ends without a
/// finish reason (or a blocked prompt's reason) was cut.
#[derive(Default)]
struct StreamEvents {
    finished: bool,
}

impl StreamTranslator for StreamEvents {
    fn event(&mut self, event: &sse::Event<'_>, out: &mut ChunkWriter) -> Result<(), ProxyError> {
        if serde_json::from_str::<ErrorEvent>(&event.data).is_ok() {
            return Err(ProxyError::StreamEvent(Bytes::copy_from_slice(
                event.data.as_bytes(),
            )));
        }
        let generated: Generated = serde_json::from_str(&event.data)
            .map_err(|e| ProxyError::BadUpstreamBody(format!("gemini stream event {e}")))?;
        if let Some(model) = &generated.model_version {
            out.set_model(model);
        }
        if let Some(usage) = generated.usage_metadata {
            out.input_tokens(usage.prompt_token_count);
            out.output_tokens(usage.candidates_token_count);
        }
        out.start();
        let blocked = generated.candidates.is_empty();
        if let Some(reason) = generated.prompt_feedback.and_then(|f| f.block_reason) {
            self.finished = true;
            out.finish(&normalize_stop_reason(reason, blocked));
        }
        if let Some(candidate) = generated.candidates.into_iter().next() {
            let finish_reason = candidate.finish_reason.clone();
            out.content(&candidate.text());
            if let Some(reason) = finish_reason {
                self.finished = true;
                out.finish(&normalize_stop_reason(reason, false));
            }
        }
        Ok(())
    }

    fn end(&mut self) -> Result<(), ProxyError> {
        if self.finished {
            return Ok(());
        }
        Err(crate::completions::ended_early("gemini", "finishReason"))
    }
}

/// An error Gemini sends inside a stream: `{"error": {...}}`.
#[derive(Deserialize)]
struct ErrorEvent<'a> {
    #[serde(borrow)]
    #[allow(dead_code)]
    error: &'a RawValue,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn provider() -> Gemini {
        Gemini::new(Endpoint {
            name: "gemini",
            base_url: "http://upstream.test/v1beta".into(),
            key_required: true,
            headers: vec![],
        })
    }

    fn translate(body: Value) -> Result<(UpstreamRequest, Value), ProxyError> {
        let body = Bytes::from(body.to_string());
        let request = ChatRequest::parse(&body).unwrap();
        let key = HeaderValue::from_static("AIza-test");
        let upstream = provider().translate_request(&request, &request.model, Some(&key))?;
        let sent = serde_json::from_slice(&upstream.body).unwrap();
        Ok((upstream, sent))
    }

    #[test]
    fn the_key_goes_in_a_header_and_the_model_in_the_path() {
        let (upstream, _) = translate(json!({
            "model": "gemini-1.5-flash", "messages": [{"role": "user", "content": "hi"}],
        }))
        .unwrap();
        assert_eq!(
            upstream.url,
            "http://upstream.test/v1beta/models/gemini-1.5-flash:generateContent"
        );
        assert_eq!(upstream.headers[0].0, "x-goog-api-key");
        assert_eq!(upstream.headers[0].1, "AIza-test");
        assert!(upstream.headers[0].1.is_sensitive());
        assert!(!upstream.url.to_string().contains("AIza"));
    }

    #[test]
    fn streams_use_stream_generate_content_with_sse() {
        let (upstream, _) = translate(json!({
            "model": "models/gemini-1.5-flash", "stream": true,
            "messages": [{"role": "user", "content": "hi"}],
        }))
        .unwrap();
        assert_eq!(
            upstream.url,
            "http://upstream.test/v1beta/models/gemini-1.5-flash:streamGenerateContent?alt=sse"
        );
    }

    #[test]
    fn a_model_that_could_change_the_path_is_refused() {
        for model in ["../files", "a/b", "x?y", "m:generateContent"] {
            let err =
                translate(json!({"model": model, "messages": [{"role": "user", "content": "hi"}]}))
                    .unwrap_err();
            assert!(matches!(err, ProxyError::InvalidRequest(_)), "{model}");
        }
    }

    #[test]
    fn messages_become_contents_and_settings_generation_config() {
        let (_, sent) = translate(json!({
            "model": "gemini-1.5-flash",
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "hi"},
                {"role": "assistant", "content": "hello"},
                {"role": "system", "content": "Be kind."},
                {"role": "user", "content": [
                    {"type": "text", "text": "and this?"},
                    {"type": "image_url", "image_url": {"url": "data:image/webp;base64,UklGRg=="}},
                    {"type": "image_url", "image_url": {"url": "https://example.com/a.png?x=1"}},
                ]},
            ],
            "max_tokens": 256, "temperature": 0.2, "top_p": 0.9, "stop": "END",
            "safetySettings": [{"category": "HARM_CATEGORY_HARASSMENT", "threshold": "BLOCK_NONE"}],
            "stream": false,
        }))
        .unwrap();
        assert_eq!(
            sent,
            json!({
                "contents": [
                    {"role": "user", "parts": [{"text": "hi"}]},
                    {"role": "model", "parts": [{"text": "hello"}]},
                    {"role": "user", "parts": [
                        {"text": "and this?"},
                        {"inline_data": {"mime_type": "image/webp", "data": "UklGRg=="}},
                        {"file_data": {"mime_type": "image/png", "file_uri": "https://example.com/a.png?x=1"}},
                    ]},
                ],
                "systemInstruction": {"parts": [{"text": "Be brief.\n\nBe kind."}]},
                "generationConfig": {"maxOutputTokens": 256, "temperature": 0.2, "topP": 0.9, "stopSequences": ["END"]},
                "safetySettings": [{"category": "HARM_CATEGORY_HARASSMENT", "threshold": "BLOCK_NONE"}],
            })
        );
    }

    #[test]
    fn a_callers_generation_config_is_kept_with_ours_on_top() {
        let (_, sent) = translate(json!({
            "model": "gemini-1.5-flash", "messages": [{"role": "user", "content": "hi"}],
            "generationConfig": {"candidateCount": 1, "temperature": 1.0}, "temperature": 0.5,
        }))
        .unwrap();
        assert_eq!(
            sent["generationConfig"],
            json!({"candidateCount": 1, "temperature": 0.5})
        );
    }

    #[test]
    fn an_answer_is_normalized() {
        let body = include_bytes!("../../tests/fixtures/gemini/generate.json");
        let response = provider()
            .translate_response(body, "gemini-1.5-flash")
            .unwrap();
        assert_eq!(
            response,
            ChatResponse {
                provider: "gemini",
                model: "gemini-1.5-flash-002".into(),
                content: "Hello! How can I help you today?".into(),
                stop_reason: Some("stop".into()),
                native_stop_reason: Some("STOP".into()),
                usage: Some(Usage {
                    input_tokens: 4,
                    output_tokens: 9
                }),
            }
        );
    }

    #[test]
    fn finish_reasons_map_to_the_shared_vocabulary() {
        for (native, normal) in [
            ("STOP", "stop"),
            ("MAX_TOKENS", "length"),
            ("SAFETY", "content_filter"),
            ("RECITATION", "content_filter"),
            ("BLOCKLIST", "content_filter"),
            ("PROHIBITED_CONTENT", "content_filter"),
            ("SPII", "content_filter"),
            ("MALFORMED_FUNCTION_CALL", "MALFORMED_FUNCTION_CALL"),
        ] {
            assert_eq!(normalize_stop_reason(native.into(), false), normal);
        }
    }

    #[test]
    fn thoughts_are_not_content_and_parts_are_joined() {
        let body = br#"{"candidates":[{"content":{"role":"model","parts":[
            {"text":"thinking...","thought":true},{"text":"Hel"},{"text":"lo"}]},
            "finishReason":"MAX_TOKENS"}]}"#;
        let response = provider().translate_response(body, "g").unwrap();
        assert_eq!(response.content, "Hello");
        assert_eq!(response.model, "g");
        assert_eq!(response.stop_reason.as_deref(), Some("length"));
    }

    #[test]
    fn a_blocked_prompt_is_an_empty_content_filtered_answer() {
        let body =
            br#"{"promptFeedback":{"blockReason":"OTHER"},"usageMetadata":{"promptTokenCount":3}}"#;
        let response = provider().translate_response(body, "g").unwrap();
        assert_eq!(response.content, "");
        assert_eq!(response.stop_reason.as_deref(), Some("content_filter"));
        assert_eq!(response.native_stop_reason.as_deref(), Some("OTHER"));
    }

    #[test]
    fn bodies_without_candidates_are_bad_gateway() {
        for body in [&b"{}"[..], b"[]", b"<html>"] {
            let err = provider().translate_response(body, "g").unwrap_err();
            assert!(matches!(err, ProxyError::BadUpstreamBody(_)), "{err:?}");
        }
    }

    #[test]
    fn a_stream_without_a_finish_reason_is_incomplete() {
        let stream = include_bytes!("../../tests/fixtures/gemini/stream.sse");
        let text = std::str::from_utf8(stream).unwrap();
        let first = &text[..text[1..].find("data:").unwrap() + 1];
        assert!(
            !first.contains("finishReason"),
            "the fixture's first event has no finish"
        );
        let mut translator = provider().stream_translator().unwrap();
        let mut out = ChunkWriter::new("m", false);
        sse::Parser::default()
            .feed(first.as_bytes(), |event| translator.event(&event, &mut out))
            .unwrap();
        let err = translator.end().unwrap_err();
        assert!(err.to_string().contains("finishReason"), "{err}");
    }

    #[test]
    fn a_stream_becomes_chat_completion_chunks() {
        let stream = include_bytes!("../../tests/fixtures/gemini/stream.sse");
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
        assert_eq!(chunks[0]["model"], "gemini-1.5-flash-002");
        assert_eq!(
            chunks[4]["usage"],
            json!({"prompt_tokens": 4, "completion_tokens": 12, "total_tokens": 16})
        );
        assert!(text.ends_with("data: [DONE]\n\n"));
    }
}
