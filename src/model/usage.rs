//! Token counts, in one rule across providers.

use serde::Serialize;

/// Token counts of one answer.
///
/// The rule: `input_tokens` counts **every** prompt token, cached or not (OpenAI's
/// `prompt_tokens`, Gemini's `promptTokenCount`); `cache_read_tokens` and `cache_write_tokens`
/// are the parts of it read from and written to the provider's prompt cache. Anthropic reports
/// its uncached `input_tokens` apart from the cached ones, so its decoder adds them up and its
/// encoder takes them apart again. `output_tokens` counts every generated token, reasoning
/// included (OpenAI's `completion_tokens`); `reasoning_tokens` is the reasoning part of it.
#[derive(Debug, Serialize, PartialEq, Eq, Clone, Copy, Default)]
pub struct Usage {
    pub input_tokens: u64,
    pub output_tokens: u64,
    #[serde(skip_serializing_if = "is_zero")]
    pub cache_read_tokens: u64,
    #[serde(skip_serializing_if = "is_zero")]
    pub cache_write_tokens: u64,
    #[serde(skip_serializing_if = "is_zero")]
    pub reasoning_tokens: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl Usage {
    /// Takes every count `other` has (non-zero) over this one's: usage arrives in pieces in a
    /// stream (Anthropic's input in `message_start`, output in `message_delta`).
    pub fn merge(&mut self, other: &Usage) {
        let take = |mine: &mut u64, theirs: u64| {
            if theirs != 0 {
                *mine = theirs;
            }
        };
        take(&mut self.input_tokens, other.input_tokens);
        take(&mut self.output_tokens, other.output_tokens);
        take(&mut self.cache_read_tokens, other.cache_read_tokens);
        take(&mut self.cache_write_tokens, other.cache_write_tokens);
        take(&mut self.reasoning_tokens, other.reasoning_tokens);
    }

    /// Prompt tokens not read from or written to the cache (Anthropic's `input_tokens`).
    pub fn uncached_input_tokens(&self) -> u64 {
        self.input_tokens
            .saturating_sub(self.cache_read_tokens)
            .saturating_sub(self.cache_write_tokens)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merging_keeps_what_each_piece_reported() {
        let mut usage = Usage {
            input_tokens: 25,
            cache_read_tokens: 5,
            ..Usage::default()
        };
        usage.merge(&Usage {
            output_tokens: 15,
            ..Usage::default()
        });
        assert_eq!(
            usage,
            Usage {
                input_tokens: 25,
                output_tokens: 15,
                cache_read_tokens: 5,
                ..Usage::default()
            }
        );
        assert_eq!(usage.uncached_input_tokens(), 20);
    }

    #[test]
    fn zero_cache_and_reasoning_counts_are_left_out_of_json() {
        let usage = Usage {
            input_tokens: 1,
            output_tokens: 2,
            ..Usage::default()
        };
        assert_eq!(
            serde_json::to_string(&usage).unwrap(),
            r#"{"input_tokens":1,"output_tokens":2}"#
        );
    }
}
