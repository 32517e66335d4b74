"""Tools, structured output and reasoning through the OpenAI-compatible door, with the `openai` SDK.

Each test drives the proxy as the SDK's docs show: a two-turn tool loop (the model calls
get_weather, the client sends the result as a `tool` message, the model answers), parallel
calls, forced `tool_choice`, `chat.completions.parse` with a Pydantic model, and reasoning.
The same tests run against an OpenAI, an Anthropic and a Gemini upstream (one TestCase per
provider, sharing `ToolTests`); each provider's class also asserts what its upstream received,
the body as the proxy translated it. The mocks answer as a model in a tool loop would (see
mock_upstreams.py).
"""

from __future__ import annotations

import json
import unittest
from dataclasses import dataclass, field
from typing import Any

import openai
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from pydantic import BaseModel

import harness
from harness import KEY, Upstreams
from mock_upstreams import MockUpstream, ToolCall
from proxy_process import ProxyProcess

QUESTION = [{"role": "user", "content": "What is the weather in Paris?"}]
QUESTION_TWO_CITIES = [{"role": "user", "content": "What is the weather in Paris and Tokyo?"}]
WEATHER_PARAMETERS = {
    "type": "object",
    "properties": {"city": {"type": "string", "description": "The city, e.g. Paris"}},
    "required": ["city"],
}
WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "Get the current weather in a city.",
    "parameters": WEATHER_PARAMETERS}}
PARIS = ToolCall("get_weather", {"city": "Paris"})
TOKYO = ToolCall("get_weather", {"city": "Tokyo"})
RESULTS = {"Paris": '{"city":"Paris","temperature_c":18,"conditions":"sunny"}',
           "Tokyo": '{"city":"Tokyo","temperature_c":24,"conditions":"cloudy"}'}
THOUGHTS = ["The user wants Paris weather.", " I should answer briefly."]


class GetWeather(BaseModel):
    """Get the current weather in a city."""

    city: str


class Weather(BaseModel):
    city: str
    temperature_c: float
    conditions: str


PARIS_WEATHER = Weather(city="Paris", temperature_c=18.5, conditions="sunny")

upstreams: Upstreams
proxy: ProxyProcess
client: openai.OpenAI


def setUpModule() -> None:
    global upstreams, proxy, client
    upstreams, proxy = harness.start()
    client = openai.OpenAI(base_url=proxy.base_url, api_key=KEY, max_retries=0, timeout=10)


def tearDownModule() -> None:
    client.close()
    harness.stop(proxy)


@dataclass
class StreamedCall:
    """One tool call put together from its deltas, and how many deltas named it."""

    index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""
    deltas_with_id: int = 0
    deltas_with_name: int = 0


@dataclass
class Streamed:
    """A streamed completion taken apart: content, reasoning and tool calls by `index`."""

    chunks: list[ChatCompletionChunk]
    calls: dict[int, StreamedCall] = field(default_factory=dict)
    content: str = ""
    reasoning: str = ""
    #: "r" for a reasoning delta, "c" for content, "t" for a tool call delta, in order.
    order: str = ""
    finish_reasons: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        # The accumulation the SDK's function-calling guide shows: calls keyed by `index`,
        # argument fragments appended; here each delta's id and name are counted too.
        for chunk in self.chunks:
            for choice in chunk.choices:
                delta = choice.delta
                reasoning = (delta.model_extra or {}).get("reasoning_content")
                if reasoning:
                    self.reasoning += reasoning
                    self.order += "r"
                if delta.content:
                    self.content += delta.content
                    self.order += "c"
                for tool_delta in delta.tool_calls or []:
                    self.order += "t"
                    call = self.calls.setdefault(tool_delta.index, StreamedCall(tool_delta.index))
                    if tool_delta.id:
                        call.id = tool_delta.id
                        call.deltas_with_id += 1
                    if tool_delta.function and tool_delta.function.name:
                        call.name = tool_delta.function.name
                        call.deltas_with_name += 1
                    if tool_delta.function and tool_delta.function.arguments:
                        call.arguments += tool_delta.function.arguments
                if choice.finish_reason:
                    self.finish_reasons.append(choice.finish_reason)


