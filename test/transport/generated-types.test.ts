import { execFileSync } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, relative } from 'node:path';
import { expect, it } from 'vitest';

const ROOT = join(import.meta.dirname, '..', '..');
const COMMITTED = join(ROOT, 'src', 'transport', 'generated');

function files(dir: string): string[] {
  return readdirSync(dir).flatMap((name) => {
    const path = join(dir, name);
    return statSync(path).isDirectory() ? files(path) : [path];
  });
}

it('keeps the committed proto types identical to what `npm run gen:types` generates', () => {
  const out = mkdtempSync(join(tmpdir(), 'noisescope-gen-'));
  try {
    const script = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')).scripts['gen:types'] as string;
    const args = script.split(' ').slice(1).map((a) => (a.startsWith('--outDir=') ? `--outDir=${out}` : a));
    execFileSync(join(ROOT, 'node_modules', '.bin', 'proto-loader-gen-types'), args, { cwd: ROOT });
    const fresh = files(out).map((f) => relative(out, f)).sort();
    expect(files(COMMITTED).map((f) => relative(COMMITTED, f)).sort()).toEqual(fresh);
    for (const file of fresh) {
      expect(readFileSync(join(COMMITTED, file), 'utf8'), file).toBe(readFileSync(join(out, file), 'utf8'));
    }
  } finally {
    rmSync(out, { recursive: true, force: true });
  }
});
