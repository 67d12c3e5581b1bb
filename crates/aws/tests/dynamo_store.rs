//! `DynamoChatStore` against DynamoDB Local with the real SDK client: the conformance suite,
//! and the size limits a long chat meets.

use chatrun_aws::DynamoChatStore;
use chatrun_aws::emulators as common;
use chatrun_core::domain::{
    Chat, ChatId, ChatSession, Connection, Grant, StreamEvent, Trigger, TurnJob,
};
use chatrun_core::error::StoreError;
use chatrun_core::message::UIMessage;
use chatrun_core::ports::ChatStore;
use chatrun_core::testkit::store_conformance;

async fn store() -> (common::Emulator, DynamoChatStore) {
    let (emulator, client) = table().await;
    (emulator, DynamoChatStore::new(client, "chatrun"))
}

async fn table() -> (common::Emulator, aws_sdk_dynamodb::Client) {
    let emulator = common::dynamodb_local().await;
    let config = common::sdk_config(&emulator.endpoint).await;
    let client = aws_sdk_dynamodb::Client::new(&config);
    let mut created = Err(StoreError::Backend("not tried".into()));
    for _ in 0..50 {
        created = DynamoChatStore::create_table(&client, "chatrun").await;
        if created.is_ok() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    created.expect("table created");
    (emulator, client)
}

#[tokio::test]
async fn dynamodb_store_passes_the_store_conformance_suite_and_holds_long_chats() {
    let (_emulator, store) = store().await;
    store_conformance::run_all(&store).await;

    // 5 MB of history: 60 messages of about 90 KB, each its own item, read back whole.
    let chat_id = ChatId::parse("long-chat").unwrap();
    store
        .create_chat(&Chat {
            id: chat_id.clone(),
            owner_id: "o".into(),
            title: "t".into(),
            model: "m".into(),
            created_at: 1,
            updated_at: 1,
            message_count: 0,
        })
        .await
        .unwrap();
    let body = "x".repeat(90 * 1024);
    for i in 0..60 {
        store
            .append_message(
                &chat_id,
                &UIMessage::user_text(format!("m{i:02}"), format!("{i}{body}")),
                10 + i,
            )
            .await
            .unwrap();
    }
    let history = store.messages(&chat_id).await.unwrap();
    assert_eq!(history.len(), 60);
    assert!(history.iter().map(|m| m.text().len()).sum::<usize>() > 5_000_000);
    assert!(
        history
            .iter()
            .enumerate()
            .all(|(i, m)| m.id == format!("m{i:02}"))
    );

    // One message past the item limit is refused as too large, and nothing is written.
    let huge = UIMessage::user_text("huge", "y".repeat(450 * 1024));
    assert!(matches!(
        store.append_message(&chat_id, &huge, 99).await,
        Err(StoreError::TooLarge(_))
    ));
    assert_eq!(
        store
            .get_chat(&chat_id)
            .await
            .unwrap()
            .unwrap()
            .message_count,
        60
    );

    // Turn jobs carry ids only.
    let job = TurnJob {
        chat_id,
        run_id: uuid::Uuid::new_v4().to_string(),
        user_message_id: "u".repeat(64),
        assistant_message_id: uuid::Uuid::new_v4().to_string(),
        trigger: Trigger::SubmitMessage,
    };
    assert!(
        serde_json::to_vec(&job).unwrap().len() < 1024,
        "far below SQS's 256 KB"
    );
}

/// Every raw item of one partition.
async fn raw_partition(client: &aws_sdk_dynamodb::Client, pk: &str) -> Vec<String> {
    let out = client
        .query()
        .table_name("chatrun")
        .key_condition_expression("pk = :p")
        .expression_attribute_values(":p", aws_sdk_dynamodb::types::AttributeValue::S(pk.into()))
        .consistent_read(true)
        .send()
        .await
        .unwrap();
    out.items
        .unwrap_or_default()
        .iter()
        .map(|i| i["sk"].as_s().unwrap().clone())
        .collect()
}

fn chat(id: &ChatId) -> Chat {
    Chat {
        id: id.clone(),
        owner_id: "o".into(),
        title: "t".into(),
        model: "m".into(),
        created_at: 1,
        updated_at: 1,
        message_count: 0,
    }
}

/// Built from JSON so fields added later with defaults need no change here.
fn session(chat_id: &ChatId, run_id: &str) -> ChatSession {
    serde_json::from_value(serde_json::json!({
        "chatId": chat_id.as_str(), "runId": run_id, "accessToken": "a", "lastEventId": 0,
        "turns": 0, "status": "active", "endedReason": null, "streaming": false,
        "turnStartEventId": 1, "assistantMessageId": null, "userMessageId": null,
        "stopRequested": false, "turnStartedAt": null, "attempts": 0,
        "expiresAt": NOW + 3_600_000, "version": 0
    }))
    .unwrap()
}

const NOW: i64 = 1_800_000_000_000;

#[tokio::test]
async fn concurrent_subscribes_lose_none_and_deletes_leave_nothing_behind() {
    let (_emulator, client) = table().await;
    let store = DynamoChatStore::new(client.clone(), "chatrun");
    let later = NOW + 7_200_000;
    let conn = "Conn0123456789ab";
    store
        .put_connection(&Connection {
            connection_id: conn.into(),
            owner_id: "o".into(),
            grant: Grant::User,
            connected_at: NOW,
            expires_at: later,
        })
        .await
        .unwrap();

    // 24 subscribes of one connection at once (the old read-modify-write of a list on the
    // connection item lost some of them): exactly the 10 most recent survive, both halves.
    let chats: Vec<ChatId> = (0..24)
        .map(|i| ChatId::parse(format!("sub-{i:02}")).unwrap())
        .collect();
    let mut subscribes = tokio::task::JoinSet::new();
    for (i, c) in chats.iter().enumerate() {
        let (store, c) = (store.clone(), c.clone());
        subscribes.spawn(async move { store.subscribe(&c, conn, NOW + i as i64, later).await });
    }
    while let Some(result) = subscribes.join_next().await {
        result.unwrap().unwrap();
    }
    let mut held = Vec::new();
    for c in &chats {
        if store.subscribers(c, NOW).await.unwrap() == vec![conn.to_string()] {
            held.push(c.as_str().to_owned());
        }
    }
    let newest: Vec<String> = chats[14..].iter().map(|c| c.as_str().to_owned()).collect();
    assert_eq!(held, newest, "the ten most recent subscriptions");
    let mut twins: Vec<String> = raw_partition(&client, &format!("CONN#{conn}"))
        .await
        .into_iter()
        .filter_map(|sk| sk.strip_prefix("SUB#").map(str::to_owned))
        .collect();
    twins.sort();
    assert_eq!(
        twins, newest,
        "the connection's halves match the chats' halves"
    );

    // $disconnect removes both halves of every subscription and the connection.
    store.delete_connection(conn).await.unwrap();
    assert!(
        raw_partition(&client, &format!("CONN#{conn}"))
            .await
            .is_empty()
    );
    for c in &chats {
        assert!(store.subscribers(c, NOW).await.unwrap().is_empty(), "{c}");
    }

    // Deleting a chat removes the events of all its runs, not only the current one's.
    let chat_id = ChatId::parse("many-runs").unwrap();
    store.create_chat(&chat(&chat_id)).await.unwrap();
    let first = store
        .put_session(&session(&chat_id, "run-1"), None)
        .await
        .unwrap();
    let event = |run: &str| StreamEvent {
        run_id: run.into(),
        first_event_id: 1,
        chunks: vec![chatrun_core::chunk::UIMessageChunk::StartStep],
        expires_at: NOW + 86_400_000,
    };
    store.append_event(&event("run-1")).await.unwrap();
    store
        .put_session(&session(&chat_id, "run-2"), Some(first.version))
        .await
        .unwrap();
    store.append_event(&event("run-2")).await.unwrap();
    store
        .append_message(&chat_id, &UIMessage::user_text("m1", "hello"), NOW)
        .await
        .unwrap();
    store.subscribe(&chat_id, conn, NOW, later).await.unwrap();
    store.delete_chat(&chat_id).await.unwrap();
    for pk in [
        "RUN#run-1",
        "RUN#run-2",
        "CHAT#many-runs",
        &format!("CONN#{conn}"),
    ] {
        assert_eq!(
            raw_partition(&client, pk).await,
            Vec::<String>::new(),
            "{pk}"
        );
    }
    // A failed session write is a conflict, and writes neither the session nor a marker.
    store.create_chat(&chat(&chat_id)).await.unwrap();
    store
        .put_session(&session(&chat_id, "run-3"), None)
        .await
        .unwrap();
    assert!(matches!(
        store
            .put_session(&session(&chat_id, "run-4"), Some(41))
            .await,
        Err(StoreError::Conflict(_))
    ));
    let mut items = raw_partition(&client, "CHAT#many-runs").await;
    items.sort();
    assert_eq!(items, ["CHAT", "RUN#run-3", "SESSION"]);
}

#[tokio::test]
async fn dynamodb_store_passes_the_limits_conformance_suite() {
    let (_emulator, store) = store().await;
    chatrun_core::testkit::limits_conformance::run_all(&store).await;
}
