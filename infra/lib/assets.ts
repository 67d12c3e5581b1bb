// Where the function code and the page come from, decided once per synth (bin/app.ts):
// built by cargo-lambda-cdk (the default), prebuilt and checked, or placeholders that cannot
// run, which only an explicit context flag (tests, offline synth) or a synth that bundles
// nothing (`cdk destroy`, `cdk ls`) gets.
import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { cargoLambdaVersion } from 'cargo-lambda-cdk';
import { bootstrapProblems } from './bootstraps.js';
import { FUNCTION_NAMES, type FunctionCode } from './chatrun-stack.js';

/**
 * A temporary directory, removed when this process exits: a synth has copied its assets into
 * `cdk.out` by then, and tests that synth many times would otherwise leave one per synth.
 */
const tempDirs: string[] = [];
function processTempDir(prefix: string): string {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  if (tempDirs.push(dir) === 1) {
    process.once('exit', () => {
      for (const made of tempDirs) rmSync(made, { recursive: true, force: true });
    });
  }
  return dir;
}

export function placeholderFunctionAssets(): string {
  const dir = processTempDir('chatrun-functions-');
  for (const name of FUNCTION_NAMES) {
    mkdirSync(join(dir, name));
    writeFileSync(join(dir, name, 'bootstrap'), '#!/bin/sh\necho "placeholder: build with cargo lambda" >&2\nexit 1\n', { mode: 0o755 });
  }
  return dir;
}

export function placeholderWebDist(): string {
  const dir = processTempDir('chatrun-web-');
  writeFileSync(join(dir, 'index.html'), '<!doctype html><title>chatrun</title><p>Build the web app (cd web && npm run build) and deploy again.</p>');
  return dir;
}

export interface AssetChoice {
  readonly functionCode: FunctionCode;
  readonly webDist: string;
}

/** A synth that cannot produce deployable assets. */
export class AssetError extends Error {}

/**
 * The assets of this synth.
 * @param functionAssets context `functionAssets`: unset for RustFunction, or a directory of
 *   prebuilt `{name}/bootstrap`s.
 * @param placeholders context `placeholderAssets=true`: stand-ins (never deploy them).
 * @param bundling whether this synth bundles assets at all (false for `cdk destroy`).
 * @throws AssetError when the assets would not be what a deploy should ship.
 */
export function chooseAssets(opts: { repoRoot: string; functionAssets?: string; placeholders: boolean; bundling: boolean }): AssetChoice {
  const builtWeb = join(opts.repoRoot, 'web/dist');
  const haveWeb = existsSync(join(builtWeb, 'index.html'));
  if (opts.placeholders || !opts.bundling) {
    return { functionCode: { kind: 'placeholder', dir: placeholderFunctionAssets() }, webDist: haveWeb ? builtWeb : placeholderWebDist() };
  }
  if (!haveWeb) throw new AssetError(`chatrun: no built web app in ${builtWeb}: run \`make deploy\` (or \`cd web && npm ci && npm run build\`) first.`);
  if (opts.functionAssets) {
    const dir = resolve(opts.repoRoot, opts.functionAssets);
    const problems = FUNCTION_NAMES.flatMap((name) => {
      const bootstrap = join(dir, name, 'bootstrap');
      // Size is the benchmark's business (BENCHMARKS.md); a deploy refuses wrong code only.
      return existsSync(bootstrap) ? bootstrapProblems(bootstrap, null) : [`${bootstrap}: missing`];
    });
    if (problems.length > 0) throw new AssetError(`chatrun: prebuilt functions in ${dir} cannot be deployed to arm64:\n  ${problems.join('\n  ')}`);
    return { functionCode: { kind: 'prebuilt', dir }, webDist: builtWeb };
  }
  if (!cargoLambdaVersion()) {
    throw new AssetError('chatrun: `cargo lambda` is not on PATH, so the functions cannot be built (cargo-lambda-cdk would fall back to Docker). Run `make deploy`, or install it: `python3 -m venv .venv && .venv/bin/pip install cargo-lambda` and put .venv/bin on PATH.');
  }
  return { functionCode: { kind: 'cargo-lambda' }, webDist: builtWeb };
}
