//! `DynamoChatStore`: the `ChatStore` on one DynamoDB table (DESIGN §3).
//!
//! | item | pk | sk |
//! |---|---|---|
//! | Chat | `CHAT#{chatId}` | `CHAT` (GSI `byOwner`: `OWNER#{ownerId}`, `{updatedAt:013}#{chatId}`) |
//! | Message | `CHAT#{chatId}` | `MSG#{seq:010}` |
//! | message id marker | `CHAT#{chatId}` | `MSGID#{messageId}` (makes a message id unique) |
//! | ChatSession | `CHAT#{chatId}` | `SESSION` |
//! | Subscription | `CHAT#{chatId}` | `SUB#{connectionId}` |
//! | its twin, on the connection | `CONN#{connectionId}` | `SUB#{chatId}` (`subscribedAt`) |
//! | run marker (every run the chat had) | `CHAT#{chatId}` | `RUN#{runId}` |
//! | StreamEvent | `RUN#{runId}` | `EVT#{firstEventId:012}` |
//! | Connection | `CONN#{connectionId}` | `CONN` |
//! | usage window (limits) | `LIMIT#{key}` | `WINDOW` (`windowEnd`, `hits`) |
//! | usage slots (limits) | `LIMIT#{key}` | `SLOTS` (`slots`: slot id -> expiry, `version`) |
//!
//! Messages are one item each so a long chat never meets the 400 KB item limit; the history is
//! one paginated Query. Writes that must happen once are conditional. `expiresAt` (epoch seconds)
//! drives DynamoDB's TTL, which deletes late: reads compare `expiresAtMs` with the clock.
//!
//! A subscription is two items written in one transaction: the chat's (what run-turn reads to
//! fan out) and its twin in the connection's partition (what the per-connection limit and
//! `$disconnect` read). No list is read, changed and written back, so two subscribes at once
//! cannot lose one. Every session write also records its run in the chat's partition, so
//! deleting a chat finds and deletes the events of all its runs, not only the current one.
//!
//! The limits' counters (module `usage`) live in the same table, so every function sees one count.
//!
//! Key shapes and attribute names live in [`keys`] and [`attr`], nowhere else.

use std::collections::HashMap;
use std::sync::Arc;

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
use chatrun_core::history::{MessagePage, PageLimits, PageReader};
use chatrun_core::message::UIMessage;
use chatrun_core::ports::{ChatStore, MAX_SUBSCRIPTIONS_PER_CONNECTION, TurnSignals};

/// The largest message body stored in one item (DynamoDB's item limit is 400 KB).
const MAX_MESSAGE_BYTES: usize = 380 * 1024;
/// Session items outlive their expiry by a day, so `GET /api/chats/{id}` can still show them.
const SESSION_GRACE_MS: i64 = 24 * 3600 * 1000;

type Item = HashMap<String, AttributeValue>;

/// Every key of the table, built from typed ids.
pub mod keys {
    use chatrun_core::domain::ChatId;

    /// The partition key attribute.
    pub const PK: &str = "pk";
    /// The sort key attribute.
    pub const SK: &str = "sk";
    /// The `byOwner` index and its keys.
    pub const OWNER_INDEX: &str = "byOwner";
    pub const GSI1_PK: &str = "gsi1pk";
    pub const GSI1_SK: &str = "gsi1sk";

    /// A full key: partition and sort.
    #[derive(Debug, Clone, PartialEq, Eq, Hash)]
    pub struct Key {
        pub pk: String,
        pub sk: String,
    }

