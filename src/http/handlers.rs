//! HTTP handlers, one per door (the path route, the OpenAI door, the Anthropic door): read the
//! request, work out its targets (provider, fallbacks, keys), hand them to `exchange`, and
//! answer errors in the door's shape.

use std::borrow::Cow;

use actix_web::{
    body::{BodySize, BoxBody, MessageBody},
    http::header::{self, HeaderName, HeaderValue},
    web::{self, Bytes, BytesMut},
    HttpMessage, HttpRequest, HttpResponse,
};
use awc::Client;
use futures_util::StreamExt;
use serde::Serialize;

use crate::{
    cache::{record, ResponseCache},
    config::Config,
    config::{prices::PriceTable, providers_file::MAX_FALLBACKS},
    error::ProxyError,
    formats::{anthropic, openai, Format, Upstream},
    gateway::exchange::{self, Door, Incoming, Outcome, State, Target},
    gateway::rules::{self, Facts, Rules},
    gateway::targets::{Group, Registry},
    http::caller::{self, Caller},
    http::group_door,
    http::observe::{self, AccessInfo, RequestId},
    keys::{self, Keyring},
    limits::{BodyBudget, RequestLimit, RequestPermit, UpstreamSlots},
    metrics::Metrics,
    util::fingerprint::KeyFingerprint,
};

/// Names the `routes` rule that chose a request's target.
const PROXY_RULE: HeaderName = HeaderName::from_static("x-proxy-rule");

/// Fields of ours in a door's body, never passed on.
const PROXY_FIELDS: [&str; 1] = ["fallbacks"];

/// The headers of Anthropic's API a caller may send, passed on to Anthropic upstreams.
const ANTHROPIC_HEADERS: [&str; 2] = ["anthropic-version", "anthropic-beta"];

/// What the access log learns from an exchange.
fn record(info: &mut AccessInfo, outcome: Outcome) {
    info.provider = outcome.provider.or(info.provider);
    info.model = outcome.model.or(info.model.take());
    info.group = outcome.group;
    info.upstream_status = outcome.upstream_status;
    info.attempts = outcome.attempts;
    info.upstream_time = outcome.upstream_time;
    info.usage = outcome.usage;
    info.answered_model = outcome.answered_model;
    info.stream_report = outcome.stream_report;
}

/// A request that failed, with the passed-on headers of the upstream answer the failure came
/// from, if any (rate limits and request ids belong on every reply made from an answer).
struct Failure {
    error: ProxyError,
    headers: Vec<(HeaderName, HeaderValue)>,
}

impl From<ProxyError> for Failure {
    fn from(error: ProxyError) -> Self {
        Self {
            error,
            headers: Vec::new(),
        }
    }
}

impl Failure {
    /// The error response, with the upstream's headers where the error has none of its own.
    fn into_response(self, response: impl FnOnce(&ProxyError) -> HttpResponse) -> HttpResponse {
        let mut response = response(&self.error);
        for (name, value) in self.headers {
            if !response.headers().contains_key(&name) {
                response.headers_mut().insert(name, value);
            }
        }
        response
    }
}

/// The per-worker and shared state a chat handler needs, as actix extracts it.
pub struct Shared {
    pub config: web::Data<Config>,
    pub registry: web::Data<Registry>,
    pub rules: web::Data<Rules>,
    pub client: web::Data<Client>,
    pub slots: web::Data<UpstreamSlots>,
    pub limit: web::Data<RequestLimit>,
    pub budget: web::Data<BodyBudget>,
    pub metrics: web::Data<Metrics>,
    pub prices: web::Data<PriceTable>,
    pub cache: web::Data<ResponseCache>,
    /// The store's keys, when the proxy has a store.
    pub keyring: Option<web::Data<Keyring>>,
    pub request_id: HeaderValue,
    /// Who is calling, once [`Shared::identify`] ran.
    pub caller: Caller,
}

impl Shared {
    fn from_request(request: &HttpRequest) -> Self {
        let data = |what| -> ! { panic!("{what} is registered by server::build") };
        Self {
            config: request
                .app_data()
                .cloned()
                .unwrap_or_else(|| data("Config")),
            registry: request
                .app_data()
                .cloned()
                .unwrap_or_else(|| data("Registry")),
            rules: request.app_data().cloned().unwrap_or_else(|| data("Rules")),
            client: request
                .app_data()
                .cloned()
                .unwrap_or_else(|| data("Client")),
            slots: request
                .app_data()
                .cloned()
                .unwrap_or_else(|| data("UpstreamSlots")),
            limit: request
                .app_data()
                .cloned()
                .unwrap_or_else(|| data("RequestLimit")),
            budget: request
                .app_data()
                .cloned()
                .unwrap_or_else(|| data("BodyBudget")),
            metrics: request
                .app_data()
                .cloned()
                .unwrap_or_else(|| data("Metrics")),
            prices: request
                .app_data()
                .cloned()
                .unwrap_or_else(|| data("PriceTable")),
            cache: request
                .app_data()
                .cloned()
                .unwrap_or_else(|| data("ResponseCache")),
            keyring: request.app_data().cloned(),
            request_id: request
                .extensions()
                .get::<RequestId>()
                .map_or_else(|| observe::request_id(None), |id| id.0.clone()),
            caller: Caller::Own,
        }
    }

