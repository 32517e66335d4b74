//! The OpenAI Chat Completions door: requests into the model, answers and chunks out of it.
//!
//! The proxy's own path route, `/v1/chat/{provider}`, takes the same body and uses [`parse`];
//! a body bound for an upstream of this format unchanged needs only [`probe`].

use std::{
    sync::atomic::{AtomicU64, Ordering},
    time::{SystemTime, UNIX_EPOCH},
};

use serde::{Deserialize, Serialize};
use serde_json::{value::RawValue, Value};

use super::types::{finish_reason, ToolCallOut, UsageOut};
use crate::{
    error::ProxyError,
    formats::StreamEncoder,
    model::{
        Effort, Image, Message, Part, Reasoning, Request, Response, ResponseFormat, Role,
        StreamEvent, Tool, ToolCall, ToolChoice, ToolResult, Usage,
    },
    util::json::RawFields,
};

/// Fields only OpenAI understands that change nothing another provider would do differently,
/// or ask for what is the default anyway: dropped when a request goes to another format (an
/// OpenAI-format upstream gets the body as it came). `logprobs`, `top_logprobs`, `n` and
/// `modalities` are dropped only at their defaults (`false`, `0`, `1`, `["text"]`); set to
/// anything else they ask for what only OpenAI can give, and the request is unportable.
pub const IGNORED: [&str; 12] = [
    "frequency_penalty",
    "presence_penalty",
    "logit_bias",
    "store",
    "service_tier",
    "prediction",
    "verbosity",
    "prompt_cache_key",
    "logprobs",
    "top_logprobs",
    "n",
    "modalities",
];

/// Fields of the proxy's own, read elsewhere (the handler reads `fallbacks`): never extras.
const PROXY_FIELDS: [&str; 1] = ["fallbacks"];

/// The fields [`parse`] reads: each may appear once.
const KNOWN: [&str; 26] = [
    "model",
    "messages",
    "stream",
    "stream_options",
    "max_tokens",
    "max_completion_tokens",
    "temperature",
    "top_p",
    "top_k",
    "stop",
    "seed",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "response_format",
    "reasoning_effort",
    "user",
    "safety_identifier",
    "n",
    "logprobs",
    "top_logprobs",
    "audio",
    "modalities",
    "web_search_options",
    "functions",
    "function_call",
];

/// The image types every provider here accepts.
const MEDIA_TYPES: [&str; 4] = ["image/jpeg", "image/png", "image/gif", "image/webp"];

/// What the proxy must know of a request whose body goes on unchanged to an upstream that
/// speaks this format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    pub model: String,
    pub stream: bool,
    pub include_usage: bool,
}

/// Reads `model`, `stream` and `stream_options.include_usage`, and nothing else: the rest of
/// the body is the upstream's to judge. The error names the field that is wrong.
pub fn probe(body: &[u8]) -> Result<Probe, String> {
    let RawFields(fields) = object_fields(body)?;
    let mut model = None;
    let mut probe = Probe {
        model: String::new(),
        stream: false,
        include_usage: false,
    };
    for (index, (name, value)) in fields.iter().enumerate() {
        let name = name.as_ref();
        if !matches!(name, "model" | "stream" | "stream_options") {
            continue;
        }
        refuse_repeats(&fields[..index], name)?;
        if is_null(value) {
            continue;
        }
        match name {
            "model" => model = Some(parse_model(value)?),
            "stream" => probe.stream = parse_stream(value)?,
            _ => probe.include_usage = parse_include_usage(value)?,
        }
    }
    probe.model = model.ok_or("`model` is required")?;
    Ok(probe)
}

/// Parses and validates a whole Chat Completions request into the model. The error names the
/// field that is wrong. Optional fields sent as `null` count as absent.
pub fn parse(body: &[u8]) -> Result<Request, String> {
    let RawFields(fields) = object_fields(body)?;
    let mut request = Request::default();
    let mut model = None;
    let mut messages = None;
    let mut max_completion_tokens = None;
    let mut safety_identifier = None;
    for (index, (name, value)) in fields.iter().enumerate() {
        let name = name.as_ref();
        if KNOWN.contains(&name) {
            refuse_repeats(&fields[..index], name)?;
        }
        if is_null(value) {
            continue;
        }
        match name {
            "model" => model = Some(parse_model(value)?),
            "messages" => messages = Some(parse_messages(value, &mut request.unportable)?),
            "stream" => request.stream = parse_stream(value)?,
            "stream_options" => request.include_usage = parse_include_usage(value)?,
            "max_tokens" => request.max_tokens = Some(parse_positive(name, value)?),
            // OpenAI's newer name; `max_tokens` wins when both are sent.
            "max_completion_tokens" => max_completion_tokens = Some(parse_positive(name, value)?),
            "temperature" => request.temperature = Some(parse_number(name, value)?),
            "top_p" => request.top_p = Some(parse_number(name, value)?),
            "top_k" => request.top_k = parse_top_k(value)?,
            "stop" => request.stop = parse_stop(value)?,
            "seed" => request.seed = Some(parse_as(value, "`seed` must be an integer")?),
            "tools" => request.tools = parse_tools(value, &mut request.unportable)?,
            "tool_choice" => {
                request.tool_choice = parse_tool_choice(value, &mut request.unportable)?
            }
            "parallel_tool_calls" => {
                request.parallel_tool_calls = Some(parse_as(
                    value,
                    "`parallel_tool_calls` must be true or false",
                )?)
            }
            "response_format" => request.response_format = Some(parse_response_format(value)?),
            "reasoning_effort" => request.reasoning = Some(parse_reasoning_effort(value)?),
            "user" => request.user = Some(parse_as(value, "`user` must be a string")?),
            // OpenAI's newer name for `user`; `user` wins when both are sent.
            "safety_identifier" => {
                safety_identifier = Some(parse_as(value, "`safety_identifier` must be a string")?)
            }
            "n" => match serde_json::from_str::<u64>(value.get()) {
                Ok(1) => {}
                Ok(n) if n > 1 => request.unportable.push("n".into()),
                _ => return Err("`n` must be a positive integer".into()),
            },
            "logprobs" => {
                if parse_as(value, "`logprobs` must be true or false")? {
                    request.unportable.push("logprobs".into());
                }
            }
            "top_logprobs" => {
                let n: u64 = parse_as(value, "`top_logprobs` must be a non-negative integer")?;
                if n > 0 {
                    request.unportable.push("top_logprobs".into());
                }
            }
            "modalities" => {
                let modalities: Vec<String> =
                    parse_as(value, "`modalities` must be an array of strings")?;
                if modalities.iter().any(|m| m == "audio") {
                    request.unportable.push("modalities".into());
                }
            }
            // Audio output, OpenAI's own web search and the legacy function calling have no
            // equivalent elsewhere (tools are the portable form of `functions`).
            "audio" | "web_search_options" | "functions" | "function_call" => {
                request.unportable.push(name.to_owned())
            }
            name if IGNORED.contains(&name) || PROXY_FIELDS.contains(&name) => {}
            _ => request.extras.push((
                name.to_owned(),
                parse_as(value, "a field is not valid JSON")?,
            )),
        }
    }
    request.max_tokens = request.max_tokens.or(max_completion_tokens);
    request.user = request.user.or(safety_identifier);
    request.model = model.ok_or("`model` is required")?;
    let (system, messages) = messages.ok_or("`messages` is required")?;
    request.system = system;
    request.messages = messages;
    Ok(request)
}

fn object_fields(body: &[u8]) -> Result<RawFields<'_>, String> {
    serde_json::from_slice(body).map_err(|e| {
        if e.is_data() {
            "the request body must be a JSON object".to_owned()
        } else {
            format!("the request body is not valid JSON: {e}")
        }
    })
}

