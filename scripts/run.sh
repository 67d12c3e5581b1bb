#!/usr/bin/env bash
# Builds the web app (when npm is available) and starts the local gateway on http://127.0.0.1:3000.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -f web/package.json ] && command -v npm >/dev/null; then
  (cd web && npm ci --no-audit --no-fund && npm run build)
fi
exec cargo run --release -p chatrun-local --bin chatrun -- serve "$@"