    /// Finds out who is calling (see [`caller::identify`]), and notes it for the usage record:
    /// an issued key's id, or else a keyed fingerprint of the caller's own key.
    fn identify(&mut self, request: &HttpRequest, info: &mut AccessInfo) -> Result<(), ProxyError> {
        let keyring = self.keyring.as_ref().map(|keyring| keyring.get_ref());
        self.caller = caller::identify(request, keyring, keys::now_ms())?;
        let Some(keyring) = keyring else {
            return Ok(());
        };
        match &self.caller {
            Caller::Issued(key) => info.key_id = Some(key.row.id.clone()),
            Caller::Own => {
                info.caller =
                    request_key(request, true).map(|key| keyring.fingerprint(key.as_bytes()));
            }
        }
        Ok(())
    }

    /// An issued key's checks before any upstream call: a model it may use (any of `names`,
    /// the ways the request names it), and room in its limits.
    async fn admit(&self, info: &mut AccessInfo, names: &[&str]) -> Result<(), ProxyError> {
        if let (Some(keyring), Caller::Issued(key)) = (&self.keyring, &self.caller) {
            info.admission = Some(caller::admit(keyring, key, names, keys::now_ms()).await?);
        }
        Ok(())
    }

    fn state(&self) -> State<'_> {
        State {
            config: &self.config,
            client: &self.client,
            slots: &self.slots,
            metrics: &self.metrics,
            request_id: &self.request_id,
        }
    }
}

/// `GET /healthz`
pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(r#"{"status":"ok"}"#)
}

/// `POST /v1/chat/{provider}`
pub async fn chat(request: HttpRequest, payload: web::Payload) -> HttpResponse {
    let mut shared = Shared::from_request(&request);
    let registry = shared.registry.clone();
    // A known provider's own resource is named after it (see `app::configure`); any other name
    // comes through the `{provider}` pattern.
    let name = request
        .match_name()
        .or_else(|| request.match_info().get("provider"))
        .unwrap_or_default();
    let Some(provider) = registry.get(name) else {
        return registry.unknown(name).to_response(None);
    };
    let mut info = AccessInfo {
        provider: Some(provider.endpoint().name),
        ..AccessInfo::default()
    };
    let result = path_route(&request, payload, &mut shared, provider, &mut info).await;
    finish(Door::Path, result, info)
}

/// `POST /v1/chat/completions`: the OpenAI-compatible door.
pub async fn completions(request: HttpRequest, payload: web::Payload) -> HttpResponse {
    let mut shared = Shared::from_request(&request);
    let mut info = AccessInfo::default();
    let result = openai_door(&request, payload, &mut shared, &mut info).await;
    finish(Door::OpenAi, result, info)
}

/// `POST /v1/messages`: the Anthropic-compatible door.
pub async fn messages(request: HttpRequest, payload: web::Payload) -> HttpResponse {
    let mut shared = Shared::from_request(&request);
    let mut info = AccessInfo::default();
    let result = anthropic_door(&request, payload, &mut shared, &mut info).await;
    finish(Door::Anthropic, result, info)
}

/// `POST /v1/messages/count_tokens`: Anthropic's token counter, for Anthropic upstreams.
pub async fn count_tokens(request: HttpRequest, payload: web::Payload) -> HttpResponse {
    let mut shared = Shared::from_request(&request);
    let mut info = AccessInfo::default();
    let result = count_tokens_route(&request, payload, &mut shared, &mut info).await;
    finish(Door::Anthropic, result, info)
}

/// The reply, or the failure in the door's error shape, with what the access log needs.
fn finish(door: Door, result: Result<HttpResponse, Failure>, mut info: AccessInfo) -> HttpResponse {
    info.handled_at = Some(std::time::Instant::now());
    let mut response = match result {
        Ok(response) => response,
        Err(failure) => {
            let mut response =
                failure.into_response(|error| door.error_response(error, info.provider));
            label_failure(&mut response, &info);
            response
        }
    };
    if let Some(rule) = &info.rule {
        response.headers_mut().insert(PROXY_RULE, rule.clone());
    }
    response.extensions_mut().insert(info);
    response
}

/// The key a provider receives: the caller's, when the provider takes one. A provider that
/// needs none (`ollama`, or one declared with `"key_required": false`) never receives it: an
/// SDK sends its key to whatever base URL it has, and an OpenAI key must not reach a local or
/// third-party server that did not ask for it.
///
/// A provider whose key the proxy holds gets that key, for callers with keys it issued only.
/// A caller with an issued key and a provider without a held key may bring that provider's
/// key in `X-API-Key-<Provider>`; the issued key itself is never sent anywhere.
fn key_for(
    request: &HttpRequest,
    caller: &Caller,
    provider: &dyn Upstream,
    key: Option<HeaderValue>,
) -> Result<Option<HeaderValue>, ProxyError> {
    let endpoint = provider.endpoint();
    if let Some(held) = &endpoint.held_key {
        return match caller {
            Caller::Issued(_) => Ok(Some(held.clone())),
            Caller::Own => Err(ProxyError::KeyRejected(format!(
                "provider {:?} serves only keys this proxy issues: present one (lp-...) as \
                 Authorization: Bearer or X-API-Key",
                endpoint.name
            ))),
        };
    }
    let key = match caller {
        Caller::Issued(_) => header_key(request, &format!("x-api-key-{}", endpoint.name)),
        Caller::Own => key,
    };
    Ok(key.filter(|_| endpoint.key_required))
}

/// The error for a provider that needs a key and got none.
fn missing_key(caller: &Caller, provider: &dyn Upstream) -> ProxyError {
    match caller {
        Caller::Own => ProxyError::MissingKey,
        Caller::Issued(_) => {
            let name = provider.endpoint().name;
            ProxyError::KeyRejected(format!(
                "provider {name:?} has no key held by this proxy (api_key_env), so a key it \
                 issued cannot call it alone; send the provider's key in X-API-Key-{}",
                title_case(name)
            ))
        }
    }
}

