//! `EventLog`: the stream events' SQLite file, written in the order frames arrive, with its
//! index by run written a second at a time.
//!
//! Frames are nearly all the writes of a busy server: a thousand streaming chats write one each
//! every 50 ms. Kept in a table keyed by run, every frame landed on its own run's page, so each
//! commit rewrote a 4 KiB page (into the WAL, then into the file) per frame it carried. Here the
//! frames are appended in arrival order, so a commit's frames share the table's last page or
//! two. The index from `(run_id, first_event_id)` to a frame's row is written once a second,
//! when a run's twenty new entries share one page instead of dirtying it twenty times.
//!
//! The entries not yet in the index (about the last second's) are kept in memory, where reads
//! find them beside the index's. The file records up to which row the index is complete
//! (`stream_event_index_through`): on opening, and after a failed commit, the entries past it are
//! read back from the rows themselves. Reads see an entry only once its frame is committed.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chatrun_core::config::STREAM_EVENT_TTL;
use chatrun_core::domain::{Millis, StreamEvent};
use chatrun_core::error::StoreError;
use rusqlite::{OptionalExtension, params};

use crate::Cached;
use crate::db::{Committed, Database, Hooks};
use crate::lock;
use crate::store::{from_json, to_json};
use crate::store_error;

const SCHEMA: &str = "
-- Frames in the order they were written (`id` only grows while they are kept).
CREATE TABLE IF NOT EXISTS stream_events (
    id INTEGER PRIMARY KEY,
    run_id TEXT NOT NULL,
    first_event_id INTEGER NOT NULL,
    last_event_id INTEGER NOT NULL,
    chunks TEXT NOT NULL,
    expires_at INTEGER NOT NULL
);
-- Where each run's frames are, written a second at a time (see the module's comment).
CREATE TABLE IF NOT EXISTS stream_event_index (
    run_id TEXT NOT NULL,
    first_event_id INTEGER NOT NULL,
    last_event_id INTEGER NOT NULL,
    event_row INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    PRIMARY KEY (run_id, first_event_id)
) WITHOUT ROWID;
-- Every frame up to this row is in the index (or was deleted with its entry).
CREATE TABLE IF NOT EXISTS stream_event_index_through (
    only INTEGER PRIMARY KEY CHECK (only = 0),
    event_row INTEGER NOT NULL
);
INSERT OR IGNORE INTO stream_event_index_through VALUES (0, 0);
";

/// Before this layout, frames lived in one table keyed by run; its rows move over once.
const MIGRATE_KEYED_BY_RUN: &str = "
INSERT INTO stream_events (run_id, first_event_id, last_event_id, chunks, expires_at)
    SELECT run_id, first_event_id, last_event_id, chunks, expires_at FROM events ORDER BY rowid;
INSERT OR IGNORE INTO stream_event_index (run_id, first_event_id, last_event_id, event_row, expires_at)
    SELECT run_id, first_event_id, last_event_id, id, expires_at FROM stream_events;
UPDATE stream_event_index_through SET event_row = (SELECT COALESCE(MAX(id), 0) FROM stream_events);
DROP TABLE events;
";

/// How long a run's entries wait in memory before they are written to the index. Each run
/// is indexed on its own clock (by its own frame, once its oldest waiting entry is this old),
/// so the thousand runs of a busy second are indexed a few at a time, not in one batch that
/// held every frame behind it for tens of milliseconds.
const INDEX_EVERY: Duration = Duration::from_secs(1);
/// How often a frame also indexes the runs that are due but wrote nothing lately (a finished
/// turn's last entries).
const INDEX_IDLE_EVERY: Duration = Duration::from_millis(100);
/// ... or sooner, once this many wait (memory stays bounded whatever the rate).
const INDEX_AT_MOST_WAITING: usize = 65_536;
/// Every this many stream events, the write also deletes expired ones (see
/// [`sweep_expired`]): DynamoDB expires them by TTL, SQLite has to be told.
pub(crate) const SWEEP_EVERY_EVENTS: u64 = 256;
/// At most this many expired events are deleted per sweep: twice what was appended since the
/// last one, so the sweeps outpace the appends without any one of them taking long.
const SWEEP_AT_MOST: i64 = 512;

/// A frame's place, kept in memory until the index holds it.
#[derive(Debug, Clone, Copy)]
struct Entry {
    first_event_id: u64,
    last_event_id: u64,
    row: i64,
    expires_at: Millis,
    /// Its frame's batch was committed: reads may see it.
    committed: bool,
    /// Written to the index in the current batch: dropped from memory once that commits.
    indexed: bool,
}

/// One run's entries not yet in the index, in the order they were written.
#[derive(Debug, Default)]
struct RunEntries {
    entries: Vec<Entry>,
    /// The highest `last_event_id` the index holds for the run (`None`: not looked up yet).
    indexed_through: Option<u64>,
    /// Written to since the last indexing (a run idle that long is forgotten).
    written: bool,
    /// When its oldest entry not yet in the index was written.
    waiting_since: Option<Instant>,
}

