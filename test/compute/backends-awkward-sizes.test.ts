import { afterAll, describe, expect, it } from 'vitest';
import type { ReductionBackend } from '../../src/compute/reduction-backend.js';
import { ALL_BACKENDS, checkAgainstReference, expectedFor, openBackend, randomBlock, type Expected } from './check-backend.js';

// Awkward lengths: shorter than a SIMD stride, odd, prime-ish, not a multiple of any tile or span.
// Long rows run at K ≤ 2 and K = 7 at 100003 (K × K pairs × 1M products is seconds on the gpu.js
// and reference backends); K = 33 runs at 4099, which still crosses tiles, spans and SIMD tails.
const CASES: readonly (readonly [number, number])[] = [
  ...[1, 3, 4099].flatMap((length) => [1, 2, 7, 33].map((k) => [k, length] as const)),
  [1, 1000003],
  [2, 1000003],
  [7, 100003],
];

const expectations = new Map<string, { values: Float32Array; expected: Expected }>();
async function caseData(k: number, length: number) {
  const key = `${k}x${length}`;
  let found = expectations.get(key);
  if (!found) {
    const values = randomBlock(k, length, k * 7919 + length);
    found = { values, expected: await expectedFor(values, k, length) };
    expectations.set(key, found);
  }
  return found;
}

describe.each(ALL_BACKENDS)('%s', (name) => {
  let backend: ReductionBackend | undefined;
  afterAll(() => backend?.dispose());

  it('is created here, or rejected as a mode this machine lacks', async () => {
    backend = await openBackend(name);
    if (backend) expect(backend.name).toBe(name);
  });

  it.each(CASES)('matches the reference: K = %i gradients × %i elements', async (k, length) => {
    if (!backend) return; // unavailable here: the test above checked why
    const { values, expected } = await caseData(k, length);
    await checkAgainstReference(backend, values, k, length, expected);
  });

  it('adds into a Gram matrix over several blocks (a layer arriving in ranges)', async () => {
    if (!backend) return;
    const k = 3;
    const whole = randomBlock(k, 5000, 11);
    const expected = await expectedFor(whole, k, 5000);
    const gram = new Float64Array(k * k);
    for (const [start, end] of [[0, 1024], [1024, 1025], [1025, 5000]] as const) {
      const block = backend.allocateBlock(k, end - start);
      for (let i = 0; i < k; i++) block.values.set(whole.subarray(i * 5000 + start, i * 5000 + end), i * (end - start));
      await backend.addGram(block, gram);
      block.release();
    }
    expect(gram[1]).toBe(gram[3]); // kept symmetric
    const { gramError } = await import('../../src/compute/probe-data.js');
    expect(gramError(gram, expected.gram, k)).toBeLessThanOrEqual(name.startsWith('gpujs-') ? 2e-5 : 1e-10);
  });

  it('accepts a block on any Float32Array, not only its own', async () => {
    if (!backend) return;
    const { values, expected } = await caseData(7, 4099);
    const gram = new Float64Array(49);
    await backend.addGram({ gradients: 7, length: 4099, values }, gram);
    const { gramError } = await import('../../src/compute/probe-data.js');
    expect(gramError(gram, expected.gram, 7)).toBeLessThanOrEqual(name.startsWith('gpujs-') ? 2e-5 : 1e-10);
  });
});
