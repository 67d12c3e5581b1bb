//! The `ChatStore` conformance suite: what every adapter must do, checked the same way for each.
//! Every case uses fresh random ids, so one store instance can serve the whole suite.

use serde_json::json;

use crate::chunk::UIMessageChunk;
use crate::domain::{Chat, ChatId, ChatSession, Connection, Grant, SessionStatus, StreamEvent};
use crate::error::StoreError;
use crate::history::{MessagePage, PageLimits};
use crate::message::UIMessage;
use crate::ports::{ChatStore, ClaimWithMessageError, MAX_SUBSCRIPTIONS_PER_CONNECTION};

const NOW: i64 = 1_800_000_000_000;

fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

/// A chat of `owner` with a fresh random id, last updated at `updated_at`.
pub fn chat(owner: &str, updated_at: i64) -> Chat {
    Chat {
        id: ChatId::parse(unique("chat")).unwrap(),
        owner_id: owner.into(),
        title: "A title".into(),
        model: "offline".into(),
        created_at: updated_at,
        updated_at,
        message_count: 0,
    }
}

/// An active session of `chat_id` with a fresh random run id, streaming the turn of user message
/// `u1` and reply `a1`, never stored (`version` 0).
pub fn session(chat_id: &ChatId) -> ChatSession {
    ChatSession {
        chat_id: chat_id.clone(),
        run_id: unique("run"),
        access_token: "token".into(),
        last_event_id: 0,
        turns: 0,
        status: SessionStatus::Active,
        ended_reason: None,
        streaming: true,
        turn_start_event_id: 1,
        assistant_message_id: Some("a1".into()),
        user_message_id: Some("u1".into()),
        turn_model: Some("model-a".into()),
        stop_requested: false,
        stop_after_event_id: None,
        turn_started_at: Some(NOW),
        attempts: 0,
        expires_at: NOW + 3_600_000,
        version: 0,
    }
}

fn delta(text: &str) -> UIMessageChunk {
    UIMessageChunk::TextDelta {
        id: "t1".into(),
        delta: text.into(),
        provider_metadata: None,
    }
}

fn event(run_id: &str, first: u64, texts: &[&str], expires_at: i64) -> StreamEvent {
    StreamEvent {
        run_id: run_id.into(),
        first_event_id: first,
        chunks: texts.iter().map(|t| delta(t)).collect(),
        expires_at,
    }
}

fn connection(id: &str, expires_at: i64) -> Connection {
    Connection {
        connection_id: id.into(),
        owner_id: "owner".into(),
        grant: Grant::User,
        connected_at: NOW,
        expires_at,
    }
}

/// Runs every case. Panics with the case's name on the first broken contract.
pub async fn run_all<S: ChatStore + ?Sized>(store: &S) {
    chats(store).await;
    chat_model(store).await;
    listing(store).await;
    messages(store).await;
    large_history(store).await;
    history_pages(store).await;
    history_cursors(store).await;
    sessions(store).await;
    claim_with_message(store).await;
    events(store).await;
    connections_and_subscriptions(store).await;
    delete_chat_removes_everything(store).await;
}

/// Create, read, conflict, rename.
pub async fn chats<S: ChatStore + ?Sized>(store: &S) {
    let c = chat("owner-chats", NOW);
    store.create_chat(&c).await.unwrap();
    assert!(
        matches!(store.create_chat(&c).await, Err(StoreError::Conflict(_))),
        "create twice: Conflict"
    );
    let read = store.get_chat(&c.id).await.unwrap().expect("chat exists");
    assert_eq!(read, c);
    let renamed = store
        .rename_chat(&c.id, "New title", NOW + 5)
        .await
        .unwrap();
    assert_eq!(
        (renamed.title.as_str(), renamed.updated_at),
        ("New title", NOW + 5)
    );
    assert_eq!(
        store.get_chat(&c.id).await.unwrap().unwrap().title,
        "New title"
    );
    let missing = ChatId::parse(unique("missing")).unwrap();
    assert!(store.get_chat(&missing).await.unwrap().is_none());
    assert!(matches!(
        store.rename_chat(&missing, "x", NOW).await,
        Err(StoreError::NotFound(_))
    ));
}

