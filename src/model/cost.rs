//! What an answer cost: its usage priced by the price table.

use crate::config::prices::{Price, PriceTable};
use crate::model::Usage;

/// One answer's cost, and the price entry it came from.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Cost {
    /// The table's own name of the model priced: a bounded label, whatever the caller sent.
    pub model: &'static str,
    pub usd: f64,
}

impl Price {
    /// The cost in USD of `usage`, by the rule of [`Usage`]: its input counts every prompt
    /// token, so the uncached part is what is left after the cache reads and writes, each of
    /// those at its own price (the input price when the table has none); output, reasoning
    /// included, at the output price.
    pub fn cost(&self, usage: &Usage) -> f64 {
        let tokens = |n: u64| n as f64;
        let per_million = tokens(usage.uncached_input_tokens()) * self.input
            + tokens(usage.cache_read_tokens) * self.cache_read.unwrap_or(self.input)
            + tokens(usage.cache_write_tokens) * self.cache_write.unwrap_or(self.input)
            + tokens(usage.output_tokens) * self.output;
        per_million / 1e6
    }
}

/// The cost of an answer from `provider`: priced as the model the upstream says answered,
/// else as the one asked for. `None` when neither has a price: an unknown cost, never 0.
pub fn cost_of(
    table: &PriceTable,
    provider: &str,
    answered: Option<&str>,
    asked: &str,
    usage: &Usage,
) -> Option<Cost> {
    let matched = table.find_answer(provider, answered, asked)?;
    Some(Cost {
        model: matched.model,
        usd: matched.price.cost(usage),
    })
}

