//! The providers file's `groups`: names callers use as `model`, each over deployments (a
//! provider and a model) chosen per request by a strategy, checked field by field at start.

use serde_json::Value;

use crate::{
    config::{
        fields::{object, only_fields},
        prices::{self, Price},
    },
    util::url::check_base_url,
};

/// The most deployments one group may list: each is up to `1 + MAX_RETRIES` upstream calls
/// when the others fail, so one request's fan-out stays bounded.
pub const MAX_DEPLOYMENTS: usize = 16;

/// How a group picks the deployment to try first, and the next when one fails.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Strategy {
    /// Random by weight: also the A/B split.
    #[default]
    Weighted,
    RoundRobin,
    /// Fewest requests in flight.
    LeastBusy,
    /// Power of two choices over a peak-EWMA of the time to first byte.
    Latency,
    /// The cheapest capable deployment for the request's estimated tokens.
    Cost,
    /// The first healthy one, in the listed order.
    Ordered,
}

impl Strategy {
    pub const NAMES: [&'static str; 6] = [
        "weighted",
        "round_robin",
        "least_busy",
        "latency",
        "cost",
        "ordered",
    ];

    fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "weighted" => Self::Weighted,
            "round_robin" => Self::RoundRobin,
            "least_busy" => Self::LeastBusy,
            "latency" => Self::Latency,
            "cost" => Self::Cost,
            "ordered" => Self::Ordered,
            _ => return None,
        })
    }
}

/// What keeps one caller on one arm of a `weighted` group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sticky {
    /// The fingerprint of the caller's key.
    Key,
    /// A header's value, such as `X-Session-Id` (stored lowercase).
    Header(String),
}

/// What a deployment can do. A deployment that declares no `capabilities` can do everything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capabilities {
    pub tools: bool,
    pub images: bool,
    pub json_schema: bool,
    pub reasoning: bool,
}

impl Capabilities {
    pub const ALL: Self = Self {
        tools: true,
        images: true,
        json_schema: true,
        reasoning: true,
    };
    const NAMES: [&'static str; 4] = ["tools", "images", "json_schema", "reasoning"];
}

/// One entry of a group's `deployments`.
#[derive(Debug, Clone, PartialEq)]
pub struct DeploymentDecl {
    pub provider: String,
    pub model: String,
    pub base_url: Option<String>,
    /// A key held by the proxy for this deployment alone, by environment variable (see
    /// [`crate::config::providers_file::ProviderDecl::api_key_env`]).
    pub api_key_env: Option<String>,
    /// Greater than zero; 1 when not given.
    pub weight: f64,
    /// The context window in tokens, when known.
    pub context: Option<u64>,
    pub capabilities: Capabilities,
    /// Overrides the shipped price table for this deployment.
    pub price: Option<Price>,
}

/// One entry of `groups`.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupDecl {
    pub name: String,
    pub strategy: Strategy,
    pub sticky: Option<Sticky>,
    pub deployments: Vec<DeploymentDecl>,
    /// `cache: {"ttl_seconds": N}`: answers to the group's requests are kept this long.
    pub cache_ttl: Option<std::time::Duration>,
}

impl GroupDecl {
    /// Whether choosing among its deployments depends on what a request needs (its size, its
    /// tools, images or schemas): only for `cost`, or when a deployment declares a context
    /// size or limits its capabilities. Otherwise the body need not be read at all.
    pub fn reads_needs(&self) -> bool {
        self.strategy == Strategy::Cost
            || self
                .deployments
                .iter()
                .any(|d| d.context.is_some() || d.capabilities != Capabilities::ALL)
    }
}

/// Parses the file's `groups` object. Errors name the place, like
/// `groups.fast.deployments[1].weight: must be a number greater than 0`.
pub fn parse(groups: &Value) -> Result<Vec<GroupDecl>, String> {
    object(groups, "groups")?
        .iter()
        .map(|(name, decl)| group(name, decl))
        .collect()
}

