//! The Chat Completions shapes both directions share: tool calls, usage, finish reasons.

use serde::{Deserialize, Serialize};

use crate::model::{StopReason, Usage};

/// A tool call as a completion's message and a request's assistant message carry it.
#[derive(Debug, Serialize)]
pub struct ToolCallOut<'a> {
    pub id: &'a str,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub function: FunctionCallOut<'a>,
}

#[derive(Debug, Serialize)]
pub struct FunctionCallOut<'a> {
    pub name: &'a str,
    pub arguments: &'a str,
}

impl<'a> ToolCallOut<'a> {
    pub fn of(call: &'a crate::model::ToolCall) -> Self {
        Self {
            id: &call.id,
            kind: "function",
            function: FunctionCallOut {
                name: &call.name,
                arguments: &call.arguments,
            },
        }
    }
}

/// `usage` as OpenAI writes it. The details appear only when they say something, as
/// OpenAI-compatible servers other than OpenAI itself leave them out.
#[derive(Debug, Serialize, Clone, Copy)]
pub struct UsageOut {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prompt_tokens_details: Option<PromptDetailsOut>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub completion_tokens_details: Option<CompletionDetailsOut>,
}

#[derive(Debug, Serialize, Clone, Copy)]
pub struct PromptDetailsOut {
    pub cached_tokens: u64,
}

#[derive(Debug, Serialize, Clone, Copy)]
pub struct CompletionDetailsOut {
    pub reasoning_tokens: u64,
}

impl From<Usage> for UsageOut {
    /// Cache writes have no OpenAI field and are left out; every other count keeps its
    /// meaning, as [`Usage`] follows OpenAI's rule (prompt tokens include the cached ones).
    fn from(usage: Usage) -> Self {
        Self {
            prompt_tokens: usage.input_tokens,
            completion_tokens: usage.output_tokens,
            total_tokens: usage.input_tokens.saturating_add(usage.output_tokens),
            prompt_tokens_details: (usage.cache_read_tokens > 0).then_some(PromptDetailsOut {
                cached_tokens: usage.cache_read_tokens,
            }),
            completion_tokens_details: (usage.reasoning_tokens > 0).then_some(
                CompletionDetailsOut {
                    reasoning_tokens: usage.reasoning_tokens,
                },
            ),
        }
    }
}

/// `usage` as OpenAI and the servers that copy it write it: any count may be missing or null.
#[derive(Debug, Deserialize, Default)]
pub struct UsageIn {
    #[serde(default)]
    prompt_tokens: Option<u64>,
    #[serde(default)]
    completion_tokens: Option<u64>,
    #[serde(default)]
    prompt_tokens_details: Option<PromptDetailsIn>,
    #[serde(default)]
    completion_tokens_details: Option<CompletionDetailsIn>,
    /// DeepSeek's name for the cached prompt tokens, from before it also wrote
    /// `prompt_tokens_details`.
    #[serde(default)]
    prompt_cache_hit_tokens: Option<u64>,
}

#[derive(Debug, Deserialize, Default)]
struct PromptDetailsIn {
    #[serde(default)]
    cached_tokens: Option<u64>,
}

#[derive(Debug, Deserialize, Default)]
struct CompletionDetailsIn {
    #[serde(default)]
    reasoning_tokens: Option<u64>,
}

impl From<UsageIn> for Usage {
    fn from(usage: UsageIn) -> Self {
        let cached = usage
            .prompt_tokens_details
            .and_then(|details| details.cached_tokens)
            .or(usage.prompt_cache_hit_tokens);
        Usage {
            input_tokens: usage.prompt_tokens.unwrap_or(0),
            output_tokens: usage.completion_tokens.unwrap_or(0),
            cache_read_tokens: cached.unwrap_or(0),
            cache_write_tokens: 0,
            reasoning_tokens: usage
                .completion_tokens_details
                .and_then(|details| details.reasoning_tokens)
                .unwrap_or(0),
        }
    }
}

/// A stop reason in OpenAI's `finish_reason` vocabulary; one without an equivalent becomes
/// `stop`, the only reason every client takes as a normal end.
pub fn finish_reason(reason: &StopReason) -> &'static str {
    match reason {
        StopReason::Stop | StopReason::Other(_) => "stop",
        StopReason::Length => "length",
        StopReason::ToolCalls => "tool_calls",
        StopReason::ContentFilter => "content_filter",
    }
}

/// An upstream's `finish_reason` in the model's vocabulary. `stop` with tool calls in the
/// answer means the calls: some OpenAI-compatible servers (older Ollama and vLLM) say `stop`
/// there, and other doors' clients run the tools only on a tool-call stop.
pub fn stop_reason(finish_reason: &str, has_tool_calls: bool) -> StopReason {
    match finish_reason {
        "stop" if has_tool_calls => StopReason::ToolCalls,
        "stop" => StopReason::Stop,
        "length" => StopReason::Length,
        // The legacy function-calling name of the same thing.
        "tool_calls" | "function_call" => StopReason::ToolCalls,
        "content_filter" => StopReason::ContentFilter,
        other => StopReason::Other(other.to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_outside_openais_vocabulary_become_stop() {
        assert_eq!(
            finish_reason(&StopReason::Other("pause_turn".into())),
            "stop"
        );
        assert_eq!(finish_reason(&StopReason::ContentFilter), "content_filter");
        assert_eq!(stop_reason("function_call", false), StopReason::ToolCalls);
        assert_eq!(stop_reason("stop", true), StopReason::ToolCalls);
        assert_eq!(
            stop_reason("insufficient_system_resource", false),
            StopReason::Other("insufficient_system_resource".into())
        );
    }

    #[test]
    fn usage_details_appear_only_when_they_count_something() {
        let plain = serde_json::to_value(UsageOut::from(Usage {
            input_tokens: 5,
            output_tokens: 2,
            cache_write_tokens: 3,
            ..Usage::default()
        }))
        .unwrap();
        assert_eq!(
            plain,
            serde_json::json!({"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7})
        );
        let detailed: Usage = serde_json::from_str::<UsageIn>(
            r#"{"prompt_tokens":9,"completion_tokens":4,"prompt_tokens_details":{"cached_tokens":null},
                "prompt_cache_hit_tokens":6,"completion_tokens_details":{"reasoning_tokens":3}}"#,
        )
        .unwrap()
        .into();
        assert_eq!(
            detailed,
            Usage {
                input_tokens: 9,
                output_tokens: 4,
                cache_read_tokens: 6,
                cache_write_tokens: 0,
                reasoning_tokens: 3,
            }
        );
    }
}
