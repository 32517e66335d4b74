//! The price table: what each provider's models cost per million tokens, shipped with the proxy
//! in `data/prices.json` and overridden or extended by the providers file's `prices`.
//!
//! A model is found by its exact name first, then by its name without a date suffix
//! (`gpt-4o-mini-2024-07-18` and `claude-3-5-haiku-20241022` cost what `gpt-4o-mini` and
//! `claude-3-5-haiku` cost). What an answer costs is [`Price::cost`], in `model::cost`: the
//! Layout puts `config` before `model`, so the token counts are priced there.

use std::collections::HashMap;

use serde_json::{Map, Value};

use crate::config::fields::{is_valid_name, object, only_fields};

/// The table that ships with the proxy, checked when the server starts (and by a unit test).
const SHIPPED: &str = include_str!("../../data/prices.json");

/// Where the shipped table lives, for its error messages.
const SHIPPED_PATH: &str = "data/prices.json";

/// One model's prices, in USD per million tokens. A cache price left out (`None`) bills those
/// tokens at the input price: OpenAI and Gemini charge nothing extra for writing their caches,
/// and a discount nobody entered is not assumed.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Price {
    pub input: f64,
    pub output: f64,
    pub cache_read: Option<f64>,
    pub cache_write: Option<f64>,
}

/// One entry of a `prices` section: `provider/model` and its price.
#[derive(Debug, Clone, PartialEq)]
pub struct PriceEntry {
    pub provider: String,
    pub model: String,
    pub price: Price,
}

/// Every known price, by provider, then model. Built once per server; the model names are
/// leaked so the cost metric's `model` label is a plain `&'static str` drawn from this table.
#[derive(Debug, Default)]
pub struct PriceTable {
    providers: HashMap<&'static str, HashMap<&'static str, Price>>,
}

/// The price entry an answer matched: the table's own model name, and its price.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Matched {
    pub model: &'static str,
    pub price: Price,
}

impl PriceTable {
    /// The shipped table with `overrides` over it (an override replaces the shipped entry of
    /// the same `provider/model`; others are added). The error names the shipped entry at fault.
    pub fn new(overrides: &[PriceEntry]) -> Result<Self, String> {
        let mut table = PriceTable::default();
        for entry in shipped()?.iter().chain(overrides) {
            table.insert(entry);
        }
        Ok(table)
    }

    fn insert(&mut self, entry: &PriceEntry) {
        let leak = |name: &str| -> &'static str { Box::leak(name.into()) };
        let models = match self.providers.get_mut(entry.provider.as_str()) {
            Some(models) => models,
            None => self.providers.entry(leak(&entry.provider)).or_default(),
        };
        match models.get_mut(entry.model.as_str()) {
            Some(price) => *price = entry.price,
            None => {
                models.insert(leak(&entry.model), entry.price);
            }
        }
    }

    /// The price of `model` at `provider`: the exact name, then the name without its date.
    pub fn find(&self, provider: &str, model: &str) -> Option<Matched> {
        let models = self.providers.get(provider)?;
        let found = |name: &str| {
            models.get_key_value(name).map(|(model, price)| Matched {
                model,
                price: *price,
            })
        };
        found(model).or_else(|| undated(model).and_then(found))
    }

    /// The price of an answer: of the model the upstream says answered, else of the one asked
    /// for (an alias such as `gpt-4o` answers as a dated snapshot, or under another name).
    pub fn find_answer(
        &self,
        provider: &str,
        answered: Option<&str>,
        asked: &str,
    ) -> Option<Matched> {
        answered
            .and_then(|model| self.find(provider, model))
            .or_else(|| self.find(provider, asked))
    }
}

