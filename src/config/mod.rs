//! The typed configuration: read from the environment once at start, validated, then immutable.

pub mod ca_file;
pub mod fields;
pub mod groups;
pub mod prices;
pub mod providers_file;
pub mod routes;

use std::{
    fmt,
    path::{Path, PathBuf},
    time::Duration,
};

use rustls::pki_types::CertificateDer;
use serde::Deserialize;

use crate::config::providers_file::Catalog;

/// Everything the proxy can be told. Build it with [`Config::from_env`] in the binary, or with
/// `Config { .., ..Config::default() }` in tests.
#[derive(Debug, Clone)]
pub struct Config {
    pub host: String,
    pub port: u16,
    pub workers: usize,
    /// Bounds the wait for upstream response headers, then the silence between two body chunks.
    pub http_timeout: Duration,
    /// Upstream connections in use at once, for the whole process (split evenly across
    /// workers); zero means no limit but `max_concurrent_requests`.
    pub http_max_connections: usize,
    /// How long a request waits for an upstream connection when `http_max_connections` are in
    /// use, before a 503.
    pub http_pool_timeout: Duration,
    /// `0` turns upstream keep-alive off; any other value keeps idle connections pooled.
    pub http_max_keepalive_connections: usize,
    pub openai_base_url: String,
    pub anthropic_base_url: String,
    pub gemini_base_url: String,
    pub ollama_base_url: String,
    pub anthropic_version: String,
    pub anthropic_default_max_tokens: u64,
    pub max_body_bytes: usize,
    /// Bytes of request bodies still arriving, across the process: slow senders hold only what
    /// they have sent, and together no more than this.
    pub max_pending_body_bytes: usize,
    /// How long a caller may take to send its whole request body; then a 408.
    pub client_body_timeout: Duration,
    pub max_response_bytes: usize,
    /// The most bytes of one server-sent event the proxy holds while it waits for the event's
    /// end (translating a stream, or reading its token counts).
    pub max_event_bytes: usize,
    pub shutdown_timeout: Duration,
    /// Retries of one provider after a retryable failure; a request may ask for fewer.
    pub max_retries: u32,
    /// The first retry waits up to this long (full jitter), each next one twice as long.
    pub retry_base: Duration,
    /// An upstream asking to be retried later than this is not waited for.
    pub retry_max_wait: Duration,
    /// Bounds connecting to an upstream (TCP and TLS), apart from `http_timeout`.
    pub connect_timeout: Duration,
    /// Chat requests in flight at once in this process; more get a fast 503.
    pub max_concurrent_requests: usize,
    /// While a translated front-door stream is silent, a `: keep-alive` comment this often.
    /// Zero turns it off.
    pub sse_heartbeat: Duration,
    /// The same for pass-through streams; off (zero) by default, since it adds bytes.
    pub passthrough_heartbeat: Duration,
    /// `LOG_FORMAT=json`: one JSON object per log line instead of text.
    pub log_json: bool,
    /// Origins allowed to call from a browser: exact origins, or `*` for any. Empty (the
    /// default) turns CORS off.
    pub cors_allow_origins: Vec<String>,
    /// What `PROVIDERS_FILE` declares (empty when it is not set).
    pub catalog: Catalog,
    /// Where the catalog came from, for error messages.
    pub providers_file: Option<PathBuf>,
    /// Tests only, never read from the environment: the time `routes` time windows see,
    /// instead of the clock.
    pub clock_override: Option<std::time::SystemTime>,
    /// `DATABASE_URL`: where keys and usage are stored (`sqlite://...` or `postgres://...`);
    /// `None` (`DATABASE_URL=none`) runs without a store: no issued keys, no usage records.
    pub database_url: Option<String>,
    /// `ADMIN_TOKEN`: turns the admin API on, for callers that present it.
    pub admin_token: Option<Secret>,
    /// `DASHBOARD_TOKEN`: opens `/dashboard` (read-only) to callers that present it.
    pub dashboard_token: Option<Secret>,
    /// The values of the variables the providers file's `api_key_env` names, read at start.
    pub held_keys: HeldKeys,
    /// The response cache's bound: answers and their headers, in bytes.
    pub cache_max_bytes: u64,
    /// How long an answer cached for `X-Proxy-Cache: use` is kept (a group's `cache` says
    /// its own).
    pub cache_ttl: Duration,
    /// `REDIS_URL`: shares the cache, issued keys' limits and deployment ejections between
    /// instances (a `Secret`: the URL may hold a password).
    pub redis_url: Option<Secret>,
    /// `REDIS_TIMEOUT_MS`: the longest any Redis call may take before it counts as down.
    pub redis_timeout: Duration,
    /// `LIMITS_FAIL_CLOSED`: while Redis is down, refuse keys with limits (503) instead of
    /// counting them per instance.
    pub limits_fail_closed: bool,
    /// Root certificates upstreams are trusted by besides the built-in webpki roots (a
    /// private CA, a self-signed test upstream), read from `UPSTREAM_CA_FILE` at start.
    pub upstream_roots: Vec<CertificateDer<'static>>,
    /// `UPSTREAM_HTTP2`: offer HTTP/2 to TLS upstreams through ALPN (they may still choose
    /// HTTP/1.1); off, only HTTP/1.1 is offered.
    pub upstream_http2: bool,
}

