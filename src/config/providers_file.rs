//! The providers file (`PROVIDERS_FILE`): extra providers, overrides of built-in ones, model
//! aliases, groups (see [`super::groups`]), prices and routes, checked field by field at start.

use actix_web::http::header::{HeaderName, HeaderValue};
use serde_json::{Map, Value};

pub use crate::config::fields::is_valid_name;
use crate::config::fields::{object, only_fields};
use crate::config::prices::{self, PriceEntry};
use crate::{
    config::groups::{self, GroupDecl},
    util::url::check_base_url,
};

/// The wire formats a provider can speak.
pub const KINDS: [&str; 3] = ["openai", "anthropic", "gemini"];

/// The most fallbacks one request may name, from every source together: each fallback is up
/// to `1 + MAX_RETRIES` upstream calls, so an unbounded list would let one request fan out to
/// thousands.
pub const MAX_FALLBACKS: usize = 5;

/// Headers that carry a caller's key: a static value there would be a key held by the proxy.
const AUTH_HEADERS: [&str; 3] = ["authorization", "x-api-key", "x-goog-api-key"];

/// The providers every proxy knows without a providers file: name, wire format, and whether a
/// key is required. Their base URLs come from `Config`.
pub const BUILT_IN: [(&str, &str, bool); 4] = [
    ("openai", "openai", true),
    ("anthropic", "anthropic", true),
    ("gemini", "gemini", true),
    ("ollama", "openai", false),
];

/// Everything the providers file declares.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Catalog {
    pub providers: Vec<ProviderDecl>,
    pub aliases: Vec<AliasDecl>,
    pub groups: Vec<GroupDecl>,
    /// Prices over the shipped table's (see [`prices`]).
    pub prices: Vec<PriceEntry>,
    /// `routes`: rules tried in order before a door resolves its model.
    pub routes: Vec<crate::config::routes::RouteDecl>,
}

impl Catalog {
    /// The environment variables the file's `api_key_env` fields name, providers' and
    /// deployments' alike (a name may repeat).
    pub fn held_key_variables(&self) -> impl Iterator<Item = &str> {
        let providers = self
            .providers
            .iter()
            .filter_map(|p| p.api_key_env.as_deref());
        let deployments = self
            .groups
            .iter()
            .flat_map(|g| &g.deployments)
            .filter_map(|d| d.api_key_env.as_deref());
        providers.chain(deployments)
    }
}

/// One entry of `providers`: a new provider, or an override of a built-in one (then every
/// field is optional and only what is given changes).
#[derive(Debug, Clone, PartialEq)]
pub struct ProviderDecl {
    pub name: String,
    pub kind: Option<String>,
    pub base_url: Option<String>,
    pub key_required: Option<bool>,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// `api_key_env`: the environment variable holding the provider's key, held by the proxy
    /// for callers with keys it issued (never the key itself in the file).
    pub api_key_env: Option<String>,
}

/// One entry of `aliases`: a name that stands for a provider and a model.
#[derive(Debug, Clone, PartialEq)]
pub struct AliasDecl {
    pub name: String,
    pub provider: String,
    pub model: String,
    /// Tried in order when the alias's provider fails: `provider/model` or other aliases.
    pub fallbacks: Vec<String>,
}

impl Catalog {
    /// Parses the file's text. The error names the field and what is wrong with it, like
    /// `providers.groq.base_url: must start with http:// or https://`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let root: Value = serde_json::from_str(text).map_err(|e| format!("not valid JSON: {e}"))?;
        let root = object(&root, "the file")?;
        only_fields(
            root,
            "",
            &["providers", "aliases", "groups", "prices", "routes"],
        )?;
        let mut catalog = Catalog::default();
        if let Some(providers) = root.get("providers") {
            for (name, decl) in object(providers, "providers")? {
                catalog.providers.push(provider(name, decl)?);
            }
        }
        if let Some(aliases) = root.get("aliases") {
            for (name, decl) in object(aliases, "aliases")? {
                catalog.aliases.push(alias(name, decl)?);
            }
        }
        catalog.groups = root
            .get("groups")
            .map(groups::parse)
            .transpose()?
            .unwrap_or_default();
        if let Some(section) = root.get("prices") {
            catalog.prices = prices::parse(section, "prices")?;
        }
        if let Some(routes) = root.get("routes") {
            catalog.routes = crate::config::routes::parse(routes)?;
        }
        Ok(catalog)
    }
}