fn refuse_repeats(
    before: &[(std::borrow::Cow<'_, str>, &RawValue)],
    name: &str,
) -> Result<(), String> {
    if before.iter().any(|(seen, _)| seen == name) {
        return Err(format!("`{name}` appears more than once"));
    }
    Ok(())
}

fn is_null(value: &RawValue) -> bool {
    value.get() == "null"
}

/// A value of type `T`, or the error message `wrong` when it is something else.
fn parse_as<'a, T: Deserialize<'a>>(value: &'a RawValue, wrong: &str) -> Result<T, String> {
    serde_json::from_str(value.get()).map_err(|_| wrong.to_owned())
}

fn parse_model(value: &RawValue) -> Result<String, String> {
    match serde_json::from_str::<String>(value.get()) {
        Ok(model) if !model.is_empty() => Ok(model),
        _ => Err("`model` must be a non-empty string".into()),
    }
}

fn parse_stream(value: &RawValue) -> Result<bool, String> {
    parse_as(value, "`stream` must be true or false")
}

fn parse_include_usage(value: &RawValue) -> Result<bool, String> {
    #[derive(Deserialize)]
    struct StreamOptions {
        include_usage: Option<bool>,
    }
    serde_json::from_str::<StreamOptions>(value.get())
        .map(|options| options.include_usage.unwrap_or(false))
        .map_err(|_| "`stream_options` must be an object like {\"include_usage\": true}".into())
}

fn parse_positive(name: &str, value: &RawValue) -> Result<u64, String> {
    match serde_json::from_str::<u64>(value.get()) {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!("`{name}` must be a positive integer")),
    }
}

fn parse_number(name: &str, value: &RawValue) -> Result<f64, String> {
    serde_json::from_str(value.get()).map_err(|_| format!("`{name}` must be a number"))
}

/// `top_k`, not OpenAI's but taken by most servers that copy it. 0 and -1 are what vLLM,
/// llama.cpp and transformers take for "no limit", so they count as absent.
fn parse_top_k(value: &RawValue) -> Result<Option<u64>, String> {
    match serde_json::from_str::<i64>(value.get()) {
        Ok(-1 | 0) => Ok(None),
        Ok(k) if k > 0 => Ok(Some(k as u64)),
        _ => Err("`top_k` must be a positive integer (or 0 or -1 for no limit)".into()),
    }
}

fn parse_stop(value: &RawValue) -> Result<Vec<String>, String> {
    if let Ok(one) = serde_json::from_str::<String>(value.get()) {
        return Ok(vec![one]);
    }
    parse_as(value, "`stop` must be a string or an array of strings")
}

fn parse_reasoning_effort(value: &RawValue) -> Result<Reasoning, String> {
    let wrong =
        "`reasoning_effort` must be one of \"none\", \"minimal\", \"low\", \"medium\", \"high\"";
    let effort: String = parse_as(value, wrong)?;
    match effort.as_str() {
        "none" => Ok(Reasoning::Disabled),
        other => Effort::parse(other)
            .map(Reasoning::Effort)
            .ok_or_else(|| wrong.into()),
    }
}

fn parse_tools(value: &RawValue, unportable: &mut Vec<String>) -> Result<Vec<Tool>, String> {
    #[derive(Deserialize)]
    struct RawTool<'a> {
        #[serde(rename = "type")]
        kind: Option<String>,
        #[serde(borrow)]
        function: Option<&'a RawValue>,
        /// LiteLLM's convention for Anthropic's cache marker on a tool.
        cache_control: Option<Value>,
    }
    #[derive(Deserialize)]
    struct RawFunction {
        name: Option<String>,
        description: Option<String>,
        parameters: Option<Value>,
        strict: Option<bool>,
    }
    let tools: Vec<&RawValue> = parse_as(value, "`tools` must be an array of tools")?;
    let mut out = Vec::with_capacity(tools.len());
    for (i, tool) in tools.into_iter().enumerate() {
        let tool: RawTool = serde_json::from_str(tool.get()).map_err(|e| {
            format!("`tools[{i}]` must be an object with `type` and `function`: {e}")
        })?;
        match tool.kind.as_deref() {
            None | Some("function") => {}
            // Free-form tools (GPT-5's `custom`) have no equivalent elsewhere.
            Some("custom") => {
                unportable.push(format!("tools[{i}] (custom)"));
                continue;
            }
            Some(other) => {
                return Err(format!(
                    "`tools[{i}].type` is {other:?}; it must be \"function\""
                ))
            }
        }
        let function = tool
            .function
            .filter(|f| !is_null(f))
            .ok_or_else(|| format!("`tools[{i}].function` is required"))?;
        let function: RawFunction = serde_json::from_str(function.get())
            .map_err(|e| format!("`tools[{i}].function` is not a function definition: {e}"))?;
        let name = function
            .name
            .filter(|name| !name.is_empty())
            .ok_or_else(|| format!("`tools[{i}].function.name` is required"))?;
        out.push(Tool {
            name,
            description: function.description,
            parameters: function
                .parameters
                .unwrap_or_else(|| serde_json::json!({"type": "object", "properties": {}})),
            cache_control: tool.cache_control,
            strict: function.strict,
        });
    }
    Ok(out)
}

fn parse_tool_choice(
    value: &RawValue,
    unportable: &mut Vec<String>,
) -> Result<Option<ToolChoice>, String> {
    #[derive(Deserialize)]
    struct Named {
        #[serde(rename = "type")]
        kind: String,
        function: Option<Function>,
    }
    #[derive(Deserialize)]
    struct Function {
        name: String,
    }
    let wrong = "`tool_choice` must be \"auto\", \"none\", \"required\" or \
                 {\"type\": \"function\", \"function\": {\"name\": ...}}";
    if let Ok(mode) = serde_json::from_str::<String>(value.get()) {
        return match mode.as_str() {
            "auto" => Ok(Some(ToolChoice::Auto)),
            "none" => Ok(Some(ToolChoice::None)),
            "required" => Ok(Some(ToolChoice::Required)),
            _ => Err(wrong.into()),
        };
    }
    let named: Named = parse_as(value, wrong)?;
    match (named.kind.as_str(), named.function) {
        ("function", Some(Function { name })) if !name.is_empty() => {
            Ok(Some(ToolChoice::Tool(name)))
        }
        ("function", _) => Err("`tool_choice.function.name` is required".into()),
        // A subset of the tools, or a custom tool: OpenAI's alone.
        ("allowed_tools" | "custom", _) => {
            unportable.push("tool_choice".into());
            Ok(None)
        }
        _ => Err(wrong.into()),
    }
}

fn parse_response_format(value: &RawValue) -> Result<ResponseFormat, String> {
    #[derive(Deserialize)]
    struct Raw {
        #[serde(rename = "type")]
        kind: Option<String>,
        json_schema: Option<JsonSchema>,
    }
    #[derive(Deserialize)]
    struct JsonSchema {
        name: Option<String>,
        description: Option<String>,
        schema: Option<Value>,
        strict: Option<bool>,
    }
    let raw: Raw = serde_json::from_str(value.get())
        .map_err(|e| format!("`response_format` is not a response format: {e}"))?;
    match raw.kind.as_deref() {
        Some("text") => Ok(ResponseFormat::Text),
        Some("json_object") => Ok(ResponseFormat::JsonObject),
        Some("json_schema") => {
            let schema = raw
                .json_schema
                .ok_or("`response_format.json_schema` is required")?;
            Ok(ResponseFormat::JsonSchema {
                name: schema
                    .name
                    .filter(|name| !name.is_empty())
                    .ok_or("`response_format.json_schema.name` is required")?,
                description: schema.description,
                // No schema is the schema that allows anything.
                schema: schema.schema.unwrap_or_else(|| Value::Object(Default::default())),
                strict: schema.strict,
            })
        }
        Some(other) => Err(format!(
            "`response_format.type` is {other:?}; it must be \"text\", \"json_object\" or \"json_schema\""
        )),
        None => Err("`response_format.type` is required".into()),
    }
}

/// Who speaks a message, as far as its content's rules go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Speaker {
    System,
    User,
    Assistant,
    Tool,
}

impl Speaker {
    fn name(self) -> &'static str {
        match self {
            Speaker::System => "system",
            Speaker::User => "user",
            Speaker::Assistant => "assistant",
            Speaker::Tool => "tool",
        }
    }
}

/// The leading system and developer messages (the system prompt) and the rest.
fn parse_messages(
    value: &RawValue,
    unportable: &mut Vec<String>,
) -> Result<(Vec<Part>, Vec<Message>), String> {
    let raw: Vec<&RawValue> = parse_as(value, "`messages` must be an array of messages")?;
    if raw.is_empty() {
        return Err("`messages` must not be empty".into());
    }
    let mut system = Vec::new();
    let mut messages = Vec::with_capacity(raw.len());
    for (i, message) in raw.into_iter().enumerate() {
        let message = parse_message(i, message, unportable)?;
        if message.role == Role::System && messages.is_empty() {
            system.extend(message.content);
        } else {
            messages.push(message);
        }
    }
    Ok((system, messages))
}

