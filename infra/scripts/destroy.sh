#!/usr/bin/env bash
# `make destroy`: deletes the stack. `cdk destroy` bundles nothing, so it builds no code. With
# deletion protection on (the default), the table and the token secret stay (infra/README.md).
set -euo pipefail
cd "$(dirname "$0")/.."
npm ci --no-audit --no-fund
npx cdk destroy --force "$@"
