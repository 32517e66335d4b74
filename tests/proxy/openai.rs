//! OpenAI through the proxy: auth mapping, the body forwarded as given, normalized answers.
