//! HTTP handlers: read the request, pick the provider, call the upstream, reply (buffered or
//! streamed) in the route's shape.

use actix_web::{
    http::{
        header::{self, HeaderValue},
        StatusCode,
    },
    web::{self, Bytes, BytesMut},
    HttpRequest, HttpResponse,
};
use awc::Client;
use futures_util::StreamExt;

use crate::{
    chat::ChatRequest,
    completions::{self, ChunkWriter, OPENAI_ONLY_FIELDS},
    config::Config,
    error::{redact, ProxyError},
    providers::{ChatProvider, Registry},
    upstream::{self, Body, Relay, StreamErrors, Translated},
};

/// What the access log says about a request, left in the response's extensions.
#[derive(Clone, Debug, Default)]
pub struct AccessInfo {
    pub provider: Option<&'static str>,
    pub model: Option<String>,
    pub upstream_status: Option<u16>,
    pub stream: bool,
}

/// The two ways in, which answer in different shapes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Route {
    /// `POST /v1/chat/{provider}`: the normalized body, pass-through streams, our errors.
    Path,
    /// `POST /v1/chat/completions`: OpenAI's shapes throughout.
    FrontDoor,
}

/// The shared state every chat handler reads.
pub struct State<'s> {
    config: &'s Config,
    registry: &'s Registry,
    client: &'s Client,
}

/// `GET /healthz`
pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(r#"{"status":"ok"}"#)
}

/// `POST /v1/chat/{provider}`
pub async fn chat(
    request: HttpRequest,
    payload: web::Payload,
    config: web::Data<Config>,
    registry: web::Data<Registry>,
    client: web::Data<Client>,
) -> HttpResponse {
    let name = request.match_info().get("provider").unwrap_or_default();
    let Some(provider) = registry.get(name) else {
        return registry.unknown(name).to_response(None);
    };
    let state = State {
        config: &config,
        registry: &registry,
        client: &client,
    };
    let mut info = AccessInfo {
        provider: Some(provider.endpoint().name),
        ..AccessInfo::default()
    };
    let mut response = match path_route(&request, payload, &state, provider, &mut info).await {
        Ok(response) => response,
        Err(error) => error.to_response(Some(provider.endpoint().name)),
    };
    response.extensions_mut().insert(info);
    response
}

/// The path route's checks in order (key, size, shape), then the exchange.
async fn path_route(
    request: &HttpRequest,
    payload: web::Payload,
    state: &State<'_>,
    provider: &dyn ChatProvider,
    info: &mut AccessInfo,
) -> Result<HttpResponse, ProxyError> {
    let key = request_key(request, false);
    if key.is_none() && provider.endpoint().key_required {
        return Err(ProxyError::MissingKey);
    }
    let key = key.as_ref();
    let body = read_body(request, payload, state.config.max_body_bytes).await?;
    let chat = ChatRequest::parse(&body).map_err(ProxyError::InvalidRequest)?;
    info.model = Some(chat.model.clone().into_owned());
    info.stream = chat.stream;
    // An alias of this provider stands for its model; an alias of another is a mistake.
    let model = match state.registry.alias(&chat.model) {
        None => chat.model.as_ref(),
        Some(alias) if alias.provider == provider.endpoint().name => alias.model.as_str(),
        Some(alias) => {
            return Err(ProxyError::InvalidRequest(format!(
                "`model` {:?} is an alias for provider {:?}; send it to /v1/chat/{} or /v1/chat/completions",
                alias.name, alias.provider, alias.provider
            )))
        }
    };
    exchange(Route::Path, state, provider, &chat, model, key, info).await
}

/// `POST /v1/chat/completions`: the OpenAI-compatible front door.
pub async fn completions(
    request: HttpRequest,
    payload: web::Payload,
    config: web::Data<Config>,
    registry: web::Data<Registry>,
    client: web::Data<Client>,
) -> HttpResponse {
    let state = State {
        config: &config,
        registry: &registry,
        client: &client,
    };
    let mut info = AccessInfo::default();
    let mut response = match front_door(&request, payload, &state, &mut info).await {
        Ok(response) => response,
        Err(error) => error.to_openai_response(info.provider),
    };
    response.extensions_mut().insert(info);
    response
}

/// The front door's checks: size, shape, model, key (which may be optional for the provider
/// the model names), then the exchange.
async fn front_door(
    request: &HttpRequest,
    payload: web::Payload,
    state: &State<'_>,
    info: &mut AccessInfo,
) -> Result<HttpResponse, ProxyError> {
    let body = read_body(request, payload, state.config.max_body_bytes).await?;
    let mut chat = ChatRequest::parse(&body).map_err(ProxyError::InvalidRequest)?;
    info.model = Some(chat.model.clone().into_owned());
    info.stream = chat.stream;
    let requested = chat.model.clone();
    let (provider, model) = completions::resolve(state.registry, &requested)?;
    info.provider = Some(provider.endpoint().name);
    let key = request_key(request, true);
    if key.is_none() && provider.endpoint().key_required {
        return Err(ProxyError::MissingKey);
    }
    let key = key.as_ref();
    if !provider.speaks_openai() {
        chat.remove_fields(&OPENAI_ONLY_FIELDS);
    }
    exchange(Route::FrontDoor, state, provider, &chat, model, key, info).await
}

