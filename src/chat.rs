//! The caller's chat request (parsed and validated, borrowing from the body) and the normalized
//! response every provider answers with.

use std::{borrow::Cow, fmt, io::Write};

use actix_web::web::Bytes;
use serde::{
    de::{MapAccess, Visitor},
    Deserialize, Deserializer, Serialize,
};
use serde_json::value::RawValue;

use crate::error::ProxyError;

/// One chat request, as the caller sent it to `POST /v1/chat/{provider}`.
///
/// Strings borrow from the body where they can; `fields` keeps every top-level field in the
/// order it came, raw, so translations can forward what they do not understand unchanged.
#[derive(Debug, Clone)]
pub struct ChatRequest<'a> {
    pub model: Cow<'a, str>,
    pub messages: Vec<Message<'a>>,
    pub stream: bool,
    pub max_tokens: Option<u64>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    /// `stop` as a list: a single string becomes a list of one.
    pub stop: Option<Vec<Cow<'a, str>>>,
    pub fields: Vec<(Cow<'a, str>, &'a RawValue)>,
    /// Whether `stream_options.include_usage` asks for a usage chunk (front door).
    pub include_usage: bool,
    /// Whether fields were removed after parsing, so `body` no longer matches `fields`.
    pub fields_removed: bool,
    /// The body exactly as received.
    pub body: &'a Bytes,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    System,
    User,
    Assistant,
}

#[derive(Debug, Clone)]
pub struct Message<'a> {
    pub role: Role,
    pub content: Content<'a>,
}

/// A message's content: a string, or a list of text and image parts.
#[derive(Debug, Clone, PartialEq)]
pub enum Content<'a> {
    Text(Cow<'a, str>),
    Parts(Vec<Part<'a>>),
}

#[derive(Debug, Clone, PartialEq)]
pub enum Part<'a> {
    Text(Cow<'a, str>),
    Image(Image<'a>),
}

/// An image, by URL or inline, always with a media type the providers accept.
#[derive(Debug, Clone, PartialEq)]
pub enum Image<'a> {
    /// An `https` URL; `media_type` is inferred from its extension (JPEG when it has none).
    Url {
        url: Cow<'a, str>,
        media_type: &'static str,
    },
    /// A `data:` URL's payload, still base64.
    Base64 {
        media_type: &'static str,
        data: Cow<'a, str>,
    },
}

/// The image types every provider here accepts.
const MEDIA_TYPES: [&str; 4] = ["image/jpeg", "image/png", "image/gif", "image/webp"];

impl Content<'_> {
    /// The text of the content; image parts are skipped, text parts joined without separator.
    pub fn text(&self) -> Cow<'_, str> {
        match self {
            Content::Text(text) => Cow::Borrowed(text),
            Content::Parts(parts) => {
                let mut texts = parts.iter().filter_map(|part| match part {
                    Part::Text(text) => Some(text.as_ref()),
                    Part::Image(_) => None,
                });
                match (texts.next(), texts.next()) {
                    (None, _) => Cow::Borrowed(""),
                    (Some(only), None) => Cow::Borrowed(only),
                    (Some(first), Some(second)) => {
                        Cow::Owned([first, second].into_iter().chain(texts).collect())
                    }
                }
            }
        }
    }

    pub fn has_images(&self) -> bool {
        matches!(self, Content::Parts(parts) if parts.iter().any(|p| matches!(p, Part::Image(_))))
    }
}

/// A string that borrows from the input when it has no escapes.
#[derive(Deserialize)]
struct Text<'a>(#[serde(borrow)] Cow<'a, str>);

/// The fields of an object, in order, values left raw.
struct Fields<'a>(Vec<(Cow<'a, str>, &'a RawValue)>);

impl<'de> Deserialize<'de> for Fields<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct FieldsVisitor;
        impl<'de> Visitor<'de> for FieldsVisitor {
            type Value = Fields<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut fields = Vec::with_capacity(map.size_hint().unwrap_or(8));
                while let Some((Text(key), value)) = map.next_entry::<Text, &RawValue>()? {
                    fields.push((key, value));
                }
                Ok(Fields(fields))
            }
        }
        deserializer.deserialize_map(FieldsVisitor)
    }
}

