//! The Anthropic-compatible door, `POST /v1/messages` as the Anthropic SDKs and Claude Code send
//! it: the request parsed into the model; answers, stream events and errors as Anthropic's.

use std::{
    sync::atomic::{AtomicU64, Ordering},
    time::{SystemTime, UNIX_EPOCH},
};

use serde::{Deserialize, Serialize};
use serde_json::{value::RawValue, Value};

use super::types::{
    compact_json, native_stop_reason, BlockOut, Input, RawBlock, UsageOut, MEDIA_TYPES,
};
use crate::{
    error::ProxyError,
    formats::StreamEncoder,
    model::{
        Effort, Image, Message, Part, Reasoning, Request, Response, ResponseFormat, Role,
        StopReason, StreamEvent, Tool, ToolCall, ToolChoice, ToolResult, Usage,
    },
    util::json::RawFields,
};

/// Anthropic-only top-level fields that the door reads and drops: they steer Anthropic's own
/// service (context editing, service tier, the code-execution container, where inference runs)
/// and mean nothing to another provider. A request that goes to Anthropic passes through with
/// them; so do `output_config`'s keys other than `effort` and `format`, dropped likewise.
pub const DROPPED: [&str; 4] = [
    "context_management",
    "service_tier",
    "container",
    "inference_geo",
];

/// The fields the door reads; each may appear once.
const KNOWN: [&str; 16] = [
    "model",
    "messages",
    "system",
    "max_tokens",
    "temperature",
    "top_p",
    "top_k",
    "stop_sequences",
    "stream",
    "metadata",
    "tools",
    "tool_choice",
    "thinking",
    "output_config",
    "output_format",
    "mcp_servers",
];

/// What the proxy must know of a body that goes on to an Anthropic upstream unchanged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    pub model: String,
    pub stream: bool,
}

/// Reads only `model` and `stream`; the rest of the body is only checked to be JSON.
pub fn probe(body: &[u8]) -> Result<Probe, String> {
    let RawFields(fields) = object(body)?;
    let mut model = None;
    let mut stream = false;
    for (index, (name, value)) in fields.iter().enumerate() {
        let name = name.as_ref();
        if !matches!(name, "model" | "stream") {
            continue;
        }
        if fields[..index].iter().any(|(seen, _)| seen == name) {
            return Err(format!("`{name}` appears more than once"));
        }
        match name {
            "model" => model = get::<String>(Some(value), "", "model", "a non-empty string")?,
            _ => stream = get(Some(value), "", "stream", "true or false")?.unwrap_or(false),
        }
    }
    Ok(Probe {
        model: model_name(model)?,
        stream,
    })
}

/// Parses a Messages request into the model. The error names the field that is wrong.
pub fn parse(body: &[u8]) -> Result<Request, String> {
    let RawFields(fields) = object(body)?;
    let mut request = Request {
        // Anthropic's streams always carry their token counts, so its callers rely on them.
        include_usage: true,
        ..Request::default()
    };
    let mut model = None;
    let mut messages = false;
    let mut thinking = None;
    let mut effort = None;
    let mut format = None;
    for (index, (name, value)) in fields.iter().enumerate() {
        let name = name.as_ref();
        if KNOWN.contains(&name) && fields[..index].iter().any(|(seen, _)| seen == name) {
            return Err(format!("`{name}` appears more than once"));
        }
        // An optional field sent as null counts as absent.
        if value.get() == "null" {
            continue;
        }
        let raw: &RawValue = value;
        let value = Some(raw);
        match name {
            "model" => model = get::<String>(value, "", "model", "a non-empty string")?,
            "messages" => {
                parse_messages(value, &mut request)?;
                messages = true;
            }
            "system" => request.system = parse_system(value, "system")?,
            "max_tokens" => request.max_tokens = Some(positive(value, "max_tokens")?),
            "temperature" => request.temperature = get(value, "", "temperature", "a number")?,
            "top_p" => request.top_p = get(value, "", "top_p", "a number")?,
            "top_k" => request.top_k = get(value, "", "top_k", "a non-negative integer")?,
            "stop_sequences" => {
                request.stop = need(value, "", "stop_sequences", "an array of strings")?
            }
            "stream" => request.stream = need(value, "", "stream", "true or false")?,
            "metadata" => request.user = parse_metadata(value)?,
            "tools" => request.tools = parse_tools(value, &mut request.unportable)?,
            "tool_choice" => {
                let (choice, parallel) = parse_tool_choice(value)?;
                request.tool_choice = Some(choice);
                request.parallel_tool_calls = parallel;
            }
            "thinking" => thinking = Some(parse_thinking(value)?),
            "output_config" => {
                let (given_effort, given_format) = parse_output_config(value)?;
                effort = given_effort.or(effort);
                format = given_format.or(format);
            }
            "output_format" => format = Some(parse_format(value, "output_format")?),
            // Remote MCP servers give the model tools only Anthropic runs, as server tools do.
            "mcp_servers" => {
                let servers: Vec<&RawValue> =
                    need(value, "", "mcp_servers", "an array of servers")?;
                if !servers.is_empty() {
                    request.unportable.push("mcp_servers".into());
                }
            }
            name if DROPPED.contains(&name) => {}
            // The proxy's own field (read by the door), never an upstream's.
            "fallbacks" => {}
            name => {
                let value: Value = serde_json::from_str(raw.get())
                    .map_err(|e| format!("`{name}` cannot be read: {e}"))?;
                request.extras.push((name.to_owned(), value));
            }
        }
    }
    request.model = model_name(model)?;
    if !messages {
        return Err("`messages` is required".into());
    }
    request.reasoning = match (thinking, effort) {
        // An effort alone says how much to think. Beside adaptive thinking it is Anthropic's
        // hint for a model that decides for itself, and adaptive is what other formats get:
        // their own default (Claude Code sends both for every model it does not know, and an
        // explicit `reasoning_effort` would make OpenAI refuse its non-reasoning models).
        (None, Some(effort)) => Some(Reasoning::Effort(effort)),
        (thinking, _) => thinking,
    };
    request.response_format = format;
    Ok(request)
}

/// The body's top-level fields, or the error for a body that is not a JSON object.
fn object(body: &[u8]) -> Result<RawFields<'_>, String> {
    serde_json::from_slice(body).map_err(|e| {
        if e.is_data() {
            "the request body must be a JSON object".to_owned()
        } else {
            format!("the request body is not valid JSON: {e}")
        }
    })
}

fn model_name(model: Option<String>) -> Result<String, String> {
    match model {
        Some(model) if !model.is_empty() => Ok(model),
        Some(_) => Err("`model` must be a non-empty string".into()),
        None => Err("`model` is required".into()),
    }
}

/// `at.field`, or `field` at the top level.
fn path(at: &str, field: &str) -> String {
    if at.is_empty() {
        field.to_owned()
    } else if field.is_empty() {
        at.to_owned()
    } else {
        format!("{at}.{field}")
    }
}

/// A field's value, `None` when absent or null; `what` says what it must be when it is not.
fn get<'a, T: Deserialize<'a>>(
    value: Option<&'a RawValue>,
    at: &str,
    field: &str,
    what: &str,
) -> Result<Option<T>, String> {
    match value {
        None => Ok(None),
        Some(value) if value.get() == "null" => Ok(None),
        Some(value) => serde_json::from_str(value.get())
            .map(Some)
            .map_err(|_| format!("`{}` must be {what}", path(at, field))),
    }
}

/// A field that must be there.
fn need<'a, T: Deserialize<'a>>(
    value: Option<&'a RawValue>,
    at: &str,
    field: &str,
    what: &str,
) -> Result<T, String> {
    get(value, at, field, what)?.ok_or_else(|| format!("`{}` is required", path(at, field)))
}

fn positive(value: Option<&RawValue>, field: &str) -> Result<u64, String> {
    match get::<u64>(value, "", field, "a positive integer")? {
        Some(n) if n > 0 => Ok(n),
        _ => Err(format!("`{field}` must be a positive integer")),
    }
}

/// An object's fields, raw, or the error saying it must be `what`.
fn fields<'a, T: Deserialize<'a>>(value: &'a RawValue, at: &str, what: &str) -> Result<T, String> {
    serde_json::from_str(value.get()).map_err(|_| format!("`{at}` must be {what}"))
}

fn cache_control(block: &RawBlock<'_>, at: &str) -> Result<Option<Value>, String> {
    object_field(block.cache_control, at, "cache_control")
}

/// A field that must be a JSON object when present, kept as a value.
fn object_field(value: Option<&RawValue>, at: &str, field: &str) -> Result<Option<Value>, String> {
    match get::<Value>(value, at, field, "an object")? {
        Some(value) if !value.is_object() => {
            Err(format!("`{}` must be an object", path(at, field)))
        }
        value => Ok(value),
    }
}

fn block_kind<'a>(block: &RawBlock<'a>, at: &str) -> Result<String, String> {
    match block.kind {
        None => Err(format!("`{at}` has no `type`")),
        kind => need(kind, at, "type", "a string"),
    }
}

/// `system`, or a system message's content: a string, or text blocks.
fn parse_system(value: Option<&RawValue>, at: &str) -> Result<Vec<Part>, String> {
    let Some(value) = value else {
        return Ok(Vec::new());
    };
    if let Ok(text) = serde_json::from_str::<String>(value.get()) {
        return Ok(if text.is_empty() {
            Vec::new()
        } else {
            vec![Part::text(text)]
        });
    }
    let blocks: Vec<&RawValue> = fields(value, at, "a string or an array of text blocks")?;
    let mut parts = Vec::with_capacity(blocks.len());
    for (j, block) in blocks.into_iter().enumerate() {
        let at = format!("{at}[{j}]");
        let block: RawBlock = fields(block, &at, "an object with a `type`")?;
        match block_kind(&block, &at)?.as_str() {
            "text" => parts.push(Part::Text {
                text: need(block.text, &at, "text", "a string")?,
                cache_control: cache_control(&block, &at)?,
            }),
            other => {
                return Err(format!(
                    "`{at}` has type {other:?}; a system prompt holds only text blocks"
                ))
            }
        }
    }
    Ok(parts)
}

