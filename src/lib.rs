//! llm-proxy: one small, fast HTTP server in front of many LLM providers.
//!
//! A caller sends one chat shape to `POST /v1/chat/{provider}` with its own provider key in
//! `X-API-Key`; the proxy maps the key onto the provider's auth, translates the body, and
//! answers with one normalized JSON shape, or, with `"stream": true`, passes the upstream's
//! SSE bytes through unchanged as they arrive. It holds no keys of its own.
//!
//! # Layout
//!
//! - [`config`]: the typed configuration, read from the environment once at start;
//!   [`catalog`]: the providers file it may name.
//! - [`server`]: the HTTP server, one awc client per worker, graceful stop on signals;
//!   [`app`]: the routes.
//! - [`observe`]: request ids, the access log and request metrics around every request;
//!   [`metrics`]: the counters and histograms behind `GET /metrics`; [`cors`]: browser access.
//! - [`handlers`]: read the request, work out its targets (provider, fallbacks, keys);
//!   [`exchange`]: try them with retries and reply in the route's shape; [`retry`]: the retry
//!   policy; [`limits`]: admission (requests in flight, upstream connections).
//! - [`chat`]: the caller's request (validated, borrowed from the body) and the normalized
//!   response; [`completions`]: the OpenAI-compatible front door's shapes.
//! - [`providers`]: the `ChatProvider` trait, the registry, and one module per wire format:
//!   pure translation, no I/O.
//! - [`upstream`]: the only awc code: the client, sending, reading, relaying and translating
//!   streams; [`sse`]: the incremental event parser translated streams use; [`http1_head`]:
//!   the response-head watch under awc that makes it read close-delimited HTTP/1.1 bodies.
//! - [`error`]: `ProxyError`, the one place that picks an error's status and body.

pub mod config;
pub mod error;
pub mod formats;
pub mod gateway;
pub mod http;
pub mod limits;
pub mod metrics;
pub mod model;
pub mod upstream;
pub mod util;

pub use config::Config;
pub use error::ProxyError;
