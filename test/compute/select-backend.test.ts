import { describe, expect, it } from 'vitest';
import { parseBackendName } from '../../src/compute/backends.js';
import { createJsUnrolledBackend } from '../../src/compute/js-unrolled-backend.js';
import { createReferenceBackend } from '../../src/compute/reference-backend.js';
import type { GradientBlock, ReductionBackend } from '../../src/compute/reduction-backend.js';
import { fastest, selectBackend, type Candidate } from '../../src/compute/select-backend.js';
import { gramError } from '../../src/compute/probe-data.js';
import { randomBlock } from './check-backend.js';

// A fake clock: each addGram of a candidate advances it by that candidate's cost, so "fast" is
// decided by the test, not by this machine's timing.
function clocked(name: string, msPerGram: number, clock: { ms: number }, broken = false): Candidate {
  return {
    name,
    async create(): Promise<ReductionBackend> {
      const inner = createJsUnrolledBackend();
      return {
        ...inner,
        name,
        async addGram(block: GradientBlock, gram: Float64Array) {
          clock.ms += msPerGram;
          // The bug a tail loop gets wrong: the last element of every row is dropped.
          const used = broken ? { ...block, length: block.length - 1, values: dropLast(block) } : block;
          await inner.addGram(used, gram);
        },
      };
    },
  };
}
function dropLast(block: GradientBlock): Float32Array {
  const out = new Float32Array(block.gradients * (block.length - 1));
  for (let i = 0; i < block.gradients; i++) out.set(block.values.subarray(i * block.length, (i + 1) * block.length - 1), i * (block.length - 1));
  return out;
}

describe('selectBackend', () => {
  it('picks the fastest correct candidate; a faster wrong one and an unavailable one are rejected with reasons', async () => {
    const clock = { ms: 0 };
    const { backend, report } = await selectBackend({
      now: () => clock.ms,
      candidates: [
        clocked('slow', 10, clock),
        clocked('wrong-but-fastest', 1, clock, true),
        { name: 'missing', create: () => Promise.reject(new Error('no adapter')) },
        clocked('fast', 2, clock),
      ],
    });
    expect(report.chosen).toBe('fast');
    expect(backend.name).toBe('fast');
    const byName = Object.fromEntries(report.candidates.map((c) => [c.name, c]));
    expect(byName['wrong-but-fastest']?.verdict).toBe('wrong');
    expect(byName['wrong-but-fastest']?.reason).toMatch(/probe error/);
    expect(byName['missing']).toMatchObject({ verdict: 'unavailable', reason: 'no adapter' });
    expect(byName['slow']?.verdict).toBe('correct');
    expect(byName['slow']?.reason).toMatch(/slower/);
    expect(byName['fast']?.gramGBps).toBeGreaterThan(byName['slow']?.gramGBps as number);
    backend.dispose();
  });

  it('on this machine: the chosen backend is the fastest correct one it measured, and computes the right Gram', async () => {
    const { backend, report } = await selectBackend();
    const measured = report.candidates.filter((c) => c.gramGBps !== undefined);
    expect(Math.max(...measured.map((c) => c.gramGBps as number))).toBe(report.candidates.find((c) => c.name === report.chosen)?.gramGBps);
    for (const c of report.candidates) if (c.verdict !== 'chosen') expect(c.reason, c.name).toBeTruthy();
    expect(report.mode).toBe(backend.mode);
    const values = randomBlock(4, 777, 3);
    const [got, want] = [new Float64Array(16), new Float64Array(16)];
    await backend.addGram({ gradients: 4, length: 777, values }, got);
    await createReferenceBackend().addGram({ gradients: 4, length: 777, values }, want);
    expect(gramError(got, want, 4)).toBeLessThan(2e-5);
    backend.dispose();
  });

  it('--backend forces a correct backend, measuring only it', async () => {
    const { backend, report } = await selectBackend({ force: 'js-unrolled' });
    expect(report).toMatchObject({ chosen: 'js-unrolled', forced: true });
    expect(report.candidates.map((c) => c.name)).toEqual(['js-unrolled']);
    expect(backend.name).toBe('js-unrolled');
    backend.dispose();
  });

  it('refuses a forced backend that fails the probe', async () => {
    const clock = { ms: 0 };
    await expect(selectBackend({ force: 'broken', now: () => clock.ms, candidates: [clocked('broken', 1, clock, true)] })).rejects.toThrow(/'broken' cannot be used: .*probe error/);
  });

  it('rejects an unknown name, naming the choices', async () => {
    await expect(selectBackend({ force: 'cuda' })).rejects.toThrow(/unknown compute backend 'cuda': choose one of wasm-simd, wasm-simd-threads, js-unrolled, .*reference/);
    expect(() => parseBackendName('cuda')).toThrow(RangeError);
    expect(parseBackendName('gpujs-cpu')).toBe('gpujs-cpu');
  });

  it('fastest() ignores rejected candidates however fast they were', () => {
    expect(fastest([
      { name: 'a', verdict: 'wrong', gramGBps: 99 },
      { name: 'b', verdict: 'correct', gramGBps: 1 },
      { name: 'c', verdict: 'correct', gramGBps: 3 },
    ])?.name).toBe('c');
    expect(fastest([{ name: 'a', verdict: 'unavailable' }])).toBeUndefined();
  });
});
