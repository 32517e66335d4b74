//! HTTP handlers: read the request, pick the provider, call the upstream, reply (buffered or
//! streamed).

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
    config::Config,
    error::{redact, ProxyError},
    providers::{ChatProvider, Registry},
    upstream::{self, Relay},
};

/// What the access log says about a request, left in the response's extensions.
#[derive(Clone, Debug, Default)]
pub struct AccessInfo {
    pub provider: Option<&'static str>,
    pub model: Option<String>,
    pub upstream_status: Option<u16>,
    pub stream: bool,
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
        return ProxyError::UnknownProvider {
            name: name.chars().take(64).collect(),
            known: registry.names().join(", "),
        }
        .to_response(None);
    };
    let mut info = AccessInfo {
        provider: Some(provider.name()),
        ..AccessInfo::default()
    };
    let mut response =
        match exchange(&request, payload, &config, provider, &client, &mut info).await {
            Ok(response) => response,
            Err(error) => error.to_response(Some(provider.name())),
        };
    response.extensions_mut().insert(info);
    response
}

/// The checks in order (key, size, shape), then the upstream call and the reply.
async fn exchange(
    request: &HttpRequest,
    payload: web::Payload,
    config: &Config,
    provider: &dyn ChatProvider,
    client: &Client,
    info: &mut AccessInfo,
) -> Result<HttpResponse, ProxyError> {
    let key = request
        .headers()
        .get("x-api-key")
        .filter(|key| !key.as_bytes().trim_ascii().is_empty())
        .ok_or(ProxyError::MissingKey)?;
    let body = read_body(request, payload, config.max_body_bytes).await?;
    let chat = ChatRequest::parse(&body).map_err(ProxyError::InvalidRequest)?;
    info.model = Some(chat.model.clone().into_owned());
    info.stream = chat.stream;

    let upstream_request = provider.translate_request(&chat, key)?;
    let mut upstream = upstream::send(client, upstream_request, config.http_timeout).await?;
    let status = upstream.status();
    info.upstream_status = Some(status.as_u16());
    let passed_on = upstream::passed_on_headers(upstream.headers());

    if !status.is_success() {
        let body = upstream::read_body(
            &mut upstream,
            config.max_response_bytes,
            config.http_timeout,
        )
        .await?;
        return Err(ProxyError::Upstream {
            status,
            body: redact(body, key.as_bytes()),
            headers: passed_on,
        });
    }

    let mut response = HttpResponse::build(StatusCode::OK);
    for header in passed_on {
        response.insert_header(header);
    }
    if chat.stream {
        return Ok(response
            .insert_header((
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/event-stream"),
            ))
            .insert_header((header::CACHE_CONTROL, HeaderValue::from_static("no-cache")))
            .insert_header(("x-accel-buffering", HeaderValue::from_static("no")))
            .streaming(Relay::new(upstream, config.http_timeout, provider.name())));
    }

    let body = upstream::read_body(
        &mut upstream,
        config.max_response_bytes,
        config.http_timeout,
    )
    .await?;
    let normalized = provider.translate_response(&body, &chat.model)?;
    let json =
        serde_json::to_vec(&normalized).map_err(|e| ProxyError::BadUpstreamBody(e.to_string()))?;
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