/// What is kept in memory: the entries the index lacks, by run.
#[derive(Debug)]
struct Unindexed {
    runs: HashMap<String, RunEntries>,
    /// Entries waiting to be written to the index.
    waiting: usize,
    /// Runs written to in the batch being run (their entries become visible at its commit).
    in_batch: Vec<String>,
    /// Runs the batch being run wrote to the index (their indexed entries go once it commits).
    indexed_in_batch: Vec<String>,
    /// The batch being run indexed every run that was due and moved the watermark: once it
    /// commits, runs idle since the last such pass are forgotten.
    forget_in_batch: bool,
    /// When the last pass over every run ([`INDEX_IDLE_EVERY`]) was made.
    last_idle_pass: Instant,
    /// When the watermark was last moved (and runs idle since then forgotten).
    last_watermark: Instant,
    /// How long entries wait for the index ([`INDEX_EVERY`]; tests lengthen it so that only
    /// `index_next` writes it, whatever the machine's speed).
    index_every: Duration,
    /// Write the index at the next append, whenever the last time was.
    index_next: bool,
}

impl Unindexed {
    fn new() -> Self {
        Unindexed {
            runs: HashMap::new(),
            waiting: 0,
            in_batch: Vec::new(),
            indexed_in_batch: Vec::new(),
            forget_in_batch: false,
            last_idle_pass: Instant::now(),
            last_watermark: Instant::now(),
            index_every: INDEX_EVERY,
            index_next: false,
        }
    }

    /// Forgets everything and reads back, from the rows, the entries the index lacks.
    fn reload(&mut self, c: &rusqlite::Connection) -> rusqlite::Result<()> {
        *self = Unindexed {
            index_every: self.index_every,
            ..Unindexed::new()
        };
        let mut stmt = c.prepare(
            "SELECT id, run_id, first_event_id, last_event_id, expires_at FROM stream_events
             WHERE id > (SELECT event_row FROM stream_event_index_through) ORDER BY id",
        )?;
        let mut rows = stmt.query([])?;
        while let Some(row) = rows.next()? {
            let run: String = row.get(1)?;
            let run = self.runs.entry(run).or_default();
            run.waiting_since.get_or_insert_with(Instant::now);
            run.entries.push(Entry {
                row: row.get(0)?,
                first_event_id: row.get::<_, i64>(2)? as u64,
                last_event_id: row.get::<_, i64>(3)? as u64,
                expires_at: row.get(4)?,
                committed: true,
                indexed: false,
            });
            self.waiting += 1;
        }
        Ok(())
    }

    /// After a batch: its entries become visible if it committed; otherwise memory is read
    /// back from the file, which no longer holds what the batch wrote.
    fn after_batch(&mut self, c: &rusqlite::Connection, committed: Committed) {
        if committed == Committed::No {
            if let Err(e) = self.reload(c) {
                tracing::error!(error = %e, "reloading the stream events not yet indexed failed");
            }
            return;
        }
        for run in std::mem::take(&mut self.in_batch) {
            if let Some(run) = self.runs.get_mut(&run) {
                for entry in run.entries.iter_mut().rev() {
                    if entry.committed {
                        break;
                    }
                    entry.committed = true;
                }
            }
        }
        for run in std::mem::take(&mut self.indexed_in_batch) {
            if let Some(run) = self.runs.get_mut(&run) {
                run.entries.retain(|e| !e.indexed);
            }
        }
        if std::mem::take(&mut self.forget_in_batch) {
            self.runs
                .retain(|_, run| std::mem::take(&mut run.written) || !run.entries.is_empty());
        }
    }

    /// Writes what is due to the index after an append to `run_id`: that run's entries once
    /// the oldest has waited [`INDEX_EVERY`]; every run's that is due, every
    /// [`INDEX_IDLE_EVERY`], with the watermark once every [`INDEX_EVERY`]; everything when
    /// asked (`index_next`) or when too much waits. A failure leaves the entries waiting for a
    /// later frame. Only the periodic pass looks at every run: a frame's own check is one run's.
    fn index_due(&mut self, c: &rusqlite::Connection, run_id: &str) {
        let every = self.index_every;
        let due = move |run: &RunEntries| run.waiting_since.is_some_and(|at| at.elapsed() >= every);
        let written = if self.index_next || self.waiting >= INDEX_AT_MOST_WAITING {
            let all = self.runs.keys().cloned().collect();
            self.write_index(c, all, true)
        } else if self.last_idle_pass.elapsed() >= INDEX_IDLE_EVERY {
            self.last_idle_pass = Instant::now();
            let due_runs: Vec<String> = self
                .runs
                .iter()
                .filter(|(_, run)| due(run))
                .map(|(id, _)| id.clone())
                .collect();
            let watermark = self.last_watermark.elapsed() >= every;
            if due_runs.is_empty() && !watermark {
                return;
            }
            self.write_index(c, due_runs, watermark)
        } else if self.runs.get(run_id).is_some_and(due) {
            self.write_index(c, vec![run_id.to_owned()], false)
        } else {
            return;
        };
        if let Err(e) = written {
            tracing::warn!(error = %e, "writing the stream events' index failed; a later frame retries");
        }
    }