/// `GET /v1/models`
pub async fn models(registry: web::Data<Registry>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(completions::models_body(&registry))
}

/// The caller's key: `X-API-Key`, or on the front door also `Authorization: Bearer`, which is
/// what the OpenAI SDKs send. Empty counts as missing.
fn request_key(request: &HttpRequest, bearer: bool) -> Option<HeaderValue> {
    let headers = request.headers();
    let api_key = headers.get("x-api-key").map(HeaderValue::as_bytes);
    let token = || {
        let authorization = headers.get(header::AUTHORIZATION)?.as_bytes();
        authorization.strip_prefix(b"Bearer ")
    };
    let key = match api_key {
        Some(key) => key,
        None if bearer => token()?,
        None => return None,
    };
    let key = key.trim_ascii();
    if key.is_empty() {
        return None;
    }
    HeaderValue::from_bytes(key).ok()
}

/// Sends the request upstream and answers in the route's shape.
async fn exchange(
    route: Route,
    state: &State<'_>,
    provider: &dyn ChatProvider,
    chat: &ChatRequest<'_>,
    model: &str,
    key: Option<&HeaderValue>,
    info: &mut AccessInfo,
) -> Result<HttpResponse, ProxyError> {
    let config = state.config;
    let endpoint = provider.endpoint();
    let mut upstream_request = provider.translate_request(chat, model, key)?;
    upstream_request
        .headers
        .extend(endpoint.headers.iter().cloned());
    let upstream = upstream::send(state.client, upstream_request, config.http_timeout).await?;
    let status = upstream.status();
    info.upstream_status = Some(status.as_u16());
    let passed_on = upstream::passed_on_headers(upstream.headers());

    if !status.is_success() {
        let body =
            upstream::read_body(upstream, config.max_response_bytes, config.http_timeout).await?;
        return Err(ProxyError::Upstream {
            status,
            body: match key {
                Some(key) => redact(body, key.as_bytes()),
                None => body,
            },
            headers: passed_on,
        });
    }

    let mut response = HttpResponse::build(StatusCode::OK);
    for header in passed_on {
        response.insert_header(header);
    }
    if chat.stream {
        response
            .insert_header((
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/event-stream"),
            ))
            .insert_header((header::CACHE_CONTROL, HeaderValue::from_static("no-cache")))
            .insert_header(("x-accel-buffering", HeaderValue::from_static("no")));
        let body = Body::new(upstream, config.http_timeout);
        let translator = match route {
            Route::FrontDoor => provider.stream_translator(),
            Route::Path => None,
        };
        return Ok(match (route, translator) {
            (_, Some(translator)) => {
                let writer = ChunkWriter::new(model, chat.include_usage);
                response.streaming(Translated::new(body, endpoint.name, translator, writer))
            }
            (Route::Path, None) => {
                response.streaming(Relay::new(body, endpoint.name, StreamErrors::Proxy))
            }
            (Route::FrontDoor, None) => {
                response.streaming(Relay::new(body, endpoint.name, StreamErrors::OpenAi))
            }
        });
    }

    let body =
        upstream::read_body(upstream, config.max_response_bytes, config.http_timeout).await?;
    let json = match route {
        // Already a chat.completion: passed on as it came, tool calls and all.
        Route::FrontDoor if provider.speaks_openai() => body,
        Route::FrontDoor => {
            let normalized = provider.translate_response(&body, model)?;
            Bytes::from(completions::completion_body(&normalized))
        }
        Route::Path => {
            let normalized = provider.translate_response(&body, model)?;
            let json = serde_json::to_vec(&normalized)
                .map_err(|e| ProxyError::BadUpstreamBody(e.to_string()))?;
            Bytes::from(json)
        }
    };
    Ok(response.content_type("application/json").body(json))
}

/// Reads the request body whatever its `Content-Type`, refusing more than `limit` bytes.
async fn read_body(
    request: &HttpRequest,
    mut payload: web::Payload,
    limit: usize,
) -> Result<Bytes, ProxyError> {
    let too_large = ProxyError::PayloadTooLarge { limit };
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok()?.parse::<usize>().ok());
    if declared.is_some_and(|length| length > limit) {
        return Err(too_large);
    }
    let mut body = BytesMut::with_capacity(declared.unwrap_or(0));
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| {
            ProxyError::InvalidRequest(format!("the request body could not be read: {e}"))
        })?;
        if body.len() + chunk.len() > limit {
            return Err(too_large);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

/// Fallback for unknown paths.
pub async fn not_found() -> Result<HttpResponse, ProxyError> {
    Err(ProxyError::NotFound)
}

/// Fallback for known paths with the wrong method.
pub async fn method_not_allowed() -> Result<HttpResponse, ProxyError> {
    Err(ProxyError::MethodNotAllowed)
}
