"""The OpenAI-compatible front door, driven by the official `openai` SDK as its users drive it.

setUpModule starts four mock upstreams (OpenAI; "groq", an OpenAI-format provider from the
providers file; Anthropic; Gemini) and the proxy pointed at them. Each test talks to the proxy
through `openai.OpenAI` and asserts both on what the SDK returns and on what the upstream
received. No test touches the network or needs a real key.
"""

from __future__ import annotations

import unittest
from dataclasses import dataclass
from typing import Any

import openai
from openai.types.chat import ChatCompletion, ChatCompletionChunk

import harness
from harness import KEY, Upstreams
from mock_upstreams import AnthropicUpstream, MockUpstream
from proxy_process import ProxyProcess

HELLO = [{"role": "user", "content": "Say hello"}]
# A 1x1 transparent PNG.
PNG_BASE64 = ("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAQAAAC1HAwCAAAAC0lEQVR42mNkYAAAAAYAAjCB0C8AAAAASUVO"
              "RK5CYII=")
PNG_DATA_URL = f"data:image/png;base64,{PNG_BASE64}"
IMAGE_HTTPS_URL = "https://example.com/images/cat.png"

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
class StreamedAnswer:
    """Every chunk of a streamed completion, in order."""

    chunks: list[ChatCompletionChunk]

    @property
    def choice_chunks(self) -> list[ChatCompletionChunk]:
        return [chunk for chunk in self.chunks if chunk.choices]

    @property
    def usage_chunks(self) -> list[ChatCompletionChunk]:
        return [chunk for chunk in self.chunks if not chunk.choices]

    @property
    def text(self) -> str:
        return "".join(chunk.choices[0].delta.content or "" for chunk in self.choice_chunks)

    @property
    def finish_reasons(self) -> list[str]:
        return [chunk.choices[0].finish_reason for chunk in self.choice_chunks
                if chunk.choices[0].finish_reason is not None]


class FrontDoorTestCase(unittest.TestCase):
    """Resets the mocks before each test, and holds the helpers that talk to the proxy."""

    maxDiff = None

    def setUp(self) -> None:
        upstreams.reset()

    def ask(self, model: str, messages: list[dict[str, Any]] = HELLO,
            **options: Any) -> ChatCompletion:
        return client.chat.completions.create(model=model, messages=messages, **options)

    def ask_streamed(self, model: str, messages: list[dict[str, Any]] = HELLO,
                     **options: Any) -> StreamedAnswer:
        stream = client.chat.completions.create(model=model, messages=messages, stream=True,
                                                **options)
        with stream:
            return StreamedAnswer(list(stream))

    def assert_completion(self, completion: ChatCompletion, upstream: MockUpstream,
                          finish_reason: str = "stop") -> None:
        """The completion carries the upstream's answer, in OpenAI's shape and vocabulary."""
        self.assertEqual(completion.object, "chat.completion")
        self.assertTrue(completion.id)
        self.assertIsInstance(completion.created, int)
        self.assertEqual(len(completion.choices), 1)
        self.assertEqual(completion.choices[0].message.role, "assistant")
        self.assertEqual(completion.choices[0].message.content, upstream.text)
        self.assertEqual(completion.choices[0].finish_reason, finish_reason)
        self.assert_usage(completion.usage, upstream)

    def assert_usage(self, usage: Any, upstream: MockUpstream) -> None:
        self.assertIsNotNone(usage)
        self.assertEqual(usage.prompt_tokens, upstream.prompt_tokens)
        self.assertEqual(usage.completion_tokens, upstream.completion_tokens)
        self.assertEqual(usage.total_tokens, upstream.prompt_tokens + upstream.completion_tokens)

    def assert_stream(self, answer: StreamedAnswer, upstream: MockUpstream,
                      with_usage: bool = False) -> None:
        """Role first, then the content, one finish_reason, then a usage chunk if asked for."""
        self.assertTrue(answer.chunks, "the stream has no chunks")
        for chunk in answer.chunks:
            self.assertEqual(chunk.object, "chat.completion.chunk")
        first, *_ = answer.choice_chunks
        self.assertEqual(first.choices[0].delta.role, "assistant")
        self.assertEqual(answer.text, upstream.text)
        self.assertEqual(answer.finish_reasons, ["stop"])
        self.assertIsNotNone(answer.choice_chunks[-1].choices[0].finish_reason,
                             "the finish_reason chunk is the last chunk with choices")
        if with_usage:
            self.assertEqual(len(answer.usage_chunks), 1, "exactly one usage chunk")
            self.assertIs(answer.chunks[-1], answer.usage_chunks[0], "the usage chunk is last")
            self.assert_usage(answer.chunks[-1].usage, upstream)
        else:
            self.assertEqual(answer.usage_chunks, [], "no usage chunk without include_usage")

    def assert_openai_error_shape(self, error: openai.APIStatusError) -> None:
        self.assertIsInstance(error.body, dict, f"not an OpenAI error body: {error.body!r}")
        self.assertLessEqual({"message", "type", "param", "code"}, set(error.body))
        self.assertIsInstance(error.body["message"], str)
        self.assertNotIn(KEY, error.body["message"])