    pub fn chat_pk(chat_id: &ChatId) -> String {
        chat_pk_of(chat_id.as_str())
    }
    fn chat_pk_of(chat_id: &str) -> String {
        format!("CHAT#{chat_id}")
    }
    pub fn chat(chat_id: &ChatId) -> Key {
        Key {
            pk: chat_pk(chat_id),
            sk: CHAT_SK.into(),
        }
    }
    pub const CHAT_SK: &str = "CHAT";
    pub const SESSION_SK: &str = "SESSION";
    pub fn session(chat_id: &ChatId) -> Key {
        Key {
            pk: chat_pk(chat_id),
            sk: SESSION_SK.into(),
        }
    }
    /// Messages sort by sequence number.
    pub const MESSAGE_PREFIX: &str = "MSG#";
    pub fn message_sk(seq: u64) -> String {
        format!("{MESSAGE_PREFIX}{seq:010}")
    }
    /// Above every message's sort key.
    pub const LAST_MESSAGE_SK: &str = "MSG#9999999999";
    pub fn message_id(chat_id: &ChatId, message_id: &str) -> Key {
        Key {
            pk: chat_pk(chat_id),
            sk: format!("MSGID#{message_id}"),
        }
    }
    /// A chat's subscriptions and a connection's twins share this prefix.
    pub const SUBSCRIPTION_PREFIX: &str = "SUB#";
    /// Just above every `SUB#` sort key (`$` follows `#`): `SESSION..SUB$` holds the session
    /// and the subscriptions, and nothing else, in one Query.
    pub const AFTER_SUBSCRIPTIONS: &str = "SUB$";
    pub fn subscription(chat_id: &ChatId, connection_id: &str) -> Key {
        subscription_of(chat_id.as_str(), connection_id)
    }
    /// The chat's half of a subscription, from a chat id read back from the connection's half.
    pub fn subscription_of(chat_id: &str, connection_id: &str) -> Key {
        Key {
            pk: chat_pk_of(chat_id),
            sk: format!("{SUBSCRIPTION_PREFIX}{connection_id}"),
        }
    }
    pub fn connection_pk(connection_id: &str) -> String {
        format!("CONN#{connection_id}")
    }
    pub const CONNECTION_SK: &str = "CONN";
    pub fn connection(connection_id: &str) -> Key {
        Key {
            pk: connection_pk(connection_id),
            sk: CONNECTION_SK.into(),
        }
    }
    /// The twin of a subscription, in the connection's partition.
    pub fn connection_subscription(connection_id: &str, chat_id: &str) -> Key {
        Key {
            pk: connection_pk(connection_id),
            sk: format!("{SUBSCRIPTION_PREFIX}{chat_id}"),
        }
    }
    /// Run markers in a chat's partition.
    pub const RUN_PREFIX: &str = "RUN#";
    pub fn run_marker(chat_id: &ChatId, run_id: &str) -> Key {
        Key {
            pk: chat_pk(chat_id),
            sk: format!("{RUN_PREFIX}{run_id}"),
        }
    }
    pub fn run_pk(run_id: &str) -> String {
        format!("RUN#{run_id}")
    }
    pub fn event_sk(first_event_id: u64) -> String {
        format!("EVT#{first_event_id:012}")
    }
    pub fn owner_pk(owner_id: &str) -> String {
        format!("OWNER#{owner_id}")
    }
    /// Newest first in the `byOwner` index.
    pub fn owner_sk(updated_at: i64, chat_id: &ChatId) -> String {
        format!("{updated_at:013}#{chat_id}")
    }
    fn limit_pk(key: &str) -> String {
        format!("LIMIT#{key}")
    }
    /// The current window of a usage counter.
    pub fn usage_window(key: &str) -> Key {
        Key {
            pk: limit_pk(key),
            sk: "WINDOW".into(),
        }
    }
    /// The held slots of a usage counter.
    pub fn usage_slots(key: &str) -> Key {
        Key {
            pk: limit_pk(key),
            sk: "SLOTS".into(),
        }
    }
}

/// Every attribute name the items carry besides the keys.
pub mod attr {
    pub const CHAT_ID: &str = "chatId";
    pub const OWNER_ID: &str = "ownerId";
    pub const TITLE: &str = "title";
    pub const MODEL: &str = "model";
    pub const CREATED_AT: &str = "createdAt";
    pub const UPDATED_AT: &str = "updatedAt";
    pub const MESSAGE_COUNT: &str = "messageCount";
    pub const ID: &str = "id";
    pub const ROLE: &str = "role";
    pub const MESSAGE: &str = "message";
    pub const SEQ: &str = "seq";
    pub const SESSION: &str = "session";
    pub const RUN_ID: &str = "runId";
    pub const STREAMING: &str = "streaming";
    pub const LAST_EVENT_ID: &str = "lastEventId";
    pub const FIRST_EVENT_ID: &str = "firstEventId";
    pub const VERSION: &str = "version";
    pub const CHUNKS: &str = "chunks";
    pub const CONNECTION: &str = "connection";
    pub const CONNECTION_ID: &str = "connectionId";
    pub const SUBSCRIBED_AT: &str = "subscribedAt";
    /// Subscriptions as a list on the connection item: written by earlier versions, read only
    /// to clean up after them.
    pub const LEGACY_SUBSCRIPTIONS: &str = "subscriptions";
    /// A usage window's end (epoch ms) and the actions counted in it.
    pub const WINDOW_END: &str = "windowEnd";
    pub const HITS: &str = "hits";
    /// Held usage slots: a map of slot id to expiry (epoch ms).
    pub const SLOTS: &str = "slots";
    /// DynamoDB's TTL attribute (epoch seconds).
    pub const EXPIRES_AT: &str = "expiresAt";
    /// The same instant in milliseconds, which reads compare with the clock.
    pub const EXPIRES_AT_MS: &str = "expiresAtMs";
}

use keys::Key;

mod usage;

/// Attempts at a batch delete before it reports what it could not delete.
const DELETE_ATTEMPTS: u32 = 8;
/// Run markers outlive their session by the stream events' TTL and a day.
const RUN_MARKER_GRACE_MS: i64 = 48 * 3600 * 1000;

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

