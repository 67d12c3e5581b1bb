//! onChatStart and onTurnStart (`send-message`: a new message, an edit, a regeneration) and
//! `stop`.
//!
//! Starting a turn is decided by one conditional step on the session ([`begin_turn`]) taken
//! *before* anything of the request is stored: of two concurrent sends on one chat, the loser
//! gets `conflict` and leaves no trace; an edit or a regeneration deletes the old messages only
//! once its turn is claimed. The user's message is stored before the job is queued, so a
//! refresh always shows it.

use super::super::{Services, limits};
use super::session::{
    BegunTurn, NewTurn, begin_turn, is_stale, message_refused, release_turn, update_session,
};
use crate::config::{MAX_TITLE_CHARS, is_valid_model_id};
use crate::domain::{Chat, ChatId, Connection, Grant, Trigger};
use crate::error::{ChatError, StoreError};
use crate::message::{Role, UIMessage};
use crate::protocol::{ChatRequest, SendMessage, ServerFrame};

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

/// What a send does to the stored history once its turn is claimed.
#[derive(Debug)]
enum HistoryChange {
    /// Append a new user message.
    Append(UIMessage),
    /// Replace the user message `message.id` and drop everything after it.
    Edit(UIMessage),
    /// Answer the user message again: drop the reply `Some(id)` and everything after it.
    Regenerate {
        plan: Regeneration,
        /// The reply the request named, if it named one.
        requested: Option<String>,
    },
}

/// The user message a regeneration answers, and the first message it drops.
#[derive(Debug)]
struct Regeneration {
    user_message: UIMessage,
    drop_from: Option<String>,
}

impl HistoryChange {
    fn user_message(&self) -> &UIMessage {
        match self {
            HistoryChange::Append(m) | HistoryChange::Edit(m) => m,
            HistoryChange::Regenerate { plan, .. } => &plan.user_message,
        }
    }
}

/// onChatStart + onTurnStart: claims the turn, stores the user's message (or applies the edit
/// or regeneration), subscribes the sender and queues the turn.
///
/// # Returns
/// The `ack` frame for the sender.
/// # Errors
/// `forbidden` for a run-scoped token; `not_found` for someone else's chat or a message id the
/// chat does not have; `conflict` while a reply is streaming or for a message id that was
/// already sent (nothing of the request is stored); `bad_request` for a malformed request;
/// `rate_limited` past the user's concurrent-turn or per-minute limit (nothing stored).
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
    let turn_model = turn_model(s, req.model.as_deref(), existing_chat.as_ref())?;
    // Refuse early what would be refused anyway, before any write.
    if existing_chat.is_some()
        && let Some(session) = s.store.get_session(chat_id).await?
        && session.streaming
        && !session.is_over(now)
        && !is_stale(s, &session, now)
    {
        return Err(ChatError::Conflict(
            "a reply is still streaming: stop it or wait for it".into(),
        ));
    }
    let change = plan_change(s, chat_id, existing_chat.is_some(), req).await?;

    // The limits come after every read-only refusal (so a malformed or conflicting request
    // uses up nothing) and before the first write (so a refused one stores nothing).
    let assistant_message_id = s.ids.new_id();
    limits::admit_turn(s, &conn.owner_id, &assistant_message_id).await?;
    let started = start_turn(
        s,
        conn,
        req,
        existing_chat.as_ref(),
        &turn_model,
        change,
        assistant_message_id.clone(),
        now,
    )
    .await;
    if started.is_err() {
        // No job was queued, so no worker will ever end this turn and free its slot.
        limits::release_turn_slot(s, &conn.owner_id, &assistant_message_id).await;
    }
    started
}

