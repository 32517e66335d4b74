// One streamed tool loop with the official `openai` package for Node, as its README streams:
// the model calls get_weather, the script sends the result as a `tool` message, the model
// answers. Run by tests/sdk/test_node_sdk.py as `node tool_loop.mjs <base_url> <model>`, with
// the key in LLM_PROXY_TEST_KEY; it prints both turns as one JSON object on stdout.
import OpenAI from "openai";

const [baseURL, model] = process.argv.slice(2);
const client = new OpenAI({
  apiKey: process.env.LLM_PROXY_TEST_KEY,
  baseURL,
  maxRetries: 0,
  timeout: 10_000,
});
const tools = [{
  type: "function",
  function: {
    name: "get_weather",
    description: "Get the current weather in a city.",
    parameters: {
      type: "object",
      properties: { city: { type: "string" } },
      required: ["city"],
    },
  },
}];
const messages = [{ role: "user", content: "What is the weather in Paris?" }];

// Tool calls keyed by `index`, argument fragments appended, as the function-calling guide
// accumulates them; how many deltas carried an id and a name is counted too.
async function streamTurn() {
  const stream = await client.chat.completions.create({
    model, messages, tools, stream: true, stream_options: { include_usage: true },
  });
  const calls = [];
  let content = "";
  const finishReasons = [];
  let usage = null;
  for await (const chunk of stream) {
    if (chunk.usage) usage = chunk.usage;
    for (const choice of chunk.choices) {
      const delta = choice.delta ?? {};
      if (delta.content) content += delta.content;
      for (const toolDelta of delta.tool_calls ?? []) {
        const call = (calls[toolDelta.index] ??= {
          index: toolDelta.index, id: null, name: null, arguments: "",
          deltasWithId: 0, deltasWithName: 0,
        });
        if (toolDelta.id) { call.id = toolDelta.id; call.deltasWithId += 1; }
        if (toolDelta.function?.name) { call.name = toolDelta.function.name; call.deltasWithName += 1; }
        if (toolDelta.function?.arguments) call.arguments += toolDelta.function.arguments;
      }
      if (choice.finish_reason) finishReasons.push(choice.finish_reason);
    }
  }
  return { calls, content, finishReasons, usage };
}

const first = await streamTurn();
messages.push({
  role: "assistant",
  content: null,
  tool_calls: first.calls.map((call) => ({
    id: call.id, type: "function", function: { name: call.name, arguments: call.arguments },
  })),
});
for (const call of first.calls) {
  const { city } = JSON.parse(call.arguments);
  messages.push({
    role: "tool",
    tool_call_id: call.id,
    content: JSON.stringify({ city, temperature_c: 18, conditions: "sunny" }),
  });
}
const final = await streamTurn();
process.stdout.write(JSON.stringify({ first, final }) + "\n");
