//! The `ChatProvider` trait every wire format implements, and the registry that names them.
//!
//! Adding a provider: write one module with a type that implements [`ChatProvider`], then add
//! one line to [`Registry::new`].

mod anthropic;
mod openai;

pub use anthropic::Anthropic;
pub use openai::OpenAi;

use actix_web::{
    http::{
        header::{HeaderName, HeaderValue},
        Uri,
    },
    web::Bytes,
};

use crate::{
    chat::{ChatRequest, ChatResponse},
    config::Config,
    error::ProxyError,
};

/// Everything `upstream::send` needs for one call: where, which headers, what body.
#[derive(Debug)]
pub struct UpstreamRequest {
    pub url: Uri,
    /// Auth and version headers. `Content-Type: application/json` is always added by the sender.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub body: Bytes,
}

/// One upstream wire format. Implementations are plain data and translate with pure functions;
/// all network I/O lives in `upstream`.
pub trait ChatProvider: Send + Sync {
    /// The `{provider}` segment of `/v1/chat/{provider}`, and the `provider` of responses.
    fn name(&self) -> &'static str;

    /// Runs once per request, after the body has been validated: builds the upstream call,
    /// mapping the caller's key onto this provider's auth headers. Fails only on input this
    /// provider cannot express (a 400).
    fn translate_request(
        &self,
        request: &ChatRequest<'_>,
        key: &HeaderValue,
    ) -> Result<UpstreamRequest, ProxyError>;

    /// Runs on a 2xx answer to a non-streaming request: the upstream body, normalized.
    /// `requested_model` is used when the upstream does not name its model.
    fn translate_response<'a>(
        &self,
        body: &'a [u8],
        requested_model: &'a str,
    ) -> Result<ChatResponse<'a>, ProxyError>;
}

/// The providers this process serves, by name.
pub struct Registry {
    providers: Vec<Box<dyn ChatProvider>>,
}

impl Registry {
    pub fn new(config: &Config) -> Self {
        Self {
            providers: vec![
                Box::new(OpenAi::new(&config.openai_base_url)),
                Box::new(Anthropic::new(config)),
            ],
        }
    }

    pub fn get(&self, name: &str) -> Option<&dyn ChatProvider> {
        self.providers
            .iter()
            .find(|provider| provider.name() == name)
            .map(Box::as_ref)
    }

    /// The known names, sorted, for error messages.
    pub fn names(&self) -> Vec<&'static str> {
        let mut names: Vec<_> = self.providers.iter().map(|p| p.name()).collect();
        names.sort_unstable();
        names
    }
}

/// The URL of an endpoint below a validated base URL.
fn endpoint(base: &str, path: &str) -> Uri {
    crate::config::join_url(base, path)
        .parse()
        .expect("base URLs are validated at start")
}

/// A header value built from a key, marked sensitive so that it is never printed.
fn secret_header(prefix: &str, key: &HeaderValue) -> HeaderValue {
    let mut bytes = Vec::with_capacity(prefix.len() + key.len());
    bytes.extend_from_slice(prefix.as_bytes());
    bytes.extend_from_slice(key.as_bytes());
    let mut value = HeaderValue::from_bytes(&bytes)
        .expect("a valid header value with an ASCII prefix is valid");
    value.set_sensitive(true);
    value
}

/// The error for a 2xx body that does not have the shape a provider documents.
fn bad_body(provider: &str, why: impl std::fmt::Display) -> ProxyError {
    ProxyError::BadUpstreamBody(format!("{provider} response {why}"))
}
