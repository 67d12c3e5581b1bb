// The Node peer of chatrun-bench: what the Vercel AI SDK gives for the same job, with nothing
// persisted. POST /api/chat takes useChat's body ({ id, messages, trigger }) and answers with the
// UI message stream over SSE (`streamText(...).pipeUIMessageStreamToResponse`), from a mock model
// that streams REPLY_TOKENS tokens at TOKENS_PER_SEC, the first at once, as chatrun's offline
// model does. The words are those of the Rust floor (bench/src/floor.rs).
import http from "node:http";
import { convertToModelMessages, streamText } from "ai";
import { MockLanguageModelV3 } from "ai/test";

const port = Number(process.env.PORT ?? 3100);
const tokens = Number(process.env.REPLY_TOKENS ?? 85);
const rate = Number(process.env.TOKENS_PER_SEC ?? 30);

const WORDS = [
  "Good", "question.", "The", "short", "answer", "is", "that", "it", "depends", "on", "how",
  "the", "parts", "fit", "together,", "so", "it", "helps", "to", "start", "from", "a",
  "concrete", "example", "and", "check", "each", "step", "before", "trusting", "it.",
];
const reply = Array.from({ length: tokens }, (_, i) => `${WORDS[i % WORDS.length]} `);
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

function paced() {
  let i = 0;
  return new ReadableStream({
    start(controller) {
      controller.enqueue({ type: "stream-start", warnings: [] });
      controller.enqueue({ type: "text-start", id: "t1" });
    },
    async pull(controller) {
      if (i > 0 && i <= reply.length) await sleep(1000 / rate);
      if (i < reply.length) {
        controller.enqueue({ type: "text-delta", id: "t1", delta: reply[i] });
      } else {
        controller.enqueue({ type: "text-end", id: "t1" });
        controller.enqueue({
          type: "finish",
          finishReason: { unified: "stop", raw: "stop" },
          usage: {
            inputTokens: { total: 20, noCache: 20, cacheRead: 0, cacheWrite: 0 },
            outputTokens: { total: reply.length, text: reply.length, reasoning: 0 },
          },
        });
        controller.close();
      }
      i += 1;
    },
  });
}

const model = new MockLanguageModelV3({
  doStream: async () => ({ stream: paced() }),
});

async function body(req) {
  const parts = [];
  for await (const part of req) parts.push(part);
  return JSON.parse(Buffer.concat(parts).toString("utf8"));
}

const server = http.createServer(async (req, res) => {
  try {
    if (req.method === "GET" && req.url === "/api/health") {
      res.end("ok");
    } else if (req.method === "POST" && req.url === "/api/chat") {
      const { messages } = await body(req);
      const result = streamText({ model, messages: await convertToModelMessages(messages) });
      result.pipeUIMessageStreamToResponse(res);
    } else {
      res.statusCode = 404;
      res.end();
    }
  } catch (error) {
    res.statusCode = 500;
    res.end(String(error));
  }
});
server.keepAliveTimeout = 120_000;
server.listen(port, "127.0.0.1");