fn provider(name: &str, decl: &Value) -> Result<ProviderDecl, String> {
    let at = format!("providers.{name}");
    if !is_valid_name(name) {
        return Err(format!(
            "{at}: a provider name is lowercase letters, digits, `-`, `_` and `.`"
        ));
    }
    if name == "completions" {
        return Err(format!(
            "{at}: `completions` is the front door's path (/v1/chat/completions), not a provider name"
        ));
    }
    let fields = object(decl, &at)?;
    only_fields(
        fields,
        &at,
        &["kind", "base_url", "key_required", "headers", "api_key_env"],
    )?;
    let kind = optional_string(fields, &at, "kind")?;
    if let Some(kind) = &kind {
        if !KINDS.contains(&kind.as_str()) {
            return Err(format!(
                "{at}.kind: {kind:?} is not one of {}",
                KINDS.join(", ")
            ));
        }
    }
    let base_url = optional_string(fields, &at, "base_url")?;
    if let Some(url) = &base_url {
        check_base_url(url).map_err(|why| format!("{at}.base_url: {url:?} {why}"))?;
    }
    let key_required = match fields.get("key_required") {
        None => None,
        Some(Value::Bool(required)) => Some(*required),
        Some(_) => return Err(format!("{at}.key_required: must be true or false")),
    };
    let mut headers = Vec::new();
    if let Some(declared) = fields.get("headers") {
        for (header, value) in object(declared, &format!("{at}.headers"))? {
            let at = format!("{at}.headers.{header}");
            let header = HeaderName::from_bytes(header.as_bytes())
                .map_err(|_| format!("{at}: not a valid header name"))?;
            if AUTH_HEADERS.contains(&header.as_str()) {
                return Err(format!(
                    "{at}: carries the caller's key, which callers bring; the proxy holds none"
                ));
            }
            let value = value
                .as_str()
                .and_then(|v| HeaderValue::from_str(v).ok())
                .ok_or_else(|| format!("{at}: must be a string valid in a header"))?;
            headers.push((header, value));
        }
    }
    let api_key_env = api_key_env(fields, &at)?;
    if api_key_env.is_some() && key_required == Some(false) {
        return Err(format!(
            "{at}.api_key_env: the provider is declared with \"key_required\": false; a key held for it would never be sent"
        ));
    }
    Ok(ProviderDecl {
        name: name.to_owned(),
        kind,
        base_url,
        key_required,
        headers,
        api_key_env,
    })
}

/// `api_key_env`: the name of an environment variable (letters, digits and `_`, not starting
/// with a digit). Its value is read once at start (see [`crate::config::HeldKeys`]).
pub fn api_key_env(fields: &Map<String, Value>, at: &str) -> Result<Option<String>, String> {
    match fields.get("api_key_env") {
        None => Ok(None),
        Some(Value::String(name)) if is_env_name(name) => Ok(Some(name.clone())),
        Some(_) => Err(format!(
            "{at}.api_key_env: must name an environment variable, like \"OPENAI_API_KEY\" (the key itself never goes in this file)"
        )),
    }
}

fn is_env_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    bytes
        .next()
        .is_some_and(|first| first.is_ascii_alphabetic() || first == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
        && name.len() <= 128
}

fn alias(name: &str, decl: &Value) -> Result<AliasDecl, String> {
    let at = format!("aliases.{name}");
    if name.is_empty() || name.contains('/') {
        return Err(format!("{at}: an alias name is not empty and has no `/`"));
    }
    let fields = object(decl, &at)?;
    only_fields(fields, &at, &["provider", "model", "fallbacks"])?;
    let required = |field| {
        optional_string(fields, &at, field)?
            .filter(|value| !value.is_empty())
            .ok_or_else(|| format!("{at}.{field}: required, a non-empty string"))
    };
    let fallbacks = match fields.get("fallbacks") {
        None => Vec::new(),
        Some(Value::Array(list)) => list
            .iter()
            .map(|entry| entry.as_str().filter(|s| !s.is_empty()).map(str::to_owned))
            .collect::<Option<_>>()
            .ok_or_else(|| format!("{at}.fallbacks: must be a list of non-empty strings"))?,
        Some(_) => {
            return Err(format!(
                "{at}.fallbacks: must be a list of non-empty strings"
            ))
        }
    };
    if fallbacks.len() > MAX_FALLBACKS {
        return Err(format!(
            "{at}.fallbacks: at most {MAX_FALLBACKS}, not {}",
            fallbacks.len()
        ));
    }
    Ok(AliasDecl {
        name: name.to_owned(),
        provider: required("provider")?,
        model: required("model")?,
        fallbacks,
    })
}

