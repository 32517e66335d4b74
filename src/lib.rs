//! llm-proxy: one small, fast HTTP server in front of many LLM providers.
//!
//! Three doors take chat requests with the caller's own provider key: `POST /v1/chat/{provider}`
//! (one simple OpenAI-style body, one normalized answer, the upstream's stream bytes passed
//! through), `POST /v1/chat/completions` (OpenAI's Chat Completions) and `POST /v1/messages`
//! (Anthropic's Messages). Every door parses into one internal chat model and every upstream
//! is built from it, so tools, tool results, structured output, reasoning and images survive
//! any door-to-provider pair; when the door and the upstream speak the same format, the body
//! and the stream bytes go as they came. A proxy may also hold provider keys itself, for callers
//! presenting keys it issued, each with its models, limits and budget; every chat request
//! leaves a usage record in its store.
//!
//! # Layout
//!
//! Each module imports only modules listed before it, so no two import each other.
//!
//! - [`util`]: no knowledge of providers: [`util::sse`] (the incremental, bounded event
//!   parser), [`util::json`] (order-keeping rewrites), [`util::url`], [`util::glob`],
//!   [`util::fingerprint`] (the caller's key fingerprint).
//! - [`config`]: the typed configuration, read from the environment once at start;
//!   [`config::providers_file`]: the providers file, the built-in providers, its checks;
//!   [`config::prices`]: the price table (shipped in `data/prices.json`, overridden there);
//!   [`config::routes`]: its `routes` rules.
//! - [`model`]: the proxy's own chat model: request, response, stream events, usage, and
//!   [`model::cost`], what a usage costs by the price table.
//! - [`store`]: the database (SQLite by default, Postgres for several instances) on its own
//!   thread: [`store::keys`] (issued keys' rows), [`store::usage`] (usage records, spend),
//!   [`store::sink`] (the batch writer that keeps them off the request path).
//! - [`cluster`]: the Redis connection several instances share state through (`REDIS_URL`),
//!   bounded in time, marked down when it fails and watched until it answers again.
//! - [`error`]: `ProxyError`, the one place that picks an error's status and its body in
//!   each door's shape; [`limits`]: admission (requests in flight, bodies arriving,
//!   upstream connections).
//! - [`keys`]: keys the proxy issues, in memory: [`keys::generate`] and the hash stored in
//!   the secret's place, the [`keys::KeyTable`] a presented key is looked up in, each key's
//!   [`keys::Limits`] (requests and tokens per minute, requests in flight, budget per period),
//!   and the [`keys::Keyring`] that keeps them in step with the store and takes usage records;
//!   [`keys::spec`]: what a key is made of when created or changed, one set of rules for the
//!   admin API and [`keys::cli`] (`llm-proxy keys`), and those changes on the store;
//!   [`keys::shared`]: the same limits counted across instances by scripts on Redis.
//! - [`formats`]: the traits every wire format implements, and one folder per format, each
//!   speaking it both ways: [`formats::openai`] (door and upstream),
//!   [`formats::anthropic`] (door and upstream), [`formats::gemini`] (upstream). Pure
//!   translation, no I/O.
//! - [`upstream`]: the only awc code: the client and its sockets, sending, reading, relaying
//!   streams as they came and translating them event by event; [`upstream::report`]: what a
//!   stream learns as it passes.
//! - [`metrics`]: the counters and histograms behind `GET /metrics`.
//! - [`dashboard`]: usage records summed into a report in bounded memory
//!   ([`dashboard::Report`]), and the report as one self-contained HTML page with its charts
//!   drawn as inline SVG on the server ([`dashboard::render`]). Pure rendering, no actix.
//! - [`cache`]: the response cache: successful whole answers by a hash of the tenant and the
//!   request, in memory, bounded in bytes, with a time to live per entry.
//! - [`gateway`]: what to call and in what order: [`gateway::targets`] (the registry of
//!   providers, aliases and groups), [`gateway::rules`] (the compiled `routes`),
//!   [`gateway::routing`] (the order to try a group's deployments in), [`gateway::health`]
//!   (ejection and latency per deployment), [`gateway::retry`] (the policy),
//!   [`gateway::exchange`] (the doors, and trying each target until one answers in the door's
//!   shape).
//! - [`http`]: actix: [`http::routes`], one thin handler per door in [`http::handlers`],
//!   [`http::server`], [`http::caller`] (who is calling: an issued key, or the caller's own),
//!   [`http::admin`] (the admin API, only with `ADMIN_TOKEN`), [`http::dashboard`] (the page
//!   and its sign-in), and what wraps every request: [`http::observe`] (request ids, the
//!   access log) and [`http::cors`].

pub mod cache;
pub mod cluster;
pub mod config;
pub mod dashboard;
pub mod error;
pub mod formats;
pub mod gateway;
pub mod http;
pub mod keys;
pub mod limits;
pub mod metrics;
pub mod model;
pub mod store;
pub mod upstream;
pub mod util;

pub use config::Config;
pub use error::ProxyError;
