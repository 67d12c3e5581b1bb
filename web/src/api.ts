// The HTTP API (DESIGN §8) and the page's guest identity.
import type { ChatSummary, ChatView, MessagePageView, ModelInfo } from './protocol';

const TOKEN_KEY = 'chatrun.token';

/** Where the APIs are when they are not on the page's origin (the CDK stack writes it). */
export interface RuntimeConfig {
  wsUrl?: string;
  apiUrl?: string;
}

let runtimeConfig: RuntimeConfig = {};
const CONFIG_KEY = 'chatrun.config';

async function fetchRuntimeConfig(): Promise<RuntimeConfig> {
  try {
    const response = await fetch('/config.json', { cache: 'no-store' });
    if (response.ok && response.headers.get('content-type')?.includes('json')) {
      return (await response.json()) as RuntimeConfig;
    }
  } catch {
    // No config: same origin.
  }
  return {};
}

/**
 * Reads `/config.json` when the deployment has one; the local gateway serves everything itself.
 * A config seen before is used at once (and refreshed in the background for the next load), so
 * a returning visitor's first paint does not wait for it.
 */
export async function loadRuntimeConfig(): Promise<void> {
  let cached: string | null = null;
  try {
    cached = localStorage.getItem(CONFIG_KEY);
  } catch {
    // Storage blocked: fetch every time.
  }
  const refresh = fetchRuntimeConfig().then((config) => {
    try {
      localStorage.setItem(CONFIG_KEY, JSON.stringify(config));
    } catch {
      // Not remembered.
    }
    return config;
  });
  if (cached !== null) {
    try {
      runtimeConfig = JSON.parse(cached) as RuntimeConfig;
      return;
    } catch {
      // Unreadable: wait for the fresh one.
    }
  }
  runtimeConfig = await refresh;
}

export class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
    /** With `rate_limited` (429): when the server will accept the request. */
    readonly retryAfterMs?: number,
  ) {
    super(message);
  }
}

/** The `ApiError` a failed response's `{"error": {...}}` body describes. */
function errorOf(response: Response, json: unknown, fallback: string): ApiError {
  const error = (json as { error?: { code?: string; message?: string; retryAfterMs?: number } }).error ?? {};
  return new ApiError(response.status, error.code ?? 'internal', error.message ?? fallback, error.retryAfterMs);
}

async function apiError(response: Response, fallback: string): Promise<ApiError> {
  return errorOf(response, await response.json().catch(() => ({})), fallback);
}

export class Api {
  private token: string | null = localStorage.getItem(TOKEN_KEY);

  private readonly base: string;

  constructor(base?: string) {
    this.base = (base ?? runtimeConfig.apiUrl ?? '').replace(/\/$/, '');
  }

  /** The token request in flight: callers at the same moment share it (one guest, not three). */
  private tokenRequest: Promise<string> | null = null;

  /** A valid user token: the stored one, or a new guest's. */
  async ensureToken(): Promise<string> {
    if (!this.token) await this.refreshToken();
    return this.token!;
  }

  /** A fresh token for the same user when the stored one still verifies, else a new guest. */
  refreshToken(): Promise<string> {
    this.tokenRequest ??= this.requestToken().finally(() => {
      this.tokenRequest = null;
    });
    return this.tokenRequest;
  }

  private async requestToken(): Promise<string> {
    const headers: Record<string, string> = {};
    if (this.token) headers.Authorization = `Bearer ${this.token}`;
    // Bounded, like every call: a reconnect that waits for a token must not wait forever.
    const response = await fetch(`${this.base}/api/session`, { method: 'POST', headers, signal: AbortSignal.timeout(15_000) });
    if (!response.ok) throw await apiError(response, 'could not start a session');
    const body = (await response.json()) as { token: string; userId: string };
    this.token = body.token;
    localStorage.setItem(TOKEN_KEY, body.token);
    return body.token;
  }

  private async call<T>(method: string, path: string, body?: unknown, retried = false): Promise<T> {
    const token = await this.ensureToken();
    const response = await fetch(`${this.base}${path}`, {
      // A server that accepted the connection but never answers must not hang the page.
      signal: AbortSignal.timeout(15_000),
      method,
      headers: { Authorization: `Bearer ${token}`, ...(body ? { 'Content-Type': 'application/json' } : {}) },
      body: body ? JSON.stringify(body) : undefined,
    });
    if (response.status === 401 && !retried) {
      await this.refreshToken();
      return this.call(method, path, body, true);
    }
    if (response.status === 204) return undefined as T;
    const json = await response.json().catch(() => ({}));
    if (!response.ok) throw errorOf(response, json, response.statusText);
    return json as T;
  }

  listChats(cursor?: string | null) {
    const query = cursor ? `?cursor=${encodeURIComponent(cursor)}` : '';
    return this.call<{ chats: ChatSummary[]; nextCursor: string | null }>('GET', `/api/chats${query}`);
  }

  /** The chat with the newest page of its history (the server's default size). */
  getChat(id: string) {
    return this.call<ChatView>('GET', `/api/chats/${encodeURIComponent(id)}`);
  }

  /** The page of messages older than `before`, a cursor an earlier page returned. */
  olderMessages(id: string, before: string) {
    return this.call<MessagePageView>(
      'GET',
      `/api/chats/${encodeURIComponent(id)}/messages?before=${encodeURIComponent(before)}`,
    );
  }

  renameChat(id: string, title: string) {
    return this.call<ChatSummary>('PATCH', `/api/chats/${encodeURIComponent(id)}`, { title });
  }

  deleteChat(id: string) {
    return this.call<void>('DELETE', `/api/chats/${encodeURIComponent(id)}`);
  }

  models() {
    return this.call<{ models: ModelInfo[]; default: string }>('GET', '/api/models');
  }

  /** The WebSocket URL for this page's origin (or `VITE_WS_URL`). */
  async socketUrl(): Promise<string> {
    const token = await this.ensureToken();
    const base = runtimeConfig.wsUrl ?? `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/ws`;
    return `${base}?token=${encodeURIComponent(token)}`;
  }
}

/** "just now", "5 min ago", "3 h ago", "2 d ago", or a date. */
export function timeAgo(millis: number, now = Date.now()): string {
  const seconds = Math.max(0, Math.round((now - millis) / 1000));
  if (seconds < 45) return 'just now';
  const minutes = Math.round(seconds / 60);
  if (minutes < 60) return `${minutes} min ago`;
  const hours = Math.round(minutes / 60);
  if (hours < 24) return `${hours} h ago`;
  const days = Math.round(hours / 24);
  if (days < 14) return `${days} d ago`;
  return new Date(millis).toLocaleDateString();
}
