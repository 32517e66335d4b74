//! Gemini as an upstream: the model's request as a `generateContent` call, and Gemini's
//! answers and `alt=sse` streams back in the model.
//!
//! The key goes in `x-goog-api-key`, never in the URL where logs would keep it. How the
//! request is written:
//!
//! - Messages become `contents`, the assistant's turns with role `model`, user and tool turns
//!   with role `user`; consecutive turns of one role are merged into one content, because
//!   Gemini wants all responses to a turn's parallel calls in the one content right after it.
//! - The system prompt and every system message, wherever it stands, become one
//!   `systemInstruction`, joined by a blank line in order: Gemini has no system turn inside
//!   `contents`, so a system message mid-conversation is hoisted there.
//! - Images become `inline_data` (base64) or `file_data` (URL) parts.
//! - A tool call becomes `functionCall {name, args}`, without our id: Gemini pairs results
//!   with calls by order and name. For Gemini 3 on, the first call of each model turn carries
//!   Google's documented `skip_thought_signature_validator` as its `thoughtSignature`, the real
//!   one having no way back through other formats. A tool result becomes `functionResponse {name, response}`,
//!   the name found from the call it answers; `response` is the result's text when that is a
//!   JSON object, else `{"content": text}`, or `{"error": text}` for an error. Images in a
//!   result follow the responses as parts of the same content.
//! - Reasoning parts are dropped: Gemini's thoughts cannot be sent back as text.
//! - Tools become one `functionDeclarations` entry, their schemas reduced by
//!   [`schema::reduce`]; `tool_choice` becomes `toolConfig.functionCallingConfig`.
//!   `parallel_tool_calls` is ignored: Gemini has no such switch.
//! - Sampling settings, the response format and reasoning go in `generationConfig`, set over
//!   the caller's own `generationConfig` if it sent one. Reasoning becomes `thinkingConfig`:
//!   a budget with `includeThoughts`, `0` when disabled, `-1` (dynamic) when adaptive.
//! - `user` is dropped (Gemini has no end-user id); every other extra field passes as given,
//!   in order (`safetySettings`, `cachedContent`...), unless it names a field written here.
//!
//! Answers: text parts in order (those marked `thought` are reasoning), `functionCall`s as
//! tool calls with their arguments as compact JSON. Gemini gives calls no id (or only
//! sometimes), so each gets one made up from its position: `call_{n}_{responseId}`, or
//! `call_{n}_{name}` without a response id; the result sent back later finds its tool's name
//! through the call in the assistant turn ([`Request::tool_name_of`]).

use std::borrow::Cow;

use actix_web::{
    http::header::{HeaderName, HeaderValue},
    web::Bytes,
};
use serde_json::{Map, Value};

use super::{
    schema,
    types::{
        Content, FunctionCallOut, FunctionCallingConfig, FunctionDeclaration, FunctionTools,
        GenerateContentResponse, RequestPart, ResponsePart, SystemInstruction, TextPart,
        ToolConfig, UsageMetadata,
    },
};
use crate::{
    error::ProxyError,
    formats::{
        bad_body, ended_early, sensitive, unsupported, Endpoint, Format, StreamDecoder, Upstream,
        UpstreamRequest,
    },
    model::{
        Image, Message, Part, Reasoning, Request, Response, ResponseFormat, Role, StopReason,
        StreamEvent, ToolCall, ToolChoice, ToolResult, Usage,
    },
    util::{json::JsonObject, sse},
};

const API_KEY: HeaderName = HeaderName::from_static("x-goog-api-key");
/// The signature Google documents for a call whose real thought signature is not at hand (a
/// loop begun at another provider, or carried by a client whose format has no field for it):
/// Gemini 3 refuses a tool loop's call without one, and skips the check for this one.
const SKIP_SIGNATURE_CHECK: &str = "skip_thought_signature_validator";

/// Whether `model` checks thought signatures on the calls of a tool loop: every Gemini model
/// from 3 on (1.x and 2.x do not, and get none).
fn signs_calls(model: &str) -> bool {
    let model = model.strip_prefix("models/").unwrap_or(model);
    model.starts_with("gemini-") && !model.starts_with("gemini-1") && !model.starts_with("gemini-2")
}

/// A Gemini `generateContent` upstream.
pub struct Gemini {
    endpoint: Endpoint,
}

impl Gemini {
    pub fn new(endpoint: Endpoint) -> Self {
        Self { endpoint }
    }
}

impl Upstream for Gemini {
    fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    fn format(&self) -> Format {
        Format::Gemini
    }

    fn translate_request(
        &self,
        request: &Request,
        model: &str,
        key: Option<&HeaderValue>,
    ) -> Result<UpstreamRequest, ProxyError> {
        let name = self.endpoint.name;
        if let Some(field) = request.unportable.first() {
            return Err(unsupported(
                name,
                field,
                "only the format it came in can express it",
            ));
        }
        let path = model_path(model, request.stream)?;
        Ok(UpstreamRequest {
            url: self.endpoint.url(&path),
            headers: key
                .map(|key| (API_KEY, sensitive(key)))
                .into_iter()
                .collect(),
            body: translate_body(request, signs_calls(model))?,
        })
    }

    fn translate_response(
        &self,
        body: &[u8],
        requested_model: &str,
    ) -> Result<Response, ProxyError> {
        let name = self.endpoint.name;
        let answer: GenerateContentResponse =
            serde_json::from_slice(body).map_err(|e| bad_body(name, e))?;
        let response_id = answer.response_id.as_deref();
        let mut content = Vec::new();
        let (stop_reason, native_stop_reason) = match answer.candidates.into_iter().next() {
            Some(candidate) => {
                let mut calls = 0;
                let parts = candidate.content.into_iter().flat_map(|c| c.parts);
                for part in parts {
                    for piece in pieces(part, &mut calls, response_id) {
                        push_piece(&mut content, piece);
                    }
                }
                let native = candidate.finish_reason.map(Cow::into_owned);
                (native.as_deref().map(|n| stop_reason(n, calls > 0)), native)
            }
            // A blocked prompt has no candidates, only the reason it was blocked.
            None => match answer.prompt_feedback.and_then(|f| f.block_reason) {
                Some(reason) => (Some(StopReason::ContentFilter), Some(reason.into_owned())),
                None => return Err(bad_body(name, "has no candidates")),
            },
        };
        Ok(Response {
            id: answer.response_id.map(Cow::into_owned),
            model: answer
                .model_version
                .map_or_else(|| requested_model.to_owned(), Cow::into_owned),
            content,
            stop_reason,
            native_stop_reason,
            usage: answer.usage_metadata.map(usage),
        })
    }

    fn stream_decoder(&self) -> Box<dyn StreamDecoder> {
        Box::new(Decoder {
            provider: self.endpoint.name,
            ..Decoder::default()
        })
    }
}

/// The URL path for `model`. The model becomes part of the path: only a plain name may get
/// there.
fn model_path(model: &str, stream: bool) -> Result<String, ProxyError> {
    let model = model.strip_prefix("models/").unwrap_or(model);
    let plain = |b: u8| b.is_ascii_alphanumeric() || b"-_.".contains(&b);
    if model.is_empty() || !model.bytes().all(plain) {
        return Err(ProxyError::InvalidRequest(format!(
            "`model` {model:?} is not a Gemini model name (letters, digits, `-`, `_`, `.`)"
        )));
    }
    Ok(if stream {
        format!("models/{model}:streamGenerateContent?alt=sse")
    } else {
        format!("models/{model}:generateContent")
    })
}