impl<'a> ChatRequest<'a> {
    /// Parses and validates a body. The error names the field that is wrong.
    pub fn parse(body: &'a Bytes) -> Result<Self, String> {
        let Fields(fields) = serde_json::from_slice(body).map_err(|e| {
            if e.is_data() {
                "the request body must be a JSON object".to_owned()
            } else {
                format!("the request body is not valid JSON: {e}")
            }
        })?;

        let mut model = None;
        let mut messages = None;
        let mut max_completion_tokens = None;
        let mut request = ChatRequest {
            model: Cow::Borrowed(""),
            messages: Vec::new(),
            stream: false,
            max_tokens: None,
            temperature: None,
            top_p: None,
            stop: None,
            fields: Vec::new(),
            include_usage: false,
            fields_removed: false,
            body,
        };
        for (index, (name, value)) in fields.iter().enumerate() {
            let known = matches!(
                name.as_ref(),
                "model" | "messages" | "stream" | "max_tokens" | "temperature" | "top_p" | "stop"
            );
            if known && fields[..index].iter().any(|(seen, _)| seen == name) {
                return Err(format!("`{name}` appears more than once"));
            }
            let value: &'a RawValue = value;
            // An optional field sent as null counts as absent.
            if value.get() == "null" {
                continue;
            }
            match name.as_ref() {
                "model" => model = Some(parse_model(value)?),
                "messages" => messages = Some(parse_messages(value)?),
                "stream" => {
                    request.stream = serde_json::from_str(value.get())
                        .map_err(|_| "`stream` must be true or false".to_owned())?
                }
                "max_tokens" => match serde_json::from_str::<u64>(value.get()) {
                    Ok(n) if n > 0 => request.max_tokens = Some(n),
                    _ => return Err("`max_tokens` must be a positive integer".into()),
                },
                "temperature" => request.temperature = Some(parse_number("temperature", value)?),
                "top_p" => request.top_p = Some(parse_number("top_p", value)?),
                "stop" => request.stop = Some(parse_stop(value)?),
                "max_completion_tokens" => match serde_json::from_str::<u64>(value.get()) {
                    // OpenAI's newer name; `max_tokens` wins when both are sent.
                    Ok(n) if n > 0 => max_completion_tokens = Some(n),
                    _ => return Err("`max_completion_tokens` must be a positive integer".into()),
                },
                "stream_options" => request.include_usage = parse_include_usage(value)?,
                _ => {}
            }
        }
        request.max_tokens = request.max_tokens.or(max_completion_tokens);
        request.model = model.ok_or("`model` is required")?;
        request.messages = messages.ok_or("`messages` is required")?;
        request.fields = fields;
        Ok(request)
    }
}

impl ChatRequest<'_> {
    /// Drops the named top-level fields, so a translation does not forward them.
    pub fn remove_fields(&mut self, names: &[&str]) {
        let before = self.fields.len();
        self.fields
            .retain(|(name, _)| !names.contains(&name.as_ref()));
        self.fields_removed |= self.fields.len() != before;
    }
}

fn parse_include_usage(value: &RawValue) -> Result<bool, String> {
    #[derive(Deserialize)]
    struct StreamOptions {
        include_usage: Option<bool>,
    }
    serde_json::from_str::<StreamOptions>(value.get())
        .map(|options| options.include_usage.unwrap_or(false))
        .map_err(|_| "`stream_options` must be an object like {\"include_usage\": true}".into())
}

fn parse_model(value: &RawValue) -> Result<Cow<'_, str>, String> {
    match serde_json::from_str::<Text>(value.get()) {
        Ok(Text(model)) if !model.is_empty() => Ok(model),
        _ => Err("`model` must be a non-empty string".into()),
    }
}

fn parse_number(name: &str, value: &RawValue) -> Result<f64, String> {
    serde_json::from_str(value.get()).map_err(|_| format!("`{name}` must be a number"))
}

fn parse_stop(value: &RawValue) -> Result<Vec<Cow<'_, str>>, String> {
    if let Ok(Text(one)) = serde_json::from_str::<Text>(value.get()) {
        return Ok(vec![one]);
    }
    serde_json::from_str::<Vec<Text>>(value.get())
        .map(|all| all.into_iter().map(|Text(s)| s).collect())
        .map_err(|_| "`stop` must be a string or an array of strings".into())
}

