//! OpenAI Chat Completions, and every provider that speaks it (Groq, Mistral, OpenRouter,
//! Ollama, vLLM, ...): the body goes upstream byte for byte; only auth is mapped.

use std::borrow::Cow;

use actix_web::{
    http::{
        header::{HeaderValue, AUTHORIZATION},
        Uri,
    },
    web::Bytes,
};
use serde::Deserialize;

use super::{bad_body, secret_header, ChatProvider, Endpoint, UpstreamRequest};
use crate::{
    chat::{ChatRequest, ChatResponse, JsonObject, Usage},
    error::ProxyError,
};

pub struct OpenAi {
    endpoint: Endpoint,
    url: Uri,
}

impl OpenAi {
    pub fn new(endpoint: Endpoint) -> Self {
        Self {
            url: endpoint.url("chat/completions"),
            endpoint,
        }
    }
}

impl ChatProvider for OpenAi {
    fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    fn translate_request(
        &self,
        request: &ChatRequest<'_>,
        model: &str,
        key: Option<&HeaderValue>,
    ) -> Result<UpstreamRequest, ProxyError> {
        let headers = key
            .map(|key| (AUTHORIZATION, secret_header("Bearer ", key)))
            .into_iter()
            .collect();
        // Our request shape is a subset of OpenAI's: forwarding the body as received keeps
        // field order and unknown fields, and costs no copy. Only a front-door request, whose
        // model named the provider or an alias, or that lost fields, is written anew.
        let body = if model == request.model && !request.fields_removed {
            request.body.clone()
        } else {
            with_model(request, model)?
        };
        Ok(UpstreamRequest {
            url: self.url.clone(),
            headers,
            body,
        })
    }

    fn speaks_openai(&self) -> bool {
        true
    }

    fn translate_response<'a>(
        &self,
        body: &'a [u8],
        requested_model: &'a str,
    ) -> Result<ChatResponse<'a>, ProxyError> {
        let name = self.endpoint.name;
        let completion: Completion = serde_json::from_slice(body).map_err(|e| bad_body(name, e))?;
        let choice = completion
            .choices
            .into_iter()
            .next()
            .ok_or_else(|| bad_body(name, "has no choices"))?;
        Ok(ChatResponse {
            provider: name,
            model: completion.model.unwrap_or(Cow::Borrowed(requested_model)),
            content: choice.message.content.unwrap_or_default(),
            stop_reason: choice.finish_reason.clone(),
            native_stop_reason: choice.finish_reason,
            usage: completion.usage.map(|u| Usage {
                input_tokens: u.prompt_tokens,
                output_tokens: u.completion_tokens,
            }),
        })
    }
}

/// The request's fields in order, with `model` set to `model`.
fn with_model(request: &ChatRequest<'_>, model: &str) -> Result<Bytes, ProxyError> {
    let mut out = Vec::with_capacity(request.body.len());
    let mut object = JsonObject::new(&mut out);
    for (name, value) in &request.fields {
        match name.as_ref() {
            "model" => object.field("model", &model)?,
            _ => object.field(name, value)?,
        }
    }
    object.end();
    Ok(Bytes::from(out))
}

#[derive(Deserialize)]
struct Completion<'a> {
    #[serde(borrow)]
    model: Option<Cow<'a, str>>,
    #[serde(borrow)]
    choices: Vec<Choice<'a>>,
    usage: Option<CompletionUsage>,
}

#[derive(Deserialize)]
struct Choice<'a> {
    #[serde(borrow)]
    message: ChoiceMessage<'a>,
    #[serde(borrow)]
    finish_reason: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct ChoiceMessage<'a> {
    #[serde(borrow)]
    content: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct CompletionUsage {
    #[serde(default)]
    prompt_tokens: u64,
    #[serde(default)]
    completion_tokens: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::web::Bytes;

    fn provider() -> OpenAi {
        OpenAi::new(Endpoint {
            name: "openai",
            base_url: "http://upstream.test/v1/".into(),
            key_required: true,
            headers: vec![],
        })
    }

    #[test]
    fn the_body_is_forwarded_as_received_with_a_bearer_token() {
        let body = Bytes::from_static(
            br#"{"seed":1,"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}],"logprobs":true}"#,
        );
        let request = ChatRequest::parse(&body).unwrap();
        let upstream = provider()
            .translate_request(
                &request,
                "gpt-4o-mini",
                Some(&HeaderValue::from_static("sk-test")),
            )
            .unwrap();
        assert_eq!(upstream.url, "http://upstream.test/v1/chat/completions");
        assert_eq!(upstream.body, body);
        assert_eq!(upstream.headers.len(), 1);
        assert_eq!(upstream.headers[0].0, AUTHORIZATION);
        assert_eq!(upstream.headers[0].1, "Bearer sk-test");
        assert!(upstream.headers[0].1.is_sensitive());
    }

    #[test]
    fn another_model_rewrites_only_the_model_field_in_place() {
        let body = Bytes::from_static(
            br#"{"seed":1,"model":"groq/llama-3.1-8b","messages":[{"role":"user","content":"hi"}]}"#,
        );
        let request = ChatRequest::parse(&body).unwrap();
        let upstream = provider()
            .translate_request(&request, "llama-3.1-8b", None)
            .unwrap();
        assert_eq!(
            std::str::from_utf8(&upstream.body).unwrap(),
            r#"{"seed":1,"model":"llama-3.1-8b","messages":[{"role":"user","content":"hi"}]}"#
        );
        assert!(upstream.headers.is_empty(), "no key, no auth header");
    }

    #[test]
    fn a_completion_is_normalized() {
        let body = include_bytes!("../../tests/fixtures/openai/completion.json");
        let response = provider().translate_response(body, "gpt-4o-mini").unwrap();
        assert_eq!(
            response,
            ChatResponse {
                provider: "openai",
                model: "gpt-4o-mini-2024-07-18".into(),
                content: "Hello! How can I help you today?".into(),
                stop_reason: Some("stop".into()),
                native_stop_reason: Some("stop".into()),
                usage: Some(Usage {
                    input_tokens: 19,
                    output_tokens: 9
                }),
            }
        );
    }

    #[test]
    fn null_content_becomes_empty_and_finish_reasons_pass_through() {
        let body = br#"{"choices":[{"index":0,"message":{"role":"assistant","content":null,
            "tool_calls":[]},"finish_reason":"tool_calls"}]}"#;
        let response = provider().translate_response(body, "asked-for").unwrap();
        assert_eq!(response.content, "");
        assert_eq!(response.model, "asked-for");
        assert_eq!(response.stop_reason.as_deref(), Some("tool_calls"));
        assert_eq!(response.native_stop_reason.as_deref(), Some("tool_calls"));
        assert_eq!(response.usage, None);
    }

    #[test]
    fn a_missing_finish_reason_is_null() {
        let body = br#"{"choices":[{"message":{"content":"x"},"finish_reason":null}]}"#;
        let response = provider().translate_response(body, "m").unwrap();
        assert_eq!(response.stop_reason, None);
        assert_eq!(response.native_stop_reason, None);
    }

    #[test]
    fn bodies_without_choices_are_bad_gateway() {
        for body in [
            &b"{}"[..],
            br#"{"choices":[]}"#,
            b"<html>",
            br#"{"choices":"no"}"#,
        ] {
            let err = provider().translate_response(body, "m").unwrap_err();
            assert!(matches!(err, ProxyError::BadUpstreamBody(_)), "{err:?}");
        }
    }
}
