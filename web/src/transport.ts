// WebSocketChatTransport: the AI SDK's ChatTransport over chatrun's WebSocket protocol.
//
// One socket serves every chat of the page. Chunks carry consecutive event ids per run: the
// transport applies each id once, in order, holding frames that arrive early, and asks for a
// replay (`resume`) when a gap stays open. A reconnect after a drop resumes every chat it follows
// from the last applied id, so nothing is lost and nothing shows twice.
import type { ChatTransport, UIMessage, UIMessageChunk } from 'ai';
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
  /** The model a new chat should use. */
  model?: () => string | undefined;
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
}

interface Sink {
  controller: ReadableStreamDefaultController<UIMessageChunk>;
  /** The stream starts at the `start` chunk with this message id. */
  waitFor?: string;
}

interface ChatState {
  runId?: string;
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
}

let counter = 0;
const newRequestId = () => `r${Date.now().toString(36)}${(counter++).toString(36)}`;

export class ChatRequestError extends Error {
  constructor(
    readonly code: string,
    message: string,
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
  private backoff: number;
  private closedByUs = false;
  private timers: ReturnType<typeof setTimeout>[] = [];
  private pingTimer?: ReturnType<typeof setInterval>;
  private connecting = false;

  constructor(private readonly options: TransportOptions) {
    this.backoff = options.minBackoffMs ?? 250;
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
    const frame: ClientFrame =
      trigger === 'submit-message'
        ? { action: 'send-message', chatId, trigger, message: messages[messages.length - 1], model: this.options.model?.() }
        : { action: 'send-message', chatId, trigger, messageId: options.messageId };
    const ack = await this.request(frame);
    if (ack.type !== 'ack') throw new ChatRequestError('internal', `unexpected ${ack.type}`);
    state.following = true;
    if (state.runId !== ack.runId) {
      this.resetRun(state, ack.runId);
    }
    const stream = this.openStream(chatId, ack.assistantMessageId);
    abortSignal?.addEventListener('abort', () => this.send({ action: 'stop', chatId }), { once: true });
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
    return this.openStream(chatId, session.assistantMessageId);
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
    return new ReadableStream<UIMessageChunk>({
      start: (controller) => {
        const sink: Sink = { controller, waitFor };
        state.sink = sink;
        // The turn may have begun (or even ended) before the stream existed.
        if (state.turn.length > 0 && startId(state.turn[0]) === waitFor) {
          sink.waitFor = undefined;
          for (const chunk of state.turn) controller.enqueue(chunk);
          if (!state.turnOpen) this.closeSink(state);
        }
      },
      cancel: () => {
        if (state.sink?.controller) state.sink = undefined;
      },
    });
  }

  private closeSink(state: ChatState) {
    const sink = state.sink;
    state.sink = undefined;
    try {
      sink?.controller.close();
    } catch {
      // already closed or cancelled
    }
  }

  private request(frame: ClientFrame): Promise<ServerFrame> {
    const requestId = newRequestId();
    return new Promise((resolve, reject) => {
      this.pending.set(requestId, { resolve, reject });
      this.send({ ...frame, requestId } as ClientFrame);
    });
  }

  private send(frame: ClientFrame) {
    const text = JSON.stringify(frame);
    if (this.open && this.socket) {
      this.socket.send(text);
    } else {
      this.outbox.push(text);
      void this.connect();
    }
  }

  private async connect() {
    if (this.connecting || this.open || this.closedByUs) return;
    this.connecting = true;
    let url: string;
    try {
      url = await this.options.url();
    } catch {
      this.connecting = false;
      this.scheduleReconnect(true);
      return;
    }
    const Impl = this.options.WebSocketImpl ?? WebSocket;
    const socket = new Impl(url);
    this.socket = socket;
    let opened = false;
    socket.onopen = () => {
      opened = true;
      this.connecting = false;
      this.open = true;
      this.backoff = this.options.minBackoffMs ?? 250;
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
      if (this.socket !== socket) return;
      this.open = false;
      this.connecting = false;
      this.socket = undefined;
      if (this.pingTimer) clearInterval(this.pingTimer);
      // Requests in flight may or may not have arrived: let their callers decide.
      for (const [id, pending] of this.pending) {
        pending.reject(new ChatRequestError('internal', 'the connection was lost; please retry'));
        this.pending.delete(id);
      }
      if (!this.closedByUs) this.scheduleReconnect(!opened);
    };
    socket.onerror = () => {
      // onclose follows and reconnects.
    };
  }

  private startTimers(socket: WebSocket) {
    if (this.pingTimer) clearInterval(this.pingTimer);
    this.pingTimer = setInterval(() => this.send({ action: 'ping' }), this.options.pingIntervalMs ?? 5 * 60_000);
    const planned = setTimeout(() => {
      // A planned reconnect before API Gateway's 2-hour cap: the new socket resumes every chat.
      if (this.socket === socket) socket.close(1000, 'planned reconnect');
    }, this.options.maxConnectionMs ?? 110 * 60_000);
    this.timers.push(planned);
  }

  private scheduleReconnect(failedBeforeOpen: boolean) {
    const delay = this.backoff;
    this.backoff = Math.min(this.backoff * 2, this.options.maxBackoffMs ?? 10_000);
    const timer = setTimeout(async () => {
      if (failedBeforeOpen) await this.options.onConnectFailed?.();
      void this.connect();
    }, delay);
    this.timers.push(timer);
  }

  private handle(frame: ServerFrame) {
    switch (frame.type) {
      case 'ack':
      case 'error': {
        const pending = frame.requestId ? this.pending.get(frame.requestId) : undefined;
        if (pending && frame.requestId) {
          this.pending.delete(frame.requestId);
          if (frame.type === 'ack') pending.resolve(frame);
          else pending.reject(new ChatRequestError(frame.code, frame.message));
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
    for (let next = state.held.get(state.lastApplied + 1); next; next = state.held.get(state.lastApplied + 1)) {
      state.held.delete(state.lastApplied + 1);
      state.lastApplied += 1;
      this.apply(state, next);
    }
    if (state.held.size === 0) {
      if (state.gapTimer) clearTimeout(state.gapTimer);
      state.gapTimer = undefined;
    } else if (!state.gapTimer) {
      state.gapTimer = setTimeout(() => {
        state.gapTimer = undefined;
        if (state.held.size > 0) {
          this.send({ action: 'resume', requestId: newRequestId(), chatId: frame.chatId, runId: state.runId, lastEventId: state.lastApplied });
        }
      }, this.options.gapTimeoutMs ?? 1000);
    }
  }

  private apply(state: ChatState, chunk: UIMessageChunk) {
    if (chunk.type === 'start') {
      state.turn = [chunk];
      state.turnOpen = true;
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
      try {
        sink.controller.enqueue(chunk);
      } catch {
        state.sink = undefined;
      }
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
