//! A turn, from the user's message to the stored reply.
//!
//! `send_message` is onTurnStart (and onChatStart for a new chat): it stores the user's message
//! and the session *before* queueing, so a refresh always shows the message. `run_turn` claims
//! the queued turn, streams the model's reply in frames that are persisted before they are
//! posted, and ends with onTurnComplete. Every write that must happen once is conditional, so a
//! redelivered job never stores a second reply.

use futures::StreamExt;
use serde_json::json;
use tokio::time::Instant;

use super::Services;
use crate::chunk::{FinishReason, MessageAccumulator, UIMessageChunk};
use crate::config::{MAX_TITLE_CHARS, STREAM_EVENT_TTL};
use crate::domain::{
    Chat, ChatId, ChatSession, Connection, EndedReason, Grant, Millis, SessionStatus, StreamEvent,
    Trigger, TurnJob,
};
use crate::error::{ChatError, ModelError, StoreError};
use crate::message::{Role, UIMessage, UIPart};
use crate::ports::{LanguageModel, ModelEvent, ModelRequest};
use crate::protocol::{ChatRequest, SendMessage, ServerFrame};

/// How often a conditional session write is retried after losing a race.
const CAS_ATTEMPTS: usize = 8;

/// How often a turn whose model is silent checks for a stop.
const SILENT_STOP_CHECK: std::time::Duration = std::time::Duration::from_millis(500);

/// A chat's title: its first user message, trimmed at a word boundary.
pub fn title_from(message: &UIMessage) -> String {
    let text = message.text();
    let words: Vec<&str> = text.split_whitespace().collect();
    if words.is_empty() {
        return "New chat".into();
    }
    let mut title = String::new();
    for word in words {
        let extra = if title.is_empty() { 0 } else { 1 } + word.chars().count();
        if title.chars().count() + extra > MAX_TITLE_CHARS {
            if title.is_empty() {
                title = word.chars().take(MAX_TITLE_CHARS - 1).collect();
            }
            title.push('…');
            return title;
        }
        if !title.is_empty() {
            title.push(' ');
        }
        title.push_str(word);
    }
    title
}

fn is_stale(s: &Services, session: &ChatSession, now: Millis) -> bool {
    session.streaming
        && session
            .turn_started_at
            .is_some_and(|at| now - at > s.settings.stale_turn_after.as_millis() as i64)
}

