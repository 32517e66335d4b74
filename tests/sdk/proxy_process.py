"""The `llm-proxy` binary as a child process: started on port 0 in a clean directory and env."""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
# The `cargo build` output; LLM_PROXY_BIN runs another build (a release one, say) instead.
TARGET_DIR = Path(os.environ.get("CARGO_TARGET_DIR", REPO_ROOT / "target"))
BINARY = Path(os.environ.get("LLM_PROXY_BIN", TARGET_DIR / "debug" / "llm-proxy"))
LISTENING = re.compile(r"listening on http://127\.0\.0\.1:(\d+)")
START_TIMEOUT_SECONDS = 30
STOP_TIMEOUT_SECONDS = 15


class ProxyProcess:
    """The proxy, run with only the given variables plus HOST, PORT=0, WORKERS=1, RUST_LOG.

    It runs in a fresh temporary directory (so no `.env` is read), which also holds the
    providers file. Its stderr is drained by a thread for as long as it runs, and kept for
    failure messages.
    """

    def __init__(self, env: dict[str, str], providers: dict[str, Any]) -> None:
        if not BINARY.is_file():
            raise RuntimeError(f"{BINARY} is missing: run `cargo build` (tests/sdk/run does)")
        self._dir = tempfile.TemporaryDirectory(prefix="llm-proxy-sdk-")
        providers_file = Path(self._dir.name) / "providers.json"
        providers_file.write_text(json.dumps(providers, indent=2))
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._log: list[str] = []
        self._process = subprocess.Popen(
            [str(BINARY)],
            cwd=self._dir.name,
            env={"HOST": "127.0.0.1", "PORT": "0", "WORKERS": "1", "RUST_LOG": "info",
                 "PROVIDERS_FILE": str(providers_file), **env},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self._drainer = threading.Thread(target=self._drain_stderr, daemon=True)
        self._drainer.start()
        self.port = self._wait_for_port()

    @property
    def origin(self) -> str:
        """The proxy's root: the `anthropic` SDK and Claude Code add `/v1/messages` to it."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        """The OpenAI-compatible base URL, as the `openai` SDK takes it."""
        return f"{self.origin}/v1"

    @property
    def log(self) -> str:
        return "\n".join(self._log)

    def stop(self) -> int:
        """Sends SIGTERM and returns the exit code; kills the process if it does not exit."""
        if self._process.poll() is None:
            self._process.send_signal(signal.SIGTERM)
            try:
                self._process.wait(timeout=STOP_TIMEOUT_SECONDS)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._drainer.join(timeout=STOP_TIMEOUT_SECONDS)
        if self._process.stderr is not None:
            self._process.stderr.close()
        self._dir.cleanup()
        return self._process.returncode

    def _drain_stderr(self) -> None:
        assert self._process.stderr is not None
        for line in self._process.stderr:
            line = line.rstrip("\n")
            self._log.append(line)
            self._lines.put(line)
        self._lines.put(None)

    def _wait_for_port(self) -> int:
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while (remaining := deadline - time.monotonic()) > 0:
            try:
                line = self._lines.get(timeout=remaining)
            except queue.Empty:
                break
            if line is None:
                self._process.wait()
                raise RuntimeError(f"the proxy exited with {self._process.returncode} before "
                                   f"listening:\n{self.log}")
            if match := LISTENING.search(line):
                return int(match[1])
        self.stop()
        raise RuntimeError(f"the proxy did not log `listening on` in time:\n{self.log}")
