//! OpenAI Chat Completions, spoken both ways: the door (`/v1/chat/completions`) and the
//! upstream every OpenAI-compatible provider is.

pub mod door;
pub mod types;
pub mod upstream;

pub use door::{completion, parse, probe, stream_of, ChunkEncoder, Probe};
pub use upstream::OpenAi;
