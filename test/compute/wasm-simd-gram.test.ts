import { describe, expect, it } from 'vitest';
import { gramError } from '../../src/compute/probe-data.js';
import { tileLength } from '../../src/compute/tiles.js';
import { createWasmSimdBackend } from '../../src/compute/wasm-simd-backend.js';
import { expectedFor, randomBlock } from './check-backend.js';

// The register-blocked kernel's own edges: every K up to 17 (odd K gets a zero row, K mod 4 picks
// 4×2 or 2×2 blocks), row lengths that end a tile exactly, one past it and one short of the next
// (the zero-padded columns and the read-ahead of the next tile's rows, which must stop at the
// block's end), and K beyond the scratch prepared at start. Tolerance 1e-12 of √(G_ii G_jj): the
// products are exact in float64 and only the summation order differs from the reference.
const TOLERANCE = 1e-12;

function lengthsFor(k: number): number[] {
  const tile = tileLength(k);
  return [5, tile, tile + 1, 2 * tile - 3, 3 * tile + 7];
}

describe('wasm-simd Gram kernel', () => {
  const backend = createWasmSimdBackend();

  it.each(Array.from({ length: 17 }, (_, i) => i + 1))('matches the reference for K = %i at tile edges, in its memory and on a plain array', async (k) => {
    for (const length of lengthsFor(k)) {
      const values = randomBlock(k, length, 1000 * k + length);
      const { gram: expected } = await expectedFor(values, k, length);
      const block = backend.allocateBlock(k, length); // the newest allocation: it ends where memory ends
      block.values.set(values);
      const [inPlace, onHeap] = [new Float64Array(k * k), new Float64Array(k * k)];
      await backend.addGram(block, inPlace);
      await backend.addGram({ gradients: k, length, values }, onHeap);
      block.release();
      expect(gramError(inPlace, expected, k), `K=${k} n=${length} in wasm memory`).toBeLessThanOrEqual(TOLERANCE);
      expect(gramError(onHeap, expected, k), `K=${k} n=${length} on the heap`).toBeLessThanOrEqual(TOLERANCE);
      expect(Array.from(inPlace)).toEqual(Array.from(onHeap)); // the same arithmetic either way
    }
  });

  it('grows its tile scratch for K = 130 (shortest tiles) and keeps earlier blocks readable', async () => {
    const early = backend.allocateBlock(3, 1000);
    early.values.set(randomBlock(3, 1000, 5));
    const k = 130, length = tileLength(k) + 9;
    const values = randomBlock(k, length, 130);
    const gram = new Float64Array(k * k);
    await backend.addGram({ gradients: k, length, values }, gram);
    expect(gramError(gram, (await expectedFor(values, k, length)).gram, k)).toBeLessThanOrEqual(TOLERANCE);
    const earlyGram = new Float64Array(9);
    await backend.addGram(early, earlyGram);
    expect(gramError(earlyGram, (await expectedFor(randomBlock(3, 1000, 5), 3, 1000)).gram, 3)).toBeLessThanOrEqual(TOLERANCE);
    early.release();
  });
});