fn key_of(key: &Key) -> Item {
    HashMap::from([
        (keys::PK.to_owned(), s(&key.pk)),
        (keys::SK.to_owned(), s(&key.sk)),
    ])
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
        id: ChatId::parse(get_s(item, attr::CHAT_ID)?)
            .map_err(|e| StoreError::Backend(e.to_string()))?,
        owner_id: get_s(item, attr::OWNER_ID)?.into(),
        title: get_s(item, attr::TITLE)?.into(),
        model: get_s(item, attr::MODEL)?.into(),
        created_at: get_n(item, attr::CREATED_AT)?,
        updated_at: get_n(item, attr::UPDATED_AT)?,
        message_count: get_n(item, attr::MESSAGE_COUNT)? as u64,
    })
}

fn session_from_item(item: &Item) -> Result<ChatSession, StoreError> {
    let mut session: ChatSession = parse(get_s(item, attr::SESSION)?)?;
    session.version = get_n(item, attr::VERSION)? as u64;
    Ok(session)
}

fn event_from_item(run_id: &str, item: &Item) -> Result<StreamEvent, StoreError> {
    Ok(StreamEvent {
        run_id: run_id.into(),
        first_event_id: get_n(item, attr::FIRST_EVENT_ID)? as u64,
        chunks: parse(get_s(item, attr::CHUNKS)?)?,
        expires_at: get_n(item, attr::EXPIRES_AT_MS)?,
    })
}

fn expired(item: &Item, now: Millis) -> bool {
    get_n(item, attr::EXPIRES_AT_MS).is_ok_and(|at| at <= now)
}

/// The reasons DynamoDB gives for a cancelled transaction, one per item (`None`: that item
/// was fine), or `None` when the error is not a cancelled transaction.
fn cancellation_reasons<R>(
    error: &SdkError<aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError, R>,
) -> Option<Vec<Option<String>>> {
    use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
    match error {
        SdkError::ServiceError(e) => match e.err() {
            TransactWriteItemsError::TransactionCanceledException(t) => Some(
                t.cancellation_reasons()
                    .iter()
                    .map(|r| r.code().map(str::to_owned).filter(|c| c != "None"))
                    .collect(),
            ),
            _ => None,
        },
        _ => None,
    }
}

/// Runs one batch-delete attempt after another on what the last one left unprocessed, with a
/// growing pause, until nothing is left or [`DELETE_ATTEMPTS`] have run.
/// # Errors
/// What an attempt fails with; `Transient` naming how many items are still there when the
/// attempts run out (never a silent success).
async fn delete_until_done<T, F, Fut>(mut pending: Vec<T>, mut attempt: F) -> Result<(), StoreError>
where
    F: FnMut(Vec<T>) -> Fut,
    Fut: std::future::Future<Output = Result<Vec<T>, StoreError>>,
{
    let mut pause = std::time::Duration::from_millis(25);
    for round in 0..DELETE_ATTEMPTS {
        if pending.is_empty() {
            return Ok(());
        }
        if round > 0 {
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(std::time::Duration::from_secs(1));
        }
        pending = attempt(pending).await?;
    }
    if pending.is_empty() {
        Ok(())
    } else {
        Err(StoreError::Transient(format!(
            "{} items were left undeleted after {DELETE_ATTEMPTS} attempts",
            pending.len()
        )))
    }
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
            .attribute_definitions(key(keys::PK))
            .attribute_definitions(key(keys::SK))
            .attribute_definitions(key(keys::GSI1_PK))
            .attribute_definitions(key(keys::GSI1_SK))
            .key_schema(schema(keys::PK, KeyType::Hash))
            .key_schema(schema(keys::SK, KeyType::Range))
            .global_secondary_indexes(
                GlobalSecondaryIndex::builder()
                    .index_name(keys::OWNER_INDEX)
                    .key_schema(schema(keys::GSI1_PK, KeyType::Hash))
                    .key_schema(schema(keys::GSI1_SK, KeyType::Range))
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
                    .attribute_name(attr::EXPIRES_AT)
                    .build()
                    .expect("ttl"),
            )
            .send()
            .await
            .map_err(store_error)?;
        Ok(())
    }

    async fn get(&self, key: &Key) -> Result<Option<Item>, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(key_of(key)))
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

    /// Every item of one partition (`pk = :p`).
    async fn partition(&self, pk: &str) -> Result<Vec<Item>, StoreError> {
        self.query_all("pk = :p", vec![(":p", s(pk))], true).await
    }

    /// Items of one partition whose sort key starts with `prefix`.
    async fn partition_prefix(&self, pk: &str, prefix: &str) -> Result<Vec<Item>, StoreError> {
        self.query_all(
            "pk = :p AND begins_with(sk, :s)",
            vec![(":p", s(pk)), (":s", s(prefix))],
            true,
        )
        .await
    }

    /// Deletes items by key, 25 at a time, retrying what DynamoDB leaves unprocessed.
    /// # Errors
    /// A failed request, or items still there after [`DELETE_ATTEMPTS`]: the caller learns the
    /// delete did not happen (it used to answer success regardless).
    async fn delete_keys(&self, keys: Vec<Key>) -> Result<(), StoreError> {
        for batch in keys.chunks(25) {
            let requests: Vec<WriteRequest> = batch
                .iter()
                .map(|key| {
                    WriteRequest::builder()
                        .delete_request(
                            DeleteRequest::builder()
                                .set_key(Some(key_of(key)))
                                .build()
                                .expect("delete request"),
                        )
                        .build()
                })
                .collect();
            delete_until_done(requests, |requests| async move {
                let out = self
                    .client
                    .batch_write_item()
                    .request_items(&self.table, requests)
                    .send()
                    .await
                    .map_err(store_error)?;
                Ok(out
                    .unprocessed_items
                    .and_then(|mut m| m.remove(&self.table))
                    .unwrap_or_default())
            })
            .await?;
        }
        Ok(())
    }

    /// Runs a transaction, mapping a cancellation: `Conflict` when item `conflict_at` failed its
    /// condition, `Transient` for a clash with another transaction.
    async fn transact(
        &self,
        items: Vec<TransactWriteItem>,
        conflict_at: usize,
    ) -> Result<(), StoreError> {
        let result = self
            .client
            .transact_write_items()
            .set_transact_items(Some(items))
            .send()
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(error) => match cancellation_reasons(&error) {
                Some(reasons) => {
                    let reason = |i: usize| reasons.get(i).cloned().flatten();
                    if reason(conflict_at).as_deref() == Some("ConditionalCheckFailed") {
                        Err(StoreError::Conflict("condition failed".into()))
                    } else {
                        Err(StoreError::Transient(format!(
                            "transaction cancelled: {reasons:?}"
                        )))
                    }
                }
                None => Err(store_error(error)),
            },
        }
    }
}

