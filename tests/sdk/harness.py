"""The mock upstreams and the proxy pointed at them, started once per test module.

Every SDK test module calls `start()` from its setUpModule: four mock upstreams (OpenAI;
"groq", an OpenAI-format provider from the providers file; Anthropic; Gemini), then the proxy
with its base URLs on them and two aliases. Cleanups are registered with unittest, so the
module needs no tearDownModule beyond `stop()`, which checks the proxy exits cleanly.
"""

from __future__ import annotations

import unittest
from dataclasses import dataclass

from mock_upstreams import AnthropicUpstream, GeminiUpstream, MockUpstream, OpenAIUpstream
from proxy_process import ProxyProcess

#: The key every client sends; the proxy passes it on to the upstream.
KEY = "sk-test-5f2c9a1e7b3d4c60"


@dataclass
class Upstreams:
    openai: OpenAIUpstream
    groq: OpenAIUpstream
    anthropic: AnthropicUpstream
    gemini: GeminiUpstream

    def all(self) -> list[MockUpstream]:
        return [self.openai, self.groq, self.anthropic, self.gemini]

    def reset(self) -> None:
        for upstream in self.all():
            upstream.reset()


def start() -> tuple[Upstreams, ProxyProcess]:
    upstreams = Upstreams(
        openai=OpenAIUpstream(["Hello", " from", " OpenAI!"], prompt_tokens=19,
                              completion_tokens=9),
        groq=OpenAIUpstream(["Hi", " from", " Groq."], prompt_tokens=11, completion_tokens=5),
        anthropic=AnthropicUpstream(["¡Hola", "! 👋 ¿Qué tal?"], prompt_tokens=25,
                                    completion_tokens=15),
        gemini=GeminiUpstream(["Hello", " from", " Gemini."], prompt_tokens=8,
                              completion_tokens=7),
    )
    for upstream in upstreams.all():
        upstream.start()
        unittest.addModuleCleanup(upstream.stop)
    proxy = ProxyProcess(
        env={
            "OPENAI_BASE_URL": f"{upstreams.openai.origin}/v1",
            "ANTHROPIC_BASE_URL": f"{upstreams.anthropic.origin}/v1",
            "GEMINI_BASE_URL": f"{upstreams.gemini.origin}/v1beta",
            # The SDK must see each upstream error as it came: the proxy does not retry here.
            "MAX_RETRIES": "0",
        },
        providers={
            "providers": {
                "groq": {"kind": "openai", "base_url": f"{upstreams.groq.origin}/openai/v1",
                         "key_required": True, "headers": {"X-Title": "sdk-test"}},
            },
            "aliases": {
                "fast": {"provider": "groq", "model": "llama-3.1-8b-instant"},
                "smart": {"provider": "anthropic", "model": "claude-3-5-haiku-20241022"},
            },
        },
    )
    unittest.addModuleCleanup(proxy.stop)
    return upstreams, proxy


def stop(proxy: ProxyProcess) -> None:
    """Stops the proxy now and fails the module if it did not exit 0 on SIGTERM."""
    code = proxy.stop()
    if code != 0:
        raise AssertionError(f"the proxy exited with {code} after SIGTERM:\n{proxy.log}")