/// The path route's checks in order (key, size, shape), then the exchange.
async fn path_route(
    request: &HttpRequest,
    payload: web::Payload,
    shared: &mut Shared,
    provider: &dyn Upstream,
    info: &mut AccessInfo,
) -> Result<HttpResponse, Failure> {
    // The path route's checks run in a documented order: the key before the body.
    shared.identify(request, info)?;
    let key = key_for(
        request,
        &shared.caller,
        provider,
        request_key(request, false),
    )?;
    if key.is_none() && provider.endpoint().key_required {
        return Err(missing_key(&shared.caller, provider).into());
    }
    let body = read_body(request, payload, shared).await?;
    // Counted once the body is in: slow senders hold no place among requests in flight.
    let permit = shared.limit.try_acquire()?;
    // Every body is checked whatever the provider: the path route's shape is ours.
    let mut chat = openai::door::parse(&body).map_err(ProxyError::InvalidRequest)?;
    // The model as asked lives here from now on; upstreams get each target's own.
    let asked = std::mem::take(&mut chat.model);
    info.model = Some(asked.clone());
    info.stream = chat.stream;
    if shared.caller.key().is_some() {
        let named = format!("{}/{asked}", provider.endpoint().name);
        shared.admit(info, &[&named]).await?;
    }
    let registry = &shared.registry;
    // An alias of this provider stands for its model; an alias of another is a mistake.
    let (model, alias_fallbacks) = match registry.alias(&asked) {
        None => (asked.as_str(), &[][..]),
        Some(alias) if alias.provider == provider.endpoint().name => {
            (alias.model.as_str(), &alias.fallbacks[..])
        }
        Some(alias) => {
            return Err(ProxyError::InvalidRequest(format!(
                "`model` {:?} is an alias for provider {:?}; send it to /v1/chat/{} or /v1/chat/completions",
                alias.name, alias.provider, alias.provider
            ))
            .into())
        }
    };
    let fallbacks = header_fallbacks(request)?;
    let fallbacks = if fallbacks.is_empty() {
        alias_fallbacks.iter().map(|f| f.as_str()).collect()
    } else {
        fallbacks
    };
    let primary = Target {
        upstream: provider,
        model: Cow::Borrowed(model),
        key: Ok(key.clone()),
        tracked: None,
    };
    let targets = targets(
        registry,
        request,
        &shared.caller,
        primary,
        &fallbacks,
        key.as_ref(),
    )?;
    let stream = chat.stream;
    let incoming = Incoming::new(Door::Path, &body, &asked, stream).with_request(chat);
    run(request, shared, &incoming, &targets, permit, info).await
}

/// The OpenAI door's checks: size, shape, model, key (which may be optional for the provider
/// the model names), then the exchange. Only what the proxy must read is read here; the rest
/// of the body is parsed only for an upstream of another format.
async fn openai_door(
    request: &HttpRequest,
    payload: web::Payload,
    shared: &mut Shared,
    info: &mut AccessInfo,
) -> Result<HttpResponse, Failure> {
    let body = read_body(request, payload, shared).await?;
    shared.identify(request, info)?;
    // Counted once the body is in: slow senders hold no place among requests in flight.
    let permit = shared.limit.try_acquire()?;
    let probe = openai::door::probe(&body).map_err(ProxyError::InvalidRequest)?;
    info.model = Some(probe.model.clone());
    info.stream = probe.stream;
    shared.admit(info, &[&probe.model]).await?;
    let body_fallbacks = body_fallbacks(&body)?;
    let targets = door_plan(
        Door::OpenAi,
        request,
        shared,
        info,
        &probe.model,
        &body,
        &body_fallbacks,
    )?;
    let mut incoming = Incoming::new(Door::OpenAi, &body, &probe.model, probe.stream);
    incoming.include_usage = probe.include_usage;
    incoming.remove = &PROXY_FIELDS;
    run(request, shared, &incoming, &targets, permit, info).await
}

/// The Anthropic door: as the OpenAI door, with Anthropic's model names (a bare Claude model
/// means `anthropic/<name>`), its headers and query string passed on to Anthropic upstreams.
async fn anthropic_door(
    request: &HttpRequest,
    payload: web::Payload,
    shared: &mut Shared,
    info: &mut AccessInfo,
) -> Result<HttpResponse, Failure> {
    let body = read_body(request, payload, shared).await?;
    shared.identify(request, info)?;
    let permit = shared.limit.try_acquire()?;
    let probe = anthropic::door::probe(&body).map_err(ProxyError::InvalidRequest)?;
    info.model = Some(probe.model.clone());
    info.stream = probe.stream;
    admit_anthropic(shared, info, &probe.model).await?;
    let body_fallbacks = body_fallbacks(&body)?;
    let targets = door_plan(
        Door::Anthropic,
        request,
        shared,
        info,
        &probe.model,
        &body,
        &body_fallbacks,
    )?;
    let mut incoming = Incoming::new(Door::Anthropic, &body, &probe.model, probe.stream);
    incoming.query = Some(request.query_string()).filter(|query| !query.is_empty());
    incoming.headers = anthropic_headers(request);
    incoming.remove = &PROXY_FIELDS;
    run(request, shared, &incoming, &targets, permit, info).await
}

