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

# Run the OpenAI SDK tests: the official `openai` Python package against the proxy and mocks.
test-sdk:
    bash tests/sdk/run

# Check formatting and lints, as CI does.
lint:
    cargo fmt --check
    cargo clippy --all-targets -- -D warnings

# Ask the running proxy for a chat through OpenAI, with OPENAI_API_KEY.
chat-openai model="gpt-4o-mini": (_chat "openai" "OPENAI_API_KEY" model "false")

# Ask the running proxy for a chat through Anthropic, with ANTHROPIC_API_KEY.
chat-anthropic model="claude-3-5-haiku-20241022": (_chat "anthropic" "ANTHROPIC_API_KEY" model "false")

# Stream a chat from the running proxy through OpenAI, with OPENAI_API_KEY.
stream-openai model="gpt-4o-mini": (_chat "openai" "OPENAI_API_KEY" model "true")

# Stream a chat from the running proxy through Anthropic, with ANTHROPIC_API_KEY.
stream-anthropic model="claude-3-5-haiku-20241022": (_chat "anthropic" "ANTHROPIC_API_KEY" model "true")

# `@` on every line: just never prints these commands, and the key is expanded only by the
# shell, inside curl's arguments.
[private]
_chat provider $KEY_VAR model stream:
    @if [ -z "${!KEY_VAR:-}" ]; then echo "error: $KEY_VAR is not set; export it or put it in .env" >&2; exit 1; fi
    @curl -sS -N --fail-with-body -w '\n' "http://localhost:${PORT:-8000}/v1/chat/{{ provider }}" \
        -H "X-API-Key: ${!KEY_VAR}" \
        -d '{"model": "{{ model }}", "stream": {{ stream }}, "max_tokens": 100, "messages": [{"role": "system", "content": "Answer in one short sentence."}, {"role": "user", "content": "What is an LLM proxy?"}]}'
