import { readFileSync } from 'node:fs';
import { readUIMessageStream, type UIMessage, type UIMessageChunk } from 'ai';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { ChunkPacer, splitWords } from '../../src/pacing';

const fixtures = new URL('../../../fixtures/ai-sdk/', import.meta.url);
const load = (name: string) => JSON.parse(readFileSync(new URL(name, fixtures), 'utf8'));

/** The message the `ai` package builds from `chunks`. */
async function build(chunks: UIMessageChunk[]): Promise<UIMessage | undefined> {
  const stream = new ReadableStream<UIMessageChunk>({
    start(c) {
      chunks.forEach((chunk) => c.enqueue(chunk));
      c.close();
    },
  });
  let message: UIMessage | undefined;
  for await (const m of readUIMessageStream({ stream })) message = m;
  return JSON.parse(JSON.stringify(message));
}

/** What a pacer let out, and when. */
interface Out {
  at: number;
  chunk: UIMessageChunk;
}

function pacer() {
  const out: Out[] = [];
  const p = new ChunkPacer((chunk) => out.push({ at: Date.now(), chunk }));
  return { p, out };
}

/** Feeds `frames` to a pacer as live frames `everyMs` apart, then lets it run dry. */
async function feed(frames: UIMessageChunk[][], everyMs: number) {
  const { p, out } = pacer();
  const arrivals: number[] = [];
  for (const [i, frame] of frames.entries()) {
    if (i > 0) await vi.advanceTimersByTimeAsync(everyMs);
    arrivals.push(Date.now());
    p.frame();
    for (const chunk of frame) p.live(chunk);
  }
  await vi.advanceTimersByTimeAsync(5_000);
  return { out, arrivals, p };
}

/** `chunks` cut into frames of `size`. */
const frames = (chunks: UIMessageChunk[], size: number) =>
  Array.from({ length: Math.ceil(chunks.length / size) }, (_, i) => chunks.slice(i * size, (i + 1) * size));

/** A long reply: `n` frames of `words` words each, then its end. */
function longReply(n: number, words: number): UIMessageChunk[][] {
  const body = Array.from({ length: n }, (_, f): UIMessageChunk[] => [
    { type: 'text-delta', id: 't1', delta: Array.from({ length: words }, (_, w) => `f${f}w${w} `).join('') },
  ]);
  body[0].unshift({ type: 'start', messageId: 'm1' }, { type: 'start-step' }, { type: 'text-start', id: 't1' });
  body[n - 1].push({ type: 'text-end', id: 't1' }, { type: 'finish-step' }, { type: 'finish', finishReason: 'stop' });
  return body;
}

const textOf = (out: Out[]) => out.map(({ chunk }) => (chunk.type === 'text-delta' ? chunk.delta : '')).join('');

beforeEach(() => {
  vi.useFakeTimers({ now: 1_000_000 });
});

afterEach(() => {
  vi.useRealTimers();
});

describe('splitWords', () => {
  it('cuts text into word-sized pieces that concatenate back to it', () => {
    for (const text of ['', ' ', 'one', '  lead and trail  ', 'a\n\n- b\n', 'naïve café 😀 done', '潮だまりには多くの生き物がいますが、それぞれ', 'x'.repeat(50)]) {
      const pieces = splitWords(text);
      expect(pieces.join('')).toBe(text);
      for (const piece of pieces) expect(Array.from(piece).length).toBeLessThanOrEqual(16 + 2);
    }
    expect(splitWords('Tide pools are')).toEqual(['Tide ', 'pools ', 'are']);
  });
});