fn parse_message(
    index: usize,
    value: &RawValue,
    unportable: &mut Vec<String>,
) -> Result<Message, String> {
    #[derive(Deserialize)]
    struct RawMessage<'a> {
        #[serde(borrow)]
        role: Option<&'a RawValue>,
        #[serde(borrow)]
        content: Option<&'a RawValue>,
        #[serde(borrow)]
        tool_calls: Option<&'a RawValue>,
        #[serde(borrow)]
        tool_call_id: Option<&'a RawValue>,
        #[serde(borrow)]
        reasoning_content: Option<&'a RawValue>,
    }
    let at = At(index);
    let message: RawMessage = serde_json::from_str(value.get()).map_err(|e| {
        if e.is_data() && value.get().starts_with('{') {
            // Every field is taken raw, so an object fails only on a repeated field.
            format!("`{at}` has a field more than once: {e}")
        } else {
            format!("`{at}` must be an object with `role` and `content`")
        }
    })?;
    let role = message
        .role
        .ok_or_else(|| format!("`{at}.role` is required"))?;
    // Borrowed: a role needs no escapes (one that has them is read as an owned string).
    let owned;
    let role = match serde_json::from_str::<&str>(role.get()) {
        Ok(role) => Ok(role),
        Err(_) => {
            owned = serde_json::from_str::<String>(role.get());
            owned.as_deref().map_err(|_| ())
        }
    };
    let speaker = match role {
        Ok("system" | "developer") => Speaker::System,
        Ok("user") => Speaker::User,
        Ok("assistant") => Speaker::Assistant,
        Ok("tool") => Speaker::Tool,
        Ok("function") => {
            return Err(format!(
                "`{at}.role` \"function\" is the legacy function-calling role; answer a tool call \
                 with a \"tool\" message and its `tool_call_id`"
            ))
        }
        _ => {
            return Err(format!(
                "`{at}.role` must be one of \"system\", \"developer\", \"user\", \"assistant\", \"tool\""
            ))
        }
    };
    let content = match message.content {
        Some(content) => parse_content(at, content, speaker, unportable)?,
        None if speaker == Speaker::Assistant => Vec::new(),
        None => return Err(format!("`{at}.content` is required")),
    };
    match speaker {
        Speaker::System => Ok(Message {
            role: Role::System,
            content,
        }),
        Speaker::User => Ok(Message {
            role: Role::User,
            content,
        }),
        Speaker::Assistant => {
            let mut parts = Vec::with_capacity(content.len() + 1);
            if let Some(reasoning) = message.reasoning_content {
                let text: String = parse_as(
                    reasoning,
                    &format!("`{at}.reasoning_content` must be a string"),
                )?;
                if !text.is_empty() {
                    parts.push(Part::Reasoning {
                        text,
                        signature: None,
                    });
                }
            }
            parts.extend(content);
            if let Some(calls) = message.tool_calls {
                parts.extend(
                    parse_tool_calls(&at.to_string(), calls)?
                        .into_iter()
                        .map(Part::ToolCall),
                );
            }
            Ok(Message {
                role: Role::Assistant,
                content: parts,
            })
        }
        Speaker::Tool => {
            let call_id = message
                .tool_call_id
                .ok_or_else(|| format!("`{at}.tool_call_id` is required"))?;
            let call_id: String =
                parse_as(call_id, &format!("`{at}.tool_call_id` must be a string"))?;
            Ok(Message {
                role: Role::Tool,
                content: vec![Part::ToolResult(ToolResult {
                    call_id,
                    content,
                    is_error: false,
                    cache_control: None,
                })],
            })
        }
    }
}

fn parse_tool_calls(at: &str, value: &RawValue) -> Result<Vec<ToolCall>, String> {
    #[derive(Deserialize)]
    struct RawCall<'a> {
        id: Option<String>,
        #[serde(rename = "type")]
        kind: Option<String>,
        #[serde(borrow)]
        function: Option<RawFunction<'a>>,
    }
    #[derive(Deserialize)]
    struct RawFunction<'a> {
        name: Option<String>,
        #[serde(borrow)]
        arguments: Option<&'a RawValue>,
    }
    let calls: Vec<&RawValue> = parse_as(
        value,
        &format!("`{at}.tool_calls` must be an array of tool calls"),
    )?;
    let mut out = Vec::with_capacity(calls.len());
    for (i, call) in calls.into_iter().enumerate() {
        let at = format!("{at}.tool_calls[{i}]");
        let call: RawCall = serde_json::from_str(call.get())
            .map_err(|e| format!("`{at}` is not a tool call: {e}"))?;
        if let Some(kind) = call.kind.as_deref().filter(|kind| *kind != "function") {
            return Err(format!("`{at}.type` is {kind:?}; it must be \"function\""));
        }
        let id = call
            .id
            .filter(|id| !id.is_empty())
            .ok_or_else(|| format!("`{at}.id` is required"))?;
        let function = call
            .function
            .ok_or_else(|| format!("`{at}.function` is required"))?;
        let name = function
            .name
            .filter(|name| !name.is_empty())
            .ok_or_else(|| format!("`{at}.function.name` is required"))?;
        // The arguments are JSON text. Some clients send the object itself; its text is the
        // same arguments.
        let arguments = match function.arguments {
            None => String::new(),
            Some(raw) if is_null(raw) => String::new(),
            Some(raw) => match serde_json::from_str::<String>(raw.get()) {
                Ok(text) => text,
                Err(_) => raw.get().to_owned(),
            },
        };
        out.push(ToolCall {
            id,
            name,
            arguments,
            cache_control: None,
        });
    }
    Ok(out)
}

/// What one content part becomes.
enum Parsed {
    Part(Part),
    /// Nothing the model keeps: an assistant's refusal part.
    Nothing,
    /// A part only OpenAI takes, named by its type.
    Unportable(&'static str),
}

/// Where a message sits, for error messages: written out only when there is one to write.
#[derive(Clone, Copy)]
struct At(usize);

impl std::fmt::Display for At {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "messages[{}]", self.0)
    }
}

fn parse_content(
    at: At,
    value: &RawValue,
    speaker: Speaker,
    unportable: &mut Vec<String>,
) -> Result<Vec<Part>, String> {
    if let Ok(text) = serde_json::from_str::<String>(value.get()) {
        // An assistant's empty content is no content (SDKs send "" beside tool calls).
        if text.is_empty() && speaker == Speaker::Assistant {
            return Ok(Vec::new());
        }
        return Ok(vec![Part::text(text)]);
    }
    let parts: Vec<&RawValue> = serde_json::from_str(value.get())
        .map_err(|_| format!("`{at}.content` must be a string or an array of content parts"))?;
    let mut out = Vec::with_capacity(parts.len());
    for (i, part) in parts.into_iter().enumerate() {
        match parse_part(part, speaker).map_err(|e| format!("`{at}.content[{i}]` {e}"))? {
            Parsed::Part(part) => out.push(part),
            Parsed::Nothing => {}
            Parsed::Unportable(kind) => unportable.push(format!("{at}.content[{i}] ({kind})")),
        }
    }
    Ok(out)
}

/// One content part. Errors say what is wrong with the part; the caller names its place.
fn parse_part(value: &RawValue, speaker: Speaker) -> Result<Parsed, String> {
    #[derive(Deserialize)]
    struct RawPart<'a> {
        #[serde(rename = "type", borrow)]
        kind: Option<std::borrow::Cow<'a, str>>,
        #[serde(borrow)]
        text: Option<&'a RawValue>,
        #[serde(borrow)]
        image_url: Option<&'a RawValue>,
        /// LiteLLM's convention for Anthropic's prompt-caching marker.
        cache_control: Option<Value>,
    }
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum RawImageUrl {
        Object { url: String },
        Bare(String),
    }
    let part: RawPart = serde_json::from_str(value.get())
        .map_err(|_| "must be an object with a `type` and its field".to_owned())?;
    let cache_control = part.cache_control.filter(|c| !c.is_null());
    match part.kind.as_deref() {
        Some("text") => match part
            .text
            .map(|text| serde_json::from_str::<String>(text.get()))
        {
            Some(Ok(text)) => Ok(Parsed::Part(Part::Text {
                text,
                cache_control,
            })),
            _ => Err("is a text part without a string `text`".into()),
        },
        Some("image_url") if speaker != Speaker::User => Err(format!(
            "is an image; a {} message takes text parts only",
            speaker.name()
        )),
        Some("image_url") => {
            let url = part
                .image_url
                .and_then(|raw| serde_json::from_str::<RawImageUrl>(raw.get()).ok());
            match url {
                Some(RawImageUrl::Object { url } | RawImageUrl::Bare(url)) => {
                    Ok(Parsed::Part(Part::Image {
                        image: parse_image_url(url)?,
                        cache_control,
                    }))
                }
                None => Err("is an image part without `image_url.url`".into()),
            }
        }
        Some("refusal") if speaker == Speaker::Assistant => Ok(Parsed::Nothing),
        Some("input_audio") => Ok(Parsed::Unportable("input_audio")),
        Some("file") => Ok(Parsed::Unportable("file")),
        Some(other) => Err(format!(
            "has type {other:?}; supported part types are \"text\" and \"image_url\""
        )),
        None => Err("has no `type`".into()),
    }
}

/// An image URL: `https://...`, or `data:<media type>;base64,<data>`.
fn parse_image_url(url: String) -> Result<Image, String> {
    if let Some(rest) = url.strip_prefix("data:") {
        let (header, data) = rest
            .split_once(',')
            .ok_or("has a data: URL without a `,` before its data")?;
        let media_type = header
            .strip_suffix(";base64")
            .ok_or("has a data: URL that is not base64; use data:<type>;base64,<data>")?;
        let media_type = supported_media_type(media_type)?;
        if data.is_empty() || !data.bytes().all(is_base64) {
            return Err("has a data: URL whose data is not base64".into());
        }
        return Ok(Image::Base64 {
            media_type,
            data: data.to_owned(),
        });
    }
    if !url.starts_with("https://") || url.len() == "https://".len() {
        return Err("has an image URL that is neither https:// nor data:".into());
    }
    let path = url.split(['?', '#']).next().unwrap_or_default();
    let file = path.rsplit('/').next().unwrap_or_default();
    let media_type = match file.rsplit_once('.') {
        Some((_, extension)) => media_type_of_extension(extension)?,
        None => "image/jpeg",
    };
    Ok(Image::Url { url, media_type })
}

