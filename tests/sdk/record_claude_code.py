"""Records what Claude Code sends: `python tests/sdk/record_claude_code.py [MODEL]`.

Runs Claude Code (installed by tests/sdk/run) against the Anthropic mock directly, no proxy,
through the same Bash tool loop as test_claude_code.py, and writes the request that carries the
tool result, scrubbed of ids, paths and the kernel version, to
tests/fixtures/anthropic/claude_code_request.json (the body) and
claude_code_request.headers.json (method, target, headers). MODEL defaults to
openai/gpt-4o-mini: for a model name it does not know, Claude Code asks for adaptive thinking
and `output_config.effort`, which a translating proxy has to handle.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

import claude_code
from mock_upstreams import AnthropicUpstream, ToolCall
from proxy_process import REPO_ROOT

FIXTURES = REPO_ROOT / "tests" / "fixtures" / "anthropic"
KEY = "sk-ant-api03-test"
ZERO_UUID = "00000000-0000-0000-0000-000000000000"
#: Headers that say nothing about Claude Code's request, or that change with every run.
DROPPED_HEADERS = {"host", "content-length", "connection"}


def scrub(text: str) -> str:
    text = re.sub(r"/tmp/llm-proxy-claude-code-[^/\s\"\\]+/work", "/home/user/project", text)
    text = re.sub(r"/tmp/llm-proxy-claude-code-[^/\s\"\\]+", "/home/user", text)
    text = re.sub(r"OS Version: [^\n\\]+", "OS Version: Linux 6.1.0", text)
    text = re.sub(r'(\\?"device_id\\?":\\?")[0-9a-f]+', r"\g<1>" + "0" * 64, text)
    return re.sub(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", ZERO_UUID,
                  text)


def scrubbed(value: Any) -> Any:
    return json.loads(scrub(json.dumps(value, ensure_ascii=False)))


def main() -> None:
    if reason := claude_code.missing_reason():
        sys.exit(reason)
    model = sys.argv[1] if len(sys.argv) > 1 else "openai/gpt-4o-mini"
    upstream = AnthropicUpstream(["The command printed the greeting."], prompt_tokens=25,
                                 completion_tokens=8).start()
    try:
        upstream.tool_calls = [ToolCall("Bash", {"command": "echo hello",
                                                 "description": "Print hello"})]
        run = claude_code.run(upstream.origin, model, "run echo hello", KEY)
        if run.returncode != 0:
            sys.exit(f"claude exited with {run.returncode}:\n{run.stdout}\n{run.stderr}")
        request = next(r for r in reversed(upstream.requests)
                       if upstream.ends_with_tool_result(r.body))
    finally:
        upstream.stop()
    headers = {name: value for name, value in sorted(request.headers.items())
               if name not in DROPPED_HEADERS}
    FIXTURES.mkdir(parents=True, exist_ok=True)
    (FIXTURES / "claude_code_request.json").write_text(
        json.dumps(scrubbed(request.body), indent=2, ensure_ascii=False) + "\n")
    (FIXTURES / "claude_code_request.headers.json").write_text(json.dumps(
        scrubbed({"method": request.method, "target": request.target, "headers": headers}),
        indent=2) + "\n")
    print(f"recorded {request.method} {request.target} from Claude Code {claude_code.VERSION}")


if __name__ == "__main__":
    main()
