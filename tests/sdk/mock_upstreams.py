"""Mock LLM providers on loopback, each speaking its provider's documented wire format.

Every mock records each request it receives (method, path, headers, JSON body), so a test can
assert what the upstream saw, and answers with a canned reply in its provider's own format:
JSON with a Content-Length, or server-sent events with chunked transfer encoding (an HTTP/1.1
response with neither would reach the proxy's client as an empty body). A test can replace the
reply, for example with the provider's real 401 or 429 error body, until the next `reset()`.

The canned reply follows the conversation, as a model in a tool loop would: when the request
offers tools, the test has set `tool_calls`, and the conversation does not end with a tool
result, the mock calls those tools (in parallel when there are several); otherwise it answers
with its text. With `reasoning` set, the answer opens with it: `reasoning_content` for OpenAI-
compatible providers, a signed `thinking` block for Anthropic, `thought: true` parts for Gemini.
"""

from __future__ import annotations

import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit


def to_json(value: Any) -> str:
    """Compact JSON with raw UTF-8, as the providers send it."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the mock upstream received it."""

    method: str
    #: The request target: path and query, exactly as sent.
    target: str
    #: Header names lower-cased.
    headers: dict[str, str]
    #: The body parsed as JSON, or None when it is empty or not JSON.
    body: Any

    @property
    def path(self) -> str:
        return urlsplit(self.target).path

    @property
    def query(self) -> dict[str, list[str]]:
        return parse_qs(urlsplit(self.target).query, keep_blank_values=True)


@dataclass(frozen=True)
class JsonReply:
    """A complete JSON response."""

    status: int
    body: Any
    headers: dict[str, str] = field(default_factory=dict)

    def write_to(self, handler: BaseHTTPRequestHandler) -> None:
        payload = to_json(self.body).encode()
        handler.send_response(self.status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(payload)))
        for name, value in self.headers.items():
            handler.send_header(name, value)
        handler.end_headers()
        handler.wfile.write(payload)


