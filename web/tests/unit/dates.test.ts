import { describe, expect, it } from 'vitest';
import { groupChats, groupOf } from '../../src/dates';

const at = (y: number, m: number, d: number, h = 12) => new Date(y, m - 1, d, h).getTime();

describe('the sidebar date groups', () => {
  const now = at(2026, 11, 27, 9);

  it('sorts by local calendar day, not by 24-hour spans', () => {
    expect(groupOf(at(2026, 11, 27, 0), now)).toBe('Today');
    expect(groupOf(at(2026, 11, 26, 23), now)).toBe('Yesterday');
    expect(groupOf(at(2026, 11, 26, 0), now)).toBe('Yesterday');
    expect(groupOf(at(2026, 11, 25), now)).toBe('Previous 7 days');
    expect(groupOf(at(2026, 11, 20), now)).toBe('Previous 7 days');
    expect(groupOf(at(2026, 11, 19), now)).toBe('Older');
    expect(groupOf(at(2025, 1, 1), now)).toBe('Older');
  });

  it('keeps the order of the chats inside each group and leaves out empty groups', () => {
    const chat = (id: string, updatedAt: number) => ({ id, title: id, model: '', updatedAt });
    const groups = groupChats([chat('a', at(2026, 11, 27)), chat('b', at(2026, 11, 27, 8)), chat('c', at(2026, 10, 1))], now);
    expect(groups.map((g) => [g.group, g.chats.map((c) => c.id)])).toEqual([
      ['Today', ['a', 'b']],
      ['Older', ['c']],
    ]);
  });
});
