//! Anthropic Messages as an upstream: the model as a Messages request, and Anthropic's answers
//! and event streams back into the model.
//!
//! What the translation changes, because Anthropic requires it or cannot say otherwise:
//! - system messages inside the conversation join the top-level `system`, after it;
//! - tool results and the user's text after them become one user turn, results first, and
//!   any other consecutive turns of one role are merged;
//! - reasoning without a signature (from another provider) is dropped: Anthropic refuses
//!   unsigned thinking; empty text parts are dropped too, which Anthropic refuses;
//! - arguments that are not a JSON object become `{"arguments": <text>}`
//!   ([`ToolCall::arguments_object`]);
//! - `seed` is dropped (Anthropic has none), and so is `parallel_tool_calls: true` (its default);
//! - structured output becomes a forced tool, [`STRUCTURED_OUTPUT_TOOL`].

use std::borrow::Cow;

use actix_web::{
    http::{
        header::{HeaderName, HeaderValue},
        Uri,
    },
    web::Bytes,
};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::types::{compact_json, stop_reason, AnswerBlock, BlockOut, Content, WireUsage};
use crate::{
    error::ProxyError,
    formats::{
        bad_body, ended_early, sensitive, unsupported, Endpoint, Format, PassThrough,
        StreamDecoder, Upstream, UpstreamRequest,
    },
    model::{
        Part, Request, Response, ResponseFormat, Role, StopReason, StreamEvent, ToolCall,
        ToolChoice, ToolResult, Usage,
    },
    util::{
        json::{has_top_level_key, rewrite_object, JsonObject},
        sse,
    },
};

const API_KEY: HeaderName = HeaderName::from_static("x-api-key");
const VERSION: HeaderName = HeaderName::from_static("anthropic-version");
const BETA: HeaderName = HeaderName::from_static("anthropic-beta");

/// The tool that carries structured output, as LiteLLM does it: a request's `response_format`
/// becomes this one tool, its schema the tool's input schema, and the call forced; the call's
/// input comes back as the answer's text, with the stop reason `stop`. Forcing a tool leaves
/// no room for thinking (Anthropic refuses both at once), so a request with structured output
/// is sent without its reasoning.
pub const STRUCTURED_OUTPUT_TOOL: &str = "json_tool_call";

/// Whether the request makes the model call a tool (`any` or a named one).
fn forces_a_tool(request: &Request) -> bool {
    matches!(
        request.tool_choice,
        Some(ToolChoice::Required | ToolChoice::Tool(_))
    )
}

/// Whether the last assistant turn, when it called tools, opens with signed thinking, as
/// Anthropic requires of a tool loop with thinking on.
fn last_tool_turn_thought(request: &Request) -> bool {
    let Some(last) = request
        .messages
        .iter()
        .rev()
        .find(|message| message.role == Role::Assistant)
    else {
        return true;
    };
    let calls = last.content.iter().any(|p| matches!(p, Part::ToolCall(_)));
    !calls
        || matches!(
            last.content.first(),
            Some(
                Part::Reasoning {
                    signature: Some(_),
                    ..
                } | Part::RedactedReasoning { .. }
            )
        )
}

/// Anthropic's minimum thinking budget.
const MIN_BUDGET: u64 = 1024;

pub struct Anthropic {
    endpoint: Endpoint,
    url: Uri,
    version: HeaderValue,
    default_max_tokens: u64,
}

impl Anthropic {
    /// `version` is the `anthropic-version` to send; `default_max_tokens` the `max_tokens`
    /// when a request has none (Anthropic requires one).
    pub fn new(endpoint: Endpoint, version: HeaderValue, default_max_tokens: u64) -> Self {
        Self {
            url: endpoint.url("messages"),
            endpoint,
            version,
            default_max_tokens,
        }
    }
}

/// The caller's key as `x-api-key` (marked sensitive, so that it is never printed) when there
/// is one, and the `anthropic-version`.
fn auth_headers(key: Option<&HeaderValue>, version: HeaderValue) -> Vec<(HeaderName, HeaderValue)> {
    let mut headers = Vec::with_capacity(3);
    if let Some(key) = key {
        headers.push((API_KEY, sensitive(key)));
    }
    headers.push((VERSION, version));
    headers
}

impl Upstream for Anthropic {
    fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    fn format(&self) -> Format {
        Format::Anthropic
    }

    fn translate_request(
        &self,
        request: &Request,
        model: &str,
        key: Option<&HeaderValue>,
    ) -> Result<UpstreamRequest, ProxyError> {
        let body = translate_body(request, model, self.default_max_tokens, self.endpoint.name)?;
        Ok(UpstreamRequest {
            url: self.url.clone(),
            headers: auth_headers(key, self.version.clone()),
            body: Bytes::from(body),
        })
    }

    fn pass_through(
        &self,
        request: &PassThrough<'_>,
        model: &str,
        key: Option<&HeaderValue>,
    ) -> Result<UpstreamRequest, ProxyError> {
        let url = match request.query.filter(|query| !query.is_empty()) {
            Some(query) => format!("{}?{query}", self.url).parse().map_err(|_| {
                ProxyError::InvalidRequest("the request's query string is not valid".into())
            })?,
            None => self.url.clone(),
        };
        // The caller's SDK knows which version and betas its body is written for.
        let version = request
            .headers
            .iter()
            .find(|(name, _)| *name == VERSION)
            .map_or_else(|| self.version.clone(), |(_, value)| value.clone());
        let mut headers = auth_headers(key, version);
        headers.extend(
            request
                .headers
                .iter()
                .filter(|(name, _)| *name == BETA)
                .cloned(),
        );
        let body = if model == request.model && !has_top_level_key(request.body, request.remove) {
            request.body.clone()
        } else {
            rewrite_object(request.body, &[("model", model.into())], request.remove)
                .map(Bytes::from)
                .ok_or_else(|| {
                    ProxyError::InvalidRequest("the request body must be a JSON object".into())
                })?
        };
        Ok(UpstreamRequest { url, headers, body })
    }

    fn translate_response(
        &self,
        body: &[u8],
        requested_model: &str,
    ) -> Result<Response, ProxyError> {
        #[derive(Deserialize)]
        struct Message<'a> {
            id: Option<String>,
            model: Option<String>,
            #[serde(borrow)]
            content: Vec<AnswerBlock<'a>>,
            stop_reason: Option<String>,
            usage: Option<WireUsage>,
        }
        let message: Message =
            serde_json::from_slice(body).map_err(|e| bad_body(self.endpoint.name, e))?;
        let mut content = Vec::with_capacity(message.content.len());
        let mut structured = false;
        for block in message.content {
            match block.kind.as_ref() {
                "text" => content.push(Part::text(block.text.unwrap_or_default())),
                "tool_use" => {
                    let arguments = block
                        .input
                        .map_or_else(|| "{}".to_owned(), |input| compact_json(input.get()));
                    let name = block.name.unwrap_or_default();
                    if name == STRUCTURED_OUTPUT_TOOL {
                        structured = true;
                        content.push(Part::text(arguments));
                    } else {
                        content.push(Part::ToolCall(ToolCall {
                            id: block.id.unwrap_or_default(),
                            name,
                            arguments,
                            cache_control: None,
                        }));
                    }
                }
                "thinking" => content.push(Part::Reasoning {
                    text: block.thinking.unwrap_or_default(),
                    signature: block.signature.filter(|s| !s.is_empty()),
                }),
                "redacted_thinking" => content.push(Part::RedactedReasoning {
                    data: block.data.unwrap_or_default(),
                }),
                // Server tool calls and their results, citations' documents...: Anthropic's.
                _ => {}
            }
        }
        let calls = content.iter().any(|part| matches!(part, Part::ToolCall(_)));
        let stop = message
            .stop_reason
            .as_deref()
            .map(|native| stop_of(native, structured && !calls));
        Ok(Response {
            id: message.id,
            model: message.model.unwrap_or_else(|| requested_model.to_owned()),
            content,
            stop_reason: stop,
            native_stop_reason: message.stop_reason,
            usage: message.usage.map(WireUsage::to_usage),
        })
    }

    fn stream_decoder(&self) -> Box<dyn StreamDecoder> {
        Box::new(EventDecoder::new(self.endpoint.name))
    }
}

/// A stop reason; `tool_use` is a plain stop when the only tool called was the structured
/// output's.
fn stop_of(native: &str, only_structured: bool) -> StopReason {
    match stop_reason(native) {
        StopReason::ToolCalls if only_structured => StopReason::Stop,
        reason => reason,
    }
}

/// One turn of the conversation as Anthropic takes it.
struct Turn<'a> {
    role: &'static str,
    blocks: Vec<BlockOut<'a>>,
}