@dataclass(frozen=True)
class EventStreamReply:
    """A 200 `text/event-stream` in chunked transfer encoding.

    Each event goes out as two HTTP chunks, cut at its middle byte (inside the JSON, and at
    times inside a UTF-8 character), as events arrive from a real upstream split across reads.
    """

    events: list[str]

    def write_to(self, handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Type", "text/event-stream")
        handler.send_header("Cache-Control", "no-cache")
        handler.send_header("Transfer-Encoding", "chunked")
        handler.end_headers()
        for event in self.events:
            data = event.encode()
            middle = len(data) // 2
            for part in filter(None, (data[:middle], data[middle:])):
                handler.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
                handler.wfile.flush()
        handler.wfile.write(b"0\r\n\r\n")


Reply = JsonReply | EventStreamReply


@dataclass(frozen=True)
class ToolCall:
    """A function call the mock makes; each mock gives it an id in its provider's own style."""

    name: str
    arguments: dict[str, Any]

    @property
    def arguments_json(self) -> str:
        return to_json(self.arguments)


def fragments(text: str, count: int = 3) -> list[str]:
    """`text` cut into `count` non-empty pieces (fewer when it is shorter), as a stream sends it."""
    size = max(1, -(-len(text) // count))
    return [text[i:i + size] for i in range(0, len(text), size)] or [""]


class MockUpstream:
    """A threaded HTTP/1.1 server on 127.0.0.1, port 0, that records requests and answers them.

    Subclasses implement `reply_to(request)` in their provider's wire format. The canned answer
    is `text` (streamed as `pieces`), with `prompt_tokens` and `completion_tokens` as usage and
    `finish_reason` in the provider's own vocabulary. A test may set, until the next `reset()`:
    `pieces` (another answer, such as the JSON of a structured output), `tool_calls` (the calls
    made while the conversation does not end with a tool result), `reasoning` (pieces of
    reasoning that open the answer) and `cached_tokens` (prompt tokens read from the cache).
    """

    default_finish_reason = ""

    def __init__(self, pieces: list[str], prompt_tokens: int, completion_tokens: int) -> None:
        self._default_pieces = list(pieces)
        self.pieces = list(pieces)
        self.prompt_tokens = prompt_tokens
        self.completion_tokens = completion_tokens
        self.finish_reason = self.default_finish_reason
        self.tool_calls: list[ToolCall] = []
        self.reasoning: list[str] = []
        self.cached_tokens = 0
        self._requests: list[RecordedRequest] = []
        self._override: Reply | None = None
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._server.daemon_threads = True
        # A short poll interval makes stop() quick: shutdown() waits for the next poll.
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,),
                                        daemon=True)

    @property
    def text(self) -> str:
        return "".join(self.pieces)

    @property
    def origin(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._requests)

    def only_request(self) -> RecordedRequest:
        """The one request received since the last reset; fails if there were more or none."""
        requests = self.requests
        if len(requests) != 1:
            raise AssertionError(f"expected exactly one upstream request, got {requests!r}")
        return requests[0]

    def start(self) -> MockUpstream:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    @property
    def reasoning_text(self) -> str:
        return "".join(self.reasoning)

    def reset(self) -> None:
        """Forgets the recorded requests and goes back to the canned successful text answer."""
        with self._lock:
            self._requests.clear()
            self._override = None
        self.finish_reason = self.default_finish_reason
        self.pieces = list(self._default_pieces)
        self.tool_calls = []
        self.reasoning = []
        self.cached_tokens = 0

    def tool_call_id(self, index: int) -> str | None:
        """The id this mock gives its `index`th tool call, or None when its provider gives none."""
        return None

    def calls_tools(self, body: Any) -> bool:
        """Whether this request is answered with `tool_calls` rather than with the text."""
        return bool(self.tool_calls) and self.offers_tools(body) and not \
            self.ends_with_tool_result(body)

    def offers_tools(self, body: Any) -> bool:
        raise NotImplementedError

    def ends_with_tool_result(self, body: Any) -> bool:
        raise NotImplementedError

    def answer_with(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        """Answers every request with this JSON response until the next reset."""
        with self._lock:
            self._override = JsonReply(status, body, headers or {})

    def reply_to(self, request: RecordedRequest) -> Reply:
        raise NotImplementedError

    def _record_and_reply(self, request: RecordedRequest) -> Reply:
        with self._lock:
            self._requests.append(request)
            override = self._override
        return override or self.reply_to(request)


def _handler_for(upstream: MockUpstream) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            self._serve()

        def do_POST(self) -> None:
            self._serve()

        def _serve(self) -> None:
            request = RecordedRequest(
                method=self.command,
                target=self.path,
                headers={name.lower(): value for name, value in self.headers.items()},
                body=_parse_json(_read_body(self)),
            )
            reply = upstream._record_and_reply(request)
            try:
                reply.write_to(self)
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


def _read_body(handler: BaseHTTPRequestHandler) -> bytes:
    if handler.headers.get("Transfer-Encoding", "").lower() == "chunked":
        return _read_chunked(handler.rfile)
    length = int(handler.headers.get("Content-Length") or 0)
    return handler.rfile.read(length)


def _read_chunked(rfile: Any) -> bytes:
    body = b""
    while True:
        size = int(rfile.readline().split(b";")[0].strip(), 16)
        if size == 0:
            while rfile.readline() not in (b"\r\n", b"\n", b""):
                pass  # trailers
            return body
        body += rfile.read(size)
        rfile.readline()


def _parse_json(body: bytes) -> Any:
    try:
        return json.loads(body) if body else None
    except ValueError:
        return None


# --- OpenAI Chat Completions (and OpenAI-compatible providers such as Groq) -----------------


class OpenAIUpstream(MockUpstream):
    """`POST {base}/chat/completions`: a `chat.completion`, or `chat.completion.chunk` events.

    Tool calls come as `message.tool_calls` with `finish_reason: "tool_calls"`; streamed, each
    call's first delta carries its `index`, `id`, `type` and `function.name` with empty
    arguments, and the argument fragments follow under the same `index`. Reasoning is the
    `reasoning_content` field of OpenAI-compatible reasoning models (DeepSeek, vLLM, Ollama):
    on the message, or as `delta.reasoning_content` before the first content delta.
    """

    default_finish_reason = "stop"

    def reply_to(self, request: RecordedRequest) -> Reply:
        if request.method != "POST" or not request.path.endswith("/chat/completions"):
            message = f"Invalid URL ({request.method} {request.path})"
            return JsonReply(404, _openai_error(message, "invalid_request_error", code=None))
        body = request.body or {}
        model = body.get("model", "")
        calls = self.tool_calls if self.calls_tools(body) else []
        if body.get("stream"):
            include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
            return EventStreamReply(self._chunk_events(model, include_usage, calls))
        return JsonReply(200, self._completion(model, calls))

    def offers_tools(self, body: Any) -> bool:
        return bool(body.get("tools"))

    def ends_with_tool_result(self, body: Any) -> bool:
        messages = body.get("messages") or [{}]
        return messages[-1].get("role") == "tool"

    def tool_call_id(self, index: int) -> str:
        return f"call_{index}DdmO9pD3xa9XTPNJ32zg2hcA"

    def answer_invalid_key(self) -> None:
        self.answer_with(401, _openai_error(
            "Incorrect API key provided: sk-test-****. You can find your API key at "
            "https://platform.openai.com/account/api-keys.",
            "invalid_request_error", code="invalid_api_key"))

    def answer_rate_limited(self) -> None:
        self.answer_with(429, _openai_error(
            "Rate limit reached for gpt-4o-mini in organization org-test on requests per min "
            "(RPM): Limit 3, Used 3, Requested 1. Please try again in 20s.",
            "requests", code="rate_limit_exceeded"), {"retry-after": "20"})

    def answer_server_error(self) -> None:
        self.answer_with(500, _openai_error(
            "The server had an error while processing your request. Sorry about that!",
            "server_error", code=None))

    def _usage(self) -> dict[str, Any]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": self.cached_tokens, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0,
                                          "accepted_prediction_tokens": 0,
                                          "rejected_prediction_tokens": 0},
        }

    def _completion(self, model: str, calls: list[ToolCall]) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": self.text, "refusal": None,
                                   "annotations": []}
        if calls:
            message["content"] = None
            message["tool_calls"] = [
                {"id": self.tool_call_id(i), "type": "function",
                 "function": {"name": call.name, "arguments": call.arguments_json}}
                for i, call in enumerate(calls)
            ]
        if self.reasoning:
            message["reasoning_content"] = self.reasoning_text
        return {
            "id": "chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT",
            "object": "chat.completion",
            "created": 1741569952,
            "model": model,
            "choices": [{
                "index": 0,
                "message": message,
                "logprobs": None,
                "finish_reason": "tool_calls" if calls else self.finish_reason,
            }],
            "usage": self._usage(),
            "service_tier": "default",
            "system_fingerprint": "fp_06737a9306",
        }

    def _chunk_events(self, model: str, include_usage: bool,
                      calls: list[ToolCall]) -> list[str]:
        def chunk(delta: dict[str, Any], finish_reason: str | None) -> dict[str, Any]:
            data = {
                "id": "chatcmpl-AbC123",
                "object": "chat.completion.chunk",
                "created": 1741569952,
                "model": model,
                "system_fingerprint": "fp_06737a9306",
                "choices": [{"index": 0, "delta": delta, "logprobs": None,
                             "finish_reason": finish_reason}],
            }
            if include_usage:
                data["usage"] = None
            return data

        first: dict[str, Any] = {"role": "assistant", "content": "", "refusal": None}
        deltas: list[dict[str, Any]] = []
        if self.reasoning:
            first = {"role": "assistant", "content": None, "reasoning_content": ""}
            deltas += [{"content": None, "reasoning_content": piece} for piece in self.reasoning]
        if calls:
            first["content"] = None
            for i, call in enumerate(calls):
                deltas.append({"tool_calls": [{
                    "index": i, "id": self.tool_call_id(i), "type": "function",
                    "function": {"name": call.name, "arguments": ""}}]})
                deltas += [{"tool_calls": [{"index": i, "function": {"arguments": piece}}]}
                           for piece in fragments(call.arguments_json)]
        else:
            deltas += [{"content": piece} for piece in self.pieces]
        if not self.reasoning and calls:
            # OpenAI puts the role and the first call's opening delta in one chunk.
            first = {**first, **deltas.pop(0)}
        chunks = [chunk(first, None)] + [chunk(delta, None) for delta in deltas]
        chunks.append(chunk({}, "tool_calls" if calls else self.finish_reason))
        if include_usage:
            chunks.append({**chunk({}, None), "choices": [], "usage": self._usage()})
        return [f"data: {to_json(c)}\n\n" for c in chunks] + ["data: [DONE]\n\n"]


