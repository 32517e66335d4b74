"""Browser access, tested with a real browser: headless Chromium runs page.html, a browser app
that streams a chat from the proxy with `fetch`, and the tests assert on what the page shows.

setUpModule starts, all on loopback: a mock OpenAI upstream that streams a few SSE events; two
static servers for the page, on ports of their own, so each is an origin other than the
proxy's; and the `llm-proxy` binary (`cargo build`'s) with CORS_ALLOW_ORIGINS naming only the
first. Each test opens the page from one of the two in a fresh headless Chromium, waits over the
DevTools protocol until the page has settled (no sleeps, no virtual time: `--dump-dom` with
`--virtual-time-budget` dumps while a streamed body is still arriving), and reads its DOM.
Standard library only; tests/browser/run builds the proxy and installs Chromium when missing.
"""

from __future__ import annotations

import functools
import html
import json
import os
import queue
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import unittest
from http.server import BaseHTTPRequestHandler, SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[1]
TARGET_DIR = Path(os.environ.get("CARGO_TARGET_DIR", REPO_ROOT / "target"))
BINARY = Path(os.environ.get("LLM_PROXY_BIN", TARGET_DIR / "debug" / "llm-proxy"))
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
KEY = "sk-browser-3b9e6f1c0a7d4e52"
PIECES = ["Hello", " from", " the", " proxy,", " browser!"]
REMAINING_REQUESTS = "4999"
# Real time between two upstream events: long enough that the page sees them as separate reads.
EVENT_GAP_SECONDS = 0.1
START_TIMEOUT_SECONDS = 30
BROWSER_TIMEOUT_SECONDS = 90
LISTENING = re.compile(r"listening on http://127\.0\.0\.1:(\d+)")