/// A chat's model changes alone: title, `updated_at` and messages stay; the list shows it.
pub async fn chat_model<S: ChatStore + ?Sized>(store: &S) {
    let owner = unique("owner-model");
    let c = chat(&owner, NOW);
    store.create_chat(&c).await.unwrap();
    store
        .append_message(&c.id, &UIMessage::user_text("m1", "hi"), NOW + 1)
        .await
        .unwrap();
    let changed = store.set_chat_model(&c.id, "model-b").await.unwrap();
    assert_eq!(changed.model, "model-b");
    let read = store.get_chat(&c.id).await.unwrap().expect("chat exists");
    assert_eq!(read, changed, "the returned chat is the stored one");
    assert_eq!(
        (read.title.as_str(), read.updated_at, read.message_count),
        (c.title.as_str(), NOW + 1, 1),
        "only the model changes"
    );
    let listed = store.list_chats(&owner, None, 10).await.unwrap();
    assert_eq!(listed.chats.len(), 1);
    assert_eq!(listed.chats[0].model, "model-b");
    // Setting it again (the same model, then back) is an ordinary write.
    store.set_chat_model(&c.id, "model-b").await.unwrap();
    let back = store.set_chat_model(&c.id, &c.model).await.unwrap();
    assert_eq!(back.model, c.model);
    let missing = ChatId::parse(unique("missing-model")).unwrap();
    assert!(matches!(
        store.set_chat_model(&missing, "model-b").await,
        Err(StoreError::NotFound(_))
    ));
    assert!(
        store.get_chat(&missing).await.unwrap().is_none(),
        "no chat is made"
    );
}

/// A user's chats, most recently updated first, in pages; other users' chats never show.
pub async fn listing<S: ChatStore + ?Sized>(store: &S) {
    let owner = unique("owner-list");
    let mut made = Vec::new();
    for i in 0..5 {
        let c = chat(&owner, NOW + i);
        store.create_chat(&c).await.unwrap();
        made.push(c.id.clone());
    }
    store
        .create_chat(&chat(&unique("someone-else"), NOW + 100))
        .await
        .unwrap();
    // Touching the oldest makes it the newest.
    store
        .append_message(&made[0], &UIMessage::user_text("m1", "hi"), NOW + 50)
        .await
        .unwrap();
    let first = store.list_chats(&owner, None, 2).await.unwrap();
    let ids: Vec<_> = first.chats.iter().map(|c| c.id.clone()).collect();
    assert_eq!(ids, vec![made[0].clone(), made[4].clone()], "newest first");
    let cursor = first.next_cursor.expect("more pages");
    let second = store.list_chats(&owner, Some(&cursor), 2).await.unwrap();
    let ids: Vec<_> = second.chats.iter().map(|c| c.id.clone()).collect();
    assert_eq!(ids, vec![made[3].clone(), made[2].clone()]);
    let third = store
        .list_chats(&owner, second.next_cursor.as_deref(), 2)
        .await
        .unwrap();
    assert_eq!(third.chats.len(), 1);
    assert_eq!(third.chats[0].id, made[1]);
    assert!(third.next_cursor.is_none(), "last page");
    assert!(matches!(
        store.list_chats(&owner, Some("garbage!"), 2).await,
        Err(StoreError::BadCursor)
    ));
    assert!(
        store
            .list_chats(&unique("nobody"), None, 10)
            .await
            .unwrap()
            .chats
            .is_empty()
    );
}

