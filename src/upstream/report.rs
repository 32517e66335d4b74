//! What a stream learns as it passes: its token counts, and how it ended.

use std::cell::Cell;

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
    input: Cell<Option<u64>>,
    output: Cell<Option<u64>>,
    broken: Cell<Option<Ending>>,
}

impl StreamReport {
    /// The upstream broke the stream: `UpstreamCut` or `Timeout`.
    pub fn end(&self, how: Ending) {
        self.broken.set(Some(how));
    }

    pub fn input(&self, tokens: u64) {
        self.input.set(Some(tokens));
    }

    pub fn output(&self, tokens: u64) {
        self.output.set(Some(tokens));
    }

    /// How the upstream broke the stream, if it did.
    pub fn broken(&self) -> Option<Ending> {
        self.broken.get()
    }

    pub fn usage(&self) -> Option<Usage> {
        match (self.input.get(), self.output.get()) {
            (None, None) => None,
            (input, output) => Some(Usage {
                input_tokens: input.unwrap_or(0),
                output_tokens: output.unwrap_or(0),
                ..Usage::default()
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_usage_is_reported_once_seen() {
        let usage = StreamReport::default();
        assert_eq!(usage.usage(), None);
        usage.input(7);
        usage.output(2);
        assert_eq!(
            usage.usage(),
            Some(Usage {
                input_tokens: 7,
                output_tokens: 2,
                ..Usage::default()
            })
        );
    }
}
