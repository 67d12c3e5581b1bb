// The page: a sidebar of chats and the open chat. One URL per chat (/c/{chatId}); `/` is a new
// chat, ready to type into: its first message creates it and gives it its URL.
import { useCallback, useEffect, useMemo, useRef, useState, type FormEvent } from 'react';
import { Api } from './api';
import { ChatPanel, type ChatMeta } from './ChatPanel';
import { groupChats } from './dates';
import { Dialog } from './Dialog';
import { MenuIcon, MoonIcon, PlusIcon, SunIcon, TrashIcon, EditIcon } from './icons';
import { newId } from './ids';
import { modelForSend, modelLabel, modelOptions, shownModel } from './models';
import type { ChatSummary, ModelInfo, ServerFrame } from './protocol';
import { chooseTheme, rememberedTheme, systemTheme, type Theme } from './theme';
import { WebSocketChatTransport, type ConnectionStatus, type SessionInfo } from './transport';

function chatIdFromPath(): string | null {
  const match = location.pathname.match(/^\/c\/([A-Za-z0-9_-]{1,64})$/);
  return match ? match[1] : null;
}

export function App() {
  const api = useMemo(() => new Api(), []);
  const sessions = useRef(new Map<string, SessionInfo>());
  const frameListeners = useRef(new Set<(frame: ServerFrame) => void>());
  const unclaimedListeners = useRef(new Set<(chatId: string) => void>());
  // The model picked in the header for the open chat's next message (none: the chat's own).
  const [picked, setPicked] = useState<string | undefined>();
  // What the transport reads when it sends: the open chat, its pick and its stored model.
  const modelChoice = useRef<{ chatId: string | null; picked?: string; chatModel?: string }>({ chatId: null });
  // Models sent with a message, per chat, until the server acknowledges (then they are the chat's).
  const sentModels = useRef(new Map<string, string>());
  const [connection, setConnection] = useState<ConnectionStatus>({ state: 'idle', attempt: 0 });
  const transport = useMemo(
    () =>
      new WebSocketChatTransport({
        url: () => api.socketUrl(),
        onConnectFailed: async () => {
          await api.refreshToken();
        },
        session: (chatId) => sessions.current.get(chatId),
        model: (id) => {
          const choice = modelChoice.current;
          const model = id === choice.chatId ? modelForSend(choice.picked, choice.chatModel) : undefined;
          if (model) sentModels.current.set(id, model);
          else sentModels.current.delete(id);
          return model;
        },
        onFrame: (frame) => frameListeners.current.forEach((listener) => listener(frame)),
        onUnclaimedTurn: (id) => unclaimedListeners.current.forEach((listener) => listener(id)),
        onStatus: setConnection,
      }),
    [api],
  );
  // The app's first render has replaced the early paint from index.html: interactive now.
  useEffect(() => {
    document.getElementById('root')?.removeAttribute('inert');
    performance.mark('chatrun:app-rendered');
  }, []);

  // Connecting while the chat loads over HTTP saves a round trip before a running reply shows.
  // The page keeps its socket for its whole life (the transport is never closed).
  useEffect(() => transport.connectEarly(), [transport]);

  // The open chat: from the URL, or a new one (not yet created) at `/`.
  const [routeChatId, setRouteChatId] = useState<string | null>(chatIdFromPath());
  const [draftId, setDraftId] = useState(() => newId());
  const chatId = routeChatId ?? draftId;
  const [meta, setMeta] = useState<ChatMeta | null>(null);

  const [chats, setChats] = useState<ChatSummary[]>([]);
  const [nextCursor, setNextCursor] = useState<string | null>(null);
  const [models, setModels] = useState<ModelInfo[]>([]);
  const [defaultModel, setDefaultModel] = useState<string | undefined>();
  const [sidebarOpen, setSidebarOpen] = useState(false);
  const [listError, setListError] = useState<string | null>(null);
  const [search, setSearch] = useState('');
  const [now, setNow] = useState(Date.now());
  const [gatewayError, setGatewayError] = useState<string | null>(null);
  const [renaming, setRenaming] = useState<ChatSummary | null>(null);
  const [deleting, setDeleting] = useState<ChatSummary | null>(null);
  const menuButton = useRef<HTMLButtonElement>(null);
  const searchBox = useRef<HTMLInputElement>(null);

  /** Reloads the first page of chats, keeping the pages loaded after it (and their cursor). */
  const refreshChats = useCallback(async () => {
    try {
      const page = await api.listChats();
      setChats((current) => {
        const fresh = new Set(page.chats.map((c) => c.id));
        return [...page.chats, ...current.filter((c) => !fresh.has(c.id))];
      });
      setNextCursor((current) => current ?? page.nextCursor);
      setListError(null);
    } catch (e) {
      setListError((e as Error).message);
    }
  }, [api]);

  useEffect(() => {
    void refreshChats();
    api
      .models()
      .then((m) => {
        setModels(m.models);
        setDefaultModel(m.default);
      })
      .catch(() => {});
    const onPop = () => {
      setRouteChatId(chatIdFromPath());
      if (!chatIdFromPath()) setDraftId(newId());
    };
    window.addEventListener('popstate', onPop);
    const tick = setInterval(() => setNow(Date.now()), 60_000);
    return () => {
      window.removeEventListener('popstate', onPop);
      clearInterval(tick);
    };
  }, [api, refreshChats]);

  useEffect(() => {
    const listener = (frame: ServerFrame) => {
      if (frame.type === 'turn-complete' || frame.type === 'turn-started') void refreshChats();
      if (frame.type === 'ack' && sentModels.current.has(frame.chatId)) {
        // The turn started with the picked model: it is the chat's own now.
        const model = sentModels.current.get(frame.chatId)!;
        sentModels.current.delete(frame.chatId);
        if (frame.chatId === modelChoice.current.chatId) {
          setMeta((m) => ({ title: m?.title ?? 'New chat', model }));
          setPicked((p) => (p === model ? undefined : p));
        }
      }
      if (frame.type === 'error' && frame.fromGateway) setGatewayError(frame.message);
    };
    frameListeners.current.add(listener);
    return () => {
      frameListeners.current.delete(listener);
    };
  }, [refreshChats]);

  // The connection's state, said once it matters: after a drop, and once more when it is back.
  const [reconnected, setReconnected] = useState(false);
  const wasDown = useRef(false);
  useEffect(() => {
    if (connection.state === 'reconnecting' || (connection.state === 'connecting' && connection.attempt > 0)) {
      wasDown.current = true;
    } else if (connection.state === 'connected' && wasDown.current) {
      wasDown.current = false;
      setReconnected(true);
      const timer = setTimeout(() => setReconnected(false), 3000);
      return () => clearTimeout(timer);
    }
  }, [connection]);
  const [clock, setClock] = useState(Date.now());
  useEffect(() => {
    if (!connection.retryAt) return;
    const timer = setInterval(() => setClock(Date.now()), 500);
    return () => clearInterval(timer);
  }, [connection.retryAt]);

  // Theme: the system's unless chosen; the choice is remembered.
  const [chosenTheme, setChosenTheme] = useState<Theme | null>(rememberedTheme());
  const [systemIs, setSystemIs] = useState<Theme>(systemTheme());
  useEffect(() => {
    const query = window.matchMedia?.('(prefers-color-scheme: dark)');
    const onChange = () => setSystemIs(query.matches ? 'dark' : 'light');
    query?.addEventListener('change', onChange);
    return () => query?.removeEventListener('change', onChange);
  }, []);
  const theme = chosenTheme ?? systemIs;
  const toggleTheme = () => {
    const next = theme === 'dark' ? 'light' : 'dark';
    chooseTheme(next);
    setChosenTheme(next);
  };

  // The phone's sidebar: an overlay that Escape or a tap outside closes.
  useEffect(() => {
    if (!sidebarOpen) return;
    searchBox.current?.focus();
    const onKey = (e: KeyboardEvent) => {
      if (e.key === 'Escape' && !renaming && !deleting) {
        setSidebarOpen(false);
        menuButton.current?.focus();
      }
    };
    document.addEventListener('keydown', onKey);
    return () => document.removeEventListener('keydown', onKey);
  }, [sidebarOpen, renaming, deleting]);

  const open = (id: string | null) => {
    const path = id ? `/c/${id}` : '/';
    if (location.pathname !== path) history.pushState(null, '', path);
    setRouteChatId(id);
    if (!id) setDraftId(newId());
    setMeta(null);
    setPicked(undefined);
    setSidebarOpen(false);
  };

  /** The first message of a new chat created it: give it its URL (same component, no reload). */
  const onCreated = (id: string) => {
    if (routeChatId !== id) {
      history.pushState(null, '', `/c/${id}`);
      setRouteChatId(id);
    }
    void refreshChats();
  };

  const loadMore = async () => {
    if (!nextCursor) return;
    try {
      const page = await api.listChats(nextCursor);
      setChats((current) => [...current, ...page.chats.filter((c) => !current.some((x) => x.id === c.id))]);
      setNextCursor(page.nextCursor);
    } catch (e) {
      setListError((e as Error).message);
    }
  };

  const listed = chats.find((c) => c.id === chatId);
  const title = listed?.title ?? meta?.title ?? 'New chat';
  useEffect(() => {
    document.title = title === 'New chat' ? 'chatrun' : `${title} · chatrun`;
  }, [title]);
  const chatModel = meta?.model || undefined;
  const modelId = shownModel(picked, chatModel, defaultModel);
  const shownLabel = modelLabel(models, modelId);
  modelChoice.current = { chatId, picked, chatModel };

  const query = search.trim().toLowerCase();
  const visible = query ? chats.filter((c) => c.title.toLowerCase().includes(query)) : chats;
  const groups = groupChats(visible, now);
  const down = connection.state === 'reconnecting' || (connection.state === 'connecting' && connection.attempt > 0);
  const retryIn = connection.retryAt ? Math.max(0, Math.ceil((connection.retryAt - clock) / 1000)) : 0;

  return (
    <div className={`app ${sidebarOpen ? 'sidebar-open' : ''}`}>
      <aside id="sidebar" className="sidebar" aria-label="Chats">
        <div className="sidebar-head">
          <span className="brand">chatrun</span>
          <button type="button" className="new-chat" onClick={() => open(null)}>
            <PlusIcon /> New chat
          </button>
        </div>
        <div className="search">
          <input
            ref={searchBox}
            type="search"
            aria-label="Search chats"
            placeholder="Search chats"
            value={search}
            onChange={(e) => setSearch(e.target.value)}
          />
        </div>
        {listError && (
          <div className="banner error" role="alert">
            {listError} <button onClick={() => void refreshChats()}>Retry</button>
          </div>
        )}
        <nav aria-label="Chat history">
          {groups.map(({ group, chats: inGroup }) => (
            <section key={group} className="chat-group" aria-label={group}>
              <h2 className="group-title">{group}</h2>
              <ul className="chat-list">
                {inGroup.map((chat) => (
                  <li key={chat.id} className={chat.id === chatId ? 'active' : ''}>
                    <a
                      href={`/c/${chat.id}`}
                      aria-current={chat.id === chatId ? 'page' : undefined}
                      onClick={(e) => {
                        e.preventDefault();
                        open(chat.id);
                      }}
                    >
                      <span className="chat-title">{chat.title}</span>
                    </a>
                    <span className="chat-actions">
                      <button type="button" aria-label={`Rename ${chat.title}`} title="Rename" onClick={() => setRenaming(chat)}>
                        <EditIcon />
                      </button>
                      <button type="button" aria-label={`Delete ${chat.title}`} title="Delete" onClick={() => setDeleting(chat)}>
                        <TrashIcon />
                      </button>
                    </span>
                  </li>
                ))}
              </ul>
            </section>
          ))}
          {visible.length === 0 && !listError && <p className="empty">{query ? 'No chat matches.' : 'No chats yet.'}</p>}
          {nextCursor && (
            <button type="button" className="more" onClick={() => void loadMore()}>
              Load more
            </button>
          )}
        </nav>
      </aside>
      {sidebarOpen && <div className="backdrop" data-testid="backdrop" onClick={() => setSidebarOpen(false)} />}
      <main className="main">
        <header className="topbar">
          <button
            ref={menuButton}
            type="button"
            className="menu icon-button"
            aria-label="Show chats"
            aria-expanded={sidebarOpen}
            aria-controls="sidebar"
            onClick={() => setSidebarOpen((o) => !o)}
          >
            <MenuIcon />
          </button>
          <h1 className="topbar-title">{title}</h1>
          {models.length > 1 ? (
            <select
              className="model-select"
              aria-label="Model"
              aria-description="Answers from the next message on"
              title="Model for the next message"
              value={modelId ?? ''}
              onChange={(e) => setPicked(e.target.value)}
            >
              {modelOptions(models, modelId).map((m) => (
                <option key={m.id} value={m.id}>
                  {m.label}
                </option>
              ))}
            </select>
          ) : (
            shownLabel && (
              <span className="model-chip" aria-label={`Model: ${shownLabel}`}>
                {shownLabel}
              </span>
            )
          )}
          <span className={`connection-dot ${connection.state}`} role="img" aria-label={`Connection: ${down ? 'reconnecting' : connection.state}`} />
          <button
            type="button"
            className="icon-button"
            aria-label="Dark mode"
            aria-pressed={theme === 'dark'}
            title={theme === 'dark' ? 'Switch to light' : 'Switch to dark'}
            onClick={toggleTheme}
          >
            {theme === 'dark' ? <SunIcon /> : <MoonIcon />}
          </button>
        </header>
        <div className="status-area" role="status" aria-live="polite">
          {down && (
            <div className="banner warning">
              {connection.state === 'reconnecting' ? 'Connection lost. Reconnecting' : 'Cannot reach the server. Retrying'}
              {retryIn > 0 ? ` in ${retryIn} s…` : '…'}{' '}
              <button type="button" onClick={() => transport.reconnectNow()}>
                Reconnect now
              </button>
            </div>
          )}
          {!down && reconnected && <div className="banner ok">Reconnected.</div>}
        </div>
        {gatewayError && (
          <div className="banner error" role="alert">
            The server reported an error: {gatewayError}{' '}
            <button type="button" onClick={() => setGatewayError(null)}>
              Dismiss
            </button>
          </div>
        )}
        <ChatPanel
          key={chatId}
          chatId={chatId}
          isNew={routeChatId === null}
          api={api}
          transport={transport}
          sessions={sessions.current}
          frameListeners={frameListeners.current}
          unclaimedListeners={unclaimedListeners.current}
          onCreated={onCreated}
          onMeta={setMeta}
          title={title}
          modelId={modelId}
        />
      </main>
      {renaming && (
        <RenameDialog
          chat={renaming}
          onClose={() => setRenaming(null)}
          onRename={async (title) => {
            const updated = await api.renameChat(renaming.id, title);
            setChats((current) => current.map((c) => (c.id === renaming.id ? { ...c, ...updated } : c)));
            if (renaming.id === chatId) setMeta((m) => (m ? { ...m, title: updated.title } : m));
            setRenaming(null);
          }}
        />
      )}
      {deleting && (
        <DeleteDialog
          chat={deleting}
          onClose={() => setDeleting(null)}
          onDelete={async () => {
            await api.deleteChat(deleting.id);
            setChats((current) => current.filter((c) => c.id !== deleting.id));
            if (deleting.id === chatId) open(null);
            setDeleting(null);
          }}
        />
      )}
    </div>
  );
}

