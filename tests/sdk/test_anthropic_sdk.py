"""The Anthropic-compatible door, `POST /v1/messages`, driven by the official `anthropic` SDK.

The client's base URL is the proxy's root (the SDK adds `/v1/messages`). The same tests run
against an Anthropic, an OpenAI and a Gemini upstream (one TestCase per provider, sharing
`MessagesTests`): whatever the upstream, the SDK gets Anthropic's shapes (a `message`, the
event stream, `{"type": "error", ...}` errors with the upstream's status). To an Anthropic
upstream the request passes through: its tests assert the body, query and headers arrived as
sent; the other providers' tests assert the translated body.
"""

from __future__ import annotations

import json
import unittest
from typing import Any

import anthropic
from anthropic._constants import ANTHROPIC_API_VERSION
from anthropic.types import Message

import harness
from harness import KEY, Upstreams
from mock_upstreams import MockUpstream, ToolCall
from proxy_process import ProxyProcess

HELLO = [{"role": "user", "content": "Say hello"}]
QUESTION = [{"role": "user", "content": "What is the weather in Paris?"}]
WEATHER_SCHEMA = {"type": "object",
                  "properties": {"city": {"type": "string", "description": "The city"}},
                  "required": ["city"]}
WEATHER_TOOL = {"name": "get_weather", "description": "Get the current weather in a city.",
                "input_schema": WEATHER_SCHEMA}
PARIS = ToolCall("get_weather", {"city": "Paris"})
PARIS_RESULT = '{"city":"Paris","temperature_c":18,"conditions":"sunny"}'
THOUGHTS = ["The user greets me.", " I greet back."]
BETA = "interleaved-thinking-2025-05-14"

upstreams: Upstreams
proxy: ProxyProcess
client: anthropic.Anthropic


def setUpModule() -> None:
    global upstreams, proxy, client
    upstreams, proxy = harness.start()
    client = anthropic.Anthropic(base_url=proxy.origin, api_key=KEY, max_retries=0,
                                 timeout=10)


def tearDownModule() -> None:
    client.close()
    harness.stop(proxy)


