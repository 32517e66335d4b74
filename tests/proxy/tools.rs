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

/// An answer with extended thinking, in the shape Anthropic documents for it.
const THINKING_MESSAGE: &str = r#"{"id": "msg_01ThinkingExample", "type": "message",
    "role": "assistant", "model": "claude-sonnet-4-5", "content": [
    {"type": "thinking", "thinking": "Let me analyze this step by step...",
     "signature": "WaUjzkypQ2mUEVM36O2TxuC06KN8xyfbJwyem2dw3URve/op91XWHOEBLLqIOMfFG/UvLEczmEsUjavL"},
    {"type": "text", "text": "Based on my analysis..."}],
    "stop_reason": "end_turn", "stop_sequence": null,
    "usage": {"input_tokens": 30, "output_tokens": 120}}"#;

/// The second turn of a loop whose assistant called the tool twice at once: two `role: "tool"`
/// results in a row.
fn parallel_second_turn(model: &str) -> Value {
    let mut body = second_turn(model);
    let messages = body["messages"].as_array_mut().unwrap();
    messages[2]["tool_calls"]
        .as_array_mut()
        .unwrap()
        .push(json!(
        {"id": "call_2", "type": "function",
         "function": {"name": "get_weather", "arguments": "{\"city\":\"Lyon\"}"}}));
    messages.push(json!({"role": "tool", "tool_call_id": "call_2", "content": "15°C and cloudy"}));
    body
}

/// The text deltas of an OpenAI chunk stream, joined.
fn content_of(events: &[Value]) -> String {
    events
        .iter()
        .filter_map(|chunk| chunk["choices"][0]["delta"]["content"].as_str())
        .collect()
}

fn finish_reason_of(events: &[Value]) -> Option<&str> {
    events
        .iter()
        .find_map(|chunk| chunk["choices"][0]["finish_reason"].as_str())
}

/// The tool_use fixture as Anthropic answers when that one tool is forced: the `tool_use`
/// block alone, the tool named `name`.
fn forced_tool_use(name: &str) -> String {
    let mut message: Value = serde_json::from_slice(&fixture("anthropic/tool_use.json")).unwrap();
    message["content"]
        .as_array_mut()
        .unwrap()
        .retain(|block| block["type"] == "tool_use");
    message["content"][0]["name"] = json!(name);
    message.to_string()
}

/// The tool_use stream fixture likewise: the events of its text block (index 0) left out, the
/// tool named `name`.
fn forced_tool_use_stream(name: &str) -> String {
    let sse = String::from_utf8(fixture("anthropic/tool_use_stream.sse").to_vec()).unwrap();
    let stream: String = sse
        .split_inclusive("\n\n")
        .filter(|event| !event.contains(r#""index":0"#))
        .collect();
    let renamed = stream.replace(r#""name":"get_weather""#, &format!(r#""name":"{name}""#));
    assert_ne!(renamed, stream);
    renamed
}

#[actix_web::test]
async fn a_tool_loops_second_turn_reaches_anthropic_translated() {
    let mock = Mock::always(200, "application/json", fixture("anthropic/tool_use.json"));
    let proxy = start_proxy(config_for(&mock));
    let mut body = parallel_second_turn("anthropic/claude-opus-4-6");
    body["tool_choice"] = json!("required");
    body["parallel_tool_calls"] = json!(false);
    let answer = complete(&proxy, body.clone()).await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);

    let sent = mock.only_request().json();
    assert_eq!(sent["system"], "Answer in one line.");
    assert_eq!(
        sent["messages"],
        json!([
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": [
                {"type": "tool_use", "id": "call_1", "name": "get_weather",
                 "input": {"city": "Paris"}},
                {"type": "tool_use", "id": "call_2", "name": "get_weather",
                 "input": {"city": "Lyon"}}]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "call_1", "content": "18°C and sunny"},
                {"type": "tool_result", "tool_use_id": "call_2", "content": "15°C and cloudy"}]},
        ]),
        "the two tool results are one user turn"
    );
    assert_eq!(
        sent["tools"],
        json!([{"name": "get_weather", "description": "The weather in a city",
                "input_schema": weather_tool()["function"]["parameters"]}])
    );
    assert_eq!(
        sent["tool_choice"],
        json!({"type": "any", "disable_parallel_tool_use": true})
    );
    assert!(sent.get("parallel_tool_calls").is_none(), "{sent}");

    let choice = &answer.json()["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls");
    let message = &choice["message"];
    assert_eq!(
        message["content"],
        "I'll check the current weather in San Francisco for you."
    );
    let calls = message["tool_calls"].as_array().unwrap();
    assert_eq!(calls.len(), 1, "{message}");
    assert_eq!(calls[0]["id"], "toolu_01A09q90qw90lq917835lq9");
    assert_eq!(calls[0]["type"], "function");
    assert_eq!(calls[0]["function"]["name"], "get_weather");
    let arguments = calls[0]["function"]["arguments"]
        .as_str()
        .expect("arguments as JSON text");
    assert_eq!(
        serde_json::from_str::<Value>(arguments).unwrap(),
        json!({"location": "San Francisco, CA", "unit": "celsius"})
    );

    // A named tool, with parallel calls left at their default.
    body["tool_choice"] = json!({"type": "function", "function": {"name": "get_weather"}});
    body.as_object_mut().unwrap().remove("parallel_tool_calls");
    let answer = complete(&proxy, body).await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    assert_eq!(
        mock.requests()[1].json()["tool_choice"],
        json!({"type": "tool", "name": "get_weather"})
    );
}