impl Serialize for Turn<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        #[serde(untagged)]
        enum TurnContent<'t, 'a> {
            Text(&'a str),
            Blocks(&'t [BlockOut<'a>]),
        }
        #[derive(Serialize)]
        struct Wire<'t, 'a> {
            role: &'static str,
            content: TurnContent<'t, 'a>,
        }
        let content = match self.blocks.as_slice() {
            [BlockOut::Text {
                text,
                cache_control: None,
            }] => TurnContent::Text(text),
            blocks => TurnContent::Blocks(blocks),
        };
        Wire {
            role: self.role,
            content,
        }
        .serialize(serializer)
    }
}

#[derive(Serialize)]
struct ToolOut<'a> {
    name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<&'a str>,
    input_schema: &'a Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    cache_control: Option<&'a Value>,
}

#[derive(Serialize)]
struct ChoiceOut<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    disable_parallel_tool_use: bool,
}

#[derive(Serialize)]
struct ThinkingOut {
    #[serde(rename = "type")]
    kind: &'static str,
    budget_tokens: u64,
}

#[derive(Serialize)]
struct MetadataOut<'a> {
    user_id: &'a str,
}

/// A message's parts as blocks, in order, leaving out what Anthropic refuses (see the module
/// doc).
fn blocks_of(parts: &[Part]) -> impl Iterator<Item = BlockOut<'_>> {
    parts.iter().filter_map(|part| match part {
        Part::Text { text, .. } if text.is_empty() => None,
        Part::Text { .. } | Part::Image { .. } => BlockOut::of_media(part),
        Part::ToolCall(call) => Some(BlockOut::tool_use(call)),
        Part::ToolResult(result) => Some(tool_result(result)),
        Part::Reasoning {
            text,
            signature: Some(signature),
        } => Some(BlockOut::Thinking {
            thinking: text,
            signature,
        }),
        Part::Reasoning { .. } => None,
        Part::RedactedReasoning { data } => Some(BlockOut::RedactedThinking { data }),
    })
}

fn tool_result(result: &ToolResult) -> BlockOut<'_> {
    let content = match result.content.as_slice() {
        [] => None,
        [Part::Text {
            text,
            cache_control: None,
        }] => Some(Content::Text(text)),
        parts => Some(Content::Blocks(
            parts.iter().filter_map(BlockOut::of_media).collect(),
        )),
    };
    BlockOut::ToolResult {
        tool_use_id: &result.call_id,
        content,
        is_error: result.is_error,
        cache_control: result.cache_control.as_ref(),
    }
}

/// The Messages API body for `request`, asking for `model`.
fn translate_body(
    request: &Request,
    model: &str,
    default_max_tokens: u64,
    provider: &str,
) -> Result<Vec<u8>, ProxyError> {
    let mut system: Vec<BlockOut> = request
        .system
        .iter()
        .filter(|part| part.as_text().is_some_and(|text| !text.is_empty()))
        .filter_map(BlockOut::of_media)
        .collect();
    let mut turns: Vec<Turn> = Vec::with_capacity(request.messages.len());
    for (i, message) in request.messages.iter().enumerate() {
        let role = match message.role {
            Role::System => {
                for part in &message.content {
                    match part {
                        Part::Text { text, .. } if text.is_empty() => {}
                        Part::Text { .. } => system.extend(BlockOut::of_media(part)),
                        _ => {
                            return Err(unsupported(
                                provider,
                                &format!("messages[{i}].content"),
                                "a system message can hold only text",
                            ))
                        }
                    }
                }
                continue;
            }
            Role::User | Role::Tool => "user",
            Role::Assistant => "assistant",
        };
        let blocks = blocks_of(&message.content);
        match turns.last_mut() {
            Some(last) if last.role == role => last.blocks.extend(blocks),
            _ => {
                let blocks: Vec<_> = blocks.collect();
                if !blocks.is_empty() {
                    turns.push(Turn { role, blocks });
                }
            }
        }
    }
    for turn in &mut turns {
        // Anthropic wants a user turn's tool results before anything else in it.
        if turn.role == "user" {
            turn.blocks
                .sort_by_key(|block| !matches!(block, BlockOut::ToolResult { .. }));
        }
    }

    let object_schema = json!({"type": "object"});
    let structured = match &request.response_format {
        Some(ResponseFormat::JsonSchema {
            schema,
            description,
            ..
        }) => Some((schema, description.as_deref())),
        Some(ResponseFormat::JsonObject) => Some((&object_schema, None)),
        Some(ResponseFormat::Text) | None => None,
    };
    let mut tools: Vec<ToolOut> = request
        .tools
        .iter()
        .map(|tool| ToolOut {
            name: &tool.name,
            description: tool.description.as_deref(),
            input_schema: &tool.parameters,
            cache_control: tool.cache_control.as_ref(),
        })
        .collect();
    let disable_parallel = request.parallel_tool_calls == Some(false);
    let tool_choice = if let Some((schema, description)) = structured {
        tools.push(ToolOut {
            name: STRUCTURED_OUTPUT_TOOL,
            description,
            input_schema: schema,
            cache_control: None,
        });
        Some(ChoiceOut {
            kind: "tool",
            name: Some(STRUCTURED_OUTPUT_TOOL),
            disable_parallel_tool_use: false,
        })
    } else if tools.is_empty() {
        // Anthropic takes no `tool_choice` without tools.
        None
    } else {
        let choice = |kind, name| ChoiceOut {
            kind,
            name,
            disable_parallel_tool_use: disable_parallel,
        };
        match &request.tool_choice {
            Some(ToolChoice::Auto) => Some(choice("auto", None)),
            Some(ToolChoice::Required) => Some(choice("any", None)),
            Some(ToolChoice::Tool(name)) => Some(choice("tool", Some(name.as_str()))),
            // `none` takes no `disable_parallel_tool_use`: no call, nothing in parallel.
            Some(ToolChoice::None) => Some(ChoiceOut {
                kind: "none",
                name: None,
                disable_parallel_tool_use: false,
            }),
            None if disable_parallel => Some(choice("auto", None)),
            None => None,
        }
    };

    let thinking = match structured {
        Some(_) => None,
        // Anthropic refuses thinking beside a forced tool, and beside a tool loop whose last
        // assistant turn does not open with its signed thinking (which only an Anthropic
        // answer has: a loop that began elsewhere goes on without thinking).
        None if forces_a_tool(request) || !last_tool_turn_thought(request) => None,
        None => request
            .reasoning
            .and_then(|reasoning| reasoning.budget_tokens())
            .map(|budget| budget.max(MIN_BUDGET)),
    };
    let mut max_tokens = request.max_tokens.unwrap_or(default_max_tokens);
    if let Some(budget) = thinking {
        // `max_tokens` counts the thinking too, and must be above its budget.
        if max_tokens <= budget {
            max_tokens = budget + MIN_BUDGET;
        }
    }

    let mut out = Vec::with_capacity(256 + request.messages.len() * 128);
    let mut body = Body {
        object: JsonObject::new(&mut out),
        written: Vec::with_capacity(16),
    };
    body.field("model", &model)?;
    // Plain text goes as one string, its parts joined by a blank line as the system messages
    // of other formats read; blocks only when one carries a `cache_control`, which only a
    // block can.
    let plain: Option<Vec<&str>> = system
        .iter()
        .map(|block| match block {
            BlockOut::Text {
                text,
                cache_control: None,
            } => Some(*text),
            _ => None,
        })
        .collect();
    match plain {
        _ if system.is_empty() => {}
        Some(texts) => body.field("system", &texts.join("\n\n"))?,
        None => body.field("system", &system)?,
    }
    body.field("messages", &turns)?;
    body.field("max_tokens", &max_tokens)?;
    if let Some(budget_tokens) = thinking {
        let thinking = ThinkingOut {
            kind: "enabled",
            budget_tokens,
        };
        body.field("thinking", &thinking)?;
    }
    if !tools.is_empty() {
        body.field("tools", &tools)?;
    }
    if let Some(choice) = &tool_choice {
        body.field("tool_choice", choice)?;
    }
    // While thinking, Anthropic refuses any temperature or top_k and a top_p below 0.95:
    // thinking was asked for, so those samplers give way (documented in docs/tools.md).
    let thinks = thinking.is_some();
    if let Some(temperature) = request.temperature.filter(|_| !thinks) {
        body.field("temperature", &temperature)?;
    }
    if let Some(top_p) = request.top_p.filter(|top_p| !thinks || *top_p >= 0.95) {
        body.field("top_p", &top_p)?;
    }
    if let Some(top_k) = request.top_k.filter(|_| !thinks) {
        body.field("top_k", &top_k)?;
    }
    if !request.stop.is_empty() {
        body.field("stop_sequences", &request.stop)?;
    }
    if let Some(user_id) = &request.user {
        body.field("metadata", &MetadataOut { user_id })?;
    }
    if request.stream {
        body.field("stream", &true)?;
    }
    for (name, value) in &request.extras {
        if !body.written.contains(&name.as_str()) {
            body.field(name, value)?;
        }
    }
    body.object.end();
    Ok(out)
}

