//! Tools, tool results, structured output and reasoning through the OpenAI door and the path
//! route, translated for each wire format and passed through unchanged to OpenAI's own.

use serde_json::{json, Value};

use crate::common::*;

const WEATHER_TOOL: &str = r#"{"type": "function", "function": {"name": "get_weather",
    "description": "The weather in a city", "parameters": {"type": "object",
    "properties": {"city": {"type": "string"}}, "required": ["city"],
    "additionalProperties": false}}}"#;

fn weather_tool() -> Value {
    serde_json::from_str(WEATHER_TOOL).unwrap()
}

/// The second turn of a tool loop as the OpenAI SDKs send it: a developer message, the
/// assistant's call with `content: null`, and the tool's result.
fn second_turn(model: &str) -> Value {
    json!({
        "model": model,
        "messages": [
            {"role": "developer", "content": "Answer in one line."},
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": null, "tool_calls": [
                {"id": "call_1", "type": "function",
                 "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "18°C and sunny"},
        ],
        "tools": [weather_tool()],
    })
}

#[actix_web::test]
async fn a_tool_loops_second_turn_reaches_openai_byte_for_byte() {
    let mock = Mock::always(200, "application/json", fixture("openai/completion.json"));
    let proxy = start_proxy(config_for(&mock));
    let mut body = second_turn("openai/gpt-4o-mini");
    // Shapes only OpenAI knows pass too: audio and file parts, a `store` flag.
    body["messages"][1]["content"] = json!([
        {"type": "text", "text": "Weather in Paris?"},
        {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}},
        {"type": "file", "file": {"file_id": "file-abc"}},
    ]);
    body["store"] = json!(true);
    let sent = body.to_string();
    let answer = post(&proxy, "/v1/chat/completions", Some(TEST_KEY), sent.clone()).await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    // Only `model` changed, in place: every other byte is the caller's.
    let expected = sent.replace(
        r#""model":"openai/gpt-4o-mini""#,
        r#""model":"gpt-4o-mini""#,
    );
    assert_ne!(expected, sent);
    assert_eq!(mock.only_request().body, expected.as_bytes());
}

#[actix_web::test]
async fn openai_tool_calls_reach_the_front_door_and_the_path_route() {
    let mock = Mock::always(200, "application/json", fixture("openai/tool_calls.json"));
    let proxy = start_proxy(config_for(&mock));
    let mut body = second_turn("openai/gpt-4o-mini");
    body["messages"].as_array_mut().unwrap().truncate(2);
    let answer = complete(&proxy, body.clone()).await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    let message = &answer.json()["choices"][0]["message"];
    assert_eq!(
        message["tool_calls"][0]["function"]["name"],
        "get_current_weather"
    );

    body["model"] = json!("gpt-4o-mini");
    let answer = chat(&proxy, "openai", body).await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    assert_eq!(
        answer.json()["tool_calls"],
        json!([{"id": "call_abc123", "name": "get_current_weather",
                "arguments": {"location": "Boston, MA"}}])
    );
    assert_eq!(answer.json()["stop_reason"], "tool_calls");
}

#[actix_web::test]
async fn arguments_that_are_not_json_reach_the_path_route_as_text() {
    let completion = r#"{"id":"c","object":"chat.completion","created":1,"model":"m",
        "choices":[{"index":0,"message":{"role":"assistant","content":null,"tool_calls":[
        {"id":"call_1","type":"function","function":{"name":"f","arguments":"{\"a\": 1"}}]},
        "finish_reason":"tool_calls"}]}"#;
    let mock = Mock::always(200, "application/json", completion);
    let proxy = start_proxy(config_for(&mock));
    let answer = chat(&proxy, "openai", hi("m")).await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    assert_eq!(answer.json()["tool_calls"][0]["arguments"], "{\"a\": 1");
}

#[actix_web::test]
async fn a_tool_loop_reaches_gemini_as_function_calls_and_responses() {
    let mock = Mock::always(
        200,
        "application/json",
        fixture("gemini/function_call.json"),
    );
    let proxy = start_proxy(config_for(&mock));
    let mut body = second_turn("gemini/gemini-2.5-flash");
    body["tool_choice"] = json!({"type": "function", "function": {"name": "get_weather"}});
    let answer = complete(&proxy, body).await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);

    let sent = mock.only_request().json();
    assert_eq!(
        sent["systemInstruction"],
        json!({"parts": [{"text": "Answer in one line."}]})
    );
    let contents = sent["contents"].as_array().unwrap();
    assert_eq!(contents[1]["role"], "model");
    assert_eq!(
        contents[1]["parts"][0]["functionCall"],
        json!({"name": "get_weather", "args": {"city": "Paris"}})
    );
    let response = &contents[2]["parts"][0]["functionResponse"];
    assert_eq!(
        response["name"], "get_weather",
        "the name is recovered from the call"
    );
    assert!(response["response"].to_string().contains("18°C and sunny"));
    let declaration = &sent["tools"][0]["functionDeclarations"][0];
    assert_eq!(declaration["name"], "get_weather");
    assert!(
        declaration["parameters"]
            .get("additionalProperties")
            .is_none(),
        "Gemini refuses additionalProperties: {declaration}"
    );
    assert_eq!(
        sent["toolConfig"]["functionCallingConfig"],
        json!({"mode": "ANY", "allowedFunctionNames": ["get_weather"]})
    );

    // The answer's functionCall becomes a tool call with an id the proxy made.
    let choice = &answer.json()["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls");
    let call = &choice["message"]["tool_calls"][0];
    assert_eq!(call["type"], "function");
    assert_eq!(call["function"]["name"], "find_theaters");
    let arguments: Value =
        serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
    assert_eq!(
        arguments,
        json!({"movie": "Barbie", "location": "Mountain View, CA"})
    );
    assert!(!call["id"].as_str().unwrap().is_empty());
}

