//! `UsageCounters` on the table: one item per window and one per set of slots, each changed
//! only by a conditional UpdateItem, so two Lambdas at once can never both take the last unit.
//!
//! - A window is `hits` and `windowEnd`. Counting is one `ADD hits :1` on the condition that
//!   the window is live and under the limit; only when that fails is the item read, to tell a
//!   full window (refused) from an ended or missing one (replaced by a new window, on the
//!   condition that it is still the one read).
//! - Slots are a map of slot id to expiry with a `version`. A claim first tries one write that
//!   adds its slot while the map has fewer than `limit` entries; failing that, it reads the
//!   item, drops the expired slots, and writes the map back on the condition that the version
//!   is unchanged. Every write bumps the version (a release too, removing its map entry), so a
//!   claim that read before another write retries instead of writing a stale map back.
//!
//! `expiresAt` (TTL) lets DynamoDB delete ended windows and long-expired slot sets; reads never
//! rely on it, they compare the stored times with the clock.

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_dynamodb::types::AttributeValue;
use chatrun_core::domain::Millis;
use chatrun_core::error::StoreError;
use chatrun_core::ports::{Admission, UsageCounters};

use super::{DynamoChatStore, attr, get_n, key_of, keys, n, store_error};

/// Conditional writes lost to another writer before a claim gives up (as `Transient`).
const ATTEMPTS: usize = 8;
/// TTL lags behind the stored expiry by this much: the item is useless by then, and a late
/// delete never removes one still in use.
const TTL_MARGIN_MS: i64 = 60_000;

fn ttl_secs(expires_at_ms: Millis) -> AttributeValue {
    n((expires_at_ms + TTL_MARGIN_MS) / 1000)
}

fn slots_of(item: &HashMap<String, AttributeValue>) -> HashMap<String, Millis> {
    item.get(attr::SLOTS)
        .and_then(|v| v.as_m().ok())
        .map(|map| {
            map.iter()
                .filter_map(|(id, at)| Some((id.clone(), at.as_n().ok()?.parse().ok()?)))
                .collect()
        })
        .unwrap_or_default()
}

fn kept_changing(key: &str) -> StoreError {
    StoreError::Transient(format!("usage counter {key} kept changing"))
}

impl DynamoChatStore {
    /// Counts one action in a live window under the limit. `Ok(false)`: the condition failed
    /// (the window is full, ended or missing).
    async fn add_to_live_window(
        &self,
        key: &str,
        limit: u32,
        now: Millis,
    ) -> Result<bool, StoreError> {
        let added = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key_of(&keys::usage_window(key))))
            .update_expression("ADD #hits :one")
            .condition_expression("#end > :now AND #hits < :limit")
            .expression_attribute_names("#hits", attr::HITS)
            .expression_attribute_names("#end", attr::WINDOW_END)
            .expression_attribute_values(":one", n(1))
            .expression_attribute_values(":now", n(now))
            .expression_attribute_values(":limit", n(limit))
            .send()
            .await
            .map_err(store_error);
        match added {
            Ok(_) => Ok(true),
            Err(StoreError::Conflict(_)) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Opens a new window with this action counted, replacing `ended` (the end of the window
    /// read, `None` when there was none). `Ok(false)`: someone else changed it first.
    async fn open_window(
        &self,
        key: &str,
        ended: Option<Millis>,
        window_end: Millis,
    ) -> Result<bool, StoreError> {
        let mut update = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key_of(&keys::usage_window(key))))
            .update_expression("SET #hits = :one, #end = :end, #ttl = :ttl")
            .expression_attribute_names("#hits", attr::HITS)
            .expression_attribute_names("#end", attr::WINDOW_END)
            .expression_attribute_names("#ttl", attr::EXPIRES_AT)
            .expression_attribute_values(":one", n(1))
            .expression_attribute_values(":end", n(window_end))
            .expression_attribute_values(":ttl", ttl_secs(window_end));
        update = match ended {
            None => update.condition_expression("attribute_not_exists(pk)"),
            Some(end) => update
                .condition_expression("#end = :ended")
                .expression_attribute_values(":ended", n(end)),
        };
        match update.send().await.map_err(store_error) {
            Ok(_) => Ok(true),
            Err(StoreError::Conflict(_)) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// The common claim in one write, without reading: add the slot while the map holds fewer
    /// than `limit` entries. `Ok(false)` when it does not (it may hold expired slots, or not
    /// exist yet): the caller reads, prunes and writes back.
    async fn add_slot_below_limit(
        &self,
        item_key: &keys::Key,
        slot_id: &str,
        limit: u32,
        expires_at: Millis,
    ) -> Result<bool, StoreError> {
        // Every claim gives its slot the stale-turn limit from now, so the newest claim's
        // expiry is the latest one: the item's TTL can follow it.
        let added = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key_of(item_key)))
            .update_expression("SET #slots.#slot = :expires, #ttl = :ttl ADD #version :one")
            .condition_expression("size(#slots) < :limit")
            .expression_attribute_names("#slots", attr::SLOTS)
            .expression_attribute_names("#slot", slot_id)
            .expression_attribute_names("#version", attr::VERSION)
            .expression_attribute_names("#ttl", attr::EXPIRES_AT)
            .expression_attribute_values(":expires", n(expires_at))
            .expression_attribute_values(":ttl", ttl_secs(expires_at))
            .expression_attribute_values(":one", n(1))
            .expression_attribute_values(":limit", n(limit))
            .send()
            .await
            .map_err(store_error);
        match added {
            Ok(_) => Ok(true),
            Err(StoreError::Conflict(_)) => Ok(false),
            Err(e) => Err(e),
        }
    }
}

