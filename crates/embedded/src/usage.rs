//! The counters behind the limits ([`UsageCounters`]) on the embedded store: decided in memory,
//! written behind.
//!
//! Every send takes a turn slot and counts a message on the way to its `ack` and its first
//! token. This process is the file's only writer (its lock file, [`crate::db`]), so the counters
//! are held in memory, loaded when the file is opened, and each decision is made there under a
//! lock, without a round trip to the writer thread. What the decision leaves (a window's count,
//! a held slot) is then queued on the writer as a write behind ([`Database::call_behind`]),
//! written as absolute values, so it needs nothing read back.
//!
//! Durability: the writer runs operations in the order they were queued, and a send awaits its
//! later writes (the session's claim, the user's message, the queued job) before its `ack`, so
//! by then the counts are committed with them or before them. A commit that fails reloads the
//! counters from the file ([`Usage::reload`]), which may then count a little less than was
//! admitted: limits guard against abuse, and under-counting the sends of one failed commit is
//! harmless. A slot held in memory but not in the file is released as usual.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use chatrun_core::domain::Millis;
use chatrun_core::error::StoreError;
use chatrun_core::ports::{Admission, SlotAndCount, SlotClaim, UsageCounters, WindowCount};
use rusqlite::params;

use crate::Cached;
use crate::db::DbError;
use crate::store::SqliteChatStore;

/// How often expired windows and slots of keys nobody touched leave memory.
const SWEEP_EVERY_MS: Millis = 60_000;

/// A window of [`UsageCounters::count_in_window`].
#[derive(Debug, Clone, Copy)]
struct Window {
    start: Millis,
    end: Millis,
    hits: u32,
}

/// A slot of [`UsageCounters::claim_slot`].
#[derive(Debug, Clone)]
struct Slot {
    id: String,
    expires_at: Millis,
}

/// The counters of every key, as the file holds them once what was queued is committed.
#[derive(Default)]
struct Counters {
    windows: HashMap<String, Window>,
    slots: HashMap<String, Vec<Slot>>,
    next_sweep: Millis,
}

impl Counters {
    fn load(c: &rusqlite::Connection) -> rusqlite::Result<Counters> {
        let mut counters = Counters::default();
        let mut windows =
            c.prepare("SELECT key, window_start, window_end, hits FROM usage_windows")?;
        for row in windows.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                Window {
                    start: r.get(1)?,
                    end: r.get(2)?,
                    hits: r.get(3)?,
                },
            ))
        })? {
            let (key, window) = row?;
            counters.windows.insert(key, window);
        }
        let mut slots = c.prepare("SELECT key, slot_id, expires_at FROM usage_slots")?;
        for row in slots.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                Slot {
                    id: r.get(1)?,
                    expires_at: r.get(2)?,
                },
            ))
        })? {
            let (key, slot) = row?;
            counters.slots.entry(key).or_default().push(slot);
        }
        Ok(counters)
    }

    /// Drops what expired by `now` from every key, once a minute.
    fn sweep(&mut self, now: Millis) {
        if now < self.next_sweep {
            return;
        }
        self.next_sweep = now + SWEEP_EVERY_MS;
        self.windows.retain(|_, w| w.end > now);
        self.slots.retain(|_, held| {
            held.retain(|s| s.expires_at > now);
            !held.is_empty()
        });
    }

    /// The window `key` would have after one more action: `Err` with the time to its end when
    /// `limit` actions were already counted in it. Changes nothing.
    fn next_window(
        &self,
        key: &str,
        limit: u32,
        window: std::time::Duration,
        now: Millis,
    ) -> Result<Window, u64> {
        match self.windows.get(key).filter(|w| w.end > now) {
            Some(w) if w.hits >= limit => Err((w.end - now) as u64),
            Some(w) => Ok(Window {
                hits: w.hits + 1,
                ..*w
            }),
            None => Ok(Window {
                start: now,
                end: now + window.as_millis() as i64,
                hits: 1,
            }),
        }
    }

    /// Whether `slot_id` may hold one of `key`'s `limit` slots: `Err` with the time until the
    /// oldest held slot expires when all are taken by others. Changes nothing.
    fn slot_admits(&self, key: &str, slot_id: &str, limit: u32, now: Millis) -> Result<(), u64> {
        let held = self.slots.get(key).map(Vec::as_slice).unwrap_or_default();
        let live = held.iter().filter(|s| s.expires_at > now);
        if live.clone().any(|s| s.id == slot_id) || live.clone().count() < limit as usize {
            return Ok(());
        }
        let oldest = live.map(|s| s.expires_at).min().unwrap_or(now);
        Err((oldest - now).max(0) as u64)
    }

    fn set_window(&mut self, key: &str, window: Window) {
        self.windows.insert(key.to_owned(), window);
    }

    fn hold_slot(&mut self, key: &str, slot_id: &str, now: Millis, expires_at: Millis) {
        let held = self.slots.entry(key.to_owned()).or_default();
        held.retain(|s| s.expires_at > now && s.id != slot_id);
        held.push(Slot {
            id: slot_id.to_owned(),
            expires_at,
        });
    }

    fn free_slot(&mut self, key: &str, slot_id: &str) {
        if let Some(held) = self.slots.get_mut(key) {
            held.retain(|s| s.id != slot_id);
            if held.is_empty() {
                self.slots.remove(key);
            }
        }
    }
}

