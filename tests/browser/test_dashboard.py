"""The dashboard in a real browser: after known traffic, Chromium signs in through its form and
sees the right totals.

setUpModule starts, on loopback: a mock OpenAI upstream that answers the fixture
tests/fixtures/openai/completion.json for `gpt-4o-mini` and OpenAI's 400 for any other model, and
the `llm-proxy` binary with a store on a temporary SQLite file and DASHBOARD_TOKEN set. The test
sends 5 requests that succeed and 2 that fail, waits until the dashboard counts them all, then
drives Chromium over the DevTools protocol (the helpers of test_browser.py) and keeps a screenshot
in target/browser/dashboard.png.
"""

from __future__ import annotations

import base64
import html
import json
import os
import re
import tempfile
import time
import unittest
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from test_browser import (BROWSER_TIMEOUT_SECONDS, CHROMIUM, REPO_ROOT, TARGET_DIR, Chromium,
                          Proxy, origin, serve)

TOKEN = "dash-browser-4f0c2a9e71b3d865"
KEY = "sk-browser-dashboard-8e21c7"
FIXTURE = (REPO_ROOT / "tests" / "fixtures" / "openai" / "completion.json").read_bytes()
MODEL_ERROR = json.dumps({"error": {"message": "The model does not exist",
                                    "code": "model_not_found", "type": "invalid_request_error",
                                    "param": "model"}}).encode()
SUCCEEDING, FAILING = 5, 2
SCREENSHOT = TARGET_DIR / "browser" / "dashboard.png"
# The fixture's usage is 19 tokens in and 9 out, $0.00000825 at the shipped price.
EXPECTED = {"requests": "7", "errors": "2", "error_rate": "28.6", "input_tokens": "95",
            "output_tokens": "45", "tokens": "140", "cost_usd": "0.000041"}


class MockOpenAI(BaseHTTPRequestHandler):
    """`POST /v1/chat/completions`: the fixture for `gpt-4o-mini`, a 400 for any other model."""

    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
        known = body.get("model") == "gpt-4o-mini"
        status, answer = (200, FIXTURE) if known else (400, MODEL_ERROR)
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass


mock: ThreadingHTTPServer
proxy: Proxy


def setUpModule() -> None:
    global mock, proxy
    if not os.access(CHROMIUM, os.X_OK):
        raise RuntimeError(f"{CHROMIUM} is missing: install Debian's `chromium` "
                           "(tests/browser/run does)")
    mock = serve(MockOpenAI)
    store = tempfile.TemporaryDirectory(prefix="llm-proxy-dashboard-")
    proxy = Proxy({
        "OPENAI_BASE_URL": f"{origin(mock)}/v1",
        "DATABASE_URL": f"sqlite://{store.name}/usage.db",
        "DASHBOARD_TOKEN": TOKEN,
        "MAX_RETRIES": "0",
    })
    # Cleanups run last-added first: the proxy stops (writing its last records) before its
    # store's directory goes.
    unittest.addModuleCleanup(store.cleanup)
    unittest.addModuleCleanup(proxy.stop)


def complete(model: str) -> int:
    """One Chat Completions request through the proxy; its status."""
    request = urllib.request.Request(
        f"{proxy.url}/v1/chat/completions", method="POST",
        data=json.dumps({"model": f"openai/{model}",
                         "messages": [{"role": "user", "content": "hi"}]}).encode(),
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {KEY}"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            response.read()
            return response.status
    except urllib.error.HTTPError as error:
        error.read()
        return error.code


def totals(page: str) -> dict[str, str]:
    """Every `<span data-total="name">value</span>` of the page."""
    return {name: html.unescape(value)
            for name, value in re.findall(r'data-total="([a-z0-9_]+)">([^<]*)<', page)}


def dashboard_once_it_counts(requests: int, timeout: float = 10) -> dict[str, str]:
    """The dashboard's totals once it counts `requests`: records reach the store in batches,
    a moment after their answers."""
    deadline = time.monotonic() + timeout
    while True:
        request = urllib.request.Request(f"{proxy.url}/dashboard",
                                         headers={"Authorization": f"Bearer {TOKEN}"})
        with urllib.request.urlopen(request, timeout=30) as response:
            shown = totals(response.read().decode())
        if shown.get("requests") == str(requests) or time.monotonic() > deadline:
            return shown
        time.sleep(0.05)


def evaluate(browser: Chromium, session: str, expression: str) -> object:
    result = browser.call("Runtime.evaluate", {"expression": expression, "returnByValue": True},
                          session)
    if "exceptionDetails" in result:
        raise AssertionError(f"{expression}: {result['exceptionDetails']}")
    return result["result"].get("value")


class DashboardTest(unittest.TestCase):
    def test_dashboard_signed_in_through_its_form_shows_the_totals_of_known_traffic(self) -> None:
        statuses = [complete("gpt-4o-mini") for _ in range(SUCCEEDING)]
        statuses += [complete("gpt-does-not-exist") for _ in range(FAILING)]
        self.assertEqual(statuses, [200] * SUCCEEDING + [400] * FAILING)
        self.assertEqual(dashboard_once_it_counts(SUCCEEDING + FAILING)["requests"], "7")

        browser = Chromium()
        try:
            session = browser.new_page()
            browser.call("Emulation.setDeviceMetricsOverride",
                         {"width": 1280, "height": 900, "deviceScaleFactor": 1, "mobile": False},
                         session)
            navigated = browser.call("Page.navigate", {"url": f"{proxy.url}/dashboard"}, session)
            self.assertNotIn("errorText", navigated)
            browser.wait_for_event("Page.loadEventFired", session)
            self.assertEqual(evaluate(browser, session, "document.title"),
                             "Sign in · llm-proxy dashboard")

            # Typed into the field as keystrokes would, then the page's own button.
            evaluate(browser, session, "document.getElementById('token').focus()")
            browser.call("Input.insertText", {"text": TOKEN}, session)
            evaluate(browser, session, "document.querySelector('button[type=submit]').click()")
            browser.wait_for_event("Page.loadEventFired", session)

            self.assertEqual(evaluate(browser, session, "location.pathname"), "/dashboard")
            # The cookie is HttpOnly: the page's scripts (it has none) could not read it.
            self.assertEqual(evaluate(browser, session, "document.cookie"), "")
            page = evaluate(browser, session, "document.documentElement.outerHTML")
            assert isinstance(page, str)
            shown = totals(page)
            for name, value in EXPECTED.items():
                self.assertEqual(shown.get(name), value, f"{name}: {shown}")
            self.assertNotIn(TOKEN, page)
            self.assertNotIn(KEY, page)

            size = browser.call("Page.getLayoutMetrics", {}, session)["cssContentSize"]
            shot = browser.call("Page.captureScreenshot", {
                "format": "png", "captureBeyondViewport": True,
                "clip": {"x": 0, "y": 0, "width": size["width"], "height": size["height"],
                         "scale": 1}}, session, timeout=BROWSER_TIMEOUT_SECONDS)
            SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
            SCREENSHOT.write_bytes(base64.b64decode(shot["data"]))
            print(f"\nscreenshot: {SCREENSHOT}")
        finally:
            browser.close()


if __name__ == "__main__":
    unittest.main()
