"""Claude Code through the proxy's `/v1/messages` door, to Anthropic, OpenAI and Gemini upstreams.

`claude -p "run echo hello"` with ANTHROPIC_BASE_URL at the proxy and ANTHROPIC_MODEL a
`provider/model`: the upstream mock first asks for the Bash tool with `echo hello`, Claude Code
runs it and sends the result, the mock answers with the final text. Each test asserts Claude
Code's JSON result and that the tool result with "hello" reached the upstream in its own
format. Skips, saying why, when Claude Code is not installed (see claude_code.py).
tests/fixtures/anthropic/claude_code_request.json is one real request it sends
(record_claude_code.py records it again).
"""

from __future__ import annotations

import json
import unittest
from typing import Any

import claude_code
import harness
from harness import KEY, Upstreams
from mock_upstreams import MockUpstream, RecordedRequest, ToolCall
from proxy_process import ProxyProcess

PROMPT = "run echo hello"
ECHO_HELLO = ToolCall("Bash", {"command": "echo hello", "description": "Print hello"})
FINAL_TEXT = "The command printed the greeting."

upstreams: Upstreams
proxy: ProxyProcess


def setUpModule() -> None:
    global upstreams, proxy
    if reason := claude_code.missing_reason():
        raise unittest.SkipTest(reason)
    upstreams, proxy = harness.start()


def tearDownModule() -> None:
    harness.stop(proxy)


class ClaudeCodeTests:
    """Claude Code's side; a provider's TestCase sets MODEL and `upstream`."""

    MODEL: str
    maxDiff = None

    @property
    def upstream(self) -> MockUpstream:
        raise NotImplementedError

    def setUp(self) -> None:
        upstreams.reset()

    def test_claude_code_runs_bash_and_answers_through_the_proxy(self) -> None:
        self.upstream.tool_calls = [ECHO_HELLO]
        self.upstream.pieces = [FINAL_TEXT[:11], FINAL_TEXT[11:]]
        run = claude_code.run(proxy.origin, self.MODEL, PROMPT, KEY)
        result = run.result
        context = f"claude: {run.stdout}\n{run.stderr}\nproxy log:\n{proxy.log}"
        self.assertEqual(run.returncode, 0, context)
        self.assertEqual((result["type"], result["subtype"], result["is_error"]),
                         ("result", "success", False), context)
        self.assertEqual(result["result"], FINAL_TEXT, context)
        self.assertEqual(result["num_turns"], 2, context)

        requests = self.upstream.requests
        self.assertGreaterEqual(len(requests), 2, requests)
        self.assertFalse(self.upstream.ends_with_tool_result(requests[0].body))
        self.assert_hello_came_back(requests[-1])
        others = [u for u in upstreams.all() if u is not self.upstream and u.requests]
        self.assertEqual(others, [], "Claude Code's requests all go to the one upstream")

    def assert_hello_came_back(self, request: RecordedRequest) -> None:
        """The last request carries the Bash output, "hello", as a tool result."""
        raise NotImplementedError


class AnthropicUpstreamClaudeCodeTests(ClaudeCodeTests, unittest.TestCase):
    MODEL = "anthropic/claude-sonnet-4-5"

    @property
    def upstream(self) -> MockUpstream:
        return upstreams.anthropic

    def assert_hello_came_back(self, request: RecordedRequest) -> None:
        self.assertEqual(request.path, "/v1/messages")
        self.assertEqual(request.query.get("beta"), ["true"])
        self.assertIn("claude-code-20250219", request.headers.get("anthropic-beta", ""))
        self.assertEqual(request.body["model"], "claude-sonnet-4-5")
        (result,) = [block for block in request.body["messages"][-1]["content"]
                     if block["type"] == "tool_result"]
        self.assertEqual(result["tool_use_id"], upstreams.anthropic.tool_call_id(0))
        self.assertTrue(text_of(result["content"]).startswith("hello"), result)


class OpenAIUpstreamClaudeCodeTests(ClaudeCodeTests, unittest.TestCase):
    MODEL = "openai/gpt-4o-mini"

    @property
    def upstream(self) -> MockUpstream:
        return upstreams.openai

    def assert_hello_came_back(self, request: RecordedRequest) -> None:
        self.assertEqual(request.path, "/v1/chat/completions")
        self.assertEqual(request.body["model"], "gpt-4o-mini")
        self.assertIn("Bash", [tool["function"]["name"] for tool in request.body["tools"]])
        tool_messages = [m for m in request.body["messages"] if m["role"] == "tool"]
        self.assertEqual([m["tool_call_id"] for m in tool_messages],
                         [upstreams.openai.tool_call_id(0)])
        self.assertTrue(text_of(tool_messages[0]["content"]).startswith("hello"),
                        tool_messages)


class GeminiUpstreamClaudeCodeTests(ClaudeCodeTests, unittest.TestCase):
    MODEL = "gemini/gemini-2.5-flash"

    @property
    def upstream(self) -> MockUpstream:
        return upstreams.gemini

    def assert_hello_came_back(self, request: RecordedRequest) -> None:
        self.assertTrue(request.path.endswith("/models/gemini-2.5-flash:streamGenerateContent")
                        or request.path.endswith("/models/gemini-2.5-flash:generateContent"),
                        request.path)
        declarations = [d["name"] for tool in request.body["tools"]
                        for d in tool.get("functionDeclarations", [])]
        self.assertIn("Bash", declarations)
        responses = [part["functionResponse"] for part in request.body["contents"][-1]["parts"]
                     if "functionResponse" in part]
        self.assertEqual([response["name"] for response in responses], ["Bash"])
        self.assertIn("hello", json.dumps(responses[0]["response"]))


def text_of(content: Any) -> str:
    """A tool result's content as text: a string, or a list of text parts."""
    if isinstance(content, str):
        return content
    return "".join(part.get("text", "") for part in content)


if __name__ == "__main__":
    unittest.main()