/// A value that must never reach a log line: its `Debug` says only that it is set.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// Keys held by the proxy, by the environment variable each came from. `Debug` lists the
/// variables only.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct HeldKeys(pub Vec<(String, String)>);

impl HeldKeys {
    pub fn get(&self, variable: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(name, _)| name == variable)
            .map(|(_, value)| value.as_str())
    }
}

impl fmt::Debug for HeldKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.0.iter().map(|(name, _)| name))
            .finish()
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            host: "0.0.0.0".into(),
            port: 8000,
            workers: std::thread::available_parallelism().map_or(1, |n| n.get()),
            http_timeout: Duration::from_secs(60),
            http_max_connections: 0,
            http_pool_timeout: Duration::from_secs(5),
            http_max_keepalive_connections: 20,
            openai_base_url: "https://api.openai.com/v1".into(),
            anthropic_base_url: "https://api.anthropic.com/v1".into(),
            gemini_base_url: "https://generativelanguage.googleapis.com/v1beta".into(),
            ollama_base_url: "http://localhost:11434/v1".into(),
            anthropic_version: "2023-06-01".into(),
            anthropic_default_max_tokens: 1024,
            max_body_bytes: 4 * 1024 * 1024,
            max_pending_body_bytes: 256 * 1024 * 1024,
            client_body_timeout: Duration::from_secs(30),
            max_response_bytes: 64 * 1024 * 1024,
            max_event_bytes: crate::util::sse::MAX_EVENT_BYTES,
            shutdown_timeout: Duration::from_secs(30),
            max_retries: 2,
            retry_base: Duration::from_millis(200),
            retry_max_wait: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(10),
            max_concurrent_requests: 10_000,
            sse_heartbeat: Duration::from_secs(15),
            passthrough_heartbeat: Duration::ZERO,
            log_json: false,
            cors_allow_origins: Vec::new(),
            catalog: Catalog::default(),
            providers_file: None,
            clock_override: None,
            database_url: None,
            admin_token: None,
            dashboard_token: None,
            held_keys: HeldKeys::default(),
            cache_max_bytes: 64 * 1024 * 1024,
            cache_ttl: Duration::from_secs(300),
            redis_url: None,
            redis_timeout: Duration::from_millis(100),
            limits_fail_closed: false,
            upstream_roots: Vec::new(),
            upstream_http2: UPSTREAM_HTTP2,
        }
    }
}

/// Whether HTTP/2 is offered to TLS upstreams by default: the faster of the two in the
/// benchmark's TLS scenario (docs/benchmarks.md#tls-upstreams). awc multiplexes a worker's
/// requests to one upstream on one h2 connection, where HTTP/1.1 needs one connection (and one
/// handshake) per request in flight: 56.5 against 71.5 µs of CPU per request on 64
/// connections, 8,138 against 7,310 req/s; one at a time, p50 0.177 against 0.161 ms.
const UPSTREAM_HTTP2: bool = true;

/// A configuration that cannot start the proxy: names the variable and what is wrong with it.
#[derive(Debug, PartialEq, Eq)]
pub struct ConfigError(String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid configuration: {}", self.0)
    }
}

impl std::error::Error for ConfigError {}

/// The environment as envy sees it: every field optional, so defaults live in one place.
#[derive(Deserialize)]
struct Env {
    host: Option<String>,
    port: Option<u16>,
    workers: Option<usize>,
    http_timeout_seconds: Option<u64>,
    http_max_connections: Option<usize>,
    http_pool_timeout_seconds: Option<u64>,
    http_max_keepalive_connections: Option<usize>,
    openai_base_url: Option<String>,
    anthropic_base_url: Option<String>,
    gemini_base_url: Option<String>,
    ollama_base_url: Option<String>,
    anthropic_version: Option<String>,
    anthropic_default_max_tokens: Option<u64>,
    max_body_bytes: Option<usize>,
    max_pending_body_bytes: Option<usize>,
    client_body_timeout_seconds: Option<u64>,
    max_response_bytes: Option<usize>,
    max_event_bytes: Option<usize>,
    shutdown_timeout_seconds: Option<u64>,
    max_retries: Option<u32>,
    retry_base_ms: Option<u64>,
    retry_max_wait_seconds: Option<u64>,
    connect_timeout_seconds: Option<u64>,
    max_concurrent_requests: Option<usize>,
    sse_heartbeat_seconds: Option<u64>,
    passthrough_heartbeat_seconds: Option<u64>,
    cors_allow_origins: Option<String>,
    log_format: Option<String>,
    providers_file: Option<PathBuf>,
    database_url: Option<String>,
    admin_token: Option<String>,
    dashboard_token: Option<String>,
    cache_max_bytes: Option<u64>,
    cache_ttl_seconds: Option<u64>,
    redis_url: Option<String>,
    redis_timeout_ms: Option<u64>,
    limits_fail_closed: Option<bool>,
    upstream_ca_file: Option<PathBuf>,
    upstream_http2: Option<bool>,
}

