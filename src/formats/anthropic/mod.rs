//! Anthropic Messages, both ways: the `/v1/messages` door and the Anthropic upstream.

pub mod door;
mod types;
pub mod upstream;

pub use door::{message, parse, probe, stream_of, EventEncoder, Probe, DROPPED};
pub use upstream::{Anthropic, STRUCTURED_OUTPUT_TOOL};