fn keys_of(items: &[Item]) -> Vec<Key> {
    items
        .iter()
        .filter_map(|i| {
            Some(Key {
                pk: get_s(i, keys::PK).ok()?.to_owned(),
                sk: get_s(i, keys::SK).ok()?.to_owned(),
            })
        })
        .collect()
}

fn put(key: &Key) -> aws_sdk_dynamodb::types::builders::PutBuilder {
    Put::builder()
        .item(keys::PK, s(&key.pk))
        .item(keys::SK, s(&key.sk))
}

#[async_trait]
impl ChatStore for DynamoChatStore {
    async fn create_chat(&self, chat: &Chat) -> Result<(), StoreError> {
        let key = keys::chat(&chat.id);
        self.client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(key_of(&key)))
            .item(attr::CHAT_ID, s(chat.id.as_str()))
            .item(attr::OWNER_ID, s(&chat.owner_id))
            .item(attr::TITLE, s(&chat.title))
            .item(attr::MODEL, s(&chat.model))
            .item(attr::CREATED_AT, n(chat.created_at))
            .item(attr::UPDATED_AT, n(chat.updated_at))
            .item(attr::MESSAGE_COUNT, n(0))
            .item(keys::GSI1_PK, s(keys::owner_pk(&chat.owner_id)))
            .item(keys::GSI1_SK, s(keys::owner_sk(chat.updated_at, &chat.id)))
            .condition_expression("attribute_not_exists(pk)")
            .send()
            .await
            .map_err(store_error)?;
        Ok(())
    }

    async fn get_chat(&self, chat_id: &ChatId) -> Result<Option<Chat>, StoreError> {
        self.get(&keys::chat(chat_id))
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
        let owner_key = keys::owner_pk(owner_id);
        let cursor_keys = [keys::PK, keys::SK, keys::GSI1_PK, keys::GSI1_SK];
        let start = match cursor {
            None => None,
            Some(c) => {
                let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .decode(c)
                    .map_err(|_| StoreError::BadCursor)?;
                let keys: HashMap<String, String> =
                    serde_json::from_slice(&bytes).map_err(|_| StoreError::BadCursor)?;
                if keys.get(keys::GSI1_PK) != Some(&owner_key)
                    || keys.len() != cursor_keys.len()
                    || !cursor_keys.iter().all(|k| keys.contains_key(*k))
                {
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
            .index_name(keys::OWNER_INDEX)
            .key_condition_expression("gsi1pk = :o")
            .expression_attribute_values(":o", s(&owner_key))
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
            let keys: HashMap<&str, &str> = cursor_keys
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
            .set_key(Some(key_of(&keys::chat(chat_id))))
            .update_expression("SET #title = :t, #updated = :u, #gsk = :g")
            .condition_expression("attribute_exists(pk)")
            .expression_attribute_names("#title", attr::TITLE)
            .expression_attribute_names("#updated", attr::UPDATED_AT)
            .expression_attribute_names("#gsk", keys::GSI1_SK)
            .expression_attribute_values(":t", s(title))
            .expression_attribute_values(":u", n(now))
            .expression_attribute_values(":g", s(keys::owner_sk(now, chat_id)))
            .return_values(aws_sdk_dynamodb::types::ReturnValue::AllNew)
            .send()
            .await
            .map_err(|e| match store_error(e) {
                StoreError::Conflict(_) => StoreError::NotFound(format!("chat {chat_id}")),
                other => other,
            })?;
        chat_from_item(&out.attributes.unwrap_or_default())
    }

    async fn set_chat_model(&self, chat_id: &ChatId, model: &str) -> Result<Chat, StoreError> {
        let out = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key_of(&keys::chat(chat_id))))
            .update_expression("SET #model = :m")
            .condition_expression("attribute_exists(pk)")
            .expression_attribute_names("#model", attr::MODEL)
            .expression_attribute_values(":m", s(model))
            .return_values(aws_sdk_dynamodb::types::ReturnValue::AllNew)
            .send()
            .await
            .map_err(|e| match store_error(e) {
                StoreError::Conflict(_) => StoreError::NotFound(format!("chat {chat_id}")),
                other => other,
            })?;
        chat_from_item(&out.attributes.unwrap_or_default())
    }

    /// Deletes the events of every run the chat had (its run markers and its session name
    /// them), then the chat's own items (messages, session, subscriptions, markers) and the
    /// subscriptions' twins. A failure leaves the chat there to delete again.
    async fn delete_chat(&self, chat_id: &ChatId) -> Result<(), StoreError> {
        let items = self.partition(&keys::chat_pk(chat_id)).await?;
        let mut runs: Vec<String> = Vec::new();
        let mut twins: Vec<Key> = Vec::new();
        for item in &items {
            let sk = get_s(item, keys::SK)?;
            if sk == keys::SESSION_SK {
                runs.push(session_from_item(item)?.run_id);
            } else if let Some(run) = sk.strip_prefix(keys::RUN_PREFIX) {
                runs.push(run.to_owned());
            } else if let Some(connection_id) = sk.strip_prefix(keys::SUBSCRIPTION_PREFIX) {
                twins.push(keys::connection_subscription(
                    connection_id,
                    chat_id.as_str(),
                ));
            }
        }
        runs.sort();
        runs.dedup();
        for run in &runs {
            let events = self.partition(&keys::run_pk(run)).await?;
            self.delete_keys(keys_of(&events)).await?;
        }
        self.delete_keys(twins).await?;
        // The chat item goes last: while it exists, a retried delete finds everything again.
        let (chat_items, rest): (Vec<Item>, Vec<Item>) = items
            .into_iter()
            .partition(|i| get_s(i, keys::SK).ok() == Some(keys::CHAT_SK));
        self.delete_keys(keys_of(&rest)).await?;
        self.delete_keys(keys_of(&chat_items)).await
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
        let chat_key = keys::chat(chat_id);
        for _ in 0..8 {
            let chat = self
                .get_chat(chat_id)
                .await?
                .ok_or_else(|| StoreError::NotFound(format!("chat {chat_id}")))?;
            let seq = chat.message_count;
            let update = Update::builder()
                .table_name(&self.table)
                .set_key(Some(key_of(&chat_key)))
                .update_expression("SET #count = :next, #updated = :u, #gsk = :g")
                .condition_expression("attribute_exists(pk) AND #count = :count")
                .expression_attribute_names("#count", attr::MESSAGE_COUNT)
                .expression_attribute_names("#updated", attr::UPDATED_AT)
                .expression_attribute_names("#gsk", keys::GSI1_SK)
                .expression_attribute_values(":next", n(seq + 1))
                .expression_attribute_values(":count", n(seq))
                .expression_attribute_values(":u", n(now))
                .expression_attribute_values(":g", s(keys::owner_sk(now, chat_id)))
                .build()
                .expect("update");
            let put_message = put(&Key {
                pk: chat_key.pk.clone(),
                sk: keys::message_sk(seq),
            })
            .table_name(&self.table)
            .item(attr::ID, s(&message.id))
            .item(
                attr::ROLE,
                s(serde_json::to_value(message.role)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default()),
            )
            .item(attr::MESSAGE, s(&body))
            .item(attr::CREATED_AT, n(now))
            .condition_expression("attribute_not_exists(pk)")
            .build()
            .expect("put");
            let put_marker = put(&keys::message_id(chat_id, &message.id))
                .table_name(&self.table)
                .item(attr::SEQ, n(seq))
                .condition_expression("attribute_not_exists(pk)")
                .build()
                .expect("put");
            let result = self
                .transact(
                    vec![
                        TransactWriteItem::builder().update(update).build(),
                        TransactWriteItem::builder().put(put_message).build(),
                        TransactWriteItem::builder().put(put_marker).build(),
                    ],
                    2,
                )
                .await;
            match result {
                Ok(()) => return Ok(()),
                Err(StoreError::Conflict(_)) => {
                    return Err(StoreError::Conflict(format!(
                        "message {} exists",
                        message.id
                    )));
                }
                // Another append took this sequence number: read the count again.
                Err(StoreError::Transient(_)) => continue,
                Err(other) => return Err(other),
            }
        }
        Err(StoreError::Transient("appends kept colliding".into()))
    }

    async fn messages(&self, chat_id: &ChatId) -> Result<Vec<UIMessage>, StoreError> {
        self.partition_prefix(&keys::chat_pk(chat_id), keys::MESSAGE_PREFIX)
            .await?
            .iter()
            .map(|i| parse(get_s(i, attr::MESSAGE)?))
            .collect()
    }

    /// Queries the chat's messages backwards from the cursor's row, `Limit` at what the page can
    /// still take, following `LastEvaluatedKey` when a response stops early (1 MB per
    /// response).
    async fn message_page(
        &self,
        chat_id: &ChatId,
        before: Option<&str>,
        limits: PageLimits,
    ) -> Result<MessagePage, StoreError> {
        let mut reader = PageReader::new(chat_id, before, limits)?;
        let newest = reader
            .start_seq()
            .map_or_else(|| keys::LAST_MESSAGE_SK.to_owned(), keys::message_sk);
        let mut start: Option<Item> = None;
        loop {
            let out = self
                .client
                .query()
                .table_name(&self.table)
                .key_condition_expression("pk = :p AND sk BETWEEN :first AND :newest")
                .expression_attribute_values(":p", s(keys::chat_pk(chat_id)))
                .expression_attribute_values(":first", s(keys::message_sk(0)))
                .expression_attribute_values(":newest", s(&newest))
                .consistent_read(true)
                .scan_index_forward(false)
                .limit(reader.rows_wanted().min(i32::MAX as usize) as i32)
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(store_error)?;
            for item in out.items.unwrap_or_default() {
                let seq = get_s(&item, keys::SK)?
                    .strip_prefix(keys::MESSAGE_PREFIX)
                    .and_then(|n| n.parse::<u64>().ok())
                    .ok_or_else(|| StoreError::Backend("a message key without its seq".into()))?;
                let id = get_s(&item, attr::ID)?.to_owned();
                let json = get_s(&item, attr::MESSAGE)?.to_owned();
                if !reader.push(seq, &id, json)? {
                    return reader.finish();
                }
            }
            match out.last_evaluated_key {
                Some(key) if !key.is_empty() => start = Some(key),
                _ => return reader.finish(),
            }
        }
    }

    async fn delete_messages_from(
        &self,
        chat_id: &ChatId,
        message_id: &str,
    ) -> Result<u64, StoreError> {
        let pk = keys::chat_pk(chat_id);
        let marker = self
            .get(&keys::message_id(chat_id, message_id))
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("message {message_id}")))?;
        let seq = get_n(&marker, attr::SEQ)?;
        let doomed = self
            .query_all(
                "pk = :p AND sk BETWEEN :from AND :to",
                vec![
                    (":p", s(&pk)),
                    (":from", s(keys::message_sk(seq as u64))),
                    (":to", s(keys::LAST_MESSAGE_SK)),
                ],
                true,
            )
            .await?;
        let mut delete = keys_of(&doomed);
        for item in &doomed {
            delete.push(keys::message_id(chat_id, get_s(item, attr::ID)?));
        }
        self.delete_keys(delete).await?;
        self.client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key_of(&keys::chat(chat_id))))
            .update_expression("SET #count = :c")
            .expression_attribute_names("#count", attr::MESSAGE_COUNT)
            .expression_attribute_values(":c", n(seq))
            .condition_expression("attribute_exists(pk)")
            .send()
            .await
            .map_err(store_error)?;
        Ok(doomed.len() as u64)
    }

    async fn get_session(&self, chat_id: &ChatId) -> Result<Option<ChatSession>, StoreError> {
        self.get(&keys::session(chat_id))
            .await?
            .as_ref()
            .map(session_from_item)
            .transpose()
    }

    /// Writes the session and, in the same transaction, its run's marker, so that every run a
    /// chat ever had can be found when the chat is deleted.
    async fn put_session(
        &self,
        session: &ChatSession,
        expected_version: Option<u64>,
    ) -> Result<ChatSession, StoreError> {
        let mut stored = session.clone();
        stored.version = expected_version.map_or(1, |v| v + 1);
        let keep_until = stored.expires_at + SESSION_GRACE_MS;
        let mut put_session = put(&keys::session(&session.chat_id))
            .table_name(&self.table)
            .item(attr::SESSION, s(json(&stored)?))
            .item(attr::RUN_ID, s(&stored.run_id))
            .item(attr::STREAMING, AttributeValue::Bool(stored.streaming))
            .item(attr::LAST_EVENT_ID, n(stored.last_event_id))
            .item(attr::VERSION, n(stored.version))
            .item(attr::EXPIRES_AT, n(keep_until / 1000));
        put_session = match expected_version {
            None => put_session.condition_expression("attribute_not_exists(pk)"),
            Some(v) => put_session
                .condition_expression("#version = :v")
                .expression_attribute_names("#version", attr::VERSION)
                .expression_attribute_values(":v", n(v)),
        };
        let marker_until = stored.expires_at + RUN_MARKER_GRACE_MS;
        let put_marker = put(&keys::run_marker(&session.chat_id, &stored.run_id))
            .table_name(&self.table)
            .item(attr::RUN_ID, s(&stored.run_id))
            .item(attr::EXPIRES_AT_MS, n(marker_until))
            .item(attr::EXPIRES_AT, n(marker_until / 1000));
        self.transact(
            vec![
                TransactWriteItem::builder()
                    .put(put_session.build().expect("put"))
                    .build(),
                TransactWriteItem::builder()
                    .put(put_marker.build().expect("put"))
                    .build(),
            ],
            0,
        )
        .await?;
        Ok(stored)
    }

    async fn append_event(&self, event: &StreamEvent) -> Result<(), StoreError> {
        self.client
            .put_item()
            .table_name(&self.table)
            .item(keys::PK, s(keys::run_pk(&event.run_id)))
            .item(keys::SK, s(keys::event_sk(event.first_event_id)))
            .item(attr::FIRST_EVENT_ID, n(event.first_event_id))
            .item(attr::LAST_EVENT_ID, n(event.last_event_id()))
            .item(attr::CHUNKS, s(json(&event.chunks)?))
            .item(attr::EXPIRES_AT_MS, n(event.expires_at))
            .item(attr::EXPIRES_AT, n(event.expires_at / 1000))
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
        let pk = keys::run_pk(run_id);
        let bound = keys::event_sk(after_event_id);
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
            .filter(|i| get_n(i, attr::LAST_EVENT_ID).is_ok_and(|l| l as u64 > after_event_id))
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
            .expression_attribute_values(":p", s(keys::run_pk(run_id)))
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
            .map(|i| get_n(i, attr::LAST_EVENT_ID))
            .transpose()?
            .unwrap_or(0) as u64)
    }

    async fn put_connection(&self, connection: &Connection) -> Result<(), StoreError> {
        self.client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(key_of(&keys::connection(&connection.connection_id))))
            .item(attr::CONNECTION, s(json(connection)?))
            .item(attr::EXPIRES_AT_MS, n(connection.expires_at))
            .item(attr::EXPIRES_AT, n(connection.expires_at / 1000))
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
        match self.get(&keys::connection(connection_id)).await? {
            Some(item) if !expired(&item, now) => Ok(Some(parse(get_s(&item, attr::CONNECTION)?)?)),
            _ => Ok(None),
        }
    }

    /// Deletes the subscriptions first (both halves) and the connection item last, so a retry
    /// after a failure still finds what is left.
    async fn delete_connection(&self, connection_id: &str) -> Result<(), StoreError> {
        let items = self.partition(&keys::connection_pk(connection_id)).await?;
        let mut delete = Vec::new();
        let mut connection_item = Vec::new();
        for item in &items {
            let sk = get_s(item, keys::SK)?;
            if let Some(chat) = sk.strip_prefix(keys::SUBSCRIPTION_PREFIX) {
                delete.push(keys::subscription_of(chat, connection_id));
                delete.push(Key {
                    pk: keys::connection_pk(connection_id),
                    sk: sk.to_owned(),
                });
            } else if sk == keys::CONNECTION_SK {
                for chat in legacy_subscriptions(item) {
                    delete.push(keys::subscription_of(&chat, connection_id));
                }
                connection_item.push(keys::connection(connection_id));
            }
        }
        self.delete_keys(delete).await?;
        self.delete_keys(connection_item).await
    }

    /// Writes both halves of the subscription in one transaction, then enforces the
    /// per-connection limit from the connection's own partition: the least recently subscribed
    /// beyond [`MAX_SUBSCRIPTIONS_PER_CONNECTION`] are dropped. Concurrent subscribes each add
    /// their own items, so none is lost; each then drops the same oldest ones.
    async fn subscribe(
        &self,
        chat_id: &ChatId,
        connection_id: &str,
        now: Millis,
        expires_at: Millis,
    ) -> Result<(), StoreError> {
        let chat_half = put(&keys::subscription(chat_id, connection_id))
            .table_name(&self.table)
            .item(attr::CONNECTION_ID, s(connection_id))
            .item(attr::SUBSCRIBED_AT, n(now))
            .item(attr::EXPIRES_AT_MS, n(expires_at))
            .item(attr::EXPIRES_AT, n(expires_at / 1000))
            .build()
            .expect("put");
        let connection_half = put(&keys::connection_subscription(
            connection_id,
            chat_id.as_str(),
        ))
        .table_name(&self.table)
        .item(attr::CHAT_ID, s(chat_id.as_str()))
        .item(attr::SUBSCRIBED_AT, n(now))
        .item(attr::EXPIRES_AT_MS, n(expires_at))
        .item(attr::EXPIRES_AT, n(expires_at / 1000))
        .build()
        .expect("put");
        self.transact(
            vec![
                TransactWriteItem::builder().put(chat_half).build(),
                TransactWriteItem::builder().put(connection_half).build(),
            ],
            usize::MAX,
        )
        .await?;
        let mine = self
            .partition_prefix(
                &keys::connection_pk(connection_id),
                keys::SUBSCRIPTION_PREFIX,
            )
            .await?;
        let mut held: Vec<(i64, String)> = mine
            .iter()
            .filter_map(|i| {
                Some((
                    get_n(i, attr::SUBSCRIBED_AT).ok()?,
                    get_s(i, attr::CHAT_ID).ok()?.to_owned(),
                ))
            })
            .collect();
        if held.len() <= MAX_SUBSCRIPTIONS_PER_CONNECTION {
            return Ok(());
        }
        held.sort();
        let excess = held.len() - MAX_SUBSCRIPTIONS_PER_CONNECTION;
        let mut delete = Vec::new();
        for (_, chat) in held.into_iter().take(excess) {
            delete.push(keys::subscription_of(&chat, connection_id));
            delete.push(keys::connection_subscription(connection_id, &chat));
        }
        self.delete_keys(delete).await
    }

    async fn unsubscribe(&self, chat_id: &ChatId, connection_id: &str) -> Result<(), StoreError> {
        self.delete_keys(vec![
            keys::subscription(chat_id, connection_id),
            keys::connection_subscription(connection_id, chat_id.as_str()),
        ])
        .await
    }

    async fn subscribers(&self, chat_id: &ChatId, now: Millis) -> Result<Vec<String>, StoreError> {
        let items = self
            .partition_prefix(&keys::chat_pk(chat_id), keys::SUBSCRIPTION_PREFIX)
            .await?;
        items
            .iter()
            .filter(|i| !expired(i, now))
            .map(|i| get_s(i, attr::CONNECTION_ID).map(str::to_owned))
            .collect()
    }

    /// One Query reads both: `SESSION` sorts between the `MSG#` and `RUN#` items and the `SUB#`
    /// items.
    async fn session_and_subscribers(
        &self,
        chat_id: &ChatId,
        now: Millis,
    ) -> Result<Arc<TurnSignals>, StoreError> {
        let items = self
            .query_all(
                "pk = :p AND sk BETWEEN :from AND :to",
                vec![
                    (":p", s(keys::chat_pk(chat_id))),
                    (":from", s(keys::SESSION_SK)),
                    (":to", s(keys::AFTER_SUBSCRIPTIONS)),
                ],
                true,
            )
            .await?;
        let mut session = None;
        let mut subscribers = Vec::new();
        for item in &items {
            match get_s(item, keys::SK)? {
                keys::SESSION_SK => session = Some(session_from_item(item)?),
                sk if sk.starts_with(keys::SUBSCRIPTION_PREFIX) && !expired(item, now) => {
                    subscribers.push(get_s(item, attr::CONNECTION_ID)?.to_owned())
                }
                _ => {}
            }
        }
        Ok(Arc::new(TurnSignals {
            session,
            subscribers,
        }))
    }
}

