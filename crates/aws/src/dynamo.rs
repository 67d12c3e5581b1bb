//! `DynamoChatStore`: the `ChatStore` on one DynamoDB table (DESIGN §3).
//!
//! | item | pk | sk |
//! |---|---|---|
//! | Chat | `CHAT#{chatId}` | `CHAT` (GSI `byOwner`: `OWNER#{ownerId}`, `{updatedAt:013}#{chatId}`) |
//! | Message | `CHAT#{chatId}` | `MSG#{seq:010}` |
//! | message id marker | `CHAT#{chatId}` | `MSGID#{messageId}` (makes a message id unique) |
//! | ChatSession | `CHAT#{chatId}` | `SESSION` |
//! | Subscription | `CHAT#{chatId}` | `SUB#{connectionId}` |
//! | StreamEvent | `RUN#{runId}` | `EVT#{firstEventId:012}` |
//! | Connection | `CONN#{connectionId}` | `CONN` (with its subscriptions, oldest first) |
//!
//! Messages are one item each so a long chat never meets the 400 KB item limit; the history is
//! one paginated Query. Writes that must happen once are conditional. `expiresAt` (epoch seconds)
//! drives DynamoDB's TTL, which deletes late: reads compare `expiresAtMs` with the clock.

use std::collections::HashMap;

use async_trait::async_trait;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, DeleteRequest, GlobalSecondaryIndex, KeySchemaElement,
    KeyType, Projection, ProjectionType, Put, ScalarAttributeType, TimeToLiveSpecification,
    TransactWriteItem, Update, WriteRequest,
};
use base64::Engine;
use chatrun_core::domain::{
    Chat, ChatId, ChatPage, ChatSession, ChatSummary, Connection, Millis, StreamEvent,
};
use chatrun_core::error::StoreError;
use chatrun_core::message::UIMessage;
use chatrun_core::ports::{ChatStore, MAX_SUBSCRIPTIONS_PER_CONNECTION};

/// The largest message body stored in one item (DynamoDB's item limit is 400 KB).
const MAX_MESSAGE_BYTES: usize = 380 * 1024;
/// Session items outlive their expiry by a day, so `GET /api/chats/{id}` can still show them.
const SESSION_GRACE_MS: i64 = 24 * 3600 * 1000;

type Item = HashMap<String, AttributeValue>;

/// The `ChatStore` on DynamoDB.
#[derive(Clone, Debug)]
pub struct DynamoChatStore {
    client: Client,
    table: String,
}

fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}

fn n(v: impl ToString) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

fn chat_pk(chat_id: &ChatId) -> String {
    format!("CHAT#{chat_id}")
}

fn get_s<'a>(item: &'a Item, name: &str) -> Result<&'a str, StoreError> {
    item.get(name)
        .and_then(|v| v.as_s().ok())
        .map(String::as_str)
        .ok_or_else(|| StoreError::Backend(format!("item without {name}")))
}

fn get_n(item: &Item, name: &str) -> Result<i64, StoreError> {
    item.get(name)
        .and_then(|v| v.as_n().ok())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| StoreError::Backend(format!("item without number {name}")))
}

fn json<T: serde::Serialize>(value: &T) -> Result<String, StoreError> {
    serde_json::to_string(value).map_err(|e| StoreError::Backend(format!("encoding: {e}")))
}

fn parse<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, StoreError> {
    serde_json::from_str(text)
        .map_err(|e| StoreError::Backend(format!("decoding a stored item: {e}")))
}

fn owner_sort_key(updated_at: Millis, chat_id: &ChatId) -> String {
    format!("{updated_at:013}#{chat_id}")
}

/// Maps an SDK error: conditional failures are conflicts, throttling is transient.
fn store_error<E: ProvideErrorMetadata + std::fmt::Debug, R: std::fmt::Debug>(
    error: SdkError<E, R>,
) -> StoreError {
    if let SdkError::ServiceError(e) = &error
        && e.err().code() == Some("ConditionalCheckFailedException")
    {
        return StoreError::Conflict("condition failed".into());
    }
    if let SdkError::ServiceError(e) = &error
        && e.err().code() == Some("ValidationException")
        && e.err().message().is_some_and(|m| m.contains("size"))
    {
        return StoreError::TooLarge(e.err().message().unwrap_or_default().into());
    }
    if crate::is_transient(&error) {
        StoreError::Transient(format!("{error:?}"))
    } else {
        StoreError::Backend(format!("{error:?}"))
    }
}

