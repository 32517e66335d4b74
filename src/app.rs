//! Routes, fallbacks and the access log: everything an `App` needs besides its state.

use actix_web::{dev::ServiceResponse, middleware::Logger, web};

use crate::handlers::{self, AccessInfo};

/// Registers every route. The state it needs (`Data<Config>`, `Data<Registry>`,
/// `Data<awc::Client>`) is added by the caller, see `server::build`.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/healthz")
            .route(web::get().to(handlers::healthz))
            .default_service(web::to(handlers::method_not_allowed)),
    )
    .service(
        web::resource("/v1/chat/completions")
            .route(web::post().to(handlers::completions))
            .default_service(web::to(handlers::method_not_allowed)),
    )
    .service(
        web::resource("/v1/models")
            .route(web::get().to(handlers::models))
            .default_service(web::to(handlers::method_not_allowed)),
    )
    .service(
        web::resource("/v1/chat/{provider}")
            .route(web::post().to(handlers::chat))
            .default_service(web::to(handlers::method_not_allowed)),
    )
    .default_service(web::to(handlers::not_found));
}

/// One line per request, written when the response (or stream) ends: method, path, provider,
/// model, status, upstream status, stream or not, duration. Never a key or message content.
pub fn access_log() -> Logger {
    Logger::new(
        "%{method}xi %U provider=%{provider}xo model=%{model}xo status=%s \
         upstream_status=%{upstream_status}xo attempts=%{attempts}xo stream=%{stream}xo \
         duration_ms=%D",
    )
    .custom_request_replace("method", |req| req.method().to_string())
    .custom_response_replace("provider", |res| {
        field(res, |info| info.provider.map(str::to_owned))
    })
    .custom_response_replace("model", |res| {
        // The model is the caller's text: escape it so it cannot forge log lines.
        field(res, |info| {
            let model = info.model.as_deref()?;
            Some(
                model
                    .chars()
                    .take(128)
                    .flat_map(char::escape_debug)
                    .collect(),
            )
        })
    })
    .custom_response_replace("upstream_status", |res| {
        field(res, |info| info.upstream_status.map(|s| s.to_string()))
    })
    .custom_response_replace("stream", |res| {
        field(res, |info| Some(info.stream.to_string()))
    })
}

fn field(res: &ServiceResponse, get: impl Fn(&AccessInfo) -> Option<String>) -> String {
    res.response()
        .extensions()
        .get::<AccessInfo>()
        .and_then(get)
        .unwrap_or_else(|| "-".to_owned())
}