class ToolTests:
    """The client's side of every test, the same whatever the upstream.

    A provider's TestCase sets MODEL and `upstream`, and implements the `assert_upstream_*`
    methods, which check the body its upstream received.
    """

    MODEL: str
    maxDiff = None

    @property
    def upstream(self) -> MockUpstream:
        raise NotImplementedError

    def setUp(self) -> None:
        upstreams.reset()

    # --- what the client does ---------------------------------------------------------------

    def ask(self, messages: list[Any] = QUESTION, **options: Any) -> ChatCompletion:
        return client.chat.completions.create(model=self.MODEL, messages=messages, **options)

    def ask_streamed(self, messages: list[Any] = QUESTION, **options: Any) -> Streamed:
        stream = client.chat.completions.create(model=self.MODEL, messages=messages,
                                                stream=True, **options)
        with stream:
            return Streamed(list(stream))

    def answer_tool_calls(self, completion: ChatCompletion,
                          question: list[Any] = QUESTION) -> list[Any]:
        """The conversation after the model's calls: the question, the assistant message as
        the SDK returned it (the guide appends the object itself), one `tool` message per call."""
        message = completion.choices[0].message
        results = [{"role": "tool", "tool_call_id": call.id,
                    "content": RESULTS[json.loads(call.function.arguments)["city"]]}
                   for call in message.tool_calls or []]
        return [*question, message, *results]

    # --- tool calls -------------------------------------------------------------------------

    def test_a_tool_call_comes_back_in_message_tool_calls(self) -> None:
        self.upstream.tool_calls = [PARIS]
        completion = self.ask(tools=[WEATHER_TOOL])
        choice = completion.choices[0]
        self.assertEqual(choice.finish_reason, "tool_calls")
        self.assertEqual(choice.message.role, "assistant")
        self.assertFalse(choice.message.content)
        (call,) = choice.message.tool_calls
        self.assertEqual(call.type, "function")
        self.assertTrue(call.id)
        self.assertEqual(call.function.name, "get_weather")
        self.assertEqual(json.loads(call.function.arguments), {"city": "Paris"})
        self.assert_upstream_offered_the_weather_tool(self.upstream.only_request().body)

    def test_a_tool_result_gets_the_final_answer(self) -> None:
        self.upstream.tool_calls = [PARIS]
        first = self.ask(tools=[WEATHER_TOOL])
        final = self.ask(self.answer_tool_calls(first), tools=[WEATHER_TOOL])
        self.assertEqual(final.choices[0].finish_reason, "stop")
        self.assertEqual(final.choices[0].message.content, self.upstream.text)
        self.assertFalse(final.choices[0].message.tool_calls)
        requests = self.upstream.requests
        self.assertEqual(len(requests), 2)
        (call,) = first.choices[0].message.tool_calls
        self.assert_upstream_received_tool_results(requests[1].body, [(call.id, PARIS)])

    def test_a_streamed_tool_call_sends_index_id_and_name_once_then_arguments(self) -> None:
        self.upstream.tool_calls = [PARIS]
        answer = self.ask_streamed(tools=[WEATHER_TOOL])
        self.assertEqual(answer.finish_reasons, ["tool_calls"])
        self.assertEqual(list(answer.calls), [0])
        call = answer.calls[0]
        self.assertTrue(call.id)
        self.assertEqual((call.name, call.deltas_with_id, call.deltas_with_name),
                         ("get_weather", 1, 1))
        self.assertEqual(json.loads(call.arguments), {"city": "Paris"})
        first_delta = next(chunk.choices[0].delta.tool_calls[0] for chunk in answer.chunks
                           if chunk.choices and chunk.choices[0].delta.tool_calls)
        self.assertEqual((first_delta.id, first_delta.function.name), (call.id, "get_weather"))
        self.assertEqual(answer.content, "")

    def test_a_streamed_tool_loop_with_the_sdk_stream_helper(self) -> None:
        self.upstream.tool_calls = [PARIS]
        tools = [openai.pydantic_function_tool(GetWeather, name="get_weather")]
        with client.chat.completions.stream(model=self.MODEL, messages=QUESTION,
                                            tools=tools) as stream:
            first = stream.get_final_completion()
        (call,) = first.choices[0].message.tool_calls
        self.assertEqual(first.choices[0].finish_reason, "tool_calls")
        self.assertEqual(call.function.parsed_arguments, GetWeather(city="Paris"))
        with client.chat.completions.stream(model=self.MODEL,
                                            messages=self.answer_tool_calls(first),
                                            tools=tools) as stream:
            final = stream.get_final_completion()
        self.assertEqual(final.choices[0].message.content, self.upstream.text)
        self.assertEqual(final.choices[0].finish_reason, "stop")
        self.assert_upstream_received_tool_results(self.upstream.requests[1].body,
                                                   [(call.id, PARIS)])

    def test_parallel_tool_calls_come_back_with_distinct_ids(self) -> None:
        self.upstream.tool_calls = [PARIS, TOKYO]
        first = self.ask(QUESTION_TWO_CITIES, tools=[WEATHER_TOOL])
        calls = first.choices[0].message.tool_calls
        self.assertEqual([json.loads(c.function.arguments) for c in calls],
                         [{"city": "Paris"}, {"city": "Tokyo"}])
        self.assertEqual(len({c.id for c in calls}), 2, calls)
        final = self.ask(self.answer_tool_calls(first, QUESTION_TWO_CITIES),
                         tools=[WEATHER_TOOL])
        self.assertEqual(final.choices[0].message.content, self.upstream.text)
        self.assert_upstream_received_tool_results(
            self.upstream.requests[1].body, [(calls[0].id, PARIS), (calls[1].id, TOKYO)])

    def test_parallel_tool_calls_stream_as_index_0_then_index_1(self) -> None:
        self.upstream.tool_calls = [PARIS, TOKYO]
        answer = self.ask_streamed(QUESTION_TWO_CITIES, tools=[WEATHER_TOOL])
        self.assertEqual(sorted(answer.calls), [0, 1])
        self.assertEqual([json.loads(answer.calls[i].arguments) for i in (0, 1)],
                         [{"city": "Paris"}, {"city": "Tokyo"}])
        self.assertNotEqual(answer.calls[0].id, answer.calls[1].id)
        for call in answer.calls.values():
            self.assertEqual((call.deltas_with_id, call.deltas_with_name), (1, 1))
        self.assertEqual(answer.finish_reasons, ["tool_calls"])

    def test_tool_choice_required_forces_a_call(self) -> None:
        self.upstream.tool_calls = [PARIS]
        completion = self.ask(tools=[WEATHER_TOOL], tool_choice="required")
        self.assertEqual(completion.choices[0].message.tool_calls[0].function.name,
                         "get_weather")
        self.assert_upstream_tool_choice(self.upstream.only_request().body, "required")

    def test_a_named_tool_choice_forces_that_tool(self) -> None:
        self.upstream.tool_calls = [PARIS]
        self.ask(tools=[WEATHER_TOOL],
                 tool_choice={"type": "function", "function": {"name": "get_weather"}})
        self.assert_upstream_tool_choice(self.upstream.only_request().body, "get_weather")

    # --- structured output ------------------------------------------------------------------

    def test_parse_returns_the_pydantic_model(self) -> None:
        self.answer_structured(PARIS_WEATHER)
        completion = client.chat.completions.parse(model=self.MODEL, messages=QUESTION,
                                                   response_format=Weather)
        message = completion.choices[0].message
        self.assertEqual(message.parsed, PARIS_WEATHER)
        self.assertEqual(json.loads(message.content), PARIS_WEATHER.model_dump())
        self.assertFalse(message.tool_calls)
        self.assertEqual(completion.choices[0].finish_reason, "stop")
        self.assert_upstream_asked_for_structured_output(self.upstream.only_request().body)

    def test_a_streamed_parse_returns_the_pydantic_model(self) -> None:
        self.answer_structured(PARIS_WEATHER)
        with client.chat.completions.stream(model=self.MODEL, messages=QUESTION,
                                            response_format=Weather) as stream:
            completion = stream.get_final_completion()
        self.assertEqual(completion.choices[0].message.parsed, PARIS_WEATHER)
        self.assertFalse(completion.choices[0].message.tool_calls)
        self.assert_upstream_asked_for_structured_output(self.upstream.only_request().body)

    def answer_structured(self, value: BaseModel) -> None:
        """Sets the upstream's answer to `value`, the way its provider returns JSON output."""
        text = value.model_dump_json()
        self.upstream.pieces = [text[:10], text[10:]]

    # --- reasoning and usage ----------------------------------------------------------------

    def test_reasoning_reaches_message_reasoning_content(self) -> None:
        self.upstream.reasoning = THOUGHTS
        completion = self.ask(reasoning_effort="low")
        message = completion.choices[0].message
        self.assertEqual((message.model_extra or {}).get("reasoning_content"),
                         "".join(THOUGHTS))
        self.assertEqual(message.content, self.upstream.text)
        self.assert_upstream_asked_for_reasoning(self.upstream.only_request().body, "low")

    def test_streamed_reasoning_comes_as_reasoning_content_deltas_before_the_content(
            self) -> None:
        self.upstream.reasoning = THOUGHTS
        answer = self.ask_streamed(reasoning_effort="low")
        self.assertEqual(answer.reasoning, "".join(THOUGHTS))
        self.assertEqual(answer.content, self.upstream.text)
        self.assertRegex(answer.order, r"^r+c+$")

    def test_reasoning_then_a_streamed_tool_call_keeps_the_tool_at_index_0(self) -> None:
        self.upstream.reasoning = THOUGHTS
        self.upstream.tool_calls = [PARIS]
        answer = self.ask_streamed(tools=[WEATHER_TOOL], reasoning_effort="low")
        self.assertEqual(answer.reasoning, "".join(THOUGHTS))
        self.assertEqual(list(answer.calls), [0])
        self.assertEqual(json.loads(answer.calls[0].arguments), {"city": "Paris"})
        self.assertRegex(answer.order, r"^r+t+$")

    def test_cached_prompt_tokens_reach_prompt_tokens_details(self) -> None:
        self.upstream.cached_tokens = 6
        completion = self.ask()
        self.assertEqual(completion.usage.prompt_tokens_details.cached_tokens, 6)

    # --- what the upstream received: one implementation per provider -------------------------

    def assert_upstream_offered_the_weather_tool(self, body: Any) -> None:
        raise NotImplementedError

    def assert_upstream_received_tool_results(self, body: Any,
                                              calls: list[tuple[str, ToolCall]]) -> None:
        """`calls`: (the id the client saw, the call) for each call the model made."""
        raise NotImplementedError

    def assert_upstream_tool_choice(self, body: Any, choice: str) -> None:
        """`choice`: "required", or the name of the forced tool."""
        raise NotImplementedError

    def assert_upstream_asked_for_structured_output(self, body: Any) -> None:
        raise NotImplementedError

    def assert_upstream_asked_for_reasoning(self, body: Any, effort: str) -> None:
        raise NotImplementedError