/// The Anthropic door's admission: a bare Claude model is also `anthropic/<model>` to a key's
/// allowed models.
async fn admit_anthropic(
    shared: &Shared,
    info: &mut AccessInfo,
    model: &str,
) -> Result<(), ProxyError> {
    if shared.caller.key().is_none() {
        return Ok(());
    }
    let qualified = format!("anthropic/{model}");
    let names: &[&str] = match model.contains('/') {
        true => &[model],
        false => &[model, &qualified],
    };
    shared.admit(info, names).await
}

/// Where the `routes` rules send a door's request, if one matches: the rule's `to` then
/// stands for the model, and the log and `X-Proxy-Rule` name the rule. The two doors and
/// `count_tokens` apply rules; the path route names its provider in the path, a promise a
/// rule must not break.
fn route<'s>(
    request: &HttpRequest,
    shared: &'s Shared,
    model: &str,
    body: &[u8],
    info: &mut AccessInfo,
) -> Option<&'s str> {
    let rules: &'s Rules = &shared.rules;
    if rules.is_empty() {
        return None;
    }
    let fingerprint = rules
        .needs_key_fingerprint()
        .then(|| request_key(request, true))
        .flatten()
        .map(|key| KeyFingerprint::of(key.as_bytes()));
    let facts = Facts {
        model,
        headers: request.headers(),
        key_fingerprint: fingerprint.as_ref().map(KeyFingerprint::as_str),
        prompt_tokens: rules::estimate_prompt_tokens(body.len()),
        now: shared
            .config
            .clock_override
            .unwrap_or_else(std::time::SystemTime::now),
    };
    let matched = rules.route(&facts)?;
    info.rule = Some(matched.rule.clone());
    Some(&matched.to)
}

/// `count_tokens` goes to the provider the model names when it speaks Anthropic's API, once,
/// and its answer comes back as it came; no other format has the endpoint.
async fn count_tokens_route(
    request: &HttpRequest,
    payload: web::Payload,
    shared: &mut Shared,
    info: &mut AccessInfo,
) -> Result<HttpResponse, Failure> {
    let body = read_body(request, payload, shared).await?;
    shared.identify(request, info)?;
    let _permit = shared.limit.try_acquire()?;
    let probe = anthropic::door::probe(&body).map_err(ProxyError::InvalidRequest)?;
    info.model = Some(probe.model.clone());
    admit_anthropic(shared, info, &probe.model).await?;
    // The rules and groups of `/v1/messages` apply, so a count is for the model that would answer.
    let asked = route(request, shared, &probe.model, &body, info).unwrap_or(&probe.model);
    let (provider, model) = match shared.registry.group(asked) {
        Some(group) => counting_deployment(&shared.registry, group)?,
        None => resolve_anthropic(&shared.registry, asked)?,
    };
    info.provider = Some(provider.endpoint().name);
    if provider.format() != Format::Anthropic {
        return Err(ProxyError::InvalidRequest(format!(
            "/v1/messages/count_tokens counts tokens only for models of Anthropic-format \
             providers; {:?} is not one",
            provider.endpoint().name
        ))
        .into());
    }
    let key = door_key(request, &shared.caller, provider)?;
    let mut incoming = Incoming::new(Door::Anthropic, &body, &probe.model, false);
    incoming.query = Some(request.query_string()).filter(|query| !query.is_empty());
    incoming.headers = anthropic_headers(request);
    incoming.remove = &PROXY_FIELDS;
    let state = shared.state();
    let mut outcome = Outcome::default();
    let result = exchange::count_tokens(
        &state,
        &incoming,
        provider,
        model,
        key.as_ref(),
        &mut outcome,
    )
    .await;
    let headers = std::mem::take(&mut outcome.upstream_headers);
    record(info, outcome);
    result.map_err(|error| Failure { error, headers })
}

/// The deployment that counts tokens for a group: its first, in the file's order, on an
/// Anthropic-format provider (every Claude model counts the same text alike).
fn counting_deployment<'r>(
    registry: &'r Registry,
    group: &'r Group,
) -> Result<(&'r dyn Upstream, &'r str), ProxyError> {
    (0..group.decl.deployments.len())
        .map(|i| {
            (
                registry.deployment(group, i),
                group.decl.deployments[i].model.as_str(),
            )
        })
        .find(|(upstream, _)| upstream.format() == Format::Anthropic)
        .ok_or_else(|| {
            ProxyError::InvalidRequest(format!(
                "/v1/messages/count_tokens counts tokens only for models of Anthropic-format \
                 providers; group {:?} has no deployment on one",
                group.decl.name
            ))
        })
}

/// A door's targets for the model the caller named: the `routes` rules first, then a group's
/// deployments, or the provider and model it resolves to (each door by its own naming) with
/// the fallbacks after it.
fn door_plan<'r>(
    door: Door,
    request: &'r HttpRequest,
    shared: &'r Shared,
    info: &mut AccessInfo,
    asked: &'r str,
    body: &[u8],
    body_fallbacks: &'r [String],
) -> Result<Vec<Target<'r>>, ProxyError> {
    let registry = &shared.registry;
    let routed = route(request, shared, asked, body, info).unwrap_or(asked);
    if let Some(group) = registry.group(routed) {
        return group_targets(request, shared, info, group, body, body_fallbacks);
    }
    let (provider, model) = match door {
        Door::Anthropic => resolve_anthropic(registry, routed)?,
        _ => registry.resolve(routed)?,
    };
    door_targets(
        request,
        shared,
        info,
        provider,
        model,
        routed,
        body_fallbacks,
    )
}

