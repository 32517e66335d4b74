//! The registry of configured providers, aliases and groups: each provider one upstream of a
//! wire format, where to reach it, and how; each group its deployments and their health.
//!
//! Adding an OpenAI-compatible provider needs only the providers file. Adding a wire format:
//! write one folder under `formats/` with a type that implements [`Upstream`], then add one
//! line to `wire_format`.

use actix_web::http::header::HeaderValue;

use crate::{
    config::groups::{Capabilities, DeploymentDecl, GroupDecl, Strategy},
    config::providers_file::{ProviderDecl, BUILT_IN},
    config::Config,
    error::ProxyError,
    formats::{anthropic::Anthropic, gemini::Gemini, openai::OpenAi, Upstream},
    gateway::health::{self, Clock},
};

/// Builds a provider of the given wire format. The one line to add for a new format.
fn wire_format(kind: &str, endpoint: Endpoint, config: &Config) -> Box<dyn Upstream> {
    match kind {
        "openai" => Box::new(OpenAi::new(endpoint)),
        "anthropic" => Box::new(Anthropic::new(
            endpoint,
            HeaderValue::from_str(&config.anthropic_version)
                .expect("ANTHROPIC_VERSION is validated at start"),
            config.anthropic_default_max_tokens,
        )),
        "gemini" => Box::new(Gemini::new(endpoint)),
        _ => unreachable!("kinds are validated at start: {kind}"),
    }
}

pub use crate::formats::Endpoint;

/// A name that stands for a provider and a model.
#[derive(Debug, Clone)]
pub struct Alias {
    pub name: String,
    pub provider: &'static str,
    pub model: String,
    pub fallbacks: Vec<String>,
}

/// A name that stands for several deployments, chosen per request by its strategy.
pub struct Group {
    pub decl: GroupDecl,
    /// Parallel to `decl.deployments`: an upstream of its own for a deployment with a
    /// `base_url`, else `None` for its provider's.
    own_upstreams: Vec<Option<Box<dyn Upstream>>>,
    /// Parallel to `decl.deployments`: `provider/model`, for headers and metrics.
    pub labels: Vec<String>,
    /// Shared by every worker.
    pub health: health::Group,
    /// An alias is a one-deployment group with the alias's fallbacks; a declared group has
    /// none of its own.
    pub alias_fallbacks: Option<Vec<String>>,
}

impl Group {
    fn new(decl: GroupDecl, own_upstreams: Vec<Option<Box<dyn Upstream>>>) -> Self {
        Self {
            labels: decl
                .deployments
                .iter()
                .map(|d| format!("{}/{}", d.provider, d.model))
                .collect(),
            health: health::Group::new(decl.deployments.len()),
            decl,
            own_upstreams,
            alias_fallbacks: None,
        }
    }

    /// The one-deployment group an alias stands for.
    fn of_alias(alias: &Alias) -> Self {
        let decl = GroupDecl {
            name: alias.name.clone(),
            strategy: Strategy::Ordered,
            sticky: None,
            cache_ttl: None,
            deployments: vec![DeploymentDecl {
                provider: alias.provider.to_owned(),
                model: alias.model.clone(),
                base_url: None,
                api_key_env: None,
                weight: 1.0,
                context: None,
                capabilities: Capabilities::ALL,
                price: None,
            }],
        };
        Self {
            alias_fallbacks: Some(alias.fallbacks.clone()),
            ..Self::new(decl, vec![None])
        }
    }
}

/// The providers, aliases and groups this process serves.
pub struct Registry {
    providers: Vec<Box<dyn Upstream>>,
    aliases: Vec<Alias>,
    groups: Vec<Group>,
    /// The time health state is kept in.
    pub clock: Clock,
}