class MessagesTests:
    """The client's side of every test; a provider's TestCase sets MODEL and `upstream`."""

    MODEL: str
    maxDiff = None

    @property
    def upstream(self) -> MockUpstream:
        raise NotImplementedError

    def setUp(self) -> None:
        upstreams.reset()

    def create(self, messages: list[Any] = HELLO, **options: Any) -> Message:
        options.setdefault("max_tokens", 256)
        return client.messages.create(model=self.MODEL, messages=messages, **options)

    def stream(self, messages: list[Any] = HELLO, **options: Any) -> tuple[Message, list[Any]]:
        """The final message of a `client.messages.stream(...)`, and every event it yielded."""
        options.setdefault("max_tokens", 256)
        with client.messages.stream(model=self.MODEL, messages=messages, **options) as stream:
            events = list(stream)
            return stream.get_final_message(), events

    def tool_result_turns(self, message: Message, result: str = PARIS_RESULT) -> list[Any]:
        """The conversation after a tool_use: the question, the assistant turn as the SDK
        returned it, and the user turn with the tool_result, as Anthropic's guide builds it."""
        tool_use = next(block for block in message.content if block.type == "tool_use")
        return [*QUESTION, {"role": "assistant", "content": message.content},
                {"role": "user", "content": [{"type": "tool_result",
                                              "tool_use_id": tool_use.id,
                                              "content": result}]}]

    # --- text -------------------------------------------------------------------------------

    def test_a_message_carries_the_upstream_text_and_usage(self) -> None:
        message = self.create()
        self.assertEqual(message.type, "message")
        self.assertEqual(message.role, "assistant")
        self.assertTrue(message.id)
        self.assertEqual([(block.type, block.text) for block in message.content],
                         [("text", self.upstream.text)])
        self.assertEqual(message.stop_reason, "end_turn")
        self.assertEqual(message.usage.input_tokens, self.upstream.prompt_tokens)
        self.assertEqual(message.usage.output_tokens, self.upstream.completion_tokens)

    def test_a_stream_yields_anthropic_events_and_the_final_message(self) -> None:
        message, events = self.stream()
        types = [event.type for event in events]
        self.assertEqual(types[0], "message_start")
        self.assertEqual(types[-1], "message_stop")
        self.assertIn("content_block_start", types)
        self.assertIn("content_block_stop", types)
        self.assertIn("message_delta", types)
        self.assertEqual("".join(event.delta.text for event in events
                                 if event.type == "content_block_delta"
                                 and event.delta.type == "text_delta"), self.upstream.text)
        self.assertEqual([(block.type, block.text) for block in message.content],
                         [("text", self.upstream.text)])
        self.assertEqual(message.stop_reason, "end_turn")
        self.assertEqual(message.usage.output_tokens, self.upstream.completion_tokens)

    def test_the_text_stream_helper_yields_the_text(self) -> None:
        with client.messages.stream(model=self.MODEL, max_tokens=256,
                                    messages=HELLO) as stream:
            self.assertEqual("".join(stream.text_stream), self.upstream.text)

    # --- tools ------------------------------------------------------------------------------

    def test_a_tool_call_comes_back_as_a_tool_use_block(self) -> None:
        self.upstream.tool_calls = [PARIS]
        message = self.create(QUESTION, tools=[WEATHER_TOOL])
        self.assertEqual(message.stop_reason, "tool_use")
        (tool_use,) = [block for block in message.content if block.type == "tool_use"]
        self.assertTrue(tool_use.id)
        self.assertEqual((tool_use.name, tool_use.input), ("get_weather", {"city": "Paris"}))
        self.assert_upstream_offered_the_weather_tool(self.upstream.only_request().body)

    def test_a_tool_loop_ends_with_the_final_text(self) -> None:
        self.upstream.tool_calls = [PARIS]
        first = self.create(QUESTION, tools=[WEATHER_TOOL])
        final = self.create(self.tool_result_turns(first), tools=[WEATHER_TOOL])
        self.assertEqual(final.stop_reason, "end_turn")
        self.assertEqual([block.text for block in final.content if block.type == "text"],
                         [self.upstream.text])
        tool_use = next(block for block in first.content if block.type == "tool_use")
        self.assert_upstream_received_the_tool_result(self.upstream.requests[1].body,
                                                      tool_use.id)

    def test_a_streamed_tool_loop_accumulates_input_json_deltas(self) -> None:
        self.upstream.tool_calls = [PARIS]
        first, events = self.stream(QUESTION, tools=[WEATHER_TOOL])
        self.assertIn("input_json_delta", [event.delta.type for event in events
                                           if event.type == "content_block_delta"])
        (tool_use,) = [block for block in first.content if block.type == "tool_use"]
        self.assertEqual(tool_use.input, {"city": "Paris"})
        self.assertEqual(first.stop_reason, "tool_use")
        final, _ = self.stream(self.tool_result_turns(first), tools=[WEATHER_TOOL])
        self.assertEqual([block.text for block in final.content if block.type == "text"],
                         [self.upstream.text])
        self.assert_upstream_received_the_tool_result(self.upstream.requests[1].body,
                                                      tool_use.id)

    # --- thinking ---------------------------------------------------------------------------

    def test_reasoning_comes_back_as_a_thinking_block_before_the_text(self) -> None:
        self.upstream.reasoning = THOUGHTS
        message = self.create(max_tokens=4096,
                              thinking={"type": "enabled", "budget_tokens": 2048})
        self.assertEqual([block.type for block in message.content], ["thinking", "text"])
        self.assertEqual(message.content[0].thinking, "".join(THOUGHTS))
        self.assertEqual(message.content[1].text, self.upstream.text)

    def test_streamed_reasoning_comes_as_thinking_deltas(self) -> None:
        self.upstream.reasoning = THOUGHTS
        message, events = self.stream(max_tokens=4096,
                                      thinking={"type": "enabled", "budget_tokens": 2048})
        self.assertEqual("".join(event.delta.thinking for event in events
                                 if event.type == "content_block_delta"
                                 and event.delta.type == "thinking_delta"), "".join(THOUGHTS))
        self.assertEqual([block.type for block in message.content], ["thinking", "text"])

    # --- what the upstream received: one implementation per provider -------------------------

    def assert_upstream_offered_the_weather_tool(self, body: Any) -> None:
        raise NotImplementedError

    def assert_upstream_received_the_tool_result(self, body: Any, tool_use_id: str) -> None:
        raise NotImplementedError