class OpenAIProviderTests(FrontDoorTestCase):
    def test_a_completion_returns_the_upstream_answer(self) -> None:
        completion = self.ask("openai/gpt-4o-mini")
        self.assert_completion(completion, upstreams.openai)
        self.assertIn("gpt-4o-mini", completion.model)

    def test_the_upstream_receives_the_key_as_a_bearer_token_at_chat_completions(self) -> None:
        self.ask("openai/gpt-4o-mini")
        request = upstreams.openai.only_request()
        self.assertEqual(request.method, "POST")
        self.assertEqual(request.path, "/v1/chat/completions")
        self.assertEqual(request.headers.get("authorization"), f"Bearer {KEY}")

    def test_the_upstream_receives_the_body_with_only_the_model_replaced(self) -> None:
        messages = [{"role": "system", "content": "Be brief."}, *HELLO]
        self.ask("openai/gpt-4o-mini", messages, temperature=0.2, top_p=0.9, max_tokens=50,
                 stop=["END"], seed=7, user="user-1234")
        self.assertEqual(upstreams.openai.only_request().body, {
            "model": "gpt-4o-mini", "messages": messages, "temperature": 0.2, "top_p": 0.9,
            "max_tokens": 50, "stop": ["END"], "seed": 7, "user": "user-1234",
        })

    def test_a_stream_yields_the_role_then_the_content_then_the_finish_reason(self) -> None:
        answer = self.ask_streamed("openai/gpt-4o-mini")
        self.assert_stream(answer, upstreams.openai)
        self.assertIs(upstreams.openai.only_request().body["stream"], True)

    def test_a_stream_with_include_usage_ends_with_one_usage_chunk(self) -> None:
        answer = self.ask_streamed("openai/gpt-4o-mini", stream_options={"include_usage": True})
        self.assert_stream(answer, upstreams.openai, with_usage=True)
        self.assertEqual(upstreams.openai.only_request().body["stream_options"],
                         {"include_usage": True})


class ProvidersFileTests(FrontDoorTestCase):
    def test_a_configured_provider_is_called_at_its_own_base_url(self) -> None:
        completion = self.ask("groq/llama-3.1-8b-instant")
        self.assert_completion(completion, upstreams.groq)
        request = upstreams.groq.only_request()
        self.assertEqual(request.path, "/openai/v1/chat/completions")
        self.assertEqual(request.body["model"], "llama-3.1-8b-instant")
        self.assertEqual(upstreams.openai.requests, [])

    def test_a_configured_provider_receives_the_key_and_its_extra_headers(self) -> None:
        self.ask("groq/llama-3.1-8b-instant")
        request = upstreams.groq.only_request()
        self.assertEqual(request.headers.get("authorization"), f"Bearer {KEY}")
        self.assertEqual(request.headers.get("x-title"), "sdk-test")

    def test_a_model_name_with_slashes_is_split_at_the_first_slash_only(self) -> None:
        self.ask("groq/meta-llama/llama-4-scout-17b-16e-instruct")
        self.assertEqual(upstreams.groq.only_request().body["model"],
                         "meta-llama/llama-4-scout-17b-16e-instruct")

    def test_a_configured_provider_streams(self) -> None:
        answer = self.ask_streamed("groq/llama-3.1-8b-instant",
                                   stream_options={"include_usage": True})
        self.assert_stream(answer, upstreams.groq, with_usage=True)
        self.assertEqual(upstreams.groq.only_request().path, "/openai/v1/chat/completions")