fn chat_from_item(item: &Item) -> Result<Chat, StoreError> {
    Ok(Chat {
        id: ChatId::parse(get_s(item, "chatId")?)
            .map_err(|e| StoreError::Backend(e.to_string()))?,
        owner_id: get_s(item, "ownerId")?.into(),
        title: get_s(item, "title")?.into(),
        model: get_s(item, "model")?.into(),
        created_at: get_n(item, "createdAt")?,
        updated_at: get_n(item, "updatedAt")?,
        message_count: get_n(item, "messageCount")? as u64,
    })
}

fn session_from_item(item: &Item) -> Result<ChatSession, StoreError> {
    let mut session: ChatSession = parse(get_s(item, "session")?)?;
    session.version = get_n(item, "version")? as u64;
    Ok(session)
}

fn event_from_item(run_id: &str, item: &Item) -> Result<StreamEvent, StoreError> {
    Ok(StreamEvent {
        run_id: run_id.into(),
        first_event_id: get_n(item, "firstEventId")? as u64,
        chunks: parse(get_s(item, "chunks")?)?,
        expires_at: get_n(item, "expiresAtMs")?,
    })
}

fn expired(item: &Item, now: Millis) -> bool {
    get_n(item, "expiresAtMs").is_ok_and(|at| at <= now)
}

impl DynamoChatStore {
    pub fn new(client: Client, table: impl Into<String>) -> Self {
        DynamoChatStore {
            client,
            table: table.into(),
        }
    }

    /// Creates the table (keys, GSI `byOwner`, TTL on `expiresAt`), for emulators and
    /// `chatrun serve --backend aws --create-resources`. An existing table is left as it is.
    pub async fn create_table(client: &Client, table: &str) -> Result<(), StoreError> {
        let key = |name: &str| {
            AttributeDefinition::builder()
                .attribute_name(name)
                .attribute_type(ScalarAttributeType::S)
                .build()
                .expect("attribute definition")
        };
        let schema = |name: &str, kind: KeyType| {
            KeySchemaElement::builder()
                .attribute_name(name)
                .key_type(kind)
                .build()
                .expect("key schema")
        };
        let result = client
            .create_table()
            .table_name(table)
            .billing_mode(aws_sdk_dynamodb::types::BillingMode::PayPerRequest)
            .attribute_definitions(key("pk"))
            .attribute_definitions(key("sk"))
            .attribute_definitions(key("gsi1pk"))
            .attribute_definitions(key("gsi1sk"))
            .key_schema(schema("pk", KeyType::Hash))
            .key_schema(schema("sk", KeyType::Range))
            .global_secondary_indexes(
                GlobalSecondaryIndex::builder()
                    .index_name("byOwner")
                    .key_schema(schema("gsi1pk", KeyType::Hash))
                    .key_schema(schema("gsi1sk", KeyType::Range))
                    .projection(
                        Projection::builder()
                            .projection_type(ProjectionType::All)
                            .build(),
                    )
                    .build()
                    .expect("gsi"),
            )
            .send()
            .await;
        match result {
            Ok(_) => {}
            Err(SdkError::ServiceError(e)) if e.err().code() == Some("ResourceInUseException") => {
                return Ok(());
            }
            Err(e) => return Err(store_error(e)),
        }
        client
            .update_time_to_live()
            .table_name(table)
            .time_to_live_specification(
                TimeToLiveSpecification::builder()
                    .enabled(true)
                    .attribute_name("expiresAt")
                    .build()
                    .expect("ttl"),
            )
            .send()
            .await
            .map_err(store_error)?;
        Ok(())
    }

