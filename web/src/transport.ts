// WebSocketChatTransport: the AI SDK's ChatTransport over chatrun's WebSocket protocol.
//
// One socket serves every chat of the page. Chunks carry consecutive event ids per run: the
// transport applies each id once, in order, holding frames that arrive early, and asks for a
// replay (`resume`) when a gap stays open. A reconnect after a drop resumes every chat it follows
// from the last applied id, so nothing is lost and nothing shows twice.
//
// Once it has connected, the transport keeps a socket open for good: after a drop it retries
// with exponential backoff and jitter, forever (a failure to get a token is just another failed
// attempt), and at once when the browser says it is back online or the tab becomes visible.
// It reports its state through `onStatus` so the page can say what is going on.
//
// Live text reaches useChat through a ChunkPacer (pacing.ts): the server's frames widen to half a
// second on AWS, and the pacer reveals their words steadily instead of in lumps. Replays are
// shown at once; a turn's end and a stop release whatever the pacer holds.
import type { ChatTransport, UIMessage, UIMessageChunk } from 'ai';
import { ChunkPacer, type PacingOptions } from './pacing';
import { parseServerFrame, type ClientFrame, type ServerFrame } from './protocol';

export interface SessionInfo {
  runId: string;
  lastEventId: number;
  streaming: boolean;
  assistantMessageId: string | null;
}

export interface TransportOptions {
  /** The socket URL including a current token (`wss://.../ws?token=...`). */
  url: () => Promise<string>;
  /** Called after a connection attempt failed before opening (a refused token, say). */
  onConnectFailed?: () => Promise<void> | void;
  /** The session of a chat as loaded over HTTP, to resume from its `lastEventId`. */
  session?: (chatId: string) => SessionInfo | null | undefined;
  /** The model a send to this chat carries (DESIGN §5 addition): a new chat's model, or a
   *  new model for an existing chat from this turn on. Undefined: the chat's own. */
  model?: (chatId: string) => string | undefined;
  /** A turn began streaming on a chat this page follows but did not start (another tab). */
  onUnclaimedTurn?: (chatId: string) => void;
  /** Every frame, after the transport has handled it (the page reacts to some). */
  onFrame?: (frame: ServerFrame) => void;
  WebSocketImpl?: typeof WebSocket;
  /** API Gateway closes sockets idle for 10 minutes: ping well before. */
  pingIntervalMs?: number;
  /** API Gateway closes every socket after 2 hours: reconnect before. */
  maxConnectionMs?: number;
  /** How long a gap may stay open before asking for a replay. */
  gapTimeoutMs?: number;
  /** Reconnect backoff bounds. */
  minBackoffMs?: number;
  maxBackoffMs?: number;
  /** A request (`send-message`) with no answer after this long fails with code `timeout`. */
  requestTimeoutMs?: number;
  /** A socket that has not opened after this long is given up and retried. */
  connectTimeoutMs?: number;
  /** A `ping` with no `pong` after this long means the socket is dead: it is closed and retried. */
  pongTimeoutMs?: number;
  /** The connection's state, whenever it changes. */
  onStatus?: (status: ConnectionStatus) => void;
  /** Where `online` and `visibilitychange` come from (the page's window and document by default). */
  lifecycle?: { window: EventTarget; document: EventTarget & { visibilityState: string } } | null;
  /** Jitter source, in [0, 1). */
  random?: () => number;
  /** How live text is paced (pacing.ts); `false` hands every chunk on as it comes. */
  pacing?: PacingOptions | false;
}

/** `idle` before the first connection; `reconnecting` after a drop, until a socket opens again. */
export type ConnectionState = 'idle' | 'connecting' | 'connected' | 'reconnecting';

export interface ConnectionStatus {
  state: ConnectionState;
  /** Failed attempts since the last open socket. */
  attempt: number;
  /** When the next attempt starts (epoch ms), while waiting for it. */
  retryAt?: number;
}

/**
 * The wait before reconnect attempt `attempt` (0-based): exponential from `minMs`, capped at
 * `maxMs`, with "equal jitter" (half fixed, half random) so that many tabs dropped at once do not
 * come back in step, while each still waits at least half the nominal delay.
 */
export function backoffDelay(attempt: number, minMs: number, maxMs: number, random: () => number = Math.random): number {
  const nominal = Math.min(maxMs, minMs * 2 ** Math.min(attempt, 30));
  return Math.round(nominal / 2 + random() * (nominal / 2));
}

