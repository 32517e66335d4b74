//! OpenAI Chat Completions upstreams, and every provider that speaks it (Groq, Mistral,
//! OpenRouter, Ollama, vLLM, DeepSeek...): the model into a request body, the answers and
//! chunk streams back into the model.

use std::borrow::Cow;

use actix_web::{
    http::{
        header::{HeaderValue, AUTHORIZATION},
        Uri,
    },
    web::Bytes,
};
use serde::{Deserialize, Serialize};
use serde_json::{value::RawValue, Value};

use super::types::{stop_reason, ToolCallOut, UsageIn};
use crate::{
    error::ProxyError,
    formats::{bad_body, body, unsupported, Format, PassThrough, StreamDecoder, Upstream},
    model::{
        Image, Part, Request, Response, ResponseFormat, Role, StreamEvent, ToolCall, ToolChoice,
        Usage,
    },
    providers::{Endpoint, UpstreamRequest},
    sse,
    util::json::{rewrite_object, JsonObject},
};

/// The top-level fields [`OpenAi::translate_request`] writes itself: an extra of the same name
/// (from another door) would repeat it, so it is not copied.
const WRITTEN: [&str; 16] = [
    "model",
    "messages",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "response_format",
    "max_tokens",
    "temperature",
    "top_p",
    "top_k",
    "stop",
    "seed",
    "reasoning_effort",
    "user",
    "stream",
    "stream_options",
];

pub struct OpenAi {
    endpoint: Endpoint,
    url: Uri,
}

impl OpenAi {
    pub fn new(endpoint: Endpoint) -> Self {
        Self {
            url: endpoint.url("chat/completions"),
            endpoint,
        }
    }

    fn call(&self, body: Bytes, key: Option<&HeaderValue>) -> UpstreamRequest {
        UpstreamRequest {
            url: self.url.clone(),
            headers: key
                .map(|key| (AUTHORIZATION, secret_header("Bearer ", key)))
                .into_iter()
                .collect(),
            body,
        }
    }
}

impl Upstream for OpenAi {
    fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    fn format(&self) -> Format {
        Format::OpenAi
    }

    /// The model as a Chat Completions body. Reasoning parts of earlier assistant turns are
    /// left out (OpenAI takes none back), as are cache markers and tool results' error flags,
    /// which it has no field for. `Reasoning::Disabled` writes no `reasoning_effort`: models
    /// before GPT-5.1 refuse `"none"`, and a model that does not reason needs none. `top_k` is
    /// not OpenAI's but most servers that copy it (vLLM, Ollama, llama.cpp, OpenRouter) take
    /// it. A stream always asks for its usage chunk, so the proxy learns the token counts.
    fn translate_request(
        &self,
        request: &Request,
        model: &str,
        key: Option<&HeaderValue>,
    ) -> Result<UpstreamRequest, ProxyError> {
        if let Some(field) = request.unportable.first() {
            return Err(unsupported(
                self.endpoint.name,
                field,
                "only the format it came in can express it",
            ));
        }
        let out = request_body(request, model)?;
        Ok(self.call(body(out), key))
    }

    /// The caller's body as it came, unless its model must change or it holds a field of the
    /// proxy's own: then the top-level fields are copied raw with only those changes. This is
    /// the benchmark's hot path, so the body is not parsed unless it must be rewritten.
    fn pass_through(
        &self,
        request: &PassThrough<'_>,
        model: &str,
        key: Option<&HeaderValue>,
    ) -> Result<UpstreamRequest, ProxyError> {
        let holds_removed = request
            .remove
            .iter()
            .any(|name| may_hold_key(request.body, name));
        let body = if model == request.model && !holds_removed {
            request.body.clone()
        } else {
            rewrite_object(request.body, &[("model", model.into())], request.remove)
                .map(Bytes::from)
                .ok_or_else(|| {
                    ProxyError::InvalidRequest("the request body must be a JSON object".into())
                })?
        };
        Ok(self.call(body, key))
    }