#[actix_web::test]
async fn an_anthropic_tool_use_stream_becomes_openai_tool_call_deltas() {
    let mock = Mock::start(|_| Reply::sse(vec![fixture("anthropic/tool_use_stream.sse")]));
    let proxy = start_proxy(config_for(&mock));
    let mut body = streamed("anthropic/claude-opus-4-6");
    body["tools"] = json!([weather_tool()]);
    body["stream_options"] = json!({"include_usage": true});
    let answer = complete(&proxy, body).await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    let sent = mock.only_request().json();
    assert_eq!(sent["stream"], true);
    assert_eq!(sent["tools"][0]["name"], "get_weather");

    let events = sse_data(&answer.body);
    assert_eq!(events.last(), Some(&json!("[DONE]")));
    assert_eq!(
        content_of(&events),
        "Okay, let's check the weather for San Francisco, CA:"
    );
    let calls: Vec<&Value> = events
        .iter()
        .filter_map(|chunk| chunk["choices"][0]["delta"].get("tool_calls"))
        .map(|calls| &calls[0])
        .collect();
    let (first, later) = calls.split_first().expect("tool call deltas");
    assert_eq!(first["index"], 0);
    assert_eq!(first["id"], "toolu_01T1x1fJ34qAmk2tNTrN7Up6");
    assert_eq!(first["type"], "function");
    assert_eq!(first["function"]["name"], "get_weather");
    assert!(!later.is_empty(), "the arguments come in fragments");
    for delta in later {
        assert_eq!(delta["index"], 0, "{delta}");
        assert!(
            delta.get("id").is_none()
                && delta.get("type").is_none()
                && delta["function"].get("name").is_none(),
            "only a call's first delta names it: {delta}"
        );
    }
    let arguments: String = calls
        .iter()
        .map(|call| call["function"]["arguments"].as_str().unwrap())
        .collect();
    assert_eq!(
        serde_json::from_str::<Value>(&arguments).unwrap(),
        json!({"location": "San Francisco, CA", "unit": "fahrenheit"})
    );
    assert_eq!(finish_reason_of(&events), Some("tool_calls"));
    let usage = &events[events.len() - 2];
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(
        usage["usage"],
        json!({"prompt_tokens": 472, "completion_tokens": 89, "total_tokens": 561}),
        "input tokens from message_start, output tokens from message_delta"
    );
}

#[actix_web::test]
async fn structured_output_reaches_anthropic_as_a_forced_tool_and_comes_back_as_text() {
    let mock = Mock::start(|request| match request.json()["stream"] == true {
        true => Reply::sse(vec![forced_tool_use_stream("json_tool_call").into()]),
        false => Reply::json(200, forced_tool_use("json_tool_call")),
    });
    let proxy = start_proxy(config_for(&mock));
    let schema = json!({"type": "object",
        "properties": {"location": {"type": "string"}, "unit": {"type": "string"}},
        "required": ["location", "unit"], "additionalProperties": false});
    let mut body = hi("anthropic/claude-opus-4-6");
    body["response_format"] = json!({"type": "json_schema",
        "json_schema": {"name": "weather", "strict": true, "schema": schema}});
    let answer = complete(&proxy, body.clone()).await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);

    let sent = mock.only_request().json();
    assert_eq!(
        sent["tools"],
        json!([{"name": "json_tool_call", "input_schema": schema}])
    );
    assert_eq!(
        sent["tool_choice"],
        json!({"type": "tool", "name": "json_tool_call"})
    );
    assert!(sent.get("response_format").is_none(), "{sent}");
    let choice = &answer.json()["choices"][0];
    assert_eq!(choice["finish_reason"], "stop");
    assert!(choice["message"].get("tool_calls").is_none(), "{choice}");
    let text = choice["message"]["content"].as_str().unwrap();
    assert_eq!(
        serde_json::from_str::<Value>(text).unwrap(),
        json!({"location": "San Francisco, CA", "unit": "celsius"})
    );

    body["stream"] = json!(true);
    let answer = complete(&proxy, body).await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    assert_eq!(
        mock.requests()[1].json()["tool_choice"]["name"],
        "json_tool_call"
    );
    let events = sse_data(&answer.body);
    assert_eq!(events.last(), Some(&json!("[DONE]")));
    assert!(
        events
            .iter()
            .all(|chunk| chunk["choices"][0]["delta"].get("tool_calls").is_none()),
        "{events:?}"
    );
    assert_eq!(
        serde_json::from_str::<Value>(&content_of(&events)).unwrap(),
        json!({"location": "San Francisco, CA", "unit": "fahrenheit"})
    );
    assert_eq!(finish_reason_of(&events), Some("stop"));
}

