//! Per-user and per-address limits (`rate_limited`), checked before anything of a request is
//! stored.
//!
//! - Messages per user per minute: a fixed window anchored at the user's first message
//!   ([`crate::ports::UsageCounters::count_in_window`]). One conditional write per message on DynamoDB, and
//!   `retryAfterMs` is exact: the window's end. The price of a fixed window is that a user can
//!   send up to twice the limit across a window boundary; a sliding log would need every
//!   timestamp read and rewritten per message, and the limit is about abuse, not billing.
//! - Concurrent turns per user: one slot per turn, keyed by its assistant message id, claimed
//!   until the stale-turn limit. Every way a turn ends releases it (completion, error, stop,
//!   dead letter, a failed start, a deleted chat, a stale turn replaced by a new session); a
//!   crashed worker's slot frees itself at the same moment its session would be taken over.
//! - New guest users per source address per hour: a fixed window like the messages'.
//! - `resume` requests per connection per minute: a fixed window like the messages', so that
//!   replays (a small request for a large answer) cannot be asked for in a loop.

use std::time::Duration;

use super::Services;
use crate::error::ChatError;
use crate::ports::{Admission, SlotAndCount, SlotClaim, WindowCount};

/// A turn slot is busy until its turn ends, which is usually seconds away; the slot's expiry
/// (up to the stale-turn limit) is only an upper bound. Clients are told to retry after this
/// long, or sooner when the oldest slot expires sooner.
pub const BUSY_TURN_RETRY_MS: u64 = 2_000;

const MINUTE: Duration = Duration::from_secs(60);
const HOUR: Duration = Duration::from_secs(3600);

fn turns_key(owner_id: &str) -> String {
    format!("turns#{owner_id}")
}

fn messages_key(owner_id: &str) -> String {
    format!("messages#{owner_id}")
}

fn resumes_key(connection_id: &str) -> String {
    format!("resumes#{connection_id}")
}

fn guests_key(source_ip: &str) -> String {
    format!("guests#{source_ip}")
}

// The messages name the limit; when to retry travels apart (`retryAfterMs`, `Retry-After`),
// and the page words it.

/// Admits a new turn of `owner_id` (a send, an edit or a regeneration): takes a turn slot for
/// `turn_id`, then counts the message. A message refused for its rate gives the slot back.
/// # Errors
/// `rate_limited` with `retry_after_ms` when the user has too many turns running or has sent
/// too many messages this minute; nothing is counted then.
pub async fn admit_turn(s: &Services, owner_id: &str, turn_id: &str) -> Result<(), ChatError> {
    let now = s.now();
    let settings = &s.settings;
    let turns = turns_key(owner_id);
    let messages = messages_key(owner_id);
    let slot = SlotClaim {
        key: &turns,
        slot_id: turn_id,
        limit: settings.user_max_concurrent_turns,
        expires_at: now + settings.stale_turn_after.as_millis() as i64,
    };
    let window = WindowCount {
        key: &messages,
        limit: settings.user_messages_per_minute,
        window: MINUTE,
    };
    match s.limits.claim_slot_and_count(slot, window, now).await? {
        SlotAndCount::Admitted => Ok(()),
        SlotAndCount::SlotRefused { retry_after_ms } => Err(ChatError::RateLimited {
            message: format!(
                "{} replies are already running; wait for one to finish (or stop one)",
                slot.limit
            ),
            retry_after_ms: retry_after_ms.clamp(1, BUSY_TURN_RETRY_MS),
        }),
        SlotAndCount::WindowRefused { retry_after_ms } => Err(ChatError::RateLimited {
            message: format!("at most {} messages a minute", window.limit),
            retry_after_ms: retry_after_ms.max(1),
        }),
    }
}

/// Frees the turn slot of `turn_id`, whichever way the turn ended. Releasing twice, or a slot
/// never taken, is harmless. A failure is logged only: the slot frees itself at the stale-turn
/// limit.
pub async fn release_turn_slot(s: &Services, owner_id: &str, turn_id: &str) {
    if let Err(error) = s.limits.release_slot(&turns_key(owner_id), turn_id).await {
        tracing::warn!(owner_id, turn_id, %error,
            "could not free a turn slot; it frees itself after the stale-turn limit");
    }
}