    /// Writes the waiting entries of `runs` to the index, each run's together, in one
    /// savepoint (a failure leaves them waiting). With `watermark`, also moves the index's
    /// watermark to the last row below every entry still waiting (what a restart reads back)
    /// and lets runs idle since the last such write be forgotten once it commits.
    fn write_index(
        &mut self,
        c: &rusqlite::Connection,
        runs: Vec<String>,
        watermark: bool,
    ) -> rusqlite::Result<()> {
        let picked: Vec<String> = runs
            .into_iter()
            .filter(|id| {
                self.runs
                    .get(id)
                    .is_some_and(|run| run.entries.iter().any(|e| !e.indexed))
            })
            .collect();
        // Cached: a run is indexed on its own, thousands of times a second.
        c.prepare_cached("SAVEPOINT stream_event_index")?
            .execute([])?;
        let written = (|| {
            let mut insert = c.prepare_cached(
                "INSERT OR REPLACE INTO stream_event_index
                     (run_id, first_event_id, last_event_id, event_row, expires_at)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )?;
            for run_id in &picked {
                for e in self.runs[run_id].entries.iter().filter(|e| !e.indexed) {
                    insert.execute(params![
                        run_id,
                        e.first_event_id as i64,
                        e.last_event_id as i64,
                        e.row,
                        e.expires_at
                    ])?;
                }
            }
            if watermark {
                // Every row up to the first one still waiting (after this write) is indexed;
                // with none waiting, every row is.
                let written: HashSet<&str> = picked.iter().map(String::as_str).collect();
                let first_waiting = self
                    .runs
                    .iter()
                    .filter(|(run_id, _)| !written.contains(run_id.as_str()))
                    .flat_map(|(_, run)| run.entries.iter().filter(|e| !e.indexed))
                    .map(|e| e.row)
                    .min();
                let newest = self
                    .runs
                    .values()
                    .flat_map(|run| run.entries.iter())
                    .map(|e| e.row)
                    .max()
                    .unwrap_or(0);
                c.prepare_cached(
                    "UPDATE stream_event_index_through SET event_row = MAX(event_row, ?1)",
                )?
                .execute([first_waiting.map_or(newest, |row| row - 1)])?;
            }
            Ok(())
        })();
        if let Err(e) = written {
            let _ = c.execute_batch("ROLLBACK TO stream_event_index; RELEASE stream_event_index");
            return Err(e);
        }
        c.prepare_cached("RELEASE stream_event_index")?
            .execute([])?;
        for run_id in picked {
            let Some(run) = self.runs.get_mut(&run_id) else {
                continue;
            };
            for e in run.entries.iter_mut().filter(|e| !e.indexed) {
                e.indexed = true;
                self.waiting -= 1;
                run.indexed_through = Some(run.indexed_through.unwrap_or(0).max(e.last_event_id));
            }
            run.waiting_since = None;
            self.indexed_in_batch.push(run_id);
        }
        if watermark {
            self.last_watermark = Instant::now();
            self.forget_in_batch = true;
        }
        self.index_next = false;
        Ok(())
    }
}

/// The stream events' file and the entries its index lacks.
pub(crate) struct EventLog {
    db: Database,
    unindexed: Arc<Mutex<Unindexed>>,
    /// Stream events appended since the log opened (when to sweep).
    appended: AtomicU64,
}

impl EventLog {
    /// Opens (creating or migrating if needed) the stream events' file at `path`.
    pub(crate) fn open(path: &Path) -> Result<EventLog, StoreError> {
        let unindexed = Arc::new(Mutex::new(Unindexed::new()));
        let (loading, after) = (unindexed.clone(), unindexed.clone());
        let db = Database::open(
            path,
            SCHEMA,
            // The writer's pages are the table's last few and, once a second, one per run in
            // the index. At 1,000 runs those are more pages than any small cache holds, and a
            // miss is a read from the OS's cache of the file: 256 KiB keeps the table's tail
            // (1 MiB measured no cheaper in CPU or latency; BENCHMARKS.md).
            256,
            Hooks {
                on_open: Box::new(move |c| {
                    let keyed_by_run: bool = c.query_row(
                        "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'events')",
                        [],
                        |r| r.get(0),
                    )?;
                    if keyed_by_run {
                        let tx = c.transaction()?;
                        tx.execute_batch(MIGRATE_KEYED_BY_RUN)?;
                        tx.commit()?;
                    }
                    lock(&loading).reload(c)
                }),
                after_batch: Box::new(move |c, committed| lock(&after).after_batch(c, committed)),
            },
        )?;
        Ok(EventLog {
            db,
            unindexed,
            appended: AtomicU64::new(0),
        })
    }

    pub(crate) fn close(&self) {
        self.db.close();
    }

