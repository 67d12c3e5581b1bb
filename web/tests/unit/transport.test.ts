import { readFileSync } from 'node:fs';
import { readUIMessageStream, type UIMessage, type UIMessageChunk } from 'ai';
import { afterEach, describe, expect, it } from 'vitest';
import { WebSocketChatTransport, type SessionInfo } from '../../src/transport';

const fixtures = new URL('../../../fixtures/ai-sdk/', import.meta.url);
const load = (name: string) => JSON.parse(readFileSync(new URL(name, fixtures), 'utf8'));

/** A WebSocket the test plays the server of. */
class FakeSocket {
  static all: FakeSocket[] = [];
  onopen: (() => void) | null = null;
  onmessage: ((e: { data: string }) => void) | null = null;
  onclose: (() => void) | null = null;
  onerror: (() => void) | null = null;
  sent: any[] = [];
  closed = false;
  constructor(readonly url: string) {
    FakeSocket.all.push(this);
    queueMicrotask(() => this.onopen?.());
  }
  send(text: string) {
    this.sent.push(JSON.parse(text));
  }
  close() {
    this.closed = true;
    this.onclose?.();
  }
  /** The server sends a frame. */
  emit(frame: object) {
    this.onmessage?.({ data: JSON.stringify(frame) });
  }
  /** The connection drops. */
  drop() {
    this.closed = true;
    this.onclose?.();
  }
  last(action: string) {
    return [...this.sent].reverse().find((f) => f.action === action);
  }
}

const tick = (ms = 0) => new Promise((r) => setTimeout(r, ms));

function transport(session?: SessionInfo) {
  return new WebSocketChatTransport({
    url: async () => 'ws://test/ws?token=t',
    WebSocketImpl: FakeSocket as unknown as typeof WebSocket,
    session: () => session,
    gapTimeoutMs: 30,
    minBackoffMs: 5,
  });
}

async function collect(stream: ReadableStream<UIMessageChunk>): Promise<UIMessageChunk[]> {
  const out: UIMessageChunk[] = [];
  const reader = stream.getReader();
  for (;;) {
    const { done, value } = await reader.read();
    if (done) return out;
    out.push(value);
  }
}

const user: UIMessage = { id: 'u1', role: 'user', parts: [{ type: 'text', text: 'hi' }] };

/** Sends a message and answers with an ack; returns the stream and the socket. */
async function start(t: WebSocketChatTransport, abortSignal?: AbortSignal) {
  const streamPromise = t.sendMessages({ trigger: 'submit-message', chatId: 'c1', messageId: undefined, messages: [user], abortSignal });
  await tick();
  const socket = FakeSocket.all[FakeSocket.all.length - 1];
  const send = socket.last('send-message');
  expect(send).toMatchObject({ chatId: 'c1', trigger: 'submit-message', message: user });
  socket.emit({ type: 'ack', requestId: send.requestId, chatId: 'c1', runId: 'run1', accessToken: 'a', userMessageId: 'u1', assistantMessageId: 'msg-assistant-1' });
  return { stream: await streamPromise, socket };
}

const frame = (firstEventId: number, chunks: UIMessageChunk[], replay = false) => ({
  type: 'events', chatId: 'c1', runId: 'run1', firstEventId, chunks, replay,
});

afterEach(() => {
  FakeSocket.all = [];
});