fn parse_messages(value: &RawValue) -> Result<Vec<Message<'_>>, String> {
    let raw: Vec<&RawValue> = serde_json::from_str(value.get())
        .map_err(|_| "`messages` must be an array of messages".to_owned())?;
    if raw.is_empty() {
        return Err("`messages` must not be empty".into());
    }
    raw.into_iter()
        .enumerate()
        .map(|(i, message)| parse_message(i, message))
        .collect()
}

fn parse_message(index: usize, value: &RawValue) -> Result<Message<'_>, String> {
    #[derive(Deserialize)]
    struct RawMessage<'a> {
        #[serde(borrow)]
        role: Option<&'a RawValue>,
        #[serde(borrow)]
        content: Option<&'a RawValue>,
    }
    let message: RawMessage = serde_json::from_str(value.get())
        .map_err(|_| format!("`messages[{index}]` must be an object with `role` and `content`"))?;
    let role = message
        .role
        .ok_or_else(|| format!("`messages[{index}].role` is required"))?;
    let role = serde_json::from_str(role.get()).map_err(|_| {
        format!("`messages[{index}].role` must be one of \"system\", \"user\", \"assistant\"")
    })?;
    let content = message
        .content
        .ok_or_else(|| format!("`messages[{index}].content` is required"))?;
    let content = parse_content(content).map_err(|e| format!("`messages[{index}].content{e}"))?;
    Ok(Message { role, content })
}

/// A message's content. Errors start with the part's place (`[1]`, or `` ` `` for the whole),
/// so the caller can prefix `messages[i].content`.
fn parse_content(value: &RawValue) -> Result<Content<'_>, String> {
    if let Ok(Text(text)) = serde_json::from_str::<Text>(value.get()) {
        return Ok(Content::Text(text));
    }
    let parts: Vec<&RawValue> = serde_json::from_str(value.get())
        .map_err(|_| "` must be a string or an array of content parts".to_owned())?;
    parts
        .into_iter()
        .enumerate()
        .map(|(i, part)| parse_part(part).map_err(|e| format!("[{i}]` {e}")))
        .collect::<Result<_, _>>()
        .map(Content::Parts)
}

fn parse_part(value: &RawValue) -> Result<Part<'_>, String> {
    #[derive(Deserialize)]
    struct RawPart<'a> {
        #[serde(rename = "type", borrow)]
        kind: Option<Cow<'a, str>>,
        #[serde(borrow)]
        text: Option<Text<'a>>,
        #[serde(borrow)]
        image_url: Option<RawImageUrl<'a>>,
    }
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum RawImageUrl<'a> {
        Object {
            #[serde(borrow)]
            url: Text<'a>,
        },
        Bare(#[serde(borrow)] Text<'a>),
    }
    let part: RawPart = serde_json::from_str(value.get())
        .map_err(|_| "must be an object with a `type` and its field".to_owned())?;
    match part.kind.as_deref() {
        Some("text") => match part.text {
            Some(Text(text)) => Ok(Part::Text(text)),
            None => Err("is a text part without a string `text`".into()),
        },
        Some("image_url") => match part.image_url {
            Some(RawImageUrl::Object { url: Text(url) } | RawImageUrl::Bare(Text(url))) => {
                parse_image_url(url).map(Part::Image)
            }
            None => Err("is an image part without `image_url.url`".into()),
        },
        Some(other) => Err(format!(
            "has type {other:?}; supported part types are \"text\" and \"image_url\""
        )),
        None => Err("has no `type`".into()),
    }
}

