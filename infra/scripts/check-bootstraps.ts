// Checks the function bootstraps of a synthesised cloud assembly (default cdk.out): each must be
// an aarch64 release build, and with `--size` within the 6 MiB budget. `make deploy` runs it
// between synth and deploy (without `--size`: the budget is a benchmark target, BENCHMARKS.md,
// not a reason to refuse a correct build). Exits 1 with one line per problem.
import { assemblyBootstraps, BOOTSTRAP_SIZE_LIMIT_BYTES } from '../lib/bootstraps.js';

const args = process.argv.slice(2);
const dir = args.find((a) => !a.startsWith('--')) ?? 'cdk.out';
const found = assemblyBootstraps(dir, args.includes('--size') ? BOOTSTRAP_SIZE_LIMIT_BYTES : null);
let failed = found.length === 0;
if (failed) console.error(`${dir}: no chatrun function bootstraps found`);
for (const { name, bytes, problems } of found) {
  console.log(`${name.padEnd(13)} ${(bytes / 1048576).toFixed(2)} MiB  ${problems.length === 0 ? 'ok' : 'REFUSED'}`);
  for (const p of problems) console.error(`  ${p}`);
  failed ||= problems.length > 0;
}
process.exit(failed ? 1 : 0);
