// Checks the function bootstraps of a synthesised cloud assembly (default cdk.out): each must be
// an aarch64 release build within the size budget. `make deploy` runs it between synth and
// deploy; the long test runs it on a real build. Exits 1 with one line per problem.
import { assemblyBootstraps } from '../lib/bootstraps.js';

const dir = process.argv[2] ?? 'cdk.out';
const found = assemblyBootstraps(dir);
let failed = found.length === 0;
if (failed) console.error(`${dir}: no chatrun function bootstraps found`);
for (const { name, bytes, problems } of found) {
  console.log(`${name.padEnd(13)} ${(bytes / 1048576).toFixed(2)} MiB  ${problems.length === 0 ? 'ok' : 'REFUSED'}`);
  for (const p of problems) console.error(`  ${p}`);
  failed ||= problems.length > 0;
}
process.exit(failed ? 1 : 0);