fn is_base64(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || matches!(byte, b'+' | b'/' | b'=')
}

fn supported_media_type(media_type: &str) -> Result<&'static str, String> {
    MEDIA_TYPES
        .into_iter()
        .find(|known| known.eq_ignore_ascii_case(media_type))
        .ok_or_else(|| {
            format!(
                "has media type {media_type:?}; supported are {}",
                MEDIA_TYPES.join(", ")
            )
        })
}

fn media_type_of_extension(extension: &str) -> Result<&'static str, String> {
    match extension.to_ascii_lowercase().as_str() {
        "jpg" | "jpeg" => Ok("image/jpeg"),
        "png" => Ok("image/png"),
        "gif" => Ok("image/gif"),
        "webp" => Ok("image/webp"),
        // A dot in the last path segment that is not an image extension says nothing about the
        // type (`/v2/render.api`), except for the image types we know we cannot send.
        "bmp" | "svg" | "tif" | "tiff" | "ico" | "heic" | "avif" => Err(format!(
            "has an image of type .{extension}; supported are {}",
            MEDIA_TYPES.join(", ")
        )),
        _ => Ok("image/jpeg"),
    }
}

/// A fresh completion id, unique within the process and across restarts.
/// What OpenAI's completion ids start with. An upstream's own id of that shape is kept; any
/// other (Anthropic's `msg_...`) is replaced, so every id the door gives looks like OpenAI's.
const ID_PREFIX: &str = "chatcmpl-";

pub fn completion_id() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let started = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    format!(
        "chatcmpl-{started:x}{:04x}",
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A whole answer as a `chat.completion` object: its text as one string, its reasoning as
/// `reasoning_content` (the name DeepSeek and vLLM use), its tool calls in order.
pub fn completion(response: &Response) -> Vec<u8> {
    #[derive(Serialize)]
    struct Completion<'a> {
        id: std::borrow::Cow<'a, str>,
        object: &'static str,
        created: u64,
        model: &'a str,
        choices: [Choice<'a>; 1],
        #[serde(skip_serializing_if = "Option::is_none")]
        usage: Option<UsageOut>,
    }
    #[derive(Serialize)]
    struct Choice<'a> {
        index: u32,
        message: CompletionMessage<'a>,
        logprobs: Option<()>,
        finish_reason: Option<&'static str>,
    }
    #[derive(Serialize)]
    struct CompletionMessage<'a> {
        role: &'static str,
        content: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        reasoning_content: Option<String>,
        #[serde(skip_serializing_if = "Vec::is_empty")]
        tool_calls: Vec<ToolCallOut<'a>>,
    }
    let tool_calls: Vec<_> = response.tool_calls().map(ToolCallOut::of).collect();
    let text = response.text();
    let body = Completion {
        id: match &response.id {
            Some(id) if id.starts_with(ID_PREFIX) => id.into(),
            _ => completion_id().into(),
        },
        object: "chat.completion",
        created: unix_now(),
        model: &response.model,
        choices: [Choice {
            index: 0,
            message: CompletionMessage {
                role: "assistant",
                // OpenAI's own answers with tool calls and no text have `content: null`.
                content: (!text.is_empty() || tool_calls.is_empty()).then_some(text),
                reasoning_content: response.reasoning(),
                tool_calls,
            },
            logprobs: None,
            finish_reason: response.stop_reason.as_ref().map(finish_reason),
        }],
        usage: response.usage.map(UsageOut::from),
    };
    serde_json::to_vec(&body).expect("a completion always serializes")
}

/// A whole answer as the `chat.completion.chunk` stream OpenAI would have sent: for an
/// upstream that answered a stream request with a whole body, and for tests.
pub fn stream_of(response: &Response, include_usage: bool) -> Vec<u8> {
    let mut encoder = ChunkEncoder::new(&response.model, include_usage);
    let mut out = Vec::with_capacity(512);
    for event in response.events() {
        encoder.event(event, &mut out);
    }
    encoder.finish(&mut out);
    out
}

/// Renders the model's stream events as `chat.completion.chunk` SSE events: the role first,
/// then the deltas, the finish reason, the usage chunk when asked for, and `[DONE]`.
pub struct ChunkEncoder {
    id: String,
    created: u64,
    model: String,
    include_usage: bool,
    started: bool,
    usage: Option<Usage>,
    /// A call's start, held for one event: when its arguments come next (Gemini sends whole
    /// calls), both go out as one delta, as OpenAI itself sends a complete call.
    pending_call: Option<(usize, String, String)>,
    /// `data: {"id":…,"object":…,"created":…,"model":…,"choices":`, the same in every chunk:
    /// written once per stream rather than escaped again for every event.
    head: Vec<u8>,
}

impl ChunkEncoder {
    /// `model` is the one asked for, until the upstream names the one that answers.
    pub fn new(model: &str, include_usage: bool) -> Self {
        Self {
            id: completion_id(),
            created: unix_now(),
            model: model.to_owned(),
            include_usage,
            started: false,
            usage: None,
            pending_call: None,
            head: Vec::new(),
        }
    }

    /// Writes a call's first delta: its index, id, type and name, and any first arguments.
    fn call_start(
        &mut self,
        (index, id, name): (usize, String, String),
        arguments: &str,
        out: &mut Vec<u8>,
    ) {
        let delta = Delta {
            tool_calls: Some([ToolCallDelta {
                index,
                id: Some(&id),
                kind: Some("function"),
                function: FunctionDelta {
                    name: Some(&name),
                    arguments,
                },
            }]),
            ..Delta::default()
        };
        self.chunk(delta, None, out);
    }

    fn flush_call(&mut self, out: &mut Vec<u8>) {
        if let Some(call) = self.pending_call.take() {
            self.call_start(call, "", out);
        }
    }

    /// The first chunk: the assistant's role. Written once, before anything else.
    fn start(&mut self, out: &mut Vec<u8>) {
        if !self.started {
            self.started = true;
            let delta = Delta {
                role: Some("assistant"),
                content: Some(""),
                ..Delta::default()
            };
            self.chunk(delta, None, out);
        }
    }

    fn chunk(&mut self, delta: Delta<'_>, finish_reason: Option<&str>, out: &mut Vec<u8>) {
        if self.head.is_empty() {
            let head = ChunkHead {
                id: &self.id,
                object: "chat.completion.chunk",
                created: self.created,
                model: &self.model,
            };
            self.head.extend_from_slice(b"data: ");
            serde_json::to_writer(&mut self.head, &head).expect("a chunk always serializes");
            // Reopened for the field that differs from chunk to chunk.
            self.head.pop();
            self.head.extend_from_slice(br#","choices":"#);
        }
        out.extend_from_slice(&self.head);
        let choices = [ChunkChoice {
            index: 0,
            delta,
            logprobs: None,
            finish_reason,
        }];
        serde_json::to_writer(&mut *out, &choices).expect("a chunk always serializes");
        out.extend_from_slice(b"}\n\n");
    }
}

impl StreamEncoder for ChunkEncoder {
    fn event(&mut self, event: StreamEvent, out: &mut Vec<u8>) {
        if let Some(call) = self.pending_call.take() {
            match &event {
                StreamEvent::ToolArguments { index, fragment } if *index == call.0 => {
                    return self.call_start(call, fragment, out);
                }
                _ => self.call_start(call, "", out),
            }
        }
        match event {
            StreamEvent::Start { id, model } => {
                if !self.started {
                    self.head.clear();
                    if let Some(id) = id.filter(|id| id.starts_with(ID_PREFIX)) {
                        self.id = id;
                    }
                    if let Some(model) = model {
                        self.model = model;
                    }
                }
                self.start(out);
            }
            StreamEvent::Text(text) => {
                self.start(out);
                if !text.is_empty() {
                    let delta = Delta {
                        content: Some(&text),
                        ..Delta::default()
                    };
                    self.chunk(delta, None, out);
                }
            }
            StreamEvent::Reasoning(text) => {
                self.start(out);
                if !text.is_empty() {
                    let delta = Delta {
                        reasoning_content: Some(&text),
                        ..Delta::default()
                    };
                    self.chunk(delta, None, out);
                }
            }
            StreamEvent::ToolCallStart { index, id, name } => {
                self.start(out);
                // As OpenAI does: the call's id, type and name on its first delta only.
                self.pending_call = Some((index, id, name));
            }
            StreamEvent::ToolArguments { index, fragment } => {
                self.start(out);
                let delta = Delta {
                    tool_calls: Some([ToolCallDelta {
                        index,
                        id: None,
                        kind: None,
                        function: FunctionDelta {
                            name: None,
                            arguments: &fragment,
                        },
                    }]),
                    ..Delta::default()
                };
                self.chunk(delta, None, out);
            }
            // OpenAI has no way to carry reasoning signatures or encrypted reasoning.
            StreamEvent::ReasoningSignature(_) | StreamEvent::RedactedReasoning(_) => {
                self.start(out)
            }
            StreamEvent::Stop { reason, .. } => {
                self.start(out);
                self.chunk(Delta::default(), Some(finish_reason(&reason)), out);
            }
            StreamEvent::Usage(usage) => {
                self.usage.get_or_insert_with(Usage::default).merge(&usage)
            }
        }
    }

