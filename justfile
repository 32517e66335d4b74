# llm-proxy tasks. Install just with `cargo install just --locked`; `just` lists the recipes.

# Export .env, when present, to every recipe (PORT, OPENAI_API_KEY, ANTHROPIC_API_KEY, ...).
set dotenv-load

# bash for ${!KEY_VAR}: the chat recipes look their key up by name.
set shell := ["bash", "-uc"]

# List the recipes.
default:
    @{{ quote(just_executable()) }} --justfile {{ quote(justfile()) }} --list

# Run the proxy from source with debug logging.
dev:
    RUST_LOG=debug cargo run

# Run the proxy, optimized.
start:
    cargo run --release

# Run every test.
test:
    cargo test

# Arguments go to unittest, for example `just test-sdk -k gemini`.
# Run the OpenAI SDK tests: the official `openai` Python package against the proxy and mocks.
test-sdk *args:
    bash tests/sdk/run {{ args }}

# Check formatting and lints, as CI does.
lint:
    cargo fmt --check
    cargo clippy --all-targets -- -D warnings

# Ask the running proxy for a chat through OpenAI, with OPENAI_API_KEY.
chat-openai model="gpt-4o-mini": (_chat "openai" "OPENAI_API_KEY" model "false")

# Ask the running proxy for a chat through Anthropic, with ANTHROPIC_API_KEY.
chat-anthropic model="claude-haiku-4-5": (_chat "anthropic" "ANTHROPIC_API_KEY" model "false")

# Ask the running proxy for a chat through Gemini, with GEMINI_API_KEY.
chat-gemini model="gemini-flash-latest": (_chat "gemini" "GEMINI_API_KEY" model "false")

# Ask the running proxy for a chat through Ollama; no key needed.
chat-ollama model="llama3.2": (_chat "ollama" "" model "false")

# Stream a chat from the running proxy through OpenAI, with OPENAI_API_KEY.
stream-openai model="gpt-4o-mini": (_chat "openai" "OPENAI_API_KEY" model "true")

# Stream a chat from the running proxy through Anthropic, with ANTHROPIC_API_KEY.
stream-anthropic model="claude-haiku-4-5": (_chat "anthropic" "ANTHROPIC_API_KEY" model "true")

# Stream a chat from the running proxy through Gemini, with GEMINI_API_KEY.
stream-gemini model="gemini-flash-latest": (_chat "gemini" "GEMINI_API_KEY" model "true")

# Stream a chat from the running proxy through Ollama; no key needed.
stream-ollama model="llama3.2": (_chat "ollama" "" model "true")

# Ask the running proxy's OpenAI-compatible front door, with <PROVIDER>_API_KEY.
complete model="openai/gpt-4o-mini": (_complete model "false")

# Stream from the front door, usage chunk included, with <PROVIDER>_API_KEY.
complete-stream model="openai/gpt-4o-mini": (_complete model "true")

# List the running proxy's models: its aliases, then `provider/*` for each provider.
models:
    @curl -sS --fail-with-body -w '\n' "http://localhost:${PORT:-8000}/v1/models"

# `@` on every line: just never prints these commands, and the key is expanded only by the
# shell, inside curl's arguments. An empty KEY_VAR means the provider needs no key.
[private]
_chat provider $KEY_VAR model stream:
    @if [ -n "$KEY_VAR" ] && [ -z "${!KEY_VAR:-}" ]; then echo "error: $KEY_VAR is not set; export it or put it in .env" >&2; exit 1; fi
    @curl -sS -N --fail-with-body -w '\n' "http://localhost:${PORT:-8000}/v1/chat/{{ provider }}" \
        ${KEY_VAR:+-H "X-API-Key: ${!KEY_VAR}"} \
        -d '{"model": "{{ model }}", "stream": {{ stream }}, "max_tokens": 100, "messages": [{"role": "system", "content": "Answer in one short sentence."}, {"role": "user", "content": "What is an LLM proxy?"}]}'

# The key variable comes from the provider before the first `/` (an alias's provider is looked
# up in /v1/models): groq/... uses GROQ_API_KEY (`-` and `.` become `_`), ollama/... none. Set
# the variable empty for a provider declared with "key_required": false. A script recipe: just
# never prints its lines.
[private]
_complete $MODEL stream:
    #!/usr/bin/env bash
    set -euo pipefail
    proxy="http://localhost:${PORT:-8000}"
    if [[ $MODEL == */* ]]; then
        provider=${MODEL%%/*}
    else
        models=$(curl -sS --fail "$proxy/v1/models")
        provider=$(tr '{' '\n' <<<"$models" | grep -F "\"id\":\"$MODEL\"," | sed -n 's/.*"owned_by":"\([^"]*\)".*/\1/p' || true)
        if [[ -z $provider ]]; then
            echo "error: \"$MODEL\" is neither provider/model nor an alias the proxy at $proxy knows" >&2
            exit 1
        fi
    fi
    auth=()
    if [[ $provider != ollama ]]; then
        key_var=$(printf '%s_API_KEY' "$provider" | tr 'a-z.-' 'A-Z__')
        if [[ -z ${!key_var+set} ]]; then
            echo "error: $key_var is not set; export it or put it in .env (for $MODEL)" >&2
            exit 1
        fi
        if [[ -n ${!key_var} ]]; then
            auth=(-H "Authorization: Bearer ${!key_var}")
        fi
    fi
    usage=""
    if [[ {{ stream }} == true ]]; then
        usage='"stream_options": {"include_usage": true}, '
    fi
    curl -sS -N --fail-with-body -w '\n' "$proxy/v1/chat/completions" "${auth[@]}" \
        -d '{"model": "{{ MODEL }}", "stream": {{ stream }}, '"$usage"'"max_tokens": 100, "messages": [{"role": "system", "content": "Answer in one short sentence."}, {"role": "user", "content": "What is an LLM proxy?"}]}'

# (1,000 streams at once hold over 2,000 open files in each process: a low `ulimit -n` is raised.
# nginx, the yardstick, runs beside llm-proxy when it is on PATH; `just bench --only llm-proxy`
# or `--only nginx` measures one.)
# Benchmark the release proxy and nginx against a mock upstream (~4 min): tables and target/bench/*.json.
bench *args:
    cargo build --release
    if [ "$(ulimit -n)" -lt 8192 ]; then ulimit -n 8192 || echo "bench: the 1,000-stream run may fail"; fi; cargo bench --bench bench -- {{ args }}