    fn translate_response(
        &self,
        body: &[u8],
        requested_model: &str,
    ) -> Result<Response, ProxyError> {
        let name = self.endpoint.name;
        let completion: Completion = serde_json::from_slice(body).map_err(|e| bad_body(name, e))?;
        let choice = completion
            .choices
            .into_iter()
            .next()
            .ok_or_else(|| bad_body(name, "has no choices"))?;
        let message = choice.message;
        let mut content = Vec::new();
        if let Some(reasoning) = message.reasoning_content.or(message.reasoning) {
            if !reasoning.is_empty() {
                content.push(Part::Reasoning {
                    text: reasoning.into_owned(),
                    signature: None,
                });
            }
        }
        if let Some(text) = message.content {
            let text = text_of(text).map_err(|why| bad_body(name, why))?;
            if !text.is_empty() {
                content.push(Part::text(text));
            }
        }
        for (i, call) in message
            .tool_calls
            .unwrap_or_default()
            .into_iter()
            .enumerate()
        {
            let call = call
                .into_call(i)
                .ok_or_else(|| bad_body(name, "has a tool call without a function name"))?;
            content.push(Part::ToolCall(call));
        }
        let has_calls = content.iter().any(|p| matches!(p, Part::ToolCall(_)));
        let native = choice.finish_reason.filter(|reason| !reason.is_empty());
        Ok(Response {
            id: completion.id.map(Cow::into_owned),
            model: completion
                .model
                .filter(|model| !model.is_empty())
                .map_or_else(|| requested_model.to_owned(), Cow::into_owned),
            content,
            stop_reason: native.as_deref().map(|r| stop_reason(r, has_calls)),
            native_stop_reason: native.map(Cow::into_owned),
            usage: completion.usage.map(Usage::from),
        })
    }

    fn stream_decoder(&self) -> Box<dyn StreamDecoder> {
        Box::new(ChunkDecoder::new(self.endpoint.name))
    }
}

/// Whether `name` may be a key of the JSON object `body`: whether `"name"` occurs in it at
/// all. A false "yes" (the word inside a message) costs only a rewrite that keeps the body's
/// meaning; a key spelled with escapes is missed, and would reach the upstream unchanged.
fn may_hold_key(body: &[u8], name: &str) -> bool {
    memchr::memmem::find_iter(body, name.as_bytes())
        .any(|at| at > 0 && body[at - 1] == b'"' && body.get(at + name.len()) == Some(&b'"'))
}

/// Builds a header value from a key, marked sensitive so that it is never printed.
fn secret_header(prefix: &str, key: &HeaderValue) -> HeaderValue {
    let mut bytes = Vec::with_capacity(prefix.len() + key.len());
    bytes.extend_from_slice(prefix.as_bytes());
    bytes.extend_from_slice(key.as_bytes());
    let mut value = HeaderValue::from_bytes(&bytes)
        .expect("a valid header value with an ASCII prefix is valid");
    value.set_sensitive(true);
    value
}

/// The request body, its fields in a fixed order, the extras after them.
fn request_body(request: &Request, model: &str) -> Result<Vec<u8>, ProxyError> {
    let mut out = Vec::with_capacity(1024);
    let mut object = JsonObject::new(&mut out);
    let o = &mut object;
    put(o, "model", &model)?;
    put(o, "messages", &messages(request))?;
    if !request.tools.is_empty() {
        let tools: Vec<_> = request.tools.iter().map(ToolOut::of).collect();
        put(o, "tools", &tools)?;
    }
    if let Some(choice) = &request.tool_choice {
        put(o, "tool_choice", &ToolChoiceOut::of(choice))?;
    }
    if let Some(parallel) = request.parallel_tool_calls {
        put(o, "parallel_tool_calls", &parallel)?;
    }
    if let Some(format) = &request.response_format {
        put(o, "response_format", &ResponseFormatOut::of(format))?;
    }
    if let Some(max_tokens) = request.max_tokens {
        put(o, "max_tokens", &max_tokens)?;
    }
    if let Some(temperature) = request.temperature {
        put(o, "temperature", &temperature)?;
    }
    if let Some(top_p) = request.top_p {
        put(o, "top_p", &top_p)?;
    }
    if let Some(top_k) = request.top_k {
        put(o, "top_k", &top_k)?;
    }
    if !request.stop.is_empty() {
        put(o, "stop", &request.stop)?;
    }
    if let Some(seed) = request.seed {
        put(o, "seed", &seed)?;
    }
    if let Some(effort) = request.reasoning.and_then(|r| r.effort()) {
        put(o, "reasoning_effort", &effort.as_str())?;
    }
    if let Some(user) = &request.user {
        put(o, "user", user)?;
    }
    if request.stream {
        put(o, "stream", &true)?;
        put(
            o,
            "stream_options",
            &StreamOptions {
                include_usage: true,
            },
        )?;
    }
    for (name, value) in &request.extras {
        if !WRITTEN.contains(&name.as_str()) {
            put(o, name, value)?;
        }
    }
    object.end();
    Ok(out)
}

