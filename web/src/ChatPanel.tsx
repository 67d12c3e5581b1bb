// One chat: its history loaded over HTTP, then useChat over the WebSocket transport.
import { useChat } from '@ai-sdk/react';
import type { UIMessage } from 'ai';
import { useCallback, useEffect, useLayoutEffect, useRef, useState, type KeyboardEvent } from 'react';
import { ApiError, type Api } from './api';
import { describeError, type RequestFailure } from './errors';
import { CopyButton } from './CopyButton';
import { ArrowDownIcon, ArrowUpIcon, EditIcon, RegenerateIcon, StopIcon } from './icons';
import { withNewestPage, withOlderPage, type LoadedHistory } from './history';
import { Markdown } from './Markdown';
import type { ChatView, ServerFrame } from './protocol';
import { readSnapshot, savePaint, saveSnapshot } from './snapshot';
import type { SessionInfo, WebSocketChatTransport } from './transport';

/** What the header shows of the open chat. */
export interface ChatMeta {
  title: string;
  model: string;
}

interface Props {
  chatId: string;
  /** A chat that does not exist yet (the page at `/`): nothing to load. */
  isNew: boolean;
  api: Api;
  transport: WebSocketChatTransport;
  sessions: Map<string, SessionInfo>;
  frameListeners: Set<(frame: ServerFrame) => void>;
  unclaimedListeners: Set<(chatId: string) => void>;
  /** The first message of a new chat was accepted. */
  onCreated: (chatId: string) => void;
  onMeta: (meta: ChatMeta) => void;
  /** What the header shows, kept in the tab's snapshot. */
  title: string;
  modelId: string | undefined;
}

function rememberSession(sessions: Map<string, SessionInfo>, chatId: string, view: ChatView) {
  if (view.session) {
    sessions.set(chatId, {
      runId: view.session.runId,
      lastEventId: view.session.lastEventId,
      streaming: view.session.streaming,
      assistantMessageId: view.session.assistantMessageId,
    });
  }
}

/**
 * The server's version of the chat replacing what the page showed from its snapshot; a reply
 * still streaming is kept (the history holds it only once it is complete).
 */
function reconcile(current: UIMessage[], view: ChatView): UIMessage[] {
  const streamingId = view.session?.streaming ? view.session.assistantMessageId : null;
  if (streamingId && !view.messages.some((m) => m.id === streamingId)) {
    const partial = current.find((m) => m.id === streamingId);
    if (partial) return [...view.messages, partial];
  }
  return view.messages;
}

export function ChatPanel(props: Props) {
  const { chatId, isNew, api, transport, sessions, onMeta } = props;
  // After a refresh: the tab's snapshot paints at once, and the server's version follows.
  const [snapshot] = useState(() => {
    const found = isNew ? null : readSnapshot(chatId);
    if (found?.session) sessions.set(chatId, found.session);
    return found;
  });
  // A new chat starts empty; staying the same component when it gets its URL.
  const [initial, setInitial] = useState<LoadedHistory | null>(
    isNew
      ? { messages: [], olderCursor: null }
      : snapshot
        ? { messages: snapshot.messages, olderCursor: snapshot.olderCursor }
        : null,
  );
  const [fresh, setFresh] = useState<ChatView | null>(null);
  const [loadError, setLoadError] = useState<string | null>(null);
  const [attempt, setAttempt] = useState(0);
  const startedNew = useRef(isNew);

  useEffect(() => {
    if (snapshot) onMeta({ title: snapshot.title, model: snapshot.model });
  }, [snapshot, onMeta]);

  useEffect(() => {
    if (startedNew.current) return () => transport.unfollow(chatId);
    let cancelled = false;
    api
      .getChat(chatId)
      .then((view) => {
        if (cancelled) return;
        rememberSession(sessions, chatId, view);
        onMeta({ title: view.title, model: view.model });
        if (snapshot) setFresh(view);
        else setInitial({ messages: view.messages, olderCursor: view.olderCursor });
      })
      .catch((e: unknown) => {
        if (cancelled) return;
        const gone = e instanceof ApiError && e.status === 404;
        if (gone && snapshot)
          setFresh({ id: chatId, title: 'New chat', model: '', createdAt: 0, updatedAt: 0, messages: [], olderCursor: null, session: null });
        else if (gone) setInitial({ messages: [], olderCursor: null });
        else if (!snapshot) setLoadError((e as Error).message);
      });
    return () => {
      cancelled = true;
      transport.unfollow(chatId);
    };
  }, [api, chatId, sessions, transport, attempt, onMeta, snapshot]);

  if (loadError) {
    return (
      <div className="banner error" role="alert">
        Could not load this chat: {loadError}{' '}
        <button
          onClick={() => {
            setLoadError(null);
            setAttempt((a) => a + 1);
          }}
        >
          Retry
        </button>
      </div>
    );
  }
  if (!initial) return <div className="loading">Loading…</div>;
  return <Conversation {...props} initial={initial} fresh={fresh} />;
}

