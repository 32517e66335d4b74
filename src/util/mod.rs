//! Helpers with no knowledge of providers or formats.

pub mod fingerprint;
pub mod glob;
pub mod hex;
pub mod json;
pub mod runtime;
pub mod sse;
pub mod url;