fn group(name: &str, decl: &Value) -> Result<GroupDecl, String> {
    let at = format!("groups.{name}");
    if name.is_empty() || name.contains('/') {
        return Err(format!("{at}: a group name is not empty and has no `/`"));
    }
    let fields = object(decl, &at)?;
    only_fields(fields, &at, &["strategy", "sticky", "deployments", "cache"])?;
    let strategy = match fields.get("strategy") {
        None => Strategy::default(),
        Some(value) => value
            .as_str()
            .and_then(Strategy::from_name)
            .ok_or_else(|| {
                format!(
                    "{at}.strategy: must be one of {}",
                    Strategy::NAMES.join(", ")
                )
            })?,
    };
    let sticky = match fields.get("sticky") {
        None => None,
        Some(value) => Some(sticky(value, &format!("{at}.sticky"))?),
    };
    if sticky.is_some() && strategy != Strategy::Weighted {
        return Err(format!(
            "{at}.sticky: only a `weighted` group can be sticky"
        ));
    }
    let list = match fields.get("deployments") {
        Some(Value::Array(list)) => list,
        None => return Err(format!("{at}.deployments: required, a list")),
        Some(_) => return Err(format!("{at}.deployments: must be a list")),
    };
    if list.is_empty() || list.len() > MAX_DEPLOYMENTS {
        return Err(format!(
            "{at}.deployments: from 1 to {MAX_DEPLOYMENTS}, not {}",
            list.len()
        ));
    }
    let deployments = list
        .iter()
        .enumerate()
        .map(|(index, decl)| deployment(decl, &format!("{at}.deployments[{index}]")))
        .collect::<Result<_, _>>()?;
    let cache_ttl = match fields.get("cache") {
        None => None,
        Some(value) => Some(cache(value, &format!("{at}.cache"))?),
    };
    Ok(GroupDecl {
        name: name.to_owned(),
        strategy,
        sticky,
        deployments,
        cache_ttl,
    })
}

/// `{"ttl_seconds": N}`, from 1 s to a day.
fn cache(value: &Value, at: &str) -> Result<std::time::Duration, String> {
    let fields = object(value, at)?;
    only_fields(fields, at, &["ttl_seconds"])?;
    fields
        .get("ttl_seconds")
        .and_then(Value::as_u64)
        .filter(|ttl| (1..=86_400).contains(ttl))
        .map(std::time::Duration::from_secs)
        .ok_or_else(|| {
            format!("{at}.ttl_seconds: required, a whole number of seconds from 1 to 86400")
        })
}

fn sticky(value: &Value, at: &str) -> Result<Sticky, String> {
    let wrong = || format!("{at}: must be \"key\" or {{\"header\": \"<name>\"}}");
    match value {
        Value::String(key) if key == "key" => Ok(Sticky::Key),
        Value::Object(fields) => {
            only_fields(fields, at, &["header"])?;
            let name = fields
                .get("header")
                .and_then(Value::as_str)
                .ok_or_else(wrong)?;
            actix_web::http::header::HeaderName::from_bytes(name.as_bytes())
                .map(|name| Sticky::Header(name.as_str().to_owned()))
                .map_err(|_| format!("{at}.header: not a valid header name"))
        }
        _ => Err(wrong()),
    }
}

fn deployment(decl: &Value, at: &str) -> Result<DeploymentDecl, String> {
    let fields = object(decl, at)?;
    only_fields(
        fields,
        at,
        &[
            "provider",
            "model",
            "base_url",
            "weight",
            "context",
            "capabilities",
            "price",
            "api_key_env",
        ],
    )?;
    let required = |field| match fields.get(field) {
        Some(Value::String(value)) if !value.is_empty() => Ok(value.clone()),
        _ => Err(format!("{at}.{field}: required, a non-empty string")),
    };
    let base_url = match fields.get("base_url") {
        None => None,
        Some(Value::String(url)) => {
            check_base_url(url).map_err(|why| format!("{at}.base_url: {url:?} {why}"))?;
            Some(url.clone())
        }
        Some(_) => return Err(format!("{at}.base_url: must be a string")),
    };
    let weight = match fields.get("weight") {
        None => 1.0,
        Some(value) => value
            .as_f64()
            .filter(|w| w.is_finite() && *w > 0.0)
            .ok_or_else(|| format!("{at}.weight: must be a number greater than 0"))?,
    };
    let context = match fields.get("context") {
        None => None,
        Some(value) => Some(
            value
                .as_u64()
                .filter(|tokens| *tokens > 0)
                .ok_or_else(|| format!("{at}.context: must be a whole number of tokens"))?,
        ),
    };
    let capabilities = match fields.get("capabilities") {
        None => Capabilities::ALL,
        Some(value) => capabilities(value, &format!("{at}.capabilities"))?,
    };
    let price = match fields.get("price") {
        None => None,
        Some(value) => Some(prices::price(value, &format!("{at}.price"))?),
    };
    Ok(DeploymentDecl {
        provider: required("provider")?,
        model: required("model")?,
        base_url,
        weight,
        context,
        capabilities,
        price,
        api_key_env: crate::config::providers_file::api_key_env(fields, at)?,
    })
}

