//! The OpenAI Chat Completions door: a client's request into the model, and the model's answers
//! back out as `chat.completion` bodies and `chat.completion.chunk` streams.
//!
//! The proxy's own path route, `/v1/chat/{provider}`, takes the same body and uses [`parse`].

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
                safety_identifier =
                    Some(parse_as(value, "`safety_identifier` must be a string")?)
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
            _ => request
                .extras
                .push((name.to_owned(), parse_as(value, "a field is not valid JSON")?)),
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
    let wrong = "`reasoning_effort` must be one of \"none\", \"minimal\", \"low\", \"medium\", \"high\"";
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
        // Read so that a wrong type is refused; the model has no place for it.
        #[allow(dead_code)]
        strict: Option<bool>,
    }
    let tools: Vec<&RawValue> = parse_as(value, "`tools` must be an array of tools")?;
    let mut out = Vec::with_capacity(tools.len());
    for (i, tool) in tools.into_iter().enumerate() {
        let tool: RawTool = serde_json::from_str(tool.get())
            .map_err(|e| format!("`tools[{i}]` must be an object with `type` and `function`: {e}"))?;
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
    let at = format!("messages[{index}]");
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
    let speaker = match serde_json::from_str::<String>(role.get()).as_deref() {
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
        Some(content) => parse_content(&at, content, speaker, unportable)?,
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
                parts.extend(parse_tool_calls(&at, calls)?.into_iter().map(Part::ToolCall));
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
    let calls: Vec<&RawValue> =
        parse_as(value, &format!("`{at}.tool_calls` must be an array of tool calls"))?;
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

fn parse_content(
    at: &str,
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
        Some("text") => match part.text.map(|text| serde_json::from_str::<String>(text.get())) {
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
            Some(id) => id.into(),
            None => completion_id().into(),
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

    fn chunk(&self, delta: Delta<'_>, finish_reason: Option<&str>, out: &mut Vec<u8>) {
        let chunk = Chunk {
            id: &self.id,
            object: "chat.completion.chunk",
            created: self.created,
            model: &self.model,
            choices: [ChunkChoice {
                index: 0,
                delta,
                logprobs: None,
                finish_reason,
            }],
        };
        write_data(out, &chunk);
    }
}

impl StreamEncoder for ChunkEncoder {
    fn event(&mut self, event: StreamEvent, out: &mut Vec<u8>) {
        match event {
            StreamEvent::Start { id, model } => {
                if !self.started {
                    if let Some(id) = id {
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
                let delta = Delta {
                    tool_calls: Some([ToolCallDelta {
                        index,
                        id: Some(&id),
                        kind: Some("function"),
                        function: FunctionDelta {
                            name: Some(&name),
                            arguments: "",
                        },
                    }]),
                    ..Delta::default()
                };
                self.chunk(delta, None, out);
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
            StreamEvent::Usage(usage) => self
                .usage
                .get_or_insert_with(Usage::default)
                .merge(&usage),
        }
    }

    fn finish(&mut self, out: &mut Vec<u8>) {
        self.start(out);
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

#[derive(Serialize)]
struct Chunk<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    choices: [ChunkChoice<'a>; 1],
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
