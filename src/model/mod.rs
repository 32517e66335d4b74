//! The proxy's own chat model: what every door parses into and every upstream is built from.
//!
//! It belongs to no provider. Each wire format in [`crate::formats`] translates between its
//! own shapes and these, in both directions, so N formats need N translations, not N×N.
//! Everything here is plain owned data: translation is pure and testable without a server.

pub mod cost;
pub mod request;
pub mod response;
pub mod stream;
pub mod usage;

pub use request::{
    Effort, Image, Message, Part, Reasoning, Request, ResponseFormat, Role, Tool, ToolCall,
    ToolChoice, ToolResult,
};
pub use response::{Response, StopReason};
pub use stream::StreamEvent;
pub use usage::Usage;