    /// Persists `event`, exactly once per `(run_id, first_event_id)`.
    pub(crate) async fn append(&self, event: &StreamEvent) -> Result<(), StoreError> {
        if event.chunks.is_empty() {
            return Err(StoreError::Backend(
                "an event needs at least one chunk".into(),
            ));
        }
        // Encoded here, on the caller's thread: the database thread only writes.
        let chunks = to_json(&event.chunks)?;
        let run_id = event.run_id.clone();
        let first = event.first_event_id;
        let last = event.last_event_id();
        let expires_at = event.expires_at;
        let sweep = self.appended.fetch_add(1, Ordering::Relaxed) % SWEEP_EVERY_EVENTS
            == SWEEP_EVERY_EVENTS - 1;
        let unindexed = self.unindexed.clone();
        // The insert is the operation's only required statement (SQLite undoes it alone if it
        // fails); indexing and sweeping run in savepoints of their own and, should they fail,
        // are tried again later without failing the frame.
        self.db
            .call_statement(move |c| {
                let mut memory = lock(&unindexed);
                if !memory.runs.contains_key(&run_id) {
                    memory.runs.insert(run_id.clone(), RunEntries::default());
                }
                let run = memory.runs.get_mut(&run_id).expect("inserted above");
                if is_written(c, run, &run_id, first)? {
                    return Err(StoreError::Conflict(format!(
                        "event {first} of run {run_id} exists"
                    )));
                }
                // The row's id from `last_insert_rowid`, not `RETURNING` (which SQLite
                // buffers in a temporary table: a b-tree opened and freed per frame).
                let row = c
                    .prepare_cached(
                        "INSERT INTO stream_events (run_id, first_event_id, last_event_id, chunks, expires_at)
                         VALUES (?1, ?2, ?3, ?4, ?5)",
                    )
                    .and_then(|mut stmt| {
                        stmt.insert(params![run_id, first as i64, last as i64, chunks, expires_at])
                    })
                    .map_err(store_error)?;
                run.written = true;
                run.waiting_since.get_or_insert_with(Instant::now);
                run.entries.push(Entry {
                    first_event_id: first,
                    last_event_id: last,
                    row,
                    expires_at,
                    committed: false,
                    indexed: false,
                });
                memory.waiting += 1;
                memory.index_due(c, &run_id);
                memory.in_batch.push(run_id);
                if sweep {
                    // The engine's clock, not this machine's: the event was made
                    // STREAM_EVENT_TTL before it expires.
                    let now = expires_at - STREAM_EVENT_TTL.as_millis() as i64;
                    if let Err(e) = sweep_expired(c, &mut memory, now) {
                        tracing::warn!(error = %e, "sweeping expired stream events failed; a later frame retries");
                    }
                }
                Ok(())
            })
            .await
    }

    /// The run's unexpired events holding a chunk above `after_event_id`, in order.
    pub(crate) async fn after(
        &self,
        run_id: &str,
        after_event_id: u64,
        now: Millis,
    ) -> Result<Vec<StreamEvent>, StoreError> {
        // Memory first, then the file: an entry leaves memory only after the index holding it
        // was committed, and the read's snapshot is taken after this copy, so nothing is missed
        // between the two (an entry seen in both is taken once).
        let (recent, in_index) = {
            let memory = lock(&self.unindexed);
            match memory.runs.get(run_id) {
                Some(run) => (
                    run.entries
                        .iter()
                        .filter(|e| {
                            e.committed && e.last_event_id > after_event_id && e.expires_at > now
                        })
                        .map(|e| (e.first_event_id, e.row))
                        .collect::<Vec<_>>(),
                    run.indexed_through.is_none_or(|t| t > after_event_id),
                ),
                None => (Vec::new(), true),
            }
        };
        let run = run_id.to_owned();
        let rows: BTreeMap<i64, (String, i64)> = self
            .db
            .read(move |c| {
                let mut rows = BTreeMap::new();
                if in_index {
                    let mut stmt = c
                        .prepare_cached(
                            // Events of a run cover consecutive ids, so those ending after ?2
                            // start at the one holding ?2 + 1: seeking there (instead of
                            // filtering every event of the run, which holds all its turns)
                            // keeps this an index range of a row or two at a turn's start.
                            "SELECT i.first_event_id, e.chunks, e.expires_at
                             FROM stream_event_index i JOIN stream_events e ON e.id = i.event_row
                             WHERE i.run_id = ?1
                               AND i.first_event_id >= COALESCE(
                                   (SELECT MAX(first_event_id) FROM stream_event_index
                                    WHERE run_id = ?1 AND first_event_id <= ?2 + 1), 0)
                               AND i.last_event_id > ?2 AND i.expires_at > ?3
                               AND e.run_id = i.run_id",
                        )
                        .map_err(store_error)?;
                    let found = stmt
                        .query_map(params![run, after_event_id as i64, now], |r| {
                            Ok((r.get(0)?, (r.get(1)?, r.get(2)?)))
                        })
                        .map_err(store_error)?;
                    for row in found {
                        let (first, body) = row.map_err(store_error)?;
                        rows.insert(first, body);
                    }
                }
                let mut by_row = c
                    .prepare_cached(
                        "SELECT chunks, expires_at FROM stream_events
                         WHERE id = ?1 AND run_id = ?2 AND first_event_id = ?3",
                    )
                    .map_err(store_error)?;
                for (first, row) in recent {
                    let first = first as i64;
                    if rows.contains_key(&first) {
                        continue;
                    }
                    if let Some(body) = by_row
                        .query_row(params![row, run, first], |r| Ok((r.get(0)?, r.get(1)?)))
                        .optional()
                        .map_err(store_error)?
                    {
                        rows.insert(first, body);
                    }
                }
                Ok::<_, StoreError>(rows)
            })
            .await?;
        rows.into_iter()
            .map(|(first, (chunks, expires_at))| {
                Ok(StreamEvent {
                    run_id: run_id.to_owned(),
                    first_event_id: first as u64,
                    chunks: from_json(&chunks)?,
                    expires_at,
                })
            })
            .collect()
    }

