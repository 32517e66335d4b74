//! Anthropic Messages' wire shapes, read and written by both the door and the upstream.
//!
//! What is read is flat (`type` beside every field it may have, values left raw where they are
//! opaque), so a block is parsed in one pass without buffering, and a tool's `input` is copied
//! as it came. What is written is tagged enums of borrowed values.

use serde::{ser::SerializeMap, Deserialize, Serialize, Serializer};
use serde_json::{value::RawValue, Value};

use crate::model::{Image, Part, StopReason, ToolCall, Usage};

/// The image media types Anthropic takes.
pub const MEDIA_TYPES: [&str; 4] = ["image/jpeg", "image/png", "image/gif", "image/webp"];

/// The stop reasons Anthropic documents, which a door may send as they are.
pub const STOP_REASONS: [&str; 7] = [
    "end_turn",
    "max_tokens",
    "stop_sequence",
    "tool_use",
    "pause_turn",
    "refusal",
    "model_context_window_exceeded",
];

/// Anthropic's stop reason in the model's vocabulary.
pub fn stop_reason(native: &str) -> StopReason {
    match native {
        "end_turn" | "stop_sequence" => StopReason::Stop,
        "max_tokens" => StopReason::Length,
        "tool_use" => StopReason::ToolCalls,
        "refusal" => StopReason::ContentFilter,
        other => StopReason::Other(other.to_owned()),
    }
}

/// The model's stop reason in Anthropic's vocabulary. The native reason is kept when it is
/// Anthropic's own and says the same (`stop_sequence` for a stop), so an answer from Anthropic
/// goes back unchanged; a reason Anthropic has no name for becomes `end_turn`.
pub fn native_stop_reason<'a>(reason: &'a StopReason, native: Option<&'a str>) -> &'a str {
    if let Some(native) = native.filter(|n| STOP_REASONS.contains(n)) {
        if stop_reason(native) == *reason {
            return native;
        }
    }
    match reason {
        StopReason::Stop => "end_turn",
        StopReason::Length => "max_tokens",
        StopReason::ToolCalls => "tool_use",
        StopReason::ContentFilter => "refusal",
        StopReason::Other(other) if STOP_REASONS.contains(&other.as_str()) => other,
        StopReason::Other(_) => "end_turn",
    }
}

/// JSON text without the whitespace between its tokens, keys in their order: a tool's input
/// as the model's arguments. `json` must be valid JSON (a `RawValue`'s text).
pub fn compact_json(json: &str) -> String {
    let mut out = String::with_capacity(json.len());
    let mut in_string = false;
    let mut escaped = false;
    for c in json.chars() {
        if in_string {
            out.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
        } else if !matches!(c, ' ' | '\t' | '\n' | '\r') {
            in_string = c == '"';
            out.push(c);
        }
    }
    out
}

/// A block's fields, as any block type may have them. Values stay raw: each is read by the
/// code that knows the block's type, which can say exactly which field is wrong.
#[derive(Deserialize)]
pub struct RawBlock<'a> {
    #[serde(rename = "type", borrow)]
    pub kind: Option<&'a RawValue>,
    #[serde(borrow)]
    pub text: Option<&'a RawValue>,
    #[serde(borrow)]
    pub source: Option<&'a RawValue>,
    #[serde(borrow)]
    pub id: Option<&'a RawValue>,
    #[serde(borrow)]
    pub name: Option<&'a RawValue>,
    #[serde(borrow)]
    pub input: Option<&'a RawValue>,
    #[serde(borrow)]
    pub tool_use_id: Option<&'a RawValue>,
    #[serde(borrow)]
    pub content: Option<&'a RawValue>,
    #[serde(borrow)]
    pub is_error: Option<&'a RawValue>,
    #[serde(borrow)]
    pub cache_control: Option<&'a RawValue>,
    #[serde(borrow)]
    pub thinking: Option<&'a RawValue>,
    #[serde(borrow)]
    pub signature: Option<&'a RawValue>,
    #[serde(borrow)]
    pub data: Option<&'a RawValue>,
}