/// The writes of [`send_message`], once the limits admitted it: `existing_chat` is the chat as
/// read before (`None`: create it), `turn_model` the model this turn answers with.
#[allow(clippy::too_many_arguments)]
async fn start_turn(
    s: &Services,
    conn: &Connection,
    req: &SendMessage,
    existing_chat: Option<&Chat>,
    turn_model: &str,
    change: HistoryChange,
    assistant_message_id: String,
    now: crate::domain::Millis,
) -> Result<ServerFrame, ChatError> {
    let chat_id = &req.chat_id;
    let mut new_chat = None;
    if existing_chat.is_none() {
        let message = change.user_message();
        let chat = Chat {
            id: chat_id.clone(),
            owner_id: conn.owner_id.clone(),
            title: title_from(message),
            model: turn_model.to_owned(),
            created_at: now,
            updated_at: now,
            message_count: 0,
        };
        match s.store.create_chat(&chat).await {
            Ok(()) => new_chat = Some(chat),
            // Made between our read and write: by this user (another tab, whose send the
            // session step below decides against us) or by someone else.
            Err(StoreError::Conflict(_)) => match s.store.get_chat(chat_id).await? {
                Some(chat) if chat.owner_id == conn.owner_id => {}
                _ => return Err(ChatError::chat_not_found()),
            },
            Err(e) => return Err(e.into()),
        }
    }

    let user_message_id = change.user_message().id.clone();
    let subscribe = s
        .store
        .subscribe(chat_id, &conn.connection_id, now, conn.expires_at);
    let turn = NewTurn {
        user_message_id: &user_message_id,
        assistant_message_id: &assistant_message_id,
        model: turn_model,
        message: None,
        trigger: req.trigger,
    };
    let (
        BegunTurn {
            session,
            job_queued,
        },
        subscribed,
    ) = if let HistoryChange::Append(message) = &change {
        // A new message is appended by the claim's own write (which also queues the job where
        // the backend has an outbox), and the subscription is asked beside it: one commit of
        // the store on the way to the ack instead of two or three. The subscription is polled
        // first, so its write reaches the store's writer before the claim's: where the writer
        // takes them in order (the embedded store, whose outbox queues the job with the claim)
        // it is committed with the claim or before it, never after the job can run. A
        // subscription left by a refused send is the sender's own connection following its own
        // chat (its owner was checked above), and it expires.
        let (subscribed, claimed) = futures::join!(
            subscribe,
            begin_turn(
                s,
                conn,
                chat_id,
                NewTurn {
                    message: Some(message),
                    ..turn
                },
                now,
            ),
        );
        (claimed?, subscribed)
    } else {
        let begun = begin_turn(s, conn, chat_id, turn, now).await?;
        // The turn is ours: now change the history, undoing the claim if that fails. The
        // change and the subscription are independent writes, asked at once so they share
        // the store's next commit.
        let (applied, subscribed) =
            futures::join!(apply_change(s, chat_id, &change, now), subscribe);
        if let Err(error) = applied {
            Undo {
                session: &begun.session,
                assistant_message_id: &assistant_message_id,
                appended: None,
                previous_model: None,
            }
            .run(s)
            .await;
            return Err(error);
        }
        (begun, subscribed)
    };
    let mut undo = Undo {
        session: &session,
        assistant_message_id: &assistant_message_id,
        appended: None,
        previous_model: None,
    };
    // What a later failure must take back besides the claim: a new message, not an edit's or
    // a regeneration's deletions (those cannot be undone, and the turn may be sent again).
    undo.appended =
        matches!(change, HistoryChange::Append(_)).then_some((chat_id, &user_message_id));
    // A new model becomes the chat's only now that its turn is claimed: a refused send changes
    // nothing, and a refresh shows the model the running turn uses.
    if let Some(chat) = existing_chat.filter(|c| c.model != turn_model) {
        if let Err(error) = s.store.set_chat_model(chat_id, turn_model).await {
            undo.run(s).await;
            return Err(error.into());
        }
        undo.previous_model = Some((chat_id, &chat.model));
    }
    if let Some(chat) = &new_chat {
        s.hooks.on_chat_start(chat, &session).await;
    }
    if let Err(error) = subscribed {
        undo.run(s).await;
        return Err(error.into());
    }
    // Where the job was queued with the claim, a failure above took the claim back: the job
    // then finds its session no longer running it, and run-turn drops it.
    s.hooks.on_turn_start(&session, change.user_message()).await;
    if job_queued {
        return Ok(ack(req, session, user_message_id, assistant_message_id));
    }

    let job = turn.job(chat_id, &session.run_id);
    if let Err(error) = s.queue.enqueue(&job).await {
        // Without a queued job nothing would ever end this turn: release it, and take back a
        // new message (and a new model) so that sending it again works.
        undo.run(s).await;
        return Err(error.into());
    }
    Ok(ack(req, session, user_message_id, assistant_message_id))
}

