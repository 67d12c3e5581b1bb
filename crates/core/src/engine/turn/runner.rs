//! The turn loop: claim the queued turn, stream the model's reply through the chunk builder
//! into the frame sink, and finish with onTurnComplete.
//!
//! Errors are classified here, before anyone retries them:
//! - a passing failure before anything streamed (model unreachable, 429/5xx, a stalled first
//!   token, a store hiccup) is returned as a retryable error: the queue brings the job back
//!   after a short backoff and the turn starts cleanly;
//! - a failure that cannot heal by retrying (the model refused the request) or one after frames
//!   were posted (a retry would be a second, different reply) ends the turn at once with an
//!   `error` chunk the user sees.

use futures::StreamExt;
use tokio::time::Instant;

use super::super::Services;
use super::chunks::ChunkBuilder;
use super::session::{claim, finish_turn};
use super::sink::{FrameSink, Signal};
use crate::chunk::FinishReason;
use crate::config::{HISTORY_PAGE_DEFAULT, HISTORY_PAGE_MAX_BYTES};
use crate::domain::{EndedReason, TurnJob};
use crate::error::{ChatError, ModelError, StoreError};
use crate::history::PageLimits;
use crate::message::{UIMessage, UIPart};
use crate::ports::{ChatStore, LanguageModel, ModelEvent, ModelRequest};
use crate::protocol::ServerFrame;

/// How often a turn whose model is silent checks for a stop.
const SILENT_STOP_CHECK: std::time::Duration = std::time::Duration::from_millis(500);

/// A stored reply is cut to this many bytes of text when the whole one is too large to store.
const TRUNCATED_REPLY_BYTES: usize = 64 * 1024;

/// What became of a turn job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TurnOutcome {
    /// The reply is stored and the session updated.
    Completed,
    /// Nothing to do: the job is stale, a duplicate, or another worker owns the turn.
    Dropped(&'static str),
}

/// How the loop goes on after a frame.
#[derive(Debug, PartialEq, Eq)]
enum Flow {
    Continue,
    /// The stream has ended (`finish` sent).
    Done,
    /// Another worker or a newer session owns the turn: stop without completing.
    Lost,
}

/// Sends what the builder holds as one frame.
async fn flush(builder: &mut ChunkBuilder, sink: &mut FrameSink<'_>) -> Result<Flow, ChatError> {
    if builder.is_empty() {
        return Ok(Flow::Continue);
    }
    let chunks = builder.take();
    let ended = chunks.iter().any(|c| c.is_finish());
    match sink.send(chunks).await? {
        Signal::Lost => Ok(Flow::Lost),
        _ if ended => Ok(Flow::Done),
        Signal::StopRequested(shown) => abort(builder, sink, shown).await,
        Signal::Continue => Ok(Flow::Continue),
    }
}

/// Ends the stream on the user's stop, the reply cut back to what they had on screen.
async fn abort(
    builder: &mut ChunkBuilder,
    sink: &mut FrameSink<'_>,
    shown: Option<u64>,
) -> Result<Flow, ChatError> {
    if let Some(last_shown) = shown {
        sink.cut_back_to(last_shown).await?;
    }
    builder.abort();
    match sink.send(builder.take()).await? {
        Signal::Lost => Ok(Flow::Lost),
        _ => Ok(Flow::Done),
    }
}

/// The short text a user sees for a model failure (the full error goes to the log).
fn model_error_text(error: &ModelError) -> String {
    match error {
        ModelError::Rejected(reason) => format!("The model refused the request: {reason}"),
        ModelError::Unavailable(reason) | ModelError::Stream(reason) => {
            format!("The model stopped answering: {reason}")
        }
    }
}

fn retry_later(message: String) -> ChatError {
    ChatError::Internal {
        message,
        retryable: true,
    }
}

