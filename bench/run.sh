#!/usr/bin/env bash
# `make bench`: the figures of BENCHMARKS.md. Builds chatrun and the load generator in release,
# then measures the floor, chatrun and the Node AI SDK peer with the same load, in one run per
# size, and prints one table per size. Extra arguments go to every `chatrun-bench run`, e.g.
# `make bench BENCH_ARGS="--chatrun before=/tmp/chatrun-before --chatrun after=target/release/chatrun"`.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release -p chatrun-local --bin chatrun -p chatrun-bench
bench=target/release/chatrun-bench
load=(--turns 3 --tokens 85 --rate 30)

echo "== $(date -u '+%Y-%m-%d %H:%M UTC'), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
# Three rounds at 200 and 1,000 chats: the medians, since this machine drifts by 10% or more
# from one minute to the next.
echo "== 200 chats: floor, chatrun, Node peer (3 rounds)"
"$bench" run --chats 200 "${load[@]}" --targets floor,chatrun,node --rounds 3 "$@"
echo "== 1,000 chats: floor, chatrun (3 rounds; the Node peer falls over at this size: connect timeouts)"
"$bench" run --chats 1000 "${load[@]}" --targets floor,chatrun --rounds 3 "$@"
echo "== 5,000 chats: floor, chatrun"
"$bench" run --chats 5000 "${load[@]}" --targets floor,chatrun "$@"
