//! OpenAI-format upstreams: the model into Chat Completions bodies, answers and chunks back.
//!
//! Every provider that copies the format (Groq, Mistral, OpenRouter, Ollama, vLLM,
//! DeepSeek...) is one of these; their small departures are read leniently.

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
    formats::{
        bad_body, ended_early, secret_header, unsupported, Endpoint, Format, PassThrough,
        StreamDecoder, Upstream, UpstreamRequest,
    },
    model::{
        Effort, Image, Part, Reasoning, Request, Response, ResponseFormat, Role, StreamEvent,
        ToolCall, ToolChoice, Usage,
    },
    util::{
        json::{has_top_level_key, rewrite_object, JsonObject},
        sse,
    },
};

/// The top-level fields [`OpenAi::translate_request`] writes itself: an extra of the same name
/// (from another door) would repeat it, so it is not copied.
const WRITTEN: [&str; 17] = [
    "model",
    "messages",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "response_format",
    "max_tokens",
    "max_completion_tokens",
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

/// The longest `user` OpenAI accepts.
const MAX_USER_LEN: usize = 64;

pub struct OpenAi {
    endpoint: Endpoint,
    url: Uri,
    /// Whether this is OpenAI itself, which differs from the servers that copy its format:
    /// it refuses `max_tokens` for its reasoning models (o-series, GPT-5) and takes
    /// `max_completion_tokens` for every model, where Ollama, vLLM, Mistral and Groq all read
    /// `max_tokens`; and it refuses `top_k`, which they take.
    openai_itself: bool,
}

impl OpenAi {
    pub fn new(endpoint: Endpoint) -> Self {
        Self {
            url: endpoint.url("chat/completions"),
            openai_itself: endpoint.name == "openai",
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
        let out = request_body(request, model, self.openai_itself)?;
        Ok(self.call(Bytes::from(out), key))
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
        let holds_removed = has_top_level_key(request.body, request.remove);
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

/// The request body, its fields in a fixed order, the extras after them.
fn request_body(
    request: &Request,
    model: &str,
    openai_itself: bool,
) -> Result<Vec<u8>, ProxyError> {
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
        let field = match openai_itself {
            true => "max_completion_tokens",
            false => "max_tokens",
        };
        put(o, field, &max_tokens)?;
    }
    if let Some(temperature) = request.temperature {
        put(o, "temperature", &temperature)?;
    }
    if let Some(top_p) = request.top_p {
        put(o, "top_p", &top_p)?;
    }
    if let Some(top_k) = request.top_k.filter(|_| !openai_itself) {
        put(o, "top_k", &top_k)?;
    }
    if !request.stop.is_empty() {
        put(o, "stop", &request.stop)?;
    }
    if let Some(seed) = request.seed {
        put(o, "seed", &seed)?;
    }
    // Adaptive thinking leaves the amount to the model: OpenAI's default, which also keeps
    // its models that do not reason from refusing the field.
    let effort = match request.reasoning {
        Some(Reasoning::Effort(effort)) => Some(effort),
        Some(Reasoning::Budget(budget)) => Some(Effort::of_budget(budget)),
        Some(Reasoning::Adaptive | Reasoning::Disabled) | None => None,
    };
    if let Some(effort) = effort {
        put(o, "reasoning_effort", &effort.as_str())?;
    }
    // OpenAI takes at most 64 characters; a longer id (Claude Code's is a JSON object of
    // about 150) would fail the whole request, so it is left out.
    if let Some(user) = request
        .user
        .as_ref()
        .filter(|user| user.len() <= MAX_USER_LEN)
    {
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
    #[serde(skip_serializing_if = "Option::is_none")]
    strict: Option<bool>,
}

impl<'a> ToolOut<'a> {
    fn of(tool: &'a crate::model::Tool) -> Self {
        Self {
            kind: "function",
            function: FunctionOut {
                name: &tool.name,
                description: tool.description.as_deref(),
                parameters: &tool.parameters,
                strict: tool.strict,
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
        let named = delta
            .function
            .as_ref()
            .and_then(|f| f.name.as_deref())
            .is_some_and(|name| !name.is_empty());
        let at = match delta.index {
            Some(index) => self.calls.iter().position(|c| c.upstream == Some(index)),
            // Without an index, a new id or a second name is a new call; anything else
            // continues the last one.
            None => match id {
                Some(id) if self.calls.iter().all(|c| c.id.as_deref() != Some(id)) => None,
                Some(id) => self.calls.iter().position(|c| c.id.as_deref() == Some(id)),
                None if named && self.calls.last().is_some_and(|c| c.ours.is_some()) => None,
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
        let failed = || ProxyError::StreamEvent(Bytes::copy_from_slice(data.as_bytes()));
        // OpenAI sends `{"error": {...}}` as a data event; some servers name the event too.
        if event.name == Some("error") {
            return Err(failed());
        }
        let chunk: ChunkIn = serde_json::from_str(data).map_err(|e| {
            bad_body(
                self.provider,
                format_args!("stream has an event that is not a chunk: {e}"),
            )
        })?;
        if chunk.error.is_some() {
            return Err(failed());
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
            return Err(ended_early(self.provider, "[DONE]"));
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        formats::openai::door,
        model::{stream::Collector, Effort, Message, Reasoning, StopReason, Tool, ToolResult},
    };
    use serde_json::json;

    fn provider() -> OpenAi {
        OpenAi::new(Endpoint {
            name: "openai",
            base_url: "http://upstream.test/v1/".into(),
            key_required: true,
            headers: vec![],
            held_key: None,
        })
    }

    fn pass(body: &Bytes, model: &str, remove: &[&str]) -> UpstreamRequest {
        let request = PassThrough {
            body,
            model,
            stream: false,
            query: None,
            headers: &[],
            remove,
        };
        provider()
            .pass_through(&request, model, Some(&HeaderValue::from_static("sk-test")))
            .unwrap()
    }

    fn call(id: &str, name: &str, arguments: &str) -> ToolCall {
        ToolCall {
            id: id.into(),
            name: name.into(),
            arguments: arguments.into(),
            cache_control: None,
        }
    }

    fn body_of(upstream: &UpstreamRequest) -> Value {
        serde_json::from_slice(&upstream.body).unwrap()
    }

    #[test]
    fn the_body_is_forwarded_as_received_with_a_bearer_token() {
        let body = Bytes::from_static(
            br#"{"seed":1,"model":"gpt-4o-mini","messages":[{"role":"user","content":"the fallbacks"}],"logprobs":true}"#,
        );
        let upstream = pass(&body, "gpt-4o-mini", &["fallbacks"]);
        assert_eq!(upstream.url, "http://upstream.test/v1/chat/completions");
        assert_eq!(upstream.body, body);
        assert_eq!(upstream.headers.len(), 1);
        assert_eq!(upstream.headers[0].0, AUTHORIZATION);
        assert_eq!(upstream.headers[0].1, "Bearer sk-test");
        assert!(upstream.headers[0].1.is_sensitive());
        assert_eq!(provider().format(), Format::OpenAi);
    }

    #[test]
    fn another_model_rewrites_only_the_model_field_in_place() {
        let body = Bytes::from_static(
            br#"{"seed":1,"model":"groq/llama-3.1-8b","messages":[{"role":"user","content":"hi"}]}"#,
        );
        let request = PassThrough {
            body: &body,
            model: "groq/llama-3.1-8b",
            stream: false,
            query: Some("beta=true"),
            headers: &[],
            remove: &["fallbacks"],
        };
        let upstream = provider()
            .pass_through(&request, "llama-3.1-8b", None)
            .unwrap();
        assert_eq!(
            std::str::from_utf8(&upstream.body).unwrap(),
            r#"{"seed":1,"model":"llama-3.1-8b","messages":[{"role":"user","content":"hi"}]}"#
        );
        assert!(upstream.headers.is_empty(), "no key, no auth header");
    }

    #[test]
    fn the_proxys_own_fields_are_taken_out_even_when_the_model_stays() {
        let body = Bytes::from_static(
            br#"{"model":"gpt-4o","fallbacks":["anthropic/claude"],"messages":[{"role":"user","content":"hi"}]}"#,
        );
        let upstream = pass(&body, "gpt-4o", &["fallbacks"]);
        assert_eq!(
            std::str::from_utf8(&upstream.body).unwrap(),
            r#"{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}]}"#
        );
        let not_json = Bytes::from_static(b"[1]");
        let request = PassThrough {
            body: &not_json,
            model: "a/b",
            stream: false,
            query: None,
            headers: &[],
            remove: &[],
        };
        let err = provider().pass_through(&request, "b", None).unwrap_err();
        assert!(matches!(err, ProxyError::InvalidRequest(_)), "{err:?}");
    }

    fn agent_request() -> Request {
        Request {
            model: "anthropic-door/claude".into(),
            system: vec![
                Part::Text {
                    text: "You are a coding agent.".into(),
                    cache_control: Some(json!({"type": "ephemeral"})),
                },
                Part::text("Repo: llm-proxy"),
            ],
            messages: vec![
                Message {
                    role: Role::User,
                    content: vec![
                        Part::text("What is in"),
                        Part::Image {
                            image: Image::Base64 {
                                media_type: "image/png",
                                data: "iVBORw0KGgo=".into(),
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
                            signature: Some("sig".into()),
                        },
                        Part::RedactedReasoning {
                            data: "opaque".into(),
                        },
                        Part::ToolCall(call("toolu_1", "read_file", r#"{"path":"a.rs"}"#)),
                        Part::ToolCall(call("toolu_2", "screenshot", "{}")),
                    ],
                },
                Message {
                    role: Role::Tool,
                    content: vec![
                        Part::ToolResult(ToolResult {
                            call_id: "toolu_1".into(),
                            content: vec![Part::text("fn main() {}")],
                            is_error: false,
                            cache_control: None,
                        }),
                        Part::ToolResult(ToolResult {
                            call_id: "toolu_2".into(),
                            content: vec![
                                Part::text("here"),
                                Part::Image {
                                    image: Image::Url {
                                        url: "https://example.com/s.png".into(),
                                        media_type: "image/png",
                                    },
                                    cache_control: None,
                                },
                            ],
                            is_error: true,
                            cache_control: None,
                        }),
                    ],
                },
                Message::text(Role::System, "Be brief."),
                Message::text(Role::Assistant, "Done."),
            ],
            tools: vec![Tool {
                name: "read_file".into(),
                description: Some("Reads a file".into()),
                parameters: json!({"type": "object"}),
                cache_control: Some(json!({"type": "ephemeral"})),
                strict: None,
            }],
            tool_choice: Some(ToolChoice::Required),
            parallel_tool_calls: Some(true),
            response_format: Some(ResponseFormat::JsonObject),
            max_tokens: Some(1024),
            temperature: Some(0.2),
            top_p: Some(0.95),
            top_k: Some(40),
            stop: vec!["END".into()],
            seed: Some(3),
            reasoning: Some(Reasoning::Budget(2048)),
            user: Some("u1".into()),
            stream: true,
            include_usage: false,
            extras: vec![
                ("metadata".into(), json!({"user_id": "u1"})),
                ("model".into(), json!("not again")),
            ],
            unportable: vec![],
        }
    }

    #[test]
    fn openai_itself_gets_max_completion_tokens_and_no_top_k_and_compatible_servers_both() {
        let request = Request {
            model: "m".into(),
            messages: vec![Message::text(Role::User, "hi")],
            max_tokens: Some(7),
            top_k: Some(40),
            ..Request::default()
        };
        let openai = body_of(&provider().translate_request(&request, "m", None).unwrap());
        assert_eq!(openai["max_completion_tokens"], 7);
        assert!(openai.get("max_tokens").is_none());
        assert!(openai.get("top_k").is_none());
        let groq = OpenAi::new(Endpoint {
            name: "groq",
            base_url: "http://upstream.test/v1/".into(),
            key_required: true,
            headers: vec![],
            held_key: None,
        });
        let groq = body_of(&groq.translate_request(&request, "m", None).unwrap());
        assert_eq!(groq["max_tokens"], 7);
        assert_eq!(groq["top_k"], 40);
        assert!(groq.get("max_completion_tokens").is_none());
    }

    #[test]
    fn a_request_becomes_a_chat_completions_body_in_a_fixed_order() {
        let upstream = provider()
            .translate_request(
                &agent_request(),
                "gpt-4o",
                Some(&HeaderValue::from_static("sk-test")),
            )
            .unwrap();
        assert_eq!(upstream.url, "http://upstream.test/v1/chat/completions");
        assert_eq!(upstream.headers[0].1, "Bearer sk-test");
        let body = body_of(&upstream);
        assert_eq!(
            body,
            json!({
                "model": "gpt-4o",
                "messages": [
                    {"role": "system", "content": "You are a coding agent.\n\nRepo: llm-proxy"},
                    {"role": "user", "content": [
                        {"type": "text", "text": "What is in"},
                        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}]},
                    {"role": "assistant", "content": null, "tool_calls": [
                        {"id": "toolu_1", "type": "function",
                         "function": {"name": "read_file", "arguments": "{\"path\":\"a.rs\"}"}},
                        {"id": "toolu_2", "type": "function",
                         "function": {"name": "screenshot", "arguments": "{}"}}]},
                    {"role": "tool", "tool_call_id": "toolu_1", "content": "fn main() {}"},
                    {"role": "tool", "tool_call_id": "toolu_2", "content": "here"},
                    {"role": "user", "content": [
                        {"type": "image_url", "image_url": {"url": "https://example.com/s.png"}}]},
                    {"role": "system", "content": "Be brief."},
                    {"role": "assistant", "content": "Done."}
                ],
                "tools": [{"type": "function", "function": {"name": "read_file",
                    "description": "Reads a file", "parameters": {"type": "object"}}}],
                "tool_choice": "required",
                "parallel_tool_calls": true,
                "response_format": {"type": "json_object"},
                "max_completion_tokens": 1024,
                "temperature": 0.2,
                "top_p": 0.95,
                "stop": ["END"],
                "seed": 3,
                "reasoning_effort": "medium",
                "user": "u1",
                "stream": true,
                "stream_options": {"include_usage": true},
                "metadata": {"user_id": "u1"}
            })
        );
        let keys = [
            "model",
            "messages",
            "tools",
            "tool_choice",
            "parallel_tool_calls",
            "response_format",
            "max_completion_tokens",
            "temperature",
            "top_p",
            "stop",
            "seed",
            "reasoning_effort",
            "user",
            "stream",
            "stream_options",
            "metadata",
        ];
        let written = std::str::from_utf8(&upstream.body).unwrap();
        let mut positions: Vec<_> = keys
            .iter()
            .map(|key| written.find(&format!("\"{key}\":")).unwrap())
            .collect();
        let order = positions.clone();
        positions.sort_unstable();
        assert_eq!(
            order, positions,
            "fields are written in the order of the model"
        );
    }

    #[test]
    fn disabled_reasoning_and_a_plain_call_write_only_what_is_set() {
        let request = Request {
            messages: vec![Message::text(Role::User, "hi")],
            reasoning: Some(Reasoning::Disabled),
            tool_choice: Some(ToolChoice::Tool("f".into())),
            response_format: Some(ResponseFormat::JsonSchema {
                name: "a".into(),
                description: None,
                schema: json!({}),
                strict: None,
            }),
            ..Request::default()
        };
        let body = body_of(&provider().translate_request(&request, "m", None).unwrap());
        assert_eq!(
            body,
            json!({"model": "m", "messages": [{"role": "user", "content": "hi"}],
                   "tool_choice": {"type": "function", "function": {"name": "f"}},
                   "response_format": {"type": "json_schema", "json_schema": {"name": "a", "schema": {}}}})
        );
    }

    #[test]
    fn what_only_another_format_can_express_is_refused_naming_it() {
        let request = Request {
            messages: vec![Message::text(Role::User, "hi")],
            unportable: vec!["tools[0] (web_search_20250305)".into()],
            ..Request::default()
        };
        let err = provider()
            .translate_request(&request, "m", None)
            .unwrap_err();
        assert!(matches!(err, ProxyError::InvalidRequest(_)));
        assert!(
            err.to_string()
                .contains("`tools[0] (web_search_20250305)` cannot be sent to openai"),
            "{err}"
        );
    }

    #[test]
    fn a_completion_is_normalized() {
        let body = include_bytes!("../../../tests/fixtures/openai/completion.json");
        let response = provider().translate_response(body, "gpt-4o-mini").unwrap();
        assert_eq!(
            response,
            Response {
                id: Some("chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT".into()),
                model: "gpt-4o-mini-2024-07-18".into(),
                content: vec![Part::text("Hello! How can I help you today?")],
                stop_reason: Some(StopReason::Stop),
                native_stop_reason: Some("stop".into()),
                usage: Some(Usage {
                    input_tokens: 19,
                    output_tokens: 9,
                    ..Usage::default()
                }),
            }
        );
    }

    #[test]
    fn a_tool_call_completion_from_openais_reference_is_normalized() {
        let body = include_bytes!("../../../tests/fixtures/openai/tool_calls.json");
        let response = provider().translate_response(body, "asked").unwrap();
        assert_eq!(
            response,
            Response {
                id: Some("chatcmpl-abc123".into()),
                model: "gpt-4o-mini".into(),
                content: vec![Part::ToolCall(call(
                    "call_abc123",
                    "get_current_weather",
                    "{\n\"location\": \"Boston, MA\"\n}"
                ))],
                stop_reason: Some(StopReason::ToolCalls),
                native_stop_reason: Some("tool_calls".into()),
                usage: Some(Usage {
                    input_tokens: 82,
                    output_tokens: 17,
                    ..Usage::default()
                }),
            }
        );
    }

    #[test]
    fn reasoning_cached_tokens_and_lenient_shapes_are_read() {
        let body = br#"{"id":"x","model":"","choices":[{"index":0,"message":{"role":"assistant",
            "content":[{"type":"thinking","thinking":[]},{"type":"text","text":"It is "},{"type":"text","text":"9.8."}],
            "reasoning":"Compare tenths.",
            "tool_calls":[{"type":"function","function":{"name":"f","arguments":{"a":1}}}]},
            "finish_reason":"stop"}],
            "usage":{"prompt_tokens":10,"completion_tokens":20,"prompt_tokens_details":{"cached_tokens":8},
                     "completion_tokens_details":{"reasoning_tokens":15}}}"#;
        let response = provider().translate_response(body, "asked").unwrap();
        assert_eq!(
            response,
            Response {
                id: Some("x".into()),
                model: "asked".into(),
                content: vec![
                    Part::Reasoning {
                        text: "Compare tenths.".into(),
                        signature: None
                    },
                    Part::text("It is 9.8."),
                    Part::ToolCall(call("call_0", "f", r#"{"a":1}"#)),
                ],
                stop_reason: Some(StopReason::ToolCalls),
                native_stop_reason: Some("stop".into()),
                usage: Some(Usage {
                    input_tokens: 10,
                    output_tokens: 20,
                    cache_read_tokens: 8,
                    cache_write_tokens: 0,
                    reasoning_tokens: 15,
                }),
            }
        );
    }

    #[test]
    fn null_content_and_a_missing_finish_reason_are_nothing() {
        let body = br#"{"choices":[{"index":0,"message":{"role":"assistant","content":null,
            "tool_calls":[]},"finish_reason":null}]}"#;
        let response = provider().translate_response(body, "asked-for").unwrap();
        assert_eq!(
            response,
            Response {
                model: "asked-for".into(),
                ..Response::default()
            }
        );
    }

    #[test]
    fn bodies_without_choices_are_bad_gateway() {
        for body in [
            &b"{}"[..],
            br#"{"choices":[]}"#,
            b"<html>",
            br#"{"choices":"no"}"#,
            br#"{"choices":[{"message":{"content":5}}]}"#,
            br#"{"choices":[{"message":{"tool_calls":[{"id":"c","function":{"arguments":"{}"}}]}}]}"#,
        ] {
            let err = provider().translate_response(body, "m").unwrap_err();
            assert!(matches!(err, ProxyError::BadUpstreamBody(_)), "{err:?}");
        }
    }

    /// Runs a whole stream through the decoder, as `upstream` will: every event, then `end`.
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
        for event in events {
            collector.event(event);
        }
        collector.finish()
    }

    #[test]
    fn openais_text_stream_becomes_events() {
        let events = decode(include_bytes!("../../../tests/fixtures/openai/stream.sse")).unwrap();
        assert_eq!(
            events,
            [
                StreamEvent::Start {
                    id: Some("chatcmpl-AbC123".into()),
                    model: Some("gpt-4o-mini-2024-07-18".into()),
                },
                StreamEvent::Text("¡Hola".into()),
                StreamEvent::Text("! 👋 ¿Qué tal?".into()),
                StreamEvent::Stop {
                    reason: StopReason::Stop,
                    native: Some("stop".into()),
                },
            ]
        );
    }

    #[test]
    fn a_parallel_tool_call_stream_keeps_each_call_apart() {
        let events = decode(include_bytes!(
            "../../../tests/fixtures/openai/parallel_tool_calls.sse"
        ))
        .unwrap();
        assert_eq!(events.len(), 9, "{events:?}");
        assert_eq!(
            events[1],
            StreamEvent::ToolCallStart {
                index: 0,
                id: "call_3ZkXjVwYq1Lm8Rb2Tn5Pc7Ua".into(),
                name: "get_weather".into(),
            }
        );
        assert_eq!(
            events[4],
            StreamEvent::ToolCallStart {
                index: 1,
                id: "call_8WbNc2QsYd4Fh6Jk0Lm1Pr3T".into(),
                name: "get_weather".into(),
            }
        );
        let response = collect(events);
        assert_eq!(
            response,
            Response {
                id: Some("chatcmpl-BqXk2oYq7yVwJ1fM0cZ3rT8uQnLsA".into()),
                model: "gpt-4o-2024-08-06".into(),
                content: vec![
                    Part::ToolCall(call(
                        "call_3ZkXjVwYq1Lm8Rb2Tn5Pc7Ua",
                        "get_weather",
                        r#"{"location": "Paris, France"}"#
                    )),
                    Part::ToolCall(call(
                        "call_8WbNc2QsYd4Fh6Jk0Lm1Pr3T",
                        "get_weather",
                        r#"{"location": "Bogotá, Colombia"}"#
                    )),
                ],
                stop_reason: Some(StopReason::ToolCalls),
                native_stop_reason: Some("tool_calls".into()),
                usage: Some(Usage {
                    input_tokens: 86,
                    output_tokens: 52,
                    ..Usage::default()
                }),
            }
        );
    }

    #[test]
    fn a_deepseek_reasoning_stream_has_its_usage_before_its_stop() {
        let events = decode(include_bytes!(
            "../../../tests/fixtures/openai/deepseek_reasoning.sse"
        ))
        .unwrap();
        let usage = Usage {
            input_tokens: 18,
            output_tokens: 61,
            reasoning_tokens: 55,
            ..Usage::default()
        };
        assert_eq!(
            events[events.len() - 2..],
            [
                StreamEvent::Usage(usage),
                StreamEvent::Stop {
                    reason: StopReason::Stop,
                    native: Some("stop".into())
                }
            ]
        );
        let response = collect(events);
        assert_eq!(
            response.content,
            [
                Part::Reasoning {
                    text: "9.11 has a smaller tenths digit than 9.8.".into(),
                    signature: None
                },
                Part::text("9.8 is greater.")
            ]
        );
        assert_eq!(response.model, "deepseek-reasoner");
    }

    #[test]
    fn interleaved_and_late_named_calls_are_numbered_as_they_start() {
        let stream = concat!(
            "data: {\"choices\":[{\"delta\":{\"tool_calls\":[{\"index\":3,\"id\":\"call_a\",\"function\":{\"arguments\":\"{\\\"a\\\"\"}}]}}]}\n\n",
            "data: {\"choices\":[{\"delta\":{\"tool_calls\":[{\"index\":5,\"id\":\"call_b\",\"function\":{\"name\":\"beta\",\"arguments\":\"{\"}}]}}]}\n\n",
            "data: {\"choices\":[{\"delta\":{\"tool_calls\":[{\"index\":3,\"function\":{\"name\":\"alpha\",\"arguments\":\":1}\"}}]}}]}\n\n",
            "data: {\"choices\":[{\"delta\":{\"tool_calls\":[{\"index\":5,\"function\":{\"arguments\":\"}\"}}]}}]}\n\n",
            "data: {\"choices\":[{\"index\":1,\"delta\":{\"content\":\"other choice\"}}]}\n\n",
            "data: {\"choices\":[{\"delta\":{},\"finish_reason\":\"tool_calls\"}]}\n\n",
        );
        let events = decode(stream.as_bytes()).unwrap();
        assert_eq!(
            events,
            [
                StreamEvent::Start {
                    id: None,
                    model: None
                },
                StreamEvent::ToolCallStart {
                    index: 0,
                    id: "call_b".into(),
                    name: "beta".into()
                },
                StreamEvent::ToolArguments {
                    index: 0,
                    fragment: "{".into()
                },
                StreamEvent::ToolCallStart {
                    index: 1,
                    id: "call_a".into(),
                    name: "alpha".into()
                },
                StreamEvent::ToolArguments {
                    index: 1,
                    fragment: "{\"a\"".into()
                },
                StreamEvent::ToolArguments {
                    index: 1,
                    fragment: ":1}".into()
                },
                StreamEvent::ToolArguments {
                    index: 0,
                    fragment: "}".into()
                },
                StreamEvent::Stop {
                    reason: StopReason::ToolCalls,
                    native: Some("tool_calls".into())
                },
            ]
        );
    }

    #[test]
    fn calls_without_an_index_are_told_apart_by_their_ids_and_names() {
        let stream = concat!(
            "data: {\"choices\":[{\"delta\":{\"tool_calls\":[{\"id\":\"c1\",\"function\":{\"name\":\"f\",\"arguments\":\"{}\"}}]}}]}\n\n",
            "data: {\"choices\":[{\"delta\":{\"tool_calls\":[{\"id\":\"c2\",\"function\":{\"name\":\"g\",\"arguments\":\"{\"}}]}}]}\n\n",
            "data: {\"choices\":[{\"delta\":{\"tool_calls\":[{\"function\":{\"arguments\":\"}\"}}]}}]}\n\n",
            "data: {\"choices\":[{\"delta\":{\"tool_calls\":[{\"function\":{\"name\":\"h\",\"arguments\":\"[]\"}}]}}]}\n\n",
            "data: {\"choices\":[{\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n",
            "data: [DONE]\n\n",
        );
        let response = collect(decode(stream.as_bytes()).unwrap());
        assert_eq!(
            response.content,
            [
                Part::ToolCall(call("c1", "f", "{}")),
                Part::ToolCall(call("c2", "g", "{}")),
                Part::ToolCall(call("call_2", "h", "[]")),
            ]
        );
        assert_eq!(
            response.stop_reason,
            Some(StopReason::ToolCalls),
            "stop with calls"
        );
    }

    #[test]
    fn an_error_event_ends_the_stream_with_its_data() {
        let data = r#"{"error":{"message":"overloaded","type":"server_error","code":null}}"#;
        let err = decode(
            format!(
                "data: {{\"choices\":[{{\"delta\":{{\"content\":\"a\"}}}}]}}\n\ndata: {data}\n\n"
            )
            .as_bytes(),
        )
        .unwrap_err();
        match err {
            ProxyError::StreamEvent(body) => assert_eq!(body, data.as_bytes()),
            other => panic!("{other:?}"),
        }
        let err = decode(b"data: <html>\n\n").unwrap_err();
        assert!(matches!(err, ProxyError::BadUpstreamBody(_)), "{err:?}");
        assert!(err
            .to_string()
            .contains("openai response stream has an event that is not a chunk"));
    }

    #[test]
    fn a_named_error_event_fails_whatever_its_data() {
        let mut decoder = provider().stream_decoder();
        let event = sse::Event {
            name: Some("error"),
            data: "upstream overloaded".into(),
        };
        let err = decoder.event(&event, &mut Vec::new()).unwrap_err();
        assert!(matches!(err, ProxyError::StreamEvent(ref body) if body == "upstream overloaded"));
    }

    #[test]
    fn reasoning_under_either_name_is_read_once() {
        let stream = concat!(
            "data: {\"id\":\"r\",\"model\":\"qwen3\",\"choices\":[{\"delta\":{\"reasoning_content\":\"a\",\"reasoning\":\"a\"}}]}\n\n",
            "data: {\"choices\":[{\"delta\":{\"reasoning\":\"b\"}}]}\n\n",
            "data: {\"choices\":[{\"delta\":{\"content\":[{\"type\":\"text\",\"text\":\"c\"}]},\"finish_reason\":\"length\"}]}\n\n",
        );
        let events = decode(stream.as_bytes()).unwrap();
        assert_eq!(
            events,
            [
                StreamEvent::Start {
                    id: Some("r".into()),
                    model: Some("qwen3".into())
                },
                StreamEvent::Reasoning("a".into()),
                StreamEvent::Reasoning("b".into()),
                StreamEvent::Text("c".into()),
                StreamEvent::Stop {
                    reason: StopReason::Length,
                    native: Some("length".into())
                },
            ]
        );
    }

    #[test]
    fn a_stream_cut_before_its_end_is_an_error() {
        let err = decode(b"data: {\"id\":\"x\",\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\n\n")
            .unwrap_err();
        assert!(matches!(err, ProxyError::Unreachable(_)));
        assert!(
            err.to_string()
                .contains("the openai stream ended before its [DONE]; the answer is incomplete"),
            "{err}"
        );
        let done_only = decode(b"data: [DONE]\n\n").unwrap();
        assert_eq!(
            done_only,
            [
                StreamEvent::Start {
                    id: None,
                    model: None
                },
                StreamEvent::Stop {
                    reason: StopReason::Stop,
                    native: None
                }
            ],
            "a stream with [DONE] and no finish reason still stops"
        );
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        fn text() -> impl Strategy<Value = String> {
            "[a-zA-Z0-9 .,{}\"\\\\é👋\n]{1,16}"
        }

        fn json_value() -> impl Strategy<Value = Value> {
            let leaf = prop_oneof![
                any::<bool>().prop_map(Value::from),
                any::<i64>().prop_map(Value::from),
                text().prop_map(Value::from),
            ];
            leaf.prop_recursive(3, 16, 4, |inner| {
                prop_oneof![
                    proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
                    proptest::collection::btree_map("[a-z]{1,6}", inner, 0..4)
                        .prop_map(|map| Value::Object(map.into_iter().collect())),
                ]
            })
        }

        fn object() -> impl Strategy<Value = Value> {
            proptest::collection::btree_map("[a-z]{1,6}", json_value(), 0..4)
                .prop_map(|map| Value::Object(map.into_iter().collect()))
        }

        fn image() -> impl Strategy<Value = Part> {
            let media = prop_oneof![
                Just(("png", "image/png")),
                Just(("jpg", "image/jpeg")),
                Just(("gif", "image/gif")),
                Just(("webp", "image/webp")),
            ];
            (media, "[a-z]{1,8}", "[A-Za-z0-9+/]{1,12}=?", any::<bool>()).prop_map(
                |((extension, media_type), name, data, inline)| Part::Image {
                    image: if inline {
                        Image::Base64 { media_type, data }
                    } else {
                        Image::Url {
                            url: format!("https://img.test/{name}.{extension}"),
                            media_type,
                        }
                    },
                    cache_control: None,
                },
            )
        }

        fn tool_call() -> impl Strategy<Value = ToolCall> {
            ("call_[a-zA-Z0-9]{1,8}", "[a-z_]{1,10}", ".{0,20}")
                .prop_map(|(id, name, arguments)| call(&id, &name, &arguments))
        }

        /// A message as OpenAI writes it, so that it reads back the same: user content of
        /// one text (a string) or parts, assistant text before its calls, one result per
        /// tool message, a system message never first.
        fn message(first: bool) -> impl Strategy<Value = Message> {
            let user = prop_oneof![
                text().prop_map(|t| vec![Part::text(t)]),
                proptest::collection::vec(prop_oneof![text().prop_map(Part::text), image()], 2..4),
                image().prop_map(|i| vec![i]),
            ]
            .prop_map(|content| Message {
                role: Role::User,
                content,
            });
            let assistant = (
                proptest::option::of(text()),
                proptest::collection::vec(tool_call(), 0..3),
            )
                .prop_map(|(text, calls)| Message {
                    role: Role::Assistant,
                    content: text
                        .map(Part::text)
                        .into_iter()
                        .chain(calls.into_iter().map(Part::ToolCall))
                        .collect(),
                });
            let tool = ("call_[a-z0-9]{1,8}", ".{0,20}").prop_map(|(call_id, text)| Message {
                role: Role::Tool,
                content: vec![Part::ToolResult(ToolResult {
                    call_id,
                    content: vec![Part::text(text)],
                    is_error: false,
                    cache_control: None,
                })],
            });
            let system =
                proptest::collection::vec(text().prop_map(Part::text), 1..3).prop_map(|content| {
                    Message {
                        role: Role::System,
                        content,
                    }
                });
            if first {
                prop_oneof![user, assistant, tool].boxed()
            } else {
                prop_oneof![user, assistant, tool, system].boxed()
            }
        }

        prop_compose! {
            fn messages()(first in message(true), rest in proptest::collection::vec(message(false), 0..5)) -> Vec<Message> {
                std::iter::once(first).chain(rest).collect()
            }
        }

        fn tool() -> impl Strategy<Value = Tool> {
            (
                "[a-z_]{1,10}",
                proptest::option::of(text()),
                object(),
                proptest::option::of(any::<bool>()),
            )
                .prop_map(|(name, description, parameters, strict)| Tool {
                    name,
                    description,
                    parameters,
                    cache_control: None,
                    strict,
                })
        }

        fn tool_choice() -> impl Strategy<Value = ToolChoice> {
            prop_oneof![
                Just(ToolChoice::Auto),
                Just(ToolChoice::None),
                Just(ToolChoice::Required),
                "[a-z_]{1,10}".prop_map(ToolChoice::Tool),
            ]
        }

        fn response_format() -> impl Strategy<Value = ResponseFormat> {
            prop_oneof![
                Just(ResponseFormat::Text),
                Just(ResponseFormat::JsonObject),
                (
                    "[a-z_]{1,10}",
                    proptest::option::of(text()),
                    object(),
                    proptest::option::of(any::<bool>())
                )
                    .prop_map(|(name, description, schema, strict)| {
                        ResponseFormat::JsonSchema {
                            name,
                            description,
                            schema,
                            strict,
                        }
                    }),
            ]
        }

        fn effort() -> impl Strategy<Value = Effort> {
            prop_oneof![
                Just(Effort::Minimal),
                Just(Effort::Low),
                Just(Effort::Medium),
                Just(Effort::High),
            ]
        }

        prop_compose! {
            /// A request of what OpenAI can express, written the way its parser reads it
            /// back: a system prompt of one part, no cache markers, usage asked for exactly
            /// when streaming (the upstream always asks), effort rather than budgets.
            fn request()(
                model in "[a-z0-9./-]{1,16}",
                system in proptest::option::of(text()),
                messages in messages(),
                tools in proptest::collection::vec(tool(), 0..3),
                tool_choice in proptest::option::of(tool_choice()),
                parallel_tool_calls in proptest::option::of(any::<bool>()),
                response_format in proptest::option::of(response_format()),
                max_tokens in proptest::option::of(1u64..1_000_000),
                // Hundredths: serde_json's default float parser may be off by one unit in
                // the last place on long fractions, which no sampler notices.
                temperature in proptest::option::of((0u32..=200).prop_map(|t| f64::from(t) / 100.0)),
                top_p in proptest::option::of((0u32..=100).prop_map(|p| f64::from(p) / 100.0)),
                top_k in proptest::option::of(1u64..1000),
                stop in proptest::collection::vec(text(), 0..3),
                seed in proptest::option::of(any::<i64>()),
                reasoning in proptest::option::of(effort().prop_map(Reasoning::Effort)),
                user in proptest::option::of(text()),
                stream: bool,
                extras in proptest::collection::vec(("x_[a-z]{1,6}", json_value()), 0..3),
            ) -> Request {
                Request {
                    model,
                    system: system.map(Part::text).into_iter().collect(),
                    messages,
                    tools,
                    tool_choice,
                    parallel_tool_calls,
                    response_format,
                    max_tokens,
                    temperature,
                    top_p,
                    top_k,
                    stop,
                    seed,
                    reasoning,
                    user,
                    stream,
                    include_usage: stream,
                    extras,
                    unportable: vec![],
                }
            }
        }

        fn stop() -> impl Strategy<Value = StopReason> {
            prop_oneof![
                Just(StopReason::Stop),
                Just(StopReason::Length),
                Just(StopReason::ToolCalls),
                Just(StopReason::ContentFilter),
                "[a-z_]{1,12}".prop_map(StopReason::Other),
            ]
        }

        fn usage() -> impl Strategy<Value = Usage> {
            (
                0u64..1_000_000,
                0u64..1_000_000,
                0u64..1000,
                0u64..1000,
                0u64..1000,
            )
                .prop_map(|(input, output, cache_read, cache_write, reasoning)| {
                    Usage {
                        input_tokens: input,
                        output_tokens: output,
                        cache_read_tokens: cache_read,
                        cache_write_tokens: cache_write,
                        reasoning_tokens: reasoning,
                    }
                })
        }

        prop_compose! {
            /// Any answer, in any order, with what OpenAI cannot carry (signatures,
            /// encrypted reasoning, cache writes) among it.
            fn response()(
                // The door keeps only ids of OpenAI's shape (`chatcmpl-...`).
                id in proptest::option::of("chatcmpl-[a-zA-Z0-9_-]{1,16}"),
                model in "[a-z0-9.-]{1,16}",
                content in proptest::collection::vec(prop_oneof![
                    text().prop_map(Part::text),
                    tool_call().prop_map(Part::ToolCall),
                    (text(), proptest::option::of("[a-z]{1,6}"))
                        .prop_map(|(text, signature)| Part::Reasoning { text, signature }),
                    "[a-z]{1,6}".prop_map(|data| Part::RedactedReasoning { data }),
                ], 0..6),
                stop_reason in proptest::option::of(stop()),
                native in proptest::option::of("[a-z_]{1,12}"),
                usage in proptest::option::of(usage()),
            ) -> Response {
                Response { id, model, content, stop_reason, native_stop_reason: native, usage }
            }
        }

        /// What a Chat Completions answer keeps of `response`: reasoning, then the text, then
        /// the calls; the finish reason it can name, as its native one; no cache writes.
        fn as_completion(response: &Response) -> Response {
            let calls: Vec<_> = response.tool_calls().cloned().map(Part::ToolCall).collect();
            let text = response.text();
            let content = response
                .reasoning()
                .filter(|r| !r.is_empty())
                .map(|text| Part::Reasoning {
                    text,
                    signature: None,
                })
                .into_iter()
                .chain((!text.is_empty()).then(|| Part::text(text)))
                .chain(calls)
                .collect();
            answered(response, content)
        }

        /// What a chunk stream keeps of `response`: everything in its order but signatures and
        /// encrypted reasoning, runs of text or reasoning joined; a stop and usage always.
        fn as_stream(response: &Response) -> Response {
            let mut content: Vec<Part> = Vec::new();
            for part in &response.content {
                match (content.last_mut(), part) {
                    (
                        _,
                        Part::RedactedReasoning { .. } | Part::Image { .. } | Part::ToolResult(_),
                    ) => {}
                    (Some(Part::Text { text: last, .. }), Part::Text { text, .. }) => {
                        last.push_str(text)
                    }
                    (Some(Part::Reasoning { text: last, .. }), Part::Reasoning { text, .. }) => {
                        last.push_str(text)
                    }
                    (_, Part::Reasoning { text, .. }) => content.push(Part::Reasoning {
                        text: text.clone(),
                        signature: None,
                    }),
                    (_, part) => content.push(part.clone()),
                }
            }
            let mut expected = answered(
                &Response {
                    stop_reason: Some(response.stop_reason.clone().unwrap_or(StopReason::Stop)),
                    usage: Some(response.usage.unwrap_or_default()),
                    ..response.clone()
                },
                content,
            );
            expected.id = response.id.clone();
            expected
        }

        fn answered(response: &Response, content: Vec<Part>) -> Response {
            let has_calls = response.tool_calls().next().is_some();
            let native = response
                .stop_reason
                .as_ref()
                .map(super::super::super::types::finish_reason);
            Response {
                id: response.id.clone(),
                model: response.model.clone(),
                content,
                stop_reason: native.map(|n| stop_reason(n, has_calls)),
                native_stop_reason: native.map(str::to_owned),
                usage: response.usage.map(|usage| Usage {
                    cache_write_tokens: 0,
                    ..usage
                }),
            }
        }

        proptest! {
            #[test]
            fn arbitrary_events_never_panic_the_decoder(
                datas in proptest::collection::vec(prop_oneof![
                    ".{0,40}",
                    json_value().prop_map(|v| v.to_string()),
                    Just("[DONE]".to_owned()),
                    Just(r#"{"choices":[{"delta":{"tool_calls":[{"index":0,"function":{"arguments":"x"}}]}}]}"#.to_owned()),
                    Just(r#"{"choices":[{"delta":{"tool_calls":[{"function":{"name":"f"}}]},"finish_reason":"stop"}]}"#.to_owned()),
                ], 0..8),
            ) {
                let mut decoder = provider().stream_decoder();
                let mut out = Vec::new();
                for data in &datas {
                    let event = sse::Event { name: None, data: data.as_str().into() };
                    if decoder.event(&event, &mut out).is_err() {
                        break;
                    }
                }
                let _ = decoder.end(&mut out);
            }

            #[test]
            fn arbitrary_bodies_never_panic_the_response_reader(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
                let _ = provider().translate_response(&bytes, "m");
            }

            #[test]
            fn a_request_openai_can_express_reads_back_as_itself(request in request()) {
                // A server of OpenAI's format (OpenAI itself takes no `top_k`).
                let vllm = OpenAi::new(Endpoint {
                    name: "vllm",
                    base_url: "http://upstream.test/v1/".into(),
                    key_required: false,
                    headers: vec![],
                    held_key: None,
                });
                let upstream = vllm.translate_request(&request, &request.model, None).unwrap();
                let parsed = door::parse(&upstream.body).unwrap();
                // A `user` longer than OpenAI's 64 characters is left out.
                let mut request = request;
                request.user = request.user.filter(|user| user.len() <= 64);
                prop_assert_eq!(parsed, request);
            }

            #[test]
            fn an_answer_survives_a_completion_and_back(response in response()) {
                let read = provider().translate_response(&door::completion(&response), "asked").unwrap();
                let mut expected = as_completion(&response);
                if expected.id.is_none() {
                    prop_assert!(read.id.as_deref().is_some_and(|id| id.starts_with("chatcmpl-")));
                    expected.id = read.id.clone();
                }
                prop_assert_eq!(read, expected);
            }

            #[test]
            fn an_answer_survives_a_chunk_stream_and_back(response in response()) {
                let read = collect(decode(&door::stream_of(&response, true)).unwrap());
                let mut expected = as_stream(&response);
                if expected.id.is_none() {
                    prop_assert!(read.id.as_deref().is_some_and(|id| id.starts_with("chatcmpl-")));
                    expected.id = read.id.clone();
                }
                prop_assert_eq!(read, expected);
            }
        }
    }
}
