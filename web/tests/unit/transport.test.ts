import { readFileSync } from 'node:fs';
import { readUIMessageStream, type UIMessage, type UIMessageChunk } from 'ai';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { WebSocketChatTransport, backoffDelay, type SessionInfo, type TransportOptions } from '../../src/transport';

const fixtures = new URL('../../../fixtures/ai-sdk/', import.meta.url);
const load = (name: string) => JSON.parse(readFileSync(new URL(name, fixtures), 'utf8'));

/** A WebSocket the test plays the server of. */
class FakeSocket {
  static all: FakeSocket[] = [];
  /** How the next sockets behave: open, refuse (close without opening, the server is down), or
   * hang (neither open nor close, a black-holed network). */
  static mode: 'open' | 'refuse' | 'hang' = 'open';
  onopen: (() => void) | null = null;
  onmessage: ((e: { data: string }) => void) | null = null;
  onclose: (() => void) | null = null;
  onerror: (() => void) | null = null;
  sent: any[] = [];
  closed = false;
  constructor(readonly url: string) {
    FakeSocket.all.push(this);
    const mode = FakeSocket.mode;
    queueMicrotask(() => {
      if (mode === 'open') this.onopen?.();
      else if (mode === 'refuse') this.drop();
    });
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

/** A transport on a fake socket. Pacing is off unless asked for: most tests check chunks by id
 * and order, and paced text comes in word-sized pieces (tests/unit/pacing.test.ts). */
function transport(session?: SessionInfo, pacing: TransportOptions['pacing'] = false) {
  return new WebSocketChatTransport({
    url: async () => 'ws://test/ws?token=t',
    WebSocketImpl: FakeSocket as unknown as typeof WebSocket,
    session: () => session,
    gapTimeoutMs: 30,
    minBackoffMs: 5,
    pacing,
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
  FakeSocket.mode = 'open';
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

  it('takes up a replay that starts at the running turn, without asking again for what came before', async () => {
    const chunks: UIMessageChunk[] = load('text.chunks.json');
    // The page's session is of an earlier run: the server replays run1's running turn, from 11.
    const t = transport({ runId: 'run0', lastEventId: 5, streaming: true, assistantMessageId: 'msg-assistant-1' });
    const stream = await t.reconnectToStream({ chatId: 'c1' });
    await tick();
    const socket = FakeSocket.all[0];
    socket.emit(frame(11 + 3, chunks.slice(3), true)); // a live frame overtook the replay: held
    socket.emit({ type: 'subscribed', chatId: 'c1', runId: 'run1', streaming: true, replayFrom: 10, replayThrough: 10 + chunks.length });
    socket.emit(frame(11, chunks.slice(0, 3), true));
    expect(await collect(stream!)).toEqual(chunks);
    await tick(60);
    expect(socket.sent.filter((f) => f.action === 'resume')).toHaveLength(1);
    t.close();
  });

  it('sends stop when the request is aborted', async () => {
    const controller = new AbortController();
    const t = transport();
    const { socket } = await start(t, controller.signal);
    controller.abort();
    await tick();
    expect(socket.last('stop')).toEqual({ action: 'stop', chatId: 'c1', runId: 'run1', lastEventId: 0, assistantMessageId: 'msg-assistant-1' });
    t.stopTurn('c1'); // the page's Stop button as well: one stop per turn
    await tick();
    expect(socket.sent.filter((f) => f.action === 'stop')).toHaveLength(1);
    t.close();
  });

  it('stops a resumed turn by name (useChat does not abort a resumed stream through the transport)', async () => {
    const t = transport({ runId: 'run1', lastEventId: 0, streaming: true, assistantMessageId: 'msg-assistant-1' });
    await t.reconnectToStream({ chatId: 'c1' });
    t.stopTurn('c1');
    await tick();
    expect(FakeSocket.all[0].last('stop')).toEqual({ action: 'stop', chatId: 'c1', runId: 'run1', lastEventId: 0, assistantMessageId: 'msg-assistant-1' });
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

  it('rejects a rate-limited send with the code and when to retry', async () => {
    const t = transport();
    const promise = t.sendMessages({ trigger: 'submit-message', chatId: 'c1', messageId: undefined, messages: [user], abortSignal: undefined });
    await tick();
    const socket = FakeSocket.all[0];
    socket.emit({
      type: 'error', requestId: socket.last('send-message').requestId, chatId: 'c1', code: 'rate_limited',
      message: 'at most 20 messages a minute', retryAfterMs: 40_000,
    });
    await expect(promise).rejects.toMatchObject({ code: 'rate_limited', message: 'at most 20 messages a minute', retryAfterMs: 40_000 });
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

describe('backoffDelay', () => {
  it('doubles from the minimum up to the cap, with at most half of it random', () => {
    expect(backoffDelay(0, 500, 15_000, () => 0)).toBe(250);
    expect(backoffDelay(0, 500, 15_000, () => 0.999999)).toBe(500);
    expect(backoffDelay(3, 500, 15_000, () => 0)).toBe(2000);
    expect(backoffDelay(3, 500, 15_000, () => 0.5)).toBe(3000);
    expect(backoffDelay(10, 500, 15_000, () => 0)).toBe(7500);
    expect(backoffDelay(10, 500, 15_000, () => 0.999999)).toBe(15_000);
    expect(backoffDelay(10_000, 500, 15_000, () => 0.5)).toBe(11_250);
  });

  it('spreads clients that dropped together', () => {
    const delays = new Set(Array.from({ length: 50 }, () => backoffDelay(4, 500, 15_000)));
    expect(delays.size).toBeGreaterThan(10);
    for (const d of delays) expect(d).toBeGreaterThanOrEqual(4000), expect(d).toBeLessThanOrEqual(8000);
  });
});

describe('WebSocketChatTransport connection', () => {
  function lifecycle() {
    const win = new EventTarget();
    const doc = Object.assign(new EventTarget(), { visibilityState: 'visible' });
    return { window: win, document: doc };
  }

  it('keeps reconnecting while getting a token fails, and resumes once the server is back', async () => {
    let down = true;
    let tokenCalls = 0;
    const statuses: string[] = [];
    const t = new WebSocketChatTransport({
      url: async () => {
        tokenCalls += 1;
        if (down) throw new Error('POST /api/session failed');
        return 'ws://test/ws?token=t';
      },
      onConnectFailed: async () => {
        throw new Error('POST /api/session failed');
      },
      WebSocketImpl: FakeSocket as unknown as typeof WebSocket,
      minBackoffMs: 4,
      maxBackoffMs: 8,
      lifecycle: null,
      onStatus: (s) => statuses.push(s.state),
    });
    t.follow('c1');
    await tick(150);
    expect(tokenCalls).toBeGreaterThan(5);
    expect(FakeSocket.all.length).toBe(0);
    expect(t.connectionStatus().state).toBe('connecting');
    down = false;
    await tick(40);
    expect(FakeSocket.all.length).toBe(1);
    expect(FakeSocket.all[0].last('resume')).toMatchObject({ chatId: 'c1', lastEventId: 0 });
    expect(statuses.at(-1)).toBe('connected');
    t.close();
  });

  it('says it is reconnecting after a drop, retries with growing waits, and connects again', async () => {
    const statuses: { state: string; attempt: number }[] = [];
    const t = new WebSocketChatTransport({
      url: async () => 'ws://test/ws?token=t',
      WebSocketImpl: FakeSocket as unknown as typeof WebSocket,
      minBackoffMs: 10,
      maxBackoffMs: 40,
      connectTimeoutMs: 5,
      random: () => 0.999,
      lifecycle: null,
      onStatus: (s) => statuses.push({ state: s.state, attempt: s.attempt }),
    });
    t.follow('c1');
    await tick(5);
    expect(t.connectionStatus().state).toBe('connected');
    FakeSocket.mode = 'refuse';
    FakeSocket.all[0].drop();
    expect(t.connectionStatus().state).toBe('reconnecting');
    await tick(200);
    const attempts = FakeSocket.all.length - 1;
    expect(attempts).toBeGreaterThanOrEqual(3);
    expect(attempts).toBeLessThan(12); // backing off, not spinning
    expect(statuses.filter((s) => s.state === 'reconnecting').length).toBeGreaterThan(2);
    FakeSocket.mode = 'open';
    await tick(80);
    expect(t.connectionStatus()).toMatchObject({ state: 'connected', attempt: 0 });
    const last = FakeSocket.all[FakeSocket.all.length - 1];
    expect(last.last('resume')).toMatchObject({ chatId: 'c1' });
    t.close();
  });

  it('reconnects at once when the browser goes online or the tab becomes visible', async () => {
    const events = lifecycle();
    FakeSocket.mode = 'refuse';
    const t = new WebSocketChatTransport({
      url: async () => 'ws://test/ws?token=t',
      WebSocketImpl: FakeSocket as unknown as typeof WebSocket,
      minBackoffMs: 60_000,
      maxBackoffMs: 60_000,
      connectTimeoutMs: 5,
      lifecycle: events,
    });
    t.follow('c1');
    await tick(20); // the first attempt failed; the next waits half a minute or more
    expect(FakeSocket.all.length).toBe(1);
    FakeSocket.mode = 'open';
    events.window.dispatchEvent(new Event('online'));
    await tick(5);
    expect(FakeSocket.all.length).toBe(2);
    expect(t.connectionStatus().state).toBe('connected');

    FakeSocket.mode = 'refuse';
    FakeSocket.all[1].drop();
    await tick(20);
    const before = FakeSocket.all.length;
    FakeSocket.mode = 'open';
    events.document.visibilityState = 'hidden';
    events.document.dispatchEvent(new Event('visibilitychange'));
    await tick(5);
    expect(FakeSocket.all.length).toBe(before);
    events.document.visibilityState = 'visible';
    events.document.dispatchEvent(new Event('visibilitychange'));
    await tick(5);
    expect(FakeSocket.all.length).toBe(before + 1);
    expect(t.connectionStatus().state).toBe('connected');
    t.close();
  });

  it('fails a send with no answer after the timeout, and does not send it later', async () => {
    FakeSocket.mode = 'hang';
    const t = new WebSocketChatTransport({
      url: async () => 'ws://test/ws?token=t',
      WebSocketImpl: FakeSocket as unknown as typeof WebSocket,
      requestTimeoutMs: 40,
      connectTimeoutMs: 1000,
      lifecycle: null,
    });
    const started = Date.now();
    const promise = t.sendMessages({ trigger: 'submit-message', chatId: 'c1', messageId: undefined, messages: [user], abortSignal: undefined });
    await expect(promise).rejects.toMatchObject({ code: 'timeout' });
    expect(Date.now() - started).toBeGreaterThanOrEqual(35);
    // The socket opens late: the timed-out message must not go out behind the user's back.
    const socket = FakeSocket.all[0];
    socket.onopen?.();
    expect(socket.sent.filter((f) => f.action === 'send-message')).toEqual([]);
    t.close();
  });

  it('fails a send whose socket answers nothing at all, on an open socket too', async () => {
    const t = new WebSocketChatTransport({
      url: async () => 'ws://test/ws?token=t',
      WebSocketImpl: FakeSocket as unknown as typeof WebSocket,
      requestTimeoutMs: 30,
      lifecycle: null,
    });
    const promise = t.sendMessages({ trigger: 'submit-message', chatId: 'c1', messageId: undefined, messages: [user], abortSignal: undefined });
    await expect(promise).rejects.toThrow(/did not answer/);
    expect(FakeSocket.all[0].last('send-message')).toMatchObject({ message: user });
    t.close();
  });

  it('fails the outstanding send on an API Gateway error frame (no `type`)', async () => {
    const frames: unknown[] = [];
    const t = new WebSocketChatTransport({
      url: async () => 'ws://test/ws?token=t',
      WebSocketImpl: FakeSocket as unknown as typeof WebSocket,
      lifecycle: null,
      onFrame: (f) => frames.push(f),
    });
    const promise = t.sendMessages({ trigger: 'submit-message', chatId: 'c1', messageId: undefined, messages: [user], abortSignal: undefined });
    await tick();
    FakeSocket.all[0].emit({ message: 'Internal server error', connectionId: 'abc=', requestId: 'gw-1' });
    await expect(promise).rejects.toThrow('Internal server error');
    expect(frames[0]).toMatchObject({ type: 'error', fromGateway: true, message: 'Internal server error' });
    t.close();
  });

  it('closes a socket that does not answer a ping, and reconnects', async () => {
    const t = new WebSocketChatTransport({
      url: async () => 'ws://test/ws?token=t',
      WebSocketImpl: FakeSocket as unknown as typeof WebSocket,
      pingIntervalMs: 10,
      pongTimeoutMs: 10,
      minBackoffMs: 2,
      lifecycle: null,
    });
    t.follow('c1');
    await tick(50);
    expect(FakeSocket.all[0].closed).toBe(true);
    expect(FakeSocket.all[0].last('ping')).toEqual({ action: 'ping' });
    expect(FakeSocket.all.length).toBeGreaterThan(1);
    t.close();
  });

  it('sends an edit with the id of the message it replaces', async () => {
    const t = transport();
    const edited: UIMessage = { id: 'u1', role: 'user', parts: [{ type: 'text', text: 'hi again' }] };
    void t.sendMessages({ trigger: 'submit-message', chatId: 'c1', messageId: 'u1', messages: [edited], abortSignal: undefined }).catch(() => {});
    await tick();
    expect(FakeSocket.all[0].last('send-message')).toMatchObject({ trigger: 'submit-message', messageId: 'u1', message: edited });
    t.close();
  });
});

describe('WebSocketChatTransport with pacing (the page default)', () => {
  /** The message the `ai` package builds from `chunks`. */
  async function build(chunks: UIMessageChunk[]) {
    const source = new ReadableStream<UIMessageChunk>({
      start(c) {
        chunks.forEach((chunk) => c.enqueue(chunk));
        c.close();
      },
    });
    let message: UIMessage | undefined;
    for await (const m of readUIMessageStream({ stream: source })) message = m;
    return JSON.parse(JSON.stringify(message));
  }

  /** Reads `stream` as it comes: what has arrived so far, and when it ended. */
  function reader(stream: ReadableStream<UIMessageChunk>) {
    const got: UIMessageChunk[] = [];
    const done = (async () => {
      const r = stream.getReader();
      for (;;) {
        const { done, value } = await r.read();
        if (done) return got;
        got.push(value);
      }
    })();
    return { got, done };
  }

  const text = (chunks: UIMessageChunk[]) => chunks.map((c) => (c.type === 'text-delta' ? c.delta : '')).join('');

  /** A reply of `n` frames of twenty words each, event ids from 1. */
  function reply(n: number) {
    const chunks: UIMessageChunk[][] = Array.from({ length: n }, (_, f) => [
      { type: 'text-delta', id: 't1', delta: Array.from({ length: 20 }, (_, w) => `f${f}w${w} `).join('') },
    ]);
    chunks[0].unshift({ type: 'start', messageId: 'msg-assistant-1' }, { type: 'start-step' }, { type: 'text-start', id: 't1' });
    chunks[n - 1].push({ type: 'text-end', id: 't1' }, { type: 'finish-step' }, { type: 'finish', finishReason: 'stop' });
    let next = 1;
    return chunks.map((c) => {
      const f = frame(next, c);
      next += c.length;
      return f;
    });
  }

  async function startPaced() {
    const t = transport(undefined, {});
    const started = start(t);
    await vi.advanceTimersByTimeAsync(0);
    return { t, ...(await started) };
  }

  afterEach(() => {
    vi.useRealTimers();
  });

  for (const name of ['text', 'reasoning-then-text', 'error-mid-stream', 'stopped']) {
    it(`builds the ${name} fixture's message from frames 500 ms apart exactly as unpaced`, async () => {
      vi.useFakeTimers();
      const chunks: UIMessageChunk[] = load(`${name}.chunks.json`);
      const { t, stream, socket } = await startPaced();
      const read = reader(stream);
      for (let i = 0; i < chunks.length; i += 2) {
        socket.emit(frame(i + 1, chunks.slice(i, i + 2)));
        await vi.advanceTimersByTimeAsync(500);
      }
      // The `ai` package's stopped stream ends at `abort` (chatrun's server sends `finish` after
      // it, which closes the stream).
      const got = chunks.some((c) => c.type === 'finish') ? await read.done : read.got;
      expect(got.map((c) => c.type).filter((type) => !type.endsWith('-delta'))).toEqual(
        chunks.map((c) => c.type).filter((type) => !type.endsWith('-delta')),
      );
      expect(await build(got)).toEqual(load(`${name}.message.json`));
      t.close();
    });
  }

  it('reveals a 500 ms frame word by word, and releases what it holds at once on finish', async () => {
    vi.useFakeTimers();
    const frames = reply(4);
    const { t, stream, socket } = await startPaced();
    const read = reader(stream);
    socket.emit(frames[0]);
    await vi.advanceTimersByTimeAsync(0);
    // A reply's first frame at once.
    expect(text(read.got)).toBe(text(frames[0].chunks));
    await vi.advanceTimersByTimeAsync(500);
    socket.emit(frames[1]);
    await vi.advanceTimersByTimeAsync(250);
    const shown = text(read.got).length - text(frames[0].chunks).length;
    // About 250 / 625 of the second frame's words, not none and not all.
    expect(shown).toBeGreaterThan(0);
    expect(shown).toBeLessThan(text(frames[1].chunks).length * 0.6);
    await vi.advanceTimersByTimeAsync(250);
    socket.emit(frames[2]);
    await vi.advanceTimersByTimeAsync(100);
    // The last frame brings the finish: everything held goes out with it, in order.
    socket.emit(frames[3]);
    await vi.advanceTimersByTimeAsync(0);
    const got = await read.done;
    expect(text(got)).toBe(frames.map((f) => text(f.chunks)).join(''));
    expect(await build(got)).toEqual(await build(frames.flatMap((f) => f.chunks)));
    t.close();
  });

  it('on a stop, names the event being revealed and lets out what it holds, in order', async () => {
    vi.useFakeTimers();
    const frames = reply(4);
    const { t, stream, socket } = await startPaced();
    const read = reader(stream);
    socket.emit(frames[0]);
    await vi.advanceTimersByTimeAsync(500);
    socket.emit(frames[1]);
    await vi.advanceTimersByTimeAsync(100);
    socket.emit(frames[2]);
    await vi.advanceTimersByTimeAsync(0);
    // Part of frame 1 is on screen, the rest of it and frame 2 are held.
    const shownBefore = text(read.got);
    expect(shownBefore.length).toBeGreaterThan(text(frames[0].chunks).length);
    expect(shownBefore.length).toBeLessThan(text(frames[0].chunks).length + text(frames[1].chunks).length);
    t.stopTurn('c1');
    await vi.advanceTimersByTimeAsync(0);
    // useChat shows nothing after a stop: the stored reply ends with the event being revealed
    // (frame 1's), not with frame 2, which was received but not shown.
    expect(socket.last('stop')).toMatchObject({ lastEventId: frames[1].firstEventId });
    expect(text(read.got)).toBe(text(frames[0].chunks) + text(frames[1].chunks) + text(frames[2].chunks));
    t.close();
  });

  it('shows a replay at once', async () => {
    vi.useFakeTimers();
    const t = transport({ runId: 'run1', lastEventId: 0, streaming: true, assistantMessageId: 'msg-assistant-1' }, {});
    const resumed = t.reconnectToStream({ chatId: 'c1' });
    await vi.advanceTimersByTimeAsync(0);
    const read = reader((await resumed)!);
    const socket = FakeSocket.all[0];
    const frames = reply(3);
    socket.emit({ type: 'subscribed', chatId: 'c1', runId: 'run1', streaming: true, replayThrough: 100 });
    for (const f of frames.slice(0, 2)) socket.emit({ ...f, replay: true });
    await vi.advanceTimersByTimeAsync(0);
    expect(text(read.got)).toBe(text(frames[0].chunks) + text(frames[1].chunks));
    t.close();
  });
});