/// The body being written, and the names of its fields so far.
struct Body<'w, 'n> {
    object: JsonObject<'w>,
    written: Vec<&'n str>,
}

impl<'n> Body<'_, 'n> {
    fn field(&mut self, name: &'n str, value: &impl Serialize) -> Result<(), ProxyError> {
        self.written.push(name);
        self.object
            .field(name, value)
            .map_err(|e| ProxyError::InvalidRequest(format!("`{name}` cannot be written: {e}")))
    }
}

/// What a content block of the stream is, by its index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Block {
    Text,
    /// A tool call, with its index among the answer's calls.
    Tool(usize),
    /// The structured output's tool: its input is the answer's text.
    Structured,
    Thinking,
    /// A block only Anthropic reads (a server tool's call or result).
    Other,
}

/// Anthropic's stream events in the model's: `message_start` gives the start and the input
/// counts, content blocks their text, calls and thinking, `message_delta` the final counts and
/// the stop reason; an `error` event fails the stream, and so does an end without
/// `message_stop`.
struct EventDecoder {
    provider: &'static str,
    /// Each content block's index and what it is, in the order they started.
    blocks: Vec<(usize, Block)>,
    calls: usize,
    structured: bool,
    usage: WireUsage,
    stopped: bool,
}

impl EventDecoder {
    fn new(provider: &'static str) -> Self {
        Self {
            provider,
            blocks: Vec::new(),
            calls: 0,
            structured: false,
            usage: WireUsage::default(),
            stopped: false,
        }
    }

    fn block(&self, index: Option<usize>) -> Option<Block> {
        let index = index?;
        // Deltas almost always belong to the block that started last.
        self.blocks
            .iter()
            .rev()
            .find(|(at, _)| *at == index)
            .map(|(_, block)| *block)
    }

    /// Merges a piece of Anthropic's usage and passes on the counts so far.
    fn usage(&mut self, usage: Option<WireUsage>, out: &mut Vec<StreamEvent>) {
        let Some(usage) = usage else {
            return;
        };
        self.usage.merge(&usage);
        let usage = self.usage.to_usage();
        if usage != Usage::default() {
            out.push(StreamEvent::Usage(usage));
        }
    }
}

#[derive(Deserialize)]
struct EventIn<'a> {
    #[serde(rename = "type", borrow, default)]
    kind: Option<Cow<'a, str>>,
    #[serde(default)]
    message: Option<StartIn>,
    #[serde(default)]
    index: Option<usize>,
    #[serde(borrow, default)]
    content_block: Option<AnswerBlock<'a>>,
    #[serde(borrow, default)]
    delta: Option<DeltaIn<'a>>,
    #[serde(default)]
    usage: Option<WireUsage>,
}

#[derive(Deserialize)]
struct StartIn {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    usage: Option<WireUsage>,
}

#[derive(Deserialize)]
struct DeltaIn<'a> {
    #[serde(rename = "type", borrow, default)]
    kind: Option<Cow<'a, str>>,
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    partial_json: Option<String>,
    #[serde(default)]
    thinking: Option<String>,
    #[serde(default)]
    signature: Option<String>,
    #[serde(default)]
    stop_reason: Option<String>,
}

fn non_empty(text: Option<String>) -> Option<String> {
    text.filter(|text| !text.is_empty())
}

impl StreamDecoder for EventDecoder {
    fn event(
        &mut self,
        event: &sse::Event<'_>,
        out: &mut Vec<StreamEvent>,
    ) -> Result<(), ProxyError> {
        let stream_failed =
            || ProxyError::StreamEvent(Bytes::copy_from_slice(event.data.as_bytes()));
        if event.name == Some("error") {
            return Err(stream_failed());
        }
        let parsed: EventIn = serde_json::from_str(&event.data).map_err(|e| {
            ProxyError::BadUpstreamBody(format!("{} stream event {e}", self.provider))
        })?;
        let kind = parsed.kind.as_deref().or(event.name).unwrap_or_default();
        match kind {
            "message_start" => {
                let message = parsed.message.unwrap_or(StartIn {
                    id: None,
                    model: None,
                    usage: None,
                });
                out.push(StreamEvent::Start {
                    id: message.id,
                    model: message.model,
                });
                self.usage(message.usage, out);
            }
            "content_block_start" => {
                let Some(block) = parsed.content_block else {
                    return Ok(());
                };
                let index = parsed.index.unwrap_or(self.blocks.len());
                let kind = match block.kind.as_ref() {
                    "text" => {
                        out.extend(non_empty(block.text).map(StreamEvent::Text));
                        Block::Text
                    }
                    "tool_use" => {
                        let name = block.name.unwrap_or_default();
                        // Anthropic opens with `{}` and streams the input; anything else is
                        // the input itself.
                        let input = block
                            .input
                            .map(|input| compact_json(input.get()))
                            .filter(|input| input != "{}");
                        if name == STRUCTURED_OUTPUT_TOOL {
                            self.structured = true;
                            out.extend(input.map(StreamEvent::Text));
                            Block::Structured
                        } else {
                            let call = self.calls;
                            self.calls += 1;
                            out.push(StreamEvent::ToolCallStart {
                                index: call,
                                id: block.id.unwrap_or_default(),
                                name,
                            });
                            out.extend(input.map(|fragment| StreamEvent::ToolArguments {
                                index: call,
                                fragment,
                            }));
                            Block::Tool(call)
                        }
                    }
                    "thinking" => {
                        out.extend(non_empty(block.thinking).map(StreamEvent::Reasoning));
                        out.extend(non_empty(block.signature).map(StreamEvent::ReasoningSignature));
                        Block::Thinking
                    }
                    "redacted_thinking" => {
                        out.push(StreamEvent::RedactedReasoning(
                            block.data.unwrap_or_default(),
                        ));
                        Block::Other
                    }
                    _ => Block::Other,
                };
                self.blocks.push((index, kind));
            }
            "content_block_delta" => {
                let Some(delta) = parsed.delta else {
                    return Ok(());
                };
                match delta.kind.as_deref().unwrap_or_default() {
                    "text_delta" => out.extend(non_empty(delta.text).map(StreamEvent::Text)),
                    "input_json_delta" => {
                        let Some(fragment) = non_empty(delta.partial_json) else {
                            return Ok(());
                        };
                        match self.block(parsed.index) {
                            Some(Block::Tool(index)) => {
                                out.push(StreamEvent::ToolArguments { index, fragment })
                            }
                            Some(Block::Structured) => out.push(StreamEvent::Text(fragment)),
                            _ => {}
                        }
                    }
                    "thinking_delta" => {
                        out.extend(non_empty(delta.thinking).map(StreamEvent::Reasoning))
                    }
                    "signature_delta" => {
                        out.extend(non_empty(delta.signature).map(StreamEvent::ReasoningSignature))
                    }
                    // Citations and whatever comes next: not content the model carries.
                    _ => {}
                }
            }
            "message_delta" => {
                self.usage(parsed.usage, out);
                if let Some(native) = parsed.delta.and_then(|delta| delta.stop_reason) {
                    let only_structured = self.structured && self.calls == 0;
                    out.push(StreamEvent::Stop {
                        reason: stop_of(&native, only_structured),
                        native: Some(native),
                    });
                }
            }
            "message_stop" => self.stopped = true,
            "error" => return Err(stream_failed()),
            // `ping`, `content_block_stop`, and event types yet to come.
            _ => {}
        }
        Ok(())
    }

