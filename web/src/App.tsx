// The page: a sidebar of chats and the open chat. One URL per chat (/c/{chatId}).
import { useCallback, useEffect, useMemo, useRef, useState } from 'react';
import { Api, timeAgo } from './api';
import { ChatPanel } from './ChatPanel';
import type { ChatSummary, ModelInfo, ServerFrame } from './protocol';
import { WebSocketChatTransport, type SessionInfo } from './transport';

function chatIdFromPath(): string | null {
  const match = location.pathname.match(/^\/c\/([A-Za-z0-9_-]{1,64})$/);
  return match ? match[1] : null;
}

export function App() {
  const api = useMemo(() => new Api(), []);
  const sessions = useRef(new Map<string, SessionInfo>());
  const frameListeners = useRef(new Set<(frame: ServerFrame) => void>());
  const unclaimedListeners = useRef(new Set<(chatId: string) => void>());
  const [model, setModel] = useState<string | undefined>();
  const modelRef = useRef<string | undefined>(undefined);
  modelRef.current = model;
  const transport = useMemo(
    () =>
      new WebSocketChatTransport({
        url: () => api.socketUrl(),
        onConnectFailed: async () => {
          await api.refreshToken();
        },
        session: (chatId) => sessions.current.get(chatId),
        model: () => modelRef.current,
        onFrame: (frame) => frameListeners.current.forEach((listener) => listener(frame)),
        onUnclaimedTurn: (id) => unclaimedListeners.current.forEach((listener) => listener(id)),
      }),
    [api],
  );
  useEffect(() => () => transport.close(), [transport]);

  const [chatId, setChatId] = useState<string | null>(chatIdFromPath());
  const [chats, setChats] = useState<ChatSummary[]>([]);
  const [nextCursor, setNextCursor] = useState<string | null>(null);
  const [models, setModels] = useState<ModelInfo[]>([]);
  const [sidebarOpen, setSidebarOpen] = useState(false);
  const [listError, setListError] = useState<string | null>(null);
  const [now, setNow] = useState(Date.now());

  const refreshChats = useCallback(async () => {
    try {
      const page = await api.listChats();
      setChats(page.chats);
      setNextCursor(page.nextCursor);
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
        setModel((current) => current ?? m.default);
      })
      .catch(() => {});
    const onPop = () => setChatId(chatIdFromPath());
    window.addEventListener('popstate', onPop);
    const tick = setInterval(() => setNow(Date.now()), 30_000);
    return () => {
      window.removeEventListener('popstate', onPop);
      clearInterval(tick);
    };
  }, [api, refreshChats]);

  useEffect(() => {
    const listener = (frame: ServerFrame) => {
      if (frame.type === 'turn-complete' || frame.type === 'turn-started') void refreshChats();
    };
    frameListeners.current.add(listener);
    return () => {
      frameListeners.current.delete(listener);
    };
  }, [refreshChats]);

  const open = (id: string | null) => {
    const path = id ? `/c/${id}` : '/';
    if (location.pathname !== path) history.pushState(null, '', path);
    setChatId(id);
    setSidebarOpen(false);
  };

  const newChat = () => {
    open(crypto.randomUUID());
  };

  const loadMore = async () => {
    if (!nextCursor) return;
    const page = await api.listChats(nextCursor);
    setChats((current) => [...current, ...page.chats.filter((c) => !current.some((x) => x.id === c.id))]);
    setNextCursor(page.nextCursor);
  };

  const rename = async (chat: ChatSummary) => {
    const title = prompt('Rename chat', chat.title);
    if (title === null || !title.trim()) return;
    const updated = await api.renameChat(chat.id, title);
    setChats((current) => current.map((c) => (c.id === chat.id ? { ...c, ...updated } : c)));
  };

  const remove = async (chat: ChatSummary) => {
    if (!confirm(`Delete “${chat.title}”? This cannot be undone.`)) return;
    await api.deleteChat(chat.id);
    setChats((current) => current.filter((c) => c.id !== chat.id));
    if (chat.id === chatId) open(null);
  };

  const activeId = chatId ?? null;
  return (
    <div className={`app ${sidebarOpen ? 'sidebar-open' : ''}`}>
      <aside className="sidebar" aria-label="Chats">
        <div className="sidebar-head">
          <span className="brand">chatrun</span>
          <button className="primary" onClick={newChat}>
            + New chat
          </button>
        </div>
        {listError && (
          <div className="banner error" role="alert">
            {listError} <button onClick={() => void refreshChats()}>Retry</button>
          </div>
        )}
        <nav>
          <ul className="chat-list">
            {chats.map((chat) => (
              <li key={chat.id} className={chat.id === activeId ? 'active' : ''}>
                <a
                  href={`/c/${chat.id}`}
                  aria-current={chat.id === activeId ? 'page' : undefined}
                  onClick={(e) => {
                    e.preventDefault();
                    open(chat.id);
                  }}
                >
                  <span className="chat-title">{chat.title}</span>
                  <span className="chat-time">{timeAgo(chat.updatedAt, now)}</span>
                </a>
                <span className="chat-actions">
                  <button aria-label={`Rename ${chat.title}`} title="Rename" onClick={() => void rename(chat)}>
                    ✎
                  </button>
                  <button aria-label={`Delete ${chat.title}`} title="Delete" onClick={() => void remove(chat)}>
                    ✕
                  </button>
                </span>
              </li>
            ))}
          </ul>
          {chats.length === 0 && !listError && <p className="empty">No chats yet.</p>}
          {nextCursor && (
            <button className="more" onClick={() => void loadMore()}>
              Load more
            </button>
          )}
        </nav>
      </aside>
      <main className="main">
        <header className="topbar">
          <button className="menu" aria-label="Show chats" onClick={() => setSidebarOpen((o) => !o)}>
            ☰
          </button>
          <span className="topbar-title">{chats.find((c) => c.id === activeId)?.title ?? 'New chat'}</span>
        </header>
        {activeId ? (
          <ChatPanel
            key={activeId}
            chatId={activeId}
            api={api}
            transport={transport}
            sessions={sessions.current}
            frameListeners={frameListeners.current}
            unclaimedListeners={unclaimedListeners.current}
            models={models}
            model={model}
            onModel={setModel}
          />
        ) : (
          <div className="welcome">
            <h1>What can I help with?</h1>
            <p>Your conversations are saved: refresh mid-reply and it carries on.</p>
            <button className="primary" onClick={newChat}>
              Start a new chat
            </button>
          </div>
        )}
      </main>
    </div>
  );
}