/// A door's model without a `/`: an alias, or else a model of Anthropic's own.
fn resolve_anthropic<'r>(
    registry: &'r Registry,
    model: &'r str,
) -> Result<(&'r dyn Upstream, &'r str), ProxyError> {
    if registry.alias(model).is_none() && !model.contains('/') {
        let anthropic = registry
            .get("anthropic")
            .ok_or_else(|| registry.unknown("anthropic"))?;
        return Ok((anthropic, model));
    }
    registry.resolve(model)
}

/// The caller's Anthropic headers, to pass on to an Anthropic upstream.
fn anthropic_headers(request: &HttpRequest) -> Vec<(HeaderName, HeaderValue)> {
    ANTHROPIC_HEADERS
        .iter()
        .filter_map(|name| {
            let value = request.headers().get(*name)?;
            Some((HeaderName::from_static(name), value.clone()))
        })
        .collect()
}

/// The key for a door's provider: `X-API-Key` or `Authorization: Bearer`, required when the
/// provider requires one.
fn door_key(
    request: &HttpRequest,
    caller: &Caller,
    provider: &dyn Upstream,
) -> Result<Option<HeaderValue>, ProxyError> {
    let key = key_for(request, caller, provider, request_key(request, true))?;
    if key.is_none() && provider.endpoint().key_required {
        return Err(missing_key(caller, provider));
    }
    Ok(key)
}

/// A door's targets: the provider its model names, then the fallbacks (`X-Fallbacks`, the
/// body's `fallbacks`, or else the alias's).
fn door_targets<'r>(
    request: &'r HttpRequest,
    shared: &'r Shared,
    info: &mut AccessInfo,
    provider: &'r dyn Upstream,
    model: &'r str,
    asked: &str,
    body_fallbacks: &'r [String],
) -> Result<Vec<Target<'r>>, ProxyError> {
    info.provider = Some(provider.endpoint().name);
    let key = door_key(request, &shared.caller, provider)?;
    let registry = &shared.registry;
    let mut fallbacks = header_fallbacks(request)?;
    fallbacks.extend(body_fallbacks.iter().map(String::as_str));
    if fallbacks.is_empty() {
        if let Some(alias) = registry.alias(asked) {
            fallbacks.extend(alias.fallbacks.iter().map(String::as_str));
        }
    }
    let primary = Target {
        upstream: provider,
        model: Cow::Borrowed(model),
        key: Ok(key.clone()),
        tracked: None,
    };
    targets(
        registry,
        request,
        &shared.caller,
        primary,
        &fallbacks,
        key.as_ref(),
    )
}

/// A door's targets for a group (an alias is a one-deployment group): its deployments in the
/// order its strategy picks, each with the caller's key when of the provider of the group's
/// first deployment, else `X-API-Key-<Provider>` (a key never goes to another provider than
/// its own); then the request's fallbacks, or else an alias's. Without a key for any deployment, the request is refused as without a key.
fn group_targets<'r>(
    request: &'r HttpRequest,
    shared: &'r Shared,
    info: &mut AccessInfo,
    group: &'r Group,
    body: &[u8],
    body_fallbacks: &'r [String],
) -> Result<Vec<Target<'r>>, ProxyError> {
    let registry = &shared.registry;
    let caller_key = request_key(request, true);
    let primary = group.decl.deployments[0].provider.as_str();
    let key_of = |upstream: &dyn Upstream| {
        let name = upstream.endpoint().name;
        let own = || header_key(request, &format!("x-api-key-{name}"));
        let key = match name == primary {
            true => caller_key.clone().or_else(own),
            false => own(),
        };
        match key_for(request, &shared.caller, upstream, key) {
            Err(refused) => Err(format!("skipped: {refused}")),
            Ok(None) if upstream.endpoint().key_required => Err(format!(
                "skipped: no key (send it in X-API-Key-{})",
                title_case(name)
            )),
            Ok(key) => Ok(key),
        }
    };
    let mut deployments = group_door::targets(
        request,
        registry,
        &shared.prices,
        group,
        body,
        caller_key.as_ref(),
        key_of,
    );
    if deployments.iter().all(|target| target.key.is_err()) {
        let first = deployments[0].upstream;
        return Err(
            match key_for(request, &shared.caller, first, caller_key.clone()) {
                Err(refused) => refused,
                Ok(_) => missing_key(&shared.caller, first),
            },
        );
    }
    info.provider = deployments.first().map(|t| t.upstream.endpoint().name);
    let mut fallbacks = header_fallbacks(request)?;
    fallbacks.extend(body_fallbacks.iter().map(String::as_str));
    if fallbacks.is_empty() {
        fallbacks.extend(group.alias_fallbacks.iter().flatten().map(String::as_str));
    }
    if fallbacks.is_empty() {
        return Ok(deployments);
    }
    let rest = deployments.split_off(1);
    let first = deployments.pop().expect("a group has a deployment");
    let first_key = first.key.clone().ok().flatten();
    let mut all = targets(
        registry,
        request,
        &shared.caller,
        first,
        &fallbacks,
        first_key.as_ref(),
    )?;
    all.splice(1..1, rest);
    Ok(all)
}

/// `X-Proxy-Cache`: asks for the cache (`use`), and says what came of it (`HIT`, `MISS`,
/// `BYPASS`).
const PROXY_CACHE: HeaderName = HeaderName::from_static("x-proxy-cache");