impl Registry {
    /// The built-in providers with the providers file applied. The config must be validated.
    pub fn new(config: &Config) -> Self {
        let built_in_url = |name: &str| match name {
            "openai" => &config.openai_base_url,
            "anthropic" => &config.anthropic_base_url,
            "gemini" => &config.gemini_base_url,
            _ => &config.ollama_base_url,
        };
        let mut declared: Vec<(&str, Endpoint)> = BUILT_IN
            .iter()
            .map(|&(name, kind, key_required)| {
                let endpoint = Endpoint {
                    name,
                    base_url: built_in_url(name).clone(),
                    key_required,
                    headers: Vec::new(),
                    held_key: None,
                };
                (kind, endpoint)
            })
            .collect();
        for decl in &config.catalog.providers {
            match declared.iter_mut().find(|(_, e)| e.name == decl.name) {
                Some((_, endpoint)) => {
                    apply_override(endpoint, decl);
                    if decl.api_key_env.is_some() {
                        endpoint.held_key = held_key(config, decl.api_key_env.as_deref());
                    }
                }
                None => declared.push((
                    decl.kind.as_deref().expect("new providers have a kind"),
                    Endpoint {
                        // Leaked once at start: names live as long as the process.
                        name: Box::leak(decl.name.clone().into_boxed_str()),
                        base_url: decl.base_url.clone().expect("new providers have a URL"),
                        key_required: decl.key_required.unwrap_or(true),
                        headers: decl.headers.clone(),
                        held_key: held_key(config, decl.api_key_env.as_deref()),
                    },
                )),
            }
        }
        let mut groups: Vec<Group> = config
            .catalog
            .groups
            .iter()
            .map(|decl| {
                let own_upstreams = decl
                    .deployments
                    .iter()
                    .map(|deployment| {
                        // A deployment of its own URL or key is an upstream of its own.
                        if deployment.base_url.is_none() && deployment.api_key_env.is_none() {
                            return None;
                        }
                        let (kind, endpoint) = declared
                            .iter()
                            .find(|(_, e)| e.name == deployment.provider)
                            .expect("groups name known providers");
                        let mut endpoint = endpoint.clone();
                        if let Some(url) = &deployment.base_url {
                            endpoint.base_url = url.clone();
                        }
                        if deployment.api_key_env.is_some() {
                            endpoint.held_key = held_key(config, deployment.api_key_env.as_deref());
                        }
                        Some(wire_format(kind, endpoint, config))
                    })
                    .collect();
                Group::new(decl.clone(), own_upstreams)
            })
            .collect();
        let providers: Vec<_> = declared
            .into_iter()
            .map(|(kind, endpoint)| wire_format(kind, endpoint, config))
            .collect();
        let aliases = config
            .catalog
            .aliases
            .iter()
            .map(|alias| Alias {
                name: alias.name.clone(),
                provider: providers
                    .iter()
                    .map(|p| p.endpoint().name)
                    .find(|name| *name == alias.provider)
                    .expect("aliases name known providers"),
                model: alias.model.clone(),
                fallbacks: alias.fallbacks.clone(),
            })
            .collect::<Vec<_>>();
        groups.extend(aliases.iter().map(Group::of_alias));
        Self {
            providers,
            aliases,
            groups,
            clock: Clock::start(),
        }
    }

    pub fn group(&self, name: &str) -> Option<&Group> {
        self.groups.iter().find(|group| group.decl.name == name)
    }

    /// The declared groups, then one per alias.
    pub fn groups(&self) -> &[Group] {
        &self.groups
    }

    /// The upstream a group's deployment `index` goes to.
    pub fn deployment<'r>(&'r self, group: &'r Group, index: usize) -> &'r dyn Upstream {
        match &group.own_upstreams[index] {
            Some(own) => own.as_ref(),
            None => self
                .get(&group.decl.deployments[index].provider)
                .expect("groups name known providers"),
        }
    }

    pub fn get(&self, name: &str) -> Option<&dyn Upstream> {
        self.providers
            .iter()
            .find(|provider| provider.endpoint().name == name)
            .map(Box::as_ref)
    }

    pub fn alias(&self, name: &str) -> Option<&Alias> {
        self.aliases.iter().find(|alias| alias.name == name)
    }

    pub fn aliases(&self) -> &[Alias] {
        &self.aliases
    }