interface Sink {
  controller: ReadableStreamDefaultController<UIMessageChunk>;
  /** Paces live chunks into `controller`. */
  pacer: ChunkPacer;
  /** The stream starts at the `start` chunk with this message id. */
  waitFor?: string;
}

interface ChatState {
  runId?: string;
  /** The assistant message of the turn this page last saw begin (ack, session or `start`). */
  assistantMessageId?: string;
  /** The turn a `stop` was already sent for. */
  stopSentFor?: string;
  lastApplied: number;
  held: Map<number, UIMessageChunk>;
  /** Chunks of the current (or last) turn, from its `start`. */
  turn: UIMessageChunk[];
  turnOpen: boolean;
  sink?: Sink;
  following: boolean;
  gapTimer?: ReturnType<typeof setTimeout>;
}

interface Pending {
  resolve: (frame: ServerFrame) => void;
  reject: (error: Error) => void;
  timer: ReturnType<typeof setTimeout>;
  /** The frame's text, while it waits in the outbox for a socket. */
  text: string;
}

let counter = 0;
const newRequestId = () => `r${Date.now().toString(36)}${(counter++).toString(36)}`;

export class ChatRequestError extends Error {
  constructor(
    readonly code: string,
    message: string,
    /** With `rate_limited`: when the server will accept the request. */
    readonly retryAfterMs?: number,
  ) {
    super(message);
    this.name = 'ChatRequestError';
  }
}

export class WebSocketChatTransport implements ChatTransport<UIMessage> {
  /** A resumed stream replays the running turn from its `start`. */
  readonly resumeStreamIsReplay = true;

  private socket?: WebSocket;
  private open = false;
  private outbox: string[] = [];
  private chats = new Map<string, ChatState>();
  private pending = new Map<string, Pending>();
  private attempt = 0;
  private closedByUs = false;
  private timers: ReturnType<typeof setTimeout>[] = [];
  private pingTimer?: ReturnType<typeof setInterval>;
  private pongTimer?: ReturnType<typeof setTimeout>;
  private reconnectTimer?: ReturnType<typeof setTimeout>;
  private connecting = false;
  /** Set by the first connection attempt: from then on a socket is kept open. */
  private wanted = false;
  private everOpened = false;
  private status: ConnectionStatus = { state: 'idle', attempt: 0 };
  private detachLifecycle?: () => void;

  constructor(private readonly options: TransportOptions) {
    const lifecycle =
      options.lifecycle === undefined && typeof window !== 'undefined' && typeof document !== 'undefined'
        ? { window, document }
        : options.lifecycle;
    if (lifecycle) {
      const onOnline = () => this.reconnectNow();
      const onVisible = () => {
        if (lifecycle.document.visibilityState === 'visible') this.reconnectNow();
      };
      lifecycle.window.addEventListener('online', onOnline);
      lifecycle.document.addEventListener('visibilitychange', onVisible);
      this.detachLifecycle = () => {
        lifecycle.window.removeEventListener('online', onOnline);
        lifecycle.document.removeEventListener('visibilitychange', onVisible);
      };
    }
  }

  /** Opens the socket ahead of need (the page starts it while it loads the chat over HTTP). */
  connectEarly() {
    this.wanted = true;
    if (!this.open && !this.connecting && !this.reconnectTimer) void this.connect();
  }

  /** The connection's current state. */
  connectionStatus(): ConnectionStatus {
    return this.status;
  }

  /**
   * Tries to connect now instead of waiting out the backoff (the browser is back online, the tab
   * became visible, the user asked). An open socket is checked with a ping instead.
   */
  reconnectNow() {
    if (this.closedByUs || !this.wanted) return;
    if (this.open) {
      this.ping();
      return;
    }
    if (this.connecting) return;
    if (this.reconnectTimer) clearTimeout(this.reconnectTimer);
    this.reconnectTimer = undefined;
    void this.connect();
  }

  // ---- ChatTransport ----