/// The counters, shared by the store's handle and its writer's hooks.
#[derive(Clone, Default)]
pub(crate) struct Usage {
    counters: Arc<Mutex<Counters>>,
}

impl Usage {
    fn lock(&self) -> MutexGuard<'_, Counters> {
        crate::lock(&self.counters)
    }

    /// Loads the counters from the file (the writer's connection, on opening and after a
    /// failed commit, when it holds the last committed state).
    pub(crate) fn reload(&self, c: &rusqlite::Connection) -> rusqlite::Result<()> {
        let loaded = Counters::load(c)?;
        *self.lock() = loaded;
        Ok(())
    }
}

/// Writes `key`'s window as decided.
fn write_window(
    c: &rusqlite::Connection,
    key: &str,
    window: Window,
    now: Millis,
) -> Result<(), DbError> {
    c.execute_cached(
        "DELETE FROM usage_windows WHERE window_end <= ?1",
        params![now],
    )?;
    c.execute_cached(
        "INSERT INTO usage_windows (key, window_start, window_end, hits) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (key) DO UPDATE SET window_start = excluded.window_start,
             window_end = excluded.window_end, hits = excluded.hits",
        params![key, window.start, window.end, window.hits],
    )?;
    Ok(())
}

/// Writes `slot_id`'s slot of `key` as held until `expires_at`.
fn write_slot(
    c: &rusqlite::Connection,
    key: &str,
    slot_id: &str,
    now: Millis,
    expires_at: Millis,
) -> Result<(), DbError> {
    c.execute_cached(
        "DELETE FROM usage_slots WHERE expires_at <= ?1",
        params![now],
    )?;
    c.execute_cached(
        "INSERT INTO usage_slots (key, slot_id, expires_at) VALUES (?1, ?2, ?3)
         ON CONFLICT (key, slot_id) DO UPDATE SET expires_at = excluded.expires_at",
        params![key, slot_id, expires_at],
    )?;
    Ok(())
}

#[async_trait]
impl UsageCounters for SqliteChatStore {
    async fn count_in_window(
        &self,
        key: &str,
        limit: u32,
        window: std::time::Duration,
        now: Millis,
    ) -> Result<Admission, StoreError> {
        let mut counters = self.usage().lock();
        counters.sweep(now);
        match counters.next_window(key, limit, window, now) {
            Err(retry_after_ms) => Ok(Admission::Refused { retry_after_ms }),
            Ok(next) => {
                counters.set_window(key, next);
                // Queued under the lock: the file gets the windows in the order decided.
                let key = key.to_owned();
                self.database()
                    .call_behind("a usage window", move |c| write_window(c, &key, next, now));
                Ok(Admission::Admitted)
            }
        }
    }

    async fn claim_slot(
        &self,
        key: &str,
        slot_id: &str,
        limit: u32,
        now: Millis,
        expires_at: Millis,
    ) -> Result<Admission, StoreError> {
        let mut counters = self.usage().lock();
        counters.sweep(now);
        if let Err(retry_after_ms) = counters.slot_admits(key, slot_id, limit, now) {
            return Ok(Admission::Refused { retry_after_ms });
        }
        counters.hold_slot(key, slot_id, now, expires_at);
        let (key, slot_id) = (key.to_owned(), slot_id.to_owned());
        self.database().call_behind("a turn slot", move |c| {
            write_slot(c, &key, &slot_id, now, expires_at)
        });
        Ok(Admission::Admitted)
    }