/// The sender's `ack` of a started turn.
fn ack(
    req: &SendMessage,
    session: crate::domain::ChatSession,
    user_message_id: String,
    assistant_message_id: String,
) -> ServerFrame {
    ServerFrame::Ack {
        request_id: req.request_id.clone(),
        chat_id: req.chat_id.clone(),
        run_id: session.run_id,
        access_token: session.access_token,
        user_message_id,
        assistant_message_id,
    }
}

/// The model a send's turn uses: the one it names, which must be one of the catalog's; else
/// the chat's; else, for a new chat, the catalog's default.
/// # Errors
/// `bad_request` for a model the catalog does not offer.
fn turn_model(
    s: &Services,
    requested: Option<&str>,
    chat: Option<&Chat>,
) -> Result<String, ChatError> {
    match (requested, chat) {
        (Some(id), _) if s.models.contains(id) => Ok(id.to_owned()),
        (Some(id), _) => {
            let shown = if is_valid_model_id(id) {
                format!("{id:?}")
            } else {
                "this".to_owned()
            };
            Err(ChatError::BadRequest(format!(
                "unknown model {shown}: GET /api/models lists the models"
            )))
        }
        (None, Some(chat)) => Ok(chat.model.clone()),
        (None, None) => Ok(s.models.default_model().to_owned()),
    }
}

/// What a claimed turn that cannot go on must take back: the claim, the message it appended,
/// the chat's model it changed.
struct Undo<'a> {
    session: &'a crate::domain::ChatSession,
    assistant_message_id: &'a str,
    appended: Option<(&'a ChatId, &'a String)>,
    previous_model: Option<(&'a ChatId, &'a String)>,
}

impl Undo<'_> {
    /// Takes it all back. A failure here is logged with everything needed to repair by hand;
    /// the stale-turn limit frees the session in any case.
    async fn run(&self, s: &Services) {
        if let Some((chat_id, message_id)) = self.appended
            && let Err(error) = s.store.delete_messages_from(chat_id, message_id).await
        {
            tracing::error!(chat_id = %chat_id, message_id, %error, "rollback: could not remove the message of a turn that did not start");
        }
        if let Some((chat_id, model)) = self.previous_model
            && let Err(error) = s.store.set_chat_model(chat_id, model).await
        {
            tracing::error!(chat_id = %chat_id, model, %error, "rollback: could not restore the model of a chat whose turn did not start");
        }
        let (session, assistant_message_id) = (self.session, self.assistant_message_id);
        if let Err(error) = release_turn(s, session, assistant_message_id).await {
            tracing::error!(chat_id = %session.chat_id, run_id = %session.run_id, assistant_message_id, %error,
                "rollback: could not release a turn that did not start; it frees itself after the stale-turn limit");
        }
    }
}

/// Works out what the send will do to the history, reading only.
async fn plan_change(
    s: &Services,
    chat_id: &ChatId,
    chat_exists: bool,
    req: &SendMessage,
) -> Result<HistoryChange, ChatError> {
    match req.trigger {
        Trigger::SubmitMessage => {
            let message = req
                .message
                .clone()
                .ok_or_else(|| ChatError::BadRequest("submit-message needs a `message`".into()))?;
            if message.role != Role::User {
                return Err(ChatError::BadRequest(
                    "only a user message can be sent".into(),
                ));
            }
            let Some(edited_id) = req.message_id.as_deref() else {
                return Ok(HistoryChange::Append(message));
            };
            if message.id != edited_id {
                return Err(ChatError::BadRequest(
                    "an edit's `message.id` must be its `messageId`".into(),
                ));
            }
            let history = if chat_exists {
                s.store.messages(chat_id).await?
            } else {
                Vec::new()
            };
            match history.iter().find(|m| m.id == edited_id) {
                Some(m) if m.role == Role::User => Ok(HistoryChange::Edit(message)),
                Some(_) => Err(ChatError::BadRequest(
                    "only a user message can be edited".into(),
                )),
                None => Err(ChatError::NotFound(format!(
                    "message {edited_id} not found"
                ))),
            }
        }
        Trigger::RegenerateMessage => {
            if !chat_exists {
                return Err(ChatError::chat_not_found());
            }
            let history = s.store.messages(chat_id).await?;
            Ok(HistoryChange::Regenerate {
                plan: regeneration(&history, req.message_id.as_deref())?,
                requested: req.message_id.clone(),
            })
        }
    }
}