class OpenAIUpstreamToolTests(ToolTests, unittest.TestCase):
    """An OpenAI-format upstream gets tools, tool messages and options as they came."""

    MODEL = "openai/gpt-4o-mini"

    @property
    def upstream(self) -> MockUpstream:
        return upstreams.openai

    def assert_upstream_offered_the_weather_tool(self, body: Any) -> None:
        self.assertEqual(body["tools"], [WEATHER_TOOL])

    def assert_upstream_received_tool_results(self, body: Any,
                                              calls: list[tuple[str, ToolCall]]) -> None:
        *_, assistant = body["messages"][:-len(calls)]
        self.assertEqual(assistant["role"], "assistant")
        self.assertIsNone(assistant.get("content"))
        # The body passes as the SDK wrote it; its stream helper's message also carries
        # `index` and `parsed_arguments`, which are the SDK's and pass too.
        self.assertEqual([{"id": sent["id"], "type": sent["type"],
                           "function": {"name": sent["function"]["name"],
                                        "arguments": sent["function"]["arguments"]}}
                          for sent in assistant["tool_calls"]], [
            {"id": call_id, "type": "function",
             "function": {"name": call.name, "arguments": call.arguments_json}}
            for call_id, call in calls])
        self.assertEqual(body["messages"][-len(calls):], [
            {"role": "tool", "tool_call_id": call_id, "content": RESULTS[call.arguments["city"]]}
            for call_id, call in calls])

    def assert_upstream_tool_choice(self, body: Any, choice: str) -> None:
        expected = choice if choice == "required" else {"type": "function",
                                                        "function": {"name": choice}}
        self.assertEqual(body["tool_choice"], expected)

    def assert_upstream_asked_for_structured_output(self, body: Any) -> None:
        response_format = body["response_format"]
        self.assertEqual(response_format["type"], "json_schema")
        self.assertEqual(response_format["json_schema"]["name"], "Weather")
        self.assertIs(response_format["json_schema"]["strict"], True)

    def assert_upstream_asked_for_reasoning(self, body: Any, effort: str) -> None:
        self.assertEqual(body["reasoning_effort"], effort)

    def test_parallel_tool_calls_false_passes_through(self) -> None:
        self.ask(tools=[WEATHER_TOOL], parallel_tool_calls=False)
        self.assertIs(upstreams.openai.only_request().body["parallel_tool_calls"], False)

    def test_a_developer_message_passes_through(self) -> None:
        messages = [{"role": "developer", "content": "Answer in French."}, *QUESTION]
        self.ask(messages)
        self.assertEqual(upstreams.openai.only_request().body["messages"], messages)