/// Writes the `generateContent` body: our fields translated, the caller's extras as given.
fn translate_body(request: &Request, sign_calls: bool) -> Result<Bytes, ProxyError> {
    let (contents, system) = contents(request, sign_calls)?;
    let mut out = Vec::with_capacity(256);
    let mut object = JsonObject::new(&mut out);
    let mut written: Vec<&str> = Vec::with_capacity(5);
    put(&mut object, &mut written, "contents", &contents)?;
    if !system.is_empty() {
        let text = system.join("\n\n");
        let instruction = SystemInstruction {
            parts: [TextPart { text: &text }],
        };
        put(&mut object, &mut written, "systemInstruction", &instruction)?;
    }
    if !request.tools.is_empty() {
        put(&mut object, &mut written, "tools", &[tools(request)])?;
    }
    if let Some(choice) = &request.tool_choice {
        put(
            &mut object,
            &mut written,
            "toolConfig",
            &tool_config(choice),
        )?;
    }
    let config = generation_config(request)?;
    if !config.is_empty() {
        put(&mut object, &mut written, "generationConfig", &config)?;
    }
    for (name, value) in &request.extras {
        // Ours win over an extra of the same name; the caller's `generationConfig` is in ours.
        if name == "generationConfig" || written.contains(&name.as_str()) {
            continue;
        }
        put(&mut object, &mut Vec::new(), name, value)?;
    }
    object.end();
    Ok(Bytes::from(out))
}

/// Writes one field of the body and records its name.
fn put<'n>(
    object: &mut JsonObject<'_>,
    written: &mut Vec<&'n str>,
    name: &'n str,
    value: &impl serde::Serialize,
) -> Result<(), ProxyError> {
    written.push(name);
    object
        .field(name, value)
        .map_err(|e| ProxyError::InvalidRequest(format!("`{name}` cannot be sent: {e}")))
}

/// The messages as `contents`, and the system texts to hoist into `systemInstruction`.
fn contents(
    request: &Request,
    sign_calls: bool,
) -> Result<(Vec<Content<'_>>, Vec<&str>), ProxyError> {
    let mut system: Vec<&str> = request
        .system
        .iter()
        .filter_map(Part::as_text)
        .filter(|text| !text.is_empty())
        .collect();
    let mut contents: Vec<Content> = Vec::with_capacity(request.messages.len());
    for (index, message) in request.messages.iter().enumerate() {
        if message.role == Role::System {
            for part in &message.content {
                match part {
                    Part::Text { text, .. } if text.is_empty() => {}
                    Part::Text { text, .. } => system.push(text),
                    _ => {
                        return Err(ProxyError::InvalidRequest(format!(
                            "`messages[{index}].content`: a system message can hold only text"
                        )))
                    }
                }
            }
            continue;
        }
        let parts = parts(request, index, message, sign_calls)?;
        if parts.is_empty() {
            continue;
        }
        let role = if message.role == Role::Assistant {
            "model"
        } else {
            "user"
        };
        match contents.last_mut() {
            Some(last) if last.role == role => last.parts.extend(parts),
            _ => contents.push(Content { role, parts }),
        }
    }
    Ok((contents, system))
}

/// One message's parts in Gemini's terms; images of tool results go after the responses.
fn parts<'r>(
    request: &'r Request,
    index: usize,
    message: &'r Message,
    sign_calls: bool,
) -> Result<Vec<RequestPart<'r>>, ProxyError> {
    let mut parts = Vec::with_capacity(message.content.len());
    let mut signed = !sign_calls;
    let mut result_images = Vec::new();
    for part in &message.content {
        match part {
            Part::Text { text, .. } => parts.push(RequestPart::Text(text)),
            Part::Image { image, .. } => parts.push(image_part(image)),
            Part::ToolCall(call) if !signed => {
                signed = true;
                parts.push(RequestPart::SignedFunctionCall {
                    function_call: FunctionCallOut {
                        name: &call.name,
                        args: call.arguments_object(),
                    },
                    thought_signature: SKIP_SIGNATURE_CHECK,
                });
            }
            Part::ToolCall(call) => parts.push(RequestPart::FunctionCall {
                name: &call.name,
                args: call.arguments_object(),
            }),
            Part::ToolResult(result) => {
                let name = request.tool_name_of(&result.call_id).ok_or_else(|| {
                    ProxyError::InvalidRequest(format!(
                        "`messages[{index}]` answers the tool call {:?}, which is missing from \
                         the assistant turns: Gemini needs the call to know the tool's name",
                        result.call_id
                    ))
                })?;
                parts.push(RequestPart::FunctionResponse {
                    name,
                    response: function_response(result),
                });
                result_images.extend(result.content.iter().filter_map(|part| match part {
                    Part::Image { image, .. } => Some(image_part(image)),
                    _ => None,
                }));
            }
            Part::Reasoning { .. } | Part::RedactedReasoning { .. } => {}
        }
    }
    parts.extend(result_images);
    Ok(parts)
}

fn image_part(image: &Image) -> RequestPart<'_> {
    match image {
        Image::Base64 { media_type, data } => RequestPart::InlineData {
            mime_type: media_type,
            data,
        },
        Image::Url { url, media_type } => RequestPart::FileData {
            mime_type: media_type,
            file_uri: url,
        },
    }
}

/// A result as the JSON object `functionResponse.response` must be.
fn function_response(result: &ToolResult) -> Value {
    let text = result.text();
    if result.is_error {
        return serde_json::json!({ "error": text });
    }
    if text.trim_start().starts_with('{') {
        if let Ok(object @ Value::Object(_)) = serde_json::from_str::<Value>(&text) {
            return object;
        }
    }
    serde_json::json!({ "content": text })
}

fn tools(request: &Request) -> FunctionTools<'_> {
    FunctionTools {
        function_declarations: request
            .tools
            .iter()
            .map(|tool| {
                let parameters = schema::reduce(&tool.parameters);
                // A function without parameters says so by leaving them out: Gemini refuses
                // an object schema with no properties at the top.
                let empty = parameters.get("properties").is_none()
                    && parameters.get("type").is_none_or(|t| t == "object")
                    && parameters.get("anyOf").is_none();
                FunctionDeclaration {
                    name: &tool.name,
                    description: tool.description.as_deref(),
                    parameters: (!empty).then_some(parameters),
                }
            })
            .collect(),
    }
}

fn tool_config(choice: &ToolChoice) -> ToolConfig<'_> {
    let (mode, allowed) = match choice {
        ToolChoice::Auto => ("AUTO", None),
        ToolChoice::None => ("NONE", None),
        ToolChoice::Required => ("ANY", None),
        ToolChoice::Tool(name) => ("ANY", Some([name.as_str()])),
    };
    ToolConfig {
        function_calling_config: FunctionCallingConfig {
            mode,
            allowed_function_names: allowed,
        },
    }
}

