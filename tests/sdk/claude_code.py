"""Claude Code, the npm package tests/sdk/run installs into target/claude-code, run headless.

`run(base_url, model, prompt)` runs `claude -p PROMPT --output-format json` against an
Anthropic-compatible base URL, allowed to use Bash without asking, in throwaway HOME, TMPDIR
and working directory, with telemetry, error reports, auto-update and other nonessential
traffic off: the only connection it makes is to the base URL.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from proxy_process import TARGET_DIR

VERSION = "2.1.332"
BINARY = TARGET_DIR / "claude-code" / "node_modules" / ".bin" / "claude"
TIMEOUT_SECONDS = 120
#: The mocks answer with a Bash call for as long as no tool result came back; a proxy that lost
#: the result would loop, so the turns are bounded.
MAX_TURNS = 4


def missing_reason() -> str | None:
    """Why Claude Code cannot run here, or None when it can."""
    if not BINARY.is_file():
        return (f"Claude Code is not installed at {BINARY}: tests/sdk/run installs "
                f"@anthropic-ai/claude-code@{VERSION} there with npm")
    return None


@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str

    @property
    def result(self) -> dict[str, Any]:
        """The `--output-format json` object: `result`, `is_error`, `num_turns`, ..."""
        try:
            return json.loads(self.stdout)
        except ValueError:
            raise AssertionError(f"claude printed no JSON (exit {self.returncode}):\n"
                                 f"stdout: {self.stdout}\nstderr: {self.stderr}") from None


def run(base_url: str, model: str, prompt: str, key: str) -> Run:
    # Root may not use --dangerously-skip-permissions; --allowedTools Bash is enough here.
    with tempfile.TemporaryDirectory(prefix="llm-proxy-claude-code-") as scratch:
        home, tmp, work = (Path(scratch) / name for name in ("home", "tmp", "work"))
        for directory in (home, tmp, work):
            directory.mkdir()
        env = {
            "PATH": os.environ.get("PATH", ""),
            "HOME": str(home),
            "TMPDIR": str(tmp),
            "ANTHROPIC_BASE_URL": base_url,
            "ANTHROPIC_API_KEY": key,
            "ANTHROPIC_MODEL": model,
            # Any side request (titles, summaries) goes to the same model and upstream.
            "ANTHROPIC_DEFAULT_HAIKU_MODEL": model,
            "ANTHROPIC_SMALL_FAST_MODEL": model,
            "DISABLE_TELEMETRY": "1",
            "DISABLE_ERROR_REPORTING": "1",
            "DISABLE_AUTOUPDATER": "1",
            "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        }
        completed = subprocess.run(
            [str(BINARY), "-p", prompt, "--output-format", "json", "--allowedTools", "Bash",
             "--max-turns", str(MAX_TURNS), "--no-session-persistence"],
            cwd=work, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
            timeout=TIMEOUT_SECONDS,
        )
    return Run(completed.returncode, completed.stdout, completed.stderr)