/// An image URL: `https://...`, or `data:<media type>;base64,<data>`.
fn parse_image_url(url: Cow<'_, str>) -> Result<Image<'_>, String> {
    if let Some(rest) = url.strip_prefix("data:") {
        let (header, data) = rest
            .split_once(',')
            .ok_or("has a data: URL without a `,` before its data")?;
        let media_type = header
            .strip_suffix(";base64")
            .ok_or("has a data: URL that is not base64; use data:<type>;base64,<data>")?;
        let media_type = supported_media_type(media_type)?;
        if data.is_empty() || !data.bytes().all(is_base64) {
            return Err("has a data: URL whose data is not base64".into());
        }
        let start = url.len() - data.len();
        let data = match url {
            Cow::Borrowed(url) => Cow::Borrowed(&url[start..]),
            Cow::Owned(url) => Cow::Owned(url[start..].to_owned()),
        };
        return Ok(Image::Base64 { media_type, data });
    }
    if !url.starts_with("https://") || url.len() == "https://".len() {
        return Err("has an image URL that is neither https:// nor data:".into());
    }
    let path = url.split(['?', '#']).next().unwrap_or_default();
    let file = path.rsplit('/').next().unwrap_or_default();
    let media_type = match file.rsplit_once('.') {
        Some((_, extension)) => media_type_of_extension(extension)?,
        None => "image/jpeg",
    };
    Ok(Image::Url { url, media_type })
}

fn is_base64(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || matches!(byte, b'+' | b'/' | b'=')
}

fn supported_media_type(media_type: &str) -> Result<&'static str, String> {
    MEDIA_TYPES
        .into_iter()
        .find(|known| known.eq_ignore_ascii_case(media_type))
        .ok_or_else(|| {
            format!(
                "has media type {media_type:?}; supported are {}",
                MEDIA_TYPES.join(", ")
            )
        })
}

fn media_type_of_extension(extension: &str) -> Result<&'static str, String> {
    match extension.to_ascii_lowercase().as_str() {
        "jpg" | "jpeg" => Ok("image/jpeg"),
        "png" => Ok("image/png"),
        "gif" => Ok("image/gif"),
        "webp" => Ok("image/webp"),
        // A dot in the last path segment that is not an image extension says nothing about the
        // type (`/v2/render.api`), except for the image types we know we cannot send.
        "bmp" | "svg" | "tif" | "tiff" | "ico" | "heic" | "avif" => Err(format!(
            "has an image of type .{extension}; supported are {}",
            MEDIA_TYPES.join(", ")
        )),
        _ => Ok("image/jpeg"),
    }
}

/// Writes a JSON object one field at a time, so raw values can be copied in unparsed.
pub struct JsonObject<'w> {
    out: &'w mut Vec<u8>,
    empty: bool,
}

impl<'w> JsonObject<'w> {
    pub fn new(out: &'w mut Vec<u8>) -> Self {
        out.push(b'{');
        Self { out, empty: true }
    }

    pub fn field(&mut self, name: &str, value: &impl Serialize) -> Result<(), ProxyError> {
        if !self.empty {
            self.out.push(b',');
        }
        self.empty = false;
        let write = |out: &mut Vec<u8>| -> serde_json::Result<()> {
            serde_json::to_writer(&mut *out, name)?;
            out.write_all(b":").map_err(serde_json::Error::io)?;
            serde_json::to_writer(&mut *out, value)
        };
        write(self.out).map_err(|e| ProxyError::InvalidRequest(format!("`{name}`: {e}")))
    }

    pub fn end(self) {
        self.out.push(b'}');
    }
}

/// The one response shape every provider's answer becomes.
#[derive(Debug, Serialize, PartialEq)]
pub struct ChatResponse<'a> {
    pub provider: &'a str,
    pub model: Cow<'a, str>,
    pub content: Cow<'a, str>,
    /// In one vocabulary across providers: `stop`, `length`, `tool_calls`, `content_filter`,
    /// or the upstream's own value when it has no equivalent.
    pub stop_reason: Option<Cow<'a, str>>,
    /// The upstream's own stop reason, unmapped.
    pub native_stop_reason: Option<Cow<'a, str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
}