/// The caller's own `generationConfig`, if any, with ours set on top.
fn generation_config(request: &Request) -> Result<Map<String, Value>, ProxyError> {
    let given = request
        .extras
        .iter()
        .find(|(name, _)| name == "generationConfig");
    let mut config = match given {
        Some((_, Value::Object(config))) => config.clone(),
        Some(_) => {
            return Err(ProxyError::InvalidRequest(
                "`generationConfig` must be an object".into(),
            ))
        }
        None => Map::new(),
    };
    let mut set = |name: &str, value: Value| {
        config.insert(name.into(), value);
    };
    if let Some(max_tokens) = request.max_tokens {
        set("maxOutputTokens", max_tokens.into());
    }
    if let Some(temperature) = request.temperature {
        set("temperature", temperature.into());
    }
    if let Some(top_p) = request.top_p {
        set("topP", top_p.into());
    }
    if let Some(top_k) = request.top_k {
        set("topK", top_k.into());
    }
    if !request.stop.is_empty() {
        set("stopSequences", request.stop.clone().into());
    }
    if let Some(seed) = request.seed {
        set("seed", seed.into());
    }
    match &request.response_format {
        Some(ResponseFormat::JsonSchema { schema, .. }) => {
            set("responseMimeType", "application/json".into());
            set("responseSchema", schema::reduce(schema));
        }
        Some(ResponseFormat::JsonObject) => set("responseMimeType", "application/json".into()),
        Some(ResponseFormat::Text) | None => {}
    }
    if let Some(reasoning) = request.reasoning {
        set("thinkingConfig", thinking_config(reasoning));
    }
    Ok(config)
}

fn thinking_config(reasoning: Reasoning) -> Value {
    match reasoning {
        Reasoning::Disabled => serde_json::json!({ "thinkingBudget": 0 }),
        // Gemini documents -1 as a dynamic budget: the model decides.
        Reasoning::Adaptive => serde_json::json!({ "thinkingBudget": -1, "includeThoughts": true }),
        other => serde_json::json!({
            "thinkingBudget": other.budget_tokens().unwrap_or(0),
            "includeThoughts": true,
        }),
    }
}

/// Gemini's finish reasons in the model's vocabulary. A natural stop after function calls is
/// the end of a tool-calling turn.
fn stop_reason(native: &str, called: bool) -> StopReason {
    match native {
        "STOP" if called => StopReason::ToolCalls,
        "STOP" => StopReason::Stop,
        "MAX_TOKENS" => StopReason::Length,
        "SAFETY" | "RECITATION" | "BLOCKLIST" | "PROHIBITED_CONTENT" | "SPII" => {
            StopReason::ContentFilter
        }
        other => StopReason::Other(other.to_owned()),
    }
}

/// `usageMetadata` by the model's rule: thoughts are output tokens, counted apart from the
/// candidates by Gemini.
fn usage(metadata: UsageMetadata) -> Usage {
    Usage {
        input_tokens: metadata.prompt_token_count,
        output_tokens: metadata.candidates_token_count + metadata.thoughts_token_count,
        cache_read_tokens: metadata.cached_content_token_count,
        cache_write_tokens: 0,
        reasoning_tokens: metadata.thoughts_token_count,
    }
}

/// What one answer part carries.
enum Piece {
    Text(String),
    Reasoning(String),
    Call(ToolCall),
}

/// An answer part as pieces: its text or thought, and its call. `calls` counts the calls of
/// the answer so far, for the made-up ids.
fn pieces(
    part: ResponsePart<'_>,
    calls: &mut usize,
    response_id: Option<&str>,
) -> impl Iterator<Item = Piece> {
    let text = match part.text {
        Some(text) if text.is_empty() => None,
        Some(text) if part.thought => Some(Piece::Reasoning(text.into_owned())),
        Some(text) => Some(Piece::Text(text.into_owned())),
        None => None,
    };
    let call = part.function_call.map(|call| {
        let id = match (call.id, response_id) {
            (Some(id), _) if !id.is_empty() => id.into_owned(),
            (_, Some(response)) => format!("call_{calls}_{response}"),
            (_, None) => format!("call_{calls}_{}", call.name),
        };
        *calls += 1;
        Piece::Call(ToolCall {
            id,
            name: call.name.into_owned(),
            arguments: call
                .args
                .map_or_else(|| "{}".to_owned(), |a| compact(a.get())),
            cache_control: None,
        })
    });
    text.into_iter().chain(call)
}

/// Adds a piece to an answer, joining text to text and thought to thought as a stream's
/// collector would.
fn push_piece(content: &mut Vec<Part>, piece: Piece) {
    match (piece, content.last_mut()) {
        (Piece::Text(text), Some(Part::Text { text: last, .. })) => last.push_str(&text),
        (Piece::Text(text), _) => content.push(Part::text(text)),
        (
            Piece::Reasoning(text),
            Some(Part::Reasoning {
                text: last,
                signature: None,
            }),
        ) => last.push_str(&text),
        (Piece::Reasoning(text), _) => content.push(Part::Reasoning {
            text,
            signature: None,
        }),
        (Piece::Call(call), _) => content.push(Part::ToolCall(call)),
    }
}

/// Valid JSON text without the whitespace between tokens, its key order kept.
fn compact(json: &str) -> String {
    if !json.bytes().any(|b| b.is_ascii_whitespace()) {
        return json.to_owned();
    }
    let mut out = String::with_capacity(json.len());
    let (mut in_string, mut escaped) = (false, false);
    for c in json.chars() {
        if in_string {
            out.push(c);
            match c {
                _ if escaped => escaped = false,
                '\\' => escaped = true,
                '"' => in_string = false,
                _ => {}
            }
        } else if c == '"' {
            in_string = true;
            out.push(c);
        } else if !c.is_ascii_whitespace() {
            out.push(c);
        }
    }
    out
}

/// Gemini's stream (`alt=sse`): every event is a whole `GenerateContentResponse` with the next
/// parts; the last has the finish reason. Function calls arrive whole, so each is a
/// `ToolCallStart` and one `ToolArguments`. A stream that ends without a finish reason (or a
/// blocked prompt's reason) was cut.
#[derive(Default)]
struct Decoder {
    provider: &'static str,
    started: bool,
    /// Calls seen so far: the next call's index.
    calls: usize,
    response_id: Option<String>,
    finished: bool,
    usage: Option<Usage>,
}

impl StreamDecoder for Decoder {
    fn event(
        &mut self,
        event: &sse::Event<'_>,
        out: &mut Vec<StreamEvent>,
    ) -> Result<(), ProxyError> {
        let chunk: GenerateContentResponse = serde_json::from_str(&event.data).map_err(|e| {
            ProxyError::BadUpstreamBody(format!("{} stream event {e}", self.provider))
        })?;
        if chunk.error.is_some() {
            return Err(ProxyError::StreamEvent(Bytes::copy_from_slice(
                event.data.as_bytes(),
            )));
        }
        if !self.started {
            self.started = true;
            self.response_id = chunk.response_id.as_deref().map(str::to_owned);
            out.push(StreamEvent::Start {
                id: self.response_id.clone(),
                model: chunk.model_version.as_deref().map(str::to_owned),
            });
        }
        let blocked = chunk.candidates.is_empty();
        let mut finish = None;
        if let Some(candidate) = chunk.candidates.into_iter().next() {
            for part in candidate.content.into_iter().flat_map(|c| c.parts) {
                let index = self.calls;
                for piece in pieces(part, &mut self.calls, self.response_id.as_deref()) {
                    match piece {
                        Piece::Text(text) => out.push(StreamEvent::Text(text)),
                        Piece::Reasoning(text) => out.push(StreamEvent::Reasoning(text)),
                        Piece::Call(call) => {
                            out.push(StreamEvent::ToolCallStart {
                                index,
                                id: call.id,
                                name: call.name,
                            });
                            out.push(StreamEvent::ToolArguments {
                                index,
                                fragment: call.arguments,
                            });
                        }
                    }
                }
            }
            finish = candidate
                .finish_reason
                .map(|reason| (stop_reason(&reason, self.calls > 0), reason));
        } else if blocked {
            finish = chunk
                .prompt_feedback
                .and_then(|f| f.block_reason)
                .map(|reason| (StopReason::ContentFilter, reason));
        }
        if let Some(metadata) = chunk.usage_metadata {
            let usage = usage(metadata);
            if self.usage != Some(usage) {
                self.usage = Some(usage);
                out.push(StreamEvent::Usage(usage));
            }
        }
        if let Some((reason, native)) = finish {
            if !self.finished {
                self.finished = true;
                out.push(StreamEvent::Stop {
                    reason,
                    native: Some(native.into_owned()),
                });
            }
        }
        Ok(())
    }