/// The user message a regeneration answers, and the reply it replaces.
fn regeneration(
    history: &[UIMessage],
    message_id: Option<&str>,
) -> Result<Regeneration, ChatError> {
    let target = match message_id {
        Some(id) => Some(
            history
                .iter()
                .position(|m| m.id == id)
                .ok_or_else(|| ChatError::NotFound(format!("message {id} not found")))?,
        ),
        // Without an id, the last message is regenerated if it is a reply; a last user message
        // (its turn failed) is simply answered again.
        None => history
            .len()
            .checked_sub(1)
            .filter(|&i| history[i].role == Role::Assistant),
    };
    let answered = match target {
        Some(index) if history[index].role != Role::Assistant => {
            return Err(ChatError::BadRequest(
                "only an assistant message can be regenerated".into(),
            ));
        }
        Some(index) => &history[..index],
        None => history,
    };
    match answered.last() {
        Some(m) if m.role == Role::User => Ok(Regeneration {
            user_message: m.clone(),
            drop_from: target.map(|i| history[i].id.clone()),
        }),
        _ => Err(ChatError::BadRequest(
            "there is no user message to answer".into(),
        )),
    }
}

/// Applies what is left of the planned change once the turn is claimed: a new message was
/// already appended by the claim's own write ([`begin_turn`]).
async fn apply_change(
    s: &Services,
    chat_id: &ChatId,
    change: &HistoryChange,
    now: crate::domain::Millis,
) -> Result<(), ChatError> {
    match change {
        HistoryChange::Append(_) => Ok(()),
        HistoryChange::Edit(message) => {
            s.store.delete_messages_from(chat_id, &message.id).await?;
            s.store
                .append_message(chat_id, message, now)
                .await
                .map_err(|e| message_refused(&message.id, e))
        }
        HistoryChange::Regenerate { plan, requested } => {
            // The history may have moved between the plan and the claim (another tab's turn
            // finished): regenerate only if it still answers the same user message.
            let history = s.store.messages(chat_id).await?;
            let now = regeneration(&history, requested.as_deref())?;
            if now.user_message.id != plan.user_message.id {
                return Err(ChatError::Conflict(
                    "the chat changed; reload it and retry".into(),
                ));
            }
            if let Some(id) = now.drop_from {
                s.store.delete_messages_from(chat_id, &id).await?;
            }
            Ok(())
        }
    }
}