class AnthropicUpstreamTests(MessagesTests, unittest.TestCase):
    """Pass-through: the body, stream bytes, query, and anthropic-* headers arrive as sent."""

    MODEL = "anthropic/claude-sonnet-4-5"

    @property
    def upstream(self) -> MockUpstream:
        return upstreams.anthropic

    def assert_upstream_offered_the_weather_tool(self, body: Any) -> None:
        self.assertEqual(body["tools"], [WEATHER_TOOL])

    def assert_upstream_received_the_tool_result(self, body: Any, tool_use_id: str) -> None:
        self.assertEqual(body["messages"][1]["content"], [
            {"type": "tool_use", "id": tool_use_id, "name": "get_weather",
             "input": {"city": "Paris"}}])
        self.assertEqual(body["messages"][2], {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": tool_use_id, "content": PARIS_RESULT}]})

    def test_the_body_reaches_the_upstream_with_only_the_model_replaced(self) -> None:
        params = {
            "max_tokens": 300,
            "system": [{"type": "text", "text": "Be brief.",
                        "cache_control": {"type": "ephemeral"}}],
            "messages": QUESTION,
            "tools": [WEATHER_TOOL],
            "tool_choice": {"type": "auto"},
            "stop_sequences": ["END"],
            "metadata": {"user_id": "user-1234"},
            # As Claude Code sends them for a model it does not know.
            "thinking": {"type": "adaptive"},
            "output_config": {"effort": "high"},
        }
        client.messages.create(model=self.MODEL, **params)
        self.assertEqual(upstreams.anthropic.only_request().body,
                         {**params, "model": "claude-sonnet-4-5"})

    def test_a_bare_claude_model_name_means_anthropic_and_passes_unchanged(self) -> None:
        client.messages.create(model="claude-sonnet-4-5", max_tokens=256, messages=HELLO)
        request = upstreams.anthropic.only_request()
        self.assertEqual(request.path, "/v1/messages")
        self.assertEqual(request.body, {"model": "claude-sonnet-4-5", "max_tokens": 256,
                                        "messages": HELLO})

    def test_the_stream_bytes_pass_through_unchanged(self) -> None:
        with client.messages.with_streaming_response.create(
                model=self.MODEL, max_tokens=256, messages=HELLO, stream=True) as response:
            self.assertEqual(response.headers["content-type"].split(";")[0],
                             "text/event-stream")
            received = b"".join(response.iter_bytes()).decode()
        self.assertEqual(received, upstreams.anthropic.event_stream("claude-sonnet-4-5"))

    def test_the_beta_query_and_anthropic_headers_are_forwarded(self) -> None:
        # Claude Code calls `/v1/messages?beta=true` with its betas in `anthropic-beta`.
        client.beta.messages.create(model=self.MODEL, max_tokens=256, messages=HELLO,
                                    betas=[BETA, "context-management-2025-06-27"],
                                    extra_query={"beta": "true"})
        request = upstreams.anthropic.only_request()
        self.assertEqual((request.path, request.query), ("/v1/messages", {"beta": ["true"]}))
        self.assertEqual(request.headers.get("anthropic-beta"),
                         f"{BETA},context-management-2025-06-27")
        self.assertEqual(request.headers.get("anthropic-version"), ANTHROPIC_API_VERSION)

    def test_the_sdk_key_reaches_the_upstream(self) -> None:
        # This SDK sends `api_key` as `Authorization: Bearer`; Claude Code sends `x-api-key`.
        self.create()
        self.assertEqual(upstream_key(upstreams.anthropic.only_request().headers), KEY)

    def test_an_x_api_key_header_is_accepted_too(self) -> None:
        with anthropic.Anthropic(base_url=proxy.origin, api_key=None,
                                 default_headers={"x-api-key": KEY}, max_retries=0,
                                 timeout=10) as x_api_key_client:
            message = x_api_key_client.messages.create(model=self.MODEL, max_tokens=256,
                                                       messages=HELLO)
        self.assertEqual(message.content[0].text, upstreams.anthropic.text)
        self.assertEqual(upstream_key(upstreams.anthropic.only_request().headers), KEY)

    def test_thinking_blocks_keep_their_signature(self) -> None:
        upstreams.anthropic.reasoning = THOUGHTS
        message, _ = self.stream(max_tokens=4096,
                                 thinking={"type": "enabled", "budget_tokens": 2048})
        self.assertEqual(message.content[0].signature, upstreams.anthropic.signature)
        body = upstreams.anthropic.only_request().body
        self.assertEqual(body["thinking"], {"type": "enabled", "budget_tokens": 2048})

    def test_count_tokens_goes_to_the_upstream_count_tokens(self) -> None:
        count = client.messages.count_tokens(model=self.MODEL, messages=HELLO)
        self.assertEqual(count.input_tokens, upstreams.anthropic.prompt_tokens)
        request = upstreams.anthropic.only_request()
        self.assertEqual(request.path, "/v1/messages/count_tokens")
        self.assertEqual(request.body, {"model": "claude-sonnet-4-5", "messages": HELLO})

    def test_a_401_raises_authentication_error(self) -> None:
        upstreams.anthropic.answer_invalid_key()
        with self.assertRaises(anthropic.AuthenticationError) as raised:
            self.create()
        self.assert_error_body(raised.exception, "authentication_error", "invalid x-api-key")

    def test_a_429_raises_rate_limit_error(self) -> None:
        upstreams.anthropic.answer_rate_limited()
        with self.assertRaises(anthropic.RateLimitError) as raised:
            self.create()
        self.assert_error_body(raised.exception, "rate_limit_error", "rate limit")
        self.assertEqual(raised.exception.response.headers.get("retry-after"), "12")

    def test_a_529_raises_overloaded_error(self) -> None:
        upstreams.anthropic.answer_overloaded()
        with self.assertRaises(anthropic.OverloadedError) as raised:
            self.create()
        self.assertIsInstance(raised.exception, anthropic.InternalServerError)
        self.assert_error_body(raised.exception, "overloaded_error", "Overloaded")

    def test_a_429_on_a_stream_raises_before_any_event(self) -> None:
        upstreams.anthropic.answer_rate_limited()
        with self.assertRaises(anthropic.RateLimitError):
            self.stream()
        upstreams.anthropic.only_request()

    def assert_error_body(self, error: anthropic.APIStatusError, type_: str,
                          message_part: str) -> None:
        assert_anthropic_error(self, error, type_, message_part)


class OpenAIUpstreamTests(MessagesTests, unittest.TestCase):
    """Anthropic requests become Chat Completions; answers and streams become Anthropic's."""

    MODEL = "openai/gpt-4o-mini"

    @property
    def upstream(self) -> MockUpstream:
        return upstreams.openai

    def assert_upstream_offered_the_weather_tool(self, body: Any) -> None:
        self.assertEqual(body["tools"], [{"type": "function", "function": {
            "name": "get_weather", "description": "Get the current weather in a city.",
            "parameters": WEATHER_SCHEMA}}])

    def assert_upstream_received_the_tool_result(self, body: Any, tool_use_id: str) -> None:
        question, assistant, tool = body["messages"]
        self.assertEqual(question, {"role": "user", "content": QUESTION[0]["content"]})
        self.assertEqual(assistant["role"], "assistant")
        (call,) = assistant["tool_calls"]
        self.assertEqual((call["id"], call["type"], call["function"]["name"]),
                         (tool_use_id, "function", "get_weather"))
        self.assertEqual(json.loads(call["function"]["arguments"]), {"city": "Paris"})
        self.assertEqual(tool, {"role": "tool", "tool_call_id": tool_use_id,
                                "content": PARIS_RESULT})

    def test_the_request_becomes_a_chat_completion_request(self) -> None:
        self.create(system="Be brief.", max_tokens=300, stop_sequences=["END"])
        body = upstreams.openai.only_request().body
        self.assertEqual(upstreams.openai.only_request().path, "/v1/chat/completions")
        self.assertEqual(body["model"], "gpt-4o-mini")
        self.assertEqual(body["messages"], [{"role": "system", "content": "Be brief."},
                                            {"role": "user", "content": "Say hello"}])
        self.assertEqual(body.get("max_completion_tokens", body.get("max_tokens")), 300)
        self.assertEqual(body["stop"], ["END"])

    def test_a_stream_asks_the_upstream_for_usage(self) -> None:
        self.stream()
        body = upstreams.openai.only_request().body
        self.assertIs(body["stream"], True)
        self.assertEqual(body["stream_options"], {"include_usage": True})

    def test_count_tokens_is_a_clear_400(self) -> None:
        with self.assertRaises(anthropic.BadRequestError) as raised:
            client.messages.count_tokens(model=self.MODEL, messages=HELLO)
        assert_anthropic_error(self, raised.exception, "invalid_request_error", "count_tokens")
        self.assertEqual(upstreams.openai.requests, [])

    def test_a_401_raises_authentication_error(self) -> None:
        upstreams.openai.answer_invalid_key()
        with self.assertRaises(anthropic.AuthenticationError) as raised:
            self.create()
        assert_anthropic_error(self, raised.exception, "authentication_error",
                               "Incorrect API key")
        self.assertNotIn(KEY, raised.exception.message)

    def test_a_429_raises_rate_limit_error(self) -> None:
        upstreams.openai.answer_rate_limited()
        with self.assertRaises(anthropic.RateLimitError) as raised:
            self.create()
        assert_anthropic_error(self, raised.exception, "rate_limit_error", "Rate limit")

    def test_a_500_raises_internal_server_error(self) -> None:
        upstreams.openai.answer_server_error()
        with self.assertRaises(anthropic.InternalServerError) as raised:
            self.create()
        assert_anthropic_error(self, raised.exception, "api_error", "server had an error")


class GeminiUpstreamTests(MessagesTests, unittest.TestCase):
    """Anthropic requests become generateContent; answers and streams become Anthropic's."""

    MODEL = "gemini/gemini-2.5-flash"

    @property
    def upstream(self) -> MockUpstream:
        return upstreams.gemini

    def assert_upstream_offered_the_weather_tool(self, body: Any) -> None:
        (tools,) = body["tools"]
        (declaration,) = tools["functionDeclarations"]
        self.assertEqual((declaration["name"], declaration["description"]),
                         ("get_weather", "Get the current weather in a city."))
        self.assertEqual(set(declaration["parameters"]["properties"]), {"city"})

    def assert_upstream_received_the_tool_result(self, body: Any, tool_use_id: str) -> None:
        question, model_turn, result = body["contents"]
        self.assertEqual(model_turn, {"role": "model", "parts": [
            {"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}}]})
        self.assertEqual(result["role"], "user")
        (part,) = result["parts"]
        self.assertEqual(part["functionResponse"]["name"], "get_weather",
                         "the name is recovered from the tool_use the result answers")
        self.assertIn("Paris", json.dumps(part["functionResponse"]["response"]))

    def test_the_request_becomes_a_generate_content_request(self) -> None:
        self.create(system="Be brief.", max_tokens=300, stop_sequences=["END"])
        request = upstreams.gemini.only_request()
        self.assertEqual(request.path, "/v1beta/models/gemini-2.5-flash:generateContent")
        self.assertEqual(request.body["systemInstruction"]["parts"], [{"text": "Be brief."}])
        self.assertEqual(request.body["contents"], [{"role": "user",
                                                     "parts": [{"text": "Say hello"}]}])
        self.assertEqual(request.body["generationConfig"]["maxOutputTokens"], 300)
        self.assertEqual(request.body["generationConfig"]["stopSequences"], ["END"])

    def test_a_429_raises_rate_limit_error(self) -> None:
        upstreams.gemini.answer_rate_limited()
        with self.assertRaises(anthropic.RateLimitError) as raised:
            self.create()
        assert_anthropic_error(self, raised.exception, "rate_limit_error", "exhausted")

    def test_an_invalid_key_400_raises_bad_request_error(self) -> None:
        upstreams.gemini.answer_invalid_key()
        with self.assertRaises(anthropic.BadRequestError) as raised:
            self.create()
        self.assertIn("API key not valid", raised.exception.message)


def assert_anthropic_error(test: unittest.TestCase, error: anthropic.APIStatusError,
                           type_: str, message_part: str) -> None:
    """The body is Anthropic's `{"type": "error", "error": {"type", "message"}}`."""
    body = error.body
    test.assertIsInstance(body, dict, f"not an Anthropic error body: {body!r}")
    test.assertEqual(body.get("type"), "error", body)
    test.assertEqual(body["error"]["type"], type_, body)
    test.assertIn(message_part.lower(), body["error"]["message"].lower())


def upstream_key(headers: dict[str, str]) -> str | None:
    """The key the upstream received, as `x-api-key` or as a Bearer token."""
    if "x-api-key" in headers:
        return headers["x-api-key"]
    return headers.get("authorization", "").removeprefix("Bearer ") or None


if __name__ == "__main__":
    unittest.main()