class AnthropicUpstreamToolTests(ToolTests, unittest.TestCase):
    """Tools become Anthropic tools and tool_result blocks; JSON output a forced tool."""

    MODEL = "anthropic/claude-sonnet-4-5"

    @property
    def upstream(self) -> MockUpstream:
        return upstreams.anthropic

    def assert_upstream_offered_the_weather_tool(self, body: Any) -> None:
        self.assertEqual(body["tools"], [{"name": "get_weather",
                                          "description": "Get the current weather in a city.",
                                          "input_schema": WEATHER_PARAMETERS}])

    def assert_upstream_received_tool_results(self, body: Any,
                                              calls: list[tuple[str, ToolCall]]) -> None:
        question, assistant, results = body["messages"]
        self.assertEqual(question["role"], "user")
        self.assertEqual(assistant["role"], "assistant")
        tool_uses = [block for block in assistant["content"] if block["type"] == "tool_use"]
        self.assertEqual(tool_uses, [
            {"type": "tool_use", "id": upstreams.anthropic.tool_call_id(i), "name": call.name,
             "input": call.arguments} for i, (_, call) in enumerate(calls)])
        self.assertEqual([call_id for call_id, _ in calls],
                         [block["id"] for block in tool_uses],
                         "the client sees the ids Anthropic gave")
        self.assertEqual(results["role"], "user", "all tool results go in one user turn")
        self.assertEqual([(block["type"], block["tool_use_id"], tool_result_text(block))
                          for block in results["content"]],
                         [("tool_result", call_id, RESULTS[call.arguments["city"]])
                          for call_id, call in calls])

    def assert_upstream_tool_choice(self, body: Any, choice: str) -> None:
        expected = {"type": "any"} if choice == "required" else {"type": "tool", "name": choice}
        self.assertEqual(body["tool_choice"], expected)

    def assert_upstream_asked_for_structured_output(self, body: Any) -> None:
        (tool,) = body["tools"]
        self.assertEqual(tool["name"], "json_tool_call")
        self.assertEqual(set(tool["input_schema"]["properties"]),
                         {"city", "temperature_c", "conditions"})
        self.assertEqual(body["tool_choice"], {"type": "tool", "name": "json_tool_call"})

    def answer_structured(self, value: BaseModel) -> None:
        upstreams.anthropic.tool_calls = [ToolCall("json_tool_call", value.model_dump())]

    def assert_upstream_asked_for_reasoning(self, body: Any, effort: str) -> None:
        budget = {"low": 1024, "medium": 2048, "high": 4096}[effort]
        self.assertEqual(body["thinking"], {"type": "enabled", "budget_tokens": budget})
        self.assertGreater(body["max_tokens"], budget)
        self.assertNotIn("reasoning_effort", body)

    def test_parallel_tool_calls_false_disables_parallel_tool_use(self) -> None:
        self.ask(tools=[WEATHER_TOOL], parallel_tool_calls=False)
        self.assertEqual(upstreams.anthropic.only_request().body["tool_choice"],
                         {"type": "auto", "disable_parallel_tool_use": True})

    def test_a_developer_message_becomes_the_system_prompt(self) -> None:
        self.ask([{"role": "developer", "content": "Answer in French."}, *QUESTION])
        body = upstreams.anthropic.only_request().body
        self.assertEqual(system_text(body["system"]), "Answer in French.")
        self.assertEqual([m["role"] for m in body["messages"]], ["user"])


