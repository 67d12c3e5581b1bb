// The open chat as the tab last showed it, kept in sessionStorage when the page goes away (a
// refresh, mostly), so that the reloaded page paints it at once, resumes a running reply from
// it without waiting for the history over HTTP, and then takes the server's version.
// sessionStorage is per tab: another tab never starts from this one's copy.
import type { UIMessage } from 'ai';
import type { SessionInfo } from './transport';

const KEY = 'chatrun.snapshot';
/** Older than this, a snapshot is not worth showing even for a moment. */
const MAX_AGE_MS = 10 * 60_000;

export interface Snapshot {
  chatId: string;
  title: string;
  model: string;
  messages: UIMessage[];
  /** Where the history the tab had loaded stops (older pages load on scrolling up). */
  olderCursor: string | null;
  session: SessionInfo | null;
  savedAt: number;
}

export function saveSnapshot(snapshot: Snapshot) {
  try {
    sessionStorage.setItem(KEY, JSON.stringify(snapshot));
  } catch {
    // Too large or storage blocked: the page loads over HTTP as usual.
  }
}

/** The snapshot of `chatId`, when the tab has a recent one. */
export function readSnapshot(chatId: string, now = Date.now()): Snapshot | null {
  try {
    const text = sessionStorage.getItem(KEY);
    if (!text) return null;
    const snapshot = JSON.parse(text) as Snapshot;
    if (snapshot.chatId !== chatId || now - snapshot.savedAt > MAX_AGE_MS || !Array.isArray(snapshot.messages)) return null;
    // A snapshot from before paging holds no cursor: the server's newest page brings one.
    return { ...snapshot, olderCursor: typeof snapshot.olderCursor === 'string' ? snapshot.olderCursor : null };
  } catch {
    return null;
  }
}

const PAINT_KEY = 'chatrun.paint';

/**
 * The page's markup as it is now, for index.html to put on screen before the app's JavaScript
 * has even run (the app then renders the same chat from the snapshot above and takes over).
 * Open dialogs and the phone's open sidebar are left out: they are not the chat.
 */
export function savePaint() {
  try {
    const root = document.getElementById('root');
    const list = root?.querySelector<HTMLElement>('[role="log"]');
    if (!root || !list) return;
    const copy = root.cloneNode(true) as HTMLElement;
    copy.querySelectorAll('dialog, .backdrop').forEach((el) => el.remove());
    copy.querySelector('.app')?.classList.remove('sidebar-open');
    sessionStorage.setItem(
      PAINT_KEY,
      JSON.stringify({
        path: location.pathname,
        html: copy.innerHTML,
        savedAt: Date.now(),
        atBottom: list.scrollHeight - list.scrollTop - list.clientHeight < 48,
        scrollTop: list.scrollTop,
      }),
    );
  } catch {
    // Too large or storage blocked: no early paint.
  }
}
