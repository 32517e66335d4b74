//! Routes and fallbacks: everything an `App` needs besides its state and middleware.

use actix_web::web;

use crate::{
    config::Config, gateway::targets::Registry, http::admin, http::dashboard, http::handlers,
    http::observe,
};

/// Registers every route. The state it needs is added by the caller, see `server::build`. The
/// admin API exists only when `ADMIN_TOKEN` is set.
///
/// Each known provider gets its own static `/v1/chat/<name>` resource: matching a static path
/// is a string comparison, where `/v1/chat/{provider}` runs a regex on every request (about 2 µs
/// of the proxy's CPU per request in the benchmark's profile). The pattern stays, after them,
/// only to answer names we don't know with a 404 that lists the known ones.
pub fn configure(cfg: &mut web::ServiceConfig, registry: &Registry, config: &Config) {
    if config.admin_token.is_some() {
        admin::configure(cfg);
    }
    cfg.service(
        web::resource("/healthz")
            .route(web::get().to(handlers::healthz))
            .default_service(web::to(handlers::method_not_allowed)),
    )
    .service(
        web::resource("/metrics")
            .route(web::get().to(observe::metrics))
            .default_service(web::to(handlers::method_not_allowed)),
    )
    .service(
        web::resource("/v1/chat/completions")
            .route(web::post().to(handlers::completions))
            .default_service(web::to(handlers::method_not_allowed_openai)),
    )
    .service(
        web::resource("/v1/messages")
            .route(web::post().to(handlers::messages))
            .default_service(web::to(handlers::method_not_allowed_anthropic)),
    )
    .service(
        web::resource("/v1/messages/count_tokens")
            .route(web::post().to(handlers::count_tokens))
            .default_service(web::to(handlers::method_not_allowed_anthropic)),
    )
    .service(
        web::resource("/v1/models")
            .route(web::get().to(handlers::models))
            .default_service(web::to(handlers::method_not_allowed_openai)),
    )
    .configure(dashboard::configure);
    // Provider names are checked at start to be `[a-z0-9._-]`, so none is read as a pattern.
    // The resource's name is the provider's: `handlers::chat` reads it back with `match_name`.
    for name in registry.names() {
        cfg.service(
            web::resource(format!("/v1/chat/{name}"))
                .name(name)
                .route(web::post().to(handlers::chat))
                .default_service(web::to(handlers::method_not_allowed_chat)),
        );
    }
    cfg.service(
        web::resource("/v1/chat/{provider}")
            .route(web::post().to(handlers::chat))
            .default_service(web::to(handlers::method_not_allowed)),
    )
    .default_service(web::to(handlers::not_found));
}