#[actix_web::test]
async fn reasoning_effort_reaches_anthropic_as_a_thinking_budget_and_thinking_as_reasoning_content()
{
    let mock = Mock::start(|request| match request.json()["stream"] == true {
        true => Reply::sse(vec![fixture("anthropic/thinking_stream.sse")]),
        false => Reply::json(200, THINKING_MESSAGE),
    });
    let proxy = start_proxy(config_for(&mock));
    let mut body = streamed("anthropic/claude-sonnet-4-5");
    body["reasoning_effort"] = json!("high");
    let answer = complete(&proxy, body.clone()).await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);

    let sent = mock.only_request().json();
    assert_eq!(
        sent["thinking"],
        json!({"type": "enabled", "budget_tokens": 4096})
    );
    assert!(sent["max_tokens"].as_u64().unwrap() > 4096, "{sent}");
    assert!(sent.get("reasoning_effort").is_none(), "{sent}");
    let events = sse_data(&answer.body);
    let reasoning: String = events
        .iter()
        .filter_map(|chunk| chunk["choices"][0]["delta"]["reasoning_content"].as_str())
        .collect();
    assert_eq!(
        reasoning,
        "I need to find the GCD of 1071 and 462 using the Euclidean algorithm.\n\n\
         1071 = 2 × 462 + 147\n462 = 3 × 147 + 21\n147 = 7 × 21 + 0\n\nSo GCD(1071, 462) = 21"
    );
    assert_eq!(
        content_of(&events),
        "The greatest common divisor of 1071 and 462 is **21**."
    );

    // A `max_tokens` below the budget is raised above it: Anthropic counts thinking in it.
    body["stream"] = json!(false);
    body["max_tokens"] = json!(2000);
    let answer = complete(&proxy, body).await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    let sent = mock.requests()[1].json();
    assert_eq!(sent["thinking"]["budget_tokens"], 4096);
    assert!(sent["max_tokens"].as_u64().unwrap() > 4096, "{sent}");
    let message = &answer.json()["choices"][0]["message"];
    assert_eq!(
        message["reasoning_content"],
        "Let me analyze this step by step..."
    );
    assert_eq!(message["content"], "Based on my analysis...");
}

#[actix_web::test]
async fn cache_control_reaches_anthropic_and_cache_reads_come_back_as_cached_tokens() {
    let mut message: Value = serde_json::from_slice(&fixture("anthropic/message.json")).unwrap();
    message["usage"] = json!({"input_tokens": 12, "cache_creation_input_tokens": 50,
                              "cache_read_input_tokens": 100, "output_tokens": 10});
    let sse = String::from_utf8(fixture("anthropic/stream.sse").to_vec()).unwrap();
    let cached_sse = sse.replace(
        r#""usage":{"input_tokens":25,"output_tokens":1}"#,
        r#""usage":{"input_tokens":25,"cache_creation_input_tokens":50,"cache_read_input_tokens":100,"output_tokens":1}"#,
    );
    assert_ne!(cached_sse, sse);
    let mock = Mock::start(move |request| match request.json()["stream"] == true {
        true => Reply::sse(vec![cached_sse.clone().into()]),
        false => Reply::json(200, message.to_string()),
    });
    let proxy = start_proxy(config_for(&mock));
    let ephemeral = json!({"type": "ephemeral"});
    let mut body = json!({"model": "anthropic/claude-3-5-haiku-latest", "messages": [
        {"role": "system", "content": [
            {"type": "text", "text": "Answer from the manual.", "cache_control": ephemeral}]},
        {"role": "user", "content": [
            {"type": "text", "text": "<the whole manual>", "cache_control": ephemeral},
            {"type": "text", "text": "What does chapter 2 say?"}]},
    ]});
    let answer = complete(&proxy, body.clone()).await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);

    let sent = mock.only_request().json();
    assert_eq!(
        sent["system"],
        json!([{"type": "text", "text": "Answer from the manual.", "cache_control": ephemeral}])
    );
    assert_eq!(
        sent["messages"][0]["content"],
        json!([{"type": "text", "text": "<the whole manual>", "cache_control": ephemeral},
               {"type": "text", "text": "What does chapter 2 say?"}])
    );
    // OpenAI's rule: prompt tokens count the cached ones (12 + 50 written + 100 read).
    assert_eq!(
        answer.json()["usage"],
        json!({"prompt_tokens": 162, "completion_tokens": 10, "total_tokens": 172,
               "prompt_tokens_details": {"cached_tokens": 100}})
    );

    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    let answer = complete(&proxy, body).await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    let events = sse_data(&answer.body);
    assert_eq!(
        events[events.len() - 2]["usage"],
        json!({"prompt_tokens": 175, "completion_tokens": 15, "total_tokens": 190,
               "prompt_tokens_details": {"cached_tokens": 100}})
    );
}

