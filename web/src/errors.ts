/** What the page says about a failed request: the server's own words, plus when to try again. */

/** The parts of a failed request the page reads (`ChatRequestError`, `ApiError`). */
export interface RequestFailure {
  code?: string;
  message?: string;
  retryAfterMs?: number;
}

/** "in 5 seconds", "in 2 minutes": rounded up, so following it never retries too early. */
export function retryPhrase(ms: number): string {
  const seconds = Math.max(1, Math.ceil(ms / 1000));
  if (seconds < 90) return `in ${seconds} second${seconds === 1 ? '' : 's'}`;
  const minutes = Math.ceil(seconds / 60);
  return `in ${minutes} minutes`;
}

/** A readable sentence for a failed request. */
export function describeError(error: RequestFailure): string {
  if (error.code === 'timeout') return 'No answer from the server within 10 seconds.';
  if (error.code === 'disconnected') return 'The connection dropped before the server answered.';
  if (error.code === 'rate_limited') {
    const when = error.retryAfterMs !== undefined ? retryPhrase(error.retryAfterMs) : 'in a moment';
    return `Slow down: ${error.message || 'too many requests'}. You can try again ${when}.`;
  }
  return error.message || 'Something went wrong.';
}