/// The headers a cached answer keeps: what it is and who answered it. Not the upstream's rate
/// limits or request id, which were about that one call.
const CACHED_HEADERS: [&str; 5] = [
    "content-type",
    "x-proxy-provider",
    "x-proxy-model",
    "x-proxy-group",
    "x-proxy-deployment",
];

/// Whether a request uses the response cache, and under which key.
enum CachePlan {
    /// Nobody asked: the request never touches the cache.
    Off,
    /// Asked, but the caller's `Cache-Control` said not to (or the cache keeps nothing).
    Bypass,
    Use {
        key: [u8; 32],
        ttl: std::time::Duration,
    },
}

impl CachePlan {
    /// A request uses the cache when its group has `cache`, or it sends `X-Proxy-Cache: use`.
    /// The key holds the tenant (the issued key's id, else the caller's key fingerprint), the
    /// route, the headers that change an answer, the rule that chose the target, and the body.
    fn new(
        request: &HttpRequest,
        shared: &Shared,
        info: &AccessInfo,
        model: Option<&str>,
        body: &[u8],
    ) -> Self {
        let headers = request.headers();
        let asked = headers
            .get(&PROXY_CACHE)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"use"));
        let group_ttl = model
            .and_then(|model| shared.registry.group(model))
            .and_then(|group| group.decl.cache_ttl);
        let ttl = match (group_ttl, asked) {
            (Some(ttl), _) => ttl,
            (None, true) => shared.config.cache_ttl,
            (None, false) => return Self::Off,
        };
        let no_cache = headers.get_all(header::CACHE_CONTROL).any(|value| {
            let value = value.to_str().unwrap_or_default().to_ascii_lowercase();
            value.contains("no-cache") || value.contains("no-store")
        });
        if no_cache || shared.config.cache_max_bytes == 0 {
            return Self::Bypass;
        }
        let own_key;
        let tenant = match (&info.key_id, &info.caller) {
            (Some(id), _) => id.as_str(),
            (None, Some(fingerprint)) => fingerprint.as_str(),
            (None, None) => {
                own_key = request_key(request, true)
                    .map(|key| KeyFingerprint::of(key.as_bytes()).as_str().to_owned());
                own_key.as_deref().unwrap_or_default()
            }
        };
        let route = format!("{}?{}", request.path(), request.query_string());
        let key = crate::cache::key(&crate::cache::KeyParts {
            tenant,
            route: &route,
            headers: &ANTHROPIC_HEADERS.map(|name| headers.get(name).map(HeaderValue::as_bytes)),
            rule: info.rule.as_ref().map(HeaderValue::as_bytes),
            body,
        });
        Self::Use { key, ttl }
    }

    /// The cached answer, when there is one.
    async fn hit(&self, shared: &Shared, info: &mut AccessInfo) -> Option<HttpResponse> {
        let Self::Use { key, .. } = self else {
            return None;
        };
        let cached = shared.cache.lookup(key).await?;
        shared.metrics.cache(true);
        info.cached = true;
        let mut response = cached.response();
        let headers = response.headers_mut();
        headers.insert(PROXY_CACHE, HeaderValue::from_static("HIT"));
        headers.insert(observe::PROXY_COST, HeaderValue::from_static("0"));
        Some(response)
    }

    /// Keeps a successful answer (a stream once it has passed whole, see
    /// [`crate::cache::record`]), and says what the cache did.
    fn keep(
        self,
        shared: &Shared,
        info: &AccessInfo,
        result: Result<HttpResponse, Failure>,
    ) -> Result<HttpResponse, Failure> {
        let (key, ttl) = match self {
            Self::Off => return result,
            Self::Bypass => {
                return result.map(|mut response| {
                    let value = HeaderValue::from_static("BYPASS");
                    response.headers_mut().insert(PROXY_CACHE, value);
                    response
                })
            }
            Self::Use { key, ttl } => (key, ttl),
        };
        shared.metrics.cache(false);
        let response = result?;
        let status = response.status();
        let kept = |response: &HttpResponse| -> Vec<(HeaderName, HeaderValue)> {
            response
                .headers()
                .iter()
                .filter(|(name, _)| CACHED_HEADERS.contains(&name.as_str()))
                .map(|(name, value)| (name.clone(), value.clone()))
                .collect()
        };
        let mut response = match (status.is_success(), response.body().size()) {
            (true, BodySize::Stream) => {
                let entry = record::Entry {
                    key,
                    status,
                    headers: kept(&response),
                    ttl,
                };
                let report = info.stream_report.clone();
                let cache = shared.cache.clone();
                response.map_body(|_, body| {
                    BoxBody::new(record::Recorder::new(body, entry, report, cache))
                })
            }
            (true, BodySize::Sized(_)) => {
                let headers = kept(&response);
                let (response, body) = response.into_parts();
                let body = match body.try_into_bytes() {
                    Ok(bytes) => bytes,
                    Err(body) => return Ok(response.set_body(body)),
                };
                shared.cache.insert(
                    key,
                    crate::cache::Cached {
                        status,
                        headers,
                        body: body.clone(),
                        ttl,
                    },
                );
                response.set_body(BoxBody::new(body))
            }
            _ => response,
        };
        response
            .headers_mut()
            .insert(PROXY_CACHE, HeaderValue::from_static("MISS"));
        Ok(response)
    }
}

