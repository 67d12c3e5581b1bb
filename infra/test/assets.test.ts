// Which function code and page a synth uses, and the bootstrap check that keeps x86_64, debug
// or oversized builds out of arm64 functions. Bootstraps here are small ELF files written by the
// test with exactly the header fields and sections the check reads.
import assert from 'node:assert/strict';
import { chmodSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { AssetError, chooseAssets } from '../lib/assets.js';
import { BOOTSTRAP_SIZE_LIMIT_BYTES, bootstrapProblems, inspectBootstrap } from '../lib/bootstraps.js';
import { FUNCTION_NAMES } from '../lib/chatrun-stack.js';

/** Directories this file made, removed when its tests end. */
const made: string[] = [];
function tempDir(prefix: string): string {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  made.push(dir);
  return dir;
}
after(() => {
  for (const dir of made) rmSync(dir, { recursive: true, force: true });
});

const AARCH64 = 183;
const X86_64 = 62;

/** An ELF64 little-endian file for `machine` with the named sections, padded to `size` bytes. */
function elf(machine: number, sections: string[], size = 4096): Buffer {
  const names = ['', ...sections, '.shstrtab'];
  const strtab = Buffer.from(names.map((n) => `${n}\0`).join(''), 'latin1');
  const shoff = 64 + Math.ceil(strtab.length / 8) * 8;
  const file = Buffer.alloc(Math.max(size, shoff + 64 * names.length));
  file.writeUInt32BE(0x7f454c46, 0);
  file[4] = 2; // 64-bit
  file[5] = 1; // little-endian
  file[6] = 1;
  file.writeUInt16LE(2, 16); // executable
  file.writeUInt16LE(machine, 18);
  file.writeBigUInt64LE(BigInt(shoff), 40);
  file.writeUInt16LE(64, 52);
  file.writeUInt16LE(64, 58);
  file.writeUInt16LE(names.length, 60);
  file.writeUInt16LE(names.length - 1, 62);
  strtab.copy(file, 64);
  let nameOffset = 0;
  names.forEach((name, i) => {
    const header = shoff + i * 64;
    file.writeUInt32LE(nameOffset, header);
    file.writeUInt32LE(i === names.length - 1 ? 3 : 1, header + 4);
    if (i === names.length - 1) {
      file.writeBigUInt64LE(64n, header + 24);
      file.writeBigUInt64LE(BigInt(strtab.length), header + 32);
    }
    nameOffset += Buffer.byteLength(name, 'latin1') + 1;
  });
  return file;
}

const RELEASE = ['.text', '.rodata', '.data'];

function bootstrapDir(make: (name: string) => Buffer | undefined): string {
  const dir = tempDir('chatrun-bootstraps-');
  for (const name of FUNCTION_NAMES) {
    const content = make(name);
    if (!content) continue;
    mkdirSync(join(dir, name));
    writeFileSync(join(dir, name, 'bootstrap'), content, { mode: 0o755 });
  }
  return dir;
}

function repoWithWeb(): string {
  const root = tempDir('chatrun-repo-');
  mkdirSync(join(root, 'web/dist'), { recursive: true });
  writeFileSync(join(root, 'web/dist/index.html'), '<!doctype html>');
  return root;
}

/** Runs `body` with PATH holding only a `cargo` that answers `cargo lambda --version` (or none). */
function withCargoLambda<T>(installed: boolean, body: () => T): T {
  const bin = tempDir('chatrun-path-');
  if (installed) {
    writeFileSync(join(bin, 'cargo'), '#!/bin/sh\n[ "$1 $2" = "lambda --version" ] && echo "cargo-lambda 1.9.0" && exit 0\nexit 1\n');
    chmodSync(join(bin, 'cargo'), 0o755);
  }
  const saved = process.env.PATH;
  process.env.PATH = bin;
  try {
    return body();
  } finally {
    process.env.PATH = saved;
  }
}

describe('bootstrap check', () => {
  it('reads the machine and the sections a release build strips', () => {
    const dir = tempDir('chatrun-elf-');
    const write = (name: string, content: Buffer) => (writeFileSync(join(dir, name), content), join(dir, name));
    assert.deepEqual(inspectBootstrap(write('arm', elf(AARCH64, RELEASE))), { machine: 'aarch64', unstrippedSections: [], bytes: 4096 });
    assert.equal(inspectBootstrap(write('x86', elf(X86_64, RELEASE))).machine, 'x86_64');
    assert.deepEqual(inspectBootstrap(write('debug', elf(AARCH64, [...RELEASE, '.symtab', '.debug_info', '.debug_line']))).unstrippedSections, ['.symtab', '.debug_info', '.debug_line']);
    assert.equal(inspectBootstrap(write('script', Buffer.from('#!/bin/sh\nexit 1\n'))).machine, 'not ELF');
  });

  it('reads a real executable: the Node binary running this test', () => {
    const expected = { x64: 'x86_64', arm64: 'aarch64' }[process.arch as string];
    assert.ok(expected, `unexpected host ${process.arch}`);
    assert.equal(inspectBootstrap(process.execPath).machine, expected);
  });

  it('refuses x86_64, debug, non-ELF and oversized bootstraps, and accepts an aarch64 release build within budget', () => {
    const dir = tempDir('chatrun-elf-');
    const write = (name: string, content: Buffer) => (writeFileSync(join(dir, name), content), join(dir, name));
    assert.deepEqual(bootstrapProblems(write('ok', elf(AARCH64, RELEASE, BOOTSTRAP_SIZE_LIMIT_BYTES))), []);
    assert.match(bootstrapProblems(write('x86', elf(X86_64, RELEASE))).join(), /x86_64, not an aarch64 ELF/);
    assert.match(bootstrapProblems(write('debug', elf(AARCH64, [...RELEASE, '.debug_info']))).join(), /not a release build \(has \.debug_info/);
    assert.match(bootstrapProblems(write('script', Buffer.from('#!/bin/sh\n'))).join(), /not ELF/);
    const big = write('big', elf(AARCH64, RELEASE, BOOTSTRAP_SIZE_LIMIT_BYTES + 1));
    assert.match(bootstrapProblems(big).join(), /over the 6\.00 MiB budget/);
    assert.deepEqual(bootstrapProblems(big, null), [], 'size unchecked when asked');
  });
});

describe('asset choice', () => {
  it('builds with cargo-lambda-cdk by default, and says so when cargo lambda is missing instead of falling back to Docker', () => {
    const repoRoot = repoWithWeb();
    const chosen = withCargoLambda(true, () => chooseAssets({ repoRoot, placeholders: false, bundling: true }));
    assert.deepEqual(chosen, { functionCode: { kind: 'cargo-lambda' }, webDist: join(repoRoot, 'web/dist') });
    assert.throws(() => withCargoLambda(false, () => chooseAssets({ repoRoot, placeholders: false, bundling: true })), (e: Error) => e instanceof AssetError && /cargo lambda/.test(e.message));
  });

  it('refuses to synthesise without the built page unless placeholders are asked for', () => {
    const bare = tempDir('chatrun-repo-');
    assert.throws(() => withCargoLambda(true, () => chooseAssets({ repoRoot: bare, placeholders: false, bundling: true })), (e: Error) => e instanceof AssetError && /no built web app/.test(e.message));
    const flagged = chooseAssets({ repoRoot: bare, placeholders: true, bundling: true });
    assert.equal(flagged.functionCode.kind, 'placeholder');
    // `cdk destroy` bundles nothing, so it needs no built code either.
    assert.equal(chooseAssets({ repoRoot: bare, placeholders: false, bundling: false }).functionCode.kind, 'placeholder');
  });

  it('uses prebuilt bootstraps only when every one is an aarch64 release build', () => {
    const repoRoot = repoWithWeb();
    const good = bootstrapDir(() => elf(AARCH64, RELEASE));
    assert.deepEqual(chooseAssets({ repoRoot, functionAssets: good, placeholders: false, bundling: true }).functionCode, { kind: 'prebuilt', dir: good });
    // What `cargo lambda build` without --arm64 --release leaves in target/lambda.
    const hostDebug = bootstrapDir((name) => (name === 'run-turn' ? elf(X86_64, [...RELEASE, '.symtab', '.debug_line']) : elf(AARCH64, RELEASE)));
    assert.throws(
      () => chooseAssets({ repoRoot, functionAssets: hostDebug, placeholders: false, bundling: true }),
      (e: Error) => e instanceof AssetError && /run-turn\/bootstrap: x86_64/.test(e.message) && /run-turn\/bootstrap: not a release build/.test(e.message) && !/connect/.test(e.message),
    );
    const incomplete = bootstrapDir((name) => (name === 'api' ? undefined : elf(AARCH64, RELEASE)));
    assert.throws(() => chooseAssets({ repoRoot, functionAssets: incomplete, placeholders: false, bundling: true }), /api\/bootstrap: missing/);
  });

  it('never picks up target/lambda on its own', () => {
    // The old default: whatever `cargo lambda build` left there (x86_64 debug from the tests).
    const repoRoot = repoWithWeb();
    for (const name of FUNCTION_NAMES) {
      mkdirSync(join(repoRoot, 'target/lambda', name), { recursive: true });
      writeFileSync(join(repoRoot, 'target/lambda', name, 'bootstrap'), elf(AARCH64, RELEASE));
    }
    const chosen = withCargoLambda(true, () => chooseAssets({ repoRoot, placeholders: false, bundling: true }));
    assert.deepEqual(chosen.functionCode, { kind: 'cargo-lambda' });
  });
});