const textOf = (message: UIMessage) =>
  message.parts
    .filter((p) => p.type === 'text')
    .map((p) => (p as { text: string }).text)
    .join('\n\n');

/** Within this many pixels of the end counts as "at the bottom". */
const BOTTOM_SLACK = 48;
/** Within this many pixels of the top, the next older page loads. */
const LOAD_OLDER_AT = 200;

function Conversation({
  chatId,
  isNew,
  api,
  transport,
  sessions,
  frameListeners,
  unclaimedListeners,
  onCreated,
  initial,
  fresh,
  title,
  modelId,
}: Props & { initial: LoadedHistory; fresh: ChatView | null }) {
  const { messages, sendMessage, regenerate, stop, status, error, resumeStream, setMessages, clearError } = useChat({
    id: chatId,
    messages: initial.messages,
    transport,
    resume: !isNew,
  });
  const [input, setInput] = useState('');
  const [editing, setEditing] = useState<string | null>(null);
  const [retryError, setRetryError] = useState<string | null>(null);
  const statusRef = useRef(status);
  statusRef.current = status;
  const stopped = useRef(false);
  const created = useRef(!isNew);
  const busy = status === 'submitted' || status === 'streaming';

  // ---- the history: the newest page, older pages in front as the reader scrolls up ----
  const [olderCursor, setOlderCursor] = useState(initial.olderCursor);
  const shown = useRef<LoadedHistory>({ messages, olderCursor });
  shown.current = { messages, olderCursor };
  const list = useRef<HTMLDivElement>(null);
  /** The list's height and scroll position just before an older page goes in front. */
  const prependAnchor = useRef<{ scrollHeight: number; scrollTop: number } | null>(null);
  const [olderState, setOlderState] = useState<'idle' | 'loading' | 'failed'>('idle');
  const loadingOlder = useRef(false);

  /** Shows the server's newest page, keeping the older pages the tab has loaded. */
  const showNewest = useCallback(
    (view: ChatView) => {
      const next = withNewestPage(shown.current, {
        messages: reconcile(shown.current.messages, view),
        olderCursor: view.olderCursor,
      });
      setMessages(next.messages);
      setOlderCursor(next.olderCursor);
    },
    [setMessages],
  );

  useEffect(() => {
    if (fresh) showNewest(fresh);
  }, [fresh, showNewest]);

  const loadOlder = useCallback(async () => {
    const before = shown.current.olderCursor;
    if (!before || loadingOlder.current) return;
    loadingOlder.current = true;
    setOlderState('loading');
    try {
      const page = await api.olderMessages(chatId, before);
      // The history was replaced meanwhile (a reload): this page belongs to the old one.
      if (shown.current.olderCursor !== before) return;
      const el = list.current;
      if (el) prependAnchor.current = { scrollHeight: el.scrollHeight, scrollTop: el.scrollTop };
      const next = withOlderPage(shown.current, page);
      setMessages(next.messages);
      setOlderCursor(next.olderCursor);
      setOlderState('idle');
    } catch (e) {
      if (e instanceof ApiError && e.status === 409) {
        // The history changed since the cursor was made (an edit in another tab): start
        // again from the server's newest page.
        try {
          const view = await api.getChat(chatId);
          rememberSession(sessions, chatId, view);
          setMessages(reconcile(shown.current.messages, view));
          setOlderCursor(view.olderCursor);
          setOlderState('idle');
          return;
        } catch {
          // Shown as a failure below.
        }
      }
      setOlderState('failed');
    } finally {
      loadingOlder.current = false;
    }
  }, [api, chatId, sessions, setMessages]);

  // The tab's snapshot, taken as the page goes away (see snapshot.ts).
  const latest = useRef({ messages, olderCursor, title, modelId });
  latest.current = { messages, olderCursor, title, modelId };
  useEffect(() => {
    let pageHiding = false;
    const save = () => {
      if (document.visibilityState === 'visible' && !pageHiding) return;
      const { messages: shownMessages, olderCursor: shownCursor, title: shownTitle, modelId: shownModel } = latest.current;
      if (shownMessages.length === 0) return;
      saveSnapshot({
        chatId,
        title: shownTitle,
        model: shownModel ?? '',
        messages: shownMessages,
        olderCursor: shownCursor,
        session: sessions.get(chatId) ?? null,
        savedAt: Date.now(),
      });
      savePaint();
    };
    const onPageHide = () => {
      pageHiding = true;
      save();
    };
    window.addEventListener('pagehide', onPageHide);
    document.addEventListener('visibilitychange', save);
    return () => {
      window.removeEventListener('pagehide', onPageHide);
      document.removeEventListener('visibilitychange', save);
    };
  }, [chatId, sessions]);

  useEffect(() => {
    const onFrame = (frame: ServerFrame) => {
      if (!('chatId' in frame) || frame.chatId !== chatId) return;
      // Keep the chat's session current: a snapshot resumes from it.
      const known = sessions.get(chatId);
      if (frame.type === 'ack' || frame.type === 'turn-started') {
        sessions.set(chatId, {
          runId: frame.runId,
          lastEventId:
            frame.type === 'turn-started' ? frame.firstEventId - 1 : known?.runId === frame.runId ? known.lastEventId : 0,
          streaming: true,
          assistantMessageId: frame.assistantMessageId,
        });
      } else if (frame.type === 'turn-complete') {
        sessions.set(chatId, { runId: frame.runId, lastEventId: frame.lastEventId, streaming: false, assistantMessageId: null });
      }
      if (frame.type === 'ack' && !created.current) {
        created.current = true;
        onCreated(chatId);
      }
      if (frame.type === 'turn-started' && statusRef.current === 'ready') {
        // Another tab sent a message: show it; its reply streams in through onUnclaimed.
        setMessages((current) =>
          current.some((m) => m.id === frame.userMessage.id) ? current : [...current, frame.userMessage],
        );
      }
      if (frame.type === 'turn-complete' && stopped.current) {
        // After a stop, show exactly what was stored.
        stopped.current = false;
        void api.getChat(chatId).then((view) => {
          rememberSession(sessions, chatId, view);
          showNewest(view);
        });
      }
    };
    const onUnclaimed = (id: string) => {
      if (id === chatId && statusRef.current !== 'submitted' && statusRef.current !== 'streaming') void resumeStream();
    };
    frameListeners.add(onFrame);
    unclaimedListeners.add(onUnclaimed);
    return () => {
      frameListeners.delete(onFrame);
      unclaimedListeners.delete(onUnclaimed);
    };
  }, [api, chatId, sessions, frameListeners, unclaimedListeners, resumeStream, setMessages, onCreated, showNewest]);

  // ---- scrolling: only the list scrolls; it follows the reply while the reader is at the end ----
  const follow = useRef(true);
  const [atBottom, setAtBottom] = useState(true);
  const toBottom = useCallback(() => {
    const el = list.current;
    if (!el) return;
    follow.current = true;
    el.scrollTop = el.scrollHeight;
    setAtBottom(true);
  }, []);
  const onScroll = () => {
    const el = list.current;
    if (!el) return;
    const bottom = el.scrollHeight - el.scrollTop - el.clientHeight <= BOTTOM_SLACK;
    follow.current = bottom;
    setAtBottom(bottom);
    if (el.scrollTop < LOAD_OLDER_AT && !bottom) void loadOlder();
  };
  useLayoutEffect(() => {
    const el = list.current;
    const anchor = prependAnchor.current;
    if (el && anchor) {
      // An older page went in front: the messages the reader was looking at stay put.
      prependAnchor.current = null;
      el.scrollTop = anchor.scrollTop + (el.scrollHeight - anchor.scrollHeight);
      return;
    }
    if (el && follow.current) el.scrollTop = el.scrollHeight;
  }, [messages, status]);
  // A newest page too short to scroll cannot be scrolled up: its older page loads at once.
  useEffect(() => {
    const el = list.current;
    if (el && olderCursor && olderState === 'idle' && el.scrollHeight <= el.clientHeight) void loadOlder();
  }, [olderCursor, olderState, messages, loadOlder]);

  // ---- the message box ----
  const box = useRef<HTMLTextAreaElement>(null);
  const grow = useCallback(() => {
    const el = box.current;
    if (!el) return;
    el.style.height = 'auto';
    el.style.height = `${el.scrollHeight + (el.offsetHeight - el.clientHeight)}px`;
  }, []);
  useLayoutEffect(grow, [input, grow]);

  const submit = () => {
    const text = input.trim();
    if (!text || busy) return;
    setInput('');
    clearError();
    setRetryError(null);
    toBottom();
    void sendMessage({ text });
  };

  const onKeyDown = (e: KeyboardEvent<HTMLTextAreaElement>) => {
    // 229: a key pressed during IME composition in browsers that do not set isComposing.
    if (e.key === 'Enter' && !e.shiftKey && !e.nativeEvent.isComposing && e.keyCode !== 229) {
      e.preventDefault();
      submit();
    }
  };

  const last = messages[messages.length - 1];

  /**
   * Retry after a failed send. The message may have reached the server even though no answer
   * came back: the stored chat says. Stored: show it and follow its reply. Not stored: send the
   * same message again (same id), never a regeneration of the reply before it.
   */
  const retry = async () => {
    clearError();
    setRetryError(null);
    if (last?.role !== 'user') {
      void regenerate();
      return;
    }
    let view: ChatView | null = null;
    try {
      view = await api.getChat(chatId);
    } catch (e) {
      if (!(e instanceof ApiError && e.status === 404)) {
        setRetryError(`Still cannot reach the server: ${(e as Error).message}`);
        return;
      }
    }
    if (view?.messages.some((m) => m.id === last.id)) {
      rememberSession(sessions, chatId, view);
      showNewest(view);
      if (view.session?.streaming) void resumeStream();
      return;
    }
    setMessages(messages.slice(0, -1));
    void sendMessage({ id: last.id, role: 'user', parts: last.parts });
  };

  const saveEdit = (messageId: string, text: string) => {
    setEditing(null);
    clearError();
    toBottom();
    void sendMessage({ text, messageId });
  };

  const failure = retryError ?? (error ? describe(error) : null);
  const lastAssistantIndex = messages.findLastIndex((m) => m.role === 'assistant');

  return (
    <section className="conversation" aria-label="Conversation">
      <div className="messages-wrap">
        <div
          ref={list}
          className="messages"
          role="log"
          aria-label="Messages"
          aria-busy={busy}
          onScroll={onScroll}
          onWheel={(e) => {
            if (e.deltaY < 0) follow.current = false;
          }}
        >
          {olderCursor && (
            <div className="older-history">
              {olderState === 'failed' && <span role="alert">Could not load earlier messages. </span>}
              <button type="button" onClick={() => void loadOlder()} disabled={olderState === 'loading'}>
                {olderState === 'loading' ? 'Loading earlier messages…' : olderState === 'failed' ? 'Retry' : 'Load earlier messages'}
              </button>
            </div>
          )}
          {messages.length === 0 && (
            <div className="welcome">
              <h2>What can I help with?</h2>
              <p>Your chats are saved as they stream: refresh mid-reply and it carries on.</p>
            </div>
          )}
          {messages.map((message, index) => {
            const streamingThis = busy && index === messages.length - 1 && message.role === 'assistant';
            return (
              <MessageView
                key={message.id}
                message={message}
                finished={!streamingThis}
                editing={editing === message.id}
                canEdit={!busy && message.role === 'user'}
                canRegenerate={!busy && index === lastAssistantIndex && index === messages.length - 1}
                onEdit={() => setEditing(message.id)}
                onCancelEdit={() => setEditing(null)}
                onSaveEdit={(text) => saveEdit(message.id, text)}
                onRegenerate={() => {
                  clearError();
                  void regenerate();
                }}
              />
            );
          })}
          {status === 'submitted' && (
            <div className="thinking" role="status" aria-label="Waiting for the reply">
              <span />
              <span />
              <span />
            </div>
          )}
        </div>
        {!atBottom && (
          <button type="button" className="scroll-latest" aria-label="Scroll to latest" onClick={toBottom}>
            <ArrowDownIcon />
          </button>
        )}
      </div>
      {failure && (
        <div className="banner error" role="alert">
          {failure} <button onClick={() => void retry()}>Retry</button>
        </div>
      )}
      <form
        className="composer"
        onSubmit={(e) => {
          e.preventDefault();
          submit();
        }}
      >
        <div className="composer-box">
          <textarea
            ref={box}
            id="prompt"
            aria-label="Message"
            value={input}
            placeholder="Message chatrun…"
            aria-description="Enter sends, Shift+Enter adds a line"
            rows={1}
            autoFocus
            onChange={(e) => setInput(e.target.value)}
            onKeyDown={onKeyDown}
          />
          {busy ? (
            <button
              type="button"
              className="send stop"
              aria-label="Stop"
              onClick={() => {
                stopped.current = true;
                transport.stopTurn(chatId);
                void stop();
              }}
            >
              <StopIcon />
            </button>
          ) : (
            <button type="submit" className="send primary" aria-label="Send" disabled={!input.trim()}>
              <ArrowUpIcon />
            </button>
          )}
        </div>
        <p className="composer-hint">Enter to send · Shift+Enter for a new line</p>
      </form>
    </section>
  );
}