/// Answers from the cache when the request asks for it and an answer is there; else hands the
/// targets to the exchange, notes what came of it for the log, and keeps a cacheable answer.
async fn run(
    request: &HttpRequest,
    shared: &Shared,
    incoming: &Incoming<'_>,
    targets: &[Target<'_>],
    permit: RequestPermit,
    info: &mut AccessInfo,
) -> Result<HttpResponse, Failure> {
    // The path route names a provider, never a group whose `cache` could apply.
    let group = (incoming.door != Door::Path).then_some(incoming.model);
    let plan = CachePlan::new(request, shared, info, group, incoming.body);
    if let Some(hit) = plan.hit(shared, info).await {
        return Ok(hit);
    }
    let max_retries = max_retries(request, shared.config.max_retries)?;
    let mut outcome = Outcome::default();
    let state = shared.state();
    let result = exchange::run(&state, incoming, targets, max_retries, permit, &mut outcome).await;
    let headers = std::mem::take(&mut outcome.upstream_headers);
    record(info, outcome);
    plan.keep(
        shared,
        info,
        result.map_err(|error| Failure { error, headers }),
    )
}

/// `GET /v1/models`
pub async fn models(registry: web::Data<Registry>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(models_body(&registry))
}

/// `GET /v1/models`: every alias, every group, then every provider as `provider/*` (any model of it).
fn models_body(registry: &Registry) -> Vec<u8> {
    #[derive(Serialize)]
    struct List<'a> {
        object: &'static str,
        data: Vec<Model<'a>>,
    }
    #[derive(Serialize)]
    struct Model<'a> {
        id: std::borrow::Cow<'a, str>,
        object: &'static str,
        created: u64,
        owned_by: &'a str,
    }
    let aliases = registry.aliases().iter().map(|alias| Model {
        id: alias.name.as_str().into(),
        object: "model",
        created: 0,
        owned_by: alias.provider,
    });
    let groups = registry
        .groups()
        .iter()
        .filter(|group| group.alias_fallbacks.is_none());
    let groups = groups.map(|group| Model {
        id: group.decl.name.as_str().into(),
        object: "model",
        created: 0,
        owned_by: "llm-proxy",
    });
    let providers = registry.names().into_iter().map(|name| Model {
        id: format!("{name}/*").into(),
        object: "model",
        created: 0,
        owned_by: name,
    });
    let list = List {
        object: "list",
        data: aliases.chain(groups).chain(providers).collect(),
    };
    serde_json::to_vec(&list).expect("a model list always serializes")
}

/// The primary target, then one per fallback, each with its own key: the caller's key for the
/// primary's provider, `X-API-Key-<Provider>` for any other. A fallback without the key it
/// needs stays in the list, marked as skipped, so the final error can say so.
fn targets<'r>(
    registry: &'r Registry,
    request: &HttpRequest,
    caller: &Caller,
    primary: Target<'r>,
    fallbacks: &[&'r str],
    primary_key: Option<&HeaderValue>,
) -> Result<Vec<Target<'r>>, ProxyError> {
    if fallbacks.len() > MAX_FALLBACKS {
        return Err(ProxyError::TooManyFallbacks {
            given: fallbacks.len(),
        });
    }
    let primary_name = primary.upstream.endpoint().name;
    let mut targets = vec![primary];
    for spec in fallbacks {
        let (provider, model) = registry.resolve(spec).map_err(|e| match e {
            ProxyError::InvalidRequest(why) => {
                ProxyError::InvalidRequest(format!("fallback {spec:?}: {why}"))
            }
            ProxyError::UnknownProvider { name, known } => ProxyError::InvalidRequest(format!(
                "fallback {spec:?}: unknown provider {name:?}; known providers: {known}"
            )),
            other => other,
        })?;
        let endpoint = provider.endpoint();
        let key = if endpoint.name == primary_name {
            primary_key.cloned()
        } else {
            header_key(request, &format!("x-api-key-{}", endpoint.name))
        };
        let key = match key_for(request, caller, provider, key) {
            Err(refused) => Err(format!("skipped: {refused}")),
            Ok(None) if endpoint.key_required => Err(format!(
                "skipped: no key (send it in X-API-Key-{})",
                title_case(endpoint.name)
            )),
            Ok(key) => Ok(key),
        };
        targets.push(Target {
            upstream: provider,
            model: Cow::Borrowed(model),
            key,
            tracked: None,
        });
    }
    Ok(targets)
}

/// `Anthropic` for `anthropic`: how the key header is written in messages.
fn title_case(name: &str) -> String {
    let mut chars = name.chars();
    chars
        .next()
        .map(|first| first.to_ascii_uppercase().to_string() + chars.as_str())
        .unwrap_or_default()
}

/// The fallbacks named in `X-Fallbacks`, comma-separated.
fn header_fallbacks(request: &HttpRequest) -> Result<Vec<&str>, ProxyError> {
    let Some(value) = request.headers().get("x-fallbacks") else {
        return Ok(Vec::new());
    };
    let value = value
        .to_str()
        .map_err(|_| ProxyError::InvalidRequest("`X-Fallbacks` must be ASCII".into()))?;
    Ok(value
        .split(',')
        .map(str::trim)
        .filter(|spec| !spec.is_empty())
        .collect())
}

/// The fallbacks named in a door's `fallbacks` body field. The body is read for it only when
/// it has the word at all.
fn body_fallbacks(body: &[u8]) -> Result<Vec<String>, ProxyError> {
    #[derive(serde::Deserialize)]
    struct Probe {
        fallbacks: Option<Vec<String>>,
    }
    if memchr::memmem::find(body, b"\"fallbacks\"").is_none() {
        return Ok(Vec::new());
    }
    let probe: Probe = serde_json::from_slice(body).map_err(|_| {
        ProxyError::InvalidRequest(
            "`fallbacks` must be a list of `provider/model` strings or aliases".into(),
        )
    })?;
    Ok(probe.fallbacks.unwrap_or_default())
}