/// onChatStart + onTurnStart: stores the user's message (or prepares a regeneration), starts or
/// refreshes the session, subscribes the sender and queues the turn.
///
/// # Returns
/// The `ack` frame for the sender.
/// # Errors
/// `forbidden` for a run-scoped token; `not_found` for someone else's chat; `conflict` while a
/// reply is streaming or for a message id that was already sent; `bad_request` for a
/// regeneration with nothing to regenerate.
pub async fn send_message(
    s: &Services,
    conn: &Connection,
    req: &SendMessage,
) -> Result<ServerFrame, ChatError> {
    if conn.grant != Grant::User {
        return Err(ChatError::Forbidden(
            "an access token cannot send messages".into(),
        ));
    }
    let now = s.now();
    let chat_id = &req.chat_id;
    let existing_chat = match s.store.get_chat(chat_id).await? {
        Some(chat) if chat.owner_id == conn.owner_id => Some(chat),
        Some(_) => return Err(ChatError::chat_not_found()),
        None => None,
    };
    if existing_chat.is_some()
        && let Some(session) = s.store.get_session(chat_id).await?
        && session.streaming
        && !is_stale(s, &session, now)
    {
        return Err(ChatError::Conflict(
            "a reply is still streaming: stop it or wait for it".into(),
        ));
    }

    let mut new_chat = None;
    let user_message = match req.trigger {
        Trigger::SubmitMessage => {
            let message = req
                .message
                .clone()
                .ok_or_else(|| ChatError::BadRequest("submit-message needs a `message`".into()))?;
            if existing_chat.is_none() {
                let chat = Chat {
                    id: chat_id.clone(),
                    owner_id: conn.owner_id.clone(),
                    title: title_from(&message),
                    model: req.model.clone().unwrap_or_default(),
                    created_at: now,
                    updated_at: now,
                    message_count: 0,
                };
                match s.store.create_chat(&chat).await {
                    Ok(()) => new_chat = Some(chat),
                    // Someone else made a chat with this id between our read and write.
                    Err(StoreError::Conflict(_)) => return Err(ChatError::chat_not_found()),
                    Err(e) => return Err(e.into()),
                }
            }
            match s.store.append_message(chat_id, &message, now).await {
                Ok(()) => {}
                Err(StoreError::Conflict(_)) => {
                    return Err(ChatError::Conflict(format!(
                        "message {} was already sent",
                        message.id
                    )));
                }
                Err(e) => return Err(e.into()),
            }
            message
        }
        Trigger::RegenerateMessage => {
            if existing_chat.is_none() {
                return Err(ChatError::chat_not_found());
            }
            prepare_regeneration(s, chat_id, req.message_id.as_deref()).await?
        }
    };

    let assistant_message_id = s.ids.new_id();
    let session = begin_turn(
        s,
        conn,
        chat_id,
        &user_message.id,
        &assistant_message_id,
        now,
    )
    .await?;
    if let Some(chat) = &new_chat {
        s.hooks.on_chat_start(chat, &session).await;
    }
    s.store
        .subscribe(chat_id, &conn.connection_id, now, conn.expires_at)
        .await?;
    s.hooks.on_turn_start(&session, &user_message).await;

    let job = TurnJob {
        chat_id: chat_id.clone(),
        run_id: session.run_id.clone(),
        user_message_id: user_message.id.clone(),
        assistant_message_id: assistant_message_id.clone(),
        trigger: req.trigger,
    };
    if let Err(e) = s.queue.enqueue(&job).await {
        // Without a queued job nothing would ever end this turn: release the session so the
        // user can send again (the message stays, and regenerating it answers it).
        let _ = update_session(s, chat_id, &session.run_id, |current| {
            current.streaming = false;
            true
        })
        .await;
        return Err(e.into());
    }
    Ok(ServerFrame::Ack {
        request_id: req.request_id.clone(),
        chat_id: chat_id.clone(),
        run_id: session.run_id,
        access_token: session.access_token,
        user_message_id: user_message.id,
        assistant_message_id,
    })
}

/// Removes the reply to regenerate (and anything after it) and returns the user message that
/// the new reply answers.
async fn prepare_regeneration(
    s: &Services,
    chat_id: &ChatId,
    message_id: Option<&str>,
) -> Result<UIMessage, ChatError> {
    let mut messages = s.store.messages(chat_id).await?;
    let target = match message_id {
        Some(id) => Some(
            messages
                .iter()
                .position(|m| m.id == id)
                .ok_or_else(|| ChatError::NotFound(format!("message {id} not found")))?,
        ),
        // Without an id, the last message is regenerated if it is a reply; a last user message
        // (its turn failed) is simply answered again.
        None => messages
            .len()
            .checked_sub(1)
            .filter(|&i| messages[i].role == Role::Assistant),
    };
    if let Some(index) = target {
        if messages[index].role != Role::Assistant {
            return Err(ChatError::BadRequest(
                "only an assistant message can be regenerated".into(),
            ));
        }
        let id = messages[index].id.clone();
        s.store.delete_messages_from(chat_id, &id).await?;
        messages.truncate(index);
    }
    match messages.pop() {
        Some(m) if m.role == Role::User => Ok(m),
        _ => Err(ChatError::BadRequest(
            "there is no user message to answer".into(),
        )),
    }
}