class GeminiUpstreamToolTests(ToolTests, unittest.TestCase):
    """Tools become functionDeclarations, results functionResponse parts, JSON a schema."""

    MODEL = "gemini/gemini-2.5-flash"

    @property
    def upstream(self) -> MockUpstream:
        return upstreams.gemini

    def assert_upstream_offered_the_weather_tool(self, body: Any) -> None:
        (tools,) = body["tools"]
        (declaration,) = tools["functionDeclarations"]
        self.assertEqual(declaration["name"], "get_weather")
        self.assertEqual(declaration["description"], "Get the current weather in a city.")
        self.assertEqual(set(declaration["parameters"]["properties"]), {"city"})
        self.assertEqual(declaration["parameters"]["required"], ["city"])

    def assert_upstream_received_tool_results(self, body: Any,
                                              calls: list[tuple[str, ToolCall]]) -> None:
        question, model_turn, results = body["contents"]
        self.assertEqual(question["role"], "user")
        self.assertEqual(model_turn["role"], "model")
        self.assertEqual([part["functionCall"] for part in model_turn["parts"]
                          if "functionCall" in part],
                         [{"name": call.name, "args": call.arguments} for _, call in calls])
        self.assertEqual(results["role"], "user")
        responses = [part["functionResponse"] for part in results["parts"]]
        self.assertEqual([response["name"] for response in responses],
                         [call.name for _, call in calls],
                         "each functionResponse carries the name of the call it answers")
        for response, (_, call) in zip(responses, calls):
            self.assertIsInstance(response["response"], dict, "Gemini takes an object")
            self.assertIn(call.arguments["city"], json.dumps(response["response"]))

    def assert_upstream_tool_choice(self, body: Any, choice: str) -> None:
        expected = {"mode": "ANY"}
        if choice != "required":
            expected["allowedFunctionNames"] = [choice]
        self.assertEqual(body["toolConfig"], {"functionCallingConfig": expected})

    def assert_upstream_asked_for_structured_output(self, body: Any) -> None:
        config = body["generationConfig"]
        self.assertEqual(config["responseMimeType"], "application/json")
        self.assertEqual(set(config["responseSchema"]["properties"]),
                         {"city", "temperature_c", "conditions"})

    def assert_upstream_asked_for_reasoning(self, body: Any, effort: str) -> None:
        self.assertNotIn("reasoning_effort", body)

    def test_tool_choice_none_sets_mode_none(self) -> None:
        self.ask(tools=[WEATHER_TOOL], tool_choice="none")
        self.assertEqual(upstreams.gemini.only_request().body["toolConfig"],
                         {"functionCallingConfig": {"mode": "NONE"}})

    def test_calls_without_ids_get_distinct_ids_from_the_proxy(self) -> None:
        upstreams.gemini.tool_calls = [PARIS, TOKYO]
        completion = self.ask(QUESTION_TWO_CITIES, tools=[WEATHER_TOOL])
        ids = [call.id for call in completion.choices[0].message.tool_calls]
        self.assertTrue(all(ids), ids)
        self.assertEqual(len(set(ids)), 2, ids)

    def test_a_developer_message_becomes_the_system_instruction(self) -> None:
        self.ask([{"role": "developer", "content": "Answer in French."}, *QUESTION])
        body = upstreams.gemini.only_request().body
        self.assertEqual([part["text"] for part in body["systemInstruction"]["parts"]],
                         ["Answer in French."])
        self.assertEqual([content["role"] for content in body["contents"]], ["user"])


def tool_result_text(block: dict[str, Any]) -> str:
    """A tool_result's content as text: Anthropic takes a string or a list of text blocks."""
    content = block.get("content", "")
    if isinstance(content, str):
        return content
    return "".join(part["text"] for part in content if part.get("type") == "text")


def system_text(system: str | list[dict[str, Any]]) -> str:
    if isinstance(system, str):
        return system
    return "".join(block["text"] for block in system)


if __name__ == "__main__":
    unittest.main()
