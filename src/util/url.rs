//! Base URLs, as the configuration takes them.

/// A base URL must be absolute http(s) with a host and no query; a trailing slash is allowed.
/// The error says what is wrong, to follow the URL.
pub fn check_base_url(value: &str) -> Result<(), &'static str> {
    let uri: awc::http::Uri = value.parse().map_err(|_| "is not a valid URL")?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        _ => return Err("must start with http:// or https://"),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err("has no host");
    }
    if uri.query().is_some() {
        return Err("must not have a query string");
    }
    Ok(())
}