/// The shipped table's entries.
pub fn shipped() -> Result<Vec<PriceEntry>, String> {
    let in_file = |e: String| format!("{SHIPPED_PATH}: {e}");
    let root: Value =
        serde_json::from_str(SHIPPED).map_err(|e| in_file(format!("not valid JSON: {e}")))?;
    let root = object(&root, "the file").map_err(in_file)?;
    only_fields(root, "", &["updated", "notes", "sources", "prices"]).map_err(in_file)?;
    let updated = root.get("updated").and_then(Value::as_str);
    if !updated.is_some_and(is_date) {
        return Err(in_file("updated: required, a date like 2026-12-01".into()));
    }
    let sources = match root.get("sources") {
        Some(sources) => object(sources, "sources").map_err(in_file)?,
        None => return Err(in_file("sources: required".into())),
    };
    let entries = match root.get("prices") {
        Some(prices) => parse(prices, "prices").map_err(in_file)?,
        None => return Err(in_file("prices: required".into())),
    };
    if let Some(entry) = entries
        .iter()
        .find(|e| !sources.get(&e.provider).is_some_and(Value::is_string))
    {
        return Err(in_file(format!(
            "prices.{}/{}: sources.{} is missing: every price names the page it came from",
            entry.provider, entry.model, entry.provider
        )));
    }
    Ok(entries)
}

/// Parses a `prices` section (of the shipped file or the providers file): an object of
/// `"provider/model": {"input", "output", "cache_read", "cache_write"}`. The error names the
/// entry and field, like `prices.openai/gpt-4o.input: must be a number, at least 0`.
pub fn parse(value: &Value, at: &str) -> Result<Vec<PriceEntry>, String> {
    let mut entries = Vec::new();
    for (key, decl) in object(value, at)? {
        let at = format!("{at}.{key}");
        let (provider, model) = key
            .split_once('/')
            .filter(|(provider, model)| is_valid_name(provider) && !model.is_empty())
            .ok_or_else(|| {
                format!("{at}: a price is named `provider/model`, the provider in lowercase")
            })?;
        entries.push(PriceEntry {
            provider: provider.to_owned(),
            model: model.to_owned(),
            price: price(decl, &at)?,
        });
    }
    Ok(entries)
}

/// One price, `{input, output, cache_read?, cache_write?}`, wherever the providers file has
/// one (a `prices` entry, a group deployment's `price`).
pub fn price(value: &Value, at: &str) -> Result<Price, String> {
    let fields = object(value, at)?;
    only_fields(
        fields,
        at,
        &["input", "output", "cache_read", "cache_write"],
    )?;
    let required =
        |field| usd(fields, at, field)?.ok_or_else(|| format!("{at}.{field}: required, a number"));
    Ok(Price {
        input: required("input")?,
        output: required("output")?,
        cache_read: usd(fields, at, "cache_read")?,
        cache_write: usd(fields, at, "cache_write")?,
    })
}

/// Checks that each price in the providers file is for a provider the proxy knows: a price
/// for a misspelt provider would never be used.
pub fn check_providers(entries: &[PriceEntry], known: impl Fn(&str) -> bool) -> Result<(), String> {
    match entries.iter().find(|entry| !known(&entry.provider)) {
        None => Ok(()),
        Some(entry) => Err(format!(
            "prices.{}/{}: {:?} is not a known provider",
            entry.provider, entry.model, entry.provider
        )),
    }
}

/// Dollars per million tokens: a finite number, at least 0, at most a million (a bound that
/// keeps every cost finite whatever the token counts).
fn usd(fields: &Map<String, Value>, at: &str, field: &str) -> Result<Option<f64>, String> {
    match fields.get(field) {
        None => Ok(None),
        Some(value) => value
            .as_f64()
            .filter(|usd| (0.0..=1e6).contains(usd))
            .map(Some)
            .ok_or_else(|| format!("{at}.{field}: must be a number from 0 to 1000000")),
    }
}

/// The model name without a date at its end: `-YYYYMMDD` (Anthropic's snapshots) or
/// `-YYYY-MM-DD` (OpenAI's). `None` when it has none.
pub fn undated(model: &str) -> Option<&str> {
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    // `get` keeps a cut inside a multi-byte character from panicking: it is no date anyway.
    let split = |len: usize| {
        let at = model.len().checked_sub(len).filter(|&at| at > 0)?;
        Some((model.get(..at)?, model.get(at + 1..)?)).filter(|_| model.as_bytes()[at] == b'-')
    };
    match (split(9), split(11)) {
        (Some((name, date)), _) if digits(date) => Some(name),
        (_, Some((name, date))) if is_date(date) => Some(name),
        _ => None,
    }
}

