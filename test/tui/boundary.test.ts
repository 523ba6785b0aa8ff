// Data flows one way: the dashboard only imports the public types, never the pipeline.
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { expect, it } from 'vitest';

const TUI = join(import.meta.dirname, '..', '..', 'tui');

it('tui/ imports nothing from src/ but the public types', () => {
  const files = readdirSync(TUI, { recursive: true, encoding: 'utf8' }).filter((f) => /\.tsx?$/.test(f));
  expect(files.length).toBeGreaterThan(5);
  for (const file of files) {
    const imports = [...readFileSync(join(TUI, file), 'utf8').matchAll(/from '([^']+)'/g)].map((m) => m[1]!);
    for (const spec of imports.filter((s) => s.includes('/src/'))) {
      expect(`${file}: ${spec}`).toMatch(/: (\.\.\/)+src\/types\.js$/);
    }
  }
});
