//! Routes and fallbacks: everything an `App` needs besides its state and middleware.

use actix_web::web;

use crate::{handlers, observe};

/// Registers every route. The state it needs is added by the caller, see `server::build`.
pub fn configure(cfg: &mut web::ServiceConfig) {
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
        web::resource("/v1/models")
            .route(web::get().to(handlers::models))
            .default_service(web::to(handlers::method_not_allowed_openai)),
    )
    .service(
        web::resource("/v1/chat/{provider}")
            .route(web::post().to(handlers::chat))
            .default_service(web::to(handlers::method_not_allowed)),
    )
    .default_service(web::to(handlers::not_found));
}