class AliasTests(FrontDoorTestCase):
    def test_the_fast_alias_reaches_its_provider_with_its_model(self) -> None:
        completion = self.ask("fast")
        self.assert_completion(completion, upstreams.groq)
        request = upstreams.groq.only_request()
        self.assertEqual(request.path, "/openai/v1/chat/completions")
        self.assertEqual(request.body["model"], "llama-3.1-8b-instant")

    def test_the_smart_alias_reaches_anthropic_with_its_model(self) -> None:
        completion = self.ask("smart")
        self.assert_completion(completion, upstreams.anthropic)
        request = upstreams.anthropic.only_request()
        self.assertEqual(request.path, "/v1/messages")
        self.assertEqual(request.body["model"], "claude-3-5-haiku-20241022")

    def test_an_alias_streams(self) -> None:
        answer = self.ask_streamed("smart", stream_options={"include_usage": True})
        self.assert_stream(answer, upstreams.anthropic, with_usage=True)
        self.assertEqual(upstreams.anthropic.only_request().body["model"],
                         "claude-3-5-haiku-20241022")


class AnthropicProviderTests(FrontDoorTestCase):
    MODEL = "anthropic/claude-3-5-haiku-20241022"

    def test_a_message_becomes_a_chat_completion(self) -> None:
        completion = self.ask(self.MODEL)
        self.assert_completion(completion, upstreams.anthropic)
        self.assertIn("claude-3-5-haiku-20241022", completion.model)

    def test_the_upstream_receives_the_key_as_x_api_key_with_the_api_version(self) -> None:
        self.ask(self.MODEL)
        request = upstreams.anthropic.only_request()
        self.assertEqual(request.method, "POST")
        self.assertEqual(request.path, "/v1/messages")
        self.assertEqual(request.headers.get("x-api-key"), KEY)
        self.assertEqual(request.headers.get("anthropic-version"), "2023-06-01")
        self.assertNotIn("authorization", request.headers)

    def test_system_messages_move_to_the_top_level_system_field(self) -> None:
        self.ask(self.MODEL, [{"role": "system", "content": "Be brief."},
                              {"role": "user", "content": "Say hello"},
                              {"role": "assistant", "content": "Hello!"},
                              {"role": "user", "content": "Again"}])
        body = upstreams.anthropic.only_request().body
        self.assertEqual(body["model"], "claude-3-5-haiku-20241022")
        self.assertEqual(body["system"], "Be brief.")
        self.assertEqual(body["messages"], [{"role": "user", "content": "Say hello"},
                                            {"role": "assistant", "content": "Hello!"},
                                            {"role": "user", "content": "Again"}])

    def test_max_tokens_defaults_to_1024(self) -> None:
        self.ask(self.MODEL)
        self.assertEqual(upstreams.anthropic.only_request().body["max_tokens"], 1024)

    def test_sampling_options_and_stop_are_translated(self) -> None:
        self.ask(self.MODEL, max_tokens=50, temperature=0.2, top_p=0.9, stop="END")
        body = upstreams.anthropic.only_request().body
        self.assertEqual(body["max_tokens"], 50)
        self.assertEqual(body["temperature"], 0.2)
        self.assertEqual(body["top_p"], 0.9)
        self.assertEqual(body["stop_sequences"], ["END"])
        self.assertNotIn("stop", body)

    def test_a_max_tokens_stop_reason_becomes_length(self) -> None:
        upstreams.anthropic.finish_reason = "max_tokens"
        completion = self.ask(self.MODEL)
        self.assertEqual(completion.choices[0].finish_reason, "length")

    def test_a_stream_becomes_chat_completion_chunks(self) -> None:
        answer = self.ask_streamed(self.MODEL)
        self.assert_stream(answer, upstreams.anthropic)
        self.assertIs(upstreams.anthropic.only_request().body["stream"], True)

    def test_a_stream_with_include_usage_ends_with_anthropic_token_counts(self) -> None:
        answer = self.ask_streamed(self.MODEL, stream_options={"include_usage": True})
        self.assert_stream(answer, upstreams.anthropic, with_usage=True)

    def test_an_image_data_url_becomes_a_base64_image_block(self) -> None:
        self.ask(self.MODEL, [image_message(PNG_DATA_URL)])
        self.assertEqual(user_content(upstreams.anthropic), [
            {"type": "text", "text": "What is in this image?"},
            {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                         "data": PNG_BASE64}},
        ])

    def test_an_image_https_url_becomes_a_url_image_block(self) -> None:
        self.ask(self.MODEL, [image_message(IMAGE_HTTPS_URL)])
        self.assertEqual(user_content(upstreams.anthropic), [
            {"type": "text", "text": "What is in this image?"},
            {"type": "image", "source": {"type": "url", "url": IMAGE_HTTPS_URL}},
        ])


