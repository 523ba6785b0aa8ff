import { describe, expect, it } from 'vitest';
import { BACKEND_NAMES } from '../../src/compute/backends.js';
import { cliEachTest } from '../support/cli-process.js';

const start = cliEachTest();

describe('serve --backend', () => {
  it('prints one compute-backend NDJSON line with the probe report of every candidate', async () => {
    const serve = start(['serve', '--port', '0', '--json', '--no-log']);
    await expect.poll(() => serve.lines.length, { timeout: 10_000 }).toBeGreaterThan(1);
    const line = JSON.parse(serve.lines[1]!) as { type: string; chosen: string; forced: boolean; candidates: { name: string; verdict: string }[] };
    expect(line.type).toBe('compute-backend');
    expect(line.forced).toBe(false);
    expect(line.candidates.map((c) => c.name)).toEqual([...BACKEND_NAMES]);
    expect(line.candidates.filter((c) => c.verdict === 'chosen').map((c) => c.name)).toEqual([line.chosen]);
  });

  it('forces the named backend and says so in one plain line', async () => {
    const serve = start(['serve', '--port', '0', '--backend', 'js-unrolled', '--no-log']);
    await expect.poll(() => serve.lines.length, { timeout: 10_000 }).toBeGreaterThan(1);
    expect(serve.lines[1]).toMatch(/^noisescope compute backend: js-unrolled \(forced, [\d.]+ GB\/s Gram: .+\)$/);
  });

  it.each([
    [['serve', '--backend', 'cuda']],
    [['demo', '--backend', '']],
  ])('refuses %j with exit 2 naming the flag and every choice, before listening', async (args) => {
    const run = start([...args, '--port', '0']);
    expect(await run.exit).toBe(2);
    expect(run.stderr()).toContain(`--backend must be one of ${BACKEND_NAMES.join(', ')}, got '${args[2]}'`);
    expect(run.lines).toEqual([]);
  });
});
