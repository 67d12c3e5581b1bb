import { describe, expect, it } from 'vitest';
import { describeError, retryPhrase } from '../../src/errors';

describe('describeError', () => {
  it('says which limit refused the request and when to try again', () => {
    expect(describeError({ code: 'rate_limited', message: 'at most 20 messages a minute', retryAfterMs: 40_500 })).toBe(
      'Slow down: at most 20 messages a minute. You can try again in 41 seconds.',
    );
    expect(
      describeError({ code: 'rate_limited', message: '3 replies are already running; wait for one to finish (or stop one)', retryAfterMs: 2_000 }),
    ).toBe('Slow down: 3 replies are already running; wait for one to finish (or stop one). You can try again in 2 seconds.');
    // API Gateway's own throttling carries no time.
    expect(describeError({ code: 'rate_limited', message: 'Too Many Requests' })).toBe(
      'Slow down: Too Many Requests. You can try again in a moment.',
    );
  });

  it('keeps the other errors as they were', () => {
    expect(describeError({ code: 'conflict', message: 'a reply is still streaming' })).toBe('a reply is still streaming');
    expect(describeError({ code: 'timeout', message: 'x' })).toBe('No answer from the server within 10 seconds.');
    expect(describeError({ code: 'internal' })).toBe('Something went wrong.');
  });
});

describe('retryPhrase', () => {
  it('rounds up to whole seconds, and to minutes past a minute and a half', () => {
    expect(retryPhrase(1)).toBe('in 1 second');
    expect(retryPhrase(1_001)).toBe('in 2 seconds');
    expect(retryPhrase(89_000)).toBe('in 89 seconds');
    expect(retryPhrase(3_540_000)).toBe('in 59 minutes');
  });
});