/// Admits one new guest user from `source_ip`. Without a known address (a caller that is not
/// behind API Gateway or the local gateway) nothing is counted.
/// # Errors
/// `rate_limited` with `retry_after_ms` when the address made too many guests this hour.
pub async fn admit_guest(s: &Services, source_ip: Option<&str>) -> Result<(), ChatError> {
    let Some(source_ip) = source_ip.filter(|ip| !ip.is_empty()) else {
        return Ok(());
    };
    let per_hour = s.settings.guest_sessions_per_ip_per_hour;
    match s
        .limits
        .count_in_window(&guests_key(source_ip), per_hour, HOUR, s.now())
        .await?
    {
        Admission::Admitted => Ok(()),
        Admission::Refused { retry_after_ms } => Err(ChatError::RateLimited {
            message: "too many new guest sessions from this address".into(),
            retry_after_ms: retry_after_ms.max(1),
        }),
    }
}

/// Admits one `resume` on `connection_id`.
/// # Errors
/// `rate_limited` with `retry_after_ms` when the connection resumed too often this minute.
pub async fn admit_resume(s: &Services, connection_id: &str) -> Result<(), ChatError> {
    let per_minute = s.settings.connection_resumes_per_minute;
    match s
        .limits
        .count_in_window(&resumes_key(connection_id), per_minute, MINUTE, s.now())
        .await?
    {
        Admission::Admitted => Ok(()),
        Admission::Refused { retry_after_ms } => Err(ChatError::RateLimited {
            message: format!("at most {per_minute} resumes a minute on one connection"),
            retry_after_ms: retry_after_ms.max(1),
        }),
    }
}

#[cfg(all(test, feature = "test-util"))]
mod tests {
    use super::*;
    use crate::config::Settings;
    use crate::domain::{ChatId, Connection, Grant, Trigger, TurnJob};
    use crate::engine::turn::{TurnOutcome, run_turn, send_message};
    use crate::error::{ErrorCode, QueueError};
    use crate::message::UIMessage;
    use crate::ports::{ChatStore, Clock, UsageCounters};
    use crate::protocol::{SendMessage, ServerFrame};
    use crate::testkit::memory::{ScriptedModel, TestServices, services};

    fn settings(concurrent: u32, per_minute: u32) -> Settings {
        let mut settings = Settings::with_secret("s".repeat(32));
        settings.user_max_concurrent_turns = concurrent;
        settings.user_messages_per_minute = per_minute;
        settings.guest_sessions_per_ip_per_hour = 2;
        settings
    }

    fn connection(owner: &str) -> Connection {
        Connection {
            connection_id: format!("conn-{owner}"),
            owner_id: owner.into(),
            grant: Grant::User,
            connected_at: 0,
            expires_at: i64::MAX,
        }
    }

    fn send(chat: &str, message_id: &str) -> SendMessage {
        SendMessage {
            request_id: Some(format!("r-{message_id}")),
            chat_id: ChatId::parse(chat).unwrap(),
            message: Some(UIMessage::user_text(message_id, "hello")),
            trigger: Trigger::SubmitMessage,
            message_id: None,
            model: None,
        }
    }

    fn retry_after(error: &ChatError) -> u64 {
        assert_eq!(error.code(), ErrorCode::RateLimited, "{error:?}");
        error
            .retry_after_ms()
            .expect("rate_limited carries retryAfterMs")
    }

    fn queued(t: &TestServices) -> Vec<TurnJob> {
        t.queue.jobs.lock().unwrap().clone()
    }

    #[tokio::test]
    async fn the_message_past_the_minute_s_limit_is_refused_stores_nothing_and_says_when() {
        let t = services(settings(100, 20));
        let user = connection("user-1");
        for i in 0..20 {
            send_message(
                &t.services,
                &user,
                &send(&format!("chat-{i}"), &format!("m{i}")),
            )
            .await
            .expect("within the limit");
            t.clock.advance(1_000);
        }
        let refused = send_message(&t.services, &user, &send("chat-20", "m20"))
            .await
            .unwrap_err();
        // The window opened with the first message, 20 s ago.
        assert_eq!(retry_after(&refused), 40_000);
        let frame = ServerFrame::error(Some("r".into()), Some("chat-20".into()), &refused);
        let json: serde_json::Value = serde_json::from_str(&frame.to_json()).unwrap();
        assert_eq!(json["code"], "rate_limited");
        assert_eq!(json["retryAfterMs"], 40_000);
        let chat_20 = ChatId::parse("chat-20").unwrap();
        assert!(t.store.get_chat(&chat_20).await.unwrap().is_none());
        assert!(t.store.get_session(&chat_20).await.unwrap().is_none());
        assert_eq!(queued(&t).len(), 20);

        // Another user has a window of their own.
        send_message(&t.services, &connection("user-2"), &send("chat-b", "b1"))
            .await
            .expect("another user is not limited");
        // Once the window has ended, the user may send again.
        t.clock.advance(40_000);
        send_message(&t.services, &user, &send("chat-20", "m20"))
            .await
            .expect("a new window");
    }