/// Append once per id, in order; regenerate deletes from a message on.
pub async fn messages<S: ChatStore + ?Sized>(store: &S) {
    let c = chat("owner-messages", NOW);
    store.create_chat(&c).await.unwrap();
    for (i, id) in ["m1", "m2", "m3"].iter().enumerate() {
        store
            .append_message(
                &c.id,
                &UIMessage::user_text(*id, format!("text {i}")),
                NOW + i as i64 + 1,
            )
            .await
            .unwrap();
    }
    let again = store
        .append_message(&c.id, &UIMessage::user_text("m2", "dup"), NOW + 10)
        .await;
    assert!(
        matches!(again, Err(StoreError::Conflict(_))),
        "one message per id"
    );
    let read = store.get_chat(&c.id).await.unwrap().unwrap();
    assert_eq!(
        (read.message_count, read.updated_at),
        (3, NOW + 3),
        "a conflict writes nothing"
    );
    let ids: Vec<String> = store
        .messages(&c.id)
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.id)
        .collect();
    assert_eq!(ids, ["m1", "m2", "m3"]);
    let mut rich = UIMessage::user_text("m4", "with metadata");
    rich.metadata = Some(json!({"usage": {"outputTokens": 3}, "model": "offline"}));
    store.append_message(&c.id, &rich, NOW + 4).await.unwrap();
    assert_eq!(
        store.messages(&c.id).await.unwrap()[3],
        rich,
        "stored as given"
    );
    assert_eq!(store.delete_messages_from(&c.id, "m2").await.unwrap(), 3);
    let ids: Vec<String> = store
        .messages(&c.id)
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.id)
        .collect();
    assert_eq!(ids, ["m1"]);
    assert_eq!(
        store.get_chat(&c.id).await.unwrap().unwrap().message_count,
        1
    );
    assert!(matches!(
        store.delete_messages_from(&c.id, "nope").await,
        Err(StoreError::NotFound(_))
    ));
    store
        .append_message(&c.id, &UIMessage::user_text("m2", "again"), NOW + 9)
        .await
        .unwrap();
    let texts: Vec<String> = store
        .messages(&c.id)
        .await
        .unwrap()
        .iter()
        .map(UIMessage::text)
        .collect();
    assert_eq!(
        texts,
        ["text 0", "again"],
        "a deleted id can be used again, at the end"
    );
    let missing = ChatId::parse(unique("missing")).unwrap();
    assert!(matches!(
        store
            .append_message(&missing, &UIMessage::user_text("x", "x"), NOW)
            .await,
        Err(StoreError::NotFound(_))
    ));
    assert!(store.messages(&missing).await.unwrap().is_empty());
}

/// A long history comes back whole and in order (backends that page must follow every page).
pub async fn large_history<S: ChatStore + ?Sized>(store: &S) {
    let c = chat("owner-large", NOW);
    store.create_chat(&c).await.unwrap();
    let body = "lorem ipsum ".repeat(800);
    for i in 0..120 {
        store
            .append_message(
                &c.id,
                &UIMessage::user_text(format!("m{i:03}"), format!("{i} {body}")),
                NOW + i,
            )
            .await
            .unwrap();
    }
    let read = store.messages(&c.id).await.unwrap();
    assert_eq!(read.len(), 120);
    assert!(
        read.iter()
            .enumerate()
            .all(|(i, m)| m.id == format!("m{i:03}"))
    );
    // Over 1 MB: one page of it follows DynamoDB's response pages.
    let whole = store.message_page(&c.id, None, at_most(500)).await.unwrap();
    assert_eq!(whole.messages, read, "one page holds it all");
    assert_eq!(whole.older_cursor, None);
    let by_bytes = PageLimits {
        messages: 500,
        bytes: 300 * 1024,
    };
    let pages = walk(store, &c.id, by_bytes).await;
    assert_eq!(pages.len(), 4, "about 30 messages of ~10 KB per page");
    let walked: Vec<String> = pages.into_iter().rev().flatten().collect();
    let expected: Vec<String> = read.into_iter().map(|m| m.id).collect();
    assert_eq!(walked, expected, "nothing missing or doubled");
}

fn page_ids(page: &MessagePage) -> Vec<String> {
    page.messages.iter().map(|m| m.id.clone()).collect()
}

fn at_most(messages: usize) -> PageLimits {
    PageLimits {
        messages,
        bytes: 4 << 20,
    }
}

/// Appends `m0..m{n-1}` to a new chat.
async fn chat_with_messages<S: ChatStore + ?Sized>(store: &S, owner: &str, n: usize) -> Chat {
    let c = chat(owner, NOW);
    store.create_chat(&c).await.unwrap();
    for i in 0..n {
        store
            .append_message(
                &c.id,
                &UIMessage::user_text(format!("m{i}"), format!("text {i}")),
                NOW + i as i64,
            )
            .await
            .unwrap();
    }
    c
}

