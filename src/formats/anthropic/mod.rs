//! anthropic wire format: door and upstream.