    fn end(&mut self, _out: &mut Vec<StreamEvent>) -> Result<(), ProxyError> {
        if self.stopped {
            return Ok(());
        }
        Err(ended_early(self.provider, "message_stop event"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        formats::{anthropic::door, StreamEncoder},
        model::{stream::Collector, Effort, Image, Message, Reasoning, Tool, ToolCall, ToolChoice},
    };
    use serde_json::json;

    fn provider() -> Anthropic {
        let endpoint = Endpoint {
            name: "anthropic",
            base_url: "http://upstream.test/v1".into(),
            key_required: true,
            headers: vec![],
            held_key: None,
        };
        Anthropic::new(endpoint, HeaderValue::from_static("2023-06-01"), 1024)
    }

    fn hi() -> Vec<Message> {
        vec![Message::text(Role::User, "hi")]
    }

    fn request(messages: Vec<Message>) -> Request {
        Request {
            model: "claude".into(),
            messages,
            ..Request::default()
        }
    }

    fn sent(request: &Request) -> Value {
        let upstream = provider()
            .translate_request(request, "claude-x", None)
            .unwrap();
        serde_json::from_slice(&upstream.body).unwrap()
    }

    fn call(id: &str, name: &str, arguments: &str) -> Part {
        Part::ToolCall(ToolCall {
            id: id.into(),
            name: name.into(),
            arguments: arguments.into(),
            cache_control: None,
        })
    }

    fn result(call_id: &str, text: &str) -> Part {
        Part::ToolResult(ToolResult {
            call_id: call_id.into(),
            content: vec![Part::text(text)],
            is_error: false,
            cache_control: None,
        })
    }

    fn tool(name: &str) -> Tool {
        Tool {
            name: name.into(),
            description: Some("Does it.".into()),
            parameters: json!({"type": "object", "properties": {"city": {"type": "string"}}}),
            cache_control: None,
            strict: None,
        }
    }

    /// Feeds a whole stream to the decoder and collects what it decoded.
    fn decode(stream: &[u8]) -> Result<Response, ProxyError> {
        let mut decoder = provider().stream_decoder();
        let mut collector = Collector::default();
        let mut events = Vec::new();
        let mut parser = sse::Parser::default();
        parser.feed(stream, |event| decoder.event(&event, &mut events))?;
        parser.finish(|event| decoder.event(&event, &mut events))?;
        decoder.end(&mut events)?;
        for event in events {
            collector.event(event);
        }
        Ok(collector.finish())
    }

    fn answer(message: Value) -> Response {
        provider()
            .translate_response(message.to_string().as_bytes(), "asked")
            .unwrap()
    }

    #[test]
    fn auth_maps_to_x_api_key_and_version() {
        let key = HeaderValue::from_static("sk-ant-test");
        let upstream = provider()
            .translate_request(&request(hi()), "claude-x", Some(&key))
            .unwrap();
        assert_eq!(upstream.url, "http://upstream.test/v1/messages");
        assert_eq!(upstream.headers[0].0, "x-api-key");
        assert_eq!(upstream.headers[0].1, "sk-ant-test");
        assert!(upstream.headers[0].1.is_sensitive());
        assert_eq!(upstream.headers[1].0, "anthropic-version");
        assert_eq!(upstream.headers[1].1, "2023-06-01");
        assert_eq!(provider().format(), Format::Anthropic);
    }

    #[test]
    fn the_model_asked_for_replaces_the_callers_and_only_the_version_goes_without_a_key() {
        let upstream = provider()
            .translate_request(&request(hi()), "claude-x", None)
            .unwrap();
        assert_eq!(
            std::str::from_utf8(&upstream.body).unwrap(),
            r#"{"model":"claude-x","messages":[{"role":"user","content":"hi"}],"max_tokens":1024}"#
        );
        assert_eq!(upstream.headers.len(), 1);
    }

    #[test]
    fn system_messages_join_the_system_prompt_in_order() {
        let mut request = request(vec![
            Message::text(Role::User, "hi"),
            Message::text(Role::System, "Be kind."),
            Message::text(Role::Assistant, "hello"),
        ]);
        let body = sent(&request);
        assert_eq!(body["system"], "Be kind.");
        assert_eq!(
            body["messages"],
            json!([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}])
        );
        request.system = vec![Part::Text {
            text: "Be brief.".into(),
            cache_control: Some(json!({"type": "ephemeral"})),
        }];
        assert_eq!(
            sent(&request)["system"],
            json!([
                {"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}},
                {"type": "text", "text": "Be kind."},
            ])
        );
    }

    #[test]
    fn a_system_message_with_an_image_is_refused() {
        let request = request(vec![Message {
            role: Role::System,
            content: vec![Part::Image {
                image: Image::Url {
                    url: "https://x.test/a.png".into(),
                    media_type: "image/png",
                },
                cache_control: None,
            }],
        }]);
        let err = provider()
            .translate_request(&request, "c", None)
            .unwrap_err();
        assert!(matches!(err, ProxyError::InvalidRequest(_)));
        assert!(err.to_string().contains("messages[0].content"), "{err}");
    }

    #[test]
    fn max_tokens_defaults_when_absent_and_is_kept_when_given() {
        assert_eq!(sent(&request(hi()))["max_tokens"], 1024);
        let given = Request {
            max_tokens: Some(7),
            ..request(hi())
        };
        assert_eq!(sent(&given)["max_tokens"], 7);
    }

    #[test]
    fn options_become_anthropics_fields_and_extras_follow_in_order() {
        let request = Request {
            temperature: Some(0.5),
            top_p: Some(0.9),
            top_k: Some(5),
            stop: vec!["END".into()],
            seed: Some(42),
            user: Some("u1".into()),
            stream: true,
            include_usage: true,
            extras: vec![
                ("zeta".into(), json!(1)),
                ("model".into(), json!("not this")),
                ("alpha".into(), json!({"b": null})),
            ],
            ..request(hi())
        };
        let upstream = provider()
            .translate_request(&request, "claude-x", None)
            .unwrap();
        assert_eq!(
            std::str::from_utf8(&upstream.body).unwrap(),
            r#"{"model":"claude-x","messages":[{"role":"user","content":"hi"}],"max_tokens":1024,"temperature":0.5,"top_p":0.9,"top_k":5,"stop_sequences":["END"],"metadata":{"user_id":"u1"},"stream":true,"zeta":1,"alpha":{"b":null}}"#
        );
    }

    #[test]
    fn image_parts_become_image_blocks() {
        let request = request(vec![Message {
            role: Role::User,
            content: vec![
                Part::text("What is this?"),
                Part::Image {
                    image: Image::Base64 {
                        media_type: "image/png",
                        data: "iVBORw0KGgo=".into(),
                    },
                    cache_control: None,
                },
                Part::Image {
                    image: Image::Url {
                        url: "https://example.com/cat.jpg".into(),
                        media_type: "image/jpeg",
                    },
                    cache_control: Some(json!({"type": "ephemeral"})),
                },
            ],
        }]);
        assert_eq!(
            sent(&request)["messages"][0]["content"],
            json!([
                {"type": "text", "text": "What is this?"},
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}},
                {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"},
                 "cache_control": {"type": "ephemeral"}},
            ])
        );
    }

