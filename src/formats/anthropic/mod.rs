//! Anthropic Messages, both ways: the `/v1/messages` door and the Anthropic upstream.

pub mod door;
mod types;

pub use door::{message, parse, probe, stream_of, EventEncoder, Probe, DROPPED};
