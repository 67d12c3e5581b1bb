// The sidebar's date groups.
import type { ChatSummary } from './protocol';

export const GROUPS = ['Today', 'Yesterday', 'Previous 7 days', 'Older'] as const;
export type Group = (typeof GROUPS)[number];

const startOfDay = (millis: number) => {
  const d = new Date(millis);
  d.setHours(0, 0, 0, 0);
  return d.getTime();
};

/** Which group a chat last updated at `millis` falls in, by local calendar day. */
export function groupOf(millis: number, now = Date.now()): Group {
  const today = startOfDay(now);
  const day = startOfDay(millis);
  if (day >= today) return 'Today';
  const days = Math.round((today - day) / 86_400_000);
  if (days === 1) return 'Yesterday';
  if (days <= 7) return 'Previous 7 days';
  return 'Older';
}

/** Chats (newest first) in their groups, in group order; empty groups left out. */
export function groupChats(chats: ChatSummary[], now = Date.now()): { group: Group; chats: ChatSummary[] }[] {
  const byGroup = new Map<Group, ChatSummary[]>();
  for (const chat of chats) {
    const group = groupOf(chat.updatedAt, now);
    byGroup.set(group, [...(byGroup.get(group) ?? []), chat]);
  }
  return GROUPS.filter((g) => byGroup.has(g)).map((group) => ({ group, chats: byGroup.get(group)! }));
}