describe('ChunkPacer', () => {
  for (const name of ['text', 'reasoning-then-text', 'error-mid-stream', 'stopped']) {
    it(`builds the ${name} fixture's message exactly, paced at 500 ms frames as unpaced`, async () => {
      const chunks: UIMessageChunk[] = load(`${name}.chunks.json`);
      const expected = load(`${name}.message.json`);
      expect(await build(chunks)).toEqual(expected);
      for (const size of [1, 2, 3]) {
        const { out } = await feed(frames(chunks, size), 500);
        expect(await build(out.map((o) => o.chunk))).toEqual(expected);
        // Nothing but deltas is cut, and nothing is reordered.
        expect(out.map((o) => o.chunk).filter((c) => c.type !== 'text-delta' && c.type !== 'reasoning-delta')).toEqual(
          chunks.filter((c) => c.type !== 'text-delta' && c.type !== 'reasoning-delta'),
        );
      }
    });
  }

  it('spreads a 500 ms frame over the next 625 ms, word by word, and is never more than that behind', async () => {
    const reply = longReply(10, 20);
    const { out, arrivals } = await feed(reply, 500);
    expect(await build(out.map((o) => o.chunk))).toEqual(await build(reply.flat()));
    const words = out.filter((o) => o.chunk.type === 'text-delta');
    // The first frame whole, the later ones in word-sized pieces.
    expect(words.length).toBe(1 + 9 * 20);
    // The first frame at once (the first words of a reply are not held back).
    expect(out.slice(0, 4).every((o) => o.at === arrivals[0])).toBe(true);
    for (let f = 1; f < 9; f++) {
      const mine = words.filter((o) => (o.chunk as { delta: string }).delta.startsWith(`f${f}w`));
      // Released over the window, not at once: the first soon after the frame came, the last
      // within 1.25 times the gap.
      expect(mine[0].at - arrivals[f]).toBeLessThan(100);
      expect(mine[mine.length - 1].at - arrivals[f]).toBeGreaterThan(400);
      expect(mine[mine.length - 1].at - arrivals[f]).toBeLessThanOrEqual(625);
      // Steady: no two ticks more than a tick and a bit apart while words are held.
      const times = [...new Set(mine.map((o) => o.at))];
      for (let i = 1; i < times.length; i++) expect(times[i] - times[i - 1]).toBeLessThanOrEqual(60);
    }
    // The finish came with the last frame: it and everything held went out at once, in order.
    const last = arrivals[arrivals.length - 1];
    expect(out.slice(-3).map((o) => o.chunk.type)).toEqual(['text-end', 'finish-step', 'finish']);
    expect(out.filter((o) => o.at >= last).every((o) => o.at === last)).toBe(true);
  });

  it('releases everything it holds at once on a stop (flush), then on a replay, in order', async () => {
    const { p, out } = pacer();
    const reply = longReply(3, 20);
    p.frame();
    reply[0].forEach((c) => p.live(c));
    await vi.advanceTimersByTimeAsync(500);
    p.frame();
    reply[1].forEach((c) => p.live(c));
    await vi.advanceTimersByTimeAsync(100);
    expect(p.holding()).toBe(true);
    // Events given without ids: nothing to name.
    expect(p.shownThrough()).toBeUndefined();
    const before = out.length;
    p.flush();
    expect(p.holding()).toBe(false);
    expect(out.length).toBeGreaterThan(before);
    expect(textOf(out)).toBe(textOf(reply.slice(0, 2).flat().map((chunk) => ({ at: 0, chunk }))));

    // A live frame, then a replay of later events: the held words first.
    await vi.advanceTimersByTimeAsync(400);
    p.frame();
    p.live({ type: 'text-delta', id: 't1', delta: 'held words here and more of them ' });
    p.immediate({ type: 'text-delta', id: 't1', delta: 'replayed ' });
    expect(p.holding()).toBe(false);
    expect(textOf(out).endsWith('held words here and more of them replayed ')).toBe(true);
  });

  it('names the event being revealed while it holds chunks', async () => {
    const { p } = pacer();
    p.frame();
    p.live({ type: 'start' }, 1);
    p.live({ type: 'text-start', id: 't1' }, 2);
    p.live({ type: 'text-delta', id: 't1', delta: 'first words ' }, 3);
    expect(p.shownThrough()).toBeUndefined();
    await vi.advanceTimersByTimeAsync(500);
    p.frame();
    p.live({ type: 'text-delta', id: 't1', delta: 'one two three four five six seven eight ' }, 4);
    p.live({ type: 'text-delta', id: 't1', delta: 'nine ten ' }, 5);
    // Nothing of event 4 is out yet: the page shows through event 3.
    expect(p.shownThrough()).toBe(3);
    await vi.advanceTimersByTimeAsync(100);
    expect(p.shownThrough()).toBe(4);
    await vi.advanceTimersByTimeAsync(1000);
    expect(p.shownThrough()).toBeUndefined();
  });

  it('shows a frame that came after a long pause over at most a second', async () => {
    const reply = longReply(3, 20);
    const { out, arrivals } = await feed([reply[0], reply[1]], 10_000);
    expect(out[out.length - 1].at - arrivals[1]).toBeLessThanOrEqual(1000);
  });
});