    fn end(&mut self, _out: &mut Vec<StreamEvent>) -> Result<(), ProxyError> {
        if self.finished {
            return Ok(());
        }
        Err(ended_early(self.provider, "finishReason"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{stream::Collector, Effort, Tool};
    use proptest::prelude::*;
    use serde_json::json;

    fn provider() -> Gemini {
        Gemini::new(Endpoint {
            name: "gemini",
            base_url: "http://upstream.test/v1beta".into(),
            key_required: true,
            headers: vec![],
            held_key: None,
        })
    }

    fn request(messages: Vec<Message>) -> Request {
        Request {
            model: "gemini-2.0-flash".into(),
            messages,
            ..Request::default()
        }
    }

    fn translate(request: &Request) -> Result<(UpstreamRequest, Value), ProxyError> {
        let key = HeaderValue::from_static("AIza-test");
        let upstream = provider().translate_request(request, &request.model, Some(&key))?;
        let sent = serde_json::from_slice(&upstream.body).unwrap();
        Ok((upstream, sent))
    }

    fn sent(request: &Request) -> Value {
        translate(request).unwrap().1
    }

    fn hi() -> Request {
        request(vec![Message::text(Role::User, "hi")])
    }

    fn call(id: &str, name: &str, arguments: &str) -> Part {
        Part::ToolCall(ToolCall {
            id: id.into(),
            name: name.into(),
            arguments: arguments.into(),
            cache_control: None,
        })
    }

    fn result(call_id: &str, text: &str, is_error: bool) -> Part {
        Part::ToolResult(ToolResult {
            call_id: call_id.into(),
            content: vec![Part::text(text)],
            is_error,
            cache_control: None,
        })
    }

    fn message(role: Role, content: Vec<Part>) -> Message {
        Message { role, content }
    }

    fn answer(body: &[u8]) -> Result<Response, ProxyError> {
        provider().translate_response(body, "gemini-requested")
    }

    /// The events a decoder emits for a whole stream, or the first error.
    fn decode(stream: &[u8]) -> Result<Vec<StreamEvent>, ProxyError> {
        let mut decoder = provider().stream_decoder();
        let mut events = Vec::new();
        let mut parser = sse::Parser::default();
        parser.feed(stream, |event| decoder.event(&event, &mut events))?;
        parser.finish(|event| decoder.event(&event, &mut events))?;
        decoder.end(&mut events)?;
        Ok(events)
    }

    fn collect(events: Vec<StreamEvent>) -> Response {
        let mut collector = Collector::default();
        events.into_iter().for_each(|event| collector.event(event));
        collector.finish()
    }

    /// The whole answer a stream of `GenerateContentResponse` chunks stands for: every
    /// chunk's parts in order, the last finish reason and usage, the first ids.
    fn whole_of(stream: &[u8]) -> Vec<u8> {
        let text = std::str::from_utf8(stream).unwrap();
        let chunks: Vec<Value> = text
            .lines()
            .filter_map(|line| line.strip_prefix("data: "))
            .map(|data| serde_json::from_str(data).unwrap())
            .collect();
        let mut parts = Vec::new();
        let mut whole = chunks[0].clone();
        for chunk in &chunks {
            let candidate = &chunk["candidates"][0];
            parts.extend(
                candidate["content"]["parts"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .cloned(),
            );
            if let Some(reason) = candidate.get("finishReason") {
                whole["candidates"][0]["finishReason"] = reason.clone();
            }
            whole["usageMetadata"] = chunk["usageMetadata"].clone();
        }
        whole["candidates"][0]["content"]["parts"] = Value::Array(parts);
        whole.to_string().into_bytes()
    }

    #[test]
    fn the_key_goes_in_a_header_and_the_model_in_the_path() {
        let (upstream, _) = translate(&hi()).unwrap();
        assert_eq!(
            upstream.url,
            "http://upstream.test/v1beta/models/gemini-2.0-flash:generateContent"
        );
        assert_eq!(upstream.headers.len(), 1);
        assert_eq!(upstream.headers[0].0, "x-goog-api-key");
        assert_eq!(upstream.headers[0].1, "AIza-test");
        assert!(upstream.headers[0].1.is_sensitive());
        assert!(!upstream.url.to_string().contains("AIza"));
        assert_eq!(provider().format(), Format::Gemini);
    }

    #[test]
    fn without_a_key_no_auth_header_is_sent() {
        let upstream = provider().translate_request(&hi(), "g", None).unwrap();
        assert!(upstream.headers.is_empty());
    }

    #[test]
    fn streams_use_stream_generate_content_with_sse() {
        let stream = Request {
            stream: true,
            ..hi()
        };
        let upstream = provider()
            .translate_request(&stream, "models/gemini-1.5-flash", None)
            .unwrap();
        assert_eq!(
            upstream.url,
            "http://upstream.test/v1beta/models/gemini-1.5-flash:streamGenerateContent?alt=sse"
        );
    }

    #[test]
    fn a_model_that_could_change_the_path_is_refused() {
        for model in ["../files", "a/b", "x?y", "m:generateContent", "", "models/"] {
            let err = provider()
                .translate_request(&hi(), model, None)
                .unwrap_err();
            assert!(matches!(err, ProxyError::InvalidRequest(_)), "{model}");
        }
    }

    #[test]
    fn messages_become_contents_and_settings_generation_config() {
        let request = Request {
            system: vec![Part::text("Be brief.")],
            messages: vec![
                Message::text(Role::User, "hi"),
                Message::text(Role::Assistant, "hello"),
                Message::text(Role::System, "Be kind."),
                message(
                    Role::User,
                    vec![
                        Part::text("and this?"),
                        Part::Image {
                            image: Image::Base64 {
                                media_type: "image/webp",
                                data: "UklGRg==".into(),
                            },
                            cache_control: None,
                        },
                        Part::Image {
                            image: Image::Url {
                                url: "https://example.com/a.png?x=1".into(),
                                media_type: "image/png",
                            },
                            cache_control: None,
                        },
                    ],
                ),
            ],
            max_tokens: Some(256),
            temperature: Some(0.2),
            top_p: Some(0.9),
            top_k: Some(40),
            stop: vec!["END".into()],
            seed: Some(7),
            user: Some("user-1".into()),
            parallel_tool_calls: Some(false),
            extras: vec![
                (
                    "safetySettings".into(),
                    json!([{"category": "HARM_CATEGORY_HARASSMENT", "threshold": "BLOCK_NONE"}]),
                ),
                ("cachedContent".into(), json!("cachedContents/abc")),
            ],
            ..request(vec![])
        };
        let body = translate(&request).unwrap().0.body;
        assert_eq!(
            serde_json::from_slice::<Value>(&body).unwrap(),
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
                "generationConfig": {"maxOutputTokens": 256, "temperature": 0.2, "topP": 0.9,
                                     "topK": 40, "stopSequences": ["END"], "seed": 7},
                "safetySettings": [{"category": "HARM_CATEGORY_HARASSMENT", "threshold": "BLOCK_NONE"}],
                "cachedContent": "cachedContents/abc",
            })
        );
        // The extras come after our fields, in the order they were given.
        let text = std::str::from_utf8(&body).unwrap();
        assert!(text.find("safetySettings") < text.find("cachedContent"));
        assert!(text.find("generationConfig") < text.find("safetySettings"));
        assert!(!text.contains("user-1"));
    }

    #[test]
    fn a_callers_generation_config_is_kept_with_ours_on_top() {
        let request = Request {
            temperature: Some(0.5),
            extras: vec![(
                "generationConfig".into(),
                json!({"candidateCount": 1, "temperature": 1.0}),
            )],
            ..hi()
        };
        assert_eq!(
            sent(&request)["generationConfig"],
            json!({"candidateCount": 1, "temperature": 0.5})
        );
        let not_an_object = Request {
            extras: vec![("generationConfig".into(), json!([1]))],
            ..hi()
        };
        let err = translate(&not_an_object).unwrap_err();
        assert!(err.to_string().contains("generationConfig"), "{err}");
    }

    #[test]
    fn an_extra_named_like_a_field_written_here_is_left_out() {
        let request = Request {
            extras: vec![
                ("contents".into(), json!("theirs")),
                ("toolConfig".into(), json!({"x": 1})),
            ],
            ..hi()
        };
        let sent = sent(&request);
        assert_eq!(sent["contents"][0]["parts"][0]["text"], "hi");
        assert_eq!(
            sent["toolConfig"],
            json!({"x": 1}),
            "not written by us: passed"
        );
    }

    #[test]
    fn a_system_message_with_an_image_is_refused() {
        let request = request(vec![
            Message::text(Role::User, "hi"),
            message(
                Role::System,
                vec![Part::Image {
                    image: Image::Base64 {
                        media_type: "image/png",
                        data: "AA==".into(),
                    },
                    cache_control: None,
                }],
            ),
        ]);
        let err = translate(&request).unwrap_err();
        assert!(err.to_string().contains("`messages[1].content`"), "{err}");
    }

    #[test]
    fn a_tool_loop_becomes_function_calls_and_responses_named_after_their_tools() {
        let request = request(vec![
            Message::text(Role::User, "Weather in Paris and Rome, and the time?"),
            message(
                Role::Assistant,
                vec![
                    Part::Reasoning {
                        text: "two cities".into(),
                        signature: Some("sig".into()),
                    },
                    Part::text("Checking."),
                    call("call_1", "get_weather", r#"{"city":"Paris"}"#),
                    call("call_2", "get_weather", r#"{"city":"Rome"}"#),
                    call("call_3", "get_time", ""),
                ],
            ),
            message(
                Role::Tool,
                vec![
                    result("call_1", r#"{"temp_c": 21}"#, false),
                    result("call_2", "sunny", false),
                ],
            ),
            message(Role::Tool, vec![result("call_3", "clock broken", true)]),
            Message::text(Role::User, "Thanks!"),
        ]);
        assert_eq!(
            sent(&request)["contents"],
            json!([
                {"role": "user", "parts": [{"text": "Weather in Paris and Rome, and the time?"}]},
                {"role": "model", "parts": [
                    {"text": "Checking."},
                    {"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}},
                    {"functionCall": {"name": "get_weather", "args": {"city": "Rome"}}},
                    {"functionCall": {"name": "get_time", "args": {}}},
                ]},
                {"role": "user", "parts": [
                    {"functionResponse": {"name": "get_weather", "response": {"temp_c": 21}}},
                    {"functionResponse": {"name": "get_weather", "response": {"content": "sunny"}}},
                    {"functionResponse": {"name": "get_time", "response": {"error": "clock broken"}}},
                    {"text": "Thanks!"},
                ]},
            ])
        );
    }

    #[test]
    fn gemini_3_gets_the_documented_signature_on_each_turns_first_call() {
        let turn = |model: &str| {
            let mut request = request(vec![
                Message::text(Role::User, "Weather in Paris and Rome?"),
                message(
                    Role::Assistant,
                    vec![
                        call("call_1", "get_weather", r#"{"city":"Paris"}"#),
                        call("call_2", "get_weather", r#"{"city":"Rome"}"#),
                    ],
                ),
                message(
                    Role::Tool,
                    vec![
                        result("call_1", "sunny", false),
                        result("call_2", "rain", false),
                    ],
                ),
            ]);
            request.model = model.into();
            sent(&request)["contents"][1]["parts"].clone()
        };
        // Parallel calls: only the first carries a signature, as Gemini 3 answers them.
        assert_eq!(
            turn("gemini-3-flash-preview"),
            json!([
                {"functionCall": {"name": "get_weather", "args": {"city": "Paris"}},
                 "thoughtSignature": "skip_thought_signature_validator"},
                {"functionCall": {"name": "get_weather", "args": {"city": "Rome"}}},
            ])
        );
        assert_eq!(
            turn("gemini-flash-latest")[0]["thoughtSignature"],
            SKIP_SIGNATURE_CHECK
        );
        for older in [
            "gemini-2.5-flash",
            "gemini-1.5-pro",
            "models/gemini-2.0-flash",
        ] {
            assert!(
                turn(older)[0].get("thoughtSignature").is_none(),
                "{older} checks no signatures"
            );
        }
    }

    #[test]
    fn images_in_a_tool_result_follow_the_responses() {
        let screenshot = ToolResult {
            call_id: "c".into(),
            content: vec![
                Part::text("here"),
                Part::Image {
                    image: Image::Base64 {
                        media_type: "image/png",
                        data: "AA==".into(),
                    },
                    cache_control: None,
                },
            ],
            is_error: false,
            cache_control: None,
        };
        let request = request(vec![
            message(Role::Assistant, vec![call("c", "screenshot", "{}")]),
            message(Role::Tool, vec![Part::ToolResult(screenshot)]),
        ]);
        assert_eq!(
            sent(&request)["contents"][1]["parts"],
            json!([
                {"functionResponse": {"name": "screenshot", "response": {"content": "here"}}},
                {"inline_data": {"mime_type": "image/png", "data": "AA=="}},
            ])
        );
    }

    #[test]
    fn a_result_whose_call_is_missing_is_refused() {
        let request = request(vec![
            Message::text(Role::User, "hi"),
            message(Role::Tool, vec![result("call_9", "x", false)]),
        ]);
        let err = translate(&request).unwrap_err();
        assert!(matches!(err, ProxyError::InvalidRequest(_)));
        let message = err.to_string();
        assert!(message.contains("`messages[1]`"), "{message}");
        assert!(
            message.contains("call_9") && message.contains("missing"),
            "{message}"
        );
    }

    #[test]
    fn a_turn_with_only_reasoning_is_left_out() {
        let request = request(vec![
            Message::text(Role::User, "a"),
            message(
                Role::Assistant,
                vec![Part::RedactedReasoning { data: "x".into() }],
            ),
            Message::text(Role::User, "b"),
        ]);
        assert_eq!(
            sent(&request)["contents"],
            json!([{"role": "user", "parts": [{"text": "a"}, {"text": "b"}]}])
        );
    }

    #[test]
    fn tools_become_function_declarations_with_reduced_schemas() {
        let request = Request {
            tools: vec![
                Tool {
                    name: "get_weather".into(),
                    description: Some("Current weather.".into()),
                    parameters: json!({
                        "type": "object",
                        "properties": {"city": {"type": "string", "format": "uri"},
                                       "unit": {"type": ["string", "null"], "enum": ["c", "f"]}},
                        "required": ["city"],
                        "additionalProperties": false,
                        "$schema": "http://json-schema.org/draft-07/schema#",
                    }),
                    cache_control: None,
                    strict: None,
                },
                Tool {
                    name: "get_time".into(),
                    description: None,
                    parameters: json!({"type": "object", "properties": {}}),
                    cache_control: None,
                    strict: None,
                },
            ],
            ..hi()
        };
        assert_eq!(
            sent(&request)["tools"],
            json!([{"functionDeclarations": [
                {"name": "get_weather", "description": "Current weather.", "parameters": {
                    "type": "object",
                    "properties": {"city": {"type": "string"},
                                   "unit": {"type": "string", "enum": ["c", "f"], "nullable": true}},
                    "required": ["city"],
                }},
                {"name": "get_time"},
            ]}])
        );
    }

    #[test]
    fn tool_choice_becomes_a_function_calling_mode() {
        for (choice, config) in [
            (ToolChoice::Auto, json!({"mode": "AUTO"})),
            (ToolChoice::None, json!({"mode": "NONE"})),
            (ToolChoice::Required, json!({"mode": "ANY"})),
            (
                ToolChoice::Tool("get_weather".into()),
                json!({"mode": "ANY", "allowedFunctionNames": ["get_weather"]}),
            ),
        ] {
            let request = Request {
                tool_choice: Some(choice),
                ..hi()
            };
            assert_eq!(
                sent(&request)["toolConfig"],
                json!({ "functionCallingConfig": config })
            );
        }
        assert!(sent(&hi()).get("toolConfig").is_none());
    }

    #[test]
    fn response_formats_become_a_json_mime_type_and_schema() {
        let schema = Request {
            response_format: Some(ResponseFormat::JsonSchema {
                name: "answer".into(),
                description: None,
                schema: json!({"type": "object", "properties": {"n": {"type": "integer"}},
                               "additionalProperties": false}),
                strict: Some(true),
            }),
            ..hi()
        };
        assert_eq!(
            sent(&schema)["generationConfig"],
            json!({"responseMimeType": "application/json",
                   "responseSchema": {"type": "object", "properties": {"n": {"type": "integer"}}}})
        );
        let object = Request {
            response_format: Some(ResponseFormat::JsonObject),
            ..hi()
        };
        assert_eq!(
            sent(&object)["generationConfig"],
            json!({"responseMimeType": "application/json"})
        );
        let text = Request {
            response_format: Some(ResponseFormat::Text),
            ..hi()
        };
        assert!(sent(&text).get("generationConfig").is_none());
    }

    #[test]
    fn reasoning_becomes_a_thinking_config() {
        for (reasoning, config) in [
            (Reasoning::Disabled, json!({"thinkingBudget": 0})),
            (
                Reasoning::Adaptive,
                json!({"thinkingBudget": -1, "includeThoughts": true}),
            ),
            (
                Reasoning::Effort(Effort::High),
                json!({"thinkingBudget": 4096, "includeThoughts": true}),
            ),
            (
                Reasoning::Budget(10_000),
                json!({"thinkingBudget": 10_000, "includeThoughts": true}),
            ),
        ] {
            let request = Request {
                reasoning: Some(reasoning),
                ..hi()
            };
            assert_eq!(
                sent(&request)["generationConfig"]["thinkingConfig"],
                config,
                "{reasoning:?}"
            );
        }
    }

    #[test]
    fn a_field_only_another_format_can_express_is_refused() {
        let request = Request {
            unportable: vec!["n".into()],
            ..hi()
        };
        let err = translate(&request).unwrap_err();
        assert!(
            err.to_string().contains("`n` cannot be sent to gemini"),
            "{err}"
        );
    }

    #[test]
    fn an_answer_is_normalized() {
        let response = answer(include_bytes!(
            "../../../tests/fixtures/gemini/generate.json"
        ));
        assert_eq!(
            response.unwrap(),
            Response {
                id: Some("mSfJZ4_sD7Lc7M8PgYXQ2Ag".into()),
                model: "gemini-1.5-flash-002".into(),
                content: vec![Part::text("Hello! How can I help you today?")],
                stop_reason: Some(StopReason::Stop),
                native_stop_reason: Some("STOP".into()),
                usage: Some(Usage {
                    input_tokens: 4,
                    output_tokens: 9,
                    ..Usage::default()
                }),
            }
        );
    }

    #[test]
    fn finish_reasons_map_to_the_models_vocabulary() {
        for (native, called, normal) in [
            ("STOP", false, StopReason::Stop),
            ("STOP", true, StopReason::ToolCalls),
            ("MAX_TOKENS", true, StopReason::Length),
            ("SAFETY", false, StopReason::ContentFilter),
            ("RECITATION", false, StopReason::ContentFilter),
            ("BLOCKLIST", false, StopReason::ContentFilter),
            ("PROHIBITED_CONTENT", false, StopReason::ContentFilter),
            ("SPII", false, StopReason::ContentFilter),
            (
                "MALFORMED_FUNCTION_CALL",
                false,
                StopReason::Other("MALFORMED_FUNCTION_CALL".into()),
            ),
        ] {
            assert_eq!(stop_reason(native, called), normal, "{native}");
        }
    }

    #[test]
    fn thoughts_are_reasoning_and_parts_are_joined() {
        let body = br#"{"candidates":[{"content":{"role":"model","parts":[
            {"text":"thinking...","thought":true},{"text":" more","thought":true},
            {"text":"Hel"},{"text":""},{"text":"lo"}]},
            "finishReason":"MAX_TOKENS"}]}"#;
        let response = answer(body).unwrap();
        assert_eq!(
            response.content,
            [
                Part::Reasoning {
                    text: "thinking... more".into(),
                    signature: None
                },
                Part::text("Hello"),
            ]
        );
        assert_eq!(response.model, "gemini-requested");
        assert_eq!(response.id, None);
        assert_eq!(response.stop_reason, Some(StopReason::Length));
    }

    #[test]
    fn a_thinking_answer_counts_thoughts_as_output() {
        let response = answer(include_bytes!(
            "../../../tests/fixtures/gemini/thinking.json"
        ));
        let response = response.unwrap();
        assert!(response.reasoning().unwrap().starts_with("**Calculating"));
        assert_eq!(
            response.text(),
            "The sum of the first 50 prime numbers is **5117**."
        );
        assert_eq!(
            response.usage,
            Some(Usage {
                input_tokens: 12,
                output_tokens: 14 + 1236,
                reasoning_tokens: 1236,
                ..Usage::default()
            })
        );
    }

    #[test]
    fn cached_tokens_are_part_of_the_input() {
        let response = answer(include_bytes!("../../../tests/fixtures/gemini/cached.json"));
        assert_eq!(
            response.unwrap().usage,
            Some(Usage {
                input_tokens: 696_219,
                output_tokens: 214,
                cache_read_tokens: 696_190,
                ..Usage::default()
            })
        );
    }

    #[test]
    fn a_function_call_becomes_a_tool_call_with_a_made_up_id() {
        let response = answer(include_bytes!(
            "../../../tests/fixtures/gemini/function_call.json"
        ));
        let response = response.unwrap();
        assert_eq!(
            response.content,
            [call(
                "call_0_find_theaters",
                "find_theaters",
                r#"{"movie":"Barbie","location":"Mountain View, CA"}"#
            )]
        );
        assert_eq!(response.stop_reason, Some(StopReason::ToolCalls));
        assert_eq!(response.native_stop_reason.as_deref(), Some("STOP"));
        assert_eq!(response.usage, None);
    }

    #[test]
    fn parallel_calls_each_get_an_id_of_their_answer() {
        let response = answer(include_bytes!(
            "../../../tests/fixtures/gemini/parallel_function_calls.json"
        ));
        let response = response.unwrap();
        let calls: Vec<_> = response
            .tool_calls()
            .map(|c| (c.id.as_str(), c.name.as_str(), c.arguments.as_str()))
            .collect();
        assert_eq!(
            calls,
            [
                (
                    "call_0_Ci3JZ9CQIPbj7M8Pz8rYsAM",
                    "power_disco_ball",
                    r#"{"power":true}"#
                ),
                (
                    "call_1_Ci3JZ9CQIPbj7M8Pz8rYsAM",
                    "start_music",
                    r#"{"energetic":true,"loud":true}"#
                ),
            ]
        );
        assert_eq!(response.stop_reason, Some(StopReason::ToolCalls));
    }

    #[test]
    fn a_calls_own_id_is_kept_and_missing_args_are_an_empty_object() {
        let body = br#"{"candidates":[{"content":{"parts":[
            {"functionCall":{"id":"fc_1","name":"now"}}]},"finishReason":"STOP"}]}"#;
        assert_eq!(answer(body).unwrap().content, [call("fc_1", "now", "{}")]);
    }

    #[test]
    fn made_up_ids_find_their_tool_on_the_way_back() {
        let response = answer(include_bytes!(
            "../../../tests/fixtures/gemini/parallel_function_calls.json"
        ))
        .unwrap();
        let ids: Vec<String> = response.tool_calls().map(|c| c.id.clone()).collect();
        let request = request(vec![
            message(Role::Assistant, response.content.clone()),
            message(
                Role::Tool,
                ids.iter().map(|id| result(id, "done", false)).collect(),
            ),
        ]);
        let names: Vec<Value> = sent(&request)["contents"][1]["parts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["functionResponse"]["name"].clone())
            .collect();
        assert_eq!(names, [json!("power_disco_ball"), json!("start_music")]);
    }

    #[test]
    fn a_blocked_prompt_is_an_empty_content_filtered_answer() {
        let body =
            br#"{"promptFeedback":{"blockReason":"OTHER"},"usageMetadata":{"promptTokenCount":3}}"#;
        let response = answer(body).unwrap();
        assert!(response.content.is_empty());
        assert_eq!(response.stop_reason, Some(StopReason::ContentFilter));
        assert_eq!(response.native_stop_reason.as_deref(), Some("OTHER"));
        assert_eq!(response.usage.unwrap().input_tokens, 3);
    }

    #[test]
    fn bodies_without_candidates_are_bad_gateway() {
        for body in [&b"{}"[..], b"[]", b"<html>", br#"{"candidates": 3}"#] {
            let err = answer(body).unwrap_err();
            assert!(matches!(err, ProxyError::BadUpstreamBody(_)), "{err:?}");
        }
    }

    #[test]
    fn compact_json_keeps_key_order_and_the_insides_of_strings() {
        assert_eq!(
            compact("{\n  \"b\": [1, 2],\n  \"a\": \"x y \\\" z\"\n}"),
            r#"{"b":[1,2],"a":"x y \" z"}"#
        );
        assert_eq!(compact(r#"{"a":1}"#), r#"{"a":1}"#);
    }

    #[test]
    fn a_stream_becomes_events() {
        let events = decode(include_bytes!("../../../tests/fixtures/gemini/stream.sse"));
        assert_eq!(
            events.unwrap(),
            [
                StreamEvent::Start {
                    id: Some("nSfJZ6aeCpu57M8P8s6a-Ac".into()),
                    model: Some("gemini-1.5-flash-002".into()),
                },
                StreamEvent::Text("¡Hola".into()),
                StreamEvent::Usage(Usage {
                    input_tokens: 4,
                    ..Usage::default()
                }),
                StreamEvent::Text("! 👋 ¿Qué tal?".into()),
                StreamEvent::Usage(Usage {
                    input_tokens: 4,
                    output_tokens: 12,
                    ..Usage::default()
                }),
                StreamEvent::Stop {
                    reason: StopReason::Stop,
                    native: Some("STOP".into()),
                },
            ]
        );
    }

    #[test]
    fn a_streamed_call_is_a_start_and_its_whole_arguments() {
        let events = decode(include_bytes!(
            "../../../tests/fixtures/gemini/function_call_stream.sse"
        ))
        .unwrap();
        let calls: Vec<&StreamEvent> = events
            .iter()
            .filter(|e| {
                matches!(
                    e,
                    StreamEvent::ToolCallStart { .. } | StreamEvent::ToolArguments { .. }
                )
            })
            .collect();
        assert_eq!(
            calls,
            [
                &StreamEvent::ToolCallStart {
                    index: 0,
                    id: "call_0_gTPJZ5P0DJnh7M8PpMW00Qs".into(),
                    name: "get_current_weather".into(),
                },
                &StreamEvent::ToolArguments {
                    index: 0,
                    fragment: r#"{"location":"Boston, MA"}"#.into(),
                },
                &StreamEvent::ToolCallStart {
                    index: 1,
                    id: "call_1_gTPJZ5P0DJnh7M8PpMW00Qs".into(),
                    name: "get_current_weather".into(),
                },
                &StreamEvent::ToolArguments {
                    index: 1,
                    fragment: r#"{"location":"San Francisco, CA"}"#.into(),
                },
            ]
        );
        assert_eq!(
            events.last(),
            Some(&StreamEvent::Stop {
                reason: StopReason::ToolCalls,
                native: Some("STOP".into()),
            })
        );
    }

    #[test]
    fn a_collected_stream_is_the_whole_answer() {
        for stream in [
            &include_bytes!("../../../tests/fixtures/gemini/stream.sse")[..],
            include_bytes!("../../../tests/fixtures/gemini/function_call_stream.sse"),
            include_bytes!("../../../tests/fixtures/gemini/thinking_stream.sse"),
        ] {
            let collected = collect(decode(stream).unwrap());
            assert_eq!(collected, answer(&whole_of(stream)).unwrap());
        }
    }

    #[test]
    fn a_stream_without_a_finish_reason_is_incomplete() {
        let stream = include_bytes!("../../../tests/fixtures/gemini/stream.sse");
        let text = std::str::from_utf8(stream).unwrap();
        let first = &text[..text[1..].find("data:").unwrap() + 1];
        assert!(
            !first.contains("finishReason"),
            "the fixture's first event has no finish"
        );
        let err = decode(first.as_bytes()).unwrap_err();
        assert!(matches!(err, ProxyError::Unreachable(_)), "{err:?}");
        assert!(err.to_string().contains("finishReason"), "{err}");
    }

    #[test]
    fn an_error_event_ends_the_stream_with_its_data() {
        let stream = b"data: {\"candidates\": [{\"content\": {\"parts\": [{\"text\": \"a\"}]}}]}\n\n\
            data: {\"error\": {\"code\": 503, \"message\": \"overloaded\", \"status\": \"UNAVAILABLE\"}}\n\n";
        match decode(stream) {
            Err(ProxyError::StreamEvent(data)) => assert!(data.starts_with(b"{\"error\"")),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_stream_event_that_is_not_json_is_bad_gateway() {
        let err = decode(b"data: [DONE]\n\n").unwrap_err();
        assert!(matches!(err, ProxyError::BadUpstreamBody(_)), "{err:?}");
    }

    #[test]
    fn a_blocked_prompt_in_a_stream_stops_it_as_filtered() {
        let stream = b"data: {\"promptFeedback\": {\"blockReason\": \"SAFETY\"}, \"usageMetadata\": {\"promptTokenCount\": 5}}\n\n";
        let events = decode(stream).unwrap();
        assert_eq!(
            events.last(),
            Some(&StreamEvent::Stop {
                reason: StopReason::ContentFilter,
                native: Some("SAFETY".into()),
            })
        );
    }

    /// A Gemini answer for `response`, each part as its own chunk when `chunks` (a stream).
    fn render(response: &Response, native: &str, metadata: &Value) -> Vec<Value> {
        let parts: Vec<Value> = response
            .content
            .iter()
            .map(|part| match part {
                Part::Text { text, .. } => json!({"text": text}),
                Part::Reasoning { text, .. } => json!({"text": text, "thought": true}),
                Part::ToolCall(call) => {
                    let args: Value = serde_json::from_str(&call.arguments).unwrap();
                    // Pretty, so that the answer's arguments must be compacted.
                    let pretty = serde_json::to_string_pretty(&args).unwrap();
                    json!({"functionCall": {"id": call.id, "name": call.name,
                        "args": serde_json::from_str::<Value>(&pretty).unwrap()}})
                }
                _ => unreachable!("not generated"),
            })
            .collect();
        let chunk = |parts: Vec<Value>| {
            let mut chunk = json!({
                "candidates": [{"content": {"role": "model", "parts": parts}, "index": 0}],
                "modelVersion": response.model,
            });
            if let Some(id) = &response.id {
                chunk["responseId"] = id.as_str().into();
            }
            chunk
        };
        let mut chunks: Vec<Value> = parts.into_iter().map(|p| chunk(vec![p])).collect();
        chunks.push(chunk(vec![]));
        let last = chunks.last_mut().unwrap();
        last["candidates"][0]["finishReason"] = native.into();
        last["usageMetadata"] = metadata.clone();
        chunks
    }

    fn arbitrary_part() -> impl Strategy<Value = Part> {
        prop_oneof![
            "\\PC{1,12}".prop_map(Part::text),
            "\\PC{1,12}".prop_map(|text| Part::Reasoning {
                text,
                signature: None
            }),
            (
                "[a-z_]{1,8}",
                prop::collection::btree_map("[a-z]{1,4}", any::<i32>(), 0..3)
            )
                .prop_map(|(name, args)| {
                    Part::ToolCall(ToolCall {
                        id: String::new(),
                        name,
                        arguments: serde_json::to_string(&args).unwrap(),
                        cache_control: None,
                    })
                }),
        ]
    }

    fn arbitrary_response() -> impl Strategy<Value = (Response, &'static str)> {
        (
            prop::collection::vec(arbitrary_part(), 0..6),
            prop::option::of("[A-Za-z0-9_-]{1,12}"),
            "[a-z0-9.-]{1,12}",
            prop::sample::select(vec![
                "STOP",
                "MAX_TOKENS",
                "SAFETY",
                "OTHER",
                "MALFORMED_FUNCTION_CALL",
            ]),
            (0..1000u64, 0..1000u64, 0..1000u64, 0..1000u64),
        )
            .prop_map(
                |(parts, id, model, native, (input, cached, output, thoughts))| {
                    let mut content = Vec::new();
                    let mut calls = 0;
                    for part in parts {
                        match part {
                            Part::Text { text, .. } => push_piece(&mut content, Piece::Text(text)),
                            Part::Reasoning { text, .. } => {
                                push_piece(&mut content, Piece::Reasoning(text))
                            }
                            Part::ToolCall(mut call) => {
                                call.id = format!("fc_{calls}");
                                calls += 1;
                                content.push(Part::ToolCall(call));
                            }
                            _ => {}
                        }
                    }
                    let response = Response {
                        id,
                        model,
                        content,
                        stop_reason: Some(stop_reason(native, calls > 0)),
                        native_stop_reason: Some(native.into()),
                        usage: Some(Usage {
                            input_tokens: input + cached,
                            output_tokens: output + thoughts,
                            cache_read_tokens: cached,
                            cache_write_tokens: 0,
                            reasoning_tokens: thoughts,
                        }),
                    };
                    (response, native)
                },
            )
    }

    fn metadata_of(usage: &Usage) -> Value {
        json!({
            "promptTokenCount": usage.input_tokens,
            "cachedContentTokenCount": usage.cache_read_tokens,
            "candidatesTokenCount": usage.output_tokens - usage.reasoning_tokens,
            "thoughtsTokenCount": usage.reasoning_tokens,
            "totalTokenCount": usage.input_tokens + usage.output_tokens,
        })
    }

    fn arbitrary_json() -> impl Strategy<Value = Value> {
        let keys = prop::sample::select(vec![
            "candidates",
            "content",
            "parts",
            "text",
            "thought",
            "functionCall",
            "name",
            "args",
            "id",
            "finishReason",
            "promptFeedback",
            "blockReason",
            "usageMetadata",
            "promptTokenCount",
            "thoughtsTokenCount",
            "modelVersion",
            "responseId",
            "error",
        ]);
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            "\\PC{0,6}".prop_map(Value::from),
        ];
        leaf.prop_recursive(6, 64, 5, move |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::vec((keys.clone(), inner), 0..5).prop_map(|fields| {
                    Value::Object(fields.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
                }),
            ]
        })
    }

    proptest! {
        #[test]
        fn an_answer_survives_becoming_a_gemini_answer_and_back((response, native) in arbitrary_response()) {
            let chunks = render(&response, native, &metadata_of(response.usage.as_ref().unwrap()));
            let whole = whole_of(
                chunks.iter().map(|c| format!("data: {c}\n\n")).collect::<String>().as_bytes(),
            );
            prop_assert_eq!(&answer(&whole).unwrap(), &response);
            let stream: String = chunks.iter().map(|c| format!("data: {c}\n\n")).collect();
            prop_assert_eq!(&collect(decode(stream.as_bytes()).unwrap()), &response);
        }

        #[test]
        fn arbitrary_bytes_never_panic_an_answer_or_a_stream(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
            let _ = answer(&bytes);
            let _ = decode(&bytes);
        }

        #[test]
        fn arbitrary_json_never_panics_an_answer_or_a_stream(value in arbitrary_json()) {
            let text = value.to_string();
            let _ = answer(text.as_bytes());
            let _ = decode(format!("data: {text}\n\n").as_bytes());
        }
    }
}
