//! The in-memory store keeps the same contracts as the real ones.

use chatrun_core::testkit::memory::MemoryChatStore;
use chatrun_core::testkit::store_conformance;

#[tokio::test]
async fn the_memory_store_passes_the_store_conformance_suite() {
    store_conformance::run_all(&MemoryChatStore::new()).await;
}

#[tokio::test]
async fn the_memory_store_passes_the_limits_conformance_suite() {
    chatrun_core::testkit::limits_conformance::run_all(&MemoryChatStore::new()).await;
}