/// `stop`: asks the running turn to end. run-turn sees the flag between frames, sends `abort`
/// and `finish`, and stores exactly what was streamed. Stopping when nothing streams, or when
/// the turn the request names (`runId`, `assistantMessageId`) is no longer the running one (a
/// late stop), is a no-op; a run-scoped token stops only its own run.
pub async fn stop(s: &Services, conn: &Connection, req: &ChatRequest) -> Result<(), ChatError> {
    s.owned_chat(&conn.owner_id, &conn.grant, &req.chat_id)
        .await?;
    let Some(session) = s.store.get_session(&req.chat_id).await? else {
        return Ok(());
    };
    let run_named = match &conn.grant {
        Grant::Run { run_id, .. } => Some(run_id.as_str()),
        Grant::User => None,
    };
    if [run_named, req.run_id.as_deref()]
        .into_iter()
        .flatten()
        .any(|run_id| run_id != session.run_id)
    {
        return Ok(());
    }
    let turn_named = req.assistant_message_id.as_deref();
    // An event id means something only in the run it names.
    let shown = req.last_event_id.filter(|_| req.run_id.is_some());
    update_session(s, &req.chat_id, &session.run_id, |current| {
        let named_turn_runs =
            turn_named.is_none_or(|id| current.assistant_message_id.as_deref() == Some(id));
        if !current.streaming || current.stop_requested || !named_turn_runs {
            return false;
        }
        current.stop_requested = true;
        current.stop_after_event_id = shown;
        true
    })
    .await?;
    Ok(())
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

    fn assistant(id: &str) -> UIMessage {
        let mut m = UIMessage::user_text(id, "reply");
        m.role = Role::Assistant;
        m
    }

    #[test]
    fn a_regeneration_answers_the_user_message_before_the_reply() {
        let history = vec![
            UIMessage::user_text("u1", "a"),
            assistant("a1"),
            UIMessage::user_text("u2", "b"),
            assistant("a2"),
        ];
        let last = regeneration(&history, None).expect("plan");
        assert_eq!(last.user_message.id, "u2");
        assert_eq!(last.drop_from.as_deref(), Some("a2"));
        let first = regeneration(&history, Some("a1")).expect("plan");
        assert_eq!(first.user_message.id, "u1");
        assert_eq!(first.drop_from.as_deref(), Some("a1"));
        assert!(matches!(
            regeneration(&history, Some("u2")),
            Err(ChatError::BadRequest(_))
        ));
        assert!(matches!(
            regeneration(&history, Some("nope")),
            Err(ChatError::NotFound(_))
        ));
        // A last user message whose turn failed is answered again, dropping nothing.
        let failed = vec![UIMessage::user_text("u1", "a")];
        let again = regeneration(&failed, None).expect("plan");
        assert_eq!(again.user_message.id, "u1");
        assert_eq!(again.drop_from, None);
    }
}

#[cfg(all(test, feature = "test-util"))]
mod model_tests {
    use super::*;
    use crate::config::Settings;
    use crate::engine::turn::{TurnOutcome, run_turn};
    use crate::error::QueueError;
    use crate::ports::ChatStore;
    use crate::testkit::memory::{ScriptedModel, TestServices, services};

    fn connection() -> Connection {
        Connection {
            connection_id: "c1".into(),
            owner_id: "user-1".into(),
            grant: Grant::User,
            connected_at: 0,
            expires_at: i64::MAX,
        }
    }

    fn send(message_id: &str, model: Option<&str>) -> SendMessage {
        SendMessage {
            request_id: Some("r1".into()),
            chat_id: ChatId::parse("chat-1").unwrap(),
            message: Some(UIMessage::user_text(message_id, "Tell me about tide pools")),
            trigger: Trigger::SubmitMessage,
            message_id: None,
            model: model.map(str::to_owned),
        }
    }

    async fn chat_model(t: &TestServices) -> String {
        let chat = ChatId::parse("chat-1").unwrap();
        t.store.get_chat(&chat).await.unwrap().expect("chat").model
    }

    /// Sends and runs one turn to the end on `model`.
    async fn turn(t: &TestServices, model: &ScriptedModel, message_id: &str, pick: Option<&str>) {
        send_message(&t.services, &connection(), &send(message_id, pick))
            .await
            .expect("sent");
        let job = t
            .queue
            .jobs
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("queued");
        assert_eq!(
            run_turn(&t.services, model, &job).await.unwrap(),
            TurnOutcome::Completed
        );
    }

    #[tokio::test]
    async fn a_new_chat_without_a_model_gets_the_default_one() {
        let t = services(Settings::with_secret("s".repeat(32)));
        send_message(&t.services, &connection(), &send("u1", None))
            .await
            .unwrap();
        assert_eq!(chat_model(&t).await, "scripted");
        let session = t
            .store
            .get_session(&send("u1", None).chat_id)
            .await
            .unwrap();
        assert_eq!(session.unwrap().turn_model.as_deref(), Some("scripted"));
    }