    async fn get(&self, pk: String, sk: &str) -> Result<Option<Item>, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("pk", s(pk))
            .key("sk", s(sk))
            .consistent_read(true)
            .send()
            .await
            .map_err(store_error)?;
        Ok(out.item)
    }

    /// Every item of a Query, following pages.
    async fn query_all(
        &self,
        key_condition: &str,
        values: Vec<(&str, AttributeValue)>,
        forward: bool,
    ) -> Result<Vec<Item>, StoreError> {
        let mut items = Vec::new();
        let mut start: Option<Item> = None;
        loop {
            let mut query = self
                .client
                .query()
                .table_name(&self.table)
                .key_condition_expression(key_condition)
                .consistent_read(true)
                .scan_index_forward(forward)
                .set_exclusive_start_key(start.take());
            for (name, value) in &values {
                query = query.expression_attribute_values(*name, value.clone());
            }
            let out = query.send().await.map_err(store_error)?;
            items.extend(out.items.unwrap_or_default());
            match out.last_evaluated_key {
                Some(key) if !key.is_empty() => start = Some(key),
                _ => return Ok(items),
            }
        }
    }

    /// Deletes items by key, 25 at a time, retrying what DynamoDB leaves unprocessed.
    async fn delete_keys(&self, keys: Vec<(String, String)>) -> Result<(), StoreError> {
        for batch in keys.chunks(25) {
            let mut requests: Vec<WriteRequest> = batch
                .iter()
                .map(|(pk, sk)| {
                    WriteRequest::builder()
                        .delete_request(
                            DeleteRequest::builder()
                                .key("pk", s(pk.clone()))
                                .key("sk", s(sk.clone()))
                                .build()
                                .expect("delete request"),
                        )
                        .build()
                })
                .collect();
            for _ in 0..8 {
                let out = self
                    .client
                    .batch_write_item()
                    .request_items(&self.table, requests)
                    .send()
                    .await
                    .map_err(store_error)?;
                requests = out
                    .unprocessed_items
                    .and_then(|mut m| m.remove(&self.table))
                    .unwrap_or_default();
                if requests.is_empty() {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
        Ok(())
    }
}

fn keys_of(items: &[Item]) -> Vec<(String, String)> {
    items
        .iter()
        .filter_map(|i| {
            Some((
                get_s(i, "pk").ok()?.to_owned(),
                get_s(i, "sk").ok()?.to_owned(),
            ))
        })
        .collect()
}

#[async_trait]
impl ChatStore for DynamoChatStore {
    async fn create_chat(&self, chat: &Chat) -> Result<(), StoreError> {
        self.client
            .put_item()
            .table_name(&self.table)
            .item("pk", s(chat_pk(&chat.id)))
            .item("sk", s("CHAT"))
            .item("chatId", s(chat.id.as_str()))
            .item("ownerId", s(&chat.owner_id))
            .item("title", s(&chat.title))
            .item("model", s(&chat.model))
            .item("createdAt", n(chat.created_at))
            .item("updatedAt", n(chat.updated_at))
            .item("messageCount", n(0))
            .item("gsi1pk", s(format!("OWNER#{}", chat.owner_id)))
            .item("gsi1sk", s(owner_sort_key(chat.updated_at, &chat.id)))
            .condition_expression("attribute_not_exists(pk)")
            .send()
            .await
            .map_err(store_error)?;
        Ok(())
    }

    async fn get_chat(&self, chat_id: &ChatId) -> Result<Option<Chat>, StoreError> {
        self.get(chat_pk(chat_id), "CHAT")
            .await?
            .as_ref()
            .map(chat_from_item)
            .transpose()
    }

    async fn list_chats(
        &self,
        owner_id: &str,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<ChatPage, StoreError> {
        let start = match cursor {
            None => None,
            Some(c) => {
                let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .decode(c)
                    .map_err(|_| StoreError::BadCursor)?;
                let keys: HashMap<String, String> =
                    serde_json::from_slice(&bytes).map_err(|_| StoreError::BadCursor)?;
                let owner_key = format!("OWNER#{owner_id}");
                if keys.get("gsi1pk") != Some(&owner_key) || keys.len() != 4 {
                    return Err(StoreError::BadCursor);
                }
                Some(keys.into_iter().map(|(k, v)| (k, s(v))).collect::<Item>())
            }
        };
        let limit = limit.max(1);
        // One more than a page tells whether another page exists.
        let out = self
            .client
            .query()
            .table_name(&self.table)
            .index_name("byOwner")
            .key_condition_expression("gsi1pk = :o")
            .expression_attribute_values(":o", s(format!("OWNER#{owner_id}")))
            .scan_index_forward(false)
            .limit(limit as i32 + 1)
            .set_exclusive_start_key(start)
            .send()
            .await
            .map_err(store_error)?;
        let items = out.items.unwrap_or_default();
        let more = items.len() > limit;
        let page: Vec<&Item> = items.iter().take(limit).collect();
        let next_cursor = if more {
            let last = page.last().expect("a full page");
            let keys: HashMap<&str, &str> = ["pk", "sk", "gsi1pk", "gsi1sk"]
                .into_iter()
                .map(|k| Ok((k, get_s(last, k)?)))
                .collect::<Result<_, StoreError>>()?;
            Some(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json(&keys)?))
        } else {
            None
        };
        let chats = page
            .into_iter()
            .map(|i| chat_from_item(i).map(|c| ChatSummary::from(&c)))
            .collect::<Result<_, _>>()?;
        Ok(ChatPage { chats, next_cursor })
    }

    async fn rename_chat(
        &self,
        chat_id: &ChatId,
        title: &str,
        now: Millis,
    ) -> Result<Chat, StoreError> {
        let out = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(chat_pk(chat_id)))
            .key("sk", s("CHAT"))
            .update_expression("SET title = :t, updatedAt = :u, gsi1sk = :g")
            .condition_expression("attribute_exists(pk)")
            .expression_attribute_values(":t", s(title))
            .expression_attribute_values(":u", n(now))
            .expression_attribute_values(":g", s(owner_sort_key(now, chat_id)))
            .return_values(aws_sdk_dynamodb::types::ReturnValue::AllNew)
            .send()
            .await
            .map_err(|e| match store_error(e) {
                StoreError::Conflict(_) => StoreError::NotFound(format!("chat {chat_id}")),
                other => other,
            })?;
        chat_from_item(&out.attributes.unwrap_or_default())
    }

    async fn delete_chat(&self, chat_id: &ChatId) -> Result<(), StoreError> {
        let items = self
            .query_all("pk = :p", vec![(":p", s(chat_pk(chat_id)))], true)
            .await?;
        if let Some(session) = items
            .iter()
            .find(|i| get_s(i, "sk").ok() == Some("SESSION"))
        {
            let run_id = session_from_item(session)?.run_id;
            let events = self
                .query_all("pk = :p", vec![(":p", s(format!("RUN#{run_id}")))], true)
                .await?;
            self.delete_keys(keys_of(&events)).await?;
        }
        self.delete_keys(keys_of(&items)).await
    }

    async fn append_message(
        &self,
        chat_id: &ChatId,
        message: &UIMessage,
        now: Millis,
    ) -> Result<(), StoreError> {
        let body = json(message)?;
        if body.len() > MAX_MESSAGE_BYTES {
            return Err(StoreError::TooLarge(format!(
                "a message of {} bytes does not fit in one item",
                body.len()
            )));
        }
        let pk = chat_pk(chat_id);
        for _ in 0..8 {
            let chat = self
                .get_chat(chat_id)
                .await?
                .ok_or_else(|| StoreError::NotFound(format!("chat {chat_id}")))?;
            let seq = chat.message_count;
            let update = Update::builder()
                .table_name(&self.table)
                .key("pk", s(&pk))
                .key("sk", s("CHAT"))
                .update_expression("SET messageCount = :next, updatedAt = :u, gsi1sk = :g")
                .condition_expression("attribute_exists(pk) AND messageCount = :count")
                .expression_attribute_values(":next", n(seq + 1))
                .expression_attribute_values(":count", n(seq))
                .expression_attribute_values(":u", n(now))
                .expression_attribute_values(":g", s(owner_sort_key(now, chat_id)))
                .build()
                .expect("update");
            let put_message = Put::builder()
                .table_name(&self.table)
                .item("pk", s(&pk))
                .item("sk", s(format!("MSG#{seq:010}")))
                .item("id", s(&message.id))
                .item(
                    "role",
                    s(serde_json::to_value(message.role)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_owned))
                        .unwrap_or_default()),
                )
                .item("message", s(&body))
                .item("createdAt", n(now))
                .condition_expression("attribute_not_exists(pk)")
                .build()
                .expect("put");
            let put_marker = Put::builder()
                .table_name(&self.table)
                .item("pk", s(&pk))
                .item("sk", s(format!("MSGID#{}", message.id)))
                .item("seq", n(seq))
                .condition_expression("attribute_not_exists(pk)")
                .build()
                .expect("put");
            let result = self
                .client
                .transact_write_items()
                .transact_items(TransactWriteItem::builder().update(update).build())
                .transact_items(TransactWriteItem::builder().put(put_message).build())
                .transact_items(TransactWriteItem::builder().put(put_marker).build())
                .send()
                .await;
            match result {
                Ok(_) => return Ok(()),
                Err(SdkError::ServiceError(e))
                    if e.err().code() == Some("TransactionCanceledException") =>
                {
                    let reasons: Vec<Option<String>> = match e.err() {
                        aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError::TransactionCanceledException(t) => t
                            .cancellation_reasons()
                            .iter()
                            .map(|r| r.code().map(str::to_owned))
                            .collect(),
                        _ => Vec::new(),
                    };
                    let failed = |i: usize| {
                        reasons.get(i).and_then(|r| r.as_deref()) == Some("ConditionalCheckFailed")
                    };
                    if failed(2) {
                        return Err(StoreError::Conflict(format!(
                            "message {} exists",
                            message.id
                        )));
                    }
                    // Another append took this sequence number: read the count again.
                    continue;
                }
                Err(e) => return Err(store_error(e)),
            }
        }
        Err(StoreError::Transient("appends kept colliding".into()))
    }

    async fn messages(&self, chat_id: &ChatId) -> Result<Vec<UIMessage>, StoreError> {
        self.query_all(
            "pk = :p AND begins_with(sk, :m)",
            vec![(":p", s(chat_pk(chat_id))), (":m", s("MSG#"))],
            true,
        )
        .await?
        .iter()
        .map(|i| parse(get_s(i, "message")?))
        .collect()
    }

    async fn delete_messages_from(
        &self,
        chat_id: &ChatId,
        message_id: &str,
    ) -> Result<u64, StoreError> {
        let pk = chat_pk(chat_id);
        let marker = self
            .get(pk.clone(), &format!("MSGID#{message_id}"))
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("message {message_id}")))?;
        let seq = get_n(&marker, "seq")?;
        let doomed = self
            .query_all(
                "pk = :p AND sk BETWEEN :from AND :to",
                vec![
                    (":p", s(&pk)),
                    (":from", s(format!("MSG#{seq:010}"))),
                    (":to", s("MSG#9999999999")),
                ],
                true,
            )
            .await?;
        let mut keys = keys_of(&doomed);
        for item in &doomed {
            keys.push((pk.clone(), format!("MSGID#{}", get_s(item, "id")?)));
        }
        self.delete_keys(keys).await?;
        self.client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(&pk))
            .key("sk", s("CHAT"))
            .update_expression("SET messageCount = :c")
            .expression_attribute_values(":c", n(seq))
            .condition_expression("attribute_exists(pk)")
            .send()
            .await
            .map_err(store_error)?;
        Ok(doomed.len() as u64)
    }

    async fn get_session(&self, chat_id: &ChatId) -> Result<Option<ChatSession>, StoreError> {
        self.get(chat_pk(chat_id), "SESSION")
            .await?
            .as_ref()
            .map(session_from_item)
            .transpose()
    }

    async fn put_session(
        &self,
        session: &ChatSession,
        expected_version: Option<u64>,
    ) -> Result<ChatSession, StoreError> {
        let mut stored = session.clone();
        stored.version = expected_version.map_or(1, |v| v + 1);
        let keep_until = stored.expires_at + SESSION_GRACE_MS;
        let mut put = self
            .client
            .put_item()
            .table_name(&self.table)
            .item("pk", s(chat_pk(&session.chat_id)))
            .item("sk", s("SESSION"))
            .item("session", s(json(&stored)?))
            .item("runId", s(&stored.run_id))
            .item("streaming", AttributeValue::Bool(stored.streaming))
            .item("lastEventId", n(stored.last_event_id))
            .item("version", n(stored.version))
            .item("expiresAt", n(keep_until / 1000));
        put = match expected_version {
            None => put.condition_expression("attribute_not_exists(pk)"),
            Some(v) => put
                .condition_expression("version = :v")
                .expression_attribute_values(":v", n(v)),
        };
        put.send().await.map_err(store_error)?;
        Ok(stored)
    }

    async fn append_event(&self, event: &StreamEvent) -> Result<(), StoreError> {
        self.client
            .put_item()
            .table_name(&self.table)
            .item("pk", s(format!("RUN#{}", event.run_id)))
            .item("sk", s(format!("EVT#{:012}", event.first_event_id)))
            .item("firstEventId", n(event.first_event_id))
            .item("lastEventId", n(event.last_event_id()))
            .item("chunks", s(json(&event.chunks)?))
            .item("expiresAtMs", n(event.expires_at))
            .item("expiresAt", n(event.expires_at / 1000))
            .condition_expression("attribute_not_exists(pk)")
            .send()
            .await
            .map_err(store_error)?;
        Ok(())
    }

    async fn events_after(
        &self,
        run_id: &str,
        after_event_id: u64,
        now: Millis,
    ) -> Result<Vec<StreamEvent>, StoreError> {
        let pk = format!("RUN#{run_id}");
        let bound = format!("EVT#{after_event_id:012}");
        // The event that holds `after + 1` may start at or before `after`.
        let holding = self
            .client
            .query()
            .table_name(&self.table)
            .key_condition_expression("pk = :p AND sk <= :b")
            .expression_attribute_values(":p", s(&pk))
            .expression_attribute_values(":b", s(&bound))
            .scan_index_forward(false)
            .limit(1)
            .consistent_read(true)
            .send()
            .await
            .map_err(store_error)?
            .items
            .unwrap_or_default();
        let later = self
            .query_all(
                "pk = :p AND sk > :b",
                vec![(":p", s(&pk)), (":b", s(&bound))],
                true,
            )
            .await?;
        holding
            .iter()
            .filter(|i| get_n(i, "lastEventId").is_ok_and(|l| l as u64 > after_event_id))
            .chain(later.iter())
            .filter(|i| !expired(i, now))
            .map(|i| event_from_item(run_id, i))
            .collect()
    }

    async fn last_event_id(&self, run_id: &str, now: Millis) -> Result<u64, StoreError> {
        let items = self
            .client
            .query()
            .table_name(&self.table)
            .key_condition_expression("pk = :p")
            .expression_attribute_values(":p", s(format!("RUN#{run_id}")))
            .scan_index_forward(false)
            .limit(1)
            .consistent_read(true)
            .send()
            .await
            .map_err(store_error)?
            .items
            .unwrap_or_default();
        // Events of a run expire in the order they were written: if the newest is gone, all are.
        Ok(items
            .first()
            .filter(|i| !expired(i, now))
            .map(|i| get_n(i, "lastEventId"))
            .transpose()?
            .unwrap_or(0) as u64)
    }

    async fn put_connection(&self, connection: &Connection) -> Result<(), StoreError> {
        self.client
            .put_item()
            .table_name(&self.table)
            .item("pk", s(format!("CONN#{}", connection.connection_id)))
            .item("sk", s("CONN"))
            .item("connection", s(json(connection)?))
            .item("subscriptions", AttributeValue::L(Vec::new()))
            .item("expiresAtMs", n(connection.expires_at))
            .item("expiresAt", n(connection.expires_at / 1000))
            .send()
            .await
            .map_err(store_error)?;
        Ok(())
    }

    async fn get_connection(
        &self,
        connection_id: &str,
        now: Millis,
    ) -> Result<Option<Connection>, StoreError> {
        match self.get(format!("CONN#{connection_id}"), "CONN").await? {
            Some(item) if !expired(&item, now) => Ok(Some(parse(get_s(&item, "connection")?)?)),
            _ => Ok(None),
        }
    }

    async fn delete_connection(&self, connection_id: &str) -> Result<(), StoreError> {
        let pk = format!("CONN#{connection_id}");
        let Some(item) = self.get(pk.clone(), "CONN").await? else {
            return Ok(());
        };
        let mut keys: Vec<(String, String)> = subscriptions_of(&item)
            .into_iter()
            .map(|chat| (format!("CHAT#{chat}"), format!("SUB#{connection_id}")))
            .collect();
        keys.push((pk, "CONN".into()));
        self.delete_keys(keys).await
    }

    async fn subscribe(
        &self,
        chat_id: &ChatId,
        connection_id: &str,
        now: Millis,
        expires_at: Millis,
    ) -> Result<(), StoreError> {
        self.client
            .put_item()
            .table_name(&self.table)
            .item("pk", s(chat_pk(chat_id)))
            .item("sk", s(format!("SUB#{connection_id}")))
            .item("connectionId", s(connection_id))
            .item("subscribedAt", n(now))
            .item("expiresAtMs", n(expires_at))
            .item("expiresAt", n(expires_at / 1000))
            .send()
            .await
            .map_err(store_error)?;
        // The connection keeps its subscriptions, oldest first: the limit and $disconnect need
        // them without a scan.
        let pk = format!("CONN#{connection_id}");
        let Some(item) = self.get(pk.clone(), "CONN").await? else {
            return Ok(());
        };
        let mut chats = subscriptions_of(&item);
        chats.retain(|c| c != chat_id.as_str());
        chats.push(chat_id.to_string());
        let dropped: Vec<String> = if chats.len() > MAX_SUBSCRIPTIONS_PER_CONNECTION {
            chats
                .drain(..chats.len() - MAX_SUBSCRIPTIONS_PER_CONNECTION)
                .collect()
        } else {
            Vec::new()
        };
        self.client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(pk))
            .key("sk", s("CONN"))
            .update_expression("SET subscriptions = :l")
            .condition_expression("attribute_exists(pk)")
            .expression_attribute_values(
                ":l",
                AttributeValue::L(chats.into_iter().map(s).collect()),
            )
            .send()
            .await
            .map_err(store_error)?;
        let keys = dropped
            .into_iter()
            .map(|chat| (format!("CHAT#{chat}"), format!("SUB#{connection_id}")))
            .collect();
        self.delete_keys(keys).await
    }

    async fn unsubscribe(&self, chat_id: &ChatId, connection_id: &str) -> Result<(), StoreError> {
        self.delete_keys(vec![(chat_pk(chat_id), format!("SUB#{connection_id}"))])
            .await
    }

    async fn subscribers(&self, chat_id: &ChatId, now: Millis) -> Result<Vec<String>, StoreError> {
        let items = self
            .query_all(
                "pk = :p AND begins_with(sk, :s)",
                vec![(":p", s(chat_pk(chat_id))), (":s", s("SUB#"))],
                true,
            )
            .await?;
        items
            .iter()
            .filter(|i| !expired(i, now))
            .map(|i| get_s(i, "connectionId").map(str::to_owned))
            .collect()
    }

    /// One Query reads both: `SESSION` sorts between the `MSG#` items and the `SUB#` items.
    async fn session_and_subscribers(
        &self,
        chat_id: &ChatId,
        now: Millis,
    ) -> Result<(Option<ChatSession>, Vec<String>), StoreError> {
        let items = self
            .query_all(
                "pk = :p AND sk BETWEEN :from AND :to",
                vec![
                    (":p", s(chat_pk(chat_id))),
                    (":from", s("SESSION")),
                    (":to", s("SUB$")),
                ],
                true,
            )
            .await?;
        let mut session = None;
        let mut subscribers = Vec::new();
        for item in &items {
            match get_s(item, "sk")? {
                "SESSION" => session = Some(session_from_item(item)?),
                sk if sk.starts_with("SUB#") && !expired(item, now) => {
                    subscribers.push(get_s(item, "connectionId")?.to_owned())
                }
                _ => {}
            }
        }
        Ok((session, subscribers))
    }
}

fn subscriptions_of(item: &Item) -> Vec<String> {
    item.get("subscriptions")
        .and_then(|v| v.as_l().ok())
        .map(|l| l.iter().filter_map(|v| v.as_s().ok().cloned()).collect())
        .unwrap_or_default()
}
