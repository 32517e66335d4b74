"""The `openai` package for Node: one streamed tool loop through the front door to Anthropic.

node/tool_loop.mjs runs the loop with the package pinned in node/package-lock.json (installed
by `npm ci` in tests/sdk/run); this module starts the same mocks and proxy as the Python tests,
runs the script, and asserts on the turns it prints and on what the Anthropic upstream got.
Skips, saying why, when node or the installed package is missing.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import unittest
from pathlib import Path
from typing import Any

import harness
from harness import KEY, Upstreams
from mock_upstreams import ToolCall
from proxy_process import ProxyProcess

NODE_DIR = Path(__file__).resolve().parent / "node"
SCRIPT_TIMEOUT_SECONDS = 60
PARIS = ToolCall("get_weather", {"city": "Paris"})

upstreams: Upstreams
proxy: ProxyProcess


def setUpModule() -> None:
    global upstreams, proxy
    if shutil.which("node") is None:
        raise unittest.SkipTest("node is not installed: the Node SDK tests need node and npm")
    if not (NODE_DIR / "node_modules" / "openai" / "package.json").is_file():
        raise unittest.SkipTest(f"the openai package is not installed in {NODE_DIR}: run "
                                "`npm ci` there (tests/sdk/run does when npm is present)")
    upstreams, proxy = harness.start()


def tearDownModule() -> None:
    harness.stop(proxy)


def run_tool_loop(model: str) -> dict[str, Any]:
    result = subprocess.run(
        ["node", "tool_loop.mjs", proxy.base_url, model],
        cwd=NODE_DIR,
        env={"PATH": os.environ.get("PATH", ""), "LLM_PROXY_TEST_KEY": KEY},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=SCRIPT_TIMEOUT_SECONDS,
    )
    if result.returncode != 0:
        raise AssertionError(f"node tool_loop.mjs exited with {result.returncode}:\n"
                             f"{result.stderr}\nproxy log:\n{proxy.log}")
    return json.loads(result.stdout)


class NodeToolLoopTests(unittest.TestCase):
    maxDiff = None

    def setUp(self) -> None:
        upstreams.reset()

    def test_a_streamed_tool_loop_against_anthropic(self) -> None:
        upstreams.anthropic.tool_calls = [PARIS]
        turns = run_tool_loop("anthropic/claude-sonnet-4-5")

        first = turns["first"]
        self.assertEqual(first["finishReasons"], ["tool_calls"])
        (call,) = first["calls"]
        self.assertEqual((call["index"], call["name"]), (0, "get_weather"))
        self.assertEqual((call["deltasWithId"], call["deltasWithName"]), (1, 1),
                         "id and name come once, on the call's first delta")
        self.assertEqual(json.loads(call["arguments"]), {"city": "Paris"})
        self.assertEqual(first["content"], "")

        final = turns["final"]
        self.assertEqual(final["calls"], [])
        self.assertEqual(final["content"], upstreams.anthropic.text)
        self.assertEqual(final["finishReasons"], ["stop"])
        self.assertEqual(final["usage"]["completion_tokens"],
                         upstreams.anthropic.completion_tokens)

        opening, closing = upstreams.anthropic.requests
        self.assertIs(opening.body["stream"], True)
        self.assertEqual([tool["name"] for tool in opening.body["tools"]], ["get_weather"])
        tool_use = closing.body["messages"][1]["content"][-1]
        self.assertEqual((tool_use["type"], tool_use["id"], tool_use["input"]),
                         ("tool_use", call["id"], {"city": "Paris"}))
        (result,) = closing.body["messages"][2]["content"]
        self.assertEqual((result["type"], result["tool_use_id"]), ("tool_result", call["id"]))
        self.assertIn("sunny", json.dumps(result["content"]))


if __name__ == "__main__":
    unittest.main()
