// ChunkPacer: turns live frames into a steady reveal of text.
//
// On AWS the server sends a reply's frames every 50 ms for its first second, then widens the
// interval to 500 ms (every frame is billed; crates/core/src/config.rs, `FrameCadence`). Shown as
// they come, half-second frames would land as lumps of a dozen words. The pacer stands between
// the transport and useChat's stream: it splits a live frame's text and reasoning deltas into
// word-sized pieces and releases them evenly over 1.25 times the gap since the previous frame
// (the server widens each frame by at most a quarter, so the reveal does not run dry while the
// frames grow), and never over more than a second. Words still held when the next frame comes are
// spread with it over the new window, so the text is never more than about one interval behind.
//
// Everything else goes out in order without waiting of its own: a replay (a resume, a refresh)
// is shown at once, and a `finish`, `abort` or `error` (or the user's stop, through `flush`)
// releases whatever is held immediately. Pieces concatenate to the delta they came from, so
// the message useChat builds is the same as without pacing. A stop names the event being
// revealed (`shownThrough`), not the last one received: useChat stops showing text the moment
// the user stops, so the stored reply must end where the reveal was, not a frame later.
import type { UIMessageChunk } from 'ai';

export interface PacingOptions {
  /** A frame's words are spread over this many times the gap since the previous frame. */
  spreadFactor?: number;
  /** The longest a frame's words are spread over (a frame after the model paused). */
  maxSpreadMs?: number;
  /** How often held pieces are released; a window this short is not paced at all. */
  tickMs?: number;
  /** The longest piece, in code points (text with no spaces is cut there). */
  maxPieceChars?: number;
  now?: () => number;
}

type Delta = Extract<UIMessageChunk, { type: 'text-delta' | 'reasoning-delta' }>;

const isDelta = (chunk: UIMessageChunk): chunk is Delta => chunk.type === 'text-delta' || chunk.type === 'reasoning-delta';

/** Chunks that end a turn: nothing may wait behind them. */
const isTerminal = (chunk: UIMessageChunk) => chunk.type === 'finish' || chunk.type === 'abort' || chunk.type === 'error';

/**
 * `text` in word-sized pieces that concatenate back to it: each word with the whitespace after
 * it (leading whitespace alone), words longer than `maxChars` code points cut.
 */
export function splitWords(text: string, maxChars = 16): string[] {
  const pieces: string[] = [];
  for (const word of text.match(/\s+|\S+\s*/gu) ?? []) {
    const chars = Array.from(word);
    for (let i = 0; i < chars.length; i += maxChars) pieces.push(chars.slice(i, i + maxChars).join(''));
  }
  return pieces;
}

export class ChunkPacer {
  private readonly spreadFactor: number;
  private readonly maxSpreadMs: number;
  private readonly tickMs: number;
  private readonly maxPieceChars: number;
  private readonly now: () => number;
  /** Held chunks, in order: delta pieces and whatever came between them, with their event ids. */
  private queue: { chunk: UIMessageChunk; id?: number }[] = [];
  /** The event id of the last chunk let out. */
  private lastOut?: number;
  /** How many of `queue` are delta pieces (the rest go out as soon as they are reached). */
  private pieces = 0;
  /** Everything held is out by then. */
  private releaseBy = 0;
  /** When the previous live frame came, in this turn. */
  private lastFrameAt?: number;
  private timer?: ReturnType<typeof setTimeout>;

  constructor(
    private readonly emit: (chunk: UIMessageChunk) => void,
    options: PacingOptions = {},
  ) {
    this.spreadFactor = options.spreadFactor ?? 1.25;
    this.maxSpreadMs = options.maxSpreadMs ?? 1000;
    this.tickMs = options.tickMs ?? 30;
    this.maxPieceChars = options.maxPieceChars ?? 16;
    this.now = options.now ?? (() => Date.now());
  }

  /** A live frame arrived: its chunks follow through `live`, and everything held (theirs too)
   *  is out within the spread of the gap since the previous frame. A turn's first frame is shown
   *  at once. */
  frame() {
    const now = this.now();
    const gap = this.lastFrameAt === undefined ? 0 : now - this.lastFrameAt;
    this.lastFrameAt = now;
    this.releaseBy = now + Math.min(gap * this.spreadFactor, this.maxSpreadMs);
  }

  /** A chunk of a live frame (event `id`). */
  live(chunk: UIMessageChunk, id?: number) {
    if (isTerminal(chunk)) {
      this.lastFrameAt = undefined;
      this.immediate(chunk, id);
      return;
    }
    if (this.queue.length === 0 && (!isDelta(chunk) || this.releaseBy - this.now() <= this.tickMs)) {
      this.out(chunk, id);
      return;
    }
    if (isDelta(chunk)) {
      for (const delta of splitWords(chunk.delta, this.maxPieceChars)) {
        this.queue.push({ chunk: { ...chunk, delta }, id });
        this.pieces += 1;
      }
    } else {
      this.queue.push({ chunk, id });
    }
    if (!this.timer) this.timer = setTimeout(() => this.tick(), 0);
  }

  /** A chunk to show at once (a replay): whatever is held goes first. */
  immediate(chunk: UIMessageChunk, id?: number) {
    this.flush();
    this.out(chunk, id);
  }

  /**
   * While chunks are held: the last event of which anything is out (the one being revealed,
   * or the one before the first held). Undefined when nothing is held: everything is out.
   */
  shownThrough(): number | undefined {
    const first = this.queue[0]?.id;
    if (first === undefined) return undefined;
    return first === this.lastOut ? first : first - 1;
  }

  /** Releases everything held, in order (the user stopped the turn). */
  flush() {
    this.clearTimer();
    const held = this.queue;
    this.queue = [];
    this.pieces = 0;
    for (const { chunk, id } of held) this.out(chunk, id);
  }

  /** Drops everything held (nobody reads the stream any more). */
  cancel() {
    this.clearTimer();
    this.queue = [];
    this.pieces = 0;
  }

  /** Whether chunks are held. */
  holding() {
    return this.queue.length > 0;
  }

  private out(chunk: UIMessageChunk, id: number | undefined) {
    if (id !== undefined) this.lastOut = id;
    this.emit(chunk);
  }

  private clearTimer() {
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
  }

  private tick() {
    this.timer = undefined;
    const left = this.releaseBy - this.now();
    // Spread what is held evenly over what is left of the window: this tick's share.
    let share = left <= this.tickMs ? Infinity : Math.ceil((this.pieces * this.tickMs) / left);
    while (this.queue.length > 0) {
      const head = this.queue[0];
      if (isDelta(head.chunk)) {
        if (share <= 0) break;
        share -= 1;
        this.pieces -= 1;
      }
      this.queue.shift();
      this.out(head.chunk, head.id);
    }
    if (this.queue.length > 0) this.timer = setTimeout(() => this.tick(), this.tickMs);
  }
}
