#!/usr/bin/env bash
# `make fuzz`: runs every cargo-fuzz target in fuzz/ for FUZZ_SECS seconds each (default 60),
# one job each, adding what it finds to fuzz/corpus/. Needs the nightly toolchain (libFuzzer's
# sanitizer flags); installs cargo-fuzz when missing. Not part of `make test`: the committed
# corpus and fuzz/regressions/ run there on stable (crates/core/tests/fuzz_corpus.rs).
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
command -v cargo-fuzz > /dev/null || cargo install cargo-fuzz --locked
for target in client_frame ui_message chunk_stream turn_chunks; do
  echo "== $target"
  cargo +nightly fuzz run "$target" -- -max_total_time="${FUZZ_SECS:-60}" -rss_limit_mb=2048 -print_final_stats=1
done
