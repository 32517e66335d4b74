//! openai wire format: door and upstream.