  async sendMessages(options: {
    trigger: 'submit-message' | 'regenerate-message';
    chatId: string;
    messageId: string | undefined;
    messages: UIMessage[];
    abortSignal: AbortSignal | undefined;
  }): Promise<ReadableStream<UIMessageChunk>> {
    const { trigger, chatId, messages, abortSignal } = options;
    const state = this.state(chatId);
    // An edit (`sendMessage({ messageId })`) names the user message it replaces: the message
    // sent carries that id, and the server drops everything after it (DESIGN §5).
    const model = this.options.model?.(chatId);
    const frame: ClientFrame =
      trigger === 'submit-message'
        ? {
            action: 'send-message',
            chatId,
            trigger,
            message: messages[messages.length - 1],
            ...(options.messageId ? { messageId: options.messageId } : {}),
            ...(model ? { model } : {}),
          }
        : { action: 'send-message', chatId, trigger, messageId: options.messageId, ...(model ? { model } : {}) };
    // The sender is subscribed by the send itself: frames of this turn may come before the ack.
    state.following = true;
    const ack = await this.request(frame);
    if (ack.type !== 'ack') throw new ChatRequestError('internal', `unexpected ${ack.type}`);
    if (state.runId !== ack.runId) {
      this.resetRun(state, ack.runId);
    }
    state.assistantMessageId = ack.assistantMessageId;
    const stream = this.openStream(chatId, ack.assistantMessageId);
    abortSignal?.addEventListener('abort', () => this.stopTurn(chatId), { once: true });
    return stream;
  }

  async reconnectToStream(options: { chatId: string }): Promise<ReadableStream<UIMessageChunk> | null> {
    const { chatId } = options;
    const state = this.state(chatId);
    const session = this.options.session?.(chatId);
    if (session && state.runId !== session.runId) {
      this.resetRun(state, session.runId);
      state.lastApplied = session.lastEventId;
    } else if (session && state.lastApplied < session.lastEventId && !state.turnOpen) {
      state.lastApplied = session.lastEventId;
    }
    if (state.turnOpen) {
      // A turn is already streaming to this page (another tab started it).
      return this.openStream(chatId, startId(state.turn[0]));
    }
    this.follow(chatId);
    if (!session?.streaming || !session.assistantMessageId) return null;
    state.assistantMessageId = session.assistantMessageId;
    return this.openStream(chatId, session.assistantMessageId);
  }

  /**
   * Asks the server to stop the turn streaming on a chat, naming it (so a stop that arrives
   * late cannot end the next turn), once per turn. useChat's `stop()` reaches the transport
   * only for a turn this page sent; a turn it resumed (after a refresh, from another tab) is
   * stopped through here.
   */
  stopTurn(chatId: string) {
    const state = this.state(chatId);
    const turn = state.assistantMessageId;
    if (turn && state.stopSentFor === turn) return;
    state.stopSentFor = turn;
    // The last event this page showed, so the stored reply ends exactly where the text froze on
    // screen (events already in flight, or held by the pacer, are not kept): useChat stops
    // showing text at the stop. What the pacer holds is let out all the same, in order.
    const shown = state.sink?.pacer.shownThrough() ?? state.lastApplied;
    state.sink?.pacer.flush();
    this.send({
      action: 'stop',
      chatId,
      ...(state.runId ? { runId: state.runId, lastEventId: shown } : {}),
      ...(turn ? { assistantMessageId: turn } : {}),
    });
  }

  // ---- following chats ----

  /** Subscribes to a chat's frames (a tab that opens a chat does this even when nothing streams). */
  follow(chatId: string) {
    const state = this.state(chatId);
    state.following = true;
    this.send({ action: 'resume', requestId: newRequestId(), chatId, runId: state.runId, lastEventId: state.lastApplied });
  }

  /** Stops following a chat (the tab left it). */
  unfollow(chatId: string) {
    const state = this.chats.get(chatId);
    if (!state) return;
    state.following = false;
    state.sink?.pacer.cancel();
    state.sink = undefined;
    if (state.gapTimer) clearTimeout(state.gapTimer);
    this.send({ action: 'unsubscribe', chatId });
  }

  /** Whether a turn of this chat is streaming to this page. */
  isStreaming(chatId: string) {
    return this.chats.get(chatId)?.turnOpen ?? false;
  }

  /** Closes the socket for good. */
  close() {
    this.closedByUs = true;
    this.timers.forEach(clearTimeout);
    if (this.pingTimer) clearInterval(this.pingTimer);
    if (this.pongTimer) clearTimeout(this.pongTimer);
    if (this.reconnectTimer) clearTimeout(this.reconnectTimer);
    for (const pending of this.pending.values()) clearTimeout(pending.timer);
    this.detachLifecycle?.();
    this.socket?.close();
  }

  // ---- internals ----

  private state(chatId: string): ChatState {
    let state = this.chats.get(chatId);
    if (!state) {
      state = { lastApplied: 0, held: new Map(), turn: [], turnOpen: false, following: false };
      this.chats.set(chatId, state);
    }
    return state;
  }

