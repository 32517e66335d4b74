//! A chat request in the proxy's own terms: what a door parsed, before an upstream format is
//! chosen.

use serde_json::Value;

/// One chat request, whatever door it came through.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Request {
    /// The model as the caller named it (`provider/model`, an alias, a bare name).
    pub model: String,
    /// The system prompt: the leading system (and OpenAI `developer`) messages, or Anthropic's
    /// `system`. Text parts only; each may carry a `cache_control`.
    pub system: Vec<Part>,
    pub messages: Vec<Message>,
    pub tools: Vec<Tool>,
    pub tool_choice: Option<ToolChoice>,
    /// `Some(false)`: at most one tool call per turn.
    pub parallel_tool_calls: Option<bool>,
    pub response_format: Option<ResponseFormat>,
    pub max_tokens: Option<u64>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub top_k: Option<u64>,
    pub stop: Vec<String>,
    pub seed: Option<i64>,
    pub reasoning: Option<Reasoning>,
    /// An end user's id, for the provider's abuse monitoring.
    pub user: Option<String>,
    pub stream: bool,
    /// The caller wants the stream's token counts (OpenAI's `stream_options.include_usage`).
    pub include_usage: bool,
    /// Top-level fields the door did not read, in the order they came: passed on to the
    /// upstream as given (provider-specific settings such as Gemini's `safetySettings`).
    pub extras: Vec<(String, Value)>,
    /// Fields the door read that only its own format can express (OpenAI's `n: 3`, Anthropic's
    /// server tools): a request with any goes nowhere but to an upstream of the door's own
    /// format, and elsewhere is refused with a 400 naming the first.
    pub unportable: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// A system message after the conversation began (OpenAI allows them anywhere, Claude
    /// Code sends one after the user's turn). Formats without one there fold it into the
    /// system prompt.
    System,
    User,
    Assistant,
    /// Results of tool calls: only [`Part::ToolResult`]s.
    Tool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub role: Role,
    pub content: Vec<Part>,
}

impl Message {
    pub fn text(role: Role, text: impl Into<String>) -> Self {
        Self {
            role,
            content: vec![Part::text(text)],
        }
    }
}

/// One piece of a message.
#[derive(Debug, Clone, PartialEq)]
pub enum Part {
    Text {
        text: String,
        /// Anthropic's prompt-caching marker, kept for Anthropic upstreams.
        cache_control: Option<Value>,
    },
    Image {
        image: Image,
        cache_control: Option<Value>,
    },
    /// An assistant's call of a tool.
    ToolCall(ToolCall),
    /// The result of a call, in a [`Role::Tool`] message.
    ToolResult(ToolResult),
    /// The model's reasoning, with the signature that lets it be sent back (Anthropic).
    Reasoning {
        text: String,
        signature: Option<String>,
    },
    /// Reasoning the provider keeps encrypted; only its own format can send it back.
    RedactedReasoning { data: String },
}

impl Part {
    pub fn text(text: impl Into<String>) -> Self {
        Part::Text {
            text: text.into(),
            cache_control: None,
        }
    }

    /// The text of a text part.
    pub fn as_text(&self) -> Option<&str> {
        match self {
            Part::Text { text, .. } => Some(text),
            _ => None,
        }
    }
}

/// An image, by URL or inline, with its media type.
#[derive(Debug, Clone, PartialEq)]
pub enum Image {
    Url {
        url: String,
        media_type: &'static str,
    },
    /// Base64 data, as it came.
    Base64 {
        media_type: &'static str,
        data: String,
    },
}

/// A tool call. `arguments` is the JSON text of the arguments as the model wrote it: a model
/// may write invalid JSON, which is passed on as text, never dropped.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolCall {
    pub id: String,
    pub name: String,
    pub arguments: String,
    pub cache_control: Option<Value>,
}