describe('WebSocketChatTransport', () => {
  for (const name of ['text', 'reasoning-then-text', 'error-mid-stream']) {
    it(`hands the ${name} fixture's chunks to useChat untouched`, async () => {
      const chunks: UIMessageChunk[] = load(`${name}.chunks.json`);
      const t = transport();
      const { stream, socket } = await start(t);
      socket.emit(frame(1, chunks.slice(0, 3)));
      socket.emit(frame(4, chunks.slice(3)));
      expect(await collect(stream)).toEqual(chunks);
      let message: UIMessage | undefined;
      const source = new ReadableStream<UIMessageChunk>({
        start(c) {
          chunks.forEach((chunk) => c.enqueue(chunk));
          c.close();
        },
      });
      for await (const m of readUIMessageStream({ stream: source })) message = m;
      expect(JSON.parse(JSON.stringify(message))).toEqual(load(`${name}.message.json`));
      t.close();
    });
  }

  it('applies frames in event-id order and drops duplicates', async () => {
    const chunks: UIMessageChunk[] = load('text.chunks.json');
    const t = transport();
    const { stream, socket } = await start(t);
    socket.emit(frame(4, chunks.slice(3, 6))); // early: held
    socket.emit(frame(1, chunks.slice(0, 3)));
    socket.emit(frame(1, chunks.slice(0, 3))); // duplicate
    socket.emit(frame(2, chunks.slice(1, 5))); // overlapping replay
    socket.emit(frame(7, chunks.slice(6)));
    expect(await collect(stream)).toEqual(chunks);
    t.close();
  });

  it('asks for a replay from the last applied id when a gap stays open', async () => {
    const chunks: UIMessageChunk[] = load('text.chunks.json');
    const t = transport();
    const { stream, socket } = await start(t);
    socket.emit(frame(1, chunks.slice(0, 3)));
    socket.emit(frame(6, chunks.slice(5))); // 4 and 5 were lost
    await tick(60);
    expect(socket.last('resume')).toMatchObject({ chatId: 'c1', runId: 'run1', lastEventId: 3 });
    socket.emit(frame(4, chunks.slice(3, 5), true));
    expect(await collect(stream)).toEqual(chunks);
    t.close();
  });

  it('reconnects after a drop and resumes without loss or doubling', async () => {
    const chunks: UIMessageChunk[] = load('text.chunks.json');
    const t = transport();
    const { stream, socket } = await start(t);
    socket.emit(frame(1, chunks.slice(0, 4)));
    socket.drop();
    await tick(30);
    const next = FakeSocket.all[FakeSocket.all.length - 1];
    expect(next).not.toBe(socket);
    expect(next.last('resume')).toMatchObject({ chatId: 'c1', runId: 'run1', lastEventId: 4 });
    next.emit({ type: 'subscribed', chatId: 'c1', runId: 'run1', streaming: true, replayThrough: 6 });
    next.emit(frame(1, chunks.slice(0, 6), true)); // the replay repeats what we have
    next.emit(frame(7, chunks.slice(6)));
    expect(await collect(stream)).toEqual(chunks);
    t.close();
  });

  it('sends stop when the request is aborted', async () => {
    const controller = new AbortController();
    const t = transport();
    const { socket } = await start(t, controller.signal);
    controller.abort();
    await tick();
    expect(socket.last('stop')).toEqual({ action: 'stop', chatId: 'c1' });
    t.close();
  });

  it('rejects a refused send with the server error', async () => {
    const t = transport();
    const promise = t.sendMessages({ trigger: 'submit-message', chatId: 'c1', messageId: undefined, messages: [user], abortSignal: undefined });
    await tick();
    const socket = FakeSocket.all[0];
    socket.emit({ type: 'error', requestId: socket.last('send-message').requestId, chatId: 'c1', code: 'conflict', message: 'a reply is still streaming' });
    await expect(promise).rejects.toThrow('a reply is still streaming');
    t.close();
  });

  it('reconnectToStream resumes a running turn from the session and returns null when idle', async () => {
    const chunks: UIMessageChunk[] = load('text.chunks.json');
    const idle = transport({ runId: 'run1', lastEventId: 9, streaming: false, assistantMessageId: null });
    expect(await idle.reconnectToStream({ chatId: 'c1' })).toBeNull();
    await tick();
    expect(FakeSocket.all[0].last('resume')).toMatchObject({ chatId: 'c1', runId: 'run1', lastEventId: 9 });
    idle.close();

    const busy = transport({ runId: 'run1', lastEventId: 0, streaming: true, assistantMessageId: 'msg-assistant-1' });
    const stream = await busy.reconnectToStream({ chatId: 'c1' });
    await tick();
    const socket = FakeSocket.all[1];
    expect(socket.last('resume')).toMatchObject({ runId: 'run1', lastEventId: 0 });
    socket.emit(frame(1, chunks, true));
    expect(await collect(stream!)).toEqual(chunks);
    busy.close();
  });
});