/// A content block of an answer, or the `content_block` of a `content_block_start` event.
/// Unknown block types are kept by their `kind` and skipped by the reader.
#[derive(Deserialize)]
pub struct AnswerBlock<'a> {
    #[serde(rename = "type", borrow)]
    pub kind: std::borrow::Cow<'a, str>,
    #[serde(default)]
    pub text: Option<String>,
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default, borrow)]
    pub input: Option<&'a RawValue>,
    #[serde(default)]
    pub thinking: Option<String>,
    #[serde(default)]
    pub signature: Option<String>,
    #[serde(default)]
    pub data: Option<String>,
}

/// Anthropic's token counts: `input_tokens` is only the uncached part of the prompt.
#[derive(Deserialize, Default, Clone, Copy)]
pub struct WireUsage {
    #[serde(default)]
    pub input_tokens: Option<u64>,
    #[serde(default)]
    pub output_tokens: Option<u64>,
    #[serde(default)]
    pub cache_creation_input_tokens: Option<u64>,
    #[serde(default)]
    pub cache_read_input_tokens: Option<u64>,
}

impl WireUsage {
    /// Takes every count `other` reports over this one's (a stream's `message_delta` repeats
    /// some of `message_start`'s, cumulatively).
    pub fn merge(&mut self, other: &WireUsage) {
        self.input_tokens = other.input_tokens.or(self.input_tokens);
        self.output_tokens = other.output_tokens.or(self.output_tokens);
        self.cache_creation_input_tokens = other
            .cache_creation_input_tokens
            .or(self.cache_creation_input_tokens);
        self.cache_read_input_tokens = other
            .cache_read_input_tokens
            .or(self.cache_read_input_tokens);
    }

    /// In the model's rule, where `input_tokens` counts the cached prompt tokens too.
    pub fn to_usage(self) -> Usage {
        let read = self.cache_read_input_tokens.unwrap_or(0);
        let write = self.cache_creation_input_tokens.unwrap_or(0);
        Usage {
            input_tokens: self.input_tokens.unwrap_or(0) + read + write,
            output_tokens: self.output_tokens.unwrap_or(0),
            cache_read_tokens: read,
            cache_write_tokens: write,
            reasoning_tokens: 0,
        }
    }
}

/// Token counts as Anthropic writes them: the prompt's uncached part apart from the cached.
#[derive(Serialize, Debug, Clone, Copy)]
pub struct UsageOut {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub input_tokens: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache_creation_input_tokens: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache_read_input_tokens: Option<u64>,
    pub output_tokens: u64,
}

impl UsageOut {
    /// Every count, as in a whole message.
    pub fn of(usage: &Usage) -> Self {
        Self {
            input_tokens: Some(usage.uncached_input_tokens()),
            cache_creation_input_tokens: Some(usage.cache_write_tokens),
            cache_read_input_tokens: Some(usage.cache_read_tokens),
            output_tokens: usage.output_tokens,
        }
    }
}

/// One content block to write, in a request or an answer.
#[derive(Serialize, Debug)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum BlockOut<'a> {
    Text {
        text: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        cache_control: Option<&'a Value>,
    },
    Image {
        source: SourceOut<'a>,
        #[serde(skip_serializing_if = "Option::is_none")]
        cache_control: Option<&'a Value>,
    },
    ToolUse {
        id: &'a str,
        name: &'a str,
        input: Input<'a>,
        #[serde(skip_serializing_if = "Option::is_none")]
        cache_control: Option<&'a Value>,
    },
    ToolResult {
        tool_use_id: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        content: Option<Content<'a>>,
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        is_error: bool,
        #[serde(skip_serializing_if = "Option::is_none")]
        cache_control: Option<&'a Value>,
    },
    Thinking {
        thinking: &'a str,
        signature: &'a str,
    },
    RedactedThinking {
        data: &'a str,
    },
}

impl<'a> BlockOut<'a> {
    /// A text or image part as a block; `None` for the parts that are not content.
    pub fn of_media(part: &'a Part) -> Option<Self> {
        match part {
            Part::Text {
                text,
                cache_control,
            } => Some(BlockOut::Text {
                text,
                cache_control: cache_control.as_ref(),
            }),
            Part::Image {
                image,
                cache_control,
            } => Some(BlockOut::Image {
                source: SourceOut::of(image),
                cache_control: cache_control.as_ref(),
            }),
            _ => None,
        }
    }

