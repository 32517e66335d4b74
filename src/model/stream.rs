//! The one stream vocabulary: each format's decoder emits these events from its upstream
//! stream, and each door's encoder renders them in its own format, one at a time.
//!
//! Errors are not events: a decoder fails with the `ProxyError` (an in-band error event, a cut
//! stream), and the encoder renders it as its format's error event.

use super::{Part, Response, StopReason, ToolCall, Usage};

#[derive(Debug, Clone, PartialEq)]
pub enum StreamEvent {
    /// The answer begins. Sent once, first.
    Start {
        id: Option<String>,
        model: Option<String>,
    },
    Text(String),
    /// A tool call begins. `index` numbers the calls of the answer from 0, in the order they
    /// start; its argument fragments name the same index.
    ToolCallStart {
        index: usize,
        id: String,
        name: String,
    },
    ToolArguments {
        index: usize,
        fragment: String,
    },
    Reasoning(String),
    /// The signature of the reasoning so far (Anthropic's `signature_delta`).
    ReasoningSignature(String),
    RedactedReasoning(String),
    Stop {
        reason: StopReason,
        native: Option<String>,
    },
    /// Token counts; may come in pieces (see [`Usage::merge`]).
    Usage(Usage),
}

impl Response {
    /// The answer as the events a stream of it would have carried: for an upstream that
    /// answered a stream request with a whole answer, and for tests.
    pub fn events(&self) -> Vec<StreamEvent> {
        let mut events = vec![StreamEvent::Start {
            id: self.id.clone(),
            model: Some(self.model.clone()),
        }];
        let mut calls = 0;
        for part in &self.content {
            match part {
                Part::Text { text, .. } => events.push(StreamEvent::Text(text.clone())),
                Part::ToolCall(call) => {
                    events.push(StreamEvent::ToolCallStart {
                        index: calls,
                        id: call.id.clone(),
                        name: call.name.clone(),
                    });
                    if !call.arguments.is_empty() {
                        events.push(StreamEvent::ToolArguments {
                            index: calls,
                            fragment: call.arguments.clone(),
                        });
                    }
                    calls += 1;
                }
                Part::Reasoning { text, signature } => {
                    events.push(StreamEvent::Reasoning(text.clone()));
                    if let Some(signature) = signature {
                        events.push(StreamEvent::ReasoningSignature(signature.clone()));
                    }
                }
                Part::RedactedReasoning { data } => {
                    events.push(StreamEvent::RedactedReasoning(data.clone()))
                }
                Part::Image { .. } | Part::ToolResult(_) => {}
            }
        }
        if let Some(usage) = self.usage {
            events.push(StreamEvent::Usage(usage));
        }
        events.push(StreamEvent::Stop {
            reason: self.stop_reason.clone().unwrap_or(StopReason::Stop),
            native: self.native_stop_reason.clone(),
        });
        events
    }
}

/// Builds the whole answer from a stream's events: what a client's SDK does, for tests and
/// for anything that needs the answer a stream carried.
#[derive(Debug, Default)]
pub struct Collector {
    response: Response,
    /// Where each tool call index sits in `response.content`.
    calls: Vec<usize>,
}

impl Collector {
    pub fn event(&mut self, event: StreamEvent) {
        let content = &mut self.response.content;
        match event {
            StreamEvent::Start { id, model } => {
                self.response.id = id.or(self.response.id.take());
                if let Some(model) = model {
                    self.response.model = model;
                }
            }
            StreamEvent::Text(text) => match content.last_mut() {
                Some(Part::Text { text: last, .. }) => last.push_str(&text),
                _ => content.push(Part::text(text)),
            },
            StreamEvent::ToolCallStart { index, id, name } => {
                if self.calls.len() <= index {
                    self.calls.resize(index + 1, usize::MAX);
                }
                self.calls[index] = content.len();
                content.push(Part::ToolCall(ToolCall {
                    id,
                    name,
                    arguments: String::new(),
                    cache_control: None,
                }));
            }
            StreamEvent::ToolArguments { index, fragment } => {
                let at = self.calls.get(index).copied();
                if let Some(Part::ToolCall(call)) = at.and_then(|at| content.get_mut(at)) {
                    call.arguments.push_str(&fragment);
                }
            }
            StreamEvent::Reasoning(text) => match content.last_mut() {
                Some(Part::Reasoning {
                    text: last,
                    signature: None,
                }) => last.push_str(&text),
                _ => content.push(Part::Reasoning {
                    text,
                    signature: None,
                }),
            },
            StreamEvent::ReasoningSignature(signature) => match content.last_mut() {
                Some(Part::Reasoning {
                    signature: last, ..
                }) => last.get_or_insert_with(String::new).push_str(&signature),
                _ => content.push(Part::Reasoning {
                    text: String::new(),
                    signature: Some(signature),
                }),
            },
            StreamEvent::RedactedReasoning(data) => content.push(Part::RedactedReasoning { data }),
            StreamEvent::Stop { reason, native } => {
                self.response.stop_reason = Some(reason);
                self.response.native_stop_reason = native;
            }
            StreamEvent::Usage(usage) => self
                .response
                .usage
                .get_or_insert_with(Usage::default)
                .merge(&usage),
        }
    }

    pub fn finish(self) -> Response {
        self.response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_survives_becoming_events_and_back() {
        let response = Response {
            id: Some("msg_1".into()),
            model: "m".into(),
            content: vec![
                Part::Reasoning {
                    text: "hmm".into(),
                    signature: Some("sig".into()),
                },
                Part::text("Let me look."),
                Part::ToolCall(ToolCall {
                    id: "call_1".into(),
                    name: "get_weather".into(),
                    arguments: r#"{"city":"Paris"}"#.into(),
                    cache_control: None,
                }),
                Part::ToolCall(ToolCall {
                    id: "call_2".into(),
                    name: "get_time".into(),
                    arguments: String::new(),
                    cache_control: None,
                }),
            ],
            stop_reason: Some(StopReason::ToolCalls),
            native_stop_reason: Some("tool_use".into()),
            usage: Some(Usage {
                input_tokens: 3,
                output_tokens: 4,
                ..Usage::default()
            }),
        };
        let mut collector = Collector::default();
        for event in response.events() {
            collector.event(event);
        }
        assert_eq!(collector.finish(), response);
    }
}
