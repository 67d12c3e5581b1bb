//! `DynamoChatStore` against DynamoDB Local with the real SDK client: the conformance suite,
//! and the size limits a long chat meets.

use chatrun_aws::DynamoChatStore;
use chatrun_aws::emulators as common;
use chatrun_core::domain::{Chat, ChatId, Trigger, TurnJob};
use chatrun_core::error::StoreError;
use chatrun_core::message::UIMessage;
use chatrun_core::ports::ChatStore;
use chatrun_core::testkit::store_conformance;

async fn store() -> (common::Emulator, DynamoChatStore) {
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
    (emulator, DynamoChatStore::new(client, "chatrun"))
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