#[async_trait]
impl UsageCounters for DynamoChatStore {
    async fn count_in_window(
        &self,
        key: &str,
        limit: u32,
        window: Duration,
        now: Millis,
    ) -> Result<Admission, StoreError> {
        for _ in 0..ATTEMPTS {
            if self.add_to_live_window(key, limit, now).await? {
                return Ok(Admission::Admitted);
            }
            let current = self.get(&keys::usage_window(key)).await?;
            let current_end = current
                .as_ref()
                .map(|item| get_n(item, attr::WINDOW_END))
                .transpose()?;
            match (&current, current_end) {
                (Some(item), Some(end)) if end > now => {
                    if get_n(item, attr::HITS)? >= i64::from(limit) {
                        return Ok(Admission::Refused {
                            retry_after_ms: (end - now) as u64,
                        });
                    }
                    // It had room after all (another window opened meanwhile): count again.
                }
                _ => {
                    let window_end = now + window.as_millis() as Millis;
                    if self.open_window(key, current_end, window_end).await? {
                        return Ok(Admission::Admitted);
                    }
                }
            }
        }
        Err(kept_changing(key))
    }

    async fn claim_slot(
        &self,
        key: &str,
        slot_id: &str,
        limit: u32,
        now: Millis,
        expires_at: Millis,
    ) -> Result<Admission, StoreError> {
        let item_key = keys::usage_slots(key);
        if self
            .add_slot_below_limit(&item_key, slot_id, limit, expires_at)
            .await?
        {
            return Ok(Admission::Admitted);
        }
        for _ in 0..ATTEMPTS {
            let current = self.get(&item_key).await?;
            let version = current
                .as_ref()
                .map(|item| get_n(item, attr::VERSION))
                .transpose()?;
            let mut live = current.as_ref().map(slots_of).unwrap_or_default();
            live.retain(|_, at| *at > now);
            if !live.contains_key(slot_id) && live.len() >= limit as usize {
                let oldest = live.values().min().copied().unwrap_or(now);
                return Ok(Admission::Refused {
                    retry_after_ms: (oldest - now).max(0) as u64,
                });
            }
            live.insert(slot_id.to_owned(), expires_at);
            let last_expiry = live.values().max().copied().unwrap_or(expires_at);
            let slots = live.iter().map(|(id, at)| (id.clone(), n(at))).collect();
            let mut update = self
                .client
                .update_item()
                .table_name(&self.table)
                .set_key(Some(key_of(&item_key)))
                .update_expression("SET #slots = :slots, #version = :next, #ttl = :ttl")
                .expression_attribute_names("#slots", attr::SLOTS)
                .expression_attribute_names("#version", attr::VERSION)
                .expression_attribute_names("#ttl", attr::EXPIRES_AT)
                .expression_attribute_values(":slots", AttributeValue::M(slots))
                .expression_attribute_values(":next", n(version.unwrap_or(0) + 1))
                .expression_attribute_values(":ttl", ttl_secs(last_expiry));
            update = match version {
                None => update.condition_expression("attribute_not_exists(pk)"),
                Some(v) => update
                    .condition_expression("#version = :seen")
                    .expression_attribute_values(":seen", n(v)),
            };
            match update.send().await.map_err(store_error) {
                Ok(_) => return Ok(Admission::Admitted),
                Err(StoreError::Conflict(_)) => continue,
                Err(e) => return Err(e),
            }
        }
        Err(kept_changing(key))
    }

    async fn release_slot(&self, key: &str, slot_id: &str) -> Result<(), StoreError> {
        let released = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key_of(&keys::usage_slots(key))))
            .update_expression("REMOVE #slots.#slot ADD #version :one")
            .condition_expression("attribute_exists(#slots.#slot)")
            .expression_attribute_names("#slots", attr::SLOTS)
            .expression_attribute_names("#slot", slot_id)
            .expression_attribute_names("#version", attr::VERSION)
            .expression_attribute_values(":one", n(1))
            .send()
            .await
            .map_err(store_error);
        match released {
            // Not held (never claimed, released already, or the set is gone): nothing to do.
            Ok(_) | Err(StoreError::Conflict(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }
}