    /// A tool call as a `tool_use` block.
    pub fn tool_use(call: &'a ToolCall) -> Self {
        BlockOut::ToolUse {
            id: &call.id,
            name: &call.name,
            input: Input::of(call),
            cache_control: call.cache_control.as_ref(),
        }
    }
}

#[derive(Serialize, Debug)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum SourceOut<'a> {
    Base64 { media_type: &'a str, data: &'a str },
    Url { url: &'a str },
}

impl<'a> SourceOut<'a> {
    pub fn of(image: &'a Image) -> Self {
        match image {
            Image::Base64 { media_type, data } => SourceOut::Base64 { media_type, data },
            Image::Url { url, .. } => SourceOut::Url { url },
        }
    }
}

/// A turn's or a `tool_result`'s content: one plain text as a string, anything else as blocks.
#[derive(Serialize, Debug)]
#[serde(untagged)]
pub enum Content<'a> {
    Text(&'a str),
    Blocks(Vec<BlockOut<'a>>),
}

/// A tool's `input`: the call's arguments as they came when they are a JSON object (keys in
/// the model's order), else [`ToolCall::arguments_object`]; `{}` for a stream's opening block.
#[derive(Debug)]
pub enum Input<'a> {
    Raw(&'a RawValue),
    Value(Value),
    Empty,
}

impl<'a> Input<'a> {
    pub fn of(call: &'a ToolCall) -> Self {
        match serde_json::from_str::<&RawValue>(&call.arguments) {
            Ok(raw) if raw.get().starts_with('{') => Input::Raw(raw),
            _ => Input::Value(call.arguments_object()),
        }
    }
}

impl Serialize for Input<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Input::Raw(raw) => raw.serialize(serializer),
            Input::Value(value) => value.serialize(serializer),
            Input::Empty => serializer.serialize_map(Some(0))?.end(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compacting_keeps_strings_and_key_order() {
        assert_eq!(
            compact_json("{ \"b\" : [1, 2],\n \"a\": \"x y \\\" z\" }"),
            r#"{"b":[1,2],"a":"x y \" z"}"#
        );
        assert_eq!(compact_json(r#""a\\" "#), r#""a\\""#);
    }

    #[test]
    fn stop_reasons_map_both_ways() {
        for (native, reason) in [
            ("end_turn", StopReason::Stop),
            ("stop_sequence", StopReason::Stop),
            ("max_tokens", StopReason::Length),
            ("tool_use", StopReason::ToolCalls),
            ("refusal", StopReason::ContentFilter),
            ("pause_turn", StopReason::Other("pause_turn".into())),
        ] {
            assert_eq!(stop_reason(native), reason);
            assert_eq!(native_stop_reason(&reason, Some(native)), native);
        }
        assert_eq!(
            native_stop_reason(&StopReason::Stop, Some("stop")),
            "end_turn"
        );
        assert_eq!(
            native_stop_reason(&StopReason::Length, Some("end_turn")),
            "max_tokens"
        );
        assert_eq!(
            native_stop_reason(&StopReason::Other("SAFETY".into()), None),
            "end_turn"
        );
    }

    #[test]
    fn inputs_keep_the_arguments_object_as_written() {
        let call = |arguments: &str| ToolCall {
            id: "t".into(),
            name: "f".into(),
            arguments: arguments.into(),
            cache_control: None,
        };
        let write = |call: &ToolCall| serde_json::to_string(&Input::of(call)).unwrap();
        assert_eq!(write(&call(r#"{"b":1,"a":2}"#)), r#"{"b":1,"a":2}"#);
        assert_eq!(write(&call("")), "{}");
        assert_eq!(write(&call("[1]")), r#"{"arguments":"[1]"}"#);
        assert_eq!(write(&call("{oops")), r#"{"arguments":"{oops"}"#);
        assert_eq!(serde_json::to_string(&Input::Empty).unwrap(), "{}");
    }
}