fn parse_messages(value: Option<&RawValue>, request: &mut Request) -> Result<(), String> {
    let raw: Vec<&RawValue> = need(value, "", "messages", "an array of messages")?;
    if raw.is_empty() {
        return Err("`messages` must not be empty".into());
    }
    request.messages.reserve(raw.len());
    for (i, message) in raw.into_iter().enumerate() {
        parse_message(i, message, request)?;
    }
    Ok(())
}

fn parse_message(i: usize, value: &RawValue, request: &mut Request) -> Result<(), String> {
    #[derive(Deserialize)]
    struct RawMessage<'a> {
        #[serde(borrow)]
        role: Option<&'a RawValue>,
        #[serde(borrow)]
        content: Option<&'a RawValue>,
    }
    let at = format!("messages[{i}]");
    let message: RawMessage = fields(value, &at, "an object with `role` and `content`")?;
    let role: String = need(message.role, &at, "role", "a string")?;
    let role = match role.as_str() {
        "user" => Role::User,
        "assistant" => Role::Assistant,
        // Claude Code sends one after the user's first turn.
        "system" => Role::System,
        _ => {
            return Err(format!(
                "`{at}.role` must be one of \"user\", \"assistant\", \"system\""
            ))
        }
    };
    let content = message
        .content
        .filter(|content| content.get() != "null")
        .ok_or_else(|| format!("`{at}.content` is required"))?;
    let at = format!("{at}.content");
    if role == Role::System {
        let content = parse_system(Some(content), &at)?;
        request.messages.push(Message { role, content });
        return Ok(());
    }
    if let Ok(text) = serde_json::from_str::<String>(content.get()) {
        request.messages.push(Message::text(role, text));
        return Ok(());
    }
    let blocks: Vec<&RawValue> = fields(content, &at, "a string or an array of content blocks")?;
    let mut parts = Vec::with_capacity(blocks.len());
    let mut results = Vec::new();
    for (j, block) in blocks.into_iter().enumerate() {
        let at = format!("{at}[{j}]");
        let block: RawBlock = fields(block, &at, "an object with a `type`")?;
        let kind = block_kind(&block, &at)?;
        let turn = |allowed: Role| {
            if role == allowed {
                Ok(())
            } else {
                let belongs = if allowed == Role::User {
                    "a user"
                } else {
                    "an assistant"
                };
                Err(format!(
                    "`{at}` is a {kind} block, which belongs in {belongs} turn"
                ))
            }
        };
        match kind.as_str() {
            "text" => parts.push(Part::Text {
                text: need(block.text, &at, "text", "a string")?,
                cache_control: cache_control(&block, &at)?,
            }),
            "image" => {
                if let Some(image) = parse_image(&block, &at, &mut request.unportable)? {
                    parts.push(image);
                }
            }
            "tool_use" => {
                turn(Role::Assistant)?;
                parts.push(Part::ToolCall(parse_tool_use(&block, &at)?));
            }
            "tool_result" => {
                turn(Role::User)?;
                results.push(Part::ToolResult(parse_tool_result(
                    &block,
                    &at,
                    &mut request.unportable,
                )?));
            }
            "thinking" => {
                turn(Role::Assistant)?;
                let signature: Option<String> = get(block.signature, &at, "signature", "a string")?;
                parts.push(Part::Reasoning {
                    text: need(block.thinking, &at, "thinking", "a string")?,
                    signature: signature.filter(|s| !s.is_empty()),
                });
            }
            "redacted_thinking" => {
                turn(Role::Assistant)?;
                parts.push(Part::RedactedReasoning {
                    data: need(block.data, &at, "data", "a string")?,
                });
            }
            // Documents, search results, server tool calls and their results: only Anthropic
            // reads them.
            other => request.unportable.push(format!("{at} ({other})")),
        }
    }
    // A user turn answers the calls first: its tool results become a Tool message before it.
    let has_results = !results.is_empty();
    if has_results {
        request.messages.push(Message {
            role: Role::Tool,
            content: results,
        });
    }
    if !has_results || !parts.is_empty() {
        request.messages.push(Message {
            role,
            content: parts,
        });
    }
    Ok(())
}

/// An image block; `None` (and an unportable entry) for an image from Anthropic's Files API.
fn parse_image(
    block: &RawBlock<'_>,
    at: &str,
    unportable: &mut Vec<String>,
) -> Result<Option<Part>, String> {
    #[derive(Deserialize)]
    struct RawSource<'a> {
        #[serde(rename = "type", borrow)]
        kind: Option<&'a RawValue>,
        #[serde(borrow)]
        media_type: Option<&'a RawValue>,
        #[serde(borrow)]
        data: Option<&'a RawValue>,
        #[serde(borrow)]
        url: Option<&'a RawValue>,
    }
    let source_at = path(at, "source");
    let source = block
        .source
        .filter(|source| source.get() != "null")
        .ok_or_else(|| format!("`{source_at}` is required"))?;
    let source: RawSource = fields(source, &source_at, "an object with a `type`")?;
    let kind: String = need(source.kind, &source_at, "type", "a string")?;
    let image = match kind.as_str() {
        "base64" => {
            let media_type: String = need(source.media_type, &source_at, "media_type", "a string")?;
            let media_type = MEDIA_TYPES
                .into_iter()
                .find(|known| known.eq_ignore_ascii_case(&media_type))
                .ok_or_else(|| {
                    format!(
                        "`{source_at}.media_type` is {media_type:?}; supported are {}",
                        MEDIA_TYPES.join(", ")
                    )
                })?;
            let data: String = need(source.data, &source_at, "data", "a string")?;
            if data.is_empty() || !data.bytes().all(is_base64) {
                return Err(format!("`{source_at}.data` is not base64"));
            }
            Image::Base64 { media_type, data }
        }
        "url" => {
            let url: String = need(source.url, &source_at, "url", "a string")?;
            if !url.starts_with("https://") || url.len() == "https://".len() {
                return Err(format!("`{source_at}.url` must be an https:// URL"));
            }
            let media_type =
                media_type_of_url(&url).map_err(|why| format!("`{source_at}.url` {why}"))?;
            Image::Url { url, media_type }
        }
        "file" => {
            unportable.push(format!("{at} (image file)"));
            return Ok(None);
        }
        other => {
            return Err(format!(
                "`{source_at}.type` is {other:?}; supported are \"base64\" and \"url\""
            ))
        }
    };
    Ok(Some(Part::Image {
        image,
        cache_control: cache_control(block, at)?,
    }))
}

fn is_base64(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || matches!(byte, b'+' | b'/' | b'=')
}

/// The media type an image URL's extension names; JPEG when it names none, as the OpenAI
/// door does.
fn media_type_of_url(url: &str) -> Result<&'static str, String> {
    let path = url.split(['?', '#']).next().unwrap_or_default();
    let file = path.rsplit('/').next().unwrap_or_default();
    let Some((_, extension)) = file.rsplit_once('.') else {
        return Ok("image/jpeg");
    };
    match extension.to_ascii_lowercase().as_str() {
        "jpg" | "jpeg" => Ok("image/jpeg"),
        "png" => Ok("image/png"),
        "gif" => Ok("image/gif"),
        "webp" => Ok("image/webp"),
        "bmp" | "svg" | "tif" | "tiff" | "ico" | "heic" | "avif" => Err(format!(
            "has an image of type .{extension}; supported are {}",
            MEDIA_TYPES.join(", ")
        )),
        _ => Ok("image/jpeg"),
    }
}

fn parse_tool_use(block: &RawBlock<'_>, at: &str) -> Result<ToolCall, String> {
    let input: Option<&RawValue> = get(block.input, at, "input", "an object")?;
    let arguments = match input {
        Some(input) if input.get().starts_with('{') => compact_json(input.get()),
        Some(_) => return Err(format!("`{}` must be an object", path(at, "input"))),
        None => "{}".to_owned(),
    };
    Ok(ToolCall {
        id: need(block.id, at, "id", "a string")?,
        name: need(block.name, at, "name", "a string")?,
        arguments,
        cache_control: cache_control(block, at)?,
    })
}

fn parse_tool_result(
    block: &RawBlock<'_>,
    at: &str,
    unportable: &mut Vec<String>,
) -> Result<ToolResult, String> {
    let call_id = need(block.tool_use_id, at, "tool_use_id", "a string")?;
    let is_error = get(block.is_error, at, "is_error", "true or false")?.unwrap_or(false);
    let mut content = Vec::new();
    match block.content.filter(|content| content.get() != "null") {
        None => {}
        Some(value) => {
            let content_at = path(at, "content");
            if let Ok(text) = serde_json::from_str::<String>(value.get()) {
                content.push(Part::text(text));
            } else {
                let blocks: Vec<&RawValue> = fields(
                    value,
                    &content_at,
                    "a string or an array of text and image blocks",
                )?;
                for (k, inner) in blocks.into_iter().enumerate() {
                    let at = format!("{content_at}[{k}]");
                    let inner: RawBlock = fields(inner, &at, "an object with a `type`")?;
                    match block_kind(&inner, &at)?.as_str() {
                        "text" => content.push(Part::Text {
                            text: need(inner.text, &at, "text", "a string")?,
                            cache_control: cache_control(&inner, &at)?,
                        }),
                        "image" => {
                            if let Some(image) = parse_image(&inner, &at, unportable)? {
                                content.push(image);
                            }
                        }
                        other => unportable.push(format!("{at} ({other})")),
                    }
                }
            }
        }
    }
    Ok(ToolResult {
        call_id,
        content,
        is_error,
        cache_control: cache_control(block, at)?,
    })
}