fn optional_string(
    fields: &Map<String, Value>,
    at: &str,
    field: &str,
) -> Result<Option<String>, String> {
    match fields.get(field) {
        None => Ok(None),
        Some(Value::String(value)) => Ok(Some(value.clone())),
        Some(_) => Err(format!("{at}.{field}: must be a string")),
    }
}

/// Checks the providers file against the built-in providers: a new provider needs a kind and
/// a base URL, an override keeps its kind, an alias names a known provider.
pub fn check_catalog(catalog: &Catalog) -> Result<(), String> {
    let built_in = |name: &str| BUILT_IN.iter().find(|(n, _, _)| *n == name);
    for decl in &catalog.providers {
        let at = format!("providers.{}", decl.name);
        match (built_in(&decl.name), &decl.kind) {
            (Some((_, kind, _)), Some(declared)) if declared != kind => {
                return Err(format!(
                "{at}.kind: {declared:?}, but {:?} is built in as {kind:?}; its kind cannot change",
                decl.name
            ))
            }
            (Some(_), _) => {}
            (None, None) => return Err(format!("{at}.kind: required for a new provider")),
            (None, Some(_)) if decl.base_url.is_none() => {
                return Err(format!("{at}.base_url: required for a new provider"))
            }
            (None, Some(_)) => {}
        }
    }
    for alias in &catalog.aliases {
        let known = built_in(&alias.provider).is_some()
            || catalog.providers.iter().any(|p| p.name == alias.provider);
        if !known {
            return Err(format!(
                "aliases.{}.provider: {:?} is not a known provider",
                alias.name, alias.provider
            ));
        }
    }
    prices::check_providers(&catalog.prices, |name| {
        built_in(name).is_some() || catalog.providers.iter().any(|p| p.name == name)
    })?;
    groups::check(
        &catalog.groups,
        |name| built_in(name).is_some() || catalog.providers.iter().any(|p| p.name == name),
        |name| catalog.aliases.iter().any(|alias| alias.name == name),
    )?;
    let providers: Vec<&str> = BUILT_IN
        .iter()
        .map(|(name, _, _)| *name)
        .chain(catalog.providers.iter().map(|p| p.name.as_str()))
        .collect();
    let aliases: Vec<&str> = catalog.aliases.iter().map(|a| a.name.as_str()).collect();
    let groups: Vec<&str> = catalog.groups.iter().map(|g| g.name.as_str()).collect();
    crate::config::routes::check(&catalog.routes, &providers, &aliases, &groups)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_file_parses() {
        let catalog = Catalog::parse(
            r#"{
              "providers": {
                "groq": {"kind": "openai", "base_url": "https://api.groq.com/openai/v1",
                         "key_required": true, "headers": {"X-Title": "app"}},
                "openai": {"base_url": "http://localhost:9000/v1"}
              },
              "aliases": {"fast": {"provider": "groq", "model": "llama-3.1-8b-instant"}}
            }"#,
        )
        .unwrap();
        assert_eq!(catalog.providers.len(), 2);
        let groq = &catalog.providers[0];
        assert_eq!(groq.name, "groq");
        assert_eq!(groq.kind.as_deref(), Some("openai"));
        assert_eq!(groq.key_required, Some(true));
        assert_eq!(groq.headers[0].0, "x-title");
        assert_eq!(groq.headers[0].1, "app");
        assert_eq!(catalog.providers[1].kind, None);
        assert_eq!(
            catalog.aliases,
            [AliasDecl {
                name: "fast".into(),
                provider: "groq".into(),
                model: "llama-3.1-8b-instant".into(),
                fallbacks: vec![],
            }]
        );
    }

    #[test]
    fn each_mistake_names_its_field() {
        let cases = [
            ("{", "not valid JSON"),
            ("[]", "the file: must be a JSON object"),
            (r#"{"provider": {}}"#, "provider: unknown field"),
            (
                r#"{"providers": {"Groq": {}}}"#,
                "providers.Groq: a provider name",
            ),
            (
                r#"{"providers": {"g": {"kind": "grpc"}}}"#,
                "providers.g.kind: \"grpc\" is not one of",
            ),
            (
                r#"{"providers": {"g": {"base_url": "ftp://x"}}}"#,
                "providers.g.base_url",
            ),
            (
                r#"{"providers": {"g": {"bse_url": "http://x"}}}"#,
                "providers.g.bse_url: unknown field",
            ),
            (
                r#"{"providers": {"g": {"key_required": "yes"}}}"#,
                "providers.g.key_required",
            ),
            (
                r#"{"providers": {"g": {"headers": {"bad header": "v"}}}}"#,
                "providers.g.headers.bad header",
            ),
            (
                r#"{"providers": {"g": {"headers": {"x-a": 1}}}}"#,
                "providers.g.headers.x-a",
            ),
            (
                r#"{"aliases": {"a/b": {"provider": "p", "model": "m"}}}"#,
                "aliases.a/b",
            ),
            (
                r#"{"aliases": {"fast": {"provider": "p"}}}"#,
                "aliases.fast.model: required",
            ),
            (
                r#"{"aliases": {"fast": {"provider": "p", "model": 3}}}"#,
                "aliases.fast.model: must be a string",
            ),
            (
                r#"{"aliases": {"fast": {"provider": "p", "model": "m",
                    "fallbacks": ["a/1", "a/2", "a/3", "a/4", "a/5", "a/6"]}}}"#,
                "aliases.fast.fallbacks: at most 5, not 6",
            ),
        ];
        for (text, expected) in cases {
            let err = Catalog::parse(text).unwrap_err();
            assert!(
                err.contains(expected),
                "{text}: got {err:?}, want {expected:?}"
            );
        }
    }

    #[test]
    fn a_header_that_would_carry_a_key_is_refused_in_any_case() {
        for name in [
            "Authorization",
            "authorization",
            "X-API-Key",
            "x-api-key",
            "X-Goog-Api-Key",
        ] {
            let text = format!(
                r#"{{"providers": {{"g": {{"kind": "openai", "base_url": "http://x",
                    "headers": {{"{name}": "Bearer sk-held"}}}}}}}}"#
            );
            let err = Catalog::parse(&text).unwrap_err();
            assert!(
                err.contains(&format!("providers.g.headers.{name}")),
                "{name}: {err}"
            );
            assert!(err.contains("the proxy holds none"), "{name}: {err}");
            assert!(!err.contains("sk-held"), "the value is never echoed: {err}");
        }
    }

    #[test]
    fn the_file_is_checked_against_the_built_ins() {
        for (catalog, expected) in [
            (
                r#"{"providers": {"groq": {"base_url": "http://x"}}}"#,
                "providers.groq.kind: required",
            ),
            (
                r#"{"providers": {"groq": {"kind": "openai"}}}"#,
                "providers.groq.base_url: required",
            ),
            (
                r#"{"providers": {"anthropic": {"kind": "openai"}}}"#,
                "its kind cannot change",
            ),
            (
                r#"{"aliases": {"fast": {"provider": "nobody", "model": "m"}}}"#,
                "aliases.fast.provider",
            ),
            (
                r#"{"prices": {"nobody/m": {"input": 1, "output": 2}}}"#,
                r#"prices.nobody/m: "nobody" is not a known provider"#,
            ),
            (
                r#"{"groups": {"g": {"deployments": [{"provider": "nobody", "model": "m"}]}}}"#,
                "groups.g.deployments[0].provider",
            ),
            (
                r#"{"aliases": {"fast": {"provider": "openai", "model": "m"}},
                    "groups": {"fast": {"deployments": [{"provider": "openai", "model": "m"}]}}}"#,
                "groups.fast: an alias has this name",
            ),
        ] {
            let err = check_catalog(&Catalog::parse(catalog).unwrap()).unwrap_err();
            assert!(err.contains(expected), "{catalog}: {err}");
        }
    }

    #[test]
    fn prices_are_read_for_built_in_and_declared_providers() {
        let catalog = Catalog::parse(
            r#"{"providers": {"groq": {"kind": "openai", "base_url": "http://x"}},
                "prices": {"groq/llama": {"input": 0.5, "output": 1},
                           "openai/gpt-4o": {"input": 2, "output": 8, "cache_read": 1}}}"#,
        )
        .unwrap();
        check_catalog(&catalog).unwrap();
        assert_eq!(catalog.prices.len(), 2);
        assert_eq!(catalog.prices[0].provider, "groq");
        assert_eq!(catalog.prices[1].price.cache_read, Some(1.0));
        let err = Catalog::parse(r#"{"prices": {"openai/x": {"input": 1}}}"#).unwrap_err();
        assert_eq!(err, "prices.openai/x.output: required, a number");
    }

    #[test]
    fn the_readmes_routing_example_is_a_valid_file() {
        let readme = include_str!("../../README.md");
        let section = &readme[readme.find("## Routing").expect("a Routing section")..];
        let start = section.find("```json\n").expect("an example file") + "```json\n".len();
        let end = start + section[start..].find("```").expect("the example's end");
        let catalog = Catalog::parse(&section[start..end]).unwrap();
        check_catalog(&catalog).unwrap();
        assert_eq!(catalog.groups.len(), 3);
        assert_eq!(catalog.routes.len(), 2);
        assert_eq!(catalog.prices.len(), 1);
    }
}
