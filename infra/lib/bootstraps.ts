// What a Lambda bootstrap must be before it is deployed to an arm64 function: an aarch64 ELF
// executable built in release (stripped: no symbol table, no debug sections), within the size
// budget of BENCHMARKS.md. Read from the ELF header and section headers; no tools needed.
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';

/** Every bootstrap must be at most this large: 6 MiB (issue 11; BENCHMARKS.md). */
export const BOOTSTRAP_SIZE_LIMIT_BYTES = 6 * 1024 * 1024;

const EM_AARCH64 = 183;
const EM_X86_64 = 62;

export interface BootstrapFacts {
  readonly machine: 'aarch64' | 'x86_64' | `machine ${number}` | 'not ELF';
  /** Names of the sections a release build strips: `.symtab` and `.debug_*`. */
  readonly unstrippedSections: string[];
  readonly bytes: number;
}

/** Reads the facts of an ELF64 little-endian file. */
export function inspectBootstrap(path: string): BootstrapFacts {
  const bytes = statSync(path).size;
  const elf = readFileSync(path);
  if (elf.length < 64 || elf.readUInt32BE(0) !== 0x7f454c46 || elf[4] !== 2 || elf[5] !== 1) {
    return { machine: 'not ELF', unstrippedSections: [], bytes };
  }
  const machineCode = elf.readUInt16LE(18);
  const machine = machineCode === EM_AARCH64 ? 'aarch64' : machineCode === EM_X86_64 ? 'x86_64' : (`machine ${machineCode}` as const);
  const sectionOffset = Number(elf.readBigUInt64LE(40));
  const sectionSize = elf.readUInt16LE(58);
  const sectionCount = elf.readUInt16LE(60);
  const namesIndex = elf.readUInt16LE(62);
  const section = (i: number) => sectionOffset + i * sectionSize;
  const unstrippedSections: string[] = [];
  if (sectionOffset > 0 && namesIndex < sectionCount && section(sectionCount) <= elf.length) {
    const namesOffset = Number(elf.readBigUInt64LE(section(namesIndex) + 24));
    for (let i = 0; i < sectionCount; i++) {
      const start = namesOffset + elf.readUInt32LE(section(i));
      const end = elf.indexOf(0, start);
      const name = elf.toString('latin1', start, end < 0 ? start : end);
      if (name === '.symtab' || name.startsWith('.debug_')) unstrippedSections.push(name);
    }
  }
  return { machine, unstrippedSections, bytes };
}

/**
 * What is wrong with a bootstrap for an arm64 function, one line each; empty when nothing is.
 * @param sizeLimit the size budget in bytes; `null` to leave size unchecked.
 */
export function bootstrapProblems(path: string, sizeLimit: number | null = BOOTSTRAP_SIZE_LIMIT_BYTES): string[] {
  const facts = inspectBootstrap(path);
  const problems: string[] = [];
  if (facts.machine !== 'aarch64') problems.push(`${path}: ${facts.machine}, not an aarch64 ELF (build with cargo lambda build --arm64)`);
  if (facts.unstrippedSections.length > 0) {
    problems.push(`${path}: not a release build (has ${facts.unstrippedSections.slice(0, 3).join(', ')}; build with --profile lambda or --release)`);
  }
  if (sizeLimit !== null && facts.bytes > sizeLimit) {
    problems.push(`${path}: ${facts.bytes} bytes (${(facts.bytes / 1048576).toFixed(2)} MiB), over the ${(sizeLimit / 1048576).toFixed(2)} MiB budget`);
  }
  return problems;
}

export interface AssemblyBootstrap {
  readonly name: string;
  readonly path: string;
  readonly bytes: number;
  readonly problems: string[];
}

/**
 * The bootstraps of the chatrun functions in a synthesised cloud assembly (`cdk.out`), each with
 * its problems: a function's `Code.S3Key` names its file asset in `{stack}.assets.json`, whose
 * source is the directory that will be zipped and uploaded.
 */
export function assemblyBootstraps(assemblyDir: string, sizeLimit: number | null = BOOTSTRAP_SIZE_LIMIT_BYTES): AssemblyBootstrap[] {
  const found: AssemblyBootstrap[] = [];
  for (const file of readdirSync(assemblyDir).filter((f) => f.endsWith('.template.json'))) {
    const template = JSON.parse(readFileSync(join(assemblyDir, file), 'utf8'));
    const manifest = join(assemblyDir, file.replace(/\.template\.json$/, '.assets.json'));
    const assets: Record<string, { source: { path: string } }> = existsSync(manifest) ? JSON.parse(readFileSync(manifest, 'utf8')).files ?? {} : {};
    for (const resource of Object.values(template.Resources ?? {}) as any[]) {
      const description = String(resource.Properties?.Description ?? '');
      if (resource.Type !== 'AWS::Lambda::Function' || !description.startsWith('chatrun ')) continue;
      const name = description.slice('chatrun '.length);
      const asset = assets[String(resource.Properties.Code?.S3Key ?? '').replace(/\.zip$/, '')];
      const path = asset ? join(assemblyDir, asset.source.path, 'bootstrap') : '';
      if (!asset || !existsSync(path)) {
        found.push({ name, path, bytes: 0, problems: [`${name}: no bootstrap in the assembly's assets`] });
        continue;
      }
      found.push({ name, path, bytes: statSync(path).size, problems: bootstrapProblems(path, sizeLimit) });
    }
  }
  return found;
}