/// `YYYY-MM-DD`, digits in their places.
fn is_date(text: &str) -> bool {
    let bytes = text.as_bytes();
    bytes.len() == 10
        && bytes.iter().enumerate().all(|(i, b)| match i {
            4 | 7 => *b == b'-',
            _ => b.is_ascii_digit(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(overrides: &str) -> PriceTable {
        let value: Value = serde_json::from_str(overrides).unwrap();
        PriceTable::new(&parse(&value, "prices").unwrap()).unwrap()
    }

    fn error(section: &str) -> String {
        let value: Value = serde_json::from_str(section).unwrap();
        parse(&value, "prices").unwrap_err()
    }

    #[test]
    fn the_shipped_table_parses_and_covers_each_provider() {
        let entries = shipped().unwrap();
        for provider in ["openai", "anthropic", "gemini"] {
            assert!(entries.iter().any(|e| e.provider == provider), "{provider}");
        }
        // Anthropic bills cache writes above input and cache reads below it.
        for entry in entries.iter().filter(|e| e.provider == "anthropic") {
            let price = entry.price;
            assert!(price.cache_write.unwrap() > price.input, "{}", entry.model);
            assert!(price.cache_read.unwrap() < price.input, "{}", entry.model);
        }
        // OpenAI has no cache-write price.
        assert!(entries
            .iter()
            .filter(|e| e.provider == "openai")
            .all(|e| e.price.cache_write.is_none()));
    }

    #[test]
    fn exact_names_are_found() {
        let prices = table("{}");
        let found = prices.find("openai", "gpt-4o-mini").unwrap();
        assert_eq!(found.model, "gpt-4o-mini");
        assert_eq!(found.price.input, 0.15);
        assert_eq!(found.price.cache_read, Some(0.075));
        assert_eq!(prices.find("anthropic", "gpt-4o-mini"), None);
    }

    #[test]
    fn dated_names_cost_what_their_undated_model_costs() {
        let prices = table("{}");
        let openai = prices.find("openai", "gpt-4o-mini-2024-07-18").unwrap();
        assert_eq!(openai.model, "gpt-4o-mini");
        let anthropic = prices
            .find("anthropic", "claude-3-5-haiku-20241022")
            .unwrap();
        assert_eq!(anthropic.model, "claude-3-5-haiku");
        assert_eq!(anthropic.price.cache_write, Some(1.0));
    }

    #[test]
    fn unknown_models_and_providers_have_no_price() {
        let prices = table("{}");
        assert_eq!(prices.find("openai", "gpt-nonexistent"), None);
        assert_eq!(prices.find("groq", "llama-3"), None);
        assert_eq!(prices.find("openai", "gpt-4o-mini-preview"), None);
    }

    #[test]
    fn the_answered_model_is_looked_up_before_the_asked_one() {
        let prices = table(
            r#"{"openai/my-alias": {"input": 1, "output": 2},
                "openai/snapshot-x": {"input": 3, "output": 4}}"#,
        );
        let answer = prices.find_answer("openai", Some("snapshot-x"), "my-alias");
        assert_eq!(answer.unwrap().model, "snapshot-x");
        let fallback = prices.find_answer("openai", Some("unknown"), "my-alias");
        assert_eq!(fallback.unwrap().model, "my-alias");
        assert_eq!(prices.find_answer("openai", None, "unknown"), None);
    }

    #[test]
    fn overrides_replace_shipped_entries_and_add_new_ones() {
        let prices = table(
            r#"{"openai/gpt-4o-mini": {"input": 9, "output": 10},
                "groq/llama-3.3-70b": {"input": 0.59, "output": 0.79}}"#,
        );
        let replaced = prices.find("openai", "gpt-4o-mini").unwrap().price;
        assert_eq!(
            replaced,
            Price {
                input: 9.0,
                output: 10.0,
                cache_read: None,
                cache_write: None,
            }
        );
        assert_eq!(
            prices.find("groq", "llama-3.3-70b").unwrap().price.input,
            0.59
        );
        // The rest of the shipped table stays.
        assert!(prices.find("openai", "gpt-4o").is_some());
    }

    #[test]
    fn each_mistake_names_its_entry_and_field() {
        for (section, expected) in [
            (r#"[]"#, "prices: must be a JSON object"),
            (
                r#"{"gpt-4o": {"input": 1, "output": 1}}"#,
                "prices.gpt-4o: a price is named `provider/model`",
            ),
            (
                r#"{"OpenAI/gpt-4o": {"input": 1, "output": 1}}"#,
                "prices.OpenAI/gpt-4o: a price is named",
            ),
            (
                r#"{"openai/": {"input": 1, "output": 1}}"#,
                "prices.openai/: a price is named",
            ),
            (
                r#"{"openai/x": 1}"#,
                "prices.openai/x: must be a JSON object",
            ),
            (
                r#"{"openai/x": {"output": 1}}"#,
                "prices.openai/x.input: required, a number",
            ),
            (
                r#"{"openai/x": {"input": 1}}"#,
                "prices.openai/x.output: required, a number",
            ),
            (
                r#"{"openai/x": {"input": "1", "output": 1}}"#,
                "prices.openai/x.input: must be a number from 0 to 1000000",
            ),
            (
                r#"{"openai/x": {"input": 1, "output": -1}}"#,
                "prices.openai/x.output: must be a number",
            ),
            (
                r#"{"openai/x": {"input": 1, "output": 1, "cache_read": null}}"#,
                "prices.openai/x.cache_read: must be a number",
            ),
            (
                r#"{"openai/x": {"input": 1, "output": 1, "cache_write": 1e9}}"#,
                "prices.openai/x.cache_write: must be a number",
            ),
            (
                r#"{"openai/x": {"input": 1, "output": 1, "cached": 1}}"#,
                "prices.openai/x.cached: unknown field",
            ),
        ] {
            let error = error(section);
            assert!(error.starts_with(expected), "{section}: {error}");
        }
    }

    #[test]
    fn a_price_for_an_unknown_provider_is_refused() {
        let value: Value =
            serde_json::from_str(r#"{"grok/x": {"input": 1, "output": 1}}"#).unwrap();
        let entries = parse(&value, "prices").unwrap();
        assert_eq!(
            check_providers(&entries, |name| name == "openai"),
            Err(r#"prices.grok/x: "grok" is not a known provider"#.into())
        );
        assert_eq!(check_providers(&entries, |name| name == "grok"), Ok(()));
    }

    proptest::proptest! {
        /// Whatever the providers file holds, its prices parse or are refused with the place
        /// named; a parsed price is always one that costs a finite amount.
        #[test]
        fn any_prices_section_parses_or_names_its_fault(
            section in crate::util::json::arbitrary_json(
                &["openai/gpt-4o", "anthropic/claude-3-5-haiku", "input", "output",
                  "cache_read", "cache_write"],
                &["1", "openai/x"],
            )
        ) {
            match parse(&section, "prices") {
                Ok(entries) => {
                    for entry in entries {
                        let p = entry.price;
                        let prices = [Some(p.input), Some(p.output), p.cache_read, p.cache_write];
                        proptest::prop_assert!(prices
                            .into_iter()
                            .flatten()
                            .all(|usd| (0.0..=1e6).contains(&usd)));
                    }
                }
                Err(error) => proptest::prop_assert!(error.starts_with("prices"), "{}", error),
            }
        }

        #[test]
        fn cutting_a_date_never_panics(model in ".{0,16}") {
            if let Some(name) = undated(&model) {
                proptest::prop_assert!(model.starts_with(name) && name.len() < model.len());
            }
        }
    }

    #[test]
    fn only_a_date_at_the_end_is_cut() {
        assert_eq!(undated("gpt-4o-mini-2024-07-18"), Some("gpt-4o-mini"));
        assert_eq!(
            undated("claude-3-5-haiku-20241022"),
            Some("claude-3-5-haiku")
        );
        assert_eq!(undated("gpt-4o-mini"), None);
        assert_eq!(undated("-20241022"), None);
        assert_eq!(undated("model-2024-7-18"), None);
        assert_eq!(undated("claude-opus-4-1"), None);
        assert_eq!(undated("é-20241022"), Some("é"));
        assert_eq!(undated(""), None);
    }
}