fn parse_metadata(value: Option<&RawValue>) -> Result<Option<String>, String> {
    #[derive(Deserialize)]
    struct Metadata<'a> {
        #[serde(borrow)]
        user_id: Option<&'a RawValue>,
    }
    let Some(value) = value else {
        return Ok(None);
    };
    let metadata: Metadata = fields(value, "metadata", "an object like {\"user_id\": \"...\"}")?;
    get(metadata.user_id, "metadata", "user_id", "a string")
}

fn parse_tools(
    value: Option<&RawValue>,
    unportable: &mut Vec<String>,
) -> Result<Vec<Tool>, String> {
    #[derive(Deserialize)]
    struct RawTool<'a> {
        #[serde(rename = "type", borrow)]
        kind: Option<&'a RawValue>,
        #[serde(borrow)]
        name: Option<&'a RawValue>,
        #[serde(borrow)]
        description: Option<&'a RawValue>,
        #[serde(borrow)]
        input_schema: Option<&'a RawValue>,
        #[serde(borrow)]
        cache_control: Option<&'a RawValue>,
        #[serde(borrow)]
        strict: Option<&'a RawValue>,
        // `defer_loading` and `input_examples` are Anthropic's hints; dropped.
    }
    let raw: Vec<&RawValue> = need(value, "", "tools", "an array of tools")?;
    let mut tools = Vec::with_capacity(raw.len());
    for (i, tool) in raw.into_iter().enumerate() {
        let at = format!("tools[{i}]");
        let tool: RawTool = fields(tool, &at, "an object with a `name`")?;
        let kind: Option<String> = get(tool.kind, &at, "type", "a string")?;
        // Server tools (web search, code execution, bash, the text editor, computer use...)
        // run inside Anthropic: nothing to translate them into.
        if let Some(kind) = kind.filter(|kind| kind != "custom") {
            unportable.push(format!("{at} ({kind})"));
            continue;
        }
        let name: String = need(tool.name, &at, "name", "a string")?;
        if name.is_empty() {
            return Err(format!("`{at}.name` must be a non-empty string"));
        }
        let parameters: Value = need(tool.input_schema, &at, "input_schema", "an object")?;
        if !parameters.is_object() {
            return Err(format!("`{at}.input_schema` must be an object"));
        }
        tools.push(Tool {
            name,
            description: get(tool.description, &at, "description", "a string")?,
            parameters,
            cache_control: object_field(tool.cache_control, &at, "cache_control")?,
            strict: get(tool.strict, &at, "strict", "true or false")?,
        });
    }
    Ok(tools)
}

fn parse_tool_choice(value: Option<&RawValue>) -> Result<(ToolChoice, Option<bool>), String> {
    #[derive(Deserialize)]
    struct RawChoice<'a> {
        #[serde(rename = "type", borrow)]
        kind: Option<&'a RawValue>,
        #[serde(borrow)]
        name: Option<&'a RawValue>,
        #[serde(borrow)]
        disable_parallel_tool_use: Option<&'a RawValue>,
    }
    let at = "tool_choice";
    let choice: RawChoice = match value {
        Some(value) => fields(value, at, "an object with a `type`")?,
        None => return Ok((ToolChoice::Auto, None)),
    };
    let kind: String = need(choice.kind, at, "type", "a string")?;
    let choice_of = match kind.as_str() {
        "auto" => ToolChoice::Auto,
        "any" => ToolChoice::Required,
        "none" => ToolChoice::None,
        "tool" => ToolChoice::Tool(need(choice.name, at, "name", "a string")?),
        _ => {
            return Err(
                "`tool_choice.type` must be one of \"auto\", \"any\", \"tool\", \"none\"".into(),
            )
        }
    };
    let disabled: Option<bool> = get(
        choice.disable_parallel_tool_use,
        at,
        "disable_parallel_tool_use",
        "true or false",
    )?;
    Ok((choice_of, disabled.filter(|d| *d).map(|_| false)))
}

fn parse_thinking(value: Option<&RawValue>) -> Result<Reasoning, String> {
    #[derive(Deserialize)]
    struct RawThinking<'a> {
        #[serde(rename = "type", borrow)]
        kind: Option<&'a RawValue>,
        #[serde(borrow)]
        budget_tokens: Option<&'a RawValue>,
    }
    let at = "thinking";
    let thinking: RawThinking = match value {
        Some(value) => fields(value, at, "an object with a `type`")?,
        None => return Ok(Reasoning::Disabled),
    };
    let kind: String = need(thinking.kind, at, "type", "a string")?;
    match kind.as_str() {
        "enabled" => {
            let budget: u64 = need(
                thinking.budget_tokens,
                at,
                "budget_tokens",
                "a positive integer",
            )?;
            if budget == 0 {
                return Err("`thinking.budget_tokens` must be a positive integer".into());
            }
            Ok(Reasoning::Budget(budget))
        }
        "adaptive" => Ok(Reasoning::Adaptive),
        "disabled" => Ok(Reasoning::Disabled),
        _ => Err("`thinking.type` must be one of \"enabled\", \"adaptive\", \"disabled\"".into()),
    }
}

type OutputConfig = (Option<Effort>, Option<ResponseFormat>);

fn parse_output_config(value: Option<&RawValue>) -> Result<OutputConfig, String> {
    #[derive(Deserialize)]
    struct RawConfig<'a> {
        #[serde(borrow)]
        effort: Option<&'a RawValue>,
        #[serde(borrow)]
        format: Option<&'a RawValue>,
    }
    let at = "output_config";
    let config: RawConfig = match value {
        Some(value) => fields(value, at, "an object")?,
        None => return Ok((None, None)),
    };
    let effort = match get::<String>(config.effort, at, "effort", "a string")? {
        Some(effort) => Some(Effort::parse(&effort).ok_or_else(|| {
            "`output_config.effort` must be one of \"low\", \"medium\", \"high\", \"max\""
                .to_owned()
        })?),
        None => None,
    };
    let format = match config.format.filter(|format| format.get() != "null") {
        Some(format) => Some(parse_format(Some(format), "output_config.format")?),
        None => None,
    };
    Ok((effort, format))
}

/// `{"type": "json_schema", "schema": {...}}`, Anthropic's structured output.
fn parse_format(value: Option<&RawValue>, at: &str) -> Result<ResponseFormat, String> {
    #[derive(Deserialize)]
    struct RawFormat<'a> {
        #[serde(rename = "type", borrow)]
        kind: Option<&'a RawValue>,
        #[serde(borrow)]
        schema: Option<&'a RawValue>,
    }
    let format: RawFormat = match value {
        Some(value) => fields(value, at, "an object with a `type`")?,
        None => return Err(format!("`{at}` is required")),
    };
    let kind: String = need(format.kind, at, "type", "a string")?;
    if kind != "json_schema" {
        return Err(format!("`{at}.type` must be \"json_schema\""));
    }
    let schema: Value = need(format.schema, at, "schema", "an object")?;
    if !schema.is_object() {
        return Err(format!("`{at}.schema` must be an object"));
    }
    Ok(ResponseFormat::JsonSchema {
        name: "response".into(),
        description: None,
        schema,
        strict: None,
    })
}

/// A fresh message id, unique within the process and across restarts.
fn message_id() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let started = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    format!(
        "msg_{started:x}{:04x}",
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

#[derive(Serialize)]
struct MessageOut<'a> {
    id: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    role: &'static str,
    model: &'a str,
    content: Vec<BlockOut<'a>>,
    stop_reason: Option<&'a str>,
    stop_sequence: Option<&'a str>,
    usage: UsageOut,
}

/// An answer's content as Anthropic's blocks. Images and tool results are never answers.
fn answer_block(part: &Part) -> Option<BlockOut<'_>> {
    Some(match part {
        Part::Text { text, .. } => BlockOut::Text {
            text,
            cache_control: None,
        },
        Part::ToolCall(call) => BlockOut::ToolUse {
            id: &call.id,
            name: &call.name,
            input: Input::of(call),
            cache_control: None,
        },
        Part::Reasoning { text, signature } => BlockOut::Thinking {
            thinking: text,
            signature: signature.as_deref().unwrap_or_default(),
        },
        Part::RedactedReasoning { data } => BlockOut::RedactedThinking { data },
        Part::Image { .. } | Part::ToolResult(_) => return None,
    })
}

/// The answer as Anthropic's `message` object.
pub fn message(response: &Response) -> Vec<u8> {
    let id = response
        .id
        .clone()
        .filter(|id| id.starts_with("msg_"))
        .unwrap_or_else(message_id);
    let reason = response.stop_reason.clone().unwrap_or(StopReason::Stop);
    let message = MessageOut {
        id: &id,
        kind: "message",
        role: "assistant",
        model: &response.model,
        content: response.content.iter().filter_map(answer_block).collect(),
        stop_reason: Some(native_stop_reason(
            &reason,
            response.native_stop_reason.as_deref(),
        )),
        stop_sequence: None,
        usage: UsageOut::of(&response.usage.unwrap_or_default()),
    };
    serde_json::to_vec(&message).unwrap_or_default()
}

/// A whole answer as Anthropic's event stream: for an upstream that answered a stream request
/// with a whole answer.
pub fn stream_of(response: &Response) -> Vec<u8> {
    let mut encoder = EventEncoder::new(&response.model);
    let mut out = Vec::new();
    for event in response.events() {
        encoder.event(event, &mut out);
    }
    encoder.finish(&mut out);
    out
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum EventOut<'a> {
    MessageStart {
        message: MessageOut<'a>,
    },
    ContentBlockStart {
        index: usize,
        content_block: BlockOut<'a>,
    },
    ContentBlockDelta {
        index: usize,
        delta: DeltaOut<'a>,
    },
    ContentBlockStop {
        index: usize,
    },
    MessageDelta {
        delta: StopOut<'a>,
        usage: UsageOut,
    },
    MessageStop,
}