/// A cost as a plain decimal, for `X-Proxy-Cost-USD` and the text log: to a billionth of a
/// dollar, without trailing zeros (`0.000123`, `0`).
pub fn format_usd(usd: f64) -> String {
    const BILLION: u64 = 1_000_000_000;
    let nanos = (usd * 1e9).round();
    // Written from whole billionths by hand: float formatting costs a microsecond's part on
    // every answer. A figure too large for that (no real answer costs 18 billion dollars)
    // takes the slow way.
    if !(0.0..1.8e19).contains(&nanos) {
        let text = format!("{usd:.9}");
        return text.trim_end_matches('0').trim_end_matches('.').to_owned();
    }
    let nanos = nanos as u64;
    let mut out = (nanos / BILLION).to_string();
    let mut fraction = nanos % BILLION;
    if fraction != 0 {
        let mut digits = [b'0'; 9];
        for digit in digits.iter_mut().rev() {
            *digit = b'0' + (fraction % 10) as u8;
            fraction /= 10;
        }
        let last = digits.iter().rposition(|d| *d != b'0').unwrap_or(0);
        out.push('.');
        out.extend(digits[..=last].iter().map(|d| char::from(*d)));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn price(input: f64, output: f64, cache_read: Option<f64>, cache_write: Option<f64>) -> Price {
        Price {
            input,
            output,
            cache_read,
            cache_write,
        }
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    #[test]
    fn uncached_input_and_output_are_billed_at_their_prices() {
        let cost = price(0.15, 0.6, Some(0.075), None).cost(&Usage {
            input_tokens: 19,
            output_tokens: 9,
            ..Usage::default()
        });
        assert!(close(cost, (19.0 * 0.15 + 9.0 * 0.6) / 1e6), "{cost}");
    }

    #[test]
    fn cached_tokens_are_taken_out_of_the_input_and_billed_apart() {
        // OpenAI's shape: 2,006 prompt tokens, 1,920 of them read from the cache.
        let openai = price(2.5, 10.0, Some(1.25), None).cost(&Usage {
            input_tokens: 2006,
            output_tokens: 300,
            cache_read_tokens: 1920,
            ..Usage::default()
        });
        assert!(
            close(openai, (86.0 * 2.5 + 1920.0 * 1.25 + 300.0 * 10.0) / 1e6),
            "{openai}"
        );
        // Anthropic's shape after its decoder: input 21 + read 100 + written 188,086.
        let anthropic = price(3.0, 15.0, Some(0.3), Some(3.75)).cost(&Usage {
            input_tokens: 21 + 100 + 188_086,
            output_tokens: 393,
            cache_read_tokens: 100,
            cache_write_tokens: 188_086,
            ..Usage::default()
        });
        let expected = (21.0 * 3.0 + 100.0 * 0.3 + 188_086.0 * 3.75 + 393.0 * 15.0) / 1e6;
        assert!(close(anthropic, expected), "{anthropic}");
    }

    #[test]
    fn a_missing_cache_price_bills_those_tokens_as_input() {
        let usage = Usage {
            input_tokens: 1000,
            cache_read_tokens: 400,
            cache_write_tokens: 100,
            ..Usage::default()
        };
        assert!(close(
            price(1.0, 0.0, None, None).cost(&usage),
            1000.0 / 1e6
        ));
        // An explicit 0 is a free cache, as entered.
        assert!(close(
            price(1.0, 0.0, Some(0.0), Some(0.0)).cost(&usage),
            500.0 / 1e6
        ));
    }

    #[test]
    fn reasoning_is_billed_as_the_output_it_is_part_of() {
        let usage = Usage {
            input_tokens: 10,
            output_tokens: 100,
            reasoning_tokens: 90,
            ..Usage::default()
        };
        assert!(close(
            price(0.0, 10.0, None, None).cost(&usage),
            1000.0 / 1e6
        ));
    }

    #[test]
    fn an_unknown_model_has_no_cost() {
        let table = PriceTable::new(&[]).unwrap();
        let usage = Usage {
            input_tokens: 1,
            ..Usage::default()
        };
        assert_eq!(cost_of(&table, "openai", None, "nonexistent", &usage), None);
        let known = cost_of(&table, "openai", Some("gpt-4o-2024-08-06"), "x", &usage).unwrap();
        assert_eq!(known.model, "gpt-4o");
        // A known model with no tokens costs 0: a known zero, not an unknown.
        let free = cost_of(&table, "openai", None, "gpt-4o", &Usage::default());
        assert_eq!(free.map(|c| c.usd), Some(0.0));
    }

    #[test]
    fn costs_are_written_as_plain_decimals() {
        assert_eq!(format_usd(0.000123), "0.000123");
        assert_eq!(format_usd(0.0), "0");
        assert_eq!(format_usd(12.5), "12.5");
        assert_eq!(format_usd(0.0000000004), "0");
        assert_eq!(format_usd(1e-9), "0.000000001");
        assert_eq!(format_usd(3.000_000_05), "3.00000005");
        assert_eq!(format_usd(1e12), "1000000000000");
        assert_eq!(format_usd(2e19), "20000000000000000000");
    }

    proptest! {
        #[test]
        fn a_written_cost_reads_back_within_a_billionth(usd in 0.0..1e9f64) {
            let back: f64 = format_usd(usd).parse().unwrap();
            prop_assert!((back - usd).abs() <= 5e-10 + usd * 1e-15, "{usd} {back}");
        }
    }

    fn any_price() -> impl Strategy<Value = Price> {
        let usd = 0.0..=1e6f64;
        (
            usd.clone(),
            usd.clone(),
            proptest::option::of(usd.clone()),
            proptest::option::of(usd),
        )
            .prop_map(|(input, output, cache_read, cache_write)| Price {
                input,
                output,
                cache_read,
                cache_write,
            })
    }

    proptest! {
        #[test]
        fn cost_is_a_finite_non_negative_number_for_any_usage(
            price in any_price(),
            input in any::<u64>(),
            output in any::<u64>(),
            read in any::<u64>(),
            write in any::<u64>(),
            reasoning in any::<u64>(),
        ) {
            let usage = Usage {
                input_tokens: input,
                output_tokens: output,
                cache_read_tokens: read,
                cache_write_tokens: write,
                reasoning_tokens: reasoning,
            };
            let cost = price.cost(&usage);
            prop_assert!(cost.is_finite() && cost >= 0.0, "{cost}");
            let text = format_usd(cost);
            prop_assert!(text.parse::<f64>().is_ok(), "{text}");
        }
    }
}
