import type { UIMessage } from 'ai';
import { describe, expect, it } from 'vitest';
import { withNewestPage, withOlderPage } from '../../src/history';

const m = (id: string, text = id): UIMessage => ({ id, role: 'user', parts: [{ type: 'text', text }] });
const ids = (messages: UIMessage[]) => messages.map((x) => x.id);

describe('history pages', () => {
  it('keeps the older pages the tab loaded when the newest page starts at a message it has', () => {
    const current = { messages: [m('1'), m('2'), m('3'), m('4')], olderCursor: 'c1' };
    const merged = withNewestPage(current, { messages: [m('3'), m('4', 'newer'), m('5')], olderCursor: 'c3' });
    expect(ids(merged.messages)).toEqual(['1', '2', '3', '4', '5']);
    expect(merged.messages[3].parts).toEqual([{ type: 'text', text: 'newer' }]);
    expect(merged.olderCursor).toBe('c1');
  });

  it('takes the page as it is when it holds the whole history or starts elsewhere', () => {
    const current = { messages: [m('1'), m('2'), m('3')], olderCursor: 'c1' };
    const whole = { messages: [m('1'), m('9')], olderCursor: null };
    expect(withNewestPage(current, whole)).toEqual(whole);
    const unknown = { messages: [m('7'), m('8')], olderCursor: 'c7' };
    expect(withNewestPage(current, unknown)).toEqual(unknown);
    const sameStart = { messages: [m('1'), m('2')], olderCursor: 'c0' };
    expect(withNewestPage(current, sameStart)).toEqual(sameStart);
    const empty = { messages: [], olderCursor: null };
    expect(withNewestPage(current, empty)).toEqual(empty);
  });

  it('puts an older page in front without doubling a message', () => {
    const current = { messages: [m('3'), m('4')], olderCursor: 'c3' };
    const merged = withOlderPage(current, { messages: [m('1'), m('2'), m('3')], olderCursor: null });
    expect(ids(merged.messages)).toEqual(['1', '2', '3', '4']);
    expect(merged.olderCursor).toBeNull();
  });
});
