//! The OpenAI-compatible front door, as pure functions: which provider and model a request
//! means, the `chat.completion` answer, `chat.completion.chunk` streams, and `/v1/models`.

use std::{
    sync::atomic::{AtomicU64, Ordering},
    time::{SystemTime, UNIX_EPOCH},
};

use serde::Serialize;

use crate::{
    chat::{ChatResponse, Usage},
    error::ProxyError,
    providers::Registry,
    sse,
};

/// Fields of ours that no upstream understands: always dropped before a request goes on.
pub const PROXY_FIELDS: [&str; 1] = ["fallbacks"];

/// Fields only OpenAI understands. They are dropped before a front-door request goes to
/// another wire format, which would refuse them; `stream_options` is honoured by the proxy.
pub const OPENAI_ONLY_FIELDS: [&str; 18] = [
    "audio",
    "frequency_penalty",
    "logit_bias",
    "logprobs",
    "max_completion_tokens",
    "modalities",
    "n",
    "parallel_tool_calls",
    "prediction",
    "presence_penalty",
    "reasoning_effort",
    "response_format",
    "seed",
    "service_tier",
    "store",
    "stream_options",
    "top_logprobs",
    "user",
];

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

/// A stop reason in OpenAI's `finish_reason` vocabulary; anything else becomes `stop`.
fn finish_reason(stop_reason: &str) -> &str {
    match stop_reason {
        "stop" | "length" | "tool_calls" | "content_filter" | "function_call" => stop_reason,
        _ => "stop",
    }
}

/// A normalized answer as a `chat.completion` object.
pub fn completion_body(response: &ChatResponse<'_>) -> Vec<u8> {
    #[derive(Serialize)]
    struct Completion<'a> {
        id: String,
        object: &'static str,
        created: u64,
        model: &'a str,
        choices: [Choice<'a>; 1],
        #[serde(skip_serializing_if = "Option::is_none")]
        usage: Option<OpenAiUsage>,
    }
    #[derive(Serialize)]
    struct Choice<'a> {
        index: u32,
        message: Message<'a>,
        logprobs: Option<()>,
        finish_reason: Option<&'a str>,
    }
    #[derive(Serialize)]
    struct Message<'a> {
        role: &'static str,
        content: &'a str,
    }
    let body = Completion {
        id: completion_id(),
        object: "chat.completion",
        created: unix_now(),
        model: &response.model,
        choices: [Choice {
            index: 0,
            message: Message {
                role: "assistant",
                content: &response.content,
            },
            logprobs: None,
            finish_reason: response.stop_reason.as_deref().map(finish_reason),
        }],
        usage: response.usage.map(OpenAiUsage::from),
    };
    serde_json::to_vec(&body).expect("a completion always serializes")
}

#[derive(Serialize, Clone, Copy)]
struct OpenAiUsage {
    prompt_tokens: u64,
    completion_tokens: u64,
    total_tokens: u64,
}

impl From<Usage> for OpenAiUsage {
    fn from(usage: Usage) -> Self {
        Self {
            prompt_tokens: usage.input_tokens,
            completion_tokens: usage.output_tokens,
            total_tokens: usage.input_tokens + usage.output_tokens,
        }
    }
}

/// The token counts of a `chat.completion` body or chunk, when it has a `usage`.
pub fn usage_of(body: &[u8]) -> Option<Usage> {
    #[derive(serde::Deserialize)]
    struct Probe {
        usage: Option<ProbeUsage>,
    }
    #[derive(serde::Deserialize)]
    struct ProbeUsage {
        #[serde(default)]
        prompt_tokens: u64,
        #[serde(default)]
        completion_tokens: u64,
    }
    let usage = serde_json::from_slice::<Probe>(body).ok()?.usage?;
    Some(Usage {
        input_tokens: usage.prompt_tokens,
        output_tokens: usage.completion_tokens,
    })
}