impl Config {
    /// Reads the process environment (call `dotenvy::dotenv()` first to include `.env`).
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_vars(std::env::vars())
    }

    /// Reads the given `NAME=value` pairs; unknown names are ignored.
    pub fn from_vars(
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let vars: Vec<(String, String)> = vars.into_iter().collect();
        let env: Env =
            envy::from_iter(vars.iter().cloned()).map_err(|e| ConfigError(e.to_string()))?;
        let defaults = Config::default();
        let config = Config {
            host: env.host.unwrap_or(defaults.host),
            port: env.port.unwrap_or(defaults.port),
            workers: env.workers.unwrap_or(defaults.workers),
            http_timeout: env
                .http_timeout_seconds
                .map_or(defaults.http_timeout, Duration::from_secs),
            http_max_connections: env
                .http_max_connections
                .unwrap_or(defaults.http_max_connections),
            http_pool_timeout: env
                .http_pool_timeout_seconds
                .map_or(defaults.http_pool_timeout, Duration::from_secs),
            http_max_keepalive_connections: env
                .http_max_keepalive_connections
                .unwrap_or(defaults.http_max_keepalive_connections),
            openai_base_url: env.openai_base_url.unwrap_or(defaults.openai_base_url),
            anthropic_base_url: env
                .anthropic_base_url
                .unwrap_or(defaults.anthropic_base_url),
            gemini_base_url: env.gemini_base_url.unwrap_or(defaults.gemini_base_url),
            ollama_base_url: env.ollama_base_url.unwrap_or(defaults.ollama_base_url),
            anthropic_version: env.anthropic_version.unwrap_or(defaults.anthropic_version),
            anthropic_default_max_tokens: env
                .anthropic_default_max_tokens
                .unwrap_or(defaults.anthropic_default_max_tokens),
            max_body_bytes: env.max_body_bytes.unwrap_or(defaults.max_body_bytes),
            max_pending_body_bytes: env
                .max_pending_body_bytes
                .unwrap_or(defaults.max_pending_body_bytes),
            client_body_timeout: env
                .client_body_timeout_seconds
                .map_or(defaults.client_body_timeout, Duration::from_secs),
            max_response_bytes: env
                .max_response_bytes
                .unwrap_or(defaults.max_response_bytes),
            max_event_bytes: env.max_event_bytes.unwrap_or(defaults.max_event_bytes),
            shutdown_timeout: env
                .shutdown_timeout_seconds
                .map_or(defaults.shutdown_timeout, Duration::from_secs),
            max_retries: env.max_retries.unwrap_or(defaults.max_retries),
            retry_base: env
                .retry_base_ms
                .map_or(defaults.retry_base, Duration::from_millis),
            retry_max_wait: env
                .retry_max_wait_seconds
                .map_or(defaults.retry_max_wait, Duration::from_secs),
            connect_timeout: env
                .connect_timeout_seconds
                .map_or(defaults.connect_timeout, Duration::from_secs),
            max_concurrent_requests: env
                .max_concurrent_requests
                .unwrap_or(defaults.max_concurrent_requests),
            sse_heartbeat: env
                .sse_heartbeat_seconds
                .map_or(defaults.sse_heartbeat, Duration::from_secs),
            passthrough_heartbeat: env
                .passthrough_heartbeat_seconds
                .map_or(defaults.passthrough_heartbeat, Duration::from_secs),
            log_json: match env.log_format.as_deref() {
                None | Some("text") => false,
                Some("json") => true,
                Some(other) => {
                    return Err(ConfigError(format!(
                        "LOG_FORMAT must be text or json, not {other:?}"
                    )))
                }
            },
            cors_allow_origins: env
                .cors_allow_origins
                .iter()
                .flat_map(|list| list.split(','))
                .map(|origin| origin.trim().trim_end_matches('/').to_owned())
                .filter(|origin| !origin.is_empty())
                .collect(),
            catalog: match &env.providers_file {
                Some(path) => read_catalog(path)?,
                None => Catalog::default(),
            },
            providers_file: env.providers_file.clone(),
            clock_override: None,
            database_url: match env.database_url.as_deref().map(str::trim) {
                None | Some("") => Some(crate::store::DEFAULT_URL.to_owned()),
                Some("none") => None,
                Some(url) => Some(url.to_owned()),
            },
            admin_token: env.admin_token.filter(|t| !t.is_empty()).map(Secret),
            dashboard_token: env.dashboard_token.filter(|t| !t.is_empty()).map(Secret),
            held_keys: HeldKeys::default(),
            cache_max_bytes: env.cache_max_bytes.unwrap_or(defaults.cache_max_bytes),
            cache_ttl: env
                .cache_ttl_seconds
                .map_or(defaults.cache_ttl, Duration::from_secs),
            redis_url: env
                .redis_url
                .map(|url| url.trim().to_owned())
                .filter(|url| !url.is_empty())
                .map(Secret),
            redis_timeout: match env.redis_timeout_ms {
                Some(0) => return Err(ConfigError("REDIS_TIMEOUT_MS must be at least 1".into())),
                Some(ms) => Duration::from_millis(ms),
                None => defaults.redis_timeout,
            },
            limits_fail_closed: env.limits_fail_closed.unwrap_or(false),
            upstream_roots: match &env.upstream_ca_file {
                Some(path) if !path.as_os_str().is_empty() => ca_file::read(path)
                    .map_err(|why| ConfigError(format!("UPSTREAM_CA_FILE {why}")))?,
                _ => Vec::new(),
            },
            upstream_http2: env.upstream_http2.unwrap_or(defaults.upstream_http2),
        };
        let held_keys = config
            .catalog
            .held_key_variables()
            .filter_map(|name| {
                let value = vars.iter().find(|(var, _)| var == name)?;
                Some((name.to_owned(), value.1.clone()))
            })
            .collect();
        let config = Config {
            held_keys: HeldKeys(held_keys),
            ..config
        };
        config.validate()?;
        Ok(config)
    }

    /// Checks what the types alone cannot: sizes and durations within sane bounds (so that no
    /// arithmetic on them can overflow later), well-formed base URLs.
    pub fn validate(&self) -> Result<(), ConfigError> {
        #[rustfmt::skip]
        let bounds = [
            ("WORKERS", self.workers as u64, 1, MAX_WORKERS),
            ("HTTP_TIMEOUT_SECONDS", secs(self.http_timeout), 1, MAX_SECONDS),
            ("CONNECT_TIMEOUT_SECONDS", secs(self.connect_timeout), 1, MAX_SECONDS),
            ("HTTP_POOL_TIMEOUT_SECONDS", secs(self.http_pool_timeout), 0, MAX_SECONDS),
            ("CLIENT_BODY_TIMEOUT_SECONDS", secs(self.client_body_timeout), 1, MAX_SECONDS),
            ("SHUTDOWN_TIMEOUT_SECONDS", secs(self.shutdown_timeout), 0, MAX_SECONDS),
            ("RETRY_MAX_WAIT_SECONDS", secs(self.retry_max_wait), 0, MAX_SECONDS),
            ("SSE_HEARTBEAT_SECONDS", secs(self.sse_heartbeat), 0, MAX_SECONDS),
            ("PASSTHROUGH_HEARTBEAT_SECONDS", secs(self.passthrough_heartbeat), 0, MAX_SECONDS),
            ("RETRY_BASE_MS", millis(self.retry_base), 0, MAX_SECONDS * 1000),
            ("MAX_RETRIES", u64::from(self.max_retries), 0, MAX_RETRIES),
            ("HTTP_MAX_CONNECTIONS", self.http_max_connections as u64, 0, MAX_COUNT),
            ("MAX_CONCURRENT_REQUESTS", self.max_concurrent_requests as u64, 1, MAX_COUNT),
            ("MAX_BODY_BYTES", self.max_body_bytes as u64, 1, MAX_BYTES),
            ("MAX_PENDING_BODY_BYTES", self.max_pending_body_bytes as u64, 1, MAX_BYTES),
            ("MAX_RESPONSE_BYTES", self.max_response_bytes as u64, 1, MAX_BYTES),
            ("MAX_EVENT_BYTES", self.max_event_bytes as u64, 1, MAX_BYTES),
            ("ANTHROPIC_DEFAULT_MAX_TOKENS", self.anthropic_default_max_tokens, 1, u64::from(u32::MAX)),
            ("CACHE_MAX_BYTES", self.cache_max_bytes, 0, MAX_BYTES),
            ("CACHE_TTL_SECONDS", secs(self.cache_ttl), 1, 86_400),
        ];
        for (name, value, min, max) in bounds {
            if value < min {
                return Err(ConfigError(format!("{name} must be at least {min}")));
            }
            if value > max {
                return Err(ConfigError(format!("{name} must be at most {max}")));
            }
        }
        if self.max_pending_body_bytes < self.max_body_bytes {
            return Err(ConfigError(
                "MAX_PENDING_BODY_BYTES must be at least MAX_BODY_BYTES".into(),
            ));
        }
        for (name, url) in [
            ("OPENAI_BASE_URL", &self.openai_base_url),
            ("ANTHROPIC_BASE_URL", &self.anthropic_base_url),
            ("GEMINI_BASE_URL", &self.gemini_base_url),
            ("OLLAMA_BASE_URL", &self.ollama_base_url),
        ] {
            crate::util::url::check_base_url(url)
                .map_err(|why| ConfigError(format!("{name} ({url:?}) {why}")))?;
        }
        providers_file::check_catalog(&self.catalog).map_err(|why| {
            let file = self
                .providers_file
                .as_ref()
                .map_or(String::new(), |path| format!(" {}", path.display()));
            ConfigError(format!("PROVIDERS_FILE{file}: {why}"))
        })?;
        self.check_held_keys()?;
        if awc::http::header::HeaderValue::from_str(&self.anthropic_version).is_err() {
            return Err(ConfigError(
                "ANTHROPIC_VERSION must be a valid header value".into(),
            ));
        }
        Ok(())
    }
}