#[actix_web::test]
async fn the_path_routes_answer_gains_tool_calls_and_reasoning_from_anthropic() {
    let mock = Mock::start(|request| match request.json().get("thinking") {
        Some(_) => Reply::json(200, THINKING_MESSAGE),
        None => Reply::json(200, fixture("anthropic/tool_use.json")),
    });
    let proxy = start_proxy(config_for(&mock));
    let answer = chat(&proxy, "anthropic", second_turn("claude-opus-4-6")).await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    let normalized = answer.json();
    assert_eq!(
        normalized["tool_calls"],
        json!([{"id": "toolu_01A09q90qw90lq917835lq9", "name": "get_weather",
                "arguments": {"location": "San Francisco, CA", "unit": "celsius"}}])
    );
    assert_eq!(
        normalized["content"],
        "I'll check the current weather in San Francisco for you."
    );
    assert_eq!(normalized["stop_reason"], "tool_calls");
    assert_eq!(normalized["native_stop_reason"], "tool_use");
    assert_eq!(
        mock.only_request().json()["messages"][1]["content"][0]["type"],
        "tool_use"
    );

    let mut body = hi("claude-sonnet-4-5");
    body["reasoning_effort"] = json!("high");
    let answer = chat(&proxy, "anthropic", body).await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    let normalized = answer.json();
    assert_eq!(
        normalized["reasoning"],
        "Let me analyze this step by step..."
    );
    assert_eq!(normalized["content"], "Based on my analysis...");
    assert!(normalized.get("tool_calls").is_none(), "{normalized}");
}

#[actix_web::test]
async fn path_route_streams_pass_anthropics_bytes_through_even_with_tools() {
    let sse = fixture("anthropic/tool_use_stream.sse");
    let chunks = split_at(&sse, &[7, 300, 301, 2000]);
    let mock = Mock::start(move |_| Reply::sse(chunks.clone()));
    let proxy = start_proxy(config_for(&mock));
    let mut body = second_turn("claude-opus-4-6");
    body["stream"] = json!(true);
    let answer = chat(&proxy, "anthropic", body).await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    assert_eq!(answer.body, sse);
    let sent = mock.only_request().json();
    assert_eq!(sent["stream"], true);
    assert_eq!(sent["tools"][0]["name"], "get_weather");
    assert_eq!(sent["messages"][2]["content"][0]["type"], "tool_result");
}

#[actix_web::test]
async fn user_reaches_anthropic_as_metadata_user_id() {
    let mock = Mock::always(200, "application/json", fixture("anthropic/message.json"));
    let proxy = start_proxy(config_for(&mock));
    let mut body = hi("anthropic/claude-3-5-haiku-latest");
    body["user"] = json!("user-4711");
    let answer = complete(&proxy, body).await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    let mut body = hi("claude-3-5-haiku-latest");
    body["safety_identifier"] = json!("user-0815");
    let answer = chat(&proxy, "anthropic", body).await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);

    let requests = mock.requests();
    assert_eq!(
        requests[0].json()["metadata"],
        json!({"user_id": "user-4711"})
    );
    assert!(requests[0].json().get("user").is_none());
    assert_eq!(
        requests[1].json()["metadata"],
        json!({"user_id": "user-0815"}),
        "OpenAI's newer name for it too"
    );
}