class GeminiProviderTests(FrontDoorTestCase):
    MODEL = "gemini/gemini-1.5-flash"

    def test_a_generate_content_response_becomes_a_chat_completion(self) -> None:
        completion = self.ask(self.MODEL)
        self.assert_completion(completion, upstreams.gemini)
        self.assertIn("gemini-1.5-flash", completion.model)

    def test_the_upstream_receives_the_key_in_a_header_and_never_in_the_url(self) -> None:
        self.ask(self.MODEL)
        request = upstreams.gemini.only_request()
        self.assertEqual(request.method, "POST")
        self.assertEqual(request.path, "/v1beta/models/gemini-1.5-flash:generateContent")
        self.assertEqual(request.headers.get("x-goog-api-key"), KEY)
        self.assertNotIn(KEY, request.target)
        self.assertNotIn("key", request.query)
        self.assertNotIn("authorization", request.headers)

    def test_messages_become_contents_with_user_and_model_roles(self) -> None:
        self.ask(self.MODEL, [{"role": "system", "content": "Be brief."},
                              {"role": "user", "content": "Say hello"},
                              {"role": "assistant", "content": "Hello!"},
                              {"role": "user", "content": "Again"}])
        body = upstreams.gemini.only_request().body
        self.assertEqual([(c["role"], texts(c["parts"])) for c in body["contents"]],
                         [("user", ["Say hello"]), ("model", ["Hello!"]), ("user", ["Again"])])
        self.assertEqual(texts(body["systemInstruction"]["parts"]), ["Be brief."])

    def test_sampling_options_become_generation_config(self) -> None:
        self.ask(self.MODEL, max_tokens=50, temperature=0.2, top_p=0.9, stop=["END"])
        config = upstreams.gemini.only_request().body["generationConfig"]
        self.assertEqual(config["maxOutputTokens"], 50)
        self.assertEqual(config["temperature"], 0.2)
        self.assertEqual(config["topP"], 0.9)
        self.assertEqual(config["stopSequences"], ["END"])

    def test_a_max_tokens_finish_reason_becomes_length(self) -> None:
        upstreams.gemini.finish_reason = "MAX_TOKENS"
        completion = self.ask(self.MODEL)
        self.assertEqual(completion.choices[0].finish_reason, "length")

    def test_a_safety_finish_reason_becomes_content_filter(self) -> None:
        upstreams.gemini.finish_reason = "SAFETY"
        completion = self.ask(self.MODEL)
        self.assertEqual(completion.choices[0].finish_reason, "content_filter")

    def test_a_stream_calls_stream_generate_content_with_alt_sse(self) -> None:
        answer = self.ask_streamed(self.MODEL)
        self.assert_stream(answer, upstreams.gemini)
        request = upstreams.gemini.only_request()
        self.assertEqual(request.path, "/v1beta/models/gemini-1.5-flash:streamGenerateContent")
        self.assertEqual(request.query, {"alt": ["sse"]})
        self.assertEqual(request.headers.get("x-goog-api-key"), KEY)

    def test_a_stream_with_include_usage_ends_with_gemini_token_counts(self) -> None:
        answer = self.ask_streamed(self.MODEL, stream_options={"include_usage": True})
        self.assert_stream(answer, upstreams.gemini, with_usage=True)

    def test_an_image_data_url_becomes_inline_data(self) -> None:
        self.ask(self.MODEL, [image_message(PNG_DATA_URL)])
        parts = upstreams.gemini.only_request().body["contents"][0]["parts"]
        self.assertEqual(parts, [
            {"text": "What is in this image?"},
            {"inline_data": {"mime_type": "image/png", "data": PNG_BASE64}},
        ])

    def test_an_image_https_url_becomes_file_data(self) -> None:
        self.ask(self.MODEL, [image_message(IMAGE_HTTPS_URL)])
        text, image = upstreams.gemini.only_request().body["contents"][0]["parts"]
        self.assertEqual(text, {"text": "What is in this image?"})
        self.assertEqual(image["file_data"]["file_uri"], IMAGE_HTTPS_URL)
        self.assertTrue(image["file_data"]["mime_type"].startswith("image/"), image)