def _openai_error(message: str, type_: str, code: str | None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": None, "code": code}}


# --- Anthropic Messages ---------------------------------------------------------------------


class AnthropicUpstream(MockUpstream):
    """`POST {base}/messages`: a `message`, or the typed event sequence of a streamed message.

    Content blocks come in the order Claude writes them: a signed `thinking` block when
    `reasoning` is set, then either the text or one `tool_use` block per call (`stop_reason:
    "tool_use"`), each streamed as content_block_start, its deltas (`thinking_delta` then one
    `signature_delta`; `text_delta`; `input_json_delta` fragments, the first one empty) and
    content_block_stop. `POST {base}/messages/count_tokens` answers `{"input_tokens": N}`.
    """

    default_finish_reason = "end_turn"
    #: The `signature` of a thinking block: opaque base64 that Claude checks when it comes back.
    signature = ("EqQBCgIYAhIM1gbcDa9GJwZA2b3hGgxBdjrkzLoky3dl1pkiMOYds3s2xJlCqIbPjY3HEEI8mWkj"
                 "Zoh1bOt0RcIUh4vjrJbc7sJEFVBoeAzVELaHXh0")

    def reply_to(self, request: RecordedRequest) -> Reply:
        if request.method == "POST" and request.path.endswith("/messages/count_tokens"):
            return JsonReply(200, {"input_tokens": self.prompt_tokens})
        if request.method != "POST" or not request.path.endswith("/messages"):
            return JsonReply(404, _anthropic_error("not_found_error", "Not found"))
        body = request.body or {}
        model = body.get("model", "")
        calls = self.tool_calls if self.calls_tools(body) else []
        if body.get("stream"):
            return EventStreamReply(self._events(model, calls))
        return JsonReply(200, self._message(model, calls))

    def offers_tools(self, body: Any) -> bool:
        return bool(body.get("tools"))

    def ends_with_tool_result(self, body: Any) -> bool:
        messages = body.get("messages") or [{}]
        last = messages[-1]
        content = last.get("content")
        return last.get("role") == "user" and isinstance(content, list) and any(
            block.get("type") == "tool_result" for block in content)

    def tool_call_id(self, index: int) -> str:
        return f"toolu_01{index}A09q90qw90lq917835lq9"

    def answer_invalid_key(self) -> None:
        self.answer_with(401, _anthropic_error("authentication_error", "invalid x-api-key"))

    def answer_rate_limited(self) -> None:
        self.answer_with(429, _anthropic_error(
            "rate_limit_error",
            "This request would exceed the rate limit for your organization of 50 requests "
            "per minute. For details, refer to: https://docs.claude.com/en/api/rate-limits."),
            {"retry-after": "12", "anthropic-ratelimit-requests-limit": "50"})

    def event_stream(self, model: str) -> str:
        """The exact text of the stream this mock sends for `model` with its text answer."""
        return "".join(self._events(model, []))

    def answer_overloaded(self) -> None:
        """529: Anthropic's API is temporarily overloaded."""
        self.answer_with(529, _anthropic_error("overloaded_error", "Overloaded"))

    def _usage(self, output_tokens: int) -> dict[str, Any]:
        return {"input_tokens": self.prompt_tokens, "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": self.cached_tokens, "output_tokens": output_tokens}

    def _blocks(self, calls: list[ToolCall]) -> list[dict[str, Any]]:
        blocks: list[dict[str, Any]] = []
        if self.reasoning:
            blocks.append({"type": "thinking", "thinking": self.reasoning_text,
                           "signature": self.signature})
        if calls:
            blocks += [{"type": "tool_use", "id": self.tool_call_id(i), "name": call.name,
                        "input": call.arguments} for i, call in enumerate(calls)]
        else:
            blocks.append({"type": "text", "text": self.text})
        return blocks

    def _message(self, model: str, calls: list[ToolCall]) -> dict[str, Any]:
        return {
            "id": "msg_013Zva2CMHLNnXjNJJKqJ2EF",
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": self._blocks(calls),
            "stop_reason": "tool_use" if calls else self.finish_reason,
            "stop_sequence": None,
            "usage": self._usage(self.completion_tokens),
        }

    def _events(self, model: str, calls: list[ToolCall]) -> list[str]:
        start = {**self._message(model, calls), "content": [], "stop_reason": None,
                 "usage": self._usage(1)}
        events: list[tuple[str, dict[str, Any]]] = [
            ("message_start", {"type": "message_start", "message": start})]
        for index, block in enumerate(self._blocks(calls)):
            if block["type"] == "thinking":
                opening = {"type": "thinking", "thinking": "", "signature": ""}
                deltas = [{"type": "thinking_delta", "thinking": piece}
                          for piece in self.reasoning]
                deltas.append({"type": "signature_delta", "signature": block["signature"]})
            elif block["type"] == "tool_use":
                opening = {**block, "input": {}}
                deltas = [{"type": "input_json_delta", "partial_json": piece}
                          for piece in ["", *fragments(to_json(block["input"]))]]
            else:
                opening = {"type": "text", "text": ""}
                deltas = [{"type": "text_delta", "text": piece} for piece in self.pieces]
            events.append(("content_block_start", {"type": "content_block_start",
                                                   "index": index, "content_block": opening}))
            if index == 0:
                events.append(("ping", {"type": "ping"}))
            events += [("content_block_delta", {"type": "content_block_delta", "index": index,
                                                "delta": delta}) for delta in deltas]
            events.append(("content_block_stop", {"type": "content_block_stop", "index": index}))
        events += [
            ("message_delta", {"type": "message_delta",
                               "delta": {"stop_reason": "tool_use" if calls
                                         else self.finish_reason,
                                         "stop_sequence": None},
                               "usage": {"output_tokens": self.completion_tokens}}),
            ("message_stop", {"type": "message_stop"}),
        ]
        return [f"event: {name}\ndata: {to_json(data)}\n\n" for name, data in events]


def _anthropic_error(type_: str, message: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": type_, "message": message},
            "request_id": "req_011CSHoEeqs5C35K2UUqR7Fy"}


# --- Gemini generateContent -----------------------------------------------------------------

_GEMINI_METHOD = re.compile(r"/models/(?P<model>[^/:]+):(?P<method>generateContent|"
                            r"streamGenerateContent)$")


class GeminiUpstream(MockUpstream):
    """`POST {base}/models/{model}:generateContent` and `:streamGenerateContent?alt=sse`.

    As the real API does, a stream without `alt=sse` is a JSON array of responses, a stream's
    chunks carry a running `usageMetadata` (the last one complete, with the `finishReason`),
    and a candidate blocked for SAFETY has no content. Tool calls are `functionCall` parts
    (`{name, args}`, no id, `finishReason: "STOP"`), all in one part list and, streamed, in one
    chunk; reasoning is `{"text": ..., "thought": true}` parts ahead of the answer, counted in
    `thoughtsTokenCount`.
    """

    default_finish_reason = "STOP"
    #: The `thoughtsTokenCount` of an answer with reasoning.
    thoughts_tokens = 21

    def reply_to(self, request: RecordedRequest) -> Reply:
        match = _GEMINI_METHOD.search(request.path)
        if request.method != "POST" or not match:
            return JsonReply(404, _gemini_error(404, f"Not found: {request.path}", "NOT_FOUND"))
        body = request.body or {}
        calls = self.tool_calls if self.calls_tools(body) else []
        if match["method"] == "generateContent":
            return JsonReply(200, self._response(self._parts(calls), self.finish_reason,
                                                 final=True))
        chunks = self._chunks_of_parts(calls)
        responses = [self._response(parts, None, final=False) for parts in chunks[:-1]]
        responses.append(self._response(chunks[-1], self.finish_reason, final=True))
        if request.query.get("alt") != ["sse"]:
            return JsonReply(200, responses)
        return EventStreamReply([f"data: {to_json(r)}\r\n\r\n" for r in responses])

    def offers_tools(self, body: Any) -> bool:
        return any(tool.get("functionDeclarations") or tool.get("function_declarations")
                   for tool in body.get("tools") or [])

    def ends_with_tool_result(self, body: Any) -> bool:
        contents = body.get("contents") or [{}]
        return any("functionResponse" in part or "function_response" in part
                   for part in contents[-1].get("parts") or [])

    def answer_invalid_key(self) -> None:
        """Gemini answers a bad key with 400 INVALID_ARGUMENT, not 401."""
        error = _gemini_error(400, "API key not valid. Please pass a valid API key.",
                              "INVALID_ARGUMENT")
        error["error"]["details"] = [{
            "@type": "type.googleapis.com/google.rpc.ErrorInfo",
            "reason": "API_KEY_INVALID",
            "domain": "googleapis.com",
            "metadata": {"service": "generativelanguage.googleapis.com"},
        }]
        self.answer_with(400, error)

    def answer_rate_limited(self) -> None:
        self.answer_with(429, _gemini_error(429, "Resource has been exhausted (e.g. check quota).",
                                            "RESOURCE_EXHAUSTED"))

    def _parts(self, calls: list[ToolCall]) -> list[dict[str, Any]]:
        """The whole answer's parts: the thought, then the text or the calls."""
        parts = [{"text": self.reasoning_text, "thought": True}] if self.reasoning else []
        if calls:
            return parts + [{"functionCall": {"name": call.name, "args": call.arguments}}
                            for call in calls]
        return parts + [{"text": self.text}]

    def _chunks_of_parts(self, calls: list[ToolCall]) -> list[list[dict[str, Any]]]:
        """The answer's parts, one list per streamed chunk."""
        chunks = [[{"text": piece, "thought": True}] for piece in self.reasoning]
        if calls:
            chunks.append([{"functionCall": {"name": call.name, "args": call.arguments}}
                           for call in calls])
        else:
            chunks += [[{"text": piece}] for piece in self.pieces]
        return chunks

    def _response(self, parts: list[dict[str, Any]], finish_reason: str | None,
                  final: bool) -> dict[str, Any]:
        candidate: dict[str, Any] = {"index": 0}
        if finish_reason != "SAFETY":
            candidate["content"] = {"parts": parts, "role": "model"}
        if finish_reason:
            candidate["finishReason"] = finish_reason
        usage: dict[str, Any] = {"promptTokenCount": self.prompt_tokens,
                                 "totalTokenCount": self.prompt_tokens}
        if final and finish_reason != "SAFETY":
            thoughts = self.thoughts_tokens if self.reasoning else 0
            usage = {"promptTokenCount": self.prompt_tokens,
                     "candidatesTokenCount": self.completion_tokens,
                     "totalTokenCount": self.prompt_tokens + self.completion_tokens + thoughts}
            if thoughts:
                usage["thoughtsTokenCount"] = thoughts
        if self.cached_tokens:
            usage["cachedContentTokenCount"] = self.cached_tokens
        return {
            "candidates": [candidate],
            "usageMetadata": usage,
            "modelVersion": "gemini-1.5-flash-002",
            "responseId": "mock-gemini-response",
        }


def _gemini_error(code: int, message: str, status: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "status": status}}