fn put(object: &mut JsonObject<'_>, name: &str, value: &impl Serialize) -> Result<(), ProxyError> {
    object
        .field(name, value)
        .map_err(|e| ProxyError::InvalidRequest(format!("`{name}` cannot be written: {e}")))
}

#[derive(Serialize)]
struct StreamOptions {
    include_usage: bool,
}

/// The system prompt as one leading system message, then the conversation.
fn messages(request: &Request) -> Vec<MessageOut<'_>> {
    let mut out = Vec::with_capacity(request.messages.len() + 1);
    if !request.system.is_empty() {
        out.push(MessageOut::System {
            content: ContentOut::Text(request.system_text().into()),
        });
    }
    for message in &request.messages {
        match message.role {
            Role::System => out.push(MessageOut::System {
                content: content(&message.content),
            }),
            Role::User => out.push(MessageOut::User {
                content: content(&message.content),
            }),
            Role::Assistant => {
                let text: String = message.content.iter().filter_map(Part::as_text).collect();
                let tool_calls: Vec<_> = message
                    .content
                    .iter()
                    .filter_map(|part| match part {
                        Part::ToolCall(call) => Some(ToolCallOut::of(call)),
                        _ => None,
                    })
                    .collect();
                out.push(MessageOut::Assistant {
                    // OpenAI refuses `null` content on an assistant turn without tool calls.
                    content: (!text.is_empty() || tool_calls.is_empty()).then_some(text),
                    tool_calls,
                });
            }
            Role::Tool => {
                // A tool message holds text only: a result's images follow all the results
                // (the tool messages must come right after the calls) in one user message.
                let mut images = Vec::new();
                for part in &message.content {
                    let Part::ToolResult(result) = part else {
                        continue;
                    };
                    images.extend(result.content.iter().filter_map(|part| match part {
                        Part::Image { image, .. } => Some(PartOut::image(image)),
                        _ => None,
                    }));
                    out.push(MessageOut::Tool {
                        tool_call_id: &result.call_id,
                        content: result.text(),
                    });
                }
                if !images.is_empty() {
                    out.push(MessageOut::User {
                        content: ContentOut::Parts(images),
                    });
                }
            }
        }
    }
    out
}

/// A user or system message's content: a string when it is one text part, else parts.
fn content(parts: &[Part]) -> ContentOut<'_> {
    match parts {
        [] => ContentOut::Text("".into()),
        [Part::Text { text, .. }] => ContentOut::Text(text.into()),
        parts => ContentOut::Parts(
            parts
                .iter()
                .filter_map(|part| match part {
                    Part::Text { text, .. } => Some(PartOut::Text { text }),
                    Part::Image { image, .. } => Some(PartOut::image(image)),
                    _ => None,
                })
                .collect(),
        ),
    }
}

#[derive(Serialize)]
#[serde(tag = "role", rename_all = "lowercase")]
enum MessageOut<'a> {
    System {
        content: ContentOut<'a>,
    },
    User {
        content: ContentOut<'a>,
    },
    Assistant {
        content: Option<String>,
        #[serde(skip_serializing_if = "Vec::is_empty")]
        tool_calls: Vec<ToolCallOut<'a>>,
    },
    Tool {
        tool_call_id: &'a str,
        content: String,
    },
}

#[derive(Serialize)]
#[serde(untagged)]
enum ContentOut<'a> {
    Text(Cow<'a, str>),
    Parts(Vec<PartOut<'a>>),
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum PartOut<'a> {
    Text { text: &'a str },
    ImageUrl { image_url: ImageUrlOut<'a> },
}

impl<'a> PartOut<'a> {
    fn image(image: &'a Image) -> Self {
        let url = match image {
            Image::Url { url, .. } => Cow::Borrowed(url.as_str()),
            Image::Base64 { media_type, data } => format!("data:{media_type};base64,{data}").into(),
        };
        PartOut::ImageUrl {
            image_url: ImageUrlOut { url },
        }
    }
}

#[derive(Serialize)]
struct ImageUrlOut<'a> {
    url: Cow<'a, str>,
}

#[derive(Serialize)]
struct ToolOut<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    function: FunctionOut<'a>,
}

#[derive(Serialize)]
struct FunctionOut<'a> {
    name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<&'a str>,
    parameters: &'a Value,
}