    #[tokio::test]
    async fn a_model_sent_with_a_message_becomes_the_chats_and_answers_that_turn_and_later_ones() {
        let t = services(Settings::with_secret("s".repeat(32)));
        let model = ScriptedModel::new("A reply. ");
        turn(&t, &model, "u1", None).await;
        turn(&t, &model, "u2", Some("scripted-large")).await;
        assert_eq!(chat_model(&t).await, "scripted-large");
        // A later message that names no model keeps the chat's new one.
        turn(&t, &model, "u3", None).await;
        assert_eq!(
            *model.requested_models.lock().unwrap(),
            ["scripted", "scripted-large", "scripted-large"]
        );
        let history = t.store.messages(&send("u1", None).chat_id).await.unwrap();
        let replied_by: Vec<_> = history
            .iter()
            .filter(|m| m.role == Role::Assistant)
            .map(|m| m.metadata.as_ref().unwrap()["model"].clone())
            .collect();
        assert_eq!(replied_by, ["scripted", "scripted-large", "scripted-large"]);
    }

    #[tokio::test]
    async fn a_send_refused_with_conflict_leaves_the_model_alone() {
        let t = services(Settings::with_secret("s".repeat(32)));
        send_message(&t.services, &connection(), &send("u1", None))
            .await
            .unwrap();
        // The first reply still streams: the second send is refused, model and all.
        let refused = send_message(
            &t.services,
            &connection(),
            &send("u2", Some("scripted-large")),
        )
        .await;
        assert!(
            matches!(refused, Err(ChatError::Conflict(_))),
            "{refused:?}"
        );
        assert_eq!(chat_model(&t).await, "scripted");
        let session = t
            .store
            .get_session(&send("u1", None).chat_id)
            .await
            .unwrap();
        assert_eq!(session.unwrap().turn_model.as_deref(), Some("scripted"));
    }

    #[tokio::test]
    async fn an_unknown_model_is_a_bad_request_and_stores_nothing() {
        let t = services(Settings::with_secret("s".repeat(32)));
        let chat_id = send("u1", None).chat_id;
        let refused = send_message(&t.services, &connection(), &send("u1", Some("gpt-5"))).await;
        match refused {
            Err(ChatError::BadRequest(message)) => {
                assert!(message.contains("unknown model \"gpt-5\""), "{message}")
            }
            other => panic!("bad_request expected: {other:?}"),
        }
        assert!(
            t.store.get_chat(&chat_id).await.unwrap().is_none(),
            "no chat made"
        );

        let model = ScriptedModel::new("A reply. ");
        turn(&t, &model, "u1", None).await;
        let junk = "x y".repeat(20_000);
        let refused = send_message(&t.services, &connection(), &send("u2", Some(&junk))).await;
        match refused {
            Err(ChatError::BadRequest(message)) => {
                assert!(message.len() < 100, "the id is not echoed: {message}")
            }
            other => panic!("bad_request expected: {other:?}"),
        }
        assert_eq!(chat_model(&t).await, "scripted");
        assert_eq!(t.store.messages(&chat_id).await.unwrap().len(), 2);
    }

    #[tokio::test]
    async fn a_turn_that_cannot_be_queued_gives_the_chat_its_model_back() {
        let t = services(Settings::with_secret("s".repeat(32)));
        let model = ScriptedModel::new("A reply. ");
        turn(&t, &model, "u1", None).await;
        *t.queue.fail_with.lock().unwrap() = Some(QueueError::Transient("down".into()));
        let failed = send_message(
            &t.services,
            &connection(),
            &send("u2", Some("scripted-large")),
        )
        .await;
        assert!(failed.is_err());
        assert_eq!(chat_model(&t).await, "scripted");
        *t.queue.fail_with.lock().unwrap() = None;
        turn(&t, &model, "u2", Some("scripted-large")).await;
        assert_eq!(chat_model(&t).await, "scripted-large");
    }

    #[tokio::test]
    async fn a_queued_turn_keeps_the_model_it_was_sent_with() {
        let t = services(Settings::with_secret("s".repeat(32)));
        let chat_id = send("u1", None).chat_id;
        send_message(
            &t.services,
            &connection(),
            &send("u1", Some("scripted-large")),
        )
        .await
        .unwrap();
        // The chat's model changes while the job waits in the queue.
        t.store.set_chat_model(&chat_id, "scripted").await.unwrap();
        let job = t.queue.jobs.lock().unwrap()[0].clone();
        let model = ScriptedModel::new("A reply. ");
        run_turn(&t.services, &model, &job).await.unwrap();
        assert_eq!(*model.requested_models.lock().unwrap(), ["scripted-large"]);
    }
}
