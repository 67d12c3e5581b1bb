// A chat's history arrives in pages, newest first (DESIGN §8): the page holds the newest
// messages and a cursor for older ones, loaded when the reader scrolls to the top. These keep
// the pages the tab already has when a newer version of the newest page arrives.
import type { UIMessage } from 'ai';

/** What the tab shows of a chat's history, and where the next older page starts. */
export interface LoadedHistory {
  messages: UIMessage[];
  /** `null` when `messages` starts at the chat's first message. */
  olderCursor: string | null;
}

/**
 * The server's newest page laid over what the tab shows: older pages the tab loaded before
 * stay (with their cursor) when the page starts at a message the tab has; otherwise the page
 * replaces everything (an edit further back changed the history) and its cursor pages on.
 */
export function withNewestPage(current: LoadedHistory, page: LoadedHistory): LoadedHistory {
  const first = page.messages[0];
  if (!first || page.olderCursor === null) return page;
  const index = current.messages.findIndex((m) => m.id === first.id);
  if (index <= 0) return page;
  return { messages: [...current.messages.slice(0, index), ...page.messages], olderCursor: current.olderCursor };
}

/** An older page put in front of what the tab shows; messages it already has are not doubled. */
export function withOlderPage(current: LoadedHistory, page: LoadedHistory): LoadedHistory {
  const shown = new Set(current.messages.map((m) => m.id));
  return { messages: [...page.messages.filter((m) => !shown.has(m.id)), ...current.messages], olderCursor: page.olderCursor };
}
