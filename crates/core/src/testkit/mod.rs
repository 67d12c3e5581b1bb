//! Test support (feature `test-util`): in-memory adapters for unit tests, and the conformance
//! suites every adapter of a port runs, so that adapters cannot drift apart.
//!
//! - [`memory`]: `MemoryChatStore`, `RecordingTurnQueue`, `RecordingConnections`,
//!   `ManualClock`, `SequentialIds`, and [`memory::services`] to build `Services` from them.
//! - [`store_conformance`]: `run_all(&store)` for any `ChatStore`.
//! - [`limits_conformance`]: `run_all(&counters)` for any `UsageCounters`.
//! - [`queue_conformance`]: `run_all(make)` for any `TurnQueue + TurnQueueConsumer`.
//! - [`fuzz_checks`]: the properties the `fuzz/` targets check, also run over their corpus.

pub mod fuzz_checks;
pub mod limits_conformance;
pub mod memory;
pub mod queue_conformance;
pub mod store_conformance;