  private resetRun(state: ChatState, runId: string) {
    state.runId = runId;
    state.lastApplied = 0;
    state.held.clear();
  }

  private openStream(chatId: string, waitFor: string | undefined): ReadableStream<UIMessageChunk> {
    const state = this.state(chatId);
    let mine: Sink | undefined;
    return new ReadableStream<UIMessageChunk>({
      start: (controller) => {
        const emit = (chunk: UIMessageChunk) => {
          try {
            controller.enqueue(chunk);
          } catch {
            // The stream was closed or cancelled: nobody reads it any more.
            sink.pacer.cancel();
            if (state.sink === sink) state.sink = undefined;
          }
        };
        const pacing = this.options.pacing;
        const sink: Sink = {
          controller,
          waitFor,
          pacer: new ChunkPacer(emit, pacing === false ? { tickMs: Infinity } : pacing),
        };
        state.sink?.pacer.cancel();
        state.sink = sink;
        mine = sink;
        // The turn may have begun (or even ended) before the stream existed.
        if (state.turn.length > 0 && startId(state.turn[0]) === waitFor) {
          sink.waitFor = undefined;
          for (const chunk of state.turn) controller.enqueue(chunk);
          if (!state.turnOpen) this.closeSink(state);
        }
      },
      cancel: () => {
        // Only this stream's sink: a newer stream of the chat may have replaced it.
        mine?.pacer.cancel();
        if (state.sink === mine) state.sink = undefined;
      },
    });
  }

  private closeSink(state: ChatState) {
    const sink = state.sink;
    state.sink = undefined;
    sink?.pacer.flush();
    try {
      sink?.controller.close();
    } catch {
      // already closed or cancelled
    }
  }

