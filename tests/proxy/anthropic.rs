//! Anthropic through the proxy.