/// Runs one queued turn: claim, stream, persist, fan out, complete.
/// # Errors
/// A retryable error when nothing has streamed yet and a later attempt can succeed (the model
/// could not be reached or stalled before its first token, the store failed); the queue
/// redelivers the job. A non-retryable error when the turn can never succeed; the caller ends
/// it with [`end_turn_with_error`].
pub async fn run_turn(
    s: &Services,
    model: &dyn LanguageModel,
    job: &TurnJob,
) -> Result<TurnOutcome, ChatError> {
    let chat_id = &job.chat_id;
    // The steps before and after the stream are boxed: a future holds the state of every step
    // inline, and thousands of turns stream at once, so the turn's own future keeps only what
    // streaming needs (3.3 KB a turn before, 2.0 KB after).
    // The claim and the two reads the turn needs are asked at once: each is a round trip to
    // the store, all on the way to the first token, and the reads change nothing (a stale
    // job's are dropped with it).
    let (claimed, chat, context) = futures::join!(
        Box::pin(claim(s, job)),
        s.store.get_chat(chat_id),
        Box::pin(turn_context(
            s.store.as_ref(),
            job,
            s.settings.context_tokens,
            PageLimits {
                messages: HISTORY_PAGE_DEFAULT,
                bytes: HISTORY_PAGE_MAX_BYTES,
            },
        )),
    );
    let Some(session) = claimed? else {
        return Ok(TurnOutcome::Dropped("stale or finished job"));
    };
    let (chat, context) = (chat?, context?);
    // Frames of this turn exist only if an earlier attempt claimed it first (every attempt
    // claims before it writes a frame, and `attempts` counts the claims): the first attempt,
    // nearly every turn, skips the read.
    let earlier = if session.attempts > 1 {
        s.store
            .events_after(&job.run_id, session.turn_start_event_id - 1, s.now())
            .await?
    } else {
        Vec::new()
    };
    let Some(chat) = chat else {
        return Ok(TurnOutcome::Dropped("chat deleted"));
    };
    let history = match context {
        TurnContext::Messages(history) => history,
        TurnContext::AlreadyAnswered => {
            // A previous attempt stored the reply and died before updating the session.
            let last = s.store.last_event_id(&job.run_id, s.now()).await?;
            Box::pin(complete(
                s,
                job,
                &chat.owner_id,
                None,
                last.max(session.turn_start_event_id - 1),
                None,
            ))
            .await?;
            return Ok(TurnOutcome::Dropped("reply already stored"));
        }
    };

    // The model chosen with the message, fixed on the session when the turn was claimed: a
    // change of the chat's model after that (by a later turn) does not reach this one.
    let chosen = session.turn_model.as_deref().unwrap_or(&chat.model);
    let model_id = if model.models().iter().any(|m| m.id == chosen) {
        chosen.to_owned()
    } else {
        model.default_model()
    };
    let mut sink = FrameSink::new(s, job, session.turn_start_event_id);
    let mut builder = ChunkBuilder::new(job.assistant_message_id.clone(), model_id.clone());
    if sink.adopt(&earlier) {
        // A previous attempt crashed mid-stream. Its frames were seen by clients, so they stay;
        // the turn ends with an error rather than a second, different reply.
        return Box::pin(finish_adopted(
            s,
            job,
            &chat.owner_id,
            sink,
            builder.already_started(),
            "The reply was interrupted. Please regenerate it.",
            None,
        ))
        .await;
    }

    sink.set_signals(s.store.session_and_subscribers(chat_id, s.now()).await?);
    let user_message = history
        .iter()
        .find(|m| m.id == job.user_message_id)
        .cloned()
        .unwrap_or_else(|| UIMessage::user_text(job.user_message_id.clone(), ""));
    s.fan_out(
        chat_id,
        sink.subscribers(),
        &ServerFrame::TurnStarted {
            chat_id: chat_id.clone(),
            run_id: job.run_id.clone(),
            user_message,
            assistant_message_id: job.assistant_message_id.clone(),
            first_event_id: session.turn_start_event_id,
        },
    )
    .await;

    let request = ModelRequest {
        model: model_id,
        messages: history,
    };
    let mut stream = match model.stream(request).await {
        Ok(stream) => stream,
        Err(error @ ModelError::Rejected(_)) => {
            tracing::warn!(chat_id = %chat_id, %error, "the model refused a turn");
            builder.error(&model_error_text(&error));
            return match flush(&mut builder, &mut sink).await? {
                Flow::Lost => Ok(TurnOutcome::Dropped("another worker owns the turn")),
                _ => Box::pin(finish(s, job, &chat.owner_id, sink)).await,
            };
        }
        Err(error) => return Err(retry_later(format!("model: {error}"))),
    };

    let stall = s.settings.model_stall;
    let mut last_model_event = Instant::now();
    let mut first_delta_sent = false;
    let flow = loop {
        // With nothing pending, wake now and then anyway so a stop is seen while the model is
        // silent (a slow first token, a long pause), and so a stalled model is noticed.
        let stalls_at = last_model_event + stall;
        let wake = sink
            .deadline()
            .unwrap_or_else(|| Instant::now() + SILENT_STOP_CHECK)
            .min(stalls_at);
        let next = tokio::select! {
            next = stream.next() => next,
            _ = tokio::time::sleep_until(wake) => {
                let flow = if Instant::now() >= stalls_at {
                    let error = ModelError::Stream(format!("no data for {} s", stall.as_secs()));
                    match Box::pin(model_failed(&mut builder, &mut sink, error)).await? {
                        Some(flow) => flow,
                        None => return Err(retry_later("model: stalled before its first token".into())),
                    }
                } else if !builder.is_empty() {
                    flush(&mut builder, &mut sink).await?
                } else {
                    match sink.read_signal().await? {
                        Signal::Continue => Flow::Continue,
                        Signal::StopRequested(shown) => Box::pin(abort(&mut builder, &mut sink, shown)).await?,
                        Signal::Lost => Flow::Lost,
                    }
                };
                if flow == Flow::Continue {
                    continue;
                }
                break flow;
            }
        };
        last_model_event = Instant::now();
        match next {
            Some(Ok(ModelEvent::TextDelta(delta))) => builder.text(delta),
            Some(Ok(ModelEvent::ReasoningDelta(delta))) => builder.reasoning(delta),
            Some(Ok(ModelEvent::Finish { reason, usage })) => {
                builder.finish(
                    Some(reason),
                    usage.map(|u| serde_json::to_value(u).unwrap_or_default()),
                );
                break flush(&mut builder, &mut sink).await?;
            }
            Some(Err(error)) => match Box::pin(model_failed(&mut builder, &mut sink, error)).await?
            {
                Some(flow) => break flow,
                None => return Err(retry_later("model: failed before its first token".into())),
            },
            None => {
                builder.finish(Some(FinishReason::Stop), None);
                break flush(&mut builder, &mut sink).await?;
            }
        }
        if builder.is_empty() {
            continue;
        }
        sink.note_pending();
        // The first token goes out at once; later deltas wait for the frame interval or size.
        let flow = if !first_delta_sent {
            first_delta_sent = true;
            flush(&mut builder, &mut sink).await?
        } else if builder.pending_bytes() >= s.settings.frame_max_bytes {
            flush(&mut builder, &mut sink).await?
        } else {
            Flow::Continue
        };
        if flow != Flow::Continue {
            break flow;
        }
    };
    drop(stream);
    if flow == Flow::Lost {
        return Ok(TurnOutcome::Dropped("another worker owns the turn"));
    }
    Box::pin(finish(s, job, &chat.owner_id, sink)).await
}