    async fn release_slot(&self, key: &str, slot_id: &str) -> Result<(), StoreError> {
        let mut counters = self.usage().lock();
        counters.free_slot(key, slot_id);
        let (key, slot_id) = (key.to_owned(), slot_id.to_owned());
        self.database().call_behind("a freed turn slot", move |c| {
            c.execute_cached(
                "DELETE FROM usage_slots WHERE key = ?1 AND slot_id = ?2",
                params![key, slot_id],
            )?;
            Ok::<_, DbError>(())
        });
        Ok(())
    }

    /// Both decided at once in memory: no round trip at all on the way to the first token.
    async fn claim_slot_and_count(
        &self,
        slot: SlotClaim<'_>,
        window: WindowCount<'_>,
        now: Millis,
    ) -> Result<SlotAndCount, StoreError> {
        let mut counters = self.usage().lock();
        counters.sweep(now);
        if let Err(retry_after_ms) = counters.slot_admits(slot.key, slot.slot_id, slot.limit, now) {
            return Ok(SlotAndCount::SlotRefused { retry_after_ms });
        }
        let next = match counters.next_window(window.key, window.limit, window.window, now) {
            Ok(next) => next,
            Err(retry_after_ms) => return Ok(SlotAndCount::WindowRefused { retry_after_ms }),
        };
        counters.hold_slot(slot.key, slot.slot_id, now, slot.expires_at);
        counters.set_window(window.key, next);
        let (slot_key, slot_id, expires_at) = (
            slot.key.to_owned(),
            slot.slot_id.to_owned(),
            slot.expires_at,
        );
        let window_key = window.key.to_owned();
        // One write for both: a savepoint fewer on the writer per send.
        self.database()
            .call_behind("a turn slot and a usage window", move |c| {
                write_slot(c, &slot_key, &slot_id, now, expires_at)?;
                write_window(c, &window_key, next, now)
            });
        Ok(SlotAndCount::Admitted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINUTE: std::time::Duration = std::time::Duration::from_secs(60);

    fn claim<'a>(slot_id: &'a str) -> SlotClaim<'a> {
        SlotClaim {
            key: "turns#u",
            slot_id,
            limit: 1,
            expires_at: 1_000_000,
        }
    }

    fn messages() -> WindowCount<'static> {
        WindowCount {
            key: "messages#u",
            limit: 2,
            window: MINUTE,
        }
    }

    #[tokio::test]
    async fn counts_decided_in_memory_are_in_the_file_after_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("chatrun.sqlite3");
        let store = SqliteChatStore::open(&path).unwrap();
        let admitted = store
            .claim_slot_and_count(claim("a"), messages(), 1_000)
            .await
            .unwrap();
        assert_eq!(admitted, SlotAndCount::Admitted);
        store
            .count_in_window("messages#u", 2, MINUTE, 1_500)
            .await
            .unwrap();
        store.close();
        drop(store);

        let store = SqliteChatStore::open(&path).unwrap();
        assert_eq!(
            store
                .claim_slot("turns#u", "b", 1, 2_000, 1_000_000)
                .await
                .unwrap(),
            Admission::Refused {
                retry_after_ms: 998_000
            },
            "the slot of a is still held"
        );
        assert_eq!(
            store
                .count_in_window("messages#u", 2, MINUTE, 2_000)
                .await
                .unwrap(),
            Admission::Refused {
                retry_after_ms: 59_000
            },
            "both messages are still counted"
        );
        store.release_slot("turns#u", "a").await.unwrap();
        store.close();
        drop(store);

        let store = SqliteChatStore::open(&path).unwrap();
        assert_eq!(
            store
                .claim_slot("turns#u", "b", 1, 3_000, 1_000_000)
                .await
                .unwrap(),
            Admission::Admitted,
            "the release was written too"
        );
    }

    #[test]
    fn a_reload_holds_what_the_file_holds_and_nothing_else() {
        let c = rusqlite::Connection::open_in_memory().unwrap();
        c.execute_batch(crate::store::SCHEMA).unwrap();
        c.execute(
            "INSERT INTO usage_windows (key, window_start, window_end, hits) VALUES ('w', 0, 100, 3)",
            [],
        )
        .unwrap();
        let usage = Usage::default();
        usage.reload(&c).unwrap();
        // Decided in memory, in a batch whose commit then failed.
        usage.lock().hold_slot("turns#u", "lost", 0, 100);
        usage.reload(&c).unwrap();
        let counters = usage.lock();
        assert!(counters.slots.is_empty());
        assert_eq!(counters.windows["w"].hits, 3);
        assert_eq!(counters.next_window("w", 3, MINUTE, 50).unwrap_err(), 50);
    }
}