    /// The id of the run's last persisted, unexpired chunk (`0` when none).
    pub(crate) async fn last_event_id(&self, run_id: &str, now: Millis) -> Result<u64, StoreError> {
        {
            let memory = lock(&self.unindexed);
            if let Some(run) = memory.runs.get(run_id) {
                // Ids only grow: the newest unexpired entry in memory ends last.
                if let Some(e) = run
                    .entries
                    .iter()
                    .rev()
                    .find(|e| e.committed && e.expires_at > now)
                {
                    return Ok(e.last_event_id);
                }
                if run.indexed_through == Some(0) {
                    return Ok(0);
                }
            }
        }
        let run_id = run_id.to_owned();
        self.db
            .read(move |c| {
                let last: Option<i64> = c
                    .query_row_cached(
                        // The newest event ends last (ids only grow): one index seek.
                        "SELECT last_event_id FROM stream_event_index
                         WHERE run_id = ?1 AND expires_at > ?2
                         ORDER BY first_event_id DESC LIMIT 1",
                        params![run_id, now],
                        |r| r.get(0),
                    )
                    .optional()
                    .map_err(store_error)?;
                Ok(last.unwrap_or(0) as u64)
            })
            .await
    }

    /// Deletes every event of the run.
    pub(crate) async fn delete_run(&self, run_id: String) -> Result<(), StoreError> {
        let unindexed = self.unindexed.clone();
        self.db
            .call(move |c| {
                let mut memory = lock(&unindexed);
                if let Some(run) = memory.runs.get(&run_id) {
                    let mut delete = c
                        .prepare_cached("DELETE FROM stream_events WHERE id = ?1")
                        .map_err(store_error)?;
                    for e in &run.entries {
                        delete.execute([e.row]).map_err(store_error)?;
                    }
                }
                for sql in [
                    "DELETE FROM stream_events WHERE id IN
                         (SELECT event_row FROM stream_event_index WHERE run_id = ?1)",
                    "DELETE FROM stream_event_index WHERE run_id = ?1",
                ] {
                    c.execute_cached(sql, [&run_id]).map_err(store_error)?;
                }
                // Forgotten once its rows are gone (had a delete failed, they would stay
                // readable until they expire).
                if let Some(run) = memory.runs.remove(&run_id) {
                    memory.waiting -= run.entries.iter().filter(|e| !e.indexed).count();
                }
                Ok(())
            })
            .await
    }

    /// How many rows `table` of the file holds (for tests).
    #[cfg(test)]
    async fn count(&self, table: &'static str) -> i64 {
        self.db
            .read(move |c| {
                c.query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |r| r.get(0))
                    .map_err(store_error)
            })
            .await
            .expect("counting rows")
    }

    /// How many events the file holds (for tests).
    #[cfg(test)]
    async fn stored(&self) -> i64 {
        self.count("stream_events").await
    }

    /// How many entries the file's index holds (for tests).
    #[cfg(test)]
    async fn indexed(&self) -> i64 {
        self.count("stream_event_index").await
    }
}

/// Whether the run already has an event starting at `first`: in memory, or in the index when
/// the index reaches that far (looked up once per run, then known).
fn is_written(
    c: &rusqlite::Connection,
    run: &mut RunEntries,
    run_id: &str,
    first: u64,
) -> Result<bool, StoreError> {
    if run.entries.iter().any(|e| e.first_event_id == first) {
        return Ok(true);
    }
    let indexed_through = match run.indexed_through {
        Some(through) => through,
        None => {
            let through: Option<i64> = c
                .query_row_cached(
                    "SELECT last_event_id FROM stream_event_index WHERE run_id = ?1
                     ORDER BY first_event_id DESC LIMIT 1",
                    [run_id],
                    |r| r.get(0),
                )
                .optional()
                .map_err(store_error)?;
            let through = through.unwrap_or(0) as u64;
            run.indexed_through = Some(through);
            through
        }
    };
    if first > indexed_through {
        return Ok(false);
    }
    c.query_row_cached(
        "SELECT EXISTS (SELECT 1 FROM stream_event_index WHERE run_id = ?1 AND first_event_id = ?2)",
        params![run_id, first as i64],
        |r| r.get(0),
    )
    .map_err(store_error)
}

