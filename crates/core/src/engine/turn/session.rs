//! The session's conditional steps. Every change to a ChatSession is a read, a change and a
//! write conditional on the version read, retried after a lost race; so two sends, a send and a
//! stop, or two workers of one job can never both win the same step.

use super::super::{Services, limits};
use crate::domain::{
    ChatId, ChatSession, Connection, EndedReason, Millis, SessionStatus, Trigger, TurnJob,
};
use crate::error::{ChatError, StoreError};
use crate::message::UIMessage;
use crate::ports::ClaimWithMessageError;

/// How often a conditional session write is retried after losing a race.
const CAS_ATTEMPTS: usize = 8;

/// Whether a turn still marked streaming has outlived any worker (Lambda's 15-minute cap).
pub fn is_stale(s: &Services, session: &ChatSession, now: Millis) -> bool {
    session.streaming
        && session
            .turn_started_at
            .is_some_and(|at| now - at > s.settings.stale_turn_after.as_millis() as i64)
}

/// Whether `session` is running exactly this job's turn.
pub fn runs(session: &ChatSession, job: &TurnJob) -> bool {
    session.run_id == job.run_id
        && session.streaming
        && session.assistant_message_id.as_deref() == Some(job.assistant_message_id.as_str())
}

fn streaming_conflict() -> ChatError {
    ChatError::Conflict("a reply is still streaming: stop it or wait for it".into())
}

/// Why `append_message` refused a send's message, as the sender sees it.
pub fn message_refused(message_id: &str, error: StoreError) -> ChatError {
    match error {
        StoreError::Conflict(_) => {
            ChatError::Conflict(format!("message {message_id} was already sent"))
        }
        e => e.into(),
    }
}

/// The turn a send claims ([`begin_turn`]).
#[derive(Debug, Clone, Copy)]
pub struct NewTurn<'a> {
    pub user_message_id: &'a str,
    pub assistant_message_id: &'a str,
    /// The model the turn answers with, fixed on the session by the claim.
    pub model: &'a str,
    /// A new user message, appended by the claim's own write (`None`: an edit or a
    /// regeneration, which change the history once the turn is claimed).
    pub message: Option<&'a UIMessage>,
    /// What asked for the turn (its job's trigger).
    pub trigger: Trigger,
}

impl NewTurn<'_> {
    /// The job that runs this turn on run `run_id`.
    pub fn job(&self, chat_id: &ChatId, run_id: &str) -> TurnJob {
        TurnJob {
            chat_id: chat_id.clone(),
            run_id: run_id.to_owned(),
            user_message_id: self.user_message_id.to_owned(),
            assistant_message_id: self.assistant_message_id.to_owned(),
            trigger: self.trigger,
        }
    }
}

/// A claimed turn ([`begin_turn`]).
#[derive(Debug)]
pub struct BegunTurn {
    /// The session as stored.
    pub session: ChatSession,
    /// The turn's job was queued in the claim's own write ([`crate::ports::TurnOutbox`]):
    /// the caller must not queue it again.
    pub job_queued: bool,
}

