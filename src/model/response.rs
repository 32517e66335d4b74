//! An answer in the proxy's own terms, whatever format the upstream spoke.

use super::{Part, ToolCall, Usage};

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Response {
    /// The upstream's id for the answer, when it gave one.
    pub id: Option<String>,
    /// The model that answered (the one asked for when the upstream does not say).
    pub model: String,
    /// Text, tool calls and reasoning, in the order the model produced them.
    pub content: Vec<Part>,
    pub stop_reason: Option<StopReason>,
    /// The upstream's own stop reason, unmapped.
    pub native_stop_reason: Option<String>,
    pub usage: Option<Usage>,
}

/// Why the model stopped, in one vocabulary (OpenAI's `finish_reason` names).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopReason {
    /// A natural end, or a stop sequence.
    Stop,
    /// The token limit.
    Length,
    ToolCalls,
    ContentFilter,
    /// A reason with no equivalent, as the upstream named it.
    Other(String),
}

impl StopReason {
    pub fn as_str(&self) -> &str {
        match self {
            StopReason::Stop => "stop",
            StopReason::Length => "length",
            StopReason::ToolCalls => "tool_calls",
            StopReason::ContentFilter => "content_filter",
            StopReason::Other(native) => native,
        }
    }
}

impl Response {
    /// Every text part, joined.
    pub fn text(&self) -> String {
        self.content.iter().filter_map(Part::as_text).collect()
    }

    /// Every reasoning part's text, joined; `None` when there is none.
    pub fn reasoning(&self) -> Option<String> {
        let mut texts = self.content.iter().filter_map(|part| match part {
            Part::Reasoning { text, .. } => Some(text.as_str()),
            _ => None,
        });
        let first = texts.next()?;
        Some(texts.fold(first.to_owned(), |all, text| all + text))
    }

    pub fn tool_calls(&self) -> impl Iterator<Item = &ToolCall> {
        self.content.iter().filter_map(|part| match part {
            Part::ToolCall(call) => Some(call),
            _ => None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_and_reasoning_are_joined_and_calls_listed() {
        let response = Response {
            content: vec![
                Part::Reasoning {
                    text: "think".into(),
                    signature: None,
                },
                Part::text("a"),
                Part::ToolCall(ToolCall {
                    id: "1".into(),
                    name: "f".into(),
                    arguments: "{}".into(),
                    cache_control: None,
                }),
                Part::text("b"),
            ],
            ..Response::default()
        };
        assert_eq!(response.text(), "ab");
        assert_eq!(response.reasoning().as_deref(), Some("think"));
        assert_eq!(response.tool_calls().count(), 1);
        assert_eq!(Response::default().reasoning(), None);
    }
}