impl<'a> ToolOut<'a> {
    fn of(tool: &'a crate::model::Tool) -> Self {
        Self {
            kind: "function",
            function: FunctionOut {
                name: &tool.name,
                description: tool.description.as_deref(),
                parameters: &tool.parameters,
            },
        }
    }
}

#[derive(Serialize)]
#[serde(untagged)]
enum ToolChoiceOut<'a> {
    Mode(&'static str),
    Function {
        #[serde(rename = "type")]
        kind: &'static str,
        function: NamedFunction<'a>,
    },
}

#[derive(Serialize)]
struct NamedFunction<'a> {
    name: &'a str,
}

impl<'a> ToolChoiceOut<'a> {
    fn of(choice: &'a ToolChoice) -> Self {
        match choice {
            ToolChoice::Auto => ToolChoiceOut::Mode("auto"),
            ToolChoice::None => ToolChoiceOut::Mode("none"),
            ToolChoice::Required => ToolChoiceOut::Mode("required"),
            ToolChoice::Tool(name) => ToolChoiceOut::Function {
                kind: "function",
                function: NamedFunction { name },
            },
        }
    }
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum ResponseFormatOut<'a> {
    Text,
    JsonObject,
    JsonSchema { json_schema: JsonSchemaOut<'a> },
}

#[derive(Serialize)]
struct JsonSchemaOut<'a> {
    name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<&'a str>,
    schema: &'a Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    strict: Option<bool>,
}

impl<'a> ResponseFormatOut<'a> {
    fn of(format: &'a ResponseFormat) -> Self {
        match format {
            ResponseFormat::Text => ResponseFormatOut::Text,
            ResponseFormat::JsonObject => ResponseFormatOut::JsonObject,
            ResponseFormat::JsonSchema {
                name,
                description,
                schema,
                strict,
            } => ResponseFormatOut::JsonSchema {
                json_schema: JsonSchemaOut {
                    name,
                    description: description.as_deref(),
                    schema,
                    strict: *strict,
                },
            },
        }
    }
}

#[derive(Deserialize)]
struct Completion<'a> {
    #[serde(borrow, default)]
    id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    model: Option<Cow<'a, str>>,
    #[serde(borrow)]
    choices: Vec<Choice<'a>>,
    #[serde(default)]
    usage: Option<UsageIn>,
}

#[derive(Deserialize)]
struct Choice<'a> {
    #[serde(borrow)]
    message: ChoiceMessage<'a>,
    #[serde(borrow, default)]
    finish_reason: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct ChoiceMessage<'a> {
    #[serde(borrow, default)]
    content: Option<&'a RawValue>,
    /// DeepSeek's and vLLM's name for the reasoning text.
    #[serde(borrow, default)]
    reasoning_content: Option<Cow<'a, str>>,
    /// OpenRouter's and newer vLLM's name for the same.
    #[serde(borrow, default)]
    reasoning: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    tool_calls: Option<Vec<ToolCallIn<'a>>>,
}

#[derive(Deserialize)]
struct ToolCallIn<'a> {
    #[serde(borrow, default)]
    id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    function: Option<FunctionIn<'a>>,
}

#[derive(Deserialize)]
struct FunctionIn<'a> {
    #[serde(borrow, default)]
    name: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    arguments: Option<&'a RawValue>,
}

impl ToolCallIn<'_> {
    /// The call, numbered `index` in its answer. A call without an id gets one (some servers,
    /// Ollama among them, send none, and other formats need one to answer it); one without a
    /// name is no call at all.
    fn into_call(self, index: usize) -> Option<ToolCall> {
        let function = self.function?;
        let name = function.name.filter(|name| !name.is_empty())?;
        Some(ToolCall {
            id: self
                .id
                .filter(|id| !id.is_empty())
                .map_or_else(|| format!("call_{index}"), Cow::into_owned),
            name: name.into_owned(),
            arguments: function.arguments.map(arguments_text).unwrap_or_default(),
            cache_control: None,
        })
    }
}

/// Arguments are JSON text in a string; some servers send the object itself, whose text is
/// the same arguments.
fn arguments_text(raw: &RawValue) -> String {
    match serde_json::from_str::<String>(raw.get()) {
        Ok(text) => text,
        Err(_) if raw.get() == "null" => String::new(),
        Err(_) => raw.get().to_owned(),
    }
}