    /// The known provider names, sorted, for error messages and `/v1/models`.
    pub fn names(&self) -> Vec<&'static str> {
        let mut names: Vec<_> = self.providers.iter().map(|p| p.endpoint().name).collect();
        names.sort_unstable();
        names
    }

    /// Resolves a model reference: an alias, or `provider/model` split at the first `/`.
    pub fn resolve<'m>(
        &'m self,
        model: &'m str,
    ) -> Result<(&'m dyn Upstream, &'m str), ProxyError> {
        if let Some(alias) = self.alias(model) {
            let provider = self
                .get(alias.provider)
                .expect("aliases name known providers");
            return Ok((provider, alias.model.as_str()));
        }
        let Some((name, model)) = model.split_once('/') else {
            let aliases: Vec<_> = self.aliases.iter().map(|a| a.name.as_str()).collect();
            return Err(ProxyError::InvalidRequest(format!(
                "`model` must be `provider/model` (providers: {}) or an alias{}",
                self.names().join(", "),
                if aliases.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", aliases.join(", "))
                }
            )));
        };
        let provider = self.get(name).ok_or_else(|| self.unknown(name))?;
        if model.is_empty() {
            return Err(ProxyError::InvalidRequest(format!(
                "`model` names provider {name:?} but no model after the `/`"
            )));
        }
        Ok((provider, model))
    }

    /// The error for a provider name that is not known.
    pub fn unknown(&self, name: &str) -> ProxyError {
        ProxyError::UnknownProvider {
            name: name.chars().take(64).collect(),
            known: self.names().join(", "),
        }
    }
}

/// The key a variable holds, as a sensitive header value (the config is validated: it is set).
fn held_key(config: &Config, variable: Option<&str>) -> Option<HeaderValue> {
    let value = config.held_keys.get(variable?)?.trim();
    let mut value = HeaderValue::from_str(value).ok()?;
    value.set_sensitive(true);
    Some(value)
}

fn apply_override(endpoint: &mut Endpoint, decl: &ProviderDecl) {
    if let Some(url) = &decl.base_url {
        endpoint.base_url = url.clone();
    }
    if let Some(required) = decl.key_required {
        endpoint.key_required = required;
    }
    endpoint.headers.extend(decl.headers.iter().cloned());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::providers_file::Catalog;

    fn config(catalog: &str) -> Config {
        Config {
            catalog: Catalog::parse(catalog).unwrap(),
            ..Config::default()
        }
    }

    #[test]
    fn built_ins_are_there_without_a_file() {
        let registry = Registry::new(&Config::default());
        assert_eq!(
            registry.names(),
            ["anthropic", "gemini", "ollama", "openai"]
        );
        assert!(!registry.get("ollama").unwrap().endpoint().key_required);
        assert!(registry.get("openai").unwrap().endpoint().key_required);
        assert_eq!(
            registry.get("ollama").unwrap().format(),
            crate::formats::Format::OpenAi
        );
    }

    #[test]
    fn the_file_adds_providers_overrides_built_ins_and_names_aliases() {
        let config = config(
            r#"{"providers": {
                  "groq": {"kind": "openai", "base_url": "https://api.groq.com/openai/v1"},
                  "local": {"kind": "openai", "base_url": "http://localhost:1234/v1",
                            "key_required": false, "headers": {"x-extra": "1"}},
                  "openai": {"base_url": "http://gateway.internal/v1"}},
                "aliases": {"fast": {"provider": "groq", "model": "llama-3.1-8b-instant"}}}"#,
        );
        crate::config::providers_file::check_catalog(&config.catalog).unwrap();
        let registry = Registry::new(&config);
        let groq = registry.get("groq").unwrap().endpoint();
        assert!(groq.key_required);
        assert_eq!(groq.base_url, "https://api.groq.com/openai/v1");
        let local = registry.get("local").unwrap().endpoint();
        assert!(!local.key_required);
        assert_eq!(local.headers[0].0, "x-extra");
        assert_eq!(
            registry.get("openai").unwrap().endpoint().base_url,
            "http://gateway.internal/v1"
        );
        let fast = registry.alias("fast").unwrap();
        assert_eq!(
            (fast.provider, fast.model.as_str()),
            ("groq", "llama-3.1-8b-instant")
        );
    }
}