/// Turns one wire format's stream events into `chat.completion.chunk`s.
pub trait StreamTranslator {
    /// Runs for each complete upstream event, in order, as soon as it has arrived; writes the
    /// chunks it makes to `out`. An error ends the stream with an error chunk.
    fn event(&mut self, event: &sse::Event<'_>, out: &mut ChunkWriter) -> Result<(), ProxyError>;

    /// Runs once when the upstream's body has ended cleanly, after its last event: fails when
    /// the stream ended before its format's terminal event, so that a truncated answer ends
    /// with an error chunk instead of `[DONE]`. The default accepts any end.
    fn end(&mut self) -> Result<(), ProxyError> {
        Ok(())
    }
}

/// The error for a translated stream that ended without its terminal event.
pub fn ended_early(provider: &str, terminal: &str) -> ProxyError {
    ProxyError::Unreachable(format!(
        "the {provider} stream ended before its {terminal}; the answer is incomplete"
    ))
}

/// A whole normalized answer as a stream: for an upstream that answered a stream request with
/// JSON (some ignore `stream`), so the caller still gets the stream it asked for.
pub fn stream_of_response(response: &ChatResponse<'_>, include_usage: bool) -> Vec<u8> {
    let mut writer = ChunkWriter::new(&response.model, include_usage);
    writer.start();
    writer.content(&response.content);
    if let Some(usage) = response.usage {
        writer.input_tokens(usage.input_tokens);
        writer.output_tokens(usage.output_tokens);
    }
    writer.finish(response.stop_reason.as_deref().unwrap_or("stop"));
    writer.done();
    writer.take()
}

/// A whole `chat.completion` as the `chat.completion.chunk` stream OpenAI would have sent: each
/// choice's message as one delta (tool calls numbered, as deltas carry them), its finish reason,
/// the usage chunk when asked for, and `[DONE]`. `None` when the body is not a completion.
pub fn stream_of_completion(body: &[u8], include_usage: bool) -> Option<Vec<u8>> {
    use serde_json::{json, Map, Value};

    let completion: Map<String, Value> = serde_json::from_slice(body).ok()?;
    let choices = completion
        .get("choices")?
        .as_array()
        .filter(|c| !c.is_empty())?;
    let chunk = |choices: Value, usage: Option<&Value>| {
        let mut chunk = Map::new();
        for field in [
            "id",
            "created",
            "model",
            "system_fingerprint",
            "service_tier",
        ] {
            if let Some(value) = completion.get(field) {
                chunk.insert(field.to_owned(), value.clone());
            }
        }
        chunk.insert("object".into(), "chat.completion.chunk".into());
        chunk.insert("choices".into(), choices);
        if let Some(usage) = usage {
            chunk.insert("usage".into(), usage.clone());
        }
        Value::Object(chunk)
    };
    let mut out = Vec::with_capacity(body.len() + 256);
    for (position, choice) in choices.iter().enumerate() {
        let choice = choice.as_object()?;
        let index = choice.get("index").cloned().unwrap_or(position.into());
        let mut delta = choice.get("message")?.as_object()?.clone();
        if let Some(Value::Array(calls)) = delta.get_mut("tool_calls") {
            for (number, call) in calls.iter_mut().enumerate() {
                if let Value::Object(call) = call {
                    call.insert("index".into(), number.into());
                }
            }
        }
        let deltas = [
            json!([{"index": index, "delta": delta, "logprobs": null, "finish_reason": null}]),
            json!([{"index": index, "delta": {}, "logprobs": null,
                    "finish_reason": choice.get("finish_reason").cloned().unwrap_or(Value::Null)}]),
        ];
        for choices in deltas {
            write_data(&mut out, &chunk(choices, None));
        }
    }
    if include_usage {
        if let Some(usage) = completion.get("usage") {
            write_data(&mut out, &chunk(json!([]), Some(usage)));
        }
    }
    out.extend_from_slice(b"data: [DONE]\n\n");
    Some(out)
}

/// Writes `chat.completion.chunk` SSE events: the role first, then content, the finish reason,
/// the usage chunk when asked for, and `[DONE]`.
pub struct ChunkWriter {
    id: String,
    created: u64,
    model: String,
    include_usage: bool,
    started: bool,
    usage: Option<Usage>,
    out: Vec<u8>,
}

impl ChunkWriter {
    /// `model` is the one asked for, until the upstream names the one that answers.
    pub fn new(model: &str, include_usage: bool) -> Self {
        Self {
            id: completion_id(),
            created: unix_now(),
            model: model.to_owned(),
            include_usage,
            started: false,
            usage: None,
            out: Vec::with_capacity(512),
        }
    }

