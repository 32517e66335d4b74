"""The mocks themselves, read by the official SDKs with no proxy between: their wire format holds.

If a proxy test fails, these say whether the mock or the proxy is at fault. The `openai` SDK
reads the OpenAI mock and the `anthropic` SDK the Anthropic mock, both as their users call them:
tool calls (parallel and streamed), reasoning, errors. (The Gemini mock was checked the same way
with Google's `google-genai` SDK once; it is not a dependency of this suite.)
"""

from __future__ import annotations

import json
import unittest

import anthropic
import openai

from mock_upstreams import AnthropicUpstream, OpenAIUpstream, ToolCall

KEY = "sk-test-mock"
QUESTION = [{"role": "user", "content": "What is the weather in Paris and Tokyo?"}]
OPENAI_TOOL = {"type": "function", "function": {
    "name": "get_weather", "parameters": {"type": "object",
                                          "properties": {"city": {"type": "string"}}}}}
ANTHROPIC_TOOL = {"name": "get_weather", "input_schema": OPENAI_TOOL["function"]["parameters"]}
CALLS = [ToolCall("get_weather", {"city": "Paris"}), ToolCall("get_weather", {"city": "Tokyo"})]


class OpenAIMockTests(unittest.TestCase):
    upstream: OpenAIUpstream
    client: openai.OpenAI

    @classmethod
    def setUpClass(cls) -> None:
        cls.upstream = OpenAIUpstream(["Hi", " there"], prompt_tokens=5, completion_tokens=2)
        cls.upstream.start()
        cls.addClassCleanup(cls.upstream.stop)
        cls.client = openai.OpenAI(base_url=f"{cls.upstream.origin}/v1", api_key=KEY,
                                   max_retries=0, timeout=10)
        cls.addClassCleanup(cls.client.close)

    def setUp(self) -> None:
        self.upstream.reset()

    def test_parallel_tool_calls_parse_as_message_tool_calls(self) -> None:
        self.upstream.tool_calls = CALLS
        completion = self.client.chat.completions.create(model="gpt-4o-mini",
                                                         messages=QUESTION, tools=[OPENAI_TOOL])
        calls = completion.choices[0].message.tool_calls
        self.assertEqual([json.loads(c.function.arguments)["city"] for c in calls],
                         ["Paris", "Tokyo"])
        self.assertEqual(completion.choices[0].finish_reason, "tool_calls")

    def test_streamed_parallel_tool_calls_accumulate_in_the_stream_helper(self) -> None:
        self.upstream.tool_calls = CALLS
        self.upstream.reasoning = ["Two cities."]
        with self.client.chat.completions.stream(model="gpt-4o-mini", messages=QUESTION,
                                                 tools=[{**OPENAI_TOOL, "function": {
                                                     **OPENAI_TOOL["function"],
                                                     "strict": True}}]) as stream:
            completion = stream.get_final_completion()
        calls = completion.choices[0].message.tool_calls
        self.assertEqual([c.function.parsed_arguments for c in calls],
                         [{"city": "Paris"}, {"city": "Tokyo"}])
        self.assertEqual([c.id for c in calls],
                         [self.upstream.tool_call_id(0), self.upstream.tool_call_id(1)])

    def test_a_tool_result_gets_the_text(self) -> None:
        self.upstream.tool_calls = CALLS
        messages = [*QUESTION, {"role": "tool", "tool_call_id": "call_1", "content": "18C"}]
        completion = self.client.chat.completions.create(model="gpt-4o-mini",
                                                         messages=messages, tools=[OPENAI_TOOL])
        self.assertEqual(completion.choices[0].message.content, "Hi there")

    def test_reasoning_content_is_an_extra_field(self) -> None:
        self.upstream.reasoning = ["Think", "ing."]
        completion = self.client.chat.completions.create(model="deepseek-reasoner",
                                                         messages=QUESTION)
        self.assertEqual(completion.choices[0].message.model_extra["reasoning_content"],
                         "Thinking.")


class AnthropicMockTests(unittest.TestCase):
    upstream: AnthropicUpstream
    client: anthropic.Anthropic

    @classmethod
    def setUpClass(cls) -> None:
        cls.upstream = AnthropicUpstream(["Hi", " there"], prompt_tokens=5, completion_tokens=2)
        cls.upstream.start()
        cls.addClassCleanup(cls.upstream.stop)
        cls.client = anthropic.Anthropic(base_url=cls.upstream.origin, api_key=KEY,
                                         max_retries=0, timeout=10)
        cls.addClassCleanup(cls.client.close)

    def setUp(self) -> None:
        self.upstream.reset()

    def test_thinking_then_parallel_tool_use_blocks(self) -> None:
        self.upstream.tool_calls = CALLS
        self.upstream.reasoning = ["Two ", "cities."]
        message = self.client.messages.create(model="claude-sonnet-4-5", max_tokens=2048,
                                              messages=QUESTION, tools=[ANTHROPIC_TOOL])
        self.assertEqual([block.type for block in message.content],
                         ["thinking", "tool_use", "tool_use"])
        self.assertEqual(message.content[0].thinking, "Two cities.")
        self.assertEqual(message.content[0].signature, AnthropicUpstream.signature)
        self.assertEqual([block.input for block in message.content[1:]],
                         [{"city": "Paris"}, {"city": "Tokyo"}])
        self.assertEqual(message.stop_reason, "tool_use")

    def test_a_stream_accumulates_into_the_same_message(self) -> None:
        self.upstream.tool_calls = CALLS
        self.upstream.reasoning = ["Two ", "cities."]
        with self.client.messages.stream(model="claude-sonnet-4-5", max_tokens=2048,
                                         messages=QUESTION, tools=[ANTHROPIC_TOOL]) as stream:
            message = stream.get_final_message()
        self.assertEqual([block.type for block in message.content],
                         ["thinking", "tool_use", "tool_use"])
        self.assertEqual(message.content[0].signature, AnthropicUpstream.signature)
        self.assertEqual([block.input for block in message.content[1:]],
                         [{"city": "Paris"}, {"city": "Tokyo"}])
        self.assertEqual(message.stop_reason, "tool_use")

    def test_a_tool_result_gets_the_text(self) -> None:
        self.upstream.tool_calls = CALLS
        messages = [*QUESTION,
                    {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1",
                                                       "name": "get_weather",
                                                       "input": {"city": "Paris"}}]},
                    {"role": "user", "content": [{"type": "tool_result",
                                                  "tool_use_id": "toolu_1", "content": "18C"}]}]
        message = self.client.messages.create(model="claude-sonnet-4-5", max_tokens=256,
                                              messages=messages, tools=[ANTHROPIC_TOOL])
        self.assertEqual(message.content[0].text, "Hi there")

    def test_count_tokens(self) -> None:
        count = self.client.messages.count_tokens(model="claude-sonnet-4-5", messages=QUESTION)
        self.assertEqual(count.input_tokens, 5)

    def test_a_529_is_an_overloaded_error(self) -> None:
        self.upstream.answer_overloaded()
        with self.assertRaises(anthropic.OverloadedError):
            self.client.messages.create(model="claude-sonnet-4-5", max_tokens=256,
                                        messages=QUESTION)


if __name__ == "__main__":
    unittest.main()
