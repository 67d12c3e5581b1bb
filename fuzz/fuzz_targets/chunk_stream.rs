#![no_main]
// The property lives in chatrun-core's testkit so the corpus also runs as a stable test.
libfuzzer_sys::fuzz_target!(|data: &[u8]| chatrun_core::testkit::fuzz_checks::chunk_stream(data));