impl ToolCall {
    /// The arguments as a JSON object when they are one; formats that carry objects
    /// (Anthropic, Gemini) need it. Anything else is wrapped as `{"arguments": <text>}`.
    pub fn arguments_object(&self) -> Value {
        match serde_json::from_str::<Value>(&self.arguments) {
            Ok(value @ Value::Object(_)) => value,
            _ if self.arguments.trim().is_empty() => Value::Object(Default::default()),
            _ => serde_json::json!({ "arguments": self.arguments }),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ToolResult {
    /// The id of the call this answers.
    pub call_id: String,
    /// Text and image parts.
    pub content: Vec<Part>,
    pub is_error: bool,
    pub cache_control: Option<Value>,
}

impl ToolResult {
    /// The text parts of the result, joined.
    pub fn text(&self) -> String {
        self.content.iter().filter_map(Part::as_text).collect()
    }
}

/// A function the model may call.
#[derive(Debug, Clone, PartialEq)]
pub struct Tool {
    pub name: String,
    pub description: Option<String>,
    /// The JSON schema of the arguments.
    pub parameters: Value,
    pub cache_control: Option<Value>,
    /// Calls must follow the schema exactly (OpenAI's `function.strict`); `None` when the
    /// caller did not say.
    pub strict: Option<bool>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ToolChoice {
    Auto,
    None,
    /// Some tool must be called.
    Required,
    /// This tool must be called.
    Tool(String),
}

#[derive(Debug, Clone, PartialEq)]
pub enum ResponseFormat {
    Text,
    JsonObject,
    JsonSchema {
        name: String,
        description: Option<String>,
        schema: Value,
        strict: Option<bool>,
    },
}

/// How much the model should think before it answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reasoning {
    /// Thinking off.
    Disabled,
    /// The provider decides how much (Anthropic's `adaptive`).
    Adaptive,
    Effort(Effort),
    /// At most this many thinking tokens.
    Budget(u64),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effort {
    Minimal,
    Low,
    Medium,
    High,
}

impl Effort {
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "minimal" => Some(Effort::Minimal),
            "low" => Some(Effort::Low),
            "medium" => Some(Effort::Medium),
            "high" | "max" | "xhigh" => Some(Effort::High),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Effort::Minimal => "minimal",
            Effort::Low => "low",
            Effort::Medium => "medium",
            Effort::High => "high",
        }
    }

    /// The thinking budget an effort stands for, for formats that take a token budget
    /// (Anthropic's minimum is 1,024).
    pub fn budget_tokens(self) -> u64 {
        match self {
            Effort::Minimal | Effort::Low => 1024,
            Effort::Medium => 2048,
            Effort::High => 4096,
        }
    }

    /// The effort a budget stands for: the inverse of [`Effort::budget_tokens`].
    pub fn of_budget(budget: u64) -> Self {
        match budget {
            0..=1024 => Effort::Low,
            1025..=2048 => Effort::Medium,
            _ => Effort::High,
        }
    }
}

impl Reasoning {
    /// The token budget this asks for; `None` when thinking is off.
    pub fn budget_tokens(self) -> Option<u64> {
        match self {
            Reasoning::Disabled => None,
            Reasoning::Adaptive => Some(Effort::Medium.budget_tokens()),
            Reasoning::Effort(effort) => Some(effort.budget_tokens()),
            Reasoning::Budget(budget) => Some(budget),
        }
    }

    /// The effort this asks for; `None` when thinking is off.
    pub fn effort(self) -> Option<Effort> {
        match self {
            Reasoning::Disabled => None,
            Reasoning::Adaptive => Some(Effort::Medium),
            Reasoning::Effort(effort) => Some(effort),
            Reasoning::Budget(budget) => Some(Effort::of_budget(budget)),
        }
    }
}

impl Request {
    /// Whether any message holds an image (some targets or models cannot take them).
    pub fn has_images(&self) -> bool {
        self.messages.iter().any(|m| {
            m.content.iter().any(|p| match p {
                Part::Image { .. } => true,
                Part::ToolResult(result) => result
                    .content
                    .iter()
                    .any(|p| matches!(p, Part::Image { .. })),
                _ => false,
            })
        })
    }

    /// The name of the tool a call id belongs to, from the assistant turns before: Gemini
    /// answers a call by the tool's name, not the call's id.
    pub fn tool_name_of(&self, call_id: &str) -> Option<&str> {
        self.messages
            .iter()
            .flat_map(|m| &m.content)
            .find_map(|part| match part {
                Part::ToolCall(call) if call.id == call_id => Some(call.name.as_str()),
                _ => None,
            })
    }

    /// The system prompt's text, its parts joined by a blank line.
    pub fn system_text(&self) -> String {
        let texts: Vec<&str> = self.system.iter().filter_map(Part::as_text).collect();
        texts.join("\n\n")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn call(arguments: &str) -> ToolCall {
        ToolCall {
            id: "c".into(),
            name: "f".into(),
            arguments: arguments.into(),
            cache_control: None,
        }
    }

    #[test]
    fn arguments_become_an_object_or_are_kept_as_text() {
        assert_eq!(call(r#"{"a":1}"#).arguments_object(), json!({"a": 1}));
        assert_eq!(call("").arguments_object(), json!({}));
        assert_eq!(
            call("{not json").arguments_object(),
            json!({"arguments": "{not json"})
        );
        assert_eq!(call("[1]").arguments_object(), json!({"arguments": "[1]"}));
    }

    #[test]
    fn efforts_and_budgets_map_both_ways() {
        for effort in [Effort::Low, Effort::Medium, Effort::High] {
            assert_eq!(Effort::of_budget(effort.budget_tokens()), effort);
        }
        assert_eq!(Reasoning::Disabled.budget_tokens(), None);
        assert_eq!(Reasoning::Budget(5000).effort(), Some(Effort::High));
    }

    #[test]
    fn a_call_ids_tool_name_is_found_in_earlier_turns() {
        let request = Request {
            messages: vec![Message {
                role: Role::Assistant,
                content: vec![Part::ToolCall(call("{}"))],
            }],
            ..Request::default()
        };
        assert_eq!(request.tool_name_of("c"), Some("f"));
        assert_eq!(request.tool_name_of("d"), None);
    }
}