/// Marks a turn as started: on the current session, or on a fresh one (new run id and access
/// token) when there is none or it has ended, expired or lost its worker. This is the one step
/// that decides which of two concurrent sends wins; the loser gets `conflict` before anything
/// of its own is stored. The turn's model is fixed in the same write.
///
/// With a new user message (`turn.message`), the claim's write also appends it
/// ([`crate::ports::ChatStore::claim_with_message`]: one write where the store allows): a
/// refused message (`conflict`: already sent) leaves the turn unclaimed. Where the backend has
/// an outbox ([`Services::outbox`]), that write also queues the turn's job.
pub async fn begin_turn(
    s: &Services,
    conn: &Connection,
    chat_id: &ChatId,
    turn: NewTurn<'_>,
    now: Millis,
) -> Result<BegunTurn, ChatError> {
    let NewTurn {
        user_message_id,
        assistant_message_id,
        model: turn_model,
        message,
        trigger: _,
    } = turn;
    let idle = s.settings.session_idle.as_millis() as i64;
    for _ in 0..CAS_ATTEMPTS {
        let current = s.store.get_session(chat_id).await?;
        let expected = current.as_ref().map(|c| c.version);
        // A stale turn this write replaces: its worker is gone, so nothing else frees its slot.
        let superseded = current
            .as_ref()
            .filter(|c| c.streaming)
            .and_then(|c| c.assistant_message_id.clone());
        let next = match current {
            Some(current) if !current.is_over(now) && !is_stale(s, &current, now) => {
                if current.streaming {
                    return Err(streaming_conflict());
                }
                ChatSession {
                    streaming: true,
                    turn_start_event_id: current.last_event_id + 1,
                    assistant_message_id: Some(assistant_message_id.into()),
                    user_message_id: Some(user_message_id.into()),
                    turn_model: Some(turn_model.into()),
                    stop_requested: false,
                    stop_after_event_id: None,
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
                    turn_model: Some(turn_model.into()),
                    stop_requested: false,
                    stop_after_event_id: None,
                    turn_started_at: Some(now),
                    attempts: 0,
                    expires_at,
                    version: 0,
                }
            }
        };
        let written = match (message, &s.outbox) {
            (None, _) => s
                .store
                .put_session(&next, expected)
                .await
                .map_err(ClaimWithMessageError::Session),
            (Some(message), Some(outbox)) => {
                let job = turn.job(chat_id, &next.run_id);
                outbox
                    .claim_with_message_and_job(&next, expected, message, &job, now)
                    .await
            }
            (Some(message), None) => {
                s.store
                    .claim_with_message(&next, expected, message, now)
                    .await
            }
        };
        // A stale turn this write replaced frees its slot once the write stands.
        let release_superseded = async {
            if let Some(turn_id) = &superseded {
                limits::release_turn_slot(s, &conn.owner_id, turn_id).await;
            }
        };
        match written {
            Ok(stored) => {
                release_superseded.await;
                return Ok(BegunTurn {
                    session: stored,
                    job_queued: message.is_some() && s.outbox.is_some(),
                });
            }
            Err(ClaimWithMessageError::Session(StoreError::Conflict(_))) => continue,
            Err(ClaimWithMessageError::Session(e)) => return Err(e.into()),
            Err(ClaimWithMessageError::Job(e)) => return Err(e.into()),
            Err(ClaimWithMessageError::Message(e)) => {
                return Err(message_refused(user_message_id, e));
            }
            Err(ClaimWithMessageError::MessageAfterClaim { claimed, error }) => {
                release_superseded.await;
                if let Err(undo) = release_turn(s, &claimed, assistant_message_id).await {
                    tracing::error!(chat_id = %chat_id, run_id = %claimed.run_id, assistant_message_id, error = %undo,
                        "rollback: could not release a turn whose message was refused; it frees itself after the stale-turn limit");
                }
                return Err(message_refused(user_message_id, error));
            }
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
pub async fn update_session(
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

/// Undoes [`begin_turn`] when the turn could not be queued: the session stops streaming that
/// turn so the user can send again.
pub async fn release_turn(
    s: &Services,
    session: &ChatSession,
    assistant_message_id: &str,
) -> Result<(), ChatError> {
    update_session(s, &session.chat_id, &session.run_id, |current| {
        if !current.streaming
            || current.assistant_message_id.as_deref() != Some(assistant_message_id)
        {
            return false;
        }
        current.streaming = false;
        current.stop_requested = false;
        current.stop_after_event_id = None;
        true
    })
    .await
    .map(|_| ())
}

/// Claims the job's turn for this attempt: the session must still be this run's and streaming
/// this turn.
pub async fn claim(s: &Services, job: &TurnJob) -> Result<Option<ChatSession>, ChatError> {
    let mut claimed = false;
    let session = update_session(s, &job.chat_id, &job.run_id, |current| {
        if !runs(current, job) {
            return false;
        }
        current.attempts += 1;
        claimed = true;
        true
    })
    .await?;
    Ok(session.filter(|_| claimed))
}

/// onTurnComplete's session step: the turn is over, `lastEventId` moves to its end, a fresh
/// access token is issued, and the session ends on `fail` or when it reached max turns. The
/// turn's slot of the user's concurrent-turn limit is freed.
///
/// # Returns
/// The updated session, or `None` when the session no longer runs this turn (another attempt
/// finished it, or a new session replaced it).
pub async fn finish_turn(
    s: &Services,
    job: &TurnJob,
    owner_id: &str,
    last_event_id: u64,
    fail: Option<EndedReason>,
    now: Millis,
) -> Result<Option<ChatSession>, ChatError> {
    let idle = s.settings.session_idle.as_millis() as i64;
    let max_turns = s.settings.max_turns;
    let mut changed = false;
    let session = update_session(s, &job.chat_id, &job.run_id, |current| {
        if !runs(current, job) {
            return false;
        }
        changed = true;
        current.streaming = false;
        current.stop_requested = false;
        current.stop_after_event_id = None;
        current.last_event_id = last_event_id.max(current.last_event_id);
        current.turns += 1;
        current.expires_at = now + idle;
        current.access_token =
            s.tokens
                .run_token(owner_id, &job.chat_id, &current.run_id, now, now + idle);
        if let Some(reason) = fail {
            current.status = SessionStatus::Ended;
            current.ended_reason = Some(reason);
        } else if current.turns >= max_turns {
            current.status = SessionStatus::Ended;
            current.ended_reason = Some(EndedReason::MaxTurns);
        }
        true
    })
    .await?;
    // Also when another attempt finished it first: releasing is idempotent.
    limits::release_turn_slot(s, owner_id, &job.assistant_message_id).await;
    Ok(session.filter(|_| changed))
}

#[cfg(all(test, feature = "test-util"))]
mod tests {
    use super::*;
    use crate::config::Settings;
    use crate::domain::{Grant, Trigger};
    use crate::ports::Clock;
    use crate::testkit::memory::{TestServices, services};

    /// `begin_turn` for a new connection of the chat's owner, now, on the scripted model.
    async fn begin(
        t: &TestServices,
        chat: &ChatId,
        user_message_id: &str,
        assistant_message_id: &str,
    ) -> Result<ChatSession, ChatError> {
        begin_turn(
            &t.services,
            &connection(),
            chat,
            new_turn(user_message_id, assistant_message_id),
            t.clock.now(),
        )
        .await
        .map(|begun| begun.session)
    }

    /// A turn on the scripted model without a new message.
    fn new_turn<'a>(user_message_id: &'a str, assistant_message_id: &'a str) -> NewTurn<'a> {
        NewTurn {
            user_message_id,
            assistant_message_id,
            model: "scripted",
            message: None,
            trigger: Trigger::SubmitMessage,
        }
    }

    fn connection() -> Connection {
        Connection {
            connection_id: "c1".into(),
            owner_id: "user-1".into(),
            grant: Grant::User,
            connected_at: 0,
            expires_at: i64::MAX,
        }
    }

    fn job(session: &ChatSession) -> TurnJob {
        TurnJob {
            chat_id: session.chat_id.clone(),
            run_id: session.run_id.clone(),
            user_message_id: "u1".into(),
            assistant_message_id: session.assistant_message_id.clone().unwrap_or_default(),
            trigger: Trigger::SubmitMessage,
        }
    }

    #[tokio::test]
    async fn of_two_turns_begun_at_once_one_wins_and_the_other_conflicts() {
        let t = services(Settings::with_secret("s".repeat(32)));
        let chat = ChatId::parse("chat-1").unwrap();
        let now = t.clock.now();
        let (first, second) = (connection(), connection());
        let (a, b) = tokio::join!(
            begin_turn(&t.services, &first, &chat, new_turn("u1", "a1"), now),
            begin_turn(&t.services, &second, &chat, new_turn("u2", "a2"), now),
        );
        assert!(a.is_ok() ^ b.is_ok(), "exactly one wins: {a:?} / {b:?}");
        assert!(matches!(a.err().or(b.err()), Some(ChatError::Conflict(_))));
    }

    #[tokio::test]
    async fn a_stale_turn_gives_way_to_a_new_session() {
        let t = services(Settings::with_secret("s".repeat(32)));
        let chat = ChatId::parse("chat-1").unwrap();
        let first = begin(&t, &chat, "u1", "a1").await.unwrap();
        assert!(claim(&t.services, &job(&first)).await.unwrap().is_some());
        // Past the stale limit the worker is presumed gone: a new send starts a new run.
        t.clock.advance(961_000);
        let second = begin(&t, &chat, "u2", "a2").await.unwrap();
        assert_ne!(second.run_id, first.run_id);
        // The stale worker can no longer claim or finish its turn.
        assert!(claim(&t.services, &job(&first)).await.unwrap().is_none());
        let finished = finish_turn(&t.services, &job(&first), "user-1", 9, None, t.clock.now())
            .await
            .unwrap();
        assert!(finished.is_none());
    }

    #[tokio::test]
    async fn finishing_a_turn_counts_it_and_ends_the_session_at_max_turns() {
        let mut settings = Settings::with_secret("s".repeat(32));
        settings.max_turns = 1;
        let t = services(settings);
        let chat = ChatId::parse("chat-1").unwrap();
        let session = begin(&t, &chat, "u1", "a1").await.unwrap();
        let done = finish_turn(
            &t.services,
            &job(&session),
            "user-1",
            12,
            None,
            t.clock.now(),
        )
        .await
        .unwrap()
        .expect("finished");
        assert!(!done.streaming);
        assert_eq!((done.turns, done.last_event_id), (1, 12));
        assert_eq!(done.status, SessionStatus::Ended);
        assert_eq!(done.ended_reason, Some(EndedReason::MaxTurns));
        assert_ne!(
            done.access_token, session.access_token,
            "a fresh access token"
        );
        // A second finish of the same turn (a redelivery) changes nothing.
        let again = finish_turn(
            &t.services,
            &job(&session),
            "user-1",
            12,
            None,
            t.clock.now(),
        )
        .await
        .unwrap();
        assert!(again.is_none());
    }

    #[tokio::test]
    async fn a_released_turn_lets_the_user_send_again() {
        let t = services(Settings::with_secret("s".repeat(32)));
        let chat = ChatId::parse("chat-1").unwrap();
        let session = begin(&t, &chat, "u1", "a1").await.unwrap();
        release_turn(&t.services, &session, "a1").await.unwrap();
        let next = begin(&t, &chat, "u2", "a2").await.unwrap();
        assert_eq!(next.run_id, session.run_id, "the same session goes on");
    }
}