#[derive(Debug, Serialize, PartialEq, Eq, Clone, Copy, Default)]
pub struct Usage {
    pub input_tokens: u64,
    pub output_tokens: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<ChatRequest<'static>, String> {
        let body: &'static Bytes = Box::leak(Box::new(Bytes::from(json.to_owned())));
        ChatRequest::parse(body)
    }

    const HI: &str = r#"[{"role":"user","content":"hi"}]"#;

    #[test]
    fn a_full_request_parses() {
        let request = parse(
            r#"{"model":"m","messages":[{"role":"system","content":"be brief"},
                {"role":"user","content":"hi"}],"stream":true,"max_tokens":5,
                "temperature":0.2,"top_p":1,"stop":["x","y"],"seed":7}"#,
        )
        .unwrap();
        assert_eq!(request.model, "m");
        assert_eq!(request.messages.len(), 2);
        assert_eq!(request.messages[0].role, Role::System);
        assert_eq!(request.messages[1].content, Content::Text("hi".into()));
        assert!(request.stream);
        assert_eq!(request.max_tokens, Some(5));
        assert_eq!(request.temperature, Some(0.2));
        assert_eq!(request.top_p, Some(1.0));
        assert_eq!(request.stop, Some(vec!["x".into(), "y".into()]));
        let names: Vec<_> = request.fields.iter().map(|(k, _)| k.as_ref()).collect();
        assert_eq!(
            names,
            [
                "model",
                "messages",
                "stream",
                "max_tokens",
                "temperature",
                "top_p",
                "stop",
                "seed"
            ]
        );
    }

    #[test]
    fn strings_without_escapes_borrow_from_the_body() {
        let request = parse(&format!(r#"{{"model":"m","messages":{HI}}}"#)).unwrap();
        assert!(matches!(request.model, Cow::Borrowed(_)));
        assert!(matches!(
            request.messages[0].content,
            Content::Text(Cow::Borrowed(_))
        ));
        let escaped =
            parse(r#"{"model":"m","messages":[{"role":"user","content":"a\nb"}]}"#).unwrap();
        assert_eq!(escaped.messages[0].content, Content::Text("a\nb".into()));
    }

    #[test]
    fn a_single_stop_string_becomes_a_list() {
        let request = parse(&format!(r#"{{"model":"m","messages":{HI},"stop":"END"}}"#)).unwrap();
        assert_eq!(request.stop, Some(vec!["END".into()]));
    }

    #[test]
    fn null_optional_fields_count_as_absent() {
        let request = parse(&format!(
            r#"{{"model":"m","messages":{HI},"stream":null,"max_tokens":null,"temperature":null,"top_p":null,"stop":null}}"#
        ))
        .unwrap();
        assert!(!request.stream);
        assert_eq!(request.max_tokens, None);
        assert_eq!(request.temperature, None);
        assert_eq!(request.stop, None);
    }

    #[test]
    fn each_bad_input_names_what_is_wrong() {
        let cases = [
            ("not json", "not valid JSON"),
            ("[1,2]", "must be a JSON object"),
            (
                r#"{"messages":[{"role":"user","content":"hi"}]}"#,
                "`model` is required",
            ),
            (
                r#"{"model":null,"messages":[{"role":"user","content":"hi"}]}"#,
                "`model` is required",
            ),
            (
                r#"{"model":"","messages":[{"role":"user","content":"hi"}]}"#,
                "`model` must be a non-empty string",
            ),
            (
                r#"{"model":5,"messages":[{"role":"user","content":"hi"}]}"#,
                "`model` must be a non-empty string",
            ),
            (r#"{"model":"m"}"#, "`messages` is required"),
            (
                r#"{"model":"m","messages":[]}"#,
                "`messages` must not be empty",
            ),
            (
                r#"{"model":"m","messages":"hi"}"#,
                "`messages` must be an array",
            ),
            (
                r#"{"model":"m","messages":[1]}"#,
                "`messages[0]` must be an object",
            ),
            (
                r#"{"model":"m","messages":[{"content":"hi"}]}"#,
                "`messages[0].role` is required",
            ),
            (
                r#"{"model":"m","messages":[{"role":"user","content":"a"},{"role":"bot","content":"hi"}]}"#,
                "`messages[1].role` must be one of",
            ),
            (
                r#"{"model":"m","messages":[{"role":"user"}]}"#,
                "`messages[0].content` is required",
            ),
            (
                r#"{"model":"m","messages":[{"role":"user","content":5}]}"#,
                "`messages[0].content` must be a string or an array of content parts",
            ),
            (
                r#"{"model":"m","messages":[{"role":"user","content":[{"type":"text","text":"hi"},{"type":"audio"}]}]}"#,
                "`messages[0].content[1]` has type \"audio\"",
            ),
            (
                r#"{"model":"m","messages":[{"role":"user","content":[{"text":"hi"}]}]}"#,
                "`messages[0].content[0]` has no `type`",
            ),
            (
                r#"{"model":"m","messages":[{"role":"user","content":[{"type":"text"}]}]}"#,
                "`messages[0].content[0]` is a text part without a string `text`",
            ),
            (
                r#"{"model":"m","messages":[{"role":"user","content":[{"type":"image_url"}]}]}"#,
                "`messages[0].content[0]` is an image part without `image_url.url`",
            ),
            (
                r#"{"model":"m","messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"http://x.com/a.png"}}]}]}"#,
                "neither https:// nor data:",
            ),
            (
                r#"{"model":"m","messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"data:image/bmp;base64,Qk0="}}]}]}"#,
                "`messages[0].content[0]` has media type \"image/bmp\"",
            ),
            (
                r#"{"model":"m","messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"data:image/png,rawbytes"}}]}]}"#,
                "not base64",
            ),
            (
                r#"{"model":"m","messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"data:image/png;base64,@@@"}}]}]}"#,
                "whose data is not base64",
            ),
            (
                r#"{"model":"m","messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"https://x.com/a.svg"}}]}]}"#,
                "has an image of type .svg",
            ),
            (
                r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"stream_options":true}"#,
                "`stream_options` must be an object",
            ),
            (
                r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"max_completion_tokens":0}"#,
                "`max_completion_tokens` must be a positive integer",
            ),
            (
                r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"stream":"yes"}"#,
                "`stream` must be true or false",
            ),
            (
                r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"max_tokens":0}"#,
                "`max_tokens` must be a positive integer",
            ),
            (
                r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"max_tokens":-3}"#,
                "`max_tokens` must be a positive integer",
            ),
            (
                r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"max_tokens":1.5}"#,
                "`max_tokens` must be a positive integer",
            ),
            (
                r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"temperature":"hot"}"#,
                "`temperature` must be a number",
            ),
            (
                r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"top_p":[]}"#,
                "`top_p` must be a number",
            ),
            (
                r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"stop":[1]}"#,
                "`stop` must be a string or an array of strings",
            ),
            (
                r#"{"model":"a","model":"b","messages":[{"role":"user","content":"hi"}]}"#,
                "`model` appears more than once",
            ),
        ];
        for (body, expected) in cases {
            let err = parse(body).unwrap_err();
            assert!(
                err.contains(expected),
                "{body}: got {err:?}, want {expected:?}"
            );
        }
    }

    #[test]
    fn content_parts_parse_into_text_and_images() {
        let request = parse(
            r#"{"model":"m","messages":[{"role":"user","content":[
                {"type":"text","text":"Look: "},
                {"type":"image_url","image_url":{"url":"data:image/PNG;base64,iVBORw0KGgo=","detail":"low"}},
                {"type":"image_url","image_url":{"url":"https://example.com/img/cat.webp?size=2"}},
                {"type":"image_url","image_url":{"url":"https://example.com/render"}},
                {"type":"text","text":"what?"}]}]}"#,
        )
        .unwrap();
        let Content::Parts(parts) = &request.messages[0].content else {
            panic!("parts expected");
        };
        assert_eq!(parts[0], Part::Text("Look: ".into()));
        assert_eq!(
            parts[1],
            Part::Image(Image::Base64 {
                media_type: "image/png",
                data: "iVBORw0KGgo=".into()
            })
        );
        assert_eq!(
            parts[2],
            Part::Image(Image::Url {
                url: "https://example.com/img/cat.webp?size=2".into(),
                media_type: "image/webp"
            })
        );
        assert!(matches!(
            parts[3],
            Part::Image(Image::Url {
                media_type: "image/jpeg",
                ..
            })
        ));
        assert_eq!(request.messages[0].content.text(), "Look: what?");
        assert!(request.messages[0].content.has_images());
    }

    #[test]
    fn front_door_options_are_read() {
        let request = parse(&format!(
            r#"{{"model":"m","messages":{HI},"stream_options":{{"include_usage":true}},"max_completion_tokens":9}}"#
        ))
        .unwrap();
        assert!(request.include_usage);
        assert_eq!(request.max_tokens, Some(9));
        let both = parse(&format!(
            r#"{{"model":"m","messages":{HI},"max_tokens":5,"max_completion_tokens":9}}"#
        ))
        .unwrap();
        assert_eq!(both.max_tokens, Some(5), "max_tokens wins");
    }

    #[test]
    fn removing_fields_is_remembered() {
        let mut request = parse(&format!(r#"{{"model":"m","messages":{HI},"seed":1}}"#)).unwrap();
        request.remove_fields(&["n"]);
        assert!(!request.fields_removed);
        request.remove_fields(&["seed"]);
        assert!(request.fields_removed);
        assert_eq!(request.fields.len(), 2);
    }

    #[test]
    fn usage_is_left_out_of_the_response_when_absent() {
        let response = ChatResponse {
            provider: "openai",
            model: "m".into(),
            content: "hi".into(),
            stop_reason: None,
            native_stop_reason: None,
            usage: None,
        };
        assert_eq!(
            serde_json::to_string(&response).unwrap(),
            r#"{"provider":"openai","model":"m","content":"hi","stop_reason":null,"native_stop_reason":null}"#
        );
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;
        use serde_json::{json, Value};

        /// Any JSON value, a few levels deep, with the keys a chat body has among others.
        fn any_json() -> impl Strategy<Value = Value> {
            let key = prop_oneof![
                Just("model".to_owned()),
                Just("messages".to_owned()),
                Just("role".to_owned()),
                Just("content".to_owned()),
                Just("type".to_owned()),
                Just("text".to_owned()),
                Just("image_url".to_owned()),
                Just("url".to_owned()),
                Just("stream".to_owned()),
                Just("stop".to_owned()),
                Just("max_tokens".to_owned()),
                Just("stream_options".to_owned()),
                "[a-z_]{1,8}",
            ];
            let leaf = prop_oneof![
                Just(Value::Null),
                any::<bool>().prop_map(Value::from),
                any::<i64>().prop_map(Value::from),
                any::<f64>().prop_map(|f| json!(f)),
                prop_oneof![
                    Just("user".to_owned()),
                    Just("system".to_owned()),
                    Just("image_url".to_owned()),
                    Just("data:image/png;base64,iVBO".to_owned()),
                    Just("https://x.test/a.png".to_owned()),
                    ".{0,12}",
                ]
                .prop_map(Value::from),
            ];
            leaf.prop_recursive(4, 48, 6, move |inner| {
                prop_oneof![
                    proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::from),
                    proptest::collection::vec((key.clone(), inner), 0..6)
                        .prop_map(|pairs| Value::Object(pairs.into_iter().collect())),
                ]
            })
        }

        fn parse_bytes(bytes: Vec<u8>) -> Result<(), String> {
            let body = Bytes::from(bytes);
            ChatRequest::parse(&body).map(|_| ())
        }

        proptest! {
            #[test]
            fn arbitrary_bytes_never_panic_the_parser(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
                let _ = parse_bytes(bytes);
            }

            #[test]
            fn arbitrary_json_is_parsed_or_refused_with_a_message(value in any_json()) {
                if let Err(message) = parse_bytes(value.to_string().into_bytes()) {
                    prop_assert!(!message.is_empty());
                }
            }

            #[test]
            fn a_valid_request_keeps_every_field_it_was_given(
                model in "[a-zA-Z0-9./_-]{1,20}",
                texts in proptest::collection::vec(".{0,20}", 1..5),
                stream: bool,
                max_tokens in 1u64..1_000_000,
                extra in "[a-z]{3,8}",
            ) {
                prop_assume!(!matches!(
                    extra.as_str(),
                    "model" | "messages" | "stream" | "stop" | "top_p"
                ));
                let messages: Vec<Value> = texts
                    .iter()
                    .enumerate()
                    .map(|(i, text)| {
                        let role = if i % 2 == 0 { "user" } else { "assistant" };
                        json!({"role": role, "content": text})
                    })
                    .collect();
                let body = json!({"model": model, "messages": messages, "stream": stream,
                                  "max_tokens": max_tokens, extra.clone(): [1, {"a": null}]});
                let bytes = Bytes::from(body.to_string());
                let request = ChatRequest::parse(&bytes).unwrap();
                prop_assert_eq!(request.model.as_ref(), model.as_str());
                prop_assert_eq!(request.stream, stream);
                prop_assert_eq!(request.max_tokens, Some(max_tokens));
                prop_assert_eq!(request.messages.len(), texts.len());
                for (message, text) in request.messages.iter().zip(&texts) {
                    prop_assert_eq!(message.content.text(), text.as_str());
                }
                prop_assert!(request.fields.iter().any(|(name, _)| *name == extra));
            }
        }
    }
}