/// `X-Max-Retries`, which may lower the configured maximum for one request but never raise it.
fn max_retries(request: &HttpRequest, configured: u32) -> Result<u32, ProxyError> {
    match request.headers().get("x-max-retries") {
        None => Ok(configured),
        Some(value) => value
            .to_str()
            .ok()
            .and_then(|v| v.trim().parse::<u32>().ok())
            .map(|asked| asked.min(configured))
            .ok_or_else(|| {
                ProxyError::InvalidRequest("`X-Max-Retries` must be a whole number".into())
            }),
    }
}

/// The caller's key: `X-API-Key`, or on the front door also `Authorization: Bearer`, which is
/// what the OpenAI SDKs send. Empty counts as missing.
fn request_key(request: &HttpRequest, bearer: bool) -> Option<HeaderValue> {
    let headers = request.headers();
    let key = match headers.get("x-api-key") {
        Some(key) => key,
        None if bearer => {
            let authorization = headers.get(header::AUTHORIZATION)?.as_bytes();
            return own_key(authorization.strip_prefix(b"Bearer ")?, None);
        }
        None => return None,
    };
    own_key(key.as_bytes(), Some(key))
}

/// `key` unless it is blank or one this proxy issued (that is its own business, see `caller`,
/// never a provider's key). `whole` is the header value `key` is all of, if it is: shared
/// rather than copied.
fn own_key(key: &[u8], whole: Option<&HeaderValue>) -> Option<HeaderValue> {
    if keys::looks_issued(std::str::from_utf8(key).unwrap_or_default().trim()) {
        return None;
    }
    non_blank(key, whole)
}

fn header_key(request: &HttpRequest, name: &str) -> Option<HeaderValue> {
    let value = request.headers().get(name)?;
    non_blank(value.as_bytes(), Some(value))
}

fn non_blank(key: &[u8], whole: Option<&HeaderValue>) -> Option<HeaderValue> {
    let trimmed = key.trim_ascii();
    match whole {
        _ if trimmed.is_empty() => None,
        Some(value) if trimmed.len() == key.len() => Some(value.clone()),
        _ => HeaderValue::from_bytes(trimmed).ok(),
    }
}

/// A failed reply still says which provider was tried last and how many calls were made.
fn label_failure(response: &mut HttpResponse, info: &AccessInfo) {
    if info.attempts > 0 {
        if let (Some(provider), Some(model)) = (info.provider, &info.model) {
            exchange::label(response, provider, model, info.attempts);
        }
    }
}

/// Reads the request body whatever its `Content-Type`: at most `MAX_BODY_BYTES`, within
/// `CLIENT_BODY_TIMEOUT_SECONDS`, and holding its bytes against `MAX_PENDING_BODY_BYTES` while
/// it arrives.
async fn read_body(
    request: &HttpRequest,
    mut payload: web::Payload,
    shared: &Shared,
) -> Result<Bytes, ProxyError> {
    /// Preallocated at most, whatever `Content-Length` claims; the body grows past it as it
    /// arrives.
    const PREALLOCATE: usize = 1 << 20;
    let limit = shared.config.max_body_bytes;
    let too_large = ProxyError::PayloadTooLarge { limit };
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok()?.parse::<usize>().ok());
    if declared.is_some_and(|length| length > limit) {
        return Err(too_large);
    }
    let mut reservation = shared.budget.reserve();
    let read = async {
        let mut body = BytesMut::with_capacity(declared.unwrap_or(0).min(PREALLOCATE));
        while let Some(chunk) = payload.next().await {
            let chunk = chunk.map_err(|e| {
                ProxyError::InvalidRequest(format!("the request body could not be read: {e}"))
            })?;
            if body.len() + chunk.len() > limit {
                return Err(too_large);
            }
            reservation.grow(chunk.len())?;
            body.extend_from_slice(&chunk);
        }
        Ok(body.freeze())
    };
    actix_web::rt::time::timeout(shared.config.client_body_timeout, read)
        .await
        .unwrap_or(Err(ProxyError::BodyTimeout))
}

/// Fallback for unknown paths.
pub async fn not_found() -> Result<HttpResponse, ProxyError> {
    Err(ProxyError::NotFound)
}

/// Fallback for known paths with the wrong method.
pub async fn method_not_allowed() -> Result<HttpResponse, ProxyError> {
    Err(ProxyError::MethodNotAllowed)
}

/// Fallback for a provider's path with the wrong method: the error, the access log and the
/// metrics name the provider, as for every other request on that route.
pub async fn method_not_allowed_chat(
    request: HttpRequest,
    registry: web::Data<Registry>,
) -> HttpResponse {
    let provider = request
        .match_name()
        .and_then(|name| registry.get(name))
        .map(|provider| provider.endpoint().name);
    let mut response = ProxyError::MethodNotAllowed.to_response(provider);
    response.extensions_mut().insert(AccessInfo {
        provider,
        ..AccessInfo::default()
    });
    response
}

/// Fallback for the OpenAI-compatible paths with the wrong method, in OpenAI's error shape.
pub async fn method_not_allowed_openai() -> HttpResponse {
    ProxyError::MethodNotAllowed.to_openai_response(None)
}

/// Fallback for the Anthropic-compatible paths with the wrong method, in Anthropic's shape.
pub async fn method_not_allowed_anthropic() -> HttpResponse {
    ProxyError::MethodNotAllowed.to_anthropic_response(None)
}
