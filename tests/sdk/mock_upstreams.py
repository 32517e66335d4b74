"""Mock LLM providers on loopback, each speaking its provider's documented wire format.

Every mock records each request it receives (method, path, headers, JSON body), so a test can
assert what the upstream saw, and answers with a canned reply in its provider's own format:
JSON with a Content-Length, or server-sent events with chunked transfer encoding (an HTTP/1.1
response with neither would reach the proxy's client as an empty body). A test can replace the
reply, for example with the provider's real 401 or 429 error body, until the next `reset()`.
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


class MockUpstream:
    """A threaded HTTP/1.1 server on 127.0.0.1, port 0, that records requests and answers them.

    Subclasses implement `reply_to(request)` in their provider's wire format. The canned answer
    is `text` (streamed as `pieces`), with `prompt_tokens` and `completion_tokens` as usage and
    `finish_reason` in the provider's own vocabulary.
    """

    default_finish_reason = ""

    def __init__(self, pieces: list[str], prompt_tokens: int, completion_tokens: int) -> None:
        self.pieces = pieces
        self.prompt_tokens = prompt_tokens
        self.completion_tokens = completion_tokens
        self.finish_reason = self.default_finish_reason
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

    def reset(self) -> None:
        """Forgets the recorded requests and goes back to the canned successful answer."""
        with self._lock:
            self._requests.clear()
            self._override = None
        self.finish_reason = self.default_finish_reason

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
    """`POST {base}/chat/completions`: a `chat.completion`, or `chat.completion.chunk` events."""

    default_finish_reason = "stop"

    def reply_to(self, request: RecordedRequest) -> Reply:
        if request.method != "POST" or not request.path.endswith("/chat/completions"):
            message = f"Invalid URL ({request.method} {request.path})"
            return JsonReply(404, _openai_error(message, "invalid_request_error", code=None))
        body = request.body or {}
        model = body.get("model", "")
        if body.get("stream"):
            include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
            return EventStreamReply(self._chunk_events(model, include_usage))
        return JsonReply(200, self._completion(model))

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

    def _usage(self) -> dict[str, Any]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
        }

    def _completion(self, model: str) -> dict[str, Any]:
        return {
            "id": "chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT",
            "object": "chat.completion",
            "created": 1741569952,
            "model": model,
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": self.text, "refusal": None,
                            "annotations": []},
                "logprobs": None,
                "finish_reason": self.finish_reason,
            }],
            "usage": self._usage(),
            "service_tier": "default",
            "system_fingerprint": "fp_06737a9306",
        }

    def _chunk_events(self, model: str, include_usage: bool) -> list[str]:
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

        chunks = [chunk({"role": "assistant", "content": "", "refusal": None}, None)]
        chunks += [chunk({"content": piece}, None) for piece in self.pieces]
        chunks.append(chunk({}, self.finish_reason))
        if include_usage:
            chunks.append({**chunk({}, None), "choices": [], "usage": self._usage()})
        return [f"data: {to_json(c)}\n\n" for c in chunks] + ["data: [DONE]\n\n"]


def _openai_error(message: str, type_: str, code: str | None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": None, "code": code}}


# --- Anthropic Messages ---------------------------------------------------------------------


class AnthropicUpstream(MockUpstream):
    """`POST {base}/messages`: a `message`, or the typed event sequence of a streamed message."""

    default_finish_reason = "end_turn"

    def reply_to(self, request: RecordedRequest) -> Reply:
        if request.method != "POST" or not request.path.endswith("/messages"):
            return JsonReply(404, _anthropic_error("not_found_error", "Not found"))
        body = request.body or {}
        model = body.get("model", "")
        if body.get("stream"):
            return EventStreamReply(self._events(model))
        return JsonReply(200, self._message(model))

    def answer_invalid_key(self) -> None:
        self.answer_with(401, _anthropic_error("authentication_error", "invalid x-api-key"))

    def answer_rate_limited(self) -> None:
        self.answer_with(429, _anthropic_error(
            "rate_limit_error",
            "This request would exceed the rate limit for your organization of 50 requests "
            "per minute. For details, refer to: https://docs.claude.com/en/api/rate-limits."),
            {"retry-after": "12", "anthropic-ratelimit-requests-limit": "50"})

    def _message(self, model: str) -> dict[str, Any]:
        return {
            "id": "msg_013Zva2CMHLNnXjNJJKqJ2EF",
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [{"type": "text", "text": self.text}],
            "stop_reason": self.finish_reason,
            "stop_sequence": None,
            "usage": {"input_tokens": self.prompt_tokens, "output_tokens": self.completion_tokens},
        }

    def _events(self, model: str) -> list[str]:
        start = {**self._message(model), "content": [], "stop_reason": None,
                 "usage": {"input_tokens": self.prompt_tokens, "output_tokens": 1}}
        events = [
            ("message_start", {"type": "message_start", "message": start}),
            ("content_block_start", {"type": "content_block_start", "index": 0,
                                     "content_block": {"type": "text", "text": ""}}),
            ("ping", {"type": "ping"}),
        ]
        events += [("content_block_delta", {"type": "content_block_delta", "index": 0,
                                            "delta": {"type": "text_delta", "text": piece}})
                   for piece in self.pieces]
        events += [
            ("content_block_stop", {"type": "content_block_stop", "index": 0}),
            ("message_delta", {"type": "message_delta",
                               "delta": {"stop_reason": self.finish_reason,
                                         "stop_sequence": None},
                               "usage": {"output_tokens": self.completion_tokens}}),
            ("message_stop", {"type": "message_stop"}),
        ]
        return [f"event: {name}\ndata: {to_json(data)}\n\n" for name, data in events]


def _anthropic_error(type_: str, message: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": type_, "message": message}}


# --- Gemini generateContent -----------------------------------------------------------------

_GEMINI_METHOD = re.compile(r"/models/(?P<model>[^/:]+):(?P<method>generateContent|"
                            r"streamGenerateContent)$")


class GeminiUpstream(MockUpstream):
    """`POST {base}/models/{model}:generateContent` and `:streamGenerateContent?alt=sse`.

    As the real API does, a stream without `alt=sse` is a JSON array of responses, a stream's
    chunks carry a running `usageMetadata` (the last one complete, with the `finishReason`),
    and a candidate blocked for SAFETY has no content.
    """

    default_finish_reason = "STOP"

    def reply_to(self, request: RecordedRequest) -> Reply:
        match = _GEMINI_METHOD.search(request.path)
        if request.method != "POST" or not match:
            return JsonReply(404, _gemini_error(404, f"Not found: {request.path}", "NOT_FOUND"))
        if match["method"] == "generateContent":
            return JsonReply(200, self._response(self.text, self.finish_reason, final=True))
        chunks = self._stream_chunks()
        if request.query.get("alt") != ["sse"]:
            return JsonReply(200, chunks)
        return EventStreamReply([f"data: {to_json(c)}\r\n\r\n" for c in chunks])

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

    def _stream_chunks(self) -> list[dict[str, Any]]:
        *first, last = self.pieces
        chunks = [self._response(piece, None, final=False) for piece in first]
        return chunks + [self._response(last, self.finish_reason, final=True)]

    def _response(self, text: str, finish_reason: str | None, final: bool) -> dict[str, Any]:
        candidate: dict[str, Any] = {"index": 0}
        if finish_reason != "SAFETY":
            candidate["content"] = {"parts": [{"text": text}], "role": "model"}
        if finish_reason:
            candidate["finishReason"] = finish_reason
        usage = {"promptTokenCount": self.prompt_tokens, "totalTokenCount": self.prompt_tokens}
        if final and finish_reason != "SAFETY":
            usage = {"promptTokenCount": self.prompt_tokens,
                     "candidatesTokenCount": self.completion_tokens,
                     "totalTokenCount": self.prompt_tokens + self.completion_tokens}
        return {
            "candidates": [candidate],
            "usageMetadata": usage,
            "modelVersion": "gemini-1.5-flash-002",
            "responseId": "mock-gemini-response",
        }


def _gemini_error(code: int, message: str, status: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "status": status}}