def stream_events() -> list[bytes]:
    """An OpenAI Chat Completions stream of PIECES, as OpenAI sends it."""
    def chunk(delta: dict, finish_reason: str | None) -> bytes:
        event = {"id": "chatcmpl-browser", "object": "chat.completion.chunk", "created": 1,
                 "model": "gpt-4o-mini-2024-07-18",
                 "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}]}
        return f"data: {json.dumps(event, separators=(',', ':'))}\n\n".encode()

    events = [chunk({"role": "assistant", "content": ""}, None)]
    events += [chunk({"content": piece}, None) for piece in PIECES]
    events += [chunk({}, "stop"), b"data: [DONE]\n\n"]
    return events


class MockOpenAI(BaseHTTPRequestHandler):
    """`POST /v1/chat/completions`: a stream of `stream_events()`, chunked, one event a write.
    Every request is recorded as (method, path, lower-cased headers)."""

    protocol_version = "HTTP/1.1"
    recorded: list[tuple[str, str, dict[str, str]]] = []
    lock = threading.Lock()

    def record(self) -> None:
        with self.lock:
            headers = {name.lower(): value for name, value in self.headers.items()}
            self.recorded.append((self.command, self.path, headers))

    def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
        self.record()
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("x-ratelimit-remaining-requests", REMAINING_REQUESTS)
        self.end_headers()
        for event in stream_events():
            self.wfile.write(b"%x\r\n%s\r\n" % (len(event), event))
            self.wfile.flush()
            time.sleep(EVENT_GAP_SECONDS)
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def do_OPTIONS(self) -> None:  # noqa: N802
        # Never expected: the proxy answers preflights itself. Recorded so a test can see it.
        self.record()
        self.send_response(500)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass


class QuietFiles(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass


def serve(handler: Callable[..., BaseHTTPRequestHandler]) -> ThreadingHTTPServer:
    """`handler` on a free loopback port, served by a daemon thread until the module ends."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    unittest.addModuleCleanup(server.server_close)
    unittest.addModuleCleanup(server.shutdown)
    return server


def origin(server: ThreadingHTTPServer) -> str:
    return f"http://127.0.0.1:{server.server_address[1]}"


class Proxy:
    """The binary, with only the given variables and HOST, PORT=0, WORKERS=1, RUST_LOG, run in
    a fresh directory (so no `.env` is read). A thread drains its stderr into `lines`."""

    def __init__(self, env: dict[str, str]) -> None:
        if not BINARY.is_file():
            raise RuntimeError(f"{BINARY} is missing: run `cargo build` (tests/browser/run does)")
        self._dir = tempfile.TemporaryDirectory(prefix="llm-proxy-browser-")
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.log: list[str] = []
        self._process = subprocess.Popen(
            [str(BINARY)], cwd=self._dir.name,
            env={"HOST": "127.0.0.1", "PORT": "0", "WORKERS": "1", "RUST_LOG": "info", **env},
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            text=True)
        threading.Thread(target=self._drain, daemon=True).start()
        line = self.wait_for_line(LISTENING.search, START_TIMEOUT_SECONDS)
        self.url = f"http://127.0.0.1:{LISTENING.search(line)[1]}"

    def _drain(self) -> None:
        assert self._process.stderr is not None
        for line in self._process.stderr:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def wait_for_line(self, matches: Callable[[str], object], timeout: float) -> str:
        """The next stderr line that `matches`, waiting at most `timeout` seconds for it."""
        deadline = time.monotonic() + timeout
        while (remaining := deadline - time.monotonic()) > 0:
            try:
                line = self.lines.get(timeout=remaining)
            except queue.Empty:
                break
            if line is None:
                raise AssertionError(f"the proxy exited ({self._process.wait()}):\n"
                                     + "\n".join(self.log))
            self.log.append(line)
            if matches(line):
                return line
        raise AssertionError("no such line from the proxy:\n" + "\n".join(self.log))

    def stop(self) -> None:
        if self._process.poll() is None:
            self._process.send_signal(signal.SIGTERM)
            try:
                self._process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._dir.cleanup()


class Chromium:
    """Headless Chromium, driven over the DevTools protocol on a pipe (`--remote-debugging-pipe`,
    as Puppeteer does): JSON messages, each ending in a NUL byte; ours go to its fd 3, its own
    come from its fd 4. A fresh profile each time."""

    def __init__(self) -> None:
        self._profile = tempfile.mkdtemp(prefix="llm-proxy-chromium-")
        self._stderr = tempfile.TemporaryFile()
        commands, self._commands = os.pipe()
        self._replies, replies = os.pipe()
        flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--disable-dev-shm-usage", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync",
                 f"--user-data-dir={self._profile}", "--remote-debugging-pipe"]
        # subprocess cannot renumber descriptors, and preexec_fn is unsafe with threads: bash
        # moves the two pipe ends to 3 and 4 before it becomes Chromium.
        self._process = subprocess.Popen(
            ["bash", "-c", f'exec "$0" "$@" 3<&{commands} 4>&{replies} {commands}<&- {replies}>&-',
             CHROMIUM, *flags],
            pass_fds=(commands, replies), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=self._stderr)
        os.close(commands)
        os.close(replies)
        self._messages: queue.Queue[dict | None] = queue.Queue()
        self._events: list[dict] = []
        self._next_id = 0
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        pending = b""
        while chunk := os.read(self._replies, 65536):
            pending += chunk
            *messages, pending = pending.split(b"\0")
            for message in messages:
                self._messages.put(json.loads(message))
        self._messages.put(None)

    def _next_message(self, deadline: float) -> dict:
        try:
            message = self._messages.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            raise AssertionError(f"chromium did not answer in time:\n{self.log()}") from None
        if message is None:
            raise AssertionError(f"chromium exited ({self._process.wait()}):\n{self.log()}")
        return message

    def call(self, method: str, params: dict, session: str | None = None,
             timeout: float = BROWSER_TIMEOUT_SECONDS) -> dict:
        """Sends one command and returns its result; events that come first are kept."""
        self._next_id += 1
        command = {"id": self._next_id, "method": method, "params": params}
        if session is not None:
            command["sessionId"] = session
        os.write(self._commands, json.dumps(command).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while (message := self._next_message(deadline)).get("id") != self._next_id:
            self._events.append(message)
        if "error" in message:
            raise AssertionError(f"{method} failed: {message['error']}")
        return message["result"]

    def wait_for_event(self, method: str, session: str) -> dict:
        deadline = time.monotonic() + BROWSER_TIMEOUT_SECONDS
        while True:
            for event in self._events:
                if event.get("method") == method and event.get("sessionId") == session:
                    self._events.remove(event)
                    return event
            self._events.append(self._next_message(deadline))

    def log(self) -> str:
        self._stderr.seek(0)
        return self._stderr.read().decode(errors="replace")

    def new_page(self) -> str:
        """A new blank tab with its page events on: the session id to drive it by."""
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.call("Target.attachToTarget",
                            {"targetId": target, "flatten": True})["sessionId"]
        self.call("Page.enable", {}, session)
        return session

    def close(self) -> None:
        try:
            self.call("Browser.close", {}, timeout=10)
        except AssertionError:
            pass
        try:
            self._process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        os.close(self._commands)
        os.close(self._replies)
        self._stderr.close()
        shutil.rmtree(self._profile, ignore_errors=True)


def page_dom(url: str) -> str:
    """The DOM of the page at `url` once the page has settled (its `window.settled` promise,
    which ends when its fetch is done or has failed), as Chromium holds it."""
    browser = Chromium()
    try:
        session = browser.new_page()
        navigated = browser.call("Page.navigate", {"url": url}, session)
        if "errorText" in navigated:
            raise AssertionError(f"{url}: {navigated['errorText']}")
        browser.wait_for_event("Page.loadEventFired", session)
        settled = browser.call("Runtime.evaluate", {
            "expression": "window.settled.then(() => document.documentElement.outerHTML)",
            "awaitPromise": True, "returnByValue": True}, session)
        if "exceptionDetails" in settled:
            raise AssertionError(f"the page threw: {settled['exceptionDetails']}")
        return settled["result"]["value"]
    finally:
        browser.close()


def shown(dom: str, element_id: str) -> str:
    """The text of the element with this id, as the page shows it."""
    match = re.search(rf'id="{element_id}">(.*?)</', dom, re.DOTALL)
    if match is None:
        raise AssertionError(f"no #{element_id} in:\n{dom}")
    return html.unescape(match[1])


mock: ThreadingHTTPServer
allowed_page: ThreadingHTTPServer
other_page: ThreadingHTTPServer
proxy: Proxy


def setUpModule() -> None:
    global mock, allowed_page, other_page, proxy
    if not os.access(CHROMIUM, os.X_OK):
        raise RuntimeError(f"{CHROMIUM} is missing: install Debian's `chromium` "
                           "(tests/browser/run does)")
    mock = serve(MockOpenAI)
    files = functools.partial(QuietFiles, directory=str(HERE))
    allowed_page = serve(files)
    other_page = serve(files)
    proxy = Proxy({
        "OPENAI_BASE_URL": f"{origin(mock)}/v1",
        # A trailing slash, as people write it; the proxy trims it.
        "CORS_ALLOW_ORIGINS": f"https://app.example, {origin(allowed_page)}/",
        "MAX_RETRIES": "0",
    })
    unittest.addModuleCleanup(proxy.stop)


def page_url(page: ThreadingHTTPServer) -> str:
    return f"{origin(page)}/page.html?proxy={proxy.url}&key={KEY}"


def upstream_requests() -> list[tuple[str, str, dict[str, str]]]:
    with MockOpenAI.lock:
        return list(MockOpenAI.recorded)


def is_access_line(method: str, status: int) -> Callable[[str], bool]:
    return lambda line: (f"{method} /v1/chat/openai" in line
                         and re.search(rf"\bstatus[=\":]+{status}\b", line) is not None)


class BrowserTest(unittest.TestCase):
    def test_a_page_from_an_allowed_origin_shows_the_streamed_answer_and_the_provider(self) -> None:
        before = len(upstream_requests())
        dom = page_dom(page_url(allowed_page))

        self.assertEqual(shown(dom, "status"), "done", dom)
        self.assertEqual(shown(dom, "http-status"), "200", dom)
        # Response headers the page could read only because the proxy exposes them.
        self.assertEqual(shown(dom, "provider"), "openai", dom)
        self.assertEqual(shown(dom, "attempts"), "1", dom)
        self.assertEqual(shown(dom, "remaining"), REMAINING_REQUESTS, dom)
        # The upstream's stream, shown whole and as it came, in more than one piece.
        self.assertEqual(shown(dom, "output"), b"".join(stream_events()).decode(), dom)
        self.assertGreater(int(shown(dom, "reads")), 1, dom)

        # The browser asked first (the key header makes it), and the proxy answered that
        # itself: the upstream saw only the chat, with the key as OpenAI's auth.
        proxy.wait_for_line(is_access_line("OPTIONS", 204), START_TIMEOUT_SECONDS)
        requests = upstream_requests()[before:]
        self.assertEqual([(method, path) for method, path, _ in requests],
                         [("POST", "/v1/chat/completions")])
        self.assertEqual(requests[0][2]["authorization"], f"Bearer {KEY}")

    def test_a_page_from_another_origin_cannot_call_the_proxy(self) -> None:
        before = len(upstream_requests())
        dom = page_dom(page_url(other_page))

        self.assertEqual(shown(dom, "status"), "failed: TypeError: Failed to fetch", dom)
        self.assertEqual(shown(dom, "output"), "", dom)
        self.assertEqual(shown(dom, "provider"), "", dom)
        # Refused at the preflight: the chat itself was never sent, so no upstream call.
        proxy.wait_for_line(is_access_line("OPTIONS", 403), START_TIMEOUT_SECONDS)
        self.assertEqual(upstream_requests()[before:], [])


if __name__ == "__main__":
    unittest.main()
