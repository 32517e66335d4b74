//! gemini wire format: door and upstream.