fn capabilities(value: &Value, at: &str) -> Result<Capabilities, String> {
    let wrong = || format!("{at}: must be a list of {}", Capabilities::NAMES.join(", "));
    let list = value.as_array().ok_or_else(wrong)?;
    let mut can = Capabilities {
        tools: false,
        images: false,
        json_schema: false,
        reasoning: false,
    };
    for entry in list {
        match entry.as_str().ok_or_else(wrong)? {
            "tools" => can.tools = true,
            "images" => can.images = true,
            "json_schema" => can.json_schema = true,
            "reasoning" => can.reasoning = true,
            other => {
                return Err(format!(
                    "{at}: {:?} is not one of {}",
                    other.chars().take(64).collect::<String>(),
                    Capabilities::NAMES.join(", ")
                ))
            }
        }
    }
    Ok(can)
}

/// Checks the groups against the rest of the file: every deployment names a known provider,
/// and no group has an alias's name.
pub fn check(
    groups: &[GroupDecl],
    is_provider: impl Fn(&str) -> bool,
    is_alias: impl Fn(&str) -> bool,
) -> Result<(), String> {
    for group in groups {
        if is_alias(&group.name) {
            return Err(format!(
                "groups.{}: an alias has this name already; a name is one or the other",
                group.name
            ));
        }
        for (index, deployment) in group.deployments.iter().enumerate() {
            if !is_provider(&deployment.provider) {
                return Err(format!(
                    "groups.{}.deployments[{index}].provider: {:?} is not a known provider",
                    group.name, deployment.provider
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::{any, prop, prop_assert, prop_oneof, proptest, Just, Strategy as _};

    fn parse_text(text: &str) -> Result<Vec<GroupDecl>, String> {
        parse(&serde_json::from_str(text).unwrap())
    }

    #[test]
    fn a_full_group_parses() {
        let groups = parse_text(
            r#"{"chat": {"strategy": "weighted", "sticky": {"header": "X-Session-Id"},
                 "deployments": [
                   {"provider": "openai", "model": "gpt-4o-mini", "weight": 3},
                   {"provider": "groq", "model": "llama", "base_url": "http://x/v1",
                    "context": 8000, "capabilities": ["tools"],
                    "price": {"input": 0.05, "output": 0.08, "cache_read": 0.01}}]},
                "plain": {"deployments": [{"provider": "openai", "model": "gpt-4o"}]}}"#,
        )
        .unwrap();
        assert_eq!(groups.len(), 2);
        let chat = &groups[0];
        assert_eq!(chat.strategy, super::Strategy::Weighted);
        assert_eq!(chat.sticky, Some(Sticky::Header("x-session-id".into())));
        assert_eq!(chat.deployments[0].weight, 3.0);
        assert_eq!(chat.deployments[0].capabilities, Capabilities::ALL);
        let groq = &chat.deployments[1];
        assert_eq!(groq.base_url.as_deref(), Some("http://x/v1"));
        assert_eq!(groq.context, Some(8000));
        assert!(groq.capabilities.tools && !groq.capabilities.images);
        assert_eq!(
            groq.price,
            // A cache price left out is billed at the input price (see `prices::Price`).
            Some(Price {
                input: 0.05,
                output: 0.08,
                cache_read: Some(0.01),
                cache_write: None,
            })
        );
        assert_eq!(groups[1].strategy, super::Strategy::Weighted);
        assert_eq!(groups[1].deployments[0].weight, 1.0);
    }

    #[test]
    fn every_strategy_name_parses() {
        for name in super::Strategy::NAMES {
            let text = format!(
                r#"{{"g": {{"strategy": "{name}", "deployments": [{{"provider": "p", "model": "m"}}]}}}}"#
            );
            assert!(parse_text(&text).is_ok(), "{name}");
        }
    }

    #[test]
    fn each_mistake_names_its_place() {
        let one = r#"{"provider": "p", "model": "m"}"#;
        let many = vec![one; MAX_DEPLOYMENTS + 1].join(",");
        for (text, expected) in [
            (r#"[]"#.to_owned(), "groups: must be a JSON object"),
            (r#"{"a/b": {"deployments": []}}"#.into(), "groups.a/b: a group name"),
            (r#"{"g": 1}"#.into(), "groups.g: must be a JSON object"),
            (r#"{"g": {"x": 1}}"#.into(), "groups.g.x: unknown field"),
            (r#"{"g": {}}"#.into(), "groups.g.deployments: required"),
            (r#"{"g": {"deployments": []}}"#.into(), "groups.g.deployments: from 1"),
            (
                format!(r#"{{"g": {{"deployments": [{many}]}}}}"#),
                "groups.g.deployments: from 1 to 16, not 17",
            ),
            (
                format!(r#"{{"g": {{"strategy": "fastest", "deployments": [{one}]}}}}"#),
                "groups.g.strategy: must be one of weighted",
            ),
            (
                format!(r#"{{"g": {{"sticky": "yes", "deployments": [{one}]}}}}"#),
                "groups.g.sticky: must be \"key\"",
            ),
            (
                format!(r#"{{"g": {{"sticky": {{"header": "a b"}}, "deployments": [{one}]}}}}"#),
                "groups.g.sticky.header: not a valid header name",
            ),
            (
                format!(
                    r#"{{"g": {{"strategy": "cost", "sticky": "key", "deployments": [{one}]}}}}"#
                ),
                "groups.g.sticky: only a `weighted` group",
            ),
            (
                format!(r#"{{"g": {{"cache": {{"ttl_seconds": 0}}, "deployments": [{one}]}}}}"#),
                "groups.g.cache.ttl_seconds: required, a whole number of seconds from 1 to 86400",
            ),
            (
                format!(r#"{{"g": {{"cache": {{"ttl": 5}}, "deployments": [{one}]}}}}"#),
                "groups.g.cache.ttl: unknown field",
            ),
            (
                r#"{"g": {"deployments": [{"model": "m"}]}}"#.into(),
                "groups.g.deployments[0].provider: required",
            ),
            (
                r#"{"g": {"deployments": [{"provider": "p", "model": ""}]}}"#.into(),
                "groups.g.deployments[0].model: required",
            ),
            (
                format!(r#"{{"g": {{"deployments": [{one}, {{"provider": "p", "model": "m", "weight": 0}}]}}}}"#),
                "groups.g.deployments[1].weight: must be a number greater than 0",
            ),
            (
                r#"{"g": {"deployments": [{"provider": "p", "model": "m", "context": -1}]}}"#
                    .into(),
                "groups.g.deployments[0].context: must be a whole number",
            ),
            (
                r#"{"g": {"deployments": [{"provider": "p", "model": "m", "base_url": "ftp://x"}]}}"#
                    .into(),
                "groups.g.deployments[0].base_url",
            ),
            (
                r#"{"g": {"deployments": [{"provider": "p", "model": "m", "capabilities": ["video"]}]}}"#
                    .into(),
                "groups.g.deployments[0].capabilities: \"video\" is not one of",
            ),
            (
                r#"{"g": {"deployments": [{"provider": "p", "model": "m", "price": {"input": 1}}]}}"#
                    .into(),
                "groups.g.deployments[0].price.output: required",
            ),
            (
                r#"{"g": {"deployments": [{"provider": "p", "model": "m", "price": {"input": 1, "output": -2}}]}}"#
                    .into(),
                "groups.g.deployments[0].price.output: must be a number",
            ),
            (
                r#"{"g": {"deployments": [{"provider": "p", "model": "m", "extra": 1}]}}"#.into(),
                "groups.g.deployments[0].extra: unknown field",
            ),
        ] {
            let err = parse_text(&text).unwrap_err();
            assert!(err.contains(expected), "{text}: {err}");
        }
    }

    #[test]
    fn groups_are_checked_against_providers_and_aliases() {
        let groups = parse_text(
            r#"{"g": {"deployments": [{"provider": "openai", "model": "m"},
                                       {"provider": "nobody", "model": "m"}]}}"#,
        )
        .unwrap();
        let err = check(&groups, |p| p == "openai", |_| false).unwrap_err();
        assert!(
            err.contains("groups.g.deployments[1].provider: \"nobody\""),
            "{err}"
        );
        let err = check(&groups, |_| true, |a| a == "g").unwrap_err();
        assert!(err.contains("groups.g: an alias has this name"), "{err}");
        assert!(check(&groups, |_| true, |_| false).is_ok());
    }

    /// JSON made of this section's own words, so that deep shapes get reached.
    fn groupish() -> impl proptest::strategy::Strategy<Value = Value> {
        let words = prop::sample::select(vec![
            "g",
            "strategy",
            "sticky",
            "deployments",
            "provider",
            "model",
            "weight",
            "context",
            "capabilities",
            "price",
            "input",
            "output",
            "header",
            "key",
            "tools",
            "cost",
            "base_url",
        ]);
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<f64>().prop_map(Value::from),
            words.clone().prop_map(Value::from),
        ];
        leaf.prop_recursive(5, 64, 6, move |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::vec((words.clone(), inner), 0..5).prop_map(
                    |pairs| Value::Object(
                        pairs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
                    )
                ),
            ]
        })
    }

    proptest! {
        #[test]
        fn any_json_parses_or_names_a_place(value in groupish()) {
            if let Err(err) = parse(&value) {
                prop_assert!(err.starts_with("groups"), "{}", err);
            }
        }
    }
}