impl Config {
    /// Every key the providers file holds must be set, and only keys the proxy issued may
    /// spend it: without a store there are none, and anyone reaching the proxy could use the
    /// key (an open relay), so that configuration does not start.
    fn check_held_keys(&self) -> Result<(), ConfigError> {
        let mut any = false;
        for name in self.catalog.held_key_variables() {
            any = true;
            match self.held_keys.get(name) {
                Some(value) if !value.trim().is_empty() => {
                    if awc::http::header::HeaderValue::from_str(value.trim()).is_err() {
                        return Err(ConfigError(format!(
                            "{name} (named by api_key_env in PROVIDERS_FILE) is not a valid header value"
                        )));
                    }
                }
                _ => {
                    return Err(ConfigError(format!(
                        "{name} is named by api_key_env in PROVIDERS_FILE but is not set"
                    )))
                }
            }
        }
        if any && self.database_url.is_none() {
            return Err(ConfigError(
                "PROVIDERS_FILE holds provider keys (api_key_env), which only keys this proxy \
                 issues may spend, but DATABASE_URL=none turns issued keys off: anyone who \
                 reaches the proxy could spend them (an open relay). Set DATABASE_URL, or \
                 remove api_key_env"
                    .into(),
            ));
        }
        Ok(())
    }
}

