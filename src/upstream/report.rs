//! What a stream learns as it passes: its token counts (cached and reasoning ones too), and
//! how it ended.

use std::cell::{Cell, RefCell};

use crate::model::Usage;

/// How a response ended, for the `outcome` of the access log and the metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ending {
    /// It went out whole, whatever its status.
    Whole,
    /// The caller left before its end.
    ClientClosed,
    /// The upstream broke a stream after its 200 (a reset, a cut, an error event, an event
    /// the proxy could not read): it ended with our error event.
    UpstreamCut,
    /// The upstream went silent in a stream after its 200, past `HTTP_TIMEOUT_SECONDS`.
    Timeout,
}

impl Ending {
    pub fn label(self) -> &'static str {
        match self {
            Ending::Whole => "ok",
            Ending::ClientClosed => "client_closed",
            Ending::UpstreamCut => "upstream_cut",
            Ending::Timeout => "timeout",
        }
    }
}

/// What a stream learns as it passes, shared between the stream and the log: the token counts
/// it carries, and how the upstream ended it when it broke.
#[derive(Debug, Default)]
pub struct StreamReport {
    usage: Cell<Option<Usage>>,
    /// The model the stream says answered, as its first event naming one gave it.
    model: RefCell<Option<String>>,
    broken: Cell<Option<Ending>>,
}

impl StreamReport {
    /// The upstream broke the stream: `UpstreamCut` or `Timeout`.
    pub fn end(&self, how: Ending) {
        self.broken.set(Some(how));
    }

    /// Token counts the stream carried: each count given (non-zero) replaces the one seen
    /// before, as usage arrives in pieces (Anthropic's input in `message_start`, its output
    /// in `message_delta`).
    pub fn usage_seen(&self, usage: &Usage) {
        let mut seen = self.usage.get().unwrap_or_default();
        seen.merge(usage);
        self.usage.set(Some(seen));
    }

    /// How the upstream broke the stream, if it did.
    pub fn broken(&self) -> Option<Ending> {
        self.broken.get()
    }

    /// The stream names the model answering (priced before the one asked for); the first
    /// name is kept.
    pub fn model_seen(&self, model: &str) {
        let mut seen = self.model.borrow_mut();
        if seen.is_none() {
            *seen = Some(model.to_owned());
        }
    }

    /// The model the stream said answered, if it named one.
    pub fn answered_model(&self) -> Option<String> {
        self.model.borrow().clone()
    }

    /// Every count seen so far, cached and reasoning ones too; `None` before any.
    pub fn usage(&self) -> Option<Usage> {
        self.usage.get()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_usage_is_reported_once_seen() {
        let usage = StreamReport::default();
        assert_eq!(usage.usage(), None);
        usage.usage_seen(&Usage {
            input_tokens: 7,
            cache_read_tokens: 5,
            ..Usage::default()
        });
        usage.usage_seen(&Usage {
            output_tokens: 2,
            reasoning_tokens: 1,
            ..Usage::default()
        });
        assert_eq!(
            usage.usage(),
            Some(Usage {
                input_tokens: 7,
                output_tokens: 2,
                cache_read_tokens: 5,
                reasoning_tokens: 1,
                ..Usage::default()
            })
        );
    }
}