/// A message's `content`: a string, or (Mistral's reasoning models) an array of parts whose
/// text parts are the answer.
fn text_of(raw: &RawValue) -> Result<String, String> {
    #[derive(Deserialize)]
    struct TextPart<'a> {
        #[serde(rename = "type", borrow)]
        kind: Option<Cow<'a, str>>,
        #[serde(borrow, default)]
        text: Option<Cow<'a, str>>,
    }
    if raw.get() == "null" {
        return Ok(String::new());
    }
    if let Ok(text) = serde_json::from_str::<String>(raw.get()) {
        return Ok(text);
    }
    let parts: Vec<TextPart> = serde_json::from_str(raw.get())
        .map_err(|_| "has a content that is neither a string nor parts".to_owned())?;
    Ok(parts
        .into_iter()
        .filter(|part| part.kind.as_deref() == Some("text"))
        .filter_map(|part| part.text)
        .collect())
}

/// Turns a `chat.completion.chunk` stream into the model's events.
struct ChunkDecoder {
    provider: &'static str,
    started: bool,
    /// `[DONE]` arrived.
    done: bool,
    /// A `finish_reason` arrived.
    finished: bool,
    /// The calls seen so far, in order of first appearance.
    calls: Vec<CallState>,
    /// How many calls were announced with `ToolCallStart`: the next one's index.
    announced: usize,
}

struct CallState {
    /// The upstream's `index` for the call; `None` for a server that sends none.
    upstream: Option<u64>,
    id: Option<String>,
    /// Our index, once the call has been announced (it needs its name for that).
    ours: Option<usize>,
    /// Argument text that came before the call's name.
    pending: String,
}

impl ChunkDecoder {
    fn new(provider: &'static str) -> Self {
        Self {
            provider,
            started: false,
            done: false,
            finished: false,
            calls: Vec::new(),
            announced: 0,
        }
    }

    /// The answer begins, at the latest before its first content.
    fn start(&mut self, id: Option<&str>, model: Option<&str>, out: &mut Vec<StreamEvent>) {
        if !self.started {
            self.started = true;
            out.push(StreamEvent::Start {
                id: id.map(str::to_owned),
                model: model.map(str::to_owned),
            });
        }
    }

    fn tool_call(&mut self, delta: ToolCallDelta<'_>, out: &mut Vec<StreamEvent>) {
        let id = delta.id.as_deref().filter(|id| !id.is_empty());
        let at = match delta.index {
            Some(index) => self.calls.iter().position(|c| c.upstream == Some(index)),
            // Without an index, a new id is a new call; anything else continues the last one.
            None => match id {
                Some(id) if self.calls.iter().all(|c| c.id.as_deref() != Some(id)) => None,
                Some(id) => self.calls.iter().position(|c| c.id.as_deref() == Some(id)),
                None => self.calls.len().checked_sub(1),
            },
        };
        let at = at.unwrap_or_else(|| {
            self.calls.push(CallState {
                upstream: delta.index,
                id: None,
                ours: None,
                pending: String::new(),
            });
            self.calls.len() - 1
        });
        let call = &mut self.calls[at];
        if call.id.is_none() {
            call.id = id.map(str::to_owned);
        }
        let (name, arguments) = match delta.function {
            Some(function) => (function.name, function.arguments),
            None => (None, None),
        };
        if call.ours.is_none() {
            if let Some(name) = name.filter(|name| !name.is_empty()) {
                let index = self.announced;
                self.announced += 1;
                call.ours = Some(index);
                out.push(StreamEvent::ToolCallStart {
                    index,
                    id: call.id.clone().unwrap_or_else(|| format!("call_{index}")),
                    name: name.into_owned(),
                });
                if !call.pending.is_empty() {
                    out.push(StreamEvent::ToolArguments {
                        index,
                        fragment: std::mem::take(&mut call.pending),
                    });
                }
            }
        }
        let Some(fragment) = arguments.filter(|a| !a.is_empty()) else {
            return;
        };
        match call.ours {
            Some(index) => out.push(StreamEvent::ToolArguments {
                index,
                fragment: fragment.into_owned(),
            }),
            None => call.pending.push_str(&fragment),
        }
    }
}