/// Walks the history with `limits` from the newest page to the first, returning the pages.
async fn walk<S: ChatStore + ?Sized>(
    store: &S,
    chat_id: &ChatId,
    limits: PageLimits,
) -> Vec<Vec<String>> {
    let mut pages = Vec::new();
    let mut before = None;
    loop {
        let page = store
            .message_page(chat_id, before.as_deref(), limits)
            .await
            .unwrap();
        pages.push(page_ids(&page));
        match page.older_cursor {
            Some(cursor) => before = Some(cursor),
            None => return pages,
        }
        assert!(pages.len() < 100, "paging ends");
    }
}

/// The history in pages, newest first: exact boundaries, the byte budget, empty chats.
pub async fn history_pages<S: ChatStore + ?Sized>(store: &S) {
    let empty = chat("owner-pages", NOW);
    store.create_chat(&empty).await.unwrap();
    let missing = ChatId::parse(unique("missing")).unwrap();
    for chat_id in [&empty.id, &missing] {
        let page = store.message_page(chat_id, None, at_most(3)).await.unwrap();
        assert_eq!(
            page,
            MessagePage {
                messages: vec![],
                older_cursor: None
            },
            "an empty history is one empty page"
        );
    }

    let c = chat_with_messages(store, "owner-pages", 6).await;
    assert_eq!(
        walk(store, &c.id, at_most(3)).await,
        [vec!["m3", "m4", "m5"], vec!["m0", "m1", "m2"]],
        "a page that ends at the first message has no cursor"
    );
    assert_eq!(
        walk(store, &c.id, at_most(6)).await,
        [vec!["m0", "m1", "m2", "m3", "m4", "m5"]]
    );
    assert_eq!(
        walk(store, &c.id, at_most(4)).await,
        [vec!["m2", "m3", "m4", "m5"], vec!["m0", "m1"]]
    );
    assert_eq!(
        walk(store, &c.id, at_most(100)).await,
        [vec!["m0", "m1", "m2", "m3", "m4", "m5"]]
    );
    let newest = store.message_page(&c.id, None, at_most(1)).await.unwrap();
    assert_eq!(page_ids(&newest), ["m5"]);
    assert_eq!(
        newest.messages[0],
        UIMessage::user_text("m5", "text 5"),
        "stored as given"
    );

    // The byte budget: messages of equal size, a budget of two and a half of them.
    let one = serde_json::to_string(&UIMessage::user_text("m0", "text 0"))
        .unwrap()
        .len();
    let by_bytes = PageLimits {
        messages: 100,
        bytes: one * 5 / 2,
    };
    assert_eq!(
        walk(store, &c.id, by_bytes).await,
        [vec!["m4", "m5"], vec!["m2", "m3"], vec!["m0", "m1"]],
        "a page cut by bytes still has a cursor for the rest"
    );
    let too_small = PageLimits {
        messages: 100,
        bytes: 1,
    };
    assert_eq!(
        walk(store, &c.id, too_small).await.len(),
        6,
        "a message larger than the budget is a page of its own"
    );
}

