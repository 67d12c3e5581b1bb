#!/usr/bin/env bash
# Every test of the project: formatting, lints, Rust tests (end-to-end ones start the real
# gateway themselves), the web app's type check, unit tests and browser tests.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== cargo fmt --check"
cargo fmt --all --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --all-features -- -D warnings
echo "== emulators (DynamoDB Local, moto) for the AWS adapter tests"
bash scripts/emulators/install.sh
echo "== cargo test"
# crates/aws/tests/https_client.rs makes its throwaway CA with the openssl command.
if ! command -v openssl >/dev/null; then
  SUDO=""; if [ "$(id -u)" != "0" ]; then SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq openssl >/dev/null
fi
cargo test --workspace
echo "== the end-to-end tests again on the AWS adapters (DynamoDB Local, moto, @connections)"
CHATRUN_TEST_BACKEND=aws cargo test -p chatrun-local --test conversation --test bad_input --test reliability --test pipeline --test authz --test limits
echo "== the Lambda binaries under cargo lambda watch, invoked with functions/*/fixtures"
bash scripts/lambda-watch-test.sh
cargo build -p chatrun-local --bin chatrun
echo "== benchmark smoke run (chatrun-bench against the debug chatrun and the floor)"
cargo run -q -p chatrun-bench -- smoke --chatrun target/debug/chatrun

echo "== web: install, type check, unit tests, build"
(cd web && npm ci --no-audit --no-fund && npm run typecheck && npm test && npm run build)
echo "== web: browser tests (headless Chromium against chatrun serve)"
bash web/scripts/ensure-chromium.sh
(cd web && npm run test:browser)

echo "== infra: CDK assertion tests and an offline synth"
(cd infra && npm ci --no-audit --no-fund && npm test && npx cdk synth --quiet -c placeholderAssets=true > /dev/null)