    fn finish(&mut self, out: &mut Vec<u8>) {
        self.start(out);
        self.flush_call(out);
        if self.include_usage {
            // A client that asked for usage gets its chunk even when the upstream sent none.
            let chunk = UsageChunk {
                id: &self.id,
                object: "chat.completion.chunk",
                created: self.created,
                model: &self.model,
                choices: [],
                usage: self.usage.unwrap_or_default().into(),
            };
            write_data(out, &chunk);
        }
        out.extend_from_slice(b"data: [DONE]\n\n");
    }

    fn error(&mut self, error: &ProxyError, provider: &str, out: &mut Vec<u8>) {
        self.flush_call(out);
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(&error.openai_body(Some(provider)));
        out.extend_from_slice(b"\n\n");
    }

    fn usage(&self) -> Option<Usage> {
        self.usage
    }
}

fn write_data(out: &mut Vec<u8>, value: &impl Serialize) {
    out.extend_from_slice(b"data: ");
    // Only strings and numbers: writing into a Vec cannot fail.
    serde_json::to_writer(&mut *out, value).expect("a chunk always serializes");
    out.extend_from_slice(b"\n\n");
}

/// A chunk's fields before its `choices`, which [`ChunkEncoder`] writes once per stream.
#[derive(Serialize)]
struct ChunkHead<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
}

#[derive(Serialize)]
struct ChunkChoice<'a> {
    index: u32,
    delta: Delta<'a>,
    logprobs: Option<()>,
    finish_reason: Option<&'a str>,
}

#[derive(Serialize, Default)]
struct Delta<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    content: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reasoning_content: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_calls: Option<[ToolCallDelta<'a>; 1]>,
}

#[derive(Serialize)]
struct ToolCallDelta<'a> {
    index: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    kind: Option<&'static str>,
    function: FunctionDelta<'a>,
}

#[derive(Serialize)]
struct FunctionDelta<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
    arguments: &'a str,
}

