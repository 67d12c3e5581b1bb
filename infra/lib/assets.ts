// Stand-ins for build outputs, so the stack synthesises from a clean checkout (and in tests)
// without Rust or the web build. A stack synthesised with them must not be deployed.
import { mkdirSync, mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { FUNCTION_NAMES } from './chatrun-stack.js';

export function placeholderFunctionAssets(): string {
  const dir = mkdtempSync(join(tmpdir(), 'chatrun-functions-'));
  for (const name of FUNCTION_NAMES) {
    mkdirSync(join(dir, name));
    writeFileSync(join(dir, name, 'bootstrap'), '#!/bin/sh\necho "placeholder: build with cargo lambda" >&2\nexit 1\n', { mode: 0o755 });
  }
  return dir;
}

export function placeholderWebDist(): string {
  const dir = mkdtempSync(join(tmpdir(), 'chatrun-web-'));
  writeFileSync(join(dir, 'index.html'), '<!doctype html><title>chatrun</title><p>Build the web app (cd web && npm run build) and deploy again.</p>');
  return dir;
}
