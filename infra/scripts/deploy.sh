#!/usr/bin/env bash
# `make deploy`: from a fresh clone with AWS credentials to a running chatrun. Installs what the
# build needs (the aarch64 Rust target, cargo-lambda with zig in .venv, npm packages), builds the
# page, bootstraps the CDK in the account/region (idempotent), synthesises the stack (which
# builds the five functions for arm64 with cargo-lambda-cdk), checks every bootstrap, and
# deploys exactly what it synthesised. Extra arguments go to `cdk deploy` (e.g. -c alarmEmail=...).
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD

command -v aws >/dev/null && { aws sts get-caller-identity >/dev/null || { echo "deploy: no working AWS credentials (aws configure, or AWS_PROFILE / AWS_ACCESS_KEY_ID)"; exit 1; }; }
rustup target list --installed | grep -qx aarch64-unknown-linux-gnu || rustup target add aarch64-unknown-linux-gnu
if [ ! -x .venv/bin/cargo-lambda ]; then
  python3 -m venv .venv
  .venv/bin/pip install -q 'cargo-lambda>=1.9,<2'
fi
export PATH="$ROOT/.venv/bin:$PATH"

echo "== web app"
(cd web && npm ci --no-audit --no-fund && npm run build)

echo "== CDK"
cd infra
npm ci --no-audit --no-fund
npx cdk bootstrap
rm -rf cdk.out
npx cdk synth --quiet "$@"
npx tsx scripts/check-bootstraps.ts cdk.out
npx cdk deploy --app cdk.out --require-approval never --outputs-file cdk.out/outputs.json "$@"
node -e '
const o = Object.values(require("./cdk.out/outputs.json"))[0];
console.log(`\nchatrun is up:\n  page       ${o.PageUrl}\n  WebSocket  ${o.WebSocketUrl}\n  HTTP API   ${o.ApiUrl}`);'