/// A model failure mid-turn. Before anything was persisted a retry starts the turn cleanly, so
/// `None` asks for one; after, the turn ends here with an `error` chunk.
async fn model_failed(
    builder: &mut ChunkBuilder,
    sink: &mut FrameSink<'_>,
    error: ModelError,
) -> Result<Option<Flow>, ChatError> {
    if !sink.wrote() {
        tracing::warn!(%error, "the model failed before its first token; the turn will be retried");
        return Ok(None);
    }
    tracing::warn!(%error, "the model failed mid-reply; the turn ends with an error");
    builder.error(&model_error_text(&error));
    flush(builder, sink).await.map(Some)
}

/// Completes the turn with what the sink persisted.
async fn finish(
    s: &Services,
    job: &TurnJob,
    owner_id: &str,
    sink: FrameSink<'_>,
) -> Result<TurnOutcome, ChatError> {
    let last = sink.last_event_id();
    let reply = sink.into_accumulated().into_message();
    complete(s, job, owner_id, Some(reply), last, None).await?;
    Ok(TurnOutcome::Completed)
}

/// Ends a turn whose earlier frames are adopted: an `error` chunk unless it already finished,
/// then onTurnComplete (ending the session with `fail`, if given).
async fn finish_adopted(
    s: &Services,
    job: &TurnJob,
    owner_id: &str,
    mut sink: FrameSink<'_>,
    mut builder: ChunkBuilder,
    error_text: &str,
    fail: Option<EndedReason>,
) -> Result<TurnOutcome, ChatError> {
    if !sink.accumulated().is_finished() {
        builder.error(error_text);
        sink.set_signals(
            s.store
                .session_and_subscribers(&job.chat_id, s.now())
                .await?,
        );
        if flush(&mut builder, &mut sink).await? == Flow::Lost {
            return Ok(TurnOutcome::Dropped("another worker owns the turn"));
        }
    }
    let last = sink.last_event_id();
    let reply = sink.into_accumulated().into_message();
    complete(s, job, owner_id, Some(reply), last, fail).await?;
    Ok(TurnOutcome::Completed)
}

