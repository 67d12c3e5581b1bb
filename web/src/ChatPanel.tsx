// One chat: its history loaded over HTTP, then useChat over the WebSocket transport.
import { useChat } from '@ai-sdk/react';
import type { UIMessage } from 'ai';
import { useEffect, useRef, useState, type KeyboardEvent } from 'react';
import Markdown from 'react-markdown';
import remarkGfm from 'remark-gfm';
import { ApiError, type Api } from './api';
import type { ModelInfo, ServerFrame } from './protocol';
import type { SessionInfo, WebSocketChatTransport } from './transport';

interface Props {
  chatId: string;
  api: Api;
  transport: WebSocketChatTransport;
  sessions: Map<string, SessionInfo>;
  frameListeners: Set<(frame: ServerFrame) => void>;
  unclaimedListeners: Set<(chatId: string) => void>;
  models: ModelInfo[];
  model: string | undefined;
  onModel: (model: string) => void;
}

export function ChatPanel(props: Props) {
  const { chatId, api, transport, sessions } = props;
  const [initial, setInitial] = useState<UIMessage[] | null>(null);
  const [loadError, setLoadError] = useState<string | null>(null);
  const [attempt, setAttempt] = useState(0);

  useEffect(() => {
    let cancelled = false;
    api
      .getChat(chatId)
      .then((view) => {
        if (cancelled) return;
        if (view.session) {
          sessions.set(chatId, {
            runId: view.session.runId,
            lastEventId: view.session.lastEventId,
            streaming: view.session.streaming,
            assistantMessageId: view.session.assistantMessageId,
          });
        }
        setInitial(view.messages);
      })
      .catch((e: unknown) => {
        if (cancelled) return;
        if (e instanceof ApiError && e.status === 404) setInitial([]);
        else setLoadError((e as Error).message);
      });
    return () => {
      cancelled = true;
      transport.unfollow(chatId);
    };
  }, [api, chatId, sessions, transport, attempt]);

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
  return <Conversation {...props} initial={initial} />;
}

function Conversation({
  chatId,
  api,
  transport,
  frameListeners,
  unclaimedListeners,
  models,
  model,
  onModel,
  initial,
}: Props & { initial: UIMessage[] }) {
  const { messages, sendMessage, regenerate, stop, status, error, resumeStream, setMessages, clearError } = useChat({
    id: chatId,
    messages: initial,
    transport,
    resume: true,
  });
  const [input, setInput] = useState('');
  const statusRef = useRef(status);
  statusRef.current = status;
  const stopped = useRef(false);
  const bottom = useRef<HTMLDivElement>(null);
  const busy = status === 'submitted' || status === 'streaming';

  useEffect(() => {
    const onFrame = (frame: ServerFrame) => {
      if (!('chatId' in frame) || frame.chatId !== chatId) return;
      if (frame.type === 'turn-started' && statusRef.current === 'ready') {
        // Another tab sent a message: show it; its reply streams in through onUnclaimedTurn.
        setMessages((current) =>
          current.some((m) => m.id === frame.userMessage.id) ? current : [...current, frame.userMessage],
        );
      }
      if (frame.type === 'turn-complete' && stopped.current) {
        // After a stop, show exactly what was stored: the frames that were in flight too.
        stopped.current = false;
        void api.getChat(chatId).then((view) => setMessages(view.messages));
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
  }, [api, chatId, frameListeners, unclaimedListeners, resumeStream, setMessages]);

  useEffect(() => {
    bottom.current?.scrollIntoView({ block: 'end' });
  }, [messages]);

  const submit = () => {
    const text = input.trim();
    if (!text || busy) return;
    setInput('');
    clearError();
    void sendMessage({ text });
  };

  const onKeyDown = (e: KeyboardEvent<HTMLTextAreaElement>) => {
    if (e.key === 'Enter' && !e.shiftKey && !e.nativeEvent.isComposing) {
      e.preventDefault();
      submit();
    }
  };

  const last = messages[messages.length - 1];
  const retry = () => {
    clearError();
    void regenerate();
  };

  return (
    <section className="conversation" aria-label="Conversation">
      <div className="messages" role="log" aria-live="polite" aria-busy={busy}>
        {messages.length === 0 && (
          <div className="welcome small">
            <h1>What can I help with?</h1>
          </div>
        )}
        {messages.map((message) => (
          <Message key={message.id} message={message} />
        ))}
        {status === 'submitted' && <div className="thinking" aria-label="Waiting for the reply">●●●</div>}
        <div ref={bottom} />
      </div>
      {error && (
        <div className="banner error" role="alert">
          {error.message || 'Something went wrong.'} <button onClick={retry}>Retry</button>
        </div>
      )}
      {!busy && last?.role === 'assistant' && (
        <div className="message-actions">
          <button onClick={() => void regenerate()}>↻ Regenerate</button>
        </div>
      )}
      <form
        className="composer"
        onSubmit={(e) => {
          e.preventDefault();
          submit();
        }}
      >
        {messages.length === 0 && models.length > 0 && (
          <label className="model-picker">
            <span>Model</span>
            <select value={model} onChange={(e) => onModel(e.target.value)}>
              {models.map((m) => (
                <option key={m.id} value={m.id}>
                  {m.label}
                  {m.offline ? ' · offline' : ''}
                </option>
              ))}
            </select>
          </label>
        )}
        <label htmlFor="prompt" className="visually-hidden">
          Message
        </label>
        <textarea
          id="prompt"
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
            className="stop"
            onClick={() => {
              stopped.current = true;
              void stop();
            }}
          >
            ■ Stop
          </button>
        ) : (
          <button type="submit" className="primary" disabled={!input.trim()}>
            Send
          </button>
        )}
      </form>
    </section>
  );
}

function Message({ message }: { message: UIMessage }) {
  return (
    <article className={`message ${message.role}`} aria-label={message.role === 'user' ? 'You' : 'Assistant'} data-message-id={message.id}>
      {message.parts.map((part, i) => {
        switch (part.type) {
          case 'text':
            return message.role === 'user' ? (
              <p key={i} className="user-text">
                {part.text}
              </p>
            ) : (
              <div key={i} className="markdown">
                <Markdown remarkPlugins={[remarkGfm]}>{part.text}</Markdown>
              </div>
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
    </article>
  );
}
