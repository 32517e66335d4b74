//! Gemini's `generateContent` shapes: the request parts the proxy writes and the
//! `GenerateContentResponse` it reads (whole, or one stream event).

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use serde_json::{value::RawValue, Value};

/// One turn of `contents`.
#[derive(Serialize, Debug)]
pub struct Content<'a> {
    /// `user` or `model`.
    pub role: &'static str,
    pub parts: Vec<RequestPart<'a>>,
}

/// A request part: serialized with one key, `{"text": ...}`, `{"functionCall": {...}}`...
#[derive(Serialize, Debug)]
pub enum RequestPart<'a> {
    #[serde(rename = "text")]
    Text(&'a str),
    // Images in the snake_case spelling of Google's REST examples, which the proxy has always
    // sent (the API takes both spellings of every field).
    #[serde(rename = "inline_data")]
    InlineData { mime_type: &'a str, data: &'a str },
    #[serde(rename = "file_data")]
    FileData {
        mime_type: &'a str,
        file_uri: &'a str,
    },
    #[serde(rename = "functionCall")]
    FunctionCall { name: &'a str, args: Value },
    #[serde(rename = "functionResponse")]
    FunctionResponse { name: &'a str, response: Value },
    /// A call with the `thoughtSignature` Gemini 3 requires beside the first call of each
    /// model turn in a tool loop: `{"functionCall": {...}, "thoughtSignature": "..."}`.
    #[serde(untagged)]
    SignedFunctionCall {
        #[serde(rename = "functionCall")]
        function_call: FunctionCallOut<'a>,
        #[serde(rename = "thoughtSignature")]
        thought_signature: &'a str,
    },
}

#[derive(Serialize, Debug)]
pub struct FunctionCallOut<'a> {
    pub name: &'a str,
    pub args: Value,
}

/// `systemInstruction`: the system prompt as one text part.
#[derive(Serialize)]
pub struct SystemInstruction<'a> {
    pub parts: [TextPart<'a>; 1],
}

#[derive(Serialize)]
pub struct TextPart<'a> {
    pub text: &'a str,
}

/// One entry of `tools`: the caller's functions.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FunctionTools<'a> {
    pub function_declarations: Vec<FunctionDeclaration<'a>>,
}

#[derive(Serialize)]
pub struct FunctionDeclaration<'a> {
    pub name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parameters: Option<Value>,
}

/// `toolConfig`.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ToolConfig<'a> {
    pub function_calling_config: FunctionCallingConfig<'a>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FunctionCallingConfig<'a> {
    /// `AUTO`, `ANY` or `NONE`.
    pub mode: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allowed_function_names: Option<[&'a str; 1]>,
}

/// A `GenerateContentResponse`: the whole answer, or one event of a stream. An error inside
/// a stream (`{"error": {...}}`) reads as one too, with only `error` set.
#[derive(Deserialize, Debug)]
#[serde(rename_all = "camelCase")]
pub struct GenerateContentResponse<'a> {
    #[serde(default, borrow)]
    pub candidates: Vec<Candidate<'a>>,
    #[serde(borrow)]
    pub prompt_feedback: Option<PromptFeedback<'a>>,
    pub usage_metadata: Option<UsageMetadata>,
    #[serde(borrow)]
    pub model_version: Option<Cow<'a, str>>,
    #[serde(borrow)]
    pub response_id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    pub error: Option<&'a RawValue>,
}

#[derive(Deserialize, Debug)]
#[serde(rename_all = "camelCase")]
pub struct Candidate<'a> {
    #[serde(borrow)]
    pub content: Option<CandidateContent<'a>>,
    #[serde(borrow)]
    pub finish_reason: Option<Cow<'a, str>>,
}

#[derive(Deserialize, Debug)]
pub struct CandidateContent<'a> {
    #[serde(default, borrow)]
    pub parts: Vec<ResponsePart<'a>>,
}

/// A part of an answer. Parts of kinds the proxy does not carry (`inlineData` images,
/// `executableCode`...) read as neither text nor call, and are skipped.
#[derive(Deserialize, Debug)]
#[serde(rename_all = "camelCase")]
pub struct ResponsePart<'a> {
    #[serde(borrow)]
    pub text: Option<Cow<'a, str>>,
    /// Marks a thought summary (`includeThoughts`), not the answer.
    #[serde(default)]
    pub thought: bool,
    #[serde(borrow)]
    pub function_call: Option<FunctionCall<'a>>,
}

#[derive(Deserialize, Debug)]
pub struct FunctionCall<'a> {
    #[serde(borrow)]
    pub name: Cow<'a, str>,
    /// The arguments object, as written.
    #[serde(borrow)]
    pub args: Option<&'a RawValue>,
    /// Set by some models (and Vertex) to pair results with calls.
    #[serde(borrow)]
    pub id: Option<Cow<'a, str>>,
}

#[derive(Deserialize, Debug)]
#[serde(rename_all = "camelCase")]
pub struct PromptFeedback<'a> {
    #[serde(borrow)]
    pub block_reason: Option<Cow<'a, str>>,
}

#[derive(Deserialize, Debug, Clone, Copy)]
#[serde(rename_all = "camelCase")]
pub struct UsageMetadata {
    /// Every prompt token, the cached ones included.
    #[serde(default)]
    pub prompt_token_count: u64,
    #[serde(default)]
    pub cached_content_token_count: u64,
    /// The answer's tokens, thoughts not included.
    #[serde(default)]
    pub candidates_token_count: u64,
    #[serde(default)]
    pub thoughts_token_count: u64,
}
