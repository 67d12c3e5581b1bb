// The long test (`npm run test:long`, minutes): synthesises the default stack, so cargo-lambda-cdk
// really builds the five functions for arm64 with the `lambda` profile, into a temporary cloud
// assembly that no deploy reads, then checks every bootstrap it produced: aarch64, release
// (stripped), within the size budget. Needs cargo-lambda on PATH (.venv/bin) and the
// aarch64-unknown-linux-gnu target; CARGO_TARGET_DIR chooses where cargo builds.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { assemblyBootstraps, BOOTSTRAP_SIZE_LIMIT_BYTES } from '../../lib/bootstraps.js';
import { FUNCTION_NAMES } from '../../lib/chatrun-stack.js';

const infra = resolve(dirname(fileURLToPath(import.meta.url)), '../..');

it('the default synth builds arm64 release bootstraps, each within the size budget', { timeout: 3 * 3600_000 }, () => {
  assert.ok(existsSync(join(infra, '../web/dist/index.html')), 'build the web app first (cd web && npm run build)');
  const out = mkdtempSync(join(tmpdir(), 'chatrun-cdk-out-'));
  execFileSync('npx', ['cdk', 'synth', '--quiet', '--output', out], { cwd: infra, stdio: ['ignore', 'inherit', 'inherit'] });
  const found = assemblyBootstraps(out);
  for (const b of found) console.log(`${b.name}: ${b.bytes} bytes (${(b.bytes / 1048576).toFixed(2)} MiB)`);
  assert.deepEqual(found.map((b) => b.name).sort(), [...FUNCTION_NAMES].sort());
  for (const b of found) {
    assert.deepEqual(b.problems, [], b.name);
    assert.ok(b.bytes > 0 && b.bytes <= BOOTSTRAP_SIZE_LIMIT_BYTES);
  }
});