#[actix_web::test]
async fn gemini_function_calls_stream_as_one_delta_each() {
    let mock = Mock::start(|_| Reply::sse(vec![fixture("gemini/function_call_stream.sse")]));
    let proxy = start_proxy(config_for(&mock));
    let mut body = streamed("gemini/gemini-2.5-flash");
    body["tools"] = json!([weather_tool()]);
    let answer = complete(&proxy, body).await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    let events = sse_data(&answer.body);
    assert_eq!(events.last(), Some(&json!("[DONE]")));
    let calls: Vec<&Value> = events
        .iter()
        .filter_map(|chunk| chunk["choices"][0]["delta"].get("tool_calls"))
        .collect();
    assert!(!calls.is_empty(), "{events:?}");
    for (index, call) in calls.iter().enumerate() {
        let call = &call[0];
        assert_eq!(call["index"], index, "{call}");
        assert!(call["id"].is_string() && call["function"]["name"].is_string());
        let arguments = call["function"]["arguments"].as_str().unwrap();
        assert!(serde_json::from_str::<Value>(arguments)
            .unwrap()
            .is_object());
    }
    let finish = events
        .iter()
        .find_map(|chunk| chunk["choices"][0]["finish_reason"].as_str());
    assert_eq!(finish, Some("tool_calls"));
}

#[actix_web::test]
async fn structured_output_reaches_gemini_as_a_response_schema() {
    let mock = Mock::always(200, "application/json", fixture("gemini/generate.json"));
    let proxy = start_proxy(config_for(&mock));
    let mut body = hi("gemini/gemini-2.5-flash");
    body["response_format"] = json!({"type": "json_schema", "json_schema": {
        "name": "city", "strict": true,
        "schema": {"type": "object", "properties": {"name": {"type": "string"}},
                   "required": ["name"], "additionalProperties": false}}});
    let answer = complete(&proxy, body).await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    let config = &mock.only_request().json()["generationConfig"];
    assert_eq!(config["responseMimeType"], "application/json");
    assert_eq!(
        config["responseSchema"]["properties"]["name"]["type"],
        "string"
    );
    assert!(config["responseSchema"]
        .get("additionalProperties")
        .is_none());
}

#[actix_web::test]
async fn reasoning_effort_reaches_gemini_as_a_thinking_budget() {
    let mock = Mock::always(200, "application/json", fixture("gemini/thinking.json"));
    let proxy = start_proxy(config_for(&mock));
    let mut body = hi("gemini/gemini-2.5-flash");
    body["reasoning_effort"] = json!("high");
    let answer = complete(&proxy, body).await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    let thinking = &mock.only_request().json()["generationConfig"]["thinkingConfig"];
    assert_eq!(thinking["thinkingBudget"], 4096);
    assert_eq!(thinking["includeThoughts"], true);
    let message = &answer.json()["choices"][0]["message"];
    assert!(
        message["reasoning_content"]
            .as_str()
            .is_some_and(|r| !r.is_empty()),
        "thoughts reach reasoning_content: {message}"
    );
    let usage = &answer.json()["usage"];
    assert!(usage["completion_tokens_details"]["reasoning_tokens"].as_u64() > Some(0));
}

#[actix_web::test]
async fn what_a_target_cannot_express_is_a_400_naming_the_field_and_provider() {
    let mock = Mock::always(200, "application/json", fixture("gemini/generate.json"));
    let proxy = start_proxy(config_for(&mock));
    let mut body = hi("gemini/gemini-2.5-flash");
    body["n"] = json!(3);
    let answer = complete(&proxy, body).await;
    assert_eq!(answer.status, 400, "{:?}", answer.body);
    let message = answer.json()["error"]["message"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        message.contains("`n`") && message.contains("gemini"),
        "{message}"
    );
    assert!(mock.requests().is_empty(), "nothing goes upstream");
}