    /// The model the upstream says is answering; used from the next chunk on.
    pub fn set_model(&mut self, model: &str) {
        if !self.started {
            model.clone_into(&mut self.model);
        }
    }

    /// The first chunk: the assistant's role. Written once, before anything else.
    pub fn start(&mut self) {
        if !self.started {
            self.started = true;
            self.chunk(Delta::Role, None);
        }
    }

    pub fn content(&mut self, text: &str) {
        self.start();
        if !text.is_empty() {
            self.chunk(Delta::Content(text), None);
        }
    }

    /// The chunk with the finish reason, given in the shared vocabulary.
    pub fn finish(&mut self, stop_reason: &str) {
        self.start();
        self.chunk(Delta::Empty, Some(finish_reason(stop_reason)));
    }

    /// Token counts so far; either side may come in a different event.
    pub fn input_tokens(&mut self, tokens: u64) {
        self.usage.get_or_insert(Usage::default()).input_tokens = tokens;
    }

    pub fn output_tokens(&mut self, tokens: u64) {
        self.usage.get_or_insert(Usage::default()).output_tokens = tokens;
    }

    /// The end of a clean stream: the usage chunk (when asked for), then `[DONE]`.
    pub fn done(&mut self) {
        self.start();
        if self.include_usage {
            let chunk = UsageChunk {
                id: &self.id,
                object: "chat.completion.chunk",
                created: self.created,
                model: &self.model,
                choices: [],
                usage: self.usage.unwrap_or_default().into(),
            };
            write_data(&mut self.out, &chunk);
        }
        self.out.extend_from_slice(b"data: [DONE]\n\n");
    }

    /// The token counts seen so far.
    pub fn usage(&self) -> Option<Usage> {
        self.usage
    }

    /// Takes what was written so far, to send it on.
    pub fn take(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.out)
    }

    fn chunk(&mut self, delta: Delta<'_>, finish_reason: Option<&str>) {
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
        write_data(&mut self.out, &chunk);
    }
}

fn write_data(out: &mut Vec<u8>, value: &impl Serialize) {
    out.extend_from_slice(b"data: ");
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

#[derive(Serialize)]
struct UsageChunk<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    choices: [(); 0],
    usage: OpenAiUsage,
}

enum Delta<'a> {
    Role,
    Content(&'a str),
    Empty,
}

impl Serialize for Delta<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(None)?;
        match self {
            Delta::Role => {
                map.serialize_entry("role", "assistant")?;
                map.serialize_entry("content", "")?;
            }
            Delta::Content(text) => map.serialize_entry("content", text)?,
            Delta::Empty => {}
        }
        map.end()
    }
}

/// `GET /v1/models`: every alias, then every provider as `provider/*` (any model of it).
pub fn models_body(registry: &Registry) -> Vec<u8> {
    #[derive(Serialize)]
    struct List<'a> {
        object: &'static str,
        data: Vec<Model<'a>>,
    }
    #[derive(Serialize)]
    struct Model<'a> {
        id: std::borrow::Cow<'a, str>,
        object: &'static str,
        created: u64,
        owned_by: &'a str,
    }
    let aliases = registry.aliases().iter().map(|alias| Model {
        id: alias.name.as_str().into(),
        object: "model",
        created: 0,
        owned_by: alias.provider,
    });
    let providers = registry.names().into_iter().map(|name| Model {
        id: format!("{name}/*").into(),
        object: "model",
        created: 0,
        owned_by: name,
    });
    let list = List {
        object: "list",
        data: aliases.chain(providers).collect(),
    };
    serde_json::to_vec(&list).expect("a model list always serializes")
}