/// Cursors survive a regenerate, go stale when their message is deleted, and are refused for
/// another chat or when the store did not make them.
pub async fn history_cursors<S: ChatStore + ?Sized>(store: &S) {
    let c = chat_with_messages(store, "owner-cursors", 6).await;
    let newest = store.message_page(&c.id, None, at_most(2)).await.unwrap();
    assert_eq!(page_ids(&newest), ["m4", "m5"]);
    let cursor = newest.older_cursor.expect("older messages exist");

    // Regenerate the last reply: the older pages are untouched, and so is the cursor.
    store.delete_messages_from(&c.id, "m5").await.unwrap();
    store
        .append_message(&c.id, &UIMessage::user_text("m5b", "again"), NOW + 20)
        .await
        .unwrap();
    let older = store
        .message_page(&c.id, Some(&cursor), at_most(2))
        .await
        .unwrap();
    assert_eq!(page_ids(&older), ["m2", "m3"]);
    // An edit keeps the edited message's id: the cursor's message is back at its place.
    store.delete_messages_from(&c.id, "m4").await.unwrap();
    store
        .append_message(&c.id, &UIMessage::user_text("m4", "edited"), NOW + 21)
        .await
        .unwrap();
    let older = store
        .message_page(&c.id, Some(&cursor), at_most(2))
        .await
        .unwrap();
    assert_eq!(page_ids(&older), ["m2", "m3"]);

    // An edit further back deletes the cursor's message: the cursor is stale.
    store.delete_messages_from(&c.id, "m3").await.unwrap();
    assert!(matches!(
        store.message_page(&c.id, Some(&cursor), at_most(2)).await,
        Err(StoreError::Conflict(_))
    ));
    for id in ["x3", "x4", "x5"] {
        store
            .append_message(&c.id, &UIMessage::user_text(id, id), NOW + 22)
            .await
            .unwrap();
    }
    assert!(
        matches!(
            store.message_page(&c.id, Some(&cursor), at_most(2)).await,
            Err(StoreError::Conflict(_))
        ),
        "another message at the cursor's place is not the cursor's"
    );
    let rebuilt = walk(store, &c.id, at_most(2)).await;
    assert_eq!(
        rebuilt,
        [vec!["x4", "x5"], vec!["m2", "x3"], vec!["m0", "m1"]]
    );

    // Cursors of another chat, or not made by a store at all.
    let other = chat_with_messages(store, "owner-cursors", 3).await;
    let other_cursor = store
        .message_page(&other.id, None, at_most(1))
        .await
        .unwrap()
        .older_cursor
        .unwrap();
    for bad in [
        other_cursor.as_str(),
        "",
        "not-a-cursor",
        "eyJ4IjoxfQ",
        "%%",
    ] {
        assert!(
            matches!(
                store.message_page(&c.id, Some(bad), at_most(2)).await,
                Err(StoreError::BadCursor)
            ),
            "{bad:?} is refused"
        );
    }
    // A cursor of a deleted chat names nothing left.
    store.delete_chat(&other.id).await.unwrap();
    assert!(matches!(
        store
            .message_page(&other.id, Some(&other_cursor), at_most(2))
            .await,
        Err(StoreError::Conflict(_))
    ));
}

/// Sessions are written with optimistic concurrency on `version`.
pub async fn sessions<S: ChatStore + ?Sized>(store: &S) {
    let c = chat("owner-sessions", NOW);
    store.create_chat(&c).await.unwrap();
    assert!(store.get_session(&c.id).await.unwrap().is_none());
    let s = session(&c.id);
    let v1 = store.put_session(&s, None).await.unwrap();
    assert_eq!(v1.version, 1);
    assert!(
        matches!(
            store.put_session(&s, None).await,
            Err(StoreError::Conflict(_))
        ),
        "create twice"
    );
    assert_eq!(v1.turn_model.as_deref(), Some("model-a"));
    let mut next = v1.clone();
    next.streaming = false;
    next.last_event_id = 12;
    next.turn_model = Some("model-b".into());
    let v2 = store.put_session(&next, Some(1)).await.unwrap();
    assert_eq!(v2.version, 2);
    let stale = store.put_session(&next, Some(1)).await;
    assert!(
        matches!(stale, Err(StoreError::Conflict(_))),
        "a stale version writes nothing"
    );
    let read = store.get_session(&c.id).await.unwrap().unwrap();
    assert_eq!(read, v2);
    // An expired session is still returned: the engine replaces it with a conditional write.
    let mut expired = v2.clone();
    expired.expires_at = NOW - 1;
    store.put_session(&expired, Some(2)).await.unwrap();
    assert_eq!(
        store.get_session(&c.id).await.unwrap().unwrap().expires_at,
        NOW - 1
    );
}