/// The longest duration any setting may have: a year. Nothing that long is useful, and every
/// deadline computed from a setting then stays far from overflowing.
const MAX_SECONDS: u64 = 365 * 24 * 3600;
/// More worker threads than this is a mistake, not a configuration; actix-server panics past
/// it ("Workers must not exceed 512").
const MAX_WORKERS: u64 = 512;
const MAX_RETRIES: u64 = 100;
/// Connection and request counts.
const MAX_COUNT: u64 = 10_000_000;
/// Body sizes: 4 GiB.
const MAX_BYTES: u64 = 4 << 30;

/// A duration in whole seconds, rounded up so that a sub-second duration is not zero.
fn secs(duration: Duration) -> u64 {
    duration
        .as_millis()
        .div_ceil(1000)
        .try_into()
        .unwrap_or(u64::MAX)
}

fn millis(duration: Duration) -> u64 {
    duration.as_millis().try_into().unwrap_or(u64::MAX)
}

/// Reads and checks the providers file; the error names the file, the field and the fault.
fn read_catalog(path: &Path) -> Result<Catalog, ConfigError> {
    let at = |why: String| ConfigError(format!("PROVIDERS_FILE {}: {why}", path.display()));
    let text = std::fs::read_to_string(path).map_err(|e| at(e.to_string()))?;
    Catalog::parse(&text).map_err(at)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_apply_when_nothing_is_set() {
        let config = Config::from_vars(vars(&[])).unwrap();
        let defaults = Config::default();
        assert_eq!(config.port, 8000);
        assert_eq!(config.host, "0.0.0.0");
        assert_eq!(config.http_timeout, Duration::from_secs(60));
        assert_eq!(config.http_max_connections, 0);
        assert_eq!(config.http_pool_timeout, Duration::from_secs(5));
        assert_eq!(config.max_pending_body_bytes, 256 << 20);
        assert_eq!(config.client_body_timeout, Duration::from_secs(30));
        assert_eq!(config.http_max_keepalive_connections, 20);
        assert_eq!(config.openai_base_url, "https://api.openai.com/v1");
        assert_eq!(config.anthropic_base_url, "https://api.anthropic.com/v1");
        assert_eq!(
            config.gemini_base_url,
            "https://generativelanguage.googleapis.com/v1beta"
        );
        assert_eq!(config.ollama_base_url, "http://localhost:11434/v1");
        assert_eq!(config.catalog, Catalog::default());
        assert_eq!(config.anthropic_version, "2023-06-01");
        assert_eq!(config.anthropic_default_max_tokens, 1024);
        assert_eq!(config.max_body_bytes, 4_194_304);
        assert_eq!(config.max_event_bytes, 1 << 20);
        assert_eq!(config.workers, defaults.workers);
        assert_eq!(config.max_retries, 2);
        assert_eq!(config.retry_base, Duration::from_millis(200));
        assert_eq!(config.retry_max_wait, Duration::from_secs(10));
        assert_eq!(config.connect_timeout, Duration::from_secs(10));
        assert_eq!(config.max_concurrent_requests, 10_000);
        assert_eq!(config.sse_heartbeat, Duration::from_secs(15));
        assert_eq!(config.passthrough_heartbeat, Duration::ZERO);
        assert!(config.cors_allow_origins.is_empty());
        assert!(config.upstream_http2);
        assert!(config.upstream_roots.is_empty());
    }

    #[test]
    fn every_variable_is_read() {
        let config = Config::from_vars(vars(&[
            ("HOST", "127.0.0.1"),
            ("PORT", "9000"),
            ("WORKERS", "3"),
            ("HTTP_TIMEOUT_SECONDS", "7"),
            ("HTTP_MAX_CONNECTIONS", "50"),
            ("HTTP_POOL_TIMEOUT_SECONDS", "2"),
            ("MAX_PENDING_BODY_BYTES", "100"),
            ("CLIENT_BODY_TIMEOUT_SECONDS", "6"),
            ("HTTP_MAX_KEEPALIVE_CONNECTIONS", "0"),
            ("OPENAI_BASE_URL", "http://localhost:1/v1/"),
            ("ANTHROPIC_BASE_URL", "http://localhost:2"),
            ("GEMINI_BASE_URL", "http://localhost:3/v1beta"),
            ("OLLAMA_BASE_URL", "http://localhost:4/v1"),
            ("ANTHROPIC_VERSION", "2024-01-01"),
            ("ANTHROPIC_DEFAULT_MAX_TOKENS", "99"),
            ("MAX_BODY_BYTES", "10"),
            ("MAX_RESPONSE_BYTES", "20"),
            ("MAX_EVENT_BYTES", "30"),
            ("SHUTDOWN_TIMEOUT_SECONDS", "5"),
            ("MAX_RETRIES", "0"),
            ("RETRY_BASE_MS", "50"),
            ("RETRY_MAX_WAIT_SECONDS", "3"),
            ("CONNECT_TIMEOUT_SECONDS", "4"),
            ("MAX_CONCURRENT_REQUESTS", "8"),
            ("SSE_HEARTBEAT_SECONDS", "0"),
            ("PASSTHROUGH_HEARTBEAT_SECONDS", "20"),
            (
                "CORS_ALLOW_ORIGINS",
                "http://localhost:3000, https://app.example/",
            ),
            ("LOG_FORMAT", "json"),
        ]))
        .unwrap();
        assert_eq!(config.host, "127.0.0.1");
        assert_eq!(config.port, 9000);
        assert_eq!(config.workers, 3);
        assert_eq!(config.http_timeout, Duration::from_secs(7));
        assert_eq!(config.http_max_connections, 50);
        assert_eq!(config.http_pool_timeout, Duration::from_secs(2));
        assert_eq!(config.max_pending_body_bytes, 100);
        assert_eq!(config.client_body_timeout, Duration::from_secs(6));
        assert_eq!(config.http_max_keepalive_connections, 0);
        assert_eq!(config.openai_base_url, "http://localhost:1/v1/");
        assert_eq!(config.anthropic_base_url, "http://localhost:2");
        assert_eq!(config.gemini_base_url, "http://localhost:3/v1beta");
        assert_eq!(config.ollama_base_url, "http://localhost:4/v1");
        assert_eq!(config.anthropic_version, "2024-01-01");
        assert_eq!(config.anthropic_default_max_tokens, 99);
        assert_eq!(config.max_body_bytes, 10);
        assert_eq!(config.max_response_bytes, 20);
        assert_eq!(config.max_event_bytes, 30);
        assert_eq!(config.shutdown_timeout, Duration::from_secs(5));
        assert_eq!(config.max_retries, 0);
        assert_eq!(config.retry_base, Duration::from_millis(50));
        assert_eq!(config.retry_max_wait, Duration::from_secs(3));
        assert_eq!(config.connect_timeout, Duration::from_secs(4));
        assert_eq!(config.max_concurrent_requests, 8);
        assert_eq!(config.sse_heartbeat, Duration::ZERO);
        assert_eq!(config.passthrough_heartbeat, Duration::from_secs(20));
        assert_eq!(
            config.cors_allow_origins,
            ["http://localhost:3000", "https://app.example"]
        );
        assert!(config.log_json);
        let err = Config::from_vars(vars(&[("LOG_FORMAT", "xml")])).unwrap_err();
        assert!(err.to_string().contains("LOG_FORMAT"), "{err}");
    }

    #[test]
    fn a_value_of_the_wrong_type_names_its_variable() {
        let err = Config::from_vars(vars(&[("PORT", "eighty")])).unwrap_err();
        assert!(err.to_string().contains("PORT"), "{err}");
    }

    #[test]
    fn zero_where_a_positive_number_is_needed_is_rejected() {
        let err = Config::from_vars(vars(&[("HTTP_TIMEOUT_SECONDS", "0")])).unwrap_err();
        assert!(err.to_string().contains("HTTP_TIMEOUT_SECONDS"), "{err}");
    }

    #[test]
    fn absurd_values_are_rejected_at_start_naming_the_variable() {
        for (name, value) in [
            ("HTTP_TIMEOUT_SECONDS", "18446744073709551615"),
            ("CONNECT_TIMEOUT_SECONDS", "99999999999"),
            ("CLIENT_BODY_TIMEOUT_SECONDS", "31536001"),
            ("HTTP_POOL_TIMEOUT_SECONDS", "18446744073709551615"),
            ("SHUTDOWN_TIMEOUT_SECONDS", "18446744073709551615"),
            ("RETRY_MAX_WAIT_SECONDS", "18446744073709551615"),
            ("RETRY_BASE_MS", "18446744073709551615"),
            ("SSE_HEARTBEAT_SECONDS", "18446744073709551615"),
            ("PASSTHROUGH_HEARTBEAT_SECONDS", "18446744073709551615"),
            ("WORKERS", "513"),
            ("MAX_RETRIES", "4000000000"),
            ("MAX_BODY_BYTES", "18446744073709551615"),
            ("MAX_RESPONSE_BYTES", "18446744073709551615"),
            ("MAX_EVENT_BYTES", "18446744073709551615"),
            ("MAX_PENDING_BODY_BYTES", "18446744073709551615"),
            ("MAX_CONCURRENT_REQUESTS", "18446744073709551615"),
            ("HTTP_MAX_CONNECTIONS", "18446744073709551615"),
            ("ANTHROPIC_DEFAULT_MAX_TOKENS", "18446744073709551615"),
        ] {
            let err = Config::from_vars(vars(&[(name, value)]))
                .unwrap_err()
                .to_string();
            assert!(err.contains(name), "{name}={value}: {err}");
            assert!(err.contains("at most"), "{name}={value}: {err}");
        }
        let err = Config::from_vars(vars(&[
            ("MAX_BODY_BYTES", "2000"),
            ("MAX_PENDING_BODY_BYTES", "1000"),
        ]))
        .unwrap_err()
        .to_string();
        assert!(err.contains("MAX_PENDING_BODY_BYTES"), "{err}");
        for largest in [
            ("HTTP_TIMEOUT_SECONDS", "31536000"),
            ("MAX_BODY_BYTES", "4294967296"),
        ] {
            let pending = ("MAX_PENDING_BODY_BYTES", "4294967296");
            assert!(
                Config::from_vars(vars(&[largest, pending])).is_ok(),
                "{largest:?}"
            );
        }
    }

    #[test]
    fn base_urls_must_be_http_urls() {
        for bad in [
            "ftp://example.com",
            "not a url",
            "example.com/v1",
            "http://",
        ] {
            let err = Config::from_vars(vars(&[("OPENAI_BASE_URL", bad)])).unwrap_err();
            assert!(err.to_string().contains("OPENAI_BASE_URL"), "{bad}: {err}");
        }
        let err = Config::from_vars(vars(&[("ANTHROPIC_BASE_URL", "")])).unwrap_err();
        assert!(err.to_string().contains("ANTHROPIC_BASE_URL"), "{err}");
    }

    #[test]
    fn a_providers_file_is_read_and_its_faults_name_file_and_field() {
        let dir = std::env::temp_dir().join(format!("llm-proxy-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let good = dir.join("good.json");
        std::fs::write(
            &good,
            r#"{"aliases": {"fast": {"provider": "openai", "model": "m"}}}"#,
        )
        .unwrap();
        let config =
            Config::from_vars(vars(&[("PROVIDERS_FILE", good.to_str().unwrap())])).unwrap();
        assert_eq!(config.catalog.aliases[0].name, "fast");

        let bad = dir.join("bad.json");
        std::fs::write(&bad, r#"{"providers": {"groq": {"kind": "soap"}}}"#).unwrap();
        let err = Config::from_vars(vars(&[("PROVIDERS_FILE", bad.to_str().unwrap())]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("PROVIDERS_FILE"), "{err}");
        assert!(err.contains("bad.json"), "{err}");
        assert!(err.contains("providers.groq.kind"), "{err}");

        let missing = dir.join("missing.json");
        let err =
            Config::from_vars(vars(&[("PROVIDERS_FILE", missing.to_str().unwrap())])).unwrap_err();
        assert!(err.to_string().contains("missing.json"), "{err}");
    }

    #[test]
    fn held_keys_are_read_by_name_and_refuse_to_start_without_a_store_or_a_value() {
        let dir = std::env::temp_dir().join(format!("llm-proxy-held-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("held.json");
        std::fs::write(
            &file,
            r#"{"providers": {"openai": {"api_key_env": "TEAM_OPENAI_KEY"}}}"#,
        )
        .unwrap();
        let file = file.to_str().unwrap();
        let config = Config::from_vars(vars(&[
            ("PROVIDERS_FILE", file),
            ("TEAM_OPENAI_KEY", "sk-team-1234"),
        ]))
        .unwrap();
        assert_eq!(
            config.held_keys.get("TEAM_OPENAI_KEY"),
            Some("sk-team-1234")
        );
        assert_eq!(
            config.database_url.as_deref(),
            Some(crate::store::DEFAULT_URL)
        );
        let printed = format!("{config:?}");
        assert!(!printed.contains("sk-team-1234"), "{printed}");

        // The open relay: a held key, and no issued keys to guard it.
        let err = Config::from_vars(vars(&[
            ("PROVIDERS_FILE", file),
            ("TEAM_OPENAI_KEY", "sk-team-1234"),
            ("DATABASE_URL", "none"),
        ]))
        .unwrap_err()
        .to_string();
        assert!(err.contains("open relay"), "{err}");
        assert!(!err.contains("sk-team-1234"), "{err}");

        let err = Config::from_vars(vars(&[("PROVIDERS_FILE", file)]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("TEAM_OPENAI_KEY") && err.contains("not set"),
            "{err}"
        );
    }

    #[test]
    fn the_upstream_ca_file_is_read_at_start_and_its_faults_name_the_variable() {
        let dir = std::env::temp_dir().join(format!("llm-proxy-ca-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let good = dir.join("ca.pem");
        let certified = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        std::fs::write(&good, certified.cert.pem()).unwrap();
        let config = Config::from_vars(vars(&[
            ("UPSTREAM_CA_FILE", good.to_str().unwrap()),
            ("UPSTREAM_HTTP2", "true"),
        ]))
        .unwrap();
        assert_eq!(config.upstream_roots, [certified.cert.der().clone()]);
        assert!(config.upstream_http2);
        // Unset or empty: only the built-in roots.
        for set in [&[][..], &[("UPSTREAM_CA_FILE", "")][..]] {
            let config = Config::from_vars(vars(set)).unwrap();
            assert!(config.upstream_roots.is_empty());
        }
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "").unwrap();
        let missing = dir.join("missing.pem");
        for path in [&empty, &missing] {
            let error = Config::from_vars(vars(&[("UPSTREAM_CA_FILE", path.to_str().unwrap())]))
                .unwrap_err()
                .to_string();
            assert!(error.contains("UPSTREAM_CA_FILE"), "{error}");
            assert!(error.contains(path.to_str().unwrap()), "{error}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// `.env.example`'s `NAME=value` lines.
    fn env_example() -> Vec<(String, String)> {
        let text = include_str!("../../.env.example");
        text.lines()
            .filter(|line| !line.starts_with('#'))
            .filter_map(|line| line.split_once('='))
            .map(|(name, value)| (name.to_owned(), value.to_owned()))
            .collect()
    }

    #[test]
    fn the_env_example_holds_exactly_the_defaults() {
        let example = Config::from_vars(env_example()).unwrap();
        let defaults = Config::from_vars(vars(&[])).unwrap();
        assert_eq!(format!("{example:?}"), format!("{defaults:?}"));
    }

    #[test]
    fn every_variable_is_in_the_docs_configuration_table() {
        let page = include_str!("../../docs/configuration.md");
        let table = &page[page.find("## Environment variables").unwrap()..];
        let commented = include_str!("../../.env.example")
            .lines()
            .filter_map(|line| line.strip_prefix("# "))
            .filter_map(|line| line.split_once('='))
            .filter(|(name, _)| name.bytes().all(|b| b.is_ascii_uppercase() || b == b'_'))
            .map(|(name, _)| name.to_owned());
        for name in env_example()
            .into_iter()
            .map(|(name, _)| name)
            .chain(commented)
        {
            if name.ends_with("_API_KEY") {
                continue; // the recipes' keys, not the proxy's settings
            }
            assert!(
                table.contains(&format!("| `{name}` |")),
                "{name} is missing from the configuration table in docs/configuration.md"
            );
        }
    }
}