/// Deletes up to [`SWEEP_AT_MOST`] of the oldest stream events, those expired by `now`, with
/// their entries. Events are appended in time order with the same lifetime, so the expired ones
/// are the first rows: the sweep reads only those, never the whole table.
fn sweep_expired(
    c: &rusqlite::Connection,
    memory: &mut Unindexed,
    now: Millis,
) -> rusqlite::Result<()> {
    // Nearly always nothing has expired: one row tells.
    let oldest: Option<Millis> = c
        .query_row_cached(
            "SELECT expires_at FROM stream_events ORDER BY id LIMIT 1",
            [],
            |r| r.get(0),
        )
        .optional()?;
    if oldest.is_none_or(|expires_at| expires_at > now) {
        return Ok(());
    }
    c.execute_batch("SAVEPOINT sweep")?;
    let swept = (|| {
        let mut deleted: Vec<(i64, String, i64)> = Vec::new();
        let mut delete = c.prepare_cached(
            "DELETE FROM stream_events WHERE id IN (SELECT id FROM stream_events ORDER BY id LIMIT ?1)
             AND expires_at <= ?2 RETURNING id, run_id, first_event_id",
        )?;
        let mut rows = delete.query(params![SWEEP_AT_MOST, now])?;
        while let Some(row) = rows.next()? {
            deleted.push((row.get(0)?, row.get(1)?, row.get(2)?));
        }
        drop(rows);
        let mut unindex = c.prepare_cached(
            "DELETE FROM stream_event_index WHERE run_id = ?1 AND first_event_id = ?2",
        )?;
        for (_, run_id, first) in &deleted {
            unindex.execute(params![run_id, first])?;
        }
        Ok(deleted)
    })();
    let deleted = match swept {
        Ok(deleted) => deleted,
        Err(e) => {
            // The rows are still there (and in memory): the next sweep deletes them.
            let _ = c.execute_batch("ROLLBACK TO sweep; RELEASE sweep");
            return Err(e);
        }
    };
    c.execute_batch("RELEASE sweep")?;
    // An event that expired before it was indexed leaves memory too.
    for (row, run_id, _) in deleted {
        if let Some(run) = memory.runs.get_mut(&run_id)
            && let Some(at) = run.entries.iter().position(|e| e.row == row)
            && !run.entries.remove(at).indexed
        {
            memory.waiting -= 1;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use chatrun_core::chunk::UIMessageChunk;

    const DAY_ONE: Millis = 1_800_000_000_000;

    fn ttl() -> Millis {
        STREAM_EVENT_TTL.as_millis() as i64
    }

    /// An event of `chunks` chunks starting at `first_event_id`.
    fn event(run_id: &str, first_event_id: u64, chunks: usize, expires_at: Millis) -> StreamEvent {
        StreamEvent {
            run_id: run_id.into(),
            first_event_id,
            chunks: (0..chunks)
                .map(|i| UIMessageChunk::TextDelta {
                    id: "t".into(),
                    delta: format!("{first_event_id}.{i}"),
                    provider_metadata: None,
                })
                .collect(),
            expires_at,
        }
    }

    impl EventLog {
        /// The log at `path`, writing its index only when told ([`Self::index_at_next_append`]),
        /// however long a test takes.
        fn open_for_test(path: &Path) -> EventLog {
            let log = EventLog::open(path).unwrap();
            lock(&log.unindexed).index_every = Duration::from_secs(24 * 3600);
            log
        }

        /// Makes the next append write the index.
        fn index_at_next_append(&self) {
            lock(&self.unindexed).index_next = true;
        }
    }

    fn firsts(events: &[StreamEvent]) -> Vec<u64> {
        events.iter().map(|e| e.first_event_id).collect()
    }

    /// Appends events of two chunks each to `run`, from `first` on, `count` of them.
    async fn append_run(log: &EventLog, run: &str, first: u64, count: u64) {
        for n in 0..count {
            log.append(&event(run, first + 2 * n, 2, DAY_ONE + ttl()))
                .await
                .unwrap();
        }
    }

    /// Makes `run`'s oldest waiting entry `age` old, with runs due after ten seconds (so
    /// that no run comes due on its own, however slowly the test runs).
    fn age_run(log: &EventLog, run: &str, age: Duration) {
        let mut memory = lock(&log.unindexed);
        memory.index_every = Duration::from_secs(10);
        memory.runs.get_mut(run).unwrap().waiting_since = Some(Instant::now() - age);
    }

    #[tokio::test]
    async fn each_run_is_indexed_on_its_own_clock_and_idle_runs_by_the_periodic_pass() {
        let dir = tempfile::tempdir().unwrap();
        let log = EventLog::open_for_test(&dir.path().join("e.sqlite3"));
        append_run(&log, "a", 1, 2).await;
        append_run(&log, "b", 1, 3).await;
        assert_eq!(log.indexed().await, 0);

        // a's oldest entry is past due: a's next frame indexes a's entries, and only those.
        age_run(&log, "a", Duration::from_secs(20));
        append_run(&log, "a", 5, 1).await;
        assert_eq!(log.indexed().await, 3, "a's three, not b's");
        assert_eq!(lock(&log.unindexed).waiting, 3, "b's three wait");

        // b writes nothing more; the periodic pass indexes it and (its second come) moves the
        // watermark to just below the first entry still waiting (a's, written after the pass).
        age_run(&log, "b", Duration::from_secs(20));
        {
            let mut memory = lock(&log.unindexed);
            memory.last_idle_pass = Instant::now() - INDEX_IDLE_EVERY;
            memory.last_watermark = Instant::now() - Duration::from_secs(20);
        }
        append_run(&log, "a", 7, 1).await;
        assert_eq!(log.indexed().await, 6, "b's three joined");
        assert_eq!(lock(&log.unindexed).waiting, 1, "a's newest waits");
        let watermark: i64 = log
            .db
            .read(|c| {
                c.query_row(
                    "SELECT event_row FROM stream_event_index_through",
                    [],
                    |r| r.get(0),
                )
                .map_err(store_error)
            })
            .await
            .unwrap();
        assert_eq!(watermark, 6, "rows 1 to 6 are indexed, row 7 waits");

        // Reads see every event, indexed or not.
        assert_eq!(
            firsts(&log.after("a", 0, DAY_ONE).await.unwrap()),
            [1, 3, 5, 7]
        );
        assert_eq!(
            firsts(&log.after("b", 0, DAY_ONE).await.unwrap()),
            [1, 3, 5]
        );
    }

    #[tokio::test]
    async fn reads_find_events_both_in_the_index_and_not_yet_in_it() {
        let dir = tempfile::tempdir().unwrap();
        let log = EventLog::open_for_test(&dir.path().join("e.sqlite3"));
        // Two runs interleaved: ids 1,3,5,7 each (two chunks per event).
        for n in 0..4 {
            append_run(&log, "a", 1 + 2 * n, 1).await;
            append_run(&log, "b", 1 + 2 * n, 1).await;
        }
        assert_eq!(
            log.indexed().await,
            0,
            "nothing is indexed before a second has passed"
        );
        log.index_at_next_append();
        append_run(&log, "a", 9, 1).await;
        assert_eq!(
            log.indexed().await,
            9,
            "the index holds all nine, written together"
        );
        append_run(&log, "a", 11, 2).await;
        append_run(&log, "b", 9, 1).await;
        assert_eq!(log.stored().await, 12);

        let a = log.after("a", 0, DAY_ONE).await.unwrap();
        assert_eq!(firsts(&a), [1, 3, 5, 7, 9, 11, 13]);
        assert_eq!(
            a.iter().map(|e| e.chunks.len()).sum::<usize>(),
            14,
            "every chunk once"
        );
        // From the middle of an indexed event, the end of one, and one not yet indexed.
        assert_eq!(
            firsts(&log.after("a", 7, DAY_ONE).await.unwrap()),
            [7, 9, 11, 13]
        );
        assert_eq!(
            firsts(&log.after("a", 8, DAY_ONE).await.unwrap()),
            [9, 11, 13]
        );
        assert_eq!(
            firsts(&log.after("a", 11, DAY_ONE).await.unwrap()),
            [11, 13]
        );
        assert_eq!(
            firsts(&log.after("a", 14, DAY_ONE).await.unwrap()),
            Vec::<u64>::new()
        );
        assert_eq!(
            firsts(&log.after("b", 5, DAY_ONE).await.unwrap()),
            [5, 7, 9]
        );
        assert_eq!(log.last_event_id("a", DAY_ONE).await.unwrap(), 14);
        assert_eq!(log.last_event_id("b", DAY_ONE).await.unwrap(), 10);
        assert_eq!(log.last_event_id("c", DAY_ONE).await.unwrap(), 0);
        // Expired: none of it.
        let later = DAY_ONE + ttl();
        assert!(log.after("a", 0, later).await.unwrap().is_empty());
        assert_eq!(log.last_event_id("a", later).await.unwrap(), 0);
    }

    #[tokio::test]
    async fn a_frame_is_written_once_whether_or_not_it_is_indexed_yet() {
        let dir = tempfile::tempdir().unwrap();
        let log = EventLog::open_for_test(&dir.path().join("e.sqlite3"));
        append_run(&log, "a", 1, 2).await;
        log.index_at_next_append();
        append_run(&log, "a", 5, 1).await;
        append_run(&log, "a", 7, 1).await;
        for (first, where_) in [(1, "indexed"), (5, "indexed"), (7, "in memory")] {
            let again = log.append(&event("a", first, 1, DAY_ONE + ttl())).await;
            assert!(
                matches!(again, Err(StoreError::Conflict(_))),
                "event {first} ({where_}) a second time: {again:?}"
            );
        }
        assert_eq!(log.stored().await, 4, "nothing more was written");
        log.close();
        // Reopened (the index lookup starts from nothing): still refused.
        let log = EventLog::open_for_test(&dir.path().join("e.sqlite3"));
        for first in [3, 7] {
            assert!(matches!(
                log.append(&event("a", first, 1, DAY_ONE + ttl())).await,
                Err(StoreError::Conflict(_))
            ));
        }
    }

    #[tokio::test]
    async fn events_not_yet_indexed_are_read_back_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("e.sqlite3");
        {
            let log = EventLog::open_for_test(&path);
            append_run(&log, "a", 1, 3).await;
            log.index_at_next_append();
            append_run(&log, "a", 7, 1).await;
            append_run(&log, "a", 9, 3).await;
            assert_eq!(log.indexed().await, 4);
            // Stopped without indexing the last three (as a crash would).
            log.close();
        }
        let log = EventLog::open_for_test(&path);
        assert_eq!(
            firsts(&log.after("a", 0, DAY_ONE).await.unwrap()),
            [1, 3, 5, 7, 9, 11, 13]
        );
        assert_eq!(
            firsts(&log.after("a", 9, DAY_ONE).await.unwrap()),
            [9, 11, 13]
        );
        assert_eq!(log.last_event_id("a", DAY_ONE).await.unwrap(), 14);
        // The next indexing writes them.
        log.index_at_next_append();
        append_run(&log, "a", 15, 1).await;
        assert_eq!(log.indexed().await, 8);
    }

    #[tokio::test]
    async fn deleting_a_run_deletes_its_events_indexed_or_not() {
        let dir = tempfile::tempdir().unwrap();
        let log = EventLog::open_for_test(&dir.path().join("e.sqlite3"));
        append_run(&log, "a", 1, 2).await;
        append_run(&log, "b", 1, 2).await;
        log.index_at_next_append();
        append_run(&log, "a", 5, 2).await;
        log.delete_run("a".into()).await.unwrap();
        assert!(log.after("a", 0, DAY_ONE).await.unwrap().is_empty());
        assert_eq!(log.last_event_id("a", DAY_ONE).await.unwrap(), 0);
        assert_eq!(log.stored().await, 2, "only b's are left");
        assert_eq!(firsts(&log.after("b", 0, DAY_ONE).await.unwrap()), [1, 3]);
        // The run may start over (a new chat cannot reuse a run id, but nothing stale remains).
        append_run(&log, "a", 1, 1).await;
        assert_eq!(firsts(&log.after("a", 0, DAY_ONE).await.unwrap()), [1]);
    }

    #[tokio::test]
    async fn expired_stream_events_are_swept_as_new_ones_are_written() {
        let dir = tempfile::tempdir().unwrap();
        let log = EventLog::open_for_test(&dir.path().join("e.sqlite3"));
        for id in 1..=300 {
            log.append(&event("old", id, 1, DAY_ONE + ttl()))
                .await
                .unwrap();
            if id == 100 {
                log.index_at_next_append();
            }
        }
        // The append after the 100th wrote the index, itself included.
        assert_eq!(log.indexed().await, 101);
        // A day later: the first day's events have expired.
        let day_two = DAY_ONE + ttl();
        for id in 1..=2 * SWEEP_EVERY_EVENTS {
            log.append(&event("new", id, 1, day_two + ttl()))
                .await
                .unwrap();
        }
        assert_eq!(
            log.stored().await,
            2 * SWEEP_EVERY_EVENTS as i64,
            "every expired event is gone and every live one kept"
        );
        assert_eq!(log.indexed().await, 0, "with their index entries");
        assert_eq!(
            log.last_event_id("new", day_two).await.unwrap(),
            2 * SWEEP_EVERY_EVENTS
        );
        assert_eq!(
            lock(&log.unindexed)
                .runs
                .get("old")
                .map(|r| r.entries.len()),
            Some(0)
        );
    }

    #[tokio::test]
    async fn a_file_keyed_by_run_is_migrated_on_opening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("e.sqlite3");
        {
            let c = rusqlite::Connection::open(&path).unwrap();
            c.execute_batch(
                "CREATE TABLE events (
                    run_id TEXT NOT NULL, first_event_id INTEGER NOT NULL,
                    last_event_id INTEGER NOT NULL, chunks TEXT NOT NULL,
                    expires_at INTEGER NOT NULL, PRIMARY KEY (run_id, first_event_id));",
            )
            .unwrap();
            for (run, first, last) in [("a", 1, 2), ("b", 1, 1), ("a", 3, 3)] {
                let chunks =
                    to_json(&event(run, first, (last - first + 1) as usize, 0).chunks).unwrap();
                c.execute(
                    "INSERT INTO events VALUES (?1, ?2, ?3, ?4, ?5)",
                    params![run, first, last, chunks, DAY_ONE + ttl()],
                )
                .unwrap();
            }
        }
        let log = EventLog::open_for_test(&path);
        assert_eq!(firsts(&log.after("a", 0, DAY_ONE).await.unwrap()), [1, 3]);
        assert_eq!(log.last_event_id("a", DAY_ONE).await.unwrap(), 3);
        assert_eq!(log.indexed().await, 3);
        assert!(matches!(
            log.append(&event("a", 3, 1, DAY_ONE + ttl())).await,
            Err(StoreError::Conflict(_))
        ));
        log.close();
        let c = rusqlite::Connection::open(&path).unwrap();
        let old: bool = c
            .query_row(
                "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE name = 'events')",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert!(!old, "the old table is gone");
    }

    #[test]
    fn a_failed_commit_leaves_in_memory_only_what_the_file_holds() {
        let c = rusqlite::Connection::open_in_memory().unwrap();
        c.execute_batch(SCHEMA).unwrap();
        c.execute(
            "INSERT INTO stream_events (run_id, first_event_id, last_event_id, chunks, expires_at)
             VALUES ('a', 1, 2, '[]', 0)",
            [],
        )
        .unwrap();
        let mut memory = Unindexed::new();
        memory.reload(&c).unwrap();
        // A frame written in a batch whose commit then failed: the file does not have it.
        memory.runs.get_mut("a").unwrap().entries.push(Entry {
            first_event_id: 3,
            last_event_id: 3,
            row: 2,
            expires_at: 0,
            committed: false,
            indexed: false,
        });
        memory.in_batch.push("a".into());
        memory.after_batch(&c, Committed::No);
        let entries = &memory.runs["a"].entries;
        assert_eq!(entries.len(), 1, "{entries:?}");
        assert!(entries[0].committed && entries[0].first_event_id == 1);
        assert_eq!(memory.waiting, 1);
        assert!(memory.in_batch.is_empty());
    }
}