/// Ends a turn that cannot succeed with an `error` chunk the user sees, keeping what streamed.
/// `fail` also ends the session (a dead letter: DESIGN's "a session ends on a crash").
pub async fn end_turn_with_error(
    s: &Services,
    job: &TurnJob,
    error_text: &str,
    fail: Option<EndedReason>,
) -> Result<TurnOutcome, ChatError> {
    // Claimed like an attempt before it writes a frame: `attempts` counts every writer of the
    // turn's frames, which is what lets a first attempt skip looking for earlier ones.
    let Some(session) = claim(s, job).await? else {
        return Ok(TurnOutcome::Dropped("turn already finished"));
    };
    let Some(chat) = s.store.get_chat(&job.chat_id).await? else {
        return Ok(TurnOutcome::Dropped("chat deleted"));
    };
    let mut sink = FrameSink::new(s, job, session.turn_start_event_id);
    let earlier = s
        .store
        .events_after(&job.run_id, session.turn_start_event_id - 1, s.now())
        .await?;
    let turn_model = session.turn_model.as_deref().unwrap_or(&chat.model);
    let mut builder = ChunkBuilder::new(job.assistant_message_id.clone(), turn_model);
    if sink.adopt(&earlier) {
        builder = builder.already_started();
    }
    finish_adopted(s, job, &chat.owner_id, sink, builder, error_text, fail).await
}

/// A dead-lettered job: the turn failed `max_receives` times. The user's message stays; the
/// reply ends with an `error` chunk, and the session ends (`failed`) so the next message starts a
/// fresh one.
pub async fn fail_turn(s: &Services, job: &TurnJob) -> Result<TurnOutcome, ChatError> {
    end_turn_with_error(
        s,
        job,
        "The model could not answer. Please try again.",
        Some(EndedReason::Failed),
    )
    .await
}

/// What run-turn reads of the history.
#[derive(Debug, PartialEq)]
enum TurnContext {
    /// A previous attempt stored the reply.
    AlreadyAnswered,
    /// The model's context: the newest messages up to the turn's user message that fit the
    /// token budget, oldest first.
    Messages(Vec<UIMessage>),
}

/// Reads the model's context newest page first, and only as far back as the budget reaches,
/// so a long chat costs a turn a page or two, not its whole history. Messages after the turn's
/// user message are not the turn's (a redelivery after the reply was stored finds it there).
/// When the user message is not in the history at all, the newest messages make the context,
/// as they always did.
/// # Errors
/// A store failure; a history changed while it was read (an edit) is `Transient`.
async fn turn_context(
    store: &dyn ChatStore,
    job: &TurnJob,
    budget: usize,
    limits: PageLimits,
) -> Result<TurnContext, StoreError> {
    // Newest first: messages newer than the user message, until it is found.
    let mut after_user: Vec<UIMessage> = Vec::new();
    // Newest first: the context, from the user message back.
    let mut context: Vec<UIMessage> = Vec::new();
    let mut found_user = false;
    let mut used = 0;
    let mut before: Option<String> = None;
    'pages: loop {
        let page = match store
            .message_page(&job.chat_id, before.as_deref(), limits)
            .await
        {
            Err(StoreError::Conflict(m)) => return Err(StoreError::Transient(m)),
            other => other?,
        };
        for message in page.messages.into_iter().rev() {
            if !found_user {
                if message.id == job.assistant_message_id {
                    return Ok(TurnContext::AlreadyAnswered);
                }
                if message.id != job.user_message_id {
                    after_user.push(message);
                    continue;
                }
                found_user = true;
            }
            used += approximate_tokens(&message);
            if used > budget && !context.is_empty() {
                break 'pages;
            }
            context.push(message);
        }
        match page.older_cursor {
            Some(cursor) => before = Some(cursor),
            None => break,
        }
    }
    if !found_user {
        after_user.reverse();
        return Ok(TurnContext::Messages(fit_context(after_user, budget)));
    }
    context.reverse();
    Ok(TurnContext::Messages(context))
}

