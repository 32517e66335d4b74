//! The Gemini `generateContent` wire format, as an upstream only: no Gemini door.

pub mod schema;
pub mod types;
pub mod upstream;

pub use upstream::Gemini;