  /**
   * Sends a frame that the server answers (`ack` or `error`).
   * # Errors
   * The server's `error` as a `ChatRequestError`; code `timeout` when nothing came back within
   * `requestTimeoutMs` (a frame still waiting for a socket is then not sent at all, so a retry
   * cannot send it twice); code `disconnected` when the socket dropped before the answer.
   */
  private request(frame: ClientFrame): Promise<ServerFrame> {
    const requestId = newRequestId();
    const text = JSON.stringify({ ...frame, requestId });
    const timeoutMs = this.options.requestTimeoutMs ?? 10_000;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        if (!this.pending.delete(requestId)) return;
        this.outbox = this.outbox.filter((queued) => queued !== text);
        reject(new ChatRequestError('timeout', `The server did not answer within ${Math.round(timeoutMs / 1000)} s.`));
      }, timeoutMs);
      this.pending.set(requestId, {
        resolve: (answer) => {
          clearTimeout(timer);
          resolve(answer);
        },
        reject: (error) => {
          clearTimeout(timer);
          reject(error);
        },
        timer,
        text,
      });
      this.sendText(text, true);
    });
  }

  private send(frame: ClientFrame) {
    this.sendText(JSON.stringify(frame));
  }

  /** Sends now, or queues for the next socket; `urgent` (a user's request) skips the backoff wait. */
  private sendText(text: string, urgent = false) {
    if (this.open && this.socket) {
      this.socket.send(text);
    } else {
      this.outbox.push(text);
      this.wanted = true;
      if (urgent) this.reconnectNow();
      else if (!this.reconnectTimer) void this.connect();
    }
  }

  private setStatus(status: ConnectionStatus) {
    this.status = status;
    this.options.onStatus?.(status);
  }

  private async connect() {
    if (this.connecting || this.open || this.closedByUs) return;
    this.wanted = true;
    this.connecting = true;
    this.setStatus({ state: this.everOpened ? 'reconnecting' : 'connecting', attempt: this.attempt });
    let url: string;
    try {
      url = await this.options.url();
    } catch {
      this.connecting = false;
      this.scheduleReconnect(true);
      return;
    }
    if (this.closedByUs) return;
    const Impl = this.options.WebSocketImpl ?? WebSocket;
    let socket: WebSocket;
    try {
      socket = new Impl(url);
    } catch {
      this.connecting = false;
      this.scheduleReconnect(true);
      return;
    }
    this.socket = socket;
    let opened = false;
    const openTimer = setTimeout(() => {
      // Neither open nor closed: a connection attempt that hangs would block every later one.
      if (!opened && this.socket === socket) socket.close();
    }, this.options.connectTimeoutMs ?? 10_000);
    this.timers.push(openTimer);
    socket.onopen = () => {
      clearTimeout(openTimer);
      opened = true;
      this.connecting = false;
      this.open = true;
      this.everOpened = true;
      this.attempt = 0;
      this.setStatus({ state: 'connected', attempt: 0 });
      // Catch up every chat we follow: the replay fills whatever the drop lost.
      const catchUp: string[] = [];
      for (const [chatId, state] of this.chats) {
        if (state.following) {
          catchUp.push(
            JSON.stringify({ action: 'resume', requestId: newRequestId(), chatId, runId: state.runId, lastEventId: state.lastApplied }),
          );
        }
      }
      const queued = this.outbox.filter((t) => !isResume(t));
      this.outbox = [];
      for (const text of [...catchUp, ...queued]) socket.send(text);
      this.startTimers(socket);
    };
    socket.onmessage = (event: MessageEvent) => {
      const frame = parseServerFrame(typeof event.data === 'string' ? event.data : '');
      if (frame) this.handle(frame);
    };
    socket.onclose = () => {
      clearTimeout(openTimer);
      if (this.socket !== socket) return;
      this.open = false;
      this.connecting = false;
      this.socket = undefined;
      if (this.pingTimer) clearInterval(this.pingTimer);
      if (this.pongTimer) clearTimeout(this.pongTimer);
      this.pongTimer = undefined;
      // Requests sent on this socket may or may not have arrived: let their callers decide.
      // Requests still in the outbox were never sent and wait for the next socket.
      for (const [id, pending] of this.pending) {
        if (this.outbox.includes(pending.text)) continue;
        this.pending.delete(id);
        pending.reject(new ChatRequestError('disconnected', 'The connection was lost before the server answered.'));
      }
      if (!this.closedByUs) this.scheduleReconnect(!opened);
    };
    socket.onerror = () => {
      // onclose follows and reconnects.
    };
  }

  /** Pings the server; no pong in time means the socket is dead, so it is closed and retried. */
  private ping() {
    const socket = this.socket;
    if (!socket || !this.open) return;
    socket.send(JSON.stringify({ action: 'ping' }));
    if (this.pongTimer) return;
    this.pongTimer = setTimeout(() => {
      this.pongTimer = undefined;
      if (this.socket === socket) socket.close();
    }, this.options.pongTimeoutMs ?? 10_000);
  }

  private startTimers(socket: WebSocket) {
    if (this.pingTimer) clearInterval(this.pingTimer);
    this.pingTimer = setInterval(() => this.ping(), this.options.pingIntervalMs ?? 5 * 60_000);
    const planned = setTimeout(() => {
      // A planned reconnect before API Gateway's 2-hour cap: the new socket resumes every chat.
      if (this.socket === socket) socket.close(1000, 'planned reconnect');
    }, this.options.maxConnectionMs ?? 110 * 60_000);
    this.timers.push(planned);
  }

  private scheduleReconnect(failedBeforeOpen: boolean) {
    if (this.closedByUs) return;
    const delay = backoffDelay(
      this.attempt,
      this.options.minBackoffMs ?? 500,
      this.options.maxBackoffMs ?? 10_000,
      this.options.random,
    );
    this.attempt += 1;
    this.setStatus({ state: this.everOpened ? 'reconnecting' : 'connecting', attempt: this.attempt, retryAt: Date.now() + delay });
    if (this.reconnectTimer) clearTimeout(this.reconnectTimer);
    this.reconnectTimer = setTimeout(async () => {
      this.reconnectTimer = undefined;
      if (failedBeforeOpen) {
        // A refused token closes the socket before it opens: get a fresh one. That can fail
        // too while the network is down; the attempt below then fails and backs off again.
        try {
          await this.options.onConnectFailed?.();
        } catch {
          // counted as this attempt's failure
        }
      }
      void this.connect();
    }, delay);
  }

  private handle(frame: ServerFrame) {
    switch (frame.type) {
      case 'pong':
        if (this.pongTimer) clearTimeout(this.pongTimer);
        this.pongTimer = undefined;
        break;
      case 'ack':
      case 'error': {
        let requestId = frame.requestId;
        if (frame.type === 'error' && frame.fromGateway && this.pending.size === 1) {
          // API Gateway's own errors ("Internal server error" when a function failed) carry its
          // request id, not ours; with one request outstanding it is the one that failed.
          requestId = [...this.pending.keys()][0];
        }
        const pending = requestId ? this.pending.get(requestId) : undefined;
        if (pending && requestId) {
          this.pending.delete(requestId);
          if (frame.type === 'ack') pending.resolve(frame);
          else pending.reject(new ChatRequestError(frame.code, frame.message, frame.retryAfterMs));
        }
        break;
      }
      case 'turn-started': {
        const state = this.state(frame.chatId);
        if (state.runId !== frame.runId) this.resetRun(state, frame.runId);
        if (state.lastApplied < frame.firstEventId - 1) {
          state.lastApplied = frame.firstEventId - 1;
          for (const id of [...state.held.keys()]) if (id <= state.lastApplied) state.held.delete(id);
        }
        break;
      }
      case 'subscribed': {
        if (!frame.runId || frame.replayFrom === undefined) break;
        const state = this.state(frame.chatId);
        if (state.runId !== frame.runId) this.resetRun(state, frame.runId);
        if (state.lastApplied < frame.replayFrom) {
          // The server replays only the running turn to a page that did not hold this run
          // (its completed turns are in the history over HTTP): take up from where the replay
          // starts, or the events before it would stay a gap asked for again and again.
          state.lastApplied = frame.replayFrom;
          this.drainHeld(state, frame.chatId, false);
        }
        break;
      }
      case 'events':
        this.applyEvents(frame);
        break;
      case 'turn-complete': {
        const state = this.state(frame.chatId);
        if (state.runId === frame.runId && state.held.size === 0 && state.lastApplied < frame.lastEventId) {
          // Everything up to here was persisted; a gap now means frames were lost: replay.
          this.send({ action: 'resume', chatId: frame.chatId, runId: frame.runId, lastEventId: state.lastApplied });
        }
        break;
      }
      default:
        break;
    }
    this.options.onFrame?.(frame);
  }

  private applyEvents(frame: Extract<ServerFrame, { type: 'events' }>) {
    const state = this.state(frame.chatId);
    if (state.runId !== frame.runId) this.resetRun(state, frame.runId);
    frame.chunks.forEach((chunk, i) => {
      const id = frame.firstEventId + i;
      if (id > state.lastApplied && !state.held.has(id)) state.held.set(id, chunk);
    });
    const live = !frame.replay;
    if (live) state.sink?.pacer.frame();
    this.drainHeld(state, frame.chatId, live);
  }

  /**
   * Applies the held events that follow the last applied one; a gap left open asks for a replay.
   * `live`: they came with a live frame, so their text is paced; a replay's is shown at once.
   */
  private drainHeld(state: ChatState, chatId: string, live: boolean) {
    for (const id of [...state.held.keys()]) if (id <= state.lastApplied) state.held.delete(id);
    for (let next = state.held.get(state.lastApplied + 1); next; next = state.held.get(state.lastApplied + 1)) {
      state.held.delete(state.lastApplied + 1);
      state.lastApplied += 1;
      this.apply(state, next, state.lastApplied, live);
    }
    if (state.held.size === 0) {
      if (state.gapTimer) clearTimeout(state.gapTimer);
      state.gapTimer = undefined;
    } else if (!state.gapTimer) {
      state.gapTimer = setTimeout(() => {
        state.gapTimer = undefined;
        if (state.held.size > 0) {
          this.send({ action: 'resume', requestId: newRequestId(), chatId, runId: state.runId, lastEventId: state.lastApplied });
        }
      }, this.options.gapTimeoutMs ?? 1000);
    }
  }

  private apply(state: ChatState, chunk: UIMessageChunk, id: number, live: boolean) {
    if (chunk.type === 'start') {
      state.turn = [chunk];
      state.turnOpen = true;
      if (chunk.messageId) state.assistantMessageId = chunk.messageId;
      if (state.sink?.waitFor && chunk.messageId === state.sink.waitFor) {
        state.sink.waitFor = undefined;
      } else if (!state.sink && state.following) {
        const chatId = [...this.chats].find(([, s]) => s === state)?.[0];
        if (chatId) queueMicrotask(() => this.options.onUnclaimedTurn?.(chatId));
      }
    } else if (state.turnOpen) {
      state.turn.push(chunk);
    }
    const sink = state.sink;
    if (sink && !sink.waitFor && (state.turnOpen || chunk.type === 'finish')) {
      if (live) sink.pacer.live(chunk, id);
      else sink.pacer.immediate(chunk, id);
    }
    if (chunk.type === 'finish') {
      state.turnOpen = false;
      if (sink && !sink.waitFor) this.closeSink(state);
    }
  }
}

function startId(chunk: UIMessageChunk | undefined): string | undefined {
  return chunk && chunk.type === 'start' ? chunk.messageId : undefined;
}

function isResume(text: string) {
  return text.startsWith('{"action":"resume"');
}