#[derive(Serialize)]
struct UsageChunk<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    choices: [(); 0],
    usage: UsageOut,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::StopReason;
    use serde_json::json;

    const HI: &str = r#"[{"role":"user","content":"hi"}]"#;

    fn parse(json: &str) -> Result<Request, String> {
        super::parse(json.as_bytes())
    }

    fn call(id: &str, name: &str, arguments: &str) -> ToolCall {
        ToolCall {
            id: id.into(),
            name: name.into(),
            arguments: arguments.into(),
            cache_control: None,
        }
    }

    fn result(call_id: &str, text: &str) -> Message {
        Message {
            role: Role::Tool,
            content: vec![Part::ToolResult(ToolResult {
                call_id: call_id.into(),
                content: vec![Part::text(text)],
                is_error: false,
                cache_control: None,
            })],
        }
    }

    #[test]
    fn a_full_agent_request_parses_into_the_model() {
        let request = parse(
            r#"{"model":"anthropic/claude-sonnet-4-5",
                "messages":[
                  {"role":"developer","content":"You are a coding agent."},
                  {"role":"system","content":[{"type":"text","text":"Repo: llm-proxy","cache_control":{"type":"ephemeral"}}]},
                  {"role":"user","content":[{"type":"text","text":"What is in"},
                      {"type":"image_url","image_url":{"url":"https://example.com/shot.png","detail":"high"}}]},
                  {"role":"assistant","content":null,"reasoning_content":"Look first.","refusal":null,
                   "tool_calls":[{"id":"call_1","type":"function","function":{"name":"read_file","arguments":"{\"path\":\"a.rs\"}"}},
                                 {"id":"call_2","type":"function","function":{"name":"list_dir","arguments":"{}"}}]},
                  {"role":"tool","tool_call_id":"call_1","content":"fn main() {}"},
                  {"role":"tool","tool_call_id":"call_2","content":[{"type":"text","text":"a.rs"}]},
                  {"role":"system","content":"Be brief."},
                  {"role":"assistant","content":"It is a main function."}],
                "tools":[{"type":"function","function":{"name":"read_file","description":"Reads a file",
                           "parameters":{"type":"object","properties":{"path":{"type":"string"}}},"strict":true}},
                         {"type":"function","function":{"name":"list_dir"},"cache_control":{"type":"ephemeral"}}],
                "tool_choice":{"type":"function","function":{"name":"read_file"}},
                "parallel_tool_calls":false,
                "response_format":{"type":"json_schema","json_schema":{"name":"answer","description":"The answer",
                   "schema":{"type":"object"},"strict":true}},
                "reasoning_effort":"high",
                "max_completion_tokens":1000,"temperature":0.5,"top_p":0.9,"top_k":40,"stop":"END","seed":7,
                "safety_identifier":"user-42","stream":true,"stream_options":{"include_usage":true},
                "frequency_penalty":0.1,"store":false,"n":1,"logprobs":false,
                "fallbacks":["openai/gpt-4o"],
                "metadata":{"user_id":"u1"},"safetySettings":[{"category":"HARM_CATEGORY_HATE_SPEECH"}]}"#,
        )
        .unwrap();
        let expected = Request {
            model: "anthropic/claude-sonnet-4-5".into(),
            system: vec![
                Part::text("You are a coding agent."),
                Part::Text {
                    text: "Repo: llm-proxy".into(),
                    cache_control: Some(json!({"type": "ephemeral"})),
                },
            ],
            messages: vec![
                Message {
                    role: Role::User,
                    content: vec![
                        Part::text("What is in"),
                        Part::Image {
                            image: Image::Url {
                                url: "https://example.com/shot.png".into(),
                                media_type: "image/png",
                            },
                            cache_control: None,
                        },
                    ],
                },
                Message {
                    role: Role::Assistant,
                    content: vec![
                        Part::Reasoning {
                            text: "Look first.".into(),
                            signature: None,
                        },
                        Part::ToolCall(call("call_1", "read_file", r#"{"path":"a.rs"}"#)),
                        Part::ToolCall(call("call_2", "list_dir", "{}")),
                    ],
                },
                result("call_1", "fn main() {}"),
                result("call_2", "a.rs"),
                Message::text(Role::System, "Be brief."),
                Message::text(Role::Assistant, "It is a main function."),
            ],
            tools: vec![
                Tool {
                    name: "read_file".into(),
                    description: Some("Reads a file".into()),
                    parameters: json!({"type":"object","properties":{"path":{"type":"string"}}}),
                    cache_control: None,
                    strict: Some(true),
                },
                Tool {
                    name: "list_dir".into(),
                    description: None,
                    parameters: json!({"type": "object", "properties": {}}),
                    cache_control: Some(json!({"type": "ephemeral"})),
                    strict: None,
                },
            ],
            tool_choice: Some(ToolChoice::Tool("read_file".into())),
            parallel_tool_calls: Some(false),
            response_format: Some(ResponseFormat::JsonSchema {
                name: "answer".into(),
                description: Some("The answer".into()),
                schema: json!({"type": "object"}),
                strict: Some(true),
            }),
            max_tokens: Some(1000),
            temperature: Some(0.5),
            top_p: Some(0.9),
            top_k: Some(40),
            stop: vec!["END".into()],
            seed: Some(7),
            reasoning: Some(Reasoning::Effort(Effort::High)),
            user: Some("user-42".into()),
            stream: true,
            include_usage: true,
            extras: vec![
                ("metadata".into(), json!({"user_id": "u1"})),
                (
                    "safetySettings".into(),
                    json!([{"category": "HARM_CATEGORY_HATE_SPEECH"}]),
                ),
            ],
            unportable: vec![],
        };
        assert_eq!(request, expected);
    }

    #[test]
    fn a_single_stop_string_becomes_a_list() {
        let request = parse(&format!(r#"{{"model":"m","messages":{HI},"stop":"END"}}"#)).unwrap();
        assert_eq!(request.stop, ["END"]);
    }

    #[test]
    fn null_optional_fields_count_as_absent() {
        let request = parse(&format!(
            r#"{{"model":"m","messages":{HI},"stream":null,"max_tokens":null,"temperature":null,
                 "top_p":null,"stop":null,"tools":null,"tool_choice":null,"user":null,"n":null,
                 "audio":null,"metadata":null}}"#
        ))
        .unwrap();
        assert_eq!(
            request,
            Request {
                model: "m".into(),
                messages: vec![Message::text(Role::User, "hi")],
                ..Request::default()
            }
        );
        let assistant = parse(
            r#"{"model":"m","messages":[{"role":"assistant","content":null,"tool_calls":null,"reasoning_content":null}]}"#,
        )
        .unwrap();
        assert_eq!(assistant.messages[0].content, []);
    }

    #[test]
    fn front_door_options_are_read() {
        let request = parse(&format!(
            r#"{{"model":"m","messages":{HI},"stream_options":{{"include_usage":true}},"max_completion_tokens":9}}"#
        ))
        .unwrap();
        assert!(request.include_usage);
        assert_eq!(request.max_tokens, Some(9));
        let both = parse(&format!(
            r#"{{"model":"m","messages":{HI},"max_tokens":5,"max_completion_tokens":9,
                 "user":"a","safety_identifier":"b"}}"#
        ))
        .unwrap();
        assert_eq!(both.max_tokens, Some(5), "max_tokens wins");
        assert_eq!(both.user.as_deref(), Some("a"), "user wins");
    }

    #[test]
    fn reasoning_efforts_and_top_k_take_their_conventions() {
        let effort = |effort: &str| {
            parse(&format!(
                r#"{{"model":"m","messages":{HI},"reasoning_effort":"{effort}"}}"#
            ))
            .unwrap()
            .reasoning
        };
        assert_eq!(effort("none"), Some(Reasoning::Disabled));
        assert_eq!(effort("minimal"), Some(Reasoning::Effort(Effort::Minimal)));
        assert_eq!(effort("medium"), Some(Reasoning::Effort(Effort::Medium)));
        let top_k = |k: i64| {
            parse(&format!(r#"{{"model":"m","messages":{HI},"top_k":{k}}}"#))
                .unwrap()
                .top_k
        };
        assert_eq!(top_k(-1), None, "vLLM's no limit");
        assert_eq!(top_k(0), None);
        assert_eq!(top_k(3), Some(3));
    }

    #[test]
    fn openai_only_fields_are_dropped_at_their_defaults_and_unportable_otherwise() {
        let defaults = parse(&format!(
            r#"{{"model":"m","messages":{HI},"n":1,"logprobs":false,"top_logprobs":0,
                 "modalities":["text"],"frequency_penalty":1,"presence_penalty":1,"logit_bias":{{"1":2}},
                 "store":true,"service_tier":"flex","prediction":{{"type":"content","content":"x"}},
                 "verbosity":"low","prompt_cache_key":"k"}}"#
        ))
        .unwrap();
        assert_eq!(defaults.unportable, Vec::<String>::new());
        assert_eq!(defaults.extras, []);
        let unportable = parse(
            r#"{"model":"m","n":2,"logprobs":true,"top_logprobs":3,"audio":{"voice":"alloy","format":"wav"},
                "modalities":["text","audio"],"web_search_options":{},
                "tools":[{"type":"custom","custom":{"name":"grammar"}}],
                "tool_choice":{"type":"allowed_tools","allowed_tools":{"mode":"auto","tools":[]}},
                "messages":[{"role":"user","content":[{"type":"text","text":"hear"},
                  {"type":"input_audio","input_audio":{"data":"UklG","format":"wav"}},
                  {"type":"file","file":{"file_id":"file-1"}}]}]}"#,
        )
        .unwrap();
        assert_eq!(
            unportable.unportable,
            [
                "n",
                "logprobs",
                "top_logprobs",
                "audio",
                "modalities",
                "web_search_options",
                "tools[0] (custom)",
                "tool_choice",
                "messages[0].content[1] (input_audio)",
                "messages[0].content[2] (file)",
            ]
        );
        assert_eq!(unportable.messages[0].content, [Part::text("hear")]);
        assert_eq!(unportable.tools, []);
        assert_eq!(unportable.tool_choice, None);
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
                r#"{"model":"m","messages":[{"role":"user","role":"user","content":"hi"}]}"#,
                "`messages[0]` has a field more than once",
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
                r#"{"model":"m","messages":[{"role":"function","name":"f","content":"1"}]}"#,
                "`messages[0].role` \"function\" is the legacy function-calling role",
            ),
            (
                r#"{"model":"m","messages":[{"role":"user"}]}"#,
                "`messages[0].content` is required",
            ),
            (
                r#"{"model":"m","messages":[{"role":"user","content":5}]}"#,
                "`messages[0].content` must be a string or an array of content parts",
            ),
            (
                r#"{"model":"m","messages":[{"role":"user","content":[{"type":"text","text":"hi"},{"type":"audio"}]}]}"#,
                "`messages[0].content[1]` has type \"audio\"",
            ),
            (
                r#"{"model":"m","messages":[{"role":"user","content":[{"text":"hi"}]}]}"#,
                "`messages[0].content[0]` has no `type`",
            ),
            (
                r#"{"model":"m","messages":[{"role":"user","content":[{"type":"text"}]}]}"#,
                "`messages[0].content[0]` is a text part without a string `text`",
            ),
            (
                r#"{"model":"m","messages":[{"role":"user","content":[{"type":"text","text":5}]}]}"#,
                "`messages[0].content[0]` is a text part without a string `text`",
            ),
            (
                r#"{"model":"m","messages":[{"role":"user","content":[{"type":"image_url"}]}]}"#,
                "`messages[0].content[0]` is an image part without `image_url.url`",
            ),
            (
                r#"{"model":"m","messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"http://x.com/a.png"}}]}]}"#,
                "neither https:// nor data:",
            ),
            (
                r#"{"model":"m","messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"data:image/bmp;base64,Qk0="}}]}]}"#,
                "`messages[0].content[0]` has media type \"image/bmp\"",
            ),
            (
                r#"{"model":"m","messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"data:image/png,rawbytes"}}]}]}"#,
                "not base64",
            ),
            (
                r#"{"model":"m","messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"data:image/png;base64,@@@"}}]}]}"#,
                "whose data is not base64",
            ),
            (
                r#"{"model":"m","messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"https://x.com/a.svg"}}]}]}"#,
                "has an image of type .svg",
            ),
            (
                r#"{"model":"m","messages":[{"role":"system","content":[{"type":"image_url","image_url":{"url":"https://x.com/a.png"}}]}]}"#,
                "`messages[0].content[0]` is an image; a system message takes text parts only",
            ),
            (
                r#"{"model":"m","messages":[{"role":"assistant","tool_calls":[{"type":"function","function":{"name":"f"}}]}]}"#,
                "`messages[0].tool_calls[0].id` is required",
            ),
            (
                r#"{"model":"m","messages":[{"role":"assistant","tool_calls":[{"id":"c","type":"function","function":{"arguments":"{}"}}]}]}"#,
                "`messages[0].tool_calls[0].function.name` is required",
            ),
            (
                r#"{"model":"m","messages":[{"role":"user","content":"a"},{"role":"assistant","tool_calls":[{"id":"c","type":"function"}]}]}"#,
                "`messages[1].tool_calls[0].function` is required",
            ),
            (
                r#"{"model":"m","messages":[{"role":"assistant","tool_calls":[{"id":"c","type":"custom","custom":{}}]}]}"#,
                "`messages[0].tool_calls[0].type` is \"custom\"; it must be \"function\"",
            ),
            (
                r#"{"model":"m","messages":[{"role":"assistant","tool_calls":{}}]}"#,
                "`messages[0].tool_calls` must be an array of tool calls",
            ),
            (
                r#"{"model":"m","messages":[{"role":"assistant","content":"x","reasoning_content":1}]}"#,
                "`messages[0].reasoning_content` must be a string",
            ),
            (
                r#"{"model":"m","messages":[{"role":"tool","content":"42"}]}"#,
                "`messages[0].tool_call_id` is required",
            ),
            (
                r#"{"model":"m","messages":[{"role":"tool","tool_call_id":"c"}]}"#,
                "`messages[0].content` is required",
            ),
            (
                r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"tools":{}}"#,
                "`tools` must be an array of tools",
            ),
            (
                r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"tools":[{"type":"function"}]}"#,
                "`tools[0].function` is required",
            ),
            (
                r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"tools":[{"type":"function","function":{"description":"d"}}]}"#,
                "`tools[0].function.name` is required",
            ),
            (
                r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"tools":[{"type":"web_search"}]}"#,
                "`tools[0].type` is \"web_search\"",
            ),
            (
                r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"tool_choice":"any"}"#,
                "`tool_choice` must be \"auto\", \"none\", \"required\"",
            ),
            (
                r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"tool_choice":{"type":"function"}}"#,
                "`tool_choice.function.name` is required",
            ),
            (
                r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"response_format":{"type":"yaml"}}"#,
                "`response_format.type` is \"yaml\"",
            ),
            (
                r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"response_format":{"type":"json_schema"}}"#,
                "`response_format.json_schema` is required",
            ),
            (
                r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"response_format":{"type":"json_schema","json_schema":{"schema":{}}}}"#,
                "`response_format.json_schema.name` is required",
            ),
            (
                r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"reasoning_effort":"extreme"}"#,
                "`reasoning_effort` must be one of",
            ),
            (
                r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"parallel_tool_calls":"no"}"#,
                "`parallel_tool_calls` must be true or false",
            ),
            (
                r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"stream_options":true}"#,
                "`stream_options` must be an object",
            ),
            (
                r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"max_completion_tokens":0}"#,
                "`max_completion_tokens` must be a positive integer",
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
                r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"top_k":-5}"#,
                "`top_k` must be a positive integer",
            ),
            (
                r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"seed":"x"}"#,
                "`seed` must be an integer",
            ),
            (
                r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"n":0}"#,
                "`n` must be a positive integer",
            ),
            (
                r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"user":5}"#,
                "`user` must be a string",
            ),
            (
                r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"stop":[1]}"#,
                "`stop` must be a string or an array of strings",
            ),
            (
                r#"{"model":"a","model":"b","messages":[{"role":"user","content":"hi"}]}"#,
                "`model` appears more than once",
            ),
            (
                r#"{"model":"a","messages":[{"role":"user","content":"hi"}],"tools":[],"tools":[]}"#,
                "`tools` appears more than once",
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
    fn content_parts_parse_into_text_and_images() {
        let request = parse(
            r#"{"model":"m","messages":[{"role":"user","content":[
                {"type":"text","text":"Look: "},
                {"type":"image_url","image_url":{"url":"data:image/PNG;base64,iVBORw0KGgo=","detail":"low"}},
                {"type":"image_url","image_url":{"url":"https://example.com/img/cat.webp?size=2"}},
                {"type":"image_url","image_url":"https://example.com/render"},
                {"type":"text","text":"what?"}]}]}"#,
        )
        .unwrap();
        let image = |image| Part::Image {
            image,
            cache_control: None,
        };
        assert_eq!(
            request.messages[0].content,
            [
                Part::text("Look: "),
                image(Image::Base64 {
                    media_type: "image/png",
                    data: "iVBORw0KGgo=".into()
                }),
                image(Image::Url {
                    url: "https://example.com/img/cat.webp?size=2".into(),
                    media_type: "image/webp"
                }),
                image(Image::Url {
                    url: "https://example.com/render".into(),
                    media_type: "image/jpeg"
                }),
                Part::text("what?"),
            ]
        );
        assert!(request.has_images());
    }

    #[test]
    fn assistant_turns_keep_text_and_drop_refusals_and_empty_content() {
        let request = parse(
            r#"{"model":"m","messages":[{"role":"assistant","content":[{"type":"text","text":"a"},
                {"type":"refusal","refusal":"no"}]},
                {"role":"assistant","content":"","tool_calls":[{"id":"c","function":{"name":"f","arguments":{"x":1}}}]}]}"#,
        )
        .unwrap();
        assert_eq!(request.messages[0].content, [Part::text("a")]);
        assert_eq!(
            request.messages[1].content,
            [Part::ToolCall(call("c", "f", r#"{"x":1}"#))],
            "an arguments object is taken as its JSON text"
        );
    }

    #[test]
    fn only_leading_system_messages_make_the_system_prompt() {
        let request = parse(
            r#"{"model":"m","messages":[{"role":"user","content":"hi"},{"role":"developer","content":"later"}]}"#,
        )
        .unwrap();
        assert_eq!(request.system, []);
        assert_eq!(request.messages[1], Message::text(Role::System, "later"));
    }

    #[test]
    fn the_probe_reads_the_model_and_stream_and_nothing_else() {
        let probe = super::probe(
            br#"{"messages":5,"model":"openai/gpt-4o","stream":true,"stream_options":{"include_usage":true},"n":"x"}"#,
        )
        .unwrap();
        assert_eq!(
            probe,
            Probe {
                model: "openai/gpt-4o".into(),
                stream: true,
                include_usage: true
            }
        );
        let quiet = super::probe(br#"{"model":"m","stream":null,"stream_options":null}"#).unwrap();
        assert!(!quiet.stream && !quiet.include_usage);
        for (body, expected) in [
            (&b"not json"[..], "not valid JSON"),
            (b"[1]", "must be a JSON object"),
            (br#"{"stream":true}"#, "`model` is required"),
            (br#"{"model":""}"#, "`model` must be a non-empty string"),
            (
                br#"{"model":"m","stream":1}"#,
                "`stream` must be true or false",
            ),
            (
                br#"{"model":"m","stream_options":[]}"#,
                "`stream_options` must be an object",
            ),
            (
                br#"{"model":"m","model":"n"}"#,
                "`model` appears more than once",
            ),
        ] {
            let err = super::probe(body).unwrap_err();
            assert!(err.contains(expected), "got {err:?}, want {expected:?}");
        }
    }

    fn answer() -> Response {
        Response {
            id: Some("msg_01".into()),
            model: "claude-sonnet-4-5".into(),
            content: vec![
                Part::Reasoning {
                    text: "The user wants".into(),
                    signature: Some("sig".into()),
                },
                Part::Reasoning {
                    text: " weather.".into(),
                    signature: None,
                },
                Part::text("Checking."),
                Part::ToolCall(call("call_1", "get_weather", r#"{"city":"Paris"}"#)),
                Part::ToolCall(call("call_2", "get_time", "")),
            ],
            stop_reason: Some(StopReason::ToolCalls),
            native_stop_reason: Some("tool_use".into()),
            usage: Some(Usage {
                input_tokens: 30,
                output_tokens: 12,
                cache_read_tokens: 20,
                cache_write_tokens: 5,
                reasoning_tokens: 4,
            }),
        }
    }

    #[test]
    fn a_normalized_answer_becomes_a_chat_completion() {
        let response = Response {
            model: "claude-3-5-haiku-20241022".into(),
            content: vec![Part::text("Hi!")],
            stop_reason: Some(StopReason::Length),
            native_stop_reason: Some("max_tokens".into()),
            usage: Some(Usage {
                input_tokens: 5,
                output_tokens: 2,
                ..Usage::default()
            }),
            ..Response::default()
        };
        let body: Value = serde_json::from_slice(&completion(&response)).unwrap();
        assert!(body["id"].as_str().unwrap().starts_with("chatcmpl-"));
        assert_eq!(body["object"], "chat.completion");
        assert!(body["created"].as_u64().unwrap() > 1_700_000_000);
        assert_eq!(body["model"], "claude-3-5-haiku-20241022");
        assert_eq!(
            body["choices"],
            json!([{"index": 0, "message": {"role": "assistant", "content": "Hi!"},
                    "logprobs": null, "finish_reason": "length"}])
        );
        assert_eq!(
            body["usage"],
            json!({"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7})
        );
    }

    #[test]
    fn a_completion_carries_tool_calls_reasoning_and_detailed_usage() {
        let body: Value = serde_json::from_slice(&completion(&answer())).unwrap();
        assert!(
            body["id"].as_str().unwrap().starts_with("chatcmpl-"),
            "{}",
            body["id"]
        );
        assert_eq!(
            body["choices"][0],
            json!({"index": 0, "message": {"role": "assistant", "content": "Checking.",
                "reasoning_content": "The user wants weather.",
                "tool_calls": [
                    {"id": "call_1", "type": "function",
                     "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}},
                    {"id": "call_2", "type": "function",
                     "function": {"name": "get_time", "arguments": ""}}]},
                "logprobs": null, "finish_reason": "tool_calls"})
        );
        assert_eq!(
            body["usage"],
            json!({"prompt_tokens": 30, "completion_tokens": 12, "total_tokens": 42,
                   "prompt_tokens_details": {"cached_tokens": 20},
                   "completion_tokens_details": {"reasoning_tokens": 4}})
        );
    }

    #[test]
    fn only_tool_calls_make_content_null_and_no_stop_reason_is_null() {
        let calls_only = Response {
            content: vec![Part::ToolCall(call("c", "f", "{}"))],
            ..Response::default()
        };
        let body: Value = serde_json::from_slice(&completion(&calls_only)).unwrap();
        assert_eq!(body["choices"][0]["message"]["content"], Value::Null);
        assert_eq!(body["choices"][0]["finish_reason"], Value::Null);
        assert!(body.get("usage").is_none());
        let empty: Value = serde_json::from_slice(&completion(&Response::default())).unwrap();
        assert_eq!(
            empty["choices"][0]["message"],
            json!({"role": "assistant", "content": ""})
        );
    }

    fn events(bytes: &[u8]) -> Vec<Value> {
        std::str::from_utf8(bytes)
            .unwrap()
            .split("\n\n")
            .filter(|e| !e.is_empty())
            .map(|e| {
                let data = e.strip_prefix("data: ").unwrap();
                serde_json::from_str(data).unwrap_or(Value::String(data.into()))
            })
            .collect()
    }

    fn encode(include_usage: bool, stream: Vec<StreamEvent>) -> (ChunkEncoder, Vec<Value>) {
        let mut encoder = ChunkEncoder::new("asked", include_usage);
        let mut out = Vec::new();
        for event in stream {
            encoder.event(event, &mut out);
        }
        encoder.finish(&mut out);
        (encoder, events(&out))
    }

    #[test]
    fn chunks_come_role_first_then_content_finish_usage_and_done() {
        let (encoder, events) = encode(
            true,
            vec![
                StreamEvent::Start {
                    id: None,
                    model: Some("claude-3-5-haiku-20241022".into()),
                },
                StreamEvent::Usage(Usage {
                    input_tokens: 9,
                    ..Usage::default()
                }),
                StreamEvent::Reasoning("Hmm.".into()),
                StreamEvent::ReasoningSignature("sig".into()),
                StreamEvent::Text("Hel".into()),
                StreamEvent::Text(String::new()),
                StreamEvent::Text("lo".into()),
                StreamEvent::Usage(Usage {
                    output_tokens: 2,
                    ..Usage::default()
                }),
                StreamEvent::Stop {
                    reason: StopReason::Other("end_of_world".into()),
                    native: Some("end_of_world".into()),
                },
            ],
        );
        assert_eq!(events.len(), 7, "{events:?}");
        let ids: Vec<_> = events[..6].iter().map(|e| e["id"].clone()).collect();
        assert!(ids.iter().all(|id| *id == ids[0]));
        assert!(ids[0].as_str().unwrap().starts_with("chatcmpl-"));
        assert!(events[..6]
            .iter()
            .all(|e| e["object"] == "chat.completion.chunk"
                && e["model"] == "claude-3-5-haiku-20241022"
                && e["created"] == events[0]["created"]));
        let deltas: Vec<_> = events[..5]
            .iter()
            .map(|e| e["choices"][0]["delta"].clone())
            .collect();
        assert_eq!(
            deltas,
            [
                json!({"role": "assistant", "content": ""}),
                json!({"reasoning_content": "Hmm."}),
                json!({"content": "Hel"}),
                json!({"content": "lo"}),
                json!({}),
            ]
        );
        assert_eq!(events[4]["choices"][0]["finish_reason"], "stop");
        assert_eq!(events[5]["choices"], json!([]));
        assert_eq!(
            events[5]["usage"],
            json!({"prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11})
        );
        assert_eq!(events[6], "[DONE]");
        assert_eq!(
            encoder.usage(),
            Some(Usage {
                input_tokens: 9,
                output_tokens: 2,
                ..Usage::default()
            })
        );
    }

    #[test]
    fn parallel_tool_calls_keep_their_distinct_indices() {
        let (_, events) = encode(
            false,
            vec![
                StreamEvent::Start {
                    id: Some("chatcmpl-1".into()),
                    model: None,
                },
                StreamEvent::ToolCallStart {
                    index: 0,
                    id: "call_a".into(),
                    name: "read".into(),
                },
                StreamEvent::ToolCallStart {
                    index: 1,
                    id: "call_b".into(),
                    name: "grep".into(),
                },
                StreamEvent::ToolArguments {
                    index: 1,
                    fragment: "{\"q\":1}".into(),
                },
                StreamEvent::ToolArguments {
                    index: 0,
                    fragment: "{}".into(),
                },
                StreamEvent::Stop {
                    reason: StopReason::ToolCalls,
                    native: None,
                },
            ],
        );
        assert_eq!(events.len(), 6, "{events:?}");
        assert!(events[..5]
            .iter()
            .all(|e| e["id"] == "chatcmpl-1" && e["model"] == "asked"));
        let calls: Vec<_> = events[1..4]
            .iter()
            .map(|e| e["choices"][0]["delta"]["tool_calls"].clone())
            .collect();
        // A start followed at once by its arguments goes out as one delta.
        assert_eq!(
            calls,
            [
                json!([{"index": 0, "id": "call_a", "type": "function",
                        "function": {"name": "read", "arguments": ""}}]),
                json!([{"index": 1, "id": "call_b", "type": "function",
                        "function": {"name": "grep", "arguments": "{\"q\":1}"}}]),
                json!([{"index": 0, "function": {"arguments": "{}"}}]),
            ]
        );
        assert_eq!(events[4]["choices"][0]["finish_reason"], "tool_calls");
        assert_eq!(events[5], "[DONE]");
    }

    #[test]
    fn without_include_usage_there_is_no_usage_chunk() {
        let (encoder, events) = encode(
            false,
            vec![
                StreamEvent::Text("x".into()),
                StreamEvent::Usage(Usage {
                    input_tokens: 1,
                    output_tokens: 1,
                    ..Usage::default()
                }),
                StreamEvent::Stop {
                    reason: StopReason::Stop,
                    native: None,
                },
            ],
        );
        assert_eq!(events.len(), 4, "role, text, finish, [DONE]: {events:?}");
        assert_eq!(events[0]["choices"][0]["delta"]["role"], "assistant");
        assert!(events.iter().all(|e| e.get("usage").is_none()));
        assert_eq!(encoder.usage().unwrap().input_tokens, 1);
        let (_, asked) = encode(true, vec![]);
        assert_eq!(
            asked[1]["usage"],
            json!({"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}),
            "a client that asked gets a usage chunk even without counts"
        );
    }

    #[test]
    fn a_broken_stream_ends_with_an_openai_error_event_and_no_done() {
        let mut encoder = ChunkEncoder::new("m", true);
        let mut out = Vec::new();
        encoder.event(StreamEvent::Text("partial".into()), &mut out);
        encoder.error(
            &ProxyError::Unreachable("connection reset".into()),
            "anthropic",
            &mut out,
        );
        let events = events(&out);
        assert_eq!(events.len(), 3);
        assert_eq!(events[2]["error"]["type"], "api_error");
        assert_eq!(events[2]["error"]["provider"], "anthropic");
        assert!(!String::from_utf8(out).unwrap().contains("[DONE]"));
    }

    #[test]
    fn a_whole_answer_becomes_a_stream_of_chunks() {
        let events = events(&stream_of(&answer(), true));
        let deltas: Vec<_> = events[..events.len() - 2]
            .iter()
            .map(|e| e["choices"][0]["delta"].clone())
            .collect();
        assert_eq!(
            deltas,
            [
                json!({"role": "assistant", "content": ""}),
                json!({"reasoning_content": "The user wants"}),
                json!({"reasoning_content": " weather."}),
                json!({"content": "Checking."}),
                json!({"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                                       "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}]}),
                json!({"tool_calls": [{"index": 1, "id": "call_2", "type": "function",
                                       "function": {"name": "get_time", "arguments": ""}}]}),
                json!({}),
            ]
        );
        let id = &events[0]["id"];
        assert!(id.as_str().unwrap().starts_with("chatcmpl-"), "{id}");
        assert!(events.iter().all(|e| e == "[DONE]" || e["id"] == *id));
        assert_eq!(events[events.len() - 2]["usage"]["total_tokens"], 42);
        assert_eq!(events[events.len() - 1], "[DONE]");
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        /// Any JSON value, a few levels deep, with the keys a chat body has among others.
        fn any_json() -> impl Strategy<Value = Value> {
            crate::util::json::arbitrary_json(
                &[
                    "model",
                    "messages",
                    "role",
                    "content",
                    "type",
                    "text",
                    "image_url",
                    "url",
                    "stream",
                    "stop",
                    "tools",
                    "function",
                    "name",
                    "arguments",
                    "tool_calls",
                    "tool_call_id",
                    "tool_choice",
                    "response_format",
                    "json_schema",
                    "max_tokens",
                    "stream_options",
                ],
                &[
                    "user",
                    "system",
                    "assistant",
                    "tool",
                    "function",
                    "text",
                    "image_url",
                    "input_audio",
                    "json_schema",
                    "data:image/png;base64,iVBO",
                    "https://x.test/a.png",
                ],
            )
        }

        proptest! {
            #[test]
            fn arbitrary_bytes_never_panic_the_parsers(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
                let _ = super::super::parse(&bytes);
                let _ = super::super::probe(&bytes);
            }

            #[test]
            fn arbitrary_json_is_parsed_or_refused_with_a_message(value in any_json()) {
                let body = value.to_string();
                if let Err(message) = super::super::parse(body.as_bytes()) {
                    prop_assert!(!message.is_empty());
                }
                if let Err(message) = super::super::probe(body.as_bytes()) {
                    prop_assert!(!message.is_empty());
                }
            }

            #[test]
            fn a_valid_request_keeps_every_field_it_was_given(
                model in "[a-zA-Z0-9./_-]{1,20}",
                texts in proptest::collection::vec(".{0,20}", 1..5),
                stream: bool,
                max_tokens in 1u64..1_000_000,
                extra in "x_[a-z]{1,8}",
            ) {
                let messages: Vec<Value> = texts
                    .iter()
                    .enumerate()
                    .map(|(i, text)| {
                        let role = if i % 2 == 0 { "user" } else { "assistant" };
                        json!({"role": role, "content": text})
                    })
                    .collect();
                let body = json!({"model": model, "messages": messages, "stream": stream,
                                  "max_tokens": max_tokens, extra.clone(): [1, {"a": null}]});
                let request = super::super::parse(body.to_string().as_bytes()).unwrap();
                let probe = super::super::probe(body.to_string().as_bytes()).unwrap();
                prop_assert_eq!(&request.model, &model);
                prop_assert_eq!(probe.model, model);
                prop_assert_eq!(request.stream, stream);
                prop_assert_eq!(probe.stream, stream);
                prop_assert_eq!(request.max_tokens, Some(max_tokens));
                prop_assert_eq!(request.messages.len(), texts.len());
                for (message, text) in request.messages.iter().zip(&texts) {
                    let got: String = message.content.iter().filter_map(Part::as_text).collect();
                    prop_assert_eq!(&got, text);
                }
                prop_assert_eq!(&request.extras, &vec![(extra, json!([1, {"a": null}]))]);
            }
        }
    }
}