/// A send's claim and its message: both, or the claim alone only when the store says so.
pub async fn claim_with_message<S: ChatStore + ?Sized>(store: &S) {
    let c = chat("owner-claims", NOW);
    store.create_chat(&c).await.unwrap();
    let first = UIMessage::user_text("u1", "hello");
    let claimed = store
        .claim_with_message(&session(&c.id), None, &first, NOW + 1)
        .await
        .unwrap();
    assert_eq!(claimed.version, 1);
    assert_eq!(store.get_session(&c.id).await.unwrap().unwrap(), claimed);
    let ids = |messages: Vec<UIMessage>| messages.into_iter().map(|m| m.id).collect::<Vec<_>>();
    assert_eq!(ids(store.messages(&c.id).await.unwrap()), ["u1"]);
    let read = store.get_chat(&c.id).await.unwrap().unwrap();
    assert_eq!((read.message_count, read.updated_at), (1, NOW + 1));

    // A stale claim writes nothing, the message included.
    let second = UIMessage::user_text("u2", "again");
    let stale = store
        .claim_with_message(&session(&c.id), Some(7), &second, NOW + 2)
        .await;
    assert!(
        matches!(
            stale,
            Err(ClaimWithMessageError::Session(StoreError::Conflict(_)))
        ),
        "{stale:?}"
    );
    assert_eq!(ids(store.messages(&c.id).await.unwrap()), ["u1"]);

    // A message sent before: refused; the claim is undone with it, or stands and says so.
    let mut next = claimed.clone();
    next.assistant_message_id = Some("a2".into());
    match store
        .claim_with_message(&next, Some(1), &first, NOW + 3)
        .await
    {
        Err(ClaimWithMessageError::Message(StoreError::Conflict(_))) => {
            assert_eq!(store.get_session(&c.id).await.unwrap().unwrap(), claimed);
        }
        Err(ClaimWithMessageError::MessageAfterClaim {
            claimed: written,
            error: StoreError::Conflict(_),
        }) => {
            assert_eq!(written.version, 2);
            assert_eq!(store.get_session(&c.id).await.unwrap().unwrap(), *written);
        }
        other => panic!("a message sent twice: {other:?}"),
    }
    assert_eq!(ids(store.messages(&c.id).await.unwrap()), ["u1"]);
    assert_eq!(
        store.get_chat(&c.id).await.unwrap().unwrap().message_count,
        1
    );
}

/// Stream events: once per first id, read after an id, expiry.
pub async fn events<S: ChatStore + ?Sized>(store: &S) {
    let run = unique("run");
    let later = NOW + 86_400_000;
    assert_eq!(store.last_event_id(&run, NOW).await.unwrap(), 0);
    store
        .append_event(&event(&run, 1, &["a", "b", "c"], later))
        .await
        .unwrap();
    store
        .append_event(&event(&run, 4, &["d"], later))
        .await
        .unwrap();
    store
        .append_event(&event(&run, 5, &["e", "f"], later))
        .await
        .unwrap();
    let dup = store.append_event(&event(&run, 4, &["other"], later)).await;
    assert!(
        matches!(dup, Err(StoreError::Conflict(_))),
        "one event per first id"
    );
    assert_eq!(store.last_event_id(&run, NOW).await.unwrap(), 6);
    let firsts =
        |events: Vec<StreamEvent>| events.iter().map(|e| e.first_event_id).collect::<Vec<_>>();
    assert_eq!(
        firsts(store.events_after(&run, 0, NOW).await.unwrap()),
        [1, 4, 5]
    );
    assert_eq!(
        firsts(store.events_after(&run, 2, NOW).await.unwrap()),
        [1, 4, 5],
        "the event holding 3"
    );
    assert_eq!(
        firsts(store.events_after(&run, 3, NOW).await.unwrap()),
        [4, 5]
    );
    assert_eq!(firsts(store.events_after(&run, 5, NOW).await.unwrap()), [5]);
    assert!(store.events_after(&run, 6, NOW).await.unwrap().is_empty());
    let all = store.events_after(&run, 0, NOW).await.unwrap();
    assert_eq!(
        all[2],
        event(&run, 5, &["e", "f"], later),
        "stored as given"
    );
    // Expired events are gone even before the backend removes them.
    let old = unique("run-old");
    store
        .append_event(&event(&old, 1, &["x"], NOW))
        .await
        .unwrap();
    assert!(store.events_after(&old, 0, NOW).await.unwrap().is_empty());
    assert_eq!(store.last_event_id(&old, NOW).await.unwrap(), 0);
}

