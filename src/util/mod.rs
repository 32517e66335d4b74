//! Helpers with no knowledge of providers or formats.

pub mod json;
pub mod sse;
pub mod url;