function RenameDialog({ chat, onClose, onRename }: { chat: ChatSummary; onClose: () => void; onRename: (title: string) => Promise<void> }) {
  const [title, setTitle] = useState(chat.title);
  const [error, setError] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);
  const submit = async (e: FormEvent) => {
    e.preventDefault();
    if (!title.trim()) {
      setError('A title cannot be empty.');
      return;
    }
    setBusy(true);
    try {
      await onRename(title.trim());
    } catch (err) {
      setError(`Could not rename: ${(err as Error).message}`);
      setBusy(false);
    }
  };
  return (
    <Dialog title="Rename chat" onClose={onClose}>
      <form onSubmit={submit}>
        <label className="field">
          <span>Title</span>
          <input autoFocus value={title} maxLength={200} onChange={(e) => setTitle(e.target.value)} onFocus={(e) => e.target.select()} />
        </label>
        {error && (
          <p className="dialog-error" role="alert">
            {error}
          </p>
        )}
        <div className="dialog-actions">
          <button type="button" onClick={onClose}>
            Cancel
          </button>
          <button type="submit" className="primary" disabled={busy}>
            Save
          </button>
        </div>
      </form>
    </Dialog>
  );
}

function DeleteDialog({ chat, onClose, onDelete }: { chat: ChatSummary; onClose: () => void; onDelete: () => Promise<void> }) {
  const [error, setError] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);
  return (
    <Dialog title="Delete chat?" onClose={onClose}>
      <p>
        “{chat.title}” and all its messages will be deleted. This cannot be undone.
      </p>
      {error && (
        <p className="dialog-error" role="alert">
          {error}
        </p>
      )}
      <div className="dialog-actions">
        <button type="button" autoFocus onClick={onClose}>
          Cancel
        </button>
        <button
          type="button"
          className="danger"
          disabled={busy}
          onClick={async () => {
            setBusy(true);
            try {
              await onDelete();
            } catch (err) {
              setError(`Could not delete: ${(err as Error).message}`);
              setBusy(false);
            }
          }}
        >
          Delete
        </button>
      </div>
    </Dialog>
  );
}
