//! Browser access (CORS): preflight answers and response headers for allowed origins.
//! Placeholder until the middleware lands: with `CORS_ALLOW_ORIGINS` empty it does nothing.

use actix_web::{
    body::MessageBody,
    dev::{ServiceRequest, ServiceResponse},
    middleware::Next,
    Error,
};

/// The CORS middleware for `App::wrap(from_fn(cors::handle))`.
pub async fn handle(
    request: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, Error> {
    next.call(request).await
}
