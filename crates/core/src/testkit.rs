//! In-memory adapters and port conformance suites (feature `test-util`).
