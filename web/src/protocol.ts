// The WebSocket wire protocol (DESIGN §5): the TypeScript twin of crates/core/src/protocol.rs.
import type { UIMessage, UIMessageChunk } from 'ai';

export type ErrorCode =
  | 'bad_request'
  | 'unauthorized'
  | 'forbidden'
  | 'not_found'
  | 'too_large'
  | 'conflict'
  | 'rate_limited'
  | 'internal';

export type ClientFrame =
  | {
      action: 'send-message';
      requestId?: string;
      chatId: string;
      trigger: 'submit-message' | 'regenerate-message';
      message?: UIMessage;
      messageId?: string;
      model?: string;
    }
  | { action: 'resume'; requestId?: string; chatId: string; runId?: string; lastEventId: number }
  | { action: 'stop'; requestId?: string; chatId: string; runId?: string; assistantMessageId?: string }
  | { action: 'unsubscribe'; requestId?: string; chatId: string }
  | { action: 'ping'; requestId?: string };

export type ServerFrame =
  | {
      type: 'ack';
      requestId?: string;
      chatId: string;
      runId: string;
      accessToken: string;
      userMessageId: string;
      assistantMessageId: string;
    }
  | {
      type: 'turn-started';
      chatId: string;
      runId: string;
      userMessage: UIMessage;
      assistantMessageId: string;
      firstEventId: number;
    }
  | {
      type: 'subscribed';
      requestId?: string;
      chatId: string;
      runId: string | null;
      streaming: boolean;
      /** The replay holds the events after this id (the running turn's start when the resume
       * did not name the current run). */
      replayFrom?: number;
      replayThrough: number;
    }
  | { type: 'unsubscribed'; requestId?: string; chatId: string }
  | {
      type: 'events';
      chatId: string;
      runId: string;
      firstEventId: number;
      chunks: UIMessageChunk[];
      replay: boolean;
    }
  | { type: 'turn-complete'; chatId: string; runId: string; lastEventId: number; accessToken: string }
  | { type: 'session-ended'; chatId: string; runId: string; reason: 'max-turns' | 'idle' | 'failed' }
  | {
      type: 'error';
      requestId?: string;
      chatId?: string;
      code: ErrorCode;
      message: string;
      retryAfterMs?: number;
      /** API Gateway's own error (`{"message": "Internal server error", ...}`), with no `type`. */
      fromGateway?: boolean;
    }
  | { type: 'pong'; requestId?: string };

/** The session part of `GET /api/chats/{id}`. */
export interface SessionView {
  runId: string;
  accessToken: string;
  lastEventId: number;
  status: 'active' | 'ended';
  streaming: boolean;
  assistantMessageId: string | null;
}

export interface ChatView {
  id: string;
  title: string;
  model: string;
  createdAt: number;
  updatedAt: number;
  /** The newest page of the history, oldest first. */
  messages: UIMessage[];
  /** Pages on to older messages; `null` when `messages` starts at the first one. */
  olderCursor: string | null;
  session: SessionView | null;
}

/** `GET /api/chats/{id}/messages`. */
export interface MessagePageView {
  messages: UIMessage[];
  olderCursor: string | null;
}

export interface ChatSummary {
  id: string;
  title: string;
  model: string;
  updatedAt: number;
}

export interface ModelInfo {
  id: string;
  label: string;
  offline: boolean;
}

/**
 * Reads a frame from the server. API Gateway answers some failures itself (a function that threw
 * or timed out, throttling, an unknown route) with `{"message": "...", "connectionId": "...",
 * "requestId": "..."}` and no `type`: those become `error` frames marked `fromGateway`, so the page
 * shows them rather than ignoring them.
 */
export function parseServerFrame(text: string): ServerFrame | null {
  try {
    const value = JSON.parse(text);
    if (!value || typeof value !== 'object') return null;
    if (typeof value.type === 'string') return value as ServerFrame;
    if (typeof value.message === 'string') {
      const throttled = /too many requests|limit exceeded/i.test(value.message);
      return { type: 'error', code: throttled ? 'rate_limited' : 'internal', message: value.message, fromGateway: true };
    }
    return null;
  } catch {
    return null;
  }
}