/// Runs a whole upstream stream through a translator, for the wire formats' tests: the text
/// written, and its chunks as JSON (without `[DONE]`).
#[cfg(test)]
pub fn translate_whole_stream(
    mut translator: Box<dyn StreamTranslator>,
    stream: &[u8],
) -> (String, Vec<serde_json::Value>) {
    let mut out = ChunkWriter::new("asked-for", true);
    sse::Parser::default()
        .feed(stream, |event| translator.event(&event, &mut out))
        .expect("the stream translates");
    translator.end().expect("the stream is complete");
    out.done();
    let text = String::from_utf8(out.take()).expect("UTF-8 chunks");
    let chunks = text
        .split("\n\n")
        .filter_map(|e| e.strip_prefix("data: "))
        .filter(|data| *data != "[DONE]")
        .map(|data| serde_json::from_str(data).expect("JSON chunks"))
        .collect();
    (text, chunks)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{catalog::Catalog, config::Config};
    use serde_json::{json, Value};

    fn registry() -> Registry {
        Registry::new(&Config {
            catalog: Catalog::parse(
                r#"{"providers": {"openrouter": {"kind": "openai", "base_url": "https://openrouter.ai/api/v1"}},
                    "aliases": {"fast": {"provider": "openrouter", "model": "meta-llama/llama-3.1-8b"}}}"#,
            )
            .unwrap(),
            ..Config::default()
        })
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

    #[test]
    fn a_model_splits_at_the_first_slash_only() {
        let registry = registry();
        let (provider, model) = registry
            .resolve("openrouter/meta-llama/llama-3.1-70b")
            .unwrap();
        assert_eq!(provider.endpoint().name, "openrouter");
        assert_eq!(model, "meta-llama/llama-3.1-70b");
    }

    #[test]
    fn an_alias_names_its_provider_and_model() {
        let registry = registry();
        let (provider, model) = registry.resolve("fast").unwrap();
        assert_eq!(provider.endpoint().name, "openrouter");
        assert_eq!(model, "meta-llama/llama-3.1-8b");
    }

    #[test]
    fn unresolvable_models_are_refused_clearly() {
        let registry = registry();
        let err = registry.resolve("gpt-4o").err().unwrap();
        assert!(matches!(err, ProxyError::InvalidRequest(_)));
        assert!(err.to_string().contains("provider/model"), "{err}");
        assert!(err.to_string().contains("fast"), "{err}");
        let err = registry.resolve("nobody/model").err().unwrap();
        assert!(matches!(err, ProxyError::UnknownProvider { .. }));
        let err = registry.resolve("openai/").err().unwrap();
        assert!(matches!(err, ProxyError::InvalidRequest(_)));
    }

    #[test]
    fn a_normalized_answer_becomes_a_chat_completion() {
        let response = ChatResponse {
            provider: "anthropic",
            model: "claude-3-5-haiku-20241022".into(),
            content: "Hi!".into(),
            stop_reason: Some("length".into()),
            native_stop_reason: Some("max_tokens".into()),
            usage: Some(Usage {
                input_tokens: 5,
                output_tokens: 2,
            }),
        };
        let body: Value = serde_json::from_slice(&completion_body(&response)).unwrap();
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
    fn reasons_outside_openais_vocabulary_become_stop() {
        assert_eq!(finish_reason("pause_turn"), "stop");
        assert_eq!(finish_reason("content_filter"), "content_filter");
    }

    #[test]
    fn chunks_come_role_first_then_content_finish_usage_and_done() {
        let mut writer = ChunkWriter::new("asked", true);
        writer.set_model("claude-3-5-haiku-20241022");
        writer.input_tokens(9);
        writer.start();
        writer.content("Hel");
        writer.content("");
        writer.content("lo");
        writer.output_tokens(2);
        writer.finish("end_of_world");
        writer.done();
        let events = events(&writer.take());
        assert_eq!(events.len(), 6, "{events:?}");
        let ids: Vec<_> = events[..5].iter().map(|e| e["id"].clone()).collect();
        assert!(ids.iter().all(|id| *id == ids[0]));
        assert!(events[..5]
            .iter()
            .all(|e| e["object"] == "chat.completion.chunk"
                && e["model"] == "claude-3-5-haiku-20241022"));
        assert_eq!(
            events[0]["choices"][0]["delta"],
            json!({"role": "assistant", "content": ""})
        );
        assert_eq!(events[1]["choices"][0]["delta"], json!({"content": "Hel"}));
        assert_eq!(events[2]["choices"][0]["delta"], json!({"content": "lo"}));
        assert_eq!(events[3]["choices"][0]["delta"], json!({}));
        assert_eq!(events[3]["choices"][0]["finish_reason"], "stop");
        assert_eq!(events[4]["choices"], json!([]));
        assert_eq!(
            events[4]["usage"],
            json!({"prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11})
        );
        assert_eq!(events[5], "[DONE]");
    }

    #[test]
    fn without_include_usage_there_is_no_usage_chunk() {
        let mut writer = ChunkWriter::new("m", false);
        writer.content("x");
        writer.finish("stop");
        writer.done();
        let events = events(&writer.take());
        assert_eq!(events.len(), 4);
        assert!(events.iter().all(|e| e.get("usage").is_none()));
    }

    #[test]
    fn a_whole_answer_becomes_a_stream_of_chunks() {
        let response = ChatResponse {
            provider: "anthropic",
            model: "claude".into(),
            content: "Hi!".into(),
            stop_reason: Some("length".into()),
            native_stop_reason: Some("max_tokens".into()),
            usage: Some(Usage {
                input_tokens: 3,
                output_tokens: 1,
            }),
        };
        let events = events(&stream_of_response(&response, true));
        assert_eq!(events.len(), 5, "{events:?}");
        assert_eq!(events[1]["choices"][0]["delta"], json!({"content": "Hi!"}));
        assert_eq!(events[2]["choices"][0]["finish_reason"], "length");
        assert_eq!(events[3]["usage"]["total_tokens"], 4);
        assert_eq!(events[4], "[DONE]");
    }

    #[test]
    fn a_completion_with_tool_calls_becomes_chunks_that_keep_them() {
        let body = json!({"id": "chatcmpl-1", "object": "chat.completion", "created": 7, "model": "gpt",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": null,
                "tool_calls": [{"id": "call_1", "type": "function",
                    "function": {"name": "f", "arguments": "{}"}}]},
                "finish_reason": "tool_calls"}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}});
        let stream = stream_of_completion(body.to_string().as_bytes(), true).unwrap();
        let events = events(&stream);
        assert_eq!(events.len(), 4, "{events:?}");
        assert!(events[..3]
            .iter()
            .all(|e| e["object"] == "chat.completion.chunk"
                && e["id"] == "chatcmpl-1"
                && e["model"] == "gpt"));
        let delta = &events[0]["choices"][0]["delta"];
        assert_eq!(delta["role"], "assistant");
        assert_eq!(delta["tool_calls"][0]["index"], 0);
        assert_eq!(delta["tool_calls"][0]["function"]["name"], "f");
        assert_eq!(events[1]["choices"][0]["finish_reason"], "tool_calls");
        assert_eq!(events[2]["usage"]["total_tokens"], 7);
        assert_eq!(events[3], "[DONE]");
        assert_eq!(stream_of_completion(b"{\"choices\": []}", false), None);
        assert_eq!(stream_of_completion(b"<html>", false), None);
    }

    #[test]
    fn models_lists_aliases_then_providers() {
        let body: Value = serde_json::from_slice(&models_body(&registry())).unwrap();
        assert_eq!(body["object"], "list");
        let ids: Vec<_> = body["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["id"].as_str().unwrap())
            .collect();
        assert_eq!(
            ids,
            [
                "fast",
                "anthropic/*",
                "gemini/*",
                "ollama/*",
                "openai/*",
                "openrouter/*"
            ]
        );
        assert_eq!(body["data"][0]["owned_by"], "openrouter");
        assert_eq!(body["data"][0]["object"], "model");
    }
}