/// About how many tokens a message costs a model: four bytes of text a token, plus a few for
/// its framing.
fn approximate_tokens(message: &UIMessage) -> usize {
    message.text().len().div_ceil(4) + 4
}

/// The most recent messages that fit `budget` tokens, oldest first. The last message (the one
/// being answered) is always kept; an older one is dropped whole, never cut.
fn fit_context(mut history: Vec<UIMessage>, budget: usize) -> Vec<UIMessage> {
    let mut used = 0;
    let mut keep_from = history.len();
    for (index, message) in history.iter().enumerate().rev() {
        used += approximate_tokens(message);
        if used > budget && keep_from < history.len() {
            break;
        }
        keep_from = index;
    }
    history.drain(..keep_from);
    history
}

/// Cuts a reply too large to store to its first [`TRUNCATED_REPLY_BYTES`] of text, saying so.
fn truncated(message: &UIMessage) -> UIMessage {
    let mut text = message.text();
    let mut cut = TRUNCATED_REPLY_BYTES.min(text.len());
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    text.truncate(cut);
    text.push_str("\n\n[The reply was too long to store and is cut here.]");
    let mut short = UIMessage::user_text(message.id.clone(), text);
    short.role = message.role;
    short.metadata = message.metadata.clone();
    short
}

/// onTurnComplete: stores the reply (once), ends the turn on the session, tells subscribers.
async fn complete(
    s: &Services,
    job: &TurnJob,
    owner_id: &str,
    reply: Option<UIMessage>,
    last_event_id: u64,
    fail: Option<EndedReason>,
) -> Result<(), ChatError> {
    let now = s.now();
    let chat_id = &job.chat_id;
    let mut reply = reply.filter(|m| m.parts.iter().any(|p| !matches!(p, UIPart::StepStart)));
    if let Some(message) = &mut reply {
        message.id = job.assistant_message_id.clone();
        let stored = match s.store.append_message(chat_id, message, now).await {
            Err(StoreError::TooLarge(reason)) => {
                tracing::error!(chat_id = %chat_id, reason, "a reply too large to store is cut");
                *message = truncated(message);
                s.store.append_message(chat_id, message, now).await
            }
            other => other,
        };
        match stored {
            Ok(()) | Err(StoreError::Conflict(_)) => {}
            Err(StoreError::NotFound(_)) => return Ok(()),
            Err(e) => return Err(e.into()),
        }
    }
    let Some(updated) = finish_turn(s, job, owner_id, last_event_id, fail, now).await? else {
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
        && updated.status == crate::domain::SessionStatus::Ended
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A chat of `n` messages `m0..`, each about 104 tokens.
    async fn long_chat(n: usize) -> (crate::testkit::memory::MemoryChatStore, Vec<UIMessage>) {
        let store = crate::testkit::memory::MemoryChatStore::new();
        let chat_id = crate::domain::ChatId::parse("c1").unwrap();
        store
            .create_chat(&crate::domain::Chat {
                id: chat_id.clone(),
                owner_id: "u1".into(),
                title: "t".into(),
                model: "m".into(),
                created_at: 0,
                updated_at: 0,
                message_count: 0,
            })
            .await
            .unwrap();
        let history: Vec<UIMessage> = (0..n)
            .map(|i| UIMessage::user_text(format!("m{i}"), "x".repeat(400)))
            .collect();
        for message in &history {
            store.append_message(&chat_id, message, 0).await.unwrap();
        }
        (store, history)
    }

    fn job_for(user: &str, assistant: &str) -> TurnJob {
        serde_json::from_value(serde_json::json!({
            "chatId": "c1", "runId": "r1", "userMessageId": user,
            "assistantMessageId": assistant, "trigger": "submit-message"
        }))
        .unwrap()
    }

    fn ids(context: &TurnContext) -> Vec<&str> {
        match context {
            TurnContext::Messages(messages) => messages.iter().map(|m| m.id.as_str()).collect(),
            TurnContext::AlreadyAnswered => vec!["<answered>"],
        }
    }

    #[tokio::test]
    async fn the_context_is_read_newest_page_first_as_far_as_the_budget_reaches() {
        let (store, history) = long_chat(25).await;
        // Pages of two: the walk crosses page boundaries anywhere.
        let pages = PageLimits {
            messages: 2,
            bytes: 1 << 20,
        };
        for budget in [10, 350, 1_000, 100_000] {
            for user in [24, 13, 0] {
                let job = job_for(&format!("m{user}"), "a-new");
                let read = turn_context(&store, &job, budget, pages).await.unwrap();
                let expected = fit_context(history[..=user].to_vec(), budget);
                let expected: Vec<&str> = expected.iter().map(|m| m.id.as_str()).collect();
                assert_eq!(ids(&read), expected, "budget {budget}, user m{user}");
            }
        }
        // The reply stored by an earlier attempt, after the user message.
        let answered = turn_context(&store, &job_for("m20", "m22"), 350, pages)
            .await
            .unwrap();
        assert_eq!(answered, TurnContext::AlreadyAnswered);
        // A user message no longer in the history: the newest messages, as before paging.
        let gone = turn_context(&store, &job_for("zz", "a-new"), 350, pages)
            .await
            .unwrap();
        assert_eq!(ids(&gone), ["m22", "m23", "m24"]);
    }

    #[test]
    fn the_model_gets_the_newest_messages_that_fit_the_budget() {
        let history: Vec<UIMessage> = (0..10)
            .map(|i| UIMessage::user_text(format!("m{i}"), "x".repeat(400)))
            .collect();
        // 104 tokens a message: a budget of 350 holds three.
        let kept = fit_context(history.clone(), 350);
        let ids: Vec<&str> = kept.iter().map(|m| m.id.as_str()).collect();
        assert_eq!(ids, ["m7", "m8", "m9"]);
        assert_eq!(fit_context(history.clone(), 100_000).len(), 10);
        // The message being answered stays even when it alone is over the budget.
        let kept = fit_context(history, 10);
        assert_eq!(kept.len(), 1);
        assert_eq!(kept[0].id, "m9");
    }

    mod cadence {
        use std::time::Duration;

        use tokio::time::Instant;

        use super::super::*;
        use crate::config::{FrameCadence, Settings};
        use crate::domain::{ChatId, Connection, Grant, Trigger};
        use crate::engine::turn::send_message;
        use crate::protocol::SendMessage;
        use crate::testkit::memory::{PacedModel, services};

        /// One frame of a turn as a subscriber saw it: when, after the turn began, and what.
        struct Seen {
            at: Duration,
            text: String,
            finish: bool,
        }

        /// Runs one turn of `tokens` words, one every 30 ms (about 33 tokens a second), and
        /// returns its `events` frames.
        async fn frames(settings: Settings, tokens: usize) -> Vec<Seen> {
            let t = services(settings);
            let connection = Connection {
                connection_id: "c1".into(),
                owner_id: "user-1".into(),
                grant: Grant::User,
                connected_at: 0,
                expires_at: i64::MAX,
            };
            let send = SendMessage {
                request_id: Some("r1".into()),
                chat_id: ChatId::parse("chat-1").unwrap(),
                message: Some(UIMessage::user_text("u1", "Tell me about tide pools")),
                trigger: Trigger::SubmitMessage,
                message_id: None,
                model: None,
            };
            send_message(&t.services, &connection, &send).await.unwrap();
            let job = t.queue.jobs.lock().unwrap().last().cloned().unwrap();
            let model = PacedModel {
                tokens,
                every: Duration::from_millis(30),
            };
            let began = Instant::now();
            let outcome = run_turn(&t.services, &model, &job).await.unwrap();
            assert_eq!(outcome, TurnOutcome::Completed);
            let posted_at = t.connections.posted_at.lock().unwrap()["c1"].clone();
            t.connections
                .frames_of("c1")
                .into_iter()
                .zip(posted_at)
                .filter(|(frame, _)| frame["type"] == "events")
                .map(|(frame, at)| {
                    let chunks = frame["chunks"].as_array().unwrap();
                    Seen {
                        at: at - began,
                        text: chunks.iter().filter_map(|c| c["delta"].as_str()).collect(),
                        finish: chunks.iter().any(|c| c["type"] == "finish"),
                    }
                })
                .collect()
        }

        fn ms(millis: u64) -> Duration {
            Duration::from_millis(millis)
        }

        fn adaptive(base: u64, max: u64, ramp: u64) -> Settings {
            let mut settings = Settings::with_secret("s".repeat(32));
            settings.frame_cadence = FrameCadence::adaptive(ms(base), ms(max), ms(ramp)).unwrap();
            settings
        }

        fn gaps(frames: &[Seen]) -> Vec<(Duration, Duration)> {
            frames
                .windows(2)
                .map(|pair| (pair[1].at - frames[0].at, pair[1].at - pair[0].at))
                .collect()
        }

        #[tokio::test(start_paused = true)]
        async fn frames_go_out_fast_at_first_then_widen_and_the_finish_goes_at_once() {
            // 200 words over 6 s: 50 ms frames for a second, then widening to 500 ms.
            let seen = frames(adaptive(50, 500, 1000), 200).await;
            // The first word at once, the moment the model gave it.
            assert_eq!(seen[0].at, ms(30));
            assert_eq!(seen[0].text, "w0 ");
            let last = seen.last().unwrap();
            // The finish as soon as the model finished (30 ms after its last word), not at the
            // next interval.
            assert!(last.finish);
            assert_eq!(last.at, ms(30 * 201));
            let body = &gaps(&seen)[..seen.len() - 2];
            for &(since_first, gap) in body {
                // A frame waits the interval after its first word, which comes within 30 ms.
                if since_first <= ms(1000) {
                    assert!(gap <= ms(50 + 30), "{gap:?} at {since_first:?}");
                } else if since_first >= ms(3500) {
                    assert!(
                        gap >= ms(500) && gap <= ms(530),
                        "{gap:?} at {since_first:?}"
                    );
                }
            }
            // Between the two, each frame waits about a quarter longer than the one before.
            let ramp: Vec<Duration> = body
                .iter()
                .filter(|(at, _)| (ms(1100)..ms(2800)).contains(at))
                .map(|&(_, gap)| gap)
                .collect();
            assert!(ramp.len() >= 5, "{ramp:?}");
            assert!(ramp.windows(2).all(|p| p[1] + ms(30) >= p[0]), "{ramp:?}");
            assert!(ramp.first() < ramp.last(), "{ramp:?}");
            // Every word arrives once, in order.
            let text: String = seen.iter().map(|s| s.text.as_str()).collect();
            let words: String = (0..200).map(|i| format!("w{i} ")).collect();
            assert_eq!(text, words);
            // Far fewer frames than at 50 ms throughout (one a word or two: about 90).
            assert!(seen.len() < 40, "{} frames", seen.len());
        }

        #[tokio::test(start_paused = true)]
        async fn a_fixed_cadence_stays_fast_for_the_whole_reply() {
            let seen = frames(Settings::with_secret("s".repeat(32)), 200).await;
            assert_eq!(seen[0].at, ms(30));
            for (since_first, gap) in gaps(&seen) {
                assert!(gap <= ms(50 + 30), "{gap:?} at {since_first:?}");
            }
            assert!(seen.len() > 80, "{} frames", seen.len());
        }

        #[tokio::test(start_paused = true)]
        async fn a_widened_frame_still_goes_early_once_it_reaches_the_size_limit() {
            let mut settings = adaptive(50, 500, 1000);
            // Four words of four bytes (`w12 `): a frame of at most 16 bytes of text.
            settings.frame_max_bytes = 16;
            let seen = frames(settings, 200).await;
            for (since_first, gap) in gaps(&seen) {
                assert!(gap <= ms(4 * 30), "{gap:?} at {since_first:?}");
            }
            assert!(seen.iter().all(|s| s.text.len() <= 16 + 4));
        }
    }

    #[test]
    fn a_reply_too_large_to_store_is_cut_on_a_character_boundary_and_says_so() {
        let mut reply = UIMessage::user_text("a1", "é".repeat(TRUNCATED_REPLY_BYTES));
        reply.role = crate::message::Role::Assistant;
        let short = truncated(&reply);
        assert_eq!(short.role, crate::message::Role::Assistant);
        assert!(short.text().len() < TRUNCATED_REPLY_BYTES + 100);
        assert!(short.text().ends_with("cut here.]"));
    }
}