/// Connections and their subscriptions.
pub async fn connections_and_subscriptions<S: ChatStore + ?Sized>(store: &S) {
    let later = NOW + 7_200_000;
    let conn = unique("conn");
    store
        .put_connection(&connection(&conn, later))
        .await
        .unwrap();
    assert_eq!(
        store
            .get_connection(&conn, NOW)
            .await
            .unwrap()
            .unwrap()
            .owner_id,
        "owner"
    );
    assert!(
        store.get_connection(&conn, later).await.unwrap().is_none(),
        "expired is gone"
    );
    assert!(
        store
            .get_connection(&unique("nope"), NOW)
            .await
            .unwrap()
            .is_none()
    );

    let chats: Vec<ChatId> = (0..=MAX_SUBSCRIPTIONS_PER_CONNECTION)
        .map(|_| ChatId::parse(unique("sub-chat")).unwrap())
        .collect();
    let other = unique("conn-other");
    store
        .put_connection(&connection(&other, later))
        .await
        .unwrap();
    store
        .subscribe(&chats[0], &other, NOW, later)
        .await
        .unwrap();
    for (i, chat_id) in chats
        .iter()
        .enumerate()
        .take(MAX_SUBSCRIPTIONS_PER_CONNECTION)
    {
        store
            .subscribe(chat_id, &conn, NOW + i as i64, later)
            .await
            .unwrap();
    }
    let mut subs = store.subscribers(&chats[0], NOW).await.unwrap();
    subs.sort();
    let mut expected = vec![conn.clone(), other.clone()];
    expected.sort();
    assert_eq!(subs, expected);
    // Refreshing the first makes it the newest, so the 11th drops the second.
    store
        .subscribe(&chats[0], &conn, NOW + 20, later)
        .await
        .unwrap();
    store
        .subscribe(
            &chats[MAX_SUBSCRIPTIONS_PER_CONNECTION],
            &conn,
            NOW + 21,
            later,
        )
        .await
        .unwrap();
    assert!(
        store.subscribers(&chats[1], NOW).await.unwrap().is_empty(),
        "the oldest was dropped"
    );
    assert!(
        store
            .subscribers(&chats[0], NOW)
            .await
            .unwrap()
            .contains(&conn)
    );
    assert_eq!(
        store
            .subscribers(&chats[MAX_SUBSCRIPTIONS_PER_CONNECTION], NOW)
            .await
            .unwrap(),
        vec![conn.clone()]
    );

    let signals = store.session_and_subscribers(&chats[2], NOW).await.unwrap();
    assert!(signals.session.is_none());
    assert_eq!(signals.subscribers, vec![conn.clone()]);

    store.unsubscribe(&chats[2], &conn).await.unwrap();
    store.unsubscribe(&chats[2], &conn).await.unwrap();
    assert!(store.subscribers(&chats[2], NOW).await.unwrap().is_empty());
    assert!(
        store
            .subscribers(&chats[3], later)
            .await
            .unwrap()
            .is_empty(),
        "expired subscriptions are gone"
    );

    store.delete_connection(&conn).await.unwrap();
    store.delete_connection(&conn).await.unwrap();
    assert!(store.get_connection(&conn, NOW).await.unwrap().is_none());
    assert_eq!(
        store.subscribers(&chats[0], NOW).await.unwrap(),
        vec![other.clone()],
        "its subscriptions went with it"
    );
    assert!(store.subscribers(&chats[3], NOW).await.unwrap().is_empty());
}

/// Deleting a chat takes its messages, session, current run's events and subscriptions along.
pub async fn delete_chat_removes_everything<S: ChatStore + ?Sized>(store: &S) {
    let c = chat("owner-delete", NOW);
    store.create_chat(&c).await.unwrap();
    store
        .append_message(&c.id, &UIMessage::user_text("m1", "bye"), NOW)
        .await
        .unwrap();
    let s = store.put_session(&session(&c.id), None).await.unwrap();
    store
        .append_event(&event(&s.run_id, 1, &["x"], NOW + 1000))
        .await
        .unwrap();
    let conn = unique("conn-del");
    store
        .put_connection(&connection(&conn, NOW + 1000))
        .await
        .unwrap();
    store
        .subscribe(&c.id, &conn, NOW, NOW + 1000)
        .await
        .unwrap();

    store.delete_chat(&c.id).await.unwrap();
    assert!(store.get_chat(&c.id).await.unwrap().is_none());
    assert!(store.messages(&c.id).await.unwrap().is_empty());
    assert!(store.get_session(&c.id).await.unwrap().is_none());
    assert!(
        store
            .events_after(&s.run_id, 0, NOW)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(store.subscribers(&c.id, NOW).await.unwrap().is_empty());
    store.delete_chat(&c.id).await.unwrap();
    // The id is free again.
    store.create_chat(&c).await.unwrap();
    assert!(store.messages(&c.id).await.unwrap().is_empty());
}