    #[tokio::test]
    async fn a_fourth_concurrent_turn_is_refused_until_one_ends() {
        let t = services(settings(3, 100));
        let user = connection("user-1");
        for i in 0..3 {
            send_message(
                &t.services,
                &user,
                &send(&format!("chat-{i}"), &format!("m{i}")),
            )
            .await
            .unwrap();
        }
        let refused = send_message(&t.services, &user, &send("chat-3", "m3"))
            .await
            .unwrap_err();
        assert_eq!(retry_after(&refused), BUSY_TURN_RETRY_MS);
        assert!(
            t.store
                .get_chat(&ChatId::parse("chat-3").unwrap())
                .await
                .unwrap()
                .is_none()
        );
        send_message(&t.services, &connection("user-2"), &send("chat-b", "b1"))
            .await
            .expect("another user is not limited");

        // One turn completes: its slot is free again.
        let model = ScriptedModel::new("done");
        let first = queued(&t)[0].clone();
        assert_eq!(
            run_turn(&t.services, &model, &first).await.unwrap(),
            TurnOutcome::Completed
        );
        send_message(&t.services, &user, &send("chat-3", "m3"))
            .await
            .expect("a slot was freed");
        assert!(
            send_message(&t.services, &user, &send("chat-4", "m4"))
                .await
                .is_err()
        );
    }

    #[tokio::test]
    async fn a_turn_that_fails_to_start_or_is_stopped_or_stale_frees_its_slot() {
        let t = services(settings(1, 100));
        let user = connection("user-1");
        // The queue fails: the turn is rolled back, and so is its slot.
        *t.queue.fail_with.lock().unwrap() = Some(QueueError::Transient("down".into()));
        assert!(
            send_message(&t.services, &user, &send("chat-0", "m0"))
                .await
                .is_err()
        );
        *t.queue.fail_with.lock().unwrap() = None;
        send_message(&t.services, &user, &send("chat-0", "m0"))
            .await
            .expect("the rolled-back turn freed its slot");

        // A turn whose worker crashed holds its slot until the stale-turn limit, no longer.
        let refused = send_message(&t.services, &user, &send("chat-1", "m1"))
            .await
            .unwrap_err();
        retry_after(&refused);
        t.clock
            .advance(t.services.settings.stale_turn_after.as_millis() as i64 + 1);
        send_message(&t.services, &user, &send("chat-1", "m1"))
            .await
            .expect("the stale turn's slot expired");

        // A stopped turn ends through onTurnComplete, which frees the slot.
        let running = queued(&t).last().unwrap().clone();
        crate::engine::turn::stop(
            &t.services,
            &user,
            &crate::protocol::ChatRequest {
                request_id: None,
                chat_id: running.chat_id.clone(),
                run_id: None,
                assistant_message_id: None,
                last_event_id: None,
            },
        )
        .await
        .unwrap();
        run_turn(&t.services, &ScriptedModel::new("a b c"), &running)
            .await
            .unwrap();
        send_message(&t.services, &user, &send("chat-2", "m2"))
            .await
            .expect("the stopped turn freed its slot");
    }

    #[tokio::test]
    async fn a_message_refused_for_its_rate_gives_its_turn_slot_back() {
        let t = services(settings(2, 1));
        let user = connection("user-1");
        send_message(&t.services, &user, &send("chat-0", "m0"))
            .await
            .unwrap();
        // Refused for the rate: had it kept the slot, the slot count would now be full.
        assert!(
            send_message(&t.services, &user, &send("chat-1", "m1"))
                .await
                .is_err()
        );
        let held = t
            .store
            .claim_slot(&turns_key("user-1"), "probe", 2, t.clock.now(), i64::MAX)
            .await
            .unwrap();
        assert_eq!(held, Admission::Admitted, "one slot is still free");
    }

    #[tokio::test]
    async fn guests_are_counted_per_source_address_per_hour() {
        let t = services(settings(3, 20));
        let s = &t.services;
        admit_guest(s, Some("203.0.113.7")).await.unwrap();
        t.clock.advance(60_000);
        admit_guest(s, Some("203.0.113.7")).await.unwrap();
        let refused = admit_guest(s, Some("203.0.113.7")).await.unwrap_err();
        assert_eq!(retry_after(&refused), 3_540_000);
        admit_guest(s, Some("198.51.100.1"))
            .await
            .expect("another address is not limited");
        admit_guest(s, None)
            .await
            .expect("an unknown address is not counted");
        t.clock.advance(3_540_000);
        admit_guest(s, Some("203.0.113.7"))
            .await
            .expect("the hour has passed");
    }
}