class ModelListTests(FrontDoorTestCase):
    def test_the_model_list_includes_every_alias(self) -> None:
        models = list(client.models.list())
        ids = [model.id for model in models]
        self.assertLessEqual({"fast", "smart"}, set(ids), ids)
        for model in models:
            self.assertEqual(model.object, "model")


class UpstreamErrorTests(FrontDoorTestCase):
    def test_an_anthropic_401_raises_authentication_error(self) -> None:
        upstreams.anthropic.answer_invalid_key()
        with self.assertRaises(openai.AuthenticationError) as raised:
            self.ask("anthropic/claude-3-5-haiku-20241022")
        self.assertEqual(raised.exception.status_code, 401)
        self.assert_openai_error_shape(raised.exception)
        self.assertIn("invalid x-api-key", raised.exception.body["message"])

    def test_an_openai_401_raises_authentication_error(self) -> None:
        upstreams.openai.answer_invalid_key()
        with self.assertRaises(openai.AuthenticationError) as raised:
            self.ask("openai/gpt-4o-mini")
        self.assertEqual(raised.exception.status_code, 401)
        self.assert_openai_error_shape(raised.exception)

    def test_a_gemini_invalid_key_400_raises_bad_request_error(self) -> None:
        upstreams.gemini.answer_invalid_key()
        with self.assertRaises(openai.BadRequestError) as raised:
            self.ask("gemini/gemini-1.5-flash")
        self.assert_openai_error_shape(raised.exception)
        self.assertIn("API key not valid", raised.exception.body["message"])

    def test_a_gemini_429_raises_rate_limit_error_after_one_upstream_call(self) -> None:
        upstreams.gemini.answer_rate_limited()
        with self.assertRaises(openai.RateLimitError) as raised:
            self.ask("gemini/gemini-1.5-flash")
        self.assertEqual(raised.exception.status_code, 429)
        self.assert_openai_error_shape(raised.exception)
        upstreams.gemini.only_request()

    def test_an_anthropic_429_on_a_stream_raises_rate_limit_error_before_any_chunk(self) -> None:
        upstreams.anthropic.answer_rate_limited()
        with self.assertRaises(openai.RateLimitError) as raised:
            self.ask_streamed("anthropic/claude-3-5-haiku-20241022")
        self.assert_openai_error_shape(raised.exception)
        upstreams.anthropic.only_request()

    def test_an_openai_429_on_a_stream_raises_rate_limit_error(self) -> None:
        upstreams.openai.answer_rate_limited()
        with self.assertRaises(openai.RateLimitError) as raised:
            self.ask_streamed("openai/gpt-4o-mini")
        self.assert_openai_error_shape(raised.exception)


class CacheTests(FrontDoorTestCase):
    def test_a_cached_stream_is_replayed_to_the_sdk_as_the_same_chunks(self) -> None:
        messages = [{"role": "user", "content": "Say hello, once, from the cache"}]

        def stream_with_cache() -> tuple[str | None, StreamedAnswer]:
            raw = client.chat.completions.with_raw_response.create(
                model="openai/gpt-4o-mini", messages=messages, stream=True,
                stream_options={"include_usage": True},
                extra_headers={"X-Proxy-Cache": "use"})
            with raw.parse() as stream:
                return raw.headers.get("x-proxy-cache"), StreamedAnswer(list(stream))

        first_says, first = stream_with_cache()
        second_says, second = stream_with_cache()
        self.assertEqual((first_says, second_says), ("MISS", "HIT"))
        self.assert_stream(second, upstreams.openai, with_usage=True)
        self.assertEqual([chunk.model_dump() for chunk in second.chunks],
                         [chunk.model_dump() for chunk in first.chunks])
        upstreams.openai.only_request()


def image_message(url: str) -> dict[str, Any]:
    """A user message asking about one image, as OpenAI's content parts."""
    return {"role": "user", "content": [
        {"type": "text", "text": "What is in this image?"},
        {"type": "image_url", "image_url": {"url": url}},
    ]}


def user_content(upstream: AnthropicUpstream) -> list[dict[str, Any]]:
    """The content blocks of the one user message the upstream received."""
    (message,) = upstream.only_request().body["messages"]
    return message["content"]


def texts(parts: list[dict[str, Any]]) -> list[str]:
    return [part["text"] for part in parts]


if __name__ == "__main__":
    unittest.main()