fn legacy_subscriptions(item: &Item) -> Vec<String> {
    item.get(attr::LEGACY_SUBSCRIPTIONS)
        .and_then(|v| v.as_l().ok())
        .map(|l| l.iter().filter_map(|v| v.as_s().ok().cloned()).collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_delete_that_never_finishes_says_so() {
        let mut attempts = 0;
        let result = delete_until_done(vec![1, 2, 3], |pending| {
            attempts += 1;
            async move { Ok(pending[1..].iter().copied().chain([9]).collect()) }
        })
        .await;
        assert_eq!(attempts, DELETE_ATTEMPTS);
        match result {
            Err(StoreError::Transient(m)) => assert!(m.contains("3 items"), "{m}"),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn a_delete_finishes_once_nothing_is_left_and_passes_errors_on() {
        let mut attempts = 0;
        let result = delete_until_done(vec![1, 2, 3], |mut pending| {
            attempts += 1;
            pending.pop();
            async move { Ok(pending) }
        })
        .await;
        assert!(result.is_ok());
        assert_eq!(attempts, 3);
        let failed = delete_until_done(vec![1], |_| async {
            Err::<Vec<i32>, _>(StoreError::Backend("boom".into()))
        })
        .await;
        assert!(matches!(failed, Err(StoreError::Backend(_))));
    }

    #[test]
    fn keys_have_their_documented_shapes() {
        let chat = ChatId::parse("c1").unwrap();
        assert_eq!(
            keys::chat(&chat),
            Key {
                pk: "CHAT#c1".into(),
                sk: "CHAT".into()
            }
        );
        assert_eq!(keys::message_sk(7), "MSG#0000000007");
        assert_eq!(keys::event_sk(12), "EVT#000000000012");
        assert_eq!(keys::subscription(&chat, "k").sk, "SUB#k");
        assert_eq!(keys::connection_subscription("k", "c1").pk, "CONN#k");
        assert_eq!(
            keys::subscription_of("c1", "k"),
            keys::subscription(&chat, "k")
        );
        assert_eq!(keys::run_marker(&chat, "r").sk, "RUN#r");
        // The one-Query read of session and subscribers holds nothing else.
        let sorted = |a: &str, b: &str| assert!(a < b, "{a} < {b}");
        sorted(keys::LAST_MESSAGE_SK, keys::SESSION_SK);
        sorted(&keys::run_marker(&chat, "zzz").sk, keys::SESSION_SK);
        sorted(keys::SESSION_SK, "SUB#");
        sorted("SUB#~~~~", keys::AFTER_SUBSCRIPTIONS);
        assert_eq!(keys::owner_sk(5, &chat), "0000000000005#c1");
    }
}