impl StreamDecoder for ChunkDecoder {
    fn event(
        &mut self,
        event: &sse::Event<'_>,
        out: &mut Vec<StreamEvent>,
    ) -> Result<(), ProxyError> {
        let data = event.data.as_ref();
        if data.trim() == "[DONE]" {
            self.done = true;
            return Ok(());
        }
        let chunk: ChunkIn = serde_json::from_str(data).map_err(|e| {
            bad_body(
                self.provider,
                format_args!("stream has an event that is not a chunk: {e}"),
            )
        })?;
        if chunk.error.is_some() || event.name == Some("error") {
            return Err(ProxyError::StreamEvent(Bytes::copy_from_slice(
                data.as_bytes(),
            )));
        }
        let id = chunk.id.as_deref().filter(|id| !id.is_empty());
        let model = chunk.model.as_deref().filter(|model| !model.is_empty());
        if id.is_some() || model.is_some() {
            self.start(id, model, out);
        }
        let mut finish = None;
        // Only the first choice: a request for several (`n`) is refused before it gets here.
        for choice in chunk.choices.unwrap_or_default() {
            if choice.index.unwrap_or(0) != 0 {
                continue;
            }
            if let Some(delta) = choice.delta {
                let reasoning = delta.reasoning_content.or(delta.reasoning);
                if let Some(text) = reasoning.filter(|t| !t.is_empty()) {
                    self.start(id, model, out);
                    out.push(StreamEvent::Reasoning(text.into_owned()));
                }
                let text = match delta.content {
                    Some(raw) => text_of(raw).map_err(|why| bad_body(self.provider, why))?,
                    None => String::new(),
                };
                if !text.is_empty() {
                    self.start(id, model, out);
                    out.push(StreamEvent::Text(text));
                }
                for call in delta.tool_calls.unwrap_or_default() {
                    self.start(id, model, out);
                    self.tool_call(call, out);
                }
            }
            finish = finish.or(choice.finish_reason.filter(|r| !r.is_empty()));
        }
        // Before the stop: a format that closes with its usage (Anthropic's `message_delta`)
        // then has it when the stop comes in the same chunk, as DeepSeek sends them.
        if let Some(usage) = chunk.usage {
            out.push(StreamEvent::Usage(usage.into()));
        }
        if let Some(native) = finish {
            if !self.finished {
                self.finished = true;
                self.start(id, model, out);
                out.push(StreamEvent::Stop {
                    reason: stop_reason(&native, self.announced > 0),
                    native: Some(native.into_owned()),
                });
            }
        }
        Ok(())
    }

    /// A stream must end with `[DONE]` or at least a finish reason; one that has `[DONE]` but
    /// no finish reason still ends with a `Stop`, which other formats' encoders close on.
    fn end(&mut self, out: &mut Vec<StreamEvent>) -> Result<(), ProxyError> {
        if !self.done && !self.finished {
            return Err(ProxyError::Unreachable(format!(
                "the {} stream ended before its [DONE]; the answer is incomplete",
                self.provider
            )));
        }
        if !self.finished {
            self.finished = true;
            self.start(None, None, out);
            out.push(StreamEvent::Stop {
                reason: stop_reason("stop", self.announced > 0),
                native: None,
            });
        }
        Ok(())
    }
}

#[derive(Deserialize)]
struct ChunkIn<'a> {
    #[serde(borrow, default)]
    id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    model: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    choices: Option<Vec<ChunkChoiceIn<'a>>>,
    #[serde(default)]
    usage: Option<UsageIn>,
    #[serde(borrow, default)]
    error: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct ChunkChoiceIn<'a> {
    #[serde(default)]
    index: Option<u64>,
    #[serde(borrow, default)]
    delta: Option<DeltaIn<'a>>,
    #[serde(borrow, default)]
    finish_reason: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct DeltaIn<'a> {
    #[serde(borrow, default)]
    content: Option<&'a RawValue>,
    #[serde(borrow, default)]
    reasoning_content: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    reasoning: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    tool_calls: Option<Vec<ToolCallDelta<'a>>>,
}

#[derive(Deserialize)]
struct ToolCallDelta<'a> {
    #[serde(default)]
    index: Option<u64>,
    #[serde(borrow, default)]
    id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    function: Option<FunctionDeltaIn<'a>>,
}

#[derive(Deserialize)]
struct FunctionDeltaIn<'a> {
    #[serde(borrow, default)]
    name: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    arguments: Option<Cow<'a, str>>,
}