/// Marks the turn as started on the current session, or on a fresh one (new run id and access
/// token) when there is none or it has ended, expired or lost its worker.
async fn begin_turn(
    s: &Services,
    conn: &Connection,
    chat_id: &ChatId,
    user_message_id: &str,
    assistant_message_id: &str,
    now: Millis,
) -> Result<ChatSession, ChatError> {
    let idle = s.settings.session_idle.as_millis() as i64;
    for _ in 0..CAS_ATTEMPTS {
        let current = s.store.get_session(chat_id).await?;
        let expected = current.as_ref().map(|c| c.version);
        let next = match current {
            Some(current) if !current.is_over(now) && !is_stale(s, &current, now) => {
                if current.streaming {
                    return Err(ChatError::Conflict(
                        "a reply is still streaming: stop it or wait for it".into(),
                    ));
                }
                ChatSession {
                    streaming: true,
                    turn_start_event_id: current.last_event_id + 1,
                    assistant_message_id: Some(assistant_message_id.into()),
                    user_message_id: Some(user_message_id.into()),
                    stop_requested: false,
                    turn_started_at: Some(now),
                    attempts: 0,
                    expires_at: now + idle,
                    ..current
                }
            }
            _ => {
                let run_id = s.ids.new_id();
                let expires_at = now + idle;
                ChatSession {
                    chat_id: chat_id.clone(),
                    access_token: s.tokens.run_token(
                        &conn.owner_id,
                        chat_id,
                        &run_id,
                        now,
                        expires_at,
                    ),
                    run_id,
                    last_event_id: 0,
                    turns: 0,
                    status: SessionStatus::Active,
                    ended_reason: None,
                    streaming: true,
                    turn_start_event_id: 1,
                    assistant_message_id: Some(assistant_message_id.into()),
                    user_message_id: Some(user_message_id.into()),
                    stop_requested: false,
                    turn_started_at: Some(now),
                    attempts: 0,
                    expires_at,
                    version: 0,
                }
            }
        };
        match s.store.put_session(&next, expected).await {
            Ok(stored) => return Ok(stored),
            Err(StoreError::Conflict(_)) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(ChatError::Conflict(
        "the session changed too often; retry".into(),
    ))
}

/// Applies `change` to the session of `run_id` with a conditional write, re-reading after a lost
/// race. `change` returns false to leave the session as it is.
///
/// # Returns
/// The stored session, or `None` when the chat has no session of this run any more.
async fn update_session(
    s: &Services,
    chat_id: &ChatId,
    run_id: &str,
    mut change: impl FnMut(&mut ChatSession) -> bool,
) -> Result<Option<ChatSession>, ChatError> {
    for _ in 0..CAS_ATTEMPTS {
        let Some(mut session) = s.store.get_session(chat_id).await? else {
            return Ok(None);
        };
        if session.run_id != run_id {
            return Ok(None);
        }
        let version = session.version;
        if !change(&mut session) {
            return Ok(Some(session));
        }
        match s.store.put_session(&session, Some(version)).await {
            Ok(stored) => return Ok(Some(stored)),
            Err(StoreError::Conflict(_)) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(ChatError::Internal {
        message: "session update kept conflicting".into(),
        retryable: true,
    })
}

/// `stop`: asks the running turn to end. run-turn sees the flag between frames, sends `abort`
/// and `finish`, and stores exactly what was streamed. Stopping when nothing streams is a no-op.
pub async fn stop(s: &Services, conn: &Connection, req: &ChatRequest) -> Result<(), ChatError> {
    s.owned_chat(&conn.owner_id, &conn.grant, &req.chat_id)
        .await?;
    let Some(session) = s.store.get_session(&req.chat_id).await? else {
        return Ok(());
    };
    update_session(s, &req.chat_id, &session.run_id, |current| {
        if !current.streaming || current.stop_requested {
            return false;
        }
        current.stop_requested = true;
        true
    })
    .await?;
    Ok(())
}

/// What became of a turn job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TurnOutcome {
    /// The reply is stored and the session updated.
    Completed,
    /// Nothing to do: the job is stale, a duplicate, or another worker owns the turn.
    Dropped(&'static str),
}

/// Runs one queued turn: claim, stream, persist, fan out, complete.
/// # Errors
/// A retryable error when the model could not be reached or the store failed; the queue
/// redelivers the job, and a later attempt finishes the turn.
pub async fn run_turn(
    s: &Services,
    model: &dyn LanguageModel,
    job: &TurnJob,
) -> Result<TurnOutcome, ChatError> {
    let chat_id = &job.chat_id;
    let Some(session) = claim(s, job).await? else {
        return Ok(TurnOutcome::Dropped("stale or finished job"));
    };
    let Some(chat) = s.store.get_chat(chat_id).await? else {
        return Ok(TurnOutcome::Dropped("chat deleted"));
    };
    let mut history = s.store.messages(chat_id).await?;
    if history.iter().any(|m| m.id == job.assistant_message_id) {
        // A previous attempt stored the reply and died before updating the session.
        let last = s.store.last_event_id(&job.run_id, s.now()).await?;
        complete(
            s,
            job,
            &chat.owner_id,
            None,
            last.max(session.turn_start_event_id - 1),
        )
        .await?;
        return Ok(TurnOutcome::Dropped("reply already stored"));
    }
    if let Some(pos) = history.iter().position(|m| m.id == job.user_message_id) {
        history.truncate(pos + 1);
    }

    let mut writer = FrameWriter::new(s, job, &session, chat.model.clone());
    let earlier = s
        .store
        .events_after(&job.run_id, session.turn_start_event_id - 1, s.now())
        .await?;
    if !earlier.is_empty() {
        // A previous attempt crashed mid-stream. Its frames were seen by clients, so they stay;
        // the turn ends with an error rather than a second, different reply.
        writer.adopt(&earlier);
        if !writer.acc.is_finished() {
            writer.push_error("The reply was interrupted. Please regenerate it.");
            writer.flush().await?;
        }
        let last = writer.next_event_id - 1;
        complete(
            s,
            job,
            &chat.owner_id,
            Some(writer.acc.into_message()),
            last,
        )
        .await?;
        return Ok(TurnOutcome::Completed);
    }

    writer.subscribers = s.store.subscribers(chat_id, s.now()).await?;
    let model_id = if model.models().iter().any(|m| m.id == chat.model) {
        chat.model.clone()
    } else {
        model.default_model()
    };
    writer.model_id = model_id.clone();
    let user_message = history
        .iter()
        .find(|m| m.id == job.user_message_id)
        .cloned()
        .unwrap_or_else(|| UIMessage::user_text(job.user_message_id.clone(), ""));
    s.fan_out(
        chat_id,
        &writer.subscribers,
        &ServerFrame::TurnStarted {
            chat_id: chat_id.clone(),
            run_id: job.run_id.clone(),
            user_message,
            assistant_message_id: job.assistant_message_id.clone(),
            first_event_id: session.turn_start_event_id,
        },
    )
    .await;

    let mut stream = match model
        .stream(ModelRequest {
            model: model_id,
            messages: history,
        })
        .await
    {
        Ok(stream) => stream,
        Err(ModelError::Rejected(reason)) => {
            // Retrying cannot help: tell the user and end the turn.
            writer.push_error(&format!("The model refused the request: {reason}"));
            writer.flush().await?;
            let last = writer.next_event_id - 1;
            complete(
                s,
                job,
                &chat.owner_id,
                Some(writer.acc.into_message()),
                last,
            )
            .await?;
            return Ok(TurnOutcome::Completed);
        }
        Err(e) => {
            return Err(ChatError::Internal {
                message: e.to_string(),
                retryable: true,
            });
        }
    };

    let mut first_delta_sent = false;
    loop {
        // With nothing pending, wake now and then anyway so a stop is seen while the model is
        // silent (a slow first token, a long pause).
        let deadline = writer
            .flush_deadline()
            .unwrap_or_else(|| Instant::now() + SILENT_STOP_CHECK);
        let next = tokio::select! {
            next = stream.next() => next,
            _ = tokio::time::sleep_until(deadline) => {
                let flow = if writer.pending.is_empty() { writer.check_stop().await? } else { writer.flush().await? };
                if flow == Flow::Stop {
                    break;
                }
                continue;
            }
        };
        match next {
            Some(Ok(ModelEvent::TextDelta(delta))) => writer.push_text(delta),
            Some(Ok(ModelEvent::ReasoningDelta(delta))) => writer.push_reasoning(delta),
            Some(Ok(ModelEvent::Finish { reason, usage })) => {
                writer.finish(
                    Some(reason),
                    usage.map(|u| serde_json::to_value(u).unwrap_or_default()),
                );
                writer.flush().await?;
                break;
            }
            Some(Err(e)) => {
                writer.push_error(&e.to_string());
                writer.flush().await?;
                break;
            }
            None => {
                writer.finish(Some(FinishReason::Stop), None);
                writer.flush().await?;
                break;
            }
        }
        // The first token goes out at once; later deltas wait for the frame interval or size.
        if !first_delta_sent && writer.pending_bytes > 0 {
            first_delta_sent = true;
            if writer.flush().await? == Flow::Stop {
                break;
            }
        } else if writer.pending_bytes >= s.settings.frame_max_bytes
            && writer.flush().await? == Flow::Stop
        {
            break;
        }
    }
    drop(stream);
    if writer.lost_race {
        return Ok(TurnOutcome::Dropped("another worker owns the turn"));
    }
    let last = writer.next_event_id - 1;
    complete(
        s,
        job,
        &chat.owner_id,
        Some(writer.acc.into_message()),
        last,
    )
    .await?;
    Ok(TurnOutcome::Completed)
}

/// Claims the job's turn: the session must still be this run's and streaming this turn.
async fn claim(s: &Services, job: &TurnJob) -> Result<Option<ChatSession>, ChatError> {
    let mut claimed = false;
    let session = update_session(s, &job.chat_id, &job.run_id, |current| {
        if !current.streaming
            || current.assistant_message_id.as_deref() != Some(job.assistant_message_id.as_str())
        {
            return false;
        }
        current.attempts += 1;
        claimed = true;
        true
    })
    .await?;
    Ok(session.filter(|_| claimed))
}

/// onTurnComplete: stores the reply (once), ends the turn on the session, tells subscribers.
async fn complete(
    s: &Services,
    job: &TurnJob,
    owner_id: &str,
    reply: Option<UIMessage>,
    last_event_id: u64,
) -> Result<(), ChatError> {
    complete_with(s, job, owner_id, reply, last_event_id, None).await
}

async fn complete_with(
    s: &Services,
    job: &TurnJob,
    owner_id: &str,
    reply: Option<UIMessage>,
    last_event_id: u64,
    fail: Option<EndedReason>,
) -> Result<(), ChatError> {
    let now = s.now();
    let chat_id = &job.chat_id;
    let mut reply = reply;
    if let Some(message) = &mut reply {
        message.id = job.assistant_message_id.clone();
        let has_content = message
            .parts
            .iter()
            .any(|p| !matches!(p, UIPart::StepStart));
        if has_content {
            match s.store.append_message(chat_id, message, now).await {
                Ok(()) | Err(StoreError::Conflict(_)) => {}
                Err(StoreError::NotFound(_)) => return Ok(()),
                Err(e) => return Err(e.into()),
            }
        } else {
            reply = None;
        }
    }
    let idle = s.settings.session_idle.as_millis() as i64;
    let max_turns = s.settings.max_turns;
    let Some(updated) = update_session(s, chat_id, &job.run_id, |current| {
        if !current.streaming
            || current.assistant_message_id.as_deref() != Some(job.assistant_message_id.as_str())
        {
            return false;
        }
        current.streaming = false;
        current.stop_requested = false;
        current.last_event_id = last_event_id.max(current.last_event_id);
        current.turns += 1;
        current.expires_at = now + idle;
        current.access_token =
            s.tokens
                .run_token(owner_id, chat_id, &current.run_id, now, now + idle);
        if let Some(reason) = fail {
            current.status = SessionStatus::Ended;
            current.ended_reason = Some(reason);
        } else if current.turns >= max_turns {
            current.status = SessionStatus::Ended;
            current.ended_reason = Some(EndedReason::MaxTurns);
        }
        true
    })
    .await?
    else {
        return Ok(());
    };
    if let Some(message) = &reply {
        s.hooks.on_turn_complete(&updated, message).await;
    }
    let subscribers = s.store.subscribers(chat_id, now).await?;
    s.fan_out(
        chat_id,
        &subscribers,
        &ServerFrame::TurnComplete {
            chat_id: chat_id.clone(),
            run_id: updated.run_id.clone(),
            last_event_id: updated.last_event_id,
            access_token: updated.access_token.clone(),
        },
    )
    .await;
    if let Some(reason) = updated.ended_reason
        && updated.status == SessionStatus::Ended
    {
        s.fan_out(
            chat_id,
            &subscribers,
            &ServerFrame::SessionEnded {
                chat_id: chat_id.clone(),
                run_id: updated.run_id.clone(),
                reason,
            },
        )
        .await;
    }
    Ok(())
}

/// A dead-lettered job: the turn failed `max_receives` times. The user's message stays; the
/// reply ends with an `error` chunk, and the session ends (`failed`) so the next message starts a
/// fresh one.
pub async fn fail_turn(s: &Services, job: &TurnJob) -> Result<TurnOutcome, ChatError> {
    let Some(session) = s.store.get_session(&job.chat_id).await? else {
        return Ok(TurnOutcome::Dropped("no session"));
    };
    if session.run_id != job.run_id
        || !session.streaming
        || session.assistant_message_id.as_deref() != Some(job.assistant_message_id.as_str())
    {
        return Ok(TurnOutcome::Dropped("turn already finished"));
    }
    let Some(chat) = s.store.get_chat(&job.chat_id).await? else {
        return Ok(TurnOutcome::Dropped("chat deleted"));
    };
    let mut writer = FrameWriter::new(s, job, &session, chat.model.clone());
    let earlier = s
        .store
        .events_after(&job.run_id, session.turn_start_event_id - 1, s.now())
        .await?;
    writer.adopt(&earlier);
    if !writer.acc.is_finished() {
        writer.push_error("The model could not answer. Please try again.");
        writer.flush().await?;
    }
    let last = writer.next_event_id - 1;
    complete_with(
        s,
        job,
        &chat.owner_id,
        Some(writer.acc.into_message()),
        last,
        Some(EndedReason::Failed),
    )
    .await?;
    Ok(TurnOutcome::Completed)
}

#[derive(Debug, PartialEq, Eq)]
enum Flow {
    Continue,
    Stop,
}

/// Turns model events into chunks, coalesces them into frames, persists each frame as a
/// StreamEvent and then posts it to the chat's subscribers.
struct FrameWriter<'a> {
    s: &'a Services,
    job: &'a TurnJob,
    model_id: String,
    /// The id the next chunk will carry.
    next_event_id: u64,
    pending: Vec<UIMessageChunk>,
    pending_bytes: usize,
    pending_since: Option<Instant>,
    /// What has been persisted and posted, as the client builds it.
    acc: MessageAccumulator,
    subscribers: Vec<String>,
    started: bool,
    open_text: Option<String>,
    open_reasoning: Option<String>,
    part_counter: u32,
    lost_race: bool,
}

impl<'a> FrameWriter<'a> {
    fn new(s: &'a Services, job: &'a TurnJob, session: &ChatSession, model_id: String) -> Self {
        FrameWriter {
            s,
            job,
            model_id,
            next_event_id: session.turn_start_event_id,
            pending: Vec::new(),
            pending_bytes: 0,
            pending_since: None,
            acc: MessageAccumulator::new(job.assistant_message_id.clone()),
            subscribers: Vec::new(),
            started: false,
            open_text: None,
            open_reasoning: None,
            part_counter: 0,
            lost_race: false,
        }
    }

    /// Takes over the frames an earlier attempt persisted.
    fn adopt(&mut self, events: &[StreamEvent]) {
        for event in events {
            for (offset, chunk) in event.chunks.iter().enumerate() {
                let id = event.first_event_id + offset as u64;
                if id >= self.next_event_id {
                    self.acc.apply(chunk);
                    self.next_event_id = id + 1;
                }
            }
        }
        self.started = self.next_event_id > 0 && !events.is_empty();
    }

    fn push(&mut self, chunk: UIMessageChunk) {
        if self.pending_since.is_none() {
            self.pending_since = Some(Instant::now());
        }
        self.pending_bytes += chunk.delta_len().max(16);
        // Consecutive deltas of one part travel as one chunk: fewer ids, smaller frames.
        if let (
            Some(UIMessageChunk::TextDelta {
                id: last_id,
                delta: last,
                ..
            }),
            UIMessageChunk::TextDelta {
                id,
                delta,
                provider_metadata: None,
            },
        )
        | (
            Some(UIMessageChunk::ReasoningDelta {
                id: last_id,
                delta: last,
                ..
            }),
            UIMessageChunk::ReasoningDelta {
                id,
                delta,
                provider_metadata: None,
            },
        ) = (self.pending.last_mut(), &chunk)
            && last_id == id
        {
            last.push_str(delta);
            return;
        }
        self.pending.push(chunk);
    }

    fn ensure_started(&mut self) {
        if !self.started {
            self.started = true;
            self.push(UIMessageChunk::Start {
                message_id: Some(self.job.assistant_message_id.clone()),
                message_metadata: None,
            });
            self.push(UIMessageChunk::StartStep);
        }
    }

    fn next_part_id(&mut self, prefix: &str) -> String {
        self.part_counter += 1;
        format!("{prefix}{}", self.part_counter)
    }

    fn close_reasoning(&mut self) {
        if let Some(id) = self.open_reasoning.take() {
            self.push(UIMessageChunk::ReasoningEnd {
                id,
                provider_metadata: None,
            });
        }
    }

    fn close_text(&mut self) {
        if let Some(id) = self.open_text.take() {
            self.push(UIMessageChunk::TextEnd {
                id,
                provider_metadata: None,
            });
        }
    }

    fn push_text(&mut self, delta: String) {
        if delta.is_empty() {
            return;
        }
        self.ensure_started();
        self.close_reasoning();
        let id = match &self.open_text {
            Some(id) => id.clone(),
            None => {
                let id = self.next_part_id("t");
                self.open_text = Some(id.clone());
                self.push(UIMessageChunk::TextStart {
                    id: id.clone(),
                    provider_metadata: None,
                });
                id
            }
        };
        self.push(UIMessageChunk::TextDelta {
            id,
            delta,
            provider_metadata: None,
        });
    }

    fn push_reasoning(&mut self, delta: String) {
        if delta.is_empty() {
            return;
        }
        self.ensure_started();
        self.close_text();
        let id = match &self.open_reasoning {
            Some(id) => id.clone(),
            None => {
                let id = self.next_part_id("r");
                self.open_reasoning = Some(id.clone());
                self.push(UIMessageChunk::ReasoningStart {
                    id: id.clone(),
                    provider_metadata: None,
                });
                id
            }
        };
        self.push(UIMessageChunk::ReasoningDelta {
            id,
            delta,
            provider_metadata: None,
        });
    }

    fn metadata(&self, usage: Option<serde_json::Value>) -> serde_json::Value {
        let mut metadata = json!({ "model": self.model_id });
        if let Some(usage) = usage {
            metadata["usage"] = usage;
        }
        metadata
    }

    /// Closes open parts and the step, and ends the stream with `finish`.
    fn finish(&mut self, reason: Option<FinishReason>, usage: Option<serde_json::Value>) {
        self.ensure_started();
        self.close_reasoning();
        self.close_text();
        self.push(UIMessageChunk::FinishStep);
        let message_metadata = Some(self.metadata(usage));
        self.push(UIMessageChunk::Finish {
            finish_reason: reason,
            message_metadata,
        });
    }

    /// An error ends the stream as the AI SDK does: `error`, `finish-step`, `finish` (error),
    /// leaving the open text part as it was.
    fn push_error(&mut self, text: &str) {
        self.ensure_started();
        self.push(UIMessageChunk::Error {
            error_text: text.into(),
        });
        self.push(UIMessageChunk::FinishStep);
        let message_metadata = Some(self.metadata(None));
        self.push(UIMessageChunk::Finish {
            finish_reason: Some(FinishReason::Error),
            message_metadata,
        });
    }

    fn flush_deadline(&self) -> Option<Instant> {
        self.pending_since
            .map(|at| at + self.s.settings.frame_interval)
    }

    /// Persists the pending chunks as one StreamEvent, posts them, then reads the stop flag and
    /// the current subscribers for the next frame.
    /// # Returns
    /// `Flow::Stop` when the user asked to stop (the stream has then been ended with `abort`) or
    /// another worker owns the turn.
    async fn flush(&mut self) -> Result<Flow, ChatError> {
        if self.pending.is_empty() {
            return Ok(Flow::Continue);
        }
        let chunks = std::mem::take(&mut self.pending);
        self.pending_bytes = 0;
        self.pending_since = None;
        let ended = chunks.iter().any(UIMessageChunk::is_finish);
        match self.persist_and_post(chunks).await? {
            Posted::LostRace => {
                self.lost_race = true;
                Ok(Flow::Stop)
            }
            _ if ended => Ok(Flow::Stop),
            Posted::StopRequested => self.abort().await,
            Posted::Continue => Ok(Flow::Continue),
        }
    }

    /// Checks for a stop while the model is silent.
    async fn check_stop(&mut self) -> Result<Flow, ChatError> {
        let session = self.s.store.get_session(&self.job.chat_id).await?;
        if session.is_some_and(|s| s.run_id == self.job.run_id && s.stop_requested) {
            self.abort().await
        } else {
            Ok(Flow::Continue)
        }
    }

    /// Ends the stream with `abort` and `finish` on the user's stop. What was not posted was
    /// never seen, so it is dropped: the stored text is exactly what streamed.
    async fn abort(&mut self) -> Result<Flow, ChatError> {
        self.pending.clear();
        self.ensure_started();
        self.push(UIMessageChunk::Abort {
            reason: Some("stopped by the user".into()),
        });
        let message_metadata = Some(self.metadata(None));
        self.push(UIMessageChunk::Finish {
            finish_reason: None,
            message_metadata,
        });
        let chunks = std::mem::take(&mut self.pending);
        self.pending_bytes = 0;
        self.pending_since = None;
        if let Posted::LostRace = self.persist_and_post(chunks).await? {
            self.lost_race = true;
        }
        Ok(Flow::Stop)
    }

    /// Persists the chunks as one StreamEvent, then reads the session and the subscribers and
    /// posts the frame to them. Reading the subscribers *after* persisting closes the race with
    /// a `resume`: a connection that subscribed too late to be read here subscribed after the
    /// event was persisted, so its replay (read after subscribing) holds the event.
    async fn persist_and_post(&mut self, chunks: Vec<UIMessageChunk>) -> Result<Posted, ChatError> {
        let now = self.s.now();
        let event = StreamEvent {
            run_id: self.job.run_id.clone(),
            first_event_id: self.next_event_id,
            chunks,
            expires_at: now + STREAM_EVENT_TTL.as_millis() as i64,
        };
        match self.s.store.append_event(&event).await {
            Ok(()) => {}
            Err(StoreError::Conflict(_)) => return Ok(Posted::LostRace),
            Err(e) => return Err(e.into()),
        }
        self.next_event_id += event.chunks.len() as u64;
        self.acc.apply_all(&event.chunks);
        let (session, subscribers) = self
            .s
            .store
            .session_and_subscribers(&self.job.chat_id, now)
            .await?;
        self.subscribers = subscribers;
        let frame = ServerFrame::Events {
            chat_id: self.job.chat_id.clone(),
            run_id: event.run_id,
            first_event_id: event.first_event_id,
            chunks: event.chunks,
            replay: false,
        };
        self.s
            .fan_out(&self.job.chat_id, &self.subscribers, &frame)
            .await;
        let stop = session.is_some_and(|s| s.run_id == self.job.run_id && s.stop_requested);
        Ok(if stop {
            Posted::StopRequested
        } else {
            Posted::Continue
        })
    }
}

/// What became of a frame.
enum Posted {
    Continue,
    /// Posted, and the user has asked to stop.
    StopRequested,
    /// Another worker had already persisted these event ids: nothing was posted.
    LostRace,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn titles_are_trimmed_at_a_word_boundary() {
        assert_eq!(
            title_from(&UIMessage::user_text("m", "  Hello   there  ")),
            "Hello there"
        );
        let long = "word ".repeat(40);
        let title = title_from(&UIMessage::user_text("m", long));
        assert!(title.ends_with("word…"), "{title}");
        assert!(title.chars().count() <= MAX_TITLE_CHARS + 1);
        assert_eq!(title_from(&UIMessage::user_text("m", "   ")), "New chat");
        let one = "x".repeat(200);
        assert_eq!(
            title_from(&UIMessage::user_text("m", one)).chars().count(),
            MAX_TITLE_CHARS
        );
    }
}