    #[test]
    fn tool_results_and_the_text_after_them_become_one_user_turn() {
        let request = request(vec![
            Message::text(Role::User, "Weather in Paris and Rome?"),
            Message {
                role: Role::Assistant,
                content: vec![
                    Part::text(""),
                    call("t1", "get_weather", r#"{"city":"Paris"}"#),
                    call("t2", "get_weather", "{not json"),
                ],
            },
            Message {
                role: Role::Tool,
                content: vec![
                    result("t1", "15 degrees"),
                    Part::ToolResult(ToolResult {
                        call_id: "t2".into(),
                        content: vec![Part::text("no "), Part::text("such city")],
                        is_error: true,
                        cache_control: Some(json!({"type": "ephemeral"})),
                    }),
                ],
            },
            Message::text(Role::User, "Thanks. And tomorrow?"),
        ]);
        assert_eq!(
            sent(&request)["messages"],
            json!([
                {"role": "user", "content": "Weather in Paris and Rome?"},
                {"role": "assistant", "content": [
                    {"type": "tool_use", "id": "t1", "name": "get_weather", "input": {"city": "Paris"}},
                    {"type": "tool_use", "id": "t2", "name": "get_weather", "input": {"arguments": "{not json"}},
                ]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "t1", "content": "15 degrees"},
                    {"type": "tool_result", "tool_use_id": "t2", "content": [
                        {"type": "text", "text": "no "}, {"type": "text", "text": "such city"}],
                     "is_error": true, "cache_control": {"type": "ephemeral"}},
                    {"type": "text", "text": "Thanks. And tomorrow?"},
                ]},
            ])
        );
    }

    #[test]
    fn a_user_turn_puts_its_tool_results_first() {
        let request = request(vec![
            Message::text(Role::User, "Here:"),
            Message {
                role: Role::Tool,
                content: vec![result("t1", "ok")],
            },
        ]);
        assert_eq!(
            sent(&request)["messages"],
            json!([{"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "t1", "content": "ok"},
                {"type": "text", "text": "Here:"},
            ]}])
        );
    }

    #[test]
    fn only_signed_reasoning_goes_back_to_anthropic() {
        let request = request(vec![
            Message::text(Role::User, "hi"),
            Message {
                role: Role::Assistant,
                content: vec![
                    Part::Reasoning {
                        text: "from another provider".into(),
                        signature: None,
                    },
                    Part::Reasoning {
                        text: "mine".into(),
                        signature: Some("sig".into()),
                    },
                    Part::RedactedReasoning { data: "enc".into() },
                    Part::text("Hello."),
                ],
            },
            Message {
                role: Role::Assistant,
                content: vec![Part::Reasoning {
                    text: "only this".into(),
                    signature: None,
                }],
            },
        ]);
        assert_eq!(
            sent(&request)["messages"][1],
            json!({"role": "assistant", "content": [
                {"type": "thinking", "thinking": "mine", "signature": "sig"},
                {"type": "redacted_thinking", "data": "enc"},
                {"type": "text", "text": "Hello."},
            ]})
        );
        assert_eq!(sent(&request)["messages"].as_array().unwrap().len(), 2);
    }

    #[test]
    fn tools_tool_choice_and_parallel_calls_are_anthropics() {
        let with = |choice: Option<ToolChoice>, parallel: Option<bool>| {
            let request = Request {
                tools: vec![Tool {
                    cache_control: Some(json!({"type": "ephemeral"})),
                    ..tool("get_weather")
                }],
                tool_choice: choice,
                parallel_tool_calls: parallel,
                ..request(hi())
            };
            sent(&request)
        };
        let body = with(None, None);
        assert_eq!(
            body["tools"],
            json!([{"name": "get_weather", "description": "Does it.",
                    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
                    "cache_control": {"type": "ephemeral"}}])
        );
        assert!(body.get("tool_choice").is_none());
        for (choice, parallel, expected) in [
            (Some(ToolChoice::Auto), None, json!({"type": "auto"})),
            (Some(ToolChoice::None), Some(false), json!({"type": "none"})),
            (
                Some(ToolChoice::Required),
                Some(true),
                json!({"type": "any"}),
            ),
            (
                Some(ToolChoice::Tool("get_weather".into())),
                Some(false),
                json!({"type": "tool", "name": "get_weather", "disable_parallel_tool_use": true}),
            ),
            (
                None,
                Some(false),
                json!({"type": "auto", "disable_parallel_tool_use": true}),
            ),
        ] {
            assert_eq!(
                with(choice.clone(), parallel)["tool_choice"],
                expected,
                "{choice:?}"
            );
        }
        let no_tools = Request {
            tool_choice: Some(ToolChoice::Auto),
            parallel_tool_calls: Some(false),
            ..request(hi())
        };
        assert!(sent(&no_tools).get("tool_choice").is_none());
    }

    #[test]
    fn samplers_anthropic_refuses_while_thinking_give_way_to_thinking() {
        let sampled = |reasoning, top_p| Request {
            reasoning,
            temperature: Some(0.7),
            top_p: Some(top_p),
            top_k: Some(40),
            ..request(vec![Message::text(Role::User, "hi")])
        };
        let thinking = sent(&sampled(Some(Reasoning::Effort(Effort::Low)), 0.9));
        assert_eq!(thinking["thinking"]["budget_tokens"], 1024);
        for field in ["temperature", "top_p", "top_k"] {
            assert!(thinking.get(field).is_none(), "{field}: {thinking}");
        }
        let high_top_p = sent(&sampled(Some(Reasoning::Effort(Effort::Low)), 0.97));
        assert_eq!(high_top_p["top_p"], 0.97);
        let plain = sent(&sampled(None, 0.9));
        assert_eq!(
            (&plain["temperature"], &plain["top_p"], &plain["top_k"]),
            (&json!(0.7), &json!(0.9), &json!(40))
        );
    }

    #[test]
    fn thinking_is_left_out_where_anthropic_would_refuse_it() {
        let call = Part::ToolCall(ToolCall {
            id: "toolu_1".into(),
            name: "f".into(),
            arguments: "{}".into(),
            cache_control: None,
        });
        let result = Message {
            role: Role::Tool,
            content: vec![Part::ToolResult(ToolResult {
                call_id: "toolu_1".into(),
                content: vec![Part::text("ok")],
                is_error: false,
                cache_control: None,
            })],
        };
        let loop_of = |assistant: Vec<Part>| Request {
            reasoning: Some(Reasoning::Effort(Effort::High)),
            ..request(vec![
                Message::text(Role::User, "hi"),
                Message {
                    role: Role::Assistant,
                    content: assistant,
                },
                result.clone(),
            ])
        };
        // A loop that began at another provider: no signed thinking to send back.
        let unsigned = loop_of(vec![
            Part::Reasoning {
                text: "hmm".into(),
                signature: None,
            },
            call.clone(),
        ]);
        assert!(sent(&unsigned).get("thinking").is_none());
        // A loop of Anthropic's own keeps thinking.
        let signed = loop_of(vec![
            Part::Reasoning {
                text: "hmm".into(),
                signature: Some("sig".into()),
            },
            call.clone(),
        ]);
        assert_eq!(sent(&signed)["thinking"]["budget_tokens"], 4096);
        // A forced tool leaves no room to think.
        let forced = Request {
            tool_choice: Some(ToolChoice::Required),
            tools: vec![Tool {
                name: "f".into(),
                description: None,
                parameters: json!({"type": "object"}),
                cache_control: None,
                strict: None,
            }],
            ..request(vec![Message::text(Role::User, "hi")])
        };
        let forced = Request {
            reasoning: Some(Reasoning::Effort(Effort::Low)),
            ..forced
        };
        assert!(sent(&forced).get("thinking").is_none());
    }

    #[test]
    fn reasoning_becomes_a_thinking_budget_and_raises_max_tokens() {
        for (reasoning, max_tokens, budget, expected_max) in [
            (Reasoning::Budget(5000), Some(16000), Some(5000), 16000),
            (Reasoning::Budget(5000), Some(5000), Some(5000), 6024),
            (Reasoning::Budget(100), None, Some(1024), 2048),
            (Reasoning::Effort(Effort::High), None, Some(4096), 5120),
            (Reasoning::Adaptive, Some(8000), Some(2048), 8000),
            (Reasoning::Disabled, None, None, 1024),
        ] {
            let body = sent(&Request {
                reasoning: Some(reasoning),
                max_tokens,
                ..request(hi())
            });
            let expected = budget.map(|b| json!({"type": "enabled", "budget_tokens": b}));
            assert_eq!(body.get("thinking").cloned(), expected, "{reasoning:?}");
            assert_eq!(body["max_tokens"], expected_max, "{reasoning:?}");
        }
    }

    #[test]
    fn structured_output_is_a_forced_tool_whose_input_comes_back_as_text() {
        let schema = json!({"type": "object", "properties": {"answer": {"type": "integer"}}});
        let request = Request {
            response_format: Some(ResponseFormat::JsonSchema {
                name: "math".into(),
                description: Some("The answer.".into()),
                schema: schema.clone(),
                strict: Some(true),
            }),
            reasoning: Some(Reasoning::Effort(Effort::High)),
            tools: vec![tool("calc")],
            ..request(hi())
        };
        let body = sent(&request);
        assert_eq!(
            body["tools"][1],
            json!({"name": STRUCTURED_OUTPUT_TOOL, "description": "The answer.", "input_schema": schema})
        );
        assert_eq!(
            body["tool_choice"],
            json!({"type": "tool", "name": STRUCTURED_OUTPUT_TOOL})
        );
        assert!(
            body.get("thinking").is_none(),
            "a forced tool leaves no room to think"
        );
        let object = sent(&Request {
            response_format: Some(ResponseFormat::JsonObject),
            ..request.clone()
        });
        assert_eq!(
            object["tools"][1]["input_schema"],
            json!({"type": "object"})
        );
        let text = sent(&Request {
            response_format: Some(ResponseFormat::Text),
            ..request
        });
        assert!(text.get("tool_choice").is_none());

        let message = json!({
            "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-x",
            "content": [{"type": "tool_use", "id": "toolu_1", "name": STRUCTURED_OUTPUT_TOOL,
                         "input": {"answer": 42}}],
            "stop_reason": "tool_use", "stop_sequence": null,
            "usage": {"input_tokens": 10, "output_tokens": 5},
        });
        let response = answer(message);
        assert_eq!(response.content, [Part::text(r#"{"answer":42}"#)]);
        assert_eq!(response.stop_reason, Some(StopReason::Stop));
        assert_eq!(response.native_stop_reason.as_deref(), Some("tool_use"));

        let stream = format!(
            concat!(
                "event: message_start\ndata: {{\"type\":\"message_start\",\"message\":{{\"id\":\"msg_1\",\"model\":\"claude-x\",\"usage\":{{\"input_tokens\":10,\"output_tokens\":1}}}}}}\n\n",
                "event: content_block_start\ndata: {{\"type\":\"content_block_start\",\"index\":0,\"content_block\":{{\"type\":\"tool_use\",\"id\":\"toolu_1\",\"name\":\"{}\",\"input\":{{}}}}}}\n\n",
                "event: content_block_delta\ndata: {{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{{\"type\":\"input_json_delta\",\"partial_json\":\"{{\\\"answer\\\":\"}}}}\n\n",
                "event: content_block_delta\ndata: {{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{{\"type\":\"input_json_delta\",\"partial_json\":\"42}}\"}}}}\n\n",
                "event: message_delta\ndata: {{\"type\":\"message_delta\",\"delta\":{{\"stop_reason\":\"tool_use\"}},\"usage\":{{\"output_tokens\":5}}}}\n\n",
                "event: message_stop\ndata: {{\"type\":\"message_stop\"}}\n\n",
            ),
            STRUCTURED_OUTPUT_TOOL
        );
        assert_eq!(decode(stream.as_bytes()).unwrap(), response);
    }

    fn pass<'a>(
        body: &'a Bytes,
        query: Option<&'a str>,
        headers: &'a [(HeaderName, HeaderValue)],
        remove: &'a [&'a str],
    ) -> PassThrough<'a> {
        PassThrough {
            body,
            model: "anthropic/claude-x",
            stream: true,
            query,
            headers,
            remove,
        }
    }

    #[test]
    fn a_pass_through_keeps_the_body_query_version_and_betas() {
        let body = Bytes::from_static(br#"{"model":"anthropic/claude-x","max_tokens":5}"#);
        let headers = [
            (VERSION, HeaderValue::from_static("2024-01-01")),
            (
                BETA,
                HeaderValue::from_static("interleaved-thinking-2025-05-14"),
            ),
            (BETA, HeaderValue::from_static("context-1m-2025-08-07")),
            (
                HeaderName::from_static("x-other"),
                HeaderValue::from_static("no"),
            ),
        ];
        let key = HeaderValue::from_static("sk-ant");
        let upstream = provider()
            .pass_through(
                &pass(&body, Some("beta=true"), &headers, &[]),
                "anthropic/claude-x",
                Some(&key),
            )
            .unwrap();
        assert_eq!(upstream.url, "http://upstream.test/v1/messages?beta=true");
        assert_eq!(
            upstream.body.as_ptr(),
            body.as_ptr(),
            "the body is not copied"
        );
        let names: Vec<(&str, &str)> = upstream
            .headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.to_str().unwrap()))
            .collect();
        assert_eq!(
            names,
            [
                ("x-api-key", "sk-ant"),
                ("anthropic-version", "2024-01-01"),
                ("anthropic-beta", "interleaved-thinking-2025-05-14"),
                ("anthropic-beta", "context-1m-2025-08-07"),
            ]
        );
        assert!(upstream.headers[0].1.is_sensitive());
        let plain = provider()
            .pass_through(
                &pass(&body, None, &[], &["fallbacks"]),
                "anthropic/claude-x",
                None,
            )
            .unwrap();
        assert_eq!(plain.url, "http://upstream.test/v1/messages");
        assert_eq!(plain.headers[0].1, "2023-06-01");
        assert_eq!(plain.body, body, "no field to remove");
    }

    #[test]
    fn a_pass_through_rewrites_only_model_and_the_proxys_fields() {
        let body = Bytes::from_static(
            br#"{"model":"anthropic/claude-x","fallbacks":["b"],"x":{"a" : 1}}"#,
        );
        let upstream = provider()
            .pass_through(&pass(&body, None, &[], &["fallbacks"]), "claude-x", None)
            .unwrap();
        assert_eq!(
            std::str::from_utf8(&upstream.body).unwrap(),
            r#"{"model":"claude-x","x":{"a" : 1}}"#
        );
        let not_object = Bytes::from_static(b"[1]");
        let err = provider()
            .pass_through(&pass(&not_object, None, &[], &[]), "claude-x", None)
            .unwrap_err();
        assert!(matches!(err, ProxyError::InvalidRequest(_)));
    }

    #[test]
    fn a_message_is_normalized() {
        let body = include_bytes!("../../../tests/fixtures/anthropic/message.json");
        let response = provider().translate_response(body, "claude").unwrap();
        assert_eq!(
            response,
            Response {
                id: Some("msg_013Zva2CMHLNnXjNJJKqJ2EF".into()),
                model: "claude-3-5-haiku-20241022".into(),
                content: vec![Part::text("Hello! How can I help you today?")],
                stop_reason: Some(StopReason::Stop),
                native_stop_reason: Some("end_turn".into()),
                usage: Some(Usage {
                    input_tokens: 12,
                    output_tokens: 10,
                    ..Usage::default()
                }),
            }
        );
    }

    #[test]
    fn a_tool_use_message_keeps_its_blocks_in_order() {
        let body = include_bytes!("../../../tests/fixtures/anthropic/tool_use.json");
        let response = provider().translate_response(body, "claude").unwrap();
        assert_eq!(
            response.content,
            [
                Part::text("I'll check the current weather in San Francisco for you."),
                call(
                    "toolu_01A09q90qw90lq917835lq9",
                    "get_weather",
                    r#"{"location":"San Francisco, CA","unit":"celsius"}"#
                ),
            ]
        );
        assert_eq!(response.stop_reason, Some(StopReason::ToolCalls));
        assert_eq!(response.usage, None);
        let mixed = answer(json!({
            "model": "c",
            "content": [
                {"type": "thinking", "thinking": "hmm", "signature": "sig"},
                {"type": "redacted_thinking", "data": "enc"},
                {"type": "server_tool_use", "id": "srvtoolu_1", "name": "web_search", "input": {}},
                {"type": "text", "text": "a"},
                {"type": "text", "text": "b"},
            ],
            "stop_reason": "pause_turn",
            "usage": {"input_tokens": 5, "cache_read_input_tokens": 100,
                      "cache_creation_input_tokens": 20, "output_tokens": 7},
        }));
        assert_eq!(
            mixed.content,
            [
                Part::Reasoning {
                    text: "hmm".into(),
                    signature: Some("sig".into())
                },
                Part::RedactedReasoning { data: "enc".into() },
                Part::text("a"),
                Part::text("b"),
            ]
        );
        assert_eq!(
            mixed.stop_reason,
            Some(StopReason::Other("pause_turn".into()))
        );
        assert_eq!(
            mixed.usage,
            Some(Usage {
                input_tokens: 125,
                output_tokens: 7,
                cache_read_tokens: 100,
                cache_write_tokens: 20,
                reasoning_tokens: 0,
            })
        );
    }

    #[test]
    fn bodies_without_content_are_bad_gateway() {
        for body in [&b"{}"[..], b"[]", b"not json", br#"{"content":null}"#] {
            let err = provider().translate_response(body, "c").unwrap_err();
            assert!(matches!(err, ProxyError::BadUpstreamBody(_)), "{err:?}");
        }
        let response = provider()
            .translate_response(br#"{"content":[]}"#, "asked")
            .unwrap();
        assert_eq!(response.model, "asked");
    }

    #[test]
    fn a_text_stream_collects_to_its_message() {
        let stream = include_bytes!("../../../tests/fixtures/anthropic/stream.sse");
        let expected = answer(json!({
            "id": "msg_01XFDUDYJgAACzvnptvVoYEL", "model": "claude-3-5-haiku-20241022",
            "content": [{"type": "text", "text": "¡Hola! 👋 ¿Qué tal?"}],
            "stop_reason": "end_turn", "usage": {"input_tokens": 25, "output_tokens": 15},
        }));
        assert_eq!(decode(stream).unwrap(), expected);
    }

    #[test]
    fn a_tool_use_stream_collects_to_its_message() {
        let stream = include_bytes!("../../../tests/fixtures/anthropic/tool_use_stream.sse");
        let expected = answer(json!({
            "id": "msg_014p7gG3wDgGV9EUtLvnow3U", "model": "claude-opus-4-6",
            "content": [
                {"type": "text", "text": "Okay, let's check the weather for San Francisco, CA:"},
                // The streamed input as written, not re-serialized.
                {"type": "tool_use", "id": "toolu_01T1x1fJ34qAmk2tNTrN7Up6", "name": "get_weather",
                 "input": {"location": "San Francisco, CA", "unit": "fahrenheit"}},
            ],
            "stop_reason": "tool_use", "usage": {"input_tokens": 472, "output_tokens": 89},
        }));
        let decoded = decode(stream).unwrap();
        let Some(Part::ToolCall(streamed)) = decoded.content.get(1) else {
            panic!("a tool call expected: {decoded:?}");
        };
        assert_eq!(
            streamed.arguments,
            r#"{"location": "San Francisco, CA", "unit": "fahrenheit"}"#
        );
        assert_eq!(
            Response {
                content: vec![decoded.content[0].clone(), expected.content[1].clone()],
                ..decoded.clone()
            },
            expected
        );
        assert_eq!(
            compact_json(&streamed.arguments),
            expected.tool_calls().next().unwrap().arguments
        );
    }

    #[test]
    fn a_thinking_stream_collects_to_its_message() {
        let stream = include_bytes!("../../../tests/fixtures/anthropic/thinking_stream.sse");
        let expected = answer(json!({
            "id": "msg_01...", "model": "claude-sonnet-4-5",
            "content": [
                {"type": "thinking",
                 "thinking": "I need to find the GCD of 1071 and 462 using the Euclidean algorithm.\n\n1071 = 2 × 462 + 147\n462 = 3 × 147 + 21\n147 = 7 × 21 + 0\n\nSo GCD(1071, 462) = 21",
                 "signature": "EqQBCgIYAhIM1gbcDa9GJwZA2b3hGgxBdjrkzLoky3dl1pkiMOYds..."},
                {"type": "text", "text": "The greatest common divisor of 1071 and 462 is **21**."},
            ],
            "stop_reason": "end_turn",
        }));
        assert_eq!(decode(stream).unwrap(), expected);
    }

    #[test]
    fn stream_usage_counts_the_cache_and_survives_partial_repeats() {
        let stream = concat!(
            "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"m\",\"model\":\"c\",\"usage\":{\"input_tokens\":3,\"cache_read_input_tokens\":40,\"cache_creation_input_tokens\":7,\"output_tokens\":1}}}\n\n",
            "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"max_tokens\"},\"usage\":{\"input_tokens\":3,\"output_tokens\":9}}\n\n",
            "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
        );
        let response = decode(stream.as_bytes()).unwrap();
        assert_eq!(
            response.usage,
            Some(Usage {
                input_tokens: 50,
                output_tokens: 9,
                cache_read_tokens: 40,
                cache_write_tokens: 7,
                reasoning_tokens: 0,
            })
        );
        assert_eq!(response.stop_reason, Some(StopReason::Length));
    }

    #[test]
    fn interleaved_blocks_keep_their_tool_calls_apart() {
        let stream = concat!(
            "data: {\"type\":\"message_start\",\"message\":{\"id\":\"m\",\"model\":\"c\"}}\n\n",
            "data: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"tool_use\",\"id\":\"a\",\"name\":\"f\",\"input\":{}}}\n\n",
            "data: {\"type\":\"content_block_start\",\"index\":1,\"content_block\":{\"type\":\"server_tool_use\",\"id\":\"s\",\"name\":\"web_search\",\"input\":{}}}\n\n",
            "data: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"{\\\"query\\\":1}\"}}\n\n",
            "data: {\"type\":\"content_block_start\",\"index\":2,\"content_block\":{\"type\":\"tool_use\",\"id\":\"b\",\"name\":\"g\",\"input\":{}}}\n\n",
            "data: {\"type\":\"content_block_delta\",\"index\":2,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"{}\"}}\n\n",
            "data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"{\\\"x\\\":1}\"}}\n\n",
            "data: {\"type\":\"content_block_delta\",\"index\":9,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"lost\"}}\n\n",
            "data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"tool_use\"}}\n\n",
            "data: {\"type\":\"message_stop\"}\n\n",
        );
        let response = decode(stream.as_bytes()).unwrap();
        assert_eq!(
            response.content,
            [call("a", "f", r#"{"x":1}"#), call("b", "g", "{}")]
        );
    }

    #[test]
    fn a_stream_without_message_stop_is_incomplete() {
        let stream = include_bytes!("../../../tests/fixtures/anthropic/stream.sse");
        let text = std::str::from_utf8(stream).unwrap();
        let cut = &text[..text.find("event: message_stop").unwrap()];
        let err = decode(cut.as_bytes()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "upstream unreachable: the anthropic stream ended before its message_stop event; the answer is incomplete"
        );
        assert!(decode(stream).is_ok());
    }

    #[test]
    fn an_error_event_ends_the_stream_with_its_data() {
        let stream = include_bytes!("../../../tests/fixtures/anthropic/error.sse");
        let err = decode(stream).unwrap_err();
        assert!(matches!(err, ProxyError::StreamEvent(_)));
        assert_eq!(err.to_string(), "upstream stream failed: Overloaded");
        let unnamed = b"data: {\"type\":\"error\",\"error\":{\"type\":\"api_error\",\"message\":\"boom\"}}\n\n";
        assert_eq!(
            decode(unnamed).unwrap_err().to_string(),
            "upstream stream failed: boom"
        );
    }

    #[test]
    fn an_unreadable_event_is_a_bad_upstream_body() {
        let err = decode(b"event: content_block_delta\ndata: {not json\n\n").unwrap_err();
        assert!(matches!(err, ProxyError::BadUpstreamBody(_)), "{err:?}");
        assert!(err.to_string().contains("anthropic stream event"), "{err}");
    }

    mod properties {
        use super::*;
        use crate::formats::anthropic::types::MEDIA_TYPES;
        use proptest::prelude::*;

        fn text() -> impl Strategy<Value = String> {
            "[a-zA-Z0-9 .,!?é👋\"\\\\\n{}]{1,12}"
        }

        fn cache_control() -> impl Strategy<Value = Option<Value>> {
            prop_oneof![
                Just(None),
                Just(Some(json!({"type": "ephemeral"}))),
                Just(Some(json!({"type": "ephemeral", "ttl": "1h"}))),
            ]
        }

        fn text_part() -> impl Strategy<Value = Part> {
            (text(), cache_control()).prop_map(|(text, cache_control)| Part::Text {
                text,
                cache_control,
            })
        }

        fn image_part() -> impl Strategy<Value = Part> {
            let base64 =
                (0..MEDIA_TYPES.len(), "[A-Za-z0-9+/]{1,16}={0,2}").prop_map(|(at, data)| {
                    Image::Base64 {
                        media_type: MEDIA_TYPES[at],
                        data,
                    }
                });
            let extensions = [
                ("jpg", "image/jpeg"),
                ("png", "image/png"),
                ("gif", "image/gif"),
                ("webp", "image/webp"),
            ];
            let url = ("[a-z]{1,8}", 0..extensions.len()).prop_map(move |(name, at)| {
                let (extension, media_type) = extensions[at];
                Image::Url {
                    url: format!("https://example.com/{name}.{extension}"),
                    media_type,
                }
            });
            (prop_oneof![base64, url], cache_control()).prop_map(|(image, cache_control)| {
                Part::Image {
                    image,
                    cache_control,
                }
            })
        }

        /// Arguments as a compact JSON object, which is what Anthropic's `input` reads back as.
        fn arguments() -> impl Strategy<Value = String> {
            let leaf = prop_oneof![
                any::<i32>().prop_map(Value::from),
                any::<bool>().prop_map(Value::from),
                text().prop_map(Value::from),
            ];
            proptest::collection::btree_map("[a-z]{1,6}", leaf, 0..4)
                .prop_map(|map| Value::Object(map.into_iter().collect()).to_string())
        }

        fn tool_call(cached: bool) -> impl Strategy<Value = ToolCall> {
            (
                "toolu_[a-z0-9]{4}",
                "[a-z_]{1,8}",
                arguments(),
                cache_control(),
            )
                .prop_map(move |(id, name, arguments, cache_control)| ToolCall {
                    id,
                    name,
                    arguments,
                    cache_control: cache_control.filter(|_| cached),
                })
        }

        fn signature() -> impl Strategy<Value = String> {
            "[A-Za-z0-9+/=]{1,12}"
        }

        fn assistant_parts() -> impl Strategy<Value = Vec<Part>> {
            let part = prop_oneof![
                text_part(),
                tool_call(true).prop_map(Part::ToolCall),
                (text(), signature()).prop_map(|(text, signature)| Part::Reasoning {
                    text,
                    signature: Some(signature),
                }),
                signature().prop_map(|data| Part::RedactedReasoning { data }),
            ];
            proptest::collection::vec(part, 1..4)
        }

        fn user_parts() -> impl Strategy<Value = Vec<Part>> {
            proptest::collection::vec(prop_oneof![text_part(), image_part()], 1..4)
        }

        fn tool_results() -> impl Strategy<Value = Vec<Part>> {
            let content = proptest::collection::vec(prop_oneof![text_part(), image_part()], 0..3);
            let result = ("toolu_[a-z0-9]{4}", content, any::<bool>(), cache_control()).prop_map(
                |(call_id, content, is_error, cache_control)| {
                    Part::ToolResult(ToolResult {
                        call_id,
                        content,
                        is_error,
                        cache_control,
                    })
                },
            );
            proptest::collection::vec(result, 1..3)
        }

        /// One exchange: the user's side (text, tool results, or both, results first) and the
        /// assistant's answer.
        fn exchange() -> impl Strategy<Value = Vec<Message>> {
            let user = |content| Message {
                role: Role::User,
                content,
            };
            let results = |content| Message {
                role: Role::Tool,
                content,
            };
            let side = prop_oneof![
                user_parts().prop_map(move |parts| vec![user(parts)]),
                tool_results().prop_map(move |parts| vec![results(parts)]),
                (tool_results(), user_parts())
                    .prop_map(move |(done, parts)| vec![results(done), user(parts)]),
            ];
            (side, assistant_parts()).prop_map(|(mut side, answer)| {
                side.push(Message {
                    role: Role::Assistant,
                    content: answer,
                });
                side
            })
        }

        fn tools() -> impl Strategy<Value = Vec<Tool>> {
            let tool = ("[a-z]{1,8}", proptest::option::of(text()), cache_control()).prop_map(
                |(name, description, cache_control)| Tool {
                    parameters: json!({"type": "object", "properties": {name.clone(): {"type": "string"}}}),
                    name,
                    description,
                    cache_control,
                    strict: None,
                },
            );
            proptest::collection::vec(tool, 0..3)
        }

        /// A tool choice and parallel setting Anthropic expresses exactly, for these tools.
        fn choice(tools: &[Tool]) -> BoxedStrategy<(Option<ToolChoice>, Option<bool>)> {
            let Some(first) = tools.first() else {
                return Just((None, None)).boxed();
            };
            let name = first.name.clone();
            let parallel = prop_oneof![Just(None), Just(Some(false))];
            prop_oneof![
                Just((None, None)),
                Just((Some(ToolChoice::None), None)),
                (
                    prop_oneof![
                        Just(ToolChoice::Auto),
                        Just(ToolChoice::Required),
                        Just(ToolChoice::Tool(name)),
                    ],
                    parallel
                )
                    .prop_map(|(choice, parallel)| (Some(choice), parallel)),
            ]
            .boxed()
        }

        prop_compose! {
            fn any_request()(
                model in "[a-z0-9./-]{1,16}",
                system in proptest::collection::vec(text_part(), 0..3),
                exchanges in proptest::collection::vec(exchange(), 1..4),
                last_answered: bool,
                (tools, (tool_choice, parallel_tool_calls)) in tools().prop_flat_map(|tools| {
                    let choice = choice(&tools);
                    (Just(tools), choice)
                }),
                budget in proptest::option::of(1024u64..50_000),
                extra_tokens in 1u64..100_000,
                // Short decimals, as callers write them: serde_json's default float parsing is
                // not exact for every 17-digit number.
                temperature in proptest::option::of((0u32..=200).prop_map(|n| f64::from(n) / 100.0)),
                top_p in proptest::option::of((0u32..=1000).prop_map(|n| f64::from(n) / 1000.0)),
                top_k in proptest::option::of(0u64..500),
                stop in proptest::collection::vec("[A-Z]{1,5}", 0..3),
                user in proptest::option::of("[a-z0-9-]{1,10}"),
                stream: bool,
                extras in proptest::collection::btree_map("x_[a-z]{1,6}", prop_oneof![
                    any::<i64>().prop_map(Value::from),
                    text().prop_map(Value::from),
                    Just(json!({"nested": [1, null, "a"]})),
                ], 0..3),
            ) -> Request {
                let mut messages: Vec<Message> = exchanges.into_iter().flatten().collect();
                if !last_answered {
                    messages.pop();
                }
                Request {
                    model,
                    system,
                    messages,
                    tools,
                    tool_choice,
                    parallel_tool_calls,
                    max_tokens: Some(budget.unwrap_or(0) + extra_tokens),
                    reasoning: budget.map(Reasoning::Budget),
                    temperature,
                    top_p,
                    top_k,
                    stop,
                    user,
                    stream,
                    include_usage: true,
                    extras: extras.into_iter().collect(),
                    ..Request::default()
                }
            }
        }

        /// A stop reason with the native reason Anthropic would have given for it.
        fn stop() -> impl Strategy<Value = (StopReason, String)> {
            prop_oneof![
                Just((StopReason::Stop, "end_turn")),
                Just((StopReason::Stop, "stop_sequence")),
                Just((StopReason::Length, "max_tokens")),
                Just((StopReason::ToolCalls, "tool_use")),
                Just((StopReason::ContentFilter, "refusal")),
                Just((StopReason::Other("pause_turn".into()), "pause_turn")),
                Just((
                    StopReason::Other("model_context_window_exceeded".into()),
                    "model_context_window_exceeded"
                )),
            ]
            .prop_map(|(reason, native)| (reason, native.to_owned()))
        }

        fn usage() -> impl Strategy<Value = Usage> {
            (0u64..10_000, 1u64..10_000, 0u64..10_000, 0u64..10_000).prop_map(
                |(uncached, output, read, write)| Usage {
                    input_tokens: uncached + read + write,
                    output_tokens: output,
                    cache_read_tokens: read,
                    cache_write_tokens: write,
                    reasoning_tokens: 0,
                },
            )
        }

        fn any_response(empty_texts: bool) -> impl Strategy<Value = Response> {
            let text = if empty_texts {
                "[a-z !]{0,6}"
            } else {
                "[a-z !]{1,6}"
            };
            let part = prop_oneof![
                text.prop_map(Part::text),
                tool_call(false).prop_map(Part::ToolCall),
                (text, proptest::option::of(signature()))
                    .prop_map(|(text, signature)| Part::Reasoning { text, signature }),
                signature().prop_map(|data| Part::RedactedReasoning { data }),
            ];
            (
                "msg_[a-zA-Z0-9]{1,10}",
                "[a-z0-9-]{1,12}",
                proptest::collection::vec(part, 0..6),
                stop(),
                proptest::option::of(usage()),
            )
                .prop_map(|(id, model, content, (reason, native), usage)| Response {
                    id: Some(id),
                    model,
                    content,
                    stop_reason: Some(reason),
                    native_stop_reason: Some(native),
                    usage,
                })
        }

        /// Anthropic stream events with arbitrary fields of the names Anthropic uses.
        fn any_event() -> impl Strategy<Value = (Option<String>, String)> {
            let kind = prop_oneof![
                Just("message_start"),
                Just("content_block_start"),
                Just("content_block_delta"),
                Just("message_delta"),
                Just("message_stop"),
                Just("ping"),
                Just("error"),
                Just("other"),
            ];
            let block_kind = prop_oneof![
                Just("text"),
                Just("tool_use"),
                Just("thinking"),
                Just("redacted_thinking"),
                Just(STRUCTURED_OUTPUT_TOOL),
            ];
            let delta_kind = prop_oneof![
                Just("text_delta"),
                Just("input_json_delta"),
                Just("thinking_delta"),
                Just("signature_delta"),
            ];
            (
                kind,
                block_kind,
                delta_kind,
                0usize..4,
                "[a-z{}\"]{0,6}",
                any::<bool>(),
            )
                .prop_map(|(kind, block, delta, index, text, named)| {
                    let data = json!({
                        "type": kind,
                        "index": index,
                        "message": {"id": text, "model": text, "usage": {"input_tokens": index}},
                        "content_block": {"type": block, "id": text, "name": block, "text": text,
                                          "thinking": text, "input": {}},
                        "delta": {"type": delta, "text": text, "partial_json": text,
                                  "thinking": text, "signature": text, "stop_reason": text},
                        "usage": {"output_tokens": index},
                    });
                    (named.then(|| kind.to_owned()), data.to_string())
                })
        }

        proptest! {
            #[test]
            fn an_answer_survives_becoming_a_message_and_back(response in any_response(true)) {
                // A message always carries its counts.
                let response = Response { usage: Some(response.usage.unwrap_or_default()), ..response };
                let message = door::message(&response);
                let back = provider().translate_response(&message, "asked").unwrap();
                prop_assert_eq!(back, response);
            }

            #[test]
            fn a_request_survives_becoming_a_body_and_being_parsed(request in any_request()) {
                let upstream = provider().translate_request(&request, &request.model, None).unwrap();
                let parsed = door::parse(&upstream.body).unwrap();
                // A system prompt of plain text parts goes as one string, joined; thinking
                // is left out where Anthropic would refuse it.
                let mut request = request;
                if forces_a_tool(&request) || !last_tool_turn_thought(&request) {
                    request.reasoning = request.reasoning.filter(|r| r.budget_tokens().is_none());
                }
                // Samplers Anthropic refuses while thinking give way to it.
                if request.reasoning.and_then(|r| r.budget_tokens()).is_some() {
                    request.temperature = None;
                    request.top_k = None;
                    request.top_p = request.top_p.filter(|top_p| *top_p >= 0.95);
                }
                let plain = request.system.iter().all(|part| matches!(part, Part::Text { cache_control: None, .. }));
                if plain && request.system.len() > 1 {
                    request.system = vec![Part::text(request.system_text())];
                }
                prop_assert_eq!(parsed, request);
            }

            #[test]
            fn a_stream_of_an_answer_decodes_to_the_answer(response in any_response(false)) {
                // The answer as a stream's events say it (adjacent texts are one).
                let mut canonical = Collector::default();
                for event in response.events() {
                    canonical.event(event);
                }
                let response = canonical.finish();
                let decoded = decode(&door::stream_of(&response)).unwrap();
                prop_assert_eq!(decoded, response);
            }

            #[test]
            fn arbitrary_events_never_panic_the_decoder(events in proptest::collection::vec(any_event(), 0..12)) {
                let mut decoder = provider().stream_decoder();
                let mut out = Vec::new();
                for (name, data) in &events {
                    let event = sse::Event { name: name.as_deref(), data: data.as_str().into() };
                    if decoder.event(&event, &mut out).is_err() {
                        break;
                    }
                }
                let _ = decoder.end(&mut out);
                // Whatever came out renders as a stream too.
                let mut encoder = door::EventEncoder::new("m");
                let mut bytes = Vec::new();
                for event in out {
                    encoder.event(event, &mut bytes);
                }
                encoder.finish(&mut bytes);
            }

            #[test]
            fn arbitrary_bytes_never_panic_a_response_or_a_stream(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
                let _ = provider().translate_response(&bytes, "m");
                let _ = decode(&bytes);
            }
        }
    }
}