function describe(error: Error): string {
  return describeError(error as RequestFailure);
}

interface MessageProps {
  message: UIMessage;
  finished: boolean;
  editing: boolean;
  canEdit: boolean;
  canRegenerate: boolean;
  onEdit: () => void;
  onCancelEdit: () => void;
  onSaveEdit: (text: string) => void;
  onRegenerate: () => void;
}

function MessageView({ message, finished, editing, canEdit, canRegenerate, onEdit, onCancelEdit, onSaveEdit, onRegenerate }: MessageProps) {
  const isUser = message.role === 'user';
  return (
    <article className={`message ${message.role}`} aria-label={isUser ? 'You' : 'Assistant'} data-message-id={message.id}>
      {editing ? (
        <EditBox initial={textOf(message)} onCancel={onCancelEdit} onSave={onSaveEdit} />
      ) : (
        <div className="message-body">
          {message.parts.map((part, i) => {
            switch (part.type) {
              case 'text':
                return isUser ? (
                  <p key={i} className="user-text">
                    {part.text}
                  </p>
                ) : (
                  <Markdown key={i} text={part.text} />
                );
              case 'reasoning':
                return (
                  <details key={i} className="reasoning">
                    <summary>Reasoning</summary>
                    <p>{part.text}</p>
                  </details>
                );
              case 'file':
                return part.mediaType.startsWith('image/') ? (
                  <img key={i} src={part.url} alt={part.filename ?? 'attached image'} />
                ) : (
                  <a key={i} href={part.url}>
                    {part.filename ?? 'attachment'}
                  </a>
                );
              default:
                return null;
            }
          })}
        </div>
      )}
      {finished && !editing && (
        <div className="message-tools">
          <CopyButton text={() => textOf(message)} label="Copy message" />
          {canEdit && (
            <button type="button" className="icon-button" aria-label="Edit message" title="Edit" onClick={onEdit}>
              <EditIcon />
              <span className="button-text">Edit</span>
            </button>
          )}
          {canRegenerate && (
            <button type="button" className="icon-button" aria-label="Regenerate reply" title="Regenerate" onClick={onRegenerate}>
              <RegenerateIcon />
              <span className="button-text">Regenerate</span>
            </button>
          )}
        </div>
      )}
    </article>
  );
}

function EditBox({ initial, onCancel, onSave }: { initial: string; onCancel: () => void; onSave: (text: string) => void }) {
  const [text, setText] = useState(initial);
  return (
    <form
      className="edit-box"
      onSubmit={(e) => {
        e.preventDefault();
        if (text.trim()) onSave(text.trim());
      }}
    >
      <textarea
        aria-label="Edit message"
        autoFocus
        value={text}
        rows={Math.min(10, text.split('\n').length + 1)}
        onChange={(e) => setText(e.target.value)}
        onKeyDown={(e) => {
          if (e.key === 'Escape') onCancel();
          if (e.key === 'Enter' && !e.shiftKey && !e.nativeEvent.isComposing && e.keyCode !== 229) {
            e.preventDefault();
            if (text.trim()) onSave(text.trim());
          }
        }}
      />
      <div className="edit-actions">
        <button type="button" onClick={onCancel}>
          Cancel
        </button>
        <button type="submit" className="primary" disabled={!text.trim()}>
          Save and send
        </button>
      </div>
    </form>
  );
}
