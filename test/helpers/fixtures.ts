// Meta-shaped payloads with their signatures (secret "fixture-app-secret"), read as raw bytes.
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export const FIXTURE_SECRET = 'fixture-app-secret';
const dir = path.join(path.dirname(fileURLToPath(import.meta.url)), '..', 'fixtures');

export interface Fixture {
  name: string;
  body: Buffer;
  signature: string;
}

const signatures = new Map(
  readFileSync(path.join(dir, 'SIGNATURES.tsv'), 'utf8')
    .split('\n')
    .filter((l) => l && !l.startsWith('#'))
    .map((l) => {
      const [file, sig] = l.split('\t');
      return [file!, sig!] as const;
    }),
);

export function fixture(name: string): Fixture {
  const file = `${name}.json`;
  const signature = signatures.get(file);
  if (!signature) throw new Error(`no signature for fixture ${file}`);
  return { name, body: readFileSync(path.join(dir, file)), signature };
}