impl EventOut<'_> {
    fn name(&self) -> &'static str {
        match self {
            EventOut::MessageStart { .. } => "message_start",
            EventOut::ContentBlockStart { .. } => "content_block_start",
            EventOut::ContentBlockDelta { .. } => "content_block_delta",
            EventOut::ContentBlockStop { .. } => "content_block_stop",
            EventOut::MessageDelta { .. } => "message_delta",
            EventOut::MessageStop => "message_stop",
        }
    }
}

/// A block's delta, each type named `<kind>_delta`.
#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum DeltaOut<'a> {
    #[serde(rename = "text_delta")]
    Text { text: &'a str },
    #[serde(rename = "input_json_delta")]
    InputJson { partial_json: &'a str },
    #[serde(rename = "thinking_delta")]
    Thinking { thinking: &'a str },
    #[serde(rename = "signature_delta")]
    Signature { signature: &'a str },
}

#[derive(Serialize)]
struct StopOut<'a> {
    stop_reason: &'a str,
    stop_sequence: Option<&'a str>,
}

const PING: &[u8] = b"event: ping\ndata: {\"type\": \"ping\"}\n\n";

/// The content block being written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Open {
    None,
    Text,
    /// A thinking block; once signed, more reasoning is a new block.
    Thinking {
        signed: bool,
    },
    ToolUse,
    /// A `redacted_thinking` block, closed as soon as it is opened.
    Redacted,
}

/// Renders the model's stream events as Anthropic's: `message_start`, content blocks opened,
/// filled and closed one after another, `message_delta` with the stop reason and the final
/// counts, `message_stop`.
///
/// Two things wait: `message_start` waits for the first content (or the stop), so that input
/// counts that come right after the start (Anthropic's own, Gemini's) reach it; and the stop
/// waits for the next event, because OpenAI streams send their usage after the finish reason
/// and `message_delta` should carry it.
pub struct EventEncoder {
    model: String,
    id: Option<String>,
    started: bool,
    usage: Option<Usage>,
    /// The index the next content block gets.
    next_block: usize,
    open: Open,
    /// The content block index of each tool call, by the call's index.
    tool_blocks: Vec<usize>,
    held_stop: Option<(StopReason, Option<String>)>,
    stopped: bool,
}

impl EventEncoder {
    /// `model` names the answer until the stream's start names its own.
    pub fn new(model: &str) -> Self {
        Self {
            model: model.to_owned(),
            id: None,
            started: false,
            usage: None,
            next_block: 0,
            open: Open::None,
            tool_blocks: Vec::new(),
            held_stop: None,
            stopped: false,
        }
    }

    fn write(out: &mut Vec<u8>, event: &EventOut<'_>) {
        out.extend_from_slice(b"event: ");
        out.extend_from_slice(event.name().as_bytes());
        out.extend_from_slice(b"\ndata: ");
        // Writing to a Vec fails only for maps with non-string keys, which JSON values lack.
        let _ = serde_json::to_writer(&mut *out, event);
        out.extend_from_slice(b"\n\n");
    }

    /// Writes `message_start` (and a ping, as Anthropic does) unless it was written.
    fn begin(&mut self, out: &mut Vec<u8>) {
        if self.started {
            return;
        }
        self.started = true;
        let id = self.id.get_or_insert_with(message_id);
        let usage = self.usage.unwrap_or_default();
        let message = MessageOut {
            id,
            kind: "message",
            role: "assistant",
            model: &self.model,
            content: Vec::new(),
            stop_reason: None,
            stop_sequence: None,
            usage: UsageOut {
                output_tokens: 0,
                ..UsageOut::of(&usage)
            },
        };
        Self::write(out, &EventOut::MessageStart { message });
        out.extend_from_slice(PING);
    }

    fn close(&mut self, out: &mut Vec<u8>) {
        if self.open != Open::None {
            self.open = Open::None;
            Self::write(
                out,
                &EventOut::ContentBlockStop {
                    index: self.next_block - 1,
                },
            );
        }
    }

    /// Closes the open block and opens `block` as the next.
    fn open(&mut self, out: &mut Vec<u8>, block: BlockOut<'_>, open: Open) -> usize {
        self.close(out);
        let index = self.next_block;
        self.next_block += 1;
        self.open = open;
        Self::write(
            out,
            &EventOut::ContentBlockStart {
                index,
                content_block: block,
            },
        );
        index
    }

    fn delta(&self, out: &mut Vec<u8>, index: usize, delta: DeltaOut<'_>) {
        Self::write(out, &EventOut::ContentBlockDelta { index, delta });
    }

    fn thinking_block(&mut self, out: &mut Vec<u8>) {
        let block = BlockOut::Thinking {
            thinking: "",
            signature: "",
        };
        self.open(out, block, Open::Thinking { signed: false });
    }

    /// Writes the held stop as `message_delta`, with the counts known by now.
    fn flush_stop(&mut self, out: &mut Vec<u8>) {
        let Some((reason, native)) = self.held_stop.take() else {
            return;
        };
        self.stopped = true;
        let usage = self.usage.unwrap_or_default();
        // Input counts only when known: zero would overwrite `message_start`'s in the client.
        let usage = if usage.input_tokens > 0 {
            UsageOut::of(&usage)
        } else {
            UsageOut {
                input_tokens: None,
                cache_creation_input_tokens: None,
                cache_read_input_tokens: None,
                output_tokens: usage.output_tokens,
            }
        };
        let delta = StopOut {
            stop_reason: native_stop_reason(&reason, native.as_deref()),
            stop_sequence: None,
        };
        Self::write(out, &EventOut::MessageDelta { delta, usage });
    }
}

impl StreamEncoder for EventEncoder {
    fn event(&mut self, event: StreamEvent, out: &mut Vec<u8>) {
        if !matches!(event, StreamEvent::Usage(_)) {
            self.flush_stop(out);
        }
        match event {
            StreamEvent::Start { id, model } => {
                if !self.started {
                    self.id = id.filter(|id| id.starts_with("msg_")).or(self.id.take());
                    if let Some(model) = model {
                        self.model = model;
                    }
                }
            }
            StreamEvent::Usage(usage) => {
                self.usage.get_or_insert_with(Usage::default).merge(&usage);
                self.flush_stop(out);
            }
            StreamEvent::Text(text) => {
                if text.is_empty() {
                    return;
                }
                self.begin(out);
                if self.open != Open::Text {
                    let block = BlockOut::Text {
                        text: "",
                        cache_control: None,
                    };
                    self.open(out, block, Open::Text);
                }
                self.delta(out, self.next_block - 1, DeltaOut::Text { text: &text });
            }
            StreamEvent::Reasoning(text) => {
                if text.is_empty() {
                    return;
                }
                self.begin(out);
                if self.open != (Open::Thinking { signed: false }) {
                    self.thinking_block(out);
                }
                let delta = DeltaOut::Thinking { thinking: &text };
                self.delta(out, self.next_block - 1, delta);
            }
            StreamEvent::ReasoningSignature(signature) => {
                if signature.is_empty() {
                    return;
                }
                self.begin(out);
                if !matches!(self.open, Open::Thinking { .. }) {
                    self.thinking_block(out);
                }
                let delta = DeltaOut::Signature {
                    signature: &signature,
                };
                self.delta(out, self.next_block - 1, delta);
                self.open = Open::Thinking { signed: true };
            }
            StreamEvent::RedactedReasoning(data) => {
                self.begin(out);
                let block = BlockOut::RedactedThinking { data: &data };
                self.open(out, block, Open::Redacted);
                self.close(out);
            }
            StreamEvent::ToolCallStart { index, id, name } => {
                self.begin(out);
                let block = BlockOut::ToolUse {
                    id: &id,
                    name: &name,
                    input: Input::Empty,
                    cache_control: None,
                };
                let block = self.open(out, block, Open::ToolUse);
                if self.tool_blocks.len() <= index {
                    self.tool_blocks.resize(index + 1, usize::MAX);
                }
                self.tool_blocks[index] = block;
            }
            StreamEvent::ToolArguments { index, fragment } => {
                // Fragments of a call that never started have no block to go to.
                match self.tool_blocks.get(index) {
                    Some(&block) if block != usize::MAX && !fragment.is_empty() => {
                        let delta = DeltaOut::InputJson {
                            partial_json: &fragment,
                        };
                        self.delta(out, block, delta);
                    }
                    _ => {}
                }
            }
            StreamEvent::Stop { reason, native } => {
                self.begin(out);
                self.close(out);
                self.held_stop = Some((reason, native));
            }
        }
    }

    fn finish(&mut self, out: &mut Vec<u8>) {
        self.begin(out);
        self.close(out);
        if self.held_stop.is_none() && !self.stopped {
            self.held_stop = Some((StopReason::Stop, None));
        }
        self.flush_stop(out);
        Self::write(out, &EventOut::MessageStop);
    }

    fn error(&mut self, error: &ProxyError, provider: &str, out: &mut Vec<u8>) {
        out.extend_from_slice(b"event: error\ndata: ");
        out.extend_from_slice(&error.anthropic_body(Some(provider)));
        out.extend_from_slice(b"\n\n");
    }

    fn usage(&self) -> Option<Usage> {
        self.usage
    }

    fn keep_alive(&self) -> &'static [u8] {
        PING
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::util::sse;
    use serde_json::json;

    fn parse_json(body: Value) -> Result<Request, String> {
        parse(body.to_string().as_bytes())
    }

    fn user(content: Value) -> Value {
        json!({"model": "claude", "messages": [{"role": "user", "content": content}]})
    }

    fn ephemeral() -> Option<Value> {
        Some(json!({"type": "ephemeral"}))
    }

    /// The events of an Anthropic stream, as (name, data).
    fn events(bytes: &[u8]) -> Vec<(String, Value)> {
        let mut events = Vec::new();
        sse::Parser::default()
            .feed(bytes, |event| {
                let data = serde_json::from_str(&event.data).unwrap();
                events.push((event.name.unwrap_or_default().to_owned(), data));
                Ok::<_, ()>(())
            })
            .unwrap();
        events
    }

    fn names(events: &[(String, Value)]) -> Vec<&str> {
        events.iter().map(|(name, _)| name.as_str()).collect()
    }

    fn encode(model: &str, stream: Vec<StreamEvent>) -> Vec<(String, Value)> {
        let mut encoder = EventEncoder::new(model);
        let mut out = Vec::new();
        for event in stream {
            encoder.event(event, &mut out);
        }
        encoder.finish(&mut out);
        events(&out)
    }

    fn start() -> StreamEvent {
        StreamEvent::Start {
            id: Some("msg_1".into()),
            model: Some("claude-x".into()),
        }
    }

    fn stop(reason: StopReason) -> StreamEvent {
        StreamEvent::Stop {
            reason,
            native: None,
        }
    }

    #[test]
    fn a_claude_code_request_parses() {
        // Recorded from Claude Code 2.1.332 with ANTHROPIC_MODEL=openai/gpt-4o-mini, at the
        // second turn of a Bash tool loop (tests/sdk/record_claude_code.py).
        let body = include_bytes!("../../../tests/fixtures/anthropic/claude_code_request.json");
        let request = parse(body).unwrap();
        assert_eq!(request.model, "openai/gpt-4o-mini");
        assert!(request.stream);
        assert!(request.include_usage);
        assert_eq!(request.max_tokens, Some(32000));
        assert_eq!(request.reasoning, Some(Reasoning::Adaptive));
        assert_eq!(request.system.len(), 3);
        assert!(request.system[1..].iter().all(
            |part| matches!(part, Part::Text { cache_control, .. } if *cache_control == ephemeral())
        ));
        assert_eq!(request.tools.len(), 12);
        assert!(request
            .tools
            .iter()
            .all(|tool| tool.parameters["type"] == "object"));
        assert!(request.user.as_deref().unwrap().contains("session_id"));
        assert!(request.unportable.is_empty(), "{:?}", request.unportable);
        assert!(request.extras.is_empty(), "context_management is dropped");
        let roles: Vec<Role> = request.messages.iter().map(|m| m.role).collect();
        assert_eq!(
            roles,
            [Role::User, Role::System, Role::Assistant, Role::Tool]
        );
        let Part::ToolCall(bash) = &request.messages[2].content[0] else {
            panic!("a tool call expected: {:?}", request.messages[2]);
        };
        assert_eq!(bash.name, "Bash");
        assert!(bash.arguments.contains("echo hello"), "{}", bash.arguments);
        let Part::ToolResult(result) = &request.messages[3].content[0] else {
            panic!("a tool result expected");
        };
        assert_eq!(result.call_id, bash.id);
        assert_eq!(result.cache_control, ephemeral());
        assert!(result.text().contains("hello"));
    }

    #[test]
    fn a_tool_loop_parses_into_calls_results_and_reasoning() {
        let request = parse_json(json!({
            "model": "claude",
            "max_tokens": 1024,
            "messages": [
                {"role": "user", "content": "What's the weather in Paris?"},
                {"role": "assistant", "content": [
                    {"type": "thinking", "thinking": "Use the tool.", "signature": "sig"},
                    {"type": "redacted_thinking", "data": "EmwKAhgB"},
                    {"type": "tool_use", "id": "toolu_1", "name": "get_weather",
                     "input": {"city": "Paris", "days": [1, 2]}, "cache_control": {"type": "ephemeral"}},
                ]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_1", "content": [
                        {"type": "text", "text": "15 degrees"},
                        {"type": "image", "source": {"type": "url", "url": "https://example.com/map.png"}},
                    ]},
                    {"type": "tool_result", "tool_use_id": "toolu_2", "is_error": true, "content": "timeout"},
                    {"type": "text", "text": "And tomorrow?"},
                ]},
            ],
        }))
        .unwrap();
        assert_eq!(
            request.messages,
            [
                Message::text(Role::User, "What's the weather in Paris?"),
                Message {
                    role: Role::Assistant,
                    content: vec![
                        Part::Reasoning {
                            text: "Use the tool.".into(),
                            signature: Some("sig".into())
                        },
                        Part::RedactedReasoning {
                            data: "EmwKAhgB".into()
                        },
                        Part::ToolCall(ToolCall {
                            id: "toolu_1".into(),
                            name: "get_weather".into(),
                            arguments: r#"{"city":"Paris","days":[1,2]}"#.into(),
                            cache_control: ephemeral(),
                        }),
                    ],
                },
                Message {
                    role: Role::Tool,
                    content: vec![
                        Part::ToolResult(ToolResult {
                            call_id: "toolu_1".into(),
                            content: vec![
                                Part::text("15 degrees"),
                                Part::Image {
                                    image: Image::Url {
                                        url: "https://example.com/map.png".into(),
                                        media_type: "image/png"
                                    },
                                    cache_control: None
                                },
                            ],
                            is_error: false,
                            cache_control: None,
                        }),
                        Part::ToolResult(ToolResult {
                            call_id: "toolu_2".into(),
                            content: vec![Part::text("timeout")],
                            is_error: true,
                            cache_control: None,
                        }),
                    ],
                },
                Message::text(Role::User, "And tomorrow?"),
            ]
        );
    }

    #[test]
    fn a_turn_of_only_tool_results_is_one_tool_message() {
        let request = parse_json(user(json!([
            {"type": "tool_result", "tool_use_id": "t"},
        ])))
        .unwrap();
        assert_eq!(request.messages.len(), 1);
        assert_eq!(request.messages[0].role, Role::Tool);
        let Part::ToolResult(result) = &request.messages[0].content[0] else {
            panic!("a result expected");
        };
        assert!(result.content.is_empty());
    }

    #[test]
    fn images_parse_from_base64_and_urls() {
        let request = parse_json(user(json!([
            {"type": "image", "source": {"type": "base64", "media_type": "image/PNG", "data": "iVBORw0KGgo="},
             "cache_control": {"type": "ephemeral"}},
            {"type": "image", "source": {"type": "url", "url": "https://example.com/img/cat.webp?size=2"}},
            {"type": "image", "source": {"type": "url", "url": "https://example.com/render"}},
        ])))
        .unwrap();
        let images: Vec<&Image> = request.messages[0]
            .content
            .iter()
            .filter_map(|part| match part {
                Part::Image { image, .. } => Some(image),
                _ => None,
            })
            .collect();
        assert_eq!(
            images,
            [
                &Image::Base64 {
                    media_type: "image/png",
                    data: "iVBORw0KGgo=".into()
                },
                &Image::Url {
                    url: "https://example.com/img/cat.webp?size=2".into(),
                    media_type: "image/webp"
                },
                &Image::Url {
                    url: "https://example.com/render".into(),
                    media_type: "image/jpeg"
                },
            ]
        );
        assert!(
            matches!(&request.messages[0].content[0], Part::Image { cache_control, .. } if *cache_control == ephemeral())
        );
    }

    #[test]
    fn what_only_anthropic_reads_is_recorded_as_unportable_and_skipped() {
        let request = parse_json(json!({
            "model": "claude",
            "messages": [
                {"role": "user", "content": [
                    {"type": "text", "text": "Summarize."},
                    {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "x"}},
                    {"type": "image", "source": {"type": "file", "file_id": "file_1"}},
                    {"type": "tool_result", "tool_use_id": "t", "content": [
                        {"type": "search_result", "source": "s", "title": "t", "content": []},
                    ]},
                ]},
                {"role": "assistant", "content": [
                    {"type": "server_tool_use", "id": "srvtoolu_1", "name": "web_search", "input": {"query": "q"}},
                    {"type": "web_search_tool_result", "tool_use_id": "srvtoolu_1", "content": []},
                    {"type": "text", "text": "Done."},
                ]},
            ],
            "tools": [
                {"name": "f", "input_schema": {"type": "object"}, "defer_loading": true, "strict": true,
                 "input_examples": [{}]},
                {"type": "custom", "name": "g", "input_schema": {"type": "object"}},
                {"type": "text_editor_20250728", "name": "str_replace_based_edit_tool"},
                {"type": "web_search_20250305", "name": "web_search", "max_uses": 5},
            ],
            "mcp_servers": [{"type": "url", "url": "https://mcp.example.com/sse", "name": "example"}],
        }))
        .unwrap();
        assert_eq!(
            request.unportable,
            [
                "mcp_servers",
                "messages[0].content[1] (document)",
                "messages[0].content[2] (image file)",
                "messages[0].content[3].content[0] (search_result)",
                "messages[1].content[0] (server_tool_use)",
                "messages[1].content[1] (web_search_tool_result)",
                "tools[2] (text_editor_20250728)",
                "tools[3] (web_search_20250305)",
            ]
        );
        let names: Vec<&str> = request.tools.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["f", "g"]);
        let roles: Vec<Role> = request.messages.iter().map(|m| m.role).collect();
        assert_eq!(roles, [Role::Tool, Role::User, Role::Assistant]);
        assert_eq!(request.messages[1].content, [Part::text("Summarize.")]);
        assert_eq!(request.messages[2].content, [Part::text("Done.")]);
    }

    #[test]
    fn options_are_read_and_the_rest_kept_in_order_or_dropped() {
        let request = parse_json(json!({
            "model": "claude",
            "system": "Be brief.",
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 500,
            "temperature": 0.5,
            "top_p": 0.9,
            "top_k": 40,
            "stop_sequences": ["END"],
            "metadata": {"user_id": "u-1"},
            "tools": [{"name": "f", "description": "F.", "input_schema": {"type": "object"}}],
            "tool_choice": {"type": "tool", "name": "f", "disable_parallel_tool_use": true},
            "service_tier": "auto",
            "inference_geo": "us",
            "container": "container_1",
            "context_management": {"edits": []},
            "stream": null,
        }))
        .unwrap();
        assert_eq!(request.system, [Part::text("Be brief.")]);
        assert_eq!(request.max_tokens, Some(500));
        assert_eq!(request.temperature, Some(0.5));
        assert_eq!(request.top_p, Some(0.9));
        assert_eq!(request.top_k, Some(40));
        assert_eq!(request.stop, ["END"]);
        assert_eq!(request.user.as_deref(), Some("u-1"));
        assert_eq!(request.tools[0].description.as_deref(), Some("F."));
        assert_eq!(request.tool_choice, Some(ToolChoice::Tool("f".into())));
        assert_eq!(request.parallel_tool_calls, Some(false));
        assert!(!request.stream);
        assert!(request.extras.is_empty(), "{:?}", request.extras);
        let request = parse(
            br#"{"zeta":1,"model":"m","messages":[{"role":"user","content":"hi"}],"alpha":{"b":[true]},"nothing":null}"#,
        )
        .unwrap();
        assert_eq!(
            request.extras,
            [
                ("zeta".to_owned(), json!(1)),
                ("alpha".to_owned(), json!({"b": [true]}))
            ]
        );
        for (choice, expected) in [
            ("auto", ToolChoice::Auto),
            ("any", ToolChoice::Required),
            ("none", ToolChoice::None),
        ] {
            let mut body = user(json!("hi"));
            body["tool_choice"] = json!({"type": choice});
            let request = parse_json(body).unwrap();
            assert_eq!(request.tool_choice, Some(expected));
            assert_eq!(request.parallel_tool_calls, None);
        }
    }

    #[test]
    fn thinking_and_effort_become_reasoning() {
        for (thinking, effort, expected) in [
            (
                json!({"type": "enabled", "budget_tokens": 2000}),
                None,
                Reasoning::Budget(2000),
            ),
            (
                json!({"type": "enabled", "budget_tokens": 2000}),
                Some("high"),
                Reasoning::Budget(2000),
            ),
            (json!({"type": "adaptive"}), None, Reasoning::Adaptive),
            (
                json!({"type": "adaptive"}),
                Some("low"),
                Reasoning::Adaptive,
            ),
            (
                json!({"type": "disabled"}),
                Some("high"),
                Reasoning::Disabled,
            ),
            (Value::Null, Some("max"), Reasoning::Effort(Effort::High)),
        ] {
            let mut body = user(json!("hi"));
            body["thinking"] = thinking.clone();
            if let Some(effort) = effort {
                body["output_config"] = json!({"effort": effort, "task_budget": 3});
            }
            let request = parse_json(body).unwrap();
            assert_eq!(request.reasoning, Some(expected), "{thinking} {effort:?}");
            assert!(request.extras.is_empty());
        }
        assert_eq!(parse_json(user(json!("hi"))).unwrap().reasoning, None);
    }

    #[test]
    fn structured_output_becomes_a_json_schema_format() {
        let schema = json!({"type": "object", "properties": {"a": {"type": "string"}}});
        let expected = Some(ResponseFormat::JsonSchema {
            name: "response".into(),
            description: None,
            schema: schema.clone(),
            strict: None,
        });
        let mut body = user(json!("hi"));
        body["output_format"] = json!({"type": "json_schema", "schema": schema});
        assert_eq!(parse_json(body).unwrap().response_format, expected);
        let mut body = user(json!("hi"));
        body["output_config"] = json!({"format": {"type": "json_schema", "schema": schema}});
        assert_eq!(parse_json(body).unwrap().response_format, expected);
    }

    #[test]
    fn a_system_message_in_the_conversation_is_kept_in_place() {
        let request = parse_json(json!({
            "model": "claude",
            "messages": [
                {"role": "user", "content": "hi"},
                {"role": "system", "content": [{"type": "text", "text": "Reminder.", "cache_control": {"type": "ephemeral"}}]},
            ],
        }))
        .unwrap();
        assert_eq!(
            request.messages[1],
            Message {
                role: Role::System,
                content: vec![Part::Text {
                    text: "Reminder.".into(),
                    cache_control: ephemeral()
                }]
            }
        );
    }

    #[test]
    fn each_bad_input_names_what_is_wrong() {
        let hi = r#"[{"role":"user","content":"hi"}]"#;
        let with = |field: &str| format!(r#"{{"model":"m","messages":{hi},{field}}}"#);
        let content = |blocks: &str| {
            format!(r#"{{"model":"m","messages":[{{"role":"user","content":{blocks}}}]}}"#)
        };
        let assistant = |blocks: &str| {
            format!(r#"{{"model":"m","messages":[{{"role":"assistant","content":{blocks}}}]}}"#)
        };
        let cases = [
            ("not json".to_owned(), "not valid JSON"),
            ("[1,2]".to_owned(), "must be a JSON object"),
            (format!(r#"{{"messages":{hi}}}"#), "`model` is required"),
            (format!(r#"{{"model":null,"messages":{hi}}}"#), "`model` is required"),
            (format!(r#"{{"model":"","messages":{hi}}}"#), "`model` must be a non-empty string"),
            (format!(r#"{{"model":5,"messages":{hi}}}"#), "`model` must be a non-empty string"),
            (format!(r#"{{"model":"a","model":"b","messages":{hi}}}"#), "`model` appears more than once"),
            (r#"{"model":"m"}"#.to_owned(), "`messages` is required"),
            (r#"{"model":"m","messages":[]}"#.to_owned(), "`messages` must not be empty"),
            (r#"{"model":"m","messages":"hi"}"#.to_owned(), "`messages` must be an array"),
            (r#"{"model":"m","messages":[1]}"#.to_owned(), "`messages[0]` must be an object"),
            (r#"{"model":"m","messages":[{"content":"hi"}]}"#.to_owned(), "`messages[0].role` is required"),
            (r#"{"model":"m","messages":[{"role":"bot","content":"hi"}]}"#.to_owned(), "`messages[0].role` must be one of"),
            (r#"{"model":"m","messages":[{"role":"user"}]}"#.to_owned(), "`messages[0].content` is required"),
            (content("5"), "`messages[0].content` must be a string or an array of content blocks"),
            (content(r#"[{"text":"hi"}]"#), "`messages[0].content[0]` has no `type`"),
            (content(r#"[7]"#), "`messages[0].content[0]` must be an object"),
            (content(r#"[{"type":"text"}]"#), "`messages[0].content[0].text` is required"),
            (content(r#"[{"type":"text","text":1}]"#), "`messages[0].content[0].text` must be a string"),
            (content(r#"[{"type":"text","text":"a","cache_control":"x"}]"#), "`messages[0].content[0].cache_control` must be an object"),
            (content(r#"[{"type":"image"}]"#), "`messages[0].content[0].source` is required"),
            (content(r#"[{"type":"image","source":{"type":"base64","media_type":"image/bmp","data":"Qk0="}}]"#),
             "`messages[0].content[0].source.media_type` is \"image/bmp\"; supported are image/jpeg"),
            (content(r#"[{"type":"image","source":{"type":"base64","media_type":"image/png","data":"@@@"}}]"#),
             "`messages[0].content[0].source.data` is not base64"),
            (content(r#"[{"type":"image","source":{"type":"base64","data":"AA=="}}]"#),
             "`messages[0].content[0].source.media_type` is required"),
            (content(r#"[{"type":"image","source":{"type":"url","url":"http://x.com/a.png"}}]"#),
             "`messages[0].content[0].source.url` must be an https:// URL"),
            (content(r#"[{"type":"image","source":{"type":"url","url":"https://x.com/a.svg"}}]"#),
             "`messages[0].content[0].source.url` has an image of type .svg"),
            (content(r#"[{"type":"image","source":{"type":"bytes"}}]"#),
             "`messages[0].content[0].source.type` is \"bytes\""),
            (content(r#"[{"type":"tool_result"}]"#), "`messages[0].content[0].tool_use_id` is required"),
            (content(r#"[{"type":"tool_result","tool_use_id":"t","content":5}]"#),
             "`messages[0].content[0].content` must be a string or an array"),
            (content(r#"[{"type":"tool_result","tool_use_id":"t","is_error":"yes"}]"#),
             "`messages[0].content[0].is_error` must be true or false"),
            (content(r#"[{"type":"tool_result","tool_use_id":"t","content":[{"type":"text"}]}]"#),
             "`messages[0].content[0].content[0].text` is required"),
            (content(r#"[{"type":"tool_use","id":"t","name":"f","input":{}}]"#),
             "`messages[0].content[0]` is a tool_use block, which belongs in an assistant turn"),
            (assistant(r#"[{"type":"tool_result","tool_use_id":"t"}]"#),
             "`messages[0].content[0]` is a tool_result block, which belongs in a user turn"),
            (assistant(r#"[{"type":"tool_use","name":"f","input":{}}]"#), "`messages[0].content[0].id` is required"),
            (assistant(r#"[{"type":"tool_use","id":"t","input":{}}]"#), "`messages[0].content[0].name` is required"),
            (assistant(r#"[{"type":"tool_use","id":"t","name":"f","input":[1]}]"#),
             "`messages[0].content[0].input` must be an object"),
            (assistant(r#"[{"type":"thinking","signature":"s"}]"#), "`messages[0].content[0].thinking` is required"),
            (assistant(r#"[{"type":"redacted_thinking"}]"#), "`messages[0].content[0].data` is required"),
            (r#"{"model":"m","messages":[{"role":"system","content":[{"type":"image"}]}]}"#.to_owned(),
             "`messages[0].content[0]` has type \"image\"; a system prompt holds only text blocks"),
            (with(r#""system":5"#), "`system` must be a string or an array of text blocks"),
            (with(r#""system":[{"type":"text"}]"#), "`system[0].text` is required"),
            (with(r#""max_tokens":0"#), "`max_tokens` must be a positive integer"),
            (with(r#""max_tokens":1.5"#), "`max_tokens` must be a positive integer"),
            (with(r#""temperature":"hot""#), "`temperature` must be a number"),
            (with(r#""top_p":[]"#), "`top_p` must be a number"),
            (with(r#""top_k":-1"#), "`top_k` must be a non-negative integer"),
            (with(r#""stop_sequences":"END""#), "`stop_sequences` must be an array of strings"),
            (with(r#""stream":"yes""#), "`stream` must be true or false"),
            (with(r#""metadata":"u""#), "`metadata` must be an object"),
            (with(r#""metadata":{"user_id":5}"#), "`metadata.user_id` must be a string"),
            (with(r#""tools":{}"#), "`tools` must be an array of tools"),
            (with(r#""tools":[{"input_schema":{}}]"#), "`tools[0].name` is required"),
            (with(r#""tools":[{"name":"","input_schema":{}}]"#), "`tools[0].name` must be a non-empty string"),
            (with(r#""tools":[{"name":"f"}]"#), "`tools[0].input_schema` is required"),
            (with(r#""tools":[{"name":"f","input_schema":"x"}]"#), "`tools[0].input_schema` must be an object"),
            (with(r#""tools":[{"name":"f","input_schema":{},"description":1}]"#), "`tools[0].description` must be a string"),
            (with(r#""tool_choice":"auto""#), "`tool_choice` must be an object"),
            (with(r#""tool_choice":{"type":"some"}"#), "`tool_choice.type` must be one of"),
            (with(r#""tool_choice":{"type":"tool"}"#), "`tool_choice.name` is required"),
            (with(r#""tool_choice":{"type":"auto","disable_parallel_tool_use":1}"#),
             "`tool_choice.disable_parallel_tool_use` must be true or false"),
            (with(r#""thinking":{"type":"enabled"}"#), "`thinking.budget_tokens` is required"),
            (with(r#""thinking":{"type":"enabled","budget_tokens":0}"#), "`thinking.budget_tokens` must be a positive integer"),
            (with(r#""thinking":{"type":"on"}"#), "`thinking.type` must be one of"),
            (with(r#""thinking":{}"#), "`thinking.type` is required"),
            (with(r#""output_config":{"effort":"huge"}"#), "`output_config.effort` must be one of"),
            (with(r#""output_config":[]"#), "`output_config` must be an object"),
            (with(r#""output_format":{"type":"json"}"#), "`output_format.type` must be \"json_schema\""),
            (with(r#""output_format":{"type":"json_schema"}"#), "`output_format.schema` is required"),
            (with(r#""output_config":{"format":{"type":"json_schema","schema":1}}"#),
             "`output_config.format.schema` must be an object"),
            (with(r#""mcp_servers":{}"#), "`mcp_servers` must be an array"),
            (with(r#""tools":[],"tools":[]"#), "`tools` appears more than once"),
        ];
        for (body, expected) in cases {
            let err = parse(body.as_bytes()).unwrap_err();
            assert!(
                err.contains(expected),
                "{body}: got {err:?}, want {expected:?}"
            );
        }
    }

    #[test]
    fn a_probe_reads_only_model_and_stream() {
        let probe_of = |body: &str| probe(body.as_bytes());
        let err = probe_of(r#"{"model":"claude","stream":true,"x":[}"#).unwrap_err();
        assert!(
            err.contains("not valid JSON"),
            "the whole body is checked: {err}"
        );
        assert_eq!(
            probe_of(r#"{"messages":"anything","model":"claude","stream":true}"#),
            Ok(Probe {
                model: "claude".into(),
                stream: true
            })
        );
        assert_eq!(
            probe_of(r#"{"model":"claude","stream":null}"#),
            Ok(Probe {
                model: "claude".into(),
                stream: false
            })
        );
        for (body, expected) in [
            ("[]", "must be a JSON object"),
            ("{", "not valid JSON"),
            (r#"{"stream":true}"#, "`model` is required"),
            (r#"{"model":""}"#, "`model` must be a non-empty string"),
            (r#"{"model":["a"]}"#, "`model` must be a non-empty string"),
            (
                r#"{"model":"a","stream":1}"#,
                "`stream` must be true or false",
            ),
            (
                r#"{"model":"a","model":"b"}"#,
                "`model` appears more than once",
            ),
        ] {
            let err = probe_of(body).unwrap_err();
            assert!(err.contains(expected), "{body}: {err}");
        }
    }

    fn answer() -> Response {
        Response {
            id: Some("msg_01".into()),
            model: "claude-x".into(),
            content: vec![
                Part::Reasoning {
                    text: "Think.".into(),
                    signature: None,
                },
                Part::RedactedReasoning { data: "abc".into() },
                Part::text("Let me check."),
                Part::ToolCall(ToolCall {
                    id: "toolu_1".into(),
                    name: "get_weather".into(),
                    arguments: r#"{"city":"Paris","unit":"c"}"#.into(),
                    cache_control: ephemeral(),
                }),
            ],
            stop_reason: Some(StopReason::ToolCalls),
            native_stop_reason: Some("tool_calls".into()),
            usage: Some(Usage {
                input_tokens: 100,
                output_tokens: 20,
                cache_read_tokens: 60,
                cache_write_tokens: 10,
                reasoning_tokens: 5,
            }),
        }
    }

    #[test]
    fn an_answer_becomes_a_message() {
        let message: Value = serde_json::from_slice(&message(&answer())).unwrap();
        assert_eq!(
            message,
            json!({
                "id": "msg_01",
                "type": "message",
                "role": "assistant",
                "model": "claude-x",
                "content": [
                    {"type": "thinking", "thinking": "Think.", "signature": ""},
                    {"type": "redacted_thinking", "data": "abc"},
                    {"type": "text", "text": "Let me check."},
                    {"type": "tool_use", "id": "toolu_1", "name": "get_weather",
                     "input": {"city": "Paris", "unit": "c"}},
                ],
                "stop_reason": "tool_use",
                "stop_sequence": null,
                "usage": {"input_tokens": 30, "cache_creation_input_tokens": 10,
                          "cache_read_input_tokens": 60, "output_tokens": 20},
            })
        );
    }

    #[test]
    fn a_message_without_an_id_gets_a_fresh_one() {
        let response = Response {
            model: "m".into(),
            ..Response::default()
        };
        let id = |body: Vec<u8>| serde_json::from_slice::<Value>(&body).unwrap()["id"].clone();
        let (first, second) = (id(message(&response)), id(message(&response)));
        assert!(first.as_str().unwrap().starts_with("msg_"), "{first}");
        assert_ne!(first, second);
        let body: Value = serde_json::from_slice(&message(&response)).unwrap();
        assert_eq!(body["stop_reason"], "end_turn");
        assert_eq!(body["content"], json!([]));
        assert_eq!(body["usage"]["input_tokens"], 0);
    }

    #[test]
    fn stop_reasons_become_anthropics() {
        for (reason, native, expected) in [
            (StopReason::Stop, None, "end_turn"),
            (StopReason::Stop, Some("stop_sequence"), "stop_sequence"),
            (StopReason::Stop, Some("STOP"), "end_turn"),
            (StopReason::Length, Some("length"), "max_tokens"),
            (StopReason::ToolCalls, None, "tool_use"),
            (StopReason::ContentFilter, Some("SAFETY"), "refusal"),
            (StopReason::Other("pause_turn".into()), None, "pause_turn"),
            (
                StopReason::Other("model_context_window_exceeded".into()),
                None,
                "model_context_window_exceeded",
            ),
            (StopReason::Other("RECITATION".into()), None, "end_turn"),
        ] {
            let response = Response {
                stop_reason: Some(reason.clone()),
                native_stop_reason: native.map(str::to_owned),
                ..Response::default()
            };
            let body: Value = serde_json::from_slice(&message(&response)).unwrap();
            assert_eq!(body["stop_reason"], expected, "{reason:?} {native:?}");
        }
    }

    #[test]
    fn a_text_stream_is_anthropics_event_sequence() {
        let events = encode(
            "asked",
            vec![
                start(),
                StreamEvent::Usage(Usage {
                    input_tokens: 25,
                    cache_read_tokens: 5,
                    ..Usage::default()
                }),
                StreamEvent::Text("¡Hola".into()),
                StreamEvent::Text("! 👋".into()),
                stop(StopReason::Stop),
                StreamEvent::Usage(Usage {
                    output_tokens: 15,
                    ..Usage::default()
                }),
            ],
        );
        assert_eq!(
            names(&events),
            [
                "message_start",
                "ping",
                "content_block_start",
                "content_block_delta",
                "content_block_delta",
                "content_block_stop",
                "message_delta",
                "message_stop"
            ]
        );
        assert_eq!(
            events[0].1,
            json!({"type": "message_start", "message": {
                "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-x",
                "content": [], "stop_reason": null, "stop_sequence": null,
                "usage": {"input_tokens": 20, "cache_creation_input_tokens": 0,
                          "cache_read_input_tokens": 5, "output_tokens": 0}}})
        );
        assert_eq!(events[1].1, json!({"type": "ping"}));
        assert_eq!(
            events[2].1,
            json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}})
        );
        assert_eq!(
            events[3].1,
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "¡Hola"}})
        );
        assert_eq!(
            events[5].1,
            json!({"type": "content_block_stop", "index": 0})
        );
        assert_eq!(
            events[6].1,
            json!({"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": null},
                   "usage": {"input_tokens": 20, "cache_creation_input_tokens": 0,
                             "cache_read_input_tokens": 5, "output_tokens": 15}})
        );
        assert_eq!(events[7].1, json!({"type": "message_stop"}));
    }

    #[test]
    fn input_counts_that_come_last_reach_message_delta() {
        // OpenAI's order: content, finish reason, then one usage chunk.
        let events = encode(
            "gpt",
            vec![
                StreamEvent::Start {
                    id: None,
                    model: None,
                },
                StreamEvent::Text("Hi".into()),
                stop(StopReason::Length),
                StreamEvent::Usage(Usage {
                    input_tokens: 9,
                    output_tokens: 3,
                    ..Usage::default()
                }),
            ],
        );
        let opening = &events[0].1["message"];
        assert_eq!(opening["model"], "gpt");
        assert!(opening["id"].as_str().unwrap().starts_with("msg_"));
        assert_eq!(opening["usage"]["input_tokens"], 0);
        let delta = &events[events.len() - 2].1;
        assert_eq!(delta["delta"]["stop_reason"], "max_tokens");
        assert_eq!(delta["usage"]["input_tokens"], 9);
        assert_eq!(delta["usage"]["output_tokens"], 3);
        // Without counts, message_delta carries no input that could overwrite message_start's.
        let events = encode("m", vec![start(), StreamEvent::Text("Hi".into())]);
        let delta = &events[events.len() - 2].1;
        assert_eq!(delta["usage"], json!({"output_tokens": 0}));
        assert_eq!(
            delta["delta"]["stop_reason"], "end_turn",
            "a stream without a stop ends"
        );
    }

    #[test]
    fn tool_calls_stream_as_tool_use_blocks_with_input_json_deltas() {
        let events = encode(
            "m",
            vec![
                start(),
                StreamEvent::Text("Checking.".into()),
                StreamEvent::ToolCallStart {
                    index: 0,
                    id: "call_a".into(),
                    name: "get_weather".into(),
                },
                StreamEvent::ToolArguments {
                    index: 0,
                    fragment: r#"{"city":"#.into(),
                },
                StreamEvent::ToolCallStart {
                    index: 1,
                    id: "call_b".into(),
                    name: "get_time".into(),
                },
                // A fragment of the first call after the second began stays with the first.
                StreamEvent::ToolArguments {
                    index: 0,
                    fragment: r#""Paris"}"#.into(),
                },
                StreamEvent::ToolArguments {
                    index: 1,
                    fragment: "{}".into(),
                },
                StreamEvent::ToolArguments {
                    index: 7,
                    fragment: "lost".into(),
                },
                stop(StopReason::ToolCalls),
            ],
        );
        let data: Vec<&Value> = events
            .iter()
            .filter(|(name, _)| name.starts_with("content_block"))
            .map(|(_, data)| data)
            .collect();
        assert_eq!(
            data,
            [
                &json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
                &json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Checking."}}),
                &json!({"type": "content_block_stop", "index": 0}),
                &json!({"type": "content_block_start", "index": 1, "content_block":
                    {"type": "tool_use", "id": "call_a", "name": "get_weather", "input": {}}}),
                &json!({"type": "content_block_delta", "index": 1, "delta":
                    {"type": "input_json_delta", "partial_json": "{\"city\":"}}),
                &json!({"type": "content_block_stop", "index": 1}),
                &json!({"type": "content_block_start", "index": 2, "content_block":
                    {"type": "tool_use", "id": "call_b", "name": "get_time", "input": {}}}),
                &json!({"type": "content_block_delta", "index": 1, "delta":
                    {"type": "input_json_delta", "partial_json": "\"Paris\"}"}}),
                &json!({"type": "content_block_delta", "index": 2, "delta":
                    {"type": "input_json_delta", "partial_json": "{}"}}),
                &json!({"type": "content_block_stop", "index": 2}),
            ]
        );
        assert_eq!(
            events[events.len() - 2].1["delta"]["stop_reason"],
            "tool_use"
        );
    }

    #[test]
    fn reasoning_streams_as_thinking_blocks_with_their_signatures() {
        let events = encode(
            "m",
            vec![
                start(),
                StreamEvent::Reasoning("Let me ".into()),
                StreamEvent::Reasoning("think.".into()),
                StreamEvent::ReasoningSignature("sig1".into()),
                StreamEvent::Reasoning("More.".into()),
                StreamEvent::RedactedReasoning("secret".into()),
                StreamEvent::ReasoningSignature("sig2".into()),
                StreamEvent::Text("21".into()),
                stop(StopReason::Stop),
            ],
        );
        let data: Vec<&Value> = events
            .iter()
            .filter(|(name, _)| name.starts_with("content_block"))
            .map(|(_, data)| data)
            .collect();
        let thinking_start = |index: usize| {
            json!({"type": "content_block_start", "index": index,
                   "content_block": {"type": "thinking", "thinking": "", "signature": ""}})
        };
        let delta = |index: usize, delta: Value| json!({"type": "content_block_delta", "index": index, "delta": delta});
        let stop = |index: usize| json!({"type": "content_block_stop", "index": index});
        assert_eq!(
            data,
            [
                &thinking_start(0),
                &delta(0, json!({"type": "thinking_delta", "thinking": "Let me "})),
                &delta(0, json!({"type": "thinking_delta", "thinking": "think."})),
                &delta(0, json!({"type": "signature_delta", "signature": "sig1"})),
                &stop(0),
                &thinking_start(1),
                &delta(1, json!({"type": "thinking_delta", "thinking": "More."})),
                &stop(1),
                &json!({"type": "content_block_start", "index": 2,
                        "content_block": {"type": "redacted_thinking", "data": "secret"}}),
                &stop(2),
                &thinking_start(3),
                &delta(3, json!({"type": "signature_delta", "signature": "sig2"})),
                &stop(3),
                &json!({"type": "content_block_start", "index": 4, "content_block": {"type": "text", "text": ""}}),
                &delta(4, json!({"type": "text_delta", "text": "21"})),
                &stop(4),
            ]
        );
    }

    #[test]
    fn errors_and_keep_alives_are_anthropic_events() {
        let mut encoder = EventEncoder::new("m");
        let mut out = Vec::new();
        encoder.event(start(), &mut out);
        encoder.event(StreamEvent::Text("Hi".into()), &mut out);
        let error = ProxyError::StreamEvent(actix_web::web::Bytes::from_static(
            br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
        ));
        encoder.error(&error, "anthropic", &mut out);
        let events = events(&out);
        let (name, data) = events.last().unwrap();
        assert_eq!(name, "error");
        assert_eq!(data["type"], "error");
        assert_eq!(data["error"]["type"], "overloaded_error");
        assert_eq!(data["error"]["provider"], "anthropic");
        assert_eq!(
            encoder.keep_alive(),
            b"event: ping\ndata: {\"type\": \"ping\"}\n\n"
        );
    }

    #[test]
    fn the_encoder_reports_merged_usage() {
        let mut encoder = EventEncoder::new("m");
        let mut out = Vec::new();
        assert_eq!(encoder.usage(), None);
        for event in [
            start(),
            StreamEvent::Usage(Usage {
                input_tokens: 4,
                ..Usage::default()
            }),
            StreamEvent::Usage(Usage {
                output_tokens: 2,
                ..Usage::default()
            }),
        ] {
            encoder.event(event, &mut out);
        }
        assert!(out.is_empty(), "message_start waits for content");
        assert_eq!(
            encoder.usage(),
            Some(Usage {
                input_tokens: 4,
                output_tokens: 2,
                ..Usage::default()
            })
        );
    }

    #[test]
    fn a_whole_answer_becomes_an_event_stream() {
        let events = events(&stream_of(&answer()));
        assert_eq!(events[0].1["message"]["id"], "msg_01");
        assert_eq!(
            events[0].1["message"]["usage"]["cache_read_input_tokens"],
            0
        );
        let delta = &events[events.len() - 2].1;
        assert_eq!(delta["delta"]["stop_reason"], "tool_use");
        assert_eq!(delta["usage"]["input_tokens"], 30);
        assert_eq!(delta["usage"]["cache_read_input_tokens"], 60);
        assert_eq!(names(&events).last(), Some(&"message_stop"));
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        /// Any JSON value, a few levels deep, with the keys a Messages body has among others.
        fn any_json() -> impl Strategy<Value = Value> {
            crate::util::json::arbitrary_json(
                &[
                    "model",
                    "messages",
                    "role",
                    "content",
                    "type",
                    "text",
                    "source",
                    "tools",
                    "tool_choice",
                    "thinking",
                    "system",
                    "input",
                    "output_config",
                ],
                &[
                    "user",
                    "assistant",
                    "system",
                    "text",
                    "image",
                    "tool_use",
                    "tool_result",
                    "thinking",
                    "base64",
                    "enabled",
                ],
            )
        }

        proptest! {
            #[test]
            fn arbitrary_bytes_never_panic_the_parsers(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
                let _ = parse(&bytes);
                let _ = probe(&bytes);
            }

            #[test]
            fn arbitrary_json_is_parsed_or_refused_with_a_message(value in any_json()) {
                let bytes = value.to_string().into_bytes();
                if let Err(message) = parse(&bytes) {
                    prop_assert!(!message.is_empty());
                }
                if let Err(message) = probe(&bytes) {
                    prop_assert!(!message.is_empty());
                }
            }
        }
    }
}
